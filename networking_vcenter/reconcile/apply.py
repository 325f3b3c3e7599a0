"""Run a plan against vCenter; each step isolated, every outcome recorded.

Order: creations first (a network must be attachable as soon as possible), then
VLAN fixes, then deletions.  Distributed port groups of one switch are created
in batched tasks; when a batch fails, its port groups are retried one by one so
that one bad port group does not hold back the others.  Standard port groups are
written on all hosts in parallel (bounded by the session's cap); the steps of one
host and name run in plan order.  A port group still used by VMs is not forced:
its deletion is *deferred* and the next pass tries again.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
from collections.abc import Callable

from networking_vcenter import conf
from networking_vcenter import exceptions
from networking_vcenter.reconcile import plan as plan_mod
from networking_vcenter.vsphere import inventory
from networking_vcenter.vsphere import switches
from networking_vcenter.vsphere.inventory import Inventory
from networking_vcenter.vsphere.session import Session

LOG = logging.getLogger(__name__)


@dataclasses.dataclass
class Outcome:
    done: list[plan_mod.Step] = dataclasses.field(default_factory=list)
    failed: list[tuple[plan_mod.Step, exceptions.VCenterError]] = \
        dataclasses.field(default_factory=list)
    deferred: list[tuple[plan_mod.Step, str]] = dataclasses.field(
        default_factory=list)
    conflicts: list[plan_mod.Conflict] = dataclasses.field(
        default_factory=list)



Progress = Callable[[plan_mod.Step, str], None]


class Applier:
    """Runs plans; ``progress(step, "done"|"failed"|"deferred")`` is told
    of every step as it ends (the CLI's progress bar)."""

    def __init__(self, session: Session, settings: conf.Settings,
                 progress: Progress | None = None):
        self._session = session
        self._settings = settings
        self._progress = progress or (lambda step, result: None)

    def apply(self, plan: plan_mod.Plan, inv: Inventory) -> Outcome:
        out = Outcome(conflicts=list(plan.conflicts))
        for conflict in plan.conflicts:
            LOG.error("network %s: %s", conflict.network_id, conflict.reason)
        steps = plan.steps
        self._create_dvs(
            [s for s in steps if isinstance(s, plan_mod.CreateDvsPortGroup)],
            inv, out)
        self._host_steps(
            [s for s in steps if isinstance(s, (plan_mod.AddHostPortGroup,
                                                plan_mod.UpdateHostPortGroup,
                                                plan_mod.RemoveHostPortGroup))],
            inv, out)
        self._mark([s for s in steps if isinstance(s, plan_mod.MarkStdNetwork)],
                   inv, out)
        for step in steps:
            if isinstance(step, plan_mod.UpdateDvsPortGroup):
                self._run(step, out, lambda s=step: self._retag_dvs(s, inv))
            elif isinstance(step, plan_mod.DeleteDvsPortGroup):
                self._run(step, out, lambda s=step: self._delete_dvs(s, inv))
        return out

    # -- helpers -----------------------------------------------------------

    def _run(self, step: plan_mod.Step, out: Outcome,
             fn: Callable[[], None]) -> None:
        vm_count = getattr(step, "vm_count", 0)
        if vm_count:
            reason = f"still used by {vm_count} VM(s); retried next pass"
            LOG.warning("network %s: not deleting %s: %s", step.network_id,
                        step.name, reason)
            out.deferred.append((step, reason))
            self._progress(step, "deferred")
            return
        try:
            fn()
        except exceptions.InUse as exc:
            LOG.warning("network %s: %s deferred: %s", step.network_id,
                        step.describe(), exc)
            out.deferred.append((step, str(exc)))
            self._progress(step, "deferred")
        except exceptions.VCenterError as exc:
            LOG.error("network %s: %s failed: %s", step.network_id,
                      step.describe(), exc)
            out.failed.append((step, exc))
            self._progress(step, "failed")
        else:
            self._done(step, out)

    def _done(self, step: plan_mod.Step, out: Outcome) -> None:
        LOG.info("network %s: %s", step.network_id, step.describe())
        out.done.append(step)
        self._progress(step, "done")

    def _create_dvs(self, steps: list[plan_mod.CreateDvsPortGroup],
                    inv: Inventory, out: Outcome) -> None:
        by_switch: dict[str, list[plan_mod.CreateDvsPortGroup]] = {}
        for step in steps:
            by_switch.setdefault(step.switch, []).append(step)
        size = self._settings.dvs_batch_size
        for switch, group in by_switch.items():
            dvs = inv.dvs(switch)
            for i in range(0, len(group), size):
                chunk = group[i:i + size]
                specs = [self._dvs_spec(s) for s in chunk]
                if len(chunk) > 1:
                    try:
                        switches.create_dvs_port_groups(
                            self._session, dvs.ref, specs, switch)
                    except exceptions.VCenterError as exc:
                        LOG.warning("batch create on %s failed (%s); "
                                    "retrying its %d port groups one by one",
                                    switch, exc, len(chunk))
                    else:
                        for s in chunk:
                            self._done(s, out)
                        continue
                for s, spec in zip(chunk, specs):
                    self._run(s, out, lambda s=s, spec=spec: self._create_one(
                        dvs, spec, s))

    def _create_one(self, dvs: inventory.Dvs, spec,
                    step: plan_mod.CreateDvsPortGroup) -> None:
        """Create one port group; one made meanwhile by another worker for
        the same network is success, one made by anybody else is not."""
        try:
            switches.create_dvs_port_groups(self._session, dvs.ref, [spec],
                                            step.switch)
        except exceptions.PermanentFault as exc:
            if "DuplicateName" not in exc.fault:
                raise
            vim = inventory.vim
            found = inventory.find_children(
                self._session, [dvs.folder], {step.name},
                vim.dvs.DistributedVirtualPortgroup)
            owners = [inventory.owner(inventory.mark_from_description(
                p.get("config.description")), self._settings.deployment_name)
                for _, p in inventory.retrieve(
                    self._session, vim.dvs.DistributedVirtualPortgroup,
                    ["config.description"], "port group owner",
                    list(found.values()))]
            if owners != [step.network_id]:
                raise exceptions.NotOwned(step.describe(), exc.fault)
            LOG.debug("network %s: %s already made by another worker",
                      step.network_id, step.name)

    def _dvs_spec(self, step: plan_mod.CreateDvsPortGroup):
        return switches.dvs_port_group_spec(
            step.name, step.vlan, self._description(step))

    def _description(self, step) -> str:
        return inventory.owner_description(
            self._settings.deployment_name, step.network_id, step.physnet,
            step.vlan)

    def _retag_dvs(self, step: plan_mod.UpdateDvsPortGroup,
                   inv: Inventory) -> None:
        pg = next(p for p in inv.dvs_portgroups if p.moid == step.moid)
        version = self._session.call(f"read {step.name}",
                                     lambda: pg.ref.config.configVersion)
        spec = switches.dvs_port_group_spec(
            step.name, step.vlan, self._description(step), version)
        switches.reconfigure_dvs_port_group(self._session, pg.ref, spec,
                                            step.describe())

    def _delete_dvs(self, step: plan_mod.DeleteDvsPortGroup,
                    inv: Inventory) -> None:
        pg = next(p for p in inv.dvs_portgroups if p.moid == step.moid)
        switches.destroy_dvs_port_group(self._session, pg.ref,
                                        step.describe())

    def _host_steps(self, steps: list[plan_mod.Step], inv: Inventory,
                    out: Outcome) -> None:
        # Steps on one (host, name) keep their order (remove before re-add);
        # different hosts run in parallel.
        chains: dict[tuple[str, str], list[plan_mod.Step]] = {}
        for step in steps:
            chains.setdefault((step.host_moid, step.name), []).append(step)

        def run_chain(chain: list[plan_mod.Step]) -> None:
            for step in chain:
                host = inv.hosts[step.host_moid]
                ns = host.network_system
                if isinstance(step, plan_mod.AddHostPortGroup):
                    fn = (lambda s=step: switches.add_host_port_group(
                        self._session, ns, s.host, s.name, s.vswitch,
                        s.vlan))
                elif isinstance(step, plan_mod.UpdateHostPortGroup):
                    fn = (lambda s=step: switches.update_host_port_group(
                        self._session, ns, s.host, s.name, s.vswitch,
                        s.vlan))
                else:
                    fn = (lambda s=step: switches.remove_host_port_group(
                        self._session, ns, s.host, s.name))
                self._run(step, out, fn)

        if len(chains) <= 1:
            for chain in chains.values():
                run_chain(chain)
            return
        workers = min(len(chains), self._settings.max_parallel_tasks)
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            list(pool.map(run_chain, chains.values()))

    def _mark(self, steps: list[plan_mod.MarkStdNetwork], inv: Inventory,
              out: Outcome) -> None:
        if not steps or inv.owner_field_key is None:
            return
        failed = {(s.network_id, s.name) for s, _ in out.failed}
        try:
            refs = inventory.find_children(
                self._session, inv.network_folders,
                {s.name for s in steps}, inventory.vim.Network)
        except exceptions.VCenterError as exc:
            for step in steps:
                out.failed.append((step, exc))
            return
        for step in steps:
            ref = refs.get(step.name)
            if ref is None:
                if (step.network_id, step.name) not in failed:
                    out.failed.append((step, exceptions.PermanentFault(
                        step.describe(), "network not found after creating "
                                         "its port groups")))
                continue
            self._run(step, out, lambda s=step, r=ref: switches.set_owner_field(
                self._session, r, inv.owner_field_key, inventory.owner_value(
                    self._settings.deployment_name, s.network_id)))

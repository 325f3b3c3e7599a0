#    Licensed under the Apache License, Version 2.0 (the "License"); you may
#    not use this file except in compliance with the License. You may obtain
#    a copy of the License at
#
#         http://www.apache.org/licenses/LICENSE-2.0
#
#    Unless required by applicable law or agreed to in writing, software
#    distributed under the License is distributed on an "AS IS" BASIS, WITHOUT
#    WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied. See the
#    License for the specific language governing permissions and limitations
#    under the License.

"""Run a plan against vCenter; each step isolated, every outcome recorded.

Order: creations first (a network must be attachable as soon as possible), then
VLAN fixes, then deletions.  Distributed port groups of one switch are created
in batched tasks; when a batch fails, its port groups are retried one by one so
that one bad port group does not hold back the others.  Standard port groups are
written on all hosts in parallel (``max_parallel_host_writes`` at once, on the
session's threads: host writes are not vCenter tasks and are not held to
``max_parallel_tasks``); the steps of one host and name run in plan order.  A
port group still used by VMs is not forced: its deletion is *deferred* and the
next pass tries again.

Ownership is checked again against what vCenter answers wherever the snapshot
the plan was made from may be stale: a name that turns out to be taken when it
is written (DuplicateName, AlreadyExists), a port group about to be retagged, a
standard network about to be marked.  What is not ours is left exactly as it
is and reported as a conflict (and as a NotOwned failure of the step); the
standard port groups this pass added for that network are removed again, and
its network is not marked.  The caller's time budget
(:meth:`Session.budget`) holds in the worker threads too.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from typing import Any

from oslo_log import log as logging
from pyVmomi import vim

from networking_vcenter import conf
from networking_vcenter import exceptions
from networking_vcenter.reconcile import plan as plan_mod
from networking_vcenter.vsphere import inventory
from networking_vcenter.vsphere import ports as ports_mod
from networking_vcenter.vsphere import reads
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

    def refused(self) -> set[str]:
        """Networks with a step refused because its port group is not ours."""
        return {s.network_id for s, exc in self.failed
                if isinstance(exc, exceptions.NotOwned)}


Progress = Callable[[plan_mod.Step, str], None]


@dataclasses.dataclass
class PortOutcome:
    done: list[plan_mod.PortStep] = dataclasses.field(default_factory=list)
    failed: list[tuple[plan_mod.PortStep, exceptions.VCenterError]] = \
        dataclasses.field(default_factory=list)
    # Refused because a port changed since it was read (ConcurrentAccess),
    # or waiting for ports its group just grew: plan again from a fresh read.
    stale: list[plan_mod.PortStep] = dataclasses.field(default_factory=list)
    tasks: int = 0
    grown: dict[str, int] = dataclasses.field(default_factory=dict)
                                            # port group key -> its new size


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
        # A switch carries a network's MTU before its port groups come.
        for step in steps:
            if isinstance(step, plan_mod.RaiseDvsMtu):
                self._run(step, out, lambda s=step: self._raise_mtu(s, inv))
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

    # -- distributed ports ---------------------------------------------------

    def apply_ports(self, plan: plan_mod.PortPlan,
                    inv: Inventory) -> PortOutcome:
        """Run port steps: many ports per ReconfigureDVPort task (up to
        ``dvs_batch_size``), each spec with the configVersion the plan saw.

        The ports of a task that succeeded are read back by the session's
        task watcher before its wait ends (the replica, which then holds
        their new configVersion; not without one: the CLI reads them).
        A task is all or nothing: one refused for a port changed meanwhile
        (ConcurrentModification) leaves its steps *stale*, to be planned
        again from a fresh read; one refused for any other reason is split
        so that one bad port does not hold back the others.  Reservations
        with no free port first grow their port group (one reconfigure) and
        are stale too: the new ports are read, then taken.
        """
        out = PortOutcome()
        groups = {pg.key: pg for pg in inv.dvs_portgroups}
        keyless: dict[str, list[plan_mod.PortStep]] = {}
        for step in plan.steps:
            if step.key is None:
                keyless.setdefault(step.portgroup_key, []).append(step)
        for pg_key, steps in keyless.items():
            pg = groups[pg_key]
            try:
                # Geometric growth: a group that fills up grows by a
                # quarter (at least vSphere's own step of 8), so that N
                # ports take O(log N) grows, each a task and a read.
                add = max(ports_mod.GROW_BY, len(steps),
                          (pg.num_ports or 0) // 4)
                out.grown[pg_key] = ports_mod.grow_port_group(
                    self._session, pg, add)
                out.tasks += 1
            except exceptions.ConcurrentModification:
                # The group changed meanwhile (its shared filter written by
                # another worker): planned again once the replica shows it.
                out.tasks += 1
                out.stale.extend(steps)
                continue
            except exceptions.VCenterError as exc:
                LOG.error("port group %s: cannot add ports: %s", pg.name, exc)
                out.failed.extend((s, exc) for s in steps)
                continue
            out.stale.extend(steps)
        by_switch: dict[str, list[plan_mod.PortStep]] = {}
        for step in plan.steps:
            if step.key is not None:
                by_switch.setdefault(step.switch, []).append(step)
        size = self._settings.dvs_batch_size
        for switch, steps in by_switch.items():
            dvs = inv.dvs(switch)
            for i in range(0, len(steps), size):
                self._port_chunk(dvs, steps[i:i + size], out)
        for step in out.done:
            LOG.info("network %s: %s", step.network_id, step.describe())
        return out

    def apply_group_defaults(self, steps: list[plan_mod.SetGroupDefaults],
                             inv: Inventory) -> PortOutcome:
        """Give port groups their defaults (blocked, the shared filter):
        one reconfigure each, with the configVersion the plan saw; one
        refused for a group changed meanwhile is *stale* (planned again
        from a fresh read)."""
        out = PortOutcome()
        groups = {pg.key: pg for pg in inv.dvs_portgroups}
        for step in steps:
            pg = groups.get(step.portgroup_key)
            if pg is None:
                continue
            spec = switches.group_defaults_spec(
                step.config_version, step.description, step.want.blocked,
                step.want.rules)
            try:
                out.tasks += 1
                switches.reconfigure_dvs_port_group(
                    self._session, pg.ref, spec, step.describe())
            except exceptions.ConcurrentModification:
                out.stale.append(step)
            except exceptions.VCenterError as exc:
                LOG.error("network %s: %s failed: %s", step.network_id,
                          step.describe(), exc)
                out.failed.append((step, exc))
            else:
                LOG.info("network %s: %s", step.network_id, step.describe())
                out.done.append(step)
        return out

    def _port_chunk(self, dvs: inventory.Dvs, chunk: list[plan_mod.PortStep],
                    out: PortOutcome) -> None:
        changes = [(s.key, s.config_version, s.name, s.settings)
                   for s in chunk]
        what = (chunk[0].describe() if len(chunk) == 1 else
                f"reconfigure {len(chunk)} ports on {dvs.name}")
        try:
            out.tasks += 1
            ports_mod.reconfigure_ports(
                self._session, dvs.ref, changes, what,
                mac_management=inventory.mac_management_supported(dvs),
                read_back=True)
        except exceptions.ConcurrentModification:
            out.stale.extend(chunk)
        except exceptions.VCenterError as exc:
            if len(chunk) == 1:
                LOG.error("network %s: %s failed: %s", chunk[0].network_id,
                          what, exc)
                out.failed.append((chunk[0], exc))
                return
            LOG.warning("%s failed (%s); retrying its ports one by one",
                        what, exc)
            for step in chunk:
                self._port_chunk(dvs, [step], out)
        else:
            out.done.extend(chunk)

    # -- helpers -----------------------------------------------------------

    def _run(self, step: plan_mod.Step, out: Outcome,
             fn: Callable[[], Any]) -> None:
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
        except exceptions.NotOwned as exc:
            LOG.error("network %s: %s refused: %s", step.network_id,
                      step.describe(), exc)
            out.failed.append((step, exc))
            out.conflicts.append(plan_mod.Conflict(
                step.network_id, step.name, str(exc)))
            self._progress(step, "failed")
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

    # -- distributed port groups -------------------------------------------

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

    def _raise_mtu(self, step: plan_mod.RaiseDvsMtu, inv: Inventory) -> None:
        dvs = inv.dvs_by_moid(step.moid)
        if dvs is None:
            raise exceptions.NotFound(step.describe(), "the switch is gone")
        switches.raise_dvs_mtu(self._session, dvs.ref, step.name, step.mtu)

    def _create_one(self, dvs: inventory.Dvs, spec,
                    step: plan_mod.CreateDvsPortGroup) -> None:
        """Create one port group; one made meanwhile by another worker for
        the same network is success, one made by anybody else is not."""
        try:
            switches.create_dvs_port_groups(self._session, dvs.ref, [spec],
                                            step.switch)
        except exceptions.DuplicateName:
            found = reads.find_children(
                self._session, [dvs.folder], {step.name},
                vim.dvs.DistributedVirtualPortgroup)
            marks = [(ref._moId, inventory.mark_from_description(
                p.get("config.description")))
                for ref, p in reads.retrieve(
                    self._session, vim.dvs.DistributedVirtualPortgroup,
                    ["config.description"], "port group owner",
                    list(found.values()))]
            if [inventory.owner(m, self._settings.deployment_name)
                    for _, m in marks] != [step.network_id]:
                held = (f"distributed port group {step.name} "
                        f"({marks[0][0]}) {_made_by(marks[0][1])}"
                        if marks else
                        f"another kind of network named {step.name}")
                raise exceptions.NotOwned(
                    step.describe(),
                    f"the name was taken before it was written "
                    f"(DuplicateName) by {held}; it is left untouched")
            LOG.debug("network %s: %s already made by another worker",
                      step.network_id, step.name)

    def _dvs_spec(self, step: plan_mod.CreateDvsPortGroup):
        return switches.dvs_port_group_spec(
            step.name, step.vlan,
            switches.closed_description(self._description(step)))

    def _description(self, step) -> str:
        return inventory.owner_description(
            self._settings.deployment_name, step.network_id, step.physnet,
            step.vlan)

    def _retag_dvs(self, step: plan_mod.UpdateDvsPortGroup,
                   inv: Inventory) -> None:
        pg = next(p for p in inv.dvs_portgroups if p.moid == step.moid)
        found = reads.retrieve(
            self._session, vim.dvs.DistributedVirtualPortgroup,
            ["config.configVersion", "config.description",
             "config.numPorts"],
            f"{step.name} before retagging", [pg.ref])
        if not found:
            raise exceptions.NotFound(step.describe(), "it is gone")
        props = found[0][1]
        mark = inventory.mark_from_description(props.get("config.description"))
        if inventory.owner(mark, self._settings.deployment_name) != \
                step.network_id:
            raise exceptions.NotOwned(
                step.describe(), f"port group {step.name} ({step.moid}) "
                                 f"{_made_by(mark)} now; it is left "
                                 f"untouched")
        spec = switches.dvs_port_group_spec(
            step.name, step.vlan, switches.closed_description(
                self._description(step), props.get("config.configVersion")),
            props.get("config.configVersion"),
            num_ports=props.get("config.numPorts"))
        switches.reconfigure_dvs_port_group(self._session, pg.ref, spec,
                                            step.describe())

    def _delete_dvs(self, step: plan_mod.DeleteDvsPortGroup,
                    inv: Inventory) -> None:
        pg = next(p for p in inv.dvs_portgroups if p.moid == step.moid)
        switches.destroy_dvs_port_group(self._session, pg.ref,
                                        step.describe())

    # -- standard port groups ------------------------------------------------

    def _host_steps(self, steps: list[plan_mod.Step], inv: Inventory,
                    out: Outcome) -> None:
        # Steps on one (host, name) keep their order (remove before re-add);
        # different hosts run in parallel.
        chains: dict[tuple[str, str], list[plan_mod.Step]] = {}
        for step in steps:
            chains.setdefault((step.host_moid, step.name), []).append(step)
        created: list[plan_mod.AddHostPortGroup] = []
        lock = threading.Lock()

        def add(step: plan_mod.AddHostPortGroup, ns: Any) -> None:
            if switches.add_host_port_group(
                    self._session, ns, step.host, step.name, step.vswitch,
                    step.vlan, self._std_owner(step, inv), step.security):
                with lock:
                    created.append(step)

        def run_chain(chain: list[plan_mod.Step]) -> None:
            for step in chain:
                ns = inv.hosts[step.host_moid].network_system
                if isinstance(step, plan_mod.AddHostPortGroup):
                    fn = (lambda s=step: add(s, ns))
                elif isinstance(step, plan_mod.UpdateHostPortGroup):
                    fn = (lambda s=step: switches.update_host_port_group(
                        self._session, ns, s.host, s.name, s.vswitch,
                        s.vlan, s.security))
                else:
                    fn = (lambda s=step: switches.remove_host_port_group(
                        self._session, ns, s.host, s.name))
                self._run(step, out, fn)

        if len(chains) <= 1:
            for chain in chains.values():
                run_chain(chain)
        else:
            self._session.run_parallel(run_chain, list(chains.values()))
        self._undo_refused(created, inv, out)

    def _std_owner(self, step: plan_mod.AddHostPortGroup,
                   inv: Inventory) -> switches.StdOwner:
        return switches.StdOwner(
            mark=inventory.Mark(self._settings.deployment_name,
                                step.network_id),
            field_key=inv.owner_field_key,
            network_folders=tuple(inv.network_folders))

    def _undo_refused(self, created: list[plan_mod.AddHostPortGroup],
                      inv: Inventory, out: Outcome) -> None:
        """Remove again what this pass added for a network whose name turned
        out to be held by a port group not ours on some host: vSphere would
        show our copies and theirs as one network, neither ours nor theirs.
        """
        refused = out.refused()
        for step in created:
            if step.network_id not in refused:
                continue
            host = inv.hosts[step.host_moid]
            try:
                switches.remove_host_port_group(
                    self._session, host.network_system, step.host, step.name)
            except exceptions.VCenterError as exc:
                LOG.error("network %s: could not remove port group %s from "
                          "%s again after a conflict: %s", step.network_id,
                          step.name, step.host, exc)
                continue
            LOG.warning("network %s: removed port group %s from %s again: "
                        "the name is held by a port group not ours on "
                        "another host", step.network_id, step.name, step.host)
            out.done.remove(step)

    def _mark(self, steps: list[plan_mod.MarkStdNetwork], inv: Inventory,
              out: Outcome) -> None:
        key = inv.owner_field_key
        if not steps or key is None:
            return
        refused = out.refused()
        for step in steps:
            if step.network_id in refused:
                LOG.warning("network %s: %s skipped: its port group is not "
                            "ours on some host", step.network_id,
                            step.describe())
        steps = [s for s in steps if s.network_id not in refused]
        if not steps:
            return
        failed = {(s.network_id, s.name) for s, _ in out.failed}
        try:
            refs = reads.find_children(
                self._session, inv.network_folders,
                {s.name for s in steps}, vim.Network)
            marks = {ref._moId: _custom_mark(p.get("customValue"), key)
                     for ref, p in reads.retrieve(
                         self._session, vim.Network,
                         ["customValue"], "marks of standard networks",
                         list(refs.values()))}
        except exceptions.VCenterError as exc:
            for step in steps:
                out.failed.append((step, exc))
            return
        deployment = self._settings.deployment_name
        for step in steps:
            ref = refs.get(step.name)
            if ref is None:
                if (step.network_id, step.name) not in failed:
                    out.failed.append((step, exceptions.PermanentFault(
                        step.describe(), "network not found after creating "
                                         "its port groups")))
                continue
            mark = marks.get(ref._moId)
            if mark == inventory.Mark(deployment, step.network_id):
                self._done(step, out)       # another worker marked it
                continue
            if mark is not None:
                # Marked by someone else since the plan was made.
                self._run(step, out, lambda s=step, m=mark: _raise(
                    exceptions.NotOwned(
                        s.describe(), f"standard network {s.name} "
                                      f"({ref._moId}) {_made_by(m)}; it is "
                                      f"left untouched")))
                continue
            self._run(step, out, lambda s=step, r=ref: switches.set_owner_field(
                self._session, r, key, inventory.owner_value(
                    deployment, s.network_id)))


def _custom_mark(custom_values: Any, key: int) -> inventory.Mark | None:
    for cv in custom_values or []:
        if cv.key == key:
            return inventory.mark_from_value(cv.value)
    return None


def _made_by(mark: inventory.Mark | None) -> str:
    if mark is None:
        return "was not made by networking-vcenter"
    return (f"was made by networking-vcenter deployment "
            f"'{mark.deployment}' for network {mark.network_id}")


def _raise(exc: Exception) -> None:
    raise exc

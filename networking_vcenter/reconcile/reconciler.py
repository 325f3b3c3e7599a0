"""Make vCenter match Neutron: read fresh, plan purely, apply idempotently.

Two entry points, one mechanism:

* :meth:`Reconciler.sync_network` -- right after an API change, and before a
  port is bound.  Under the network's lock it reads vCenter, then the network
  *fresh from Neutron* (not the copy the API hook was handed), so that two
  workers racing on one network converge on whatever Neutron holds when the
  last of them runs.
* :meth:`Reconciler.sync_all` -- the full pass, at start-up, periodically and
  from the CLI.  It runs once at a time across the deployment.  It reads
  vCenter *before* Neutron: a port group it sees then belongs to a network
  that the later Neutron read still shows unless the network was deleted, so
  deleting port groups of networks Neutron no longer has is safe.  Networks
  changed within ``grace`` seconds are left to their own API hook, so that a
  full pass never undoes a change still in flight.

Every pass reads the inventory afresh and rebuilds the topology, so hosts that
joined a mapped cluster get their standard port groups on the next pass.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Iterable

from networking_vcenter import conf
from networking_vcenter import exceptions
from networking_vcenter.reconcile import apply as apply_mod
from networking_vcenter.reconcile import desired as desired_mod
from networking_vcenter.reconcile import plan as plan_mod
from networking_vcenter.reconcile import locks as locks_mod
from networking_vcenter.reconcile.locks import Locks
from networking_vcenter.vsphere import inventory
from networking_vcenter.vsphere import switches
from networking_vcenter.vsphere.session import Session

LOG = logging.getLogger(__name__)

# Reads the given networks from Neutron (None: all of them).  A network that
# no longer exists is simply absent.
NetworkSource = Callable[[set[str] | None], Iterable[desired_mod.NetworkSpec]]

FULL_PASS_LOCK = "full-pass"


@dataclasses.dataclass
class Pass:
    """What one reconcile pass saw, planned and did."""

    topology: desired_mod.Topology
    inventory: inventory.Inventory
    networks: list[desired_mod.NetworkSpec]
    desired: list[desired_mod.DesiredPortGroup]
    plan: plan_mod.Plan
    outcome: apply_mod.Outcome | None
    skipped: set[str] = dataclasses.field(default_factory=set)


class Reconciler:
    @classmethod
    def from_settings(cls, settings: conf.Settings) -> "Reconciler":
        """A reconciler with the configured locks (file locks in Neutron's
        lock_path by default)."""
        url = settings.coordination_backend_url or \
            locks_mod.default_backend_url(locks_mod.configured_lock_path())
        return cls(settings, Locks(url))

    def __init__(self, settings: conf.Settings, locks: Locks,
                 session: Session | None = None):
        self.settings = settings
        self.locks = locks
        self.session = session or Session(settings)

    def validate(self) -> desired_mod.Topology:
        """Connect and check every mapping against vCenter (start-up)."""
        self.session.connect()
        return desired_mod.build_topology(self.settings, self._read())

    def _read(self, scope: inventory.Scope | None = None
              ) -> inventory.Inventory:
        # Our custom attribute is (re)defined on every pass: a vCenter
        # restored from scratch has lost it with everything else.
        return inventory.read(self.session,
                              switches.ensure_owner_field(self.session),
                              self.settings.deployment_name, scope)

    def scope_of(self, network_id: str) -> inventory.Scope | None:
        """What one network's reconcile must read: the names its port groups
        can have on any mapped switch, and the mapped clusters' hosts.

        None (read everything) when the name template uses the VLAN: the
        names of a deleted network cannot be derived then.
        """
        template = self.settings.dvs_name_template
        if "{segmentation_id}" in template:
            return None
        names = {network_id} | {
            desired_mod.dvs_port_group_name(template, network_id, physnet, 0)
            for physnet in self.settings.switch_mappings}
        return inventory.Scope(frozenset(names),
                               frozenset(self.settings.clusters))

    def desired(self, networks: Iterable[desired_mod.NetworkSpec],
                topo: desired_mod.Topology
                ) -> tuple[list[desired_mod.DesiredPortGroup],
                           list[plan_mod.Conflict]]:
        """Desired port groups, and the networks whose names cannot work."""
        result, refused = [], []
        for net in networks:
            pgs = desired_mod.desired_for_network(net, topo)
            problems = desired_mod.check_length(pgs) + \
                desired_mod.name_problems(pgs)
            if problems:
                refused.extend(plan_mod.Conflict(net.id, pgs[0].name, p)
                               for p in problems)
                continue
            result.extend(pgs)
        return result, refused

    def sync_network(self, network_id: str, source: NetworkSource,
                     wait: float = -1, dry_run: bool = False) -> Pass:
        """Reconcile one network; ``wait`` bounds the wait for its lock."""
        with self.locks.hold(f"network-{network_id}", timeout=wait) as got:
            if not got:
                raise exceptions.TransientFault(
                    f"reconcile network {network_id}",
                    f"another worker still holds it after {wait}s")
            inv = self._read(self.scope_of(network_id))
            nets = list(source({network_id}))
            return self._plan_and_apply(inv, nets, {network_id}, set(),
                                        dry_run)

    def sync_all(self, source: NetworkSource, grace: float = 0,
                 dry_run: bool = False, wait: float | None = None,
                 progress: apply_mod.Progress | None = None
                 ) -> Pass | None:
        """One full pass; None when another worker is running one.

        ``wait`` None: skip at once if the pass is taken (the periodic
        worker's choice); a number: wait that long for it (the CLI's).
        """
        with self.locks.hold(FULL_PASS_LOCK, blocking=wait is not None,
                             timeout=-1 if wait is None else wait) as got:
            if not got:
                return None
            inv = self._read()                      # vCenter first, then
            nets = list(source(None))               # Neutron: see above
            now = time.time()
            young = {n.id for n in nets
                     if grace and n.changed_at and now - n.changed_at < grace}
            return self._plan_and_apply(
                inv, [n for n in nets if n.id not in young], None, young,
                dry_run, progress)

    def _plan_and_apply(self, inv: inventory.Inventory,
                        nets: list[desired_mod.NetworkSpec],
                        scope: set[str] | None, skip: set[str],
                        dry_run: bool,
                        progress: apply_mod.Progress | None = None) -> Pass:
        topo = desired_mod.build_topology(self.settings, inv)
        want, refused = self.desired(nets, topo)
        the_plan = plan_mod.plan(want, inv, scope, skip)
        the_plan.conflicts.extend(refused)
        outcome = None
        if not dry_run:
            outcome = apply_mod.Applier(self.session, self.settings,
                                        progress).apply(the_plan, inv)
        return Pass(topo, inv, nets, want, the_plan, outcome, skip)

    def find_port_group(self, pg: desired_mod.DesiredPortGroup,
                        inv: inventory.Inventory | None = None
                        ) -> inventory.DvsPortGroup | inventory.StdNetwork:
        """The vSphere object of a desired port group, read fresh if needed."""
        inv = inv or self._read(self.scope_of(pg.network_id))
        if pg.kind == desired_mod.DVS:
            dvs = inv.dvs(pg.switch)
            for have in inv.dvs_portgroups:
                if dvs and have.dvs_moid == dvs.moid and have.name == pg.name:
                    return have
        else:
            net = inv.std_networks.get(pg.name)
            if net is not None:
                return net
        raise exceptions.PermanentFault(
            f"port group {pg.name} of network {pg.network_id}",
            f"not found on {pg.switch}")

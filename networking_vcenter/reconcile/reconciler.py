"""Make vCenter match Neutron: read fresh, plan purely, apply idempotently.

The same :meth:`Reconciler.sync` serves a single network right after an API
change (``scope`` = that network) and a full resync (every network; port groups
whose network is gone are deleted).  Every pass reads the inventory afresh and
rebuilds the topology, so hosts that joined a mapped cluster get their standard
port groups on the next pass.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Iterable

from networking_vcenter import conf
from networking_vcenter import exceptions
from networking_vcenter.reconcile import apply as apply_mod
from networking_vcenter.reconcile import desired as desired_mod
from networking_vcenter.reconcile import plan as plan_mod
from networking_vcenter.vsphere import inventory
from networking_vcenter.vsphere import switches
from networking_vcenter.vsphere.session import Session

LOG = logging.getLogger(__name__)


@dataclasses.dataclass
class Pass:
    """What one reconcile pass saw, planned and did."""

    topology: desired_mod.Topology
    inventory: inventory.Inventory
    desired: list[desired_mod.DesiredPortGroup]
    plan: plan_mod.Plan
    outcome: apply_mod.Outcome | None


class Reconciler:
    def __init__(self, settings: conf.Settings,
                 session: Session | None = None):
        self.settings = settings
        self.session = session or Session(settings)
        self._lock = threading.Lock()
        self._field_ready = False

    def validate(self) -> desired_mod.Topology:
        """Connect and check every mapping against vCenter (start-up)."""
        self.session.connect()
        self._ensure_owner_field()
        return desired_mod.build_topology(self.settings,
                                          inventory.read(self.session))

    def _ensure_owner_field(self) -> None:
        if not self._field_ready:
            switches.ensure_owner_field(self.session, inventory.OWNER_FIELD)
            self._field_ready = True

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

    def sync(self, networks: Iterable[desired_mod.NetworkSpec],
             full: bool = False, dry_run: bool = False,
             wait: float = -1) -> Pass:
        """Reconcile ``networks`` (all of Neutron's when ``full``).

        Passes of one process run one at a time; ``wait`` bounds how long a
        caller queues behind another pass (-1: as long as it takes).
        """
        networks = list(networks)
        if not self._lock.acquire(timeout=wait):
            raise exceptions.TransientFault(
                "reconcile", f"another pass is still running after {wait}s")
        try:
            return self._sync(networks, full, dry_run)
        finally:
            self._lock.release()

    def _sync(self, networks: list[desired_mod.NetworkSpec], full: bool,
              dry_run: bool) -> Pass:
        self._ensure_owner_field()
        inv = inventory.read(self.session)
        topo = desired_mod.build_topology(self.settings, inv)
        want, refused = self.desired(networks, topo)
        scope = None if full else {n.id for n in networks}
        the_plan = plan_mod.plan(want, inv, scope)
        the_plan.conflicts.extend(refused)
        if dry_run:
            return Pass(topo, inv, want, the_plan, None)
        outcome = apply_mod.Applier(self.session, self.settings).apply(
            the_plan, inv)
        return Pass(topo, inv, want, the_plan, outcome)

    def find_port_group(self, pg: desired_mod.DesiredPortGroup,
                        inv: inventory.Inventory | None = None
                        ) -> inventory.DvsPortGroup | inventory.StdNetwork:
        """The vSphere object of a desired port group, read fresh if needed."""
        inv = inv or inventory.read(self.session)
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

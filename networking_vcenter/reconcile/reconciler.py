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

"""Make vCenter match Neutron: read the replica, plan purely, apply idempotently.

Two entry points, one mechanism:

* :meth:`Reconciler.sync_network` -- right after an API change, before a port
  is bound, and from the maintenance worker for a network the replica or
  Neutron says changed.  Under the network's lock it takes the replica's
  view of vCenter, then the network *fresh from Neutron* (not the copy the
  API hook was handed), so that two workers racing on one network converge
  on whatever Neutron holds when the last of them runs.  With nothing to
  change it makes no vCenter call at all.
* :meth:`Reconciler.sync_all` -- the full pass, at start-up, periodically, on
  the replica's say-so (vCenter came back empty, a host joined a cluster)
  and from the CLI.  It runs once at a time across the deployment.  It takes
  vCenter's view *before* reading Neutron: a port group seen then belongs to
  a network that the later Neutron read still shows unless the network was
  deleted, so deleting port groups of networks Neutron no longer has is safe.
  Networks changed within ``grace`` seconds are left to their own API hook.

The view of vCenter is the live replica (:mod:`..vsphere.replica`) in a
server, or one full read per pass in the CLI (``watch=False``).  Writes are
owner-checked against what vCenter answers, never against the replica.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import time
from collections.abc import Callable, Iterable, Mapping

from oslo_log import log as logging

from networking_vcenter import conf
from networking_vcenter import exceptions
from networking_vcenter.reconcile import apply as apply_mod
from networking_vcenter.reconcile import desired as desired_mod
from networking_vcenter.reconcile import mtu as mtu_mod
from networking_vcenter.reconcile import plan as plan_mod
from networking_vcenter.reconcile import portsettings
from networking_vcenter.reconcile import locks as locks_mod
from networking_vcenter.reconcile.locks import Locks
from networking_vcenter.vsphere import inventory
from networking_vcenter.vsphere import ports as ports_mod
from networking_vcenter.vsphere import switches
from networking_vcenter.vsphere.replica import Replica
from networking_vcenter.vsphere.session import Session

LOG = logging.getLogger(__name__)

# Reads the given networks from Neutron (None: all of them).  A network that
# no longer exists is simply absent.
NetworkSource = Callable[[set[str] | None], Iterable[desired_mod.NetworkSpec]]

# Reads the given Neutron ports (None: every port bound by this driver).  A
# port asked for by id that exists but is not bound here comes back with
# ``physnet`` None; one that does not exist is absent.
PortSource = Callable[[set[str] | None], Iterable[desired_mod.PortSpec]]

FULL_PASS_LOCK = "full-pass"
# Seconds close() gives vCenter to end the watch and the session.
CLOSE_BUDGET = 5.0
# Seconds a full pass waits for a port's lock (then that port is retried).
LOCK_WAIT = 1.0
# Plan-apply rounds of one port sync: a round refused for a port changed
# meanwhile, or waiting for a port group to grow, is planned again.
PORT_ROUNDS = 8


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
    ports: "PortPass | None" = None     # the full pass's port sync


@dataclasses.dataclass
class PortPass:
    """What one port sync saw, planned and did."""

    ports: list[desired_mod.PortSpec]
    desired: list[desired_mod.DesiredPort]
    unenforced: list[desired_mod.UnenforcedPort]
    plan: plan_mod.PortPlan                 # the last round's plan
    outcome: apply_mod.PortOutcome
    kept: set[str] = dataclasses.field(default_factory=set)
                                            # not bound, binding host ours:
                                            # their reservations stay


class Reconciler:
    # Told the status Neutron should show for ports whose NIC connected or
    # went away ({port id: "ACTIVE" | "DOWN"}); set by the ML2 driver.
    status_sink: Callable[[dict[str, str]], None] | None = None
    # Trunk id -> the status Neutron should show (ACTIVE, DEGRADED, ERROR).
    trunk_status_sink: Callable[[dict[str, str]], None] | None = None
    # Reads the ports bound here on the given networks (None: all), for the
    # security policy of standard port groups; set by the ML2 driver and the
    # CLI.  None: standard port groups' security is left as it is.  A full
    # pass given a port source takes all from it instead (the same ports).
    network_ports: Callable[[set[str] | None],
                            list[desired_mod.PortSpec]] | None = None

    @classmethod
    def from_settings(cls, settings: conf.Settings,
                      watch: bool = True) -> "Reconciler":
        """A reconciler with the configured locks (file locks in Neutron's
        lock_path by default); ``watch`` False for one-shot tools."""
        url = settings.coordination_backend_url or \
            locks_mod.default_backend_url(locks_mod.configured_lock_path())
        return cls(settings, Locks(url, settings.name), watch=watch)

    def __init__(self, settings: conf.Settings, locks: Locks,
                 session: Session | None = None, watch: bool = True):
        self.settings = settings
        self.locks = locks
        self._closed = False
        self.session = session or Session(settings)
        self.replica = Replica(self.session, settings) if watch else None
        self._topology: tuple[inventory.Inventory, desired_mod.Topology] | None = None
        self._warned: set[tuple[str, tuple[str, ...]]] = set()
        # Shared filters: {port group key: (digest its description names,
        # configVersion)} last found true -- read whole, or the digest
        # moved (a write of ours, in some process).  A group whose
        # configVersion moved under the same digest may have been edited
        # by hand (:meth:`_untrue_defaults`).
        self._defaults_seen: dict[str, tuple[str, str | None]] = {}
        self._defaults_doubted: set[str] = set()
        # ... and of those, the ones read whole and found true as they are.
        self._defaults_read: dict[str, tuple[str, str | None]] = {}

    # -- life cycle -------------------------------------------------------

    def start(self, background: bool = False) -> None:
        """Start the replica: read vCenter now (typed errors), or -- with
        ``background`` -- as soon as it answers."""
        if self.replica is None:
            self.session.connect()
        elif background:
            self.replica.start_background()
        else:
            self.replica.start()

    def close(self) -> None:
        """Stop watching, log out of vCenter, leave the lock backend: within
        CLOSE_BUDGET seconds of vCenter's time, answering or not (a process
        stopping does not wait out a black hole; a session left behind
        expires in vCenter).  Once."""
        if self._closed:
            return
        self._closed = True
        try:
            with self.session.budget(CLOSE_BUDGET):
                try:
                    if self.replica is not None:
                        self.replica.stop()
                finally:
                    self.session.close()
        finally:
            self.locks.stop()

    # -- reading ------------------------------------------------------------

    def inventory(self, timeout: float = 0) -> inventory.Inventory:
        """vCenter as the replica shows it (waiting up to ``timeout`` for
        its first read); a fresh full read without a replica."""
        if self.replica is None:
            return Replica.read_once(self.session, self.settings)
        return self.replica.snapshot(timeout)

    def validate(self, timeout: float = 0) -> desired_mod.Topology:
        """Check every mapping against vCenter, strictly (start-up)."""
        return desired_mod.build_topology(self.settings,
                                          self.inventory(timeout))

    def topology(self, inv: inventory.Inventory) -> desired_mod.Topology:
        """The topology of an inventory as a running server uses it (hosts
        not set up yet left out), built once per inventory."""
        cached = self._topology
        if cached is not None and cached[0] is inv:
            return cached[1]
        topo = desired_mod.build_topology(self.settings, inv, strict=False)
        self._topology = (inv, topo)
        return topo

    def desired(self, networks: Iterable[desired_mod.NetworkSpec],
                topo: desired_mod.Topology, std: dict | None = None
                ) -> tuple[list[desired_mod.DesiredPortGroup],
                           list[plan_mod.Conflict]]:
        """Desired port groups, and the networks whose names cannot work."""
        result, refused = [], []
        for net in networks:
            pgs = desired_mod.desired_for_network(net, topo, std)
            problems = desired_mod.check_length(pgs) + \
                desired_mod.name_problems(pgs)
            if problems:
                refused.extend(plan_mod.Conflict(net.id, pgs[0].name, p)
                               for p in problems)
                continue
            result.extend(pgs)
        return result, refused

    def manages(self, network_id: str,
                segments: Iterable[dict] = ()) -> bool:
        """Whether a network is any of our business: one of ``segments`` is
        a VLAN/flat segment on a mapped physical network, or vCenter holds a
        port group of ours for it.  Answered from memory."""
        if any(desired_mod.is_mapped(seg, self.settings.switch_mappings)
               for seg in segments):
            return True
        if self.replica is None or not self.replica.synced:
            return True    # cannot tell: let the reconcile decide
        inv = self.replica.snapshot()
        return any(pg.owner == network_id for pg in inv.dvs_portgroups) or \
            any(n.owner == network_id or n.name == network_id
                for n in inv.std_networks.values())

    # -- reconciling ----------------------------------------------------------

    def sync_network(self, network_id: str, source: NetworkSource,
                     wait: float = -1, dry_run: bool = False,
                     settle: float = 0) -> Pass:
        """Reconcile one network; ``wait`` bounds the wait for its lock,
        ``settle`` the wait for this process's replica to show what was
        written (so that a bind right after answers from memory)."""
        with self.locks.hold(f"network-{network_id}", timeout=wait) as got:
            if not got:
                raise exceptions.LockBusy(
                    f"reconcile network {network_id}",
                    f"another worker still holds it after {wait}s")
            inv = self.inventory()
            nets = list(source({network_id}))
            std = self._std_security(inv, nets, {network_id})
            result = self._plan_and_apply(inv, nets, {network_id}, set(),
                                          dry_run, std=std)
        if settle > 0 and result.outcome is not None and \
                result.outcome.done and self.replica is not None:
            self.replica.wait_until(
                lambda fresh: not self._plan(fresh, nets, {network_id},
                                             set(), std)[2].steps, settle)
        return result

    def sync_all(self, source: NetworkSource, grace: float = 0,
                 dry_run: bool = False, wait: float | None = None,
                 progress: apply_mod.Progress | None = None,
                 port_source: PortSource | None = None) -> Pass | None:
        """One full pass; None when another worker is running one.

        ``wait`` None: skip at once if the pass is taken (the periodic
        worker's choice); a number: wait that long for it (the CLI's).
        A ``dry_run`` changes nothing and takes no lock: it reads and plans
        even while a pass runs elsewhere (``networking-vcenter status``).
        With ``port_source``, every port's DV port too, read fresh from
        vCenter (a port edited by hand shows no change in the replica).
        """
        with contextlib.nullcontext(True) if dry_run else self.locks.hold(
                FULL_PASS_LOCK, blocking=wait is not None,
                timeout=-1 if wait is None else wait) as got:
            if not got:
                return None
            inv = self.inventory()                  # vCenter first, then
            nets = list(source(None))               # Neutron: see above
            # The bound ports, read once: for the standard port groups'
            # security and for the DV ports.
            bound = None if port_source is None else list(port_source(None))
            now = time.time()
            young = {n.id for n in nets
                     if grace and n.changed_at and now - n.changed_at < grace}
            result = self._plan_and_apply(
                inv, [n for n in nets if n.id not in young], None, young,
                dry_run, progress, self._std_security(inv, nets, None, bound))
            if port_source is not None:
                result.ports = self.sync_ports(
                    None, source, port_source, wait=LOCK_WAIT,
                    dry_run=dry_run, refresh=self.replica is not None,
                    specs=bound)
            return result

    def _std_security(self, inv: inventory.Inventory,
                      nets: list[desired_mod.NetworkSpec],
                      scope: set[str] | None,
                      bound: list[desired_mod.PortSpec] | None = None
                      ) -> dict[str, inventory.Security] | None:
        """The security policy of the networks' standard port groups, from
        their ports (:func:`desired.std_security`); None where this
        reconciler is not told the ports (then it is left as it is).  Reads
        Neutron only for networks with a standard port group, and not at
        all given ``bound`` (every port bound here, read already; scope
        None)."""
        if self.network_ports is None:
            return None
        topo = self.topology(inv)
        std_nets = {n.id for n in nets if any(
            d.kind == desired_mod.VSWITCH
            for d in desired_mod.desired_for_network(n, topo))}
        if not std_nets:
            return {}
        if bound is not None and scope is None:
            ports = bound
        else:
            ports = self.network_ports(None if scope is None else std_nets)
        return desired_mod.std_security(ports, topo)

    def _plan(self, inv: inventory.Inventory,
              nets: list[desired_mod.NetworkSpec], scope: set[str] | None,
              skip: set[str], std: dict | None = None):
        topo = self.topology(inv)
        want, refused = self.desired(nets, topo, std)
        the_plan = plan_mod.plan(
            want, inv, scope, skip,
            closed_by_token=self.settings.shared_security_filter)
        the_plan.conflicts.extend(refused)
        if self.settings.raise_switch_mtu:
            the_plan.steps[:0] = plan_mod.plan_mtu(
                want, {n.id: n.mtu for n in nets}, inv)
        return topo, want, the_plan

    def _plan_and_apply(self, inv: inventory.Inventory,
                        nets: list[desired_mod.NetworkSpec],
                        scope: set[str] | None, skip: set[str],
                        dry_run: bool,
                        progress: apply_mod.Progress | None = None,
                        std: dict | None = None) -> Pass:
        topo, want, the_plan = self._plan(inv, nets, scope, skip, std)
        outcome = None
        if scope is None and not dry_run:
            self._warn_mtu(inv, topo, nets)
        if not dry_run:
            if inv.custom_fields and inv.owner_field_key is None and any(
                    isinstance(s, plan_mod.MarkStdNetwork)
                    for s in the_plan.steps):
                # Defined on first need only: reads never write.
                inv = dataclasses.replace(
                    inv, owner_field_key=switches.ensure_owner_field(
                        self.session))
            outcome = apply_mod.Applier(self.session, self.settings,
                                        progress).apply(the_plan, inv)
        return Pass(topo, inv, nets, want, the_plan, outcome, skip)

    def port_group_for(self, network_id: str, physnet: str,
                       source: NetworkSource, deadline: float,
                       fix: bool = True
                       ) -> tuple[desired_mod.DesiredPortGroup,
                                  inventory.DvsPortGroup |
                                  inventory.StdNetwork]:
        """The port group a port of ``network_id`` on ``physnet`` attaches
        to, made first if missing (unless not ``fix``), by ``deadline``
        (monotonic).

        From memory when it is there as wanted (no vCenter call); otherwise
        the network is reconciled and the replica awaited.  Raises a
        VCenterError saying why it cannot be had.
        """
        inv = self.inventory(max(0.0, deadline - time.monotonic()))
        nets = list(source({network_id}))
        _, want, the_plan = self._plan(inv, nets, {network_id}, set())
        pg = next((d for d in want if d.physnet == physnet), None)
        if pg is None:
            raise exceptions.PermanentFault(
                f"network {network_id}",
                f"has no port group on physical network {physnet}")

        def settled(fresh: inventory.Inventory, the_plan: plan_mod.Plan):
            """The port group as wanted in ``fresh``, or None."""
            return None if self._trouble(pg, the_plan) else _find(pg, fresh)

        found = settled(inv, the_plan)
        if found is not None:
            return pg, found
        if not fix:
            raise exceptions.TransientFault(
                f"port group {pg.name} of network {network_id}",
                "not in vCenter as wanted, and vCenter is unreachable")
        left = deadline - time.monotonic()
        result = self.sync_network(network_id, source, wait=max(0.0, left))
        problems = [str(exc) for s, exc in (result.outcome.failed
                                            if result.outcome else [])
                    if s.name == pg.name] + \
            [c.reason for c in result.plan.conflicts if c.name == pg.name]
        if problems:
            raise exceptions.VSphereFault(f"port group {pg.name}",
                                          "; ".join(problems))
        holder: list = []

        def ready(fresh: inventory.Inventory) -> bool:
            holder.append(settled(fresh, self._plan(
                fresh, nets, {network_id}, set())[2]))
            return holder[-1] is not None

        if not self.replica.wait_until(
                ready, max(0.0, deadline - time.monotonic())):
            raise exceptions.TransientFault(
                f"port group {pg.name} of network {network_id}",
                "not seen in vCenter in time")
        return pg, holder[-1]

    # -- distributed ports ---------------------------------------------------

    def sync_ports(self, port_ids: set[str] | None, source: NetworkSource,
                   port_source: PortSource, wait: float = -1,
                   dry_run: bool = False,
                   refresh: bool = False, report_status: bool = True,
                   fresh: bool = True,
                   networks: Iterable[str] = (),
                   specs: list[desired_mod.PortSpec] | None = None,
                   confirm: set[str] | frozenset[str] = frozenset(),
                   group_filters: bool = True,
                   network_of: Mapping[str, str] | None = None,
                   read_first: bool = False
                   ) -> PortPass:
        """Give ports (``port_ids``, or all with None) their DV ports.

        Nothing is ever left open or handed out twice:

        * a DV port is released only under its Neutron port's lock, after
          a fresh Neutron read of that port taken under the lock: a port
          that exists with its binding host one of our compute hosts keeps
          its reservations (its binding may be under way: ML2 commits a
          binding after ``bind_port`` answered, so the pass's earlier read,
          or the API hook ``update_port_postcommit`` that ML2 runs before
          binding, shows it unbound); of a bound port's reservations the
          one its committed binding gave Nova is kept;
        * reservations are made under the port's lock (after a fresh read
          of its port group unless not ``fresh``: a bind, which must be
          quick, trusts the replica), every write carries the
          configVersion the plan saw, so a port renamed or released by
          another process meanwhile is refused by vCenter and planned
          again; ``confirm``: ports whose reservation is written again
          even when the replica shows it right (a bind: vCenter then says
          the key is this port's at that moment).

        ``refresh`` reads the ports of our port groups fresh
        first (the full pass: vCenter reports no change for a port edited
        by hand).  With nothing to change it makes no vCenter call.
        ``specs``: what ``port_source(port_ids)`` answers, when the caller
        has read it.

        With ``shared_security_filter`` the ports of each network's
        default security group inherit one filter held in their port
        group's defaults: unless ``group_filters`` is False (a bind, which
        only reserves), the networks of these ports (and ``networks``) get
        theirs, from all their ports read under the network's lock, after
        the ports (a port leaving the shared filter has its own first).
        ``network_of``: the networks of (some of) ``port_ids``, when the
        caller knows them: such ports are then read with their network's
        other ports for its shared filter, not once more on their own (a
        VM joining a default group of N members syncs them all).
        ``read_first`` (the maintenance worker's syncs, which follow the
        API hooks of other processes): the DV ports about to be configured
        or released are read by key first, and only those still needing
        it written -- a write planned from this replica, which does not see
        other processes' writes of DV ports, would be refused by vCenter
        (a failed task in its task list).
        """
        known: dict[str, str] = {}
        if self.settings.shared_security_filter and group_filters and \
                not dry_run and port_ids is not None and specs is None:
            known = {i: network_of[i] for i in port_ids
                     if i in (network_of or {})}
        if specs is None:
            alone = None if port_ids is None else set(port_ids) - set(known)
            specs = list(port_source(alone)) if alone is None or alone \
                else []
        bound = [p for p in specs if p.physnet]
        pending = self._pending(specs)
        net_ids = {p.network_id for p in bound}
        nets = {n.id: n for n in source(net_ids)} if net_ids else {}
        inv = self.inventory()
        if refresh:
            inv = self._refresh_ports(inv, None, "a full pass")
        total = apply_mod.PortOutcome()
        with contextlib.ExitStack() as held:
            sharing = None
            defaults: dict[str, plan_mod.GroupDefaults] = {}
            if self.settings.shared_security_filter:
                if group_filters and not dry_run:
                    shared_nets = {p.network_id for p in specs} | \
                        set(networks) | set(known.values()) \
                        if port_ids is not None else None
                    sharing, defaults, nets, members = self._group_defaults(
                        inv, shared_nets, bound, nets, source, port_source,
                        held, wait)
                    if known:
                        # Those ports as read with their networks' (under
                        # the networks' locks); those not among them (not
                        # bound here: deleted, unbound) read on their own.
                        got = [p for p in members if p.id in known]
                        alone = set(known) - {p.id for p in got}
                        more = got + (list(port_source(alone)) if alone
                                      else [])
                        # (Their networks are among those read with
                        # them.)
                        specs = specs + more
                        bound = bound + [p for p in more if p.physnet]
                        pending |= self._pending(more)
                else:
                    sharing = self._may_share(nets)
            every = port_ids is None and refresh    # the full pass
            defaults_first = False
            locked: set[str] = set()
            checked: set[str] = set()   # read fresh under their lock
            keys_read: set[str] = set()  # their bound DV port read by key
            released_read: set[str] = set()  # read by key before a write
            for _ in range(PORT_ROUNDS):
                topo = self.topology(inv)
                want, unenforced = portsettings.desired_ports(
                    bound, nets, topo, self.settings.max_rules_per_port,
                    self.settings.security_groups, sharing)
                the_plan = plan_mod.plan_ports(
                    want, inv, portsettings.released_settings,
                    port_ids, pending, confirm)
                if dry_run or not the_plan.steps:
                    break
                reserving = {s.port_id for s in the_plan.steps
                             if isinstance(s, plan_mod.ReservePort)}
                releasing = {s.port_id for s in the_plan.steps
                             if isinstance(s, plan_mod.ReleasePort)}
                self._lock_ports((reserving | releasing) - locked, locked,
                                 held, wait)
                if releasing - checked:
                    # Released only as Neutron has it now, under the lock.
                    bound, pending, nets = self._recheck(
                        releasing - checked, port_source, source, bound,
                        pending, nets)
                    checked |= releasing
                    continue
                unread = {s for s in the_plan.steps
                          if isinstance(s, (plan_mod.ReleasePort,
                                            plan_mod.ConfigurePort))
                          and s.key and s.port_id not in released_read}
                if unread and read_first and self.replica is not None:
                    # The API hook of another process has most likely
                    # written them already (a port deleted, its groups
                    # changed): its writes are not in this replica.  Read
                    # by key rather than have vCenter refuse a task.
                    released_read |= {s.port_id for s in unread}
                    keys = _step_keys(inv, unread)
                    if keys:
                        inv = self._read_keys(keys)
                        continue
                if reserving and fresh and not reserving <= checked:
                    # Another worker may have reserved it meanwhile (a
                    # rename, which no property the replica watches shows).
                    keyed = self._bound_keys(the_plan, bound, reserving -
                                             checked - keys_read, inv)
                    if keyed and self.replica is not None:
                        # Where Neutron's committed binding names the DV
                        # port, that port read alone: a group's ports may
                        # each bring a shared filter of thousands of rules.
                        keys_read |= set(keyed)
                        inv = self._read_keys(keyed.values())
                        continue
                    checked |= reserving
                    inv = self._refresh_ports(inv, {
                        s.portgroup_key for s in the_plan.steps
                        if s.port_id in reserving},
                        f"to reserve {len(reserving)} port(s) (e.g. "
                        f"{min(reserving)}) with no DV port read by key")
                    continue
                if defaults and not defaults_first and \
                        _joining(the_plan.steps, inv):
                    # Ports about to drop their own filters for their
                    # group's: the group's names them first, so that no
                    # moment has them under a filter not naming them (all
                    # their traffic dropped; a port leaving has its own
                    # first, below).
                    defaults_first = True
                    total.tasks += self._apply_defaults(defaults, every)
                out = apply_mod.Applier(self.session, self.settings
                                        ).apply_ports(the_plan, inv)
                total.done += out.done
                total.failed += out.failed
                total.tasks += out.tasks
                total.stale = out.stale
                # Read back what was written (and, whole, the port groups
                # of what was refused or grew): the next plan, here or in
                # the next call, starts from it.
                inv = self._read_back(inv, out, {
                    p.id: p.bound_key for p in bound if p.bound_key})
                if not out.stale:
                    # Same desired ports (Neutron was not read again).
                    the_plan = plan_mod.plan_ports(
                        want, inv, portsettings.released_settings,
                        port_ids, pending)
                    break
            if defaults and not defaults_first:
                total.tasks += self._apply_defaults(defaults, every)
        self._warn_unenforced(unenforced)
        trunks = self._trunk_status(want, the_plan, total)
        if port_ids is not None and not dry_run:
            # On a standard vSwitch port security follows the port group:
            # the networks of these ports (and of ``networks``, those of
            # ports deleted or unbound) are reconciled too.
            topo = self.topology(inv)
            std_nets = set(networks) | {
                p.network_id for p in specs
                if (t := topo.targets.get(p.physnet or "")) is not None
                and t.kind == desired_mod.VSWITCH}
            for net_id in sorted(std_nets):
                self.sync_network(net_id, source, wait=wait)
        if report_status and not dry_run and the_plan.status and \
                self.status_sink is not None:
            self.status_sink(dict(the_plan.status))
        if report_status and not dry_run and trunks and \
                self.trunk_status_sink is not None:
            self.trunk_status_sink(trunks)
        return PortPass(specs, want, unenforced, the_plan, total, pending)

    def _may_share(self, nets: dict[str, desired_mod.NetworkSpec]
                   ) -> Callable[[desired_mod.PortSpec], bool]:
        filtering = self.settings.security_groups
        return lambda port: portsettings.shares_group_filter(
            port, nets.get(port.network_id), filtering)

    def _group_defaults(self, inv: inventory.Inventory,
                        net_ids: set[str] | None,
                        bound: list[desired_mod.PortSpec],
                        nets: dict[str, desired_mod.NetworkSpec],
                        source: NetworkSource, port_source: PortSource,
                        held: contextlib.ExitStack, wait: float):
        """(who shares, {port group key: its defaults}, networks, the
        ports read) for the networks ``net_ids`` (None: every network,
        ``bound`` being all ports): under each network's lock (held until
        ``held`` closes), all their ports bound here read from Neutron, so
        that of two workers the last to write read Neutron last.  A network
        whose shared filter would pass ``max_rules_per_port_group`` shares
        nothing: its ports get filters of their own (warned once)."""
        members: list[desired_mod.PortSpec] | None = None
        full = net_ids is None
        if full:
            members = bound
            ours = {pg.owner for pg in inv.dvs_portgroups if pg.owner}
            net_ids = ours | {p.network_id for p in bound}
        busy: set[str] = set()
        for net_id in sorted(net_ids):
            if not held.enter_context(self.locks.hold(
                    f"group-filter-{net_id}", timeout=wait)):
                if not full:
                    raise exceptions.LockBusy(
                        f"the shared filter of network {net_id}",
                        f"another worker still holds it after {wait}s")
                busy.add(net_id)    # that worker's sync sets it
        net_ids = set(net_ids) - busy
        if members is None:
            members = list(port_source(None, network_ids=set(net_ids))) \
                if net_ids else []
        nets = _with_networks(
            nets, {p.network_id for p in members} | net_ids, source)
        may = self._may_share(nets)
        topo = self.topology(inv)
        by_pg: dict[str, list[desired_mod.PortSpec]] = {}
        where: dict[tuple[str, str], str] = {}
        for net_id in net_ids:
            net = nets.get(net_id)
            if net is None:
                continue
            for d in desired_mod.desired_for_network(net, topo):
                have = _find(d, inv) if d.kind == desired_mod.DVS else None
                if isinstance(have, inventory.DvsPortGroup):
                    by_pg.setdefault(have.key, [])
                    where[(net_id, d.physnet)] = have.key
        for port in members:
            key = where.get((port.network_id, port.physnet))
            if key is not None and may(port):
                by_pg[key].append(port)
        defaults: dict[str, plan_mod.GroupDefaults] = {}
        closed: set[str] = set()
        budget = self.settings.max_rules_per_port_group
        owner = {pg.key: pg.owner for pg in inv.dvs_portgroups}
        for key, ports in by_pg.items():
            # One filter for ports whose translations differ only by their
            # addresses and MAC (read at once, all have the same key).
            keys = [portsettings.share_key(p, filtering=self.settings.
                                           security_groups) for p in ports]
            if ports:
                common = collections.Counter(keys).most_common(1)[0][0]
                closed |= {p.id for p, k in zip(ports, keys) if k != common}
                ports = [p for p, k in zip(ports, keys) if k == common]
            rules = portsettings.shared_rules(ports) if ports else ()
            if len(rules) > budget:
                if ("budget", key) not in self._warned:
                    self._warned.add(("budget", key))
                    LOG.warning(
                        "network %s: the shared filter of its %d ports in "
                        "the default security group needs %d rules, more "
                        "than [%s] max_rules_per_port_group (%d): they get "
                        "filters of their own", owner.get(key), len(ports),
                        len(rules), conf.GROUP, budget)
                closed |= {p.id for p in ports}
                ports, rules = [], ()
            defaults[key] = plan_mod.GroupDefaults(
                owner.get(key) or "", True,
                tuple(rules) or ports_mod.CLOSED_RULES, len(ports))
        return (lambda port: port.id not in closed and may(port),
                defaults, nets, members)

    def _apply_defaults(self, defaults: dict[str, plan_mod.GroupDefaults],
                        every: bool = False) -> int:
        """Write the port groups' defaults that differ (the replica's
        view, read again once after a refusal), or that are not what their
        description says (:meth:`_untrue_defaults`; ``every``: the full
        pass); answers the tasks run."""
        tasks = 0
        untrue = self._untrue_defaults(self.inventory(), set(defaults),
                                       every)
        for _ in range(2):
            inv = self.inventory()
            steps = plan_mod.plan_group_defaults(defaults, inv, untrue)
            if not steps:
                break
            out = apply_mod.Applier(self.session, self.settings
                                    ).apply_group_defaults(steps, inv)
            tasks += out.tasks
            if self.replica is not None:
                tokens = {s.portgroup_key: s.want.token for s in out.done}
                before = {pg.key: pg.config_version
                          for pg in inv.dvs_portgroups if pg.key in tokens}
                left = self.session.time_left()
                self.replica.wait_until(lambda fresh: all(
                    pg.defaults_token == tokens[pg.key] and
                    pg.config_version != before.get(pg.key)
                    for pg in fresh.dvs_portgroups if pg.key in tokens),
                    self.settings.task_timeout if left is None
                    else max(0.0, left))
                for pg in self.inventory().dvs_portgroups:
                    if tokens.get(pg.key) == pg.defaults_token and \
                            pg.defaults_written_last:
                        # What we wrote, as vCenter answered it (and
                        # nothing since: see _defaults_change).
                        self._defaults_seen[pg.key] = (pg.defaults_token,
                                                       pg.config_version)
            if not out.stale:
                break
        return tasks

    def _defaults_change(self, pg: inventory.DvsPortGroup) -> str | None:
        """How a group's (digest, configVersion) stands against what was
        last found true here: None unchanged; "unknown" never found true
        here; "ours" the digest moved and the write naming it is the
        group's last change -- a write of ours, in some process, taken as
        true from now on; "moved" its configVersion moved under the same
        digest, or past the write naming a new one (an edit that did not
        come from us, perhaps right behind our write: the replica may
        show both as one change)."""
        state = (pg.defaults_token, pg.config_version)
        seen = self._defaults_seen.get(pg.key)
        if seen == state:
            return None
        if seen is None:
            return "unknown"
        if pg.defaults_written_last and (
                seen[0] != state[0] or
                inventory.named_since(pg.defaults_base, seen[1])):
            # A new digest, or the same one named again on a later
            # configVersion (a grow of ours): the group's last change.
            self._defaults_seen[pg.key] = state
            return "ours"
        return "moved"

    def defaults_suspect(self, network_id: str) -> bool:
        """Whether a port group of ``network_id`` holding a shared filter
        may hold what its description's digest does not name: first seen
        here, or changed under the digest it already named
        (:meth:`_defaults_change`).  Such a group is read whole at the next
        port sync of its network (:meth:`_untrue_defaults`).  No vCenter
        call."""
        if not self.settings.shared_security_filter:
            return False
        suspect = False
        for pg in self.inventory().dvs_portgroups:
            if pg.owner != network_id or pg.defaults_token is None:
                continue
            if self._defaults_change(pg) in ("unknown", "moved"):
                self._defaults_doubted.add(pg.key)
                suspect = True
        return suspect

    def _untrue_defaults(self, inv: inventory.Inventory, keys: set[str],
                         every: bool) -> set[str]:
        """Of our port groups ``keys``, those whose defaults are not what
        their description's digest names.  A group is read whole (its
        filter parsed) when it is doubted (:meth:`defaults_suspect`: the
        maintenance worker's), when its configVersion moved under the same
        digest since it was last found true, or -- ``every`` (the full
        pass) -- when it was not read whole as it is now (a write taken
        for ours may have been followed by an edit before it was seen).
        A group never found true here is neither read nor trusted (the
        worker reads it).  The replica does not parse a shared filter
        (``ports.GroupFiltersUnread``): without this a hand edit of it, or
        of ``blocked``, would stand."""
        untrue: set[str] = set()
        for pg in inv.dvs_portgroups:
            if pg.key not in keys or not pg.owner or \
                    pg.defaults_token is None:
                continue
            state = (pg.defaults_token, pg.config_version)
            change = self._defaults_change(pg)
            if change != "moved" and pg.key not in self._defaults_doubted \
                    and not (every and self._defaults_read.get(pg.key)
                             != state):
                continue    # unknown here is left to the worker
            blocked, rules, description = ports_mod.group_defaults_of(
                self.session, pg.ref, f"read the defaults of {pg.name}")
            self._defaults_doubted.discard(pg.key)
            # Against the digest read with them: a write of ours may have
            # landed since the replica's view.
            named = inventory.defaults_token_of(description)
            if inventory.defaults_token(blocked, rules) == named:
                if named == state[0]:
                    self._defaults_seen[pg.key] = state
                    self._defaults_read[pg.key] = state
                continue
            LOG.warning("network %s: the port defaults of %s are not those "
                        "networking-vcenter wrote (edited outside it): "
                        "written again", pg.owner, pg.name)
            self._defaults_seen.pop(pg.key, None)
            untrue.add(pg.key)
        return untrue

    def _lock_ports(self, port_ids: set[str], locked: set[str],
                    held: contextlib.ExitStack, wait: float) -> None:
        """Take the locks of these ports (in order), held until ``held``
        closes; TransientFault if one is not had within ``wait``."""
        for port_id in sorted(port_ids):
            if not held.enter_context(self.locks.hold(f"port-{port_id}",
                                                      timeout=wait)):
                raise exceptions.LockBusy(
                    f"reserve or release a DV port for port {port_id}",
                    f"another worker still holds it after {wait}s")
            locked.add(port_id)

    def _pending(self, specs: Iterable[desired_mod.PortSpec]) -> set[str]:
        """The ports not bound here whose binding host is one of ours: a
        binding may be under way (or failed, to be tried again); their
        reservations stay."""
        return {p.id for p in specs if not p.physnet and
                p.host in self.settings.compute_hosts}

    def _recheck(self, port_ids: set[str], port_source: PortSource,
                 source: NetworkSource,
                 bound: list[desired_mod.PortSpec], pending: set[str],
                 nets: dict[str, desired_mod.NetworkSpec]):
        """(bound, keep, networks) with ``port_ids`` as Neutron has them
        now: read fresh (under their locks, taken by the caller), a port
        bound here replaces its earlier spec, a port that exists with its
        binding host one of ours (a binding under way, or failed and to be
        tried again) keeps its reservations, and only ports gone or bound
        elsewhere lose theirs."""
        fresh = {p.id: p for p in port_source(set(port_ids))}
        keep = pending | (self._pending(fresh.values()) & port_ids)
        bound = [p for p in bound if p.id not in port_ids] + \
            [p for p in fresh.values() if p.physnet and p.id in port_ids]
        return bound, keep, _with_networks(
            nets, {p.network_id for p in bound}, source)

    def _warn_mtu(self, inv: inventory.Inventory,
                  topo: desired_mod.Topology,
                  nets: list[desired_mod.NetworkSpec]) -> None:
        """One warning per network (and process, and MTUs) whose MTU is
        above a switch it reaches: accepted by the API while vCenter was
        not read yet, or the switch was lowered since."""
        for net in nets:
            small = mtu_mod.too_small(net.mtu, net.segments, topo, inv,
                                      self.settings.raise_switch_mtu)
            key = ("mtu:" + net.id,
                   (str(net.mtu), mtu_mod.describe_all(small)))
            if not small or key in self._warned:
                continue
            self._warned.add(key)
            LOG.warning("%s; lower it (openstack network set --mtu) or "
                        "raise the switch's MTU",
                        mtu_mod.problem(net.id, net.mtu, small))

    def _trunk_status(self, want: list[desired_mod.DesiredPort],
                      the_plan: plan_mod.PortPlan,
                      outcome: apply_mod.PortOutcome) -> dict[str, str]:
        """Trunk id -> its new status: the plan's (ACTIVE / DEGRADED once
        the parent's DV port carries it), ERROR where vCenter refused the
        parent's settings.  Logs, once per process and problem, what of a
        trunk is not carried."""
        result = dict(the_plan.trunk_status)
        failed = {s.port_id for s, _ in outcome.failed}
        for d in want:
            if d.trunk is None:
                continue
            if d.port_id in failed and d.trunk.status != plan_mod.ERROR:
                result[d.trunk.id] = plan_mod.ERROR
            for problem in d.trunk_problems:
                if (d.trunk.id, problem) not in self._warned:
                    self._warned.add((d.trunk.id, problem))
                    LOG.warning("trunk %s (parent port %s) is DEGRADED: %s",
                                d.trunk.id, d.port_id, problem)
        return result

    def _warn_unenforced(self, unenforced) -> None:
        """One warning per network (and process) whose ports' policy a
        standard vSwitch cannot enforce; ``status`` lists the ports."""
        by_net: dict[str, set[str]] = {}
        for u in unenforced:
            by_net.setdefault(u.network_id, set()).update(u.what)
        for net_id, what in sorted(by_net.items()):
            if (net_id, tuple(sorted(what))) in self._warned:
                continue
            self._warned.add((net_id, tuple(sorted(what))))
            LOG.warning("network %s: its ports on a standard vSwitch have "
                        "%s that a standard vSwitch cannot enforce: NOT "
                        "ENFORCED ([%s] standard_vswitch_ports = refuse "
                        "refuses such bindings)", net_id,
                        " and ".join(sorted(what)), conf.GROUP)

    def _refresh_ports(self, inv: inventory.Inventory,
                       pg_keys: set[str] | None,
                       why: str) -> inventory.Inventory:
        """The inventory with the ports of ``pg_keys`` (None: all of ours)
        read fresh from vCenter (``why``: said in the debug log; a whole
        group's ports may each bring a shared filter of thousands of
        rules)."""
        LOG.debug("reading the ports of %s whole: %s",
                  "every port group" if pg_keys is None else
                  ", ".join(sorted(pg_keys)), why)
        if self.replica is not None:
            self.replica.refresh_ports(pg_keys)
            return self.replica.snapshot()
        groups = [pg for pg in inv.dvs_portgroups if pg.owner and
                  (pg_keys is None or pg.key in pg_keys)]
        fresh = dict(inv.dv_ports)
        for dvs_moid in {pg.dvs_moid for pg in groups}:
            dvs = inv.dvs_by_moid(dvs_moid)
            fresh.update(ports_mod.fetch_ports(
                self.session, dvs.ref,
                [pg.key for pg in groups if pg.dvs_moid == dvs_moid]))
        return dataclasses.replace(inv, dv_ports=fresh)

    def _bound_keys(self, the_plan: plan_mod.PortPlan,
                    bound: list[desired_mod.PortSpec], port_ids: set[str],
                    inv: inventory.Inventory
                    ) -> dict[str, tuple[str, str]]:
        """{port id: (switch moid, DV port key)} of the ports ``port_ids``
        to reserve whose committed binding names a DV port (on the
        switch of their step)."""
        named = {p.id: p.bound_key for p in bound
                 if p.id in port_ids and p.bound_key}
        out: dict[str, tuple[str, str]] = {}
        for step in the_plan.steps:
            dvs = inv.dvs(step.switch)
            if isinstance(step, plan_mod.ReservePort) and \
                    step.port_id in named and dvs is not None:
                out[step.port_id] = (dvs.moid, named[step.port_id])
        return out

    def _read_keys(self, keys: Iterable[tuple[str, str]]
                   ) -> inventory.Inventory:
        """The replica's inventory with these DV ports ((switch moid, key))
        read fresh from vCenter: one small FetchDVPorts per switch, however
        big their groups."""
        by_switch: dict[str, set[str]] = {}
        for moid, key in keys:
            by_switch.setdefault(moid, set()).add(key)
        for moid, keys in sorted(by_switch.items()):
            self.replica.refresh_port_keys(moid, keys)
        return self.replica.snapshot()

    def _read_back(self, inv: inventory.Inventory,
                   out: apply_mod.PortOutcome,
                   bound_keys: dict[str, str] | None = None
                   ) -> inventory.Inventory:
        """The inventory once this process's replica shows what ``out``
        wrote: the ports written, read by key (a small read however big
        their groups: each port of a group may bring a shared filter of
        thousands of rules), and the ports of steps refused (changed
        meanwhile: a free port another server took) or failed, by key too
        -- with, for a reservation, the DV port the port's committed
        binding names (``bound_keys``: {port id: key}), where another
        process may have reserved it; a group that gained ports once the
        replica shows them.  Without a replica, whole groups.

        The ports written are read by the replica itself, in its thread,
        when it sees their task end -- before the task's wait returns
        (``Session.run_task(read_back=...)``, the replica being the
        session's task watcher): nothing is read here for them, and the
        replica's snapshot already has their new configVersion.  Only
        without that (no replica, or one not watching this session's
        tasks) are they read here."""
        bound_keys = bound_keys or {}
        # A step without a key failed growing its group: the replica reads
        # the ports a group gains (its portKeys), nothing to read here.
        # One with a key (its task failed or timed out: done or not) is
        # read by that key.
        whole: set[str] = set()
        keys: list[tuple[str, str]] = []        # (switch moid, key)
        for s, _ in out.failed:
            dvs = inv.dvs(s.switch)
            if s.key and dvs is not None and self.replica is not None:
                keys.append((dvs.moid, s.key))
            elif s.key:
                whole.add(s.portgroup_key)
        changed: set[str] = set()       # refused growing
        for s in out.stale:
            if s.portgroup_key in out.grown:
                continue
            if not s.key and self.replica is not None:
                changed.add(s.portgroup_key)
                continue
            dvs = inv.dvs(s.switch)
            if dvs is None or not s.key:
                whole.add(s.portgroup_key)
                continue
            # The port refused, by key: a free one another server took
            # shows so, and the next plan takes another.
            keys.append((dvs.moid, s.key))
            if isinstance(s, plan_mod.ReservePort) and \
                    s.port_id in bound_keys:
                keys.append((dvs.moid, bound_keys[s.port_id]))
        if self.replica is None:
            done = {s.portgroup_key for s in out.done}
            stale = {s.portgroup_key for s in out.stale
                     if s.portgroup_key not in out.grown}
            return self._refresh_ports(inv, whole | stale | done,
                                       "read back without a replica")
        if self.session.watcher is not self.replica:
            keys += _step_keys(inv, [s for s in out.done
                                     if s.portgroup_key not in whole])
        self._read_keys(keys)
        if out.grown or changed:
            # The replica reads a group's ports when its port list changes,
            # and shows a group changed by another worker.
            was = {pg.key: pg.config_version for pg in inv.dvs_portgroups
                   if pg.key in changed}
            left = self.session.time_left()
            self.replica.wait_until(lambda fresh: all(
                len(fresh.dv_ports.get(key, ())) >= size
                for key, size in out.grown.items()) and all(
                pg.config_version != was.get(pg.key)
                for pg in fresh.dvs_portgroups if pg.key in changed),
                self.settings.task_timeout if left is None
                else max(0.0, left))
        return self._refresh_ports(inv, whole, "steps refused or failed") \
            if whole else self.replica.snapshot()

    def port_for(self, spec: desired_mod.PortSpec, source: NetworkSource,
                 deadline: float) -> inventory.DvPort:
        """The DV port reserved for a port being bound (``spec.physnet``
        set to the segment it binds to), by ``deadline``: reserved with
        its settings, or -- reserved already -- named for it again with
        the configVersion the replica shows, so that the key handed to
        Nova is this port's in vCenter's own answer, not only in this
        process's memory (another server may have released it and given
        it to another port).  One write, every time: a replica does not
        see another process rename a DV port."""
        confirm = frozenset({spec.id})
        result = self.sync_ports(
            {spec.id}, source, lambda ids: [spec],
            wait=max(0.0, deadline - time.monotonic()), report_status=False,
            fresh=False, confirm=confirm, group_filters=False)
        port = result.plan.reserved.get(spec.id)
        problems = [c.reason for c in result.plan.conflicts] + \
            [str(exc) for _, exc in result.outcome.failed]
        if port is None or problems:
            raise exceptions.VSphereFault(
                f"DV port for port {spec.id}",
                "; ".join(problems) or "its port group is not ready for "
                                       "per-port settings yet")
        written = {s.key for s in result.outcome.done if s.port_id == spec.id
                   and isinstance(s, (plan_mod.ReservePort,
                                      plan_mod.ConfigurePort))}
        if port.key not in written:
            raise exceptions.TransientFault(
                f"DV port for port {spec.id}",
                f"DV port {port.key} was not confirmed as this port's by "
                f"vCenter in time")
        return port

    @staticmethod
    def _trouble(pg: desired_mod.DesiredPortGroup,
                 the_plan: plan_mod.Plan) -> bool:
        return any(s.name == pg.name for s in the_plan.steps) or \
            any(c.name == pg.name for c in the_plan.conflicts)


def _with_networks(nets: dict[str, desired_mod.NetworkSpec],
                   wanted: set[str], source: NetworkSource
                   ) -> dict[str, desired_mod.NetworkSpec]:
    """``nets`` with the networks of ``wanted`` it lacks read from
    Neutron (one read, none when it has them all)."""
    missing = wanted - set(nets)
    if not missing:
        return nets
    return {**nets, **{n.id: n for n in source(missing)}}


def _step_keys(inv: inventory.Inventory, steps: Iterable[plan_mod.PortStep]
               ) -> list[tuple[str, str]]:
    """(switch moid, DV port key) of these steps, where both are known."""
    return [(dvs.moid, s.key) for s in steps
            if s.key and (dvs := inv.dvs(s.switch)) is not None]


def _joining(steps: Iterable[plan_mod.PortStep], inv: inventory.Inventory
             ) -> bool:
    """Whether one of these steps has a DV port drop its own filter for
    the one its port group holds (it joins a shared filter).  Each group
    concerned is looked through once, not once per step."""
    inheriting = {(s.portgroup_key, s.key) for s in steps
                  if isinstance(s, plan_mod.ConfigurePort) and s.key and
                  s.settings.rules is None}
    return any((pg_key, p.key) in inheriting and
               p.settings.rules is not None
               for pg_key in {k for k, _ in inheriting}
               for p in inv.dv_ports.get(pg_key, ()))


def _find(pg: desired_mod.DesiredPortGroup, inv: inventory.Inventory
          ) -> inventory.DvsPortGroup | inventory.StdNetwork | None:
    """The vSphere object of a desired port group in an inventory."""
    if pg.kind == desired_mod.DVS:
        dvs = inv.dvs(pg.switch)
        for have in inv.dvs_portgroups:
            if dvs and have.dvs_moid == dvs.moid and have.name == pg.name:
                return have
        return None
    return inv.std_networks.get(pg.name)

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

"""The pure difference between desired port groups and what vCenter has.

``plan()`` reads nothing and writes nothing: it takes the desired port groups
and an inventory snapshot and returns a :class:`Plan` -- ordered steps plus the
problems it refuses to act on (a name held by a port group we did not create).
The same plan is printed by the CLI, asserted by the tests and run by
:mod:`networking_vcenter.reconcile.apply`.

Ownership rules, applied here once:

* a distributed port group is ours when its description carries our mark (set
  in the very spec that creates it);
* a standard port group is ours when its vSphere network carries our custom
  attribute, or -- where vSphere has no custom attributes (a standalone ESXi
  host) -- when it is named exactly the UUID of a network in scope;
* what is not ours is never changed or deleted, and a desired name held by it
  is reported as a conflict naming both.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import zlib
from collections.abc import Callable, Iterable

from networking_vcenter.reconcile.desired import DVS, DesiredPort, \
    DesiredPortGroup
from networking_vcenter.vsphere import inventory as inv_mod
from networking_vcenter.vsphere.inventory import Inventory, PortSettings

UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-"
                     r"[0-9a-f]{12}$")


@dataclasses.dataclass(frozen=True)
class Step:
    network_id: str
    name: str

    verb = "?"

    def describe(self) -> str:
        return f"{self.verb} {self.name}"


@dataclasses.dataclass(frozen=True)
class CreateDvsPortGroup(Step):
    switch: str
    vlan: inv_mod.Vlan
    physnet: str
    verb = "create"

    def describe(self) -> str:
        return (f"create distributed port group {self.name} on {self.switch} "
                f"({vlan_text(self.vlan)}) for network {self.network_id}")


@dataclasses.dataclass(frozen=True)
class UpdateDvsPortGroup(Step):
    switch: str
    moid: str
    vlan: inv_mod.Vlan
    old_vlan: inv_mod.Vlan | None
    physnet: str
    verb = "retag"

    def describe(self) -> str:
        return (f"retag distributed port group {self.name} ({self.moid}) on "
                f"{self.switch}: {vlan_text(self.old_vlan)} -> "
                f"{vlan_text(self.vlan)}")


@dataclasses.dataclass(frozen=True)
class ConvertDvsPortGroup(UpdateDvsPortGroup):
    """Made by an earlier version: give it the policy per-port settings
    need (static ports, overrides allowed) and the closed default traffic
    filter (a port the driver has not configured drops all IP), in place:
    its VLAN, ports and their own settings stay; no NIC is detached."""

    verb = "convert"

    def describe(self) -> str:
        return (f"convert distributed port group {self.name} ({self.moid}) "
                f"on {self.switch} to per-port policies, unconfigured ports "
                f"closed")


@dataclasses.dataclass(frozen=True)
class DeleteDvsPortGroup(Step):
    switch: str
    moid: str
    vm_count: int
    verb = "delete"

    def describe(self) -> str:
        busy = f" (still used by {self.vm_count} VM(s))" if self.vm_count \
            else ""
        return (f"delete distributed port group {self.name} ({self.moid}) on "
                f"{self.switch}{busy}")


@dataclasses.dataclass(frozen=True)
class AddHostPortGroup(Step):
    host_moid: str
    host: str
    vswitch: str
    vlan: int
    security: inv_mod.Security | None = None
    verb = "create"

    def describe(self) -> str:
        return (f"create port group {self.name} on {self.host}/{self.vswitch} "
                f"({vlan_text(self.vlan)})")


@dataclasses.dataclass(frozen=True)
class UpdateHostPortGroup(Step):
    host_moid: str
    host: str
    vswitch: str
    vlan: int
    old_vlan: int
    security: inv_mod.Security | None = None
    old_security: inv_mod.Security | None = None
    verb = "retag"

    def describe(self) -> str:
        if self.vlan == self.old_vlan:
            return (f"set the security policy of port group {self.name} on "
                    f"{self.host}/{self.vswitch}: "
                    f"{security_text(self.old_security)} -> "
                    f"{security_text(self.security)}")
        return (f"retag port group {self.name} on {self.host}/{self.vswitch}: "
                f"{vlan_text(self.old_vlan)} -> {vlan_text(self.vlan)}")


def security_text(security: inv_mod.Security | None) -> str:
    if security is None:
        return "the vSwitch's"
    names = ("promiscuous", "MAC changes", "forged transmits")
    return ", ".join(f"{n} {'allowed' if v else 'rejected'}"
                     for n, v in zip(names, security) if v is not None)


@dataclasses.dataclass(frozen=True)
class RemoveHostPortGroup(Step):
    host_moid: str
    host: str
    vm_count: int
    verb = "delete"

    def describe(self) -> str:
        busy = f" (still used by {self.vm_count} VM(s))" if self.vm_count \
            else ""
        return f"delete port group {self.name} on {self.host}{busy}"


@dataclasses.dataclass(frozen=True)
class MarkStdNetwork(Step):
    """Set our custom attribute on a standard network once it exists."""

    verb = "mark"

    def describe(self) -> str:
        return f"mark standard network {self.name} as managed"


@dataclasses.dataclass(frozen=True)
class Conflict:
    network_id: str
    name: str
    reason: str

    def describe(self) -> str:
        return self.reason


@dataclasses.dataclass
class Plan:
    steps: list[Step] = dataclasses.field(default_factory=list)
    conflicts: list[Conflict] = dataclasses.field(default_factory=list)
    in_sync: list[DesiredPortGroup] = dataclasses.field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.steps)

    def describe(self) -> list[str]:
        return [s.describe() for s in self.steps] + \
            [f"CONFLICT: {c.describe()}" for c in self.conflicts]

    def for_network(self, network_id: str) -> "Plan":
        return Plan([s for s in self.steps if s.network_id == network_id],
                    [c for c in self.conflicts if c.network_id == network_id],
                    [d for d in self.in_sync if d.network_id == network_id])


vlan_text = inv_mod.vlan_text


def _owned_std(name: str, net: inv_mod.StdNetwork | None, inv: Inventory,
               scope: set[str] | None) -> str | None:
    """The network id owning a standard port group name, or None if foreign."""
    if net is not None and net.owner:
        return net.owner
    if not inv.custom_fields and UUID_RE.match(name) and \
            (scope is None or name in scope):
        return name
    return None


def _made_by(mark: "inv_mod.Mark | None") -> str:
    if mark is None:
        return "was not made by networking-vcenter"
    return (f"was made by networking-vcenter deployment "
            f"'{mark.deployment}' for network {mark.network_id}")


def _unmarked_but_ours(d: DesiredPortGroup, inv: Inventory) -> bool:
    """An unmarked standard port group that can only be ours, mid-creation.

    Our custom attribute is set after the port group exists (a host port
    group has no description to carry it), so another worker -- or a crash
    -- can leave ours unmarked for a while.  Its name is the network's UUID,
    which nobody could know before the network existed; when every copy also
    has exactly the wanted vSwitch and VLAN, it is what we would have made,
    and it is adopted.  Anything else of that name stays a conflict.

    The live replica may show the Network before the hosts' port group
    lists that carry it (they change in separate updates): with no copy
    seen yet, nothing contradicts it either.  The writes that follow are
    owner-checked against what vCenter answers (an existing copy is taken
    only if it is exactly ours), so a wrong guess changes nothing.
    """
    copies = [h.portgroups[d.name] for h in inv.hosts.values()
              if d.name in h.portgroups]
    return UUID_RE.match(d.name) is not None and all(
        pg.vswitch == d.switch and pg.vlan == d.switch_vlan
        for pg in copies)


def plan(desired: Iterable[DesiredPortGroup], inv: Inventory,
         scope: set[str] | None = None,
         skip: set[str] | frozenset[str] = frozenset(),
         closed_by_token: bool = False) -> Plan:
    """Steps that make vCenter hold ``desired``.

    ``scope`` is the set of network ids this pass is about; port groups owned
    by networks outside it are left alone.  ``None`` means every network:
    then port groups owned by networks that are not desired any more (deleted
    networks, unmapped physical networks) are orphans and get deleted.
    ``desired`` must hold every desired port group of the networks in scope.
    Port groups of networks in ``skip`` are left alone whatever they look like
    (networks changed too recently for a full pass to judge).
    A group of ours whose defaults are not known closed is converted
    first: its default filter, parsed, is not the drop-all; or, with
    ``closed_by_token`` (shared filters, whose reads pass over the group
    filters), its description names no digest of defaults written by us
    (a group of an earlier version: each of our writes of a group's
    defaults, closed or shared, names one; hand edits under a digest are
    the shared filters' to find, :func:`plan_group_defaults`).
    """
    desired = list(desired)
    result = Plan()
    dvs_by_key = {(pg.dvs_moid, pg.name): pg for pg in inv.dvs_portgroups}
    names_in_dc: dict[str, list[str]] = {}
    for pg in inv.dvs_portgroups:
        dvs = inv.dvs_by_moid(pg.dvs_moid)
        names_in_dc.setdefault(pg.name, []).append(
            f"distributed port group on {dvs.name if dvs else pg.dvs_moid}")
    for net in inv.std_networks.values():
        names_in_dc.setdefault(net.name, []).append("standard network")

    wanted_dvs: set[tuple[str, str]] = set()
    wanted_host: set[tuple[str, str]] = set()

    for d in desired:
        if d.kind == DVS:
            dvs = inv.dvs(d.switch)
            if dvs is None:
                result.conflicts.append(Conflict(
                    d.network_id, d.name,
                    f"distributed switch {d.switch} of physical network "
                    f"{d.physnet} is gone from vCenter"))
                continue
            wanted_dvs.add((dvs.moid, d.name))
            have = dvs_by_key.get((dvs.moid, d.name))
            if have is None:
                clash = names_in_dc.get(d.name, [])
                if clash:
                    result.conflicts.append(Conflict(
                        d.network_id, d.name,
                        f"cannot create port group {d.name} for network "
                        f"{d.network_id}: the name is taken by a "
                        f"{clash[0]} not made by networking-vcenter"))
                    continue
                result.steps.append(CreateDvsPortGroup(
                    d.network_id, d.name, d.switch, d.switch_vlan,
                    d.physnet))
            elif have.owner != d.network_id:
                who = _made_by(have.mark)
                result.conflicts.append(Conflict(
                    d.network_id, d.name,
                    f"port group {d.name} ({have.moid}) on {d.switch}, "
                    f"wanted for network {d.network_id}, {who}; it is left "
                    f"untouched"))
            elif have.vlan != d.switch_vlan:
                result.steps.append(UpdateDvsPortGroup(
                    d.network_id, d.name, d.switch, have.moid, d.switch_vlan,
                    have.vlan, d.physnet))
            elif not getattr(have, "ports_ready", True) or not (
                    have.defaults_token is not None if closed_by_token
                    else getattr(have, "default_closed", True)):
                result.steps.append(ConvertDvsPortGroup(
                    d.network_id, d.name, d.switch, have.moid, d.switch_vlan,
                    have.vlan, d.physnet))
            else:
                result.in_sync.append(d)
            continue

        net = inv.std_networks.get(d.name)
        owner = _owned_std(d.name, net, inv, scope)
        if net is not None and owner is None and net.mark is None and \
                _unmarked_but_ours(d, inv):
            owner = d.network_id
        if net is not None and owner != d.network_id:
            hosts = sorted(inv.hosts[h].name for h in net.host_moids
                           if h in inv.hosts)
            result.conflicts.append(Conflict(
                d.network_id, d.name,
                f"standard port group {d.name} for network {d.network_id} "
                f"already exists on {', '.join(hosts) or 'some host'} and "
                f"{_made_by(net.mark)}; it is left untouched"))
            continue
        if net is None and d.name in names_in_dc:
            # Only other kinds of network carry this name: a clash.
            result.conflicts.append(Conflict(
                d.network_id, d.name,
                f"cannot create port group {d.name} for network "
                f"{d.network_id}: the name is taken by a "
                f"{names_in_dc[d.name][0]} not made by networking-vcenter"))
            continue
        added = drift = False
        for moid in sorted(d.host_moids):
            host = inv.hosts.get(moid)
            if host is None:
                continue
            wanted_host.add((moid, d.name))
            have_pg = host.portgroups.get(d.name)
            if have_pg is None:
                result.steps.append(AddHostPortGroup(
                    d.network_id, d.name, moid, host.name, d.switch,
                    d.switch_vlan, d.security))
                added = True
            elif have_pg.vswitch != d.switch:
                # A port group cannot move between vSwitches: re-create it.
                result.steps.append(RemoveHostPortGroup(
                    d.network_id, d.name, moid, host.name, 0))
                result.steps.append(AddHostPortGroup(
                    d.network_id, d.name, moid, host.name, d.switch,
                    d.switch_vlan, d.security))
                added = True
            elif have_pg.vlan != d.switch_vlan or (
                    d.security is not None and
                    have_pg.security != d.security):
                security = d.security if d.security is not None \
                    else have_pg.security
                result.steps.append(UpdateHostPortGroup(
                    d.network_id, d.name, moid, host.name, d.switch,
                    d.switch_vlan, have_pg.vlan, security, have_pg.security))
                drift = True
        unmarked = inv.custom_fields and (
            net.owner != d.network_id if net is not None else added)
        if unmarked:
            result.steps.append(MarkStdNetwork(d.network_id, d.name))
        if not (added or drift or unmarked):
            result.in_sync.append(d)

    def in_reach(owner: str | None) -> bool:
        """Ours, in scope, and not one of the networks to leave alone."""
        return owner is not None and owner not in skip and \
            (scope is None or owner in scope)

    # Orphans: ours, in scope, not desired.
    for pg in inv.dvs_portgroups:
        if not in_reach(pg.owner):
            continue
        if (pg.dvs_moid, pg.name) in wanted_dvs:
            continue
        dvs = inv.dvs_by_moid(pg.dvs_moid)
        result.steps.append(DeleteDvsPortGroup(
            pg.owner, pg.name, dvs.name if dvs else pg.dvs_moid, pg.moid,
            pg.vm_count))
    for moid, host in sorted(inv.hosts.items()):
        for name in sorted(host.portgroups):
            if (moid, name) in wanted_host:
                continue
            net = inv.std_networks.get(name)
            owner = _owned_std(name, net, inv, scope)
            if not in_reach(owner):
                continue
            vms = net.vm_count if net is not None else 0
            result.steps.append(RemoveHostPortGroup(
                owner, name, moid, host.name, vms))
    return result


# -- switch MTUs ------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class RaiseDvsMtu(Step):
    """Raise a distributed switch's maxMtu to the largest MTU of the
    networks on it (``[ml2_vcenter] raise_switch_mtu``); ``name`` is the
    switch's, ``network_id`` one network that needs it."""

    moid: str
    mtu: int
    old_mtu: int
    verb = "raise"

    def describe(self) -> str:
        return (f"raise the maxMtu of distributed switch {self.name} "
                f"({self.moid}) from {self.old_mtu} to {self.mtu} for "
                f"network {self.network_id}")


def plan_mtu(desired: Iterable[DesiredPortGroup],
             mtus: dict[str, int | None], inv: Inventory
             ) -> list[RaiseDvsMtu]:
    """One step per distributed switch whose maxMtu is below the MTU
    (``mtus``: network id -> MTU) of a desired network on it; never a
    lower MTU."""
    need: dict[str, tuple[int, str]] = {}
    for d in desired:
        mtu = mtus.get(d.network_id)
        dvs = inv.dvs(d.switch) if d.kind == DVS else None
        if not mtu or dvs is None or dvs.max_mtu is None or \
                mtu <= dvs.max_mtu:
            continue
        if mtu > need.get(d.switch, (0, ""))[0]:
            need[d.switch] = (mtu, d.network_id)
    steps = []
    for switch, (mtu, network_id) in sorted(need.items()):
        dvs = inv.dvs(switch)
        steps.append(RaiseDvsMtu(network_id, switch, dvs.moid, mtu,
                                 dvs.max_mtu))
    return steps


# -- distributed ports ------------------------------------------------------
#
# A Neutron port bound on a distributed switch owns one DV port of its
# network's port group: the port *named* after the Neutron port id (vCenter
# has no "reserved" state; the name is the reservation, found again after a
# restart or a lost race).  Its settings are the port's policy.  Everything
# below is pure, like plan(): the applier runs the steps, each DV port spec
# carrying the configVersion the plan saw, so a port changed since by anybody
# is refused by vCenter (ConcurrentAccess) and planned again from a fresh
# read.

@dataclasses.dataclass(frozen=True)
class PortStep:
    port_id: str                  # the Neutron port (a release: the old name)
    network_id: str
    switch: str
    portgroup: str                # port group name
    portgroup_key: str
    key: str | None               # DV port key; None: none free, grow first
    config_version: str | None
    settings: PortSettings
    name: str | None = None       # new name (None: unchanged)

    verb = "?"

    def describe(self) -> str:
        where = f"port {self.key}" if self.key else "a new port"
        return (f"{self.verb} {where} of {self.portgroup} on {self.switch} "
                f"for Neutron port {self.port_id}")


@dataclasses.dataclass(frozen=True)
class ReservePort(PortStep):
    verb = "reserve"


@dataclasses.dataclass(frozen=True)
class ConfigurePort(PortStep):
    verb = "configure"


@dataclasses.dataclass(frozen=True)
class ReleasePort(PortStep):
    verb = "release"


@dataclasses.dataclass(frozen=True)
class PortConflict:
    port_id: str
    network_id: str
    reason: str


@dataclasses.dataclass
class PortPlan:
    steps: list[PortStep] = dataclasses.field(default_factory=list)
    conflicts: list[PortConflict] = dataclasses.field(default_factory=list)
    reserved: dict[str, inv_mod.DvPort] = dataclasses.field(
        default_factory=dict)        # port id -> its DV port, as seen
    status: dict[str, str] = dataclasses.field(
        default_factory=dict)        # port id -> status Neutron should show
    waiting: set[str] = dataclasses.field(default_factory=set)
                                     # ports whose port group is not ready
    trunk_status: dict[str, str] = dataclasses.field(
        default_factory=dict)        # trunk id -> status Neutron should show

    def __bool__(self) -> bool:
        return bool(self.steps)

    def describe(self) -> list[str]:
        return [s.describe() for s in self.steps] + \
            [f"CONFLICT: port {c.port_id}: {c.reason}"
             for c in self.conflicts]


ACTIVE = "ACTIVE"
DOWN = "DOWN"
DEGRADED = "DEGRADED"
ERROR = "ERROR"
# The name a released DV port gets.  Not "": an empty name in a port spec
# means "unchanged" to some implementations (the simulator), and an explicit
# word tells an operator looking at the switch what happened.  A port named
# "" (never reserved) or FREE is free.
FREE = "free"


def plan_ports(desired: Iterable[DesiredPort], inv: Inventory,
               released: Callable[[bool], PortSettings],
               scope: set[str] | None = None,
               keep: set[str] | frozenset[str] = frozenset(),
               confirm: set[str] | frozenset[str] = frozenset()) -> PortPlan:
    """Steps that give every desired port its DV port, as it should be.

    ``scope``: the Neutron port ids this pass is about (None: every port;
    then reservations of ports not desired are released).  ``keep``: port
    ids whose reservations are left alone even if not desired (ports whose
    binding may be under way).  ``released(connected)`` gives the
    settings of a released port.  Port groups whose ports are unread or
    not ready for per-port settings (made by an older version, converted
    first by plan()) are left for a later pass.  ``confirm``: ports whose
    reservation is written again even when it looks right (its name with
    the configVersion seen, so that vCenter refuses it if the port was
    renamed or released meanwhile): a bind hands the key to Nova only
    once vCenter has said it is this port's.

    Of two DV ports named for one Neutron port, the one its committed
    binding gave Nova (``bound_key``) is kept, else the one a NIC is on,
    else the lowest key.  A port whose policy cannot be had
    (``problem``) gets its blocked settings and the status ERROR.
    """
    result = PortPlan()
    desired = list(desired)
    groups: dict[tuple[str, str], inv_mod.DvsPortGroup] = {}
    for pg in inv.dvs_portgroups:
        groups[(pg.dvs_moid, pg.name)] = pg
    by_name: dict[str, list[inv_mod.DvPort]] = {}
    taken: set[tuple[str, str]] = set()     # (pg key, port key) in use
    for pg_key, ports in inv.dv_ports.items():
        for p in ports:
            if p.name:
                by_name.setdefault(p.name, []).append(p)
    ours = {pg.key: pg for pg in inv.dvs_portgroups if pg.owner}

    def step_for(cls, port, d_or_none, pg, settings, name=None,
                 port_id=None, network_id=None):
        dvs = inv.dvs_by_moid(pg.dvs_moid)
        return cls(port_id or d_or_none.port_id,
                   network_id or (d_or_none.network_id if d_or_none
                                  else pg.owner or ""),
                   dvs.name if dvs else pg.dvs_moid, pg.name, pg.key,
                   port.key if port else None,
                   port.config_version if port else None, settings, name)

    wanted: set[str] = set()
    reserve: dict[str, list[tuple[DesiredPort, inv_mod.DvsPortGroup]]] = {}
    for d in desired:
        wanted.add(d.port_id)
        dvs = inv.dvs(d.pg.switch)
        pg = groups.get((dvs.moid, d.pg.name)) if dvs else None
        if pg is None or pg.owner != d.network_id or \
                not getattr(pg, "ports_ready", True) or \
                pg.key not in inv.dv_ports:
            result.waiting.add(d.port_id)
            taken.update((p.portgroup_key, p.key)
                         for p in by_name.get(d.port_id, ()))
            continue
        mine = [p for p in by_name.get(d.port_id, ())
                if p.portgroup_key == pg.key]
        # Keep one: the one Nova was given, else the connected one, else
        # the lowest key.
        mine.sort(key=lambda p: (p.key != d.bound_key, not p.connected,
                                 _key_order(p.key)))
        for extra in mine[1:]:
            result.steps.append(step_for(ReleasePort, extra, d, pg,
                                         released(extra.connected), FREE))
            taken.add((pg.key, extra.key))
        if d.problem:
            result.conflicts.append(PortConflict(d.port_id, d.network_id,
                                                 d.problem))
        if mine:
            have = mine[0]
            taken.add((pg.key, have.key))
            result.reserved[d.port_id] = have
            if d.settings is not None and (have.settings != d.settings or
                                           d.port_id in confirm):
                result.steps.append(step_for(
                    ConfigurePort, have, d, pg, d.settings,
                    d.port_id if d.port_id in confirm else None))
            status = ERROR if d.problem else ACTIVE if have.connected \
                else DOWN
            if d.status and d.status != status:
                result.status[d.port_id] = status
            if d.trunk is not None:
                _trunk_status(d, have, status, result)
        elif d.settings is not None:
            reserve.setdefault(pg.key, []).append((d, pg))
            status = ERROR if d.problem else DOWN
            if d.status and d.status != status:
                result.status[d.port_id] = status

    # Reservations held elsewhere (moved, unbound, deleted): released.
    for name, ports in sorted(by_name.items()):
        if not UUID_RE.match(name) or name in keep or \
                (scope is not None and name not in scope):
            continue
        for p in ports:
            pg = ours.get(p.portgroup_key)
            if pg is None or (pg.key, p.key) in taken:
                continue
            result.steps.append(step_for(ReleasePort, p, None, pg,
                                         released(p.connected), FREE,
                                         port_id=name))

    # New reservations take free ports: no name (or FREE), no NIC.  Which
    # one is spread by the Neutron port's id: a replica does not see
    # another server's reservations, and two servers taking the lowest
    # free key would each other's (refused by vCenter, read again).
    for pg_key, wants in reserve.items():
        free = [p for p in inv.dv_ports.get(pg_key, ())
                if p.name in ("", FREE) and not p.connected
                and (pg_key, p.key) not in taken]
        free.sort(key=lambda p: _key_order(p.key))
        for d, pg in wants:
            port = free.pop(_spread(d.port_id, len(free))) if free else None
            result.steps.append(step_for(ReservePort, port, d, pg,
                                         d.settings, d.port_id))
    return result


def _spread(port_id: str, n: int) -> int:
    """An index in ``range(n)`` drawn from a Neutron port's id, the same in
    every process."""
    return zlib.crc32(port_id.encode()) % n


def _trunk_status(d: DesiredPort, have: inv_mod.DvPort, status: str,
                  result: PortPlan) -> None:
    """A trunk parent's subports show the parent's status; the trunk is
    ACTIVE once the parent's DV port carries its settings (DEGRADED if
    some subports are not carried as asked), ERROR if its settings cannot
    be had; while they are being written it keeps its status."""
    for sub in d.trunk.subports:
        if sub.port.status != status:
            result.status[sub.port.id] = status
    if d.settings is None or d.problem:
        trunk = ERROR
    elif have.settings == d.settings:
        trunk = DEGRADED if d.trunk_problems else ACTIVE
    else:
        return
    if trunk != d.trunk.status:
        result.trunk_status[d.trunk.id] = trunk


def _key_order(key: str):
    return (0, int(key), "") if key.isdigit() else (1, 0, key)


# -- shared filters (shared_security_filter) ---------------------------------

@dataclasses.dataclass(frozen=True)
class GroupDefaults:
    """What a distributed port group's defaults should hold: ``blocked``
    (a port the driver has not configured passes nothing) and the shared
    traffic filter of its ``sharing`` ports (inherited by them)."""

    network_id: str
    blocked: bool
    rules: tuple[inv_mod.TrafficRule, ...] = dataclasses.field(repr=False)
    sharing: int = 0

    @functools.cached_property
    def token(self) -> str:
        """The digest of what is wanted (thousands of rules: made once)."""
        return inv_mod.defaults_token(self.blocked, self.rules)


@dataclasses.dataclass(frozen=True)
class SetGroupDefaults:
    network_id: str
    switch: str
    portgroup: str
    portgroup_key: str
    config_version: str | None
    description: str               # the group's, naming the new token
    want: GroupDefaults

    def describe(self) -> str:
        return (f"set the defaults of {self.portgroup} on {self.switch}: "
                f"{self.want.sharing} port(s) share its filter of "
                f"{len(self.want.rules)} rules")


def plan_group_defaults(wanted: dict[str, GroupDefaults], inv: Inventory,
                        untrue: frozenset[str] | set[str] = frozenset()
                        ) -> list[SetGroupDefaults]:
    """Steps giving our port groups (by key) ``wanted`` defaults: those
    whose description does not name the token of what is wanted, and those
    of ``untrue``, whose defaults were found not to be what their
    description names (edited by hand).  A group not (yet) in ``inv``, or
    not ours, is left alone."""
    steps = []
    for pg in inv.dvs_portgroups:
        want = wanted.get(pg.key)
        if want is None or pg.owner != want.network_id:
            continue
        token = want.token
        if pg.defaults_token == token and pg.key not in untrue:
            continue
        dvs = inv.dvs_by_moid(pg.dvs_moid)
        steps.append(SetGroupDefaults(
            want.network_id, dvs.name if dvs else pg.dvs_moid, pg.name,
            pg.key, pg.config_version,
            inv_mod.with_defaults_token(pg.description, token,
                                        pg.config_version), want))
    return sorted(steps, key=lambda s: s.portgroup_key)

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
import re
from collections.abc import Iterable

from networking_vcenter.reconcile.desired import DVS, DesiredPortGroup
from networking_vcenter.vsphere import inventory as inv_mod
from networking_vcenter.vsphere.inventory import Inventory

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
    vlan: int
    physnet: str
    verb = "create"

    def describe(self) -> str:
        return (f"create distributed port group {self.name} on {self.switch} "
                f"({vlan_text(self.vlan)}) for network {self.network_id}")


@dataclasses.dataclass(frozen=True)
class UpdateDvsPortGroup(Step):
    switch: str
    moid: str
    vlan: int
    old_vlan: int | None
    physnet: str
    verb = "retag"

    def describe(self) -> str:
        return (f"retag distributed port group {self.name} ({self.moid}) on "
                f"{self.switch}: {vlan_text(self.old_vlan)} -> "
                f"{vlan_text(self.vlan)}")


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
    verb = "retag"

    def describe(self) -> str:
        return (f"retag port group {self.name} on {self.host}/{self.vswitch}: "
                f"{vlan_text(self.old_vlan)} -> {vlan_text(self.vlan)}")


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


def vlan_text(vlan: int | None) -> str:
    if vlan is None:
        return "trunk/other"
    return f"VLAN {vlan}" if vlan else "untagged"


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
        pg.vswitch == d.switch and pg.vlan == d.vlan for pg in copies)


def plan(desired: Iterable[DesiredPortGroup], inv: Inventory,
         scope: set[str] | None = None,
         skip: set[str] | frozenset[str] = frozenset()) -> Plan:
    """Steps that make vCenter hold ``desired``.

    ``scope`` is the set of network ids this pass is about; port groups owned
    by networks outside it are left alone.  ``None`` means every network:
    then port groups owned by networks that are not desired any more (deleted
    networks, unmapped physical networks) are orphans and get deleted.
    ``desired`` must hold every desired port group of the networks in scope.
    Port groups of networks in ``skip`` are left alone whatever they look like
    (networks changed too recently for a full pass to judge).
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
                    d.network_id, d.name, d.switch, d.vlan, d.physnet))
            elif have.owner != d.network_id:
                who = _made_by(have.mark)
                result.conflicts.append(Conflict(
                    d.network_id, d.name,
                    f"port group {d.name} ({have.moid}) on {d.switch}, "
                    f"wanted for network {d.network_id}, {who}; it is left "
                    f"untouched"))
            elif have.vlan != d.vlan:
                result.steps.append(UpdateDvsPortGroup(
                    d.network_id, d.name, d.switch, have.moid, d.vlan,
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
                    d.network_id, d.name, moid, host.name, d.switch, d.vlan))
                added = True
            elif have_pg.vswitch != d.switch:
                # A port group cannot move between vSwitches: re-create it.
                result.steps.append(RemoveHostPortGroup(
                    d.network_id, d.name, moid, host.name, 0))
                result.steps.append(AddHostPortGroup(
                    d.network_id, d.name, moid, host.name, d.switch, d.vlan))
                added = True
            elif have_pg.vlan != d.vlan:
                result.steps.append(UpdateHostPortGroup(
                    d.network_id, d.name, moid, host.name, d.switch, d.vlan,
                    have_pg.vlan))
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

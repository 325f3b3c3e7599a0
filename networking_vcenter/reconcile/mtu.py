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

"""Network MTUs against the MTUs of the switches they reach (pure).

A Neutron VLAN or flat network's ``mtu`` is what its VMs are told (DHCP
option 26, the metadata service); a vSphere switch drops larger frames.  The
switch's MTU is a distributed switch's ``config.maxMtu``, or the ``mtu`` of
the standard vSwitch on each host that carries the port group (set per host:
hosts may differ).

What Neutron gives a network (ML2, neutron 29): the type driver's MTU of its
segment -- for ``vlan`` and ``flat`` the smaller of ``[DEFAULT]
global_physnet_mtu`` and ``[ml2] physical_network_mtus`` for that physical
network, each only where set (> 0) -- and for a network of several segments
the smallest of theirs.  ``[ml2] path_mtu`` is for tunnel types only and
never applies here.  A user may ask for a smaller MTU at create, or change
it later (the ``net-mtu-writable`` extension), never above that; ML2 stores
the result before the mechanism drivers' precommit, which sees it in
``context.current['mtu']``.

Nothing here reads or writes anything.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

from networking_vcenter import conf
from networking_vcenter.reconcile import desired as desired_mod
from networking_vcenter.vsphere.inventory import Inventory


@dataclasses.dataclass(frozen=True)
class SwitchMtu:
    """The MTU of one switch a physical network's port groups are on: a
    distributed switch, or a standard vSwitch on one host."""

    physnet: str
    kind: str                  # desired.DVS or desired.VSWITCH
    switch: str
    mtu: int | None            # None: not known (not a VMware switch)
    host: str | None = None    # VSWITCH: the host's name
    moid: str | None = None    # DVS: the switch's moid


def describe_all(switches: Iterable[SwitchMtu]) -> str:
    """Switch MTUs in words, a vSwitch's hosts of one MTU together."""
    groups: dict[tuple[str, str, int | None], list[str]] = {}
    for s in switches:
        groups.setdefault((s.kind, s.switch, s.mtu), []).append(
            s.host or "?")
    parts = []
    for (kind, switch, mtu), hosts in groups.items():
        if kind == desired_mod.DVS:
            parts.append(f"distributed switch {switch} (maxMtu {mtu})")
        else:
            parts.append(f"standard vSwitch {switch} on "
                         f"host{'s' if len(hosts) > 1 else ''} "
                         f"{', '.join(hosts)} (mtu {mtu})")
    return "; ".join(parts)


def switch_mtus(target: desired_mod.Target,
                inv: Inventory) -> list[SwitchMtu]:
    """The switch MTUs of one physical network's target, a vSwitch's per
    host (by host name)."""
    if target.kind == desired_mod.DVS:
        dvs = inv.dvs(target.switch)
        return [SwitchMtu(target.physnet, target.kind, target.switch,
                          dvs.max_mtu if dvs else None,
                          moid=dvs.moid if dvs else None)]
    out = []
    for moid in target.host_moids:
        host = inv.hosts.get(moid)
        if host is None:
            continue
        out.append(SwitchMtu(target.physnet, target.kind, target.switch,
                             host.vswitch_mtus.get(target.switch),
                             host=host.name))
    return sorted(out, key=lambda s: s.host or "")


def too_small(mtu: int | None, segments: Iterable[Mapping[str, Any]],
              topo: desired_mod.Topology, inv: Inventory,
              raise_dvs: bool = False) -> list[SwitchMtu]:
    """The switches that a network of ``mtu`` reaches through its mapped
    VLAN/flat ``segments`` and whose MTU is smaller; distributed switches
    left out with ``raise_dvs`` (they are raised instead)."""
    if not mtu:
        return []
    out = []
    for seg in segments:
        if seg.get("network_type") not in desired_mod.SUPPORTED_TYPES:
            continue
        target = topo.targets.get(seg.get("physical_network") or "")
        if target is None or (raise_dvs and target.kind == desired_mod.DVS):
            continue
        out.extend(s for s in switch_mtus(target, inv)
                   if s.mtu is not None and s.mtu < mtu and s not in out)
    return out


def problem(network_id: str, mtu: int, small: list[SwitchMtu]) -> str:
    """What is wrong with a network whose MTU its switches cannot carry."""
    physnets = sorted({s.physnet for s in small})
    return (f"network {network_id}: its MTU {mtu} is above the MTU of "
            f"{describe_all(small)} (physical network "
            f"{', '.join(physnets)}): vSphere would drop its larger frames")


def refusal(network_id: str, mtu: int, small: list[SwitchMtu]) -> str:
    """The API error for such a network."""
    return (problem(network_id, mtu, small) + ". Ask for an MTU of at most "
            f"{min(s.mtu for s in small)} (--mtu), or raise the switch's MTU"
            + (f" (a distributed switch's is raised with [{conf.GROUP}] "
               f"raise_switch_mtu = true)"
               if any(s.kind == desired_mod.DVS for s in small) else ""))


def type_driver_mtu(physnet: str, global_physnet_mtu: int,
                    physical_network_mtus: Mapping[str, Any]) -> int:
    """The largest MTU Neutron gives a VLAN or flat network on ``physnet``,
    as its type drivers compute it (0: unlimited)."""
    found = []
    if global_physnet_mtu and global_physnet_mtu > 0:
        found.append(int(global_physnet_mtu))
    if physnet in physical_network_mtus:
        found.append(int(physical_network_mtus[physnet]))
    return min(found) if found else 0


def neutron_options(cfg_conf: Any) -> tuple[int, dict[str, Any]]:
    """``global_physnet_mtu`` and ``[ml2] physical_network_mtus`` from
    Neutron's configuration (registered by Neutron in a server; the CLI
    registers them first)."""
    return (int(cfg_conf.global_physnet_mtu or 0),
            dict(cfg_conf.ml2.physical_network_mtus or {}))


@dataclasses.dataclass(frozen=True)
class Mismatch:
    """A mapped physical network whose networks may get an MTU above a
    switch's."""

    physnet: str
    neutron_mtu: int
    switches: tuple[SwitchMtu, ...]
    global_physnet_mtu: int
    physnet_mtu: Any             # physical_network_mtus' entry, or None

    def describe(self) -> str:
        options = f"global_physnet_mtu = {self.global_physnet_mtu}"
        if self.physnet_mtu is not None:
            options += (f", [ml2] physical_network_mtus {self.physnet}:"
                        f"{self.physnet_mtu}")
        return (f"physical network {self.physnet}: Neutron gives its "
                f"networks an MTU of up to {self.neutron_mtu} ({options}), "
                f"above the MTU of {describe_all(self.switches)}: networks "
                f"created there without a smaller --mtu are refused")


def mismatches(topo: desired_mod.Topology, inv: Inventory,
               global_physnet_mtu: int,
               physical_network_mtus: Mapping[str, Any],
               raise_dvs: bool = False) -> list[Mismatch]:
    """The mapped physical networks whose largest Neutron MTU exceeds a
    switch's (distributed switches left out with ``raise_dvs``)."""
    out = []
    for physnet, target in sorted(topo.targets.items()):
        top = type_driver_mtu(physnet, global_physnet_mtu,
                              physical_network_mtus)
        if not top or (raise_dvs and target.kind == desired_mod.DVS):
            continue
        small = tuple(s for s in switch_mtus(target, inv)
                      if s.mtu is not None and s.mtu < top)
        if small:
            out.append(Mismatch(physnet, top, small, global_physnet_mtu,
                                physical_network_mtus.get(physnet)))
    return out

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

"""Desired port groups, derived from Neutron networks and the configuration.

Nothing here is stored: the desired state of a network is recomputed from its
segments whenever it is needed, so the Neutron database stays the only truth.
Where each physical network's port groups go (a distributed switch, or a standard
vSwitch on the hosts of the mapped clusters) is the :class:`Topology`, built from
the configuration and one inventory snapshot; building it is also the start-up
validation of ``switch_mappings`` and ``compute_hosts``.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Iterable, Mapping
from typing import Any

from oslo_log import log as logging

from networking_vcenter import conf
from networking_vcenter import exceptions
from networking_vcenter.vsphere import inventory as inv_mod
from networking_vcenter.vsphere.inventory import Inventory, PortSettings, \
    Security

LOG = logging.getLogger(__name__)

DVS = "dvs"
VSWITCH = "vswitch"
SUPPORTED_TYPES = ("vlan", "flat")


@dataclasses.dataclass(frozen=True)
class Target:
    """Where the port groups of one physical network live."""

    physnet: str
    kind: str                      # DVS or VSWITCH
    switch: str
    dvs_uuid: str | None           # DVS only
    host_moids: frozenset[str]     # VSWITCH: hosts that carry the port
                                   # groups; DVS: member hosts
    mac_learning: bool = True      # DVS: MAC learning (6.6+) available


@dataclasses.dataclass(frozen=True)
class Topology:
    targets: dict[str, Target]                 # physnet -> target
    cluster_hosts: dict[str, frozenset[str]]   # cluster -> host moids
    compute_hosts: dict[str, str]              # nova-compute host -> cluster
    dvs_name_template: str

    def target_reaching(self, segment: Mapping[str, Any],
                        cluster: str) -> Target | None:
        """The switch of a VLAN/flat segment, when it reaches a host of
        ``cluster``."""
        if segment.get("network_type") not in SUPPORTED_TYPES:
            return None
        target = self.targets.get(segment.get("physical_network") or "")
        hosts = self.cluster_hosts.get(cluster, frozenset())
        if target is None or not (target.host_moids & hosts):
            return None
        return target


def is_mapped(segment: Mapping[str, Any],
              switch_mappings: Mapping[str, str]) -> bool:
    """A VLAN/flat segment on a physical network mapped to a switch: one
    this driver makes port groups for."""
    return segment.get("network_type") in SUPPORTED_TYPES and \
        segment.get("physical_network") in switch_mappings


def segment_hosts(segments: Iterable[Mapping[str, Any]], topology: Topology
                  ) -> dict[str, set[str]]:
    """Neutron's segment-to-host mappings for our compute hosts: each
    nova-compute host gets the segments (``id``, ``network_type``,
    ``physical_network``) whose switch reaches a host of its cluster."""
    segments = list(segments)
    return {host: {seg["id"] for seg in segments
                   if topology.target_reaching(seg, cluster) is not None}
            for host, cluster in topology.compute_hosts.items()}


@dataclasses.dataclass(frozen=True)
class DesiredPortGroup:
    network_id: str
    physnet: str
    kind: str
    switch: str
    name: str
    vlan: int                      # the segment's; 0: untagged (flat)
    host_moids: frozenset[str] = frozenset()   # VSWITCH only
    # VSWITCH only: the port group's own security policy (see
    # std_security); None leaves whatever it has.
    security: Security | None = None
    # A VLAN-transparent (flat) network: the guests tag, every VLAN passes.
    transparent: bool = False

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.kind, self.switch, self.name)

    @property
    def switch_vlan(self) -> inv_mod.Vlan:
        """The VLAN setting the port group holds: the segment's VLAN, or
        for a transparent network a trunk of VLANs 0-4094 on a distributed
        switch and VLAN 4095 on a standard vSwitch."""
        if not self.transparent:
            return self.vlan
        return inv_mod.TRUNK_ALL if self.kind == DVS else inv_mod.VSWITCH_ALL


@dataclasses.dataclass(frozen=True)
class NetworkSpec:
    """The part of a Neutron network the desired state depends on."""

    id: str
    segments: tuple[Mapping[str, Any], ...]
    changed_at: float | None = None    # epoch seconds of Neutron's updated_at
    vlan_transparent: bool = False     # set at create, never changed
    mtu: int | None = None             # the network's MTU
    # The default security group of the network's project: its ports can
    # share one filter in the port group (shared_security_filter).
    shared_group: str | None = None


@dataclasses.dataclass(frozen=True)
class SgRule:
    """One Neutron security group rule, as stored."""

    direction: str                      # "ingress" | "egress" (VM's view)
    ethertype: str                      # "IPv4" | "IPv6"
    protocol: str | None = None         # name or number text; None: any
    port_range_min: int | None = None
    port_range_max: int | None = None
    remote_ip_prefix: str | None = None
    remote_group_id: str | None = None
    remote_address_group_id: str | None = None
    id: str = ""


@dataclasses.dataclass(frozen=True)
class SecurityGroup:
    id: str
    stateful: bool
    rules: tuple[SgRule, ...]


@dataclasses.dataclass(frozen=True)
class BandwidthLimit:
    """A QoS ``bandwidth_limit`` rule (kbit/s, as Neutron stores it)."""

    direction: str                      # "ingress" | "egress" (VM's view)
    max_kbps: int
    max_burst_kbps: int = 0


@dataclasses.dataclass(frozen=True)
class PortSpec:
    """The part of a Neutron port its DV port depends on.

    ``remote_groups`` maps each security group referenced as a remote group
    by this port's rules to its members' addresses (fixed IPs and allowed
    address pair addresses of every port in it, host or CIDR text);
    ``address_groups`` each referenced address group to its CIDRs.  Both
    are filled by the reader so that translating a port needs nothing else.
    """

    id: str
    network_id: str
    host: str                           # binding:host_id ('' unbound)
    physnet: str | None                 # of the bound segment, if bound here
    mac: str
    fixed_ips: tuple[str, ...] = ()
    allowed_address_pairs: tuple[tuple[str, str | None], ...] = ()
    port_security: bool = True
    security_groups: tuple[SecurityGroup, ...] = ()
    remote_groups: dict[str, tuple[str, ...]] = dataclasses.field(
        default_factory=dict, hash=False)
    address_groups: dict[str, tuple[str, ...]] = dataclasses.field(
        default_factory=dict, hash=False)
    qos: tuple[BandwidthLimit, ...] = ()
    status: str = ""                    # Neutron's port status
    device_owner: str = ""
    trunk: "TrunkSpec | None" = None    # the trunk this port is parent of
    trunk_parent: str | None = None     # a subport: its trunk's parent
    # The DV port key its committed binding gave Nova (vif_details
    # dvs_port_key), if any: of two reservations, the one to keep.
    bound_key: str | None = None


# Segments as the trunk reads them: (network_type, physical_network,
# segmentation_id).
SegmentTuple = tuple[str, "str | None", "int | None"]


@dataclasses.dataclass(frozen=True)
class Subport:
    """One subport of a trunk: the port itself (addresses, security
    groups, port security, QoS; no binding), how the guest tags it, and
    its network's segments."""

    port: PortSpec
    segmentation_type: str
    segmentation_id: int
    segments: tuple[SegmentTuple, ...] = ()


@dataclasses.dataclass(frozen=True)
class TrunkSpec:
    """The trunk whose parent a port is: its subports and the segments of
    the parent's network (the parent's own VLAN is its bound segment's)."""

    id: str
    status: str
    subports: tuple[Subport, ...] = ()
    segments: tuple[SegmentTuple, ...] = ()


def _cluster_hosts(name: str, inv: Inventory,
                   problems: list[str]) -> frozenset[str]:
    found = inv.clusters.get(name, [])
    if len(found) == 1:
        return frozenset(found[0])
    if len(found) > 1:
        problems.append(f"[{conf.GROUP}] compute_hosts: cluster '{name}' is "
                        f"ambiguous: {len(found)} clusters have that name")
        return frozenset()
    # A standalone ESXi host is its own compute resource; accept its host name.
    by_host = [h.moid for h in inv.hosts.values() if h.name == name]
    if len(by_host) == 1:
        return frozenset(by_host)
    problems.append(f"[{conf.GROUP}] compute_hosts: cluster '{name}' does not "
                    f"exist in vCenter")
    return frozenset()


def build_topology(settings: conf.Settings, inv: Inventory,
                   strict: bool = True) -> Topology:
    """Resolve every mapping against vCenter; one problem line per mistake.

    ``strict`` (start-up, ``check``) refuses a standard vSwitch missing on
    some host of the mapped clusters; otherwise (a running server, where a
    host just joined a cluster and is not set up yet) those hosts are left
    out with a warning until they have it.
    """
    problems: list[str] = []
    # Hosts the inventory lists in a cluster but has not described yet (one
    # that is joining right now) count once they are described.
    cluster_hosts = {c: _cluster_hosts(c, inv, problems) & inv.hosts.keys()
                     for c in settings.clusters}
    all_hosts = frozenset().union(*cluster_hosts.values()) \
        if cluster_hosts else frozenset()
    targets = {}
    for physnet, switch in settings.switch_mappings.items():
        where = f"[{conf.GROUP}] switch_mappings: '{physnet}:{switch}'"
        dvss = inv.switches.get(switch, [])
        with_vswitch = sorted(inv.hosts[h].name for h in all_hosts
                              if switch in inv.hosts[h].vswitches)
        if len(dvss) > 1:
            problems.append(f"{where}: {len(dvss)} distributed switches are "
                            f"named '{switch}'")
        elif dvss and with_vswitch:
            problems.append(
                f"{where}: '{switch}' is both a distributed switch and a "
                f"standard vSwitch (on {', '.join(with_vswitch)}); rename one")
        elif dvss:
            dvs = dvss[0]
            if all_hosts and not (dvs.host_moids & all_hosts):
                LOG.warning("%s: no host of the mapped clusters is a member "
                            "of distributed switch %s; ports cannot be bound "
                            "there", where, switch)
            targets[physnet] = Target(
                physnet, DVS, switch, dvs.uuid, dvs.host_moids,
                mac_learning=inv_mod.mac_management_supported(dvs))
        elif with_vswitch:
            missing = sorted(inv.hosts[h].name for h in all_hosts
                             if switch not in inv.hosts[h].vswitches)
            if missing and strict:
                problems.append(
                    f"{where}: standard vSwitch '{switch}' is missing on "
                    f"host(s) {', '.join(missing)}")
            else:
                if missing:
                    LOG.warning("%s: standard vSwitch '%s' is missing on "
                                "host(s) %s; they get no port groups until "
                                "it is added", where, switch,
                                ", ".join(missing))
                targets[physnet] = Target(
                    physnet, VSWITCH, switch, None,
                    frozenset(h for h in all_hosts
                              if switch in inv.hosts[h].vswitches))
        else:
            problems.append(
                f"{where}: '{switch}' is neither a distributed switch in "
                f"vCenter nor a standard vSwitch on the hosts of clusters "
                f"{', '.join(settings.clusters) or '(none)'}")
    if problems:
        raise exceptions.ConfigError(problems)
    return Topology(targets=targets, cluster_hosts=cluster_hosts,
                    compute_hosts=dict(settings.compute_hosts),
                    dvs_name_template=settings.dvs_name_template)


def dvs_port_group_name(template: str, network_id: str, physnet: str,
                        vlan: int) -> str:
    return template.format(network_id=network_id, physical_network=physnet,
                           segmentation_id=vlan)


def desired_for_network(net: NetworkSpec, topo: Topology,
                        std_security: Mapping[str, Security] | None = None
                        ) -> list[DesiredPortGroup]:
    """The port groups one network needs: one per mapped VLAN/flat segment.

    At most one port group per switch and name: a second segment that would
    need the same one (two segments on one physical network, or two physical
    networks on one switch with a template that does not tell them apart) is
    skipped with a warning.  No name may be a substring of another, because
    Nova's name lookup matches substrings; the one tolerated case is the bare
    UUID of a standard port group inside the same network's distributed name.
    """
    result: list[DesiredPortGroup] = []
    seen: set[tuple[str, str, str]] = set()
    std_hosts: set[str] = set()
    for seg in net.segments:
        net_type = seg.get("network_type")
        physnet = seg.get("physical_network")
        if net_type not in SUPPORTED_TYPES:
            LOG.debug("network %s: %s segment ignored (only vlan and flat "
                      "become port groups)", net.id, net_type)
            continue
        target = topo.targets.get(physnet or "")
        if target is None:
            LOG.debug("network %s: physical network %s is not in "
                      "switch_mappings; segment ignored", net.id, physnet)
            continue
        if net.vlan_transparent and net_type != "flat":
            # Refused at create (the driver's check_vlan_transparency);
            # only a segment added later can be here.
            LOG.warning("network %s: %s segment on %s skipped: %s", net.id,
                        net_type, physnet, TRANSPARENT_VLAN)
            continue
        vlan = int(seg.get("segmentation_id") or 0) if net_type == "vlan" \
            else 0
        if target.kind == DVS:
            name = dvs_port_group_name(topo.dvs_name_template, net.id,
                                       physnet, vlan)
            hosts: frozenset[str] = frozenset()
        else:
            name = net.id
            hosts = target.host_moids
            if std_hosts & hosts:
                LOG.warning("network %s: segment on %s skipped: its standard "
                            "port group would be a second one named %s on "
                            "the same hosts", net.id, physnet, name)
                continue
            std_hosts |= hosts
        pg = DesiredPortGroup(net.id, physnet, target.kind, target.switch,
                              name, vlan, hosts,
                              (std_security or {}).get(net.id)
                              if target.kind == VSWITCH else None,
                              transparent=net.vlan_transparent)
        if pg.key in seen:
            LOG.warning("network %s: segment on %s skipped: port group %s on "
                        "%s is already made for another of its segments",
                        net.id, physnet, name, target.switch)
            continue
        seen.add(pg.key)
        result.append(pg)
    return result


TRANSPARENT_VLAN = (
    "a VLAN-transparent network must be flat on a physical network mapped "
    "to a vSphere switch: vSphere cannot carry a guest's VLAN tags inside "
    "another VLAN (no QinQ); a flat transparent network becomes a trunk "
    "port group of VLANs 0-4094 (VLAN 4095 on a standard vSwitch)")


def transparency_problems(segments: Iterable[Mapping[str, Any]],
                          switch_mappings: Mapping[str, str]) -> list[str]:
    """Why the mapped segments of a network cannot be VLAN-transparent
    (each mapped segment that is not flat); [] when they can."""
    return [f"its {seg.get('network_type')} segment "
            f"{seg.get('segmentation_id')} on physical network "
            f"{seg.get('physical_network')} (mapped to "
            f"{switch_mappings[seg.get('physical_network')]}) cannot be: "
            f"{TRANSPARENT_VLAN}"
            for seg in segments if is_mapped(seg, switch_mappings)
            and seg.get("network_type") != "flat"]


def name_problems(pgs: Iterable[DesiredPortGroup]) -> list[str]:
    """Names of one network that Nova's substring lookup would confuse."""
    pgs = list(pgs)
    problems = []
    for a in pgs:
        for b in pgs:
            if a is b or a.name not in b.name:
                continue
            if a.kind == VSWITCH and b.kind == DVS \
                    and a.network_id == b.network_id:
                continue
            if a.name == b.name and a.switch != b.switch:
                problems.append(f"port group name '{a.name}' would be used "
                                f"on both {a.switch} and {b.switch}")
            elif a.name != b.name:
                problems.append(f"port group name '{a.name}' is part of "
                                f"'{b.name}': Nova's lookup would confuse them")
    return problems


def check_length(pgs: Iterable[DesiredPortGroup]) -> list[str]:
    return [f"port group name '{pg.name}' is longer than "
            f"{conf.MAX_NAME_LENGTH} characters ([{conf.GROUP}] "
            f"dvs_port_group_name_template)"
            for pg in pgs if len(pg.name) > conf.MAX_NAME_LENGTH]


def network_from_neutron(network: Mapping[str, Any],
                         segments: Iterable[Mapping[str, Any]] | None = None
                         ) -> NetworkSpec:
    """A NetworkSpec from an ML2 network dict (and its segment list).

    ML2 shows a single-segment network through ``provider:*`` attributes and
    a multi-segment one through ``segments``; the ML2 context gives the segment
    list directly, which is preferred when present.
    """
    if segments is None:
        if network.get("segments"):
            segments = [{"network_type": s.get("provider:network_type"),
                         "physical_network": s.get("provider:physical_network"),
                         "segmentation_id": s.get("provider:segmentation_id")}
                        for s in network["segments"]]
        elif network.get("provider:network_type"):
            segments = [{
                "network_type": network.get("provider:network_type"),
                "physical_network": network.get("provider:physical_network"),
                "segmentation_id": network.get("provider:segmentation_id")}]
        else:
            segments = []
    return NetworkSpec(id=network["id"], segments=tuple(
        {k: s.get(k) for k in ("network_type", "physical_network",
                               "segmentation_id")} for s in segments),
        changed_at=_epoch(network.get("updated_at")),
        vlan_transparent=bool(network.get("vlan_transparent")),
        mtu=network.get("mtu"),
        shared_group=network.get("shared_group"))


def _epoch(stamp: Any) -> float | None:
    """Neutron's updated_at (ISO text in API dicts, or datetime) as epoch."""
    if not stamp:
        return None
    if isinstance(stamp, str):
        stamp = datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=datetime.timezone.utc)
    return stamp.timestamp()


# -- ports ------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class DesiredPort:
    """A Neutron port bound here and the DV port it needs.

    ``settings`` None: what the port needs cannot be expressed (``problem``
    says why); its DV port keeps what it has, and the reason is reported.
    """

    port_id: str
    network_id: str
    pg: DesiredPortGroup            # the distributed port group it lives in
    settings: PortSettings | None
    problem: str | None = None
    status: str = ""                # Neutron's port status now
    # A trunk parent: its trunk (id, status, subports with their status)
    # and what of it the DV port cannot carry (the trunk is DEGRADED).
    trunk: TrunkSpec | None = None
    trunk_problems: tuple[str, ...] = ()
    bound_key: str | None = None    # the key its committed binding gave Nova


@dataclasses.dataclass(frozen=True)
class UnenforcedPort:
    """A port on a standard vSwitch whose policy cannot be enforced there."""

    port_id: str
    network_id: str
    what: tuple[str, ...]           # "security groups", "QoS", ...


# A standard port group's security policy (allowPromiscuous, macChanges,
# forgedTransmits) when its ports have port security, and when none has.
STD_SECURE: Security = (False, False, False)
STD_OPEN: Security = (True, True, True)


def std_security(ports: Iterable[PortSpec],
                 topo: Topology) -> dict[str, Security]:
    """The security policy of each network's standard port groups, from the
    ports bound there: a standard vSwitch has no per-port policy, so port
    security follows the port group where all its ports agree -- rejected
    forged transmits, MAC changes and promiscuous mode when they all have
    port security, all allowed when none has.  Where they disagree the port
    group stays secure, and the ports without port security are reported
    (:func:`.portsettings.desired_ports`).  Networks with no such port are
    left as they are."""
    flags: dict[str, set[bool]] = {}
    for port in ports:
        target = topo.targets.get(port.physnet or "")
        if target is not None and target.kind == VSWITCH:
            flags.setdefault(port.network_id, set()).add(port.port_security)
    return {net: STD_OPEN if found == {False} else STD_SECURE
            for net, found in flags.items()}


def unenforceable_on_vswitch(port: PortSpec) -> tuple[str, ...]:
    """What of a port's policy a standard vSwitch cannot enforce."""
    what = []
    if port.port_security and port.security_groups:
        what.append("security groups")
    if port.qos:
        what.append("QoS")
    return tuple(what)

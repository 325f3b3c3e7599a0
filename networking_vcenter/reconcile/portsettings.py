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

"""A Neutron port translated into the settings of its distributed port.

Pure: plain data in (:class:`desired.PortSpec`), plain data out
(:class:`inventory.PortSettings`); no pyVmomi, no Neutron, no I/O.  What the
translation admits and why is explained in docs/security-groups.md; the
property tests in tests/unit/test_port_settings.py check it against an
independent model of Neutron's security groups.

The traffic filter of a DV port is a stateless, first-match ACL with one IP
qualifier per rule (one source, one destination, one protocol, one range of
ports each side) and no ICMP type, TCP flag or connection state.  Its rules
come in this order, per direction:

from the VM (:data:`FROM_VM`)
    drop DHCP server replies (udp 67->68, 547->546) sent by the VM;
    accept DHCP discovery (0.0.0.0:68 -> 255.255.255.255:67) and ICMPv6
    from ``::`` to ff02::/16 (duplicate address detection, MLD);
    for each own address: accept DHCP client (68->67, 546->547) and ICMPv6;
    the accept rules of the security groups, one per own address (that is
    the anti-spoofing: every accept names an own address as its source);
    drop all IPv4, drop all IPv6.
to the VM (:data:`TO_VM`)
    accept DHCP replies (67->68, 547->546) and all ICMPv6;
    the accept rules of the security groups;
    drop all IPv4, drop all IPv6.

For stateful groups, reflexive accept rules admit the replies (see
docs/security-groups.md for exactly what more they admit).

A trunk parent's DV port carries its trunk's VLAN ranges and one filter
for the trunk's members, each member's rules naming its own addresses
(docs/trunks.md; :func:`trunk_vlans`, :func:`trunk_members`,
:func:`trunk_problems`).
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import operator
from collections.abc import Callable, Iterable, Mapping, Sequence

from networking_vcenter.reconcile import desired
from networking_vcenter.vsphere import inventory

# The one place for the direction mapping.  vSphere does not document which
# way incomingPackets/outgoingPackets point relative to the VM; we take them as
# relative to the switch port: incomingPackets enter the switch from the VM.
# Unverified on real ESXi: to flip it, swap these two values (the traffic
# rules and the QoS shaping sides follow).
FROM_VM = inventory.INCOMING    # Neutron "egress"; QoS egress -> in_shaping
TO_VM = inventory.OUTGOING      # Neutron "ingress"; QoS ingress -> out_shaping

# Same default as [ml2_vcenter] max_rules_per_port (conf.py).
DEFAULT_MAX_RULES = 1024

# Neutron's kbit is 1000 bit (as OVS and tc use it); vSphere counts bit/s.
BITS_PER_KBIT = 1000
# Neutron's OVS and Linux bridge QoS drivers use 80 % of the rate as the
# burst (in kbit) when a rule has max_burst_kbps = 0.
DEFAULT_BURST_RATIO = 0.8

ACCEPT = "accept"
DROP = "drop"

TCP, UDP, ICMP, ICMPV6, SCTP, DCCP, UDPLITE = 6, 17, 1, 58, 132, 33, 136
# Protocols whose rules may carry port ranges (Neutron's SG_PORT_PROTO_NUMS).
PORT_PROTOCOLS = frozenset({TCP, UDP, SCTP, DCCP, UDPLITE})

# IANA protocol numbers by the names Neutron accepts (neutron_lib's
# IP_PROTOCOL_MAP, plus the legacy 'icmpv6').
PROTOCOL_NUMBERS = {
    "ah": 51, "dccp": 33, "egp": 8, "esp": 50, "gre": 47, "hopopt": 0,
    "icmp": 1, "igmp": 2, "ip": 0, "ipip": 4, "ipv6-encap": 41,
    "ipv6-frag": 44, "ipv6-icmp": 58, "icmpv6": 58, "ipv6-nonxt": 59,
    "ipv6-opts": 60, "ipv6-route": 43, "ospf": 89, "pgm": 113, "rsvp": 46,
    "sctp": 132, "tcp": 6, "udp": 17, "udplite": 136, "vrrp": 112,
}

_ANY = {4: "0.0.0.0/0", 6: "::/0"}
_ANY_TEXTS = frozenset(_ANY.values())
_ICMP = {4: ICMP, 6: ICMPV6}
_DHCP_CLIENT = {4: (68, 67), 6: (546, 547)}     # (client port, server port)
_LLA_PREFIX = ipaddress.IPv6Network("fe80::/64")

Net = ipaddress.IPv4Network | ipaddress.IPv6Network


class TooManyRules(ValueError):
    """A port needs more traffic rules than the budget allows."""

    def __init__(self, port_id: str, count: int, budget: int):
        self.port_id, self.count, self.budget = port_id, count, budget
        super().__init__(
            f"port {port_id}: its security groups need {count} traffic "
            f"rules, more than the budget of {budget} per port; the port "
            f"is blocked (no traffic) until it fits. Raise [ml2_vcenter] "
            f"max_rules_per_port "
            f"or use fewer rules / smaller remote groups")


class Unenforceable(ValueError):
    """Something of a port's policy the DV port cannot express."""

    def __init__(self, port_id: str, what: str):
        self.port_id = port_id
        super().__init__(f"port {port_id}: {what}")


# -- public ------------------------------------------------------------------

def port_settings(port: desired.PortSpec, *,
                  max_rules: int = DEFAULT_MAX_RULES,
                  mac_learning: bool = True,
                  filtering: bool = True) -> inventory.PortSettings:
    """Every setting of the DV port reserved for ``port`` (none inherited
    but the VLAN of a port that is no trunk parent).

    A trunk parent's port carries its trunk (:func:`trunk_vlans`) and one
    traffic filter for all its VLANs (:func:`trunk_members`).  Raises
    :class:`TooManyRules` (never truncates) and :class:`Unenforceable`.
    ``filtering`` False (Neutron's ``[securitygroup] enable_security_group
    = False``): no traffic filter at all, as Neutron's noop firewall; port
    security still guards the MAC.
    """
    in_shaping, out_shaping = qos_shaping(port.qos, port_id=port.id)
    vlans = trunk_vlans(port)[0] if port.trunk is not None else None
    if not port.port_security:
        return inventory.PortSettings(
            blocked=False, rules=(),
            allow_promiscuous=not mac_learning,
            mac_changes=True, forged_transmits=True,
            mac_learning=mac_learning,
            in_shaping=in_shaping, out_shaping=out_shaping,
            trunk_vlans=vlans)
    rules = traffic_rules(port) if filtering else ()
    if len(rules) > max_rules:
        raise TooManyRules(port.id, len(rules), max_rules)
    own_mac = _mac_int(port.id, port.mac)
    other_mac = any(
        mac and _mac_int(m.id, mac) != own_mac
        for m in [port, *trunk_members(port)]
        for mac in [m.mac] + [pair_mac for _ip, pair_mac
                              in m.allowed_address_pairs])
    return inventory.PortSettings(
        blocked=False, rules=rules, allow_promiscuous=False,
        mac_changes=other_mac, forged_transmits=other_mac,
        mac_learning=False,
        in_shaping=in_shaping, out_shaping=out_shaping, trunk_vlans=vlans)


def shares_group_filter(port: desired.PortSpec,
                        net: desired.NetworkSpec | None,
                        filtering: bool = True) -> bool:
    """Whether ``port`` can inherit its port group's shared filter
    (``[ml2_vcenter] shared_security_filter``): its only security group is
    its network's project's default group, and it can share a filter at
    all (:func:`share_key`: port security and filtering on, no trunk, no
    allowed address pair with another MAC, every rule expressible)."""
    if net is None or not net.shared_group or port.trunk_parent or \
            [g.id for g in port.security_groups] != [net.shared_group]:
        return False
    return share_key(port, filtering=filtering) is not None


def inherited_filter(settings: inventory.PortSettings
                     ) -> inventory.PortSettings:
    """A sharing port's settings: its own filter left to the group."""
    return dataclasses.replace(settings, rules=None)


def desired_ports(ports: Iterable[desired.PortSpec],
                  networks: Mapping[str, desired.NetworkSpec],
                  topo: desired.Topology, max_rules: int,
                  filtering: bool = True,
                  sharing: Callable[[desired.PortSpec], bool] | None = None
                  ) -> tuple[list[desired.DesiredPort],
                             list[desired.UnenforcedPort]]:
    """The DV ports the given Neutron ports need.

    A port counts when it is bound (``physnet`` set by the reader from its
    bound segment) to a physical network mapped to a distributed switch; one
    on a standard vSwitch has no DV port, and what its policy asks that the
    vSwitch cannot do is returned as :class:`desired.UnenforcedPort`.  A
    trunk's subport has no DV port of its own: its parent's carries it.  A port
    whose policy cannot be had (over ``max_rules``, unenforceable) gets a
    blocked DV port (:func:`blocked_settings`) and its ``problem``.
    ``filtering`` False: no traffic filters (Neutron's
    ``enable_security_group = False``).  ``sharing``: which ports inherit
    their port group's shared filter (``shared_security_filter``) instead
    of holding one of their own.
    """
    result: list[desired.DesiredPort] = []
    unenforced: list[desired.UnenforcedPort] = []
    ports = list(ports)
    std = desired.std_security(ports, topo)
    for port in ports:
        net = networks.get(port.network_id)
        if not port.physnet or net is None or port.trunk_parent:
            continue
        pg = next((d for d in desired.desired_for_network(net, topo)
                   if d.physnet == port.physnet), None)
        if pg is None:
            continue
        if pg.kind != desired.DVS:
            what = desired.unenforceable_on_vswitch(port)
            if port.trunk is not None:
                what += ("a trunk (no per-port VLAN ranges)",)
            if not port.port_security and std.get(port.network_id) == \
                    desired.STD_SECURE:
                what += ("disabled port security (other ports of the "
                         "network have it)",)
            if what:
                unenforced.append(desired.UnenforcedPort(
                    port.id, port.network_id, what))
            continue
        target = topo.targets[pg.physnet]
        shares = sharing is not None and sharing(port)
        try:
            if shares:
                # Translated into the group's filter, not the port's.
                settings = inherited_filter(port_settings(
                    port, mac_learning=target.mac_learning,
                    filtering=False))
            else:
                settings = port_settings(
                    port, max_rules=max_rules,
                    mac_learning=target.mac_learning, filtering=filtering)
        except (TooManyRules, Unenforceable) as exc:
            result.append(desired.DesiredPort(
                port.id, port.network_id, pg, blocked_settings(),
                str(exc), port.status, port.trunk,
                bound_key=port.bound_key))
            continue
        if not target.mac_learning:
            # A switch without MAC management has no such setting to hold.
            settings = dataclasses.replace(settings, mac_learning=None)
        result.append(desired.DesiredPort(
            port.id, port.network_id, pg, settings, status=port.status,
            trunk=port.trunk,
            trunk_problems=trunk_problems(port),
            bound_key=port.bound_key))
    return result, unenforced


# -- trunks ------------------------------------------------------------------

def segment_vlan(segments: Iterable[desired.SegmentTuple],
                 physnet: str | None, flat: bool = True) -> int | None:
    """The VLAN of a network on ``physnet``: its VLAN segment's ID there,
    0 for a flat segment (when ``flat``); None if it has neither."""
    for net_type, seg_physnet, seg_id in segments:
        if seg_physnet != physnet:
            continue
        if net_type == "vlan" and seg_id is not None:
            return int(seg_id)
        if net_type == "flat" and flat:
            return 0
    return None


def subport_problem(port_id: str, network_id: str, segmentation_type: str,
                    segmentation_id: int | None,
                    segments: Iterable[desired.SegmentTuple],
                    physnet: str | None) -> str | None:
    """Why a subport cannot be on a trunk whose parent is on ``physnet``
    (None: it can).  The guest's tag is the VLAN on the wire: vSphere
    cannot translate VLAN IDs, so the segmentation ID must be the VLAN of
    the subport's network on the parent's physical network."""
    vlan = segment_vlan(segments, physnet, flat=False)
    if vlan is None:
        return (f"subport {port_id}: its network {network_id} has no VLAN "
                f"segment on physical network {physnet} (the trunk "
                f"parent's), so no VLAN of the parent's DV port can carry it")
    if segmentation_type != "vlan" or segmentation_id != vlan:
        return (f"subport {port_id}: segmentation {segmentation_type} "
                f"{segmentation_id} is not VLAN {vlan} of its network "
                f"{network_id} on physical network {physnet}; vSphere "
                f"cannot translate VLAN IDs: use segmentation_type vlan "
                f"with segmentation_id {vlan}, or segmentation_type "
                f"inherit")
    return None


def vlan_ranges(vlans: Iterable[int]) -> tuple[tuple[int, int], ...]:
    """VLAN IDs collapsed into sorted ``(first, last)`` ranges."""
    ranges: list[list[int]] = []
    for vlan in sorted(set(vlans)):
        if ranges and vlan == ranges[-1][1] + 1:
            ranges[-1][1] = vlan
        else:
            ranges.append([vlan, vlan])
    return tuple((first, last) for first, last in ranges)


def trunk_vlans(port: desired.PortSpec
                ) -> tuple[tuple[tuple[int, int], ...], tuple[str, ...]]:
    """(VLAN ranges, problems) of a trunk parent's DV port: the VLAN of
    the parent's network on its physical network (0 when flat) and that
    of each subport that :func:`subport_problem` admits; each other
    subport is a problem (left out: its traffic does not pass)."""
    trunk = port.trunk
    if trunk is None:
        return (), ()
    vlans, problems = set(), []
    own = segment_vlan(trunk.segments, port.physnet)
    if own is not None:
        vlans.add(own)
    for sub in trunk.subports:
        why = subport_problem(sub.port.id, sub.port.network_id,
                              sub.segmentation_type, sub.segmentation_id,
                              sub.segments, port.physnet)
        if why:
            problems.append(why)
        else:
            vlans.add(sub.segmentation_id)
    return vlan_ranges(vlans), tuple(problems)


def trunk_members(port: desired.PortSpec) -> list[desired.PortSpec]:
    """The subports whose addresses and security groups the parent's
    traffic filter holds: those on a VLAN the port carries, with port
    security on like the parent's (see :func:`trunk_problems` for the
    others)."""
    if port.trunk is None or not port.port_security:
        return []
    return [sub.port for sub in port.trunk.subports
            if sub.port.port_security and not subport_problem(
                sub.port.id, sub.port.network_id, sub.segmentation_type,
                sub.segmentation_id, sub.segments, port.physnet)]


def trunk_problems(port: desired.PortSpec) -> tuple[str, ...]:
    """What of a trunk the parent's DV port does not carry as Neutron
    says (the trunk is then DEGRADED): subports on no VLAN it can carry,
    subports whose port security differs from the parent's, and subports'
    QoS policies (the parent's shaping is for all its VLANs)."""
    if port.trunk is None:
        return ()
    problems = list(trunk_vlans(port)[1])
    for sub in port.trunk.subports:
        sp = sub.port
        if sp.port_security and not port.port_security:
            problems.append(
                f"subport {sp.id}: its security groups are not enforced: "
                f"the trunk parent {port.id} has port security disabled, "
                f"and one DV port filters all the trunk's VLANs")
        elif port.port_security and not sp.port_security:
            problems.append(
                f"subport {sp.id}: port security is disabled on it but not "
                f"on the trunk parent {port.id}: one traffic filter covers "
                f"all the trunk's VLANs and holds no rule for it, so its "
                f"traffic is dropped")
        if sp.qos:
            problems.append(
                f"subport {sp.id}: its QoS policy is not enforced: the "
                f"trunk parent's shaping applies to all the trunk's VLANs")
    return tuple(problems)


def blocked_settings() -> inventory.PortSettings:
    """What the DV port of a port whose policy cannot be had (over the
    rule budget, or :class:`Unenforceable`) gets instead: blocked, and a
    filter that drops all IP both ways, so that it never keeps rules
    Neutron no longer allows."""
    return inventory.PortSettings(
        blocked=True, rules=drop_all_rules(), allow_promiscuous=False,
        mac_changes=False, forged_transmits=False)


def drop_all_rules() -> tuple[inventory.TrafficRule, ...]:
    """Drop all IPv4 and all IPv6, from the VM and to the VM."""
    return tuple(_rule(d, DROP, None, src=_ANY[fam], why=f"drop all IPv{fam}")
                 for d in (FROM_VM, TO_VM) for fam in (4, 6))


def released_settings(connected: bool) -> inventory.PortSettings:
    """What a DV port we no longer use gets: the port group's settings;
    blocked while a NIC is still connected to it."""
    if connected:
        return inventory.PortSettings(blocked=True)
    return inventory.INHERITED


def qos_shaping(limits: Iterable[desired.BandwidthLimit], *,
                port_id: str = "") -> tuple[inventory.Shaping,
                                            inventory.Shaping]:
    """(in_shaping, out_shaping) for Neutron ``bandwidth_limit`` rules.

    Egress (from the VM) shapes the :data:`FROM_VM` side, ingress the
    :data:`TO_VM` side.  max_kbps x 1000 = average and peak bit/s; burst
    bytes = max_burst_kbps x 1000 / 8, or 80 % of max_kbps when 0 (as
    Neutron's OVS driver).  A side without a rule, or with max_kbps 0 (no
    limit for OVS too), is ``Shaping(enabled=False)``.
    """
    by_dir: dict[str, inventory.Shaping] = {}
    for lim in limits:
        if lim.direction not in ("egress", "ingress"):
            raise Unenforceable(port_id, f"QoS bandwidth_limit rule with "
                                f"direction {lim.direction!r}")
        if lim.direction in by_dir:
            raise Unenforceable(port_id, f"two QoS bandwidth_limit rules "
                                f"for direction {lim.direction}")
        if lim.max_kbps < 0 or lim.max_burst_kbps < 0:
            raise Unenforceable(port_id, f"QoS bandwidth_limit rule "
                                f"{lim.direction} max_kbps={lim.max_kbps} "
                                f"max_burst_kbps={lim.max_burst_kbps}")
        if lim.max_kbps == 0:
            by_dir[lim.direction] = inventory.Shaping(enabled=False)
            continue
        bps = lim.max_kbps * BITS_PER_KBIT
        burst_kbit = lim.max_burst_kbps or lim.max_kbps * DEFAULT_BURST_RATIO
        by_dir[lim.direction] = inventory.Shaping(
            enabled=True, average_bps=bps, peak_bps=bps,
            burst_bytes=int(burst_kbit * BITS_PER_KBIT // 8))
    off = inventory.Shaping(enabled=False)
    from_vm = by_dir.get("egress", off)
    to_vm = by_dir.get("ingress", off)
    if FROM_VM == inventory.INCOMING:
        return from_vm, to_vm
    return to_vm, from_vm


def protocol_number(protocol: str | int | None, ethertype: str) -> int | None:
    """IANA number of a Neutron rule's protocol (None: any).

    As Neutron does, 'icmp' (or 1) on an IPv6 rule means ICMPv6.
    """
    if protocol is None or protocol in ("", "any"):
        return None
    text = str(protocol).strip().lower()
    num = PROTOCOL_NUMBERS.get(text)
    if num is None:
        num = int(text)         # Neutron stores numbers as text
        if not 0 <= num <= 255:
            raise ValueError(f"protocol {protocol!r}")
    if ethertype == "IPv6" and num == ICMP:
        num = ICMPV6
    return num


def link_local(mac: str) -> ipaddress.IPv6Address:
    """The EUI-64 IPv6 link-local address of a MAC (RFC 4291 appendix A)."""
    value = _mac_int("", mac)
    eui = ((value >> 24) << 40) | (0xFFFE << 24) | (value & 0xFFFFFF)
    eui ^= 1 << 57                                      # universal/local bit
    return ipaddress.IPv6Address(int(_LLA_PREFIX.network_address) | eui)


# -- the traffic filter ------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class _Sg:
    """One Neutron rule, resolved: family, protocol number, port range and
    the remote CIDRs (already filtered by family and collapsed)."""

    direction: str          # FROM_VM / TO_VM
    family: int
    protocol: int | None
    ports: tuple[int, int] | None
    remotes: tuple[Net, ...]
    stateful: bool
    label: str


def traffic_rules(port: desired.PortSpec) -> tuple[inventory.TrafficRule, ...]:
    """The traffic filter of a port with port security on (see the module
    docstring for its shape).  A trunk parent's filter holds its members'
    (:func:`trunk_members`) rules too, each member's accept rules naming
    its own addresses on both sides (from the VM as source, to the VM as
    destination), so that one member's groups do not open another's."""
    head_out, head_in = _common_heads()
    accepts: list[inventory.TrafficRule] = []
    pin = port.trunk is not None
    for member in [port, *trunk_members(port)]:
        own = own_addresses(member)
        for fam in (4, 6):
            client, server = _DHCP_CLIENT[fam]
            for addr in own[fam]:
                head_out.append(_rule(FROM_VM, ACCEPT, UDP, src=str(addr),
                                      sports=(client, client),
                                      dports=(server, server),
                                      why="DHCP client"))
                if fam == 6:
                    head_out.append(_rule(FROM_VM, ACCEPT, ICMPV6,
                                          src=str(addr),
                                          why="ICMPv6 from own address"))
        for sg in _resolve(member):
            accepts.extend(_forward(sg, own, pin))
            if sg.stateful:
                accepts.extend(_reflexive(sg, own))
    tail = list(drop_all_rules())
    accepts = _without_subsumed(_unique(sorted(accepts, key=_sort_key)))
    out = [r for r in accepts if r.direction == FROM_VM]
    into = [r for r in accepts if r.direction == TO_VM]
    return tuple(_unique(head_out + out + tail[:2] + head_in + into
                         + tail[2:]))


# -- one filter shared by the ports of a port group --------------------------

def share_key(port: desired.PortSpec, *,
              filtering: bool = True) -> tuple | None:
    """What decides a port's traffic filter but its own addresses and MAC:
    two ports whose keys are equal can share one filter
    (:func:`shared_rules`); None: the port cannot share one.

    None when port security is off or ``filtering`` is False (no filter),
    for a trunk parent (its filter holds its subports'), when an allowed
    address pair has a MAC other than the port's (its source MAC does not
    identify the port then: forged transmits are allowed) and when the
    translation cannot be had (:class:`Unenforceable`).  Otherwise: its
    security groups (id, stateful, rules) in order of ids and the members
    of the remote groups and the CIDRs of the address groups their rules
    name, as the port holds them (compared as tuples, never sorted here:
    the reader gives every port the same order).  Cheap: a few tuples, and
    the check that the groups translate is done once per distinct key.
    """
    key = _share_parts(port, filtering)
    if key is None or not _translatable(key):
        return None
    return key


def shared_rules(ports: Sequence[desired.PortSpec]
                 ) -> tuple[inventory.TrafficRule, ...]:
    """One traffic filter for ports that have the same :func:`share_key`
    (ValueError otherwise, or for two ports with one MAC): for each of
    them the same verdict as its own :func:`traffic_rules`, on the frames
    it sends (source MAC its own) and on those sent to it (destination MAC
    its own); on other frames to the VM (broadcast, multicast) only what
    every port's own filter admits.  No ports: drop all IP.

    Same shape as :func:`traffic_rules` (first match wins): from the VM
    the DHCP-server drops and the accepts that name no own address (DHCP
    discovery, ICMPv6 from ``::``), then each port's accepts from its own
    addresses qualified by its source MAC, then drop all; to the VM the
    DHCP replies and ICMPv6, the forward rules of the ingress rules (from
    each remote CIDR, once for all ports), then each port's accepts to its
    own addresses qualified by its destination MAC (the reflexive rules of
    egress rules), then drop all.

    The rules naming an own address are built from templates made once
    (from the first port: all resolve alike) and pruned once: a template
    another template covers for the same own address, or that an
    unqualified accept covers, is left out before it is instantiated per
    port (the default group's "reply from own address to each member" is
    covered by "own address to anywhere").  So the per-port part does not
    grow with the remote groups: the default group is 4 rules per port
    (IPv4 and link-local, each way) plus one per member CIDR.  Sorted:
    ports by MAC, templates by rule; whatever order the ports and Neutron's
    rules come in, the same output.
    """
    ports = list(ports)
    if not ports:
        return drop_all_rules()
    template = ports[0]
    key = _share_parts(template, True)
    try:
        sgs = _resolve(template) if key is not None else None
    except Unenforceable:
        sgs = None
    if sgs is None:
        raise ValueError(f"port {template.id}: cannot share a filter")
    macs: dict[int, desired.PortSpec] = {}
    for p in ports:
        if p is not template and _share_parts(p, True) != key:
            raise ValueError(f"port {p.id}: its share key is not port "
                             f"{template.id}'s")
        mac = _mac_int(p.id, p.mac)
        if mac in macs:
            raise ValueError(f"ports {macs[mac].id} and {p.id}: one MAC")
        macs[mac] = p

    head_out, head_in = _common_heads()
    common_in: list[inventory.TrafficRule] = []
    templates: list[_Template] = []
    for fam in (4, 6):
        client, server = _DHCP_CLIENT[fam]
        templates.append(_Template(FROM_VM, fam, UDP, None, (client, client),
                                   (server, server), "DHCP client"))
        if fam == 6:
            templates.append(_Template(FROM_VM, fam, ICMPV6, None, None,
                                       None, "ICMPv6 from own address"))
    for sg in sgs:
        remotes = [str(r) for r in sg.remotes]
        if sg.direction == TO_VM:
            common_in.extend(_rule(TO_VM, ACCEPT, sg.protocol, src=r,
                                   dports=sg.ports, why=sg.label)
                             for r in remotes)
        else:
            templates.extend(_Template(FROM_VM, sg.family, sg.protocol, r,
                                       None, sg.ports, sg.label)
                             for r in remotes)
        if sg.stateful:
            protos = [sg.protocol]
            if sg.family == 4 and sg.protocol not in (None, ICMP):
                protos.append(ICMP)
            back = TO_VM if sg.direction == FROM_VM else FROM_VM
            why = f"{sg.label} (reply)"
            templates.extend(
                _Template(back, sg.family, proto, r,
                          sg.ports if proto == sg.protocol else None, None,
                          why)
                for r in remotes for proto in protos)
    common_in = _without_subsumed(_unique(sorted(common_in, key=_sort_key)))
    kept = _prune_templates(templates, head_out + head_in + common_in)

    # Each template as a rule whose own address and MAC are left open.
    protos = [(t, inventory.TrafficRule(
        direction=t.direction, action=ACCEPT, protocol=t.protocol,
        source=t.other if t.direction == TO_VM else None,
        destination=t.other if t.direction == FROM_VM else None,
        source_ports=t.sports, destination_ports=t.dports,
        description=t.why)) for t in kept]
    out: list[inventory.TrafficRule] = []
    into: list[inventory.TrafficRule] = []
    for mac_int in sorted(macs):
        p = macs[mac_int]
        mac = _mac_text(mac_int)
        addrs = _own_texts(p, mac_int)
        for t, proto in protos:
            fields = _OWN_FIELDS[t.direction]
            block = out if t.direction == FROM_VM else into
            for a in addrs[t.family]:
                block.append(_instance(proto, fields, a, mac))
    tail = drop_all_rules()
    # An ingress rule may repeat a head rule (which are from any address).
    heads = {_match_key(r) for r in head_in}
    common_in = [r for r in common_in if r.source not in _ANY_TEXTS
                 or _match_key(r) not in heads]
    return (*head_out, *out, *tail[:2], *head_in, *common_in, *into,
            *tail[2:])


# (own address field, MAC field) of a per-port rule, by direction.
_OWN_FIELDS = {FROM_VM: ("source", "source_mac"),
               TO_VM: ("destination", "destination_mac")}


def _instance(proto: inventory.TrafficRule, fields: tuple[str, str],
              address: str, mac: str) -> inventory.TrafficRule:
    """``proto`` with its own address and MAC set (``fields``): a copy of
    the frozen rule's fields, 4x as fast as building it anew (a shared
    filter of 1,000 ports makes 4,000 of them)."""
    rule = object.__new__(inventory.TrafficRule)
    values = rule.__dict__
    values.update(proto.__dict__)
    values[fields[0]] = address
    values[fields[1]] = mac
    return rule


@dataclasses.dataclass(frozen=True)
class _Template:
    """An accept rule naming an own address (from the VM: its source; to
    the VM: its destination), the address left open; ``other`` is the
    other side (None: any address of the family)."""

    direction: str
    family: int
    protocol: int | None
    other: str | None
    sports: tuple[int, int] | None
    dports: tuple[int, int] | None
    why: str

    @property
    def other_key(self) -> tuple:
        return _net_key(self.other or _ANY[self.family])

    def order(self) -> tuple:
        return (self.direction, self.family,
                -1 if self.protocol is None else self.protocol,
                self.other_key, self.sports or (0, 0), self.dports or (0, 0),
                self.why)


def _common_heads() -> tuple[list[inventory.TrafficRule],
                             list[inventory.TrafficRule]]:
    """The head rules of :func:`traffic_rules` that name no own address:
    (from the VM: the DHCP-server drops, then DHCP discovery and ICMPv6
    from ``::``; to the VM: DHCP replies and ICMPv6)."""
    drops, accepts, head_in = [], [], []
    for fam in (4, 6):
        client, server = _DHCP_CLIENT[fam]
        drops.append(_rule(FROM_VM, DROP, UDP, sports=(server, server),
                           dports=(client, client), fam=fam,
                           why="DHCP server reply from the VM"))
        head_in.append(_rule(TO_VM, ACCEPT, UDP, src=_ANY[fam],
                             sports=(server, server),
                             dports=(client, client),
                             why="DHCP reply to the VM"))
    accepts.append(_rule(FROM_VM, ACCEPT, UDP, src="0.0.0.0/32",
                         dst="255.255.255.255/32", sports=(68, 68),
                         dports=(67, 67), why="DHCP discovery"))
    accepts.append(_rule(FROM_VM, ACCEPT, ICMPV6, src="::/128",
                         dst="ff02::/16", why="ICMPv6 DAD/MLD from ::"))
    head_in.append(_rule(TO_VM, ACCEPT, ICMPV6, src="::/0",
                         why="ICMPv6 (neighbour discovery, RA, MLD)"))
    return drops + accepts, head_in


def _template_covers(big_protocol, big_sports, big_dports,
                     t: _Template) -> bool:
    """Protocol and ports of ``big`` contain ``t``'s."""
    if big_protocol is not None and big_protocol != t.protocol:
        return False
    for b, s in ((big_sports, t.sports), (big_dports, t.dports)):
        if b is not None and (s is None or not b[0] <= s[0] <= s[1] <= b[1]):
            return False
    return True


def _prune_templates(templates: list[_Template],
                     common: list[inventory.TrafficRule]) -> list[_Template]:
    """The templates, sorted, without duplicates (an ``other`` of None is
    the family's any address: the own address fixes the family), without
    those another template of the same direction covers (for one own
    address both are instantiated alike) and without those an accept of
    ``common`` (no MAC, any own address, all accepts of their block)
    covers.  Indexed by the networks containing ``other``, as
    :func:`_without_subsumed`."""
    unique: dict[tuple, _Template] = {}
    for t in sorted(templates, key=_Template.order):
        unique.setdefault((t.direction, t.protocol, t.other_key, t.sports,
                           t.dports), t)
    index: dict[tuple, list[_Template]] = {}
    for t in unique.values():
        index.setdefault((t.direction, t.other_key), []).append(t)
    by_other: dict[tuple, list[inventory.TrafficRule]] = {}
    for c in common:
        if c.action != ACCEPT or c.source_negated or c.destination_negated \
                or c.source_mac or c.destination_mac:
            continue
        own_side, other = (c.source, c.destination) if \
            c.direction == FROM_VM else (c.destination, c.source)
        if own_side is not None and _net_key(own_side)[2] != 0:
            continue            # not every own address
        fam_any = None if own_side is None else _net_key(own_side)[0]
        by_other.setdefault((c.direction, _net_key(other)), []).append(
            (fam_any, c))
    result = []
    for t in unique.values():
        keys = _containing_key(t.other_key)
        if any(o is not t and _template_covers(o.protocol, o.sports,
                                               o.dports, t)
               for k in keys for o in index.get((t.direction, k), ())):
            continue
        if any((fam is None or fam == t.family)
               and _template_covers(c.protocol, c.source_ports,
                                    c.destination_ports, t)
               for k in (None, *keys)
               for fam, c in by_other.get((t.direction, k), ())):
            continue
        result.append(t)
    return result


@functools.lru_cache(maxsize=65536)
def _containing_key(key: tuple) -> tuple:
    """The keys (:func:`_net_key`) of every network containing ``key``'s,
    itself included."""
    version, address, length = key
    bits = 32 if version == 4 else 128
    return tuple((version, address & (((1 << k) - 1) << (bits - k)), k)
                 for k in range(length + 1))


def _share_parts(port: desired.PortSpec, filtering: bool) -> tuple | None:
    """:func:`share_key` without the check that the groups translate."""
    if not filtering or not port.port_security or port.trunk is not None:
        return None
    try:
        own_mac = _mac_int(port.id, port.mac)
        for ip in port.fixed_ips:
            _net(port.id, ip)
        for ip, mac in port.allowed_address_pairs:
            _net(port.id, ip)
            if mac and _mac_int(port.id, mac) != own_mac:
                return None
    except Unenforceable:
        return None
    groups = tuple(sorted(port.security_groups, key=_group_id))
    named: dict[tuple[str, str], tuple[str, ...]] = {}
    for g in groups:
        for r in g.rules:
            if r.remote_group_id:
                k = ("group", r.remote_group_id)
                if k not in named:
                    named[k] = port.remote_groups.get(r.remote_group_id, ())
            elif r.remote_address_group_id:
                k = ("address group", r.remote_address_group_id)
                if k not in named:
                    named[k] = port.address_groups.get(
                        r.remote_address_group_id, ())
    return groups, tuple((kind, ref, members)
                         for (kind, ref), members in named.items())


def _group_id(group: desired.SecurityGroup) -> str:
    return group.id


@functools.lru_cache(maxsize=1024)
def _translatable(key: tuple) -> bool:
    """The groups and remotes of a share key translate (no
    :class:`Unenforceable`): checked once per distinct key."""
    groups, named = key
    port = desired.PortSpec(
        id="(shared)", network_id="", host="", physnet=None,
        mac="00:00:00:00:00:00", security_groups=groups,
        remote_groups={ref: m for kind, ref, m in named if kind == "group"},
        address_groups={ref: m for kind, ref, m in named
                        if kind == "address group"})
    try:
        _resolve(port)
    except Unenforceable:
        return False
    return True


def _own_texts(port: desired.PortSpec, mac: int) -> dict[int, list[str]]:
    """:func:`own_addresses` as text, fast for the common port (no allowed
    address pair, at most one fixed IP per family: nothing to collapse)."""
    if not port.allowed_address_pairs:
        fixed = [_parse_net(ip) for ip in port.fixed_ips]
        v4 = [n for n in fixed if n.version == 4]
        if len(v4) <= 1 and len(v4) == len(fixed):
            return {4: [_net_text(v4[0])] if v4 else [],
                    6: [_link_local_text(mac)]}
    own = own_addresses(port)
    return {fam: [str(a) for a in own[fam]] for fam in (4, 6)}


@functools.lru_cache(maxsize=65536)
def _net_text(net: Net) -> str:
    return str(net)


def _link_local_text(mac: int) -> str:
    """``str(link_local_net(mac))``, without building the network (the
    EUI-64 interface ID's second and third groups are never zero, so only
    the prefix's zeros are compressed, unless the first group is zero
    too)."""
    g4 = ((mac >> 32) & 0xFFFF) ^ 0x0200
    if not g4:
        return str(link_local_net(_mac_text(mac)))
    g5 = ((mac >> 16) & 0xFF00) | 0xFF
    g6 = 0xFE00 | ((mac >> 16) & 0xFF)
    g7 = mac & 0xFFFF
    return f"fe80::{g4:x}:{g5:x}:{g6:x}:{g7:x}/128"


def _mac_text(value: int) -> str:
    """A MAC as lower-case colon text."""
    digits = f"{value:012x}"
    return ":".join(digits[i:i + 2] for i in range(0, 12, 2))


def own_addresses(port: desired.PortSpec) -> dict[int, tuple[Net, ...]]:
    """The source addresses the port may send from, per family: its fixed
    IPs, its allowed address pairs (CIDRs too) and the link-local address of
    its MAC and of each IPv6 allowed pair's MAC, collapsed."""
    nets: dict[int, list[Net]] = {4: [], 6: [link_local_net(port.mac)]}
    for ip in port.fixed_ips:
        net = _net(port.id, ip)
        nets[net.version].append(net)
    for ip, mac in port.allowed_address_pairs:
        net = _net(port.id, ip)
        nets[net.version].append(net)
        if net.version == 6:
            nets[6].append(link_local_net(mac or port.mac))
    return {fam: tuple(ipaddress.collapse_addresses(v))
            for fam, v in nets.items()}


def link_local_net(mac: str) -> ipaddress.IPv6Network:
    return ipaddress.IPv6Network(f"{link_local(mac)}/128")


def _resolve(port: desired.PortSpec) -> list[_Sg]:
    result = []
    for group in port.security_groups:
        for r in group.rules:
            fam = _family(port.id, r.ethertype)
            label = f"sg {group.id} rule {r.id}" if r.id else \
                f"sg {group.id}"
            try:
                proto = protocol_number(r.protocol, r.ethertype)
            except ValueError:
                raise Unenforceable(port.id, f"security group rule {r.id}: "
                                    f"unknown protocol {r.protocol!r}")
            result.append(_Sg(
                direction=_direction(port.id, r.direction), family=fam,
                protocol=proto, ports=_ports(proto, r),
                remotes=_remotes(port, r, fam),
                stateful=group.stateful, label=label))
    return result


def _ports(proto: int | None, r: desired.SgRule) -> tuple[int, int] | None:
    if proto not in PORT_PROTOCOLS:
        return None     # ICMP type/code cannot be expressed: all ICMP
    lo, hi = r.port_range_min, r.port_range_max
    if lo is None and hi is None:
        return None
    lo = hi if lo is None else lo
    hi = lo if hi is None else hi
    if (lo, hi) == (1, 65535):
        return None     # Neutron makes the full range "no range" too
    return (lo, hi)


def _remotes(port: desired.PortSpec, r: desired.SgRule,
             fam: int) -> tuple[Net, ...]:
    if r.remote_group_id:
        texts = port.remote_groups.get(r.remote_group_id, ())
    elif r.remote_address_group_id:
        texts = port.address_groups.get(r.remote_address_group_id, ())
    elif r.remote_ip_prefix:
        texts = (r.remote_ip_prefix,)
    else:
        texts = (_ANY[fam],)
    nets = [n for n in (_net(port.id, t) for t in texts) if n.version == fam]
    return _collapse(nets)


def _collapse(nets: list[Net]) -> tuple[Net, ...]:
    """``ipaddress.collapse_addresses`` of networks of one family, on
    integers: the fewest CIDRs covering exactly their union, in address
    order (a remote group of 1,000 members took 15 ms the other way)."""
    if len(nets) <= 1:
        return tuple(nets)
    version, bits = nets[0].version, nets[0].max_prefixlen
    spans = sorted((int(n.network_address),
                    int(n.network_address)
                    | ((1 << (bits - n.prefixlen)) - 1)) for n in nets)
    result = []
    lo, hi = spans[0]
    for first, last in spans[1:] + [(None, None)]:
        if first is not None and first <= hi + 1:
            hi = max(hi, last)
            continue
        while lo <= hi:         # the largest aligned block from lo, in turn
            size = lo & -lo if lo else 1 << bits
            while size > hi - lo + 1:
                size >>= 1
            result.append(_cidr(version, lo, bits - size.bit_length() + 1))
            lo += size
        lo, hi = first, last
    return tuple(result)


@functools.lru_cache(maxsize=65536)
def _cidr(version: int, address: int, length: int) -> Net:
    cls = ipaddress.IPv4Network if version == 4 else ipaddress.IPv6Network
    return cls((address, length))


def _forward(sg: _Sg, own, pin: bool = False) -> list[inventory.TrafficRule]:
    """The accept rules of one Neutron rule, as Neutron reads it; ``pin``:
    to the VM only to the own addresses (a trunk member's)."""
    if sg.direction == TO_VM:
        if pin:
            return [_rule(TO_VM, ACCEPT, sg.protocol, src=str(r), dst=str(a),
                          dports=sg.ports, why=sg.label)
                    for a in own[sg.family] for r in sg.remotes]
        return [_rule(TO_VM, ACCEPT, sg.protocol, src=str(r), dports=sg.ports,
                      why=sg.label) for r in sg.remotes]
    return [_rule(FROM_VM, ACCEPT, sg.protocol, src=str(a), dst=str(r),
                  dports=sg.ports, why=sg.label)
            for a in own[sg.family] for r in sg.remotes]


def _reflexive(sg: _Sg, own) -> list[inventory.TrafficRule]:
    """Replies of what a stateful rule admits: the mirror image of the
    rule between the remotes and the own addresses; for IPv4 also ICMP
    between them (errors about the connection, e.g. "fragmentation
    needed").  ICMPv6 is admitted anyway."""
    result = []
    protos = [sg.protocol]
    if sg.family == 4 and sg.protocol not in (None, ICMP):
        protos.append(ICMP)
    why = f"{sg.label} (reply)"
    for a in own[sg.family]:
        for r in sg.remotes:
            for proto in protos:
                ports = sg.ports if proto == sg.protocol else None
                if sg.direction == FROM_VM:
                    result.append(_rule(TO_VM, ACCEPT, proto, src=str(r),
                                        dst=str(a), sports=ports, why=why))
                else:
                    result.append(_rule(FROM_VM, ACCEPT, proto, src=str(a),
                                        dst=str(r), sports=ports, why=why))
    return result


def _rule(direction, action, protocol, *, src=None, dst=None, sports=None,
          dports=None, fam=None, why="") -> inventory.TrafficRule:
    if src is None and dst is None and fam is not None:
        src = _ANY[fam]
    return inventory.TrafficRule(
        direction=direction, action=action, protocol=protocol, source=src,
        destination=dst, source_ports=sports, destination_ports=dports,
        description=why)


# Every field of a rule but its description: what it matches and does.
_MATCH_FIELDS = tuple(f.name for f in dataclasses.fields(inventory.TrafficRule)
                      if f.name != "description")


# A rule's match fields as a tuple (attrgetter: a shared filter keys
# thousands of rules).
_match_key = operator.attrgetter(*_MATCH_FIELDS)


def _sort_key(r: inventory.TrafficRule) -> tuple:
    def net(text):
        return (0, 0, 0) if text is None else _net_key(text)
    return (r.direction, -1 if r.protocol is None else r.protocol,
            net(r.source), net(r.destination),
            r.source_ports or (0, 0), r.destination_ports or (0, 0),
            r.source_mac or "", r.destination_mac or "", r.description)


def _unique(rules: Iterable[inventory.TrafficRule]
            ) -> list[inventory.TrafficRule]:
    seen: set[tuple] = set()
    result = []
    for r in rules:
        key = _match_key(r)
        if key not in seen:
            seen.add(key)
            result.append(r)
    return result


def _covers(big: inventory.TrafficRule, small: inventory.TrafficRule) -> bool:
    """Every packet ``small`` matches, ``big`` matches (same direction,
    neither negated).  A MAC qualifier is only covered by none or the same
    MAC."""
    if big.protocol is not None and big.protocol != small.protocol:
        return False
    if (big.source_mac is not None and big.source_mac != small.source_mac
            or big.destination_mac is not None
            and big.destination_mac != small.destination_mac):
        return False
    for b, s in ((big.source_ports, small.source_ports),
                 (big.destination_ports, small.destination_ports)):
        if b is None:
            continue
        if s is None or not b[0] <= s[0] <= s[1] <= b[1]:
            return False
    for b, s in ((big.source, small.source),
                 (big.destination, small.destination)):
        if b is None:
            continue
        if s is None:
            return False
        bn, sn = _parse_net(b), _parse_net(s)
        if bn.version != sn.version or not sn.subnet_of(bn):
            return False
    return True


def _without_subsumed(accepts: list[inventory.TrafficRule]
                      ) -> list[inventory.TrafficRule]:
    """Leave out accept rules another accept of the block already covers.

    All rules of the block accept and are followed only by the final drops,
    so their order does not matter and a covered rule changes nothing.

    Indexed, not pairwise: a rule can only be covered by one whose source
    and destination each contain its own, and a network has at most 33
    (IPv4) or 129 (IPv6) networks containing it, so each rule looks up its
    candidates by those instead of comparing itself with every other rule
    (a remote group of 1,000 members made this quadratic).
    """
    index: dict[tuple, dict[tuple | None, list[inventory.TrafficRule]]] = {}
    for r in accepts:
        index.setdefault((r.direction, _net_key(r.source)), {}).setdefault(
            _net_key(r.destination), []).append(r)
    # (After _unique no two rules match the same packets, so two rules
    # never cover each other.)
    result = []
    for r in accepts:
        if not any(o is not r and _covers(o, r)
                   for o in _candidates(index, r)):
            result.append(r)
    return result


def _candidates(index, r: inventory.TrafficRule):
    """The rules of ``index`` whose source and destination contain
    ``r``'s (by network only; ports and protocol are for :func:`_covers`)."""
    for src in _containing(r.source):
        by_dst = index.get((r.direction, src))
        if by_dst is None:
            continue
        for dst in _containing(r.destination):
            yield from by_dst.get(dst, ())


@functools.lru_cache(maxsize=65536)
def _net_key(text: str | None) -> tuple | None:
    """A rule address as (version, network as int, prefix length); None:
    any address."""
    if text is None:
        return None
    net = _parse_net(text)
    return (net.version, int(net.network_address), net.prefixlen)


@functools.lru_cache(maxsize=65536)
def _containing(text: str | None) -> tuple:
    """The keys (:func:`_net_key`) of every network containing ``text``'s,
    itself included, and None (any address)."""
    if text is None:
        return (None,)
    version, address, length = _net_key(text)
    bits = 32 if version == 4 else 128
    return (None,) + tuple(
        (version, address & (((1 << k) - 1) << (bits - k)), k)
        for k in range(length + 1))


# -- small helpers -----------------------------------------------------------

def _net(port_id: str, text: str) -> Net:
    try:
        return _parse_net(text)
    except ValueError:
        raise Unenforceable(port_id, f"{text!r} is not an IP address or CIDR")


@functools.lru_cache(maxsize=65536)
def _parse_net(text: str) -> Net:
    """An address or CIDR, parsed once: every member port of a remote group
    parses the same members, and rule sets compare many pairs of rule
    addresses (canonical CIDR text, read the same strict or not)."""
    return ipaddress.ip_network(text, strict=False)


def _family(port_id: str, ethertype: str) -> int:
    if ethertype == "IPv4":
        return 4
    if ethertype == "IPv6":
        return 6
    raise Unenforceable(port_id, f"security group rule ethertype "
                        f"{ethertype!r}")


def _direction(port_id: str, direction: str) -> str:
    if direction == "egress":
        return FROM_VM
    if direction == "ingress":
        return TO_VM
    raise Unenforceable(port_id, f"security group rule direction "
                        f"{direction!r}")


def _mac_int(port_id: str, mac: str) -> int:
    digits = mac.replace(":", "").replace("-", "").replace(".", "")
    if len(digits) != 12:
        raise Unenforceable(port_id, f"MAC address {mac!r}")
    return int(digits, 16)

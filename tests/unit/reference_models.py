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

"""Reference models for the tests of the port translation.

Written independently of networking_vcenter.reconcile.portsettings and
sharing no code with it (only the plain data types and the direction names):

* :func:`dvs_verdict`: what a DVS traffic filter does with one packet, as
  VMware documents the rule set: rules in sequence order, the first rule
  whose qualifiers all match decides; an unset qualifier matches anything;
  an address qualifier matches only packets of its family (negated or not);
  port qualifiers match only protocols that have ports; a MAC qualifier
  (source or destination, one MAC) matches only frames with that MAC; a
  packet no rule matches passes (the filter only acts on the packets it
  matches).
* :class:`NeutronPort`: which packets Neutron's firewall (iptables hybrid
  and OVS drivers, as read from Neutron 29) lets to and from one port: the
  implicit DHCP / ICMPv6 rules, anti-spoofing, the security group rules,
  and for stateful groups the replies of admitted connections.

Packets: ICMP packets carry their type in ``sport`` and their code in
``dport`` (as Neutron's rules carry them in port_range_min/max); packets of
protocols without ports carry None.
"""

from __future__ import annotations

import dataclasses

import netaddr
from neutron_lib import constants as n_const

PORTED = {6, 17, 33, 132, 136}          # tcp udp dccp sctp udplite
ICMP_OF = {4: 1, 6: 58}
# ICMP request type -> reply type (conntrack's "ESTABLISHED" for ICMP).
ICMP_REPLY = {4: {8: 0, 13: 14, 15: 16, 17: 18}, 6: {128: 129}}

# neutron.agent.firewall / neutron_lib constants, spelled out.
V6_INGRESS_TYPES = {130, 135, 136, 134}      # MLD query, NS, NA (+RA: OVS)
V6_UNSPEC_TYPES = {131, 135, 143}             # MLD report, NS, MLDv2 report
V6_RA = 134


@dataclasses.dataclass(frozen=True)
class Packet:
    direction: str          # vSphere's name of the direction
    family: int             # 4 | 6
    src: str
    dst: str
    proto: int
    sport: int | None = None
    dport: int | None = None
    src_mac: str | None = None      # None: a frame whose MAC no rule names
    dst_mac: str | None = None

    def mirror(self, other_direction: str) -> "Packet":
        if self.proto == ICMP_OF[self.family]:
            return dataclasses.replace(self, direction=other_direction,
                                       src=self.dst, dst=self.src,
                                       src_mac=self.dst_mac,
                                       dst_mac=self.src_mac)
        return Packet(other_direction, self.family, self.dst, self.src,
                      self.proto, self.dport, self.sport, self.dst_mac,
                      self.src_mac)


# -- the DVS filter -------------------------------------------------------

def _addr_ok(qual: str | None, negated: bool, family: int, addr: str) -> bool:
    if qual is None:
        return True
    net = netaddr.IPNetwork(qual)
    if net.version != family:
        return False
    return (netaddr.IPAddress(addr) in net) != negated


def _port_ok(qual, pkt: Packet, port) -> bool:
    if qual is None:
        return True
    if pkt.proto not in PORTED:
        return False
    return qual[0] <= port <= qual[1]


def _mac_ok(qual: str | None, mac: str | None) -> bool:
    """A MAC qualifier (a single MAC) matches only frames with that MAC."""
    if qual is None:
        return True
    return mac is not None and netaddr.EUI(qual) == netaddr.EUI(mac)


def dvs_matches(rule, pkt: Packet) -> bool:
    return (rule.direction == pkt.direction
            and _mac_ok(rule.source_mac, pkt.src_mac)
            and _mac_ok(rule.destination_mac, pkt.dst_mac)
            and (rule.protocol is None or rule.protocol == pkt.proto)
            and _addr_ok(rule.source, rule.source_negated, pkt.family,
                         pkt.src)
            and _addr_ok(rule.destination, rule.destination_negated,
                         pkt.family, pkt.dst)
            and _port_ok(rule.source_ports, pkt, pkt.sport)
            and _port_ok(rule.destination_ports, pkt, pkt.dport))


def dvs_verdict(rules, pkt: Packet) -> str:
    for rule in rules or ():
        if dvs_matches(rule, pkt):
            return rule.action
    return "accept"


# -- Neutron --------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class _Rule:
    egress: bool
    family: int
    proto: int | None
    pmin: int | None
    pmax: int | None
    remotes: tuple
    stateful: bool


def _proto(protocol, ethertype) -> int | None:
    # As securitygroups_db._get_ip_proto_name_and_num normalises it.
    if protocol in (None, "any"):
        return None
    text = str(protocol)
    if ethertype == "IPv6" and text in ("icmp", "icmpv6", "1"):
        return 58
    if text in n_const.IP_PROTOCOL_MAP:
        return n_const.IP_PROTOCOL_MAP[text]
    return int(text)


class NeutronPort:
    """Neutron's view of one port with port security on."""

    def __init__(self, port, from_vm: str, to_vm: str):
        self.from_vm, self.to_vm = from_vm, to_vm
        mac = netaddr.EUI(port.mac)
        own = [netaddr.IPNetwork(ip) for ip in port.fixed_ips]
        own.append(netaddr.IPNetwork(str(mac.ipv6_link_local())))
        for ip, pair_mac in port.allowed_address_pairs:
            net = netaddr.IPNetwork(ip)
            own.append(net)
            if net.version == 6:
                other = netaddr.EUI(pair_mac) if pair_mac else mac
                own.append(netaddr.IPNetwork(str(other.ipv6_link_local())))
        self.own = own
        self.stateful = any(g.stateful for g in port.security_groups)
        self.rules = []
        for g in port.security_groups:
            for r in g.rules:
                fam = 4 if r.ethertype == "IPv4" else 6
                if r.remote_group_id:
                    texts = port.remote_groups.get(r.remote_group_id, ())
                elif r.remote_address_group_id:
                    texts = port.address_groups.get(
                        r.remote_address_group_id, ())
                elif r.remote_ip_prefix:
                    texts = (r.remote_ip_prefix,)
                else:
                    texts = ("0.0.0.0/0" if fam == 4 else "::/0",)
                remotes = tuple(n for n in map(netaddr.IPNetwork, texts)
                                if n.version == fam)
                pmin, pmax = r.port_range_min, r.port_range_max
                if (pmin, pmax) == (1, 65535):    # the API stores no range
                    pmin = pmax = None
                self.rules.append(_Rule(r.direction == "egress", fam,
                                        _proto(r.protocol, r.ethertype),
                                        pmin, pmax, remotes, g.stateful))

    # -- queries ----------------------------------------------------------

    def is_own(self, addr: str, family: int) -> bool:
        ip = netaddr.IPAddress(addr)
        return any(ip in n for n in self.own if n.version == family)

    def rule_allows(self, pkt: Packet, *, ignore_icmp_type=False,
                    stateful_only=False) -> bool:
        """Some security group rule admits ``pkt`` (nothing implicit)."""
        egress = pkt.direction == self.from_vm
        remote = netaddr.IPAddress(pkt.dst if egress else pkt.src)
        for r in self.rules:
            if (r.egress != egress or r.family != pkt.family
                    or (stateful_only and not r.stateful)
                    or (r.proto is not None and r.proto != pkt.proto)
                    or not any(remote in n for n in r.remotes)):
                continue
            if r.proto in PORTED and r.pmin is not None:
                if not r.pmin <= pkt.dport <= r.pmax:
                    continue
            if r.proto == ICMP_OF[r.family] and not ignore_icmp_type:
                if r.pmin is not None and pkt.sport != r.pmin:
                    continue
                if r.pmax is not None and pkt.dport != r.pmax:
                    continue
            return True
        return False

    def stateful_remote(self, egress: bool, family: int, addr: str) -> bool:
        """A stateful rule of that direction has ``addr`` as remote."""
        ip = netaddr.IPAddress(addr)
        return any(r.stateful and r.egress == egress and r.family == family
                   and any(ip in n for n in r.remotes) for r in self.rules)

    def verdict(self, pkt: Packet, *, new_only=False,
                ignore_icmp_type=False) -> str:
        """'accept' or 'drop', as Neutron's firewall decides."""
        v = self._fixed(pkt)
        if v is not None:
            return v
        if self.rule_allows(pkt, ignore_icmp_type=ignore_icmp_type):
            return "accept"
        if not new_only and self.is_reply(pkt, ignore_icmp_type):
            return "accept"
        return "drop"

    def is_reply(self, pkt: Packet, ignore_icmp_type=False) -> bool:
        """A reply of a connection Neutron admitted the other way."""
        if not self.stateful:
            return False
        other = self.to_vm if pkt.direction == self.from_vm else self.from_vm
        if pkt.proto == ICMP_OF[pkt.family]:
            replies = ICMP_REPLY[pkt.family]
            requests = [q for q, a in replies.items() if a == pkt.sport]
            return any(self.verdict(
                dataclasses.replace(pkt.mirror(other), sport=q),
                new_only=True, ignore_icmp_type=ignore_icmp_type) == "accept"
                for q in requests)
        return self.verdict(pkt.mirror(other), new_only=True) == "accept"

    def _fixed(self, pkt: Packet) -> str | None:
        """The implicit rules and anti-spoofing: a verdict, or None to go on
        to conntrack and the security group rules."""
        udp = pkt.proto == 17
        icmp6 = pkt.family == 6 and pkt.proto == 58
        server = (67, 68) if pkt.family == 4 else (547, 546)
        if pkt.direction == self.from_vm:
            if udp and (pkt.sport, pkt.dport) == server:
                return "drop"           # DHCP server from the VM
            if (pkt.family == 4 and udp and (pkt.sport, pkt.dport) == (68, 67)
                    and pkt.src == "0.0.0.0"
                    and pkt.dst == "255.255.255.255"):
                return "accept"
            if (icmp6 and pkt.src == "::" and pkt.sport in V6_UNSPEC_TYPES
                    and netaddr.IPAddress(pkt.dst)
                    in netaddr.IPNetwork("ff02::/16")):
                return "accept"
            if not self.is_own(pkt.src, pkt.family):
                return "drop"           # anti-spoofing
            if pkt.family == 4 and udp and (pkt.sport, pkt.dport) == (68, 67):
                return "accept"
            if icmp6:
                return "drop" if pkt.sport == V6_RA else "accept"
            if (pkt.family == 6 and udp
                    and (pkt.sport, pkt.dport) == (546, 547)):
                return "accept"
            return None
        if icmp6 and pkt.sport in V6_INGRESS_TYPES:
            return "accept"
        if udp and (pkt.sport, pkt.dport) == server:
            return "accept"             # DHCP replies to the VM
        return None

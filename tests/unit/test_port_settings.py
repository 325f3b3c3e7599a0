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

"""The translation of a Neutron port into its DV port's settings.

Property tests compare the DVS filter the translation produces (run by the
reference evaluator) with the reference model of Neutron's security groups,
both in tests/unit/reference_models.py; example tests pin the common cases.
"""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from networking_vcenter.reconcile import desired as d
from networking_vcenter.reconcile import portsettings as ps
from networking_vcenter.vsphere import inventory as inv
from tests.unit import reference_models as ref

FROM_VM, TO_VM = ps.FROM_VM, ps.TO_VM
MAC1, MAC2 = "fa:16:3e:00:00:01", "fa:16:3e:00:00:02"

# -- strategies -------------------------------------------------------------

ADDR = {
    4: ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.9", "10.0.0.255",
        "192.168.7.1", "172.16.0.5", "0.0.0.0", "255.255.255.255"],
    6: ["2001:db8::1", "2001:db8::2", "2001:db8::9", "2001:db8:1::5", "::",
        "ff02::1", "fe80::1", "fe80::f816:3eff:fe00:1",
        "fe80::f816:3eff:fe00:2"],
}
CIDR = {
    4: ["10.0.0.0/30", "10.0.0.0/24", "0.0.0.0/0", "192.168.7.0/24",
        "10.0.0.2/32", "10.0.0.8/29", "172.16.0.5"],
    6: ["2001:db8::/126", "2001:db8::/64", "::/0", "fe80::/64",
        "2001:db8::2/128", "2001:db8:1::/48", "2001:db8::9"],
}
PROTOS = {
    4: [None, "any", "tcp", "udp", "icmp", "6", "17", "1", "sctp", "gre",
        "47", "udplite", "132"],
    6: [None, "tcp", "udp", "icmp", "icmpv6", "ipv6-icmp", "58", "1", "6",
        "sctp", "gre", "udplite"],
}
PORTS = [1, 53, 67, 68, 80, 443, 546, 547, 1000, 33000, 65535]
ICMP_TYPES = [0, 3, 8, 128, 129, 130, 131, 133, 134, 135, 136, 143]
PORT_PROTO_NUMS = {6, 17, 132, 136, 33}
GROUPS = ["sg-a", "sg-b"]


@st.composite
def sg_rules(draw):
    fam = draw(st.sampled_from([4, 6]))
    proto = draw(st.sampled_from(PROTOS[fam]))
    num = ps.protocol_number(proto, f"IPv{fam}")
    pmin = pmax = None
    if num in PORT_PROTO_NUMS and draw(st.booleans()):
        pmin, pmax = sorted(draw(st.lists(st.sampled_from(PORTS),
                                          min_size=2, max_size=2)))
    elif num in (1, 58) and draw(st.booleans()):
        pmin = draw(st.sampled_from(ICMP_TYPES))
        pmax = draw(st.sampled_from([None, 0, 1]))
    remote = draw(st.sampled_from(["any", "prefix", "group", "address"]))
    kw = {}
    if remote == "prefix":
        kw["remote_ip_prefix"] = draw(st.sampled_from(CIDR[fam]))
    elif remote == "group":
        kw["remote_group_id"] = draw(st.sampled_from(GROUPS))
    elif remote == "address":
        kw["remote_address_group_id"] = "ag-1"
    return d.SgRule(draw(st.sampled_from(["ingress", "egress"])),
                    f"IPv{fam}", proto, pmin, pmax, **kw)


@st.composite
def ports(draw, stateful):
    fixed = draw(st.lists(st.sampled_from(["10.0.0.1", "10.0.0.2",
                                           "2001:db8::1"]),
                          max_size=2, unique=True))
    pairs = draw(st.lists(st.tuples(
        st.sampled_from(ADDR[4][:7] + ADDR[6][:4] + CIDR[4][:2]
                        + CIDR[6][:2]),
        st.sampled_from([None, MAC1, MAC2])), max_size=2))
    groups = tuple(
        d.SecurityGroup(gid, stateful,
                        tuple(draw(st.lists(sg_rules(), max_size=4))))
        for gid in draw(st.lists(st.sampled_from(GROUPS), min_size=1,
                                 max_size=2, unique=True)))
    members = st.lists(st.sampled_from(ADDR[4][:7] + ADDR[6][:4]
                                       + CIDR[4][:2] + CIDR[6][:2]),
                       max_size=4)
    return d.PortSpec(
        "port-1", "net-1", "host-1", "physnet1", MAC1,
        fixed_ips=tuple(fixed), allowed_address_pairs=tuple(pairs),
        security_groups=groups,
        remote_groups={g: tuple(draw(members)) for g in GROUPS},
        address_groups={"ag-1": tuple(draw(members))})


@st.composite
def packets(draw, port: d.PortSpec | None = None):
    """A packet; given a port, its own side is mostly one of the port's
    addresses and the other side often one of its rules' remotes."""
    fam = draw(st.sampled_from([4, 6]))
    proto = draw(st.sampled_from([6, 17, 132, 47, 136, ref.ICMP_OF[fam]]))
    sport = dport = None
    if proto in PORT_PROTO_NUMS:
        sport = draw(st.sampled_from(PORTS + [0]))
        dport = draw(st.sampled_from(PORTS + [0]))
    elif proto == ref.ICMP_OF[fam]:
        sport = draw(st.sampled_from(ICMP_TYPES))
        dport = draw(st.sampled_from([0, 1]))
    mine = others = ADDR[fam]
    if port is not None:
        own = [str(n.network_address) for n in ps.own_addresses(port)[fam]]
        if own and draw(st.integers(0, 4)):
            mine = own
        remotes = [str(ipaddress.ip_network(a, strict=False)
                       .network_address)
                   for a in (*port.remote_groups.get("sg-a", ()),
                             *port.address_groups.get("ag-1", ()))
                   if ipaddress.ip_network(a, strict=False).version == fam]
        if remotes and draw(st.booleans()):
            others = remotes
    ours, theirs = draw(st.sampled_from(mine)), draw(st.sampled_from(others))
    if draw(st.booleans()):
        return ref.Packet(FROM_VM, fam, ours, theirs, proto, sport, dport)
    return ref.Packet(TO_VM, fam, theirs, ours, proto, sport, dport)


@st.composite
def port_and_packets(draw, stateful):
    port = draw(ports(stateful))
    return port, draw(st.lists(packets(port), min_size=30, max_size=30))


PROPERTY = settings(max_examples=250, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


# -- classification of what the DVS admits beyond Neutron --------------------

def extra_case(model: ref.NeutronPort, pkt: ref.Packet) -> str | None:
    """Which documented case (docs/security-groups.md) admits ``pkt``, a
    packet Neutron would not admit as a new connection; None: none does."""
    fam, egress = pkt.family, pkt.direction == FROM_VM
    icmp = pkt.proto == ref.ICMP_OF[fam]
    if icmp and model.verdict(pkt, new_only=True,
                              ignore_icmp_type=True) == "accept":
        return "ICMP type/code ignored"
    if icmp and fam == 6:
        if not egress:
            return "all ICMPv6 to the VM"
        if model.is_own(pkt.src, 6) or (
                pkt.src == "::" and pkt.dst.startswith("ff02:")):
            return "all ICMPv6 from the VM's own or the unspecified address"
    if not model.stateful:
        return None
    own, remote = (pkt.src, pkt.dst) if egress else (pkt.dst, pkt.src)
    if not model.is_own(own, fam):
        return None
    if icmp and fam == 4 and model.stateful_remote(not egress, fam, remote):
        return "reflexive ICMP with a stateful rule's remote"
    if not icmp and model.rule_allows(pkt.mirror(TO_VM if egress
                                                 else FROM_VM),
                                      stateful_only=True):
        return "reflexive: mirror image of a stateful rule"
    return None


def check(port: d.PortSpec, pkts, stateful: bool, seen=None):
    """Neutron admits (new or reply) => the DVS admits; the DVS admits what
    Neutron would not admit as new => a documented case admits it (replies
    included: without connection tracking, a packet that looks like a reply
    passes whether or not the connection exists)."""
    rules = ps.port_settings(port, max_rules=10**6).rules
    model = ref.NeutronPort(port, FROM_VM, TO_VM)
    for pkt in pkts:
        dvs = ref.dvs_verdict(rules, pkt)
        if model.verdict(pkt) == "accept":
            assert dvs == "accept", (pkt, "Neutron admits, DVS drops")
        if dvs == "accept" and model.verdict(pkt, new_only=True) == "drop":
            case = extra_case(model, pkt)
            assert case is not None, (pkt, "DVS admits an undocumented case")
            if not stateful:
                assert "reflexive" not in case, (pkt, case)
            if seen is not None:
                seen[case] += 1


@PROPERTY
@given(port_and_packets(stateful=False))
def test_stateless_groups_are_exact(case):
    """Stateless: the same verdict as Neutron, but for ICMP types (which the
    DVS cannot see)."""
    port, pkts = case
    check(port, pkts, stateful=False)
    rules = ps.port_settings(port, max_rules=10**6).rules
    model = ref.NeutronPort(port, FROM_VM, TO_VM)
    for pkt in pkts:
        if pkt.proto not in (1, 58):
            assert ref.dvs_verdict(rules, pkt) == model.verdict(pkt), pkt


@PROPERTY
@given(port_and_packets(stateful=True))
def test_stateful_groups_admit_neutron_and_only_documented_extras(case):
    check(*case, stateful=True)


@PROPERTY
@given(port_and_packets(stateful=True))
def test_stateful_replies_pass(case):
    """Replies of connections Neutron admits pass the DVS filter (packets
    chosen among admitted ones so that the reply path is exercised)."""
    port, pkts = case
    rules = ps.port_settings(port, max_rules=10**6).rules
    model = ref.NeutronPort(port, FROM_VM, TO_VM)
    for pkt in pkts:
        if model.verdict(pkt, new_only=True) != "accept":
            continue
        other = TO_VM if pkt.direction == FROM_VM else FROM_VM
        reply = pkt.mirror(other)
        if pkt.proto == ref.ICMP_OF[pkt.family]:
            answer = ref.ICMP_REPLY[pkt.family].get(pkt.sport)
            if answer is None:
                continue
            reply = ref.Packet(other, pkt.family, pkt.dst, pkt.src,
                               pkt.proto, answer, pkt.dport)
        if model.verdict(reply) == "accept":
            assert ref.dvs_verdict(rules, reply) == "accept", (pkt, reply)


@PROPERTY
@given(ports(stateful=True))
def test_rule_set_shape(port):
    """No duplicates, accepts before the final drops, every accept from the
    VM names an own address (or 0.0.0.0 / :: for DHCP and DAD)."""
    rules = ps.port_settings(port, max_rules=10**6).rules
    keys = [(r.direction, r.action, r.protocol, r.source, r.destination,
             r.source_ports, r.destination_ports) for r in rules]
    assert len(keys) == len(set(keys))
    model = ref.NeutronPort(port, FROM_VM, TO_VM)
    for direction in (FROM_VM, TO_VM):
        mine = [r for r in rules if r.direction == direction]
        assert [(r.action, r.protocol, r.source) for r in mine[-2:]] == [
            ("drop", None, "0.0.0.0/0"), ("drop", None, "::/0")]
    for r in rules:
        if r.direction == FROM_VM and r.action == "accept":
            net = ipaddress.ip_network(r.source)
            assert (str(net) in ("0.0.0.0/32", "::/128")
                    or model.is_own(str(net.network_address), net.version))
            assert not r.source_negated and not r.destination_negated


@settings(max_examples=60, deadline=None)
@given(ports(stateful=True), st.randoms())
def test_rule_order_in_neutron_does_not_matter(port, rnd):
    groups = []
    for g in port.security_groups:
        rules = list(g.rules)
        rnd.shuffle(rules)
        groups.append(d.SecurityGroup(g.id, g.stateful, tuple(rules)))
    shuffled = d.PortSpec(**{**port.__dict__,
                             "security_groups": tuple(groups)})
    assert ps.port_settings(shuffled).rules == ps.port_settings(port).rules


# -- the reference evaluator itself -----------------------------------------

def test_evaluator_first_match_unset_any_negation_and_no_match_passes():
    r = inv.TrafficRule
    rules = (
        r(FROM_VM, "drop", 6, source="10.0.0.0/24", source_negated=True),
        r(FROM_VM, "accept", 17, destination_ports=(53, 53)),
        r(FROM_VM, "drop", None, source="0.0.0.0/0"),
    )
    pkt = ref.Packet(FROM_VM, 4, "10.0.0.1", "8.8.8.8", 6, 1000, 80)
    assert ref.dvs_verdict(rules, pkt) == "drop"        # final drop
    assert ref.dvs_verdict(rules, pkt.__class__(
        FROM_VM, 4, "10.9.0.1", "8.8.8.8", 6, 1000, 80)) == "drop"
    assert ref.dvs_verdict(rules, ref.Packet(
        FROM_VM, 4, "10.0.0.1", "8.8.8.8", 17, 1000, 53)) == "accept"
    # An IPv4 qualifier does not match IPv6; nothing matches: it passes.
    assert ref.dvs_verdict(rules, ref.Packet(
        FROM_VM, 6, "2001:db8::1", "2001:db8::2", 6, 1, 2)) == "accept"
    assert ref.dvs_verdict(rules, ref.Packet(
        TO_VM, 4, "10.0.0.1", "8.8.8.8", 6, 1, 2)) == "accept"
    # Port qualifiers never match a protocol without ports.
    assert ref.dvs_verdict(rules[1:2], ref.Packet(
        FROM_VM, 4, "10.0.0.1", "8.8.8.8", 1, 53, 53)) == "accept"


# -- examples ---------------------------------------------------------------

def default_port(**kw) -> d.PortSpec:
    sg = d.SecurityGroup("sg-def", True, (
        d.SgRule("egress", "IPv4"), d.SgRule("egress", "IPv6"),
        d.SgRule("ingress", "IPv4", remote_group_id="sg-def"),
        d.SgRule("ingress", "IPv6", remote_group_id="sg-def")))
    args = dict(fixed_ips=("10.0.0.5", "2001:db8::5"),
                security_groups=(sg,),
                remote_groups={"sg-def": ("10.0.0.5", "10.0.0.6",
                                          "2001:db8::5", "2001:db8::6")})
    args.update(kw)
    return d.PortSpec("port-1", "net-1", "h", "physnet1",
                      "fa:16:3e:00:00:05", **args)


def table(rules):
    return [(("out" if r.direction == FROM_VM else "in"), r.action,
             r.protocol, r.source, r.destination, r.source_ports,
             r.destination_ports) for r in rules]


LLA5 = "fe80::f816:3eff:fe00:5/128"


def test_default_security_group():
    s = ps.port_settings(default_port())
    assert table(s.rules) == [
        ("out", "drop", 17, "0.0.0.0/0", None, (67, 67), (68, 68)),
        ("out", "drop", 17, "::/0", None, (547, 547), (546, 546)),
        ("out", "accept", 17, "0.0.0.0/32", "255.255.255.255/32", (68, 68),
         (67, 67)),
        ("out", "accept", 58, "::/128", "ff02::/16", None, None),
        ("out", "accept", 17, "10.0.0.5/32", None, (68, 68), (67, 67)),
        ("out", "accept", 17, "2001:db8::5/128", None, (546, 546),
         (547, 547)),
        ("out", "accept", 58, "2001:db8::5/128", None, None, None),
        ("out", "accept", 17, LLA5, None, (546, 546), (547, 547)),
        ("out", "accept", 58, LLA5, None, None, None),
        ("out", "accept", None, "10.0.0.5/32", "0.0.0.0/0", None, None),
        ("out", "accept", None, "2001:db8::5/128", "::/0", None, None),
        ("out", "accept", None, LLA5, "::/0", None, None),
        ("out", "drop", None, "0.0.0.0/0", None, None, None),
        ("out", "drop", None, "::/0", None, None, None),
        ("in", "accept", 17, "0.0.0.0/0", None, (67, 67), (68, 68)),
        ("in", "accept", 17, "::/0", None, (547, 547), (546, 546)),
        ("in", "accept", 58, "::/0", None, None, None),
        # the replies of "egress any": anything to the port's addresses
        ("in", "accept", None, "0.0.0.0/0", "10.0.0.5/32", None, None),
        ("in", "accept", None, "10.0.0.5/32", None, None, None),
        ("in", "accept", None, "10.0.0.6/32", None, None, None),
        ("in", "accept", None, "::/0", "2001:db8::5/128", None, None),
        ("in", "accept", None, "::/0", LLA5, None, None),
        ("in", "accept", None, "2001:db8::5/128", None, None, None),
        ("in", "accept", None, "2001:db8::6/128", None, None, None),
        ("in", "drop", None, "0.0.0.0/0", None, None, None),
        ("in", "drop", None, "::/0", None, None, None),
    ]
    assert (s.blocked, s.allow_promiscuous, s.mac_changes,
            s.forged_transmits, s.mac_learning) == (
        False, False, False, False, False)
    assert s.in_shaping == s.out_shaping == inv.Shaping(enabled=False)
    pkt = ref.Packet(FROM_VM, 4, "10.0.0.7", "8.8.8.8", 6, 1000, 80)
    assert ref.dvs_verdict(s.rules, pkt) == "drop"            # spoofed


def test_stateless_default_group_has_no_reflexive_rules():
    port = default_port()
    sg = port.security_groups[0]
    port = default_port(security_groups=(
        d.SecurityGroup(sg.id, False, sg.rules),))
    rows = table(ps.port_settings(port).rules)
    assert ("in", "accept", None, "0.0.0.0/0", "10.0.0.5/32", None,
            None) not in rows
    assert ref.dvs_verdict(ps.port_settings(port).rules, ref.Packet(
        TO_VM, 4, "8.8.8.8", "10.0.0.5", 6, 80, 1000)) == "drop"


def test_every_field_is_set_for_a_reserved_port():
    # All but the VLAN, which only a trunk parent holds itself.
    for port in (default_port(), default_port(port_security=False)):
        for mac_learning in (True, False):
            s = ps.port_settings(port, mac_learning=mac_learning)
            assert s.trunk_vlans is None
            assert all(v is not None for k, v in s.__dict__.items()
                       if k != "trunk_vlans"), s


def test_port_security_off():
    s = ps.port_settings(default_port(port_security=False))
    assert s == inv.PortSettings(
        blocked=False, rules=(), allow_promiscuous=False, mac_changes=True,
        forged_transmits=True, mac_learning=True,
        in_shaping=inv.Shaping(False), out_shaping=inv.Shaping(False))
    s = ps.port_settings(default_port(port_security=False),
                         mac_learning=False)
    assert (s.allow_promiscuous, s.mac_learning) == (True, False)


def test_allowed_address_pairs_with_another_mac():
    s = ps.port_settings(default_port(allowed_address_pairs=(
        ("10.0.0.100", "fa:16:3e:00:00:05"), ("10.0.0.0/28", None))))
    assert (s.mac_changes, s.forged_transmits) == (False, False)
    s = ps.port_settings(default_port(allowed_address_pairs=(
        ("2001:db8::100", "FA:16:3E:AA:BB:CC"),)))
    assert (s.mac_changes, s.forged_transmits) == (True, True)
    assert (s.allow_promiscuous, s.mac_learning) == (False, False)
    sources = {r.source for r in s.rules if r.direction == FROM_VM}
    # the pair's address and the link-local address of the pair's MAC
    assert {"2001:db8::100/128", "fe80::f816:3eff:feaa:bbcc/128"} <= sources


def test_allowed_address_pair_cidr_is_one_source():
    s = ps.port_settings(default_port(allowed_address_pairs=(
        ("10.0.0.4/30", None),)))
    ok = ref.Packet(FROM_VM, 4, "10.0.0.6", "8.8.8.8", 6, 1000, 80)
    bad = ref.Packet(FROM_VM, 4, "10.0.0.8", "8.8.8.8", 6, 1000, 80)
    assert ref.dvs_verdict(s.rules, ok) == "accept"
    assert ref.dvs_verdict(s.rules, bad) == "drop"


def test_remote_group_members_collapse_into_cidrs():
    sg = d.SecurityGroup("sg-a", False, (
        d.SgRule("ingress", "IPv4", "tcp", 22, 22, remote_group_id="sg-b"),))
    port = default_port(security_groups=(sg,), remote_groups={
        "sg-b": ("10.1.0.0", "10.1.0.1", "10.1.0.2", "10.1.0.3",
                 "10.1.0.3", "2001:db8::7")})
    rows = [r for r in table(ps.port_settings(port).rules)
            if r[0] == "in" and r[2] == 6]
    assert rows == [("in", "accept", 6, "10.1.0.0/30", None, None, (22, 22))]


@pytest.mark.parametrize("proto,ethertype,number", [
    ("tcp", "IPv4", 6), ("6", "IPv4", 6), ("icmp", "IPv4", 1),
    ("icmp", "IPv6", 58), ("1", "IPv6", 58), ("icmpv6", "IPv6", 58),
    ("ipv6-icmp", "IPv6", 58), ("58", "IPv6", 58), ("sctp", "IPv4", 132),
    ("udplite", "IPv6", 136), ("gre", "IPv4", 47), ("any", "IPv4", None),
    (None, "IPv6", None), ("vrrp", "IPv4", 112)])
def test_protocol_numbers(proto, ethertype, number):
    assert ps.protocol_number(proto, ethertype) == number


def test_icmp_type_and_code_admit_all_icmp_of_the_family():
    sg = d.SecurityGroup("sg-a", False, (
        d.SgRule("ingress", "IPv4", "icmp", 8, 0),))
    rules = ps.port_settings(default_port(security_groups=(sg,))).rules
    for icmp_type in (0, 3, 8):
        assert ref.dvs_verdict(rules, ref.Packet(
            TO_VM, 4, "8.8.8.8", "10.0.0.5", 1, icmp_type, 0)) == "accept"


def test_unknown_protocol_is_unenforceable():
    sg = d.SecurityGroup("sg-a", True, (d.SgRule("ingress", "IPv4",
                                                  "nonsense", id="r1"),))
    with pytest.raises(ps.Unenforceable, match="port-1.*r1.*nonsense"):
        ps.port_settings(default_port(security_groups=(sg,)))


def test_qos_mapping():
    limits = (d.BandwidthLimit("egress", 10000),
              d.BandwidthLimit("ingress", 2000, 800))
    in_s, out_s = ps.qos_shaping(limits)
    assert in_s == inv.Shaping(True, 10_000_000, 10_000_000, 1_000_000)
    assert out_s == inv.Shaping(True, 2_000_000, 2_000_000, 100_000)
    s = ps.port_settings(default_port(qos=limits))
    assert (s.in_shaping, s.out_shaping) == (in_s, out_s)
    assert ps.qos_shaping(()) == (inv.Shaping(False), inv.Shaping(False))
    assert ps.qos_shaping((d.BandwidthLimit("ingress", 0),)) == (
        inv.Shaping(False), inv.Shaping(False))


def test_qos_follows_the_direction_constant(monkeypatch):
    monkeypatch.setattr(ps, "FROM_VM", inv.OUTGOING)
    monkeypatch.setattr(ps, "TO_VM", inv.INCOMING)
    in_s, out_s = ps.qos_shaping((d.BandwidthLimit("egress", 1),))
    assert (in_s.enabled, out_s.enabled) == (False, True)


def test_qos_unenforceable():
    with pytest.raises(ps.Unenforceable, match="port-9.*two.*egress"):
        ps.qos_shaping((d.BandwidthLimit("egress", 1),
                        d.BandwidthLimit("egress", 2)), port_id="port-9")


def test_too_many_rules():
    members = tuple(f"10.{i}.0.1" for i in range(0, 100, 2))
    sg = d.SecurityGroup("sg-a", True, (
        d.SgRule("ingress", "IPv4", "tcp", 22, 22, remote_group_id="sg-b"),))
    port = default_port(security_groups=(sg,),
                        remote_groups={"sg-b": members})
    count = len(ps.port_settings(port, max_rules=10**6).rules)
    assert count > 100
    assert len(ps.port_settings(port, max_rules=count).rules) == count
    with pytest.raises(ps.TooManyRules) as err:
        ps.port_settings(port, max_rules=count - 1)
    msg = str(err.value)
    assert "port-1" in msg and str(count) in msg and str(count - 1) in msg
    assert "[ml2_vcenter] max_rules_per_port" in msg
    assert (err.value.count, err.value.budget) == (count, count - 1)
    assert ps.DEFAULT_MAX_RULES == 1024


def test_released_settings():
    assert ps.released_settings(False) == inv.PortSettings()
    assert ps.released_settings(True) == inv.PortSettings(blocked=True)


def test_link_local():
    assert str(ps.link_local("fa:16:3e:00:00:01")) == "fe80::f816:3eff:fe00:1"
    assert str(ps.link_local("00-50-56-AB-CD-EF")) == \
        "fe80::250:56ff:feab:cdef"


# -- failing closed (issue 15) ------------------------------------------------

def test_blocked_settings_pass_nothing():
    s = ps.blocked_settings()
    assert s.blocked is True
    assert [(r.action, r.source) for r in s.rules] == \
        [("drop", "0.0.0.0/0"), ("drop", "::/0")] * 2
    assert {r.direction for r in s.rules} == {ps.FROM_VM, ps.TO_VM}
    assert (s.allow_promiscuous, s.mac_changes, s.forged_transmits) == \
        (False, False, False)


def test_security_groups_disabled_means_no_filter():
    """[securitygroup] enable_security_group = False: Neutron's noop
    firewall filters nothing; port security still guards the MAC."""
    sg = d.SecurityGroup("sg-a", True, (
        d.SgRule("ingress", "IPv4", "tcp", 22, 22),))
    port = default_port(security_groups=(sg,))
    assert ps.port_settings(port).rules           # filtered by default
    s = ps.port_settings(port, filtering=False)
    assert s.rules == ()                         # set on the port: no filter
    assert (s.blocked, s.mac_changes, s.forged_transmits) == \
        (False, False, False)


def test_indexed_subsumption_equals_pairwise():
    """The indexed _without_subsumed leaves out exactly the rules the
    pairwise definition does (every pair compared with _covers)."""
    import random
    rnd = random.Random(15)
    nets4 = ["10.0.0.0/8", "10.1.0.0/16", "10.1.2.0/24", "10.1.2.3/32",
             "10.1.2.4/31", "0.0.0.0/0", "192.0.2.0/24", "192.0.2.9/32"]
    nets6 = ["::/0", "2001:db8::/32", "2001:db8::1/128", "fe80::/64"]
    for _ in range(200):
        rules = []
        for _ in range(rnd.randint(1, 40)):
            nets = rnd.choice((nets4, nets6))
            lo = rnd.choice((None, 22, 80, 1000))
            rules.append(inv.TrafficRule(
                direction=rnd.choice((ps.FROM_VM, ps.TO_VM)),
                action="accept", protocol=rnd.choice((None, 6, 17, 1)),
                source=rnd.choice(nets + [None]),
                destination=rnd.choice(nets + [None]),
                destination_ports=None if lo is None else
                (lo, lo + rnd.choice((0, 10, 5000)))))
        rules = ps._unique(sorted(rules, key=ps._sort_key))
        pairwise = [r for r in rules if not any(
            o is not r and o.direction == r.direction and ps._covers(o, r)
            for o in rules)]
        assert ps._without_subsumed(rules) == pairwise

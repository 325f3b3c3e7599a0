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

"""One traffic filter shared by the ports of a port group
(``portsettings.share_key`` and ``shared_rules``).

The key property: for each sharing port, the shared filter (run by the
reference evaluator with the port's MAC on its frames) gives every packet
the verdict the port's own filter (``traffic_rules``) gives it; the property
tests of test_port_settings.py prove that one against Neutron.  Frames with
a MAC of no sharing port get no more than any port's own filter admits.
"""

from __future__ import annotations

import collections
import dataclasses
import ipaddress
import random

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from networking_vcenter.reconcile import desired as d
from networking_vcenter.reconcile import portsettings as ps
from networking_vcenter.vsphere import inventory as inv
from tests.unit import reference_models as ref
from tests.unit.test_port_settings import (
    ADDR, CIDR, packets, ports as port_specs)
from tests.unit.test_port_settings import default_port as _default_port

FROM_VM, TO_VM = ps.FROM_VM, ps.TO_VM
MACS = ["fa:16:3e:00:00:01", "fa:16:3e:00:00:02", "fa:16:3e:00:00:03",
        "fa:16:3e:00:00:04"]
BROADCAST = "ff:ff:ff:ff:ff:ff"
FOREIGN = "fa:16:3e:99:99:99"        # no sharing port's


def default_port(**kw) -> d.PortSpec:
    """test_port_settings' default-group port, any field replaced."""
    return dataclasses.replace(_default_port(), **kw)


# -- strategies -------------------------------------------------------------

@st.composite
def sharing_ports(draw):
    """1-4 ports with one share key: the groups, remote groups and address
    groups of one drawn port (stateless or stateful), each port with its
    own MAC, fixed IPs and allowed address pairs (no MAC or its own)."""
    base = draw(port_specs(stateful=draw(st.booleans())))
    count = draw(st.integers(1, 4))
    macs = draw(st.permutations(MACS))[:count]
    result = []
    for i, mac in enumerate(macs):
        fixed = draw(st.lists(st.sampled_from(
            ["10.0.0.1", "10.0.0.2", "10.0.0.3", "192.168.7.1",
             "2001:db8::1", "2001:db8::2"]), max_size=2, unique=True))
        pairs = draw(st.lists(st.tuples(
            st.sampled_from(ADDR[4][:7] + ADDR[6][:4] + CIDR[4][:2]
                            + CIDR[6][:2]),
            st.sampled_from([None, mac, mac.upper()])), max_size=2))
        result.append(dataclasses.replace(
            base, id=f"port-{i}", mac=mac, fixed_ips=tuple(fixed),
            allowed_address_pairs=tuple(pairs)))
    return result


@st.composite
def shared_case(draw):
    ports = draw(sharing_ports())
    pkts = [draw(st.lists(packets(p), min_size=12, max_size=12))
            for p in ports]
    return ports, pkts


PROPERTY = settings(max_examples=200, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


def with_mac(pkt: ref.Packet, mac: str) -> ref.Packet:
    """The packet in a frame of the port with ``mac``: sent by it (from
    the VM) or to it (to the VM)."""
    if pkt.direction == FROM_VM:
        return dataclasses.replace(pkt, src_mac=mac)
    return dataclasses.replace(pkt, dst_mac=mac)


# -- the key property -------------------------------------------------------

@PROPERTY
@given(shared_case())
def test_shared_filter_gives_each_port_its_own_verdicts(case):
    """For every sharing port i and every packet (drawn around any of the
    sharing ports, so that one port's addresses are tried as another's):
    the shared filter on port i's frames == port i's own filter; on frames
    of a MAC no sharing port has (broadcast, another VM's) the shared
    filter admits nothing port i's own filter drops."""
    ports, pkts = case
    keys = {ps.share_key(p) for p in ports}
    assert len(keys) == 1 and None not in keys
    shared = ps.shared_rules(ports)
    every = [pkt for group in pkts for pkt in group]
    for port in ports:
        own = ps.traffic_rules(port)
        for pkt in every:
            expected = ref.dvs_verdict(own, pkt)
            assert ref.dvs_verdict(shared, with_mac(pkt, port.mac)) == \
                expected, (port.id, pkt)
            for other in (BROADCAST, FOREIGN):
                if ref.dvs_verdict(shared, with_mac(pkt, other)) == \
                        "accept":
                    assert expected == "accept", (port.id, other, pkt)


@PROPERTY
@given(sharing_ports(), st.randoms())
def test_shared_filter_shape_and_order(ports, rnd):
    """Same output whatever order the ports and Neutron's rules come in;
    no duplicates; the traffic_rules shape (drops last in each direction,
    from-VM accepts before the to-VM block); MAC qualifiers on exactly
    the rules naming an own address, each the MAC of a sharing port and
    on the side of that port."""
    shared = ps.shared_rules(ports)
    shuffled = list(ports)
    rnd.shuffle(shuffled)
    groups = []
    for g in ports[0].security_groups:
        rules = list(g.rules)
        rnd.shuffle(rules)
        groups.append(d.SecurityGroup(g.id, g.stateful, tuple(rules)))
    shuffled = [dataclasses.replace(p, security_groups=tuple(groups))
                for p in shuffled]
    assert ps.shared_rules(shuffled) == shared

    keys = [ps._match_key(r) for r in shared]
    assert len(keys) == len(set(keys))
    directions = [r.direction for r in shared]
    assert directions == sorted(directions, key=lambda x: x != FROM_VM)
    for direction in (FROM_VM, TO_VM):
        mine = [r for r in shared if r.direction == direction]
        assert [(r.action, r.protocol, r.source, r.source_mac,
                 r.destination_mac) for r in mine[-2:]] == [
            ("drop", None, "0.0.0.0/0", None, None),
            ("drop", None, "::/0", None, None)]
        assert all(r.action == "accept" for r in mine[:-2]
                   if r.source_mac or r.destination_mac)
    macs = {p.mac for p in ports}
    owns = {p.mac: ps.own_addresses(p) for p in ports}
    for r in shared:
        if r.source_mac:
            assert r.direction == FROM_VM and r.destination_mac is None
            assert r.source_mac in macs
            assert ipaddress.ip_network(r.source) in \
                owns[r.source_mac][ipaddress.ip_network(r.source).version]
        elif r.destination_mac:
            assert r.direction == TO_VM and r.destination_mac in macs
            assert ipaddress.ip_network(r.destination) in owns[
                r.destination_mac][
                ipaddress.ip_network(r.destination).version]
        elif r.direction == FROM_VM and r.action == "accept":
            # Only what names no own address: DHCP discovery, DAD.
            assert r.source in ("0.0.0.0/32", "::/128"), r


# -- the evaluator with MACs ------------------------------------------------

def test_evaluator_mac_qualifiers():
    rule = inv.TrafficRule(FROM_VM, "accept", 6, source="10.0.0.1/32",
                           source_mac="fa:16:3e:00:00:01")
    pkt = ref.Packet(FROM_VM, 4, "10.0.0.1", "8.8.8.8", 6, 1000, 80)
    assert ref.dvs_matches(rule, dataclasses.replace(
        pkt, src_mac="FA:16:3E:00:00:01"))
    assert not ref.dvs_matches(rule, pkt)             # no MAC on the packet
    assert not ref.dvs_matches(rule, dataclasses.replace(
        pkt, src_mac="fa:16:3e:00:00:02"))
    assert not ref.dvs_matches(rule, dataclasses.replace(
        pkt, dst_mac="fa:16:3e:00:00:01"))            # the wrong side
    to = inv.TrafficRule(TO_VM, "accept", None,
                         destination_mac="fa:16:3e:00:00:01")
    back = dataclasses.replace(pkt, src_mac="fa:16:3e:00:00:01").mirror(
        TO_VM)
    assert back.dst_mac == "fa:16:3e:00:00:01" and back.src_mac is None
    assert ref.dvs_matches(to, back)
    # IP and MAC qualifiers are ANDed.
    assert not ref.dvs_matches(rule, dataclasses.replace(
        pkt, src="10.0.0.2", src_mac="fa:16:3e:00:00:01"))


# -- share_key --------------------------------------------------------------

def test_share_key_ignores_own_addresses_and_mac_only():
    a = default_port()
    b = default_port(id="port-2", mac="fa:16:3e:00:00:06",
                     fixed_ips=("10.0.0.6", "2001:db8::6"),
                     allowed_address_pairs=(("10.0.9.0/24", None),
                                            ("10.0.0.77",
                                             "FA:16:3E:00:00:06")),
                     host="other", qos=(d.BandwidthLimit("egress", 10),))
    assert ps.share_key(a) is not None
    assert ps.share_key(a) == ps.share_key(b)
    assert hash(ps.share_key(a)) == hash(ps.share_key(b))
    # A remote group no rule names does not count.
    c = default_port(remote_groups={**a.remote_groups,
                                    "sg-unused": ("192.0.2.1",)})
    assert ps.share_key(c) == ps.share_key(a)
    # Groups in another order: the same key.
    other = d.SecurityGroup("sg-0", False, (d.SgRule("ingress", "IPv4",
                                                      "tcp", 22, 22),))
    e = default_port(security_groups=(a.security_groups[0], other))
    f = default_port(security_groups=(other, a.security_groups[0]))
    assert ps.share_key(e) == ps.share_key(f) != ps.share_key(a)


def test_share_key_differs_with_what_the_filter_depends_on():
    a = default_port()
    sg = a.security_groups[0]
    ag_rule = d.SgRule("ingress", "IPv4", "tcp", 80, 80,
                       remote_address_group_id="ag-1")
    with_ag = d.SecurityGroup(sg.id, sg.stateful, sg.rules + (ag_rule,))
    changed = {
        "group id": default_port(security_groups=(
            d.SecurityGroup("sg-other", sg.stateful, sg.rules),)),
        "stateful": default_port(security_groups=(
            d.SecurityGroup(sg.id, False, sg.rules),)),
        "a rule": default_port(security_groups=(
            d.SecurityGroup(sg.id, sg.stateful, sg.rules[:-1]),)),
        "a rule's port": default_port(security_groups=(
            d.SecurityGroup(sg.id, sg.stateful, sg.rules + (
                d.SgRule("ingress", "IPv4", "tcp", 22, 22),)),)),
        "remote members": default_port(remote_groups={
            "sg-def": a.remote_groups["sg-def"] + ("10.0.0.7",)}),
        "another group": default_port(security_groups=(
            sg, d.SecurityGroup("sg-x", True, ()))),
    }
    keys = {name: ps.share_key(p) for name, p in changed.items()}
    keys["unchanged"] = ps.share_key(a)
    assert None not in keys.values()
    assert len(set(keys.values())) == len(keys), keys
    # Address group CIDRs count for the rules naming them.
    p1 = default_port(security_groups=(with_ag,),
                      address_groups={"ag-1": ("192.0.2.0/24",)})
    p2 = default_port(security_groups=(with_ag,),
                      address_groups={"ag-1": ("198.51.100.0/24",)})
    assert None not in (ps.share_key(p1), ps.share_key(p2))
    assert ps.share_key(p1) != ps.share_key(p2)


def test_share_key_none_when_the_port_cannot_share():
    sub = d.Subport(default_port(id="sub"), "vlan", 101)
    bad_sg = d.SecurityGroup("sg-bad", True, (
        d.SgRule("ingress", "IPv4", "nonsense"),))
    cases = {
        "port security off": (default_port(port_security=False), True),
        "no filtering": (default_port(), False),
        "trunk parent": (default_port(trunk=d.TrunkSpec(
            "trunk-1", "ACTIVE", (sub,))), True),
        "pair with another MAC": (default_port(allowed_address_pairs=(
            ("10.0.0.50", "fa:16:3e:aa:bb:cc"),)), True),
        "unknown protocol": (default_port(security_groups=(bad_sg,)), True),
        "bad member": (default_port(remote_groups={
            "sg-def": ("10.0.0.5", "not-an-ip")}), True),
        "bad fixed IP": (default_port(fixed_ips=("10.0.0.300",)), True),
        "bad MAC": (default_port(mac="fa:16:3e"), True),
    }
    for name, (port, filtering) in cases.items():
        assert ps.share_key(port, filtering=filtering) is None, name
    # The same ports, fixed, share.
    assert ps.share_key(default_port(allowed_address_pairs=(
        ("10.0.0.50", "fa:16:3e:00:00:05"), ("10.0.0.51", None)))) \
        is not None


def test_shared_rules_refuses_ports_that_do_not_share():
    a = default_port()
    with pytest.raises(ValueError, match="port-2"):
        ps.shared_rules([a, default_port(id="port-2", mac=MACS[1],
                                         remote_groups={"sg-def": ()})])
    with pytest.raises(ValueError, match="one MAC"):
        ps.shared_rules([a, default_port(id="port-2",
                                         mac=a.mac.upper())])
    with pytest.raises(ValueError):
        ps.shared_rules([default_port(port_security=False)])
    assert ps.shared_rules([]) == ps.drop_all_rules()


# -- size: a big default group ----------------------------------------------

def default_group(n: int, seed: int = 15, extra: str | None = None):
    """The default group of n members spread over a /20 with holes (as
    bench/bench_sg.py builds it), and optionally one more member."""
    rnd = random.Random(seed)
    hosts = list(ipaddress.ip_network("10.0.0.0/20").hosts())
    members = [str(a) for a in sorted(rnd.sample(hosts, n))]
    if extra is not None:
        members = [str(a) for a in sorted(
            map(ipaddress.ip_address, members + [extra]))]
    texts = tuple(members)
    sg = d.SecurityGroup("sg-default", True, (
        d.SgRule("egress", "IPv4", id="r1"),
        d.SgRule("egress", "IPv6", id="r2"),
        d.SgRule("ingress", "IPv4", remote_group_id="sg-default", id="r3"),
        d.SgRule("ingress", "IPv6", remote_group_id="sg-default", id="r4")))
    # Each port's MAC follows from its address: the same port keeps it.
    return [d.PortSpec(
        id=f"port-{t}", network_id="net", host="h", physnet="physnet1",
        mac="fa:16:3e:00:%02x:%02x" % divmod(
            int(ipaddress.ip_address(t)) & 0xFFFF, 256),
        fixed_ips=(t,), security_groups=(sg,),
        remote_groups={"sg-default": texts}) for t in texts]


# The rules that name no own address and no member: from the VM the two
# DHCP-server drops, DHCP discovery, ICMPv6 from ::, the two drops; to the
# VM the two DHCP replies, ICMPv6, the two drops.
CONSTANT = 4 + 2 + 3 + 2
# Per port: from the VM, anything from its IPv4 address and from its
# link-local address (which cover its DHCP client and ICMPv6 rules and the
# replies to members); to the VM, the replies of "egress any" to each.
PER_PORT = 4


def member_cidrs(ports) -> set[str]:
    return {str(n) for n in ipaddress.collapse_addresses(
        ipaddress.ip_network(p.fixed_ips[0]) for p in ports)}


@pytest.mark.parametrize("n", [100, 1000])
def test_default_group_size(n):
    ports = default_group(n)
    rules = ps.shared_rules(ports)
    cidrs = member_cidrs(ports)
    assert len(cidrs) < n or n < 1000           # 1,000: some collapse
    assert len(rules) == PER_PORT * n + len(cidrs) + CONSTANT
    qualified = [r for r in rules if r.source_mac or r.destination_mac]
    assert len(qualified) == PER_PORT * n
    members = {r.source for r in rules
               if r.direction == TO_VM and r.destination is None
               and r.protocol is None and r.action == "accept"}
    assert members == cidrs


def test_one_port_joining_changes_its_rules_and_its_member_cidr():
    old_ports = default_group(1000)
    taken = {p.fixed_ips[0] for p in old_ports}
    # A hole whose neighbours are holes too: its CIDR merges with none.
    hole = next(str(a) for a in ipaddress.ip_network("10.0.0.0/20").hosts()
                if str(a) not in taken and str(a - 1) not in taken
                and str(a + 1) not in taken and int(a) % 2 == 0)
    new_ports = default_group(1000, extra=hole)
    assert len(new_ports) == 1001
    old = collections.Counter(ps.shared_rules(old_ports))
    new = collections.Counter(ps.shared_rules(new_ports))
    added, removed = new - old, old - new
    (joiner,) = [p for p in new_ports if p.fixed_ips[0] == hole]
    mine = [r for r in added if joiner.mac in (r.source_mac,
                                               r.destination_mac)]
    assert len(mine) == PER_PORT
    common = [r for r in added if r not in mine]
    # The member CIDRs: exactly what changed in their collapse.
    cidr_added = member_cidrs(new_ports) - member_cidrs(old_ports)
    cidr_removed = member_cidrs(old_ports) - member_cidrs(new_ports)
    assert {r.source for r in common} == cidr_added == {f"{hole}/32"}
    assert {r.source for r in removed} == cidr_removed == set()
    assert sum(added.values()) + sum(removed.values()) <= 6


def test_one_port_joining_next_to_a_member():
    """A joiner whose address merges with a member's: its 4 rules, and
    the member CIDRs the collapse changed (computed independently)."""
    old_ports = default_group(500)
    taken = {p.fixed_ips[0] for p in old_ports}
    hole = next(str(a) for a in ipaddress.ip_network("10.0.0.0/20").hosts()
                if str(a) not in taken and int(a) % 2 == 1
                and str(a - 1) in taken)
    new_ports = default_group(500, extra=hole)
    old = collections.Counter(ps.shared_rules(old_ports))
    new = collections.Counter(ps.shared_rules(new_ports))
    added, removed = new - old, old - new
    cidr_added = member_cidrs(new_ports) - member_cidrs(old_ports)
    cidr_removed = member_cidrs(old_ports) - member_cidrs(new_ports)
    assert cidr_removed                          # it merged
    assert sum(added.values()) == PER_PORT + len(cidr_added)
    assert {r.source for r in removed} == cidr_removed
    assert all(not (r.source_mac or r.destination_mac) for r in removed)


def test_per_port_part_does_not_grow_with_the_members():
    small, big = default_group(50), default_group(1000)
    mine = {p.mac for p in small}
    per_small = [r for r in ps.shared_rules(small)
                 if r.source_mac or r.destination_mac]
    per_big = [r for r in ps.shared_rules(big)
               if (r.source_mac or r.destination_mac)
               and (r.source_mac or r.destination_mac) in mine]
    assert len(per_small) == PER_PORT * 50
    # A port's own rules are the same however big its group.
    by_mac = [p for p in big if p.mac in mine]
    assert by_mac and len(per_big) == PER_PORT * len(by_mac)


def test_integer_collapse_is_ipaddress_collapse():
    """The remote CIDRs (portsettings._collapse, on integers) are exactly
    ipaddress.collapse_addresses', overlaps, neighbours and /0 included."""
    rnd = random.Random(15)
    for _ in range(3000):
        fam = rnd.choice((4, 6))
        bits = 32 if fam == 4 else 128
        cls = ipaddress.IPv4Network if fam == 4 else ipaddress.IPv6Network
        base = 0 if rnd.random() < 0.1 else rnd.getrandbits(bits) & ~0xFF
        nets = [cls(((base + rnd.randint(0, 300)) % (1 << bits),
                     rnd.choice([bits, bits, bits - 1, bits - 2, bits - 5,
                                 0 if rnd.random() < 0.02 else bits])),
                    strict=False)
                for _ in range(rnd.randint(0, 30))]
        assert ps._collapse(nets) == tuple(
            ipaddress.collapse_addresses(nets)), nets


def test_defaults_digest_names_the_version_it_was_written_on():
    described = inv.with_defaults_token("Owned. Port defaults "
                                        + "a" * 20 + ".", "b" * 20, "7")
    assert described == "Owned. Port defaults " + "b" * 20 + "@7."
    assert inv.defaults_token_of(described) == "b" * 20
    assert inv.defaults_base_of(described) == "7"
    # Its next version holds that write and nothing since; any other
    # version (an edit behind it) or no version said is not trusted.
    assert inv.written_last("7", "8")
    assert not inv.written_last("7", "9")
    assert not inv.written_last("7", "7")
    assert not inv.written_last(None, "8")
    assert not inv.written_last("7", None)
    assert not inv.written_last("7", "8.0")
    # Named again (a grow of ours) on or after the version found true.
    assert inv.named_since("7", "7") and inv.named_since("8", "7")
    assert not inv.named_since("6", "7")
    assert not inv.named_since(None, "7") and not inv.named_since("7", None)
    # A description written by an earlier version: digest, no base.
    old = "Owned. Port defaults " + "c" * 20 + "."
    assert inv.defaults_token_of(old) == "c" * 20
    assert inv.defaults_base_of(old) is None
    assert inv.with_defaults_token(old, "d" * 20) == \
        "Owned. Port defaults " + "d" * 20 + "."

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

"""The session's requests write traffic rules from their cached XML text
(session._RuleCachingStub): byte for byte what stock pyVmomi sends, on the
first request and on the next ones, and pyVmomi's serializer is not run
again for a rule it wrote before.  No vCenter involved: the stubs only
serialise (the simulator side: tests/functional/test_ports_vsphere.py)."""

from __future__ import annotations

import concurrent.futures
import gc
import io

import pytest
from pyVmomi import SoapAdapter, vim

from networking_vcenter.vsphere import inventory as I
from networking_vcenter.vsphere import ports
from networking_vcenter.vsphere import session as S
from networking_vcenter.vsphere.inventory import TrafficRule

VmwareDVS = vim.dvs.VmwareDistributedVirtualSwitch
DVPort = vim.dvs.DistributedVirtualPort
Rule = vim.dvs.TrafficRule

# Every shape rule_spec builds: protocols or none, IPv4/IPv6 hosts and
# prefixes, negated addresses, single ports and ranges on both ends, MAC
# qualifiers (source or destination), no qualifier field at all,
# descriptions that need escaping.
SHAPES = (
    TrafficRule(I.INCOMING, "accept", protocol=6, source="10.0.0.0/8",
                destination_ports=(22, 22), description="ssh <&> \"'"),
    TrafficRule(I.INCOMING, "accept", protocol=17, source="192.0.2.7/32",
                source_ports=(67, 68), destination_ports=(1024, 65535)),
    TrafficRule(I.OUTGOING, "accept", protocol=1, destination="0.0.0.0/0"),
    TrafficRule(I.INCOMING, "accept", protocol=58, source="2001:db8::/32",
                source_negated=True, description="règle ünicode"),
    TrafficRule(I.OUTGOING, "accept", source="2001:db8::1/128",
                destination="198.51.100.0/24", destination_negated=True),
    TrafficRule(I.INCOMING, "drop", source="::/0"),
    TrafficRule(I.INCOMING, "drop"),
    TrafficRule(I.OUTGOING, "drop", protocol=6, destination_ports=(0, 65535)),
    TrafficRule(I.OUTGOING, "accept", source="192.0.2.9/32",
                source_mac="fa:16:3e:00:00:09", description="anti-spoofing"),
    TrafficRule(I.INCOMING, "accept", protocol=6, destination_ports=(80, 80),
                destination_mac="fa:16:3e:00:00:0a"),
)


def _many(n):
    """n distinct rules of all SHAPES, each with its own address."""
    out = []
    for i in range(n):
        shape = SHAPES[i % len(SHAPES)]
        host = f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}/32"
        out.append(TrafficRule(
            shape.direction, shape.action, protocol=shape.protocol,
            source=shape.source if i % 3 else host,
            source_negated=shape.source_negated and bool(i % 3),
            destination=shape.destination,
            destination_negated=shape.destination_negated,
            source_ports=shape.source_ports,
            destination_ports=shape.destination_ports,
            source_mac=shape.source_mac,
            destination_mac=shape.destination_mac,
            description=f"{shape.description} {i}"))
    return tuple(out)


def _mac_rule():
    """A rule with a MAC qualifier and a system-traffic qualifier, which
    rule_spec never builds, declared immutable by hand."""
    return S.immutable_rule(Rule(
        sequence=7, direction=I.OUTGOING, action=Rule.DropAction(),
        description="mac",
        qualifier=[
            Rule.MacQualifier(
                sourceAddress=vim.SingleMac(address="00:50:56:00:00:01",
                                            negate=True),
                destinationAddress=vim.MacRange(address="01:00:5e:00:00:00",
                                                mask="ff:ff:ff:80:00:00"),
                protocol=vim.IntExpression(value=0x0806, negate=False)),
            Rule.SystemTrafficQualifier(
                typeOfSystemTraffic=vim.StringExpression(value="vmotion"))]))


def _stubs(ns=S.API_NAMESPACE):
    """(ours, stock pyVmomi's): never connected, only serialising."""
    ours = S._TimedStub(lambda: 30.0, host="192.0.2.1", port=443, ns=ns)
    stock = SoapAdapter.SoapStubAdapter(host="192.0.2.1", port=443, ns=ns)
    return ours, stock


def _request(stub, method, *args):
    moid = "dvs-7" if method == "ReconfigureDVPort_Task" else "dvportgroup-9"
    cls = VmwareDVS if method == "ReconfigureDVPort_Task" \
        else vim.dvs.DistributedVirtualPortgroup
    mo = cls(moid, stub)
    info = getattr(cls, method).info
    return stub.SerializeRequest(mo, info, args)


def _port_specs(rules, per_port=21):
    """ReconfigureDVPort_Task's argument: ports whose filters share rules
    (each rule on three ports: the same objects, repeated)."""
    specs = []
    for k in range(0, len(rules), per_port):
        for copy in range(3):
            setting = ports.setting_spec(
                I.PortSettings(rules=rules[k:k + per_port] + SHAPES,
                               blocked=False), mac_management=True)
            specs.append(DVPort.ConfigSpec(
                key=f"{k}-{copy}", operation="edit", configVersion="3",
                name=f"port-{k}-{copy}", setting=setting))
    return specs


def _group_spec(rules, extra=()):
    """ReconfigureDVPortgroup_Task's argument: one shared filter in the
    group's default port config."""
    policy = ports._filter(rules)
    ruleset = policy.filterConfig[0].trafficRuleset
    ruleset.rules = list(ruleset.rules) + list(extra)
    return vim.dvs.DistributedVirtualPortgroup.ConfigSpec(
        configVersion="12", name="neutron-physnet1-x",
        defaultPortConfig=VmwareDVS.VmwarePortConfigPolicy(
            filterPolicy=policy,
            vlan=VmwareDVS.VlanIdSpec(inherited=False, vlanId=401)))


@pytest.fixture
def pyvmomi_rule_writes(monkeypatch):
    """The traffic rules pyVmomi's own serializer writes (any stub)."""
    real = SoapAdapter.SoapSerializer._SerializeDataObject
    written = []

    def spy(self, val, info, attr, currDefNS):
        if type(val) is Rule:
            written.append(val)
        return real(self, val, info, attr, currDefNS)

    monkeypatch.setattr(SoapAdapter.SoapSerializer, "_SerializeDataObject",
                        spy)
    return written


def test_port_request_is_stock_pyvmomis_first_and_second_time(
        pyvmomi_rule_writes):
    ports.clear_rule_caches()
    ours, stock = _stubs()
    specs = _port_specs(_many(210))
    rules = {id(r): r for s in specs
             for r in s.setting.filterPolicy.filterConfig[0]
             .trafficRuleset.rules}
    # 210 distinct + the SHAPES, each on many ports.
    assert len(rules) == 210 + len(SHAPES)

    expected = _request(stock, "ReconfigureDVPort_Task", specs)
    assert expected.count(b"<rules>") == 30 * (21 + len(SHAPES))
    pyvmomi_rule_writes.clear()
    first = _request(ours, "ReconfigureDVPort_Task", specs)
    assert first == expected
    # Written once each by pyVmomi, the repeats from the cache.
    assert len(pyvmomi_rule_writes) == len(rules)

    pyvmomi_rule_writes.clear()
    second = _request(ours, "ReconfigureDVPort_Task", specs)
    assert second == expected
    assert pyvmomi_rule_writes == []
    # The stock stub still writes every rule itself.
    assert _request(stock, "ReconfigureDVPort_Task", specs) == expected
    assert len(pyvmomi_rule_writes) == 30 * (21 + len(SHAPES))


def test_group_request_with_a_big_shared_filter(pyvmomi_rule_writes):
    ports.clear_rule_caches()
    ours, stock = _stubs()
    mac = _mac_rule()
    spec = _group_spec(_many(2000), extra=(mac, mac))
    expected = _request(stock, "ReconfigureDVPortgroup_Task", spec)
    assert expected.count(b"<rules>") == 2002
    assert b"DvsMacNetworkRuleQualifier" in expected
    assert b"01:00:5e:00:00:00" in expected
    assert b"ssh &lt;&amp;&gt;" in expected
    assert b"fa:16:3e:00:00:0a" in expected      # rule_spec's MAC qualifier

    assert _request(ours, "ReconfigureDVPortgroup_Task", spec) == expected
    pyvmomi_rule_writes.clear()
    assert _request(ours, "ReconfigureDVPortgroup_Task", spec) == expected
    assert pyvmomi_rule_writes == []

    # One VM joins: a new spec with one more rule, all others the same
    # objects (rule_spec's cache): only the new rule is serialised.
    rules = _many(2001)
    spec2 = _group_spec(rules, extra=(mac,))
    pyvmomi_rule_writes.clear()
    got = _request(ours, "ReconfigureDVPortgroup_Task", spec2)
    new = ports.rule_spec(rules[-1], 2001 * ports.SEQUENCE_STEP)
    assert pyvmomi_rule_writes == [new]
    assert got == _request(stock, "ReconfigureDVPortgroup_Task", spec2)


def test_rules_not_declared_immutable_are_serialised_every_time(
        pyvmomi_rule_writes):
    ours, stock = _stubs()
    by_hand = Rule(sequence=10, direction=I.INCOMING,
                   action=Rule.AcceptAction(), qualifier=[
                       Rule.IpQualifier(protocol=vim.IntExpression(value=6))])
    spec = _group_spec((), extra=(by_hand,))
    assert _request(ours, "ReconfigureDVPortgroup_Task", spec) == \
        _request(stock, "ReconfigureDVPortgroup_Task", spec)
    by_hand.qualifier[0].protocol.value = 17
    by_hand.description = "changed"
    pyvmomi_rule_writes.clear()
    got = _request(ours, "ReconfigureDVPortgroup_Task", spec)
    assert got == _request(stock, "ReconfigureDVPortgroup_Task", spec)
    assert b"<value>17</value>" in got and b"changed" in got
    assert pyvmomi_rule_writes == [by_hand, by_hand]


def test_same_rules_at_another_version_are_serialised_for_it(
        pyvmomi_rule_writes):
    """The cached text is per context: a stub of another API version (the
    namespace and versionId differ) gets its own, equal to pyVmomi's."""
    ports.clear_rule_caches()
    spec = _group_spec(_many(50), extra=(_mac_rule(),))
    for ns in (S.API_NAMESPACE, "vim25/8.0.0.0", S.API_NAMESPACE,
               "vim25/6.5", "vim25/8.0.0.0"):
        ours, stock = _stubs(ns)
        assert _request(ours, "ReconfigureDVPortgroup_Task", spec) == \
            _request(stock, "ReconfigureDVPortgroup_Task", spec), ns
    # Each context once by ours (3 of them), every time by stock (5).
    assert len(pyvmomi_rule_writes) == 51 * (3 + 5)


def test_a_rule_alone_as_the_argument_and_in_an_any_field():
    """Where the parent hands down other attributes: a rule typed as
    ``xsd:anyType`` (xsi:type attribute, outermost attributes)."""
    ports.clear_rule_caches()
    rule = ports.rule_spec(SHAPES[0], 10)
    for ns in (S.API_NAMESPACE, "vim25/8.0.0.0"):
        ours, stock = _stubs(ns)
        for val, info in (
                (rule, SoapAdapter.Object(name="r", type=Rule,
                                          version=ours.version, flags=0)),
                (rule, SoapAdapter.Object(name="any", type=object,
                                          version=ours.version, flags=0)),
                ([rule, rule], SoapAdapter.Object(
                    name="list", type=Rule.Array, version=ours.version,
                    flags=0))):
            want = SoapAdapter._SerializeToStr(val, info, ours.version)
            for _ in range(2):
                w = io.StringIO()
                S._RuleCachingSerializer(w, ours.version, {}).Serialize(
                    val, info)
                assert w.getvalue() == want


def test_immutable_rule_is_for_traffic_rules_only():
    with pytest.raises(TypeError):
        S.immutable_rule(Rule.IpQualifier())


def test_the_cache_lives_as_long_as_its_rules():
    ours, _ = _stubs()
    rule = S.immutable_rule(Rule(sequence=1, direction=I.INCOMING,
                                 action=Rule.DropAction()))
    _request(ours, "ReconfigureDVPortgroup_Task", _group_spec(
        (), extra=(rule,)))
    assert len(S._RULE_TEXTS[rule]) == 1
    before = len(S._RULE_TEXTS)
    del rule
    gc.collect()
    assert len(S._RULE_TEXTS) == before - 1


def test_a_request_without_rules_is_stock_pyvmomis():
    ours, stock = _stubs()
    spec = vim.dvs.DistributedVirtualPortgroup.ConfigSpec(
        configVersion="1", name="n", description="a <b> & c")
    assert _request(ours, "ReconfigureDVPortgroup_Task", spec) == \
        _request(stock, "ReconfigureDVPortgroup_Task", spec)
    mo = vim.ServiceInstance("ServiceInstance", ours)
    info = vim.ServiceInstance.RetrieveContent.info
    assert ours.SerializeRequest(mo, info, ()) == stock.SerializeRequest(
        vim.ServiceInstance("ServiceInstance", stock), info, ())


def test_threads_serialising_the_same_rules_at_once():
    """Requests serialised by several threads at once, sharing rules first
    seen by all of them together: each is stock pyVmomi's bytes."""
    ports.clear_rule_caches()
    ours, stock = _stubs()
    specs = [_group_spec(_many(300 + k)) for k in range(8)]
    want = [_request(stock, "ReconfigureDVPortgroup_Task", s) for s in specs]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        for _ in range(3):
            got = list(pool.map(lambda s: _request(
                ours, "ReconfigureDVPortgroup_Task", s), specs))
            assert got == want


def test_a_rule_inserted_shifts_the_sequences_and_only_it_is_serialised(
        pyvmomi_rule_writes):
    """One VM joins: its rule lands in the middle of the shared filter and
    every rule after it moves to the next sequence (new rule_spec objects,
    copies of the same templates): pyVmomi serialises the new rule only,
    and the request is stock pyVmomi's bytes."""
    ports.clear_rule_caches()
    ours, stock = _stubs()
    rules = _many(3001)
    joiner = rules[1500]
    before = rules[:1500] + rules[1501:]
    _request(ours, "ReconfigureDVPortgroup_Task", _group_spec(before))
    spec = _group_spec(rules)
    shifted = spec.defaultPortConfig.filterPolicy.filterConfig[0] \
        .trafficRuleset.rules
    assert [r.sequence for r in shifted[1499:1502]] == [15000, 15010, 15020]
    pyvmomi_rule_writes.clear()
    got = _request(ours, "ReconfigureDVPortgroup_Task", spec)
    assert pyvmomi_rule_writes == [ports.rule_spec(joiner, 15010)]
    assert got == _request(stock, "ReconfigureDVPortgroup_Task", spec)
    # The same rule at two sequences: two objects, one template's text.
    assert ports.rule_spec(rules[-1], 30010) is not \
        ports.rule_spec(rules[-1], 30000)
    assert S._RULE_TEXTS[ports.rule_spec(rules[-1], 30010)] is \
        S._RULE_TEXTS[ports.rule_spec(rules[-1], 30000)]


def test_rule_at_needs_a_declared_template():
    with pytest.raises(ValueError):
        S.rule_at(Rule(direction=I.INCOMING), 10)

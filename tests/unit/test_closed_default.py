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

"""Fail closed (issue 15): our distributed port groups' default port config
drops all IP, so a DV port the driver has not configured is closed; groups
made without it are converted in place.  Exact specs and plans on plain
data (the simulator side: tests/functional/test_closed_default.py)."""

import dataclasses
import ipaddress

from pyVmomi import vim

from networking_vcenter.reconcile import desired as D
from networking_vcenter.reconcile import plan as P
from networking_vcenter.vsphere import inventory as I
from networking_vcenter.vsphere import reads as R
from networking_vcenter.vsphere import ports
from networking_vcenter.vsphere import switches
from tests.unit.test_plan import NET_A, dvpg, inventory, seg, topology

VmwareDVS = vim.dvs.VmwareDistributedVirtualSwitch
Rule = vim.dvs.TrafficRule


def _ruleset(config):
    policy = config.filterPolicy
    assert policy is not None and policy.inherited is False
    (fc,) = policy.filterConfig
    assert fc.agentName == "dvfilter-generic-vmware"
    assert fc.inherited is False
    assert fc.trafficRuleset.enabled is True
    return fc.trafficRuleset


def _family(address):
    """4 or 6 for an IpRange qualifier covering a whole family."""
    assert isinstance(address, vim.IpRange) and not address.negate
    net = ipaddress.ip_network(
        f"{address.addressPrefix}/{address.prefixLength}")
    assert net.prefixlen == 0
    return net.version


def test_default_port_config_drops_all_ip_both_ways_and_nothing_else():
    config = switches.default_port_config(100)
    rules = sorted(_ruleset(config).rules, key=lambda r: r.sequence)
    seen = set()
    for rule in rules:
        assert isinstance(rule.action, Rule.DropAction)
        # One IP qualifier on every rule: ARP and other non-IP frames match
        # no rule and pass.
        (q,) = rule.qualifier
        assert isinstance(q, Rule.IpQualifier)
        assert q.protocol is None and q.destinationAddress is None
        assert q.sourceIpPort is None and q.destinationIpPort is None
        seen.add((rule.direction, _family(q.sourceAddress)))
    assert len(rules) == 4
    assert seen == {(d, f) for d in (I.INCOMING, I.OUTGOING) for f in (4, 6)}
    # The rest of the defaults as before: VLAN, security, shaping.
    assert config.vlan.vlanId == 100 and config.vlan.inherited is False
    assert config.securityPolicy.forgedTransmits.value is False
    assert config.inShapingPolicy.enabled.value is False
    assert config.blocked.value is False


def test_closed_filter_built_by_the_ports_rule_builder():
    """One rule builder for a port's rules and the group's default: the
    group's rules are ports.rule_spec's (cached) objects."""
    rules = _ruleset(switches.default_port_config(7)).rules
    assert [r.sequence for r in rules] == [10, 20, 30, 40]
    for i, (spec, plain) in enumerate(zip(rules, ports.CLOSED_RULES)):
        assert spec is ports.rule_spec(plain, (i + 1) * ports.SEQUENCE_STEP)
    assert tuple(ports.rule_of(r) for r in rules) == ports.CLOSED_RULES


def test_every_new_port_group_spec_is_closed():
    spec = switches.dvs_port_group_spec(
        "neutron-physnet1-x", ((0, 4094),), "d", num_ports=20)
    assert R.default_closed_of(spec.defaultPortConfig)
    assert R._vlan_of(spec.defaultPortConfig) == ((0, 4094),)


def test_convert_spec_sets_the_closed_filter_and_only_it():
    spec = switches.convert_port_group_spec("7", 12)
    assert (spec.configVersion, spec.numPorts, spec.type) == \
        ("7", 12, "earlyBinding")
    config = spec.defaultPortConfig
    assert R.default_closed_of(config)
    # Merged by vCenter policy by policy: the VLAN and the other defaults
    # are left as the group has them.
    for name in ("vlan", "blocked", "securityPolicy", "inShapingPolicy",
                 "outShapingPolicy", "macManagementPolicy"):
        assert getattr(config, name) is None, name
    assert not spec.name and not spec.description


def _filter_policy(rules, enabled=True, inherited=False):
    return vim.dvs.DistributedVirtualPort.FilterPolicy(
        inherited=inherited, filterConfig=[
            vim.dvs.DistributedVirtualPort.TrafficFilterConfig(
                agentName=ports.FILTER_AGENT, inherited=False,
                trafficRuleset=vim.dvs.TrafficRuleset(
                    enabled=enabled, rules=[
                        ports.rule_spec(r, (i + 1) * 10)
                        for i, r in enumerate(rules)]))])


def _config(filter_policy=None):
    return VmwareDVS.VmwarePortConfigPolicy(
        vlan=VmwareDVS.VlanIdSpec(vlanId=5, inherited=False),
        filterPolicy=filter_policy)


def test_what_counts_as_closed():
    closed = ports.CLOSED_RULES
    assert R.default_closed_of(_config(_filter_policy(closed)))
    # Descriptions do not matter.
    assert R.default_closed_of(_config(_filter_policy(tuple(
        dataclasses.replace(r, description="") for r in closed))))
    # The previous version's groups: no filter at all.
    assert not R.default_closed_of(_config())
    assert not R.default_closed_of(None)
    assert not R.default_closed_of(_config(
        vim.dvs.DistributedVirtualPort.FilterPolicy(inherited=True)))
    assert not R.default_closed_of(_config(_filter_policy(closed,
                                                          enabled=False)))
    assert not R.default_closed_of(_config(_filter_policy(())))
    assert not R.default_closed_of(_config(_filter_policy(closed[:3])))
    accept = I.TrafficRule(I.INCOMING, "accept")
    assert not R.default_closed_of(_config(_filter_policy((accept,)
                                                          + closed)))
    # A foreign group with a qualifier this driver does not read.
    odd = _filter_policy(closed)
    odd.filterConfig[0].trafficRuleset.rules[0] = Rule(
        sequence=10, direction=I.INCOMING, action=Rule.DropAction(),
        qualifier=[Rule.IpQualifier(sourceAddress=vim.IpAddress())])
    assert not R.default_closed_of(_config(odd))


class _Ref:
    def __init__(self, moid):
        self._moId = moid


def _objects(default_port_config):
    policy = switches.port_group_policy()
    pg = {"name": "neutron-physnet1-x", "key": "dvportgroup-1",
          "config.distributedVirtualSwitch": _Ref("dvs-1"),
          "config.defaultPortConfig": default_port_config,
          "config.description": "", "config.type": "earlyBinding",
          "config.policy": policy, "config.numPorts": 8}
    return R.from_objects(dvss=[], dvpgs=[(_Ref("dvportgroup-1"), pg)],
                          networks=[], compute=[], datacenters=[], hosts=[],
                          field_key=None, has_fields=True, deployment="dep")


def test_inventory_reads_whether_the_default_is_closed():
    (pg,) = _objects(switches.default_port_config(5)).dvs_portgroups
    assert pg.ports_ready and pg.default_closed and pg.vlan == 5
    # Made by the previous version: ready for per-port settings, but open.
    old = switches.default_port_config(5)
    old.filterPolicy = None
    (pg,) = _objects(old).dvs_portgroups
    assert pg.ports_ready and not pg.default_closed and pg.vlan == 5


def _desired():
    net = D.NetworkSpec(NET_A, (seg("vlan", "physnet1", 100),))
    (want,) = D.desired_for_network(net, topology())
    return want


def test_open_group_of_ours_is_converted_in_place():
    want = _desired()
    have = dataclasses.replace(dvpg(want.name, 100, NET_A, moid="dvpg-5"),
                               default_closed=False)
    result = P.plan([want], inventory([have]), {NET_A})
    assert result.steps == [P.ConvertDvsPortGroup(
        NET_A, want.name, "DVS0", "dvpg-5", 100, 100, "physnet1")]
    assert "closed" in result.steps[0].describe()
    assert result.in_sync == []
    # Closed: in sync.
    closed = dataclasses.replace(have, default_closed=True)
    result = P.plan([want], inventory([closed]), {NET_A})
    assert result.steps == [] and result.in_sync == [want]


def test_open_group_to_retag_is_retagged_not_converted_twice():
    """A retag sends the whole spec, closed filter included: one step."""
    want = _desired()
    have = dataclasses.replace(dvpg(want.name, 99, NET_A, moid="dvpg-5"),
                               default_closed=False)
    (step,) = P.plan([want], inventory([have]), {NET_A}).steps
    assert type(step) is P.UpdateDvsPortGroup
    assert (step.old_vlan, step.vlan) == (99, 100)


def test_open_foreign_group_is_left_alone():
    want = _desired()
    theirs = dataclasses.replace(
        dvpg(want.name, 100, "cccccccc-0000-4000-8000-000000000003",
             moid="dvpg-7", deployment="other"), default_closed=False)
    result = P.plan([want], inventory([theirs]), {NET_A})
    assert result.steps == [] and len(result.conflicts) == 1

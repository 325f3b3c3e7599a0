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

"""Trunks, pure: VLAN ranges, the subport check, the parent's DV port
settings, the trunk's and subports' status in the port plan, and the
pyVmomi round trip of the VLAN setting."""

from __future__ import annotations

import dataclasses

import pytest

from networking_vcenter.reconcile import desired as d
from networking_vcenter.reconcile import plan as P
from networking_vcenter.reconcile import portsettings as ps
from networking_vcenter.vsphere import inventory as inv
from networking_vcenter.vsphere import ports as vports
from tests.unit import test_plan_ports as tpp
from tests.unit.test_port_settings import default_port

PHYS = (("vlan", "physnet1", 100),)


def subport(pid, vlan, seg_id=None, seg_type="vlan", segments=None, **kw):
    port = d.PortSpec(pid, f"net-{pid}", "", None, kw.pop(
        "mac", "fa:16:3e:00:00:05"), **kw)
    return d.Subport(port, seg_type, vlan if seg_id is None else seg_id,
                     segments if segments is not None else
                     (("vlan", "physnet1", vlan),))


def parent(*subs, **kw):
    return default_port(trunk=d.TrunkSpec("trunk-1", "DOWN", tuple(subs),
                                          PHYS), **kw)


@pytest.mark.parametrize("vlans, ranges", [
    ((), ()),
    ((5,), ((5, 5),)),
    ((7, 5, 6, 6, 9, 4094, 4093), ((5, 7), (9, 9), (4093, 4094))),
    ((0, 1, 3), ((0, 1), (3, 3))),
])
def test_vlan_ranges_collapse(vlans, ranges):
    assert ps.vlan_ranges(vlans) == ranges


def test_subport_problem_names_subport_segmentation_and_vlan():
    assert ps.subport_problem("sp", "n", "vlan", 101,
                              (("vlan", "physnet1", 101),), "physnet1") is None
    why = ps.subport_problem("sp", "n", "vlan", 105,
                             (("vlan", "physnet1", 101),), "physnet1")
    assert "subport sp" in why and "105" in why and "VLAN 101" in why
    assert "inherit" in why
    # The VLAN on the parent's physical network counts, not another's.
    why = ps.subport_problem("sp", "n", "vlan", 101,
                             (("vlan", "physnet2", 101),), "physnet1")
    assert "no VLAN segment on physical network physnet1" in why
    # A flat network has no tag to give.
    assert ps.subport_problem("sp", "n", "vlan", 0,
                              (("flat", "physnet1", None),), "physnet1")


def test_trunk_vlans_parent_and_valid_subports():
    port = parent(subport("a", 101), subport("b", 102),
                  subport("c", 110, seg_id=111))
    ranges, problems = ps.trunk_vlans(port)
    assert ranges == ((100, 102),)
    (problem,) = problems
    assert problem.startswith("subport c:")
    assert ps.port_settings(port).trunk_vlans == ((100, 102),)
    assert ps.port_settings(dataclasses.replace(
        port, port_security=False)).trunk_vlans == ((100, 102),)


def test_flat_parent_is_vlan_0():
    port = default_port(trunk=d.TrunkSpec(
        "t", "DOWN", (subport("a", 7),), (("flat", "physnet1", None),)))
    assert ps.trunk_vlans(port) == (((0, 0), (7, 7)), ())


def test_no_trunk_inherits_the_vlan():
    assert ps.port_settings(default_port()).trunk_vlans is None


def test_members_addresses_and_rules_pinned_to_their_own_addresses():
    sg = d.SecurityGroup("sg-ssh", False, (
        d.SgRule("ingress", "IPv4", "tcp", 22, 22),))
    sub = subport("a", 101, fixed_ips=("10.1.0.9",), security_groups=(sg,),
                  mac="fa:16:3e:00:00:09")
    s = ps.port_settings(parent(sub))
    from_vm = {r.source for r in s.rules
               if r.direction == ps.FROM_VM and r.action == "accept"}
    assert {"10.0.0.5/32", "10.1.0.9/32"} <= from_vm
    ssh = [r for r in s.rules if r.destination_ports == (22, 22)]
    assert ssh and {r.destination for r in ssh} == {"10.1.0.9/32"}
    # The parent's own ingress rules name its addresses only.
    to_vm = [r for r in s.rules if r.direction == ps.TO_VM and
             r.action == "accept" and r.description.startswith("sg sg-def")]
    own = {str(a) for fam in ps.own_addresses(default_port()).values()
           for a in fam}
    assert to_vm and all(r.destination in own for r in to_vm)
    assert "10.1.0.9/32" not in own
    # Another MAC on the trunk: MAC changes and forged transmits allowed.
    assert (s.mac_changes, s.forged_transmits) == (True, True)
    assert ps.trunk_problems(parent(sub)) == ()


def test_subport_same_mac_keeps_forged_transmits_rejected():
    sub = subport("a", 101, fixed_ips=("10.1.0.9",))
    s = ps.port_settings(parent(sub))
    assert (s.mac_changes, s.forged_transmits) == (False, False)


def test_trunk_problems_port_security_and_qos():
    off = subport("a", 101, port_security=False, fixed_ips=("10.1.0.9",))
    qos = subport("b", 102, qos=(d.BandwidthLimit("egress", 1000),))
    problems = ps.trunk_problems(parent(off, qos))
    assert any(p.startswith("subport a:") and "dropped" in p
               for p in problems)
    assert any(p.startswith("subport b:") and "QoS" in p for p in problems)
    # Not a member of the filter: its address is no source.
    s = ps.port_settings(parent(off))
    assert "10.1.0.9/32" not in {r.source for r in s.rules}
    on = subport("c", 103)
    assert any("not enforced" in p for p in ps.trunk_problems(
        parent(on, port_security=False)))


def test_desired_ports_skip_subports_and_carry_the_trunk():
    topo = d.Topology(
        {"physnet1": d.Target("physnet1", d.DVS, "DVS0", "u", frozenset())},
        {}, {}, "neutron-{physical_network}-{network_id}")
    nets = {"net-1": d.NetworkSpec("net-1", ({
        "network_type": "vlan", "physical_network": "physnet1",
        "segmentation_id": 100},))}
    port = parent(subport("a", 101, seg_id=105))
    child = dataclasses.replace(default_port(), id="a", network_id="net-1",
                                trunk_parent=port.id)
    (want,), _ = ps.desired_ports([port, child], nets, topo, 1024)
    assert want.port_id == port.id and want.trunk == port.trunk
    assert want.settings.trunk_vlans == ((100, 100),)
    assert len(want.trunk_problems) == 1


def _plan_for(settings_have, settings_want, connected=False, problems=(),
              trunk_status="DOWN", sub_status="DOWN"):
    trunk = d.TrunkSpec("trunk-1", trunk_status, (subport(
        "sub-1", 101, status=sub_status),), PHYS)
    inventory = tpp.setup([tpp.port("3", tpp.PORT_1, settings_have,
                                    connected=connected)])
    want = dataclasses.replace(tpp.want(tpp.PORT_1, settings_want),
                               trunk=trunk, trunk_problems=tuple(problems))
    return P.plan_ports([want], inventory, tpp.released)


def test_plan_trunk_active_when_carried_and_subports_follow():
    carried = dataclasses.replace(tpp.WANT, trunk_vlans=((100, 101),))
    plan = _plan_for(carried, carried, connected=True)
    assert plan.steps == []
    assert plan.trunk_status == {"trunk-1": "ACTIVE"}
    assert plan.status == {tpp.PORT_1: "ACTIVE", "sub-1": "ACTIVE"}
    plan = _plan_for(carried, carried, problems=("x",))
    assert plan.trunk_status == {"trunk-1": "DEGRADED"}
    assert "sub-1" not in plan.status           # DOWN as its parent


def test_plan_trunk_keeps_status_while_written_error_when_impossible():
    carried = dataclasses.replace(tpp.WANT, trunk_vlans=((100, 101),))
    plan = _plan_for(tpp.WANT, carried)
    (step,) = plan.steps
    assert step.settings.trunk_vlans == ((100, 101),)
    assert plan.trunk_status == {}
    assert _plan_for(tpp.WANT, None).trunk_status == {"trunk-1": "ERROR"}
    # Already as it should be: nothing to tell.
    assert _plan_for(carried, carried, trunk_status="ACTIVE"
                     ).trunk_status == {}


def test_plan_released_port_gets_the_vlan_back():
    carried = dataclasses.replace(tpp.WANT, trunk_vlans=((100, 101),))
    inventory = tpp.setup([tpp.port("3", tpp.PORT_1, carried)])
    (step,) = P.plan_ports([], inventory, tpp.released).steps
    assert isinstance(step, P.ReleasePort)
    assert step.settings.trunk_vlans is None


def test_vlan_setting_round_trip():
    for ranges in (((100, 102), (110, 110)), None):
        s = inv.PortSettings(blocked=False, trunk_vlans=ranges)
        spec = vports.setting_spec(s, mac_management=False)
        assert spec.vlan.inherited is (ranges is None)
        assert vports.settings_of(spec).trunk_vlans == ranges
    # A VLAN of the port's own that is no trunk reads as () (reset).
    spec = vports.setting_spec(inv.PortSettings(), mac_management=False)
    spec.vlan = vports.VmwareDVS.VlanIdSpec(inherited=False, vlanId=7)
    assert vports.settings_of(spec).trunk_vlans == ()


def _status_rows(have, want_settings, problems=(), problem=None,
                 pg_ready=True, unbound=()):
    """``networking-vcenter status``'s trunk rows of one trunk parent."""
    import types
    from networking_vcenter import cli
    from networking_vcenter.reconcile.reconciler import PortPass
    spec = dataclasses.replace(parent(subport("sub-1", 101)), id=tpp.PORT_1,
                               network_id=tpp.NET_A)
    want = dataclasses.replace(tpp.want(tpp.PORT_1, want_settings),
                               trunk=spec.trunk, problem=problem,
                               trunk_problems=tuple(problems))
    inventory = tpp.setup([] if have is None else
                          [tpp.port("3", tpp.PORT_1, have)], pg_ready)
    plan = P.plan_ports([want], inventory, tpp.released)
    ports = PortPass([spec], [want], [], plan, None)
    return cli.trunk_rows(types.SimpleNamespace(ports=ports,
                                                desired=[want.pg]), unbound)


def test_status_trunk_rows():
    carried = dataclasses.replace(tpp.WANT, trunk_vlans=((100, 101),))
    (row,) = _status_rows(carried, carried)
    assert (row["trunk"], row["parent"], row["dv_port"], row["want_vlans"],
            row["have_vlans"], row["state"]) == (
        "trunk-1", tpp.PORT_1, "3", "100-101", "100-101", "in-sync")
    (row,) = _status_rows(carried, carried, problems=("sub-1: no QoS",))
    assert (row["state"], row["detail"]) == ("degraded", "sub-1: no QoS")
    (row,) = _status_rows(tpp.WANT, carried)
    assert (row["have_vlans"], row["state"]) == ("inherited (VLAN 10)",
                                                 "drift")
    (row,) = _status_rows(dataclasses.replace(tpp.WANT, trunk_vlans=()),
                          carried)
    assert (row["have_vlans"], row["state"]) == (
        "a VLAN of its own, not a trunk", "drift")
    (row,) = _status_rows(None, carried)
    assert (row["dv_port"], row["state"]) == ("", "drift")
    assert "no DV port" in row["detail"]
    (row,) = _status_rows(tpp.WANT, None, problem="too many rules")
    assert (row["state"], row["detail"]) == ("not-carried", "too many rules")
    (row,) = _status_rows(tpp.WANT, carried, pg_ready=False)
    assert row["state"] == "waiting"
    rows = _status_rows(carried, carried,
                        unbound=[("trunk-0", "port-0", tpp.NET_A, 2)])
    assert [(r["trunk"], r["state"]) for r in rows] == [
        ("trunk-0", "not-carried"), ("trunk-1", "in-sync")]
    assert "when it is bound here" in rows[0]["detail"]
    rows = _status_rows(carried, carried,
                        unbound=[("trunk-0", "port-0", "net-std", 1)])
    (row,) = [r for r in rows if r["trunk"] == "trunk-0"]
    assert "only through a standard vSwitch" in row["detail"]

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

"""Desired state and the pure plan, on plain data: exact steps asserted."""

import pytest

from networking_vcenter.reconcile import desired as D
from networking_vcenter.reconcile import plan as P
from networking_vcenter.vsphere import inventory as I

NET_A = "aaaaaaaa-0000-4000-8000-000000000001"
NET_B = "bbbbbbbb-0000-4000-8000-000000000002"
TEMPLATE = "neutron-{physical_network}-{network_id}"

HOSTS = ("host-1", "host-2", "host-3")


def topology(template=TEMPLATE):
    return D.Topology(
        targets={
            "physnet1": D.Target("physnet1", D.DVS, "DVS0", "uuid-dvs0",
                                 frozenset(HOSTS)),
            "physnet2": D.Target("physnet2", D.VSWITCH, "vSwitch1", None,
                                 frozenset(HOSTS)),
        },
        cluster_hosts={"C1": frozenset(HOSTS)},
        compute_hosts={"vc-compute-1": "C1"},
        dvs_name_template=template)


def seg(net_type, physnet, vlan=None, sid="seg"):
    return {"id": sid, "network_type": net_type,
            "physical_network": physnet, "segmentation_id": vlan}


def inventory(dvpgs=(), host_pgs=None, std=(), field_key=101,
              custom_fields=True):
    host_pgs = host_pgs or {}
    hosts = {h: I.Host(h, h.upper(), frozenset({"vSwitch0", "vSwitch1"}),
                       {pg.name: pg for pg in host_pgs.get(h, [])}, None)
             for h in HOSTS}
    dvs = I.Dvs("dvs-1", "DVS0", "uuid-dvs0", frozenset(HOSTS), None)
    return I.Inventory(switches={"DVS0": [dvs]}, dvs_portgroups=list(dvpgs),
                       clusters={"C1": [list(HOSTS)]}, hosts=hosts,
                       std_networks={n.name: n for n in std},
                       owner_field_key=field_key,
                       custom_fields=custom_fields)


def dvpg(name, vlan, owner, moid="dvportgroup-9", vms=0, deployment="dep"):
    desc = I.owner_description(deployment, owner, "physnet1", vlan) \
        if owner else "x"
    mark = I.mark_from_description(desc)
    return I.DvsPortGroup(moid, name, "key-" + moid, "dvs-1", vlan, desc,
                          I.owner(mark, "dep"), vms, None, mark)


def test_owner_mark_round_trip():
    text = I.owner_description("cloud-1", NET_A, "physnet1", 100)
    assert I.mark_from_description(text) == I.Mark("cloud-1", NET_A)
    assert I.owner(I.mark_from_description(text), "cloud-1") == NET_A
    assert I.owner(I.mark_from_description(text), "cloud-2") is None
    assert I.mark_from_description("made by hand") is None
    value = I.owner_value("cloud-1", NET_A)
    assert I.mark_from_value(value) == I.Mark("cloud-1", NET_A)
    assert I.mark_from_value(NET_A) is None


def test_other_deployments_port_groups_are_never_touched():
    theirs = dvpg(f"neutron-physnet1-{NET_B}", 100, NET_B, moid="dvpg-b",
                  deployment="other-cloud")
    have = inventory(dvpgs=[theirs])
    assert P.plan([], have, None).steps == []          # not an orphan
    net = D.NetworkSpec(NET_B, (seg("vlan", "physnet1", 100),))
    result = P.plan(D.desired_for_network(net, topology()), have, {NET_B})
    assert result.steps == []
    assert "deployment 'other-cloud'" in result.conflicts[0].reason


def test_vlan_dvs_segment():
    net = D.NetworkSpec(NET_A, (seg("vlan", "physnet1", 100),))
    (pg,) = D.desired_for_network(net, topology())
    assert (pg.kind, pg.switch, pg.vlan) == (D.DVS, "DVS0", 100)
    assert pg.name == f"neutron-physnet1-{NET_A}"
    steps = P.plan([pg], inventory(), {NET_A}).steps
    assert steps == [P.CreateDvsPortGroup(NET_A, pg.name, "DVS0", 100,
                                          "physnet1")]


def test_flat_standard_segment_on_every_host():
    net = D.NetworkSpec(NET_A, (seg("flat", "physnet2"),))
    (pg,) = D.desired_for_network(net, topology())
    assert pg.name == NET_A and pg.vlan == 0
    steps = P.plan([pg], inventory(), {NET_A}).steps
    assert steps == [P.AddHostPortGroup(NET_A, NET_A, h, h.upper(),
                                        "vSwitch1", 0) for h in HOSTS] + \
        [P.MarkStdNetwork(NET_A, NET_A)]


def test_ignored_segments():
    net = D.NetworkSpec(NET_A, (seg("vxlan", None, 5000),
                                seg("geneve", None, 7),
                                seg("vlan", "physnet9", 100),
                                seg("local", None)))
    assert D.desired_for_network(net, topology()) == []


def test_multi_segment_network():
    net = D.NetworkSpec(NET_A, (seg("vlan", "physnet1", 100, "s1"),
                                seg("vlan", "physnet2", 200, "s2"),
                                seg("vxlan", None, 10, "s3")))
    pgs = D.desired_for_network(net, topology())
    assert [(p.physnet, p.kind, p.name) for p in pgs] == [
        ("physnet1", D.DVS, f"neutron-physnet1-{NET_A}"),
        ("physnet2", D.VSWITCH, NET_A)]
    # The bare UUID inside the same network's distributed name is tolerated.
    assert D.name_problems(pgs) == []


def test_two_segments_on_one_physnet_keep_the_first():
    net = D.NetworkSpec(NET_A, (seg("vlan", "physnet1", 100, "s1"),
                                seg("vlan", "physnet1", 101, "s2")))
    (pg,) = D.desired_for_network(net, topology())
    assert pg.vlan == 100


def test_substring_names_refused():
    topo = D.Topology(
        targets={"a": D.Target("a", D.DVS, "DVS0", "u", frozenset()),
                 "ba": D.Target("ba", D.DVS, "DVS0", "u", frozenset())},
        cluster_hosts={}, compute_hosts={},
        dvs_name_template="{physical_network}-{network_id}")
    net = D.NetworkSpec(NET_A, (seg("vlan", "a", 1), seg("vlan", "ba", 2)))
    problems = D.name_problems(D.desired_for_network(net, topo))
    assert problems == [f"port group name 'a-{NET_A}' is part of "
                        f"'ba-{NET_A}': Nova's lookup would confuse them"]


def test_name_length_limit():
    topo = topology(template="x" * 50 + "-{network_id}")
    pgs = D.desired_for_network(
        D.NetworkSpec(NET_A, (seg("vlan", "physnet1", 5),)), topo)
    assert "longer than 80" in D.check_length(pgs)[0]


def test_in_sync_is_no_step():
    net = D.NetworkSpec(NET_A, (seg("vlan", "physnet1", 100),
                                seg("vlan", "physnet2", 200)))
    want = D.desired_for_network(net, topology())
    have = inventory(
        dvpgs=[dvpg(want[0].name, 100, NET_A)],
        host_pgs={h: [I.HostPortGroup(NET_A, "vSwitch1", 200)]
                  for h in HOSTS},
        std=[I.StdNetwork("network-7", NET_A, frozenset(HOSTS), NET_A, 0,
                          None)])
    result = P.plan(want, have, {NET_A})
    assert result.steps == [] and result.conflicts == []
    assert len(result.in_sync) == 2


def test_wrong_vlan_and_missing_host_fixed():
    net = D.NetworkSpec(NET_A, (seg("vlan", "physnet1", 100),
                                seg("vlan", "physnet2", 200)))
    want = D.desired_for_network(net, topology())
    have = inventory(
        dvpgs=[dvpg(want[0].name, 999, NET_A, moid="dvportgroup-5")],
        host_pgs={"host-1": [I.HostPortGroup(NET_A, "vSwitch1", 201)],
                  "host-2": [I.HostPortGroup(NET_A, "vSwitch1", 200)]},
        std=[I.StdNetwork("network-7", NET_A, frozenset({"host-1", "host-2"}),
                          NET_A, 0, None)])
    steps = P.plan(want, have, {NET_A}).steps
    assert steps == [
        P.UpdateDvsPortGroup(NET_A, want[0].name, "DVS0", "dvportgroup-5",
                             100, 999, "physnet1"),
        P.UpdateHostPortGroup(NET_A, NET_A, "host-1", "HOST-1", "vSwitch1",
                              200, 201),
        P.AddHostPortGroup(NET_A, NET_A, "host-3", "HOST-3", "vSwitch1",
                           200),
    ]


def test_foreign_name_clash_is_conflict_not_step():
    net = D.NetworkSpec(NET_A, (seg("vlan", "physnet1", 100),))
    want = D.desired_for_network(net, topology())
    have = inventory(dvpgs=[dvpg(want[0].name, 100, None, moid="dvpg-x")])
    result = P.plan(want, have, {NET_A})
    assert result.steps == []
    (conflict,) = result.conflicts
    assert "dvpg-x" in conflict.reason and NET_A in conflict.reason
    assert "left untouched" in conflict.reason


def test_unmarked_standard_port_group_exactly_as_wanted_is_adopted():
    """Another worker (or a crash) between AddPortGroup and the mark."""
    net = D.NetworkSpec(NET_A, (seg("vlan", "physnet2", 200),))
    want = D.desired_for_network(net, topology())
    have = inventory(
        host_pgs={"host-1": [I.HostPortGroup(NET_A, "vSwitch1", 200)]},
        std=[I.StdNetwork("network-3", NET_A, frozenset({"host-1"}), None, 0,
                          None)])
    result = P.plan(want, have, {NET_A})
    assert result.conflicts == []
    assert result.steps == [
        P.AddHostPortGroup(NET_A, NET_A, "host-2", "HOST-2", "vSwitch1", 200),
        P.AddHostPortGroup(NET_A, NET_A, "host-3", "HOST-3", "vSwitch1", 200),
        P.MarkStdNetwork(NET_A, NET_A)]


def test_network_seen_before_its_host_copies_is_not_a_conflict():
    """The replica shows a Network before the hosts' port group lists that
    carry it: not a conflict, the writes (owner-checked) and the mark."""
    net = D.NetworkSpec(NET_A, (seg("vlan", "physnet2", 200),))
    want = D.desired_for_network(net, topology())
    have = inventory(std=[I.StdNetwork("network-3", NET_A,
                                       frozenset(HOSTS), None, 0, None)])
    result = P.plan(want, have, {NET_A})
    assert result.conflicts == []
    assert [type(s) for s in result.steps] == \
        [P.AddHostPortGroup] * len(HOSTS) + [P.MarkStdNetwork]


def test_adopted_everywhere_is_only_marked():
    net = D.NetworkSpec(NET_A, (seg("vlan", "physnet2", 200),))
    want = D.desired_for_network(net, topology())
    have = inventory(
        host_pgs={h: [I.HostPortGroup(NET_A, "vSwitch1", 200)] for h in HOSTS},
        std=[I.StdNetwork("network-3", NET_A, frozenset(HOSTS), None, 0,
                          None)])
    result = P.plan(want, have, {NET_A})
    assert result.steps == [P.MarkStdNetwork(NET_A, NET_A)]
    assert result.in_sync == []


def test_foreign_standard_port_group_clash():
    net = D.NetworkSpec(NET_A, (seg("vlan", "physnet2", 200),))
    want = D.desired_for_network(net, topology())
    have = inventory(
        host_pgs={"host-1": [I.HostPortGroup(NET_A, "vSwitch1", 201)]},
        std=[I.StdNetwork("network-3", NET_A, frozenset({"host-1"}), None, 0,
                          None)])
    result = P.plan(want, have, {NET_A})
    assert result.steps == []
    assert "HOST-1" in result.conflicts[0].reason
    assert "not made by networking-vcenter" in result.conflicts[0].reason


def test_delete_scoped_and_full():
    orphan_a = dvpg(f"neutron-physnet1-{NET_A}", 100, NET_A, moid="dvpg-a")
    orphan_b = dvpg(f"neutron-physnet1-{NET_B}", 101, NET_B, moid="dvpg-b")
    foreign = dvpg("hand-made", 7, None, moid="dvpg-f")
    have = inventory(
        dvpgs=[orphan_a, orphan_b, foreign],
        host_pgs={h: [I.HostPortGroup(NET_A, "vSwitch1", 200),
                      I.HostPortGroup("VM Network", "vSwitch0", 0)]
                  for h in HOSTS},
        std=[I.StdNetwork("network-7", NET_A, frozenset(HOSTS), NET_A, 0,
                          None),
             I.StdNetwork("network-1", "VM Network", frozenset(HOSTS), None,
                          3, None)])
    scoped = P.plan([], have, {NET_A}).steps
    assert scoped == [P.DeleteDvsPortGroup(NET_A, orphan_a.name, "DVS0",
                                           "dvpg-a", 0)] + \
        [P.RemoveHostPortGroup(NET_A, NET_A, h, h.upper(), 0) for h in HOSTS]
    full = P.plan([], have, None).steps
    assert {s.name for s in full} == {orphan_a.name, orphan_b.name, NET_A}


def test_in_use_delete_is_planned_with_vm_count():
    have = inventory(dvpgs=[dvpg(f"neutron-physnet1-{NET_A}", 100, NET_A,
                                 moid="dvpg-a", vms=2)])
    (step,) = P.plan([], have, {NET_A}).steps
    assert step.vm_count == 2 and "still used by 2 VM(s)" in step.describe()


def test_esxi_name_based_ownership():
    """Without custom attributes a UUID-named port group in scope is ours."""
    have = inventory(host_pgs={"host-1": [I.HostPortGroup(NET_A, "vSwitch1",
                                                          200)]},
                     std=[I.StdNetwork("network-3", NET_A,
                                       frozenset({"host-1"}), None, 0, None)],
                     field_key=None, custom_fields=False)
    assert [s.name for s in P.plan([], have, {NET_A}).steps] == [NET_A]
    assert P.plan([], have, {NET_B}).steps == []


def test_undefined_custom_attribute_is_not_name_ownership():
    """A vCenter whose custom attribute is not defined yet (a read-only
    command before any write): nothing is ours by name, nothing deleted."""
    have = inventory(host_pgs={"host-1": [I.HostPortGroup(NET_A, "vSwitch1",
                                                          200)]},
                     std=[I.StdNetwork("network-3", NET_A,
                                       frozenset({"host-1"}), None, 0, None)],
                     field_key=None, custom_fields=True)
    assert P.plan([], have, {NET_A}).steps == []


@pytest.mark.parametrize("net", [
    {"id": NET_A, "provider:network_type": "vlan",
     "provider:physical_network": "physnet1", "provider:segmentation_id": 5},
    {"id": NET_A, "segments": [
        {"provider:network_type": "vlan",
         "provider:physical_network": "physnet1",
         "provider:segmentation_id": 5}]},
])
def test_network_from_neutron_forms(net):
    spec = D.network_from_neutron(net)
    assert spec.segments[0]["segmentation_id"] == 5
    assert spec.segments[0]["physical_network"] == "physnet1"


def test_missing_privileges_named_per_object():
    from networking_vcenter.vsphere import privileges

    class Ref:
        def __init__(self, moid):
            self._moId = moid
    wanted = [privileges.Need(Ref("group-d1"), "vCenter root folder",
                              ("System.View",)),
              privileges.Need(Ref("dvs-1"), "distributed switch DVS0",
                              privileges.DVS_PRIVILEGES)]
    granted = {"group-d1": {"System.View": True},
               "dvs-1": {"DVPortgroup.Create": True,
                         "DVPortgroup.Modify": False}}
    assert privileges.missing(granted, wanted) == [
        "DVPortgroup.Modify on distributed switch DVS0",
        "DVPortgroup.Delete on distributed switch DVS0",
        "DVSwitch.PortConfig on distributed switch DVS0",
        "DVSwitch.PortSetting on distributed switch DVS0"]

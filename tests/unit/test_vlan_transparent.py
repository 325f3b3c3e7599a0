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

"""VLAN-transparent networks, on plain data: the desired trunk, the exact
plan, the VLAN spec written and read back, what the CLI shows."""

from pyVmomi import vim

from networking_vcenter import cli
from networking_vcenter.reconcile import desired as D
from networking_vcenter.reconcile import plan as P
from networking_vcenter.reconcile.reconciler import Pass
from networking_vcenter.vsphere import inventory as I
from networking_vcenter.vsphere import reads as R
from networking_vcenter.vsphere import switches
from tests.unit.test_plan import HOSTS, NET_A, dvpg, inventory, seg, \
    topology

ALL = ((0, 4094),)
MAPPINGS = {"physnet1": "DVS0", "physnet2": "vSwitch1"}


def transparent(*segments):
    return D.NetworkSpec(NET_A, tuple(segments), vlan_transparent=True)


def test_flat_transparent_on_dvs_is_a_trunk_of_every_vlan():
    (pg,) = D.desired_for_network(transparent(seg("flat", "physnet1")),
                                  topology())
    assert (pg.kind, pg.vlan, pg.transparent) == (D.DVS, 0, True)
    assert pg.switch_vlan == ALL
    assert P.plan([pg], inventory(), {NET_A}).steps == [
        P.CreateDvsPortGroup(NET_A, pg.name, "DVS0", ALL, "physnet1")]


def test_flat_transparent_on_vswitch_is_vlan_4095_on_every_host():
    (pg,) = D.desired_for_network(transparent(seg("flat", "physnet2")),
                                  topology())
    assert (pg.kind, pg.vlan, pg.switch_vlan) == (D.VSWITCH, 0, 4095)
    assert P.plan([pg], inventory(), {NET_A}).steps == [
        P.AddHostPortGroup(NET_A, NET_A, h, h.upper(), "vSwitch1", 4095)
        for h in HOSTS] + [P.MarkStdNetwork(NET_A, NET_A)]


def test_trunk_as_wanted_is_in_sync():
    want = D.desired_for_network(
        transparent(seg("flat", "physnet1", sid="s1"),
                    seg("flat", "physnet2", sid="s2")), topology())
    have = inventory(
        dvpgs=[dvpg(want[0].name, ALL, NET_A)],
        host_pgs={h: [I.HostPortGroup(NET_A, "vSwitch1", 4095)]
                  for h in HOSTS},
        std=[I.StdNetwork("network-7", NET_A, frozenset(HOSTS), NET_A, 0,
                          None)])
    result = P.plan(want, have, {NET_A})
    assert result.steps == [] and result.conflicts == []
    assert len(result.in_sync) == 2


def test_hand_edited_trunk_and_vlan_are_put_back():
    want = D.desired_for_network(
        transparent(seg("flat", "physnet1", sid="s1"),
                    seg("flat", "physnet2", sid="s2")), topology())
    have = inventory(
        dvpgs=[dvpg(want[0].name, ((0, 100),), NET_A, moid="dvpg-5")],
        host_pgs={"host-1": [I.HostPortGroup(NET_A, "vSwitch1", 0)],
                  "host-2": [I.HostPortGroup(NET_A, "vSwitch1", 4095)],
                  "host-3": [I.HostPortGroup(NET_A, "vSwitch1", 4095)]},
        std=[I.StdNetwork("network-7", NET_A, frozenset(HOSTS), NET_A, 0,
                          None)])
    assert P.plan(want, have, {NET_A}).steps == [
        P.UpdateDvsPortGroup(NET_A, want[0].name, "DVS0", "dvpg-5", ALL,
                             ((0, 100),), "physnet1"),
        P.UpdateHostPortGroup(NET_A, NET_A, "host-1", "HOST-1", "vSwitch1",
                              4095, 0)]


def test_a_trunk_on_a_network_that_is_not_transparent_is_retagged():
    net = D.NetworkSpec(NET_A, (seg("flat", "physnet1"),))
    (pg,) = D.desired_for_network(net, topology())
    assert pg.switch_vlan == 0
    have = inventory(dvpgs=[dvpg(pg.name, ALL, NET_A, moid="dvpg-5")])
    assert P.plan([pg], have, {NET_A}).steps == [
        P.UpdateDvsPortGroup(NET_A, pg.name, "DVS0", "dvpg-5", 0, ALL,
                             "physnet1")]


def test_vlan_segment_of_a_transparent_network_gets_no_port_group():
    net = transparent(seg("vlan", "physnet1", 100, "s1"),
                      seg("flat", "physnet2", sid="s2"))
    assert [(p.physnet, p.switch_vlan)
            for p in D.desired_for_network(net, topology())] == \
        [("physnet2", 4095)]


def test_transparency_problems_per_segment():
    assert D.transparency_problems([seg("flat", "physnet1"),
                                    seg("flat", "physnet2")], MAPPINGS) == []
    # Not mapped: not ours to judge.
    assert D.transparency_problems([seg("vlan", "physnet9", 5),
                                    seg("vxlan", None, 7)], MAPPINGS) == []
    (problem,) = D.transparency_problems(
        [seg("flat", "physnet2"), seg("vlan", "physnet1", 101)], MAPPINGS)
    assert problem.startswith("its vlan segment 101 on physical network "
                              "physnet1 (mapped to DVS0) cannot be")
    assert "no QinQ" in problem


def test_network_from_neutron_reads_transparency():
    net = {"id": NET_A, "provider:network_type": "flat",
           "provider:physical_network": "physnet1"}
    assert not D.network_from_neutron(net).vlan_transparent
    assert not D.network_from_neutron(
        {**net, "vlan_transparent": None}).vlan_transparent
    assert D.network_from_neutron(
        {**net, "vlan_transparent": True}).vlan_transparent


def test_trunk_spec_written_and_read_back():
    config = switches.default_port_config(ALL)
    assert isinstance(config.vlan,
                      vim.dvs.VmwareDistributedVirtualSwitch.TrunkVlanSpec)
    assert [(r.start, r.end) for r in config.vlan.vlanId] == [(0, 4094)]
    assert config.vlan.inherited is False
    assert R._vlan_of(config) == ALL
    assert R._vlan_of(switches.default_port_config(7)) == 7


def test_trunk_ranges_read_in_one_form():
    dvs = vim.dvs.VmwareDistributedVirtualSwitch
    config = dvs.VmwarePortConfigPolicy(vlan=dvs.TrunkVlanSpec(vlanId=[
        vim.NumericRange(start=s, end=e)
        for s, e in ((300, 300), (0, 99), (100, 200), (150, 250))]))
    assert R._vlan_of(config) == ((0, 250), (300, 300))
    pvlan = dvs.VmwarePortConfigPolicy(vlan=dvs.PvlanSpec(pvlanId=5))
    assert R._vlan_of(pvlan) is None


def test_vlan_text():
    assert I.vlan_text(ALL) == "trunk VLANs 0-4094"
    assert I.vlan_text(((1, 1), (5, 9))) == "trunk VLANs 1,5-9"
    assert I.vlan_text(4095) == "all VLANs (4095)"
    assert I.vlan_text(0) == "untagged"
    assert I.vlan_text(12) == "VLAN 12"
    assert "trunk VLANs 0-4094" in I.owner_description("dep", NET_A,
                                                       "physnet1", ALL)


def test_status_shows_the_trunk_and_its_drift():
    topo = topology()
    want = D.desired_for_network(
        transparent(seg("flat", "physnet1", sid="s1"),
                    seg("flat", "physnet2", sid="s2")), topo)
    have = inventory(
        dvpgs=[dvpg(want[0].name, ((0, 100),), NET_A, moid="dvpg-5")],
        host_pgs={h: [I.HostPortGroup(NET_A, "vSwitch1", 4095)]
                  for h in HOSTS},
        std=[I.StdNetwork("network-7", NET_A, frozenset(HOSTS), NET_A, 0,
                          None)])
    result = Pass(topo, have, [], want, P.plan(want, have, {NET_A}), None)
    rows = {r["physical_network"]: r for r in cli.status_rows(result)}
    assert (rows["physnet1"]["vlan"], rows["physnet1"]["state"],
            rows["physnet1"]["detail"]) == (
        "trunk VLANs 0-4094", "wrong-vlan", "trunk VLANs 0-100 on DVS0")
    assert (rows["physnet2"]["vlan"], rows["physnet2"]["state"]) == (
        "all VLANs (4095)", "in-sync")

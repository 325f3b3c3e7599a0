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

"""Network MTUs against switch MTUs, on plain data; the MTU Neutron gives a
network, against Neutron's own type drivers."""

import pytest
from oslo_config import cfg

from networking_vcenter.reconcile import desired as D
from networking_vcenter.reconcile import mtu as M
from networking_vcenter.reconcile import plan as P
from networking_vcenter.vsphere import inventory as I

NET_A = "aaaaaaaa-0000-4000-8000-000000000001"
NET_B = "bbbbbbbb-0000-4000-8000-000000000002"
HOSTS = ("host-1", "host-2")


def topology():
    return D.Topology(
        targets={
            "physnet1": D.Target("physnet1", D.DVS, "DVS0", "uuid-dvs0",
                                 frozenset(HOSTS)),
            "physnet2": D.Target("physnet2", D.VSWITCH, "vSwitch1", None,
                                 frozenset(HOSTS)),
        },
        cluster_hosts={"C1": frozenset(HOSTS)},
        compute_hosts={"vc-compute-1": "C1"},
        dvs_name_template="neutron-{physical_network}-{network_id}")


def inventory(dvs_mtu=1500, vswitch_mtus=(1500, 1500)):
    hosts = {h: I.Host(h, h.upper(), frozenset({"vSwitch0", "vSwitch1"}), {},
                       None, vswitch_mtus={"vSwitch0": 1500, "vSwitch1": m})
             for h, m in zip(HOSTS, vswitch_mtus)}
    dvs = I.Dvs("dvs-1", "DVS0", "uuid-dvs0", frozenset(HOSTS), None,
                max_mtu=dvs_mtu)
    return I.Inventory(switches={"DVS0": [dvs]}, dvs_portgroups=[],
                       clusters={"C1": [list(HOSTS)]}, hosts=hosts,
                       std_networks={}, owner_field_key=1)


def seg(net_type, physnet, vlan=None):
    return {"network_type": net_type, "physical_network": physnet,
            "segmentation_id": vlan}


def test_dvs_mtu_above_refused_at_and_below_accepted():
    topo, inv = topology(), inventory(dvs_mtu=1500)
    segs = [seg("vlan", "physnet1", 10)]
    (small,) = M.too_small(9000, segs, topo, inv)
    assert (small.switch, small.mtu, small.kind) == ("DVS0", 1500, D.DVS)
    assert M.too_small(1500, segs, topo, inv) == []
    assert M.too_small(1400, segs, topo, inv) == []
    text = M.refusal(NET_A, 9000, [small])
    assert "9000" in text and "maxMtu 1500" in text and "DVS0" in text
    assert NET_A in text and "raise_switch_mtu" in text
    # Raising allowed: the distributed switch is left to the plan.
    assert M.too_small(9000, segs, topo, inv, raise_dvs=True) == []


def test_vswitch_mtu_is_per_host():
    topo, inv = topology(), inventory(vswitch_mtus=(9000, 1500))
    segs = [seg("flat", "physnet2")]
    (small,) = M.too_small(9000, segs, topo, inv, raise_dvs=True)
    assert (small.switch, small.host, small.mtu) == ("vSwitch1", "HOST-2",
                                                     1500)
    text = M.refusal(NET_A, 9000, [small])
    assert "standard vSwitch vSwitch1 on host HOST-2 (mtu 1500)" in text
    assert "raise_switch_mtu" not in text     # it does not raise vSwitches
    assert M.too_small(1500, segs, topo, inv) == []


def test_unmapped_and_other_segment_types_are_not_checked():
    topo, inv = topology(), inventory(dvs_mtu=1500)
    assert M.too_small(9000, [seg("vxlan", None, 5)], topo, inv) == []
    assert M.too_small(9000, [seg("vlan", "physnet9", 5)], topo, inv) == []
    assert M.too_small(None, [seg("vlan", "physnet1", 5)], topo, inv) == []
    # A switch whose MTU is not known (not a VMware switch) is not judged.
    assert M.too_small(9000, [seg("vlan", "physnet1", 5)], topo,
                       inventory(dvs_mtu=None)) == []


def test_multi_segment_network_names_every_switch_too_small():
    topo, inv = topology(), inventory(dvs_mtu=1500, vswitch_mtus=(1500, 1500))
    small = M.too_small(9000, [seg("vlan", "physnet1", 5),
                               seg("vlan", "physnet2", 6)], topo, inv)
    assert [(s.switch, s.host) for s in small] == [
        ("DVS0", None), ("vSwitch1", "HOST-1"), ("vSwitch1", "HOST-2")]
    # Hosts of one vSwitch MTU are named together.
    assert M.describe_all(small) == (
        "distributed switch DVS0 (maxMtu 1500); standard vSwitch vSwitch1 "
        "on hosts HOST-1, HOST-2 (mtu 1500)")
    assert "physical network physnet1, physnet2" in \
        M.problem(NET_A, 9000, small)


def test_plan_raises_each_switch_once_to_the_largest_mtu():
    inv = inventory(dvs_mtu=1500)
    want = [D.DesiredPortGroup(NET_A, "physnet1", D.DVS, "DVS0", "pg-a", 5),
            D.DesiredPortGroup(NET_B, "physnet1", D.DVS, "DVS0", "pg-b", 6),
            D.DesiredPortGroup(NET_B, "physnet2", D.VSWITCH, "vSwitch1",
                               NET_B, 6, frozenset(HOSTS))]
    steps = P.plan_mtu(want, {NET_A: 9000, NET_B: 1600}, inv)
    assert steps == [P.RaiseDvsMtu(NET_A, "DVS0", "dvs-1", 9000, 1500)]
    assert "from 1500 to 9000" in steps[0].describe()
    # Never lowered; nothing when the switch carries it.
    assert P.plan_mtu(want, {NET_A: 1500, NET_B: 1400}, inv) == []
    assert P.plan_mtu(want, {NET_A: 9000}, inventory(dvs_mtu=9000)) == []
    assert P.plan_mtu(want, {NET_A: None}, inv) == []


def test_startup_mismatch_names_the_options_and_switch_mtus():
    topo = topology()
    inv = inventory(dvs_mtu=1500, vswitch_mtus=(9000, 9000))
    (m,) = M.mismatches(topo, inv, 9000, {})
    assert (m.physnet, m.neutron_mtu) == ("physnet1", 9000)
    text = m.describe()
    assert "global_physnet_mtu = 9000" in text and "maxMtu 1500" in text
    # physical_network_mtus only ever lowers global_physnet_mtu.
    assert M.mismatches(topo, inventory(vswitch_mtus=(1500, 9000)), 1500,
                        {"physnet2": "9000"}) == []
    (m,) = M.mismatches(topo, inventory(vswitch_mtus=(1500, 9000)), 9000,
                        {"physnet1": "1500", "physnet2": "9000"})
    assert m.physnet == "physnet2"
    assert "physical_network_mtus physnet2:9000" in m.describe()
    assert "HOST-1 (mtu 1500)" in m.describe()
    assert M.mismatches(topo, inv, 1500, {}) == []
    assert M.mismatches(topo, inv, 9000, {}, raise_dvs=True) == []
    assert M.mismatches(topo, inv, 0, {}) == []    # unlimited: nothing known


@pytest.fixture
def neutron_conf():
    from neutron.conf import common as common_conf
    from neutron.conf.plugins.ml2 import config as ml2_config
    from neutron.conf.plugins.ml2.drivers import driver_type
    for register in (common_conf.register_core_common_config_opts,
                     ml2_config.register_ml2_plugin_opts,
                     driver_type.register_ml2_drivers_vlan_opts,
                     driver_type.register_ml2_drivers_flat_opts):
        try:
            register()
        except cfg.DuplicateOptError:
            pass
    yield cfg.CONF
    cfg.CONF.clear_override("global_physnet_mtu")
    cfg.CONF.clear_override("physical_network_mtus", group="ml2")


@pytest.mark.parametrize("global_mtu,physnet_mtus", [
    (1500, {}), (9000, {"physnet1": "1400"}), (1500, {"physnet1": "9000"}),
    (0, {"physnet1": "9000"}), (0, {}), (9000, {"other": "1280"})])
def test_type_driver_mtu_is_what_neutron_computes(neutron_conf, global_mtu,
                                                  physnet_mtus):
    from neutron.plugins.ml2.drivers import type_flat
    from neutron.plugins.ml2.drivers import type_vlan
    neutron_conf.set_override("global_physnet_mtu", global_mtu)
    neutron_conf.set_override("physical_network_mtus", physnet_mtus,
                              group="ml2")
    options = M.neutron_options(neutron_conf)
    for driver in (type_vlan.VlanTypeDriver(), type_flat.FlatTypeDriver()):
        assert M.type_driver_mtu("physnet1", *options) == \
            driver.get_mtu("physnet1")


def test_raising_needs_the_switch_modify_privilege():
    from networking_vcenter.vsphere import privileges
    inv = inventory()
    plain = {n.label: n.privileges for n in privileges.needs(
        inv, None, ["DVS0"], [])}
    raising = {n.label: n.privileges for n in privileges.needs(
        inv, None, ["DVS0"], [], raise_mtu=True)}
    assert "DVSwitch.Modify" not in plain["distributed switch DVS0"]
    assert "DVSwitch.Modify" in raising["distributed switch DVS0"]

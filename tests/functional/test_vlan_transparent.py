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

"""VLAN-transparent networks in the real ML2 plugin against the simulator.

ML2 offers the ``vlan-transparent`` extension only when no loaded mechanism
driver lists it unsupported, and ``openvswitch`` does: these tests load
``vcenter`` alone, with ``[DEFAULT] vlan_transparent = true``, as
docs/vlan-transparency.md tells operators.  A transparent flat network is a
trunk port group of VLANs 0-4094 on the distributed switch and VLAN 4095 on
each host's standard vSwitch; a transparent VLAN network (QinQ) is refused.
"""

from __future__ import annotations

from neutron_lib.api.definitions import portbindings
from neutron_lib.api.definitions import provider_net as pnet
from pyVmomi import vim

from tests.functional import base
from tests.functional import test_maintenance

ALL = [(0, 4094)]


class TransparentTestCase(base.VCenterMl2TestCase):

    _mechanism_drivers = ["vcenter"]

    def ml2_vcenter_ini(self) -> str:
        return super().ml2_vcenter_ini() + \
            "[DEFAULT]\nvlan_transparent = true\n"

    def make_transparent(self, net_type, physnet, vlan=None):
        net = self.make_network(net_type, physnet, vlan,
                                vlan_transparent=True)
        self.assertTrue(net["vlan_transparent"])
        return net

    def create_refused(self, **network):
        req = self.new_create_request("networks", {"network": {
            "name": "qinq", "vlan_transparent": True, **network}},
            as_admin=True)
        res = req.get_response(self.api)
        self.assertEqual(400, res.status_int, res.body)
        return self.deserialize(self.fmt, res)["NeutronError"]

    def test_extension_offered(self):
        self.assertIn("vlan-transparent",
                      self.driver.supported_extension_aliases)

    def test_flat_on_dvs_is_a_trunk_of_every_vlan(self):
        net = self.make_transparent("flat", "physnet1")
        (pg,) = self.vsphere.dv_portgroups(self.dvs_name(net["id"]))
        self.assertEqual(("DVS0", ALL, None),
                         (pg["switch"], pg["trunk"], pg["vlan"]))
        self.assertIn("trunk VLANs 0-4094", pg["description"])
        self.assertEqual({}, self.vsphere.host_portgroups(net["id"]))
        # In sync as made.
        result = self.resync()
        self.assertEqual([], result.plan.for_network(net["id"]).steps)

    def test_flat_on_vswitch_is_vlan_4095_on_every_host(self):
        net = self.make_transparent("flat", "physnet2")
        hosts = self.cluster_hosts()
        self.assertEqual(3, len(hosts))
        self.assertEqual({h: ("vSwitch1", 4095) for h in hosts},
                         self.vsphere.host_portgroups(net["id"]))
        result = self.resync()
        self.assertEqual([], result.plan.for_network(net["id"]).steps)

    def test_vlan_network_refused_with_the_reason(self):
        error = self.create_refused(**{
            pnet.NETWORK_TYPE: "vlan", pnet.PHYSICAL_NETWORK: "physnet1",
            pnet.SEGMENTATION_ID: 140})
        self.assertEqual("VlanTransparencyRefused", error["type"])
        self.assertRegex(error["message"], "^VLAN-transparent network "
                         "[0-9a-f-]{36} is refused")
        self.assertIn("is refused by the vcenter mechanism driver: its vlan "
                      "segment 140 on physical network physnet1 (mapped to "
                      "DVS0) cannot be: a VLAN-transparent network must be "
                      "flat", error["message"])
        self.assertIn("no QinQ", error["message"])
        net_id = error["message"].split()[2]
        self.assertEqual([], self.vsphere.dv_portgroups(
            self.dvs_name(net_id)))
        nets = self._list("networks", as_admin=True)["networks"]
        self.assertEqual([], [n for n in nets if n["name"] == "qinq"])

    def test_qinq_network_refused_with_the_reason(self):
        if "qinq" not in self.driver.supported_extension_aliases:
            self.skipTest("ML2 does not offer the qinq extension here")
        req = self.new_create_request("networks", {"network": {
            "name": "qinq", "qinq": True, pnet.NETWORK_TYPE: "vlan",
            pnet.PHYSICAL_NETWORK: "physnet1", pnet.SEGMENTATION_ID: 141}},
            as_admin=True)
        res = req.get_response(self.api)
        self.assertEqual(400, res.status_int, res.body)
        error = self.deserialize(self.fmt, res)["NeutronError"]
        self.assertEqual("VlanQinqRefused", error["type"])
        self.assertIn("physical network physnet1 is mapped to DVS0",
                      error["message"])
        self.assertIn("802.1Q only", error["message"])
        # Nothing left behind: no network, so no port group either.
        self.assertEqual([], self._list(
            "networks", query_params="name=qinq")["networks"])

    def test_multi_segment_refused_naming_the_vlan_segment(self):
        error = self.create_refused(segments=[
            {pnet.NETWORK_TYPE: "flat", pnet.PHYSICAL_NETWORK: "physnet1"},
            {pnet.NETWORK_TYPE: "vlan", pnet.PHYSICAL_NETWORK: "physnet2",
             pnet.SEGMENTATION_ID: 341}])
        self.assertIn("its vlan segment 341 on physical network physnet2 "
                      "(mapped to vSwitch1) cannot be", error["message"])
        self.assertNotIn("physnet1", error["message"])

    def test_unmapped_network_is_not_claimed(self):
        """No opinion on a physical network it does not serve: with no
        other driver to support it, ML2's own refusal."""
        error = self.create_refused(**{
            pnet.NETWORK_TYPE: "vlan", pnet.PHYSICAL_NETWORK: "physnet3",
            pnet.SEGMENTATION_ID: 142})
        self.assertEqual("VlanTransparencyDriverError", error["type"])

    def test_hand_edits_put_back_by_a_full_pass(self):
        dvs_net = self.make_transparent("flat", "physnet1")
        std_net = self.make_transparent("flat", "physnet2")
        name = self.dvs_name(dvs_net["id"])
        self.vsphere.set_dv_portgroup_trunk(name, [(0, 100), (200, 300)])
        (pg,) = self.vsphere.dv_portgroups(name)
        self.assertEqual([(0, 100), (200, 300)], pg["trunk"])
        host = self.cluster_hosts()[1]
        self.vsphere.set_host_portgroup_vlan(host, std_net["id"], 0)
        self.assertEqual(("vSwitch1", 0), self.vsphere.host_portgroups(
            std_net["id"])[host])

        result = self.resync()
        self.assertEqual(
            [f"retag distributed port group {name} ({pg['moid']}) on DVS0: "
             f"trunk VLANs 0-100,200-300 -> trunk VLANs 0-4094"],
            result.plan.for_network(dvs_net["id"]).describe())
        self.assertEqual(
            [f"retag port group {std_net['id']} on {host}/vSwitch1: "
             f"untagged -> all VLANs (4095)"],
            result.plan.for_network(std_net["id"]).describe())
        (pg,) = self.vsphere.dv_portgroups(name)
        self.assertEqual(ALL, pg["trunk"])
        self.assertEqual(
            {h: ("vSwitch1", 4095) for h in self.cluster_hosts()},
            self.vsphere.host_portgroups(std_net["id"]))

    def test_networks_not_transparent_unchanged(self):
        flat = self.make_network("flat", "physnet1", vlan_transparent=False)
        vlan = self.make_network("vlan", "physnet1", 143)
        std = self.make_network("flat", "physnet2")
        self.assertFalse(flat["vlan_transparent"])
        for net, tag in ((flat, 0), (vlan, 143)):
            (pg,) = self.vsphere.dv_portgroups(self.dvs_name(net["id"]))
            self.assertEqual((tag, None), (pg["vlan"], pg["trunk"]))
        self.assertEqual({h: ("vSwitch1", 0) for h in self.cluster_hosts()},
                         self.vsphere.host_portgroups(std["id"]))

    def test_delete_removes_the_port_groups(self):
        dvs_net = self.make_transparent("flat", "physnet1")
        std_net = self.make_transparent("flat", "physnet2")
        self.delete_network(dvs_net["id"])
        self.delete_network(std_net["id"])
        self.assertEqual([], self.vsphere.dv_portgroups(
            self.dvs_name(dvs_net["id"])))
        self.assertEqual({}, self.vsphere.host_portgroups(std_net["id"]))
        self.assertEqual([], self.vsphere.networks_named(std_net["id"]))

    def test_bind_on_dvs_gets_its_dv_port_on_the_trunk(self):
        net = self.make_transparent("flat", "physnet1")
        port = self.bind_port(net["id"], base.COMPUTE_HOST)
        self.assertEqual("dvs", port[portbindings.VIF_TYPE])
        details = port[portbindings.VIF_DETAILS]
        (pg,) = self.vsphere.dv_portgroups(self.dvs_name(net["id"]))
        self.assertEqual((pg["switch_uuid"], pg["key"], 0),
                         (details["dvs_id"], details["pg_id"],
                          details["segmentation_id"]))
        dvs = self.vsphere.dvs("DVS0")
        (dv_port,) = [p for p in dvs.FetchDVPorts(vim.dvs.PortCriteria(
            portgroupKey=[pg["key"]], inside=True))
            if p.key == details["dvs_port_key"]]
        self.assertEqual(port["id"], dv_port.config.name)
        # The port's VLAN is the trunk port group's, inherited.
        vlan = dv_port.config.setting.vlan
        self.assertIsInstance(
            vlan, vim.dvs.VmwareDistributedVirtualSwitch.TrunkVlanSpec)
        self.assertEqual((True, ALL), (vlan.inherited, [
            (r.start, r.end) for r in vlan.vlanId]))

    def test_bind_on_vswitch(self):
        net = self.make_transparent("flat", "physnet2")
        port = self.bind_port(net["id"], base.COMPUTE_HOST)
        self.assertEqual("dvs", port[portbindings.VIF_TYPE])
        details = port[portbindings.VIF_DETAILS]
        self.assertEqual((net["id"], 0), (details["dvs_port_group_name"],
                                          details["segmentation_id"]))
        self.assertNotIn("dvs_port_key", details)


class BesideOpenvswitchTestCase(base.VCenterMl2TestCase):
    """With ``openvswitch,vcenter`` ML2 hides the extension (openvswitch
    lists it unsupported), even with ``vlan_transparent = true``."""

    def ml2_vcenter_ini(self) -> str:
        return super().ml2_vcenter_ini() + \
            "[DEFAULT]\nvlan_transparent = true\n"

    def test_extension_hidden_and_attribute_refused(self):
        self.assertNotIn("vlan-transparent",
                         self.driver.supported_extension_aliases)
        req = self.new_create_request("networks", {"network": {
            "name": "t", "vlan_transparent": True,
            pnet.NETWORK_TYPE: "flat", pnet.PHYSICAL_NETWORK: "physnet1"}},
            as_admin=True)
        res = req.get_response(self.api)
        self.assertEqual(400, res.status_int, res.body)
        self.assertIn("Unrecognized attribute(s) 'vlan_transparent'",
                      self.deserialize(self.fmt, res)["NeutronError"]
                      ["message"])


class OptionTestCase(base.VCenterMl2TestCase):
    """Neutron 29's ``[DEFAULT] vlan_transparent`` (deprecated): unset, the
    loaded mechanism drivers decide; ``false`` hides the extension."""

    _mechanism_drivers = ["vcenter"]
    option = {"test_unset_offers_it": None, "test_false_hides_it": "false"}

    def ml2_vcenter_ini(self) -> str:
        value = self.option[self._testMethodName]
        return super().ml2_vcenter_ini() + (
            f"[DEFAULT]\nvlan_transparent = {value}\n" if value else "")

    def test_unset_offers_it(self):
        self.assertIn("vlan-transparent",
                      self.driver.supported_extension_aliases)
        net = self.make_network("flat", "physnet1", vlan_transparent=True)
        (pg,) = self.vsphere.dv_portgroups(self.dvs_name(net["id"]))
        self.assertEqual(ALL, pg["trunk"])

    def test_false_hides_it(self):
        self.assertNotIn("vlan-transparent",
                         self.driver.supported_extension_aliases)


class WorkerTestCase(test_maintenance.MaintenanceTestCase):
    """The maintenance worker, as Neutron runs it, repairs a trunk edited
    by hand from the replica's events (no full pass)."""

    _mechanism_drivers = ["vcenter"]

    def ml2_vcenter_ini(self) -> str:
        return super().ml2_vcenter_ini() + \
            "[DEFAULT]\nvlan_transparent = true\n"

    def test_trunk_edited_by_hand_repaired_within_seconds(self):
        dvs_net = self.make_network("flat", "physnet1", vlan_transparent=True)
        std_net = self.make_network("flat", "physnet2", vlan_transparent=True)
        name = self.dvs_name(dvs_net["id"])
        host = self.cluster_hosts()[0]

        def trunk():
            return [pg["trunk"] for pg in self.vsphere.dv_portgroups(name)]

        # That the edits land is shown without a worker (above); here the
        # worker may fix them before a read could see them.
        self.vsphere.set_dv_portgroup_trunk(name, [(5, 10)])
        self.within(test_maintenance.REPAIR, lambda: trunk() == [ALL],
                    "trunk range edited by hand put back")
        self.vsphere.set_host_portgroup_vlan(host, std_net["id"], 7)
        self.within(test_maintenance.REPAIR,
                    lambda: self.vsphere.host_portgroups(std_net["id"])
                    [host] == ("vSwitch1", 4095),
                    "VLAN 4095 put back on the host port group")

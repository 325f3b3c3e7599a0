"""Segment-to-host mappings for the vSphere compute hosts, with Neutron's
segments service plugin: what an L2 agent reports for its own host, the
driver writes for the nova-compute hosts of ``compute_hosts`` -- so a routed
provider network gives a port on such a host an address of the segment its
host reaches.
"""

from __future__ import annotations

from unittest import mock

from neutron.objects import network as net_obj
from neutron.services.segments import db as segments_db
from neutron.services.segments import plugin as seg_plugin
from neutron_lib import context as n_context
from oslo_config import cfg

from tests.functional import base

SEGMENTS = "neutron.services.segments.plugin.Plugin"


class SegmentHostsTestCase(base.VCenterMl2TestCase):

    def get_additional_service_plugins(self):
        return {"segments": SEGMENTS}

    def setup_config(self):
        super().setup_config()
        # The segments plugin only acts on what the operator configured.
        cfg.CONF.set_override("service_plugins", [SEGMENTS])

    def setUp(self):
        # Nova and Placement are not here: Neutron's notifier of routed
        # networks talks to stand-ins.
        placement, nova = mock.Mock(), mock.Mock()
        placement.get_inventory.side_effect = lambda *a: {"total": 0,
                                                          "reserved": 0}
        clients = mock.patch.object(seg_plugin.NovaSegmentNotifier,
                                    "_get_clients",
                                    return_value=(placement, nova))
        clients.start()
        self.addCleanup(clients.stop)
        super().setUp()
        self.ctx = n_context.get_admin_context()

    def mapped(self, host=base.COMPUTE_HOST) -> set[str]:
        return {m.segment_id for m in net_obj.SegmentHostMapping.get_objects(
            self.ctx, host=host)}

    def add_segment(self, net_id, net_type, physnet, vlan):
        req = self.new_create_request("segments", {"segment": {
            "network_id": net_id, "network_type": net_type,
            "physical_network": physnet, "segmentation_id": vlan}},
            as_admin=True)
        res = req.get_response(self.api)
        body = self.deserialize(self.fmt, res)
        self.assertEqual(201, res.status_int, body)
        return body["segment"]

    def add_subnet(self, net_id, segment_id, cidr):
        res = self._create_subnet(self.fmt, net_id, cidr, as_admin=True,
                                  segment_id=segment_id)
        body = self.deserialize(self.fmt, res)
        self.assertEqual(201, res.status_int, body)
        return body["subnet"]

    def routed_network(self):
        """Three segments: on the DVS (physnet1), on the standard vSwitch
        (physnet2), and on physnet3, which no switch mapping names."""
        net = self.make_network("vlan", "physnet1", 41)
        (dvs_seg,) = self.deserialize(self.fmt, self.new_list_request(
            "segments", params=f"network_id={net['id']}",
            as_admin=True).get_response(self.api))["segments"]
        std_seg = self.add_segment(net["id"], "vlan", "physnet2", 241)
        far_seg = self.add_segment(net["id"], "vlan", "physnet3", 441)
        return net, dvs_seg, std_seg, far_seg

    def test_new_segments_mapped_at_once(self):
        net, dvs_seg, std_seg, far_seg = self.routed_network()
        mapped = self.mapped()
        self.assertLessEqual({dvs_seg["id"], std_seg["id"]}, mapped)
        self.assertNotIn(far_seg["id"], mapped)
        # Not the network nodes': their agents report their own.
        self.assertFalse({dvs_seg["id"], std_seg["id"]} &
                         self.mapped(base.NETWORK_NODE))

    def test_heartbeat_puts_mappings_back(self):
        net, dvs_seg, std_seg, far_seg = self.routed_network()
        # Lost (a hand edit, or segments made while the driver was down),
        # and one that should not be there.
        segments_db.update_segment_host_mapping(
            self.ctx, base.COMPUTE_HOST, {far_seg["id"]})
        self.assertEqual({far_seg["id"]}, self.mapped())
        self.replica_caught_up()
        self.vcenter_driver.map_segments(self.vcenter_driver.reconciler)
        mapped = self.mapped()
        self.assertLessEqual({dvs_seg["id"], std_seg["id"]}, mapped)
        self.assertNotIn(far_seg["id"], mapped)

    def test_routed_network_address_from_the_reached_segment(self):
        """Neutron's IPAM picks the subnet of the segment the port's host
        reaches: here the DVS one, not physnet3's."""
        net = self.make_network("vlan", "physnet3", 442)
        (far_seg,) = self.deserialize(self.fmt, self.new_list_request(
            "segments", params=f"network_id={net['id']}",
            as_admin=True).get_response(self.api))["segments"]
        dvs_seg = self.add_segment(net["id"], "vlan", "physnet1", 42)
        self.add_subnet(net["id"], far_seg["id"], "10.44.0.0/24")
        near = self.add_subnet(net["id"], dvs_seg["id"], "10.42.0.0/24")
        port = self.bind_port(net["id"], base.COMPUTE_HOST)
        self.assertEqual([near["id"]],
                         [ip["subnet_id"] for ip in port["fixed_ips"]])
        self.assertEqual("dvs", port["binding:vif_type"])
        self.assertEqual(42, port["binding:vif_details"]["segmentation_id"])

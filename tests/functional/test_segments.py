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

"""Segment-to-host mappings for the vSphere compute hosts, with Neutron's
segments service plugin: what an L2 agent reports for its own host, the
driver writes for the nova-compute hosts of ``compute_hosts`` -- so a routed
provider network gives a port on such a host an address of the segment its
host reaches, and Neutron's own notifier puts the host in the Nova host
aggregate of each segment it reaches, by which Nova's scheduler places.
"""

from __future__ import annotations

import threading
import time
import types
from unittest import mock

from neutron.objects import network as net_obj
from neutron.services.segments import db as segments_db
from neutron.services.segments import plugin as seg_plugin
from neutron_lib import context as n_context
from neutron_lib.exceptions import placement as placement_exc
from novaclient import exceptions as nova_exc
from oslo_config import cfg
from oslo_utils import uuidutils

from tests.functional import base

SEGMENTS = "neutron.services.segments.plugin.Plugin"


class _Aggregates:
    """What Neutron's NovaSegmentNotifier uses of Nova (``aggregates``) and
    of Placement (``placement``): a resource provider per segment, joined to
    a Nova host aggregate named after it, which holds the segment's hosts.
    The calls and their answers as novaclient and Neutron's placement
    client have them."""

    def __init__(self):
        self.by_id: dict[int, types.SimpleNamespace] = {}
        self.providers: dict[str, dict] = {}      # segment id: inventory
        self.joined: dict[str, str] = {}          # segment id: aggregate uuid
        self.lock = threading.Lock()
        self.aggregates = self
        p = self.placement = mock.Mock()
        p.get_inventory.side_effect = self._inventory
        p.create_resource_provider.side_effect = \
            lambda rp: self.providers.setdefault(rp["uuid"], {})
        p.update_resource_provider_inventories.side_effect = \
            lambda seg, inv: self.providers[seg].update(inv)
        p.associate_aggregates.side_effect = \
            lambda seg, uuids: self.joined.__setitem__(seg, uuids[0])
        p.list_aggregates.side_effect = self._list_aggregates

    def _inventory(self, segment_id, resource_class):
        if segment_id not in self.providers:
            raise placement_exc.PlacementResourceProviderNotFound(
                resource_provider=segment_id)
        return dict(self.providers[segment_id][resource_class])

    def _list_aggregates(self, segment_id):
        if segment_id not in self.joined:
            raise placement_exc.PlacementAggregateNotFound(
                resource_provider=segment_id)
        return {"aggregates": [self.joined[segment_id]]}

    # novaclient's aggregates manager
    def create(self, name, availability_zone):
        with self.lock:
            agg = types.SimpleNamespace(
                id=len(self.by_id) + 1, uuid=uuidutils.generate_uuid(),
                name=name, hosts=[])
            self.by_id[agg.id] = agg
            return agg

    def list(self):
        return list(self.by_id.values())

    def add_host(self, aggregate_id, host):
        hosts = self.by_id[aggregate_id].hosts
        if host in hosts:
            raise nova_exc.Conflict(409)
        hosts.append(host)

    def remove_host(self, aggregate_id, host):
        hosts = self.by_id[aggregate_id].hosts
        if host not in hosts:
            raise nova_exc.NotFound(404)
        hosts.remove(host)

    def hosts_of(self, segment_id) -> list[str] | None:
        """The hosts of the segment's aggregate; None while it has none."""
        uuid = self.joined.get(segment_id)
        return next((a.hosts for a in self.by_id.values()
                     if a.uuid == uuid), None)


class SegmentHostsTestCase(base.VCenterMl2TestCase):

    def get_additional_service_plugins(self):
        return {"segments": SEGMENTS}

    def setup_config(self):
        super().setup_config()
        # The segments plugin only acts on what the operator configured.
        cfg.CONF.set_override("service_plugins", [SEGMENTS])

    def setUp(self):
        # Nova and Placement are not here: Neutron's notifier of routed
        # networks talks to stand-ins that keep what it asks of them.
        self.nova = _Aggregates()
        clients = mock.patch.object(seg_plugin.NovaSegmentNotifier,
                                    "_get_clients",
                                    return_value=(self.nova.placement,
                                                  self.nova))
        clients.start()
        self.addCleanup(clients.stop)
        super().setUp()
        # Neutron's test base keeps its batch notifiers from sending; this
        # one sends, as in a server (to the stand-ins).
        self.patch_notifier.stop()
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
        self.vcenter_driver.backend.map_segments()
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

    def aggregate_becomes(self, segment_id, hosts):
        """Wait until the segment's Nova aggregate holds ``hosts``: Neutron's
        batch notifier sends from a thread every send_events_interval
        (2 s)."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < 15:
            if self.nova.hosts_of(segment_id) == hosts:
                return
            time.sleep(0.1)
        self.assertEqual(hosts, self.nova.hosts_of(segment_id), segment_id)

    def test_nova_aggregates_hold_the_compute_host(self):
        """What Nova's scheduler places by: each segment's host aggregate
        holds the compute host when the segment's switch reaches it; a host
        lost from the mappings leaves it, and the heartbeat puts it back."""
        net, dvs_seg, std_seg, far_seg = self.routed_network()
        for seg, cidr in ((dvs_seg, "10.51.0.0/24"), (std_seg, "10.52.0.0/24"),
                          (far_seg, "10.53.0.0/24")):
            self.add_subnet(net["id"], seg["id"], cidr)
        self.aggregate_becomes(dvs_seg["id"], [base.COMPUTE_HOST])
        self.aggregate_becomes(std_seg["id"], [base.COMPUTE_HOST])
        # physnet3's aggregate is made too, with no host of ours.
        self.aggregate_becomes(far_seg["id"], [])

        segments_db.update_segment_host_mapping(
            self.ctx, base.COMPUTE_HOST, {std_seg["id"]})
        self.aggregate_becomes(dvs_seg["id"], [])
        self.replica_caught_up()
        self.vcenter_driver.backend.map_segments()
        self.aggregate_becomes(dvs_seg["id"], [base.COMPUTE_HOST])
        self.assertEqual([base.COMPUTE_HOST], self.nova.hosts_of(std_seg["id"]))

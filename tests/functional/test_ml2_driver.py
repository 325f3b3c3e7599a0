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

"""The vcenter driver in the real ML2 plugin against the vCenter simulator."""

from __future__ import annotations

from neutron.plugins.ml2.common import exceptions as ml2_exc
from neutron.tests.common import helpers
from neutron_lib.api.definitions import portbindings
from neutron_lib.api.definitions import provider_net as pnet
from oslo_utils import uuidutils

from networking_vcenter import exceptions
from tests.functional import base


class TestNetworks(base.VCenterMl2TestCase):

    def test_vlan_network_on_dvs(self):
        net = self.make_network("vlan", "physnet1", 42)
        (pg,) = self.vsphere.dv_portgroups(self.dvs_name(net["id"]))
        self.assertEqual("DVS0", pg["switch"])
        self.assertEqual(42, pg["vlan"])
        self.assertIn(net["id"], pg["description"])
        self.assertIn("networking-vcenter", pg["description"])
        # Nothing on the standard switches.
        self.assertEqual({}, self.vsphere.host_portgroups(net["id"]))

    def test_vlan_network_on_standard_vswitch_of_every_cluster_host(self):
        net = self.make_network("vlan", "physnet2", 250)
        hosts = self.cluster_hosts()
        self.assertEqual(3, len(hosts))
        self.assertEqual({h: ("vSwitch1", 250) for h in hosts},
                         self.vsphere.host_portgroups(net["id"]))
        # One vSphere network object spanning the three hosts (real vCenter).
        (network,) = self.vsphere.networks_named(net["id"])
        self.assertEqual(sorted(hosts), sorted(h.name for h in network.host))
        # Hosts of the unmapped cluster DC0_C1 are not touched.
        for h in self.vsphere.hosts_of_cluster("DC0_C1"):
            self.assertNotIn(h, self.vsphere.host_portgroups(net["id"]))

    def test_flat_networks_are_untagged(self):
        dvs_net = self.make_network("flat", "physnet1")
        (pg,) = self.vsphere.dv_portgroups(self.dvs_name(dvs_net["id"]))
        self.assertEqual(0, pg["vlan"])
        self.delete_network(dvs_net["id"])
        std_net = self.make_network("flat", "physnet2")
        self.assertEqual({h: ("vSwitch1", 0) for h in self.cluster_hosts()},
                         self.vsphere.host_portgroups(std_net["id"]))

    def test_multi_segment_network(self):
        net = self.make_multi_segment_network([
            {pnet.NETWORK_TYPE: "vlan", pnet.PHYSICAL_NETWORK: "physnet1",
             pnet.SEGMENTATION_ID: 60},
            {pnet.NETWORK_TYPE: "vlan", pnet.PHYSICAL_NETWORK: "physnet2",
             pnet.SEGMENTATION_ID: 260},
            {pnet.NETWORK_TYPE: "vxlan"},
        ])
        (pg,) = self.vsphere.dv_portgroups(self.dvs_name(net["id"]))
        self.assertEqual(60, pg["vlan"])
        self.assertEqual({h: ("vSwitch1", 260) for h in self.cluster_hosts()},
                         self.vsphere.host_portgroups(net["id"]))

    def test_vxlan_and_unmapped_physnet_ignored(self):
        vx = self.make_network("vxlan")
        unmapped = self.make_network("vlan", "physnet3", 450)
        for net in (vx, unmapped):
            self.assertEqual({}, self.vsphere.host_portgroups(net["id"]))
            self.assertEqual([], [n for n in self.vsphere.networks_named(
                net["id"])])
            for physnet in ("physnet1", "physnet3", "None"):
                self.assertEqual([], self.vsphere.dv_portgroups(
                    self.dvs_name(net["id"], physnet)))

    def test_delete_removes_port_groups_everywhere(self):
        dvs_net = self.make_network("vlan", "physnet1", 70)
        std_net = self.make_network("vlan", "physnet2", 270)
        self.assertTrue(self.vsphere.dv_portgroups(
            self.dvs_name(dvs_net["id"])))
        self.assertTrue(self.vsphere.host_portgroups(std_net["id"]))
        self.delete_network(dvs_net["id"])
        self.delete_network(std_net["id"])
        self.assertEqual([], self.vsphere.dv_portgroups(
            self.dvs_name(dvs_net["id"])))
        self.assertEqual({}, self.vsphere.host_portgroups(std_net["id"]))
        self.assertEqual([], self.vsphere.networks_named(std_net["id"]))

    def test_create_is_idempotent(self):
        net = self.make_network("vlan", "physnet1", 71)
        result = self.resync()
        self.assertEqual([], result.plan.for_network(net["id"]).steps)
        self.assertEqual(1, len(self.vsphere.dv_portgroups(
            self.dvs_name(net["id"]))))

    def test_retag_keeps_a_grown_port_group_size(self):
        """Fixing a hand-changed VLAN never shrinks a port group that grew
        (vCenter would delete its free ports, or refuse)."""
        from pyVmomi import vim
        net = self.make_network("vlan", "physnet1", 72)
        (pg,) = self.vsphere.dv_portgroups(self.dvs_name(net["id"]))
        ref = pg["ref"]
        spec = vim.dvs.DistributedVirtualPortgroup.ConfigSpec(
            name=ref.name, type="earlyBinding", numPorts=24, autoExpand=True,
            configVersion=ref.config.configVersion,
            description=ref.config.description,
            defaultPortConfig=vim.dvs.VmwareDistributedVirtualSwitch
            .VmwarePortConfigPolicy(vlan=vim.dvs.VmwareDistributedVirtualSwitch
                                    .VlanIdSpec(vlanId=999, inherited=False)))
        self.vsphere.wait(ref.ReconfigureDVPortgroup_Task(spec))
        result = self.resync()
        self.assertEqual(["retag"], [s.verb for s in
                                     result.plan.for_network(net["id"]).steps])
        (pg,) = self.vsphere.dv_portgroups(self.dvs_name(net["id"]))
        self.assertEqual((72, 24), (pg["vlan"], pg["ref"].config.numPorts))

    def test_create_racing_another_worker_is_success(self):
        """A create planned from a snapshot taken before another worker made
        the same port group (DuplicateName) counts as done; one taken by a
        port group we did not make does not."""
        from networking_vcenter.reconcile import apply as apply_mod
        from networking_vcenter.reconcile import plan as plan_mod
        rec = self.vcenter_driver.backend.reconciler
        stale = rec.inventory()
        net = self.make_network("vlan", "physnet1", 76)
        foreign_id = uuidutils.generate_uuid()
        self.vsphere.add_dv_portgroup("DVS0", self.dvs_name(foreign_id), 77,
                                      "made by hand")
        steps = [plan_mod.CreateDvsPortGroup(
            n, self.dvs_name(n), "DVS0", vlan, "physnet1")
            for n, vlan in ((net["id"], 76), (foreign_id, 77))]
        out = apply_mod.Applier(rec.session, rec.settings).apply(
            plan_mod.Plan(steps), stale)
        self.assertEqual([steps[0]], out.done)
        ((step, exc),) = out.failed
        self.assertIs(steps[1], step)
        self.assertIsInstance(exc, exceptions.NotOwned)
        self.assertEqual(1, len(self.vsphere.dv_portgroups(
            self.dvs_name(net["id"]))))
        self.vsphere.destroy_dv_portgroup(self.dvs_name(foreign_id))

    def test_bind_and_no_drift_reconcile_make_no_vcenter_call(self):
        """Once the replica is warm, a bind on an existing network costs
        no SOAP call beyond what the port itself needs -- on a standard
        vSwitch nothing, on a distributed switch the one task that reserves
        and configures its DV port (and its read-back) -- and a reconcile
        with nothing to change, of the network or of the port, costs none
        (the replica's own long poll, WaitForUpdatesEx, excluded)."""
        dvs_net = self.make_network("vlan", "physnet1", 73)
        std_net = self.make_network("vlan", "physnet2", 274)
        drv = self.vcenter_driver
        rec = drv.backend.reconciler
        for net in (dvs_net, std_net):   # the replica has seen them
            self.assertTrue(rec.replica.wait_until(
                lambda inv, n=net: not rec._plan(
                    inv, list(drv.backend.source({n["id"]})),
                    {n["id"]}, set())[2].steps, 10))
        with self.soap_calls() as calls:
            port = self.bind_port(std_net["id"], base.COMPUTE_HOST)
            self.assertEqual("dvs", port["binding:vif_type"])
        self.assertEqual([], calls)
        with self.soap_calls() as calls:
            port = self.bind_port(dvs_net["id"], base.COMPUTE_HOST)
            self.assertEqual("dvs", port["binding:vif_type"])
        self.assertEqual(1, calls.count("ReconfigureDVPort_Task"), calls)
        self.assertFalse({c for c in calls if c.endswith("_Task")} -
                         {"ReconfigureDVPort_Task"}, calls)
        self.assertLessEqual(len(calls), 6, calls)
        # What the API calls' hook does next (the standard port group's
        # security follows its port), then nothing is left to do.
        self.settled()
        for net in (dvs_net, std_net):
            self.assertTrue(rec.replica.wait_until(
                lambda inv, n=net: not rec._plan(
                    inv, list(drv.backend.source({n["id"]})), {n["id"]}, set(),
                    rec._std_security(inv, list(drv.backend.source({n["id"]})),
                                      {n["id"]}))[2].steps, 10))
        with self.soap_calls() as calls:
            for net in (dvs_net, std_net):
                result = rec.sync_network(net["id"], drv.backend.source)
                self.assertEqual([], result.plan.steps)
                self.assertEqual([], result.outcome.done)
            ports = rec.sync_ports({port["id"]}, drv.backend.source,
                                   drv.backend.port_source)
            self.assertEqual([], ports.plan.steps)
            self.assertIn(port["id"], ports.plan.reserved)
        self.assertEqual([], calls)

    def test_foreign_port_group_untouched_and_create_refused(self):
        net_id = uuidutils.generate_uuid()
        name = self.dvs_name(net_id)
        self.vsphere.add_dv_portgroup("DVS0", name, 5, "made by hand")
        with self.assertRaises(ml2_exc.MechanismDriverError) as err:
            self.driver.create_network(self.context, {"network": {
                "id": net_id, "name": "clash", "admin_state_up": True,
                "tenant_id": "t1", "project_id": "t1", "shared": False,
                pnet.NETWORK_TYPE: "vlan", pnet.PHYSICAL_NETWORK: "physnet1",
                pnet.SEGMENTATION_ID: 72}})
        (inner,) = err.exception.inner_exceptions
        self.assertIsInstance(inner, exceptions.PortGroupConflict)
        self.assertIn(name, str(inner))
        self.assertIn("not made by networking-vcenter", str(inner))
        # ML2 rolled the network back; the foreign port group is as it was.
        self.assertEqual([], self.driver.get_networks(
            self.context, filters={"id": [net_id]}))
        (pg,) = self.vsphere.dv_portgroups(name)
        self.assertEqual((5, "made by hand"), (pg["vlan"], pg["description"]))

    def test_foreign_standard_port_group_untouched(self):
        net = self.make_network("vlan", "physnet2", 273)
        hosts = self.cluster_hosts()
        # An operator's own port group on another switch, other name.
        self.vsphere.add_host_portgroup(hosts[0], "vSwitch0", "ops-only", 9)
        self.delete_network(net["id"])
        self.vcenter_driver.resync(grace=0)
        self.assertEqual({hosts[0]: ("vSwitch0", 9)},
                         self.vsphere.host_portgroups("ops-only"))
        # The simulator's own port groups survive a full resync too.
        self.assertTrue(self.vsphere.dv_portgroups("DC0_DVPG0"))
        self.assertTrue(self.vsphere.host_portgroups("VM Network"))


class TestPortBinding(base.VCenterMl2TestCase):

    def test_bind_on_compute_host_dvs(self):
        net = self.make_network("vlan", "physnet1", 80)
        port = self.bind_port(net["id"], base.COMPUTE_HOST)
        self.assertEqual("dvs", port[portbindings.VIF_TYPE])
        details = port[portbindings.VIF_DETAILS]
        (pg,) = self.vsphere.dv_portgroups(self.dvs_name(net["id"]))
        self.assertEqual(pg["switch_uuid"], details["dvs_id"])
        self.assertEqual(pg["key"], details["pg_id"])
        self.assertEqual(self.dvs_name(net["id"]),
                         details["dvs_port_group_name"])
        self.assertEqual(80, details["segmentation_id"])

    def test_bind_on_compute_host_standard(self):
        net = self.make_network("vlan", "physnet2", 280)
        port = self.bind_port(net["id"], base.COMPUTE_HOST)
        self.assertEqual("dvs", port[portbindings.VIF_TYPE])
        details = port[portbindings.VIF_DETAILS]
        self.assertEqual(net["id"], details["dvs_port_group_name"])
        self.assertEqual(280, details["segmentation_id"])
        self.assertNotIn("dvs_id", details)

    def test_bind_prefers_dvs_when_both_reach_the_host(self):
        net = self.make_multi_segment_network([
            {pnet.NETWORK_TYPE: "vlan", pnet.PHYSICAL_NETWORK: "physnet2",
             pnet.SEGMENTATION_ID: 281},
            {pnet.NETWORK_TYPE: "vlan", pnet.PHYSICAL_NETWORK: "physnet1",
             pnet.SEGMENTATION_ID: 81},
        ])
        port = self.bind_port(net["id"], base.COMPUTE_HOST)
        details = port[portbindings.VIF_DETAILS]
        self.assertEqual(self.dvs_name(net["id"]),
                         details["dvs_port_group_name"])
        self.assertIn("pg_id", details)

    def test_bind_recreates_missing_port_group(self):
        net = self.make_network("vlan", "physnet1", 82)
        self.vsphere.destroy_dv_portgroup(self.dvs_name(net["id"]))
        # Once the replica has seen it go (no maintenance worker runs here),
        # the bind makes it again.
        self.assertTrue(self.vcenter_driver.backend.reconciler.replica.wait_until(
            lambda inv: not any(pg.name == self.dvs_name(net["id"])
                                for pg in inv.dvs_portgroups), 5))
        port = self.bind_port(net["id"], base.COMPUTE_HOST)
        (pg,) = self.vsphere.dv_portgroups(self.dvs_name(net["id"]))
        self.assertEqual(pg["key"], port[portbindings.VIF_DETAILS]["pg_id"])

    def test_ovs_host_left_to_openvswitch(self):
        helpers.register_ovs_agent(host=base.NETWORK_NODE,
                                   bridge_mappings={"physnet1": "br-eth1"})
        net = self.make_network("vlan", "physnet1", 83)
        port = self.bind_port(net["id"], base.NETWORK_NODE)
        self.assertEqual("ovs", port[portbindings.VIF_TYPE])
        compute = self.bind_port(net["id"], base.COMPUTE_HOST)
        self.assertEqual("dvs", compute[portbindings.VIF_TYPE])

    def test_unknown_host_not_bound_by_vcenter(self):
        net = self.make_network("vlan", "physnet1", 84)
        port = self.bind_port(net["id"], "some-kvm-host")
        self.assertEqual("binding_failed", port[portbindings.VIF_TYPE])

    def test_vxlan_network_not_bound_on_compute_host(self):
        net = self.make_network("vxlan")
        port = self.bind_port(net["id"], base.COMPUTE_HOST)
        self.assertEqual("binding_failed", port[portbindings.VIF_TYPE])


class TestGoodNeighbour(base.VCenterMl2TestCase):
    """Beside openvswitch, the driver keeps ML2's host filtering on, and
    networks it does not manage cost it nothing."""

    def test_hosts_filtered_by_segment_access(self):
        helpers.register_ovs_agent(host="net-node-a",
                                   bridge_mappings={"physnet1": "br-eth1"})
        helpers.register_ovs_agent(host="net-node-b",
                                   bridge_mappings={"physnet9": "br-eth9"})
        self.assertTrue(self.driver.mechanism_manager.host_filtering_supported)
        candidates = {"net-node-a", "net-node-b", base.COMPUTE_HOST}
        vlan = self.make_network("vlan", "physnet1", 131)
        std = self.make_network("vlan", "physnet2", 331)
        vxlan = self.make_network("vxlan")
        ctx = self.context

        def hosts(net):
            return self.driver.filter_hosts_with_network_access(
                ctx, net["id"], candidates)

        self.assertEqual({"net-node-a", base.COMPUTE_HOST}, hosts(vlan))
        # physnet2 is on the compute host's vSwitch1; no agent maps it.
        self.assertEqual({base.COMPUTE_HOST}, hosts(std))
        # Tunnels: both agents (vxlan by default), never the vSphere host.
        self.assertEqual({"net-node-a", "net-node-b"}, hosts(vxlan))

    def test_unmanaged_network_costs_no_vcenter_call(self):
        with self.soap_calls() as calls:
            net = self.make_network("vxlan")
            req = self.new_update_request("networks", {"network": {
                "name": "renamed"}}, net["id"])
            self.assertEqual(200, req.get_response(self.api).status_int)
            self.delete_network(net["id"])
            unmapped = self.make_network("vlan", "physnet3", 132)
            self.delete_network(unmapped["id"])
        self.assertEqual([], calls)

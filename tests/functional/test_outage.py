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

"""Neutron is the truth, vCenter converges: outages, restarts, hand edits.

The driver reaches the simulator through :mod:`tools.faultproxy`, which the
tests switch between passing, resetting and black-holing connections.
"""

from __future__ import annotations

import time

from pyVmomi import vim

from tests.fixtures.vcsim import Vcsim
from tests.fixtures.vsphere_reader import Reader
from tests.functional import base

# An API call may take the budget plus one vSphere call timeout; anything
# beyond this bound is a hang, whatever the machine's speed.
BUDGET = 3
HANG = BUDGET + 15


class OutageTestCase(base.ProxiedMixin, base.VCenterMl2TestCase):
    extra_ml2_vcenter = {"api_call_budget": BUDGET, "api_retry_count": 2,
                         "api_timeout": 2, "resync_grace_period": 0}

    def setUp(self):
        self.proxy.mode = "pass"
        super().setUp()

    def timed(self, fn, *args, **kwargs):
        t0 = time.monotonic()
        result = fn(*args, **kwargs)
        elapsed = time.monotonic() - t0
        self.assertLess(elapsed, HANG, "API call hung on an unavailable "
                                       "vCenter")
        return result

    def count_dvs(self, net_id):
        return len(self.vsphere.dv_portgroups(self.dvs_name(net_id)))


class TestOutages(OutageTestCase):

    def test_100_networks_while_vcenter_unreachable(self):
        self.proxy.mode = "reset"
        nets = [self.timed(self.make_network, "vlan", "physnet1", i)
                for i in range(1, 101)]
        self.assertTrue(all(self.count_dvs(n["id"]) == 0 for n in nets))
        self.proxy.mode = "pass"
        result = self.resync()           # one pass
        self.assertEqual([], result.outcome.failed)
        for net in nets:
            (pg,) = self.vsphere.dv_portgroups(self.dvs_name(net["id"]))
            self.assertEqual(net["provider:segmentation_id"], pg["vlan"])
        # A second pass finds nothing to do: nothing duplicated.
        self.assertEqual([], self.resync().plan.steps)

    def test_black_holed_vcenter_does_not_hang_the_api(self):
        self.proxy.mode = "drop"
        net = self.timed(self.make_network, "vlan", "physnet2", 290)
        self.timed(self.delete_network, net["id"])
        self.proxy.mode = "pass"
        self.assertEqual({}, self.vsphere.host_portgroups(net["id"]))

    def test_network_deleted_while_vcenter_down(self):
        dvs = self.make_network("vlan", "physnet1", 91)
        std = self.make_network("vlan", "physnet2", 291)
        self.proxy.mode = "reset"
        self.timed(self.delete_network, dvs["id"])
        self.timed(self.delete_network, std["id"])
        self.assertEqual(1, self.count_dvs(dvs["id"]))
        self.assertTrue(self.vsphere.host_portgroups(std["id"]))
        self.proxy.mode = "pass"
        self.resync()
        self.assertEqual(0, self.count_dvs(dvs["id"]))
        self.assertEqual({}, self.vsphere.host_portgroups(std["id"]))

    def test_binding_fails_clearly_while_port_group_cannot_be_made(self):
        self.proxy.mode = "reset"
        net = self.timed(self.make_network, "vlan", "physnet1", 92)
        port = self.timed(self.bind_port, net["id"], base.COMPUTE_HOST)
        self.assertEqual("binding_failed", port["binding:vif_type"])
        self.proxy.mode = "pass"
        time.sleep(0.1)
        self.resync()
        self.assertEqual(1, self.count_dvs(net["id"]))
        # vCenter answers again: the maintenance worker's heartbeat binds
        # the port again, with a DV port of its own.
        self.assertEqual(1, self.vcenter_driver.backend.rebind_failed())
        port = self.driver.get_port(self.context, port["id"])
        self.assertEqual("dvs", port["binding:vif_type"])
        self.assertIn("dvs_port_key", port["binding:vif_details"])
        self.assertEqual(0, self.vcenter_driver.backend.rebind_failed())

    def test_hand_edits_restored_foreign_untouched(self):
        dvs = self.make_network("vlan", "physnet1", 93)
        std = self.make_network("vlan", "physnet2", 293)
        clash = self.make_network("vlan", "physnet1", 94)
        hosts = self.cluster_hosts()
        # An operator deletes one, retags another on one host, and replaces
        # a third with a port group of their own of the same name.
        self.vsphere.destroy_dv_portgroup(self.dvs_name(dvs["id"]))
        self.vsphere.host(hosts[1]).configManager.networkSystem \
            .UpdatePortGroup(std["id"], vim.host.PortGroup.Specification(
                name=std["id"], vlanId=999, vswitchName="vSwitch1",
                policy=vim.host.NetworkPolicy()))
        self.vsphere.remove_host_portgroup(hosts[2], std["id"])
        self.vsphere.destroy_dv_portgroup(self.dvs_name(clash["id"]))
        foreign = self.vsphere.add_dv_portgroup(
            "DVS0", self.dvs_name(clash["id"]), 7, "made by hand")

        result = self.resync()
        self.assertEqual(1, self.count_dvs(dvs["id"]))
        self.assertEqual({h: ("vSwitch1", 293) for h in hosts},
                         self.vsphere.host_portgroups(std["id"]))
        (pg,) = self.vsphere.dv_portgroups(self.dvs_name(clash["id"]))
        self.assertEqual((foreign["moid"], 7, "made by hand"),
                         (pg["moid"], pg["vlan"], pg["description"]))
        (conflict,) = [c for c in result.outcome.conflicts
                       if c.network_id == clash["id"]]
        self.assertIn("was not made by networking-vcenter", conflict.reason)
        self.vsphere.destroy_dv_portgroup(self.dvs_name(clash["id"]))


class TestSimulatorRestartedEmpty(OutageTestCase):

    def test_next_pass_rebuilds_every_managed_port_group(self):
        dvs = self.make_network("vlan", "physnet1", 95)
        std = self.make_network("flat", "physnet2")
        # vCenter restarts with none of its state: a new simulator behind the
        # same address (the proxy), old sessions unknown to it.
        old = self.__class__.vcsim
        new = Vcsim(**self.vcsim_kwargs).start()
        self.addCleanup(new.stop)
        self.proxy.target = (new.host, new.port)
        self.proxy.cut()
        old.stop()
        reader = Reader(new.connect())
        self.assertEqual([], reader.dv_portgroups(self.dvs_name(dvs["id"])))

        result = self.resync()
        self.assertEqual([], result.outcome.failed)
        (pg,) = reader.dv_portgroups(self.dvs_name(dvs["id"]))
        self.assertEqual(95, pg["vlan"])
        self.assertEqual({h: ("vSwitch1", 0)
                          for h in reader.hosts_of_cluster(base.CLUSTER)},
                         reader.host_portgroups(std["id"]))
        self.__class__.vcsim = new   # for tearDownClass


class TestSessionExpiry(OutageTestCase):
    vcsim_kwargs = {"extra_args": ("-extra-vswitch", "vSwitch1"),
                    "idle_timeout": 1}

    def test_work_continues_after_session_expiry(self):
        first = self.make_network("vlan", "physnet1", 96)
        time.sleep(2.5)      # expiry lands between T and 2T
        second = self.make_network("vlan", "physnet2", 296)
        port = self.bind_port(first["id"], base.COMPUTE_HOST)
        self.assertEqual("dvs", port["binding:vif_type"])
        # The test's own reader session has expired too: a fresh one.
        self.vsphere = Reader(self.vcsim.connect())
        self.assertEqual(1, self.count_dvs(first["id"]))
        self.assertTrue(self.vsphere.host_portgroups(second["id"]))


class TestPortGroupInUse(OutageTestCase):
    vcsim_kwargs = {"extra_args": ("-extra-vswitch", "vSwitch1"), "vms": 1}

    def attach_vm(self, name):
        """Connect the simulator's VM to a port group, as Nova would."""
        pg = self.vsphere.dv_portgroups(name)[0]["ref"]
        vm = self.vsphere._all(vim.VirtualMachine)[0]
        nic = next(d for d in vm.config.hardware.device
                   if isinstance(d, vim.vm.device.VirtualEthernetCard))
        nic.backing = vim.vm.device.VirtualEthernetCard \
            .DistributedVirtualPortBackingInfo(
                port=vim.dvs.PortConnection(
                    switchUuid=pg.config.distributedVirtualSwitch.uuid,
                    portgroupKey=pg.key))
        spec = vim.vm.ConfigSpec(deviceChange=[vim.vm.device.VirtualDeviceSpec(
            operation="edit", device=nic)])
        self.vsphere.wait(vm.ReconfigVM_Task(spec))
        return vm, nic

    def test_delete_in_use_is_deferred_then_done(self):
        net = self.make_network("vlan", "physnet1", 97)
        name = self.dvs_name(net["id"])
        vm, nic = self.attach_vm(name)
        with self.assertLogs("networking_vcenter", level="WARNING") as logs:
            self.delete_network(net["id"])
        self.assertEqual(1, self.count_dvs(net["id"]))      # not forced
        self.assertTrue(any("still used by 1 VM" in line or "ResourceInUse"
                            in line for line in logs.output), logs.output)
        result = self.resync()                              # retried: still
        self.assertEqual(1, len(result.outcome.deferred))   # in use
        # The VM leaves the port group; the next pass deletes it.
        (dc_net,) = [n for n in self.vsphere._all(vim.Network)
                     if n.name == "VM Network"]
        nic.backing = vim.vm.device.VirtualEthernetCard.NetworkBackingInfo(
            deviceName="VM Network", network=dc_net)
        self.vsphere.wait(vm.ReconfigVM_Task(vim.vm.ConfigSpec(
            deviceChange=[vim.vm.device.VirtualDeviceSpec(operation="edit",
                                                          device=nic)])))
        result = self.resync()
        self.assertEqual([], result.outcome.deferred)
        self.assertEqual(0, self.count_dvs(net["id"]))


class TestStartWithoutVcenter(OutageTestCase):
    extra_ml2_vcenter = {**OutageTestCase.extra_ml2_vcenter,
                         "start_without_vcenter": "true"}

    def setUp(self):
        # vCenter is unreachable while Neutron (and the driver) start.
        self.proxy.mode = "reset"
        base.VCenterMl2TestCase.setUp(self)

    def test_starts_degraded_and_catches_up(self):
        self.assertFalse(self.vcenter_driver.backend.reconciler.replica.synced)
        net = self.timed(self.make_network, "vlan", "physnet1", 98)
        port = self.timed(self.bind_port, net["id"], base.COMPUTE_HOST)
        self.assertEqual("binding_failed", port["binding:vif_type"])
        self.assertEqual(0, self.count_dvs(net["id"]))
        self.proxy.mode = "pass"
        self.assertTrue(self.vcenter_driver.backend.reconciler.replica.wait_until(
            lambda inv: True, 30))
        self.resync()
        self.assertEqual(1, self.count_dvs(net["id"]))
        port = self.bind_port(net["id"], base.COMPUTE_HOST)
        self.assertEqual("dvs", port["binding:vif_type"])

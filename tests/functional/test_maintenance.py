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

"""The maintenance worker: drift repaired in seconds, with default settings.

The worker runs as Neutron runs it -- the driver's ``get_workers()``, started
in this process -- with ``resync_interval`` at its default (300 s), so every
repair below comes from the replica's events or the Neutron poll, never from
a periodic pass.
"""

from __future__ import annotations

import threading
import time
from unittest import mock

from oslo_utils import uuidutils
from pyVmomi import vim

# Neutron's test base first: it chooses oslo.service's backend, which
# importing neutron_lib.worker (the worker module) would otherwise fix.
from tests.functional import base  # noqa: I100

from networking_vcenter import agent  # noqa: I202
from networking_vcenter import backend as backend_mod
from networking_vcenter import conf
from networking_vcenter import neutron_db
from networking_vcenter.reconcile import worker as worker_mod
from tests.fixtures.vcsim import Vcsim
from tests.fixtures.vsphere_reader import Reader

# The target on the simulator.
REPAIR = 5.0


class MaintenanceTestCase(base.VCenterMl2TestCase):

    def ml2_vcenter_options(self) -> dict:
        options = super().ml2_vcenter_options()
        del options["resync_interval"]      # the default, 300 s
        return options

    def setUp(self):
        super().setUp()
        self.assertEqual(300, self.vcenter_driver.settings.resync_interval)
        (self.worker,) = [w for w in self.vcenter_driver.get_workers()
                          if isinstance(w, worker_mod.MaintenanceWorker)]
        # Neutron's test base shares one in-memory sqlite connection between
        # threads, which a real server never does: the worker's own reads of
        # Neutron wait while the test is inside an API call.
        self.db = threading.RLock()
        self.worker._start = self._start_serialized
        self.worker.start()
        self.addCleanup(self.worker._maintenance.stop)
        self.maintenance = self.worker._maintenance

    def _start_serialized(self):
        driver = self.vcenter_driver
        real_source, real_token = driver.backend.source, worker_mod.Maintenance

        def source(ids):
            with self.db:
                return list(real_source(ids))

        def token():
            with self.db:
                return neutron_db.change_token()

        def heartbeat(maintenance):
            with self.db:
                return driver.backend.report_health(maintenance)

        real_ports = driver.backend.reconciler.network_ports

        def network_ports(ids):
            # The standard port groups' security, read by the worker's
            # reconciles too; a hook thread runs inside an API call, whose
            # thread holds the lock and waits for it.
            if threading.current_thread().name.startswith("vcenter-hook"):
                return real_ports(ids)
            with self.db:
                return real_ports(ids)

        driver.backend.reconciler.network_ports = network_ports

        maintenance = real_token(
            driver.backend.reconciler, source, token,
            driver.settings.resync_interval,
            driver.settings.resync_grace_period, heartbeat=heartbeat,
            heartbeat_interval=backend_mod.agent_down_time() / 3)
        maintenance.start()
        return maintenance

    def make_network(self, *args, **kwargs):
        with self.db:
            return super().make_network(*args, **kwargs)

    def delete_network(self, net_id):
        with self.db:
            return super().delete_network(net_id)

    def within(self, seconds, predicate, what):
        t0 = time.monotonic()
        while time.monotonic() - t0 < seconds:
            if predicate():
                return time.monotonic() - t0
            time.sleep(0.1)
        self.fail(f"{what}: not within {seconds}s")

    def dvs_vlan(self, net_id):
        pgs = self.vsphere.dv_portgroups(self.dvs_name(net_id))
        return [pg["vlan"] for pg in pgs]


class TestDriftRepaired(MaintenanceTestCase):

    def test_hand_edits_repaired_within_seconds(self):
        dvs = self.make_network("vlan", "physnet1", 121)
        std = self.make_network("vlan", "physnet2", 321)
        renamed = self.make_network("vlan", "physnet1", 122)
        hosts = self.cluster_hosts()
        self.assertEqual([121], self.dvs_vlan(dvs["id"]))

        self.vsphere.destroy_dv_portgroup(self.dvs_name(dvs["id"]))
        self.within(REPAIR, lambda: self.dvs_vlan(dvs["id"]) == [121],
                    "deleted distributed port group re-created")

        self.vsphere.retag_dv_portgroup(self.dvs_name(dvs["id"]), 999)
        self.within(REPAIR, lambda: self.dvs_vlan(dvs["id"]) == [121],
                    "retagged distributed port group fixed")

        self.vsphere.host(hosts[0]).configManager.networkSystem \
            .UpdatePortGroup(std["id"], vim.host.PortGroup.Specification(
                name=std["id"], vlanId=998, vswitchName="vSwitch1",
                policy=vim.host.NetworkPolicy()))
        self.vsphere.remove_host_portgroup(hosts[1], std["id"])
        self.within(REPAIR, lambda: self.vsphere.host_portgroups(std["id"])
                    == {h: ("vSwitch1", 321) for h in hosts},
                    "standard port group retagged and removed by hand")

        (pg,) = self.vsphere.dv_portgroups(self.dvs_name(renamed["id"]))
        spec = vim.dvs.DistributedVirtualPortgroup.ConfigSpec(
            name="renamed-by-hand", configVersion=pg["ref"].config
            .configVersion, description=pg["description"],
            defaultPortConfig=pg["ref"].config.defaultPortConfig,
            type="earlyBinding", numPorts=8, autoExpand=True)
        self.vsphere.wait(pg["ref"].ReconfigureDVPortgroup_Task(spec))
        self.within(REPAIR, lambda: self.dvs_vlan(renamed["id"]) == [122]
                    and not self.vsphere.dv_portgroups("renamed-by-hand"),
                    "renamed port group back under its name")

    def test_foreign_port_group_only_reported(self):
        net = self.make_network("vlan", "physnet1", 123)
        # Swapped while the worker cannot read Neutron (it would otherwise
        # make ours again between the two calls, and the name be taken).
        with self.db:
            self.vsphere.destroy_dv_portgroup(self.dvs_name(net["id"]))
            foreign = self.vsphere.add_dv_portgroup(
                "DVS0", self.dvs_name(net["id"]), 7, "made by hand")
        time.sleep(REPAIR)
        (pg,) = self.vsphere.dv_portgroups(self.dvs_name(net["id"]))
        self.assertEqual((foreign["moid"], 7, "made by hand"),
                         (pg["moid"], pg["vlan"], pg["description"]))
        plan = self.vcenter_driver.backend.reconciler.sync_network(
            net["id"], self.vcenter_driver.backend.source, dry_run=True).plan
        (conflict,) = plan.conflicts
        self.assertIn("was not made by networking-vcenter", conflict.reason)
        self.vsphere.destroy_dv_portgroup(self.dvs_name(net["id"]))

    def test_work_an_api_call_did_not_do_is_finished(self):
        """A network whose API hook did nothing (as when it ran out of time)
        gets its port group from the worker's Neutron poll."""
        driver = self.vcenter_driver
        with mock.patch.object(driver.backend, "network_changed",
                               return_value=[]):
            net = self.make_network("vlan", "physnet1", 124)
        self.assertEqual([], self.dvs_vlan(net["id"]))
        self.within(REPAIR, lambda: self.dvs_vlan(net["id"]) == [124],
                    "port group made by the maintenance worker")
        self.delete_network(net["id"])
        # The delete's own hook normally removes it at once; here it may
        # wait out its budget instead: this test's harness holds the shared
        # sqlite connection across the API call while the worker, holding the
        # network's lock, waits for that connection (no server has that).
        self.within(REPAIR, lambda: self.dvs_vlan(net["id"]) == [],
                    "port group deleted")

    def test_host_joining_a_mapped_cluster_gets_the_port_groups(self):
        std = self.make_network("vlan", "physnet2", 322)
        cluster = self.vsphere._all(vim.ClusterComputeResource)
        (cluster,) = [c for c in cluster if c.name == base.CLUSTER]
        name = f"new-host-{uuidutils.generate_uuid()[:8]}"
        self.vsphere.wait(cluster.AddHost_Task(
            spec=vim.host.ConnectSpec(hostName=name), asConnected=True))
        host = self.vsphere.host(name)
        # The operator sets the new host up with the mapped vSwitch.
        host.configManager.networkSystem.AddVirtualSwitch(
            "vSwitch1", vim.host.VirtualSwitch.Specification(numPorts=128))
        self.within(REPAIR, lambda: self.vsphere.host_portgroups(std["id"])
                    .get(name) == ("vSwitch1", 322),
                    "port group on the new host")


class TestVcenterRestartedEmpty(base.ProxiedMixin, MaintenanceTestCase):
    """vCenter comes back with none of its state (a new simulator behind the
    same address): the replica reads it anew and the worker rebuilds --
    with the re-read spread at its default (the other tests set it to 0)."""

    extra_ml2_vcenter = {"reread_spread": next(
        o.default for o in conf.ALL_OPTS if o.dest == "reread_spread")}

    def test_rebuilt_without_waiting_for_the_interval(self):
        self.assertGreater(self.vcenter_driver.settings.reread_spread, 0)
        dvs = self.make_network("vlan", "physnet1", 125)
        std = self.make_network("flat", "physnet2")
        old = self.__class__.vcsim
        new = Vcsim(**self.vcsim_kwargs).start()
        self.addCleanup(new.stop)
        self.vsphere = Reader(new.connect())
        self.addCleanup(self.vsphere.close)
        self.assertEqual([], self.dvs_vlan(dvs["id"]))      # empty
        self.proxy.target = (new.host, new.port)
        self.proxy.cut()
        old.stop()
        self.__class__.vcsim = new   # for tearDownClass
        # Session lost, replica re-read, full pass: well within a minute,
        # nowhere near resync_interval.
        took = self.within(60, lambda: self.dvs_vlan(dvs["id"]) == [125] and
                           self.vsphere.host_portgroups(std["id"]) ==
                           {h: ("vSwitch1", 0) for h in self.cluster_hosts()},
                           "rebuilt after vCenter came back empty")
        self.assertLess(took, 60)


class TestHealthInAgentList(base.ProxiedMixin, MaintenanceTestCase):
    """The backend's row in Neutron's agents API: alive while vCenter
    answers, down ``agent_down_time`` (its default, 75 s) after it stops,
    alive again when it is back -- no agent involved."""

    def agent_row(self):
        with self.db:
            rows = self.driver.get_agents(
                self.context, filters={"agent_type": [agent.AGENT_TYPE]})
        self.assertEqual(1, len(rows), rows)
        return rows[0]

    def test_alive_down_alive(self):
        from neutron_lib import context as n_context
        self.context = n_context.get_admin_context()
        self.within(10, lambda: self.maintenance.beats > 0, "first beat")
        row = self.agent_row()
        self.assertTrue(row["alive"])
        self.assertEqual((agent.BINARY, f"default@{self.vcsim.host}"),
                         (row["binary"], row["host"]))
        configuration = row["configurations"]
        self.assertEqual(f"{self.vcsim.host}:{self.proxy.port}",
                         configuration["vcenter"])
        self.assertEqual({"physnet1": "DVS0", "physnet2": "vSwitch1"},
                         configuration["switch_mappings"])
        self.assertIn("last_full_pass", configuration)

        self.proxy.mode = "reset"       # vCenter stops answering
        t0 = time.monotonic()
        self.within(75 + 25 + 15, lambda: not self.agent_row()["alive"],
                    "agent row down")
        self.assertGreater(time.monotonic() - t0, 40)   # not at once
        self.proxy.mode = "pass"
        self.within(30, lambda: self.agent_row()["alive"], "alive again")

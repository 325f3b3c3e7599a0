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

"""Two vCenters behind one Neutron ([ml2_vcenter] vcenters): two
simulators, the second reached through :mod:`tools.faultproxy`.  physnet1
is mapped in both, physnet2 only in the first: a network gets its port
groups in every vCenter that maps its physical network, a port binds in
the vCenter of its host, with its own DV port there, and the second
vCenter black-holed changes nothing for the first."""

from __future__ import annotations

import time

from neutron_lib.api.definitions import portbindings

from tests.functional import base

from networking_vcenter import agent  # noqa: I202
from tests.fixtures.vcsim import Vcsim
from tests.fixtures.vsphere_reader import Reader

HOST_A = base.COMPUTE_HOST
HOST_B = "vc-compute-b"


class TestTwoVcenters(base.VCenterMl2TestCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.vcsim_b = Vcsim(**cls.vcsim_kwargs).start()
        cls.vsphere_b = Reader(cls.vcsim_b.connect())
        cls.proxy_b = base.faultproxy.FaultProxy(cls.vcsim_b.host,
                                                 cls.vcsim_b.port).start()

    @classmethod
    def tearDownClass(cls):
        cls.proxy_b.stop()
        cls.vsphere_b.close()
        cls.vcsim_b.stop()
        super().tearDownClass()

    def setUp(self):
        self.proxy_b.mode = "pass"
        super().setUp()
        self.addCleanup(setattr, self.proxy_b, "mode", "pass")

    def ml2_vcenter_ini(self) -> str:
        shared = {k: v for k, v in self.ml2_vcenter_options().items()
                  if k not in ("host_ip", "host_port", "switch_mappings",
                               "compute_hosts")}
        lines = [f"{k} = {v}" for k, v in shared.items()]
        return "\n".join([
            "[ml2_vcenter]", "vcenters = site-a, site-b", *lines,
            "[ml2_vcenter:site-a]",
            f"host_ip = {self.vcsim.host}", f"host_port = {self.vcsim.port}",
            "switch_mappings = physnet1:DVS0, physnet2:vSwitch1",
            f"compute_hosts = {HOST_A}:{base.CLUSTER}",
            "[ml2_vcenter:site-b]",
            f"host_ip = {self.proxy_b.host}",
            f"host_port = {self.proxy_b.port}",
            "switch_mappings = physnet1:DVS0",
            f"compute_hosts = {HOST_B}:{base.CLUSTER}",
            "[ml2_type_vxlan]", "vni_ranges = 1:1000", ""])

    def vlans(self, reader, net_id):
        return [pg["vlan"] for pg in reader.dv_portgroups(
            self.dvs_name(net_id))]

    def reserved(self, reader, port):
        """Keys of the DV ports of DVS0 named by the port."""
        return [p.key for p in reader.dvs("DVS0").FetchDVPorts()
                if p.config.name == port["id"]]

    def test_a_backend_per_vcenter(self):
        a, b = self.vcenter_driver.backends
        self.assertEqual(["site-a", "site-b"], [a.settings.name,
                                                b.settings.name])
        self.assertEqual(["ml2_vcenter:site-a", "ml2_vcenter:site-b"],
                         [a.settings.section, b.settings.section])
        # Each its own session, replica, locks and agent row.
        self.assertIsNot(a.reconciler.session, b.reconciler.session)
        self.assertIsNot(a.reconciler.replica, b.reconciler.replica)
        self.assertEqual({"default@site-a", "default@site-b"},
                         {agent.host(a.settings), agent.host(b.settings)})
        self.assertEqual([True, False, False, True],
                         [a.serves(HOST_A), a.serves(HOST_B),
                          b.serves(HOST_A), b.serves(HOST_B)])

    def test_network_in_each_vcenter_that_maps_it_ports_in_their_own(self):
        both = self.make_network("vlan", "physnet1", 131)
        only_a = self.make_network("vlan", "physnet2", 132)
        self.assertEqual([131], self.vlans(self.vsphere, both["id"]))
        self.assertEqual([131], self.vlans(self.vsphere_b, both["id"]))
        # physnet2 is a standard vSwitch in site-a only.
        self.assertEqual([], self.vlans(self.vsphere_b, only_a["id"]))
        self.assertTrue(self.vsphere.host_portgroups(only_a["id"]))
        self.assertFalse(self.vsphere_b.host_portgroups(only_a["id"]))

        port_a = self.bind_port(both["id"], HOST_A)
        port_b = self.bind_port(both["id"], HOST_B)
        self.settled()
        for port, mine, other in ((port_a, self.vsphere, self.vsphere_b),
                                  (port_b, self.vsphere_b, self.vsphere)):
            self.assertEqual("dvs", port[portbindings.VIF_TYPE], port)
            details = port[portbindings.VIF_DETAILS]
            self.assertEqual(131, details["segmentation_id"])
            # Its DV port in the vCenter of its host, none in the other.
            self.assertEqual([details["dvs_port_key"]],
                             self.reserved(mine, port))
            self.assertEqual(details["dvs_id"], mine.dvs("DVS0").uuid)
            self.assertEqual([], self.reserved(other, port))

        self._delete("ports", port_a["id"])
        self._delete("ports", port_b["id"])
        self.delete_network(both["id"])
        self.delete_network(only_a["id"])
        self.assertEqual([], self.vlans(self.vsphere, both["id"]))
        self.assertEqual([], self.vlans(self.vsphere_b, both["id"]))
        self.assertFalse(self.vsphere.host_portgroups(only_a["id"]))

    def test_one_vcenter_black_holed_changes_nothing_for_the_other(self):
        budget = self.vcenter_driver.settings.api_call_budget
        self.proxy_b.mode = "drop"
        t0 = time.monotonic()
        net = self.make_network("vlan", "physnet2", 133)
        port = self.bind_port(net["id"], HOST_A)
        took = time.monotonic() - t0
        self.assertEqual("dvs", port[portbindings.VIF_TYPE], port)
        self.assertTrue(self.vsphere.host_portgroups(net["id"]))
        # Far inside the deadline site-b's calls would wait out.
        self.assertLess(took, budget / 4, f"{took:.1f}s")
        self._delete("ports", port["id"])
        self.delete_network(net["id"])
        # Stopping does not wait out the black hole (it did for 15 s: the
        # replica's cancel, its thread, the logout, each on its own).
        b = self.vcenter_driver.backends[1]
        t0 = time.monotonic()
        b.reconciler.close()
        # reconciler.CLOSE_BUDGET (5 s), and a little.
        self.assertLess(time.monotonic() - t0, 6.0)

    def test_each_vcenter_its_own_health(self):
        """site-b refusing connections: its heartbeat says down (its agent
        row is not refreshed), site-a's goes on."""
        from unittest import mock
        a, b = self.vcenter_driver.backends
        maintenance = mock.Mock(last_pass=None, last_pass_at=None, beats=0)
        self.assertEqual([True, True], [a.report_health(maintenance),
                                        b.report_health(maintenance)])
        self.proxy_b.mode = "reset"
        deadline = time.monotonic() + 30
        while b.reconciler.replica.current and time.monotonic() < deadline:
            time.sleep(0.2)
        self.assertFalse(b.reconciler.replica.current)
        self.assertTrue(a.reconciler.replica.current)
        self.assertEqual([True, False], [a.report_health(maintenance),
                                         b.report_health(maintenance)])

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

"""What one bind costs vCenter (issue 15), through Neutron's real ML2 plugin.

A port bound on an existing distributed-switch network gets its DV port with
one vCenter write: the ReconfigureDVPort_Task that reserves it, carrying the
port's settings.  The task is awaited on the replica's collector (one
CreateFilter; no collector of its own), and the port written is read back by
the replica's own thread when it sees the task end, before the bind goes on:
the replica then holds vCenter's new configVersion, so the next change of
the port plans with it and is not refused.

Every SOAP request is counted with the thread that made it; the replica's
own long poll (WaitForUpdatesEx in its thread) is left out.
"""

from __future__ import annotations

import collections

from neutron_lib.api.definitions import portbindings

from tests.functional import base
from tests.fixtures.vsphere_reader import dv_port_rules
from tests.functional.test_ports import PortsTestCase
from tests.functional.test_ports_vsphere import REPLICA, requests



class TestBindRequests(PortsTestCase):

    @staticmethod
    def on_path(calls):
        """{method: count} of the requests the bind itself made (every
        thread but the replica's)."""
        return dict(collections.Counter(m for t, m in calls if t != REPLICA))

    @staticmethod
    def of_replica(calls):
        return dict(collections.Counter(m for t, m in calls if t == REPLICA))

    def create_port(self, net_id, **kw):
        """The API call alone: the port made and bound (the hook's port
        sync that follows is left to settled())."""
        args = {portbindings.HOST_ID: base.COMPUTE_HOST, **kw}
        res = self._create_port(self.fmt, net_id, is_admin=True,
                                arg_list=tuple(args), **args)
        body = self.deserialize(self.fmt, res)
        self.assertEqual(201, res.status_int, body)
        self.assertEqual("dvs", body["port"][portbindings.VIF_TYPE], body)
        return body["port"]

    def held(self, port):
        """The DV port of ``port`` as the driver's replica holds it."""
        details = port[portbindings.VIF_DETAILS]
        rec = self.vcenter_driver.backend.reconciler
        (held,) = [p for p in rec.replica.snapshot().dv_ports[
            details["pg_id"]] if p.key == details["dvs_port_key"]]
        return held

    def existing_network(self, vlan):
        """A network on the distributed switch whose port group exists,
        the replica caught up with it, and a security group."""
        net = self.make_net(vlan)
        sg = self.make_sg(f"bind-requests-{vlan}")
        self.port_on(net["id"], security_groups=[sg["id"]])
        self.replica_caught_up()
        return net, sg

    def test_a_bind_is_one_write_awaited_on_the_replica(self):
        net, sg = self.existing_network(96)
        rec = self.vcenter_driver.backend.reconciler
        self.assertIs(rec.replica, rec.session.watcher)
        with requests() as calls:
            port = self.create_port(net["id"], security_groups=[sg["id"]])
            held = self.held(port)      # at once: no wait for the replica
        # The bind: the reservation (the port's settings in it) and the
        # filter that watches its task on the replica's collector.
        self.assertEqual({"ReconfigureDVPort_Task": 1, "CreateFilter": 1},
                         self.on_path(calls), calls)
        # The replica read the port written (one narrow read) when it saw
        # the task end.
        self.assertEqual(1, self.of_replica(calls).get("FetchDVPorts"),
                         calls)
        self.assertFalse({"CreatePropertyCollector",
                          "DestroyPropertyCollector"} &
                         {m for _, m in calls}, calls)

        # The replica holds the port as vCenter has it: named for it, with
        # its settings and vCenter's new configVersion.
        dvp = self.dv_port(port)
        self.assertEqual(port["id"], dvp.config.name)
        self.assertEqual((port["id"], dvp.config.configVersion),
                         (held.name, held.config_version))
        self.assertTrue(held.settings.rules)

        # What the API call's hook does next plans nothing: no request.
        with requests() as calls:
            self.settled()
        self.assertEqual({}, self.on_path(calls), calls)

        # A rule change plans with the configVersion the replica read and
        # is taken at once: one task for the group's two ports, not refused
        # (a ConcurrentModification would read the group and write again).
        with requests() as calls:
            self.add_rule(sg["id"], protocol=6, port_range_min=2222,
                          port_range_max=2222,
                          remote_ip_prefix="198.51.100.0/24")
            self.settled()
        self.assertEqual({"ReconfigureDVPort_Task": 1, "CreateFilter": 1},
                         self.on_path(calls), calls)
        after = self.dv_port(port)
        self.assertEqual(int(dvp.config.configVersion) + 1,
                         int(after.config.configVersion))
        self.assertIn(("198.51.100.0/24", (2222, 2222)), [
            (r["source"][0], r["dports"])
            for r in dv_port_rules(after.config.setting) if r["source"]])
        self.assertEqual(after.config.configVersion,
                         self.held(port).config_version)

    def test_without_the_replica_a_bind_waits_on_its_own_collector(self):
        """The session's own task wait (the CLI's; a replica that is not
        current): a collector made and destroyed for the task, and the port
        read back in the bind's thread -- what every bind cost before."""
        net, sg = self.existing_network(97)
        rec = self.vcenter_driver.backend.reconciler
        rec.session.detach(rec.replica)
        self.addCleanup(rec.session.attach, rec.replica)
        with requests() as calls:
            port = self.create_port(net["id"], security_groups=[sg["id"]])
        self.assertEqual({"ReconfigureDVPort_Task": 1,
                          "CreatePropertyCollector": 1, "CreateFilter": 1,
                          "WaitForUpdatesEx": 1,
                          "DestroyPropertyCollector": 1, "FetchDVPorts": 1},
                         self.on_path(calls), calls)
        self.assertEqual(self.dv_port(port).config.configVersion,
                         self.held(port).config_version)

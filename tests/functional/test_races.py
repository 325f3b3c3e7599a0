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

"""Ownership on the race paths, deterministically.

A port group of the network's name appears *between the driver's read and its
write*: the test wraps the vSphere write function the applier calls and makes
the port group with its own session just before the driver's write goes out
(no sleeps, no timing).  A foreign one must be left exactly as it was -- same
VLAN, no mark, no copies of ours joined to it -- and reported as a conflict
(the network create is refused naming it); one that is exactly what the driver
would have made is success.  Through Neutron's real ML2 plugin against the
simulator.
"""

from __future__ import annotations

import threading
from unittest import mock

from networking_vcenter.vsphere import inventory
from networking_vcenter.vsphere import switches
from tests.functional import base


class RaceTestCase(base.VCenterMl2TestCase):

    def create_network(self, physnet, vlan):
        """Create through the API; (status, body)."""
        args = {"provider:network_type": "vlan",
                "provider:physical_network": physnet,
                "provider:segmentation_id": vlan}
        res = self._create_network(self.fmt, "race", True, as_admin=True,
                                   arg_list=tuple(args), **args)
        return res.status_int, self.deserialize(self.fmt, res)

    def race_host_writes(self, vswitch, vlan):
        """Wrap switches.add_host_port_group: before the driver's first
        write, make a port group of that name on that host ourselves.
        Returns [(host, name)] once it has fired."""
        made: list[tuple[str, str]] = []
        lock = threading.Lock()
        real = switches.add_host_port_group

        def racing(session, ns, host, name, *args, **kwargs):
            with lock:
                if not made:
                    self.vsphere.add_host_portgroup(host, vswitch, name, vlan)
                    made.append((host, name))
            return real(session, ns, host, name, *args, **kwargs)

        patcher = mock.patch.object(switches, "add_host_port_group", racing)
        patcher.start()
        self.addCleanup(patcher.stop)
        return made, patcher

    def owner_marks(self, network):
        return [cv.value for cv in network.customValue or []]


class TestStandardPortGroupRace(RaceTestCase):

    def test_foreign_port_group_appearing_before_the_write(self):
        made, patcher = self.race_host_writes("vSwitch1", 7)
        status, body = self.create_network("physnet2", 301)
        patcher.stop()
        ((host, name),) = made

        # Refused, naming the port group and saying why.
        self.assertEqual(409, status, body)
        message = body["NeutronError"]["message"]
        self.assertIn(name, message)
        self.assertIn(host, message)
        self.assertIn("VLAN 7", message)
        self.assertIn("not the one networking-vcenter would make", message)
        # Exactly as it was: one host, VLAN 7, no mark; the copies the
        # driver had made on the other hosts are gone again.
        self.assertEqual({host: ("vSwitch1", 7)},
                         self.vsphere.host_portgroups(name))
        (network,) = self.vsphere.networks_named(name)
        self.assertEqual([host], [h.name for h in network.host])
        self.assertEqual([], self.owner_marks(network))
        self.vsphere.remove_host_portgroup(host, name)

    def test_foreign_port_group_on_another_vswitch(self):
        made, patcher = self.race_host_writes("vSwitch0", 302)
        status, body = self.create_network("physnet2", 302)
        patcher.stop()
        ((host, name),) = made
        self.assertEqual(409, status, body)
        self.assertIn("vSwitch0", body["NeutronError"]["message"])
        self.assertEqual({host: ("vSwitch0", 302)},
                         self.vsphere.host_portgroups(name))
        (network,) = self.vsphere.networks_named(name)
        self.assertEqual([], self.owner_marks(network))
        self.vsphere.remove_host_portgroup(host, name)

    def test_exactly_ours_appearing_before_the_write_is_success(self):
        """What another worker of this deployment makes mid-creation (our
        vSwitch, our VLAN, the network's UUID, unmarked) is taken."""
        made, patcher = self.race_host_writes("vSwitch1", 303)
        status, body = self.create_network("physnet2", 303)
        patcher.stop()
        self.assertEqual(201, status, body)
        net_id = body["network"]["id"]
        self.assertEqual([(made[0][0], net_id)], made)
        self.assertEqual({h: ("vSwitch1", 303) for h in self.cluster_hosts()},
                         self.vsphere.host_portgroups(net_id))
        (network,) = self.vsphere.networks_named(net_id)
        self.assertEqual([inventory.owner_value("default", net_id)],
                         self.owner_marks(network))
        self.delete_network(net_id)
        self.assertEqual({}, self.vsphere.host_portgroups(net_id))


class TestDistributedPortGroupRace(RaceTestCase):

    def test_foreign_port_group_appearing_before_the_write(self):
        made: dict[str, dict] = {}
        real = switches.create_dvs_port_groups

        def racing(session, dvs, specs, switch):
            for spec in specs:
                if spec.name not in made:
                    made[spec.name] = self.vsphere.add_dv_portgroup(
                        "DVS0", spec.name, 7, "made by hand")
            return real(session, dvs, specs, switch)

        with mock.patch.object(switches, "create_dvs_port_groups", racing):
            status, body = self.create_network("physnet1", 104)
        ((name, foreign),) = made.items()

        self.assertEqual(409, status, body)
        message = body["NeutronError"]["message"]
        self.assertIn(name, message)
        self.assertIn(foreign["moid"], message)
        self.assertIn("was not made by networking-vcenter", message)
        (pg,) = self.vsphere.dv_portgroups(name)
        self.assertEqual((foreign["moid"], 7, "made by hand"),
                         (pg["moid"], pg["vlan"], pg["description"]))
        self.vsphere.destroy_dv_portgroup(name)

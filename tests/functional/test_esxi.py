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

"""The same lifecycle against a standalone ESXi host (no vCenter, no DVS).

A standalone host has no custom attributes, so a standard port group is known
as ours by its name alone: exactly the UUID of a Neutron network.
"""

from __future__ import annotations

from neutron_lib.api.definitions import portbindings

from tests.functional import base

ESXI = "localhost.localdomain"


class TestStandaloneEsxi(base.VCenterMl2TestCase):
    vcsim_kwargs = {"model": "esx", "extra_args": ("-extra-vswitch",
                                                   "vSwitch1")}
    switch_mappings = "physnet2:vSwitch1"
    compute_hosts = f"{base.COMPUTE_HOST}:{ESXI}"

    def test_lifecycle(self):
        self.assertEqual("HostAgent", self.vsphere.content.about.apiType)
        vlan = self.make_network("vlan", "physnet2", 210)
        flat = self.make_network("flat", "physnet2")
        self.assertEqual({ESXI: ("vSwitch1", 210)},
                         self.vsphere.host_portgroups(vlan["id"]))
        self.assertEqual({ESXI: ("vSwitch1", 0)},
                         self.vsphere.host_portgroups(flat["id"]))

        port = self.bind_port(vlan["id"], base.COMPUTE_HOST)
        self.assertEqual("dvs", port[portbindings.VIF_TYPE])
        self.assertEqual(vlan["id"],
                         port[portbindings.VIF_DETAILS]["dvs_port_group_name"])
        self.assertEqual(210,
                         port[portbindings.VIF_DETAILS]["segmentation_id"])
        # Its port group now rejects forged transmits, MAC changes and
        # promiscuous mode: its only port has port security.
        self.settled()
        self.assertEqual({ESXI: (False, False, False)},
                         self.vsphere.host_portgroup_security(vlan["id"]))

        # Hand edits: a retagged port group is fixed by a resync, the
        # host's own port groups are untouched.
        self.vsphere.host(ESXI).configManager.networkSystem.UpdatePortGroup(
            flat["id"], _spec(flat["id"], "vSwitch1", 99))
        result = self.resync()
        self.assertEqual(["retag"], [s.verb for s in result.plan.steps])
        self.assertEqual({ESXI: ("vSwitch1", 0)},
                         self.vsphere.host_portgroups(flat["id"]))

        self._delete_port(port["id"])
        self.delete_network(vlan["id"])
        self.delete_network(flat["id"])
        self.assertEqual({}, self.vsphere.host_portgroups(vlan["id"]))
        self.assertEqual({}, self.vsphere.host_portgroups(flat["id"]))
        self.assertEqual({ESXI: ("vSwitch0", 0)},
                         self.vsphere.host_portgroups("VM Network"))

    def _delete_port(self, port_id):
        req = self.new_delete_request("ports", port_id, as_admin=True)
        self.assertEqual(204, req.get_response(self.api).status_int)


def _spec(name, vswitch, vlan):
    from pyVmomi import vim
    return vim.host.PortGroup.Specification(
        name=name, vlanId=vlan, vswitchName=vswitch,
        policy=vim.host.NetworkPolicy())

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

"""Neutron trunks on the distributed switch: the real ML2 plugin with
Neutron's trunk service plugin (and QoS, security groups, port security)
against the simulator.

A trunk's parent port gets a VLAN trunk (guest tagging) on its DV port: its
network's VLAN and each subport network's, read back here with plain pyVmomi
(tests/fixtures/vsphere_reader.py); subports are bound on the parent's host
with no DV port of their own.
"""

from __future__ import annotations

import contextlib
import io
import json
from unittest import mock

from neutron_lib.api.definitions import portbindings

from networking_vcenter import cli
from networking_vcenter import neutron_db
from tests.functional import base
from tests.functional import test_ports

TRUNK_PLUGIN = "neutron.services.trunk.plugin.TrunkPlugin"
HOST = base.COMPUTE_HOST


def patch_trunk_details_macs(test) -> None:
    """The trunk plugin extends a parent's port dict with its subports'
    MACs, read under a new admin context.  On the tests' in-memory sqlite
    every session shares one connection, so closing that reader rolls back
    the transaction the dict is made in (a parent's status update is then
    silently lost), as with QoS (base.patch_qos_resource_requests).  Here
    that read answers nothing: ``trunk_details`` lack the subports' MACs,
    which these tests do not read."""
    from neutron.services.trunk import plugin

    class NoPorts:
        @staticmethod
        def get_plugin(alias=None):
            return mock.Mock(get_ports=lambda *a, **kw: [])

    patcher = mock.patch.object(plugin, "directory", NoPorts)
    patcher.start()
    test.addCleanup(patcher.stop)


class TrunksTestCase(test_ports.PortsTestCase):
    vcsim_kwargs = {**test_ports.PortsTestCase.vcsim_kwargs, "vms": 1}

    def get_additional_service_plugins(self):
        return {**super().get_additional_service_plugins(),
                "trunk": TRUNK_PLUGIN}

    def setUp(self):
        super().setUp()
        patch_trunk_details_macs(self)

    # -- helpers -------------------------------------------------------------

    def call(self, method, resource, data=None, id=None, action=None,
             expect=None):
        req = self._admin_req(method, resource, data, self.fmt, id=id,
                              action=action)
        res = req.get_response(self.api)
        body = self.deserialize(self.fmt, res) if res.body else None
        if expect is not None:
            self.assertEqual(expect, res.status_int, body)
        return res.status_int, body

    def unbound_port(self, net_id, **kw):
        res = self._create_port(self.fmt, net_id, is_admin=True,
                                arg_list=tuple(kw), **kw)
        body = self.deserialize(self.fmt, res)
        self.assertEqual(201, res.status_int, body)
        return body["port"]

    @staticmethod
    def sub(port, vlan=None, kind="vlan"):
        found = {"port_id": port["id"], "segmentation_type": kind}
        if vlan is not None:
            found["segmentation_id"] = vlan
        return found

    def trunk(self, parent, *subports, expect=201):
        status, body = self.call("POST", "trunks", {"trunk": {
            "port_id": parent["id"], "sub_ports": list(subports)}},
            expect=expect)
        self.settled()
        return body["trunk"] if status == 201 else body

    def get_trunk(self, trunk_id):
        return self.call("GET", "trunks", id=trunk_id, expect=200)[1]["trunk"]

    def port(self, port_id):
        return self.driver.get_port(self.context, port_id)

    def vlan_of(self, port):
        """The parent's DV port's VLAN setting, read from vCenter."""
        return self.vsphere.dv_port_vlan(
            "DVS0", port[portbindings.VIF_DETAILS]["dvs_port_key"])

    def assert_subport_bound(self, port_id, vlan, status="DOWN"):
        port = self.port(port_id)
        self.assertEqual(HOST, port[portbindings.HOST_ID])
        self.assertEqual("dvs", port[portbindings.VIF_TYPE])
        self.assertEqual("trunk:subport", port["device_owner"])
        details = port[portbindings.VIF_DETAILS]
        self.assertNotIn("dvs_port_key", details)
        self.assertEqual(vlan, details["segmentation_id"])
        self.assertEqual(status, port["status"])


class TestTrunks(TrunksTestCase):

    def test_two_subports_on_the_parents_dv_port(self):
        parent_net, a, b = (self.make_net(v) for v in (120, 121, 125))
        parent = self.port_on(parent_net["id"])
        sa, sb = self.unbound_port(a["id"]), self.unbound_port(b["id"])
        self.assertEqual((("vlan", 120), True), self.vlan_of(parent))
        trunk = self.trunk(parent, self.sub(sa, 121),
                           self.sub(sb, kind="inherit"))
        # The parent's VLAN and both subports', collapsed into ranges.
        self.assertEqual((("trunk", [(120, 121), (125, 125)]), False),
                         self.vlan_of(parent))
        self.assert_subport_bound(sa["id"], 121)
        self.assert_subport_bound(sb["id"], 125)
        self.assertEqual("ACTIVE", self.get_trunk(trunk["id"])["status"])
        # The DV port's name and filter are the parent's as before.
        self.assertEqual(parent["id"], self.dv_port(parent).config.name)

    def test_subports_follow_the_parents_nic(self):
        parent_net, a = self.make_net(140), self.make_net(141)
        parent = self.port_on(parent_net["id"])
        sa = self.unbound_port(a["id"])
        self.trunk(parent, self.sub(sa, 141))
        self.assert_subport_bound(sa["id"], 141, status="DOWN")
        details = parent[portbindings.VIF_DETAILS]
        vm = self.vsphere.attach_nic("DC0_C0_RP0_VM0", parent["mac_address"],
                                     details)
        drv = self.vcenter_driver
        self.assertTrue(drv.backend.reconciler.replica.wait_until(
            lambda inv: any(p.connected for ps in inv.dv_ports.values()
                            for p in ps if p.name == parent["id"]), 10))
        drv.backend.reconciler.sync_ports({parent["id"]}, drv.backend.source,
                                          drv.backend.port_source)
        self.assertEqual("ACTIVE", self.port(parent["id"])["status"])
        self.assert_subport_bound(sa["id"], 141, status="ACTIVE")
        # The trunk survives the NIC: still carried.
        self.assertEqual((("trunk", [(140, 141)]), False),
                         self.vlan_of(parent))
        self.vsphere.detach_nic(vm, details["dvs_port_key"])
        self.assertTrue(drv.backend.reconciler.replica.wait_until(
            lambda inv: not any(p.connected for ps in inv.dv_ports.values()
                                for p in ps if p.name == parent["id"]), 10))
        drv.backend.reconciler.sync_ports({parent["id"]}, drv.backend.source,
                                  drv.backend.port_source)
        self.assert_subport_bound(sa["id"], 141, status="DOWN")

    def test_subport_add_and_remove_update_the_dv_port(self):
        parent_net, a, b = (self.make_net(v) for v in (150, 151, 160))
        parent = self.port_on(parent_net["id"])
        sa, sb = self.unbound_port(a["id"]), self.unbound_port(b["id"])
        trunk = self.trunk(parent, self.sub(sa, 151))
        prints = neutron_db.port_fingerprints({HOST})
        self.call("PUT", "trunks", {"sub_ports": [self.sub(sb, 160)]},
                  id=trunk["id"], action="add_subports", expect=200)
        self.settled()
        # The worker would see it too, had the hook missed it.
        self.assertNotEqual(prints[parent["id"]], neutron_db.port_fingerprints(
            {HOST})[parent["id"]])
        self.assertEqual((("trunk", [(150, 151), (160, 160)]), False),
                         self.vlan_of(parent))
        self.assert_subport_bound(sb["id"], 160)
        self.assertEqual("ACTIVE", self.get_trunk(trunk["id"])["status"])
        self.call("PUT", "trunks", {"sub_ports": [{"port_id": sa["id"]}]},
                  id=trunk["id"], action="remove_subports", expect=200)
        self.settled()
        self.assertEqual((("trunk", [(150, 150), (160, 160)]), False),
                         self.vlan_of(parent))
        removed = self.port(sa["id"])
        self.assertEqual("", removed[portbindings.HOST_ID])
        self.assertEqual("", removed["device_owner"])
        self.assertEqual("ACTIVE", self.get_trunk(trunk["id"])["status"])
        # No longer a trunk parent: the port group's VLAN again.
        self.call("DELETE", "trunks", id=trunk["id"], expect=204)
        self.settled()
        self.assertEqual((("vlan", 150), True), self.vlan_of(parent))
        self.assertEqual("", self.port(sb["id"])[portbindings.HOST_ID])

    def test_parent_bound_after_the_trunk_is_made(self):
        """Nova's order: the trunk first, then the VM on its parent."""
        parent_net, a = self.make_net(170), self.make_net(171)
        parent = self.unbound_port(parent_net["id"])
        sa = self.unbound_port(a["id"])
        trunk = self.trunk(parent, self.sub(sa, 171))
        self.assertEqual("", self.port(sa["id"])[portbindings.HOST_ID])
        self.assertEqual("DOWN", self.get_trunk(trunk["id"])["status"])
        parent = self.update_port(parent["id"],
                                  **{portbindings.HOST_ID: HOST})
        self.settled()
        self.assertEqual((("trunk", [(170, 171)]), False),
                         self.vlan_of(parent))
        self.assert_subport_bound(sa["id"], 171)
        self.assertEqual("ACTIVE", self.get_trunk(trunk["id"])["status"])

    def test_wrong_segmentation_id_refused(self):
        parent_net, a, b = (self.make_net(v) for v in (180, 181, 182))
        parent = self.port_on(parent_net["id"])
        sa, sb = self.unbound_port(a["id"]), self.unbound_port(b["id"])
        body = self.trunk(parent, self.sub(sa, 999), expect=400)
        message = body["NeutronError"]["message"]
        self.assertIn(f"subport {sa['id']}", message)
        self.assertIn("segmentation vlan 999 is not VLAN 181", message)
        self.assertIn("cannot translate VLAN IDs", message)
        self.assertEqual([], self.call("GET", "trunks", expect=200)[1][
            "trunks"])
        trunk = self.trunk(parent, self.sub(sa, 181))
        status, body = self.call(
            "PUT", "trunks", {"sub_ports": [self.sub(sb, 183)]},
            id=trunk["id"], action="add_subports", expect=400)
        message = body["NeutronError"]["message"]
        self.assertIn(f"subport {sb['id']}: segmentation vlan 183 is not "
                      f"VLAN 182 of its network {b['id']}", message)
        self.assertEqual([sa["id"]], [s["port_id"] for s in self.get_trunk(
            trunk["id"])["sub_ports"]])
        self.assertEqual((("trunk", [(180, 181)]), False),
                         self.vlan_of(parent))

    def test_trunk_on_a_standard_vswitch_refused(self):
        net = self.make_network("vlan", "physnet2", 190)
        sub_net = self.make_network("vlan", "physnet2", 191)
        sub = self.unbound_port(sub_net["id"])
        for parent in (self.unbound_port(net["id"]),
                       self.port_on(net["id"])):
            body = self.trunk(parent, self.sub(sub, 191), expect=400)
            message = body["NeutronError"]["message"]
            self.assertIn(f"trunk parent port {parent['id']}", message)
            self.assertIn("only through a standard vSwitch", message)
        self.assertEqual([], self.call("GET", "trunks", expect=200)[1][
            "trunks"])

    def test_parent_not_bound_on_a_standard_vswitch(self):
        """A trunk made while the driver could not tell the switch (no
        vCenter read yet) is not checked against it; binding its parent
        on the standard vSwitch is then refused, not done without the
        subports."""
        net = self.make_network("vlan", "physnet2", 195)
        sub_net = self.make_network("vlan", "physnet2", 196)
        parent = self.unbound_port(net["id"])
        sub = self.unbound_port(sub_net["id"])
        with mock.patch.object(self.vcenter_driver, "switch_kinds",
                               return_value={"physnet2": None}):
            trunk = self.trunk(parent, self.sub(sub, 196))
        with self.assertLogs("networking_vcenter.ml2.driver",
                             "ERROR") as logs:
            parent = self.update_port(parent["id"],
                                      **{portbindings.HOST_ID: HOST})
        self.assertEqual("binding_failed", parent[portbindings.VIF_TYPE])
        self.assertTrue(any(f"parent of trunk {trunk['id']}" in line and
                            "standard vSwitch" in line
                            for line in logs.output), logs.output)
        self.assertEqual("", self.port(sub["id"])[portbindings.HOST_ID])

    def test_subport_without_port_security_degrades_the_trunk(self):
        parent_net, a = self.make_net(200), self.make_net(201)
        parent = self.port_on(parent_net["id"])
        sa = self.unbound_port(a["id"], port_security_enabled=False,
                               security_groups=[])
        trunk = self.trunk(parent, self.sub(sa, 201))
        # Carried, but not as Neutron says: DEGRADED, with the reason logged.
        self.assertEqual((("trunk", [(200, 201)]), False),
                         self.vlan_of(parent))
        self.assertEqual("DEGRADED", self.get_trunk(trunk["id"])["status"])

    def test_subports_addresses_join_the_parents_filter(self):
        parent_net, a = self.make_net(210), self.make_net(211)
        sg = self.make_sg()
        self.add_rule(sg["id"], protocol="tcp", port_range_min=22,
                      port_range_max=22)
        parent = self.port_on(parent_net["id"])
        sa = self.unbound_port(a["id"], security_groups=[sg["id"]])
        self.trunk(parent, self.sub(sa, 211))
        rules = test_ports.dv_port_rules(self.dv_port(parent).config.setting)
        sub_ip = f"{sa['fixed_ips'][0]['ip_address']}/32"
        parent_ip = f"{parent['fixed_ips'][0]['ip_address']}/32"
        sources = {r["source"][0] for r in rules if r["action"] == "accept"
                   and r["source"] and r["direction"] == "incomingPackets"}
        self.assertIn(sub_ip, sources)
        self.assertIn(parent_ip, sources)
        # The subport's ssh rule opens the subport's address only.
        ssh = [r for r in rules if r["direction"] == "outgoingPackets"
               and r["action"] == "accept" and r["dports"] == (22, 22)]
        self.assertTrue(ssh, rules)
        self.assertEqual({sub_ip}, {r["destination"][0] for r in ssh})


class TestTrunkStatus(TrunksTestCase):
    """``networking-vcenter status``: a row per trunk of ours."""

    def status(self):
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            code = cli.cmd_status(
                self.vcenter_driver.backend.reconciler, "json")
        doc = json.loads(out.getvalue())
        return code, {r["trunk"]: r for r in doc["trunks"]}

    def test_trunk_rows_in_sync_drift_and_not_carried(self):
        parent_net, a = self.make_net(240), self.make_net(241)
        parent = self.port_on(parent_net["id"])
        sa = self.unbound_port(a["id"])
        trunk = self.trunk(parent, self.sub(sa, 241))
        key = parent[portbindings.VIF_DETAILS]["dvs_port_key"]
        # Nova's order: a trunk whose parent has no host yet.
        waiting_net, b = self.make_net(242), self.make_net(243)
        unbound = self.trunk(self.unbound_port(waiting_net["id"]),
                             self.sub(self.unbound_port(b["id"]), 243))
        # A parent bound on a standard vSwitch before its trunk was made
        # (the switch not known at the check).
        std_net = self.make_network("vlan", "physnet2", 245)
        std_sub = self.make_network("vlan", "physnet2", 246)
        std_parent = self.port_on(std_net["id"])
        with mock.patch.object(self.vcenter_driver, "switch_kinds",
                               return_value={"physnet2": None}):
            std = self.trunk(std_parent,
                             self.sub(self.unbound_port(std_sub["id"]), 246))

        code, rows = self.status()
        self.assertEqual(
            (parent["id"], key, "240-241", "240-241", "in-sync"),
            tuple(rows[trunk["id"]][k] for k in (
                "parent", "dv_port", "want_vlans", "have_vlans", "state")))
        self.assertEqual("not-carried", rows[unbound["id"]]["state"])
        self.assertIn("unbound", rows[unbound["id"]]["detail"])
        self.assertEqual(("not-carried", std_parent["id"]), (
            rows[std["id"]]["state"], rows[std["id"]]["parent"]))
        self.assertIn("standard vSwitch", rows[std["id"]]["detail"])
        self.assertEqual(cli.EXIT_OK, code)

        # The parent's VLAN trunk narrowed by hand in vCenter.
        # (A pass reads the DV ports fresh from vCenter.)
        self.vsphere.set_dv_port_trunk("DVS0", key, [(240, 240)])
        code, rows = self.status()
        self.assertEqual(cli.EXIT_DIFF, code)
        self.assertEqual(("240-241", "240", "drift"), tuple(
            rows[trunk["id"]][k] for k in ("want_vlans", "have_vlans",
                                            "state")))
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            cli.cmd_status(self.vcenter_driver.backend.reconciler, "table")
        (line,) = [x for x in out.getvalue().splitlines()
                   if x.startswith(trunk["id"])]
        self.assertEqual([trunk["id"], parent["id"], key, "240-241", "240",
                          "drift"], line.split()[:6])
        # status changed nothing: the drift is still there.
        self.assertEqual((("trunk", [(240, 240)]), False),
                         self.vlan_of(parent))


class TestTrunkReads(TrunksTestCase):

    def test_ports_reads_the_trunk_and_the_parent_of_a_subport(self):
        parent_net, a = self.make_net(220), self.make_net(221)
        parent = self.port_on(parent_net["id"])
        sa = self.unbound_port(a["id"])
        trunk = self.trunk(parent, self.sub(sa, 221))
        specs = {s.id: s for s in neutron_db.ports({sa["id"]})}
        # Asked for the subport: its parent comes along.
        self.assertEqual({parent["id"], sa["id"]}, set(specs))
        self.assertEqual(parent["id"], specs[sa["id"]].trunk_parent)
        t = specs[parent["id"]].trunk
        self.assertEqual(trunk["id"], t.id)
        self.assertIn(("vlan", "physnet1", 220), t.segments)
        (sub,) = t.subports
        self.assertEqual((sa["id"], "vlan", 221), (
            sub.port.id, sub.segmentation_type, sub.segmentation_id))
        self.assertIn(("vlan", "physnet1", 221), sub.segments)
        self.assertEqual(tuple(sorted(ip["ip_address"]
                                      for ip in sa["fixed_ips"])),
                         sub.port.fixed_ips)


class TestTrunkError(TrunksTestCase):
    extra_ml2_vcenter = {"max_rules_per_port": 16}

    def test_settings_that_cannot_be_had_put_the_trunk_in_error(self):
        parent_net, a = self.make_net(230), self.make_net(231)
        parent = self.port_on(parent_net["id"], security_groups=[])
        self.assertIsNotNone(test_ports.dv_port_rules(
            self.dv_port(parent).config.setting))
        sg = self.make_sg("many")
        for i in range(8):
            self.add_rule(sg["id"], remote_ip_prefix=f"192.0.2.{i * 8}/29")
        sa = self.unbound_port(a["id"], security_groups=[sg["id"]])
        trunk = self.trunk(parent, self.sub(sa, 231))
        # More traffic rules than max_rules_per_port: the DV port keeps
        # what it had, and the trunk says so.
        self.assertEqual("ERROR", self.get_trunk(trunk["id"])["status"])
        self.assertEqual((("vlan", 230), True), self.vlan_of(parent))

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

"""Network MTUs against switch MTUs, in ML2 with the driver, against the
simulator: refusals at create and update, the replica following MTU
changes made in vCenter, raise_switch_mtu, the start-up warning, and what
``check`` and ``status`` show.

Neutron is configured with ``global_physnet_mtu = 9000``: a VLAN/flat
network gets an MTU of 9000 unless it asks for less, while the simulator's
switches carry 1500.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import tempfile

from neutron_lib.api.definitions import provider_net as pnet

from networking_vcenter import cli
from networking_vcenter.reconcile.reconciler import Reconciler
from tests.functional import base

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")


class MtuTestCase(base.VCenterMl2TestCase):

    def ml2_vcenter_ini(self) -> str:
        return super().ml2_vcenter_ini() + \
            "[DEFAULT]\nglobal_physnet_mtu = 9000\n"

    def setUp(self):
        # The start-up warning comes while ML2 loads the driver.
        with self.assertLogs("networking_vcenter", "WARNING") as logs:
            super().setUp()
        self.startup_log = logs.output

    def create(self, physnet, vlan, mtu=None):
        """POST a network; (status, body)."""
        args = {pnet.NETWORK_TYPE: "vlan", pnet.PHYSICAL_NETWORK: physnet,
                pnet.SEGMENTATION_ID: vlan}
        if mtu is not None:
            args["mtu"] = mtu
        res = self._create_network(self.fmt, "mtu-net", True, as_admin=True,
                                   arg_list=tuple(args), **args)
        return res.status_int, self.deserialize(self.fmt, res)

    def set_mtu(self, net_id, mtu):
        req = self.new_update_request("networks", {"network": {"mtu": mtu}},
                                      net_id, as_admin=True)
        res = req.get_response(self.api)
        return res.status_int, self.deserialize(self.fmt, res)

    def mtu_of(self, net_id):
        req = self.new_show_request("networks", net_id, as_admin=True)
        return self.deserialize(self.fmt, req.get_response(self.api))[
            "network"]["mtu"]

    def replica_shows(self, predicate):
        rec = self.vcenter_driver.backend.reconciler
        self.assertTrue(rec.replica.wait_until(predicate, 10),
                        "the replica did not see the change")

    # -- distributed switch -------------------------------------------------

    def test_create_above_dvs_max_mtu_refused_at_or_below_accepted(self):
        self.assertEqual(1500, self.vsphere.dvs_max_mtu("DVS0"))
        status, body = self.create("physnet1", 601)     # Neutron: 9000
        self.assertEqual(400, status, body)
        text = body["NeutronError"]["message"]
        self.assertIn("MTU 9000", text)
        self.assertIn("distributed switch DVS0 (maxMtu 1500)", text)
        self.assertEqual([], self.driver.get_networks(     # rolled back
            self.context, filters={pnet.SEGMENTATION_ID: [601]}))
        for vlan, mtu in ((602, 1500), (603, 1400)):
            status, body = self.create("physnet1", vlan, mtu)
            self.assertEqual(201, status, body)
            net = body["network"]
            self.assertEqual(mtu, net["mtu"])
            (pg,) = self.vsphere.dv_portgroups(self.dvs_name(net["id"]))
            self.assertEqual(vlan, pg["vlan"])
        # Unmapped physical networks and tunnels are not the driver's.
        status, body = self.create("physnet3", 604)
        self.assertEqual(201, status, body)
        self.assertEqual(9000, body["network"]["mtu"])

    def test_update_to_a_larger_mtu_refused_before_commit(self):
        net = self.make_network("vlan", "physnet1", 611, mtu=1400)
        status, body = self.set_mtu(net["id"], 9000)
        self.assertEqual(400, status, body)
        text = body["NeutronError"]["message"]
        self.assertIn("MTU 9000", text)
        self.assertIn("maxMtu 1500", text)
        self.assertEqual(1400, self.mtu_of(net["id"]))     # rolled back
        status, body = self.set_mtu(net["id"], 1500)
        self.assertEqual(200, status, body)
        self.assertEqual(1500, self.mtu_of(net["id"]))
        # Other updates of a network are not held to it.
        req = self.new_update_request("networks", {"network": {
            "name": "renamed"}}, net["id"], as_admin=True)
        self.assertEqual(200, req.get_response(self.api).status_int)

    def test_replica_follows_a_max_mtu_changed_in_vcenter(self):
        self.addCleanup(self.vsphere.set_dvs_max_mtu, "DVS0", 1500)
        self.vsphere.set_dvs_max_mtu("DVS0", 9000)
        self.replica_shows(lambda inv: inv.dvs("DVS0").max_mtu == 9000)
        status, body = self.create("physnet1", 621)
        self.assertEqual(201, status, body)
        self.assertEqual(9000, body["network"]["mtu"])
        self.vsphere.set_dvs_max_mtu("DVS0", 1600)
        self.replica_shows(lambda inv: inv.dvs("DVS0").max_mtu == 1600)
        status, body = self.create("physnet1", 622)
        self.assertEqual(400, status, body)
        self.assertIn("maxMtu 1600", body["NeutronError"]["message"])
        # The worker's full pass warns about the network that no longer
        # fits, and the driver never lowers nor raises the switch.
        with self.assertLogs("networking_vcenter", "WARNING") as logs:
            self.resync()
        self.assertTrue(any("MTU 9000" in line and "maxMtu 1600" in line
                            for line in logs.output), logs.output)
        self.assertEqual(1600, self.vsphere.dvs_max_mtu("DVS0"))

    # -- standard vSwitch ---------------------------------------------------

    def test_vswitch_mtu_is_checked_on_each_mapped_host(self):
        hosts = self.cluster_hosts()
        self.addCleanup(lambda: [self.vsphere.set_vswitch_mtu(
            h, "vSwitch1", 1500) for h in hosts])
        for h in hosts[:-1]:
            self.vsphere.set_vswitch_mtu(h, "vSwitch1", 9000)
        self.replica_shows(lambda inv: sorted(
            h.vswitch_mtus.get("vSwitch1") for h in inv.hosts.values()
            if h.name in hosts) == [1500] + [9000] * (len(hosts) - 1))
        status, body = self.create("physnet2", 631)
        self.assertEqual(400, status, body)
        text = body["NeutronError"]["message"]
        self.assertIn("MTU 9000", text)
        self.assertIn(f"standard vSwitch vSwitch1 on host {hosts[-1]} "
                      f"(mtu 1500)", text)
        self.assertNotIn(hosts[0], text)
        self.vsphere.set_vswitch_mtu(hosts[-1], "vSwitch1", 9000)
        self.replica_shows(lambda inv: all(
            h.vswitch_mtus.get("vSwitch1") == 9000
            for h in inv.hosts.values() if h.name in hosts))
        status, body = self.create("physnet2", 632)
        self.assertEqual(201, status, body)
        self.assertEqual(
            {h: ("vSwitch1", 632) for h in hosts},
            self.vsphere.host_portgroups(body["network"]["id"]))

    # -- start-up, check, status --------------------------------------------

    def test_startup_warns_per_physical_network(self):
        lines = [ln for ln in self.startup_log if "MTU" in ln]
        (dvs,) = [ln for ln in lines if "physical network physnet1" in ln]
        self.assertIn("global_physnet_mtu = 9000", dvs)
        self.assertIn("up to 9000", dvs)
        self.assertIn("distributed switch DVS0 (maxMtu 1500)", dvs)
        (std,) = [ln for ln in lines if "physical network physnet2" in ln]
        self.assertIn("standard vSwitch vSwitch1 on host", std)

    def test_check_and_status_show_switch_mtus(self):
        settings = self.vcenter_driver.settings
        rec = Reconciler.from_settings(settings, watch=False)
        checks = {}
        try:
            cli.check_vcenter(rec, settings, lambda name, ok, detail:
                              checks.__setitem__(name, (ok, detail)))
        finally:
            cli.log_out(rec)
        ok, detail = checks["switch MTUs"]
        self.assertFalse(ok)
        self.assertIn("distributed switch DVS0 (maxMtu 1500)", detail)
        self.assertIn("global_physnet_mtu = 9000", detail)

        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            code = cli.cmd_status(
                self.vcenter_driver.backend.reconciler, "json")
        self.assertEqual(cli.EXIT_DIFF, code)
        rows = {r["physical_network"]: r
                for r in json.loads(out.getvalue())["switches"]}
        self.assertEqual(("DVS0", "1500", 9000, "mtu-too-small"), tuple(
            rows["physnet1"][k] for k in ("switch", "mtu", "neutron_mtu",
                                          "state")))
        self.assertEqual(("vSwitch1", "1500", "mtu-too-small"), tuple(
            rows["physnet2"][k] for k in ("switch", "mtu", "state")))

        # The distributed switch raised by hand fits; hosts whose vSwitch
        # MTUs differ are shown apart.
        hosts = self.cluster_hosts()
        self.addCleanup(self.vsphere.set_dvs_max_mtu, "DVS0", 1500)
        self.addCleanup(self.vsphere.set_vswitch_mtu, hosts[0], "vSwitch1",
                        1500)
        self.vsphere.set_dvs_max_mtu("DVS0", 9000)
        self.vsphere.set_vswitch_mtu(hosts[0], "vSwitch1", 9000)
        self.replica_shows(lambda inv: inv.dvs("DVS0").max_mtu == 9000 and
                           9000 in [h.vswitch_mtus.get("vSwitch1")
                                    for h in inv.hosts.values()])
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            cli.cmd_status(self.vcenter_driver.backend.reconciler, "json")
        rows = {r["physical_network"]: r
                for r in json.loads(out.getvalue())["switches"]}
        self.assertEqual(("9000", "ok"), (rows["physnet1"]["mtu"],
                                          rows["physnet1"]["state"]))
        self.assertEqual(
            f"1500 on {', '.join(hosts[1:])}; 9000 on {hosts[0]}",
            rows["physnet2"]["mtu"])

    def test_check_command_shows_switch_mtus(self):
        """``networking-vcenter check`` as an operator runs it (this
        worktree's code: ``python -m``)."""
        fd, ini = tempfile.mkstemp(suffix=".ini")
        with os.fdopen(fd, "w") as f:
            f.write(self.ml2_vcenter_ini())
        self.addCleanup(os.unlink, ini)
        proc = subprocess.run(
            [sys.executable, "-m", "networking_vcenter.cli",
             "--config-file", ini, "check"], cwd=ROOT, capture_output=True,
            text=True, timeout=120)
        line = [ln for ln in proc.stdout.splitlines()
                if ln.startswith("switch MTUs")]
        self.assertEqual(1, len(line), proc.stdout + proc.stderr)
        self.assertIn("FAIL", line[0])
        self.assertIn("maxMtu 1500", line[0])
        self.assertIn("global_physnet_mtu = 9000", line[0])


class RaiseSwitchMtuTestCase(base.VCenterMl2TestCase):
    """``raise_switch_mtu = true``: distributed switches are raised, never
    lowered; standard vSwitches are still refused."""

    extra_ml2_vcenter = {"raise_switch_mtu": "true"}

    def ml2_vcenter_ini(self) -> str:
        return super().ml2_vcenter_ini() + \
            "[DEFAULT]\nglobal_physnet_mtu = 9000\n"

    def test_dvs_raised_instead_of_refused(self):
        self.assertEqual(1500, self.vsphere.dvs_max_mtu("DVS0"))
        net = self.make_network("vlan", "physnet1", 641, mtu=1600)
        self.assertEqual(1600, self.vsphere.dvs_max_mtu("DVS0"))
        (pg,) = self.vsphere.dv_portgroups(self.dvs_name(net["id"]))
        self.assertEqual(641, pg["vlan"])
        # An update to a larger MTU raises it too.
        req = self.new_update_request("networks", {"network": {
            "mtu": 2000}}, net["id"], as_admin=True)
        self.assertEqual(200, req.get_response(self.api).status_int)
        self.assertEqual(2000, self.vsphere.dvs_max_mtu("DVS0"))
        net2 = self.make_network("vlan", "physnet1", 642)   # 9000
        self.assertEqual(9000, self.vsphere.dvs_max_mtu("DVS0"))
        # A smaller network never lowers it.
        self.make_network("vlan", "physnet1", 643, mtu=1500)
        self.assertEqual(9000, self.vsphere.dvs_max_mtu("DVS0"))
        self.replica_caught_up()
        self.assertEqual([], [s for s in self.resync().plan.steps
                              if s.network_id in (net["id"], net2["id"])])
        # A standard vSwitch is never raised.
        res = self._create_network(
            self.fmt, "std", True, as_admin=True,
            arg_list=(pnet.NETWORK_TYPE, pnet.PHYSICAL_NETWORK,
                      pnet.SEGMENTATION_ID),
            **{pnet.NETWORK_TYPE: "vlan", pnet.PHYSICAL_NETWORK: "physnet2",
               pnet.SEGMENTATION_ID: 644})
        self.assertEqual(400, res.status_int)
        self.assertIn("standard vSwitch vSwitch1",
                      self.deserialize(self.fmt, res)["NeutronError"][
                          "message"])
        self.assertEqual({1500}, set(
            self.vsphere.vswitch_mtus("vSwitch1").values()))


class MtuBeforeVcenterIsReadTestCase(base.ProxiedMixin,
                                     base.VCenterMl2TestCase):
    """Started while vCenter is unreachable: the MTU cannot be checked, the
    network is accepted, and the maintenance worker's pass warns."""

    extra_ml2_vcenter = {"api_call_budget": 3, "api_retry_count": 2,
                         "api_timeout": 2, "resync_grace_period": 0,
                         "start_without_vcenter": "true"}

    def ml2_vcenter_ini(self) -> str:
        return super().ml2_vcenter_ini() + \
            "[DEFAULT]\nglobal_physnet_mtu = 9000\n"

    def setUp(self):
        self.proxy.mode = "reset"
        super().setUp()

    def test_accepted_then_warned_by_the_full_pass(self):
        rec = self.vcenter_driver.backend.reconciler
        self.assertFalse(rec.replica.synced)
        net = self.make_network("vlan", "physnet1", 651)
        self.assertEqual(9000, net["mtu"])
        self.proxy.mode = "pass"
        self.assertTrue(rec.replica.wait_until(lambda inv: True, 30))
        with self.assertLogs("networking_vcenter", "WARNING") as logs:
            self.resync()
        self.assertTrue(any(
            net["id"] in line and "MTU 9000" in line and
            "distributed switch DVS0 (maxMtu 1500)" in line
            for line in logs.output), logs.output)
        # The port group is made all the same: the network exists.
        self.assertEqual(1, len(self.vsphere.dv_portgroups(
            self.dvs_name(net["id"]))))


class MtuSegmentsTestCase(base.VCenterMl2TestCase):
    """With the segments service plugin, a segment added to a network is
    checked against its switch (ML2 calls update_network_precommit)."""

    def get_additional_service_plugins(self):
        return {"segments": "neutron.services.segments.plugin.Plugin"}

    def ml2_vcenter_ini(self) -> str:
        return super().ml2_vcenter_ini() + \
            "[DEFAULT]\nglobal_physnet_mtu = 9000\n"

    def add_segment(self, net_id, physnet, vlan):
        req = self.new_create_request("segments", {"segment": {
            "network_id": net_id, "network_type": "vlan",
            "physical_network": physnet, "segmentation_id": vlan}},
            as_admin=True)
        res = req.get_response(self.api)
        return res.status_int, self.deserialize(self.fmt, res)

    def test_segment_on_a_smaller_switch_refused(self):
        net = self.make_network("vlan", "physnet3", 661)     # unmapped
        self.assertEqual(9000, net["mtu"])
        status, body = self.add_segment(net["id"], "physnet1", 662)
        self.assertEqual(400, status, body)
        text = body["NeutronError"]["message"]
        self.assertIn("MTU 9000", text)
        self.assertIn("distributed switch DVS0 (maxMtu 1500)", text)
        self.assertEqual([], self.vsphere.dv_portgroups(
            self.dvs_name(net["id"])))
        # A network whose MTU fits gets the segment and its port group.
        fits = self.make_network("vlan", "physnet3", 663, mtu=1500)
        status, body = self.add_segment(fits["id"], "physnet1", 664)
        self.assertEqual(201, status, body)
        (pg,) = self.vsphere.dv_portgroups(self.dvs_name(fits["id"]))
        self.assertEqual(664, pg["vlan"])

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

"""``networking-vcenter status`` and ``sync`` in the test's process, on the
ML2 plugin's own database and a simulator: the progress counter, the exit
status of ``sync``, and a full pass running elsewhere (its lock held by the
test) -- ``status`` reads anyway, ``sync`` gives up with a clear message and
exit status 3, never a traceback.  ``tests/functional/test_cli_commands.py``
runs the command itself for every exit status."""

from __future__ import annotations

import contextlib
import io
import json
import re
import time

from neutron_lib.api.definitions import portbindings

from networking_vcenter import cli
from networking_vcenter.reconcile.locks import Locks
from networking_vcenter.reconcile.reconciler import FULL_PASS_LOCK
from tests.functional import test_ports

COUNTER = re.compile(r"^\[(\d+)/(\d+)\] ", re.M)


class TestCliCommands(test_ports.PortsTestCase):

    def run_cli(self, fn, *args, **kw):
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = fn(self.vcenter_driver.backend.reconciler, *args, **kw)
        return code, out.getvalue(), err.getvalue()

    @contextlib.contextmanager
    def pass_elsewhere(self):
        """The full-pass lock held by another member of the same backend,
        as a Neutron server's maintenance worker holds it."""
        other = Locks(self.vcenter_driver.backend.reconciler.locks._url)
        try:
            with other.hold(FULL_PASS_LOCK) as got:
                self.assertTrue(got)
                yield
        finally:
            other.stop()

    def test_progress_counts_network_and_port_steps(self):
        """One port group made again and one DV port put back: two steps,
        counted [1/2] [2/2] (the port steps were counted past the total)."""
        gone = self.make_net(151)
        net = self.make_net(152)
        port = self.port_on(net["id"])
        key = port[portbindings.VIF_DETAILS]["dvs_port_key"]
        self.vsphere.destroy_dv_portgroup(self.dvs_name(gone["id"]))
        self.vsphere.set_dv_port_trunk("DVS0", key, [(100, 110)])
        self.replica_caught_up()

        code, out, err = self.run_cli(cli.cmd_sync, "table", False)
        self.assertEqual(cli.EXIT_OK, code, out + err)
        counts = [(int(a), int(b)) for a, b in COUNTER.findall(err)]
        self.assertEqual([(1, 2), (2, 2)], counts, err)
        self.assertEqual(1, len(self.vsphere.dv_portgroups(
            self.dvs_name(gone["id"]))))
        self.assertEqual("vlan", self.vsphere.dv_port_vlan("DVS0", key)[0][0])

    def test_sync_exits_1_on_a_conflict(self):
        net = self.make_net(153)
        name = self.dvs_name(net["id"])
        self.vsphere.destroy_dv_portgroup(name)
        self.vsphere.add_dv_portgroup("DVS0", name, 7, "made by hand")
        self.addCleanup(self.vsphere.destroy_dv_portgroup, name)
        self.replica_caught_up()
        code, out, err = self.run_cli(cli.cmd_sync, "json", False)
        self.assertEqual(cli.EXIT_DIFF, code, out + err)
        self.assertEqual(1, json.loads(out)["summary"]["conflicts"])

    def test_sync_while_a_pass_runs_elsewhere(self):
        net = self.make_net(154)
        name = self.dvs_name(net["id"])
        self.vsphere.destroy_dv_portgroup(name)
        self.replica_caught_up()
        with self.pass_elsewhere():
            t0 = time.monotonic()
            code, out, err = self.run_cli(cli.cmd_sync, "table", False,
                                          wait=0.5)
            self.assertLess(time.monotonic() - t0, 30)
        self.assertEqual(cli.EXIT_BUSY, code, out + err)
        self.assertIn("a full pass is running elsewhere", err)
        self.assertIn("was not free within 0.5 s", err)
        self.assertIn("Nothing was changed", err)
        self.assertNotIn("Traceback", out + err)
        self.assertEqual([], self.vsphere.dv_portgroups(name))
        # Once it is over, sync runs.
        code, out, err = self.run_cli(cli.cmd_sync, "table", False,
                                      wait=0.5)
        self.assertEqual(cli.EXIT_OK, code, out + err)
        self.assertEqual(1, len(self.vsphere.dv_portgroups(name)))

    def test_status_and_dry_run_while_a_pass_runs_elsewhere(self):
        """Read-only: no lock, no wait (they waited 60 s, then failed)."""
        net = self.make_net(155)
        name = self.dvs_name(net["id"])
        self.vsphere.destroy_dv_portgroup(name)
        self.replica_caught_up()
        with self.pass_elsewhere():
            t0 = time.monotonic()
            code, out, err = self.run_cli(cli.cmd_status, "json")
            dry = self.run_cli(cli.cmd_sync, "table", True)
            self.assertLess(time.monotonic() - t0, 30)
        self.assertEqual(cli.EXIT_DIFF, code, out + err)
        rows = {r["port_group"]: r for r in json.loads(out)["port_groups"]}
        self.assertEqual("missing", rows[name]["state"])
        self.assertEqual(cli.EXIT_DIFF, dry[0], dry[1] + dry[2])
        self.assertIn(f"create distributed port group {name}", dry[1])
        self.assertEqual([], self.vsphere.dv_portgroups(name))

    def test_status_columns_and_sections(self):
        net = self.make_net(156)
        code, out, _ = self.run_cli(cli.cmd_status, "value",
                                    ["port_group", "state"], ["port_groups"])
        self.assertIn(f"{self.dvs_name(net['id'])} in-sync",
                      out.splitlines())
        code, out, _ = self.run_cli(cli.cmd_status, "json", ["state"])
        doc = json.loads(out)
        self.assertEqual({"state"}, {k for r in doc["port_groups"]
                                     for k in r})
        self.assertEqual({"state"}, {k for r in doc["switches"] for k in r})
        code, out, _ = self.run_cli(cli.cmd_status, "csv",
                                    ["physical_network", "state"],
                                    ["switches"])
        self.assertEqual(['"physical_network","state"', '"physnet1","ok"',
                          '"physnet2","ok"'], out.splitlines())
        with self.assertRaisesRegex(cli.CliError, "no column 'vlam'.*vlan"):
            self.run_cli(cli.cmd_status, "table", ["vlam"])

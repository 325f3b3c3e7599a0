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

"""``networking-vcenter`` as an operator runs it (this tree's code:
``python -m networking_vcenter.cli``): one test per documented exit status.

A simulator, a Neutron database with Neutron's schema and no network (sqlite,
made from Neutron's models: no Neutron server is started), file locks in a
directory of the test's, and the ML2 options in a ``--config-dir``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

from networking_vcenter.reconcile.locks import Locks
from networking_vcenter.reconcile.reconciler import FULL_PASS_LOCK
from tests.fixtures.vcsim import Vcsim

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
EXIT_OK, EXIT_DIFF, EXIT_ERROR, EXIT_BUSY = 0, 1, 2, 3


class TestCliExitStatus(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        import sqlalchemy
        from neutron.db.migration.models import head
        cls.tmp = tempfile.mkdtemp(prefix="cli-commands-")
        cls.vcsim = Vcsim(extra_args=("-extra-vswitch", "vSwitch1")).start()
        db = os.path.join(cls.tmp, "neutron.db")
        engine = sqlalchemy.create_engine(f"sqlite:///{db}")
        head.get_metadata().create_all(engine)
        engine.dispose()
        cls.lock_url = f"file://{cls.tmp}/locks"
        cls.neutron_conf = cls.write("neutron.conf", (
            f"[database]\nconnection = sqlite:///{db}\n"))
        cls.conf_dir = os.path.join(cls.tmp, "ml2.d")
        os.mkdir(cls.conf_dir)
        cls.write("ml2.d/ml2_vcenter.conf", "\n".join([
            "[ml2_vcenter]",
            f"host_ip = {cls.vcsim.host}",
            f"host_port = {cls.vcsim.port}",
            f"host_username = {cls.vcsim.username}",
            f"host_password = {cls.vcsim.password}",
            "insecure = true",
            "api_retry_count = 1",
            "switch_mappings = physnet1:DVS0,physnet2:vSwitch1",
            "compute_hosts = vc-compute-1:DC0_C0",
            f"coordination_backend_url = {cls.lock_url}", ""]))

    @classmethod
    def tearDownClass(cls):
        cls.vcsim.stop()
        shutil.rmtree(cls.tmp, ignore_errors=True)

    @classmethod
    def write(cls, name: str, text: str) -> str:
        path = os.path.join(cls.tmp, name)
        with open(path, "w") as f:
            f.write(text)
        return path

    def cli(self, *args: str, config: tuple[str, ...] | None = None,
            extra: str = "") -> subprocess.CompletedProcess:
        """The command with the test's configuration (``config``: instead),
        and ``extra`` as one more file after it."""
        if config is None:
            config = ("--config-file", self.neutron_conf,
                      "--config-dir", self.conf_dir)
        if extra:
            config += ("--config-file", self.write("extra.conf", extra))
        proc = subprocess.run(
            [sys.executable, "-W", "ignore", "-m", "networking_vcenter.cli",
             *config, *args], cwd=ROOT, capture_output=True, text=True,
            timeout=300, env={**os.environ, "PYTHONPATH": ROOT})
        self.assertNotIn("Traceback", proc.stdout + proc.stderr)
        return proc

    def checks(self, proc) -> dict[str, dict[str, str]]:
        return {c["check"]: c for c in json.loads(proc.stdout)["checks"]}

    def test_0_in_sync_converged_all_checks_passed(self):
        status = self.cli("status")
        self.assertEqual(EXIT_OK, status.returncode,
                         status.stdout + status.stderr)
        sync = self.cli("sync")
        self.assertEqual(EXIT_OK, sync.returncode, sync.stdout + sync.stderr)
        check = self.cli("check", "-f", "json")
        self.assertEqual(EXIT_OK, check.returncode,
                         check.stdout + check.stderr)
        backend = self.checks(check)["coordination backend"]
        self.assertEqual("ok", backend["result"])
        self.assertIn(self.lock_url, backend["detail"])
        self.assertIn("a test lock taken and released", backend["detail"])
        # Released: had at once.
        locks = Locks(self.lock_url)
        try:
            with locks.hold("check", blocking=False) as got:
                self.assertTrue(got)
        finally:
            locks.stop()

    def test_1_differences_or_a_check_failed(self):
        """Neutron gives networks 9000 bytes, the switches carry 1500."""
        mtu = "[DEFAULT]\nglobal_physnet_mtu = 9000\n"
        status = self.cli("--format", "json", "status", extra=mtu)
        self.assertEqual(EXIT_DIFF, status.returncode,
                         status.stdout + status.stderr)
        self.assertEqual({"mtu-too-small"}, {
            r["state"] for r in json.loads(status.stdout)["switches"]})
        check = self.cli("check", "-f", "json", extra=mtu)
        self.assertEqual(EXIT_DIFF, check.returncode,
                         check.stdout + check.stderr)
        failed = {n for n, c in self.checks(check).items()
                  if c["result"] not in ("ok", "pending")}
        self.assertEqual({"switch MTUs"}, failed)

    def test_2_cannot_run(self):
        """vCenter refuses the login, the lock backend cannot be used, a
        --config-dir is not there.  (Bad usage: tests/unit/test_cli.py.)"""
        check = self.cli("check", "-f", "json", extra=(
            "[ml2_vcenter]\nhost_password = not-the-password\n"
            "coordination_backend_url = file:///proc/no-such-dir/locks\n"))
        self.assertEqual(EXIT_ERROR, check.returncode,
                         check.stdout + check.stderr)
        checks = self.checks(check)
        self.assertEqual("FAIL", checks["vCenter login"]["result"])
        self.assertNotIn("not-the-password", check.stdout + check.stderr)
        backend = checks["coordination backend"]
        self.assertEqual("FAIL", backend["result"])
        self.assertIn("file:///proc/no-such-dir/locks", backend["detail"])

        missing = self.cli("status", config=(
            "--config-file", self.neutron_conf,
            "--config-dir", "/nonexistent.d"))
        self.assertEqual(EXIT_ERROR, missing.returncode)
        self.assertIn("/nonexistent.d", missing.stderr)

    def test_3_a_pass_runs_elsewhere(self):
        locks = Locks(self.lock_url)
        try:
            with locks.hold(FULL_PASS_LOCK) as got:
                self.assertTrue(got)
                sync = self.cli("sync", "--wait", "1")
                status = self.cli("status")      # needs no lock
        finally:
            locks.stop()
        self.assertEqual(EXIT_BUSY, sync.returncode,
                         sync.stdout + sync.stderr)
        self.assertIn("a full pass is running elsewhere", sync.stderr)
        self.assertIn(f"its lock '{FULL_PASS_LOCK}' on {self.lock_url} was "
                      f"not free within 1 s", sync.stderr)
        self.assertEqual(EXIT_OK, status.returncode,
                         status.stdout + status.stderr)

    def test_several_vcenters_each_or_the_one_named(self):
        """Two vCenters: every command covers each (the first's connection
        from [ml2_vcenter], the second's its own); --vcenter narrows to one;
        a name not configured is refused, naming those there are."""
        other = Vcsim(extra_args=("-extra-vswitch", "vSwitch1")).start()
        self.addCleanup(other.stop)
        two = "\n".join([
            "[ml2_vcenter]", "vcenters = one, two",
            "[ml2_vcenter:one]", "compute_hosts = vc-compute-1:DC0_C0",
            "[ml2_vcenter:two]", f"host_ip = {other.host}",
            f"host_port = {other.port}",
            "compute_hosts = vc-compute-2:DC0_C0", ""])
        status = self.cli("-f", "json", "status", extra=two)
        self.assertEqual(EXIT_OK, status.returncode,
                         status.stdout + status.stderr)
        docs = json.loads(status.stdout)["vcenters"]
        self.assertEqual({"one", "two"}, set(docs))
        for doc in docs.values():
            self.assertEqual({"ok"}, {r["state"] for r in doc["switches"]})
        check = self.cli("check", "-f", "json", extra=two)
        self.assertEqual(EXIT_OK, check.returncode,
                         check.stdout + check.stderr)
        checks = self.checks(check)
        for name, port in (("one", self.vcsim.port), ("two", other.port)):
            login = checks[f"vCenter login ({name})"]
            self.assertEqual("ok", login["result"])
            self.assertIn(f":{port}", login["detail"])
        self.assertEqual("ok", checks["coordination backend"]["result"])

        narrowed = self.cli("--vcenter", "two", "-f", "json", "status",
                            extra=two)
        self.assertEqual(EXIT_OK, narrowed.returncode, narrowed.stderr)
        self.assertIn("switches", json.loads(narrowed.stdout))
        unknown = self.cli("--vcenter", "three", "status", extra=two)
        self.assertEqual(EXIT_ERROR, unknown.returncode)
        self.assertIn("--vcenter three: no such vCenter", unknown.stderr)
        self.assertIn("one, two", unknown.stderr)

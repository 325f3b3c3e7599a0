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

"""The operator CLI on plain data: its options, output formats, ``check``'s
exit status and a full pass running elsewhere.  Against a simulator:
tests/functional/test_cli.py and test_cli_commands.py."""

from __future__ import annotations

import contextlib
import io
import json
import re
import sys
import threading
import time
import types
import unittest

from networking_vcenter import cli
from networking_vcenter.reconcile import locks as locks_mod


def run(fn, *args, **kw):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = fn(*args, **kw)
    return code, out.getvalue(), err.getvalue()


class TestOptions(unittest.TestCase):

    def parse(self, *argv):
        return cli.parser().parse_args(list(argv))

    def test_config_files_and_dirs_in_order(self):
        args = self.parse("--config-file", "a.conf", "--config-dir", "d",
                          "--config-file", "b.conf", "status")
        self.assertEqual(["--config-file", "a.conf", "--config-dir", "d",
                          "--config-file", "b.conf"], args.config)
        self.assertEqual([], self.parse("status").config)

    def test_format_before_or_after_the_command(self):
        self.assertEqual("json", self.parse("--format", "json",
                                            "status").format)
        self.assertEqual("csv", self.parse("status", "-f", "csv").format)
        self.assertEqual("value", self.parse("-f", "json", "check", "-f",
                                             "value").format)
        self.assertEqual("table", self.parse("sync").format)
        args = self.parse("status", "-c", "port_group", "--column", "state",
                          "--section", "port_groups")
        self.assertEqual(["port_group", "state"], args.column)
        self.assertEqual(["port_groups"], args.section)
        self.assertEqual([], self.parse("check").column)
        self.assertEqual(60.0, self.parse("sync").wait)
        self.assertEqual(2.5, self.parse("sync", "--wait", "2.5").wait)

    def test_bad_usage_exits_2(self):
        for argv in (["sync", "--wait", "-1"], ["sync", "--wait", "soon"],
                     ["status", "-f", "yaml"], ["sync", "-c", "state"],
                     ["status", "--section", "hosts"], []):
            with self.subTest(argv=argv), \
                    contextlib.redirect_stderr(io.StringIO()) as err, \
                    self.assertRaises(SystemExit) as exit_:
                cli.main(argv)
            self.assertEqual(cli.EXIT_ERROR, exit_.exception.code)
            self.assertIn("usage:", err.getvalue())

    def test_exit_codes_documented_in_the_help(self):
        text = cli.parser().format_help()
        for code in (cli.EXIT_OK, cli.EXIT_DIFF, cli.EXIT_ERROR,
                     cli.EXIT_BUSY):
            self.assertIn(f"\n  {code}  ", text)
        self.assertIn("running elsewhere", text)


class TestOutput(unittest.TestCase):

    tables = [cli.Table("a", [{"x": 1, "y": "p q", "z": ""}],
                        ["x", "y"], ["x", "y", "z"], "1 a", {"in-sync": 1},
                        "a_summary"),
              cli.Table("b", [{"x": 2, "w": "r"}], ["w", "x"], ["w", "x"])]

    def out(self, fmt, columns=()):
        return run(cli.emit, self.tables, fmt, columns)[1]

    def test_table(self):
        self.assertEqual("X  Y\n1  p q\n\n1 a\n\nW  X\nr  2\n",
                         self.out("table"))
        self.assertEqual("X\n1\n\n1 a\n\nX\n2\n", self.out("table", ["x"]))

    def test_value_and_csv(self):
        self.assertEqual("1 p q\nr 2\n", self.out("value"))
        self.assertEqual("p q 1\n2\n", self.out("value", ["y", "x"]))
        self.assertEqual('"x","y"\n1,"p q"\n"w","x"\n"r",2\n',
                         self.out("csv"))

    def test_json(self):
        self.assertEqual({"a": [{"x": 1, "y": "p q", "z": ""}],
                          "a_summary": {"in-sync": 1},
                          "b": [{"x": 2, "w": "r"}]},
                         json.loads(self.out("json")))
        self.assertEqual({"a": [{"z": ""}], "a_summary": {"in-sync": 1}},
                         json.loads(self.out("json", ["z"])))

    def test_unknown_column_named(self):
        with self.assertRaisesRegex(cli.CliError,
                                    r"no column 'v' here \(-c/--column\); "
                                    r"there are: w, x, y, z"):
            cli.emit(self.tables, "table", ["x", "v"])


class TestCheckExit(unittest.TestCase):

    def code(self, *results):
        return cli.check_exit([{"check": n, "result": r, "detail": ""}
                               for n, r in results])

    def test_each_code(self):
        ok = [("configuration", "ok"), ("vCenter login", "ok"),
              ("mappings", "ok"), ("custom attribute", "pending"),
              ("coordination backend", "ok"), ("Neutron database", "ok")]
        self.assertEqual(cli.EXIT_OK, self.code(*ok))
        self.assertEqual(cli.EXIT_DIFF, self.code(*ok, ("switch MTUs",
                                                        "FAIL")))
        self.assertEqual(cli.EXIT_DIFF, self.code(*ok, ("privileges",
                                                        "skipped")))
        for name in cli.BLOCKING:
            with self.subTest(check=name):
                self.assertEqual(cli.EXIT_ERROR, self.code(
                    *[(n, "FAIL" if n == name else r) for n, r in ok],
                    ("switch MTUs", "FAIL")))


class TestPassRunningElsewhere(unittest.TestCase):

    def test_sync_gives_up_with_exit_3(self):
        url = "mysql://neutron:s3cret@db-host/neutron"
        calls = []

        def sync_all(source, dry_run=False, wait=None, progress=None,
                     port_source=None):
            calls.append((dry_run, wait))
            if dry_run:
                plan = types.SimpleNamespace(steps=[object()])
                return types.SimpleNamespace(
                    plan=plan, ports=types.SimpleNamespace(plan=plan))
            return None         # the full-pass lock was not had in time

        rec = types.SimpleNamespace(
            sync_all=sync_all, settings=types.SimpleNamespace(
                compute_hosts={}),
            locks=types.SimpleNamespace(backend_url=locks_mod.mask_url(url),
                                        start=lambda: None))
        code, out, err = run(cli.cmd_sync, rec, "table", False, wait=5)
        self.assertEqual(cli.EXIT_BUSY, code)
        self.assertEqual([(True, None), (False, 5)], calls)
        self.assertIn("a full pass is running elsewhere", err)
        self.assertIn("its lock 'full-pass' on "
                      "mysql://neutron:***@db-host/neutron was not free "
                      "within 5 s", err)
        self.assertNotIn("s3cret", out + err)
        self.assertEqual("", out)


class TestCheckLocks(unittest.TestCase):
    """``check``'s coordination backend row: every failure names the
    option and the URL (masked), and a backend that does not answer fails
    the check within the wait, not after the client's own retries."""

    URL = "redis://:s3cret@redis-host:6379"

    def row(self, hold, wait=0.2):
        rows = []
        rec = types.SimpleNamespace(locks=types.SimpleNamespace(
            backend_url=locks_mod.mask_url(self.URL), hold=hold))
        cli.check_locks(rec, lambda name, ok, detail: rows.append(
            (name, ok, detail)), wait=wait)
        (row,) = rows
        self.assertNotIn("s3cret", row[2])
        return row

    def test_taken_and_released(self):
        self.assertEqual(("coordination backend", True,
                          "redis://:***@redis-host:6379: a test lock taken "
                          "and released"),
                         self.row(lambda name, timeout: contextlib
                                  .nullcontext(True)))

    def test_backend_error_names_the_option(self):
        def hold(name, timeout):
            raise ConnectionError("refused")
        self.assertEqual(("coordination backend", False,
                          "[ml2_vcenter] coordination_backend_url "
                          "'redis://:***@redis-host:6379': refused"),
                         self.row(hold))

    def test_unusable_backend_says_why(self):
        problem = ("[ml2_vcenter] coordination_backend_url "
                   "'redis://:***@redis-host:6379' cannot be used: refused")

        def hold(name, timeout):
            raise cli.exceptions.ConfigError([problem])
        # The problem itself, not the error's heading line.
        self.assertEqual(("coordination backend", False, problem),
                         self.row(hold))

    def test_no_answer_fails_within_the_wait(self):
        release = threading.Event()

        def hold(name, timeout):
            release.wait(30)        # a client retrying a refused connection
            return contextlib.nullcontext(True)
        t0 = time.monotonic()
        try:
            name, ok, detail = self.row(hold, wait=0.1)
        finally:
            release.set()
        self.assertLess(time.monotonic() - t0, 10)
        self.assertFalse(ok)
        self.assertEqual("[ml2_vcenter] coordination_backend_url "
                         "'redis://:***@redis-host:6379': no answer within "
                         "2.1 s (is the backend down?)", detail)


class TestLogging(unittest.TestCase):
    """The CLI logs with oslo.log: to stderr with --debug, nothing
    otherwise, never to the log_file neutron.conf names for the server,
    never a secret."""

    def test_debug_to_stderr_only(self):
        import os
        import subprocess
        import sys
        import tempfile
        secret = "Sup3r-S3cret-4711"
        with tempfile.TemporaryDirectory() as tmp:
            server_log = os.path.join(tmp, "server.log")
            ini = os.path.join(tmp, "ml2.ini")
            with open(ini, "w") as f:
                f.write("[DEFAULT]\nlog_file = " + server_log + "\n"
                        "[ml2_vcenter]\nhost_ip = 127.0.0.1\nhost_port = 1\n"
                        "host_username = user\nhost_password = " + secret +
                        "\ninsecure = true\napi_retry_count = 0\n"
                        "switch_mappings = physnet1:DVS0\n"
                        "compute_hosts = vc-compute-1:DC0_C1\n")
            cli_bin = os.path.join(os.path.dirname(sys.executable),
                                   "networking-vcenter")
            runs = {debug: subprocess.run(
                [cli_bin, "--config-file", ini] + (["--debug"] if debug
                                                   else []) + ["check"],
                capture_output=True, text=True, timeout=120)
                for debug in (False, True)}
            self.assertFalse(os.path.exists(server_log))
        for proc in runs.values():
            self.assertEqual(cli.EXIT_ERROR, proc.returncode, proc.stdout)
            self.assertIn("vCenter login", proc.stdout)
            self.assertNotIn(secret, proc.stdout + proc.stderr)
            self.assertNotIn(" DEBUG ", proc.stdout)
        # oslo.log's format: "<date> <time> <pid> <LEVEL> <logger> [...".
        line = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+ \d+ "
                          r"(DEBUG|INFO|WARNING|ERROR) \S+ \[", re.M)
        self.assertTrue(line.search(runs[True].stderr),
                        runs[True].stderr[-2000:])
        self.assertIsNone(line.search(runs[False].stderr),
                          runs[False].stderr[-2000:])


def test_the_cli_prints_no_eventlet_warning_on_import():
    """futurist imports eventlet (installed with Neutron), which warns on
    import; the CLI's process silences that warning, and only that one."""
    import subprocess

    def stderr_of(code):
        return subprocess.run([sys.executable, "-c", code],
                              capture_output=True, text=True, timeout=120,
                              check=True).stderr

    assert "Eventlet is deprecated" in stderr_of("import futurist._utils")
    assert "Eventlet is deprecated" not in stderr_of(
        "import networking_vcenter.cli")
    assert "a warning of its own" in stderr_of(
        "import networking_vcenter.cli, warnings; "
        "warnings.warn('a warning of its own')")

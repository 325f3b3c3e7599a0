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

"""The session's hard deadline against a vCenter that does not answer in time.

With the DEFAULT settings (api_timeout = 30 s, api_retry_count = 10), a call
made inside ``Session.budget(3)`` must return -- raise TransientFault -- within
3 s + 1 s whether vCenter is black-holed or answers every request 25 s late
(below api_timeout, so the per-request timeout alone would never fire).  The
driver reaches the simulator through :mod:`tools.faultproxy`.
"""

from __future__ import annotations

import os
import sys
import threading
import time
import unittest

from oslo_config import cfg
import pytest
from pyVmomi import vim, vmodl

from networking_vcenter import conf
from networking_vcenter import exceptions
from networking_vcenter.vsphere import switches
from networking_vcenter.vsphere.session import Session
from tests.fixtures.vcsim import Vcsim

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..",
                                "tools"))
import faultproxy  # noqa: E402

# Wall-clock bounds: run while no other xdist worker runs (tests/conftest.py).
pytestmark = pytest.mark.serial

BUDGET = 3.0
SLACK = 1.0
LATE_MS = 25_000      # every response 25 s late: below api_timeout (30 s)


def default_settings(host: str, port: int, **overrides) -> conf.Settings:
    """conf.load's own defaults for everything not about where vCenter is."""
    opts = cfg.ConfigOpts()
    conf.register_opts(opts)
    values = {"host_ip": host, "host_port": port, "host_username": "user",
              "host_password": "pass", "insecure": True,
              "switch_mappings": ["physnet1:DVS0"],
              "compute_hosts": ["vc-compute-1:DC0_C0"], **overrides}
    for name, value in values.items():
        opts.set_override(name, value, group=conf.GROUP)
    opts([], project="networking-vcenter-test")
    return conf.load(opts)


class DeadlineTestCase(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.vcsim = Vcsim().start()
        cls.proxy = faultproxy.FaultProxy(cls.vcsim.host,
                                          cls.vcsim.port).start()

    @classmethod
    def tearDownClass(cls):
        cls.proxy.stop()
        cls.vcsim.stop()

    def setUp(self):
        self.proxy.mode = "pass"
        self.proxy.delay_ms = LATE_MS
        self.settings = default_settings(self.proxy.host, self.proxy.port)
        self.assertEqual((30.0, 10), (self.settings.api_timeout,
                                      self.settings.api_retry_count))
        self.session = Session(self.settings)
        self.addCleanup(self.close_session)

    def close_session(self):
        self.proxy.mode = "pass"
        self.session.close()

    def find_dvs(self):
        """One ordinary read: the distributed switch by inventory path."""
        index = self.session.content.searchIndex
        return self.session.call("find DVS0", index.FindByInventoryPath,
                                 "DC0/network/DVS0")

    def assert_bounded(self, fn, budget=BUDGET):
        """``fn`` under ``budget`` raises TransientFault within budget+1 s;
        returns the time it took."""
        t0 = time.monotonic()
        with self.assertRaises(exceptions.TransientFault):
            with self.session.budget(budget):
                fn()
        elapsed = time.monotonic() - t0
        self.assertLessEqual(elapsed, budget + SLACK)
        return elapsed


class TestDeadline(DeadlineTestCase):

    def test_black_holed_vcenter_before_login(self):
        self.proxy.mode = "drop"
        self.assert_bounded(self.find_dvs)

    def test_black_holed_vcenter_after_login(self):
        self.assertIsNotNone(self.find_dvs())
        self.proxy.mode = "drop"
        elapsed = self.assert_bounded(self.find_dvs)
        # The socket timeout was the time left, not api_timeout, and no
        # retry was attempted past the deadline.
        self.assertGreaterEqual(elapsed, BUDGET - 0.5)
        # API hooks are told: they leave work to the worker at once.
        self.assertIsNotNone(self.session.unreachable_for())

    def test_vcenter_answering_25s_late(self):
        self.assertIsNotNone(self.find_dvs())
        self.proxy.mode = "delay"
        self.assert_bounded(self.find_dvs)

    def test_vcenter_answering_25s_late_before_login(self):
        self.proxy.mode = "delay"
        self.assert_bounded(self.find_dvs)

    def test_budgets_of_threads_are_their_own(self):
        """Threads sharing the session and its connection pool each get
        their own deadline and socket timeouts."""
        self.assertIsNotNone(self.find_dvs())
        self.proxy.mode = "delay"
        budgets = [1.0, 2.0, 3.0]
        elapsed: dict[float, float] = {}
        errors: dict[float, BaseException] = {}

        def run(budget):
            t0 = time.monotonic()
            try:
                with self.session.budget(budget):
                    self.find_dvs()
            except BaseException as exc:  # noqa: BLE001 - checked below
                errors[budget] = exc
            elapsed[budget] = time.monotonic() - t0

        threads = [threading.Thread(target=run, args=(b,)) for b in budgets]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        for budget in budgets:
            self.assertIsInstance(errors.get(budget),
                                  exceptions.TransientFault)
            self.assertLessEqual(elapsed[budget], budget + SLACK)
            self.assertGreaterEqual(elapsed[budget], budget - 0.5)

    def test_no_call_once_the_budget_is_spent(self):
        self.assertIsNotNone(self.find_dvs())
        accepted = self.proxy.accepted
        self.session._stub.DropConnections()   # a request would connect
        t0 = time.monotonic()
        with self.assertRaises(exceptions.OutOfTime):
            with self.session.budget(0):
                self.find_dvs()
        # Refused before any request (no connection was made), at once.
        self.assertLess(time.monotonic() - t0, SLACK)
        self.assertEqual(accepted, self.proxy.accepted)

    def test_nested_budget_never_extends_the_outer_one(self):
        self.assertIsNotNone(self.find_dvs())
        self.proxy.mode = "drop"

        def nested():
            with self.session.budget(60):
                self.find_dvs()

        self.assert_bounded(nested, budget=1.0)

    def test_task_wait_bounded_by_the_time_left(self):
        dvs = self.find_dvs()
        name = "deadline-test-pg"
        task = self.session.call("create", dvs.AddDVPortgroup_Task, [
            switches.dvs_port_group_spec(name, 5, "test")])
        self.proxy.mode = "drop"
        self.assert_bounded(
            lambda: self.session.wait_for_tasks([task], "create"))
        self.proxy.mode = "pass"
        self.assertEqual([None], self.session.wait_for_tasks([task],
                                                             "create"))
        pg = next(p for p in dvs.portgroup if p.name == name)
        switches.destroy_dvs_port_group(self.session, pg, "clean up")

    def test_task_wait_never_past_task_timeout_retries_included(self):
        """Without a budget (the maintenance worker), a task wait against a
        black hole ends at task_timeout, not after api_retry_count retries
        of 30 s each."""
        self.session.close()
        self.session = Session(default_settings(
            self.proxy.host, self.proxy.port, task_timeout=2))
        dvs = self.find_dvs()
        name = "task-timeout-test-pg"
        task = self.session.call("create", dvs.AddDVPortgroup_Task, [
            switches.dvs_port_group_spec(name, 6, "test")])
        self.proxy.mode = "drop"
        t0 = time.monotonic()
        with self.assertRaises(exceptions.TaskTimeout):
            self.session.wait_for_tasks([task], "create")
        self.assertLessEqual(time.monotonic() - t0, 2 + SLACK)
        self.proxy.mode = "pass"
        pg = next(p for p in dvs.portgroup if p.name == name)
        switches.destroy_dvs_port_group(self.session, pg, "clean up")

    def test_api_still_answers_after_the_outage(self):
        self.proxy.mode = "drop"
        self.assert_bounded(self.find_dvs)
        self.proxy.mode = "pass"
        self.assertIsNotNone(self.find_dvs())
        self.assertIsNone(self.session.unreachable_for())


class TestCallTimeout(DeadlineTestCase):
    """``Session.call(timeout=)``: one call's socket timeout, e.g. a long
    poll that must outlast api_timeout (a short one here, to be quick)."""

    def setUp(self):
        super().setUp()
        self.session.close()
        self.settings = default_settings(self.vcsim.host, self.vcsim.port,
                                         api_timeout=2)
        self.session = Session(self.settings)

    def long_poll(self, **kwargs):
        content = self.session.content
        pc = self.session.call("collector", content.propertyCollector
                               .CreatePropertyCollector)
        self.addCleanup(self.session.call, "drop collector",
                        pc.DestroyPropertyCollector)
        PC = vmodl.query.PropertyCollector
        self.session.call("filter", pc.CreateFilter, PC.FilterSpec(
            objectSet=[PC.ObjectSpec(obj=content.rootFolder)],
            propSet=[PC.PropertySpec(type=vim.Folder, pathSet=["name"])]),
            partialUpdates=False)
        first = self.session.call("first", pc.WaitForUpdatesEx, "",
                                  PC.WaitOptions(maxWaitSeconds=0))
        t0 = time.monotonic()
        # Nothing changes: vCenter answers after maxWaitSeconds (3 s).
        update = self.session.call("long poll", pc.WaitForUpdatesEx,
                                   first.version,
                                   PC.WaitOptions(maxWaitSeconds=3),
                                   attempts=0, **kwargs)
        return update, time.monotonic() - t0

    def test_long_poll_outlasts_api_timeout_with_its_own_timeout(self):
        update, elapsed = self.long_poll(timeout=3 + 2)
        self.assertIsNone(update)
        self.assertGreaterEqual(elapsed, 2.5)

    def test_long_poll_cut_by_api_timeout_without_it(self):
        with self.assertRaises(exceptions.TransientFault):
            self.long_poll()

    def test_call_timeout_still_bounded_by_the_budget(self):
        t0 = time.monotonic()
        with self.assertRaises(exceptions.TransientFault):
            with self.session.budget(1):
                self.long_poll(timeout=60)
        self.assertLess(time.monotonic() - t0, 1 + SLACK)

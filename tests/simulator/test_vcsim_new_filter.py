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

"""Simulator patch 0011: a filter created on a collector that is already
long-polled is reported at once, as vCenter does.

The driver's replica long-polls one PropertyCollector; a task is awaited by
adding a filter for it to that collector (one CreateFilter) from another
thread of the same session.  vCenter then answers the waiting
WaitForUpdatesEx -- or the next one -- with the task's current state
("enter").  The stock simulator looks at a new filter only when something
unrelated changes, and its task has already ended inside the call that
started it, so the wait would sleep to its maxWaitSeconds.
"""

import concurrent.futures
import time

import pytest
from pyVmomi import vim, vmodl

from tests.fixtures.vcsim import Vcsim

PC = vmodl.query.PropertyCollector
# What a wait answered "at once" may take, on a busy machine (the stock
# simulator answers after the wait's maxWaitSeconds, 10 s here).
AT_ONCE = 2.0


@pytest.fixture(scope="module")
def sim():
    with Vcsim(clusters=1, hosts=1, vms=1) as s:
        yield s


@pytest.fixture
def si(sim):
    return sim.connect()


def _vm(si):
    view = si.content.viewManager.CreateContainerView(
        si.content.rootFolder, [vim.VirtualMachine], True)
    try:
        return view.view[0]
    finally:
        view.DestroyView()


class _Collector:
    """A collector long-polled as the replica does: one filter over the root
    folder's name (which nothing here changes), first read done."""

    def __init__(self, si):
        self.pc = si.content.propertyCollector.CreatePropertyCollector()
        self.pc.CreateFilter(PC.FilterSpec(
            objectSet=[PC.ObjectSpec(obj=si.content.rootFolder)],
            propSet=[PC.PropertySpec(type=vim.Folder, pathSet=["name"])]),
            partialUpdates=False)
        self.version = self.pc.WaitForUpdatesEx(
            "", PC.WaitOptions(maxWaitSeconds=0)).version

    def wait(self, seconds):
        """The next answer: ({moid: (kind, {path: value})}, seconds taken)."""
        t0 = time.monotonic()
        update = self.pc.WaitForUpdatesEx(
            self.version, PC.WaitOptions(maxWaitSeconds=seconds))
        took = time.monotonic() - t0
        if update is None:
            return {}, took
        self.version = update.version
        return {o.obj._moId: (o.kind, {c.name: c.val for c in o.changeSet})
                for fs in update.filterSet for o in fs.objectSet}, took

    def watch_task(self, task):
        return self.pc.CreateFilter(PC.FilterSpec(
            objectSet=[PC.ObjectSpec(obj=task)],
            propSet=[PC.PropertySpec(type=vim.Task,
                                     pathSet=["info.state", "info.error"])]),
            partialUpdates=False)

    def close(self):
        self.pc.DestroyPropertyCollector()


def _task(si):
    """A task that has ended (in the simulator, inside the call)."""
    vm = _vm(si)
    task = vm.ReconfigVM_Task(vim.vm.ConfigSpec(
        annotation=f"touched {time.monotonic()}"))
    assert task.info.state == "success"
    return task


def _state(seen, task):
    kind, props = seen.get(task._moId, (None, {}))
    return kind, props.get("info.state")


def test_a_filter_created_while_the_collector_waits_is_reported_at_once(si):
    collector = _Collector(si)
    try:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            waiting = pool.submit(collector.wait, 10)
            time.sleep(0.3)             # it waits
            task = _task(si)
            time.sleep(0.3)             # the task's changes passed it by
            assert not waiting.done()
            t0 = time.monotonic()
            collector.watch_task(task)
            seen, _ = waiting.result(timeout=15)
            took = time.monotonic() - t0
        assert _state(seen, task) == ("enter", "success"), \
            seen
        assert took < AT_ONCE, f"answered after {took:.1f}s"
    finally:
        collector.close()


def test_a_filter_created_between_waits_is_reported_by_the_next(si):
    collector = _Collector(si)
    try:
        task = _task(si)
        # A wait that lets the task's changes pass (nothing watches it yet).
        seen, _ = collector.wait(1)
        assert task._moId not in seen
        flt = collector.watch_task(task)
        seen, took = collector.wait(10)
        assert _state(seen, task) == ("enter", "success"), \
            seen
        assert took < AT_ONCE, f"answered after {took:.1f}s"
        # Reported once: the next wait has nothing (and waits it out).
        seen, took = collector.wait(1)
        assert seen == {} and took >= 0.9
        flt.DestroyPropertyFilter()
    finally:
        collector.close()


def test_filters_created_and_destroyed_concurrently_are_all_kept_apart(si):
    """Many threads of one session add and remove filters while the
    collector waits: none is lost, none that was destroyed stays, and the
    wait goes on answering."""
    collector = _Collector(si)
    try:
        tasks = [_task(si) for _ in range(8)]

        def churn(task):
            flt = collector.watch_task(task)
            kept = collector.watch_task(task)
            flt.DestroyPropertyFilter()
            return kept

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            waiting = pool.submit(collector.wait, 10)
            kept = list(pool.map(churn, tasks * 3))
            seen, _ = waiting.result(timeout=15)
        assert {f._moId for f in collector.pc.filter} >= \
            {f._moId for f in kept}
        assert len(collector.pc.filter) == 1 + len(kept)
        assert set(seen) <= {t._moId for t in tasks}
        for flt in kept:
            flt.DestroyPropertyFilter()
        assert len(collector.pc.filter) == 1
    finally:
        collector.close()

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

"""Task waits on the replica's collector (issue 15) against the simulator.

With a replica running, the session awaits its tasks on the replica's own
collector: one CreateFilter, no collector per task; the ports a task wrote
are read by the replica thread before the wait returns.  What must not
change: the typed error of a task's fault, TaskTimeout at task_timeout,
OutOfTime at the caller's budget, several threads waiting at once, and a
reload of the replica (its collector lost) never losing a task's end.
Without a current replica the session waits on a collector of its own.
"""

from __future__ import annotations

import collections
import dataclasses
import threading
import time
from unittest import mock

import pytest

from networking_vcenter import exceptions
from networking_vcenter.vsphere import inventory
from networking_vcenter.vsphere import ports
from networking_vcenter.vsphere import session as session_mod
from networking_vcenter.vsphere.inventory import PortSettings
from networking_vcenter.vsphere.replica import Replica
from tests.functional.test_ports_vsphere import (  # noqa: F401 (fixtures)
    REPLICA, _as, _destroy, _our_group, _raw_ports, reader, requests, sim)
from tests.functional.test_ports_vsphere import _settings as base_settings

SLACK = 1.0


def _count(calls, replica=False):
    return dict(collections.Counter(
        m for t, m in calls if (t == REPLICA) == replica))


@pytest.fixture
def running(sim, reader):
    """(session, replica, port group) -- a running replica, the session's
    task watcher, and one of our port groups it holds the ports of."""
    session = session_mod.Session(_settings(sim, task_timeout=5))
    replica = Replica(session, _settings(sim, task_timeout=5))
    replica.start()
    pg = _our_group(session, reader, 420)
    assert replica.wait_until(lambda inv: pg["key"] in inv.dv_ports, 10)
    yield session, replica, pg
    replica.stop()
    session.close()
    _destroy(reader, pg)


def _settings(sim, **overrides):
    return dataclasses.replace(base_settings(sim), **overrides)


def _held(replica, pg, key):
    (port,) = [p for p in replica.snapshot().dv_ports[pg["key"]]
               if p.key == key]
    return port


def _configure(session, replica, pg, key, name, settings=None, version=None):
    """One ReconfigureDVPort_Task through the session, its port read back
    (what the applier does); the port's configVersion as the replica held
    it unless given."""
    dvs = _as(session, replica.snapshot().dvs(pg["switch"]).ref)
    if version is None:
        version = _held(replica, pg, key).config_version
    spec = ports.port_spec((key, version, name, settings), False)
    return session.run_task(f"configure port {key}",
                            dvs.ReconfigureDVPort_Task, [spec],
                            read_back=(dvs, frozenset({key})))


def test_a_task_is_awaited_on_the_replica_and_its_port_read_there(
        running, reader):
    session, replica, pg = running
    assert session.watcher is replica
    key = sorted(_raw_ports(reader, pg), key=int)[0]
    before = _held(replica, pg, key)
    with requests() as calls:
        _configure(session, replica, pg, key, "one",
                   PortSettings(blocked=True))
        held = _held(replica, pg, key)      # published before the return
    assert _count(calls) == {"ReconfigureDVPort_Task": 1,
                             "CreateFilter": 1}, calls
    assert _count(calls, replica=True).get("FetchDVPorts") == 1, calls
    raw = _raw_ports(reader, pg)[key]
    assert (held.name, held.config_version, held.settings) == (
        "one", raw.config.configVersion, PortSettings(blocked=True))
    assert int(held.config_version) == int(before.config_version) + 1
    # The task's filter is gone again (destroyed by the replica thread).
    assert _wait_for(lambda: len(replica._collector.filter) == 1)


def _wait_for(predicate, timeout=5):
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            return False
        time.sleep(0.05)
    return True


def test_a_task_fault_is_typed_as_before(running, reader):
    session, replica, pg = running
    key = sorted(_raw_ports(reader, pg), key=int)[1]
    stale = _held(replica, pg, key).config_version
    _configure(session, replica, pg, key, "first")
    with pytest.raises(exceptions.ConcurrentModification):
        _configure(session, replica, pg, key, "stale", version=stale)
    with pytest.raises(exceptions.NotFound):
        _configure(session, replica, pg, "no-such-port", "x", version="0")
    assert _raw_ports(reader, pg)[key].config.name == "first"


def test_threads_waiting_at_once_each_get_their_own_task(running, reader):
    session, replica, pg = running
    keys = sorted(_raw_ports(reader, pg), key=int)[:6]
    errors: list[BaseException] = []

    def run(i, key):
        try:
            with session.budget(20):
                _configure(session, replica, pg, key, f"thread-{i}")
        except BaseException as exc:  # noqa: BLE001 - checked below
            errors.append(exc)

    with requests() as calls:
        threads = [threading.Thread(target=run, args=(i, k))
                   for i, k in enumerate(keys)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    assert errors == []
    assert _count(calls).get("CreatePropertyCollector") is None, calls
    assert _count(calls)["CreateFilter"] == len(keys)
    raw = _raw_ports(reader, pg)
    for i, key in enumerate(keys):
        held = _held(replica, pg, key)
        assert (held.name, held.config_version) == (
            f"thread-{i}", raw[key].config.configVersion)


def test_a_reload_while_waiting_never_loses_the_task_end(running, reader):
    """The replica's answer with the task's end is lost (the connection
    fails as it comes): the replica reloads -- a new collector -- and
    watches the task again there; its end comes as an "enter"."""
    session, replica, pg = running
    key = sorted(_raw_ports(reader, pg), key=int)[2]
    real = replica._task_updates
    lost = []

    def lose_first(sets):
        if sets and not lost:
            lost.append(sets)
            raise exceptions.TransientFault("wait for inventory changes",
                                            "connection reset")
        return real(sets)

    reloads = replica.reloads
    with mock.patch.object(replica, "_task_updates", lose_first):
        _configure(session, replica, pg, key, "across a reload")
    assert lost and replica.reloads == reloads + 1
    held = _held(replica, pg, key)
    assert (held.name, held.config_version) == (
        "across a reload", _raw_ports(reader, pg)[key].config.configVersion)


def test_a_reload_after_the_task_ended_answers_from_its_full_read(
        running, reader):
    """The replica saw the task end but its read of the port failed: the
    reload's full read has the port; the waiter is answered from it."""
    session, replica, pg = running
    key = sorted(_raw_ports(reader, pg), key=int)[3]
    real = replica._read_written
    failed = []

    def fail_first(ended):
        if ended and not failed:
            failed.append(ended)
            raise exceptions.TransientFault("read ports", "connection reset")
        return real(ended)

    with mock.patch.object(replica, "_read_written", fail_first):
        _configure(session, replica, pg, key, "read by the reload")
    assert failed
    held = _held(replica, pg, key)
    assert (held.name, held.config_version) == (
        "read by the reload",
        _raw_ports(reader, pg)[key].config.configVersion)


@pytest.mark.serial     # wall-clock bounds of a second: no other worker runs
def test_deadlines_hold_on_the_replica(running, reader):
    """A task whose end the replica never sees: OutOfTime at the caller's
    budget, TaskTimeout at task_timeout (5 s here) -- as on an own
    collector -- and the wait's filter is removed afterwards."""
    session, replica, pg = running
    key = sorted(_raw_ports(reader, pg), key=int)[4]
    with mock.patch.object(replica, "_task_updates", lambda sets: []):
        t0 = time.monotonic()
        with pytest.raises(exceptions.OutOfTime):
            with session.budget(1):
                _configure(session, replica, pg, key, "budget")
        assert time.monotonic() - t0 <= 1 + SLACK
        t0 = time.monotonic()
        with pytest.raises(exceptions.TaskTimeout):
            with session.budget(30):
                _configure(session, replica, pg, key, "task timeout",
                           version=_raw_ports(reader, pg)[key]
                           .config.configVersion)
        assert 5 - SLACK <= time.monotonic() - t0 <= 5 + SLACK
    # The abandoned waits' filters are destroyed at the replica's next
    # answer (a change anywhere; a port group here).
    other = _our_group(session, reader, 421)
    try:
        assert _wait_for(lambda: len(replica._collector.filter) == 1)
    finally:
        _destroy(reader, other)


def test_without_a_current_replica_the_session_waits_on_its_own(
        running, reader):
    session, replica, pg = running
    key = sorted(_raw_ports(reader, pg), key=int)[5]
    with mock.patch.object(Replica, "current", new=False), requests() as calls:
        _configure(session, replica, pg, key, "own collector")
    assert _count(calls) == {
        "ReconfigureDVPort_Task": 1, "CreatePropertyCollector": 1,
        "CreateFilter": 1, "WaitForUpdatesEx": 1,
        "DestroyPropertyCollector": 1, "FetchDVPorts": 1}, calls
    held = _held(replica, pg, key)
    assert (held.name, held.config_version) == (
        "own collector", _raw_ports(reader, pg)[key].config.configVersion)


def test_a_stopped_replica_is_no_watcher(sim, reader):
    session = session_mod.Session(_settings(sim))
    replica = Replica(session, _settings(sim))
    try:
        replica.start()
        assert session.watcher is replica
        replica.stop()
        assert session.watcher is None
        # A task still runs and is awaited (on the session's own).
        pg = _our_group(session, reader, 422)
        _destroy(reader, pg)
    finally:
        replica.stop()
        session.close()


def test_inventory_marks_are_untouched_by_task_filters(running):
    """The tasks' updates never enter the inventory."""
    session, replica, pg = running
    inv = replica.snapshot()
    assert not any("task" in moid for moid in replica._objects)
    assert isinstance(inv, inventory.Inventory)

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

"""A lock backend that does not answer never holds a lock wait past its
bound: joining it goes on in its own thread (issue 13: a backend down must
not stop Neutron).  tooz's Redis client retries a refused connection for
about a minute (redis-py's retries inside tooz's), which every lock of an
API hook used to wait out."""

from __future__ import annotations

import logging
import threading
import time

import pytest
from tooz import coordination

from networking_vcenter import exceptions
from networking_vcenter.reconcile import locks as locks_mod

SECRET = "S3cr3t-pw"


def test_redis_that_refuses_is_busy_within_the_join_wait(caplog):
    """The real client on a port nobody listens on."""
    caplog.set_level(logging.DEBUG)
    locks = locks_mod.Locks(f"redis://:{SECRET}@127.0.0.1:1")
    try:
        began = time.monotonic()
        with pytest.raises(exceptions.LockBusy) as err:
            with locks.hold("network-x", timeout=1):
                pass
        took = time.monotonic() - began
    finally:
        locks.stop()
    assert took < locks_mod.JOIN_WAIT + 3, took
    text = str(err.value)
    assert "[ml2_vcenter] coordination_backend_url" in text
    assert "127.0.0.1:1" in text and SECRET not in text
    assert SECRET not in caplog.text


class _Lock:
    def __init__(self, held):
        self.held = held

    def acquire(self, blocking=True):
        self.held.append("acquire")
        return True

    def release(self):
        self.held.append("release")


class _SlowCoordinator:
    """Joins once ``go`` is set (or fails with ``fail``)."""

    def __init__(self):
        self.go = threading.Event()
        self.fail: Exception | None = None
        self.started = self.stopped = 0
        self.held: list[str] = []

    def start(self, start_heart=False):
        self.go.wait(30)
        if self.fail is not None:
            raise self.fail
        self.started += 1

    def stop(self):
        self.stopped += 1

    def get_lock(self, name):
        return _Lock(self.held)


@pytest.fixture
def slow(monkeypatch):
    coordinator = _SlowCoordinator()
    monkeypatch.setattr(coordination, "get_coordinator",
                        lambda url, member: coordinator)
    return coordinator


def test_a_slow_join_is_busy_then_done_in_the_background(slow):
    locks = locks_mod.Locks("redis://127.0.0.1:6379")
    began = time.monotonic()
    with pytest.raises(exceptions.LockBusy):
        with locks.hold("network-x", timeout=0.1):
            pass
    assert locks_mod.JOIN_WAIT <= time.monotonic() - began < \
        locks_mod.JOIN_WAIT + 2
    assert slow.held == []
    slow.go.set()                       # the backend answers
    with locks.hold("network-x", timeout=0.1) as got:
        assert got
    assert slow.started == 1            # one join, not one per lock
    assert slow.held == ["acquire", "release"]
    locks.stop()
    assert slow.stopped == 1


def test_a_join_that_fails_is_a_configuration_error_and_tried_again(slow):
    slow.fail = coordination.ToozConnectionError("refused")
    slow.go.set()
    locks = locks_mod.Locks("redis://127.0.0.1:6379")
    with pytest.raises(exceptions.ConfigError):
        with locks.hold("network-x", timeout=1):
            pass
    slow.fail = None                    # back
    with locks.hold("network-x", timeout=1) as got:
        assert got
    assert slow.started == 1


def test_stopped_while_joining_leaves_at_once(slow):
    locks = locks_mod.Locks("redis://127.0.0.1:6379")
    with pytest.raises(exceptions.LockBusy):
        with locks.hold("network-x", timeout=0):
            pass
    locks.stop()                        # before the backend answered
    slow.go.set()
    deadline = time.monotonic() + 5
    while slow.stopped == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert (slow.started, slow.stopped) == (1, 1)


def test_an_explicit_start_waits_for_the_backend(slow):
    """``start`` (the CLI's) waits for the answer, as before."""
    locks = locks_mod.Locks("redis://127.0.0.1:6379")
    threading.Timer(0.3, slow.go.set).start()
    locks.start()
    assert slow.started == 1
    locks.stop()


def test_redis_that_dies_after_the_join_never_holds_a_lock_call(tmp_path,
                                                                caplog):
    """The real client and a real Redis, stopped once joined (and once a
    lock is held): taking a lock and letting one go each end within their
    bound, not after the minute tooz and redis-py retry a refused
    connection (measured: 59.9 s each); leaving the backend too."""
    import pathlib
    import sys
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] /
                           "tools"))
    import lock_backends
    backend = lock_backends.start_backend("redis", str(tmp_path / "redis"))
    locks = locks_mod.Locks(backend.url)
    try:
        with locks.hold("network-a", timeout=1) as got:
            assert got
            backend.stop()          # dies while the lock is held
            began = time.monotonic()
        let_go = time.monotonic() - began
        assert let_go < locks_mod.JOIN_WAIT + 1, let_go
        assert "did not answer" in caplog.text
        began = time.monotonic()
        with pytest.raises(exceptions.LockBusy) as err:
            with locks.hold("network-b", timeout=1):
                pass
        took = time.monotonic() - began
        assert took < 1 + locks_mod.JOIN_WAIT + 1, took
        assert "[ml2_vcenter] coordination_backend_url" in str(err.value)
        began = time.monotonic()
        locks.stop()                # leaving it too
        assert time.monotonic() - began < locks_mod.JOIN_WAIT + 1
    finally:
        backend.stop()
        locks.stop()

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

"""One maintenance worker per vCenter (issue 13 point 3), on real tooz
backends: the default ``file://`` one (two coordinators in this process, and
a holder in a process of its own killed with SIGKILL), and a private Redis
and etcd (tools/lock_backends.py) with a short lock time to live, for the
release of a dead holder's lock by expiry.  The worker's side (nothing done
while another holds the lock, a full pass and a heartbeat when taken over,
nothing more once lost) on the stand-in reconciler of test_worker.py."""

from __future__ import annotations

import logging
import os
import pathlib
import signal
import subprocess
import sys
import threading
import time
import types

import pytest
import tooz

from networking_vcenter import agent
from networking_vcenter.reconcile import leadership as leadership_mod
from networking_vcenter.reconcile import locks as locks_mod
from tests.unit.test_worker import NET, Rec, worker_mod

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))
import lock_backends  # noqa: E402,I202 - tools/

SECRET = "S3cr3t-pw"
NAME = "maintenance-test@vc.example"

# A holder in a process of its own: prints "held" once it holds the lock,
# then keeps it (tooz's heartbeat renewing it) until killed.
HOLDER = """
import sys, time
from networking_vcenter.reconcile import leadership, locks
leadership.MYSQL_IDLE = int(sys.argv[3])
held = leadership.Leadership(locks.Locks(sys.argv[1]), sys.argv[2],
                             every=0.1)
held.start()
while not held.held:
    time.sleep(0.05)
print("held", flush=True)
time.sleep(600)
"""


def settings(**kw):
    return types.SimpleNamespace(**{"deployment_name": "default",
                                    "host_ip": "vc.example", "name": "",
                                    **kw})


def wait_for(predicate, timeout, interval=0.02):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


@pytest.fixture
def file_url(tmp_path):
    return f"file://{tmp_path}/locks"


@pytest.fixture
def made():
    """Leaderships (and their Locks) made by a test, stopped after it."""
    out = []

    def make(url, name=NAME, every=0.05):
        lead = leadership_mod.Leadership(locks_mod.Locks(url), name,
                                         every=every)
        out.append(lead)
        return lead
    yield make
    for lead in out:
        lead.stop()
        lead._locks.stop()


def test_lock_name_is_per_vcenter_and_fits_mysql():
    a = leadership_mod.lock_name(settings())
    b = leadership_mod.lock_name(settings(host_ip="vc2.example"))
    c = leadership_mod.lock_name(settings(deployment_name="other"))
    assert a == "maintenance-default@vc.example"
    assert len({a, b, c}) == 3
    long = leadership_mod.lock_name(settings(host_ip="v" * 200))
    odd = leadership_mod.lock_name(settings(host_ip="a/b c"))
    for name in (long, odd):
        assert name.startswith("maintenance-")
        assert "/" not in name and " " not in name
    # MySQL's named locks take 64 characters at most.
    assert len("networking-vcenter-" + long) == 64
    assert long != leadership_mod.lock_name(settings(host_ip="v" * 201))
    # One of several vCenters: by its name.
    assert leadership_mod.lock_name(settings(name="site-a")) == \
        "maintenance-default@site-a"


def test_second_cannot_hold_while_first_does(file_url, made):
    first, second = made(file_url), made(file_url)
    assert first.beat() is True
    for _ in range(3):
        assert second.beat() is False
        assert first.beat() is True         # checked, still its own
    first.stop()
    assert not first.held
    assert second.beat() is True
    assert first.beat() is False


def test_never_two_holders_while_they_take_turns(file_url, made):
    """Both trying every 50 ms in their own threads; sampled all along:
    never both at once; the other takes over when the holder stops."""
    leads = [made(file_url), made(file_url)]
    both, samples, stop = [], [0], threading.Event()

    def sample():
        while not stop.is_set():
            if all(lead.held for lead in leads):
                both.append(time.monotonic())
            samples[0] += 1
    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        for lead in leads:
            lead.start()
        assert wait_for(lambda: any(lead.held for lead in leads), 5)
        holder = next(lead for lead in leads if lead.held)
        other = next(lead for lead in leads if lead is not holder)
        time.sleep(0.3)                     # the other keeps trying
        assert not other.held
        holder.stop()
        assert wait_for(lambda: other.held, 2), "no takeover"
    finally:
        stop.set()
        sampler.join()
    assert samples[0] > 100
    assert not both, "two holders at once"


@pytest.mark.parametrize("kind", ["file", "redis", "etcd"])
def test_takeover_after_the_holder_is_killed(kind, file_url, made,
                                             tmp_path):
    """A holder in another process, killed with SIGKILL: the lock is taken
    here within the backend's release time -- at once for a file lock (the
    kernel drops it), the lock's time to live (3 s here, tooz's
    ``lock_timeout``; 30 s by default) for Redis and etcd."""
    backend = None
    if kind == "file":
        url, bound = file_url, 1.0
    else:
        backend = lock_backends.start_backend(kind, str(tmp_path / kind))
        url = backend.url + "?lock_timeout=2"
        bound = 2.0
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen([sys.executable, "-c", HOLDER, url, NAME, "30"],
                             stdout=subprocess.PIPE, text=True, env=env)
    here = None
    try:
        assert child.stdout.readline().strip() == "held"
        here = made(url)
        for _ in range(3):
            assert here.beat() is False, "held by both processes"
            time.sleep(0.1)
        if kind == "redis":
            # The child's tooz heartbeat renews the lock past its first
            # time to live: still not ours (the same heartbeat renews the
            # etcd lease).
            time.sleep(2.5)
            assert here.beat() is False
        os.kill(child.pid, signal.SIGKILL)
        child.wait(10)
        killed = time.monotonic()
        assert wait_for(here.beat, bound + 3, 0.05), "no takeover"
        took = time.monotonic() - killed
        print(f"{kind}: taken over {took:.2f}s after SIGKILL")
        assert took < bound + 2.5
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)
        child.stdout.close()
        if backend is not None:
            # Before the backend stops (a Redis client retries for long).
            if here is not None:
                here.stop()
                here._locks.stop()
            backend.stop()


@pytest.fixture
def redis(tmp_path):
    backend = lock_backends.start_backend("redis", str(tmp_path / "redis"))
    yield backend
    backend.stop()


def test_stop_lets_go_at_once_and_quietly(redis, made, caplog):
    """A holder that stops lets the lock go (the next one need not wait for
    its time to live); one that never held it releases nothing (tooz's
    Redis lock would log an error)."""
    first, second = made(redis.url), made(redis.url)
    assert first.beat() is True
    assert second.beat() is False
    caplog.set_level(logging.INFO)
    second.stop()
    first.stop()
    third = made(redis.url)
    assert third.beat() is True
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    for lead in (first, second, third):     # before the server stops
        lead.stop()
        lead._locks.stop()


def test_frozen_mysql_holder_dropped_after_its_wait_timeout(tmp_path, made):
    """A holder whose host stops answering (here: its process stopped with
    SIGSTOP; its connection stays open): MariaDB drops the connection, and
    the lock, after the ``wait_timeout`` the holder set on it
    (``MYSQL_IDLE``, 30 s; 2 s here), and the lock is taken here.
    Without it the database would keep it for hours (8 h by default)."""
    backend = lock_backends.start_backend("mariadb", str(tmp_path / "db"))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen([sys.executable, "-c", HOLDER, backend.url,
                              NAME, "2"],
                             stdout=subprocess.PIPE, text=True, env=env)
    here = None
    try:
        assert child.stdout.readline().strip() == "held"
        here = made(backend.url)
        assert here.beat() is False
        os.kill(child.pid, signal.SIGSTOP)
        stopped = time.monotonic()
        assert here.beat() is False         # the connection is still open
        assert wait_for(here.beat, 2 + 5, 0.1), "no takeover"
        took = time.monotonic() - stopped
        print(f"mysql: taken over {took:.2f}s after SIGSTOP")
        assert 1.5 < took < 2 + 3
    finally:
        child.kill()
        child.wait(10)
        child.stdout.close()
        if here is not None:
            here.stop()
            here._locks.stop()
        backend.stop()


def test_lost_lock_stops_at_once(redis, made, caplog):
    """The holder's key deleted behind its back (as an expiry would) and
    taken by another: the holder's next check says so and it stops."""
    lead, other = made(redis.url), made(redis.url)
    changes = []
    lead.on_change = lambda: changes.append(lead.held)
    assert lead.beat() is True
    assert other.beat() is False
    head, tail = lock_backends.REDIS_LOCK
    assert redis.command("DEL", f"{head}networking-vcenter-{NAME}{tail}") == 1
    assert other.beat() is True
    caplog.set_level(logging.INFO)
    assert lead.beat() is False
    assert changes == [True, False]
    lost = [r for r in caplog.records if "lost the lock" in r.getMessage()]
    assert len(lost) == 1 and lost[0].levelname == "ERROR"
    assert "another holds it" in lost[0].getMessage()
    # Tried again later: the other still holds it.
    assert lead.beat() is False
    assert other.beat() is True
    for lead in (lead, other):      # before the server stops
        lead.stop()
        lead._locks.stop()


def test_backend_error_stops_the_holder_password_masked(
        redis, made, monkeypatch, caplog):
    """The backend failing under the holder: held turns False at once, the
    worker is told, the error is logged with the backend's password
    masked (Locks' masking)."""
    lead = made(redis.url)
    changes = []
    lead.on_change = lambda: changes.append(lead.held)
    assert lead.beat() is True

    def fails(lock):
        raise tooz.ToozError(f"Error connecting to {redis.url}: password "
                             f"{redis.password} refused")
    monkeypatch.setattr(leadership_mod, "confirm", fails)
    caplog.set_level(logging.DEBUG)
    assert lead.beat() is False
    assert changes == [True, False]
    assert redis.password not in caplog.text
    lost = [r.getMessage() for r in caplog.records
            if "lost the lock" in r.getMessage()]
    assert len(lost) == 1
    assert f"redis://:***@127.0.0.1:{redis.client_port}" in lost[0]
    # Taken again by a later try once the backend answers.
    monkeypatch.undo()
    assert lead.beat() is True
    assert changes == [True, False, True]
    lead.stop()
    lead._locks.stop()


def test_check_that_does_not_come_back_stops_the_holder(redis, made,
                                                       monkeypatch):
    """The backend out of reach under the holder (its check hangs, as a
    Redis client retrying for a minute would): the holder stops holding
    half the lock's life (2 s here) after its last check began, long
    before the key expires and another can take it -- and holds again only
    once a check comes back."""
    lead = made(redis.url + "?lock_timeout=2", every=0.1)
    lead.start()
    assert wait_for(lambda: lead.held, 5)
    hung, checks = threading.Event(), []
    real = leadership_mod.confirm

    def hangs(lock):
        checks.append(time.monotonic())
        hung.wait(10)
        return real(lock)
    monkeypatch.setattr(leadership_mod, "confirm", hangs)
    assert wait_for(lambda: checks, 2)
    assert wait_for(lambda: not lead.held, 2), "still held, unconfirmed"
    stopped = time.monotonic() - checks[0]
    assert stopped <= 1.0 + 0.2, stopped
    monkeypatch.setattr(leadership_mod, "confirm", real)
    hung.set()
    assert wait_for(lambda: lead.held, 2), "held again once confirmed"
    lead.stop()
    lead._locks.stop()


def test_agent_row_names_the_holder():
    inv = types.SimpleNamespace(dvs_portgroups=[], std_networks={},
                                dv_ports={})
    s = settings(host_port=443, switch_mappings={}, compute_hosts={})
    state = agent.state(s, inv, None, None, start=False,
                        holder="ctl-1:4242")
    assert state["configurations"]["maintenance_holder"] == "ctl-1:4242"
    assert leadership_mod.this_process().endswith(f":{os.getpid()}")


class Lead:
    """A stand-in leadership the test turns on and off."""

    holder = "here:1"

    def __init__(self):
        self.held = False
        self.on_change = None
        self.started = self.stopped = False

    def start(self):
        self.started = True

    def stop(self):
        self.stopped = True

    def turn(self, held):
        self.held = held
        self.on_change()


def test_worker_does_nothing_unless_it_holds_the_lock(monkeypatch):
    monkeypatch.setattr(worker_mod, "POLL", 0.02)
    rec, lead = Rec(), Lead()
    calls = {"token": 0, "beat": 0}

    def token():
        calls["token"] += 1
        return calls["token"]

    def beat(maintenance):
        calls["beat"] += 1
        return True
    m = worker_mod.Maintenance(rec, lambda ids: [], token, 0, 0,
                               heartbeat=beat, heartbeat_interval=60,
                               leadership=lead)
    assert m.holder == "here:1"
    m.start()
    try:
        assert lead.started
        m.enqueue([NET])
        time.sleep(0.3)
        # Another process holds it: no poll, no heartbeat, no pass, no
        # repair.
        assert calls == {"token": 0, "beat": 0}
        assert (rec.full, rec.calls) == (0, [])
        lead.turn(True)
        # Taken over: a full pass and a heartbeat at once, then polls.
        assert wait_for(lambda: rec.full == 1 and calls["beat"] == 1 and
                        calls["token"] > 2, 2)
        lead.turn(False)
        time.sleep(0.1)
        seen = (dict(calls), rec.full)
        m.enqueue([NET])
        time.sleep(0.3)
        assert (calls, rec.full) == seen
        assert rec.calls == []
        assert m.pending() == {}
    finally:
        m.stop()
    assert lead.stopped

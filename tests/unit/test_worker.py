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

"""The maintenance worker's queue on plain data: backoff, events, polls.

The reconciler here is a stand-in that records calls and fails on demand;
what a reconcile does against vCenter is tested in tests/functional.
"""

from __future__ import annotations

import threading
import time
import types

import pytest
from oslo_service import backend

# Neutron runs on oslo.service's threading backend (its own tests choose it
# too); importing neutron_lib.worker first would fix eventlet for the whole
# test run.
try:
    backend.init_backend(backend.BackendType.THREADING)
except backend.exceptions.BackendAlreadySelected:
    pass

from networking_vcenter import exceptions  # noqa: E402
from networking_vcenter.neutron_db import PortPrint  # noqa: E402
from networking_vcenter.reconcile import apply as apply_mod  # noqa: E402
from networking_vcenter.reconcile import desired  # noqa: E402
from networking_vcenter.reconcile import worker as worker_mod  # noqa: E402
from networking_vcenter.vsphere.replica import Event  # noqa: E402

NET = "0f9d2a1c-5b7e-4c1a-9e0b-3c4d5e6f7a8b"
OTHER = "1a2b3c4d-5e6f-4a1b-8c9d-0e1f2a3b4c5d"
PORT_A = "2b3c4d5e-6f7a-4b8c-9d0e-1f2a3b4c5d6e"
PORT_B = "3c4d5e6f-7a8b-4c9d-8e1f-2a3b4c5d6e7f"


class Rec:
    """Records reconciles; ``failures[net]`` times a network fails first."""

    replica = None

    def __init__(self, failures=None):
        self.failures = dict(failures or {})
        self.calls: list[tuple[str, float]] = []
        self.full = 0
        self.lock = threading.Lock()

    def sync_network(self, network_id, source, wait=-1):
        with self.lock:
            self.calls.append((network_id, time.monotonic()))
            if self.failures.get(network_id, 0) > 0:
                self.failures[network_id] -= 1
                raise exceptions.TransientFault(network_id, "vCenter busy")
        return types.SimpleNamespace(outcome=apply_mod.Outcome())

    def sync_all(self, source, grace, port_source=None):
        self.full += 1
        return types.SimpleNamespace(outcome=apply_mod.Outcome(),
                                     networks=[], skipped=set(), ports=None)

    def sync_ports(self, port_ids, source, port_source, wait=-1,
                   network_of=None, read_first=False):
        with self.lock:
            self.calls.append((frozenset(port_ids), time.monotonic()))
            self.network_of = network_of
        return types.SimpleNamespace(outcome=apply_mod.PortOutcome(),
                                     kept=set())


def run(maintenance, until, timeout=10.0):
    maintenance.start()
    try:
        t0 = time.monotonic()
        while not until() and time.monotonic() - t0 < timeout:
            time.sleep(0.01)
    finally:
        maintenance.stop()
    assert until()


@pytest.fixture
def fast(monkeypatch):
    monkeypatch.setattr(worker_mod, "BACKOFF", (0.05, 2.0, 0.2))
    monkeypatch.setattr(worker_mod, "POLL", 0.02)


def test_failed_network_retried_with_capped_exponential_backoff(fast):
    rec = Rec({NET: 5})
    m = worker_mod.Maintenance(rec, lambda ids: [], None, 0, 0)
    m.enqueue([NET])
    run(m, lambda: len(rec.calls) == 6)
    gaps = [b[1] - a[1] for a, b in zip(rec.calls, rec.calls[1:])]
    # 0.05, 0.1, 0.2, then capped at 0.2
    for gap, want in zip(gaps, (0.05, 0.1, 0.2, 0.2, 0.2)):
        assert want * 0.9 <= gap < want + 0.15, gaps
    assert rec.full == 1          # only the start's pass: no full pass waited


def test_busy_lock_retried_every_lock_wait_quietly(fast, monkeypatch,
                                                  caplog):
    """Another worker holding the lock (LockBusy) is no failure: the ports
    are tried again together every LOCK_WAIT seconds, without backoff and
    without a warning each (a bulk create made thousands), until the lock
    has been busy BUSY_WARN times in a row."""
    monkeypatch.setattr(worker_mod, "LOCK_WAIT", 0.05)
    monkeypatch.setattr(worker_mod, "BUSY_WARN", 4)
    rec = Rec()
    busy = [5]

    def sync_ports(port_ids, source, port_source, wait=-1, network_of=None,
                   read_first=False):
        with rec.lock:
            rec.calls.append((frozenset(port_ids), time.monotonic()))
            if busy[0] > 0:
                busy[0] -= 1
                raise exceptions.LockBusy("the shared filter", "held")
        return types.SimpleNamespace(outcome=apply_mod.PortOutcome())
    rec.sync_ports = sync_ports
    m = worker_mod.Maintenance(rec, lambda ids: [], None, 0, 0,
                               port_source=lambda ids: [])
    m.enqueue([worker_mod.PORT + PORT_A, worker_mod.PORT + PORT_B])
    with caplog.at_level("DEBUG", logger=worker_mod.__name__):
        run(m, lambda: len(rec.calls) == 6)
    assert all(c == frozenset({PORT_A, PORT_B}) for c, _ in rec.calls)
    gaps = [b[1] - a[1] for a, b in zip(rec.calls, rec.calls[1:])]
    assert all(0.045 <= g < 0.2 for g in gaps), gaps     # no backoff
    warned = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warned) == 1
    assert "2 key(s)" in warned[0].getMessage()
    # Done: the count starts again.
    assert m.queue.busy_tries(worker_mod.PORT + PORT_A) == 0


def test_replica_events_only_enqueue(fast):
    rec = Rec()
    m = worker_mod.Maintenance(rec, lambda ids: [], None, 0, 0)
    m.on_replica(Event(networks=frozenset({NET, OTHER})))
    assert set(m.pending()) == {NET, OTHER}
    assert rec.calls == []        # nothing done in the listener itself
    m.on_replica(Event(full=True))
    assert worker_mod.FULL in m.pending()


def test_neutron_changes_enqueue_the_changed_networks(fast):
    rec = Rec()
    nets = {NET: desired.NetworkSpec(NET, ({"network_type": "vlan",
                                            "physical_network": "p",
                                            "segmentation_id": 5},), 1.0)}
    token = [1]
    m = worker_mod.Maintenance(rec, lambda ids: list(nets.values()),
                               lambda: token[0], 0, 0)
    m.start()
    try:
        time.sleep(0.1)                       # first poll: a baseline
        assert rec.calls == []
        nets[OTHER] = desired.NetworkSpec(OTHER, (), 2.0)   # created
        del nets[NET]                                       # deleted
        token[0] = 2
        t0 = time.monotonic()
        while len(rec.calls) < 2 and time.monotonic() - t0 < 5:
            time.sleep(0.01)
    finally:
        m.stop()
    assert {c[0] for c in rec.calls} == {NET, OTHER}


def test_unchanged_token_reads_nothing(fast):
    reads = []
    m = worker_mod.Maintenance(Rec(), lambda ids: reads.append(ids) or [],
                               lambda: "same", 0, 0)
    m.start()
    time.sleep(0.2)
    m.stop()
    assert reads == [None]        # the baseline read, then only the token


def test_changed_port_fingerprints_synced_in_one_batch(fast):
    """Ports whose Neutron fingerprint changed (or that came or went) are
    reconciled together, in one sync_ports call."""
    rec = Rec()
    prints = [{PORT_A: PortPrint(NET, (1,)), PORT_B: PortPrint(OTHER, (1,))}]
    m = worker_mod.Maintenance(rec, lambda ids: [], lambda: object(), 0, 0,
                               port_source=lambda ids: [],
                               port_prints=lambda: prints[0])
    m.start()
    try:
        time.sleep(0.1)            # the first poll only learns the prints
        assert [c for c, _ in rec.calls] == []
        prints[0] = {PORT_A: PortPrint(NET, (2,))}    # A changed, B gone
        t0 = time.monotonic()
        while not rec.calls and time.monotonic() - t0 < 5:
            time.sleep(0.01)
    finally:
        m.stop()
    assert [c for c, _ in rec.calls] == [frozenset({PORT_A, PORT_B})]
    # With their networks (the deleted port's from the print before).
    assert rec.network_of == {PORT_A: NET, PORT_B: OTHER}


def test_replica_port_group_event_enqueues_its_reserved_ports():
    from networking_vcenter.vsphere import inventory as I
    inv = types.SimpleNamespace(dv_ports={"pg-1": (
        I.DvPort("1", "u", "pg-1", PORT_A, "1", True),
        I.DvPort("2", "u", "pg-1", "", "1", False))})
    rec = Rec()
    rec.inventory = lambda: inv
    m = worker_mod.Maintenance(rec, lambda ids: [], None, 0, 0,
                               port_source=lambda ids: [])
    m.on_replica(Event(portgroups=frozenset({"pg-1"})))
    assert set(m.pending()) == {worker_mod.PORT + PORT_A}

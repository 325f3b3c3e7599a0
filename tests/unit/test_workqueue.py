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

"""The one queue of keys, on plain data: coalescing, a key never run twice
at once, backoff per kind, API calls waiting for their job, no lost
wake-up.  Its consumers (the hook threads, the maintenance worker) are
tested against the simulator in tests/functional."""

from __future__ import annotations

import math
import threading
import time

import pytest

from networking_vcenter.reconcile import workqueue
from networking_vcenter.reconcile.workqueue import Backoff, WorkQueue


def keys(items):
    return [item.key for item in items]


def test_kinds():
    assert workqueue.kind_of("*") == "full"
    assert workqueue.kind_of("0f9d2a1c-5b7e-4c1a") == "network"
    assert workqueue.kind_of("port:abc") == "port"
    assert workqueue.kind_of("sync:port:abc") == "sync"
    assert workqueue.kind_of("call:net:abc") == "call"


def test_a_key_queued_once_keeps_its_earlier_time_and_gathers_data():
    q = WorkQueue()
    q.add(["sync:port:a"], 0.0, "net-1")
    q.add(["sync:port:a"], 30.0, "net-2")      # later: keeps now
    q.add(["sync:port:b"], 30.0)
    (item,) = q.take()
    assert item.key == "sync:port:a"
    assert item.data == ["net-1", "net-2"]
    assert q.take() == []                     # b is not due
    assert set(q.pending()) == {"sync:port:b"}
    # Each key with its own data, at once.
    q.add_each([("sync:port:c", "net-3"), ("sync:port:d", "net-4")])
    assert {i.key: i.data for i in q.take()} == {
        "sync:port:c": ["net-3"], "sync:port:d": ["net-4"]}
    assert q.new_key("sync:query:") != q.new_key("sync:query:")


def test_due_only_false_takes_keys_parked_at_infinity():
    q = WorkQueue()
    q.add(["sync:port:a", "sync:net:n"], math.inf)
    assert q.take() == []
    assert sorted(keys(q.take({"sync"}, due_only=False))) == \
        ["sync:net:n", "sync:port:a"]


def test_a_running_key_is_not_taken_again_and_runs_once_more_after():
    q = WorkQueue()
    q.add(["net-1"])
    (item,) = q.take()
    q.add(["net-1"], data="later")           # while it runs
    assert q.take() == []                     # never twice at once
    q.done(item)
    (again,) = q.take()
    assert again.key == "net-1" and again.data == ["later"]
    q.done(again)
    assert q.pending() == {}


def test_kinds_limit_and_batch():
    q = WorkQueue()
    q.add(["call:1"])
    q.add(["sync:port:a", "sync:port:b", "net-1"], 0.0)
    first = q.take({"call", "sync"}, limit=1, batch={"sync"})
    assert keys(first) == ["call:1"]          # the earliest, alone
    batch = q.take({"call", "sync"}, limit=1, batch={"sync"})
    assert sorted(keys(batch)) == ["sync:port:a", "sync:port:b"]
    assert set(q.pending()) == {"net-1"}      # not a hook kind


def test_backoff_per_kind_counted_until_forgotten():
    q = WorkQueue(backoffs={"bind": Backoff(60.0, 2.0, 3600.0)},
                  default=Backoff(1.0, 2.0, 4.0))
    assert [q.retry("net-1") for _ in range(4)] == [1.0, 2.0, 4.0, 4.0]
    assert [q.retry("bind:p") for _ in range(3)] == [60.0, 120.0, 240.0]
    tries, due = q.failures("bind:p")
    assert tries == 3
    # The earliest of its times is kept: 60 s.
    assert 55 < due - time.monotonic() <= 60
    q.forget("net-1")
    assert q.retry("net-1") == 1.0


def test_add_new_keeps_a_key_waiting_out_its_backoff():
    q = WorkQueue(default=Backoff(60.0, 2.0, 600.0))
    q.retry("bind:p")
    assert q.add_new(["bind:p", "bind:q"]) == ["bind:q"]
    assert keys(q.take()) == ["bind:q"]       # p still waits
    q.discard(["bind:p"])
    assert q.failures("bind:p") is None and q.pending() == {}


def test_busy_counts_in_a_row_without_backoff():
    q = WorkQueue()
    assert q.busy(["port:a", "port:b"], 0.0) == 1
    assert q.busy(["port:a"], 0.0) == 2
    assert q.busy_tries("port:a") == 2
    q.forget("port:a")
    assert q.busy_tries("port:a") == 0 and q.busy_tries("port:b") == 1


def test_submit_coalesces_a_job_not_started_and_answers_every_waiter():
    q = WorkQueue()
    runs = []
    first = q.submit("call:net:n", lambda: runs.append(1) or "pass-1")
    second = q.submit("call:net:n", lambda: runs.append(2) or "pass-2")
    (item,) = q.take()
    q.done(item, item.job())
    assert runs == [1]
    assert first.result(0) == second.result(0) == "pass-1"


def test_a_job_submitted_while_its_key_runs_runs_again_after():
    q = WorkQueue()
    q.submit("call:net:n", lambda: "early")
    (item,) = q.take()
    late = q.submit("call:net:n", lambda: "late")
    assert q.take() == []
    q.done(item, item.job())
    (again,) = q.take()
    q.done(again, again.job())
    assert late.result(0) == "late"


def test_a_job_every_waiter_gave_up_on_is_dropped_and_errors_reach_them():
    q = WorkQueue()
    gone = q.submit(None, lambda: pytest.fail("run for nobody"))
    assert gone.cancel()
    assert q.take() == []
    boom = q.submit(None, lambda: 1 / 0)
    (item,) = q.take()
    try:
        item.job()
    except ZeroDivisionError as exc:
        q.done(item, error=exc)
    with pytest.raises(ZeroDivisionError):
        boom.result(0)


def test_clear_and_stop_cancel_the_waiters_left():
    q = WorkQueue()
    waiting = q.submit("call:1", lambda: None)
    q.add(["bind:p", "net-1"])
    q.clear({"call", "bind"})
    assert waiting.cancelled()
    assert set(q.pending()) == {"net-1"}
    other = q.submit("call:2", lambda: None)
    q.stop()
    assert other.cancelled() and q.stopped


def test_a_consumer_waiting_sees_a_key_added_at_any_moment():
    """The due times are read under the wait's lock: a key added between a
    consumer's take and its wait wakes it at once, not after 60 s."""
    q = WorkQueue()
    got = []

    def consumer():
        while not q.stopped and not got:
            items = q.take({"call"})
            if items:
                got.extend(items)
                return
            q.wait(kinds={"call"})

    t = threading.Thread(target=consumer)
    t0 = time.monotonic()
    t.start()
    for n in range(50):                       # at every phase of its loop
        q.add([f"net-{n}"])
        time.sleep(0.001)
    q.add(["call:1"], 0.2)                    # due later: woken then
    t.join(5)
    q.stop()
    assert keys(got) == ["call:1"]
    assert 0.2 <= time.monotonic() - t0 < 2


def test_many_threads_one_run_per_key():
    """Eight consumers and keys added all the time: a key is never run by
    two of them at once, and every key added is run after it was added."""
    q = WorkQueue()
    running, overlaps, runs = set(), [], []
    lock = threading.Lock()

    def consumer():
        while not q.stopped:
            items = q.take(limit=1)
            if not items:
                q.wait(time.monotonic() + 0.05)
                continue
            (item,) = items
            with lock:
                if item.key in running:
                    overlaps.append(item.key)
                running.add(item.key)
            time.sleep(0.001)
            with lock:
                running.discard(item.key)
                runs.append((item.key, time.monotonic()))
            q.done(item)

    threads = [threading.Thread(target=consumer) for _ in range(8)]
    for t in threads:
        t.start()
    added = {}
    for n in range(300):
        key = f"net-{n % 7}"
        q.add([key])
        added[key] = time.monotonic()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and (q.pending() or any(
            not any(k == key and at >= added[key] for k, at in runs)
            for key in added)):
        time.sleep(0.01)
    q.stop()
    for t in threads:
        t.join(5)
    assert not overlaps
    for key, at in added.items():
        assert any(k == key and t >= at for k, t in runs), key


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

"""The one queue of keys of a vCenter in a process.

Every piece of vCenter work a process does goes through one
:class:`WorkQueue`, as in a Kubernetes controller's work queue:

* a *key* names the work ("network <id>", "port <id>", "bind <id>",
  "everything", an API call's job); each has a kind, its prefix
  (:func:`kind_of`);
* a key is queued at most once, due at a time; adding it again keeps the
  earlier time -- the coalescing: what arrives before a key is taken is done
  by the same run;
* a key being processed is never taken again until it is done; added
  meanwhile, it runs once more after (its run may have read too early);
* a key that fails is tried again after its kind's backoff (first delay,
  factor, cap), counted per key until it succeeds (:meth:`forget`);
* an API call waits for its key with a :class:`~concurrent.futures.Future`
  (:meth:`submit`), never past its deadline.

Consumers take the kinds they do: the API hook threads the API calls' jobs
and port syncs, the maintenance worker networks, ports, bindings and the
full pass.  Nothing here talks to vCenter or Neutron.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import itertools
import math
import threading
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Any

FULL = "*"              # everything: the full pass


def kind_of(key: str) -> str:
    """A key's kind: its prefix before ``:`` ("port", "bind", "call",
    "sync"); a bare network id is a "network", :data:`FULL` is "full"."""
    if key == FULL:
        return "full"
    head, sep, _ = key.partition(":")
    return head if sep else "network"


def _of(kinds: Collection[str] | None, key: str) -> bool:
    """Whether ``key`` is of one of ``kinds`` (None: of any)."""
    return kinds is None or kind_of(key) in kinds


@dataclasses.dataclass(frozen=True)
class Backoff:
    """Delays of a key that failed: ``first`` seconds, times ``factor`` at
    each failure in a row, at most ``cap``."""

    first: float
    factor: float
    cap: float

    def delay(self, failures: int) -> float:
        """The delay after the ``failures``-th failure in a row (1 =
        first)."""
        return min(self.cap, self.first * self.factor ** (failures - 1))


@dataclasses.dataclass
class Item:
    """A queued key: when it is due, what was handed over with it (one
    entry per :meth:`WorkQueue.add`), and who waits for it."""

    key: str
    due: float
    data: list = dataclasses.field(default_factory=list)
    waiters: list = dataclasses.field(default_factory=list)
    job: Callable[[], Any] | None = None

    def wanted(self) -> bool:
        """Whether anyone still wants the job run: a job nobody waits for
        any more (each gave up at its deadline) is dropped."""
        if self.job is None:
            return True
        # Each waiter's future is set running (or found cancelled): all.
        return any([f.set_running_or_notify_cancel() for f in self.waiters])

    def finish(self, result: Any = None,
               error: BaseException | None = None) -> None:
        for f in self.waiters:
            if f.running():
                if error is not None:
                    f.set_exception(error)
                else:
                    f.set_result(result)


class WorkQueue:
    """Keys due at a time, each at most once; see the module's docstring."""

    def __init__(self, backoffs: dict[str, Backoff] | None = None,
                 default: Backoff = Backoff(1.0, 2.0, 60.0)):
        self._backoffs = dict(backoffs or {})
        self._default = default
        self._cond = threading.Condition()
        self._waiting: dict[str, Item] = {}
        self._running: set[str] = set()
        self._again: dict[str, Item] = {}    # added while running
        self._failures: dict[str, int] = {}  # key -> failures in a row
        self._busy: dict[str, int] = {}      # key -> busy tries in a row
        self._ids = itertools.count(1)
        self.stopped = False

    # -- adding ---------------------------------------------------------------

    def add(self, keys: Iterable[str], delay: float = 0.0,
            data: Any = None) -> None:
        """Queue ``keys`` ``delay`` seconds from now (``math.inf``: only
        when taken with ``due_only=False``); a key already queued keeps the
        earlier time and gathers ``data``."""
        self.add_each(((key, data) for key in keys), delay)

    def add_each(self, pairs: Iterable[tuple[str, Any]],
                 delay: float = 0.0) -> None:
        """:meth:`add` of (key, its own data) pairs, under one lock."""
        at = time.monotonic() + delay
        with self._cond:
            for key, data in pairs:
                self._put(key, at, data)
            self._cond.notify_all()

    def new_key(self, prefix: str) -> str:
        """A key of its own: ``prefix`` and a number never given before."""
        return f"{prefix}{next(self._ids)}"

    def add_new(self, keys: Iterable[str], delay: float = 0.0) -> list[str]:
        """Queue those of ``keys`` not queued nor running (a key that waits
        out its backoff keeps its time); answers them."""
        added = []
        at = time.monotonic() + delay
        with self._cond:
            for key in keys:
                if key not in self._waiting and key not in self._running:
                    self._put(key, at, None)
                    added.append(key)
            self._cond.notify_all()
        return added

    def submit(self, key: str | None, job: Callable[[], Any]
               ) -> concurrent.futures.Future:
        """Queue ``job`` under ``key`` (None: a key of its own) now; the
        future answers its result.  A key already queued and not yet taken
        is coalesced: its job runs once, for every waiter."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._cond:
            if key is None:
                key = self.new_key("call:")
            item = self._put(key, time.monotonic(), None)
            if item.job is None:
                item.job = job
            item.waiters.append(future)
            self._cond.notify_all()
        return future

    def _put(self, key: str, at: float, data: Any) -> Item:
        table = self._again if key in self._running else self._waiting
        item = table.get(key)
        if item is None:
            item = table[key] = Item(key, at)
        elif at < item.due:
            item.due = at
        if data is not None:
            item.data.append(data)
        return item

    def discard(self, keys: Iterable[str]) -> None:
        """No longer wanted: dropped, their failures forgotten."""
        with self._cond:
            for key in keys:
                self._waiting.pop(key, None)
                self._again.pop(key, None)
                self._failures.pop(key, None)
                self._busy.pop(key, None)

    # -- taking ---------------------------------------------------------------

    def take(self, kinds: Collection[str] | None = None,
             due_only: bool = True, limit: int | None = None,
             batch: Collection[str] = ()) -> list[Item]:
        """The due keys of ``kinds`` (None: any), earliest first, at most
        ``limit`` -- plus, when one of the kinds in ``batch`` is among them,
        every other due key of those kinds (coalesced into one run).  They
        are running until :meth:`done`.  ``due_only=False``: whatever their
        time."""
        now = time.monotonic()
        with self._cond:
            ready = sorted(
                (item for item in self._waiting.values()
                 if _of(kinds, item.key) and
                 (not due_only or item.due <= now)),
                key=lambda item: item.due)
            if limit is not None and ready:
                first = ready[:limit]
                if batch and any(kind_of(i.key) in batch for i in first):
                    first += [i for i in ready[limit:]
                              if kind_of(i.key) in batch]
                ready = first
            taken = []
            for item in ready:
                del self._waiting[item.key]
                if not item.wanted():
                    continue
                self._running.add(item.key)
                taken.append(item)
            return taken

    def next_due(self, kinds: Collection[str] | None = None) -> float:
        """The monotonic time the next key of ``kinds`` is due (inf: none)."""
        with self._cond:
            return min((item.due for item in self._waiting.values()
                        if _of(kinds, item.key)), default=math.inf)

    def wait(self, until: float = math.inf,
             kinds: Collection[str] | None = None) -> None:
        """Sleep until the monotonic time ``until`` or the next key of
        ``kinds`` is due, whichever comes first, or something is added (or
        :meth:`wake`).  A key added since the caller last took is seen:
        the due times are read under the same lock as the wait."""
        with self._cond:
            if not self.stopped:
                until = min(until, self.next_due(kinds))
                self._cond.wait(min(60.0, max(0.0,
                                              until - time.monotonic())))

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def stop(self) -> None:
        """Wake every consumer for good; waiters left are cancelled."""
        with self._cond:
            self.stopped = True
            for item in [*self._waiting.values(), *self._again.values()]:
                for f in item.waiters:
                    f.cancel()
            self._cond.notify_all()

    # -- ending a run ---------------------------------------------------------

    def done(self, item: Item, result: Any = None,
             error: BaseException | None = None) -> None:
        """``item`` ran: its waiters have their answer; added again while
        it ran, it is queued anew."""
        item.finish(result, error)
        with self._cond:
            self._running.discard(item.key)
            # While it ran, every add went to _again: nothing waits under
            # its key.
            again = self._again.pop(item.key, None)
            if again is not None:
                self._waiting[item.key] = again
            self._cond.notify_all()

    def forget(self, key: str) -> None:
        """``key`` succeeded: its next failure starts the backoff anew."""
        with self._cond:
            self._failures.pop(key, None)
            self._busy.pop(key, None)

    def retry(self, key: str, data: Any = None) -> float:
        """``key`` failed: queued again after its kind's backoff; answers
        the delay."""
        with self._cond:
            n = self._failures[key] = self._failures.get(key, 0) + 1
            delay = self._backoffs.get(kind_of(key), self._default).delay(n)
        self.add([key], delay, data)
        return delay

    def busy(self, keys: list[str], delay: float,
             data: Mapping[str, Any] | None = None) -> int:
        """``keys`` found their lock held by another worker: queued again
        after ``delay`` (with ``data[key]``, where given), without backoff;
        answers the most busy tries in a row among them."""
        data = data or {}
        with self._cond:
            counts = []
            for key in keys:
                counts.append(self._busy.get(key, 0) + 1)
                self._busy[key] = counts[-1]
        self.add_each(((key, data.get(key)) for key in keys), delay)
        return max(counts, default=0)

    def failures(self, key: str) -> tuple[int, float] | None:
        """(failures in a row, monotonic due time) of a key waiting out its
        backoff; None if it is not."""
        with self._cond:
            n = self._failures.get(key)
            item = self._waiting.get(key)
            return None if not n or item is None else (n, item.due)

    def busy_tries(self, key: str) -> int:
        with self._cond:
            return self._busy.get(key, 0)

    def clear(self, kinds: Collection[str] | None = None) -> None:
        """Drop the queued keys of ``kinds`` (None: all) and what is known
        of their failures (running keys finish)."""
        with self._cond:
            for table in (self._waiting, self._again):
                for item in table.values():
                    if _of(kinds, item.key):
                        for f in item.waiters:
                            f.cancel()
            for table in (self._waiting, self._again, self._failures,
                          self._busy):
                for key in [k for k in table if _of(kinds, k)]:
                    del table[key]

    def pending(self, kinds: Collection[str] | None = None
                ) -> dict[str, float]:
        """Queued key -> monotonic due time."""
        with self._cond:
            return {k: i.due for k, i in self._waiting.items()
                    if _of(kinds, k)}

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

"""One maintenance worker per vCenter at a time, across every server.

Every Neutron server runs a maintenance worker; for each vCenter exactly one
of them does the maintenance work (Neutron polls, drift repair, full passes,
the agent row's heartbeat, failed bindings, segment mappings): the one that
holds the vCenter's *maintenance lock*, a tooz lock on
``coordination_backend_url`` held for as long as the process keeps it.  The
others try to take it every :data:`TRY_EVERY` seconds, without waiting.

A tooz lock rather than tooz's groups and leader election: tooz's MySQL
driver has no groups.  How a holder that dies lets go, per backend:

* ``file://`` (the default): an ``fcntl`` lock, released by the kernel when
  the process dies -- the next try takes it (one host only: the lock file is
  in that host's ``lock_path``);
* ``mysql://``: ``GET_LOCK`` on a connection of the lock's own, released
  when the connection ends: at once when the process dies (the kernel closes
  its socket); a host that vanishes without closing it is dropped by the
  database after the connection's ``wait_timeout``, which the holder sets to
  :data:`MYSQL_IDLE` seconds on that connection (the check below uses it
  every :data:`TRY_EVERY` seconds);
* ``redis://`` and ``etcd3+http://``: a key with a time to live (tooz's
  ``lock_timeout``, 30 s by default) that tooz's heartbeat thread renews
  every half of it: gone at most 30 s after the holder died.

So a new holder takes over within that release time plus :data:`TRY_EVERY`
seconds: under 33 s by default on every backend, well inside Neutron's
``agent_down_time`` (75 s): the agent row's heartbeat resumes before it
turns down.

Fail safe: the holder checks every :data:`TRY_EVERY` seconds that the
backend still says the lock is its own (the Redis or etcd key holds its
token -- its time to live renewed then --, the MySQL lock its connection);
a lost lock or an error of the backend stops the maintenance at once
(:attr:`Leadership.held` turns False and the worker is woken), and the lock
is taken again only by a new try.  A check that does not come back (the
backend out of reach: a Redis client retries for a minute, a TCP connection
to a vanished database hangs) stops it too: :attr:`Leadership.held` is True
only until half the lock's guaranteed life after the last check began (15 s
with the defaults), long before another can take the lock.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import socket
import threading
import time
from collections.abc import Callable

import tooz
from oslo_log import log as logging

from networking_vcenter import agent
from networking_vcenter import conf
from networking_vcenter import exceptions
from networking_vcenter.reconcile.locks import Locks

LOG = logging.getLogger(__name__)

# Seconds between two tries of a server that does not hold the lock, and
# between two checks of the holder that it still holds it.
TRY_EVERY = 2.0
# wait_timeout (seconds) of the MySQL connection that holds the lock: the
# database drops it -- and the lock -- that long after the holder's host
# stopped answering.
MYSQL_IDLE = 30
# Lock names are "networking-vcenter-maintenance-HOST": MySQL's named locks
# take at most 64 characters, so a longer or odd HOST is hashed.
PREFIX = "maintenance-"
_NAME_ROOM = 64 - len("networking-vcenter-") - len(PREFIX)
_SAFE = re.compile(r"[A-Za-z0-9._@:-]+")


def lock_name(settings: conf.Settings) -> str:
    """The maintenance lock of this deployment at this vCenter (the agent
    row's host): each vCenter gets its own holder."""
    host = agent.host(settings)
    if len(host) > _NAME_ROOM or not _SAFE.fullmatch(host):
        host = hashlib.sha256(host.encode()).hexdigest()[:_NAME_ROOM]
    return PREFIX + host


def this_process() -> str:
    """``HOST:PID`` of this process (Neutron's ``host`` option if set)."""
    host = None
    try:
        from oslo_config import cfg
        host = cfg.CONF.host
    except Exception:  # noqa: BLE001 - not registered outside Neutron
        pass
    return f"{host or socket.gethostname()}:{os.getpid()}"


def confirm(lock) -> float:
    """Ask the backend whether ``lock`` (a tooz lock this process acquired)
    is still ours, renewing its time to live if it has one; answers for how
    long, from before the call, it stays ours at least: 0 if it is not ours
    now, ``inf`` for as long as this process lives.  Errors are the
    backend's (raise).

    tooz has no such call for every driver: its own check where it has one
    (file; Redis, then renewed with tooz's ``heartbeat``, which fails on a
    key that is not ours); for MySQL, the lock's connection against
    ``IS_USED_LOCK`` (the database keeps the lock MYSQL_IDLE seconds past
    this query at least); for etcd, the lock's key against its token (the
    comparison tooz's release makes), then its lease renewed."""
    conn = getattr(lock, "_conn", None)             # tooz's MySQLLock
    if conn is not None:
        cur = conn.cursor()
        cur.execute("SELECT IS_USED_LOCK(%s) = CONNECTION_ID()", (lock.name,))
        row = cur.fetchone()
        return float(MYSQL_IDLE) if row and row[0] else 0.0
    lease = getattr(lock, "_lease", None)           # tooz's Etcd3Lock
    if lease is not None and hasattr(lock, "_key_b64"):
        result = lock._coord.client.transaction({
            "compare": [{"key": lock._key_b64, "result": "EQUAL",
                         "target": "VALUE", "value": lock._uuid}],
            "success": [], "failure": []})
        if not result.get("succeeded", False):
            return 0.0
        return float(max(0, lease.refresh()))       # -1: expired meanwhile
    try:
        if not lock.is_still_owner():
            return 0.0
    except tooz.NotImplemented:
        # A driver with no way to ask: it says whether it thinks so.
        return float("inf") if getattr(lock, "acquired", True) else 0.0
    ttl = getattr(getattr(lock, "_lock", None), "timeout", None)
    if ttl:                                         # tooz's RedisLock
        lock.heartbeat()
        return float(ttl)
    return float("inf")                             # a file lock


def _after_acquire(lock) -> None:
    """MySQL: let the database drop the lock's connection (and the lock)
    MYSQL_IDLE seconds after its holder stops using it."""
    conn = getattr(lock, "_conn", None)
    if conn is not None:
        conn.cursor().execute(f"SET SESSION wait_timeout = {MYSQL_IDLE:d}")


class Leadership:
    """The maintenance lock ``name`` on ``locks``' backend: taken, kept and
    checked by a thread of its own every ``every`` seconds; :attr:`held`
    says whether this process holds it now.  ``on_change`` is called (from
    that thread) whenever :attr:`held` changes."""

    def __init__(self, locks: Locks, name: str, every: float = TRY_EVERY):
        self._locks = locks
        self.name = name
        self.every = every
        self.holder = this_process()
        self.on_change: Callable[[], None] | None = None
        self._held = threading.Event()
        self._until = 0.0           # monotonic end of the last confirmation
        self._lock = None           # the tooz lock; only this thread's
        self._acquired = False      # ... acquired, and not let go since
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing = False       # the last try failed (said once)

    @classmethod
    def for_vcenter(cls, locks: Locks, settings: conf.Settings
                    ) -> "Leadership":
        return cls(locks, lock_name(settings))

    @property
    def held(self) -> bool:
        """Held, as last confirmed by the backend, and not for longer than
        half the life that confirmation guaranteed."""
        return self._held.is_set() and time.monotonic() < self._until

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name="vcenter-maintenance-lock")
        self._thread.start()

    def stop(self) -> None:
        """Stop trying, and let the lock go (the next holder need not wait
        for it to expire)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            if self._thread.is_alive():
                LOG.warning("vcenter maintenance: the lock %s was not let "
                            "go within 30 s", self.name)
                return
        self._give_up("this process stops")

    def _run(self) -> None:
        while not self._stop.is_set():
            self.beat()
            self._stop.wait(self.every)

    def beat(self) -> bool:
        """Check the lock if held, else try to take it (without waiting);
        answers :attr:`held`."""
        try:
            if self._held.is_set():
                if not self._confirm(time.monotonic()):
                    self._lose("the backend says another holds it, or "
                               "that it expired")
            else:
                self._try()
        except Exception as exc:  # noqa: BLE001 - tooz's, or its client's
            reason = self._locks.mask(exc)
            if self._held.is_set():
                self._lose(f"the backend failed: {reason}")
            elif not self._failing:
                self._failing = True
                log = LOG.debug if isinstance(exc, exceptions.LockBusy) \
                    else LOG.warning
                log("vcenter maintenance: cannot take the lock %s on %s "
                    "(trying again every %g s): %s", self.name,
                    self._locks.backend_url, self.every, reason)
        return self.held

    def _confirm(self, began: float) -> bool:
        """Confirm the lock with the backend; held until half the life it
        guarantees from ``began`` (when asked)."""
        life = confirm(self._lock)
        self._until = began + life / 2
        return life > 0

    def _try(self) -> None:
        if self._lock is None:
            self._lock = self._locks.lock(self.name)
        began = time.monotonic()
        if not self._lock.acquire(blocking=False):
            self._failing = False
            return
        self._acquired = True
        try:
            _after_acquire(self._lock)
            if not self._confirm(began):
                raise tooz.ToozError("taken, and then not ours at once")
        except Exception:
            self._give_up("it could not be confirmed")
            raise
        self._failing = False
        self._held.set()
        LOG.info("vcenter maintenance: this process (%s) holds the lock %s "
                 "on %s: it does the maintenance of this vCenter now",
                 self.holder, self.name, self._locks.backend_url)
        self._changed()

    def _lose(self, why: str) -> None:
        self._held.clear()
        LOG.error("vcenter maintenance: this process (%s) lost the lock %s "
                  "on %s (%s): its maintenance stops now; it tries to take "
                  "the lock again every %g s", self.holder, self.name,
                  self._locks.backend_url, why, self.every)
        self._changed()
        self._give_up(why)

    def _give_up(self, why: str) -> None:
        """Release and forget the lock object (a lost one may believe it is
        still held: the next try needs a new one)."""
        lock, self._lock = self._lock, None
        was_held = self._held.is_set()
        self._held.clear()
        if lock is not None and self._acquired:
            # Also when lost: tooz then stops renewing it.
            with contextlib.suppress(Exception):
                lock.release()
        self._acquired = False
        if was_held:
            LOG.info("vcenter maintenance: this process (%s) let go of the "
                     "lock %s: %s", self.holder, self.name, why)
            self._changed()

    def _changed(self) -> None:
        if self.on_change is not None:
            try:
                self.on_change()
            except Exception:  # noqa: BLE001 - keep the lock thread alive
                LOG.exception("vcenter maintenance: lock change listener")

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

"""The maintenance worker: one per vCenter, a loop over the queue of keys.

Like a Kubernetes controller, it takes *keys* -- network ids, ports, or
"everything" -- from the process's one :class:`~.workqueue.WorkQueue` (the
same queue the API hooks' jobs go through, with the same backoff) and
reconciles them:

* the replica (:mod:`..vsphere.replica`) enqueues the networks whose port
  groups changed in vCenter (deleted, retagged or renamed by hand), or
  everything when the topology changed (a host joined a mapped cluster, a
  switch changed, vCenter came back empty or the session was lost): drift is
  repaired as soon as vCenter shows it;
* Neutron is asked every ``POLL`` seconds whether any network or segment
  changed (one aggregate query); when it did, the networks whose segments or
  ``updated_at`` changed are enqueued -- so whatever an API call could not
  finish in time (vCenter down or slow) is finished here; likewise for
  ports (one aggregate query; then per-port fingerprints of the port, its
  security groups and rules, address groups, QoS policy and the members of
  the remote groups its rules name): the ports whose DV port may need to
  change are enqueued, and reconciled together, many per vCenter task;
* the replica enqueues the ports reserved in a port group whose NICs came
  or went (their status);
* a full pass runs at start, every ``resync_interval`` seconds, and when
  the replica says everything may have changed; once at a time across
  servers (the reconciler's lock);
* a network whose reconcile failed is retried with capped exponential
  backoff (``BACKOFF``), not left to the next full pass;
* while vCenter answers, a heartbeat (the backend's row in Neutron's agents
  API, see :mod:`networking_vcenter.agent`).

With a ``leadership`` (:mod:`.leadership`), all of the above is done only
while this process holds the vCenter's maintenance lock: one server's worker
per vCenter at a time.  Taking it over starts with a full pass and a
heartbeat; losing it stops the work at once (between two keys) and drops the
queue.

Event handlers only enqueue; the loop does the work.  Neutron runs it as a
plugin worker (:class:`MaintenanceWorker`, from the driver's
``get_workers()``), in the ``neutron-periodic-workers`` process -- not in the
API workers.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from neutron_lib import worker as n_worker
from oslo_log import log as logging

from networking_vcenter import exceptions
from networking_vcenter.reconcile import workqueue
from networking_vcenter.reconcile.leadership import Leadership
from networking_vcenter.reconcile.reconciler import NetworkSource, \
    PortSource, Reconciler
from networking_vcenter.vsphere.replica import Event

LOG = logging.getLogger(__name__)

# Seconds between two "did Neutron change?" questions.
POLL = 2.0
# Retry delays of a failed network: first, factor, cap (seconds).
BACKOFF = (1.0, 2.0, 60.0)
# Seconds a full pass asked for by the replica waits for more changes.
DEBOUNCE = 0.5
# Seconds the worker waits for a network's lock before retrying later.
LOCK_WAIT = 1.0
# A key whose lock another worker holds is tried again every LOCK_WAIT
# seconds, quietly (that worker is busy with the same objects, e.g. an API
# hook's sync of a bulk create); said once it has been busy this many times
# in a row.
BUSY_WARN = 30

FULL = workqueue.FULL
PORT = "port:"          # key prefix of a Neutron port (others: networks)
# The kinds of keys the loop takes (see workqueue.kind_of); what it drops
# when it stops holding the maintenance, with the bindings tried again.
KINDS = frozenset({"full", "network", "port"})
DROPPED = KINDS | {"bind"}


class Maintenance:
    """The queue and its loop (the part of the worker that does things)."""

    def __init__(self, reconciler: Reconciler, source: NetworkSource,
                 change_token: Callable[[], object] | None,
                 resync_interval: float, grace: float,
                 heartbeat: Callable[["Maintenance"], bool] | None = None,
                 heartbeat_interval: float = 25.0,
                 port_source: PortSource | None = None,
                 port_prints: Callable[[], dict[str, object]] | None = None,
                 port_token: Callable[[], object] | None = None,
                 leadership: Leadership | None = None,
                 queue: workqueue.WorkQueue | None = None):
        self._rec = reconciler
        self.queue = queue or workqueue.WorkQueue(
            default=workqueue.Backoff(*BACKOFF))
        self._leadership = leadership
        self._leading = leadership is None  # does the maintenance now
        self._port_source = port_source
        self._port_prints = port_prints
        self._last_port_prints: dict[str, object] | None = None
        self._port_token = port_token
        self._last_port_token: object = None
        self._source = source
        self._token = change_token
        self._interval = resync_interval
        self._grace = grace
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_token: object = None
        self._fingerprints: dict[str, tuple] | None = None
        self._heartbeat = heartbeat
        self._beat_every = heartbeat_interval
        self._beat_soon = False
        self.passes = 0                        # full passes run
        self.last_pass = None                  # the last full pass's Pass
        self.last_pass_at: float | None = None  # its time (epoch)
        self.beats = 0                          # heartbeats written
        self.last_ports = None                  # the last full port pass

    # -- the queue ----------------------------------------------------------

    def enqueue(self, keys, delay: float = 0.0) -> None:
        self.queue.add(keys, delay)

    def on_replica(self, event: Event) -> None:
        """The replica's listener: only enqueue."""
        if event.full:
            # Everything read anew (vCenter back): a full pass, and a
            # heartbeat now rather than at its next turn.
            self._beat_soon = True
            self.enqueue([FULL], DEBOUNCE)
        if event.networks:
            self.enqueue(event.networks)
        groups = getattr(event, "portgroups", frozenset())
        if groups and self._port_source is not None:
            # A NIC came or went (or the ports were read anew): the ports
            # reserved in those groups, for their status and settings.
            try:
                inv = self._rec.inventory()
            except exceptions.VCenterError:
                return
            self.enqueue(PORT + p.name for key in groups
                         for p in inv.dv_ports.get(key, ())
                         if p.name)

    def pending(self) -> dict[str, float]:
        return self.queue.pending(KINDS)

    # -- life cycle ---------------------------------------------------------

    @property
    def holder(self) -> str | None:
        """Who does the maintenance when this process does (the agent
        row's ``maintenance_holder``); None without a leadership."""
        return self._leadership.holder if self._leadership else None

    def start(self) -> None:
        if self._rec.replica is not None:
            self._rec.replica.add_listener(self.on_replica)
        if self._leadership is not None:
            self._leadership.on_change = self._wake
            self._leadership.start()
        self.enqueue([FULL])
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name="vcenter-maintenance")
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake()
        if self._thread is not None:
            self._thread.join(timeout=30)
        if self._leadership is not None:
            self._leadership.stop()

    def _wake(self) -> None:
        self.queue.wake()

    def wait(self) -> None:
        while self._thread is not None and self._thread.is_alive():
            self._thread.join(timeout=1)

    # -- the loop -------------------------------------------------------------

    def _run(self) -> None:
        next_poll = next_beat = 0.0
        next_pass = time.monotonic() + self._interval if self._interval \
            else None
        while not self._stop.is_set():
            if not self._lead():
                self.queue.clear(DROPPED)   # a holder elsewhere does it
                self.queue.wait(time.monotonic() + POLL, KINDS)
                continue
            now = time.monotonic()
            if self._heartbeat is not None and (now >= next_beat or
                                                self._beat_soon):
                self._beat_soon = False
                next_beat = now + self._beat_every
                self._beat()
            if self._token is not None and now >= next_poll:
                next_poll = now + POLL
                self._poll_neutron()
                self._poll_ports()
            if next_pass is not None and now >= next_pass:
                next_pass = now + self._interval
                self.enqueue([FULL])
            items = self.queue.take(KINDS)
            try:
                self._work(items)
            finally:
                for item in items:
                    self.queue.done(item)
            if self._stop.is_set() or self.queue.stopped:
                return
            wake = [next_poll if self._token is not None else now + 60]
            if self._heartbeat is not None:
                wake.append(next_beat)
            if next_pass is not None:
                wake.append(next_pass)
            self.queue.wait(min(wake), KINDS)

    def _work(self, items: list[workqueue.Item]) -> None:
        """The due keys: everything first, then the ports together, then
        the networks one by one (between two, this process may stop holding
        the maintenance: the rest is dropped)."""
        keys = [item.key for item in items]
        if FULL in keys and self._lead():
            self._full_pass()
        ports = {item.key[len(PORT):]: item.data for item in items
                 if item.key.startswith(PORT)}
        if ports and self._lead():
            self._ports(ports)
        for key in keys:
            if key == FULL or key.startswith(PORT):
                continue
            if self._stop.is_set() or not self._lead():
                return
            self._network(key)

    def _lead(self) -> bool:
        """Whether this process does the maintenance now; on a change,
        start afresh (a full pass, a heartbeat, new Neutron baselines) or
        drop the queue."""
        held = self._leadership is None or self._leadership.held
        if held == self._leading:
            return held
        self._leading = held
        if held:
            self._last_token = self._last_port_token = None
            self._fingerprints = self._last_port_prints = None
            self._beat_soon = True
            self.enqueue([FULL])
        else:
            self.queue.clear(DROPPED)
            LOG.warning("vcenter maintenance: stopped here, the queue "
                        "dropped: another process holds the maintenance of "
                        "this vCenter or will take it over")
        return held

    def _beat(self) -> None:
        try:
            if self._heartbeat(self):
                self.beats += 1
        except Exception as exc:  # noqa: BLE001 - the database may be away
            LOG.warning("vcenter maintenance: heartbeat not written: %s", exc)

    def _poll_neutron(self) -> None:
        try:
            token = self._token()
            if token == self._last_token:
                return
            nets = self._source(None)
        except Exception as exc:  # noqa: BLE001 - the database may be away
            LOG.warning("vcenter maintenance: cannot read Neutron: %s", exc)
            return
        self._last_token = token
        prints = {n.id: (n.changed_at, n.segments) for n in nets}
        if self._fingerprints is not None:
            changed = {i for i in prints.keys() | self._fingerprints.keys()
                       if prints.get(i) != self._fingerprints.get(i)}
            if changed:
                LOG.debug("vcenter maintenance: Neutron changed %d "
                          "network(s)", len(changed))
                self.enqueue(changed)
        self._fingerprints = prints

    def _poll_ports(self) -> None:
        """Enqueue the ports whose DV port may need to change: their own
        fingerprint (port, security groups, rules, address groups, QoS,
        remote group membership) differs from the last poll's."""
        if self._port_prints is None:
            return
        try:
            if self._port_token is not None:
                token = self._port_token()
                if token == self._last_port_token:
                    return
            prints = self._port_prints()
        except Exception as exc:  # noqa: BLE001 - the database may be away
            LOG.warning("vcenter maintenance: cannot read Neutron ports: %s",
                        exc)
            return
        if self._port_token is not None:
            self._last_port_token = token
        last = self._last_port_prints
        self._last_port_prints = prints
        if last is None:
            return
        changed = {i for i in prints.keys() | last.keys()
                   if prints.get(i) != last.get(i)}
        if changed:
            LOG.debug("vcenter maintenance: Neutron changed %d port(s)",
                      len(changed))
            # Their networks, where the prints say (a port's never
            # changes), go with their keys: read with their network's ports
            # when it shares a filter (Reconciler.sync_ports).
            self.queue.add_each((PORT + i, getattr(
                prints.get(i, last.get(i)), "network_id", None))
                for i in changed)

    def _ports(self, ports: dict[str, list]) -> None:
        """Sync these ports (id -> what came with their keys: their
        networks, where known) together."""
        port_ids = set(ports)
        network_of = {i: data[-1] for i, data in ports.items()
                      if data and data[-1]}
        try:
            result = self._rec.sync_ports(
                port_ids, self._source, self._port_source, wait=LOCK_WAIT,
                network_of=network_of, read_first=True)
        except Exception as exc:  # noqa: BLE001 - keep the loop alive
            if not isinstance(exc, exceptions.VCenterError):
                LOG.exception("vcenter maintenance: ports %s",
                              sorted(port_ids))
            self._retry_all([PORT + i for i in sorted(port_ids)], exc,
                            {PORT + i: n for i, n in network_of.items()})
            return
        out = result.outcome
        again = {s.port_id for s, _ in out.failed} | \
            {s.port_id for s in out.stale}
        for port_id in again:
            self._retry(PORT + port_id, "DV port not updated",
                        network_of.get(port_id))
        for port_id in port_ids - again:
            self.queue.forget(PORT + port_id)

    def _retry_all(self, keys: list[str], exc: Exception,
                   data: dict[str, str] | None = None) -> None:
        """Retry these keys (each with ``data[key]``, where given: a port's
        network) after ``exc``: with backoff and a warning each, or --
        another worker holding a lock they need -- every LOCK_WAIT seconds,
        one line for them all (a warning once they have been busy BUSY_WARN
        times in a row)."""
        data = data or {}
        if not isinstance(exc, exceptions.LockBusy):
            for key in keys:
                self._retry(key, str(exc), data.get(key))
            return
        busiest = self.queue.busy(keys, LOCK_WAIT, data)
        log = LOG.warning if busiest == BUSY_WARN else LOG.debug
        log("vcenter maintenance: %d key(s) (%s): %s; retry in %.0fs",
            len(keys), self._name(keys[0]), exc, LOCK_WAIT)

    @staticmethod
    def _name(key: str) -> str:
        return "full pass" if key == FULL else \
            f"port {key[len(PORT):]}" if key.startswith(PORT) else \
            f"network {key}"

    def _retry(self, key: str, why: str, data: str | None = None) -> None:
        delay = self.queue.retry(key, data)
        LOG.warning("vcenter maintenance: %s: %s; retry in %.0fs",
                    self._name(key), why, delay)

    def _network(self, network_id: str) -> None:
        try:
            result = self._rec.sync_network(network_id, self._source,
                                            wait=LOCK_WAIT)
        except exceptions.VCenterError as exc:
            self._retry_all([network_id], exc)
            return
        except Exception as exc:  # noqa: BLE001 - keep the loop alive
            LOG.exception("vcenter maintenance: network %s", network_id)
            self._retry(network_id, repr(exc))
            return
        out = result.outcome
        if out.failed or out.deferred:
            self._retry(network_id, "; ".join(
                [str(e) for _, e in out.failed] +
                [r for _, r in out.deferred]))
            return
        if self._port_source is not None and \
                self._rec.defaults_suspect(network_id):
            # Its shared filter changed without a digest of ours: read it
            # whole and write it again if it is not ours.
            try:
                self._rec.sync_ports(set(), self._source, self._port_source,
                                     wait=LOCK_WAIT, networks={network_id})
            except Exception as exc:  # noqa: BLE001 - keep the loop alive
                if not isinstance(exc, exceptions.VCenterError):
                    LOG.exception("vcenter maintenance: the shared filter "
                                  "of network %s", network_id)
                self._retry_all([network_id], exc)
                return
        self.queue.forget(network_id)

    def _full_pass(self) -> None:
        try:
            result = self._rec.sync_all(self._source, self._grace,
                                        port_source=self._port_source)
        except Exception as exc:  # noqa: BLE001 - keep the loop alive
            self._retry(FULL, str(exc))
            return
        if result is None:
            LOG.debug("vcenter maintenance: a full pass runs elsewhere")
            self.queue.forget(FULL)
            return
        self.passes += 1
        self.last_pass = result
        self.last_pass_at = time.time()
        out = result.outcome
        LOG.info("vcenter full pass: %d networks, %d fixed, %d failed, "
                 "%d deferred, %d conflicts, %d left to their API call",
                 len(result.networks), len(out.done), len(out.failed),
                 len(out.deferred), len(out.conflicts), len(result.skipped))
        self.queue.forget(FULL)
        # Networks that failed are retried on their own, with backoff.
        for step, _ in out.failed + out.deferred:
            if step.network_id:
                self._retry(step.network_id, "failed in the full pass")
        if result.skipped:
            self.enqueue(result.skipped, self._grace)
        ports = result.ports
        if ports is None:
            return
        self.last_ports = ports
        pout = ports.outcome
        LOG.info("vcenter full pass: %d ports, %d DV ports changed in %d "
                 "task(s), %d failed, %d conflicts", len(ports.desired),
                 len(pout.done), pout.tasks, len(pout.failed),
                 len(ports.plan.conflicts))
        for step in [s for s, _ in pout.failed] + pout.stale:
            self._retry(PORT + step.port_id, "failed in the full pass")


class MaintenanceWorker(n_worker.BaseWorker):
    """The vcenter driver's maintenance worker, as Neutron runs it."""

    def __init__(self, start: Callable[[], Maintenance],
                 close: Callable[[], None]):
        # 0: Neutron runs it with the other thread workers, in one process
        # of the periodic workers, never in the API workers.
        super().__init__(worker_process_count=0,
                         desc="vcenter maintenance worker")
        self._start = start
        self._close = close
        self._maintenance: Maintenance | None = None

    def start(self, name="neutron-server", desc=None):
        super().start(name=name, desc=desc)
        self._maintenance = self._start()

    def wait(self):
        if self._maintenance is not None:
            self._maintenance.wait()

    def stop(self):
        # The process ends with os._exit after this (cotyledon): atexit
        # handlers never run, so the vCenter session is logged out here.
        try:
            if self._maintenance is not None:
                self._maintenance.stop()
        finally:
            self._close()

    def reset(self):
        pass

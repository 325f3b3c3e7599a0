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

"""One vCenter behind the ML2 driver: the driver's only way to vSphere.

The driver (:mod:`networking_vcenter.ml2.driver`) translates Neutron's calls
and hands them here; a :class:`VCenterBackend` owns everything of one vCenter
in this process -- its :class:`~networking_vcenter.reconcile.reconciler.
Reconciler` (session, live replica, locks), its one queue of keys
(:mod:`~networking_vcenter.reconcile.workqueue`) with the threads that do an
API call's vCenter work under its deadline and the coalesced port syncs, and
the maintenance worker's heartbeat (agent row, segment mappings, bindings
tried again with the queue's backoff).  The interface is small:

* :meth:`serves` / :meth:`manages` -- cheap: is a host or a network ours;
* :meth:`topology` -- the switches as the replica shows them (no round trip);
* :meth:`network_changed` -- reconcile a network within the API deadline;
* :meth:`binds_by_write` / :meth:`ensure_binding` -- a port's binding;
* :meth:`ports_changed` -- sync ports soon, never waits;
* :meth:`start_maintenance`, :meth:`resync`, :meth:`close`.

What it promises the API user: every call returns within ``api_call_budget``
seconds whatever vCenter does (down, black-holed, slow): the work runs in a
thread the caller waits for until the deadline, and what is not done by then
is finished by the maintenance worker.  While vCenter is known unreachable
(:data:`UNREACHABLE_HOLD_OFF`) calls that must write fail at once.

The queue's keys, by kind: ``call:`` an API call's job (``call:net:<id>``
for a network's, coalesced when it is not started yet), ``sync:`` a port
sync handed over by an API call (``sync:port:<id>``, ``sync:net:<id>``,
``sync:query:<n>``: all those due are synced together), ``bind:<port>`` a
failed binding tried again; the maintenance worker's networks, ``port:``
and the full pass (:mod:`~networking_vcenter.reconcile.worker`).
"""

from __future__ import annotations

import atexit
import concurrent.futures
import contextlib
import dataclasses
import functools
import math
import os
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any

from neutron_lib import constants as n_const
from neutron_lib.api.definitions import portbindings
from neutron_lib.plugins.ml2 import api
from oslo_config import cfg
from oslo_context import context as o_context
from oslo_log import log as logging

from networking_vcenter import agent
from networking_vcenter import conf
from networking_vcenter import exceptions
from networking_vcenter import neutron_api
from networking_vcenter import neutron_db
from networking_vcenter.reconcile import desired as desired_mod
from networking_vcenter.reconcile import leadership as leadership_mod
from networking_vcenter.reconcile import mtu as mtu_mod
from networking_vcenter.reconcile import worker as worker_mod
from networking_vcenter.reconcile import workqueue
from networking_vcenter.reconcile.reconciler import Pass, Reconciler

LOG = logging.getLogger(__name__)

# Seconds after vCenter was found unreachable during which API calls do not
# try it again (the maintenance worker does).
UNREACHABLE_HOLD_OFF = 30.0
# Threads that run API calls' vCenter work, per process.
HOOK_THREADS = 8
# The kinds of keys they take; port syncs are taken together.
HOOK_KINDS = frozenset({"call", "sync"})
# Seconds between an API call handing ports over and their sync.
DRAIN_DELAY = 0.3
# Seconds before the heartbeat tries again a binding that failed when tried
# with vCenter answering, doubled at each failure up to the maximum.
REBIND_BACKOFF = 60.0
REBIND_BACKOFF_MAX = 3600.0
BIND = "bind:"


@dataclasses.dataclass(frozen=True)
class Binding:
    """A port's binding, as ML2 takes it."""

    segment: dict[str, Any]
    vif_details: dict[str, Any]
    status: str
    where: str          # for the log line: switch, port group, DV port


class VCenterBackend:
    """One vCenter, as this process sees and changes it."""

    def __init__(self, settings: conf.Settings):
        self.settings = settings
        self.source = neutron_db.networks
        self.port_source = functools.partial(
            neutron_db.ports, host_filter=set(settings.compute_hosts))
        # None: ports handed over wait for drain() (tests that share one
        # database connection with the API call).
        self.drain_delay: float | None = DRAIN_DELAY
        self._pid: int | None = None

    def start(self, background: bool = False) -> None:
        """This process's reconciler, replica and hook threads.  In the
        foreground vCenter is waited for no longer than one API call would:
        a vCenter black-holed answers no faster; unreachable, Neutron
        starts anyway if so configured (``start_without_vcenter``).  A
        configuration error raises."""
        self._pid = os.getpid()
        self.reconciler = Reconciler.from_settings(self.settings)
        self.queue = workqueue.WorkQueue(
            backoffs={"bind": workqueue.Backoff(REBIND_BACKOFF, 2.0,
                                                REBIND_BACKOFF_MAX)},
            default=workqueue.Backoff(*worker_mod.BACKOFF))
        for n in range(HOOK_THREADS):
            threading.Thread(target=self._serve, daemon=True,
                             name=f"vcenter-hook-{n}").start()
        self._health_down = False
        self.reconciler.status_sink = neutron_api.set_port_status
        self.reconciler.trunk_status_sink = neutron_api.set_trunk_status
        self.reconciler.network_ports = functools.partial(
            _network_ports, set(self.settings.compute_hosts))
        atexit.register(self.close, self._pid)
        try:
            if background:
                self.reconciler.start(background=True)
            else:
                with self.reconciler.session.budget(
                        self.settings.api_call_budget or
                        self.settings.api_timeout):
                    self.reconciler.start()
                topology = self.reconciler.validate()
                LOG.info("vcenter driver ready: %s; locks: %s", ", ".join(
                    f"{t.physnet} -> {t.kind} {t.switch}"
                    for t in topology.targets.values()),
                    self.reconciler.locks.backend_url)     # masked
                self._warn_mtu(topology)
        except exceptions.TransientFault as exc:
            # Unreachable, timed out, busy: not a configuration error.
            if not self.settings.start_without_vcenter:
                LOG.critical("vcenter mechanism driver cannot start: %s "
                             "(set [ml2_vcenter] start_without_vcenter = true "
                             "to start anyway)", exc)
                self.close(self._pid)
                raise
            LOG.warning("vcenter mechanism driver starts without vCenter: "
                        "%s. Networks are accepted and their port groups "
                        "made once vCenter answers; ports cannot be bound "
                        "until then.", exc)
            self.reconciler.start(background=True)
        except exceptions.VCenterError as exc:
            LOG.critical("vcenter mechanism driver cannot start: %s", exc)
            self.close(self._pid)      # no watch or session left behind
            raise

    def _warn_mtu(self, topology: desired_mod.Topology) -> None:
        """One warning per mapped physical network whose largest Neutron
        MTU is above a switch's."""
        try:
            options = mtu_mod.neutron_options(cfg.CONF)
        except (cfg.NoSuchOptError, cfg.NoSuchGroupError):
            return
        for found in mtu_mod.mismatches(topology,
                                        self.reconciler.inventory(),
                                        *options,
                                        self.settings.raise_switch_mtu):
            LOG.warning("vcenter: %s", found.describe())

    def _here(self) -> Reconciler:
        """The reconciler of this process: a forked worker process makes
        its own (its parent's session and replica thread stay behind)."""
        if self._pid != os.getpid():
            self.start(background=True)
        return self.reconciler

    def close(self, pid: int | None = None) -> None:
        """Log out and stop watching when the process ends (atexit, or the
        maintenance worker's stop); once."""
        pid = os.getpid() if pid is None else pid
        if pid == os.getpid() and self._pid == pid:
            self._pid = None
            self.queue.stop()
            self.reconciler.close()

    # -- what is ours (cheap) ------------------------------------------------

    def serves(self, host: str | None) -> bool:
        """Whether ``host`` is a nova-compute host of this vCenter."""
        return host in self.settings.compute_hosts

    def manages(self, network_id: str, segments: list[dict]) -> bool:
        """Whether a network (with these segments, before and after) may
        have a port group here; no lock, no vCenter call when not."""
        return self._here().manages(network_id, segments)

    def topology(self) -> desired_mod.Topology | None:
        """The topology as the replica shows it; None before it is read."""
        rec = self._here()
        if rec.replica is None or not rec.replica.synced:
            return None
        try:
            return rec.topology(rec.inventory())
        except exceptions.VCenterError:
            return None

    def reaches(self, segment: dict, host: str,
                topology: desired_mod.Topology | None) -> bool:
        """Whether a segment reaches ``host``'s cluster (before vCenter is
        read: whether it is mapped)."""
        cluster = self.settings.compute_hosts.get(host)
        if cluster is None:
            return False
        if topology is None:
            return desired_mod.is_mapped(segment,
                                         self.settings.switch_mappings)
        return topology.target_reaching(segment, cluster) is not None

    def switch_kinds(self, segments: list[dict[str, Any]],
                     host: str | None) -> dict[str, str | None]:
        """Physical network -> ``dvs`` / ``vswitch`` (None: not known, no
        replica yet) of each mapped VLAN/flat segment of ``segments`` (that
        reaches ``host``'s cluster, when given).  From memory."""
        topology = self.topology()
        cluster = self.settings.compute_hosts.get(host) if host else None
        kinds: dict[str, str | None] = {}
        for seg in segments:
            if not desired_mod.is_mapped(seg, self.settings.switch_mappings):
                continue
            physnet = seg["physical_network"]
            if topology is None:
                kinds[physnet] = None
                continue
            target = topology.target_reaching(seg, cluster) if cluster \
                else topology.targets.get(physnet)
            if target is not None:
                kinds[physnet] = target.kind
            elif not cluster:
                kinds[physnet] = None
        return kinds

    def mtu_too_small(self, network_id: str, mtu: int,
                      segments: list[dict]) -> list | None:
        """The switches a network of this MTU would be too large for (see
        :func:`~networking_vcenter.reconcile.mtu.too_small`); None when not
        known (vCenter not read yet), with a warning.  From the replica."""
        rec = self._here()
        if rec.replica is None or not rec.replica.synced:
            LOG.warning("network %s: MTU %s not checked against the "
                        "switches: vCenter is not read yet", network_id, mtu)
            return None
        try:
            inv = rec.replica.snapshot()
            return mtu_mod.too_small(mtu, segments, rec.topology(inv), inv,
                                     self.settings.raise_switch_mtu)
        except exceptions.VCenterError as exc:
            LOG.warning("network %s: MTU %s not checked against the "
                        "switches: %s", network_id, mtu, exc)
            return None

    # -- under the API deadline ---------------------------------------------

    def _unreachable(self, rec: Reconciler) -> float | None:
        """Seconds since vCenter was found unreachable, if that is recent
        enough for API calls not to try it again (the worker does)."""
        down = rec.session.unreachable_for()
        return down if down is not None and down < UNREACHABLE_HOLD_OFF \
            else None

    def _in_time(self, what: str, fn, *args, from_memory: bool = False,
                 deadline: float | None = None, key: str | None = None):
        """Run ``fn`` by a hook thread under the API deadline (now plus
        ``api_call_budget``, or ``deadline``); raise TransientFault when the
        deadline passes first (the thread finishes its current call and
        stops: the session refuses calls past it).  While vCenter is known
        unreachable, fail at once -- unless ``fn`` can answer
        ``from_memory`` (the replica).  ``key``: the queue key, under which
        calls not started yet are coalesced (None: its own)."""
        rec = self._here()
        budget = self.settings.api_call_budget
        down = self._unreachable(rec)
        if down is not None and not from_memory:
            raise exceptions.TransientFault(
                what, f"vCenter was unreachable {down:.0f}s ago")
        if deadline is None:
            deadline = time.monotonic() + budget
        if deadline <= time.monotonic():
            # Spent (ML2 retrying a binding): answer from memory, here.
            with rec.session.budget(0):
                return fn(rec, deadline, *args)

        request = o_context.get_current()

        def job():
            with request_of(request), rec.session.budget(
                    max(0.0, deadline - time.monotonic())):
                return fn(rec, deadline, *args)

        future = self.queue.submit(key, job)
        try:
            return future.result(timeout=max(0.0,
                                             deadline - time.monotonic()))
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise exceptions.TransientFault(
                what, f"not done within api_call_budget ({budget:.0f}s)")

    def network_changed(self, network_id: str) -> list[str]:
        """Reconcile a network within the API deadline.  Answers what
        vCenter refused for good (a name taken by a port group we did not
        create, a name too long); anything else is left to the maintenance
        worker, logged."""

        def reconcile(rec: Reconciler, deadline: float) -> Pass:
            return rec.sync_network(
                network_id, self.source,
                wait=max(0.0, deadline - time.monotonic()),
                settle=max(0.0, deadline - time.monotonic()))

        try:
            result = self._in_time(f"reconcile network {network_id}",
                                   reconcile, key=f"call:net:{network_id}")
        except exceptions.VCenterError as exc:
            LOG.warning("network %s: %s; the maintenance worker will finish "
                        "the work", network_id, exc)
            return []
        except Exception:  # noqa: BLE001 - a bug must not fail the API call
            LOG.exception("network %s: unexpected error; the maintenance "
                          "worker will retry", network_id)
            return []
        outcome = result.outcome
        return [c.reason for c in outcome.conflicts] + \
            [str(exc) for _, exc in outcome.failed
             if not isinstance(exc, exceptions.TransientFault)]

    # -- bindings ------------------------------------------------------------

    def binds_by_write(self, segments: list[dict[str, Any]],
                       host: str) -> bool:
        """Whether binding a port on ``host`` must write to vCenter: it
        would go to a distributed switch (as the replica shows it, or not
        known yet), where every bind writes its reservation."""
        cluster = self.settings.compute_hosts[host]
        rec = self._here()
        if rec.replica is None or not rec.replica.synced:
            return True
        try:
            topology = rec.topology(rec.replica.snapshot())
        except exceptions.VCenterError:
            return True
        segment = _pick_segment(segments, cluster, topology)
        if segment is None:
            return False
        target = topology.targets[segment[api.PHYSICAL_NETWORK]]
        return target.kind == desired_mod.DVS

    def ensure_binding(self, spec: desired_mod.PortSpec,
                       segments: list[dict[str, Any]], network_id: str,
                       host: str, deadline: float,
                       writes: bool = True) -> Binding | None:
        """The port's port group (made if missing) and, on a distributed
        switch, its DV port reserved with its policy, by ``deadline``; None
        when no segment reaches ``host``'s cluster.  Raises VCenterError
        with the reason when the port cannot be bound.  ``writes``: as
        :meth:`binds_by_write` answered."""
        cluster = self.settings.compute_hosts[host]

        def find(rec: Reconciler, deadline: float):
            topology = rec.topology(rec.inventory(
                max(0.0, deadline - time.monotonic())))
            segment = _pick_segment(segments, cluster, topology)
            if segment is None:
                return None
            pg, found = rec.port_group_for(
                network_id, segment[api.PHYSICAL_NETWORK], self.source,
                deadline, fix=self._unreachable(rec) is None and
                deadline > time.monotonic())
            port = dataclasses.replace(
                spec, host=host, physnet=segment[api.PHYSICAL_NETWORK])
            if pg.kind != desired_mod.DVS:
                self._check_vswitch_port(port)
                return segment, topology, pg, found, None
            return segment, topology, pg, found, rec.port_for(
                port, self.source, deadline)

        # A bind on a standard vSwitch can answer from the replica; one on a
        # distributed switch writes its reservation, so while vCenter is
        # known unreachable it fails at once instead of waiting out the
        # deadline.
        picked = self._in_time(f"bind port {spec.id}", find,
                               from_memory=not writes, deadline=deadline)
        if picked is None:
            return None
        segment, topology, pg, found, dv_port = picked
        status = n_const.PORT_STATUS_ACTIVE
        details: dict[str, Any] = {
            "dvs_port_group_name": pg.name,
            "segmentation_id": pg.vlan,
            portbindings.VIF_DETAILS_CONNECTIVITY:
                portbindings.CONNECTIVITY_L2,
        }
        if pg.kind == desired_mod.DVS:
            details["dvs_id"] = topology.targets[pg.physnet].dvs_uuid
            details["pg_id"] = found.key
            # Nova pins the NIC to this port, whose policy is already set.
            details["dvs_port_key"] = dv_port.key
            status = n_const.PORT_STATUS_ACTIVE if dv_port.connected \
                else n_const.PORT_STATUS_DOWN
        return Binding(segment, details, status,
                       f"{pg.switch} {pg.name} ({found.moid})" +
                       (f", DV port {dv_port.key}" if dv_port else ""))

    def _check_vswitch_port(self, spec: desired_mod.PortSpec) -> None:
        """A standard vSwitch has no per-port policy: refuse, if so
        configured, a port whose policy would not be enforced; and always a
        trunk parent (its subports would silently lose their VLANs)."""
        if spec.trunk is not None:
            raise exceptions.PermanentFault(
                f"port {spec.id}",
                f"it is the parent of trunk {spec.trunk.id}, and a standard "
                f"vSwitch has no per-port VLAN trunk: its subports would be "
                f"cut off")
        what = desired_mod.unenforceable_on_vswitch(spec)
        if what and self.settings.standard_vswitch_ports == "refuse":
            raise exceptions.PermanentFault(
                f"port {spec.id}",
                f"its {' and '.join(what)} cannot be enforced on a standard "
                f"vSwitch ([{conf.GROUP}] standard_vswitch_ports = refuse)")

    # -- the queue's hook keys ----------------------------------------------
    #
    # A port's DV port follows the port and everything its policy depends
    # on.  The API call never waits for it: it hands the ports over as keys
    # of the queue, due a moment later; a hook thread syncs every port key
    # due then together, under the API deadline, and the maintenance
    # worker's Neutron poll catches whatever that could not do.

    def _serve(self) -> None:
        """A hook thread: API calls' jobs one at a time, port syncs in
        batches, until the queue stops."""
        queue = self.queue
        while not queue.stopped:
            items = queue.take(HOOK_KINDS, limit=1, batch={"sync"})
            if not items:
                queue.wait(kinds=HOOK_KINDS)
                continue
            if workqueue.kind_of(items[0].key) == "sync":
                self._sync_ports(items)
                continue
            (item,) = items
            try:
                result = item.job()
            except BaseException as exc:  # noqa: BLE001 - to its waiters
                queue.done(item, error=exc)
            else:
                queue.done(item, result)

    def ports_changed(self, ids: set[str], ids_of=None,
                      networks: set[str] = frozenset(),
                      network_of: Mapping[str, str] | None = None) -> None:
        """Sync these ports (and those ``ids_of()`` answers, a mapping of
        port ids to their networks, and the standard port groups of
        ``networks``) by a hook thread, with whatever else is due then;
        never waits.  ``network_of``: the networks of ports, where known
        (see ``Reconciler.sync_ports``)."""
        self._here()
        request = o_context.get_current()
        network_of = network_of or {}
        # Due a moment later, once the API request that called the hook has
        # finished with the database (on sqlite a read overlapping its last
        # writes can make them time out); drain_delay None: when drain()
        # is called.
        delay = math.inf if self.drain_delay is None else self.drain_delay
        pairs = [(f"sync:port:{port_id}", (network_of.get(port_id), request))
                 for port_id in ids]
        pairs += [(f"sync:net:{network_id}", (None, request))
                  for network_id in networks]
        if ids_of is not None:
            pairs.append((self.queue.new_key("sync:query:"),
                          (ids_of, request)))
        self.queue.add_each(pairs, delay)

    def drain(self) -> None:
        """Sync the ports handed over, due or not, here and now."""
        while True:
            items = self.queue.take({"sync"}, due_only=False)
            if not items:
                return
            self._sync_ports(items)

    def _sync_ports(self, items: list[workqueue.Item]) -> None:
        """Sync the ports of these ``sync:`` keys together; they are done
        after, whatever happens."""
        try:
            self._sync_port_keys(items)
        finally:
            for item in items:
                self.queue.done(item)

    def _sync_port_keys(self, items: list[workqueue.Item]) -> None:
        ids: set[str] = set()
        nets: set[str] = set()
        network_of: dict[str, str] = {}
        queries = []
        requests = []
        for item in items:
            what, _, name = item.key[len("sync:"):].partition(":")
            for value, request in item.data:
                if request is not None and request not in requests:
                    requests.append(request)
                if what == "port" and value:
                    network_of[name] = value
                elif what == "query":
                    queries.append(value)
            if what == "port":
                ids.add(name)
            elif what == "net":
                nets.add(name)
        # The lines of this sync carry the request id of the first API call
        # it serves; the others are named once.
        with request_of(requests[0] if requests else None):
            if len(requests) > 1:
                LOG.debug("ports also synced for requests %s",
                          ", ".join(r.request_id for r in requests[1:]))
            try:
                for ids_of in queries:
                    found = ids_of()
                    ids |= set(found)
                    network_of.update(found)
                if not ids and not nets:
                    return
                rec = self._here()
                if self._unreachable(rec) is not None:
                    return              # the worker's poll will do it
                with rec.session.budget(self.settings.api_call_budget):
                    rec.sync_ports(ids, self.source, self.port_source,
                                   wait=self.settings.api_call_budget,
                                   networks=nets, network_of=network_of)
            except exceptions.VCenterError as exc:
                LOG.warning("ports %s: %s; the maintenance worker will "
                            "finish the work", sorted(ids), exc)
            except Exception:  # noqa: BLE001 - keep serving
                LOG.exception("ports %s: unexpected error; the maintenance "
                              "worker will retry", sorted(ids))

    # -- the maintenance worker ----------------------------------------------

    def start_maintenance(self) -> worker_mod.Maintenance:
        """Start the maintenance loop in this process (the worker's
        start(); tests call it directly)."""
        maintenance = worker_mod.Maintenance(
            self._here(), self.source, neutron_db.change_token,
            self.settings.resync_interval, self.settings.resync_grace_period,
            heartbeat=self.report_health,
            heartbeat_interval=agent_down_time() / 3,
            port_source=self.port_source,
            port_prints=functools.partial(
                neutron_db.port_fingerprints,
                host_filter=set(self.settings.compute_hosts)),
            port_token=neutron_db.port_change_token,
            leadership=leadership_mod.Leadership.for_vcenter(
                self._here().locks, self.settings),
            queue=self.queue)
        maintenance.start()
        return maintenance

    def report_health(self, maintenance: worker_mod.Maintenance) -> bool:
        """Heartbeat the backend's agent row while vCenter answers; with
        it, the segment mappings and the bindings that failed."""
        rec = self._here()
        if rec.replica is None or not rec.replica.current:
            self._health_down = True
            return False
        if self._health_down:
            # vCenter is back: every failed binding is worth a try at once.
            self._health_down = False
            self.queue.clear({"bind"})
        neutron_api.report_agent(agent.state(
            self.settings, rec.replica.snapshot(), maintenance.last_pass,
            maintenance.last_pass_at, start=maintenance.beats == 0,
            holder=getattr(maintenance, "holder", None)))
        self.map_segments()
        self.rebind_failed()
        return True

    def map_segments(self) -> None:
        """Neutron's segment-to-host mappings for our compute hosts, as the
        replica shows the switches reaching their clusters (what an L2
        agent reports for its own host): routed provider networks and
        Nova's placement aggregates follow from them.  Level-triggered with
        the heartbeat; a new segment is mapped when it is made."""
        rec = self._here()
        topology = rec.topology(rec.replica.snapshot())
        neutron_api.map_segment_hosts(desired_mod.segment_hosts(
            neutron_db.segments(set(topology.targets)), topology))

    def rebind_failed(self) -> int:
        """Bind again the ports of our compute hosts whose binding failed
        (vCenter was away, or a port group could not be had).  Run with the
        heartbeat, i.e. while vCenter answers; each is a ``bind:`` key of
        the queue: one that fails again waits its backoff (REBIND_BACKOFF
        seconds, doubling) until vCenter next comes back.  Answers how many
        got bound."""
        failed = {BIND + port_id: host for port_id, host in
                  neutron_db.failed_bindings(set(self.settings.compute_hosts))}
        self.queue.discard(set(self.queue.pending({"bind"})) - set(failed))
        self.queue.add_new(failed)
        bound = 0
        for item in self.queue.take({"bind"}):
            port_id, host = item.key[len(BIND):], failed.get(item.key)
            try:
                if host is None:
                    continue            # bound meanwhile
                if neutron_api.bind_again(port_id, host):
                    bound += 1
                    self.queue.forget(item.key)
                    LOG.info("port %s on %s: bound again now that vCenter "
                             "answers", port_id, host)
                    continue
                # Failed again with vCenter answering: a cause vCenter's
                # return does not cure (a policy refused, a name taken).
                # Tried less and less often, not every beat with ML2's ten
                # tries logged.
                delay = self.queue.retry(item.key)
                LOG.warning("port %s on %s: still cannot be bound (see the "
                            "errors above); next try in %.0fs", port_id,
                            host, delay)
            finally:
                self.queue.done(item)
        return bound

    def rebind_state(self, port_id: str) -> tuple[int, float] | None:
        """(failed tries, monotonic time of the next) of a binding that
        failed again with vCenter answering; None if it is not held back."""
        return self.queue.failures(BIND + port_id)

    def resync(self, grace: float | None = None) -> Pass | None:
        """One full pass over every Neutron network now; None if one is
        running elsewhere.  Port groups of deleted networks are removed."""
        return self._here().sync_all(
            self.source, self.settings.resync_grace_period
            if grace is None else grace, port_source=self.port_source)


def agent_down_time() -> float:
    """Neutron's ``agent_down_time`` (75 s where it is not registered)."""
    try:
        return float(cfg.CONF.agent_down_time)
    except cfg.NoSuchOptError:
        return 75.0


def _network_ports(hosts: set[str], network_ids: set[str] | None):
    return neutron_db.ports(host_filter=hosts, network_ids=network_ids)


def _pick_segment(segments: list[dict[str, Any]], cluster: str,
                  topology: desired_mod.Topology) -> dict[str, Any] | None:
    """A segment whose switch reaches the cluster; distributed first.

    When a network reaches a host both through a distributed and a standard
    port group, the distributed one wins: Nova attaches it by switch UUID
    and key, without the name search that could confuse the two.
    """
    best = None
    for seg in segments:
        target = topology.target_reaching(seg, cluster)
        if target is None:
            continue
        if target.kind == desired_mod.DVS:
            return seg
        best = best or seg
    return best


@contextlib.contextmanager
def request_of(request: o_context.RequestContext | None) -> Iterator[None]:
    """Run a hook thread's work as part of the API request that caused it:
    oslo.log reads the request context of the current thread, so its lines
    carry that request's ``req-`` id.  The thread's context is put back
    after (a pool thread serves many requests).  oslo.context offers no
    public way to unset the current context: its thread-local store is
    used directly."""
    store = o_context._request_store
    before = getattr(store, "context", None)
    store.context = request
    try:
        yield
    finally:
        store.context = before


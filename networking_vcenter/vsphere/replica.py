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

"""A live, in-memory replica of the part of vCenter the driver cares about.

One PropertyCollector per process, with one filter over

* distributed switches (name, UUID, member hosts, folder, version, MTU),
* every network -- distributed port groups with their VLAN, description,
  VMs, binding type, policy, size, configVersion and port keys; standard
  networks with their hosts, VMs and custom values,
* compute resources (name, hosts) and datacenters (network folder),
* the hosts of the mapped clusters (vSwitches with their MTU, port groups),
* our custom attribute definitions,

read in full once and then kept current by ``WaitForUpdatesEx`` (versioned,
incremental), like a Kubernetes informer: list once, then watch.  After a
session loss (vCenter restarted, session expired) or an invalid version the
collector is made again and everything is read afresh.  That re-read (not the
first read) waits, once vCenter answers again, a random time up to
``reread_spread`` seconds: the processes that lost their replicas together
(every API worker and the periodic worker of every server, when vCenter
restarts) then do not all ask vCenter for the whole inventory at once.

Readers never call vCenter: :meth:`Replica.snapshot` builds an
:class:`~networking_vcenter.vsphere.inventory.Inventory` from memory (cached
until the next change).  Each batch of changes is also turned into *keys* for
the maintenance worker -- the networks whose port groups changed, or "full"
when the topology itself changed (a host joined a cluster, a switch changed,
vCenter came back empty) -- and handed to the listeners, which only enqueue.

The ports of our distributed port groups (those marked by this deployment)
are kept too, in :attr:`Inventory.dv_ports`: a port is no managed object and
a port reconfigure changes no property, so they are read with
``FetchDVPorts`` -- one call per switch for all its groups, or per
``ports.READ_BATCH`` ports of them -- after each full read; in the replica
thread, batched per update, again where an update says they may have
changed: ports added to a group's ``portKeys`` are read by key
and those taken out dropped; a change of its ``vm`` (a NIC connected or
gone), or of the ``config.changeVersion`` of a VM on it (a VM already on
the group that got or lost another NIC there changes nothing of the
group), reads only the ports whose connectee vCenter now shows otherwise than
the replica (``connected`` asked of the replica's free ports and of the
ports of VMs that came or went; ``not connected`` of its connected ports),
so that it costs what changed, not the group's size; a group that came,
became ours, or whose policy, default port config, type or switch changed
is read whole.  On demand, :meth:`Replica.refresh_ports` reads whole groups
(the reconciler's full pass sees hand edits of port settings that way) and
:meth:`Replica.refresh_port_keys` given ports.  Groups whose ports changed
are reported in :attr:`Event.portgroups`.

The session's tasks are awaited on the replica's collector too
(:meth:`Replica.watch_tasks`, once the replica runs: it is the session's
task watcher): the waiting thread adds a filter over its tasks' state,
error and result to the collector (one ``CreateFilter``) and sleeps; vCenter
answers the replica's long poll with the tasks' current values, and the
replica thread routes them to the waiters.  When the tasks of a wait have
ended, the DV ports they wrote are read by key in the replica thread (one
small ``FetchDVPorts`` per switch for all the waits that ended together) and
published before the waiter wakes: a write is trusted only as vCenter
answers it -- the task's success -- and the next plan still starts from a
read, with each port's new configVersion.  The filters of ended waits are
destroyed by the replica thread before its next poll.  A reload makes the
collector anew: waits whose tasks had ended are answered by its full read,
the others are watched again on the new collector (a task's end is an
"enter" of its final state there, never lost).

Nothing here writes to vCenter.
"""

from __future__ import annotations

import contextlib
import dataclasses
import random
import threading
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

from oslo_log import log as logging
from pyVmomi import vim, vmodl

from networking_vcenter import conf
from networking_vcenter import exceptions
from networking_vcenter.vsphere import inventory
from networking_vcenter.vsphere import ports as ports_mod
from networking_vcenter.vsphere import reads
from networking_vcenter.vsphere.session import Session

LOG = logging.getLogger(__name__)

PC = vmodl.query.PropertyCollector

# Seconds one WaitForUpdatesEx may wait on vCenter for changes.
LONG_POLL = 20
# Seconds between attempts while vCenter does not answer.
RETRY_DELAY = (1.0, 5.0)

# What is watched, per type.  A distributed port group is a Network too, so
# it gets both lists.
NETWORK_PATHS = ["name", "host", "vm", "customValue"]
DVPG_PATHS = ["key", "config.distributedVirtualSwitch",
              "config.defaultPortConfig", "config.description",
              "config.type", "config.policy", "config.numPorts",
              "config.configVersion", "portKeys"]
DVS_PATHS = ["name", "uuid", "summary.hostMember", "parent",
             "config.productInfo"]
# Of VMware's own switches only (a path other switch types do not have).
VMWARE_DVS_PATHS = ["config.maxMtu"]
# A change of these on one of our port groups means its ports may have
# changed: they are read again.
PORT_PATHS = ("portKeys", "vm", "config")
# Of those, the changes read narrowly (see the module doc); a change of any
# other config path reads the whole group.  numPorts and configVersion
# change with portKeys (the group grew or shrank) and on edits of the
# group's unwatched config, none of which changes a port.
NARROW_PATHS = frozenset({"portKeys", "vm", "config.numPorts",
                          "config.configVersion", "config.description"})
CR_PATHS = ["name", "host"]
DC_PATHS = ["networkFolder"]
HOST_PATHS = ["name", "configManager.networkSystem",
              "config.network.vswitch", "config.network.portgroup"]
FIELD_PATHS = ["field"]
# A VM's changeVersion changes with each change of its configuration: a VM
# already on one of our groups that got or lost another NIC there changes
# nothing of the group, only this.
VM_PATHS = ["config.changeVersion"]


@dataclasses.dataclass(frozen=True)
class Event:
    """What a batch of changes means for the reconciler."""

    networks: frozenset[str] = frozenset()   # networks whose port groups
    full: bool = False                       # changed; or everything
    portgroups: frozenset[str] = frozenset()  # keys of our distributed port
                                              # groups whose ports changed


@dataclasses.dataclass(eq=False)
class _TaskWait:
    """One thread's wait for its tasks on the replica's collector."""

    what: str
    tasks: list[Any]
    read_back: tuple[Any, frozenset[str]] | None   # (switch, port keys)
    info: dict[str, dict[str, Any]]   # task moid -> {path: value}
    filter: Any = None                # its filter on the current collector
    on: int | None = None             # the collector generation it is on
    ended: bool = False               # every task ended (seen, not yet told)
    done: bool = False                # ended, and its ports read: answered
    error: Exception | None = None    # the replica lost track of a task


TASK_PATHS = ["info.state", "info.error", "info.result"]


def _task_filter(tasks: list[Any]) -> Any:
    return PC.FilterSpec(
        objectSet=[PC.ObjectSpec(obj=t) for t in tasks],
        propSet=[PC.PropertySpec(type=vim.Task, pathSet=TASK_PATHS)])


def _ended(entry: _TaskWait) -> bool:
    return all(p.get("info.state") in ("success", "error")
               for p in entry.info.values())


@dataclasses.dataclass
class _Obj:
    ref: Any
    props: dict[str, Any]


@dataclasses.dataclass
class _Narrow:
    """What an update changed of one group's ports, to read narrowly."""

    added: set[str] = dataclasses.field(default_factory=set)    # port keys
    removed: set[str] = dataclasses.field(default_factory=set)  # port keys
    connectees: bool = False     # its VMs changed: a NIC came or went
    vms: set[str] = dataclasses.field(default_factory=set)      # that did
    joined: set[str] = dataclasses.field(default_factory=set)   # that came


def _kind(ref: Any) -> str:
    if isinstance(ref, vim.dvs.DistributedVirtualPortgroup):
        return "dvpg"
    if isinstance(ref, vim.DistributedVirtualSwitch):
        return "dvs"
    if isinstance(ref, vim.OpaqueNetwork):
        return "other"
    if isinstance(ref, vim.Network):
        return "network"
    if isinstance(ref, vim.HostSystem):
        return "host"
    if isinstance(ref, vim.VirtualMachine):
        return "vm"
    if isinstance(ref, vim.ComputeResource):
        return "cr"
    if isinstance(ref, vim.Datacenter):
        return "dc"
    if isinstance(ref, vim.CustomFieldsManager):
        return "fields"
    return "other"


class Replica:
    """The live replica of one process (see the module doc)."""

    def __init__(self, session: Session, settings: conf.Settings):
        self._session = session
        self._settings = settings
        self._objects: dict[str, _Obj] = {}
        self._cond = threading.Condition()
        self._synced = False           # a full read has completed
        self._generation = 0           # bumped on every change applied
        self._snapshot: tuple[int, inventory.Inventory] | None = None
        # The ports of our distributed port groups, by group key, and the
        # number of the read each came from (a later read wins): of the
        # group's last whole read, and {port key: read} of the ports read
        # (or dropped) by key since.
        self._ports: dict[str, tuple[inventory.DvPort, ...]] = {}
        self._port_reads: dict[str, int] = {}
        self._key_reads: dict[str, dict[str, int]] = {}
        self._reads = 0
        self._read_lock = threading.Lock()
        self._listeners: list[Callable[[Event], None]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._collector = None
        self._views: list[Any] = []
        self._version = ""
        self._session_generation = -1
        self._filter_moid: str | None = None   # the inventory's filter
        # Task waits (under self._cond): the waits; whether their filters
        # may go on the collector now (it is made and read), and which
        # collector that is (a generation, bumped by each reload); filters
        # of the current collector the replica thread is to destroy.
        self._waits: list[_TaskWait] = []
        self._watching = False
        self._collector_gen = 0
        self._dead: list[Any] = []
        self.error: Exception | None = None   # why it is not current
        # Draws the wait before each re-read (_spread).
        self._random = random.Random()
        self.reloads = 0                       # full reads done
        self.last_contact: float | None = None  # monotonic: vCenter's last
                                                # answer to the watch

    # -- readers ----------------------------------------------------------

    @property
    def synced(self) -> bool:
        return self._synced

    @property
    def current(self) -> bool:
        """Read, and vCenter answered the watch within one long poll: the
        replica can be trusted to be (nearly) what vCenter has."""
        at = self.last_contact
        return self._synced and self.error is None and at is not None and \
            time.monotonic() - at < LONG_POLL + 5

    def add_listener(self, fn: Callable[[Event], None]) -> None:
        self._listeners.append(fn)

    def snapshot(self, timeout: float = 0) -> inventory.Inventory:
        """The current inventory, from memory.  Waits up to ``timeout``
        seconds for the first full read; TransientFault if there is none."""
        with self._cond:
            if not self._synced:
                self._cond.wait_for(lambda: self._synced or self._stop.is_set(),
                                    timeout=max(0.0, timeout))
            if not self._synced:
                raise exceptions.TransientFault(
                    f"vCenter {self._session.endpoint}",
                    f"not read yet ({self.error or 'connecting'})")
            if self._snapshot is None or \
                    self._snapshot[0] != self._generation:
                self._snapshot = (self._generation, self._build())
            return self._snapshot[1]

    def wait_until(self, predicate: Callable[[inventory.Inventory], bool],
                   timeout: float) -> bool:
        """Wait (at most ``timeout`` s) until the replica shows what
        ``predicate`` wants -- e.g. a port group just created."""
        deadline = time.monotonic() + timeout
        while True:
            with self._cond:
                generation = self._generation
            try:
                if predicate(self.snapshot()):
                    return True
            except exceptions.TransientFault:
                pass
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            with self._cond:
                self._cond.wait_for(
                    lambda: self._generation != generation or
                    self._stop.is_set(), timeout=left)
            if self._stop.is_set():
                return False

    def refresh_ports(self, portgroup_keys: Any = None,
                      timeout: float | None = None) -> frozenset[str]:
        """Read the ports of our distributed port groups now (all of them,
        or those of ``portgroup_keys`` that are ours), in the caller's
        thread: one ``FetchDVPorts`` per switch, under a budget of
        ``timeout`` seconds when given.  Answers the keys of the groups
        whose ports changed; listeners get them in an Event too.  Raises
        the session's typed errors (TransientFault before the first full
        read)."""
        with self._cond:
            if not self._synced:
                raise exceptions.TransientFault(
                    f"vCenter {self._session.endpoint}",
                    f"not read yet ({self.error or 'connecting'})")
            objects = self._objects
        groups = self._our_groups(objects)
        if portgroup_keys is not None:
            wanted = set(portgroup_keys)
            groups = {moid: (ref, keys & wanted)
                      for moid, (ref, keys) in groups.items()
                      if keys & wanted}
        if timeout is None:
            read, found = self._fetch(groups)
        else:
            with self._session.budget(timeout):
                read, found = self._fetch(groups)
        changed = self._store_ports(read, found, set())
        if changed:
            self._notify(Event(portgroups=changed))
        return changed

    def refresh_port_keys(self, dvs_moid: str, port_keys: Any) -> None:
        """Read just these ports of one switch now (the ones this process
        has just written): one small ``FetchDVPorts``, merged into their
        port groups' ports."""
        with self._cond:
            obj = self._objects.get(dvs_moid)
        if obj is None:
            return
        read, by_group = self._read_keys({dvs_moid: (obj.ref,
                                                     set(port_keys))})
        with self._cond:
            changed = self._merge_ports(read, by_group)
            if changed:
                self._generation += 1
                self._cond.notify_all()

    def _read_keys(self, wanted: dict[str, tuple[Any, set[str]]]):
        """Read these ports ({switch moid: (switch, port keys)}), one
        FetchDVPorts per switch: the read's number and {group key: (no
        key to drop, the ports read)}, for :meth:`_merge_ports`."""
        with self._read_lock:
            self._reads += 1
            read = self._reads
        by_group: dict[str, tuple[set[str], list[inventory.DvPort]]] = {}
        for moid in sorted(wanted):
            ref, keys = wanted[moid]
            for p in ports_mod.fetch_port_keys(self._session, ref, keys):
                by_group.setdefault(p.portgroup_key,
                                    (set(), []))[1].append(p)
        return read, by_group

    # -- task waits ---------------------------------------------------------

    def watch_tasks(self, tasks: Any, what: str, deadline: float,
                    read_back: tuple[Any, frozenset[str]] | None
                    ) -> dict[str, dict[str, Any]] | None:
        """Wait for ``tasks`` on the replica's collector (the session's
        :class:`~networking_vcenter.vsphere.session.TaskWatcher`): one
        ``CreateFilter`` in the calling thread, then a sleep until the
        replica thread has seen every task end and -- all succeeded, with
        ``read_back`` (switch, port keys) -- has read and published those
        ports.  Answers {task moid: {"info.state", "info.error",
        "info.result"}}, or None when the replica cannot watch them (not
        current, stopping, its collector gone before the filter was on
        it): the session then waits on a collector of its own.  Raises
        TaskTimeout at ``deadline``, OutOfTime at the calling thread's
        budget, TransientFault if a task is lost (vCenter no longer knows
        it)."""
        session = self._session
        entry = _TaskWait(what, list(tasks), read_back,
                          {t._moId: {} for t in tasks})
        with self._cond:
            if not self._watching or not self.current or \
                    self._stop.is_set():
                return None
            collector, gen = self._collector, self._collector_gen
            self._waits.append(entry)
        try:
            try:
                flt = session.call(f"{what}: watch its task(s)",
                                   collector.CreateFilter,
                                   _task_filter(entry.tasks),
                                   partialUpdates=False)
            except exceptions.OutOfTime:
                raise
            except exceptions.VCenterError as exc:
                with self._cond:
                    if entry.on is None and not entry.done:
                        # Not watched again by a reload meanwhile.
                        LOG.debug("%s: not watched by the replica (%s)",
                                  what, exc)
                        return None
            else:
                with self._cond:
                    if gen == self._collector_gen and self._watching:
                        if entry.done or entry.error is not None:
                            self._dead.append(flt)
                        elif entry.on is None:
                            entry.filter, entry.on = flt, gen
                    # Otherwise it is on a collector that is gone (a
                    # reload): the reload watches the tasks again.
            with self._cond:
                while True:
                    if entry.error is not None:
                        raise entry.error
                    if entry.done:
                        return entry.info
                    if self._stop.is_set():
                        return None
                    remaining = deadline - time.monotonic()
                    left = session.time_left()
                    if left is not None and left <= 0:
                        raise exceptions.OutOfTime(
                            what, "the time budget is spent before its "
                                  "task(s) ended")
                    if remaining <= 0:
                        raise exceptions.TaskTimeout(
                            what, f"not finished after "
                                  f"{self._settings.task_timeout}s")
                    self._cond.wait(remaining if left is None
                                    else min(remaining, left))
        finally:
            with self._cond:
                self._waits = [e for e in self._waits if e is not entry]
                if entry.filter is not None and \
                        entry.on == self._collector_gen and self._watching:
                    self._dead.append(entry.filter)
                entry.filter = None

    def _task_updates(self, sets: list[Any]) -> list[_TaskWait]:
        """Route the tasks' changes of an update to their waits (by task:
        a wait may not have learnt its filter yet); answers the waits
        whose tasks have all ended now."""
        ended = []
        with self._cond:
            for fs in sets:
                for ou in fs.objectSet or []:
                    for entry in self._waits:
                        props = entry.info.get(ou.obj._moId)
                        if props is None:
                            continue
                        for change in ou.changeSet or []:
                            props[change.name] = change.val
                for missing in fs.missingSet or []:
                    for entry in self._waits:
                        if missing.obj._moId in entry.info:
                            entry.error = exceptions.TransientFault(
                                entry.what, "lost track of its task(s): "
                                            "vCenter no longer has "
                                            f"{missing.obj._moId}")
            for entry in self._waits:
                if not entry.ended and entry.error is None and \
                        _ended(entry):
                    entry.ended = True
                    ended.append(entry)
            self._cond.notify_all()
        return ended

    def _answer(self, ended: list[_TaskWait]) -> None:
        """Wake the waits whose tasks all ended, once the ports they wrote
        are read and published: their next plan starts from vCenter's
        answer (listeners are not told: this process wrote them).  First
        thing after the long poll answered, before the inventory's own
        reads."""
        written = self._read_written(ended)
        with self._cond:
            if written and self._merge_ports(*written):
                self._generation += 1
            for entry in ended:
                entry.done = True
                if entry.filter is not None:
                    self._dead.append(entry.filter)
                    entry.filter = None
            self._cond.notify_all()

    def _read_written(self, ended: list[_TaskWait]):
        """Read the ports that the waits whose tasks all succeeded wrote
        (:meth:`_read_keys`); None if none."""
        wanted: dict[str, tuple[Any, set[str]]] = {}
        for entry in ended:
            if entry.read_back is None or any(
                    p.get("info.state") != "success"
                    for p in entry.info.values()):
                continue
            dvs, keys = entry.read_back
            wanted.setdefault(dvs._moId, (dvs, set()))[1].update(keys)
        return self._read_keys(wanted) if wanted else None

    def _watch_again(self, pending: list[_TaskWait]) -> None:
        """Put the filters of waits made on a collector that is gone on
        the new one (the replica thread, after a reload)."""
        for entry in pending:
            with self._cond:
                if entry.on is not None or entry.done or \
                        not any(e is entry for e in self._waits):
                    continue
                collector, gen = self._collector, self._collector_gen
            try:
                flt = self._session.call(
                    f"{entry.what}: watch its task(s) again",
                    collector.CreateFilter, _task_filter(entry.tasks),
                    partialUpdates=False)
            except exceptions.NotFound as exc:
                if self._session.generation != self._session_generation:
                    raise           # the session was lost: reload again
                with self._cond:    # the task is gone
                    entry.error = exceptions.TransientFault(
                        entry.what, f"lost track of its task(s): "
                                    f"{exc.fault}")
                    self._cond.notify_all()
                continue
            with self._cond:
                if gen != self._collector_gen:
                    continue        # gone with that collector
                if entry.on is None and not entry.done and \
                        any(e is entry for e in self._waits):
                    entry.filter, entry.on = flt, gen
                else:
                    self._dead.append(flt)

    def _drop_filters(self) -> None:
        """Destroy the filters of waits that ended or gave up."""
        with self._cond:
            dead, self._dead = self._dead, []
        for flt in dead:
            try:
                self._session.call("stop watching task(s)",
                                   flt.DestroyPropertyFilter, attempts=0)
            except exceptions.VCenterError:
                pass    # gone with the collector at the latest

    # -- life cycle -------------------------------------------------------

    def start(self) -> None:
        """Read everything now (errors raised typed), then watch in a
        thread."""
        self._reload()
        self._spawn()

    def start_background(self) -> None:
        """Watch in a thread, reading everything once vCenter answers."""
        self._spawn()

    def _spawn(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        # The session's tasks are awaited here from now on.
        self._session.attach(self)
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name="vcenter-replica")
        self._thread.start()

    def stop(self) -> None:
        self._session.detach(self)
        self._stop.set()
        with self._cond:
            self._cond.notify_all()     # task waits go on without us
        collector = self._collector
        if collector is not None:
            try:   # wake the long poll; best effort
                self._session.call("cancel the replica's wait",
                                   collector.CancelWaitForUpdates,
                                   attempts=0)
            except Exception:  # noqa: BLE001 - vCenter may be gone
                pass
        if self._thread is not None:
            # No longer than the caller's budget has left (its long poll
            # ends with the connection, or at its own timeout: a daemon).
            deadline = self._session.deadline
            self._thread.join(timeout=5 if deadline is None else max(
                0.1, min(5.0, deadline - time.monotonic())))
        self._destroy_collector()

    @classmethod
    def read_once(cls, session: Session,
                  settings: conf.Settings) -> inventory.Inventory:
        """One full read, no watch: the CLI's view of vCenter."""
        replica = cls(session, settings)
        try:
            replica._reload()
            return replica.snapshot()
        finally:
            replica._destroy_collector()

    # -- the watch --------------------------------------------------------

    def _run(self) -> None:
        delay = RETRY_DELAY[0]
        while not self._stop.is_set():
            try:
                if self._collector is None or \
                        self._session_generation != self._session.generation:
                    self._reload()
                else:
                    self._poll()
                delay = RETRY_DELAY[0]
            except Exception as exc:  # noqa: BLE001 - the watch never dies
                if self._stop.is_set():
                    break
                if self.error is None or str(exc) != str(self.error):
                    LOG.warning("vCenter replica: %s; retrying", exc)
                self.error = exc
                # A lost connection, a collector vCenter no longer knows, an
                # invalid version: start from scratch with a full read (a
                # wait cut off mid-way may have taken changes with it).
                self._destroy_collector()
                self._stop.wait(delay)
                delay = min(delay * 2, RETRY_DELAY[1])

    def _reload(self) -> None:
        """Make the collector and filter anew and read everything; then
        watch the tasks of waits again there."""
        self._destroy_collector()
        session = self._session
        content = session.content
        self._session_generation = session.generation
        collector = session.call("create the replica's property collector",
                                 content.propertyCollector
                                 .CreatePropertyCollector)
        self._collector = collector
        if self.reloads:
            self._spread()
        root = session.call("open a view of the inventory",
                            content.viewManager.CreateContainerView,
                            content.rootFolder,
                            [vim.DistributedVirtualSwitch, vim.Network,
                             vim.ComputeResource, vim.Datacenter,
                             vim.VirtualMachine], True)
        self._views = [root]
        host_containers = self._host_containers(content)
        for container in host_containers:
            self._views.append(session.call(
                "open a view of the mapped clusters' hosts",
                content.viewManager.CreateContainerView, container,
                [vim.HostSystem], True))
        objects = [PC.ObjectSpec(obj=v, skip=True, selectSet=[
            PC.TraversalSpec(name="view", path="view", skip=False,
                             type=vim.view.ContainerView)])
            for v in self._views]
        types = [(vim.Network, NETWORK_PATHS),
                 (vim.dvs.DistributedVirtualPortgroup, DVPG_PATHS),
                 (vim.DistributedVirtualSwitch, DVS_PATHS),
                 (vim.dvs.VmwareDistributedVirtualSwitch, VMWARE_DVS_PATHS),
                 (vim.ComputeResource, CR_PATHS),
                 (vim.Datacenter, DC_PATHS),
                 (vim.HostSystem, HOST_PATHS),
                 (vim.VirtualMachine, VM_PATHS)]
        if content.customFieldsManager is not None:
            objects.append(PC.ObjectSpec(obj=content.customFieldsManager))
            types.append((vim.CustomFieldsManager, FIELD_PATHS))
        spec = PC.FilterSpec(objectSet=objects, propSet=[
            PC.PropertySpec(type=t, pathSet=p) for t, p in types])
        self._filter_moid = session.call(
            "watch the inventory", collector.CreateFilter, spec,
            partialUpdates=False)._moId
        fresh: dict[str, _Obj] = {}
        version = ""
        while True:   # the first answer may come in several parts
            update = session.call("read the inventory",
                                  self._parsed(collector.WaitForUpdatesEx),
                                  version, PC.WaitOptions(
                                      maxWaitSeconds=0,
                                      maxObjectUpdates=reads.READ_PAGE))
            if update is None:
                break
            version = update.version
            self._apply(self._inventory_part(update), fresh, None)
            if not update.truncated:
                break
        read, ports = self._fetch(self._our_groups(fresh), fresh)
        with self._cond:
            self._ports = ports
            self._port_reads = {k: read for k in ports}
            self._key_reads = {}
            self._objects = fresh
            self._version = version
            self._synced = True
            self._generation += 1
            self.error = None
            self.reloads += 1
            self.last_contact = time.monotonic()
            # Task waits: their filters went with the old collector.  Those
            # whose tasks had ended are answered: this read has their ports.
            self._collector_gen += 1
            self._watching = True
            pending = []
            for entry in self._waits:
                entry.filter, entry.on = None, None
                if entry.ended:
                    entry.done = True
                elif not entry.done and entry.error is None:
                    pending.append(entry)
            self._cond.notify_all()
        LOG.info("vCenter replica: read %d objects and the ports of %d port "
                 "group(s) (reload %d)", len(fresh), len(ports), self.reloads)
        self._watch_again(pending)
        self._notify(Event(full=True))

    def _spread(self) -> None:
        """Before a re-read (not the first read), once vCenter answered
        again: wait a random time in [0, reread_spread], so that the
        processes that lost their replicas together (vCenter restarted)
        do not all read the whole inventory at the same moment."""
        spread = self._settings.reread_spread
        if spread <= 0:
            return
        delay = self._random.uniform(0.0, spread)
        LOG.info("vCenter replica: reading the inventory again in %.1f s "
                 "(reread_spread %g s)", delay, spread)
        if self._stop.wait(delay):
            raise exceptions.TransientFault(
                f"vCenter {self._session.endpoint}", "stopping")

    def _host_containers(self, content: Any) -> list[Any]:
        """The mapped clusters, to watch only their hosts; the root folder
        when one of them is not a compute resource of that exact name (a
        standalone ESXi host named in compute_hosts, a typo that start-up
        validation will report)."""
        found: dict[str, list[Any]] = {}
        for ref, props in reads.retrieve(
                self._session, vim.ComputeResource, ["name"],
                "compute resources"):
            found.setdefault(props["name"], []).append(ref)
        wanted = self._settings.clusters
        if all(len(found.get(c, [])) == 1 for c in wanted):
            return [found[c][0] for c in wanted]
        return [content.rootFolder]

    def _inventory_part(self, update: Any) -> Any:
        """An update's changes seen by the inventory's filter (the others
        are task waits')."""
        return SimpleNamespace(filterSet=[
            fs for fs in update.filterSet or []
            if fs.filter._moId == self._filter_moid])

    def _parsed(self, fn):
        """``fn`` (a WaitForUpdatesEx) with the port groups' default
        filters left unread where they are shared
        (``shared_security_filter``): they hold the rules of every sharing
        port, and the token in the group's description says what they
        hold (:class:`ports.GroupFiltersUnread`)."""
        if not self._settings.shared_security_filter:
            return fn
        return self._session.parsed_by(ports_mod.GroupFiltersUnread, fn)

    def _poll(self) -> None:
        self._drop_filters()
        update = self._session.call(
            "wait for inventory changes",
            self._parsed(self._collector.WaitForUpdatesEx),
            self._version, PC.WaitOptions(maxWaitSeconds=LONG_POLL),
            timeout=LONG_POLL + self._settings.api_timeout, attempts=0)
        self.last_contact = time.monotonic()
        if update is None or self._stop.is_set():
            return
        version = update.version
        ended = self._task_updates([
            fs for fs in update.filterSet or []
            if fs.filter._moId != self._filter_moid])
        if ended:
            self._answer(ended)
        update = self._inventory_part(update)
        event = Event()
        with self._cond:
            before = self._objects
            objects = dict(before)
            held = self._ports
        event = self._apply(update, objects, event)
        # Ports of our groups that this update may have changed: read
        # before the update is published, so that a snapshot never shows a
        # group with ports older than itself.
        touched, narrow = self._ports_touched(update, before, objects, held)
        ours = self._our_groups(objects)
        groups = {moid: (ref, keys & touched) for moid, (ref, keys)
                  in ours.items() if keys & touched}
        read, found = self._fetch(groups, objects)
        read_narrow, found_narrow, whole = self._fetch_narrow(
            ours, narrow, held)
        # VMs are not kept: an update of VMs alone changes the inventory
        # only through the ports it made us read.
        vms_only = all(_kind(ou.obj) == "vm" for fs in update.filterSet or []
                       for ou in fs.objectSet or [])
        with self._cond:
            self._objects = objects
            self._version = version
            changed = self._store_ports(read, found, touched, publish=False)
            changed |= self._merge_ports(read_narrow, found_narrow)
            if whole is not None:
                changed |= self._store_ports(*whole, set(), publish=False)
            if changed or not vms_only:
                self._generation += 1
            self.error = None
            self._cond.notify_all()
        if changed:
            event = dataclasses.replace(event, portgroups=changed)
        if event.full or event.networks or event.portgroups:
            self._notify(event)
        # Ended waits' filters: not watched any longer (after the waiters
        # woke, before the next poll).
        self._drop_filters()

    # -- ports ------------------------------------------------------------

    def _our_groups(self, objects: dict[str, _Obj]
                    ) -> dict[str, tuple[Any, set[str]]]:
        """{switch moid: (switch, keys of our port groups on it)}."""
        deployment = self._settings.deployment_name
        out: dict[str, tuple[Any, set[str]]] = {}
        for obj in objects.values():
            p = obj.props
            switch = p.get("config.distributedVirtualSwitch")
            if _kind(obj.ref) != "dvpg" or switch is None or \
                    not p.get("key"):
                continue
            mark = inventory.mark_from_description(p.get("config.description"))
            if inventory.owner(mark, deployment) is None:
                continue
            out.setdefault(switch._moId, (switch, set()))[1].add(p["key"])
        return out

    def _fetch(self, groups: dict[str, tuple[Any, set[str]]],
               objects: dict[str, _Obj] | None = None
               ) -> tuple[int, dict[str, tuple[inventory.DvPort, ...]]]:
        """Read the ports of ``groups``: FetchDVPorts per switch, one per
        ``ports.READ_BATCH`` ports of the groups' ``portKeys`` (in
        ``objects``, else the replica's).  Answers the read's number (its
        order among all reads) too."""
        with self._read_lock:
            self._reads += 1
            read = self._reads
        if objects is None:
            objects = self._objects     # replaced whole, never changed
        port_keys = {obj.props["key"]: obj.props.get("portKeys") or ()
                     for obj in objects.values()
                     if _kind(obj.ref) == "dvpg" and obj.props.get("key")}
        found: dict[str, tuple[inventory.DvPort, ...]] = {}
        for moid in sorted(groups):
            ref, keys = groups[moid]
            found.update(ports_mod.fetch_ports(self._session, ref, keys,
                                               port_keys))
        return read, found

    def _store_ports(self, read: int,
                     found: dict[str, tuple[inventory.DvPort, ...]],
                     touched: set[str], publish: bool = True
                     ) -> frozenset[str]:
        """Keep what a read found (unless a later read has stored that
        group already); groups in ``touched`` that are no longer ours (or
        gone) are forgotten.  Answers the groups whose ports changed.
        ``publish``: bump the generation (the caller does otherwise, and
        holds the lock)."""
        lock = self._cond if publish else contextlib.nullcontext()
        changed = set()
        with lock:
            ports = dict(self._ports)
            for key in touched - set(found):
                if key in ports:
                    del ports[key]
                    self._port_reads.pop(key, None)
                    self._key_reads.pop(key, None)
                    changed.add(key)
            for key, value in found.items():
                if self._port_reads.get(key, 0) > read:
                    continue
                self._port_reads[key] = read
                # Ports read by key after this read began keep that read.
                newer = {k: n for k, n in self._key_reads.pop(key, {}).items()
                         if n > read}
                if newer:
                    self._key_reads[key] = newer
                    value = tuple(sorted(
                        [p for p in value if p.key not in newer] +
                        [p for p in ports.get(key, ()) if p.key in newer],
                        key=ports_mod.key_order))
                if ports.get(key) != value:
                    ports[key] = value
                    changed.add(key)
            if changed:
                self._ports = ports
                if publish:
                    self._generation += 1
                    self._cond.notify_all()
        return frozenset(changed)

    def _ports_touched(self, update: Any, before: dict[str, _Obj],
                       objects: dict[str, _Obj],
                       held: dict[str, tuple[inventory.DvPort, ...]]
                       ) -> tuple[set[str], dict[str, "_Narrow"]]:
        """What of the distributed port groups' ports an update may have
        changed: the keys of the groups to read whole (they came or went,
        their ports were never read, the value of a config path outside
        NARROW_PATHS changed), and, for the others whose portKeys or VMs
        changed, what to read of them."""
        whole: set[str] = set()
        narrow: dict[str, _Narrow] = {}
        reconfigured: set[str] = set()
        for fs in update.filterSet or []:
            for ou in fs.objectSet or []:
                if _kind(ou.obj) == "vm" and ou.kind == "modify":
                    reconfigured.add(ou.obj._moId)
                if _kind(ou.obj) != "dvpg":
                    continue
                names = {c.name for c in ou.changeSet or []
                         if c.name.split(".")[0] in PORT_PATHS}
                if ou.kind not in ("enter", "leave") and not names:
                    continue
                moid = ou.obj._moId
                obj = objects.get(moid)
                key = obj.props.get("key") if obj else None
                key = key or moid
                old = before.get(moid)
                if ou.kind in ("enter", "leave") or old is None or \
                        key not in held or any(
                            _differs(old.props.get(n), obj.props.get(n))
                            for n in names - NARROW_PATHS):
                    whole.add(key)
                    continue
                change = narrow.setdefault(key, _Narrow())
                if "portKeys" in names:
                    was = set(old.props.get("portKeys") or ())
                    now = set(obj.props.get("portKeys") or ())
                    change.added |= now - was
                    change.removed |= was - now
                if "vm" in names:
                    was = {v._moId for v in old.props.get("vm") or ()}
                    now = {v._moId for v in obj.props.get("vm") or ()}
                    change.vms |= was ^ now
                    change.joined |= now - was
                    change.connectees = True
        if reconfigured:
            # A VM on one of our groups whose configuration changed may have
            # got or lost a NIC on it while staying on it: its ports are
            # read by their connection, as every other port of the group
            # (a port taken shows connected, one let go free).
            for obj in objects.values():
                key = obj.props.get("key")
                if _kind(obj.ref) == "dvpg" and key in held and \
                        reconfigured & {v._moId for v in
                                        obj.props.get("vm") or ()}:
                    narrow.setdefault(key, _Narrow()).connectees = True
        for key in whole:
            narrow.pop(key, None)
        return whole, narrow

    def _fetch_narrow(self, groups: dict[str, tuple[Any, set[str]]],
                      narrow: dict[str, "_Narrow"],
                      held: dict[str, tuple[inventory.DvPort, ...]]):
        """Read what ``narrow`` says of our groups, per switch: by key, the
        ports added to them and those the replica holds connected to a VM
        that came or went; of the other ports it holds free, those vCenter
        shows connected; of those it holds connected, those vCenter shows
        free.  At most three ``FetchDVPorts`` per switch, whose answers
        hold only ports that changed (or may have: those of the VMs).  A
        VM that came on no port so found (its NIC took a port the replica
        holds connected to a VM still on the group) has the group read
        whole after.  Answers the read's number, {group key: (port keys
        to drop, ports read)}, and the whole read (its number and {group
        key: ports}) or None."""
        with self._read_lock:
            self._reads += 1
            read = self._reads
        found: dict[str, tuple[set[str], list[inventory.DvPort]]] = {}
        for moid in sorted(groups):
            ref, keys = groups[moid]
            by_key: set[str] = set()
            free: set[str] = set()
            busy: set[str] = set()
            for key in sorted(keys & set(narrow)):
                change = narrow[key]
                found[key] = (change.removed - change.added, [])
                by_key |= change.added
                if not change.connectees:
                    continue
                for p in held.get(key, ()):
                    if p.key in change.removed or p.key in change.added:
                        continue
                    if p.connected and p.vm_moid in change.vms:
                        by_key.add(p.key)
                    elif p.connected:
                        busy.add(p.key)
                    else:
                        free.add(p.key)
            fresh = [*ports_mod.fetch_port_keys(self._session, ref, by_key),
                     *ports_mod.fetch_port_keys(self._session, ref, free,
                                                connected=True),
                     *ports_mod.fetch_port_keys(self._session, ref, busy,
                                                connected=False)]
            for p in fresh:
                if p.portgroup_key in found:
                    found[p.portgroup_key][1].append(p)
        again: dict[str, tuple[Any, set[str]]] = {}
        for moid, (ref, keys) in groups.items():
            for key in keys & set(found):
                if not narrow[key].joined:
                    continue
                drop, fresh = found[key]
                now = {p.key: p for p in held.get(key, ())
                       if p.key not in drop}
                now.update((p.key, p) for p in fresh)
                if narrow[key].joined - {p.vm_moid for p in now.values()}:
                    again.setdefault(moid, (ref, set()))[1].add(key)
                    del found[key]
        return read, found, self._fetch(again) if again else None

    def _merge_ports(self, read: int,
                     found: dict[str, tuple[set[str],
                                            list[inventory.DvPort]]]
                     ) -> set[str]:
        """Merge ports read by key into the groups held: {group key:
        (port keys to drop, ports read)}; a group a later read has stored
        is left alone.  The caller holds the lock and publishes.  Answers
        the groups whose ports changed."""
        changed = set()
        ports = dict(self._ports)
        for key, (drop, fresh) in found.items():
            have = ports.get(key)
            if have is None or self._port_reads.get(key, 0) > read:
                continue
            key_reads = self._key_reads.setdefault(key, {})
            merged = {p.key: p for p in have}
            for k in drop:
                if key_reads.get(k, 0) <= read:
                    merged.pop(k, None)
                    key_reads[k] = read
            for p in fresh:
                if key_reads.get(p.key, 0) <= read:
                    merged[p.key] = p
                    key_reads[p.key] = read
            value = tuple(sorted(merged.values(), key=ports_mod.key_order))
            if value != have:
                ports[key] = value
                changed.add(key)
        if changed:
            self._ports = ports
        return changed

    def _destroy_collector(self) -> None:
        with self._cond:
            self._watching = False      # task filters go with it
            self._dead = []
        collector, views = self._collector, self._views
        self._collector, self._views = None, []
        for obj, fn in [(v, "DestroyView") for v in views] + \
                ([(collector, "DestroyPropertyCollector")]
                 if collector is not None else []):
            try:
                self._session.call(f"clean up the replica ({fn})",
                                   getattr(obj, fn), attempts=0)
            except Exception:  # noqa: BLE001 - the session may be gone
                pass

    def _notify(self, event: Event) -> None:
        for fn in list(self._listeners):
            try:
                fn(event)
            except Exception:  # noqa: BLE001 - a listener must not kill us
                LOG.exception("vCenter replica listener failed")

    # -- applying updates -------------------------------------------------

    def _apply(self, update: Any, objects: dict[str, _Obj],
               event: Event | None) -> Event | None:
        """Apply one UpdateSet to ``objects``; with ``event``, also say
        which networks (or everything) the changes concern."""
        networks: set[str] = set(event.networks) if event else set()
        full = event.full if event else False
        field_key = self._field_key(objects)
        for fs in update.filterSet or []:
            for ou in fs.objectSet or []:
                if _kind(ou.obj) == "vm":
                    continue        # only a trigger (_ports_touched)
                moid = ou.obj._moId
                old = objects.get(moid)
                old_props = dict(old.props) if old else {}
                if ou.kind == "leave":
                    objects.pop(moid, None)
                    new_props = None
                else:
                    # A new dict: the previous snapshot's objects stay as
                    # they were while this update is applied.
                    props = dict(old_props)
                    for change in ou.changeSet or []:
                        if change.op in ("remove", "indirectRemove"):
                            props.pop(change.name, None)
                        else:
                            props[change.name] = change.val
                    objects[moid] = _Obj(ou.obj, props)
                    new_props = props
                if event is not None:
                    nets, everything = self._concerns(
                        ou.obj, ou.kind, old_props, new_props, field_key)
                    networks |= nets
                    full = full or everything
        if event is None:
            return None
        return Event(frozenset(networks), full)

    def _field_key(self, objects: dict[str, _Obj]) -> int | None:
        for obj in objects.values():
            if _kind(obj.ref) == "fields":
                return inventory.field_key_of(obj.props.get("field"))
        return None

    def _concerns(self, ref: Any, kind: str, old: dict[str, Any],
                  new: dict[str, Any] | None, field_key: int | None
                  ) -> tuple[set[str], bool]:
        what = _kind(ref)
        deployment = self._settings.deployment_name
        if what in ("dvs", "cr", "fields"):
            return set(), True
        if what == "host":
            if kind in ("enter", "leave"):
                return set(), True
            if old.get("config.network.vswitch") is not \
                    new.get("config.network.vswitch") and \
                    _vswitch_names(old) != _vswitch_names(new):
                return set(), True
            changed = _portgroups(old) ^ _portgroups(new)
            return {name for name, _, _ in changed
                    if inventory.UUID_RE.match(name)}, False
        if what == "dvpg":
            owners = {inventory.owner(inventory.mark_from_description(
                p.get("config.description")), deployment)
                for p in (old, new or {})}
            return {o for o in owners if o}, False
        if what == "network":
            owners = {inventory.owner(inventory.mark_of(
                p.get("customValue"), field_key), deployment)
                for p in (old, new or {})}
            owners |= {p.get("name") for p in (old, new or {})
                       if inventory.UUID_RE.match(p.get("name") or "")}
            return {o for o in owners if o}, False
        return set(), False

    # -- the inventory ----------------------------------------------------

    def _build(self) -> inventory.Inventory:
        by_kind: dict[str, list[tuple[Any, dict[str, Any]]]] = {}
        for obj in self._objects.values():
            by_kind.setdefault(_kind(obj.ref), []).append(
                (obj.ref, obj.props))
        field_key = self._field_key(self._objects)
        return reads.from_objects(
            dvss=by_kind.get("dvs", []), dvpgs=by_kind.get("dvpg", []),
            networks=by_kind.get("network", []),
            compute=by_kind.get("cr", []), datacenters=by_kind.get("dc", []),
            hosts=by_kind.get("host", []), field_key=field_key,
            has_fields=bool(by_kind.get("fields")),
            deployment=self._settings.deployment_name,
            dv_ports=self._ports)


def _differs(old: Any, new: Any) -> bool:
    """Whether a property's value changed.  pyVmomi's data objects do not
    compare by value, and an update may name properties that did not
    change (the simulator names every path of a changed ``config``): their
    printed forms, which hold every field, are compared."""
    return old is not new and repr(old) != repr(new)


def _portgroups(props: dict[str, Any] | None) -> set[tuple[str, str, int]]:
    return {(pg.spec.name, pg.spec.vswitchName, int(pg.spec.vlanId or 0))
            for pg in (props or {}).get("config.network.portgroup") or []}


def _vswitch_names(props: dict[str, Any] | None) -> set[str]:
    return {v.name for v in (props or {}).get("config.network.vswitch")
            or []}


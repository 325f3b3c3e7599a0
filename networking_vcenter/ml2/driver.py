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

"""The ``vcenter`` ML2 mechanism driver: translate, trigger, bind.

This module speaks ML2 and nothing else.  A network change becomes "reconcile
network N" for :class:`~networking_vcenter.reconcile.reconciler.Reconciler`,
which reads N afresh from Neutron and vCenter from the live replica;
``bind_port`` answers for the nova-compute hosts of ``compute_hosts`` with
``vif_type = dvs``.  What the API user sees:

* every hook returns within ``api_call_budget`` seconds whatever vCenter does
  (down, black-holed, slow): the work runs in a thread the hook waits for
  until the deadline, and what is not done by then is finished by the
  maintenance worker (:mod:`~networking_vcenter.reconcile.worker`);
* a network whose port group vCenter *refuses* (a name taken by a port group
  we did not create, a name too long) is refused at create with 409 and a
  message naming both sides; ML2 then deletes the network.  Updates are not
  refused for that: ML2 cannot roll back a postcommit;
* a network whose MTU is above a switch it reaches is refused (400) at
  create, at an update raising the MTU and at a segment added, in precommit,
  from the replica (:mod:`~networking_vcenter.reconcile.mtu`);
* binding a port whose port group cannot be had in time leaves the port
  unbound (``binding_failed``), with the reason in the log;
* a network with no VLAN/flat segment on a mapped physical network (and no
  port group of ours) costs nothing: no lock, no vCenter call.
"""

from __future__ import annotations

import atexit
import collections
import concurrent.futures
import contextlib
import dataclasses
import functools
import os
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any

from neutron_lib import constants as n_const
from neutron_lib import context as n_context
from neutron_lib.api.definitions import portbindings
from neutron_lib.plugins import directory
from neutron_lib.plugins.ml2 import api
from neutron_lib.services.trunk import constants as trunk_consts
from oslo_config import cfg
from oslo_context import context as o_context
from oslo_log import log as logging

from networking_vcenter import agent
from networking_vcenter import conf
from networking_vcenter.constants import VIF_TYPE_DVS
from networking_vcenter import exceptions
from networking_vcenter import neutron_db
from networking_vcenter import qos
from networking_vcenter import trunk as trunk_mod
from networking_vcenter.reconcile import desired as desired_mod
from networking_vcenter.reconcile import leadership as leadership_mod
from networking_vcenter.reconcile import mtu as mtu_mod
from networking_vcenter.reconcile import worker as worker_mod
from networking_vcenter.reconcile.reconciler import Pass, Reconciler

LOG = logging.getLogger(__name__)


def _membership(port: dict | None) -> tuple:
    """What a port contributes to remote security groups naming its
    groups: its groups and addresses."""
    if port is None:
        return ()
    return (tuple(sorted(port.get("security_groups") or ())),
            tuple(sorted(ip.get("ip_address", "")
                         for ip in port.get("fixed_ips") or ())),
            tuple(sorted(str(p.get("ip_address"))
                         for p in port.get("allowed_address_pairs") or ())))


def _network_ports(hosts: set[str], network_ids: set[str] | None):
    return neutron_db.ports(host_filter=hosts, network_ids=network_ids)


# Seconds after vCenter was found unreachable during which API hooks do not
# try it again (the maintenance worker does).
UNREACHABLE_HOLD_OFF = 30.0
# Ports created whose sync waits for their binding, remembered at most.
CREATED_KEPT = 4096
# Threads that run API hooks' vCenter work, per process.
HOOK_THREADS = 8
# Seconds between an API call handing ports to the hook thread and their sync.
DRAIN_DELAY = 0.3
# Seconds before the heartbeat tries again a binding that failed when tried
# with vCenter answering, doubled at each failure up to the maximum.
REBIND_BACKOFF = 60.0
REBIND_BACKOFF_MAX = 3600.0


class VCenterMechanismDriver(api.MechanismDriver):
    """Neutron VLAN/flat networks as vSphere port groups."""

    @property
    def connectivity(self) -> str:
        # Pure layer 2: a port may be bound before (or without) an IP address.
        return portbindings.CONNECTIVITY_L2

    def initialize(self) -> None:
        try:
            self.settings = conf.load(cfg.CONF)
        except exceptions.ConfigError as exc:
            LOG.critical("vcenter mechanism driver cannot start: %s", exc)
            raise
        self.source = neutron_db.networks
        self.port_source = functools.partial(
            neutron_db.ports, host_filter=set(self.settings.compute_hosts))
        self._pid = None
        self._start(background=False)
        qos.register(self._on_qos_policy)
        trunk_mod.register(self)
        self._subscribe()

    def _start(self, background: bool) -> None:
        """This process's reconciler, replica and hook threads."""
        self._pid = os.getpid()
        self.reconciler = Reconciler.from_settings(self.settings)
        self._hooks = concurrent.futures.ThreadPoolExecutor(
            HOOK_THREADS, thread_name_prefix="vcenter-hook")
        self._lock = threading.Lock()
        self._binds: dict[str, float] = {}   # port id -> binding deadline
        self._soon: list = []                 # ports (or queries) to sync
        self._sg_deleting: dict[str, set[str]] = {}
        # Ports created on our hosts whose sync waits for their binding.
        self._created: collections.OrderedDict[str, None] = \
            collections.OrderedDict()
        # Port id -> (failed tries, monotonic time of the next): bindings
        # that failed again when tried by the heartbeat (rebind_failed).
        self._rebind_backoff: dict[str, tuple[int, float]] = {}
        self._health_down = False
        self._draining = False
        self.reconciler.status_sink = self._set_port_status
        self.reconciler.trunk_status_sink = self._set_trunk_status
        self.reconciler.network_ports = functools.partial(
            _network_ports, set(self.settings.compute_hosts))
        atexit.register(self._close, self._pid)
        try:
            if background:
                self.reconciler.start(background=True)
            else:
                # Neutron's start waits for vCenter no longer than one API
                # call would: a vCenter black-holed answers no faster.
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
                self._close(self._pid)
                raise
            LOG.warning("vcenter mechanism driver starts without vCenter: "
                        "%s. Networks are accepted and their port groups "
                        "made once vCenter answers; ports cannot be bound "
                        "until then.", exc)
            self.reconciler.start(background=True)
        except exceptions.VCenterError as exc:
            LOG.critical("vcenter mechanism driver cannot start: %s", exc)
            self._close(self._pid)      # no watch or session left behind
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
            self._start(background=True)
        return self.reconciler

    def _close(self, pid: int) -> None:
        """Log out and stop watching when the process ends (atexit, or the
        maintenance worker's stop); once."""
        if pid == os.getpid() and self._pid == pid:
            self._pid = None
            self._hooks.shutdown(wait=False, cancel_futures=True)
            self.reconciler.close()

    # -- the maintenance worker ----------------------------------------------

    def get_workers(self):
        return [worker_mod.MaintenanceWorker(
            self.start_maintenance, lambda: self._close(os.getpid()))]

    def start_maintenance(self) -> worker_mod.Maintenance:
        """Start the maintenance loop in this process (the worker's
        start(); tests call it directly)."""
        maintenance = worker_mod.Maintenance(
            self._here(), self.source, neutron_db.change_token,
            self.settings.resync_interval, self.settings.resync_grace_period,
            heartbeat=self._report_health,
            heartbeat_interval=self._agent_down_time() / 3,
            port_source=self.port_source,
            port_prints=functools.partial(
                neutron_db.port_fingerprints,
                host_filter=set(self.settings.compute_hosts)),
            port_token=neutron_db.port_change_token,
            leadership=leadership_mod.Leadership.for_vcenter(
                self._here().locks, self.settings))
        maintenance.start()
        return maintenance

    @staticmethod
    def _agent_down_time() -> float:
        try:
            return float(cfg.CONF.agent_down_time)
        except cfg.NoSuchOptError:
            return 75.0

    def _report_health(self, maintenance: worker_mod.Maintenance) -> bool:
        """Heartbeat the backend's agent row while vCenter answers."""
        rec = self._here()
        if rec.replica is None or not rec.replica.current:
            self._health_down = True
            return False
        if self._health_down:
            # vCenter is back: every failed binding is worth a try at once.
            self._health_down = False
            self._rebind_backoff.clear()
        state = agent.state(self.settings, rec.replica.snapshot(),
                            maintenance.last_pass, maintenance.last_pass_at,
                            start=maintenance.beats == 0,
                            holder=getattr(maintenance, "holder", None))
        directory.get_plugin().create_or_update_agent(
            n_context.get_admin_context(), state)
        self.map_segments(rec)
        self.rebind_failed()
        return True

    def map_segments(self, rec: Reconciler) -> None:
        """Neutron's segment-to-host mappings for our compute hosts, as the
        replica shows the switches reaching their clusters (what an L2
        agent reports for its own host): routed provider networks and
        Nova's placement aggregates follow from them.  Level-triggered with
        the heartbeat; a new segment is mapped at once
        (:meth:`_on_segment_create`)."""
        from neutron.services.segments import db as segments_db
        topology = rec.topology(rec.replica.snapshot())
        mapping = desired_mod.segment_hosts(
            neutron_db.segments(set(topology.targets)), topology)
        ctx = n_context.get_admin_context()
        for host, segment_ids in sorted(mapping.items()):
            segments_db.update_segment_host_mapping(ctx, host, segment_ids)

    def rebind_failed(self) -> int:
        """Bind again the ports of our compute hosts whose binding failed
        (vCenter was away, or a port group could not be had): ML2 binds a
        failed binding again when asked for the port's bound context.  Run
        with the heartbeat, i.e. while vCenter answers; a port that fails
        again is tried after REBIND_BACKOFF seconds, doubling, until vCenter
        next comes back.  Answers how many got bound."""
        plugin = directory.get_plugin()
        ctx = n_context.get_admin_context()
        bound = 0
        failed = neutron_db.failed_bindings(set(self.settings.compute_hosts))
        backoff = self._rebind_backoff
        for gone in set(backoff) - {port_id for port_id, _ in failed}:
            del backoff[gone]
        now = time.monotonic()
        for port_id, host in failed:
            tries, next_at = backoff.get(port_id, (0, 0.0))
            if next_at > now:
                continue
            try:
                result = plugin.get_bound_port_context(ctx, port_id, host)
            except Exception as exc:  # noqa: BLE001 - the port may be gone
                LOG.debug("port %s: not bound again: %s", port_id, exc)
                result = None
            if result is not None and result.vif_type != \
                    portbindings.VIF_TYPE_BINDING_FAILED:
                bound += 1
                backoff.pop(port_id, None)
                LOG.info("port %s on %s: bound again now that vCenter "
                         "answers", port_id, host)
                continue
            # Failed again with vCenter answering: a cause vCenter's return
            # does not cure (a policy refused, a name taken).  Tried less
            # and less often, not every beat with ML2's ten tries logged.
            delay = min(REBIND_BACKOFF_MAX, REBIND_BACKOFF * 2 ** tries)
            backoff[port_id] = (tries + 1, now + delay)
            LOG.warning("port %s on %s: still cannot be bound (see the "
                        "errors above); next try in %.0fs", port_id, host,
                        delay)
        return bound

    # -- networks ------------------------------------------------------------

    def create_network_precommit(self, context: api.NetworkContext) -> None:
        self._check_mtu(context)

    def update_network_precommit(self, context: api.NetworkContext) -> None:
        """Checked when the MTU rises (net-mtu-writable), and for segments
        added (the segments service plugin calls this with the network
        before and after)."""
        original = getattr(context, "original", None) or {}
        before = original.get("mtu")
        if not before or (context.current.get("mtu") or 0) > before:
            self._check_mtu(context)
        elif original.get("id"):
            old = desired_mod.network_from_neutron(original).segments
            added = [s for s in desired_mod.network_from_neutron(
                context.current, context.network_segments).segments
                if s not in old]
            if added:
                self._check_mtu(context, added)

    def _check_mtu(self, context: api.NetworkContext,
                   segments: list | None = None) -> None:
        """Refuse a network whose MTU (as ML2 computed or was asked for,
        before it is committed) is above a switch its mapped segments reach
        -- a distributed switch's maxMtu, the vSwitch's mtu on each host --
        unless a distributed switch may be raised.  From the replica only:
        before vCenter is read the network is accepted, and the maintenance
        worker's full pass warns about it."""
        mtu = context.current.get("mtu")
        if segments is None:
            segments = list(context.network_segments or [])
        if not mtu or not any(desired_mod.is_mapped(
                seg, self.settings.switch_mappings) for seg in segments):
            return
        rec = self._here()
        if rec.replica is None or not rec.replica.synced:
            LOG.warning("network %s: MTU %s not checked against the "
                        "switches: vCenter is not read yet",
                        context.current["id"], mtu)
            return
        try:
            inv = rec.replica.snapshot()
            small = mtu_mod.too_small(mtu, segments, rec.topology(inv), inv,
                                      self.settings.raise_switch_mtu)
        except exceptions.VCenterError as exc:
            LOG.warning("network %s: MTU %s not checked against the "
                        "switches: %s", context.current["id"], mtu, exc)
            return
        if small:
            raise exceptions.MtuTooLarge(error_message=mtu_mod.refusal(
                context.current["id"], mtu, small))

    def create_network_postcommit(self, context: api.NetworkContext) -> None:
        self._sync(context, refuse=True)

    def update_network_postcommit(self, context: api.NetworkContext) -> None:
        # Also called for segments added or removed through the segments
        # service plugin.
        self._sync(context, refuse=False)
        before = getattr(context, "original", None) or {}
        if context.current.get("qos_policy_id") != \
                before.get("qos_policy_id"):
            self._sync_ports_soon(set(), functools.partial(
                neutron_db.ports_referencing,
                network_ids=[context.current["id"]]))

    def delete_network_postcommit(self, context: api.NetworkContext) -> None:
        self._sync(context, refuse=False)

    def _unreachable(self, rec: Reconciler) -> float | None:
        """Seconds since vCenter was found unreachable, if that is recent
        enough for API calls not to try it again (the worker does)."""
        down = rec.session.unreachable_for()
        return down if down is not None and down < UNREACHABLE_HOLD_OFF \
            else None

    def _in_time(self, what: str, fn, *args, from_memory: bool = False,
                 deadline: float | None = None):
        """Run ``fn`` in a hook thread under the API deadline (now plus
        ``api_call_budget``, or ``deadline``); raise TransientFault when the
        deadline passes first (the thread finishes its current call and
        stops: the session refuses calls past it).  While vCenter is known
        unreachable, fail at once -- unless ``fn`` can answer
        ``from_memory`` (the replica)."""
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
            with _request(request), rec.session.budget(
                    max(0.0, deadline - time.monotonic())):
                return fn(rec, deadline, *args)

        future = self._hooks.submit(job)
        try:
            return future.result(timeout=max(0.0,
                                             deadline - time.monotonic()))
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise exceptions.TransientFault(
                what, f"not done within api_call_budget ({budget:.0f}s)")

    def _sync(self, context: api.NetworkContext, refuse: bool) -> None:
        """Reconcile; refuse the API call only on a permanent no at create."""
        network_id = context.current["id"]
        segments = list(context.network_segments or [])
        original = getattr(context, "original", None) or {}
        segments += [{"network_type": original.get("provider:network_type"),
                      "physical_network":
                          original.get("provider:physical_network")}]
        if not self._here().manages(network_id, segments):
            return

        def reconcile(rec: Reconciler, deadline: float) -> Pass:
            return rec.sync_network(
                network_id, self.source,
                wait=max(0.0, deadline - time.monotonic()),
                settle=max(0.0, deadline - time.monotonic()))

        try:
            result = self._in_time(f"reconcile network {network_id}",
                                   reconcile)
        except exceptions.VCenterError as exc:
            LOG.warning("network %s: %s; the maintenance worker will finish "
                        "the work", network_id, exc)
            return
        except Exception:  # noqa: BLE001 - a bug must not fail the API call
            LOG.exception("network %s: unexpected error; the maintenance "
                          "worker will retry", network_id)
            return
        outcome = result.outcome
        problems = [c.reason for c in outcome.conflicts] + \
            [str(exc) for _, exc in outcome.failed
             if not isinstance(exc, exceptions.TransientFault)]
        if problems and refuse:
            raise exceptions.PortGroupConflict(
                reason=f"vCenter cannot hold network {network_id}: "
                       + "; ".join(problems))

    # -- ports ----------------------------------------------------------------
    #
    # A port's DV port follows the port (bound, updated, unbound, deleted)
    # and everything its policy depends on (security groups and rules,
    # address groups, QoS policies, the members of remote groups).  The API
    # call never waits for it: the ports are synced by a hook thread right
    # after, under the API deadline, and the maintenance worker's Neutron
    # poll catches whatever that could not do.

    def create_port_postcommit(self, context: api.PortContext) -> None:
        port = context.current
        if port.get(portbindings.HOST_ID) in self.settings.compute_hosts \
                and port.get(portbindings.VIF_TYPE) == \
                portbindings.VIF_TYPE_UNBOUND:
            # ML2 binds it next and calls update_port_postcommit with the
            # binding (bound or failed): that one syncs it and the ports
            # naming its groups.  Now its address would be written into
            # their filters (the shared one: a port group write) before its
            # own MAC is: two writes for one VM joining.
            LOG.debug("port %s: synced once its binding is committed",
                      port["id"])
            with self._lock:
                self._created[port["id"]] = None
                while len(self._created) > CREATED_KEPT:
                    self._created.popitem(last=False)
            return
        self._port_changed(port, None)

    def update_port_postcommit(self, context: api.PortContext) -> None:
        port = context.current
        joined = False
        if port.get(portbindings.VIF_TYPE) != portbindings.VIF_TYPE_UNBOUND:
            with self._lock:
                # Its creation's sync was left to this, its binding.
                joined = port["id"] in self._created
                self._created.pop(port["id"], None)
        self._port_changed(port, context.original, joined)

    def delete_port_postcommit(self, context: api.PortContext) -> None:
        with self._lock:
            self._created.pop(context.current["id"], None)
        self._port_changed(None, context.current)

    def _port_changed(self, port: dict | None, before: dict | None,
                      joined: bool = False) -> None:
        """``joined``: the port is new to the ports naming its groups as
        remote group (its creation's sync was left to its binding)."""
        hosts = self.settings.compute_hosts
        ids: set[str] = set()
        groups: set[str] = set()
        std_nets: set[str] = set()
        network_of: dict[str, str] = {}
        for p in (port, before):
            if p is None:
                continue
            if p.get(portbindings.HOST_ID) in hosts:
                ids.add(p["id"])
                network_of[p["id"]] = p["network_id"]
                if self.settings.shared_security_filter and port is None:
                    # Its port group's shared filter follows its ports: a
                    # port deleted is no longer read with them, so its
                    # network is named (the others' come with their ports).
                    std_nets.add(p["network_id"])
                if p.get(portbindings.VIF_TYPE) == VIF_TYPE_DVS and \
                        "dvs_id" not in (p.get(portbindings.VIF_DETAILS)
                                         or {}):
                    # On a standard vSwitch: its port group's security
                    # follows its ports.
                    std_nets.add(p["network_id"])
            groups.update(p.get("security_groups") or ())
        if (joined or _membership(port) != _membership(before)) and groups:
            # Its addresses are in the rules of ports that name one of its
            # groups as remote group.
            ids_of = functools.partial(neutron_db.ports_referencing,
                                       security_group_ids=groups)
            self._sync_ports_soon(ids, ids_of, std_nets, network_of)
        elif ids:
            self._sync_ports_soon(ids, networks=std_nets,
                                  network_of=network_of)

    def _subscribe(self) -> None:
        """Security group, rule and address group changes: the ports whose
        DV port they change, found in the hook thread (QoS policies tell
        their driver, :mod:`networking_vcenter.qos`, instead)."""
        from neutron_lib.callbacks import events
        from neutron_lib.callbacks import registry
        from neutron_lib.callbacks import resources
        for resource, event, query in (
                (resources.SECURITY_GROUP_RULE, events.AFTER_CREATE,
                 lambda p: {"security_group_ids": [
                     p.latest_state["security_group_id"]]}),
                (resources.SECURITY_GROUP_RULE, events.AFTER_DELETE,
                 lambda p: {"security_group_ids": [
                     p.metadata["security_group_id"]]}),
                (resources.SECURITY_GROUP, events.AFTER_UPDATE,
                 lambda p: {"security_group_ids": [p.resource_id]}),
                (resources.ADDRESS_GROUP, events.AFTER_UPDATE,
                 lambda p: {"address_group_ids": [p.resource_id]})):
            registry.subscribe(functools.partial(self._on_policy, query),
                               resource, event)
        # Deleting a group deletes the rules of other groups that name it
        # as remote group, with no rule event: find their ports before.
        registry.subscribe(self._before_sg_delete, resources.SECURITY_GROUP,
                           events.BEFORE_DELETE)
        registry.subscribe(self._after_sg_delete, resources.SECURITY_GROUP,
                           events.AFTER_DELETE)
        registry.subscribe(self._on_segment_create, resources.SEGMENT,
                           events.PRECOMMIT_CREATE)

    def _on_segment_create(self, resource, event, trigger, payload=None):
        """A new VLAN/flat segment is mapped to the compute hosts it
        reaches in the same transaction, from memory (the heartbeat keeps
        the mappings right afterwards)."""
        from neutron.services.segments import db as segments_db
        segment = payload.latest_state
        as_dict = {"network_type": segment.network_type,
                   "physical_network": segment.physical_network}
        if not desired_mod.is_mapped(as_dict, self.settings.switch_mappings):
            return
        try:
            hosts = self.filter_hosts_with_segment_access(
                payload.context, [as_dict],
                set(self.settings.compute_hosts), None)
        except Exception:  # noqa: BLE001 - never fail the network create
            LOG.exception("segment %s: compute hosts not mapped now; the "
                          "maintenance worker will map them", segment.id)
            return
        if hosts:
            segments_db.map_segment_to_hosts(payload.context, segment.id,
                                             sorted(hosts))

    def _before_sg_delete(self, resource, event, trigger, payload=None):
        try:
            ids = neutron_db.ports_referencing(
                security_group_ids=[payload.resource_id])
        except Exception:  # noqa: BLE001 - never fail the API call
            LOG.exception("vcenter: ports referring to security group %s "
                          "not found; the maintenance worker will find them",
                          getattr(payload, "resource_id", "?"))
            return
        if ids:
            with self._lock:
                self._sg_deleting[payload.resource_id] = ids

    def _after_sg_delete(self, resource, event, trigger, payload=None):
        with self._lock:
            ids = self._sg_deleting.pop(getattr(payload, "resource_id", None),
                                        None)
        if ids:
            self._sync_ports_soon(set(ids), network_of=ids)

    def _on_policy(self, query, resource, event, trigger, payload=None):
        try:
            which = query(payload)
        except (AttributeError, KeyError, TypeError):
            LOG.warning("vcenter: %s %s without the id it needs; the "
                        "maintenance worker will find its ports", resource,
                        event)
            return
        self._sync_ports_soon(set(), functools.partial(
            neutron_db.ports_referencing, **which))

    def _on_qos_policy(self, context, policy_id: str) -> None:
        self._sync_ports_soon(set(), functools.partial(
            neutron_db.ports_referencing, qos_policy_ids=[policy_id]))

    def _sync_ports_soon(self, ids: set[str], ids_of=None,
                         networks: set[str] = frozenset(),
                         network_of: Mapping[str, str] | None = None
                         ) -> None:
        """Sync these ports (and those ``ids_of()`` answers, a mapping of
        port ids to their networks, and the standard port groups of
        ``networks``) in a hook thread, coalescing what arrives meanwhile;
        never waits.  ``network_of``: the networks of ports, where known
        (see ``Reconciler.sync_ports``)."""
        with self._lock:
            self._soon.append((ids, ids_of, networks, network_of or {},
                               o_context.get_current()))
            if self._draining:
                return
            self._draining = True
        self._kick()

    def _kick(self) -> None:
        # Started a moment later, once the API request that called the hook
        # has finished with the database (on sqlite a read overlapping its
        # last writes can make them time out).
        timer = threading.Timer(DRAIN_DELAY, self._hooks.submit,
                                (self._drain_ports,))
        timer.daemon = True
        timer.start()

    def _drain_ports(self) -> None:
        while True:
            with self._lock:
                todo, self._soon = self._soon, []
                if not todo:
                    self._draining = False
                    return
            # The lines of this sync carry the request id of the first API
            # call it serves; the others are named once.
            requests = [r for *_, r in todo if r is not None]
            with _request(requests[0] if requests else None):
                if len(requests) > 1:
                    LOG.debug("ports also synced for requests %s",
                              ", ".join(r.request_id for r in requests[1:]))
                self._drain(todo)

    def _drain(self, todo: list) -> None:
        ids: set[str] = set()
        nets: set[str] = set()
        network_of: dict[str, str] = {}
        try:
            for some, ids_of, networks, known, _ in todo:
                ids |= some
                nets |= networks
                network_of.update(known)
                if ids_of is not None:
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
        except Exception:  # noqa: BLE001 - keep draining
            LOG.exception("ports %s: unexpected error; the maintenance "
                          "worker will retry", sorted(ids))

    def _set_port_status(self, statuses: dict[str, str]) -> None:
        """Neutron shows a port ACTIVE while a VM NIC is connected to its
        DV port, DOWN otherwise."""
        plugin = directory.get_plugin()
        ctx = n_context.get_admin_context()
        for port_id, status in sorted(statuses.items()):
            try:
                plugin.update_port_status(ctx, port_id, status)
            except Exception as exc:  # noqa: BLE001 - the port may be gone
                LOG.debug("port %s: status not set to %s: %s", port_id,
                          status, exc)
            else:
                LOG.info("port %s is %s: a VM NIC is %s its DV port",
                         port_id, status, "connected to" if status ==
                         n_const.PORT_STATUS_ACTIVE else "not on")

    def check_vlan_transparency(self, context: api.NetworkContext
                                ) -> bool | None:
        """Per segment: a flat segment on a mapped physical network can be
        transparent (a trunk port group); a mapped VLAN segment cannot (no
        QinQ), and is refused here with the reason -- ML2 calls this before
        any driver's precommit, and its own error for a False says only
        "Backend does not support VLAN Transparency".  No mapped segment:
        no opinion, other drivers decide."""
        mappings = self.settings.switch_mappings
        segments = list(context.network_segments or [])
        if not any(desired_mod.is_mapped(s, mappings) for s in segments):
            return None
        problems = desired_mod.transparency_problems(segments, mappings)
        if problems:
            raise exceptions.VlanTransparencyRefused(
                network=context.current["id"], reason="; ".join(problems))
        return True

    def check_vlan_qinq(self, context: api.NetworkContext) -> bool | None:
        """A QinQ network (outer tag 0x88a8) on a mapped physical network is
        refused with the reason: vSphere switches tag 802.1Q only.  No
        mapped segment: no opinion."""
        mapped = [s for s in context.network_segments or []
                  if desired_mod.is_mapped(s, self.settings.switch_mappings)]
        if not mapped:
            return None
        raise exceptions.VlanQinqRefused(
            network=context.current["id"], reason="; ".join(
                f"its {s.get('network_type')} segment on physical network "
                f"{s.get('physical_network')} is mapped to "
                f"{self.settings.switch_mappings[s.get('physical_network')]}"
                for s in mapped) + ": a vSphere switch tags 802.1Q only "
            "(no 802.1ad outer tag); use a VLAN network, or a flat "
            "VLAN-transparent one for guests that tag")

    # -- trunks (networking_vcenter.trunk's backend) -------------------------

    def is_compute_host(self, host: str) -> bool:
        return host in self.settings.compute_hosts

    def switch_kinds(self, segments: list[dict[str, Any]],
                     host: str | None) -> dict[str, str | None]:
        """Physical network -> ``dvs`` / ``vswitch`` (None: not known, no
        replica yet) of each mapped VLAN/flat segment of ``segments`` (that
        reaches ``host``'s cluster, when given).  From memory."""
        topology = self._topology_in_memory()
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

    def trunk_changed(self, port_ids: set[str]) -> None:
        self._sync_ports_soon(set(port_ids))

    def _set_trunk_status(self, statuses: dict[str, str]) -> None:
        """Through the trunk plugin, as it sets DOWN itself."""
        plugin = directory.get_plugin("trunk")
        if plugin is None:
            return
        ctx = n_context.get_admin_context()
        for trunk_id, status in sorted(statuses.items()):
            try:
                plugin.update_trunk(ctx, trunk_id,
                                    {"trunk": {"status": status}})
            except Exception as exc:  # noqa: BLE001 - the trunk may be gone
                LOG.debug("trunk %s: status not set to %s: %s", trunk_id,
                          status, exc)
            else:
                LOG.info("trunk %s is %s", trunk_id, status)

    # -- host filtering (ML2's and the DHCP scheduler's) ------------------------

    def filter_hosts_with_segment_access(self, context, segments,
                                         candidate_hosts, agent_getter):
        """The compute hosts whose cluster a mapped VLAN/flat segment
        reaches.  From memory; with no replica yet, the mapping alone."""
        topology = self._topology_in_memory()
        hosts = set()
        for host in candidate_hosts:
            cluster = self.settings.compute_hosts.get(host)
            if cluster is None:
                continue
            if any(self._reaches(seg, cluster, topology) for seg in segments):
                hosts.add(host)
        return hosts

    def _topology_in_memory(self) -> desired_mod.Topology | None:
        """The topology as the replica shows it; None before it is read."""
        rec = self._here()
        if rec.replica is None or not rec.replica.synced:
            return None
        try:
            return rec.topology(rec.inventory())
        except exceptions.VCenterError:
            return None

    def _reaches(self, segment, cluster: str, topology) -> bool:
        if topology is None:
            return desired_mod.is_mapped(segment,
                                         self.settings.switch_mappings)
        return topology.target_reaching(segment, cluster) is not None

    # -- port binding ----------------------------------------------------------

    def bind_port(self, context: api.PortContext) -> None:
        host = context.host
        cluster = self.settings.compute_hosts.get(host)
        if cluster is None:
            return  # not a vSphere compute host: left to the other drivers
        vnic = context.current.get(portbindings.VNIC_TYPE,
                                   portbindings.VNIC_NORMAL)
        if vnic != portbindings.VNIC_NORMAL:
            LOG.debug("port %s: vnic_type %s is not bound by vcenter",
                      context.current["id"], vnic)
            return
        if context.current.get("device_owner") == \
                trunk_consts.TRUNK_SUBPORT_OWNER:
            self._bind_subport(context)
            return
        port_id = context.current["id"]
        net_id = context.network.current["id"]
        segments = list(context.segments_to_bind)
        deadline = self._bind_deadline(port_id)
        writes = self._needs_vcenter(segments, cluster)
        if deadline <= time.monotonic() and writes:
            # ML2 retrying a binding whose time is spent: a DV port is
            # handed to Nova only once vCenter has said it is this port's
            # (one write); say so at once rather than read Neutron for each
            # of the ten tries.
            LOG.debug("port %s: no time left to reserve its DV port",
                      port_id)
            return
        # Neutron is read here, in the API's thread (the hook thread is for
        # vCenter, under the deadline).
        port_spec = next((p for p in neutron_db.ports({port_id})
                          if p.id == port_id), None)
        if port_spec is None:
            LOG.error("port %s on %s: cannot bind: not found in Neutron's "
                      "database", port_id, host)
            return

        def find(rec: Reconciler, deadline: float):
            topology = rec.topology(rec.inventory(
                max(0.0, deadline - time.monotonic())))
            segment = self._pick_segment(segments, cluster, topology)
            if segment is None:
                return None
            pg, found = rec.port_group_for(
                net_id, segment[api.PHYSICAL_NETWORK], self.source, deadline,
                fix=self._unreachable(rec) is None and
                deadline > time.monotonic())
            spec = dataclasses.replace(
                port_spec, host=host, physnet=segment[api.PHYSICAL_NETWORK])
            if pg.kind != desired_mod.DVS:
                self._check_vswitch_port(spec)
                return segment, topology, pg, found, None
            return segment, topology, pg, found, rec.port_for(
                spec, self.source, deadline)

        try:
            # A bind on a standard vSwitch can answer from the replica; one
            # on a distributed switch writes its reservation, so while
            # vCenter is known unreachable it fails at once, the reason
            # logged, instead of waiting out the deadline.
            picked = self._in_time(f"bind port {port_id}", find,
                                   from_memory=not writes, deadline=deadline)
        except exceptions.VCenterError as exc:
            LOG.error("port %s on %s: cannot bind on network %s: %s",
                      port_id, host, net_id, exc)
            return
        if picked is None:
            LOG.debug("port %s on %s: no VLAN/flat segment mapped to a switch "
                      "of cluster %s", port_id, host, cluster)
            return
        segment, topology, pg, found, dv_port = picked
        status = n_const.PORT_STATUS_ACTIVE
        details: dict[str, Any] = {
            "dvs_port_group_name": pg.name,
            "segmentation_id": pg.vlan,
            portbindings.VIF_DETAILS_CONNECTIVITY: portbindings.CONNECTIVITY_L2,
        }
        if pg.kind == desired_mod.DVS:
            details["dvs_id"] = topology.targets[pg.physnet].dvs_uuid
            details["pg_id"] = found.key
            # Nova pins the NIC to this port, whose policy is already set.
            details["dvs_port_key"] = dv_port.key
            status = n_const.PORT_STATUS_ACTIVE if dv_port.connected \
                else n_const.PORT_STATUS_DOWN
        context.set_binding(segment[api.ID], VIF_TYPE_DVS, details,
                            status=status)
        LOG.info("port %s bound on %s to %s %s (%s)%s", port_id, host,
                 pg.switch, pg.name, found.moid,
                 f", DV port {dv_port.key}" if dv_port else "")

    def _bind_subport(self, context: api.PortContext) -> None:
        """A trunk's subport: no DV port of its own (its parent's carries
        its VLAN), bound when its parent is bound here, to its network's
        VLAN segment on the parent's physical network; its status is the
        parent's."""
        port_id = context.current["id"]
        specs = {p.id: p for p in neutron_db.ports({port_id})}
        spec = specs.get(port_id)
        parent = specs.get(spec.trunk_parent) if spec and \
            spec.trunk_parent else None
        if parent is None or not parent.physnet or \
                parent.host != context.host:
            LOG.debug("subport %s on %s: not bound here: its trunk parent "
                      "is not bound here on that host", port_id,
                      context.host)
            return
        for seg in context.segments_to_bind:
            if seg.get(api.NETWORK_TYPE) == "vlan" and \
                    seg.get(api.PHYSICAL_NETWORK) == parent.physnet:
                context.set_binding(
                    seg[api.ID], VIF_TYPE_DVS,
                    {"segmentation_id": seg[api.SEGMENTATION_ID],
                     "trunk_parent": parent.id,
                     portbindings.VIF_DETAILS_CONNECTIVITY:
                         portbindings.CONNECTIVITY_L2},
                    status=parent.status or n_const.PORT_STATUS_DOWN)
                LOG.info("subport %s bound on %s: VLAN %s of its trunk "
                         "parent %s's DV port", port_id, context.host,
                         seg[api.SEGMENTATION_ID], parent.id)
                return
        LOG.error("subport %s on %s: cannot bind: its network %s has no "
                  "VLAN segment on physical network %s (its trunk parent "
                  "%s's)", port_id, context.host,
                  context.network.current["id"], parent.physnet, parent.id)

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

    def _needs_vcenter(self, segments: list[dict[str, Any]],
                       cluster: str) -> bool:
        """Whether binding this port must write to vCenter: it would go to
        a distributed switch (as the replica shows it), where every bind
        writes its reservation."""
        rec = self._here()
        if rec.replica is None or not rec.replica.synced:
            return True
        try:
            topology = rec.topology(rec.replica.snapshot())
        except exceptions.VCenterError:
            return True
        segment = self._pick_segment(segments, cluster, topology)
        if segment is None:
            return False
        target = topology.targets[segment[api.PHYSICAL_NETWORK]]
        return target.kind == desired_mod.DVS

    def _bind_deadline(self, port_id: str) -> float:
        """The deadline of a port's binding, shared by ML2's retries: ML2
        tries a failed binding up to ten times in a row, and together they
        must not take longer than one ``api_call_budget``.  A binding asked
        for again later gets a deadline of its own."""
        now = time.monotonic()
        budget = self.settings.api_call_budget
        with self._lock:
            for port, at in list(self._binds.items()):
                if at + budget < now:
                    del self._binds[port]
            return self._binds.setdefault(port_id, now + budget)

    @staticmethod
    def _pick_segment(segments: list[dict[str, Any]], cluster: str,
                      topology: desired_mod.Topology
                      ) -> dict[str, Any] | None:
        """A segment whose switch reaches the cluster; distributed first.

        When a network reaches a host both through a distributed and a
        standard port group, the distributed one wins: Nova attaches it by
        switch UUID and key, without the name search that could confuse the
        two.
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

    # -- full pass (tests, tools) -------------------------------------------------

    def resync(self, grace: float | None = None) -> Pass | None:
        """One full pass over every Neutron network now; None if one is
        running elsewhere.  Port groups of deleted networks are removed."""
        return self._here().sync_all(
            self.source, self.settings.resync_grace_period
            if grace is None else grace, port_source=self.port_source)


@contextlib.contextmanager
def _request(request: o_context.RequestContext | None) -> Iterator[None]:
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

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

"""The ``vcenter`` ML2 mechanism driver: translate, route, bind.

This module speaks ML2 and nothing else: it reaches into no session or
replica.  A network change becomes "reconcile network N" for each vCenter
backend (:class:`~networking_vcenter.backend.VCenterBackend`) that manages
it, which reads N afresh from Neutron and vCenter from its live replica; a
port change names the ports it touches and the backends sync them soon
(:mod:`~networking_vcenter.ml2.callbacks`, which also hears the security
group, rule, address group, QoS and segment changes ML2 does not carry);
``bind_port`` answers for the nova-compute hosts of ``compute_hosts`` with
``vif_type = dvs``, through the backend of the host.  What the API user
sees:

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

import collections
import concurrent.futures
import threading
import time
from typing import Any

from neutron_lib import constants as n_const
from neutron_lib.api.definitions import portbindings
from neutron_lib.plugins.ml2 import api
from neutron_lib.services.trunk import constants as trunk_consts
from oslo_config import cfg
from oslo_context import context as o_context
from oslo_log import log as logging

from networking_vcenter import backend as backend_mod
from networking_vcenter import conf
from networking_vcenter.constants import VIF_TYPE_DVS
from networking_vcenter import exceptions
from networking_vcenter.ml2 import callbacks
from networking_vcenter import neutron_db
from networking_vcenter import qos
from networking_vcenter import trunk as trunk_mod
from networking_vcenter.reconcile import desired as desired_mod
from networking_vcenter.reconcile import mtu as mtu_mod
from networking_vcenter.reconcile import worker as worker_mod
from networking_vcenter.reconcile.reconciler import Pass

LOG = logging.getLogger(__name__)


# Ports created whose sync waits for their binding, remembered at most.
CREATED_KEPT = 4096


class VCenterMechanismDriver(api.MechanismDriver):
    """Neutron VLAN/flat networks as vSphere port groups."""

    @property
    def connectivity(self) -> str:
        # Pure layer 2: a port may be bound before (or without) an IP address.
        return portbindings.CONNECTIVITY_L2

    def initialize(self) -> None:
        try:
            vcenters = conf.load_all(cfg.CONF)
        except exceptions.ConfigError as exc:
            LOG.critical("vcenter mechanism driver cannot start: %s", exc)
            raise
        # The deployment's options are the same in every vCenter's.
        self.settings = vcenters[0]
        self.backends = [backend_mod.VCenterBackend(s) for s in vcenters]
        self.backend = self.backends[0]
        # Every physical network mapped in some vCenter.
        self.mappings = {physnet: switch for s in reversed(vcenters)
                         for physnet, switch in s.switch_mappings.items()}
        self._lock = threading.Lock()
        self._binds: dict[str, float] = {}   # port id -> binding deadline
        # Ports created on our hosts whose sync waits for their binding.
        self._created: collections.OrderedDict[str, None] = \
            collections.OrderedDict()
        self._start_backends()
        self._events = callbacks.NeutronEvents(
            self.backends, self.settings, self.mappings,
            self.filter_hosts_with_segment_access)
        qos.register(self._events.qos_policy_changed)
        trunk_mod.register(self)
        self._events.subscribe()

    def _start_backends(self) -> None:
        """Every vCenter at once: each waits for its own no longer than one
        API call would, so one black-holed does not delay the others.  A
        vCenter that cannot be used (configuration) stops all (a backend
        closes once: those that failed have closed already)."""
        try:
            self._each(self.backends, lambda b: b.start(background=False))
        except Exception:
            for b in self.backends:
                b.close()
            raise

    # -- routing -------------------------------------------------------------

    def _backend_of(self, host: str | None
                    ) -> backend_mod.VCenterBackend | None:
        """The vCenter of a nova-compute host, if one of ours."""
        return next((b for b in self.backends if b.serves(host)), None)

    def _managing(self, network_id: str, segments: list[dict]
                  ) -> list[backend_mod.VCenterBackend]:
        """The vCenters where a network may have a port group."""
        return [b for b in self.backends if b.manages(network_id, segments)]

    @staticmethod
    def _each(backends: list[backend_mod.VCenterBackend], fn) -> list:
        """``fn(backend)`` of each, at the same time where there are
        several: each keeps its own deadline, and one vCenter black-holed
        costs the call no more than it would alone."""
        if len(backends) <= 1:
            return [fn(b) for b in backends]
        request = o_context.get_current()

        def run(b):
            with backend_mod.request_of(request):
                return fn(b)

        with concurrent.futures.ThreadPoolExecutor(len(backends)) as pool:
            return list(pool.map(run, backends))

    # -- the maintenance worker ----------------------------------------------

    def get_workers(self):
        """One maintenance worker per vCenter."""
        return [worker_mod.MaintenanceWorker(b.start_maintenance, b.close)
                for b in self.backends]

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
                seg, self.mappings) for seg in segments):
            return
        small = [s for b in self.backends for s in b.mtu_too_small(
            context.current["id"], mtu, segments) or ()]
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
            self._events.referencing_changed(
                network_ids=[context.current["id"]])

    def delete_network_postcommit(self, context: api.NetworkContext) -> None:
        self._sync(context, refuse=False)

    def _sync(self, context: api.NetworkContext, refuse: bool) -> None:
        """Reconcile; refuse the API call only on a permanent no at create."""
        network_id = context.current["id"]
        segments = list(context.network_segments or [])
        original = getattr(context, "original", None) or {}
        segments += [{"network_type": original.get("provider:network_type"),
                      "physical_network":
                          original.get("provider:physical_network")}]
        problems = [p for found in self._each(
            self._managing(network_id, segments),
            lambda b: b.network_changed(network_id)) for p in found]
        if problems and refuse:
            raise exceptions.PortGroupConflict(
                reason=f"vCenter cannot hold network {network_id}: "
                       + "; ".join(problems))

    # -- ports ---------------------------------------------------------------
    #
    # A port's DV port follows the port and everything its policy depends
    # on: each change names the ports it touches, and the backends sync them
    # soon (the API call never waits for it).  Which ports a change touches:
    # :mod:`networking_vcenter.ml2.callbacks`, which also hears the security
    # group, rule, address group and QoS policy changes ML2 does not carry.

    def create_port_postcommit(self, context: api.PortContext) -> None:
        port = context.current
        if self._backend_of(port.get(portbindings.HOST_ID)) is not None \
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
        self._events.port_changed(port, None)

    def update_port_postcommit(self, context: api.PortContext) -> None:
        port = context.current
        joined = False
        if port.get(portbindings.VIF_TYPE) != portbindings.VIF_TYPE_UNBOUND:
            with self._lock:
                # Its creation's sync was left to this, its binding.
                joined = port["id"] in self._created
                self._created.pop(port["id"], None)
        self._events.port_changed(port, context.original, joined)

    def delete_port_postcommit(self, context: api.PortContext) -> None:
        with self._lock:
            self._created.pop(context.current["id"], None)
        self._events.port_changed(None, context.current)

    def check_vlan_transparency(self, context: api.NetworkContext
                                ) -> bool | None:
        """Per segment: a flat segment on a mapped physical network can be
        transparent (a trunk port group); a mapped VLAN segment cannot (no
        QinQ), and is refused here with the reason -- ML2 calls this before
        any driver's precommit, and its own error for a False says only
        "Backend does not support VLAN Transparency".  No mapped segment:
        no opinion, other drivers decide."""
        mappings = self.mappings
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
                  if desired_mod.is_mapped(s, self.mappings)]
        if not mapped:
            return None
        raise exceptions.VlanQinqRefused(
            network=context.current["id"], reason="; ".join(
                f"its {s.get('network_type')} segment on physical network "
                f"{s.get('physical_network')} is mapped to "
                f"{self.mappings[s.get('physical_network')]}"
                for s in mapped) + ": a vSphere switch tags 802.1Q only "
            "(no 802.1ad outer tag); use a VLAN network, or a flat "
            "VLAN-transparent one for guests that tag")

    # -- trunks (networking_vcenter.trunk's backend) -------------------------

    def is_compute_host(self, host: str) -> bool:
        return self._backend_of(host) is not None

    def switch_kinds(self, segments: list[dict[str, Any]],
                     host: str | None) -> dict[str, str | None]:
        """Physical network -> ``dvs`` / ``vswitch`` (None: not known yet)
        of each mapped VLAN/flat segment of ``segments`` (that reaches
        ``host``'s cluster, when given).  From memory."""
        backends = [self._backend_of(host)] if host else self.backends
        kinds: dict[str, str | None] = {}
        for b in backends:
            if b is not None:
                kinds.update(b.switch_kinds(segments, host))
        return kinds

    def trunk_changed(self, port_ids: set[str]) -> None:
        self._events.ports_changed(set(port_ids))

    # -- host filtering (ML2's and the DHCP scheduler's) ---------------------

    def filter_hosts_with_segment_access(self, context, segments,
                                         candidate_hosts, agent_getter):
        """The compute hosts whose cluster a mapped VLAN/flat segment
        reaches.  From memory; with no replica yet, the mapping alone."""
        hosts = set()
        for b in self.backends:
            topology = b.topology()
            hosts.update(host for host in candidate_hosts
                         if any(b.reaches(seg, host, topology)
                                for seg in segments))
        return hosts

    # -- port binding --------------------------------------------------------

    def bind_port(self, context: api.PortContext) -> None:
        host = context.host
        backend = self._backend_of(host)
        if backend is None:
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
        writes = backend.binds_by_write(segments, host)
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
        try:
            binding = backend.ensure_binding(port_spec, segments, net_id,
                                             host, deadline, writes)
        except exceptions.VCenterError as exc:
            LOG.error("port %s on %s: cannot bind on network %s: %s",
                      port_id, host, net_id, exc)
            return
        if binding is None:
            LOG.debug("port %s on %s: no VLAN/flat segment mapped to a switch "
                      "of cluster %s", port_id, host,
                      backend.settings.compute_hosts.get(host))
            return
        context.set_binding(binding.segment[api.ID], VIF_TYPE_DVS,
                            binding.vif_details, status=binding.status)
        LOG.info("port %s bound on %s to %s", port_id, host, binding.where)

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

    # -- full pass (tests, tools) --------------------------------------------

    def resync(self, grace: float | None = None) -> Pass | None:
        """One full pass over every Neutron network now in the first
        vCenter (see each backend's for the others); None if one is running
        elsewhere.  Port groups of deleted networks are removed."""
        return self.backend.resync(grace)

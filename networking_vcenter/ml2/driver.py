"""The ``vcenter`` ML2 mechanism driver: translate, trigger, bind.

This module speaks ML2 and nothing else.  Network changes become "reconcile this
network" requests to :class:`~networking_vcenter.reconcile.reconciler.Reconciler`;
``bind_port`` answers for the nova-compute hosts of ``compute_hosts`` with
``vif_type = dvs``.  What the API user sees:

* a network whose port group vCenter *refuses* (a name taken by a port group we
  did not create, a name too long) is refused with 409 and a message naming both
  sides; ML2 then deletes the network, so Neutron and vCenter stay consistent;
* when vCenter is merely *unavailable* the API call succeeds and the periodic
  resync creates (or deletes) the port groups once vCenter is back;
* binding a port whose port group cannot be made leaves the port unbound
  (``binding_failed``) with the reason in the log -- the one case that fails.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from neutron_lib import constants as n_const
from neutron_lib import context as n_context
from neutron_lib.api.definitions import portbindings
from neutron_lib.plugins import directory
from neutron_lib.plugins.ml2 import api
from oslo_config import cfg

from networking_vcenter import conf
from networking_vcenter import exceptions
from networking_vcenter.reconcile import desired as desired_mod
from networking_vcenter.reconcile.reconciler import Reconciler

LOG = logging.getLogger(__name__)

VIF_TYPE_DVS = "dvs"


class VCenterMechanismDriver(api.MechanismDriver):
    """Neutron VLAN/flat networks as vSphere port groups."""

    @property
    def connectivity(self) -> str:
        # Pure layer 2: a port may be bound before (or without) an IP address.
        return portbindings.CONNECTIVITY_L2

    def initialize(self) -> None:
        try:
            self.settings = conf.load(cfg.CONF)
            self.reconciler = Reconciler(self.settings)
            self.topology = self.reconciler.validate()
        except exceptions.VCenterError as exc:
            LOG.critical("vcenter mechanism driver cannot start: %s", exc)
            raise
        LOG.info("vcenter driver ready: %s", ", ".join(
            f"{t.physnet} -> {t.kind} {t.switch}"
            for t in self.topology.targets.values()))
        self._stop = threading.Event()
        self._resync_thread = None
        if self.settings.resync_interval:
            self._resync_thread = threading.Thread(
                target=self._resync_loop, name="vcenter-resync", daemon=True)
            self._resync_thread.start()

    # -- networks ------------------------------------------------------------

    def create_network_postcommit(self, context: api.NetworkContext) -> None:
        self._sync(desired_mod.network_from_neutron(
            context.current, context.network_segments), refuse=True)

    def update_network_postcommit(self, context: api.NetworkContext) -> None:
        # Also called for segments added or removed through the segments
        # service plugin.  ML2 cannot roll an update back, so a refusal would
        # only mislead: problems are logged and retried by the resync.
        self._sync(desired_mod.network_from_neutron(
            context.current, context.network_segments), refuse=False)

    def delete_network_postcommit(self, context: api.NetworkContext) -> None:
        # No segments: every port group of the network becomes an orphan.
        self._sync(desired_mod.NetworkSpec(context.current["id"], ()),
                   refuse=False)

    def _sync(self, net: desired_mod.NetworkSpec, refuse: bool):
        """Reconcile one network; refuse the API call only on a permanent no."""
        try:
            with self.reconciler.session.budget(self.settings.api_call_budget):
                result = self.reconciler.sync(
                    [net], wait=self.settings.api_call_budget)
        except exceptions.TransientFault as exc:
            LOG.warning("network %s: vCenter unavailable (%s); the periodic "
                        "resync will finish the work", net.id, exc)
            return None
        except exceptions.VCenterError as exc:
            LOG.error("network %s: %s; the periodic resync will retry",
                      net.id, exc)
            return None
        outcome = result.outcome
        problems = [c.reason for c in outcome.conflicts] + \
            [str(exc) for _, exc in outcome.failed
             if not isinstance(exc, exceptions.TransientFault)]
        if problems and refuse:
            raise exceptions.PortGroupConflict(
                reason=f"vCenter cannot hold network {net.id}: "
                       + "; ".join(problems))
        self.topology = result.topology
        return result

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
        segment = self._pick_segment(context.segments_to_bind, cluster)
        if segment is None:
            LOG.debug("port %s on %s: no VLAN/flat segment mapped to a switch "
                      "of cluster %s", context.current["id"], host, cluster)
            return
        network = context.network
        net = desired_mod.network_from_neutron(network.current,
                                               network.network_segments)
        try:
            with self.reconciler.session.budget(self.settings.api_call_budget):
                result = self.reconciler.sync(
                    [net], wait=self.settings.api_call_budget)
            self.topology = result.topology
            pg = next(d for d in result.desired
                      if d.segment_id == segment[api.ID])
            failed = [str(exc) for s, exc in result.outcome.failed
                      if s.name == pg.name]
            conflicts = [c.reason for c in result.outcome.conflicts
                         if c.name == pg.name]
            if failed or conflicts:
                raise exceptions.VSphereFault(
                    f"port group {pg.name}", "; ".join(failed + conflicts))
            created = any(s.name == pg.name for s in result.outcome.done)
            found = self.reconciler.find_port_group(
                pg, None if created else result.inventory)
        except (exceptions.VCenterError, StopIteration) as exc:
            LOG.error("port %s on %s: cannot bind: the port group of network "
                      "%s is not available: %s", context.current["id"], host,
                      net.id, exc)
            return
        details: dict[str, Any] = {
            "dvs_port_group_name": pg.name,
            "segmentation_id": pg.vlan,
            portbindings.VIF_DETAILS_CONNECTIVITY: portbindings.CONNECTIVITY_L2,
        }
        if pg.kind == desired_mod.DVS:
            target = self.topology.targets[pg.physnet]
            details["dvs_id"] = target.dvs_uuid
            details["pg_id"] = found.key
        context.set_binding(segment[api.ID], VIF_TYPE_DVS, details,
                            status=n_const.PORT_STATUS_ACTIVE)
        LOG.info("port %s bound on %s to %s %s (%s)", context.current["id"],
                 host, pg.switch, pg.name, found.moid)

    def _pick_segment(self, segments: list[dict[str, Any]],
                      cluster: str) -> dict[str, Any] | None:
        """A segment whose switch reaches the cluster; distributed first.

        When a network reaches a host both through a distributed and a
        standard port group, the distributed one wins: Nova attaches it by
        switch UUID and key, without the name search that could confuse the
        two.
        """
        hosts = self.topology.cluster_hosts.get(cluster, frozenset())
        best = None
        for seg in segments:
            if seg.get(api.NETWORK_TYPE) not in desired_mod.SUPPORTED_TYPES:
                continue
            target = self.topology.targets.get(
                seg.get(api.PHYSICAL_NETWORK) or "")
            if target is None or not (target.host_moids & hosts):
                continue
            if target.kind == desired_mod.DVS:
                return seg
            best = best or seg
        return best

    # -- full resync -------------------------------------------------------------

    def resync(self):
        """One full pass: every Neutron network, orphans deleted."""
        plugin = directory.get_plugin()
        nets = plugin.get_networks(n_context.get_admin_context())
        result = self.reconciler.sync(
            [desired_mod.network_from_neutron(n) for n in nets], full=True)
        self.topology = result.topology
        return result

    def _resync_loop(self) -> None:
        while not self._stop.wait(self.settings.resync_interval):
            if directory.get_plugin() is None:
                continue
            try:
                outcome = self.resync().outcome
                LOG.info("vcenter resync: %d fixed, %d failed, %d deferred, "
                         "%d conflicts", len(outcome.done),
                         len(outcome.failed), len(outcome.deferred),
                         len(outcome.conflicts))
            except Exception as exc:  # noqa: BLE001 - keep the loop alive
                LOG.error("vcenter resync failed: %s", exc)

    def stop(self) -> None:
        if getattr(self, "_stop", None):
            self._stop.set()


"""The ``vcenter`` ML2 mechanism driver: translate, trigger, bind.

This module speaks ML2 and nothing else.  A network change becomes "reconcile
network N" for :class:`~networking_vcenter.reconcile.reconciler.Reconciler`,
which reads N afresh from Neutron; ``bind_port`` answers for the nova-compute
hosts of ``compute_hosts`` with ``vif_type = dvs``.  What the API user sees:

* a network whose port group vCenter *refuses* (a name taken by a port group we
  did not create, a name too long) is refused at create with 409 and a message
  naming both sides; ML2 then deletes the network, so Neutron and vCenter stay
  consistent.  Updates are never refused: ML2 cannot roll them back;
* when vCenter is *unavailable* or slow, network create, update and delete
  succeed within ``api_call_budget`` seconds (at once while vCenter is known to
  be down) and the periodic resync does the port group work once vCenter is
  back;
* binding a port whose port group cannot be made leaves the port unbound
  (``binding_failed``), with the reason in the log: the one thing that fails.
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
from networking_vcenter.reconcile.reconciler import Pass, Reconciler

LOG = logging.getLogger(__name__)

VIF_TYPE_DVS = "dvs"
# Seconds after vCenter was found unreachable during which API hooks do not
# try it again (the resync does).
UNREACHABLE_HOLD_OFF = 30.0
# Seconds between start-up and the first full pass, so the plugin is ready.
FIRST_PASS_DELAY = 5.0


def neutron_networks(ids: set[str] | None) -> list[desired_mod.NetworkSpec]:
    """Networks (all, or those ids) read now through the core plugin."""
    plugin = directory.get_plugin()
    filters = {"id": sorted(ids)} if ids is not None else None
    nets = plugin.get_networks(n_context.get_admin_context(), filters=filters)
    return [desired_mod.network_from_neutron(n) for n in nets]


class VCenterMechanismDriver(api.MechanismDriver):
    """Neutron VLAN/flat networks as vSphere port groups."""

    @property
    def connectivity(self) -> str:
        # Pure layer 2: a port may be bound before (or without) an IP address.
        return portbindings.CONNECTIVITY_L2

    def initialize(self) -> None:
        self.topology: desired_mod.Topology | None = None
        try:
            self.settings = conf.load(cfg.CONF)
            self.reconciler = Reconciler.from_settings(self.settings)
            self.topology = self.reconciler.validate()
        except exceptions.ConnectionFailed as exc:
            if not self.settings.start_without_vcenter:
                LOG.critical("vcenter mechanism driver cannot start: %s "
                             "(set [ml2_vcenter] start_without_vcenter = true "
                             "to start anyway)", exc)
                raise
            LOG.warning("vcenter mechanism driver starts without vCenter: "
                        "%s. Networks are accepted and their port groups "
                        "made once vCenter answers; ports cannot be bound "
                        "until then.", exc)
        except exceptions.VCenterError as exc:
            LOG.critical("vcenter mechanism driver cannot start: %s", exc)
            raise
        if self.topology is not None:
            LOG.info("vcenter driver ready: %s; locks: %s", ", ".join(
                f"{t.physnet} -> {t.kind} {t.switch}"
                for t in self.topology.targets.values()),
                self.reconciler.locks.backend_url.split("@")[-1])
        self._stop = threading.Event()
        self._resync_thread = None
        if self.settings.resync_interval:
            self._resync_thread = threading.Thread(
                target=self._resync_loop, name="vcenter-resync", daemon=True)
            self._resync_thread.start()

    # -- networks ------------------------------------------------------------

    def create_network_postcommit(self, context: api.NetworkContext) -> None:
        self._sync(context.current["id"], refuse=True)

    def update_network_postcommit(self, context: api.NetworkContext) -> None:
        # Also called for segments added or removed through the segments
        # service plugin.
        self._sync(context.current["id"], refuse=False)

    def delete_network_postcommit(self, context: api.NetworkContext) -> None:
        self._sync(context.current["id"], refuse=False)

    def _reconcile(self, network_id: str) -> Pass:
        """Reconcile one network within the API time budget."""
        down = self.reconciler.session.unreachable_for()
        if down is not None and down < UNREACHABLE_HOLD_OFF:
            raise exceptions.TransientFault(
                f"reconcile network {network_id}",
                f"vCenter was unreachable {down:.0f}s ago")
        budget = self.settings.api_call_budget
        with self.reconciler.session.budget(budget):
            result = self.reconciler.sync_network(
                network_id, neutron_networks, wait=budget)
        self.topology = result.topology
        return result

    def _sync(self, network_id: str, refuse: bool) -> None:
        """Reconcile; refuse the API call only on a permanent no at create."""
        try:
            result = self._reconcile(network_id)
        except exceptions.TransientFault as exc:
            LOG.warning("network %s: vCenter unavailable (%s); the periodic "
                        "resync will finish the work", network_id, exc)
            return
        except exceptions.VCenterError as exc:
            LOG.error("network %s: %s; the periodic resync will retry",
                      network_id, exc)
            return
        except Exception:  # noqa: BLE001 - a bug must not fail the API call
            LOG.exception("network %s: unexpected error; the periodic resync "
                          "will retry", network_id)
            return
        outcome = result.outcome
        problems = [c.reason for c in outcome.conflicts] + \
            [str(exc) for _, exc in outcome.failed
             if not isinstance(exc, exceptions.TransientFault)]
        if problems and refuse:
            raise exceptions.PortGroupConflict(
                reason=f"vCenter cannot hold network {network_id}: "
                       + "; ".join(problems))

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
        if self.topology is None:
            try:
                with self.reconciler.session.budget(
                        self.settings.api_call_budget):
                    self.topology = self.reconciler.validate()
            except exceptions.VCenterError as exc:
                LOG.error("port %s on %s: cannot bind: vCenter has not been "
                          "reachable since start-up: %s",
                          context.current["id"], host, exc)
                return
        segment = self._pick_segment(context.segments_to_bind, cluster)
        if segment is None:
            LOG.debug("port %s on %s: no VLAN/flat segment mapped to a switch "
                      "of cluster %s", context.current["id"], host, cluster)
            return
        net_id = context.network.current["id"]
        try:
            result = self._reconcile(net_id)
            # One port group per physical network and network at most.
            pg = next((d for d in result.desired
                       if d.physnet == segment[api.PHYSICAL_NETWORK]), None)
            if pg is None:
                raise exceptions.PermanentFault(
                    f"segment {segment[api.ID]}", "has no port group")
            problems = [str(exc) for s, exc in result.outcome.failed
                        if s.name == pg.name] + \
                [c.reason for c in result.outcome.conflicts
                 if c.name == pg.name]
            if problems:
                raise exceptions.VSphereFault(f"port group {pg.name}",
                                              "; ".join(problems))
            created = any(s.name == pg.name for s in result.outcome.done)
            found = self.reconciler.find_port_group(
                pg, None if created else result.inventory)
        except exceptions.VCenterError as exc:
            LOG.error("port %s on %s: cannot bind: the port group of network "
                      "%s is not available: %s", context.current["id"], host,
                      net_id, exc)
            return
        details: dict[str, Any] = {
            "dvs_port_group_name": pg.name,
            "segmentation_id": pg.vlan,
            portbindings.VIF_DETAILS_CONNECTIVITY: portbindings.CONNECTIVITY_L2,
        }
        if pg.kind == desired_mod.DVS:
            details["dvs_id"] = self.topology.targets[pg.physnet].dvs_uuid
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

    def resync(self, grace: float | None = None) -> Pass | None:
        """One full pass over every Neutron network; None if one is running
        elsewhere.  Port groups of deleted networks are removed."""
        result = self.reconciler.sync_all(
            neutron_networks, self.settings.resync_grace_period
            if grace is None else grace)
        if result is not None:
            self.topology = result.topology
        return result

    def _resync_loop(self) -> None:
        delay = FIRST_PASS_DELAY
        while not self._stop.wait(delay):
            delay = self.settings.resync_interval
            if directory.get_plugin() is None:
                delay = FIRST_PASS_DELAY
                continue
            try:
                result = self.resync()
            except Exception as exc:  # noqa: BLE001 - keep the loop alive
                LOG.error("vcenter resync failed: %s", exc)
                continue
            if result is None:
                LOG.debug("vcenter resync: another worker is running it")
                continue
            out = result.outcome
            LOG.info("vcenter resync: %d networks, %d fixed, %d failed, "
                     "%d deferred, %d conflicts, %d left to their API call",
                     len(result.networks), len(out.done), len(out.failed),
                     len(out.deferred), len(out.conflicts),
                     len(result.skipped))

    def stop(self) -> None:
        if getattr(self, "_stop", None):
            self._stop.set()

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

"""The trunk driver of the ports bound by the vcenter mechanism driver.

Agentless, for ``vif_type = dvs`` and segmentation type ``vlan``: a trunk's
parent port gets a VLAN trunk (VLAN guest tagging) on its reserved DV port,
holding the VLAN of the parent's network and of each subport's network; the
guest tags its traffic, the parent's too (see docs/trunks.md).  The DV port
itself is written by the port pipeline like any other setting of the port
(:func:`~networking_vcenter.reconcile.portsettings.port_settings`); this
module only registers the driver with Neutron's trunk plugin, checks trunks
at the API and turns trunk events into port syncs.

Segmentation type ``inherit`` needs nothing here: the trunk plugin replaces
it with the subport network's type and ID (``provider`` extension) before
the drivers see the subport, which is exactly the VLAN vSphere needs.

How Neutron 29 uses it (``neutron/services/trunk/plugin.py``): the plugin
publishes ``(TRUNK_PLUGIN, AFTER_INIT)`` when it starts; a
:class:`~neutron.services.trunk.drivers.base.DriverBase` created before
then answers by registering itself (``register_driver``).  Hence
:func:`register` runs in the mechanism driver's ``initialize()``, before
the service plugins start.  The loaded drivers' segmentation types must
intersect (Open vSwitch's: ``vlan``).

Which trunks are ours, i.e. checked here (PRECOMMIT of a trunk create and
of a subport add, so that a refusal leaves nothing behind): those whose
parent port is bound, or to be bound (``binding:host_id``), on one of
``compute_hosts``; and those whose parent has no host yet and whose network
has a VLAN/flat segment on a physical network of ``switch_mappings`` (the
usual order: a trunk is made before Nova boots the VM on its parent).  A
parent bound to another host belongs to another driver and is left alone.
"""

from __future__ import annotations

from typing import Any, Protocol

from neutron_lib.api.definitions import portbindings
from neutron_lib.callbacks import events
from neutron_lib.callbacks import registry
from neutron_lib.callbacks import resources
from neutron_lib.plugins import directory
from neutron_lib.services.trunk import constants as trunk_consts
from oslo_log import log as logging

from neutron.services.trunk.drivers import base

from networking_vcenter import exceptions
from networking_vcenter import neutron_db
from networking_vcenter.constants import VIF_TYPE_DVS
from networking_vcenter.reconcile import desired
from networking_vcenter.reconcile import portsettings

LOG = logging.getLogger(__name__)

NAME = "vcenter"
SUPPORTED_INTERFACES = (VIF_TYPE_DVS,)
SUPPORTED_SEGMENTATION_TYPES = (trunk_consts.SEGMENTATION_TYPE_VLAN,)


class Backend(Protocol):
    """What the trunk driver needs of the mechanism driver."""

    def is_compute_host(self, host: str) -> bool: ...

    def switch_kinds(self, segments: list[dict[str, Any]],
                     host: str | None) -> dict[str, str | None]:
        """Physical network -> :data:`desired.DVS`, :data:`desired.VSWITCH`
        (or None: not known yet) of each of ``segments`` that is mapped
        (and reaches ``host``'s cluster, when given)."""

    def trunk_changed(self, port_ids: set[str]) -> None:
        """Sync these ports soon (never waits, never raises)."""


class VCenterTrunkDriver(base.DriverBase):

    backend: Backend | None = None

    @property
    def is_loaded(self) -> bool:
        from oslo_config import cfg
        try:
            return NAME in cfg.CONF.ml2.mechanism_drivers
        except (cfg.NoSuchOptError, cfg.NoSuchGroupError):
            return False

    @staticmethod
    def create() -> "VCenterTrunkDriver":
        return VCenterTrunkDriver(
            NAME, SUPPORTED_INTERFACES, SUPPORTED_SEGMENTATION_TYPES,
            agent_type=None, can_trunk_bound_port=True)

    @registry.receives(resources.TRUNK_PLUGIN, [events.AFTER_INIT])
    def register(self, resource, event, trigger, payload=None):
        super().register(resource, event, trigger, payload=payload)
        for callback, res, evt in (
                (self._check_trunk, resources.TRUNK,
                 events.PRECOMMIT_CREATE),
                (self._check_subports, resources.SUBPORTS,
                 events.PRECOMMIT_CREATE),
                (self._trunk_created, resources.TRUNK, events.AFTER_CREATE),
                (self._trunk_deleted, resources.TRUNK, events.AFTER_DELETE),
                (self._subports_added, resources.SUBPORTS,
                 events.AFTER_CREATE),
                (self._subports_removed, resources.SUBPORTS,
                 events.AFTER_DELETE),
                (self._parent_updated, resources.PORT, events.AFTER_UPDATE)):
            registry.subscribe(callback, res, evt)
        LOG.debug("vcenter trunk driver registered with the trunk plugin")

    # -- checks at the API ---------------------------------------------------

    def _check_trunk(self, resource, event, trigger, payload=None):
        trunk = payload.desired_state
        self.check(payload.context, trunk.port_id, trunk.sub_ports)

    def _check_subports(self, resource, event, trigger, payload=None):
        trunk = payload.states[-1]
        self.check(payload.context, trunk.port_id,
                   payload.metadata.get("subports") or ())

    def check(self, context, parent_id: str, subports) -> None:
        """Refuse (:class:`~networking_vcenter.exceptions.TrunkRefused`,
        HTTP 400) a trunk of ours that vSphere cannot carry: its parent's
        network reaches the compute hosts only through standard vSwitches,
        or a subport's segmentation is not its network's VLAN on the
        parent's physical network."""
        backend = self.backend
        if backend is None:
            return
        # Read in the request's transaction (the trunk is not committed).
        subports = list(subports)
        ports, segments = neutron_db.trunk_ports(
            context, {parent_id, *(s.port_id for s in subports)})
        if parent_id not in ports:
            return                          # the plugin says what is wrong
        network_id, host = ports[parent_id]
        if host and not backend.is_compute_host(host):
            return                          # another driver's
        kinds = backend.switch_kinds(
            [{"network_type": t, "physical_network": p, "segmentation_id": i}
             for t, p, i in segments.get(network_id, ())], host or None)
        if not kinds:
            return                          # not on a mapped network
        physnets = sorted(p for p, kind in kinds.items()
                          if kind != desired.VSWITCH)
        if not physnets:
            where = f"compute host {host}" if host else "the compute hosts"
            raise exceptions.TrunkRefused(reason=(
                f"trunk parent port {parent_id}: its network {network_id} "
                f"reaches {where} only through a standard vSwitch (physical "
                f"network(s) "
                f"{', '.join(sorted(kinds))}), which has no per-port VLAN "
                f"trunk; a trunk parent must be on a network of a physical "
                f"network mapped to a distributed switch"))
        for sub in subports:
            if sub.port_id not in ports:
                continue                    # the plugin says what is wrong
            sub_net = ports[sub.port_id][0]
            for physnet in physnets:
                problem = portsettings.subport_problem(
                    sub.port_id, sub_net, sub.segmentation_type,
                    sub.segmentation_id, segments.get(sub_net, ()), physnet)
                if problem:
                    raise exceptions.TrunkRefused(
                        reason=f"trunk of parent port {parent_id}: "
                               f"{problem}")

    # -- events -> port syncs and subport bindings ---------------------------

    def _trunk_created(self, resource, event, trigger, payload=None):
        trunk = payload.states[-1]
        self._changed(payload.context, trunk.port_id,
                      [s.port_id for s in trunk.sub_ports], member=True)

    def _trunk_deleted(self, resource, event, trigger, payload=None):
        trunk = payload.states[0]
        self._changed(payload.context, trunk.port_id,
                      [s.port_id for s in trunk.sub_ports], member=False)

    def _subports_added(self, resource, event, trigger, payload=None):
        trunk = payload.states[-1]
        self._changed(payload.context, trunk.port_id,
                      [s.port_id for s in payload.metadata["subports"]],
                      member=True)

    def _subports_removed(self, resource, event, trigger, payload=None):
        trunk = payload.states[-1]
        self._changed(payload.context, trunk.port_id,
                      [s.port_id for s in payload.metadata["subports"]],
                      member=False)

    def _parent_updated(self, resource, event, trigger, payload=None):
        """A trunk parent bound (or moved) here, or unbound: its subports
        follow its host."""
        port = payload.latest_state
        details = port.get("trunk_details")
        if not details:
            return
        before = payload.states[0]
        if (port.get(portbindings.HOST_ID), port.get(portbindings.VIF_TYPE)
                ) == (before.get(portbindings.HOST_ID),
                      before.get(portbindings.VIF_TYPE)):
            return
        if not self._is_ours(port) and not self._is_ours(before):
            return
        self._changed(payload.context, port["id"],
                      [s["port_id"] for s in details.get("sub_ports") or ()],
                      member=True)

    @staticmethod
    def _is_ours(port: dict[str, Any]) -> bool:
        """Bound here, on a DV port of its own."""
        return port.get(portbindings.VIF_TYPE) == VIF_TYPE_DVS and \
            "dvs_port_key" in (port.get(portbindings.VIF_DETAILS) or {})

    def _changed(self, context, parent_id: str, subport_ids: list[str],
                 member: bool) -> None:
        """Give the subports (still ``member``s of the trunk, or not) the
        binding they need, then sync the parent's DV port.

        A member of a trunk whose parent is bound here is bound on the
        parent's host (``device_owner`` ``trunk:subport``, as Open
        vSwitch's trunk driver does); with the parent unbound, unbound.
        A subport removed from the trunk is unbound and loses that owner.
        Subports of a parent bound by another driver are left to it.
        Errors are logged: the API call has committed, and the maintenance
        worker finds the parent anyway."""
        backend = self.backend
        if backend is None:
            return
        try:
            core = directory.get_plugin()
            parent = core.get_port(context, parent_id)
            if self._is_ours(parent) or \
                    not parent.get(portbindings.HOST_ID):
                host = parent.get(portbindings.HOST_ID) or "" if member \
                    else ""
                self._bind_subports(context, core, parent_id, subport_ids,
                                    host, member)
        except Exception:  # noqa: BLE001 - the API call has committed
            LOG.exception("trunk of parent port %s: the binding of subports "
                          "%s not updated", parent_id, subport_ids)
        backend.trunk_changed({parent_id, *subport_ids})

    @staticmethod
    def _bind_subports(context, core, parent_id: str, subport_ids: list[str],
                       host: str, member: bool) -> None:
        owner = trunk_consts.TRUNK_SUBPORT_OWNER if member else ""
        for port_id in subport_ids:
            try:
                port = core.get_port(context, port_id)
            except Exception:  # noqa: BLE001 - deleted meanwhile
                continue
            if not member and port.get("device_owner") != \
                    trunk_consts.TRUNK_SUBPORT_OWNER:
                continue                    # not made a subport by us
            if (port.get(portbindings.HOST_ID) or "",
                    port.get("device_owner") or "") == (host, owner):
                continue
            port = core.update_port(context, port_id, {"port": {
                portbindings.HOST_ID: host, "device_owner": owner}})
            LOG.info("subport %s of trunk parent %s: %s", port_id, parent_id,
                     f"bound on {host}: {port.get(portbindings.VIF_TYPE)}"
                     if host else "unbound")


DRIVER: VCenterTrunkDriver | None = None


def register(backend: Backend | None = None) -> VCenterTrunkDriver:
    """Make the driver known to the trunk plugin that starts next; call it
    from the mechanism driver's ``initialize()``.  Idempotent; the explicit
    subscribe covers a callback registry replaced since (Neutron's tests
    make one per test)."""
    global DRIVER
    if DRIVER is None:
        DRIVER = VCenterTrunkDriver.create()
    if backend is not None:
        DRIVER.backend = backend
    registry.subscribe(DRIVER.register, resources.TRUNK_PLUGIN,
                       events.AFTER_INIT)
    return DRIVER

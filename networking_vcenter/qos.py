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

"""The QoS driver of the ports bound by the vcenter mechanism driver.

It tells Neutron's QoS service plugin what a DV port can enforce: its
traffic shaping (``inShapingPolicy`` / ``outShapingPolicy``) carries a
``bandwidth_limit`` rule, both directions, with its burst.  Nothing else --
DSCP marking, minimum bandwidth, packet rate limits -- has a DVS setting, so
the plugin refuses, with its usual ``QosRuleNotSupported`` (HTTP 409 naming
the rule type and the port), a policy holding such a rule on a port bound
here: when the rule is added to a policy in use, when the policy is set on
the port, or on the network of the port.

How Neutron 29 uses it (``neutron/services/qos/drivers/manager.py``): the
QoS plugin's driver manager publishes ``(QOS_PLUGIN, AFTER_INIT)`` once it
is built; every :class:`~neutron_lib.services.qos.base.DriverBase` created
before then answers by registering itself.  ``validate_rule_for_port`` asks
only the drivers whose ``vif_types`` hold the port's vif_type (``dvs``
here; the Open vSwitch driver does not claim it), so for our ports this
driver alone decides.  Hence :func:`register` must run before the QoS plugin
starts: the mechanism driver calls it from ``initialize()``, as Open
vSwitch's does (ML2 loads before the service plugins).

No RPC: ``requires_rpc_notifications`` is False.  Neutron publishes no
callback event for QoS policies or rules (neutron_lib.callbacks.resources
has no QoS resource in Neutron 29): the QoS plugin tells its drivers instead,
after the commit, with ``update_policy`` (a rule created, changed or
deleted; the policy changed) and ``delete_policy``.  This driver passes
those on to the ``on_policy_change(context, policy_id)`` given to
:func:`register` -- the mechanism driver's hook
(:meth:`networking_vcenter.ml2.callbacks.NeutronEvents.qos_policy_changed`),
which finds the affected ports with
``neutron_db.ports_referencing(qos_policy_ids=[policy_id])``.
A policy set on (or removed from) a port or a network is a port or network
update, seen by the mechanism driver's own postcommit hooks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from neutron_lib.api.definitions import portbindings
from neutron_lib.callbacks import events
from neutron_lib.callbacks import registry
from neutron_lib import constants
from neutron_lib.db import constants as db_consts
from neutron_lib.services.qos import base
from neutron_lib.services.qos import constants as qos_consts
from oslo_log import log as logging

from networking_vcenter.constants import VIF_TYPE_DVS

LOG = logging.getLogger(__name__)

NAME = "vcenter"

SUPPORTED_RULES = {
    qos_consts.RULE_TYPE_BANDWIDTH_LIMIT: {
        qos_consts.MAX_KBPS: {
            "type:range": [0, db_consts.DB_INTEGER_MAX_VALUE]},
        qos_consts.MAX_BURST: {
            "type:range": [0, db_consts.DB_INTEGER_MAX_VALUE]},
        qos_consts.DIRECTION: {
            "type:values": constants.VALID_DIRECTIONS},
    },
}


PolicyHook = Callable[[Any, str], None]


def _standard_vswitch_ports() -> str:
    from oslo_config import cfg

    from networking_vcenter import conf
    try:
        return cfg.CONF[conf.GROUP].standard_vswitch_ports
    except (cfg.NoSuchOptError, cfg.NoSuchGroupError):
        return "bind"


class VCenterQosDriver(base.DriverBase):

    on_policy_change: PolicyHook | None = None

    @staticmethod
    def create() -> "VCenterQosDriver":
        return VCenterQosDriver(
            name=NAME,
            vif_types=[VIF_TYPE_DVS],
            vnic_types=[portbindings.VNIC_NORMAL],
            supported_rules=SUPPORTED_RULES,
            requires_rpc_notifications=False)

    def validate_rule_for_port(self, context, rule, port) -> bool:
        """A shaping rule needs a DV port: a port on a standard vSwitch port
        group (its binding has no ``dvs_id``) has no per-port shaping.  It
        is refused there with ``standard_vswitch_ports = refuse`` (as the
        bind refuses such a port); with ``bind`` (the default) it is
        accepted and not enforced, as at bind time."""
        if _standard_vswitch_ports() != "refuse":
            return True
        for binding in getattr(port, "bindings", None) or ():
            if binding.status == constants.ACTIVE and \
                    binding.vif_type == VIF_TYPE_DVS:
                details = binding.vif_details or {}
                if not details.get("dvs_id"):
                    LOG.debug("QoS rule %s refused for port %s: bound to a "
                              "standard vSwitch port group", rule.rule_type,
                              port.id)
                    return False
        return True

    def _changed(self, context, policy) -> None:
        hook = self.on_policy_change
        if hook is None:
            return
        try:
            hook(context, policy.id)
        except Exception:  # noqa: BLE001 - the API call has committed
            # An error here would fail the user's request after its commit
            # (the plugin raises DriverCallError); the maintenance worker's
            # fingerprints see the change anyway.
            LOG.exception("vcenter QoS driver: policy %s changed; its "
                          "ports are left to the maintenance worker",
                          policy.id)

    def update_policy(self, context, policy) -> None:
        self._changed(context, policy)

    def delete_policy(self, context, policy) -> None:
        self._changed(context, policy)


DRIVER: VCenterQosDriver | None = None


def register(on_policy_change: PolicyHook | None = None
             ) -> VCenterQosDriver:
    """Make the driver known to the QoS plugin that starts next; call it
    from the mechanism driver's ``initialize()``.

    ``on_policy_change(context, policy_id)``, when given, replaces the hook
    called after a policy or its rules changed (see the module's text); it
    must be quick (it runs in the API request) and its errors are logged,
    not raised.

    Idempotent.  Creating the driver subscribes it to ``(QOS_PLUGIN,
    AFTER_INIT)``; the explicit subscribe again covers a callback registry
    replaced since (Neutron's tests make one per test), and is a no-op when
    already subscribed.
    """
    global DRIVER
    if DRIVER is None:
        DRIVER = VCenterQosDriver.create()
    if on_policy_change is not None:
        DRIVER.on_policy_change = on_policy_change
    registry.subscribe(DRIVER._register, qos_consts.QOS_PLUGIN,
                       events.AFTER_INIT)
    LOG.debug("vcenter QoS driver registered")
    return DRIVER

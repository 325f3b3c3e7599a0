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

"""Neutron's changes as the ports they touch, told to every backend.

A port's DV port follows the port (bound, updated, unbound, deleted) and
everything its policy depends on (security groups and rules, address
groups, QoS policies, the members of remote groups): each change names the
ports it touches, and the backends sync them soon (the API call never waits
for it).  The changes come from the mechanism driver's port and network
hooks (:meth:`NeutronEvents.port_changed`,
:meth:`NeutronEvents.referencing_changed`), from Neutron's callback
registry for what ML2 does not carry (security groups, rules, address
groups: :meth:`NeutronEvents.subscribe`) and from the QoS driver
(:meth:`NeutronEvents.qos_policy_changed`, given to
:func:`networking_vcenter.qos.register`).

A new VLAN/flat segment is also seen here, in its precommit: it is mapped
to the compute hosts it reaches in the same transaction.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import functools
import threading

from neutron_lib.api.definitions import portbindings
from neutron_lib.callbacks import events
from neutron_lib.callbacks import registry
from neutron_lib.callbacks import resources
from oslo_log import log as logging

from networking_vcenter import backend as backend_mod
from networking_vcenter import conf
from networking_vcenter.constants import VIF_TYPE_DVS
from networking_vcenter import neutron_api
from networking_vcenter import neutron_db
from networking_vcenter.reconcile import desired as desired_mod

LOG = logging.getLogger(__name__)


def membership(port: dict | None) -> tuple:
    """What a port contributes to remote security groups naming its
    groups: its groups and addresses."""
    if port is None:
        return ()
    return (tuple(sorted(port.get("security_groups") or ())),
            tuple(sorted(ip.get("ip_address", "")
                         for ip in port.get("fixed_ips") or ())),
            tuple(sorted(str(p.get("ip_address"))
                         for p in port.get("allowed_address_pairs") or ())))


class NeutronEvents:
    """The ports a change touches, synced by each backend on its hosts.

    ``hosts_reached(context, segments, candidate_hosts, agent_getter)``
    answers which compute hosts a segment reaches (the mechanism driver's
    ``filter_hosts_with_segment_access``)."""

    def __init__(self, backends: Sequence[backend_mod.VCenterBackend],
                 settings: conf.Settings,
                 mappings: dict[str, str],
                 hosts_reached: Callable[..., set[str]]) -> None:
        self.backends = backends
        self.settings = settings
        self.mappings = mappings
        self.hosts_reached = hosts_reached
        self._lock = threading.Lock()
        # Security group being deleted -> the ports referring to it (port
        # id -> network id), found before its delete.
        self._sg_deleting: dict[str, dict[str, str]] = {}

    def _ours(self, host: str | None) -> bool:
        return any(b.serves(host) for b in self.backends)

    # -- what the mechanism driver's hooks tell ------------------------------

    def port_changed(self, port: dict | None, before: dict | None,
                     joined: bool = False) -> None:
        """A port created (``before`` None), updated or deleted (``port``
        None).  ``joined``: the port is new to the ports naming its groups
        as remote group (its creation's sync was left to its binding)."""
        ids: set[str] = set()
        groups: set[str] = set()
        std_nets: set[str] = set()
        network_of: dict[str, str] = {}
        for p in (port, before):
            if p is None:
                continue
            if self._ours(p.get(portbindings.HOST_ID)):
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
        if (joined or membership(port) != membership(before)) and groups:
            # Its addresses are in the rules of ports that name one of its
            # groups as remote group.
            ids_of = functools.partial(neutron_db.ports_referencing,
                                       security_group_ids=groups)
            self.ports_changed(ids, ids_of, std_nets, network_of)
        elif ids:
            self.ports_changed(ids, networks=std_nets, network_of=network_of)

    def ports_changed(self, ids: set[str], ids_of=None,
                      networks: set[str] = frozenset(),
                      network_of: dict[str, str] | None = None) -> None:
        """Every backend syncs those of these ports on its hosts (the
        port sources read only theirs)."""
        for b in self.backends:
            b.ports_changed(ids, ids_of, networks, network_of)

    def referencing_changed(self, **which) -> None:
        """The ports :func:`neutron_db.ports_referencing` finds for
        ``which`` (security groups, address groups, QoS policies, networks
        whose policy changed), found in the hook thread."""
        self.ports_changed(set(), functools.partial(
            neutron_db.ports_referencing, **which))

    def qos_policy_changed(self, context, policy_id: str) -> None:
        """The QoS driver's hook: a policy or its rules changed."""
        self.referencing_changed(qos_policy_ids=[policy_id])

    # -- Neutron's callbacks -------------------------------------------------

    def subscribe(self) -> None:
        """Security group, rule and address group changes: the ports whose
        DV port they change, found in the hook thread (QoS policies tell
        their driver, :mod:`networking_vcenter.qos`, instead)."""
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
        segment = payload.latest_state
        as_dict = {"network_type": segment.network_type,
                   "physical_network": segment.physical_network}
        if not desired_mod.is_mapped(as_dict, self.mappings):
            return
        try:
            hosts = self.hosts_reached(
                payload.context, [as_dict],
                {h for b in self.backends for h in b.settings.compute_hosts},
                None)
        except Exception:  # noqa: BLE001 - never fail the network create
            LOG.exception("segment %s: compute hosts not mapped now; the "
                          "maintenance worker will map them", segment.id)
            return
        if hosts:
            neutron_api.map_segment_to_hosts(payload.context, segment.id,
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
            self.ports_changed(set(ids), network_of=ids)

    def _on_policy(self, query, resource, event, trigger, payload=None):
        try:
            which = query(payload)
        except (AttributeError, KeyError, TypeError):
            LOG.warning("vcenter: %s %s without the id it needs; the "
                        "maintenance worker will find its ports", resource,
                        event)
            return
        self.referencing_changed(**which)

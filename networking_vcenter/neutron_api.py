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

"""What a vCenter backend tells Neutron, through its plugins' own API.

:mod:`networking_vcenter.neutron_db` reads; this writes: port and trunk
status as vSphere shows them, the backend's agent row, segment-to-host
mappings, and a failed binding tried again.  Each call is on its own (one
port, one trunk, one host) so that one gone meanwhile costs only itself.
"""

from __future__ import annotations

from typing import Any

from neutron_lib import constants as n_const
from neutron_lib import context as n_context
from neutron_lib.api.definitions import portbindings
from neutron_lib.plugins import directory
from oslo_log import log as logging

LOG = logging.getLogger(__name__)


def set_port_status(statuses: dict[str, str]) -> None:
    """Neutron shows a port ACTIVE while a VM NIC is connected to its DV
    port, DOWN otherwise."""
    plugin = directory.get_plugin()
    ctx = n_context.get_admin_context()
    for port_id, status in sorted(statuses.items()):
        try:
            plugin.update_port_status(ctx, port_id, status)
        except Exception as exc:  # noqa: BLE001 - the port may be gone
            LOG.debug("port %s: status not set to %s: %s", port_id, status,
                      exc)
        else:
            LOG.info("port %s is %s: a VM NIC is %s its DV port", port_id,
                     status, "connected to" if status ==
                     n_const.PORT_STATUS_ACTIVE else "not on")


def set_trunk_status(statuses: dict[str, str]) -> None:
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


def report_agent(state: dict[str, Any]) -> None:
    """Write (heartbeat) an agent row."""
    directory.get_plugin().create_or_update_agent(
        n_context.get_admin_context(), state)


def map_segment_hosts(mapping: dict[str, set[str]]) -> None:
    """Host -> the segments it reaches, as an L2 agent reports them."""
    from neutron.services.segments import db as segments_db
    ctx = n_context.get_admin_context()
    for host, segment_ids in sorted(mapping.items()):
        segments_db.update_segment_host_mapping(ctx, host, segment_ids)


def map_segment_to_hosts(context, segment_id: str, hosts: list[str]) -> None:
    """A new segment's hosts, in the transaction that creates it."""
    from neutron.services.segments import db as segments_db
    segments_db.map_segment_to_hosts(context, segment_id, hosts)


def bind_again(port_id: str, host: str) -> bool:
    """Ask ML2 for the port's bound context, which binds a failed binding
    again; whether it is bound now."""
    try:
        result = directory.get_plugin().get_bound_port_context(
            n_context.get_admin_context(), port_id, host)
    except Exception as exc:  # noqa: BLE001 - the port may be gone
        LOG.debug("port %s: not bound again: %s", port_id, exc)
        return False
    return result is not None and \
        result.vif_type != portbindings.VIF_TYPE_BINDING_FAILED

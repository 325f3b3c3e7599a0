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

"""The vCenter backend as a row in Neutron's agents API, without an agent.

The maintenance worker writes one row per (deployment, vCenter) through the
core plugin's ``create_or_update_agent`` -- a heartbeat while vCenter
answers -- so ``openstack network agent list`` shows the backend alive or
down (Neutron's ``agent_down_time``) and ``openstack network agent show``
its configuration: the vCenter, the mappings, what it manages, the last
full pass and which process does the maintenance (``maintenance_holder``,
``HOST:PID``).  Nothing is written while vCenter does not answer, nor by the
servers that do not hold the vCenter's maintenance: the row then turns down
on its own until a holder writes it again.
"""

from __future__ import annotations

import datetime
from typing import Any

from networking_vcenter import conf
from networking_vcenter.vsphere.inventory import UUID_RE, Inventory

AGENT_TYPE = "vCenter backend"
BINARY = "networking-vcenter"
TOPIC = "N/A"


def host(settings: conf.Settings) -> str:
    """The row's host: this deployment at this vCenter (by its name in
    ``[ml2_vcenter] vcenters``, or the address of the only one)."""
    return f"{settings.deployment_name}@{settings.name or settings.host_ip}"


def state(settings: conf.Settings, inv: Inventory, last_pass: Any,
          last_pass_at: float | None, start: bool,
          holder: str | None = None) -> dict[str, Any]:
    """The agent state Neutron's agents API takes (pure)."""
    pass_info: dict[str, Any] = {"time": None}
    if last_pass is not None and last_pass_at is not None:
        out = last_pass.outcome
        pass_info = {
            "time": datetime.datetime.fromtimestamp(
                last_pass_at, datetime.timezone.utc).isoformat(
                    timespec="seconds"),
            "result": "ok" if not (out.failed or out.conflicts or
                                   out.deferred) else "incomplete",
            "networks": len(last_pass.networks),
            "fixed": len(out.done), "failed": len(out.failed),
            "deferred": len(out.deferred),
            "conflicts": [c.reason for c in out.conflicts][:20],
        }
        ports = getattr(last_pass, "ports", None)
        if ports is not None:
            pass_info["ports"] = len(ports.desired)
            pass_info["ports_fixed"] = len(ports.outcome.done)
            pass_info["ports_failed"] = len(ports.outcome.failed)
            pass_info["port_conflicts"] = [
                f"port {c.port_id}: {c.reason}"
                for c in ports.plan.conflicts][:20]
    return {
        "agent_type": AGENT_TYPE,
        "binary": BINARY,
        "host": host(settings),
        "topic": TOPIC,
        "start_flag": start,
        "configurations": {
            "vcenter": f"{settings.host_ip}:{settings.host_port}",
            "vcenter_name": settings.name or None,
            "deployment_name": settings.deployment_name,
            "switch_mappings": dict(settings.switch_mappings),
            "compute_hosts": dict(settings.compute_hosts),
            "managed_distributed_port_groups": sum(
                1 for pg in inv.dvs_portgroups if pg.owner),
            "managed_standard_port_groups": sum(
                1 for n in inv.std_networks.values() if n.owner),
            "reserved_dv_ports": sum(
                1 for ports in inv.dv_ports.values() for p in ports
                if UUID_RE.match(p.name)),
            "connected_dv_ports": sum(
                1 for ports in inv.dv_ports.values() for p in ports
                if UUID_RE.match(p.name) and p.connected),
            "last_full_pass": pass_info,
            "maintenance_holder": holder,
        },
    }

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

"""The vCenter privileges the driver needs, each tied to the call needing it.

docs/deployment.md shows the same table to operators; ``networking-vcenter
check`` asks vCenter (``AuthorizationManager.HasPrivilegeOnEntities``) whether
the driver's own session holds each of them on the objects it acts on.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

from networking_vcenter.vsphere.inventory import Inventory
from networking_vcenter.vsphere.session import Session

READ = ("System.View", "System.Read")
DVS_PRIVILEGES = ("DVPortgroup.Create", "DVPortgroup.Modify",
                  "DVPortgroup.Delete", "DVSwitch.PortConfig",
                  "DVSwitch.PortSetting")
HOST_PRIVILEGES = ("Host.Config.Network",)
# ReconfigureDvs_Task raising maxMtu ([ml2_vcenter] raise_switch_mtu only).
DVS_MTU_PRIVILEGES = ("DVSwitch.Modify",)
CUSTOM_FIELD_PRIVILEGES = ("Global.ManageCustomFields",
                           "Global.SetCustomField")


@dataclasses.dataclass(frozen=True)
class Need:
    entity: Any             # managed object reference
    label: str              # what the operator calls it
    privileges: tuple[str, ...]


def needs(inv: Inventory, root: Any, switches: Iterable[str],
          host_moids: Iterable[str], raise_mtu: bool = False) -> list[Need]:
    """Which privileges on which objects the driver needs: the mapped
    distributed ``switches`` (their MTU too with ``raise_mtu``), and the
    hosts carrying standard port groups."""
    result = [Need(root, "vCenter root folder",
                   READ + (CUSTOM_FIELD_PRIVILEGES
                           if inv.custom_fields else ()))]
    for name in switches:
        dvs = inv.dvs(name)
        if dvs is not None:
            result.append(Need(dvs.ref, f"distributed switch {dvs.name}",
                               DVS_PRIVILEGES + (DVS_MTU_PRIVILEGES
                                                 if raise_mtu else ())))
    for moid in sorted(set(host_moids)):
        host = inv.hosts[moid]
        result.append(Need(host.ref, f"host {host.name}", HOST_PRIVILEGES))
    return result


def missing(granted: dict[str, dict[str, bool]],
            wanted: list[Need]) -> list[str]:
    """Pure: the privileges not granted, one line each.

    ``granted`` maps an entity's moid to {privilege id: granted?}.
    """
    lines = []
    for need in wanted:
        have = granted.get(need.entity._moId, {})
        for priv in need.privileges:
            if not have.get(priv, False):
                lines.append(f"{priv} on {need.label}")
    return lines


def query(session: Session, wanted: list[Need]) -> dict[str, dict[str, bool]]:
    """Ask vCenter which of the wanted privileges this session holds."""
    content = session.content
    session_key = session.call("read the current session",
                               lambda: content.sessionManager.currentSession
                               .key)
    privs = sorted({p for n in wanted for p in n.privileges})
    answer = session.call(
        "check privileges", content.authorizationManager
        .HasPrivilegeOnEntities, [n.entity for n in wanted], session_key,
        privs)
    return {e.entity._moId: {a.privId: a.isGranted
                             for a in e.privAvailability or []}
            for e in answer or []}

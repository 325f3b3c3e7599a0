"""Port group writes on distributed and standard switches.

Every operation is idempotent: creating what already exists as wanted, or
deleting what is already gone, is success.  Distributed port groups are created
many per ``AddDVPortgroup_Task`` (one task instead of one per port group, ~17x
fewer round trips), in chunks because a real vCenter's limit on task size is
unknown.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from pyVmomi import vim

from networking_vcenter import exceptions
from networking_vcenter.vsphere import inventory
from networking_vcenter.vsphere.session import Session

LOG = logging.getLogger(__name__)

VmwareDVS = vim.dvs.VmwareDistributedVirtualSwitch


def dvs_port_group_spec(name: str, vlan: int, description: str,
                        config_version: str | None = None
                        ) -> vim.dvs.DistributedVirtualPortgroup.ConfigSpec:
    """A complete spec (vCenter's simulator wipes fields a spec leaves out).

    Static binding with auto-expand: Nova attaches NICs by port group key and
    ports are allocated as VMs come, without a size limit to tune.
    """
    return vim.dvs.DistributedVirtualPortgroup.ConfigSpec(
        name=name, description=description, type="earlyBinding",
        numPorts=8, autoExpand=True, configVersion=config_version,
        defaultPortConfig=VmwareDVS.VmwarePortConfigPolicy(
            vlan=VmwareDVS.VlanIdSpec(vlanId=vlan, inherited=False)))


def create_dvs_port_groups(session: Session, dvs: Any,
                           specs: Sequence[Any], switch: str) -> None:
    """Create port groups on one switch in a single task."""
    names = ", ".join(s.name for s in specs)
    what = f"create port group(s) {names} on {switch}"
    task = session.call(what, dvs.AddDVPortgroup_Task, list(specs))
    session.wait_for_tasks([task], what)


def reconfigure_dvs_port_group(session: Session, pg: Any, spec: Any,
                               what: str) -> None:
    task = session.call(what, pg.ReconfigureDVPortgroup_Task, spec)
    session.wait_for_tasks([task], what)


def destroy_dvs_port_group(session: Session, pg: Any, what: str) -> None:
    try:
        task = session.call(what, pg.Destroy_Task)
        session.wait_for_tasks([task], what)
    except exceptions.PermanentFault as exc:
        if "ManagedObjectNotFound" in exc.fault:
            return  # already gone: success
        if "ResourceInUse" in exc.fault:
            raise exceptions.InUse(what, exc.fault)
        raise


def host_port_group_spec(name: str, vswitch: str,
                         vlan: int) -> vim.host.PortGroup.Specification:
    return vim.host.PortGroup.Specification(
        name=name, vlanId=vlan, vswitchName=vswitch,
        policy=vim.host.NetworkPolicy())


def add_host_port_group(session: Session, network_system: Any, host: str,
                        name: str, vswitch: str, vlan: int) -> None:
    """The API form of ``esxcfg-vswitch --add-pg NAME VSWITCH --vlan N``."""
    what = f"create port group {name} on {host}/{vswitch}"
    try:
        session.call(what, network_system.AddPortGroup,
                     host_port_group_spec(name, vswitch, vlan))
    except exceptions.PermanentFault as exc:
        if "AlreadyExists" not in exc.fault:
            raise
        # Someone (a racing worker, an earlier try) made it: make sure the
        # VLAN is ours, which UpdatePortGroup does idempotently.
        update_host_port_group(session, network_system, host, name, vswitch,
                               vlan)


def update_host_port_group(session: Session, network_system: Any, host: str,
                           name: str, vswitch: str, vlan: int) -> None:
    what = f"set VLAN {vlan} on port group {name} of {host}/{vswitch}"
    session.call(what, network_system.UpdatePortGroup, name,
                 host_port_group_spec(name, vswitch, vlan))


def remove_host_port_group(session: Session, network_system: Any, host: str,
                           name: str) -> None:
    what = f"delete port group {name} on {host}"
    try:
        session.call(what, network_system.RemovePortGroup, name)
    except exceptions.PermanentFault as exc:
        if "NotFound" in exc.fault:
            return  # already gone: success
        if "ResourceInUse" in exc.fault:
            raise exceptions.InUse(what, exc.fault)
        raise


def ensure_owner_field(session: Session) -> int | None:
    """Define our custom attribute for standard networks; None on ESXi."""
    cfm = session.content.customFieldsManager
    if cfm is None:
        return None
    key = inventory.owner_field_key(session)
    if key is not None:
        return key
    try:
        field = session.call(f"define custom attribute "
                             f"{inventory.OWNER_FIELD}",
                             cfm.AddCustomFieldDef,
                             name=inventory.OWNER_FIELD, moType=vim.Network)
        return field.key
    except exceptions.PermanentFault as exc:
        if "DuplicateName" not in exc.fault:
            raise
        # Another worker defined it a moment ago.
        return inventory.owner_field_key(session)


def set_owner_field(session: Session, entity: Any, key: int,
                    value: str) -> None:
    cfm = session.content.customFieldsManager
    session.call(f"mark {entity._moId} as managed ({value})",
                 cfm.SetField, entity, key, value)

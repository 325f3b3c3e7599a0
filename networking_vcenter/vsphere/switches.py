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

"""Port group writes on distributed and standard switches.

Every operation is idempotent: creating what already exists as wanted, or
deleting what is already gone, is success.  Distributed port groups are created
many per ``AddDVPortgroup_Task`` (one task instead of one per port group, ~17x
fewer round trips), in chunks because a real vCenter's limit on task size is
unknown.  Faults arrive typed from the session (:mod:`exceptions`); nothing here
reads fault text.

Ownership on the race paths: a standard port group that appears between the
read and the write (``AlreadyExists``) is success only when it is exactly what
we would have made (see :func:`add_host_port_group`); anything else is refused
with :class:`~networking_vcenter.exceptions.NotOwned` and left as it is.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from oslo_log import log as logging
from pyVmomi import vim

from networking_vcenter import exceptions
from networking_vcenter.vsphere import inventory
from networking_vcenter.vsphere import ports
from networking_vcenter.vsphere import reads
from networking_vcenter.vsphere.session import Session

LOG = logging.getLogger(__name__)

VmwareDVS = vim.dvs.VmwareDistributedVirtualSwitch


def dvs_port_group_spec(name: str, vlan: inventory.Vlan, description: str,
                        config_version: str | None = None,
                        num_ports: int | None = None
                        ) -> vim.dvs.DistributedVirtualPortgroup.ConfigSpec:
    """The complete spec of one of our distributed port groups.

    Static binding (earlyBinding) with autoExpand: Nova attaches NICs by
    port group key or pinned to a port key (``vif_details['dvs_port_key']``)
    that the driver reserves and configures before the VM boots, and ports
    are added as VMs come, without a size to tune.  The group lets its ports
    override what the driver sets per Neutron port (:func:`port_group_policy`)
    and keeps a port's settings when its NIC disconnects, so that a reserved
    port stays configured.  The defaults its ports inherit are written out
    in full (:func:`default_port_config`) rather than left to the switch.

    A reconfigure (a retag, or the conversion in place of a group made by an
    earlier version: dynamic policy, reset at disconnect, no closed traffic
    filter in its defaults) passes the group's
    ``config_version`` -- vCenter refuses the spec if the group changed since
    -- and its current ``num_ports``: fewer would make vCenter delete free
    ports (or refuse, below the connected ones); a connected NIC keeps its
    port.  vCenter merges a reconfigure spec (unset fields stay); the spec
    is complete anyway, so that a group reads the same however it was made.
    """
    return vim.dvs.DistributedVirtualPortgroup.ConfigSpec(
        name=name, description=description, type="earlyBinding",
        numPorts=max(8, num_ports or 0), autoExpand=True,
        configVersion=config_version, policy=port_group_policy(),
        defaultPortConfig=default_port_config(vlan))


def port_group_policy() -> VmwareDVS.VMwarePortgroupPolicy:
    """What ports of our groups may override: blocked, shaping, the traffic
    filter, security, MAC management (6.6+ switches) and the VLAN (a trunk
    parent's VLAN ranges) -- the settings of
    :class:`~networking_vcenter.vsphere.inventory.PortSettings`; nothing
    else (teaming, vendor config, resource pools, NetFlow).  Settings
    survive a NIC's disconnect (``portConfigResetAtDisconnect`` off)."""
    return VmwareDVS.VMwarePortgroupPolicy(
        blockOverrideAllowed=True, shapingOverrideAllowed=True,
        vendorConfigOverrideAllowed=False, livePortMovingAllowed=False,
        portConfigResetAtDisconnect=False,
        networkResourcePoolOverrideAllowed=False,
        trafficFilterOverrideAllowed=True, vlanOverrideAllowed=True,
        uplinkTeamingOverrideAllowed=False,
        securityPolicyOverrideAllowed=True, ipfixOverrideAllowed=False,
        macManagementOverrideAllowed=True)


def vlan_spec(vlan: inventory.Vlan) -> VmwareDVS.VlanSpec:
    """A distributed port group's VLAN: an ID, or a trunk of ranges."""
    if isinstance(vlan, tuple):
        return VmwareDVS.TrunkVlanSpec(inherited=False, vlanId=[
            vim.NumericRange(start=a, end=b) for a, b in vlan])
    return VmwareDVS.VlanIdSpec(vlanId=vlan, inherited=False)


def default_port_config(vlan: inventory.Vlan
                        ) -> VmwareDVS.VmwarePortConfigPolicy:
    """The group's port defaults: its VLAN (or trunk), not blocked, Neutron's port
    security (promiscuous mode, MAC changes and forged transmits rejected;
    a port opens them itself), no shaping, and a traffic filter that drops
    all IPv4 and IPv6 both ways (:func:`closed_default`): a port the driver
    has not configured -- free, released, or taken by a NIC before the
    driver got to it -- is closed; the ports the driver configures carry a
    filter of their own."""
    reject = vim.BoolPolicy(inherited=False, value=False)
    no_limit = vim.dvs.DistributedVirtualPort.TrafficShapingPolicy(
        inherited=False, enabled=vim.BoolPolicy(inherited=False, value=False))
    return VmwareDVS.VmwarePortConfigPolicy(
        vlan=vlan_spec(vlan),
        blocked=vim.BoolPolicy(inherited=False, value=False),
        securityPolicy=VmwareDVS.SecurityPolicy(
            inherited=False, allowPromiscuous=reject, macChanges=reject,
            forgedTransmits=reject),
        inShapingPolicy=no_limit, outShapingPolicy=no_limit,
        filterPolicy=closed_default().filterPolicy)


# The digest of the defaults :func:`default_port_config` writes (not
# blocked, the drop-all filter), named in the description of a group made or
# retagged with them: with ``shared_security_filter`` the replica does not
# parse group filters and knows a group's defaults are ours, closed or
# shared, by such a digest (``inventory.defaults_token_of``).
CLOSED_TOKEN = inventory.defaults_token(False, ports.CLOSED_RULES)


def closed_description(description: str,
                       config_version: str | None = None) -> str:
    """``description`` naming the digest of :func:`default_port_config`'s
    defaults, written on ``config_version`` (None: a group made now)."""
    return inventory.with_defaults_token(description, CLOSED_TOKEN,
                                         config_version)


def closed_default() -> VmwareDVS.VmwarePortConfigPolicy:
    """A default port config that sets only the closed traffic filter
    (:data:`ports.CLOSED_RULES`, built as a port's rules are): merged
    into a group's defaults by a reconfigure, it changes nothing else."""
    return VmwareDVS.VmwarePortConfigPolicy(
        filterPolicy=ports.closed_filter())


def group_defaults_spec(config_version: str | None, description: str,
                        blocked: bool, rules: tuple[inventory.TrafficRule, ...]
                        ) -> vim.dvs.DistributedVirtualPortgroup.ConfigSpec:
    """The spec giving a group of ours new defaults for ``blocked`` and the
    traffic filter (``shared_security_filter``), and the description that
    names them; everything else is merged unchanged (vCenter merges a
    reconfigure spec, ``defaultPortConfig`` policy by policy)."""
    return vim.dvs.DistributedVirtualPortgroup.ConfigSpec(
        configVersion=config_version, description=description,
        defaultPortConfig=VmwareDVS.VmwarePortConfigPolicy(
            blocked=vim.BoolPolicy(inherited=False, value=bool(blocked)),
            filterPolicy=ports.filter_policy(rules)))


def convert_port_group_spec(config_version: str | None, num_ports: int
                            ) -> vim.dvs.DistributedVirtualPortgroup.ConfigSpec:
    """The smallest spec turning a group made by an earlier version into
    one that holds per-port settings (static, :func:`port_group_policy`)
    and whose ports are closed until configured (:func:`closed_default`),
    in place: its VLAN, its other defaults, its ports (and their own
    settings), connected NICs and everything else stay.  vCenter merges a
    reconfigure spec, and in ``defaultPortConfig`` policy by policy: only
    ``filterPolicy`` is sent, whole (the simulator does the same since
    patch 0008: each policy the spec sets replaces the group's)."""
    return vim.dvs.DistributedVirtualPortgroup.ConfigSpec(
        configVersion=config_version, type="earlyBinding", autoExpand=True,
        numPorts=max(8, num_ports or 0), policy=port_group_policy(),
        defaultPortConfig=closed_default())


def create_dvs_port_groups(session: Session, dvs: Any,
                           specs: Sequence[Any], switch: str) -> None:
    """Create port groups on one switch in a single task.

    Raises DuplicateName when a name is taken (the task then creates none).
    """
    names = ", ".join(s.name for s in specs)
    session.run_task(f"create port group(s) {names} on {switch}",
                     dvs.AddDVPortgroup_Task, list(specs))


def reconfigure_dvs_port_group(session: Session, pg: Any, spec: Any,
                               what: str) -> None:
    session.run_task(what, pg.ReconfigureDVPortgroup_Task, spec)


def destroy_dvs_port_group(session: Session, pg: Any, what: str) -> None:
    """Destroy; already gone is success, VMs still on it raise InUse."""
    try:
        session.run_task(what, pg.Destroy_Task)
    except exceptions.NotFound:
        return


def raise_dvs_mtu(session: Session, dvs: Any, switch: str, mtu: int
                  ) -> bool:
    """Raise a VMware distributed switch's maxMtu to ``mtu``, reading its
    maxMtu and configVersion from vCenter first: a switch already at or
    above it is left alone (never lowered), and the reconfigure carries the
    configVersion read, so a switch changed meanwhile is refused
    (ConcurrentModification) rather than overwritten.  Answers whether it
    was raised."""
    found = reads.retrieve(
        session, VmwareDVS, ["config.maxMtu", "config.configVersion"],
        f"{switch} before raising its MTU", [dvs])
    if not found:
        raise exceptions.NotFound(f"raise the MTU of {switch}",
                                  "the switch is gone")
    props = found[0][1]
    if int(props.get("config.maxMtu") or 0) >= mtu:
        return False
    session.run_task(
        f"raise the maxMtu of distributed switch {switch} to {mtu}",
        dvs.ReconfigureDvs_Task, VmwareDVS.ConfigSpec(
            configVersion=props.get("config.configVersion"), maxMtu=mtu))
    return True


def host_port_group_spec(name: str, vswitch: str, vlan: int,
                         security: inventory.Security | None = None
                         ) -> vim.host.PortGroup.Specification:
    """A standard port group; ``security`` its own (allowPromiscuous,
    macChanges, forgedTransmits), None: the vSwitch's."""
    policy = vim.host.NetworkPolicy()
    if security is not None:
        promiscuous, mac_changes, forged = security
        policy.security = vim.host.NetworkPolicy.SecurityPolicy(
            allowPromiscuous=promiscuous, macChanges=mac_changes,
            forgedTransmits=forged)
    return vim.host.PortGroup.Specification(
        name=name, vlanId=vlan, vswitchName=vswitch, policy=policy)


@dataclasses.dataclass(frozen=True)
class StdOwner:
    """Who a standard port group must belong to, to be taken as ours.

    ``mark``: the mark we put on its vSphere Network (deployment and Neutron
    network); ``field_key``: our custom attribute's key (None: not defined,
    or no custom attributes at all, as on a standalone ESXi host);
    ``network_folders``: where the datacenters keep their Networks.
    """

    mark: inventory.Mark
    field_key: int | None = None
    network_folders: tuple[Any, ...] = ()


def add_host_port_group(session: Session, network_system: Any, host: str,
                        name: str, vswitch: str, vlan: int,
                        owner: StdOwner | None = None,
                        security: inventory.Security | None = None) -> bool:
    """The API form of ``esxcfg-vswitch --add-pg NAME VSWITCH --vlan N``.

    True when this call created it.  When the host already has a port group
    of that name (another worker, an earlier try, someone's hand -- it was
    not there when the plan was made), it is read back and taken as success
    only if it is exactly what we would have made: on ``vswitch`` with
    ``vlan``, named after the network's UUID, and its Network unmarked or
    marked by ``owner.mark``.  Anything else raises NotOwned naming both, and
    is left exactly as it is.
    """
    what = f"create port group {name} on {host}/{vswitch}"
    spec = host_port_group_spec(name, vswitch, vlan, security)
    try:
        session.host_write(what, network_system.AddPortGroup, spec)
        return True
    except exceptions.AlreadyExists:
        pass
    have = host_port_group(session, network_system, host, name)
    if have is None:
        # Removed again meanwhile: what we planned holds after all.
        session.host_write(what, network_system.AddPortGroup, spec)
        return True
    problems = []
    if (have.vswitch, have.vlan) != (vswitch, vlan):
        problems.append(f"it is on {have.vswitch} with "
                        f"{inventory.vlan_text(have.vlan)}")
    mark = None
    if owner is not None:
        if name != owner.mark.network_id:
            problems.append("its name is not the network's UUID")
        mark = std_network_mark(session, owner, name)
        if mark is not None and mark != owner.mark:
            problems.append(f"its network is marked as made by "
                            f"networking-vcenter deployment "
                            f"'{mark.deployment}' for network "
                            f"{mark.network_id}")
    if problems:
        wanted = (f" for network {owner.mark.network_id}" if owner else "")
        raise exceptions.NotOwned(
            what, f"standard port group {name} appeared on {host} before "
                  f"it was written (AlreadyExists) and is not the one "
                  f"networking-vcenter would make{wanted} ({vswitch}, "
                  f"{inventory.vlan_text(vlan)}): {'; '.join(problems)}. "
                  f"It is left untouched")
    LOG.debug("%s: already there as wanted (%s)", what,
              "marked by us" if mark else "unmarked")
    return False


def host_port_group(session: Session, network_system: Any, host: str,
                    name: str) -> inventory.HostPortGroup | None:
    """The port group ``name`` of one host, read fresh (one round trip)."""
    objects = reads.retrieve(
        session, vim.host.NetworkSystem, ["networkInfo.portgroup"],
        f"port groups of {host}", [network_system])
    for _, props in objects:
        for pg in props.get("networkInfo.portgroup") or []:
            if pg.spec.name == name:
                return inventory.HostPortGroup(
                    name=name, vswitch=pg.spec.vswitchName,
                    vlan=int(pg.spec.vlanId or 0),
                    security=inventory.security_of(pg.spec.policy))
    return None


def std_network_mark(session: Session, owner: StdOwner,
                     name: str) -> inventory.Mark | None:
    """The mark on the standard Network ``name``, read fresh; None when it
    has none (or vSphere has no custom attributes)."""
    if owner.field_key is None or not owner.network_folders:
        return None
    found = reads.find_children(session, list(owner.network_folders),
                                {name}, vim.Network)
    if name not in found:
        return None
    for _, props in reads.retrieve(session, vim.Network, ["customValue"],
                                   f"mark of network {name}",
                                   [found[name]]):
        return _mark_of(props.get("customValue"), owner.field_key)
    return None


def _mark_of(custom_values: Any, field_key: int) -> inventory.Mark | None:
    for cv in custom_values or []:
        if cv.key == field_key:
            return inventory.mark_from_value(cv.value)
    return None


def update_host_port_group(session: Session, network_system: Any, host: str,
                           name: str, vswitch: str, vlan: int,
                           security: inventory.Security | None = None
                           ) -> None:
    what = (f"set {inventory.vlan_text(vlan)} on port group {name} of "
            f"{host}/{vswitch}")
    session.host_write(what, network_system.UpdatePortGroup, name,
                       host_port_group_spec(name, vswitch, vlan, security))


def remove_host_port_group(session: Session, network_system: Any, host: str,
                           name: str) -> None:
    """Remove; already gone is success, VMs still on it raise InUse."""
    what = f"delete port group {name} on {host}"
    try:
        session.host_write(what, network_system.RemovePortGroup, name)
    except exceptions.NotFound:
        return


def ensure_owner_field(session: Session) -> int | None:
    """Define our custom attribute for standard networks; None on ESXi."""
    cfm = session.content.customFieldsManager
    if cfm is None:
        return None
    key = reads.owner_field_key(session)
    if key is not None:
        return key
    try:
        field = session.call(f"define custom attribute "
                             f"{inventory.OWNER_FIELD}",
                             cfm.AddCustomFieldDef,
                             name=inventory.OWNER_FIELD, moType=vim.Network)
        return field.key
    except exceptions.DuplicateName:
        # Another worker defined it a moment ago.
        return reads.owner_field_key(session)


def set_owner_field(session: Session, entity: Any, key: int,
                    value: str) -> None:
    cfm = session.content.customFieldsManager
    session.call(f"mark {entity._moId} as managed ({value})",
                 cfm.SetField, entity, key, value)

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

"""Reading vCenter: paged property reads, targeted look-ups, and vSphere's
objects turned into the plain dataclasses of
:mod:`~networking_vcenter.vsphere.inventory`.

The live replica (:mod:`networking_vcenter.vsphere.replica`) holds vCenter's
objects as properties and turns them into an :class:`~.inventory.Inventory`
with :func:`from_objects`, which the pure planner compares with the desired
state.  The few direct reads here (:func:`retrieve`, :func:`find_children`)
serve the write path, which checks ownership against what vCenter answers
rather than the replica.  Nothing here changes vCenter.  This is the
pyVmomi side of the inventory: :mod:`~.inventory` itself imports no pyVmomi,
so that the pure modules (desired, plan, portsettings) load without it.
"""

from __future__ import annotations

import contextlib
from typing import Any

from pyVmomi import vim, vmodl

from networking_vcenter.vsphere import ports
from networking_vcenter.vsphere.inventory import (
    OWNER_FIELD, Dvs, DvPort, DvsPortGroup, Host, HostPortGroup, Inventory,
    StdNetwork, Vlan, defaults_base_of, defaults_token_of,
    mark_from_description, mark_of, merge_ranges, owner, ports_ready_of,
    security_of)
from networking_vcenter.vsphere.session import Session

# Objects per answer of a read (here, and the replica's first full read);
# vCenter pages the rest (a token, or "truncated").
READ_PAGE = 1000


def retrieve(session: Session, vimtype: type, paths: list[str],
             what: str, refs: list[Any] | None = None
             ) -> list[tuple[Any, dict[str, Any]]]:
    """Objects of one type with the given properties, in one batch.

    All objects of the type (through a container view), or just ``refs``.
    """
    content = session.content
    pc = content.propertyCollector
    view = None
    if refs is None:
        view = session.call(f"open a view of {vimtype.__name__} ({what})",
                            content.viewManager.CreateContainerView,
                            content.rootFolder, [vimtype], True)
        object_set = [vmodl.query.PropertyCollector.ObjectSpec(
            obj=view, skip=True, selectSet=[
                vmodl.query.PropertyCollector.TraversalSpec(
                    name="view", path="view", skip=False,
                    type=vim.view.ContainerView)])]
    elif not refs:
        return []
    else:
        object_set = [vmodl.query.PropertyCollector.ObjectSpec(obj=r)
                      for r in refs]
    token = None
    try:
        spec = vmodl.query.PropertyCollector.FilterSpec(
            objectSet=object_set,
            propSet=[vmodl.query.PropertyCollector.PropertySpec(
                type=vimtype, pathSet=paths)])
        options = vmodl.query.PropertyCollector.RetrieveOptions(
            maxObjects=READ_PAGE)
        result = session.call(f"read {vimtype.__name__} ({what})",
                              pc.RetrievePropertiesEx, [spec], options)
        objects = []
        while result is not None:
            for obj in result.objects:
                props = {p.name: p.val for p in obj.propSet or []}
                objects.append((obj.obj, props))
            if not result.token:
                break
            token = result.token
            result = session.call(f"read more {vimtype.__name__}",
                                  pc.ContinueRetrievePropertiesEx, token)
            token = None
        return objects
    finally:
        if token is not None:
            # Cut off mid-way: vCenter holds the rest until told.
            with contextlib.suppress(Exception):
                pc.CancelRetrievePropertiesEx(token)
        if view is not None:
            try:
                view.DestroyView()
            except Exception:  # noqa: BLE001 - the session may be gone
                pass


def find_children(session: Session, folders: list[Any], names: set[str],
                  vimtype: type) -> dict[str, Any]:
    """{name: object} of ``vimtype`` named ``names`` directly in ``folders``.

    ``SearchIndex.FindChild``: one round trip per folder and name, however
    many objects vCenter holds -- the targeted read of a single network.
    ``vim.Network`` means standard networks only, not its subtypes.
    """
    index = session.content.searchIndex
    found = {}
    for folder in folders:
        for name in sorted(names - set(found)):
            ref = session.call(f"find {name}", index.FindChild, folder, name)
            if isinstance(ref, vimtype) and (
                    vimtype is not vim.Network or type(ref) is vim.Network):
                found[name] = ref
    return found


def _vlan_of(spec: Any) -> Vlan | None:
    """A distributed port group's VLAN (``defaultPortConfig.vlan``): its ID,
    or its trunk's ranges merged and sorted; None for a private VLAN."""
    vlan = getattr(spec, "vlan", None)
    dvs = vim.dvs.VmwareDistributedVirtualSwitch
    if isinstance(vlan, dvs.VlanIdSpec):
        return int(vlan.vlanId)
    if isinstance(vlan, dvs.TrunkVlanSpec):
        return merge_ranges((int(r.start), int(r.end))
                            for r in vlan.vlanId or [])
    return None


def owner_field_key(session: Session) -> int | None:
    """Key of our custom attribute, or None where vSphere has none (ESXi)."""
    cfm = session.content.customFieldsManager
    if cfm is None:
        return None
    fields = session.call("read custom attribute definitions",
                          lambda: cfm.field)
    for field in fields or []:
        if field.name == OWNER_FIELD:
            return field.key
    return None


def default_closed_of(default_port_config: Any) -> bool:
    """Whether a distributed port group's ``config.defaultPortConfig``
    carries the closed traffic filter our groups give the ports the driver
    has not configured (``ports.CLOSED_RULES``: all IP dropped, both
    ways)."""
    return ports.is_closed(getattr(default_port_config, "filterPolicy",
                                   None))


Objects = list[tuple[Any, dict[str, Any]]]


def from_objects(*, dvss: Objects, dvpgs: Objects, networks: Objects,
                 compute: Objects, datacenters: Objects, hosts: Objects,
                 field_key: int | None, has_fields: bool,
                 deployment: str,
                 dv_ports: dict[str, tuple[DvPort, ...]] | None = None
                 ) -> Inventory:
    """An Inventory from (reference, properties) pairs, as the replica holds
    them (see :mod:`networking_vcenter.vsphere.replica` for the paths).

    Port groups count as owned (``owner`` set) only when marked by
    ``deployment``.  Pure: reads nothing.
    """
    switches: dict[str, list[Dvs]] = {}
    for ref, p in dvss:
        if "name" not in p:
            continue
        dvs = Dvs(moid=ref._moId, name=p["name"], uuid=p.get("uuid"),
                  host_moids=frozenset(h._moId for h in
                                       p.get("summary.hostMember") or []),
                  ref=ref, folder=p.get("parent"),
                  version=getattr(p.get("config.productInfo"), "version",
                                  None) or None,
                  max_mtu=p.get("config.maxMtu") or None)
        switches.setdefault(dvs.name, []).append(dvs)

    dvpgs_out = []
    for ref, p in dvpgs:
        switch = p.get("config.distributedVirtualSwitch")
        if switch is None or "name" not in p:
            continue
        description = p.get("config.description") or ""
        mark = mark_from_description(description)
        dvpgs_out.append(DvsPortGroup(
            moid=ref._moId, name=p["name"], key=p.get("key"),
            dvs_moid=switch._moId,
            vlan=_vlan_of(p.get("config.defaultPortConfig")),
            description=description, owner=owner(mark, deployment),
            vm_count=len(p.get("vm") or []), ref=ref, mark=mark,
            ports_ready=ports_ready_of(p.get("config.type"),
                                       p.get("config.policy")),
            num_ports=int(p.get("config.numPorts") or 0),
            config_version=p.get("config.configVersion"),
            mac_override=bool(getattr(p.get("config.policy"),
                                      "macManagementOverrideAllowed", False)),
            port_keys=tuple(p.get("portKeys") or ()),
            default_closed=default_closed_of(
                p.get("config.defaultPortConfig")),
            defaults_token=defaults_token_of(description),
            defaults_base=defaults_base_of(description)))

    clusters: dict[str, list[list[str]]] = {}
    for ref, p in compute:
        clusters.setdefault(p.get("name", ref._moId), []).append(
            [h._moId for h in p.get("host") or []])

    std: dict[str, StdNetwork] = {}
    for ref, p in networks:
        if "name" not in p:
            continue
        mark = mark_of(p.get("customValue"), field_key)
        std[p["name"]] = StdNetwork(
            moid=ref._moId, name=p["name"],
            host_moids=frozenset(h._moId for h in p.get("host") or []),
            owner=owner(mark, deployment),
            vm_count=len(p.get("vm") or []), ref=ref, mark=mark)

    hosts_out = {}
    for ref, p in hosts:
        pgs = {}
        for pg in p.get("config.network.portgroup") or []:
            pgs[pg.spec.name] = HostPortGroup(
                name=pg.spec.name, vswitch=pg.spec.vswitchName,
                vlan=int(pg.spec.vlanId or 0),
                security=security_of(pg.spec.policy))
        hosts_out[ref._moId] = Host(
            moid=ref._moId, name=p.get("name", ref._moId),
            vswitches=frozenset(v.name for v in
                                p.get("config.network.vswitch") or []),
            portgroups=pgs,
            network_system=p.get("configManager.networkSystem"), ref=ref,
            vswitch_mtus={v.name: int(v.mtu or 1500) for v in
                          p.get("config.network.vswitch") or []})

    return Inventory(switches=switches, dvs_portgroups=dvpgs_out,
                     clusters=clusters, hosts=hosts_out, std_networks=std,
                     owner_field_key=field_key, custom_fields=has_fields,
                     network_folders=[p["networkFolder"]
                                      for _, p in datacenters
                                      if p.get("networkFolder")],
                     dv_ports=dict(dv_ports or {}))

"""Read what vCenter has, in a few batched calls, into plain dataclasses.

Each managed-object type is read with one container view and one
``RetrievePropertiesEx`` (continued while vCenter pages), never attribute by
attribute: reading 1,000 port groups that way costs 3 round trips instead of
3,000.  The result is a snapshot that the pure planner compares with the desired
state; nothing here changes vCenter.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from pyVmomi import vim, vmodl

from networking_vcenter.vsphere.session import Session

# The mark written into the description of every distributed port group we
# create.  It is set in the create spec itself, so a port group is never ours
# without it.  It names the deployment ([ml2_vcenter] deployment_name), so
# that two OpenStack deployments sharing a vCenter never touch each other's
# port groups, and the Neutron network the port group serves.
OWNER_TAG = "networking-vcenter"
_UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
_OWNER_RE = re.compile(OWNER_TAG + r" managed by (?P<dep>[A-Za-z0-9_.-]+): "
                       r"Neutron network (?P<net>" + _UUID + ")")
# Custom attribute marking standard networks (a HostPortGroup has no
# description); its value is "<deployment>/<network UUID>".
OWNER_FIELD = "networking-vcenter.network"
_VALUE_RE = re.compile(r"^(?P<dep>[A-Za-z0-9_.-]+)/(?P<net>" + _UUID + ")$")


@dataclasses.dataclass(frozen=True)
class Mark:
    """Who made a port group: a deployment, for a network."""

    deployment: str
    network_id: str


def owner_description(deployment: str, network_id: str, physnet: str,
                      vlan: int) -> str:
    tag = f"VLAN {vlan}" if vlan else "untagged"
    return (f"{OWNER_TAG} managed by {deployment}: Neutron network "
            f"{network_id} (physical network {physnet}, {tag}). Changes are "
            f"reverted.")


def mark_from_description(description: str | None) -> Mark | None:
    m = _OWNER_RE.search(description or "")
    return Mark(m.group("dep"), m.group("net")) if m else None


def owner_value(deployment: str, network_id: str) -> str:
    return f"{deployment}/{network_id}"


def mark_from_value(value: str | None) -> Mark | None:
    m = _VALUE_RE.match(value or "")
    return Mark(m.group("dep"), m.group("net")) if m else None


def owner(mark: Mark | None, deployment: str) -> str | None:
    """The network id, when the mark is this deployment's."""
    return mark.network_id if mark and mark.deployment == deployment \
        else None


@dataclasses.dataclass(frozen=True)
class Dvs:
    moid: str
    name: str
    uuid: str
    host_moids: frozenset[str]
    ref: Any = dataclasses.field(compare=False, repr=False)
    folder: Any = dataclasses.field(default=None, compare=False, repr=False)


@dataclasses.dataclass(frozen=True)
class DvsPortGroup:
    moid: str
    name: str
    key: str
    dvs_moid: str
    vlan: int | None        # None: a trunk or private VLAN, never ours
    description: str
    owner: str | None       # the network id, when marked by us
    vm_count: int
    ref: Any = dataclasses.field(compare=False, repr=False)
    mark: Mark | None = None  # anybody's networking-vcenter mark


@dataclasses.dataclass(frozen=True)
class HostPortGroup:
    name: str
    vswitch: str
    vlan: int


@dataclasses.dataclass(frozen=True)
class Host:
    moid: str
    name: str
    vswitches: frozenset[str]
    portgroups: dict[str, HostPortGroup]
    network_system: Any = dataclasses.field(compare=False, repr=False)
    ref: Any = dataclasses.field(default=None, compare=False, repr=False)


@dataclasses.dataclass(frozen=True)
class StdNetwork:
    """A standard port group as vCenter sees it: one object for all hosts."""

    moid: str
    name: str
    host_moids: frozenset[str]
    owner: str | None
    vm_count: int
    ref: Any = dataclasses.field(compare=False, repr=False)
    mark: Mark | None = None


@dataclasses.dataclass
class Inventory:
    """One snapshot of the vSphere objects this driver cares about."""

    switches: dict[str, list[Dvs]]                # name -> DVSs of that name
    dvs_portgroups: list[DvsPortGroup]
    clusters: dict[str, list[list[str]]]          # name -> host moids, per
                                                  # cluster of that name
    hosts: dict[str, Host]                        # moid -> host
    std_networks: dict[str, StdNetwork]           # name -> network
    owner_field_key: int | None                   # None: no custom fields
    network_folders: list[Any] = dataclasses.field(default_factory=list)

    def dvs(self, name: str) -> Dvs | None:
        found = self.switches.get(name) or []
        return found[0] if len(found) == 1 else None

    def dvs_by_moid(self, moid: str) -> Dvs | None:
        for group in self.switches.values():
            for dvs in group:
                if dvs.moid == moid:
                    return dvs
        return None


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
    try:
        spec = vmodl.query.PropertyCollector.FilterSpec(
            objectSet=object_set,
            propSet=[vmodl.query.PropertyCollector.PropertySpec(
                type=vimtype, pathSet=paths)])
        options = vmodl.query.PropertyCollector.RetrieveOptions()
        result = session.call(f"read {vimtype.__name__} ({what})",
                              pc.RetrievePropertiesEx, [spec], options)
        objects = []
        while result is not None:
            for obj in result.objects:
                props = {p.name: p.val for p in obj.propSet or []}
                objects.append((obj.obj, props))
            if not result.token:
                break
            result = session.call(f"read more {vimtype.__name__}",
                                  pc.ContinueRetrievePropertiesEx,
                                  result.token)
        return objects
    finally:
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


@dataclasses.dataclass(frozen=True)
class Scope:
    """What one network's reconcile needs to see, and nothing more.

    ``names``: the port group names the network can have; ``clusters``: the
    mapped clusters, whose hosts are the only ones read.
    """

    names: frozenset[str]
    clusters: frozenset[str]


def _vlan_of(spec: Any) -> int | None:
    vlan = getattr(spec, "vlan", None)
    if isinstance(vlan, vim.dvs.VmwareDistributedVirtualSwitch.VlanIdSpec):
        return int(vlan.vlanId)
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


def read(session: Session, field_key: int | None,
         deployment: str, scope: Scope | None = None) -> Inventory:
    """Read switches, port groups, clusters, hosts and standard networks.

    ``field_key`` is our custom attribute's key (see
    :func:`networking_vcenter.vsphere.switches.ensure_owner_field`), None
    where vSphere has no custom attributes.  Port groups count as owned
    (``owner`` set) only when marked by ``deployment``.  With a ``scope``,
    only the port groups of those names and the hosts of those clusters are
    read: the cost of one network's reconcile does not grow with vCenter.
    """
    def mark_of(custom_values: Any) -> Mark | None:
        for cv in custom_values or []:
            if field_key is not None and cv.key == field_key:
                return mark_from_value(cv.value)
        return None

    switches: dict[str, list[Dvs]] = {}
    folders: dict[str, Any] = {}    # where the switches' port groups live
    for ref, p in retrieve(session, vim.DistributedVirtualSwitch,
                           ["name", "uuid", "summary.hostMember", "parent"],
                           "distributed switches"):
        folders[p["parent"]._moId] = p["parent"]
        dvs = Dvs(moid=ref._moId, name=p["name"], uuid=p["uuid"],
                  host_moids=frozenset(h._moId for h in
                                       p.get("summary.hostMember") or []),
                  ref=ref, folder=p["parent"])
        switches.setdefault(dvs.name, []).append(dvs)

    network_folders = [p["networkFolder"] for _, p in retrieve(
        session, vim.Datacenter, ["networkFolder"], "datacenters")]

    dvpgs = []
    for ref, p in retrieve(session, vim.dvs.DistributedVirtualPortgroup,
                           ["name", "key", "config.distributedVirtualSwitch",
                            "config.defaultPortConfig", "config.description",
                            "vm"], "distributed port groups",
                           None if scope is None else list(find_children(
                               session, list(folders.values()), scope.names,
                               vim.dvs.DistributedVirtualPortgroup).values())):
        description = p.get("config.description") or ""
        mark = mark_from_description(description)
        dvpgs.append(DvsPortGroup(
            moid=ref._moId, name=p["name"], key=p["key"],
            dvs_moid=p["config.distributedVirtualSwitch"]._moId,
            vlan=_vlan_of(p.get("config.defaultPortConfig")),
            description=description,
            owner=owner(mark, deployment),
            vm_count=len(p.get("vm") or []), ref=ref, mark=mark))

    clusters: dict[str, list[list[str]]] = {}
    host_refs: dict[str, list[Any]] = {}
    for ref, p in retrieve(session, vim.ComputeResource, ["name", "host"],
                           "clusters"):
        clusters.setdefault(p["name"], []).append(
            [h._moId for h in p.get("host") or []])
        host_refs.setdefault(p["name"], []).extend(p.get("host") or [])

    std: dict[str, StdNetwork] = {}
    paths = ["name", "host", "vm"] + (["customValue"] if field_key is not None
                                      else [])
    for ref, p in retrieve(session, vim.Network, paths, "networks",
                           None if scope is None else list(find_children(
                               session, network_folders, scope.names,
                               vim.Network).values())):
        if isinstance(ref, (vim.dvs.DistributedVirtualPortgroup,
                            vim.OpaqueNetwork)):
            continue
        mark = mark_of(p.get("customValue"))
        std[p["name"]] = StdNetwork(
            moid=ref._moId, name=p["name"],
            host_moids=frozenset(h._moId for h in p.get("host") or []),
            owner=owner(mark, deployment),
            vm_count=len(p.get("vm") or []), ref=ref, mark=mark)

    # Hosts last: a port group another worker is creating right now is then
    # seen on the hosts at least as far as its Network was seen above, which
    # is what recognising our own unmarked port group relies on (plan.py).
    # Scoped: the mapped clusters' hosts only -- unless one of them is not a
    # cluster name, when all hosts are read so that start-up validation
    # reports it exactly as a full read would.
    wanted_hosts = None
    if scope is not None and all(c in host_refs for c in scope.clusters):
        wanted_hosts = [h for c in sorted(scope.clusters)
                        for h in host_refs[c]]
    hosts = {}
    for ref, p in retrieve(session, vim.HostSystem,
                           ["name", "configManager.networkSystem",
                            "config.network.vswitch",
                            "config.network.portgroup"], "hosts",
                           wanted_hosts):
        pgs = {}
        for pg in p.get("config.network.portgroup") or []:
            pgs[pg.spec.name] = HostPortGroup(
                name=pg.spec.name, vswitch=pg.spec.vswitchName,
                vlan=int(pg.spec.vlanId or 0))
        hosts[ref._moId] = Host(
            moid=ref._moId, name=p["name"],
            vswitches=frozenset(v.name for v in
                                p.get("config.network.vswitch") or []),
            portgroups=pgs,
            network_system=p.get("configManager.networkSystem"), ref=ref)

    return Inventory(switches=switches, dvs_portgroups=dvpgs,
                     clusters=clusters, hosts=hosts, std_networks=std,
                     owner_field_key=field_key,
                     network_folders=network_folders)

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

"""What vCenter has, as plain dataclasses; ownership marks.

The live replica (:mod:`networking_vcenter.vsphere.replica`) holds vCenter's
objects as properties and turns them into an :class:`Inventory` with
:func:`~networking_vcenter.vsphere.reads.from_objects`, which the pure
planner compares with the desired state.  No pyVmomi here, not even
indirectly: the pure modules (desired, plan, portsettings) take their data
types from this one; reading vCenter and converting its objects is
:mod:`~networking_vcenter.vsphere.reads`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from typing import Any

# The mark written into the description of every distributed port group we
# create.  It is set in the create spec itself, so a port group is never ours
# without it.  It names the deployment ([ml2_vcenter] deployment_name), so
# that two OpenStack deployments sharing a vCenter never touch each other's
# port groups, and the Neutron network the port group serves.
OWNER_TAG = "networking-vcenter"
_UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
UUID_RE = re.compile("^" + _UUID + "$")
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


# A port group's VLAN setting: a VLAN ID (0: untagged; on a standard
# vSwitch 4095: every VLAN, the guest tags), or a distributed port group's
# trunk as inclusive (first, last) ranges.
Vlan = int | tuple[tuple[int, int], ...]
TRUNK_ALL: Vlan = ((0, 4094),)      # a DVS trunk of every VLAN
VSWITCH_ALL = 4095                  # a standard port group of every VLAN


def vlan_text(vlan: Vlan | None) -> str:
    """A VLAN setting as an operator reads it."""
    if vlan is None:
        return "private VLAN or none"
    if isinstance(vlan, tuple):
        return "trunk VLANs " + (",".join(
            f"{a}-{b}" if a != b else str(a) for a, b in vlan) or "(none)")
    if vlan == VSWITCH_ALL:
        return "all VLANs (4095)"
    return f"VLAN {vlan}" if vlan else "untagged"


def owner_description(deployment: str, network_id: str, physnet: str,
                      vlan: Vlan) -> str:
    tag = vlan_text(vlan)
    return (f"{OWNER_TAG} managed by {deployment}: Neutron network "
            f"{network_id} (physical network {physnet}, {tag}). Changes are "
            f"reverted.")


# What a port group's defaults (blocked, traffic filter) were last written
# with by the shared filter (``shared_security_filter``), as a digest in
# its description: the replica then need not read (parse) the filter
# itself, which holds the rules of every sharing port.  The digest comes
# with the configVersion the write was made on ("<digest>@<version>"):
# vCenter raises configVersion by one per change, so a group seen at any
# other version than the next one was changed again after that write (a
# hand edit right behind it, say) and its digest alone no longer tells
# what it holds.
_DEFAULTS_RE = re.compile(
    r" Port defaults (?P<token>[0-9a-f]{20})(?:@(?P<base>[0-9]+))?\.")


def defaults_token(blocked: bool, rules: tuple[TrafficRule, ...]) -> str:
    """The digest of a port group's defaults: blocked and its filter."""
    digest = hashlib.sha256(repr((blocked, rules)).encode())
    return digest.hexdigest()[:20]


def defaults_token_of(description: str | None) -> str | None:
    m = _DEFAULTS_RE.search(description or "")
    return m.group("token") if m else None


def defaults_base_of(description: str | None) -> str | None:
    """The configVersion the defaults its description names were written
    on; None: not said (written by an earlier version, or never)."""
    m = _DEFAULTS_RE.search(description or "")
    return m.group("base") if m else None


def with_defaults_token(description: str, token: str,
                        base: str | None = None) -> str:
    """``description`` naming ``token`` (in place of any other), written
    on configVersion ``base``."""
    on = f"@{base}" if base is not None and base.isdigit() else ""
    return _DEFAULTS_RE.sub("", description or "") + \
        f" Port defaults {token}{on}."


def written_last(base: str | None, config_version: str | None) -> bool:
    """Whether a group at ``config_version`` holds the write made on
    configVersion ``base`` and nothing since (one change: that write)."""
    return base is not None and (config_version or "").isdigit() and \
        int(config_version) == int(base) + 1


def named_since(base: str | None, config_version: str | None) -> bool:
    """Whether a digest named on configVersion ``base`` was named at or
    after ``config_version`` (the version it was last found true at)."""
    return base is not None and (config_version or "").isdigit() and \
        int(base) >= int(config_version)


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
    version: str | None = None   # config.productInfo.version ("7.0.0")
    max_mtu: int | None = None   # config.maxMtu (None: not a VMware switch)


# The first switch version with DVSMacManagementPolicy (MAC learning).
MAC_MANAGEMENT_VERSION = (6, 6, 0)


def _version(text: str | None) -> tuple[int, ...]:
    parts = []
    for part in (text or "").split("."):
        digits = "".join(c for c in part if c.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def mac_management_supported(dvs: Dvs) -> bool:
    """Whether the switch has MAC management (``macManagementPolicy``):
    its product version is 6.6.0 or later.  Unknown version: no."""
    version = _version(dvs.version)
    return bool(version) and version >= MAC_MANAGEMENT_VERSION


@dataclasses.dataclass(frozen=True)
class DvsPortGroup:
    moid: str
    name: str
    key: str
    dvs_moid: str
    vlan: Vlan | None       # None: a private VLAN (or none), never ours
    description: str
    owner: str | None       # the network id, when marked by us
    vm_count: int
    ref: Any = dataclasses.field(compare=False, repr=False)
    mark: Mark | None = None  # anybody's networking-vcenter mark
    # Per-port settings (issue 8): whether the group is static and lets
    # its ports override what the driver sets on them (see
    # :func:`ports_ready_of`); its size and config version, for a grow or
    # a conversion in place.
    ports_ready: bool = True
    num_ports: int = 0
    config_version: str | None = None
    mac_override: bool = False   # macManagementOverrideAllowed too
    port_keys: tuple[str, ...] = ()
    # Whether the ports it has not been told about are closed: its default
    # port config carries the drop-all traffic filter (issue 15, see
    # :func:`.reads.default_closed_of`).  A group of ours without it is
    # converted in place, like one that is not ``ports_ready``.
    default_closed: bool = True
    # shared_security_filter: the digest of the defaults last written
    # (:func:`defaults_token`), from the description; None: never written.
    defaults_token: str | None = None
    # ... and the configVersion that write was made on.
    defaults_base: str | None = None

    @property
    def defaults_written_last(self) -> bool:
        """Whether the write naming ``defaults_token`` is the group's last
        change (:func:`written_last`)."""
        return written_last(self.defaults_base, self.config_version)


# The port overrides a group must allow for the settings the driver puts on
# its ports (blocked, traffic filter, security, shaping, the VLAN ranges of a
# trunk parent).  MAC management (macManagementOverrideAllowed, vim 6.7) is
# asked for too but not required: an older API session cannot even send it.
PORT_OVERRIDES = ("blockOverrideAllowed", "shapingOverrideAllowed",
                  "trafficFilterOverrideAllowed",
                  "securityPolicyOverrideAllowed", "vlanOverrideAllowed")


def ports_ready_of(pg_type: str | None, policy: Any) -> bool:
    """Whether a distributed port group (``config.type``, ``config.policy``)
    can hold per-port settings as the driver makes them: static (early
    binding), the :data:`PORT_OVERRIDES` allowed, and the settings kept when
    a NIC disconnects (``portConfigResetAtDisconnect`` off)."""
    if pg_type != "earlyBinding" or policy is None:
        return False
    return all(getattr(policy, flag, False) for flag in PORT_OVERRIDES) \
        and not getattr(policy, "portConfigResetAtDisconnect", True)


# A standard port group's security policy: (allowPromiscuous, macChanges,
# forgedTransmits), each None where the vSwitch's applies.
Security = tuple[bool | None, bool | None, bool | None]


@dataclasses.dataclass(frozen=True)
class HostPortGroup:
    name: str
    vswitch: str
    vlan: int
    security: Security | None = None     # None: the vSwitch's throughout


def security_of(policy: Any) -> Security | None:
    """A host port group's own security policy (``spec.policy``)."""
    sec = getattr(policy, "security", None)
    if sec is None:
        return None
    found = (sec.allowPromiscuous, sec.macChanges, sec.forgedTransmits)
    return None if found == (None, None, None) else found


@dataclasses.dataclass(frozen=True)
class Host:
    moid: str
    name: str
    vswitches: frozenset[str]
    portgroups: dict[str, HostPortGroup]
    network_system: Any = dataclasses.field(compare=False, repr=False)
    ref: Any = dataclasses.field(default=None, compare=False, repr=False)
    vswitch_mtus: dict[str, int] = dataclasses.field(default_factory=dict)
                                  # vSwitch name -> its mtu


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
    owner_field_key: int | None                   # None: not defined (yet)
    custom_fields: bool = True                    # False: standalone ESXi,
                                                  # ownership by name
    network_folders: list[Any] = dataclasses.field(default_factory=list)
    # The ports of our distributed port groups, by port group key; a group
    # absent here has not been read (yet).
    dv_ports: dict[str, tuple["DvPort", ...]] = dataclasses.field(
        default_factory=dict)

    def dvs(self, name: str) -> Dvs | None:
        found = self.switches.get(name) or []
        return found[0] if len(found) == 1 else None

    def dvs_by_moid(self, moid: str) -> Dvs | None:
        for group in self.switches.values():
            for dvs in group:
                if dvs.moid == moid:
                    return dvs
        return None


def merge_ranges(ranges: Any) -> tuple[tuple[int, int], ...]:
    """Inclusive ranges, sorted, with overlapping and adjacent ones joined:
    one trunk has one form however it was written."""
    out: list[list[int]] = []
    for first, last in sorted(ranges):
        if out and first <= out[-1][1] + 1:
            out[-1][1] = max(out[-1][1], last)
        else:
            out.append([first, last])
    return tuple((a, b) for a, b in out)


def field_key_of(fields: Any) -> int | None:
    """Key of our custom attribute among CustomFieldsManager.field."""
    for field in fields or []:
        if field.name == OWNER_FIELD:
            return field.key
    return None


def mark_of(custom_values: Any, field_key: int | None) -> Mark | None:
    """Our mark among an entity's custom values."""
    if field_key is None:
        return None
    for cv in custom_values or []:
        if cv.key == field_key:
            return mark_from_value(cv.value)
    return None


# -- distributed ports ------------------------------------------------------
#
# What one DV port holds, as plain data: the desired side (derived from a
# Neutron port by :mod:`networking_vcenter.reconcile.portsettings`) and the read
# side (a port's *own* settings as FetchDVPorts shows them, converted by
# :mod:`networking_vcenter.vsphere.ports`) compare equal when nothing needs
# to change.  A field left None is not set on the port: the port group's
# value applies (vSphere's ``inherited = true``).

# The traffic filter's directions, as vSphere names them.
INCOMING = "incomingPackets"
OUTGOING = "outgoingPackets"


@dataclasses.dataclass(frozen=True)
class TrafficRule:
    """One ``DvsTrafficRule`` with at most one IP qualifier.

    Addresses are CIDRs in ``ipaddress`` text form (a host is /32 or /128;
    "0.0.0.0/0" or "::/0" say "any address of that family"); None: any
    address of any family.  Ports are inclusive (first, last) ranges; a
    single port is (p, p).  The rule's sequence is its position in
    :attr:`PortSettings.rules` (first match wins).

    ``source_mac`` / ``destination_mac`` (lower-case colon form,
    "fa:16:3e:00:00:01"; None: any MAC) add a MAC qualifier, ANDed with
    the IP one: a port group's shared filter names the sending port by its
    source MAC (forged transmits rejected) and the receiving port by its
    destination MAC.
    """

    direction: str                       # INCOMING, OUTGOING
    action: str                          # "accept", "drop"
    protocol: int | None = None          # IP protocol number; None: any
    source: str | None = None
    source_negated: bool = False
    destination: str | None = None
    destination_negated: bool = False
    source_ports: tuple[int, int] | None = None
    destination_ports: tuple[int, int] | None = None
    description: str = ""
    source_mac: str | None = None
    destination_mac: str | None = None


@dataclasses.dataclass(frozen=True)
class Shaping:
    """``DVSTrafficShapingPolicy``: enabled False means "no limit"."""

    enabled: bool
    average_bps: int = 0
    peak_bps: int = 0
    burst_bytes: int = 0


@dataclasses.dataclass(frozen=True)
class PortSettings:
    """The settings of one DV port this driver manages (None: inherited
    from the port group).

    ``rules`` () means "no traffic filter" set on the port (port security
    off); None leaves the group's.  ``mac_learning`` maps to the 6.6+
    MAC management policy where the switch has it.  ``trunk_vlans``: the
    VLAN ranges ``(first, last)`` of a trunk port (VLAN guest tagging),
    None: the group's VLAN; read back as () when the port holds a VLAN of
    its own that is not a trunk (never one of ours: it is reset).
    """

    blocked: bool | None = None
    rules: tuple[TrafficRule, ...] | None = None
    allow_promiscuous: bool | None = None
    mac_changes: bool | None = None
    forged_transmits: bool | None = None
    mac_learning: bool | None = None
    in_shaping: Shaping | None = None     # VM -> switch
    out_shaping: Shaping | None = None    # switch -> VM
    trunk_vlans: tuple[tuple[int, int], ...] | None = None


INHERITED = PortSettings()


@dataclasses.dataclass(frozen=True)
class DvPort:
    """One port of a distributed port group, as FetchDVPorts shows it."""

    key: str
    dvs_uuid: str
    portgroup_key: str
    name: str                  # our reservation: the Neutron port id
    config_version: str
    connected: bool            # a VM NIC is its connectee
    vm_moid: str | None = None
    mac: str | None = None     # the connected NIC's MAC, when known
    settings: PortSettings = INHERITED

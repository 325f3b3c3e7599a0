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

"""Distributed ports: their settings as plain data, batched reads and writes.

A Neutron port on a distributed switch gets a DV port of its static port
group; what the port carries (traffic filter, security, shaping, blocked) is
the port's *own* settings (``VMwareDVSPortSetting``), the rest comes from
the group.  This module translates between
:class:`~networking_vcenter.vsphere.inventory.PortSettings` (plain data, the
planner's side) and pyVmomi, and does the three port operations in as few
round trips as vSphere allows:

* :func:`fetch_ports` -- one ``FetchDVPorts`` per switch, for any number of
  port groups (and :func:`fetch_port_keys`, for ports by key); vCenter
  answers each port's effective settings, a filter it inherits with all
  its group's rules: those are passed over by expat, not built into
  pyVmomi objects (:class:`_OwnFiltersOnly`; ~33 us a rule instead of
  ~0.5 ms, bench/RESULTS.md);
* :func:`reconfigure_ports` -- one ``ReconfigureDVPort_Task`` for any number
  of ports, all or nothing, each port's ``configVersion`` checked by vCenter
  (a port changed meanwhile fails the whole task with ConcurrentAccess,
  raised as :class:`~networking_vcenter.exceptions.ConcurrentModification`);
* :func:`grow_port_group` -- one ``ReconfigureDVPortgroup_Task`` adding free
  ports to a static group.

Conventions (one place, so that reads and writes agree):

* a :class:`PortSettings` field that is None is sent as ``inherited=true``
  (vSphere drops the port's own value; the group's applies), and a port
  setting shown ``inherited`` reads back as None: ``settings_of`` is the
  exact inverse of ``setting_spec`` for what a port holds itself;
* rules get sequences 10, 20, 30... in their order (first match wins; the
  gaps leave an operator room, and are not read back);
* a rule's IP part is always one ``DvsIpNetworkRuleQualifier``, even when it
  says nothing (any protocol, any address): it then matches every IP packet
  and nothing else, so a final "drop all" never drops ARP;
* a rule with ``source_mac`` or ``destination_mac`` also gets one
  ``DvsMacNetworkRuleQualifier`` (``SingleMac`` addresses, nothing else):
  vSphere ANDs the qualifiers of a rule.  Read back, only that shape is
  understood (a MAC range, a negated MAC, a MAC qualifier with a protocol
  or VLAN: ValueError, as any other unknown shape);
* ``rules=()`` is a filter set on the port with an empty, disabled ruleset
  (no filtering, whatever the group says); None leaves the group's, which
  for our groups is :data:`CLOSED_RULES` (all IP dropped);
* ``trunk_vlans`` goes to ``vlan`` as a ``TrunkVlanSpec`` (one
  ``NumericRange`` per range); None is sent as an inherited ``VlanIdSpec``
  (the group's VLAN applies again).  A port's own VLAN that is not a trunk
  (set by hand) reads back as ``()``, so that it is reset;
* the security booleans go to ``securityPolicy``; on switches with MAC
  management (6.6.0 and later,
  :func:`~networking_vcenter.vsphere.inventory.mac_management_supported`)
  they are repeated in ``macManagementPolicy`` with ``mac_learning``.
  That policy's booleans cannot be "inherited" one by one: one left None
  there is sent as False (reject, our groups' default).  It is a vim 6.7
  type: a session speaking an older API version (``session.API_NAMESPACE``)
  leaves it out of the request, and the switch keeps what it had.

Nothing here imports the reconciler.
"""

from __future__ import annotations

import dataclasses
import functools

import ipaddress
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from oslo_log import log as logging
from pyVmomi import SoapAdapter, vim

from networking_vcenter.vsphere import inventory
from networking_vcenter.vsphere.inventory import (
    DvPort, PortSettings, Shaping, TrafficRule)
from networking_vcenter.vsphere.session import (
    Session, immutable_rule, rule_at)

LOG = logging.getLogger(__name__)

VmwareDVS = vim.dvs.VmwareDistributedVirtualSwitch
DVPort = vim.dvs.DistributedVirtualPort
Rule = vim.dvs.TrafficRule

# The only filter agent of vSphere's own traffic filtering.
FILTER_AGENT = "dvfilter-generic-vmware"
# Rule n (from 0) gets sequence (n + 1) * SEQUENCE_STEP.
SEQUENCE_STEP = 10
# Ports added at a time to a group that is full: as vCenter's auto-expand.
GROW_BY = 8
# vSphere's own defaults when MAC learning is turned on.
MAC_LEARNING_LIMIT = 4096
MAC_LEARNING_LIMIT_POLICY = "DROP"

_ACTIONS = {"accept": Rule.AcceptAction, "drop": Rule.DropAction}

# One change of one port: (key, configVersion read with it, new name or None
# to keep it, new settings or None to keep them).
PortChange = tuple[str, str, "str | None", "PortSettings | None"]


# -- settings -> pyVmomi ----------------------------------------------------

def _bool(value: bool | None) -> vim.BoolPolicy:
    if value is None:
        return vim.BoolPolicy(inherited=True)
    return vim.BoolPolicy(inherited=False, value=bool(value))


def _long(value: int) -> vim.LongPolicy:
    return vim.LongPolicy(inherited=False, value=int(value))


def _address(cidr: str, negated: bool) -> Any:
    net = ipaddress.ip_network(cidr, strict=False)
    if net.prefixlen == net.max_prefixlen:
        return vim.SingleIp(address=str(net.network_address), negate=negated)
    return vim.IpRange(addressPrefix=str(net.network_address),
                       prefixLength=net.prefixlen, negate=negated)


def _port_range(ports: tuple[int, int]) -> Any:
    first, last = ports
    if first == last:
        return Rule.SingleIpPort(portNumber=int(first))
    return Rule.IpPortRange(startPortNumber=int(first),
                            endPortNumber=int(last))


@functools.lru_cache(maxsize=16384)
def rule_spec(rule: TrafficRule, sequence: int) -> vim.dvs.TrafficRule:
    """One ``DvsTrafficRule`` with its IP qualifier (and MAC qualifier).
    Cached: ports that share security groups share most rules, and
    building pyVmomi objects is most of the cost of a spec.  The objects
    are only serialized, never changed: a copy at ``sequence`` of the
    rule's one template (:func:`_rule_template`), declared immutable with
    it (:func:`session.rule_at
    <networking_vcenter.vsphere.session.rule_at>`), so that the session
    writes the rule's XML text once, not once per request nor per
    sequence (a rule inserted shifts the sequences of all after it)."""
    return rule_at(_rule_template(rule), sequence)


@functools.lru_cache(maxsize=16384)
def _rule_template(rule: TrafficRule) -> vim.dvs.TrafficRule:
    """The pyVmomi objects of ``rule``, at no sequence."""
    qualifier = Rule.IpQualifier()
    if rule.protocol is not None:
        qualifier.protocol = vim.IntExpression(value=int(rule.protocol))
    if rule.source is not None:
        qualifier.sourceAddress = _address(rule.source, rule.source_negated)
    if rule.destination is not None:
        qualifier.destinationAddress = _address(rule.destination,
                                                rule.destination_negated)
    if rule.source_ports is not None:
        qualifier.sourceIpPort = _port_range(rule.source_ports)
    if rule.destination_ports is not None:
        qualifier.destinationIpPort = _port_range(rule.destination_ports)
    qualifiers = [qualifier]
    if rule.source_mac is not None or rule.destination_mac is not None:
        mac = Rule.MacQualifier()
        if rule.source_mac is not None:
            mac.sourceAddress = vim.SingleMac(address=rule.source_mac)
        if rule.destination_mac is not None:
            mac.destinationAddress = vim.SingleMac(
                address=rule.destination_mac)
        qualifiers.append(mac)
    try:
        action = _ACTIONS[rule.action]()
    except KeyError:
        raise ValueError(f"traffic rule action {rule.action!r}: only "
                         f"{sorted(_ACTIONS)}") from None
    return immutable_rule(Rule(
        direction=rule.direction, description=rule.description or None,
        action=action, qualifier=qualifiers))


def clear_rule_caches() -> None:
    """Forget every rule built (tests and benchmarks: a cold start)."""
    rule_spec.cache_clear()
    _rule_template.cache_clear()


def _filter(rules: tuple[TrafficRule, ...] | None) -> Any:
    if rules is None:
        return DVPort.FilterPolicy(inherited=True)
    ruleset = vim.dvs.TrafficRuleset(
        enabled=bool(rules),
        rules=[rule_spec(r, (i + 1) * SEQUENCE_STEP)
               for i, r in enumerate(rules)])
    return DVPort.FilterPolicy(inherited=False, filterConfig=[
        DVPort.TrafficFilterConfig(agentName=FILTER_AGENT, inherited=False,
                                   trafficRuleset=ruleset)])


def filter_policy(rules: tuple[TrafficRule, ...]) -> Any:
    """A filter policy holding ``rules``, set (not inherited): a port
    group's default (``switches.group_defaults_spec``)."""
    return _filter(tuple(rules))


# What every port of our groups carries until the driver gives it settings
# of its own -- a free port, a released one, a NIC attached before (or
# without) the driver: all IPv4 and all IPv6 dropped, both ways ("fail
# closed").  Non-IP frames (ARP) pass: each rule has an IP qualifier.  The
# group's ``defaultPortConfig`` carries it (``switches.default_port_config``);
# a port's own filter, even ``rules=()``, overrides it.
CLOSED_RULES = tuple(
    TrafficRule(direction, "drop", source=any_ip,
                description=f"networking-vcenter: port not configured, "
                            f"drop all IPv{family}")
    for direction in (inventory.INCOMING, inventory.OUTGOING)
    for family, any_ip in ((4, "0.0.0.0/0"), (6, "::/0")))


def closed_filter() -> Any:
    """The filter policy of :data:`CLOSED_RULES`, built as a port's own
    (:func:`_filter`): for a port group's default port config."""
    return _filter(CLOSED_RULES)


def is_closed(policy: Any) -> bool:
    """Whether a filter policy (a port group's
    ``defaultPortConfig.filterPolicy``) is :func:`closed_filter`: set (not
    inherited), enabled, exactly :data:`CLOSED_RULES` in order (rule
    descriptions aside).  Anything this module cannot read (a group made
    by someone else with qualifiers of other kinds) is not."""
    try:
        rules = _rules_of(policy)
    except (ValueError, TypeError, AttributeError):
        return False
    return rules is not None and tuple(
        dataclasses.replace(r, description="") for r in rules) == _CLOSED


_CLOSED = tuple(dataclasses.replace(r, description="") for r in CLOSED_RULES)


def _shaping(shaping: Shaping | None) -> Any:
    if shaping is None:
        return DVPort.TrafficShapingPolicy(inherited=True)
    return DVPort.TrafficShapingPolicy(
        inherited=False,
        enabled=vim.BoolPolicy(inherited=False, value=bool(shaping.enabled)),
        averageBandwidth=_long(shaping.average_bps),
        peakBandwidth=_long(shaping.peak_bps),
        burstSize=_long(shaping.burst_bytes))


def _security(s: PortSettings) -> Any:
    values = (s.allow_promiscuous, s.mac_changes, s.forged_transmits)
    if all(v is None for v in values):
        return VmwareDVS.SecurityPolicy(inherited=True)
    return VmwareDVS.SecurityPolicy(
        inherited=False, allowPromiscuous=_bool(s.allow_promiscuous),
        macChanges=_bool(s.mac_changes),
        forgedTransmits=_bool(s.forged_transmits))


def _mac_management(s: PortSettings) -> Any:
    values = (s.allow_promiscuous, s.mac_changes, s.forged_transmits,
              s.mac_learning)
    if all(v is None for v in values):
        return VmwareDVS.MacManagementPolicy(inherited=True)
    if s.mac_learning is None:
        learning = VmwareDVS.MacLearningPolicy(inherited=True, enabled=False)
    elif s.mac_learning:
        learning = VmwareDVS.MacLearningPolicy(
            inherited=False, enabled=True, allowUnicastFlooding=True,
            limit=MAC_LEARNING_LIMIT, limitPolicy=MAC_LEARNING_LIMIT_POLICY)
    else:
        learning = VmwareDVS.MacLearningPolicy(inherited=False, enabled=False)
    return VmwareDVS.MacManagementPolicy(
        inherited=False, allowPromiscuous=bool(s.allow_promiscuous),
        macChanges=bool(s.mac_changes),
        forgedTransmits=bool(s.forged_transmits),
        macLearningPolicy=learning)


def _vlan(ranges: tuple[tuple[int, int], ...] | None) -> Any:
    if ranges is None:
        return VmwareDVS.VlanIdSpec(inherited=True, vlanId=0)
    return VmwareDVS.TrunkVlanSpec(inherited=False, vlanId=[
        vim.NumericRange(start=int(first), end=int(last))
        for first, last in ranges])


def setting_spec(settings: PortSettings, mac_management: bool
                 ) -> vim.dvs.VmwareDistributedVirtualSwitch.VmwarePortConfigPolicy:
    """The port setting that gives a port exactly ``settings`` as its own
    (None fields: inherited from the group).  Everything
    :class:`PortSettings` does not hold is left unset: unchanged."""
    spec = VmwareDVS.VmwarePortConfigPolicy(
        vlan=_vlan(settings.trunk_vlans),
        blocked=_bool(settings.blocked),
        filterPolicy=_filter(settings.rules),
        securityPolicy=_security(settings),
        inShapingPolicy=_shaping(settings.in_shaping),
        outShapingPolicy=_shaping(settings.out_shaping))
    if mac_management:
        spec.macManagementPolicy = _mac_management(settings)
    return spec


# -- pyVmomi -> settings ----------------------------------------------------

def _own(policy: Any) -> bool:
    """A policy the port holds itself (set, not inherited)."""
    return policy is not None and not getattr(policy, "inherited", False)


def _own_bool(policy: Any) -> bool | None:
    if not _own(policy) or policy.value is None:
        return None
    return bool(policy.value)


def _cidr(expr: Any) -> tuple[str | None, bool]:
    if expr is None:
        return None, False
    negated = bool(getattr(expr, "negate", False))
    if isinstance(expr, vim.SingleIp):
        addr = ipaddress.ip_address(expr.address)
        return str(ipaddress.ip_network(addr)), negated
    if isinstance(expr, vim.IpRange):
        addr = ipaddress.ip_address(expr.addressPrefix)
        length = expr.prefixLength
        if length is None:
            # Optional on the wire, and a zero is left out (the simulator
            # does): "0.0.0.0" or "::" alone is the whole family.
            length = 0 if int(addr) == 0 else addr.max_prefixlen
        return str(ipaddress.ip_network(f"{addr}/{length}", strict=False)), \
            negated
    raise ValueError(f"unknown address qualifier {type(expr).__name__}")


def _ports(expr: Any) -> tuple[int, int] | None:
    if expr is None:
        return None
    if isinstance(expr, Rule.SingleIpPort):
        return int(expr.portNumber), int(expr.portNumber)
    if isinstance(expr, Rule.IpPortRange):
        return int(expr.startPortNumber), int(expr.endPortNumber)
    raise ValueError(f"unknown port qualifier {type(expr).__name__}")


def _mac(expr: Any) -> str | None:
    """A MAC qualifier's address as lower-case colon text (None: any);
    only a single, not negated MAC can be read."""
    if expr is None:
        return None
    if not isinstance(expr, vim.SingleMac):
        raise ValueError(f"unknown MAC qualifier {type(expr).__name__}")
    if expr.negate:
        raise ValueError(f"negated MAC qualifier {expr.address!r}")
    digits = "".join(c for c in (expr.address or "").lower()
                     if c in "0123456789abcdef")
    if len(digits) != 12:
        raise ValueError(f"MAC qualifier address {expr.address!r}")
    return ":".join(digits[i:i + 2] for i in range(0, 12, 2))


def _mac_qualifier(rule: vim.dvs.TrafficRule) -> tuple[str | None,
                                                         str | None]:
    """(source MAC, destination MAC) of a rule's MAC qualifier, if any;
    a MAC qualifier that says more (protocol, VLAN) cannot be read."""
    macs = [q for q in rule.qualifier or []
            if isinstance(q, Rule.MacQualifier)]
    if not macs:
        return None, None
    if len(macs) > 1:
        raise ValueError("more than one MAC qualifier")
    (q,) = macs
    if q.protocol is not None or q.vlanId is not None:
        raise ValueError("MAC qualifier with a protocol or VLAN")
    return _mac(q.sourceAddress), _mac(q.destinationAddress)


def rule_of(rule: vim.dvs.TrafficRule) -> TrafficRule:
    """The plain form of a ``DvsTrafficRule`` (its IP qualifier and its MAC
    qualifier, if any)."""
    if isinstance(rule.action, Rule.AcceptAction):
        action = "accept"
    elif isinstance(rule.action, Rule.DropAction):
        action = "drop"
    else:
        action = type(rule.action).__name__
    source_mac, destination_mac = _mac_qualifier(rule)
    ip = next((q for q in rule.qualifier or []
               if isinstance(q, Rule.IpQualifier)), None)
    if ip is None:
        return TrafficRule(direction=rule.direction, action=action,
                           description=rule.description or "",
                           source_mac=source_mac,
                           destination_mac=destination_mac)
    source, source_negated = _cidr(ip.sourceAddress)
    destination, destination_negated = _cidr(ip.destinationAddress)
    return TrafficRule(
        direction=rule.direction, action=action,
        protocol=None if ip.protocol is None else int(ip.protocol.value),
        source=source, source_negated=source_negated,
        destination=destination, destination_negated=destination_negated,
        source_ports=_ports(ip.sourceIpPort),
        destination_ports=_ports(ip.destinationIpPort),
        description=rule.description or "",
        source_mac=source_mac, destination_mac=destination_mac)


def _rules_of(policy: Any) -> tuple[TrafficRule, ...] | None:
    if not _own(policy):
        return None
    for config in policy.filterConfig or []:
        if config.agentName != FILTER_AGENT:
            continue
        ruleset = config.trafficRuleset
        if ruleset is None or not ruleset.enabled:
            return ()
        rules = sorted(ruleset.rules or [], key=lambda r: r.sequence or 0)
        return tuple(rule_of(r) for r in rules)
    return ()


def _shaping_of(policy: Any) -> Shaping | None:
    if not _own(policy):
        return None

    def value(p: Any) -> int:
        return int(p.value) if p is not None and p.value is not None else 0

    return Shaping(enabled=bool(policy.enabled and policy.enabled.value),
                   average_bps=value(policy.averageBandwidth),
                   peak_bps=value(policy.peakBandwidth),
                   burst_bytes=value(policy.burstSize))


def _vlan_of(policy: Any) -> tuple[tuple[int, int], ...] | None:
    if not _own(policy):
        return None
    if isinstance(policy, VmwareDVS.TrunkVlanSpec):
        return tuple(sorted((int(r.start), int(r.end))
                            for r in policy.vlanId or []))
    return ()


def group_defaults_of(session: Session, pg_ref: Any, what: str
                      ) -> tuple[bool, tuple[TrafficRule, ...], str]:
    """A distributed port group's defaults as vCenter holds them now:
    (blocked, the rules of its traffic filter, its description), read
    together and parsed whole -- thousands of rules where a shared filter
    lives (~0.5 ms each): only where its description's digest may not tell
    the truth (a change of the group that did not come with a digest of
    ours)."""
    config = session.call(what, getattr, pg_ref, "config")
    default = getattr(config, "defaultPortConfig", None)
    blocked = getattr(getattr(default, "blocked", None), "value", None)
    rules = _rules_of(getattr(default, "filterPolicy", None))
    return bool(blocked), rules or (), getattr(config, "description",
                                               None) or ""


def settings_of(setting: Any) -> PortSettings:
    """A port's own settings, as FetchDVPorts shows them (what it inherits
    is None): the inverse of :func:`setting_spec`."""
    if setting is None:
        return inventory.INHERITED
    security = getattr(setting, "securityPolicy", None)
    if not _own(security):
        security = None
    mac = getattr(setting, "macManagementPolicy", None)
    learning = mac.macLearningPolicy if _own(mac) else None
    return PortSettings(
        blocked=_own_bool(getattr(setting, "blocked", None)),
        rules=_rules_of(getattr(setting, "filterPolicy", None)),
        allow_promiscuous=None if security is None
        else _own_bool(security.allowPromiscuous),
        mac_changes=None if security is None
        else _own_bool(security.macChanges),
        forged_transmits=None if security is None
        else _own_bool(security.forgedTransmits),
        mac_learning=bool(learning.enabled) if _own(learning) else None,
        in_shaping=_shaping_of(getattr(setting, "inShapingPolicy", None)),
        out_shaping=_shaping_of(getattr(setting, "outShapingPolicy", None)),
        trunk_vlans=_vlan_of(getattr(setting, "vlan", None)))


def port_of(p: vim.dvs.DistributedVirtualPort) -> DvPort:
    """The plain form of one port of FetchDVPorts."""
    config = p.config
    connectee = p.connectee
    vm = getattr(connectee, "connectedEntity", None) if connectee else None
    connected = isinstance(vm, vim.VirtualMachine) and \
        connectee.type in (None, "vmVnic")
    runtime = p.state.runtimeInfo if p.state is not None else None
    mac = (getattr(runtime, "macAddress", None) or
           (connectee.addressHint if connected else None)) or None
    return DvPort(
        key=p.key, dvs_uuid=p.dvsUuid, portgroup_key=p.portgroupKey,
        name=(config.name if config is not None else None) or "",
        config_version=(config.configVersion if config is not None
                        else None) or "",
        connected=connected, vm_moid=vm._moId if connected else None,
        mac=mac if connected else None,
        settings=settings_of(config.setting if config is not None
                             else None))


# -- calls ------------------------------------------------------------------

class _OwnFiltersOnly(SoapAdapter.SoapDeserializer):
    """pyVmomi's deserializer, but what follows ``inherited`` = true in a
    filter policy is passed over, not built.

    ``FetchDVPorts`` answers each port's effective settings: a filter the
    port inherits comes filled in with its group's rules, marked inherited
    -- thousands for a shared filter, each ~0.5 ms of pyVmomi objects
    (bench/RESULTS.md), for :func:`settings_of` to drop.  vSphere sends a
    policy's ``inherited`` first (the base type's fields come first), so
    once it has read true the rest of the policy is left to expat alone:
    no handler but one that watches end tags for the policy's own (no type
    inside a ``DvsFilterPolicy`` has a property of the policy's name).
    The policy reads back as ``FilterPolicy(inherited=True)`` without
    ``filterConfig``, which :func:`port_of` reads as it reads the fully
    parsed one (no rules: None).  A policy whose ``inherited`` comes later,
    or is false, is parsed as usual; so is everything else in the answer,
    faults included.
    """

    # Cut out of the answer's bytes before expat (session.Stripped): an
    # inherited filter policy's content after its ``inherited``, as
    # vSphere writes it.
    passed_over = (re.compile(
        rb'<filterPolicy(?: [^<>]{0,200}[^<>/])?>\s{0,40}'
        rb'<inherited>true</inherited>'), b"</filterPolicy>", 300)

    def StartElementHandler(self, tag: str, attr: dict) -> None:  # noqa: N802
        stack = self.stack
        if stack and type(stack[-1]) is DVPort.FilterPolicy and \
                stack[-1].inherited:
            self._skip_to_end_of(self._policy_tag)
            return
        super().StartElementHandler(tag, attr)
        if type(self.stack[-1]) is DVPort.FilterPolicy:
            self._policy_tag = tag      # a policy opened: its end tag

    def _skip_to_end_of(self, policy_tag: str) -> None:
        """Pass over the rest of the policy, to its end tag, which goes to
        pyVmomi's handler again; not even the text is collected."""
        parser = self.parser
        saved = (parser.StartElementHandler, parser.EndElementHandler,
                 parser.CharacterDataHandler)

        def end(tag: str) -> None:
            if tag == policy_tag:
                (parser.StartElementHandler, parser.EndElementHandler,
                 parser.CharacterDataHandler) = saved
                saved[1](tag)

        parser.StartElementHandler = parser.CharacterDataHandler = None
        parser.EndElementHandler = end
        self.data = ""


class GroupFiltersUnread(_OwnFiltersOnly):
    """pyVmomi's deserializer, but every filter policy is passed over, not
    built (inherited or not; as :class:`_OwnFiltersOnly` passes over the
    inherited ones): for the replica's inventory reads with
    ``shared_security_filter``, where a port group's default filter holds
    the rules of all its sharing ports (thousands, each ~0.5 ms of pyVmomi
    objects, in every process on every change of the group).  The policy
    reads back empty; the group's description names the digest of what
    was written (``inventory.defaults_token_of``).  Nothing
    else the replica watches holds a filter policy."""

    # Every filter policy's content (session.Stripped).
    passed_over = (re.compile(rb'<filterPolicy(?: [^<>]{0,200}[^<>/])?>'),
                   b"</filterPolicy>", 220)

    def StartElementHandler(self, tag: str, attr: dict) -> None:  # noqa: N802
        stack = self.stack
        if stack and type(stack[-1]) is DVPort.FilterPolicy:
            self._skip_to_end_of(self._policy_tag)
            return
        super().StartElementHandler(tag, attr)
        if type(self.stack[-1]) is DVPort.FilterPolicy:
            self._policy_tag = tag


def _fetch(session: Session, what: str, dvs_ref: Any,
           criteria: vim.dvs.PortCriteria) -> list[DVPort]:
    """One ``FetchDVPorts``, inherited filters left unparsed
    (:class:`_OwnFiltersOnly`)."""
    return session.call(what, session.parsed_by(
        _OwnFiltersOnly, dvs_ref.FetchDVPorts), criteria) or []


# Ports read by one FetchDVPorts at most, where their number is known: a
# switch's ports are read in several calls rather than one answer that no
# timeout fits (50,000 ports) and that is held whole in memory.
READ_BATCH = 1000


def fetch_ports(session: Session, dvs_ref: Any,
                portgroup_keys: Iterable[str],
                port_keys: Mapping[str, Sequence[str]] | None = None
                ) -> dict[str, tuple[DvPort, ...]]:
    """The ports of these port groups of one switch, by group key (every
    key given is in the answer, with () if it has none).  Without
    ``port_keys`` one round trip; with ``port_keys`` ({group key: its port
    keys}, as the replica knows them) one per READ_BATCH ports: whole
    groups together, a bigger group by its port keys."""
    keys = sorted(set(portgroup_keys))
    if not keys:
        return {}
    out: dict[str, list[DvPort]] = {k: [] for k in keys}
    started = time.monotonic()
    for criteria in _batches(keys, port_keys):
        what = (f"read the ports of {len(criteria.portgroupKey)} port "
                f"group(s) on {dvs_ref._moId}")
        if criteria.portKey:
            what += f" ({len(criteria.portKey)} ports)"
        for p in _fetch(session, what, dvs_ref, criteria):
            if p.portgroupKey in out:
                out[p.portgroupKey].append(port_of(p))
    LOG.debug("read the ports of port group(s) %s on %s: %d in %.2fs",
              ", ".join(keys), dvs_ref._moId,
              sum(len(v) for v in out.values()), time.monotonic() - started)
    return {k: tuple(sorted(v, key=key_order)) for k, v in out.items()}


def _batches(keys: list[str],
             port_keys: Mapping[str, Sequence[str]] | None
             ) -> Iterable[vim.dvs.PortCriteria]:
    """The criteria reading the ports of groups ``keys``: one, or one per
    READ_BATCH ports."""
    if port_keys is None:
        yield vim.dvs.PortCriteria(portgroupKey=keys, inside=True)
        return
    batch: list[str] = []
    size = 0
    for key in keys:
        members = sorted(port_keys.get(key) or ())
        if len(members) > READ_BATCH:
            for i in range(0, len(members), READ_BATCH):
                yield vim.dvs.PortCriteria(
                    portgroupKey=[key], inside=True,
                    portKey=members[i:i + READ_BATCH])
            continue
        if batch and size + len(members) > READ_BATCH:
            yield vim.dvs.PortCriteria(portgroupKey=batch, inside=True)
            batch, size = [], 0
        batch.append(key)
        size += len(members)
    if batch:
        yield vim.dvs.PortCriteria(portgroupKey=batch, inside=True)


def fetch_port_keys(session: Session, dvs_ref: Any, port_keys: Iterable[str],
                    connected: bool | None = None) -> tuple[DvPort, ...]:
    """These ports of one switch (those that exist; with ``connected``,
    those of them whose connectee vCenter shows, or not): one round trip
    whose answer is at most as large as the list, however big their port
    groups."""
    keys = sorted(set(port_keys))
    if not keys:
        return ()
    criteria = vim.dvs.PortCriteria(portKey=keys)
    what = f"read {len(keys)} port(s) on {dvs_ref._moId}"
    if connected is not None:
        criteria.connected = connected
        what += " if now " + ("connected" if connected else "free")
    started = time.monotonic()
    found = _fetch(session, what, dvs_ref, criteria)
    LOG.debug("%s: %d in %.2fs", what, len(found),
              time.monotonic() - started)
    return tuple(sorted((port_of(p) for p in found), key=key_order))


def key_order(port: DvPort) -> tuple[int, str]:
    """The order ports are kept in: by number, then by key."""
    return (int(port.key), "") if port.key.isdigit() else (1 << 62, port.key)


def port_spec(change: PortChange, mac_management: bool
              ) -> vim.dvs.DistributedVirtualPort.ConfigSpec:
    key, config_version, name, settings = change
    spec = DVPort.ConfigSpec(key=key, operation="edit",
                             configVersion=config_version)
    if name is not None:
        spec.name = name
    if settings is not None:
        spec.setting = setting_spec(settings, mac_management)
    return spec


def reconfigure_ports(session: Session, dvs_ref: Any,
                      changes: Sequence[PortChange], what: str,
                      mac_management: bool = False,
                      read_back: bool = False) -> None:
    """Apply ``changes`` (key, configVersion, name or None, settings or
    None) in one ``ReconfigureDVPort_Task``: all or none.  A port changed
    since its configVersion was read raises ConcurrentModification (and no
    port changes); an unknown key NotFound; a setting the group does not
    let ports override TaskFailed.  ``read_back``: the ports written are
    read by the session's task watcher (the replica) once the task
    succeeded, before this returns (``Session.run_task``)."""
    if not changes:
        return
    specs = [port_spec(c, mac_management) for c in changes]
    session.run_task(what, dvs_ref.ReconfigureDVPort_Task, specs,
                     read_back=(dvs_ref, frozenset(c[0] for c in changes))
                     if read_back else None)


def grow_port_group(session: Session, pg: inventory.DvsPortGroup,
                    add: int = 0, what: str | None = None) -> int:
    """Add ``add`` (default :data:`GROW_BY`) free ports to a static port
    group, as the replica saw it (``pg.num_ports`` at
    ``pg.config_version``): one ``ReconfigureDVPortgroup_Task`` whose spec
    sets only configVersion and numPorts (vCenter merges a port group spec:
    the rest stays; the simulator does too since patch 0008).  A group
    changed meanwhile raises ConcurrentModification.  A group whose
    description names the digest of its defaults
    (``shared_security_filter``) has it named again on this configVersion:
    the grow is a write of ours, not a change that may hide a hand edit
    (which every process would read the group whole for).  Answers the
    new number of ports."""
    add = add or GROW_BY
    total = pg.num_ports + add
    spec = vim.dvs.DistributedVirtualPortgroup.ConfigSpec(
        configVersion=pg.config_version, numPorts=total)
    if pg.defaults_token is not None and pg.defaults_written_last:
        # Only while the digest is known true to this write's knowledge
        # (nothing followed the write naming it).
        spec.description = inventory.with_defaults_token(
            pg.description, pg.defaults_token, pg.config_version)
    session.run_task(what or f"add {add} ports to port group {pg.name} "
                             f"({pg.moid})",
                     pg.ref.ReconfigureDVPortgroup_Task, spec)
    return total

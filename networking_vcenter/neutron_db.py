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

"""Lean reads of Neutron's database: what the desired state depends on.

The desired port groups of a network depend on its id and its segments only,
so that is all that is read -- a few columns, no API dicts, no extensions: a
full pass over 10,000 networks reads two narrow tables.  The same reads serve
the ML2 driver, its maintenance worker and the CLI.

:func:`change_token` is the cheap question the maintenance worker asks every
few seconds ("has anything changed?"): counts, revision sums and the newest
row of the two tables, one aggregate query each.

Ports (the DV ports of the ports bound by this driver) are read the same
way: :func:`ports` returns :class:`desired.PortSpec` with everything the
port's DV port settings derive from (addresses, port security, security
groups with their rules and the addresses those rules reference, QoS
bandwidth limits, a trunk parent's trunk and subports) in about a dozen
queries whatever the number of ports;
:func:`port_change_token` is the cheap "has anything changed?" question (one
statement), :func:`port_fingerprints` the per-port answer to "which
ports?" (a few queries), :func:`ports_referencing` the fan-out of a
security group, address group, QoS policy or network change to the ports
it affects.  See :func:`port_fingerprints` for what a fingerprint covers.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import typing
from typing import Any

from networking_vcenter.reconcile import desired


def _models():
    from neutron.db.models import segment as segment_models
    from neutron.db import models_v2
    from neutron_lib.db import standard_attr
    return models_v2.Network, segment_models.NetworkSegment, \
        standard_attr.StandardAttribute


def _reader():
    from neutron_lib import context
    from neutron_lib.db import api as db_api
    ctx = context.get_admin_context()
    return ctx, db_api.CONTEXT_READER.using(ctx)


def networks(ids: set[str] | None = None) -> list[desired.NetworkSpec]:
    """Networks (all, or those ``ids`` that exist) with their segments."""
    network, segment, attrs = _models()
    ctx, reader = _reader()
    with reader:
        default_sg = _m().DefaultSG
        q = ctx.session.query(network.id, attrs.updated_at,
                              network.vlan_transparent, network.mtu,
                              default_sg.security_group_id).join(
            attrs, network.standard_attr_id == attrs.id).outerjoin(
            default_sg, default_sg.project_id == network.project_id)
        sq = ctx.session.query(segment.network_id, segment.network_type,
                               segment.physical_network,
                               segment.segmentation_id)
        if ids is not None:
            wanted = sorted(ids)
            q = q.filter(network.id.in_(wanted))
            sq = sq.filter(segment.network_id.in_(wanted))
        rows = q.all()
        segs: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
        for net_id, net_type, physnet, seg_id in sq.all():
            segs[net_id].append({"network_type": net_type,
                                 "physical_network": physnet,
                                 "segmentation_id": seg_id})
    return [desired.network_from_neutron(
        {"id": net_id, "updated_at": at, "vlan_transparent": transparent,
         "mtu": mtu, "shared_group": group}, segs.get(net_id, []))
        for net_id, at, transparent, mtu, group in rows]


def segments(physnets: set[str]) -> list[dict[str, Any]]:
    """The VLAN and flat segments on these physical networks (``id``,
    ``network_type``, ``physical_network``)."""
    _, segment, _ = _models()
    ctx, reader = _reader()
    with reader:
        rows = ctx.session.query(
            segment.id, segment.network_type, segment.physical_network
        ).filter(segment.physical_network.in_(sorted(physnets)),
                 segment.network_type.in_(desired.SUPPORTED_TYPES)).all()
    return [{"id": seg_id, "network_type": net_type,
             "physical_network": physnet}
            for seg_id, net_type, physnet in rows]


def change_token() -> tuple:
    """Changes whenever a network or segment is created, changed or
    deleted (counts, revision sums, newest standard-attribute id)."""
    import sqlalchemy as sa
    network, segment, attrs = _models()
    ctx, reader = _reader()
    with reader:
        token = []
        for model in (network, segment):
            token.extend(ctx.session.query(
                sa.func.count(attrs.id), sa.func.sum(attrs.revision_number),
                sa.func.max(attrs.id)).join(
                    model, model.standard_attr_id == attrs.id).one())
    return tuple(token)


# -- ports -------------------------------------------------------------------

DRIVER = "vcenter"
ACTIVE = "ACTIVE"


class _M:
    """Neutron's models, imported on first use (this module is imported by
    the CLI and the worker before Neutron's models need to be)."""

    def __init__(self) -> None:
        from neutron.db.models import address_group
        from neutron.db.models import allowed_address_pair
        from neutron.db.models import securitygroup
        from neutron.db.models import segment
        from neutron.db import models_v2
        from neutron.db.port_security import models as portsec
        from neutron.db.qos import models as qos
        from neutron.plugins.ml2 import models as ml2
        from neutron.services.trunk import models as trunk
        from neutron_lib.db import standard_attr
        self.Attrs = standard_attr.StandardAttribute
        self.Network = models_v2.Network
        self.Port = models_v2.Port
        self.IP = models_v2.IPAllocation
        self.Pair = allowed_address_pair.AllowedAddressPair
        self.Binding = ml2.PortBinding
        self.Level = ml2.PortBindingLevel
        self.Segment = segment.NetworkSegment
        self.PortSec = portsec.PortSecurityBinding
        self.NetSec = portsec.NetworkSecurityBinding
        self.SG = securitygroup.SecurityGroup
        self.DefaultSG = securitygroup.DefaultSecurityGroup
        self.SGBinding = securitygroup.SecurityGroupPortBinding
        self.Rule = securitygroup.SecurityGroupRule
        self.AG = address_group.AddressGroup
        self.AGAddress = address_group.AddressAssociation
        self.Policy = qos.QosPolicy
        self.PortPolicy = qos.QosPortPolicyBinding
        self.NetPolicy = qos.QosNetworkPolicyBinding
        self.BwRule = qos.QosBandwidthLimitRule
        self.Trunk = trunk.Trunk
        self.SubPort = trunk.SubPort


_MODELS: _M | None = None


def _m() -> _M:
    global _MODELS
    if _MODELS is None:
        _MODELS = _M()
    return _MODELS


def _groups_of_ports(m: _M, session, in_sel) -> dict[str, list[str]]:
    """{port id: its security group ids} for the ports of a selection:
    one query."""
    port_sgs: dict[str, list[str]] = collections.defaultdict(list)
    for pid, sg_id in session.query(m.SGBinding.port_id,
                                    m.SGBinding.security_group_id).filter(
            m.SGBinding.port_id.in_(in_sel)):
        port_sgs[pid].append(sg_id)
    return port_sgs


def _bound_here(m: _M, session, host_filter: set[str] | None,
                network_ids: set[str] | None = None):
    """``(port_id, host, network_id, physnet)`` of the ports whose ACTIVE
    binding is bound at level 0 by this driver, as a query."""
    import sqlalchemy as sa
    q = session.query(m.Port.id, m.Binding.host, m.Port.network_id,
                      m.Segment.physical_network).join(
        m.Binding, sa.and_(m.Binding.port_id == m.Port.id,
                           m.Binding.status == ACTIVE)).join(
        m.Level, sa.and_(m.Level.port_id == m.Port.id,
                         m.Level.host == m.Binding.host,
                         m.Level.level == 0,
                         m.Level.driver == DRIVER)).outerjoin(
        m.Segment, m.Segment.id == m.Level.segment_id)
    if host_filter is not None:
        q = q.filter(m.Binding.host.in_(sorted(host_filter)))
    if network_ids is not None:
        q = q.filter(m.Port.network_id.in_(sorted(network_ids)))
    return q


def _addresses_of_groups(m: _M, session, group_ids,
                         unbound_on: set[str] | None = None
                         ) -> dict[str, set[str]]:
    """Security group id -> the fixed IPs and allowed address pair
    addresses of every port in it (two queries); with ``unbound_on``,
    not of the ports whose ACTIVE binding names one of those hosts and is
    not bound yet (a binding under way)."""
    import sqlalchemy as sa
    from neutron_lib.api.definitions import portbindings
    found: dict[str, set[str]] = collections.defaultdict(set)
    if not group_ids:
        return found
    groups = sorted(group_ids)
    for model in (m.IP, m.Pair):
        q = session.query(
            m.SGBinding.security_group_id, model.ip_address).join(
            model, model.port_id == m.SGBinding.port_id).filter(
            m.SGBinding.security_group_id.in_(groups))
        if unbound_on:
            q = q.filter(m.SGBinding.port_id.notin_(
                sa.select(m.Binding.port_id).filter(
                    m.Binding.status == ACTIVE,
                    m.Binding.host.in_(sorted(unbound_on)),
                    m.Binding.vif_type == portbindings.VIF_TYPE_UNBOUND)))
        for sg_id, address in q:
            found[sg_id].add(address)
    return found


def _digest(addresses) -> str:
    """A short digest of a set of addresses, the same in every process."""
    return hashlib.blake2b("\n".join(sorted(addresses)).encode(),
                           digest_size=16).hexdigest()


def ports(ids: set[str] | None = None,
          host_filter: set[str] | None = None,
          network_ids: set[str] | None = None) -> list[desired.PortSpec]:
    """The ports bound by this driver, with all their DV port depends on.

    Without ``ids``: every port whose ACTIVE binding was bound at level 0 by
    the ``vcenter`` mechanism driver (on a host in ``host_filter``, on a
    network of ``network_ids``, when given).  With ``ids``: those of the
    ports that exist, bound here or not, and the trunk parents of those that
    are subports (the parent's DV port carries them); one not bound here
    (another driver, unbound, its host outside ``host_filter``) has
    ``physnet=None`` and the host of its ACTIVE binding ('' when unbound),
    so that the caller can release its DV port.

    A trunk parent's spec carries its trunk (:class:`desired.TrunkSpec`:
    each subport's own spec, segmentation and network segments); a
    subport's names its parent (``trunk_parent``).

    About a dozen queries for any number of ports: the ports are selected
    once as a subquery that every detail query is joined with (no query
    per port, no IN list of thousands of ids).
    """
    import sqlalchemy as sa
    m = _m()
    ctx, reader = _reader()
    with reader:
        s = ctx.session
        if ids is None:
            rows = [tuple(r) for r in _bound_here(m, s, host_filter,
                                                  network_ids)]
            selected = _bound_here(m, s, host_filter,
                                   network_ids).with_entities(m.Port.id)
        else:
            wanted = sorted(ids)
            here = sa.and_(m.Level.driver == DRIVER,
                           m.Binding.host.in_(sorted(host_filter))
                           if host_filter is not None else sa.true())
            rows = [(pid, host or "", net, physnet if ours else None)
                    for pid, host, net, physnet, ours in s.query(
                        m.Port.id, m.Binding.host, m.Port.network_id,
                        m.Segment.physical_network,
                        sa.case((here, True), else_=False)).outerjoin(
                        m.Binding, sa.and_(m.Binding.port_id == m.Port.id,
                                           m.Binding.status == ACTIVE)
                    ).outerjoin(
                        m.Level, sa.and_(m.Level.port_id == m.Port.id,
                                         m.Level.host == m.Binding.host,
                                         m.Level.level == 0)).outerjoin(
                        m.Segment, m.Segment.id == m.Level.segment_id
                    ).filter(_or_parents(m, wanted))]
            selected = s.query(m.Port.id).filter(_or_parents(m, wanted))
        if not rows:
            return []
        sel = selected.subquery()
        # The selected ports and the members of their trunks (a parent's
        # DV port depends on its subports, a subport's on its parent).
        trunk_of_sel = _trunks_of(m, sa.select(sel.c.id))
        in_sel = sa.select(m.Port.id).filter(sa.or_(
            m.Port.id.in_(sa.select(sel.c.id)),
            m.Port.id.in_(sa.select(m.Trunk.port_id).filter(
                m.Trunk.id.in_(trunk_of_sel))),
            m.Port.id.in_(sa.select(m.SubPort.port_id).filter(
                m.SubPort.trunk_id.in_(trunk_of_sel)))))

        # With the DV port key Nova was given (the committed binding's).
        base = {pid: (net, mac, status, owner, psec, nsec,
                      _dvs_port_key(details))
                for pid, net, mac, status, owner, psec, nsec, details
                in s.query(
                    m.Port.id, m.Port.network_id, m.Port.mac_address,
                    m.Port.status,
                    m.Port.device_owner, m.PortSec.port_security_enabled,
                    m.NetSec.port_security_enabled,
                    m.Binding.vif_details).outerjoin(
                    m.PortSec, m.PortSec.port_id == m.Port.id).outerjoin(
                    m.NetSec, m.NetSec.network_id == m.Port.network_id
                ).outerjoin(m.Binding, sa.and_(
                    m.Binding.port_id == m.Port.id,
                    m.Binding.status == ACTIVE)
                ).filter(m.Port.id.in_(in_sel))}
        ips: dict[str, list[str]] = collections.defaultdict(list)
        for pid, address in s.query(m.IP.port_id, m.IP.ip_address).filter(
                m.IP.port_id.in_(in_sel)):
            ips[pid].append(address)
        pairs: dict[str, list] = collections.defaultdict(list)
        for pid, address, mac in s.query(
                m.Pair.port_id, m.Pair.ip_address, m.Pair.mac_address
        ).filter(m.Pair.port_id.in_(in_sel)):
            pairs[pid].append((address, mac))
        port_sgs = _groups_of_ports(m, s, in_sel)

        # The port's groups, with their rules (one query, outer join: a
        # group without rules still counts).
        sg_ids = sa.select(m.SGBinding.security_group_id).filter(
            m.SGBinding.port_id.in_(in_sel))
        stateful: dict[str, bool] = {}
        rules: dict[str, list[desired.SgRule]] = collections.defaultdict(
            list)
        for row in s.query(m.SG.id, m.SG.stateful, m.Rule.id,
                           m.Rule.direction, m.Rule.ethertype,
                           m.Rule.protocol, m.Rule.port_range_min,
                           m.Rule.port_range_max, m.Rule.remote_ip_prefix,
                           m.Rule.remote_group_id,
                           m.Rule.remote_address_group_id).outerjoin(
                m.Rule, m.Rule.security_group_id == m.SG.id).filter(
                m.SG.id.in_(sg_ids)):
            sg_id, is_stateful, rule_id = row[:3]
            stateful[sg_id] = bool(is_stateful)
            if rule_id is not None:
                rules[sg_id].append(desired.SgRule(
                    direction=row[3], ethertype=row[4], protocol=row[5],
                    port_range_min=row[6], port_range_max=row[7],
                    remote_ip_prefix=row[8], remote_group_id=row[9],
                    remote_address_group_id=row[10], id=rule_id))
        groups = {
            sg_id: desired.SecurityGroup(
                sg_id, stateful[sg_id],
                tuple(sorted(rules[sg_id], key=lambda r: r.id)))
            for sg_id in stateful}
        remote_ids = {r.remote_group_id for rs in rules.values()
                      for r in rs if r.remote_group_id}
        ag_ids = {r.remote_address_group_id for rs in rules.values()
                  for r in rs if r.remote_address_group_id}
        members = _addresses_of_groups(m, s, remote_ids)
        ag_cidrs: dict[str, set[str]] = collections.defaultdict(set)
        if ag_ids:
            for ag_id, address in s.query(
                    m.AGAddress.address_group_id, m.AGAddress.address
            ).filter(m.AGAddress.address_group_id.in_(sorted(ag_ids))):
                ag_cidrs[ag_id].add(address)

        # QoS: the port's policy, else its network's.
        port_policy = dict(s.query(m.PortPolicy.port_id,
                                   m.PortPolicy.policy_id).filter(
            m.PortPolicy.port_id.in_(in_sel)))
        net_policy = dict(s.query(m.NetPolicy.network_id,
                                  m.NetPolicy.policy_id).filter(
            m.NetPolicy.network_id.in_(
                sa.select(m.Port.network_id).filter(
                    m.Port.id.in_(in_sel)))))
        limits: dict[str, list[desired.BandwidthLimit]] = \
            collections.defaultdict(list)
        policies = set(port_policy.values()) | set(net_policy.values())
        if policies:
            for policy_id, direction, kbps, burst in s.query(
                    m.BwRule.qos_policy_id, m.BwRule.direction,
                    m.BwRule.max_kbps, m.BwRule.max_burst_kbps).filter(
                    m.BwRule.qos_policy_id.in_(sorted(policies))):
                limits[policy_id].append(desired.BandwidthLimit(
                    direction, kbps or 0, burst or 0))
        trunks = _trunks(m, s, trunk_of_sel)

    # Each group's members sorted once, the same tuple in every spec that
    # names it (sorting them per port made a read quadratic in a big
    # default group).
    member_tuples = {g: tuple(sorted(a)) for g, a in members.items()}
    cidr_tuples = {a: tuple(sorted(c)) for a, c in ag_cidrs.items()}

    def spec(pid: str, host: str, physnet: str | None) -> desired.PortSpec:
        net_id, mac, status, owner, psec, nsec, bound_key = base[pid]
        own = [groups[g] for g in sorted(port_sgs.get(pid, ()))
               if g in groups]
        remote = {r.remote_group_id for g in own for r in g.rules
                  if r.remote_group_id}
        ags = {r.remote_address_group_id for g in own for r in g.rules
               if r.remote_address_group_id}
        policy = port_policy.get(pid) or net_policy.get(net_id)
        return desired.PortSpec(
            id=pid, network_id=net_id, host=host or "", physnet=physnet,
            mac=mac,
            fixed_ips=tuple(sorted(ips.get(pid, ()))),
            allowed_address_pairs=tuple(sorted(pairs.get(pid, ()),
                                               key=lambda p: (p[0],
                                                              p[1] or ""))),
            port_security=bool(psec if psec is not None else
                               nsec if nsec is not None else True),
            security_groups=tuple(own),
            remote_groups={g: member_tuples.get(g, ())
                           for g in sorted(remote)},
            address_groups={a: cidr_tuples.get(a, ())
                            for a in sorted(ags)},
            qos=tuple(sorted(limits.get(policy, ()),
                             key=lambda b: b.direction)) if policy else (),
            status=status or "", device_owner=owner or "",
            bound_key=bound_key)

    by_parent = {t.parent: t for t in trunks}
    parent_of = {sub: t.parent for t in trunks for sub, *_ in t.subports}
    specs = []
    for pid, host, _net_id, physnet in rows:
        if pid not in base:
            continue        # deleted between the two reads
        found = spec(pid, host, physnet)
        t = by_parent.get(pid)
        if t is not None:
            found = dataclasses.replace(found, trunk=desired.TrunkSpec(
                id=t.id, status=t.status, segments=t.segments,
                subports=tuple(desired.Subport(
                    spec(sub, "", None), seg_type, seg_id, segs)
                    for sub, seg_type, seg_id, segs in t.subports
                    if sub in base)))
        specs.append(dataclasses.replace(found,
                                         trunk_parent=parent_of.get(pid)))
    return specs


def _dvs_port_key(details: Any) -> str | None:
    """``dvs_port_key`` of a binding's vif_details (JSON text), if any."""
    if not details:
        return None
    try:
        value = json.loads(details) if isinstance(details, str) else details
    except ValueError:
        return None
    key = value.get("dvs_port_key") if isinstance(value, dict) else None
    return str(key) if key is not None else None


def _or_parents(m: _M, wanted: list[str]):
    """Ports ``wanted`` and the trunk parents of those among them that are
    subports (a parent's DV port carries its subports)."""
    import sqlalchemy as sa
    return sa.or_(m.Port.id.in_(wanted), m.Port.id.in_(
        sa.select(m.Trunk.port_id).join(
            m.SubPort, m.SubPort.trunk_id == m.Trunk.id).filter(
            m.SubPort.port_id.in_(wanted))))


def _trunks_of(m: _M, in_sel):
    """The ids of the trunks the ports of a selection are parent or
    subport of, as a subquery."""
    import sqlalchemy as sa
    return sa.select(m.Trunk.id).filter(sa.or_(
        m.Trunk.port_id.in_(in_sel),
        m.Trunk.id.in_(sa.select(m.SubPort.trunk_id).filter(
            m.SubPort.port_id.in_(in_sel)))))


@dataclasses.dataclass(frozen=True)
class _Trunk:
    id: str
    parent: str
    status: str
    revision: int
    segments: tuple[desired.SegmentTuple, ...]
    # (port id, segmentation type, segmentation id, its network's segments)
    subports: tuple[tuple[str, str, int, tuple], ...]


def _trunks(m: _M, session, trunk_ids) -> list[_Trunk]:
    """These trunks (a subquery of ids) with their subports and the
    segments of their members' networks: one query, plus one for the
    segments when there is a trunk."""
    import sqlalchemy as sa
    rows = session.query(
        m.Trunk.id, m.Trunk.port_id, m.Trunk.status,
        m.Attrs.revision_number, m.SubPort.port_id,
        m.SubPort.segmentation_type, m.SubPort.segmentation_id).join(
        m.Attrs, m.Attrs.id == m.Trunk.standard_attr_id).outerjoin(
        m.SubPort, m.SubPort.trunk_id == m.Trunk.id).filter(
        m.Trunk.id.in_(trunk_ids)).all()
    if not rows:
        return []
    segs: dict[str, list] = collections.defaultdict(list)
    for pid, net_type, physnet, seg_id in session.query(
            m.Port.id, m.Segment.network_type, m.Segment.physical_network,
            m.Segment.segmentation_id).join(
            m.Segment, m.Segment.network_id == m.Port.network_id).filter(
            sa.or_(m.Port.id.in_(sa.select(m.Trunk.port_id).filter(
                m.Trunk.id.in_(trunk_ids))),
                   m.Port.id.in_(sa.select(m.SubPort.port_id).filter(
                       m.SubPort.trunk_id.in_(trunk_ids))))):
        segs[pid].append((net_type, physnet, seg_id))
    found: dict[str, dict] = {}
    for trunk_id, parent, status, rev, sub, seg_type, seg_id in rows:
        t = found.setdefault(trunk_id, {"parent": parent, "status": status,
                                        "rev": rev, "subports": []})
        if sub is not None:
            t["subports"].append((sub, seg_type, seg_id,
                                  tuple(sorted(segs.get(sub, ()), key=str))))
    return [_Trunk(trunk_id, t["parent"], t["status"] or "", t["rev"] or 0,
                   tuple(sorted(segs.get(t["parent"], ()), key=str)),
                   tuple(sorted(t["subports"])))
            for trunk_id, t in sorted(found.items())]


def port_change_token() -> tuple:
    """Changes whenever anything :func:`ports` reads is created, changed
    or deleted: one statement of scalar subqueries.

    Models with standard attributes (ports, networks, security groups and
    their rules, address groups, QoS policies, trunks) contribute count,
    revision sum and newest standard-attribute id; Neutron's revision plugin
    (a default service plugin) bumps the parent's revision when a child row
    changes (IP allocation, allowed address pair, port security, binding,
    binding level, SG port binding and QoS port binding -> port; SG rule ->
    group; address -> address group; bandwidth rule -> policy; QoS network
    binding -> network).  The child tables (and trunks' subports) also
    contribute their row counts, so deletes by cascade, which bump
    nothing, are seen too.
    """
    import sqlalchemy as sa
    m = _m()
    ctx, reader = _reader()
    cols = []
    for model in (m.Port, m.Network, m.SG, m.Rule, m.AG, m.Policy, m.Trunk):
        join = m.Attrs.__table__.join(
            model.__table__, model.standard_attr_id == m.Attrs.id)
        for agg in (sa.func.count(m.Attrs.id),
                    sa.func.sum(m.Attrs.revision_number),
                    sa.func.max(m.Attrs.id)):
            cols.append(sa.select(agg).select_from(join).scalar_subquery())
    for model in (m.IP, m.Pair, m.Binding, m.Level, m.PortSec, m.SGBinding,
                  m.AGAddress, m.PortPolicy, m.NetPolicy, m.BwRule,
                  m.SubPort):
        cols.append(sa.select(sa.func.count()).select_from(
            model.__table__).scalar_subquery())
    with reader:
        return tuple(ctx.session.execute(sa.select(*cols)).one())


class PortPrint(typing.NamedTuple):
    """A port's fingerprint, with its network (which never changes)."""

    network_id: str
    value: tuple


def port_fingerprints(host_filter: set[str] | None = None
                      ) -> dict[str, PortPrint]:
    """Port id -> a fingerprint, for every port bound by this driver (on a
    host in ``host_filter``): two reads differ for a port exactly when
    something its :class:`desired.PortSpec` derives from may have changed.
    The maintenance worker diffs two such dicts, as it does for networks.

    A fingerprint is made of revision numbers and of the addresses of the
    remote groups, in at most ten queries whatever the number of ports:

    - the port's revision (Neutron bumps it for its IPs, allowed address
      pairs, port security, security group and QoS bindings, binding and
      binding levels, status) and its bound host and segment's physnet;
    - each of its security groups' id and revision (bumped by rule
      create/delete) with their rule count;
    - its QoS policy's id and revision (bumped by rule changes), and its
      network's policy's;
    - each address group its rules reference: id and revision (bumped when
      addresses are added or removed);
    - each remote group its rules reference: a hash of its members'
      addresses (fixed IPs and allowed address pairs), so that a port
      joining or leaving a group, or a member changing address, changes
      every port whose rules refer to that group -- and nothing else does
      (a member's status change does not fan out);
    - a trunk parent's: its trunk's id and revision, and each subport's id,
      segmentation and fingerprint as above (its revision, groups and
      policies); a subport's: its parent's id (the parent's fingerprint
      follows the subport).  One more query.  Not covered: a subport
      network's segments changing (a provider network's VLAN cannot be
      updated; the full pass catches a segment added or removed).
    """
    import sqlalchemy as sa
    m = _m()
    ctx, reader = _reader()
    with reader:
        s = ctx.session
        sel = _bound_here(m, s, host_filter).with_entities(
            m.Port.id).subquery()
        trunk_ids = _trunks_of(m, sa.select(sel.c.id))
        in_sel = sa.select(m.Port.id).filter(sa.or_(
            m.Port.id.in_(sa.select(sel.c.id)),
            m.Port.id.in_(sa.select(m.SubPort.port_id).filter(
                m.SubPort.trunk_id.in_(trunk_ids)))))
        ports_ = {pid: (host, net, physnet, rev)
                  for pid, host, net, physnet, rev in _bound_here(
                      m, s, host_filter).add_columns(
                      m.Attrs.revision_number).join(
                      m.Attrs, m.Attrs.id == m.Port.standard_attr_id)}
        if not ports_:
            return {}
        port_sgs = _groups_of_ports(m, s, in_sel)
        sg_sel = sa.select(m.SGBinding.security_group_id).filter(
            m.SGBinding.port_id.in_(in_sel))
        sg_rev: dict[str, tuple] = {}
        for sg_id, rev, n in s.query(
                m.SG.id, m.Attrs.revision_number,
                sa.func.count(m.Rule.id)).join(
                m.Attrs, m.Attrs.id == m.SG.standard_attr_id).outerjoin(
                m.Rule, m.Rule.security_group_id == m.SG.id).filter(
                m.SG.id.in_(sg_sel)).group_by(
                m.SG.id, m.Attrs.revision_number):
            sg_rev[sg_id] = (sg_id, rev, n)
        refs: dict[str, set] = collections.defaultdict(set)
        for sg_id, rg, ag in s.query(
                m.Rule.security_group_id, m.Rule.remote_group_id,
                m.Rule.remote_address_group_id).filter(
                m.Rule.security_group_id.in_(sg_sel),
                sa.or_(m.Rule.remote_group_id.isnot(None),
                       m.Rule.remote_address_group_id.isnot(None))
        ).distinct():
            if rg:
                refs[sg_id].add(("sg", rg))
            if ag:
                refs[sg_id].add(("ag", ag))
        remote = {r for rs in refs.values() for k, r in rs if k == "sg"}
        ags = {r for rs in refs.values() for k, r in rs if k == "ag"}
        # A port created on one of our hosts changes its groups' members
        # once its binding commits, not before: the API hook of that bind
        # syncs them (a join), and a fan-out here between the port's create
        # and its bind wrote the filter once more, without its MAC.
        members = {g: _digest(a) for g, a in
                   _addresses_of_groups(m, s, remote, host_filter).items()}
        ag_rev = {}
        if ags:
            ag_rev = dict(s.query(m.AG.id, m.Attrs.revision_number).join(
                m.Attrs, m.Attrs.id == m.AG.standard_attr_id).filter(
                m.AG.id.in_(sorted(ags))))
        port_policy = {pid: (pol, rev) for pid, pol, rev in s.query(
            m.PortPolicy.port_id, m.PortPolicy.policy_id,
            m.Attrs.revision_number).join(
            m.Policy, m.Policy.id == m.PortPolicy.policy_id).join(
            m.Attrs, m.Attrs.id == m.Policy.standard_attr_id).filter(
            m.PortPolicy.port_id.in_(in_sel))}
        net_policy = {net: (pol, rev) for net, pol, rev in s.query(
            m.NetPolicy.network_id, m.NetPolicy.policy_id,
            m.Attrs.revision_number).join(
            m.Policy, m.Policy.id == m.NetPolicy.policy_id).join(
            m.Attrs, m.Attrs.id == m.Policy.standard_attr_id).filter(
            m.NetPolicy.network_id.in_(sa.select(m.Port.network_id).filter(
                m.Port.id.in_(in_sel))))}
        sub = sa.orm.aliased(m.Port)
        sub_attrs = sa.orm.aliased(m.Attrs)
        trunks: dict[str, tuple] = {}
        subports: dict[str, list] = collections.defaultdict(list)
        parent_of: dict[str, str] = {}
        for trunk_id, parent, trunk_rev, sub_id, seg_type, seg_id, \
                sub_net, sub_rev in s.query(
                m.Trunk.id, m.Trunk.port_id, m.Attrs.revision_number,
                m.SubPort.port_id, m.SubPort.segmentation_type,
                m.SubPort.segmentation_id, sub.network_id,
                sub_attrs.revision_number).join(
                m.Attrs, m.Attrs.id == m.Trunk.standard_attr_id).outerjoin(
                m.SubPort, m.SubPort.trunk_id == m.Trunk.id).outerjoin(
                sub, sub.id == m.SubPort.port_id).outerjoin(
                sub_attrs, sub_attrs.id == sub.standard_attr_id).filter(
                m.Trunk.id.in_(trunk_ids)):
            trunks[parent] = (trunk_id, trunk_rev)
            if sub_id is not None:
                subports[parent].append((sub_id, seg_type, seg_id, sub_net,
                                         sub_rev))
                parent_of[sub_id] = parent

    def own(pid: str, rev, net: str | None) -> tuple:
        sgs = sorted(port_sgs.get(pid, ()))
        referenced = sorted({r for g in sgs for r in refs.get(g, ())})
        return (
            rev,
            tuple(sg_rev.get(g, (g, None, 0)) for g in sgs),
            tuple((k, r, members.get(r, "") if k == "sg" else ag_rev.get(r))
                  for k, r in referenced),
            port_policy.get(pid) or net_policy.get(net))

    prints = {}
    for pid, (host, net, physnet, rev) in ports_.items():
        value = (host, physnet, *own(pid, rev, net))
        if pid in trunks:
            value += (trunks[pid], tuple(
                (sub_id, seg_type, seg_id, own(sub_id, sub_rev, sub_net))
                for sub_id, seg_type, seg_id, sub_net, sub_rev
                in sorted(subports[pid], key=lambda x: x[0])))
        elif pid in parent_of:
            value += (("parent", parent_of[pid]),)
        prints[pid] = PortPrint(net, value)
    return prints


def ports_referencing(security_group_ids=(), address_group_ids=(),
                      qos_policy_ids=(), network_ids=()) -> dict[str, str]:
    """The ports bound by this driver whose :class:`desired.PortSpec` a
    change of these objects may change, each with its network id: members
    of the security groups, ports whose groups have rules referring to them
    (remote group) or to the address groups, ports with one of the QoS
    policies, ports without their own policy on a network with one, and
    ports on the networks (a network's QoS policy changed).  One query."""
    import sqlalchemy as sa
    m = _m()
    sgs, ags = sorted(security_group_ids), sorted(address_group_ids)
    pols, nets = sorted(qos_policy_ids), sorted(network_ids)
    conds = []
    if sgs or ags:
        via_rules = sa.select(m.Rule.security_group_id).filter(sa.or_(
            m.Rule.remote_group_id.in_(sgs),
            m.Rule.remote_address_group_id.in_(ags)))
        conds.append(m.Port.id.in_(sa.select(m.SGBinding.port_id).filter(
            sa.or_(m.SGBinding.security_group_id.in_(sgs),
                   m.SGBinding.security_group_id.in_(via_rules)))))
    if pols:
        conds.append(m.Port.id.in_(sa.select(m.PortPolicy.port_id).filter(
            m.PortPolicy.policy_id.in_(pols))))
        conds.append(sa.and_(
            m.Port.network_id.in_(sa.select(m.NetPolicy.network_id).filter(
                m.NetPolicy.policy_id.in_(pols))),
            m.Port.id.notin_(sa.select(m.PortPolicy.port_id))))
    if nets:
        conds.append(m.Port.network_id.in_(nets))
    if not conds:
        return {}
    ctx, reader = _reader()
    with reader:
        return {pid: net for pid, _host, net, _physnet in _bound_here(
            m, ctx.session, None).filter(sa.or_(*conds))}


def failed_bindings(host_filter: set[str]) -> list[tuple[str, str]]:
    """``(port id, host)`` of the ports whose ACTIVE binding on one of
    these hosts failed (``binding_failed``): one query."""
    m = _m()
    ctx, reader = _reader()
    with reader:
        return [(pid, host) for pid, host in ctx.session.query(
            m.Binding.port_id, m.Binding.host).filter(
                m.Binding.status == ACTIVE,
                m.Binding.vif_type == "binding_failed",
                m.Binding.host.in_(sorted(host_filter)))]


def trunk_ports(context, port_ids: set[str]
                ) -> tuple[dict[str, tuple[str, str]],
                           dict[str, tuple[desired.SegmentTuple, ...]]]:
    """For the trunk checks at the API, in the caller's transaction
    (``context``, e.g. a trunk plugin PRECOMMIT): ``{port id: (network id,
    host of its ACTIVE binding or '')}`` and ``{network id: its segments}``
    of these ports.  Two queries."""
    import sqlalchemy as sa
    from neutron_lib.db import api as db_api
    m = _m()
    with db_api.CONTEXT_READER.using(context):
        s = context.session
        ports_ = {pid: (net, host or "") for pid, net, host in s.query(
            m.Port.id, m.Port.network_id, m.Binding.host).outerjoin(
            m.Binding, sa.and_(m.Binding.port_id == m.Port.id,
                               m.Binding.status == ACTIVE)).filter(
            m.Port.id.in_(sorted(port_ids)))}
        segs: dict[str, list] = collections.defaultdict(list)
        if ports_:
            for net, net_type, physnet, seg_id in s.query(
                    m.Segment.network_id, m.Segment.network_type,
                    m.Segment.physical_network,
                    m.Segment.segmentation_id).filter(
                    m.Segment.network_id.in_(
                        sorted({n for n, _ in ports_.values()}))):
                segs[net].append((net_type, physnet, seg_id))
    return ports_, {net: tuple(sorted(v, key=str)) for net, v in segs.items()}


def unbound_trunk_parents(network_ids: set[str]
                          ) -> list[tuple[str, str, str, int]]:
    """``(trunk id, parent port id, its network id, number of subports)``
    of the trunks whose parent has no host (no ACTIVE binding with one) and
    is on one of these networks: one query."""
    import sqlalchemy as sa
    if not network_ids:
        return []
    m = _m()
    ctx, reader = _reader()
    with reader:
        subs = sa.select(sa.func.count(m.SubPort.port_id)).filter(
            m.SubPort.trunk_id == m.Trunk.id).scalar_subquery()
        return [(tid, pid, net, n) for tid, pid, net, n in ctx.session.query(
            m.Trunk.id, m.Trunk.port_id, m.Port.network_id, subs).join(
            m.Port, m.Port.id == m.Trunk.port_id).outerjoin(
            m.Binding, sa.and_(m.Binding.port_id == m.Port.id,
                               m.Binding.status == ACTIVE)).filter(
            m.Port.network_id.in_(sorted(network_ids)),
            sa.or_(m.Binding.host.is_(None), m.Binding.host == ""))]

"""Lean reads of Neutron's database: what the desired state depends on.

The desired port groups of a network depend on its id and its segments only,
so that is all that is read -- a few columns, no API dicts, no extensions: a
full pass over 10,000 networks reads two narrow tables.  The same reads serve
the ML2 driver, its maintenance worker and the CLI.

:func:`change_token` is the cheap question the maintenance worker asks every
few seconds ("has anything changed?"): counts, revision sums and the newest
row of the two tables, one aggregate query each.
"""

from __future__ import annotations

import collections
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
        q = ctx.session.query(network.id, attrs.updated_at).join(
            attrs, network.standard_attr_id == attrs.id)
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
    return [desired.network_from_neutron({"id": net_id, "updated_at": at},
                                         segs.get(net_id, []))
            for net_id, at in rows]


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

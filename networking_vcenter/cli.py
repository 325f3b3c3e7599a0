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

"""``networking-vcenter``: see and fix how vCenter differs from Neutron.

Reads the same configuration as the Neutron server (``--config-file`` and
``--config-dir``, as every Neutron tool) and Neutron's database directly::

    networking-vcenter --config-file /etc/neutron/neutron.conf \\
        --config-file /etc/neutron/plugins/ml2/ml2_conf.ini status

* ``status``          a table of Neutron networks against vSphere port groups:
                      in-sync, missing, partial, wrong-vlan, orphan, conflict;
                      and one of ports against their DV ports: in-sync,
                      drift, unreserved, waiting, orphan, conflict,
                      not-enforced (a standard vSwitch); and one of trunks
                      (the VLAN ranges Neutron wants on the parent's DV port
                      against those it holds): in-sync, degraded, drift,
                      waiting, not-carried (a standard vSwitch, unbound);
* ``sync``            apply the difference (a progress line per step); it
                      runs the full pass, once at a time across the
                      deployment: while one runs elsewhere it waits
                      (``--wait``, 60 s) and then gives up, changing nothing;
  ``sync --dry-run``  print the plan instead;
* ``check``           the configuration, the vCenter connection and mappings,
                      the switch MTUs, the privileges the driver needs, the
                      lock backend (a test lock taken and released), the
                      Neutron database.

``status``, ``sync --dry-run`` and ``check`` change nothing in vCenter: they
work under a read-only role, and take no lock but ``check``'s test lock (they
run while a full pass runs elsewhere).  Every command logs out of vCenter when
it ends.

Output, as ``openstack`` commands have it: ``-f/--format`` table (default),
json (one document), value or csv; ``-c/--column NAME`` (repeatable) shows
those columns only, of each table that has them; ``status --section``
(repeatable) picks its tables.  ``sync`` prints lines, or one JSON document.

Exit status:

* 0  all in sync (``status``), converged (``sync``), every check passed
     (``check``);
* 1  differences, failures or conflicts remain; a check failed that does not
     stop ``status`` and ``sync`` (switch MTUs, privileges);
* 2  the tool could not run: bad usage or configuration; vCenter, its
     mappings, the lock backend or the Neutron database unusable (``check``:
     one of those checks failed);
* 3  a full pass is running elsewhere and did not end within ``sync --wait``:
     nothing was changed, run again later.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import functools
import io
import json
import logging
import sys
import threading
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from networking_vcenter import quiet_imports  # noqa: F401 (first)
from oslo_config import cfg
from oslo_log import log as oslo_log

from networking_vcenter import conf
from networking_vcenter import exceptions
from networking_vcenter import neutron_db
from networking_vcenter.reconcile import desired as desired_mod
from networking_vcenter.reconcile import locks as locks_mod
from networking_vcenter.reconcile import mtu as mtu_mod
from networking_vcenter.reconcile import plan as plan_mod
from networking_vcenter.reconcile.reconciler import FULL_PASS_LOCK, Pass, \
    PortPass, Reconciler
from networking_vcenter.vsphere import inventory
from networking_vcenter.vsphere import privileges

EXIT_OK, EXIT_DIFF, EXIT_ERROR, EXIT_BUSY = 0, 1, 2, 3
EPILOG = """exit status:
  0  in sync / converged / every check passed
  1  differences, failures or conflicts remain; a check failed
     (switch MTUs, privileges)
  2  cannot run: bad usage or configuration; vCenter, its mappings, the
     lock backend or the Neutron database unusable
  3  a full pass is running elsewhere and did not end within 'sync --wait':
     nothing changed, run again later"""
FORMATS = ("table", "json", "value", "csv")
# How long ``sync`` waits for a full pass running elsewhere (seconds).
SYNC_WAIT = 60.0
# How long ``check`` waits for its test lock (another ``check`` may hold it).
CHECK_LOCK_WAIT = 10.0
CHECK_LOCK = "check"
# Checks without which ``status`` and ``sync`` cannot run: one failed makes
# ``check`` exit EXIT_ERROR, as those commands would.
BLOCKING = ("configuration", "vCenter login", "mappings",
            "coordination backend", "Neutron database")
# A check whose result is one of these passes.  "pending": something the
# driver itself makes on its first write (our custom attribute), which a
# read-only check must not make.
PASSING = ("ok", "pending")


class CliError(Exception):
    """The tool cannot run; the message says why."""


def shown(text: object, rec: Reconciler | None = None) -> str:
    """``text`` as printed: the secrets of every URL in it masked, and
    those of the lock backend's URL wherever they appear."""
    if rec is not None:
        return rec.locks.mask(text)
    return locks_mod.mask_text(str(text))


def log_out(rec: Reconciler) -> None:
    """Log out of vCenter and leave the lock backend, whatever happened: a
    session left behind counts against vCenter's session limit until it
    expires, and monitoring runs ``status`` often."""
    try:
        rec.close()
    except Exception as exc:  # noqa: BLE001 - the command's result stands
        print(f"networking-vcenter: logging out of vCenter failed: "
              f"{shown(exc, rec)}", file=sys.stderr)


# -- Neutron's side ------------------------------------------------------------

def setup_logging(debug: bool) -> None:
    """oslo.log, as every OpenStack tool, to stderr with ``--debug`` and
    silent otherwise (the output is the command's own).  Not where the
    configuration sends Neutron's logs: set before it is read, these
    overrides keep a ``log_file`` or syslog of neutron.conf for the
    server."""
    oslo_log.register_options(cfg.CONF)
    for name, value in (("log_file", None), ("log_dir", None),
                        ("use_stderr", True), ("use_syslog", False),
                        ("use_journal", False), ("use_json", False),
                        ("debug", debug)):
        cfg.CONF.set_override(name, value)
    oslo_log.setup(cfg.CONF, "networking-vcenter")
    if not debug:
        logging.getLogger().setLevel(logging.CRITICAL + 1)


def load_config(config_args: list[str], vcenter: str | None = None
                ) -> list[conf.Settings]:
    """Neutron's configuration from ``config_args``: ``--config-file`` and
    ``--config-dir`` options, in the order given (oslo.config's own); the
    settings of every vCenter, or of the one named ``vcenter``."""
    from neutron.common import config as common_config
    from neutron.conf.plugins.ml2 import config as ml2_config
    from oslo_db import options as db_options
    common_config.register_common_config_options()
    ml2_config.register_ml2_plugin_opts()
    db_options.set_defaults(cfg.CONF)
    conf.register_opts(cfg.CONF)
    try:
        cfg.CONF(list(config_args), project="neutron")
    except cfg.Error as exc:
        raise CliError(f"cannot read the configuration: {exc}")
    vcenters = conf.load_all(cfg.CONF)
    if vcenter is None:
        return vcenters
    chosen = [s for s in vcenters if s.name == vcenter]
    if not chosen:
        raise CliError(
            f"--vcenter {vcenter}: no such vCenter; [{conf.GROUP}] vcenters "
            + (f"names {', '.join(s.name for s in vcenters)}"
               if vcenters[0].name else "is empty (one vCenter, "
               f"[{conf.GROUP}] itself: leave --vcenter out)"))
    return chosen


# -- status ----------------------------------------------------------------------

def status_rows(result: Pass) -> list[dict[str, Any]]:
    """One row per port group, desired or found, with its state."""
    want = {(d.network_id, d.name): d for d in result.desired}
    rows: dict[tuple[str, str], dict[str, Any]] = {}

    def row(network_id: str, name: str, state: str, detail: str = "",
            switch: str = "") -> dict[str, Any]:
        d = want.get((network_id, name))
        r = rows.setdefault((network_id, name), {
            "network": network_id, "port_group": name,
            "physical_network": d.physnet if d else "",
            "switch": d.switch if d else switch,
            "vlan": plan_mod.vlan_text(d.switch_vlan) if d else "",
            "state": state, "detail": []})
        if detail:
            r["detail"].append(detail)
        return r

    for d in result.plan.in_sync:
        row(d.network_id, d.name, "in-sync")
    by_key: dict[tuple[str, str], list[plan_mod.Step]] = defaultdict(list)
    for step in result.plan.steps:
        by_key[(step.network_id, step.name)].append(step)
    for (net, name), steps in by_key.items():
        kinds = {type(s) for s in steps}
        if kinds <= {plan_mod.DeleteDvsPortGroup,
                     plan_mod.RemoveHostPortGroup}:
            where = ", ".join(getattr(s, "host", "") or s.switch
                              for s in steps)
            busy = max(getattr(s, "vm_count", 0) for s in steps)
            row(net, name, "orphan",
                f"network gone; on {where}" +
                (f"; still used by {busy} VM(s)" if busy else ""),
                switch=getattr(steps[0], "switch", ""))
            continue
        d = want.get((net, name))
        adds = [s for s in steps if isinstance(s, plan_mod.AddHostPortGroup)]
        if plan_mod.CreateDvsPortGroup in kinds or \
                (adds and d and len(adds) == len(d.host_moids)):
            row(net, name, "missing")
        elif adds:
            row(net, name, "partial",
                "missing on " + ", ".join(s.host for s in adds))
        for s in steps:
            if isinstance(s, plan_mod.UpdateDvsPortGroup):
                row(net, name, "wrong-vlan",
                    f"{plan_mod.vlan_text(s.old_vlan)} on {s.switch}")
            elif isinstance(s, plan_mod.UpdateHostPortGroup) and \
                    s.vlan == s.old_vlan:
                r = row(net, name, "drift",
                        f"security policy on {s.host}: "
                        f"{plan_mod.security_text(s.old_security)}")
                if r["state"] == "partial":
                    r["state"] = "drift"
            elif isinstance(s, plan_mod.UpdateHostPortGroup):
                r = row(net, name, "wrong-vlan",
                        f"{plan_mod.vlan_text(s.old_vlan)} on {s.host}")
                if r["state"] == "partial":
                    r["state"] = "wrong-vlan"
    for c in result.plan.conflicts:
        r = row(c.network_id, c.name, "conflict", c.reason)
        r["state"] = "conflict"
    out = sorted(rows.values(), key=lambda r: (r["network"],
                                               r["port_group"]))
    for r in out:
        r["detail"] = "; ".join(r["detail"])
    return out


def _mtu_text(switches: list[mtu_mod.SwitchMtu]) -> str:
    """A switch's MTU; a vSwitch's per host where hosts differ."""
    if not switches:
        return "?"
    if switches[0].kind == desired_mod.DVS:
        return str(switches[0].mtu or "?")
    by_mtu: dict[Any, list[str]] = defaultdict(list)
    for s in switches:
        by_mtu[s.mtu].append(s.host or "?")
    if len(by_mtu) == 1:
        return str(next(iter(by_mtu)) or "?")
    return "; ".join(f"{m} on {', '.join(hosts)}"
                     for m, hosts in sorted(by_mtu.items(),
                                            key=lambda i: i[0] or 0))


def switch_rows(result: Pass, settings: conf.Settings
                ) -> list[dict[str, Any]]:
    """One row per mapped switch: its MTU (a vSwitch's per host), the
    largest MTU Neutron gives a network there, and whether they fit."""
    global_mtu, physnet_mtus = mtu_mod.neutron_options(cfg.CONF)
    raise_dvs = settings.raise_switch_mtu
    rows = []
    for physnet, target in sorted(result.topology.targets.items()):
        switches = mtu_mod.switch_mtus(target, result.inventory)
        top = mtu_mod.type_driver_mtu(physnet, global_mtu, physnet_mtus)
        detail, state = [], "ok"
        small = [s for s in switches if s.mtu and top and s.mtu < top]
        if small:
            if raise_dvs and target.kind == desired_mod.DVS:
                detail.append(f"raised to up to {top} as networks need it "
                              f"([{conf.GROUP}] raise_switch_mtu)")
            else:
                state = "mtu-too-small"
                detail.append(f"Neutron gives networks here up to {top}: "
                              f"they are refused unless created with a "
                              f"smaller --mtu")
        above = sorted(n.id for n in result.networks if mtu_mod.too_small(
            n.mtu, [s for s in n.segments
                    if s.get("physical_network") == physnet],
            result.topology, result.inventory, raise_dvs))
        if above:
            state = "mtu-too-small"
            detail.append(f"network(s) with a larger MTU: "
                          f"{', '.join(above)}")
        for step in result.plan.steps:
            if isinstance(step, plan_mod.RaiseDvsMtu) and \
                    step.name == target.switch:
                detail.append(f"maxMtu to be raised to {step.mtu}")
        rows.append({"physical_network": physnet, "switch": target.switch,
                     "kind": target.kind, "mtu": _mtu_text(switches),
                     "neutron_mtu": top or "unlimited", "state": state,
                     "detail": "; ".join(detail)})
    return rows


def port_rows(result: PortPass) -> list[dict[str, Any]]:
    """One row per Neutron port bound here, or DV port reserved for one."""
    rows: dict[str, dict[str, Any]] = {}

    def row(port_id: str, network_id: str, portgroup: str, state: str,
            detail: str = "", key: str = "") -> None:
        r = rows.setdefault(port_id, {
            "port": port_id, "network": network_id,
            "port_group": portgroup, "dv_port": key, "state": state,
            "detail": []})
        r["state"] = state
        if detail:
            r["detail"].append(detail)

    plan = result.plan
    for d in result.desired:
        have = plan.reserved.get(d.port_id)
        row(d.port_id, d.network_id, d.pg.name,
            "in-sync" if have else "unreserved",
            key=have.key if have else "")
    for s in plan.steps:
        if isinstance(s, plan_mod.ConfigurePort):
            row(s.port_id, s.network_id, s.portgroup, "drift",
                "its settings differ from what Neutron says", s.key)
        elif isinstance(s, plan_mod.ReleasePort):
            if s.port_id in rows and rows[s.port_id]["dv_port"] != s.key:
                rows[s.port_id]["detail"].append(
                    f"also holds DV port {s.key} of {s.portgroup}")
                continue
            row(s.port_id, s.network_id, s.portgroup, "orphan",
                "reserved, but the port is gone or bound elsewhere", s.key)
    for port_id in plan.waiting:
        r = rows.get(port_id)
        if r is not None:
            row(port_id, r["network"], r["port_group"], "waiting",
                "its port group is not ready for per-port settings yet")
    for c in plan.conflicts:
        r = rows.get(c.port_id, {})
        row(c.port_id, c.network_id, r.get("port_group", ""), "conflict",
            c.reason, r.get("dv_port", ""))
    for u in result.unenforced:
        row(u.port_id, u.network_id, u.network_id, "not-enforced",
            f"standard vSwitch: {' and '.join(u.what)} not enforced")
    out = sorted(rows.values(), key=lambda r: (r["network"], r["port"]))
    for r in out:
        r["detail"] = "; ".join(r["detail"])
    return out


def _ranges_text(ranges: tuple[tuple[int, int], ...]) -> str:
    return ",".join(f"{a}-{b}" if a != b else str(a) for a, b in ranges) \
        or "(none)"


def trunk_rows(result: Pass,
               unbound: list[tuple[str, str, str, int]] = ()
               ) -> list[dict[str, Any]]:
    """One row per trunk whose parent is one of our ports: the VLAN ranges
    Neutron wants on the parent's DV port against those it holds (as the
    port rows read it), and its state: in-sync, degraded (carried, but not
    every subport as Neutron says), drift, waiting, or not-carried (the
    reason in the detail).  ``unbound``: the trunks whose parent has no host
    yet (:func:`neutron_db.unbound_trunk_parents`)."""
    from networking_vcenter.reconcile import portsettings
    ports = result.ports
    plan = ports.plan
    desired = {d.port_id: d for d in ports.desired}
    unenforced = {u.port_id for u in ports.unenforced}
    conflicts = {c.port_id: c.reason for c in plan.conflicts}
    rows = []

    def row(trunk_id: str, parent: str, network: str, want: str, have: str,
            state: str, detail: str = "") -> None:
        rows.append({"trunk": trunk_id, "parent": parent, "network": network,
                     "dv_port": "", "want_vlans": want, "have_vlans": have,
                     "state": state, "detail": detail})

    for spec in ports.ports:
        if spec.trunk is None or spec.trunk_parent:
            continue
        trunk = spec.trunk
        want = _ranges_text(portsettings.trunk_vlans(spec)[0])
        d = desired.get(spec.id)
        if spec.id in unenforced:
            row(trunk.id, spec.id, spec.network_id, want, "", "not-carried",
                f"parent on a standard vSwitch (physical network "
                f"{spec.physnet}): no per-port VLAN trunk")
            continue
        if d is None:
            row(trunk.id, spec.id, spec.network_id, want, "", "not-carried",
                f"no port group of its network on the parent's physical "
                f"network {spec.physnet}")
            continue
        have_port = plan.reserved.get(spec.id)
        held = None if have_port is None else have_port.settings.trunk_vlans
        have = "" if have_port is None else (
            f"inherited ({inventory.vlan_text(d.pg.switch_vlan)})"
            if held is None else "a VLAN of its own, not a trunk"
            if held == () else _ranges_text(held))
        if d.settings is None or spec.id in conflicts:
            row(trunk.id, spec.id, spec.network_id, want, have,
                "not-carried", d.problem or conflicts.get(spec.id, ""))
        elif spec.id in plan.waiting:
            row(trunk.id, spec.id, spec.network_id, want, have, "waiting",
                "its port group is not ready for per-port settings yet")
        elif have_port is None:
            row(trunk.id, spec.id, spec.network_id, want, have, "drift",
                "the parent has no DV port reserved yet")
        elif held != d.settings.trunk_vlans:
            row(trunk.id, spec.id, spec.network_id, want, have, "drift",
                "the parent's DV port holds other VLANs than Neutron says")
        elif d.trunk_problems:
            row(trunk.id, spec.id, spec.network_id, want, have, "degraded",
                "; ".join(d.trunk_problems))
        else:
            row(trunk.id, spec.id, spec.network_id, want, have, "in-sync")
        if have_port is not None:
            rows[-1]["dv_port"] = have_port.key
    on_dvs = {pg.network_id for pg in result.desired
              if pg.kind == desired_mod.DVS}
    for trunk_id, parent, network, n in unbound:
        row(trunk_id, parent, network, "", "", "not-carried",
            f"the parent is unbound: its DV port gets the trunk's VLANs "
            f"({n} subport(s)) when it is bound here" if network in on_dvs
            else "the parent is unbound, and its network reaches the "
                 "compute hosts only through a standard vSwitch: binding "
                 "it here fails (no per-port VLAN trunk)")
    return sorted(rows, key=lambda r: (r["network"], r["trunk"]))


def _port_source(rec: Reconciler):
    return functools.partial(neutron_db.ports,
                             host_filter=set(rec.settings.compute_hosts))


def print_table(rows: list[dict[str, Any]], columns: list[str]) -> None:
    if not rows:
        print("(nothing)")
        return
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows))
              for c in columns}
    print("  ".join(c.upper().ljust(widths[c]) for c in columns).rstrip())
    for r in rows:
        print("  ".join(str(r[c]).ljust(widths[c]) for c in columns)
              .rstrip())


@dataclasses.dataclass
class Table:
    """One table of a command's output: ``key`` its name in the JSON
    document and for ``--section``; ``columns`` those the table shows by
    default; ``fields`` every column ``-c`` may name (a row's keys);
    ``summary`` a line under it (table format), ``counts`` its JSON form."""
    key: str
    rows: list[dict[str, Any]]
    columns: list[str]
    fields: list[str]
    summary: str = ""
    counts: dict[str, int] | None = None
    summary_key: str = ""


def chosen_columns(tables: list[Table], columns: list[str]
                   ) -> dict[str, list[str] | None]:
    """Per table, the columns ``-c`` chose that it has (None: its own, or
    every field in JSON); a table with none of them is left out.  A column
    no table has is refused, naming those there are."""
    if not columns:
        return {t.key: None for t in tables}
    known = {f for t in tables for f in t.fields}
    unknown = [c for c in columns if c not in known]
    if unknown:
        raise CliError(
            f"no column {', '.join(repr(c) for c in unknown)} here "
            f"(-c/--column); there are: "
            f"{', '.join(sorted(known))}")
    out = {}
    for t in tables:
        have = [c for c in columns if c in t.fields]
        if have:
            out[t.key] = have
    return out


def emit(tables: list[Table], fmt: str, columns: list[str] = ()) -> None:
    """``tables`` in ``fmt`` (table, json, value, csv), as ``openstack``
    commands print theirs; ``columns`` as ``-c`` gives them."""
    shown_cols = chosen_columns(tables, list(columns))
    if fmt == "json":
        doc: dict[str, Any] = {}
        for t in tables:
            if t.key in shown_cols:
                cols = shown_cols[t.key]
                doc[t.key] = t.rows if cols is None else [
                    {c: r[c] for c in cols} for r in t.rows]
            if t.summary_key:
                doc[t.summary_key] = dict(t.counts or {})
        json.dump(doc, sys.stdout, indent=2)
        print()
        return
    first = True
    for t in tables:
        if t.key not in shown_cols:
            continue
        cols = shown_cols[t.key] or t.columns
        if fmt == "value":
            for r in t.rows:
                print(" ".join(str(r[c]) for c in cols))
        elif fmt == "csv":
            out = csv.writer(sys.stdout, quoting=csv.QUOTE_NONNUMERIC,
                             lineterminator="\n")
            out.writerow(cols)
            out.writerows([r[c] for c in cols] for r in t.rows)
        else:
            if not first:
                print()
            print_table(t.rows, cols)
            if t.summary:
                print("\n" + t.summary)
        first = False


STATUS_SECTIONS = ("switches", "port_groups", "ports", "trunks")
# Every column of status's tables (rows' keys), for ``-c``.
STATUS_FIELDS = ["physical_network", "switch", "kind", "mtu", "neutron_mtu",
                 "network", "port_group", "vlan", "port", "dv_port", "trunk",
                 "parent", "want_vlans", "have_vlans", "state", "detail"]


def cmd_status(rec: Reconciler, fmt: str, columns: list[str] = (),
               sections: list[str] = ()) -> int:
    """Read and plan, change nothing; no lock: it runs while a full pass
    runs elsewhere (and never waits for one)."""
    # A column no table has is refused before anything is read.
    chosen_columns([Table("", [], [], STATUS_FIELDS)], list(columns))
    result = rec.sync_all(neutron_db.networks, dry_run=True,
                          port_source=_port_source(rec))
    rows = status_rows(result)
    ports = port_rows(result.ports)
    switches = switch_rows(result, rec.settings)
    trunks = trunk_rows(result, neutron_db.unbound_trunk_parents(
        {d.network_id for d in result.desired}))
    trunk_counts: dict[str, int] = defaultdict(int)
    for r in trunks:
        trunk_counts[r["state"]] += 1
    counts: dict[str, int] = defaultdict(int)
    port_counts: dict[str, int] = defaultdict(int)
    for r in rows:
        counts[r["state"]] += 1
    for r in ports:
        port_counts[r["state"]] += 1
    def summary(what: str, c: dict[str, int]) -> str:
        return ", ".join(f"{n} {what}{s}" for s, n in sorted(c.items()))

    tables = [
        Table("switches", switches,
              ["physical_network", "switch", "kind", "mtu", "neutron_mtu",
               "state", "detail"],
              ["physical_network", "switch", "kind", "mtu", "neutron_mtu",
               "state", "detail"]),
        Table("port_groups", rows,
              ["network", "physical_network", "switch", "port_group", "vlan",
               "state", "detail"],
              ["network", "physical_network", "switch", "port_group", "vlan",
               "state", "detail"],
              summary("", counts), counts, "summary"),
        Table("ports", ports,
              ["port", "network", "dv_port", "state", "detail"],
              ["port", "network", "port_group", "dv_port", "state",
               "detail"],
              summary("ports ", port_counts), port_counts, "port_summary"),
        Table("trunks", trunks,
              ["trunk", "parent", "dv_port", "want_vlans", "have_vlans",
               "state", "detail"],
              ["trunk", "parent", "network", "dv_port", "want_vlans",
               "have_vlans", "state", "detail"],
              summary("trunks ", trunk_counts), trunk_counts,
              "trunk_summary")]
    if fmt == "table" and not trunks and not sections:
        tables.pop()        # no trunk here: no empty trunk table
    emit([t for t in tables if not sections or t.key in sections], fmt,
         columns)
    ok = {"in-sync", "not-enforced"}
    # A trunk degraded or not carried is reported as a port not enforced
    # is: a sync would not change it.
    trunk_ok = {"in-sync", "degraded", "not-carried"}
    return EXIT_OK if set(counts) <= {"in-sync"} and set(port_counts) <= ok \
        and set(trunk_counts) <= trunk_ok \
        and all(r["state"] == "ok" for r in switches) else EXIT_DIFF


# -- sync --------------------------------------------------------------------------

def busy_message(rec: Reconciler, wait: float) -> str:
    return (f"networking-vcenter: a full pass is running elsewhere (a "
            f"Neutron server's maintenance worker, or another "
            f"'networking-vcenter sync'): its lock '{FULL_PASS_LOCK}' on "
            f"{rec.locks.backend_url} was not free within {wait:g} s. "
            f"Nothing was changed; run 'sync' again later, or wait longer "
            f"with 'sync --wait SECONDS' ('status' needs no lock).")


def cmd_sync(rec: Reconciler, fmt: str, dry_run: bool,
             wait: float = SYNC_WAIT) -> int:
    """``dry_run``: the plan, read without a lock.  Otherwise the full
    pass, under its lock, waited for up to ``wait`` seconds: EXIT_BUSY
    if a pass running elsewhere holds it that long."""
    if dry_run:
        result = rec.sync_all(neutron_db.networks, dry_run=True,
                              port_source=_port_source(rec))
        ports = result.ports
        steps = result.plan.describe() + ports.plan.describe()
        if fmt == "json":
            json.dump({"plan": steps}, sys.stdout, indent=2)
            print()
        else:
            print("\n".join(steps) if steps else "nothing to do")
        return EXIT_OK if not result.plan.steps and \
            not result.plan.conflicts and not ports.plan.steps and \
            not ports.plan.conflicts else EXIT_DIFF

    # The lock backend first: unusable, nothing is read.
    rec.locks.start()
    done = [0]
    total = [0]
    quiet = fmt == "json"

    def progress(step: plan_mod.Step, how: str) -> None:
        done[0] += 1
        # The plan is made again under the lock: it may have grown since
        # the preview (a network made meanwhile); never "[5/4]".
        total[0] = max(total[0], done[0])
        if not quiet:
            print(f"[{done[0]}/{total[0]}] {how:8} {step.describe()}",
                  file=sys.stderr, flush=True)

    # The steps to come, port steps too, for the counter (read unlocked).
    preview = rec.sync_all(neutron_db.networks, dry_run=True,
                           port_source=_port_source(rec))
    total[0] = len(preview.plan.steps) + len(preview.ports.plan.steps)
    result = rec.sync_all(neutron_db.networks, wait=wait, progress=progress,
                          port_source=_port_source(rec))
    if result is None:
        print(busy_message(rec, wait), file=sys.stderr)
        return EXIT_BUSY
    out = result.outcome
    ports = result.ports
    port_out = ports.outcome
    for step in port_out.done:
        progress(step, "done")
    for step, _ in port_out.failed:
        progress(step, "failed")
    port_failed = [(s, e) for s, e in port_out.failed] + \
        [(s, "changed meanwhile; run again") for s in port_out.stale]
    summary = {"done": len(out.done), "failed": len(out.failed),
               "deferred": len(out.deferred), "conflicts": len(out.conflicts),
               "ports done": len(port_out.done),
               "ports failed": len(port_failed),
               "port conflicts": len(ports.plan.conflicts)}
    if quiet:
        json.dump({"summary": summary,
                   "failed": [f"{s.describe()}: {e}" for s, e in out.failed],
                   "deferred": [f"{s.describe()}: {r}"
                                for s, r in out.deferred],
                   "conflicts": [c.reason for c in out.conflicts],
                   "port_failed": [f"{s.describe()}: {e}"
                                   for s, e in port_failed],
                   "port_conflicts": [f"port {c.port_id}: {c.reason}"
                                      for c in ports.plan.conflicts]},
                  sys.stdout, indent=2)
        print()
    else:
        for s, e in out.failed:
            print(f"FAILED: {s.describe()}: {e}")
        for s, r in out.deferred:
            print(f"DEFERRED: {s.describe()}: {r}")
        for c in out.conflicts:
            print(f"CONFLICT: {c.reason}")
        for s, e in port_failed:
            print(f"FAILED: {s.describe()}: {e}")
        for c in ports.plan.conflicts:
            print(f"CONFLICT: port {c.port_id}: {c.reason}")
        print(", ".join(f"{v} {k}" for k, v in summary.items()))
    return EXIT_OK if not (out.failed or out.deferred or out.conflicts or
                           port_failed or ports.plan.conflicts) \
        else EXIT_DIFF


# -- check ---------------------------------------------------------------------------

def check_exit(checks: list[dict[str, str]]) -> int:
    """``check``'s exit status: EXIT_ERROR if a check failed without which
    ``status`` and ``sync`` cannot run (:data:`BLOCKING`), EXIT_DIFF if
    another failed or could not tell, else EXIT_OK.  (A check of one of
    several vCenters is named "<check> (<vCenter>)".)"""
    failed = {c["check"].split(" (")[0] for c in checks
              if c["result"] not in PASSING}
    if failed & set(BLOCKING):
        return EXIT_ERROR
    return EXIT_DIFF if failed else EXIT_OK


def cmd_check(config_args: list[str], fmt: str,
              columns: list[str] = (), vcenter: str | None = None) -> int:
    """Every vCenter's checks (or ``vcenter``'s), each check named with its
    vCenter where there are several; the lock backend's and the
    database's once."""
    checks: list[dict[str, str]] = []
    rec: Reconciler | None = None

    def record(name: str, ok: bool | None | str, detail: str,
               of: str = "") -> None:
        checks.append({"check": f"{name} ({of})" if of else name,
                       "result": {True: "ok", False: "FAIL",
                                  None: "skipped"}.get(ok, ok),
                       "detail": shown(detail, rec)})

    def finish() -> int:
        emit([Table("checks", checks, ["check", "result", "detail"],
                    ["check", "result", "detail"])], fmt, columns)
        return check_exit(checks)

    # A column no table has is refused before anything is read.
    chosen_columns([Table("checks", [], [], ["check", "result", "detail"])],
                   list(columns))
    try:
        vcenters = load_config(config_args, vcenter)
        # Refused here too: a lock backend whose driver cannot load.
        recs = [Reconciler.from_settings(s, watch=False) for s in vcenters]
        record("configuration", True, f"[{conf.GROUP}] is valid" + (
            f" ({len(vcenters)} vCenters)" if vcenters[0].name else ""))
    except (CliError, exceptions.ConfigError) as exc:
        record("configuration", False, str(exc))
        return finish()
    try:
        for settings, rec in zip(vcenters, recs):
            check_vcenter(rec, settings,
                          functools.partial(record, of=settings.name))
        rec = recs[0]
        check_locks(rec, record)
    finally:
        for one in recs:
            log_out(one)
    try:
        nets = neutron_db.networks(None)
        record("Neutron database", True, f"{len(nets)} network(s)")
    except Exception as exc:  # noqa: BLE001 - any DB error is a failed check
        record("Neutron database", False, str(exc).splitlines()[0])
    return finish()


def check_locks(rec: Reconciler,
                record: Callable[[str, bool | None | str, str], None],
                wait: float = CHECK_LOCK_WAIT) -> None:
    """Join the lock backend, take a test lock and release it: what the
    full pass and every port's lock need.  The backend's URL is shown
    masked, as its errors are.

    A backend that does not answer fails the check after about ``wait``
    seconds: tooz's Redis client (redis-py's retries, nested) tries a
    refused connection for about a minute before it gives up.  The attempt
    is left to finish in a daemon thread; the command goes on."""
    where = rec.locks.backend_url
    outcome: dict[str, Any] = {}

    def attempt() -> None:
        try:
            with rec.locks.hold(CHECK_LOCK, timeout=wait) as got:
                outcome["got"] = got
        except Exception as exc:  # noqa: BLE001 - any backend error fails it
            outcome["error"] = exc

    thread = threading.Thread(target=attempt, name="check-lock",
                              daemon=True)
    thread.start()
    # A little past the lock's own wait: a lock held elsewhere is told
    # apart from a backend that does not answer.
    thread.join(wait + 2)
    if not outcome:
        record("coordination backend", False,
               f"{locks_mod.OPTION} '{where}': no answer within "
               f"{wait + 2:g} s (is the backend down?)")
        return
    if "error" in outcome:
        exc = outcome["error"]
        if isinstance(exc, exceptions.ConfigError):
            # Its first line is a heading: the problems say what and why.
            text = "; ".join(exc.problems)
        else:
            text = str(exc).splitlines()[0] if str(exc) else \
                type(exc).__name__
        if locks_mod.OPTION not in text:
            text = f"{locks_mod.OPTION} '{where}': {text}"
        record("coordination backend", False, text)
        return
    got = outcome["got"]
    record("coordination backend", got,
           f"{where}: a test lock taken and released" if got else
           f"{where}: the test lock '{CHECK_LOCK}' was not had within "
           f"{wait:g} s (another 'check' holding it?)")


def check_vcenter(rec: Reconciler, settings: conf.Settings,
                  record: Callable[[str, bool | None | str, str], None]
                  ) -> None:
    """Login, mappings, our custom attribute and the privileges, by reads
    only: ``check`` must work under a read-only role and change nothing."""
    session = rec.session
    try:
        session.connect()
    except exceptions.VCenterError as exc:
        record("vCenter login", False, str(exc))
        return
    record("vCenter login", True, f"{session.endpoint} as "
                                  f"{settings.host_username}")
    try:
        inv = rec.inventory()
        topo = rec.topology(inv)
        record("mappings", True, "; ".join(
            f"{t.physnet} -> {t.kind} {t.switch}"
            + (f" on {len(t.host_moids)} host(s)" if t.kind != "dvs" else "")
            for t in topo.targets.values()))
    except exceptions.VCenterError as exc:
        record("mappings", False, str(exc))
        return
    record_mtus(inv, topo, settings, record)
    if not inv.custom_fields:
        record("custom attribute", True, "none needed: this endpoint (a "
                                         "standalone ESXi host) has none")
    elif inv.owner_field_key is None:
        record("custom attribute", "pending",
               f"'{inventory.OWNER_FIELD}' is not defined yet: 'networking-"
               f"vcenter sync' or the Neutron server defines it when it "
               f"first marks a standard port group (Global.ManageCustomFields"
               f" below)")
    else:
        record("custom attribute", True, f"'{inventory.OWNER_FIELD}' is "
                                         f"defined (key {inv.owner_field_key})")
    try:
        wanted = privileges.needs(
            inv, session.content.rootFolder,
            [t.switch for t in topo.targets.values()
             if t.kind == desired_mod.DVS],
            [h for t in topo.targets.values()
             if t.kind == desired_mod.VSWITCH for h in t.host_moids],
            raise_mtu=settings.raise_switch_mtu)
        lacking = privileges.missing(privileges.query(session, wanted),
                                     wanted)
        record("privileges", not lacking,
               "missing: " + "; ".join(lacking) if lacking else
               f"{sum(len(n.privileges) for n in wanted)} privilege(s) on "
               f"{len(wanted)} object(s) granted")
    except exceptions.VCenterError as exc:
        record("privileges", None, f"vCenter cannot tell: {exc}")


def record_mtus(inv: inventory.Inventory, topo: desired_mod.Topology,
                settings: conf.Settings,
                record: Callable[[str, bool | None | str, str], None]
                ) -> None:
    """Each mapped switch's MTU against the largest MTU Neutron gives a
    network on its physical network."""
    try:
        global_mtu, physnet_mtus = mtu_mod.neutron_options(cfg.CONF)
    except (cfg.NoSuchOptError, cfg.NoSuchGroupError) as exc:
        record("switch MTUs", None, f"Neutron's MTU options unknown: {exc}")
        return
    found = mtu_mod.mismatches(topo, inv, global_mtu, physnet_mtus,
                               settings.raise_switch_mtu)
    shown = []
    for t in topo.targets.values():
        top = mtu_mod.type_driver_mtu(t.physnet, global_mtu, physnet_mtus)
        shown.append(f"{t.physnet} -> {t.switch} MTU "
                     f"{_mtu_text(mtu_mod.switch_mtus(t, inv))} (Neutron: "
                     f"up to {top or 'unlimited'})")
    record("switch MTUs", not found, "; ".join(
        [m.describe() for m in found] if found else shown))


# -- main ------------------------------------------------------------------------------

class _ConfigArg(argparse.Action):
    """``--config-file`` and ``--config-dir`` into one list, in the order
    given, handed to oslo.config as they are (it reads them in order)."""

    def __call__(self, parser, namespace, value, option_string=None):
        given = getattr(namespace, self.dest) or []
        setattr(namespace, self.dest,
                [*given, self.option_strings[0], value])


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a number of seconds (0 or more)")
    return value


def _output_options(parser: argparse.ArgumentParser,
                    columns: bool = True) -> None:
    """``-f/--format`` (and ``-c/--column``) after the command, as
    ``openstack`` commands take them; ``--format`` before it still works."""
    group = parser.add_argument_group("output formatters")
    group.add_argument("-f", "--format", choices=FORMATS,
                       default=argparse.SUPPRESS,
                       help="the output format (default: table)")
    if columns:
        group.add_argument("-c", "--column", action="append",
                           default=argparse.SUPPRESS, metavar="COLUMN",
                           help="show this column only (repeatable)")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="networking-vcenter", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG)
    p.add_argument("--config-file", action=_ConfigArg, dest="config",
                   metavar="PATH",
                   help="a Neutron configuration file (repeatable)")
    p.add_argument("--config-dir", action=_ConfigArg, dest="config",
                   metavar="DIR",
                   help="a directory of *.conf files, read in name order "
                        "after the files given before it (repeatable)")
    p.add_argument("-f", "--format", choices=FORMATS, default="table",
                   help="the output format (default: table)")
    p.add_argument("--debug", action="store_true",
                   help="log the driver's vSphere calls on stderr")
    p.add_argument("--vcenter", metavar="NAME",
                   help="only this vCenter of [ml2_vcenter] vcenters "
                        "(default: every one)")
    p.set_defaults(config=[], column=[])
    sub = p.add_subparsers(dest="command", required=True)
    status = sub.add_parser(
        "status", help="Neutron networks against port groups",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG)
    _output_options(status)
    status.add_argument("--section", action="append", metavar="SECTION",
                        choices=STATUS_SECTIONS, default=[],
                        help=f"show this table only (repeatable): "
                             f"{', '.join(STATUS_SECTIONS)}")
    sync = sub.add_parser(
        "sync", help="make vCenter match Neutron",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG)
    _output_options(sync, columns=False)
    sync.add_argument("--dry-run", action="store_true",
                      help="print the plan, change nothing")
    sync.add_argument("--wait", type=_seconds, default=SYNC_WAIT,
                      metavar="SECONDS",
                      help=f"how long to wait for a full pass running "
                           f"elsewhere (default {SYNC_WAIT:g}); then exit "
                           f"{EXIT_BUSY}")
    check = sub.add_parser(
        "check", help="configuration, connection, privileges, locks",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG)
    _output_options(check)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    setup_logging(args.debug)
    try:
        if args.command == "check":
            return cmd_check(args.config, args.format, args.column,
                             args.vcenter)
    except CliError as exc:
        print(f"networking-vcenter: {exc}", file=sys.stderr)
        return EXIT_ERROR
    try:
        vcenters = load_config(args.config, args.vcenter)
    except (CliError, exceptions.VCenterError) as exc:
        print(f"networking-vcenter: {exc}", file=sys.stderr)
        return EXIT_ERROR
    if len(vcenters) == 1:
        return _run(args, vcenters[0])
    # Several: each in turn, under a heading (table, value, csv) or as
    # {"vcenters": {name: its document}} (json); the worst exit status.
    codes, docs = [], {}
    for settings in vcenters:
        if args.format == "json":
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                codes.append(_run(args, settings))
            text = out.getvalue().strip()
            docs[settings.name] = json.loads(text) if text else None
        else:
            print(f"== vCenter {settings.name} ({settings.host_ip})",
                  flush=True)
            codes.append(_run(args, settings))
            print(flush=True)
    if args.format == "json":
        json.dump({"vcenters": docs}, sys.stdout, indent=2)
        print()
    return max(codes)


def _run(args: argparse.Namespace, settings: conf.Settings) -> int:
    """``status`` or ``sync`` of one vCenter."""
    rec = None
    try:
        rec = Reconciler.from_settings(settings, watch=False)
        rec.network_ports = lambda nets: neutron_db.ports(
            host_filter=set(settings.compute_hosts), network_ids=nets)
        if args.command == "status":
            return cmd_status(rec, args.format, args.column, args.section)
        return cmd_sync(rec, args.format, args.dry_run, args.wait)
    except (CliError, exceptions.VCenterError) as exc:
        print(f"networking-vcenter: {shown(exc, rec)}", file=sys.stderr)
        return EXIT_ERROR
    except Exception as exc:  # noqa: BLE001 - e.g. the database is down
        text = shown(exc, rec)
        print(f"networking-vcenter: {type(exc).__name__}: "
              f"{text.splitlines()[0] if text else ''}",
              file=sys.stderr)
        return EXIT_ERROR
    finally:
        if rec is not None:
            log_out(rec)


if __name__ == "__main__":
    sys.exit(main())

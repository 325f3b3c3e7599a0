#!/usr/bin/env python3
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

"""A security group rule change on N ports: batched tasks against one task per port.

Issue 8, point 8: a rule change that touches 1,000 ports is applied in at
most ~10 vCenter tasks.  For each N (default 100 and 1,000) this sets up,
with the driver's own code, one distributed port group of ours holding N
reserved DV ports, each named after its Neutron port and carrying the
traffic filter of one security group all N ports share.  Then the same
change -- an ingress tcp 443 rule added to that group -- is applied two
ways, alternating which goes first each round:

* ``driver``   ``Reconciler.sync_ports(all ids, ...)`` as the hooks and the
               worker run it (``watch=True``: plan from the live replica,
               ``ReconfigureDVPort_Task`` with up to ``dvs_batch_size`` (100)
               port specs, the written ports read back with one
               ``FetchDVPorts``);
* ``anchors``  the retired drivers' pattern (networking-vsphere, sapcc
               networking-dvs): one ``ReconfigureDVPort_Task`` per port.
               The ports' configVersions are read with one ``FetchDVPorts``
               (timed), each port's settings come from the same translation
               (``portsettings.port_settings``), and each single-port task
               is awaited with the driver's own task wait
               (``WaitForUpdatesEx``, no poll interval) -- kinder to the
               anchors than their ``wait_for_task`` polls every 0.5 s.

Between variants the ports are put back to the old rules by the driver
(untimed).  After each variant every port is read back with ``FetchDVPorts``
and its settings (``ports.settings_of``) compared with the desired ones and
with the other variant's: the bench fails if they differ.

SOAP round trips are counted by wrapping pyVmomi's
``SoapStubAdapter.InvokeMethod``; the replica's own long poll
(``WaitForUpdatesEx`` on its thread) is not counted, the task waits'
``WaitForUpdatesEx`` are.  Tasks: ``ReconfigureDVPort_Task`` calls.
Latency: 2 ms on every SOAP call (the simulator's ``-delay``, as bench.py
and bench_replica.py), ``--task-ms`` more on ``ReconfigureDVPort_Task``
(default 0): the simulator answers in ~0.3 ms and ends a task inside the
call that starts it, a real vCenter does neither.

Run: ``.venv/bin/python bench/bench_ports.py [--sizes 100,1000] [--rounds R]
[--delay-ms MS] [--task-ms MS]``.  Figures: RESULTS.md.  Nothing here
imports tests/.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import shutil
import statistics
import sys
import tempfile
import time
import uuid

from bench_common import (  # noqa: E402 - puts the repository on sys.path
    DVS_NAME, PHYSNET, Calls, SoapCounter, Vcsim, commit, machine,
    reconciler)
from networking_vcenter.reconcile import desired as desired_mod  # noqa: E402
from networking_vcenter.reconcile import portsettings  # noqa: E402
from networking_vcenter.reconcile.reconciler import Reconciler  # noqa: E402
from networking_vcenter.vsphere import inventory  # noqa: E402
from networking_vcenter.vsphere import ports as ports_mod  # noqa: E402

COMPUTE_HOST = "bench-compute"
TASK = "ReconfigureDVPort_Task"


@dataclasses.dataclass
class Measure:
    seconds: float
    calls: Calls

    @property
    def round_trips(self) -> int:
        return len(self.calls)

    @property
    def soap_seconds(self) -> float:
        return self.calls.seconds

    @property
    def tasks(self) -> int:
        return self.calls.count(TASK)


# -- Neutron's side, as plain data --------------------------------------------

def rules(with_https: bool) -> tuple[desired_mod.SgRule, ...]:
    """A web server's group: egress anywhere, ssh from the admin network,
    ping; the change adds https from anywhere."""
    base = (
        desired_mod.SgRule("egress", "IPv4", id="eg4"),
        desired_mod.SgRule("egress", "IPv6", id="eg6"),
        desired_mod.SgRule("ingress", "IPv4", "tcp", 22, 22,
                           remote_ip_prefix="10.0.0.0/8", id="ssh"),
        desired_mod.SgRule("ingress", "IPv4", "icmp",
                           remote_ip_prefix="0.0.0.0/0", id="ping"))
    if with_https:
        base += (desired_mod.SgRule("ingress", "IPv4", "tcp", 443, 443,
                                    remote_ip_prefix="0.0.0.0/0",
                                    id="https"),)
    return base


class Neutron:
    """What the driver reads from Neutron: one network, N ports bound on
    the distributed switch, one security group they all share."""

    def __init__(self, n: int):
        self.net = desired_mod.NetworkSpec(str(uuid.uuid4()), ({
            "network_type": "vlan", "physical_network": PHYSNET,
            "segmentation_id": 100},))
        self.sg_id = str(uuid.uuid4())
        self.with_https = False
        self.port_ids = [str(uuid.uuid4()) for _ in range(n)]
        self._ports: dict[str, desired_mod.PortSpec] = {}
        self._build()

    def set_https(self, on: bool) -> None:
        """The rule change: the shared group gains (or loses) tcp 443."""
        self.with_https = on
        self._build()

    def _build(self) -> None:
        sg = desired_mod.SecurityGroup(self.sg_id, True,
                                       rules(self.with_https))
        self._ports = {pid: desired_mod.PortSpec(
            id=pid, network_id=self.net.id, host=COMPUTE_HOST,
            physnet=PHYSNET, mac=f"fa:16:3e:{i >> 16 & 255:02x}:"
                                 f"{i >> 8 & 255:02x}:{i & 255:02x}",
            fixed_ips=(f"10.{100 + (i >> 16)}.{i >> 8 & 255}.{i & 255}",),
            security_groups=(sg,), status="DOWN")
            for i, pid in enumerate(self.port_ids, start=1)}

    def networks(self, ids):
        return [self.net] if ids is None or self.net.id in ids else []

    def ports(self, ids):
        if ids is None:
            return list(self._ports.values())
        return [self._ports[i] for i in ids if i in self._ports]


# -- set-up --------------------------------------------------------------------

def set_up(rec: Reconciler, neutron: Neutron) -> float:
    """The port group and N reserved, configured DV ports, by the driver's
    own code (untimed in the figures)."""
    t0 = time.perf_counter()
    res = rec.sync_network(neutron.net.id, neutron.networks, settle=60)
    assert not res.outcome.failed, res.outcome.failed
    deadline = time.monotonic() + 120
    while True:
        out = rec.sync_ports(set(neutron.port_ids), neutron.networks,
                             neutron.ports)
        assert not out.outcome.failed, out.outcome.failed[:3]
        if len(out.plan.reserved) == len(neutron.port_ids) and \
                not out.plan.steps:
            break
        assert time.monotonic() < deadline, (
            f"{len(out.plan.reserved)} of {len(neutron.port_ids)} reserved; "
            f"waiting {len(out.plan.waiting)}")
        time.sleep(0.2)
    return time.perf_counter() - t0


# -- the two variants ------------------------------------------------------------

def driver(rec: Reconciler, neutron: Neutron, counter: SoapCounter) -> Measure:
    ids = set(neutron.port_ids)
    with counter.counting() as calls:
        t0 = time.perf_counter()
        out = rec.sync_ports(ids, neutron.networks, neutron.ports)
        elapsed = time.perf_counter() - t0
    assert not out.outcome.failed, out.outcome.failed[:3]
    assert not out.outcome.stale and not out.plan.steps, out.plan.steps[:3]
    assert len(out.outcome.done) == len(ids), len(out.outcome.done)
    assert out.outcome.tasks == calls.count(TASK), (out.outcome.tasks,
                                                    calls)
    return Measure(elapsed, calls)


def anchors(rec: Reconciler, neutron: Neutron, pg_key: str,
            counter: SoapCounter) -> Measure:
    """One ReconfigureDVPort_Task per port, as the retired drivers did."""
    session = rec.session
    inv = rec.inventory()
    dvs = inv.dvs(DVS_NAME)
    target = rec.topology(inv).targets[PHYSNET]
    mac_management = inventory.mac_management_supported(dvs)
    with counter.counting() as calls:
        t0 = time.perf_counter()
        current = {p.name: p for p in ports_mod.fetch_ports(
            session, dvs.ref, [pg_key])[pg_key]}
        for spec in neutron.ports(neutron.port_ids):
            new = portsettings.port_settings(
                spec, max_rules=rec.settings.max_rules_per_port,
                mac_learning=target.mac_learning)
            if not target.mac_learning:
                new = dataclasses.replace(new, mac_learning=None)
            port = current[spec.id]
            ports_mod.reconfigure_ports(
                session, dvs.ref,
                [(port.key, port.config_version, None, new)],
                f"reconfigure port {port.key} for {spec.id}",
                mac_management=mac_management)
        elapsed = time.perf_counter() - t0
    return Measure(elapsed, calls)


# -- checking ------------------------------------------------------------------

def read_back(rec: Reconciler, pg_key: str) -> dict:
    """Every DV port of the group named after a port: its own settings, as
    FetchDVPorts shows them (``ports.settings_of``)."""
    dvs = rec.inventory().dvs(DVS_NAME)
    return {p.name: p.settings for p in ports_mod.fetch_ports(
        rec.session, dvs.ref, [pg_key])[pg_key] if p.name}


def check(rec: Reconciler, neutron: Neutron, pg_key: str, what: str) -> dict:
    """The ports as vCenter holds them must be exactly as desired."""
    got = read_back(rec, pg_key)
    topo = rec.topology(rec.inventory())
    want, _ = portsettings.desired_ports(
        neutron.ports(None), {neutron.net.id: neutron.net}, topo,
        rec.settings.max_rules_per_port)
    want = {d.port_id: d.settings for d in want}
    assert set(got) == set(want), f"{what}: ports {len(got)} != {len(want)}"
    wrong = [pid for pid in want if got[pid] != want[pid]]
    assert not wrong, f"{what}: {len(wrong)} ports differ, e.g. {wrong[0]}"
    https = [r for r in next(iter(got.values())).rules
             if r.protocol == 6 and r.destination_ports == (443, 443)]
    assert bool(https) == neutron.with_https, f"{what}: tcp 443 rule {https}"
    return got


def revert(rec: Reconciler, neutron: Neutron, pg_key: str) -> None:
    """Untimed: the ports back to the old rules, by the driver, from a
    fresh read (the replica does not see ports edited by another client)."""
    neutron.set_https(False)
    rec.replica.refresh_ports({pg_key})
    out = rec.sync_ports(set(neutron.port_ids), neutron.networks,
                         neutron.ports)
    assert not out.outcome.failed and not out.plan.steps, out.plan.steps[:3]
    check(rec, neutron, pg_key, "reverted")


# -- main ------------------------------------------------------------------------

def run_size(sim: Vcsim, n: int, rounds: int, lock_dir: str) -> dict:
    neutron = Neutron(n)
    rec = reconciler(sim, lock_dir, str(n), compute_host=COMPUTE_HOST)
    counter = SoapCounter()
    try:
        made = set_up(rec, neutron)
        pg = next(pg for pg in rec.inventory().dvs_portgroups
                  if pg.owner == neutron.net.id)
        per_port = len(check(rec, neutron, pg.key, "set-up")[
            neutron.port_ids[0]].rules)
        print(f"N={n}: port group {pg.name} ({pg.key}), {n} DV ports "
              f"reserved and configured in {made:.1f} s (untimed set-up); "
              f"{per_port} traffic rules per port before the change",
              flush=True)
        results: dict[str, list[Measure]] = {"driver": [], "anchors": []}
        for r in range(rounds):
            order = ("driver", "anchors") if r % 2 == 0 else \
                ("anchors", "driver")
            states = {}
            for variant in order:
                neutron.set_https(True)
                if variant == "driver":
                    m = driver(rec, neutron, counter)
                else:
                    m = anchors(rec, neutron, pg.key, counter)
                states[variant] = check(rec, neutron, pg.key, variant)
                results[variant].append(m)
                methods = dict(sorted(collections.Counter(m.calls).items()))
                print(f"  round {r + 1} {variant:8s} {m.seconds:8.2f} s "
                      f"({m.soap_seconds:.2f} s in SOAP calls) "
                      f"{m.round_trips:6d} round trips {m.tasks:5d} tasks  "
                      f"{methods}", flush=True)
                revert(rec, neutron, pg.key)
            assert states["driver"] == states["anchors"], \
                "the two variants left different ports"
        return {"n": n, "rules_before": per_port,
                "rules_after": len(states["driver"][
                    neutron.port_ids[0]].rules),
                "results": results}
    finally:
        rec.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,1000",
                        help="numbers of ports, comma-separated")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--delay-ms", type=int, default=2,
                        help="added to every vSphere call")
    parser.add_argument("--task-ms", type=int, default=0,
                        help=f"added to each {TASK}")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]

    extra = ["-delay", str(args.delay_ms)]
    if args.task_ms:
        extra += ["-method-delay", f"{TASK}:{args.task_ms}"]
    print(f"bench_ports: commit {commit()}, {machine()}; {args.delay_ms} ms "
          f"per call, {args.task_ms} ms more per {TASK}; {args.rounds} "
          f"round(s), variants alternating", flush=True)
    lock_dir = tempfile.mkdtemp(prefix="bench-ports-locks-")
    out = []
    try:
        for n in sizes:
            # One simulator per size: the ports of one size do not weigh on
            # the other's reads.
            sim = Vcsim(extra_args=extra).start()
            try:
                out.append(run_size(sim, n, args.rounds, lock_dir))
            finally:
                sim.stop()
    finally:
        shutil.rmtree(lock_dir, ignore_errors=True)

    print()
    print("| N | pattern | time (median) | of it in SOAP calls | round trips "
          "| tasks | time ratio | round-trip ratio | task ratio |")
    print("|---|---|---|---|---|---|---|---|---|")
    for row in out:
        res = row["results"]

        def med(fn):
            return {v: statistics.median(fn(m) for m in ms)
                    for v, ms in res.items()}

        t = med(lambda m: m.seconds)
        soap = med(lambda m: m.soap_seconds)
        rt = med(lambda m: m.round_trips)
        tasks = med(lambda m: m.tasks)
        for v, label in (("driver", "networking-vcenter"),
                         ("anchors", "one task per port")):
            ratio = "1x | 1x | 1x" if v == "driver" else \
                (f"{t[v] / t['driver']:.1f}x | "
                 f"{rt[v] / rt['driver']:.1f}x | "
                 f"{tasks[v] / tasks['driver']:.0f}x")
            print(f"| {row['n']} | {label} | {t[v]:.2f} s | {soap[v]:.2f} s "
                  f"| {rt[v]:.0f} | {tasks[v]:.0f} | {ratio} |")
    for row in out:
        print(f"N={row['n']}: {row['rules_before']} traffic rules per port "
              f"before the change, {row['rules_after']} after")
    return 0


if __name__ == "__main__":
    sys.exit(main())

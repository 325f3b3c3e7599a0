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

"""One VM joining a big default security group, a rule added to it, a
member leaving: per-port filters against one shared filter per port group.

Issue 15, point 2.  For each N, one network whose default security group
(egress anywhere, ingress from its own members, stateful: Neutron's
default rules) has N bound member ports, their addresses spread over a /20
with holes (as bench_sg.py makes them).  Two variants, side by side in one
run, each on its own simulator (``-delay``: 2 ms per call), by the
driver's own code (``Reconciler``), with plain-data Neutron:

* ``per-port``  ``shared_security_filter = False``: every member's DV port
                holds its own filter (the path until issue 15);
* ``shared``    ``shared_security_filter = True``: the members inherit one
                filter held in their port group's defaults.

Measured, for each variant (the set-up untimed):

* **join**: a port created in the group is bound (``Reconciler.port_for``,
  as ``bind_port`` does) and then the hook's sync runs for every member
  (``ports_referencing`` the group, as ``update_port_postcommit`` asks);
* **rule**: an ingress tcp 443 rule added to the group, then the hook's
  sync of every member;
* **leave**: a member deleted, then the sync of the others.

Per step: the process CPU (``time.process_time``: every thread, the
replica's included, until the replica is idle again), the wall time, the
vCenter tasks and round trips (the replica's long poll not counted).
After each step the members' effective filters are read back from vCenter
(untimed) and checked: every member admits the newcomer / the new rule,
and no member admits the address of the member that left.  The driver's
CPU only: Neutron's own API work for the port create is not in it.

    .venv/bin/python bench/bench_join.py [--sizes 100,1000] [--delay-ms 2]
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import ipaddress
import random
import shutil
import tempfile
import time
import uuid

from bench_common import (  # noqa: E402 - puts the repository on sys.path
    CLUSTER, DVS_NAME, PHYSNET, SoapCounter, Vcsim, commit, machine,
    settings)
from networking_vcenter.reconcile import desired as d  # noqa: E402
from networking_vcenter.reconcile.locks import Locks  # noqa: E402
from networking_vcenter.reconcile.reconciler import Reconciler  # noqa: E402
from networking_vcenter.vsphere import ports as ports_mod  # noqa: E402

HOST = "bench-compute"
TASKS = ("ReconfigureDVPort_Task", "ReconfigureDVPortgroup_Task")
TO_VM = "outgoingPackets"


class Neutron:
    """One network, its project's default group, N bound members."""

    def __init__(self, n: int, seed: int = 15):
        rnd = random.Random(seed)
        hosts = list(ipaddress.ip_network("10.0.0.0/20").hosts())
        picked = rnd.sample(hosts, n + 1)
        self.spare = str(picked.pop())          # the newcomer's address
        self.sg = "sg-" + uuid.uuid4().hex[:8]
        self.net = d.NetworkSpec(str(uuid.uuid4()), ({
            "network_type": "vlan", "physical_network": PHYSNET,
            "segmentation_id": 100},), shared_group=self.sg)
        self.https = False
        self.addrs = {f"port-{i:05d}": str(a)
                      for i, a in enumerate(sorted(picked))}
        self.macs = {pid: f"fa:16:3e:00:{i >> 8:02x}:{i & 0xff:02x}"
                     for i, pid in enumerate(self.addrs)}
        self.build()

    def group(self) -> d.SecurityGroup:
        rules = (
            d.SgRule("egress", "IPv4", id="r1"),
            d.SgRule("egress", "IPv6", id="r2"),
            d.SgRule("ingress", "IPv4", remote_group_id=self.sg, id="r3"),
            d.SgRule("ingress", "IPv6", remote_group_id=self.sg, id="r4"))
        if self.https:
            rules += (d.SgRule("ingress", "IPv4", "tcp", 443, 443,
                               remote_ip_prefix="0.0.0.0/0", id="r5"),)
        return d.SecurityGroup(self.sg, True, rules)

    def build(self) -> None:
        sg = self.group()
        members = {self.sg: tuple(sorted(self.addrs.values()))}
        self.specs = {pid: d.PortSpec(
            id=pid, network_id=self.net.id, host=HOST, physnet=PHYSNET,
            mac=self.macs[pid], fixed_ips=(ip,), security_groups=(sg,),
            remote_groups=members, status="DOWN")
            for pid, ip in self.addrs.items()}

    def join(self) -> str:
        pid = f"port-{len(self.macs):05d}"
        self.macs[pid] = f"fa:16:3e:01:{len(self.macs) >> 8 & 255:02x}:" \
                         f"{len(self.macs) & 0xff:02x}"
        self.addrs[pid] = self.spare
        self.build()
        return pid

    def leave(self, pid: str) -> None:
        del self.addrs[pid]
        self.build()

    def networks(self, ids):
        return [self.net] if ids is None or self.net.id in ids else []

    def ports(self, ids, network_ids=None):
        if ids is None:
            return list(self.specs.values()) \
                if network_ids is None or self.net.id in network_ids else []
        return [self.specs[i] for i in ids if i in self.specs]


@dataclasses.dataclass
class Step:
    cpu: float
    wall: float
    tasks: int
    round_trips: int


def idle(rec: Reconciler, quiet: float = 0.5, limit: float = 600) -> None:
    """Until the replica has applied nothing for ``quiet`` seconds."""
    end = time.monotonic() + limit
    last = -1
    while time.monotonic() < end:
        now = rec.replica._generation
        if now == last:
            return
        last = now
        time.sleep(quiet)


def measured(rec: Reconciler, counter: SoapCounter, fn) -> Step:
    idle(rec)
    with counter.counting() as calls:
        c0, t0 = time.process_time(), time.perf_counter()
        fn()
        wall = time.perf_counter() - t0
        idle(rec)
        cpu = time.process_time() - c0
    return Step(cpu, wall, sum(calls.count(t) for t in TASKS), len(calls))


def effective(rec: Reconciler, pg_key: str, shared: bool) -> dict:
    """{port id: its effective rules}, read back from vCenter (the shared
    filter itself; which ports inherit it: the replica's view)."""
    inv = rec.inventory()
    dvs = inv.dvs(DVS_NAME)
    if shared:
        (pg,) = [p for p in inv.dvs_portgroups if p.key == pg_key]
        ref = pg.ref
        policy = ref.config.defaultPortConfig.filterPolicy
        rules = tuple(ports_mod.rule_of(r) for c in policy.filterConfig
                      for r in c.trafficRuleset.rules or [])
    out = {}
    # The driver's own read: inherited filters are passed over, not built.
    # A shared filter's ports still bring its rules (~2.6 GB at 1,000 x
    # 4,900): there, which ports inherit is taken from the replica.
    held = rec.replica.snapshot().dv_ports[pg_key] if shared else \
        ports_mod.fetch_ports(rec.session, dvs.ref, [pg_key])[pg_key]
    for p in held:
        if not p.name or p.name == "free":
            continue
        own = p.settings.rules
        out[p.name] = rules if own is None and shared else own
    return out


def admits(rules, ip: str, port: int | None = None) -> bool:
    """Memoised per rules object: sharing members hold the same one."""
    key = (id(rules), ip, port)
    if key not in _ADMITS:
        _ADMITS[key] = (rules, _admits(rules, ip, port))
    return _ADMITS[key][1]


_ADMITS: dict = {}


def _admits(rules, ip: str, port: int | None = None) -> bool:
    """A to-the-VM accept from ``ip`` (to any port, or to ``port``) that
    names no MAC and no destination: what a member admits of another."""
    addr = ipaddress.ip_address(ip)
    for r in rules or ():
        if r.direction != TO_VM or r.action != "accept" or \
                r.destination is not None or \
                getattr(r, "destination_mac", None) is not None:
            continue
        if r.source is None or addr in ipaddress.ip_network(r.source):
            if port is None and r.protocol is None and \
                    r.destination_ports is None:
                return True
            if port is not None and r.destination_ports == (port, port):
                return True
    return False


def run(variant: str, n: int, delay_ms: int) -> dict:
    shared = variant == "shared"
    neutron = Neutron(n)
    sim = Vcsim(extra_args=("-delay", str(delay_ms))).start()
    lock_dir = tempfile.mkdtemp(prefix="bench-join-")
    counter = SoapCounter()
    s = dataclasses.replace(settings(sim, HOST), shared_security_filter=shared,
                            max_rules_per_port=10 ** 5,
                            max_rules_per_port_group=10 ** 6)
    rec = Reconciler(s, Locks("file://" + lock_dir), watch=True)
    rec.start()
    out: dict = {"variant": variant, "n": n}
    try:
        t0 = time.perf_counter()
        rec.sync_network(neutron.net.id, neutron.networks, settle=60)
        while True:
            res = rec.sync_ports(set(neutron.specs), neutron.networks,
                                 neutron.ports)
            assert not res.outcome.failed, res.outcome.failed[:3]
            if len(res.plan.reserved) == n and not res.plan.steps:
                break
        pg = next(pg for pg in rec.inventory().dvs_portgroups
                  if pg.owner == neutron.net.id)
        pg_key = pg.key
        if pg.num_ports <= n:
            # The steady state: a free port for the newcomer.  A join
            # that finds its group full grows it first (one more task,
            # by a quarter: once per N/4 joins).
            ports_mod.grow_port_group(rec.session, pg, 8)
            rec.replica.wait_until(lambda inv: any(
                p.key == pg_key and p.num_ports > n
                for p in inv.dvs_portgroups), 60)
        print(f"  {variant} N={n}: set up in {time.perf_counter() - t0:.0f} s"
              f" (untimed)", flush=True)

        new = neutron.join()

        def join():
            spec = neutron.specs[new]
            rec.port_for(spec, neutron.networks, time.monotonic() + 600)
            rec.sync_ports(set(neutron.specs), neutron.networks,
                           neutron.ports, wait=600)
        out["join"] = measured(rec, counter, join)
        eff = effective(rec, pg_key, shared)
        ip = neutron.addrs[new]
        missing = [p for p in neutron.specs if not admits(eff.get(p), ip)]
        assert not missing, f"{len(missing)} members do not admit {ip}"

        neutron.https = True
        neutron.build()
        out["rule"] = measured(rec, counter, lambda: rec.sync_ports(
            set(neutron.specs), neutron.networks, neutron.ports, wait=600))
        eff = effective(rec, pg_key, shared)
        missing = [p for p in neutron.specs
                   if not admits(eff.get(p), "192.0.2.1", 443)]
        assert not missing, f"{len(missing)} members lack the 443 rule"

        gone = next(iter(neutron.specs))
        gone_ip = neutron.addrs[gone]
        neutron.leave(gone)
        out["leave"] = measured(rec, counter, lambda: rec.sync_ports(
            set(neutron.specs) | {gone}, neutron.networks, neutron.ports,
            wait=600))
        eff = effective(rec, pg_key, shared)
        still = [p for p in neutron.specs if admits(eff.get(p), gone_ip)]
        assert not still, f"{len(still)} members still admit {gone_ip}"
        sizes = collections.Counter(len(r or ()) for r in eff.values())
        out["rules"] = max(sizes)
        return out
    finally:
        rec.close()
        sim.stop()
        shutil.rmtree(lock_dir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,1000")
    parser.add_argument("--delay-ms", type=int, default=2)
    parser.add_argument("--variants", default="per-port,shared")
    args = parser.parse_args()
    print(f"bench_join: commit {commit()}, {machine()}; {args.delay_ms} ms "
          f"per vSphere call; cluster {CLUSTER}", flush=True)
    rows = []
    for n in [int(x) for x in args.sizes.split(",")]:
        for variant in args.variants.split(","):
            rows.append(run(variant, n, args.delay_ms))
    print("\n| N | variant | rules per filter | join: CPU / wall / tasks / "
          "round trips | rule added: CPU / wall / tasks | member left: "
          "CPU / wall / tasks |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        j, u, lv = r["join"], r["rule"], r["leave"]
        print(f"| {r['n']} | {r['variant']} | {r['rules']} | "
              f"{j.cpu:.2f} s / {j.wall:.2f} s / {j.tasks} / "
              f"{j.round_trips} | {u.cpu:.2f} s / {u.wall:.2f} s / "
              f"{u.tasks} | {lv.cpu:.2f} s / {lv.wall:.2f} s / {lv.tasks} |")


if __name__ == "__main__":
    main()

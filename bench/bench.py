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

"""Port group creation: networking-vcenter's path against the retired drivers'.

Both variants run in one process against one simulator, in alternating rounds,
so a ratio holds while the machine's speed drifts.  The simulator answers in
~0.3 ms and finishes tasks inside the call that starts them, which a real
vCenter does not: latency is injected with the simulator's own knobs (a delay
on every call, and more on the methods that are tasks or host writes on a real
vCenter), see ../shared/FACTS.md.

Scenarios:

* ``dvs``      N distributed port groups on DVS0.
  - ours:      :class:`Reconciler` ``sync_all`` over N networks -- one batched
               inventory read, ``AddDVPortgroup_Task`` with up to
               ``dvs_batch_size`` specs, one ``WaitForUpdatesEx`` per task;
  - retired:   per port group, find the switch by name (read every switch's
               name), one ``AddDVPortgroup_Task`` with one spec, poll the task.
* ``vswitch``  N standard port groups on every host of a 16-host cluster.
  - ours:      ``sync_all``: host writes in parallel (``max_parallel_tasks``);
  - retired:   one ``AddPortGroup`` after another.
* ``hosts``    one standard port group on every host of a 1-host and of a
               32-host cluster (two simulators, same injected latency,
               ``AddPortGroup`` 100 ms): one network's reconcile, as each
               network API call runs it.  Host writes run in parallel up to
               ``max_parallel_host_writes`` (32); the 8-wide column shows the
               cap they shared with tasks before (``max_parallel_tasks``).
* ``scale``    one network's reconcile (what each API call and each port bind
               costs) when vCenter already holds N port groups.
  - ours:      the plan from the live replica (no read of vCenter);
  - full read: the same reconcile reading the whole inventory each time, as
               a naive "read everything and diff" does (and this project's
               first version did).

Run: ``.venv/bin/python bench/bench.py [--scenario dvs|vswitch|hosts|scale]
[--count N] [--rounds R]``; prints each round and the median ratio.
RESULTS.md keeps measured figures.
"""

from __future__ import annotations

import argparse
import inspect
import os
import statistics
import sys
import time
import uuid

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "tools"))

from pyVmomi import vim  # noqa: E402

from networking_vcenter import conf  # noqa: E402
from networking_vcenter.reconcile import desired as desired_mod  # noqa: E402
from networking_vcenter.reconcile.locks import Locks, \
    default_backend_url  # noqa: E402
from networking_vcenter.reconcile.reconciler import Reconciler  # noqa: E402
from vcsim_launcher import Vcsim  # noqa: E402

DVS = vim.dvs.VmwareDistributedVirtualSwitch


def settings(sim: Vcsim, mapping: dict[str, str], cluster: str,
             host_writes: int = 32) -> conf.Settings:
    return conf.Settings(
        host_ip=sim.host, host_port=sim.port, host_username=sim.username,
        host_password=sim.password, ca_file=None, insecure=True,
        api_retry_count=2, api_timeout=60, task_timeout=600,
        switch_mappings=mapping, compute_hosts={"bench": cluster},
        dvs_name_template=conf.DEFAULT_DVS_NAME_TEMPLATE,
        max_parallel_tasks=8, dvs_batch_size=100,
        max_parallel_host_writes=host_writes)


def reconciler(cfg: conf.Settings) -> Reconciler:
    rec = Reconciler(cfg, Locks(default_backend_url(None)))
    start = getattr(rec, "start", None)   # the live replica, where there is
    if start is not None:
        start()
    return rec


def close(rec: Reconciler) -> None:
    getattr(rec, "close", rec.session.close)()


def networks(n: int, physnet: str) -> list[desired_mod.NetworkSpec]:
    return [desired_mod.NetworkSpec(str(uuid.uuid4()), ({
        "network_type": "vlan", "physical_network": physnet,
        "segmentation_id": 100 + i % 3000},)) for i in range(n)]


def ours(rec: Reconciler, known: list, new: list) -> float:
    """Create the port groups of ``new``; ``known`` networks already have
    theirs (as in Neutron, earlier rounds' networks still exist)."""
    known.extend(new)
    t0 = time.perf_counter()
    result = rec.sync_all(lambda ids: known, wait=60)
    elapsed = time.perf_counter() - t0
    assert not result.outcome.failed, result.outcome.failed
    assert len(result.outcome.done) >= len(new), result.plan.describe()[:3]
    assert not any(s.verb == "delete" for s in result.plan.steps)
    return elapsed


def retired_dvs(si, count: int) -> float:
    content = si.RetrieveContent()
    t0 = time.perf_counter()
    for i in range(count):
        view = content.viewManager.CreateContainerView(
            content.rootFolder, [vim.DistributedVirtualSwitch], True)
        dvs = next(d for d in view.view if d.name == "DVS0")
        view.DestroyView()
        spec = vim.dvs.DistributedVirtualPortgroup.ConfigSpec(
            name=f"retired-{uuid.uuid4()}", type="earlyBinding", numPorts=8,
            defaultPortConfig=DVS.VmwarePortConfigPolicy(
                vlan=DVS.VlanIdSpec(vlanId=100 + i % 3000, inherited=False)))
        task = dvs.AddDVPortgroup_Task([spec])
        while task.info.state not in ("success", "error"):
            time.sleep(0.01)
    return time.perf_counter() - t0


def retired_vswitch(si, count: int, cluster: str) -> float:
    content = si.RetrieveContent()
    view = content.viewManager.CreateContainerView(
        content.rootFolder, [vim.ClusterComputeResource], True)
    hosts = next(c for c in view.view if c.name == cluster).host
    view.DestroyView()
    t0 = time.perf_counter()
    for i in range(count):
        name = str(uuid.uuid4())
        for host in hosts:
            host.configManager.networkSystem.AddPortGroup(
                vim.host.PortGroup.Specification(
                    name=name, vlanId=100 + i % 3000, vswitchName="vSwitch1",
                    policy=vim.host.NetworkPolicy()))
    return time.perf_counter() - t0


def scale(args) -> int:
    """Reconcile one new network at a time with ``count`` port groups around.

    Both variants use the same reconciler code; ours plans from the live
    replica, the other (``watch=False``, the CLI's way) reads vCenter in
    full for each reconcile, as a naive "read everything and diff" does.
    """
    sim = Vcsim(extra_args=("-delay", str(args.delay_ms))).start()
    full = None
    try:
        rec = reconciler(settings(sim, {"physnet1": "DVS0"}, "DC0_C0"))
        known = networks(args.count, "physnet1")
        rec.sync_all(lambda ids: known, wait=60)
        full = Reconciler(rec.settings, rec.locks, watch=False)
        print(f"scenario scale: one network's reconcile among {args.count} "
              f"port groups, {args.delay_ms} ms per call, 10 networks a round")

        def run(r: Reconciler) -> float:
            t0 = time.perf_counter()
            for net in networks(10, "physnet1"):
                known.append(net)
                res = r.sync_network(net.id, lambda ids: [
                    n for n in known if n.id in ids])
                assert len(res.outcome.done) == 1, res.plan.describe()
            return (time.perf_counter() - t0) / 10

        ratios = []
        for i in range(args.rounds):
            a, b = run(rec), run(full)
            ratios.append(b / a)
            print(f"round {i + 1}: from the replica {a * 1000:7.1f} ms   full "
                  f"read {b * 1000:7.1f} ms   ratio {b / a:6.1f}x")
        print(f"median ratio (full read / replica): "
              f"{statistics.median(ratios):.1f}x")
        close(rec)
    finally:
        if full is not None:
            full.session.close()
        sim.stop()
    return 0


def quiet(rec: Reconciler, name: str) -> None:
    """Untimed: wait until the replica shows port group ``name`` on every
    host, so that its parsing of these updates does not overlap the next
    measurement."""
    replica = getattr(rec, "replica", None)
    if replica is not None:
        replica.wait_until(lambda inv: all(
            name in h.portgroups for h in inv.hosts.values()), 30)


def hosts(args) -> int:
    """One standard port group on 1 host vs on 32 hosts, side by side.

    Two measures per network: ``written`` -- the reconcile itself (plan from
    the replica, host writes in parallel, the mark); ``seen`` -- the same
    plus the wait until the replica shows the result, as a network API call
    runs it (the simulator's PropertyCollector answers on a ticker, a real
    vCenter as changes come, so this one carries simulator timing).
    """
    latency = ("-delay", str(args.delay_ms), "-method-delay",
               f"AddPortGroup:{args.host_ms}", "-extra-vswitch", "vSwitch1")
    # One simulator each: a replica watching a simulator sees (and parses)
    # only the writes of its own variant.
    sims = {"1 host": Vcsim(clusters=1, hosts=1, extra_args=latency),
            "32 hosts": Vcsim(clusters=1, hosts=32, extra_args=latency),
            "32 hosts, 8 wide": Vcsim(clusters=1, hosts=32,
                                      extra_args=latency)}
    recs: dict[str, Reconciler] = {}
    try:
        mapping = {"physnet2": "vSwitch1"}
        for name, sim in sims.items():
            sim.start()
            recs[name] = reconciler(settings(
                sim, mapping, "DC0_C0", host_writes=8 if "8" in name else 32))
        can_settle = "settle" in inspect.signature(
            Reconciler.sync_network).parameters
        print(f"scenario hosts: one standard port group per network, "
              f"{args.delay_ms} ms per call, {args.host_ms} ms per "
              f"AddPortGroup; median of {args.count} networks per cell")
        known: list = []

        def run(rec: Reconciler, settle: float) -> float:
            times = []
            for net in networks(args.count, "physnet2"):
                known.append(net)
                t0 = time.perf_counter()
                res = rec.sync_network(net.id, lambda ids: [
                    n for n in known if n.id in ids],
                    **({"settle": settle} if settle else {}))
                times.append(time.perf_counter() - t0)
                assert not res.outcome.failed, res.outcome.failed
                assert res.outcome.done, res.plan.describe()
                quiet(rec, net.id)
            return statistics.median(times)

        measures = ["written"] + (["seen"] if can_settle else [])
        ratios: dict[tuple[str, str], list[float]] = {}
        for r in range(args.rounds):
            line = []
            for measure in measures:
                t = {name: run(rec, 30 if measure == "seen" else 0)
                     for name, rec in recs.items()}
                for name in ("32 hosts", "32 hosts, 8 wide"):
                    ratios.setdefault((measure, name), []).append(
                        t[name] / t["1 host"])
                line.append(
                    f"{measure}: 1 host {t['1 host'] * 1000:4.0f} ms, 32 "
                    f"hosts {t['32 hosts'] * 1000:4.0f} ms "
                    f"({t['32 hosts'] / t['1 host']:4.2f}x), 8 wide "
                    f"{t['32 hosts, 8 wide'] * 1000:4.0f} ms "
                    f"({t['32 hosts, 8 wide'] / t['1 host']:4.2f}x)")
            print(f"round {r + 1}: " + ";  ".join(line))
        for measure in measures:
            wide = statistics.median(ratios[measure, "32 hosts"])
            narrow = statistics.median(ratios[measure, "32 hosts, 8 wide"])
            print(f"median ratio, {measure} (32 hosts / 1 host): "
                  f"{wide:.2f}x; 8 wide: {narrow:.2f}x")
    finally:
        for rec in recs.values():
            close(rec)
        for sim in sims.values():
            sim.stop()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario",
                        choices=("dvs", "vswitch", "hosts", "scale"),
                        default="dvs")
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--delay-ms", type=int, default=2,
                        help="added to every vSphere call")
    parser.add_argument("--task-ms", type=int, default=200,
                        help="added to AddDVPortgroup_Task / AddPortGroup")
    parser.add_argument("--host-ms", type=int, default=100,
                        help="hosts: added to AddPortGroup")
    args = parser.parse_args()

    if args.scenario == "scale":
        return scale(args)
    if args.scenario == "hosts":
        return hosts(args)
    if args.scenario == "dvs":
        extra = ("-method-delay", f"AddDVPortgroup_Task:{args.task_ms}")
        sim_kw = {}
        mapping, cluster = {"physnet1": "DVS0"}, "DC0_C0"
    else:
        extra = ("-method-delay", f"AddPortGroup:{args.task_ms // 2}",
                 "-extra-vswitch", "vSwitch1")
        sim_kw = {"clusters": 1, "hosts": 16}
        mapping, cluster = {"physnet2": "vSwitch1"}, "DC0_C0"
    sim = Vcsim(extra_args=("-delay", str(args.delay_ms), *extra),
                **sim_kw).start()
    try:
        rec = reconciler(settings(sim, mapping, cluster))
        si = sim.connect()
        physnet = next(iter(mapping))
        print(f"scenario {args.scenario}: {args.count} port groups"
              + (" x 16 hosts" if args.scenario == "vswitch" else "")
              + f", {args.delay_ms} ms per call, {args.task_ms} ms per "
              f"create{'' if args.scenario == 'dvs' else ' (halved per host)'}")
        ratios = []
        known: list = []
        for r in range(args.rounds):
            a = ours(rec, known, networks(args.count, physnet))
            b = (retired_dvs(si, args.count) if args.scenario == "dvs"
                 else retired_vswitch(si, args.count, cluster))
            ratios.append(b / a)
            print(f"round {r + 1}: networking-vcenter {a:7.2f} s   "
                  f"retired pattern {b:7.2f} s   ratio {b / a:6.1f}x")
        print(f"median ratio (retired / networking-vcenter): "
              f"{statistics.median(ratios):.1f}x")
        close(rec)
    finally:
        sim.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

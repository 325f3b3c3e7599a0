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

"""One bind on an existing distributed-switch network: its vCenter requests and time.

Issue 15.  A bind reserves a DV port for the port with one write -- the
``ReconfigureDVPort_Task`` that names it for the port and carries its
settings -- waits for the task, and reads the port back (its new
configVersion), so that the next plan starts from vCenter's answer.  Timed
here: ``Reconciler.port_for``, the bind's own call (the ML2 driver's
``bind_port`` runs it in a hook thread), for a new port of a network whose
port group exists, set up with the driver's own code as bench_ports.py does
(one group of ours with N reserved DV ports, one shared security group: 20
traffic rules per port; free ports added beforehand, untimed, so that no
bind grows the group).  Two variants of the same code, alternating which
goes first each round:

* ``replica``  the tree as it is: the task is awaited on the replica's own
               collector (one ``CreateFilter``; its long poll answers), and
               the replica thread reads the port written before the wait
               returns;
* ``own``      the former path, still the session's own wait (the CLI's;
               a replica that is not current): the replica detached from
               the session, each task wait makes a collector
               (``CreatePropertyCollector``, ``CreateFilter``,
               ``WaitForUpdatesEx``, ``DestroyPropertyCollector``) and the
               bind's thread reads the port back (``FetchDVPorts``).

Each SOAP request is counted with the thread that made it: the bind's own
thread, and the replica's (its long poll, ``WaitForUpdatesEx`` in its
thread, is not counted).  After each bind the replica must hold the port as
vCenter has it (its name and configVersion, read by a separate client).
2 ms on every SOAP call (the simulator's ``-delay``, as the other benches),
``--task-ms`` more on ``ReconfigureDVPort_Task`` (default 0; the simulator
ends a task inside the call that starts it, a real vCenter does not).

Run: ``.venv/bin/python bench/bench_bind.py [--ports N] [--rounds R]
[--binds B] [--delay-ms MS] [--task-ms MS]``.  Figures: RESULTS.md.
Nothing here imports tests/.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import shutil
import statistics
import sys
import tempfile
import threading
import time
import uuid

import bench_ports
from bench_common import (  # noqa: E402 - puts the repository on sys.path
    DVS_NAME, REPLICA_THREAD, SoapCounter, Vcsim, commit, find_named,
    machine, reconciler)
from pyVmomi import vim  # noqa: E402

from networking_vcenter.reconcile.reconciler import Reconciler  # noqa: E402
from networking_vcenter.vsphere import ports as ports_mod  # noqa: E402

TASK = "ReconfigureDVPort_Task"
VARIANTS = ("replica", "own")


@dataclasses.dataclass
class Bind:
    seconds: float
    path: collections.Counter       # requests of the bind's thread
    replica: collections.Counter    # requests of the replica's thread


def bind(rec: Reconciler, neutron: bench_ports.Neutron, pg_key: str,
         check_si) -> Bind:
    """One new port bound: ``port_for`` timed, its requests counted, the
    replica's copy of its DV port checked against vCenter's."""
    spec = neutron.new_port()
    with SoapCounter().counting() as counted:
        t0 = time.perf_counter()
        port = rec.port_for(spec, neutron.networks, time.monotonic() + 60)
        elapsed = time.perf_counter() - t0
        # What the bind answers with must already be in the replica.
        (held,) = [p for p in rec.replica.snapshot().dv_ports[pg_key]
                   if p.key == port.key]
    calls = counted.by_thread
    (raw,) = check_si.FetchDVPorts(vim.dvs.PortCriteria(portKey=[port.key]))
    assert (held.name, held.config_version) == \
        (spec.id, raw.config.configVersion), (held, raw.config)
    mine = threading.current_thread().name
    # Requests made meanwhile by other threads (none here but the
    # replica's) would be neither: counted nowhere, asserted absent.
    assert all(t in (mine, REPLICA_THREAD) for t, _ in calls), calls
    return Bind(elapsed,
                collections.Counter(m for t, m in calls if t == mine),
                collections.Counter(m for t, m in calls
                                    if t == REPLICA_THREAD))


class Neutron(bench_ports.Neutron):
    """bench_ports' Neutron, plus new ports to bind (in the same group)."""

    def new_port(self):
        pid = str(uuid.uuid4())
        self.port_ids.append(pid)
        self._build()
        return self._ports[pid]


def run(sim: Vcsim, n: int, rounds: int, binds: int, lock_dir: str) -> dict:
    neutron = Neutron(n)
    rec = reconciler(sim, lock_dir, "bind",
                     compute_host=bench_ports.COMPUTE_HOST)
    si = sim.connect()
    try:
        made = bench_ports.set_up(rec, neutron)
        inv = rec.inventory()
        pg = next(p for p in inv.dvs_portgroups if p.owner == neutron.net.id)
        free = sum(1 for p in inv.dv_ports[pg.key] if not p.name)
        need = rounds * binds * len(VARIANTS) + 1
        if free < need:
            ports_mod.grow_port_group(rec.session, pg, need - free,
                                      "bench: free ports for the binds")
            size = pg.num_ports + need - free
            assert rec.replica.wait_until(
                lambda i: len(i.dv_ports.get(pg.key, ())) >= size, 60)
        print(f"N={n}: port group {pg.name} ({pg.key}), {n} DV ports "
              f"reserved and configured in {made:.1f} s, "
              f"{max(free, need)} free (untimed set-up)", flush=True)
        dvs = find_named(si, vim.DistributedVirtualSwitch, DVS_NAME)

        results: dict[str, list[Bind]] = {v: [] for v in VARIANTS}
        for r in range(rounds):
            order = VARIANTS if r % 2 == 0 else VARIANTS[::-1]
            for variant in order:
                detached = variant == "own"
                if detached:
                    rec.session.detach(rec.replica)
                try:
                    done = [bind(rec, neutron, pg.key, dvs)
                            for _ in range(binds)]
                finally:
                    if detached:
                        rec.session.attach(rec.replica)
                results[variant].extend(done)
                med = statistics.median(b.seconds for b in done)
                print(f"  round {r + 1} {variant:8s} median "
                      f"{med * 1000:7.1f} ms per bind; bind's thread "
                      f"{dict(sorted(done[0].path.items()))}, replica's "
                      f"thread {dict(sorted(done[0].replica.items()))}",
                      flush=True)
        return {"n": n, "results": results}
    finally:
        from pyVim.connect import Disconnect
        Disconnect(si)
        rec.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ports", type=int, default=100,
                        help="DV ports reserved in the group already")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--binds", type=int, default=10,
                        help="binds per variant and round")
    parser.add_argument("--delay-ms", type=int, default=2,
                        help="added to every vSphere call")
    parser.add_argument("--task-ms", type=int, default=0,
                        help=f"added to each {TASK}")
    args = parser.parse_args()
    extra = ["-delay", str(args.delay_ms)]
    if args.task_ms:
        extra += ["-method-delay", f"{TASK}:{args.task_ms}"]
    print(f"bench_bind: commit {commit()}, {machine()}; {args.delay_ms} ms "
          f"per call, {args.task_ms} ms more per {TASK}; {args.rounds} "
          f"round(s) of {args.binds} bind(s) per variant, alternating",
          flush=True)
    lock_dir = tempfile.mkdtemp(prefix="bench-bind-locks-")
    sim = Vcsim(extra_args=extra).start()
    try:
        out = run(sim, args.ports, args.rounds, args.binds, lock_dir)
    finally:
        sim.stop()
        shutil.rmtree(lock_dir, ignore_errors=True)

    res = out["results"]
    print()
    print("| round | replica (after) | own collector (before) | ratio |")
    print("|---|---|---|---|")
    ratios = []
    for r in range(args.rounds):
        a = statistics.median(
            b.seconds for b in res["replica"][r * args.binds:
                                              (r + 1) * args.binds])
        o = statistics.median(
            b.seconds for b in res["own"][r * args.binds:
                                          (r + 1) * args.binds])
        ratios.append(o / a)
        print(f"| {r + 1} | {a * 1000:.1f} ms | {o * 1000:.1f} ms | "
              f"{o / a:.2f}x |")
    print(f"| **median** | | | **{statistics.median(ratios):.2f}x** |")
    print()
    print("| variant | requests per bind, bind's thread | replica's thread "
          "| all | median time per bind |")
    print("|---|---|---|---|---|")
    for variant in VARIANTS:
        binds = res[variant]
        shapes = {(tuple(sorted(b.path.items())),
                   tuple(sorted(b.replica.items()))) for b in binds}
        path, rep = max(shapes, key=lambda s: sum(
            1 for b in binds if (tuple(sorted(b.path.items())),
                                 tuple(sorted(b.replica.items()))) == s))
        note = "" if len(shapes) == 1 else f" ({len(shapes)} shapes)"
        med = statistics.median(b.seconds for b in binds)
        print(f"| {variant} | {sum(c for _, c in path)}: "
              f"{', '.join(f'{m} {c}' for m, c in path)} | "
              f"{sum(c for _, c in rep)}: "
              f"{', '.join(f'{m} {c}' for m, c in rep) or '-'}{note} | "
              f"{sum(c for _, c in path) + sum(c for _, c in rep)} | "
              f"{med * 1000:.1f} ms |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

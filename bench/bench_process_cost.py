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

"""What one Neutron process's replica of vCenter costs: the first full read
at start, the memory it holds, the re-read after vCenter lost the session.

Every Neutron process (each API worker, the periodic worker) holds its own
vCenter session and replica (``vsphere/replica.py``).  On the simulator
(with patch 0012 it pages as vCenter does), the inventory is grown to each
of ``--sizes`` (``networks:reserved ports``): distributed port groups of
ours (marked by this deployment, early binding, 8 ports each, the least our
groups have) made ``--chunk`` specs per ``AddDVPortgroup_Task``, and DV ports
reserved as the driver reserves them -- named by a Neutron port UUID, with
``ReconfigureDVPort_Task`` (1,000 specs per task) -- spread evenly over the
groups; with ``--rules N`` each reserved port also gets a traffic filter of
N rules of its own.

At each size, each variant runs in a fresh Python process (so that its
memory is its own), as a Neutron process does:

* ``paged``: the replica's pages as shipped (``reads.READ_PAGE`` objects per
  answer, ``ports.READ_BATCH`` ports per ``FetchDVPorts``);
* ``unpaged``: the same read with pages too large to cut anything (one
  answer for the inventory, one ``FetchDVPorts`` per switch).

Each child: logs in; resident memory (RSS, psutil) before the read; the
first full read (``Replica._reload``, what ``start()`` does; wall and CPU
time of the process, round trips by method); RSS after it (and after the
inventory the readers use is built from it: ``snapshot()``); then a
simulated vCenter restart -- the session logged out, so vCenter forgets it
and the replica's collector, as a restart does -- and the re-read the
replica thread does then (re-login included, no ``reread_spread`` wait);
peak RSS (``VmHWM``) of each, the re-read's from the RSS it began with.
The simulator's own RSS is shown too.
The simulator answers each call in ~0.3 ms on loopback: wall times are the
client's CPU plus the simulator's, not a real vCenter's (whose server-side
cost is unknown here); round trips and client CPU/memory carry over.

    .venv/bin/python bench/bench_process_cost.py \\
        [--sizes 1000:5000,3000:15000,10000:50000] [--rules 0] \\
        [--variants paged,unpaged] [--chunk 500]
"""

from __future__ import annotations

import argparse
import collections
import gc
import json
import os
import subprocess
import sys
import time
import uuid

from bench_common import (  # noqa: E402 - sys.path
    DEPLOYMENT, DVS_NAME, PHYSNET, REPO, Vcsim, commit, find_named,
    machine, settings)
import psutil  # noqa: E402
from pyVmomi import vim  # noqa: E402

from networking_vcenter.vsphere import inventory  # noqa: E402
from networking_vcenter.vsphere import ports  # noqa: E402
from networking_vcenter.vsphere import session as session_mod  # noqa: E402
from networking_vcenter.vsphere import switches  # noqa: E402
from networking_vcenter.vsphere.inventory import (  # noqa: E402
    PortSettings, TrafficRule)

PORTS_PER_GROUP = 8          # switches.dvs_port_group_spec's least
UNPAGED = 10 ** 9
MB = 1024 * 1024


def small_filter(n: int) -> PortSettings:
    """A port's own filter of ``n`` rules (SSH and HTTPS in from a /24,
    ...), as a small security group gives."""
    rules = tuple(TrafficRule(
        "incomingPackets", "accept", protocol=6,
        source=f"10.{i // 250}.{i % 250}.0/24",
        destination_ports=(22 + i, 22 + i), description=f"sg rule {i}")
        for i in range(n))
    return PortSettings(rules=rules)


class Inventory:
    """Grows the simulator's inventory: our port groups, reserved ports."""

    def __init__(self, sim: Vcsim, chunk: int, rules: int):
        self.session = session_mod.Session(settings(sim))
        self.session.connect()
        si = vim.ServiceInstance("ServiceInstance",
                                 self.session.content.propertyCollector._stub)
        self.dvs = find_named(si, vim.DistributedVirtualSwitch, DVS_NAME)
        self.chunk = chunk
        self.settings = small_filter(rules) if rules else None
        self.groups: list[str] = []      # keys of our port groups
        self.reserved = 0

    def grow(self, networks: int, reserved: int) -> float:
        """Reach ``networks`` groups and ``reserved`` ports: seconds."""
        t0 = time.perf_counter()
        while len(self.groups) < networks:
            n = min(self.chunk, networks - len(self.groups))
            specs, names = [], []
            for i in range(len(self.groups), len(self.groups) + n):
                net = str(uuid.uuid4())
                vlan = 1 + i % 4094
                names.append(f"neutron-{PHYSNET}-{net}")
                specs.append(switches.dvs_port_group_spec(
                    names[-1], vlan, inventory.owner_description(
                        DEPLOYMENT, net, PHYSNET, vlan)))
            switches.create_dvs_port_groups(self.session, self.dvs, specs,
                                            DVS_NAME)
            keys = {pg.name: pg.key for pg in self.session.call(
                "read the groups", lambda: self.dvs.portgroup)}
            self.groups += [keys[name] for name in names]
            print(f"  {len(self.groups):,} port groups "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)
        # Reserve round-robin over the groups: port j of every group
        # before port j + 1 of any, so that each holds ~reserved/networks.
        free = self._free_ports(reserved - self.reserved)
        for i in range(0, len(free), 1000):
            batch = free[i:i + 1000]
            ports.reconfigure_ports(
                self.session, self.dvs,
                [(p.key, p.config.configVersion, str(uuid.uuid4()),
                  self.settings) for p in batch],
                f"reserve {len(batch)} ports", mac_management=True)
            self.reserved += len(batch)
        print(f"  {self.reserved:,} ports reserved "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)
        return time.perf_counter() - t0

    def _free_ports(self, n: int) -> list:
        if n <= 0:
            return []
        per_group: dict[str, list] = collections.defaultdict(list)
        for i in range(0, len(self.groups), 100):
            for p in self.session.call(
                    "read ports", self.dvs.FetchDVPorts, vim.dvs.PortCriteria(
                        portgroupKey=self.groups[i:i + 100], inside=True)):
                if not p.config.name:
                    per_group[p.portgroupKey].append(p)
        out = []
        depth = 0
        while len(out) < n:
            before = len(out)
            for key in self.groups:
                if len(per_group[key]) > depth:
                    out.append(per_group[key][depth])
                    if len(out) == n:
                        break
            if len(out) == before:
                raise SystemExit(f"only {len(out)} free ports for {n}")
            depth += 1
        return out


# -- the child: one Neutron process's replica ----------------------------

def peak_rss() -> int:
    """This process's peak RSS (VmHWM) since it began or since the last
    reset_peak().  Not ru_maxrss: Linux keeps across execve the RSS the
    process had before, which for a child forked from this bench is the
    bench's own (the inventory builder's hundreds of MB)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")            # VmHWM = the current RSS (Linux 4.0+)


def child(args) -> None:
    from bench_common import SoapCounter
    from networking_vcenter import conf
    from networking_vcenter.vsphere import reads
    from networking_vcenter.vsphere import replica as replica_mod

    proc = psutil.Process()
    reads.READ_PAGE = args.page
    ports.READ_BATCH = args.batch
    host, port = args.child.rsplit(":", 1)
    s = conf.Settings(
        host_ip=host, host_port=int(port), host_username="user",
        host_password="pass", ca_file=None, insecure=True,
        api_retry_count=2, api_timeout=600, task_timeout=600,
        switch_mappings={PHYSNET: DVS_NAME},
        compute_hosts={"bench": "DC0_C0"},
        dvs_name_template=conf.DEFAULT_DVS_NAME_TEMPLATE,
        max_parallel_tasks=8, dvs_batch_size=100,
        deployment_name=DEPLOYMENT)
    session = session_mod.Session(s)
    session.connect()
    gc.collect()
    out = {"rss_before": proc.memory_info().rss}
    replica = replica_mod.Replica(session, s)
    counter = SoapCounter()

    def read(name):
        with counter.counting() as calls:
            c0, w0 = time.process_time(), time.perf_counter()
            replica._reload()
            out[name] = {"wall": time.perf_counter() - w0,
                         "cpu": time.process_time() - c0,
                         "calls": dict(collections.Counter(calls))}
        out[name]["peak"] = peak_rss()
        gc.collect()
        out[name]["rss"] = proc.memory_info().rss

    read("first")
    c0 = time.process_time()
    inv = replica.snapshot()
    out["snapshot_cpu"] = time.process_time() - c0
    gc.collect()
    out["rss_snapshot"] = proc.memory_info().rss
    out["groups"] = sum(1 for pg in inv.dvs_portgroups if pg.owner)
    out["ports"] = sum(map(len, inv.dv_ports.values()))
    out["reserved"] = sum(1 for v in inv.dv_ports.values() for p in v
                          if p.name)
    out["objects"] = len(replica._objects)
    # vCenter restarted: the session and its collectors are gone.
    session.call("log out", session.content.sessionManager.Logout)
    gc.collect()
    reset_peak()
    read("again")
    replica._destroy_collector()
    session.close()
    print(json.dumps(out))


def run_child(sim: Vcsim, page: int, batch: int) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__),
           "--child", f"{sim.host}:{sim.port}", "--page", str(page),
           "--batch", str(batch)]
    env = dict(os.environ, PYTHONPATH=REPO)
    res = subprocess.run(cmd, capture_output=True, text=True, env=env,
                         timeout=3600)
    if res.returncode:
        raise SystemExit(f"child failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def trips(calls: dict) -> str:
    short = {"WaitForUpdatesEx": "WFU", "RetrievePropertiesEx": "RPE",
             "ContinueRetrievePropertiesEx": "CRPE",
             "FetchDVPorts": "Fetch"}
    main = ", ".join(f"{short[k]} {calls[k]}" for k in short if k in calls)
    return f"{sum(calls.values())} ({main})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000:5000,3000:15000")
    parser.add_argument("--rules", type=int, default=0)
    parser.add_argument("--variants", default="paged,unpaged")
    parser.add_argument("--chunk", type=int, default=500)
    parser.add_argument("--child")
    parser.add_argument("--page", type=int)
    parser.add_argument("--batch", type=int)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    from networking_vcenter.vsphere import reads
    pages = {"paged": (reads.READ_PAGE, ports.READ_BATCH),
             "unpaged": (UNPAGED, UNPAGED)}
    variants = args.variants.split(",")
    print(f"commit {commit()}; {machine()}")
    rows = []
    with Vcsim(clusters=1, hosts=2, vms=0,
               log_path=os.devnull) as sim:
        sim_proc = psutil.Process(sim.pid)
        grower = Inventory(sim, args.chunk, args.rules)
        for size in args.sizes.split(","):
            networks, reserved = map(int, size.split(":"))
            print(f"growing to {networks:,} networks, {reserved:,} "
                  f"reserved ports", flush=True)
            built = grower.grow(networks, reserved)
            for variant in variants:
                r = run_child(sim, *pages[variant])
                r["sim_rss"] = sim_proc.memory_info().rss
                r.update(variant=variant, networks=networks,
                         reserved=reserved, built=built)
                rows.append(r)
                print(json.dumps(r), flush=True)
        grower.session.close()
    print(f"\nper process, {args.rules} rules of its own per reserved "
          f"port; RSS in MB:\n")
    print("| networks | reserved ports (all) | variant | first read wall "
          "| CPU | round trips | RSS before | after read | after snapshot "
          "| peak | re-read wall | CPU | round trips | re-read peak | "
          "simulator RSS |")
    print("|" + "---|" * 15)
    for r in rows:
        f, a = r["first"], r["again"]
        print(f"| {r['networks']:,} | {r['reserved']:,} ({r['ports']:,}) "
              f"| {r['variant']} | {f['wall']:.1f} s | {f['cpu']:.1f} s "
              f"| {trips(f['calls'])} | {r['rss_before'] / MB:.0f} "
              f"| {f['rss'] / MB:.0f} | {r['rss_snapshot'] / MB:.0f} "
              f"| {f['peak'] / MB:.0f} | {a['wall']:.1f} s "
              f"| {a['cpu']:.1f} s | {trips(a['calls'])} "
              f"| {a['peak'] / MB:.0f} | {r['sim_rss'] / MB:.0f} |")


if __name__ == "__main__":
    main()

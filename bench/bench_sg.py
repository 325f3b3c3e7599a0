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

"""Translating one port of a big default security group: CPU and rules,
this tree's ``portsettings`` against an earlier commit's, side by side.

The default group is what every port gets: egress to anywhere (IPv4,
IPv6) and ingress from the group's own members, stateful.  Its N members
are spread over a /20 with holes between their addresses (addresses freed
and reused leave holes no CIDR collapse can close).  Each figure is the
CPU time (``time.process_time``) of ``port_settings`` for one member port,
the median over ``--ports`` different members, in one process; both
versions translate the same ports and must produce the same rules.  One
VM joining the group re-translates every member: N times that.

Side by side, on the same N ports: ``portsettings.shared_rules`` for all
of them at once (the one filter of their port group, anti-spoofing by MAC
qualifiers), its CPU (the median of ``--repeat`` runs) and its rule count,
against the N per-port filters' rules in all (rules per port x N).

    .venv/bin/python bench/bench_sg.py [--base e9ffa04] [--sizes 100,...]
"""

from __future__ import annotations

import argparse
import importlib.util
import ipaddress
import random
import statistics
import subprocess
import sys
import tempfile
import time

import bench_common  # noqa: F401  (puts the repository on sys.path)
from bench_common import REPO, commit, machine
from networking_vcenter.reconcile import desired as d
from networking_vcenter.reconcile import portsettings as current

PATH = "networking_vcenter/reconcile/portsettings.py"


def module_at(ref: str):
    """``portsettings`` as it was at ``ref``, loaded beside this tree's."""
    text = subprocess.check_output(["git", "-C", REPO, "show",
                                    f"{ref}:{PATH}"], text=True)
    f = tempfile.NamedTemporaryFile("w", suffix=".py", delete=False)
    f.write(text)
    f.close()
    spec = importlib.util.spec_from_file_location(f"portsettings_{ref}",
                                                  f.name)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module       # dataclasses look it up
    spec.loader.exec_module(module)
    return module


def default_group_ports(n: int, seed: int = 15) -> list[d.PortSpec]:
    rnd = random.Random(seed)
    hosts = list(ipaddress.ip_network("10.0.0.0/20").hosts())
    members = sorted(rnd.sample(hosts, n))
    texts = tuple(str(a) for a in members)
    sg = d.SecurityGroup("sg-default", True, (
        d.SgRule("egress", "IPv4", None, None, None, id="r1"),
        d.SgRule("egress", "IPv6", None, None, None, id="r2"),
        d.SgRule("ingress", "IPv4", None, None, None,
                 remote_group_id="sg-default", id="r3"),
        d.SgRule("ingress", "IPv6", None, None, None,
                 remote_group_id="sg-default", id="r4")))
    return [d.PortSpec(
        id=f"port-{i}", network_id="net", host="h", physnet="physnet1",
        mac=f"fa:16:3e:00:{i >> 8:02x}:{i & 0xff:02x}", fixed_ips=(t,),
        security_groups=(sg,), remote_groups={"sg-default": texts})
        for i, t in enumerate(texts)]


def cpu_per_port(module, ports) -> tuple[float, int, list]:
    times, counts, rules = [], set(), []
    for p in ports:
        t = time.process_time()
        s = module.port_settings(p, max_rules=10 ** 6)
        times.append(time.process_time() - t)
        counts.add(len(s.rules))
        rules.append(s.rules)
    return statistics.median(times), max(counts), rules


def cpu_shared(ports, repeat: int) -> tuple[float, tuple]:
    """Median CPU of one ``shared_rules`` call for all ``ports``, and its
    rules (each run a fresh list of the ports: nothing carried over but
    the module's parse caches, as in a running server)."""
    times, rules = [], None
    for _ in range(repeat):
        batch = list(ports)
        t = time.process_time()
        rules = current.shared_rules(batch)
        times.append(time.process_time() - t)
    return statistics.median(times), rules


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="e9ffa04",
                        help="the commit to compare with (default: before "
                             "issue 15)")
    parser.add_argument("--sizes", default="100,250,500,1000")
    parser.add_argument("--ports", type=int, default=5,
                        help="member ports translated per size and version")
    parser.add_argument("--repeat", type=int, default=5,
                        help="shared_rules runs per size (median)")
    args = parser.parse_args()
    base = module_at(args.base)
    print(f"# bench_sg: {machine()}; this tree {commit()} against "
          f"{args.base}")
    print(f"| members | rules per port | CPU per port, {args.base} | "
          f"CPU per port, now | ratio | one VM joining: N x CPU, "
          f"{args.base} | now | shared_rules, all N ports: CPU | "
          f"rules: shared filter | rules: N per-port filters |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for n in (int(x) for x in args.sizes.split(",")):
        ports = default_group_ports(n)
        picked = ports[:: max(1, n // args.ports)][:args.ports]
        old_t, old_n, old_rules = cpu_per_port(base, picked)
        new_t, new_n, new_rules = cpu_per_port(current, picked)
        if old_rules != new_rules:
            sys.exit(f"{n} members: the two versions translate differently")
        shared_t, shared = cpu_shared(ports, args.repeat)
        print(f"| {n:,} | {new_n} | {old_t * 1000:.0f} ms | "
              f"{new_t * 1000:.0f} ms | {old_t / new_t:.1f}x | "
              f"{old_t * n:.1f} s | {new_t * n:.1f} s | "
              f"{shared_t * 1000:.0f} ms | {len(shared):,} | "
              f"{new_n * n:,} |")


if __name__ == "__main__":
    main()

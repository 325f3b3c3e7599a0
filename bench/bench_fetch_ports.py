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

"""What one FetchDVPorts of ports inheriting a big group filter costs the
client: pyVmomi's own parse against ``ports.fetch_ports``.

A port group of ours whose default port config holds a traffic filter of
``--rules`` distinct rules (the shared security-group filter), ``--ports``
ports that inherit it, on the simulator.  FetchDVPorts answers each port's
effective settings, the group's rules included (marked inherited).  Each
round reads all the group's ports once per variant, through the driver's
session:

* ``stock``: ``session.call(..., dvs.FetchDVPorts, criteria)`` parsed by
  pyVmomi's deserializer, then ``ports.port_of`` per port (what
  ``fetch_ports`` did before);
* ``sax``: parsed by ``ports._OwnFiltersOnly`` alone: an inherited
  filter's elements passed over by expat with one end-tag handler (what
  ``fetch_ports`` did before ``session.Stripped``);
* ``ours``: ``ports.fetch_ports`` (inherited filters cut out of the bytes
  before expat, ``session.Stripped``, then passed over).

Client CPU (``time.process_time`` of this process: the simulator is
another) and wall time of each read, the median of ``--rounds``; the two
variants' ports are checked equal each round.

    .venv/bin/python bench/bench_fetch_ports.py [--ports 200] [--rules 5000]
        [--rounds 3] [--variants ours,sax,stock]
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid

from bench_common import (  # noqa: E402 - sys.path
    DEPLOYMENT, DVS_NAME, PHYSNET, Vcsim, commit, find_named, machine,
    settings)
from pyVmomi import vim  # noqa: E402

from networking_vcenter.vsphere import inventory  # noqa: E402
from networking_vcenter.vsphere import ports  # noqa: E402
from networking_vcenter.vsphere import session as session_mod  # noqa: E402
from networking_vcenter.vsphere import switches  # noqa: E402
from networking_vcenter.vsphere.inventory import TrafficRule  # noqa: E402


def group_rules(n: int) -> tuple[TrafficRule, ...]:
    return tuple(TrafficRule(
        "incomingPackets" if i % 2 else "outgoingPackets", "accept",
        protocol=6, source=f"10.{i // 62500}.{i // 250 % 250}.{i % 250}/32",
        destination_ports=(22, 22), description=f"sg shared rule {i}")
        for i in range(n))


def stock(session, dvs, key):
    found = session.call("read the ports, pyVmomi's parse",
                         dvs.FetchDVPorts, vim.dvs.PortCriteria(
                             portgroupKey=[key], inside=True))
    return tuple(sorted(map(ports.port_of, found), key=ports.key_order))


def ours(session, dvs, key):
    return ports.fetch_ports(session, dvs, [key])[key]


class _NoCut(ports._OwnFiltersOnly):
    """``_OwnFiltersOnly`` without cutting the bytes first (what
    ``fetch_ports`` did before ``session.Stripped``)."""
    passed_over = None


def sax(session, dvs, key):
    found = session.call("read the ports, passed over by expat",
                         session.parsed_by(_NoCut, dvs.FetchDVPorts),
                         vim.dvs.PortCriteria(portgroupKey=[key],
                                              inside=True))
    return tuple(sorted(map(ports.port_of, found), key=ports.key_order))


VARIANTS = {"stock": stock, "sax": sax, "ours": ours}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ports", type=int, default=200)
    parser.add_argument("--rules", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--variants", default="ours,stock")
    args = parser.parse_args()
    variants = args.variants.split(",")
    print(f"commit {commit()}; {machine()}")
    with Vcsim(clusters=1, hosts=1, vms=0) as sim:
        session = session_mod.Session(settings(sim))
        session.connect()
        si = vim.ServiceInstance("ServiceInstance",
                                 session.content.propertyCollector._stub)
        dvs = find_named(si, vim.DistributedVirtualSwitch, DVS_NAME)
        net = str(uuid.uuid4())
        name = f"neutron-{PHYSNET}-{net}"
        spec = switches.dvs_port_group_spec(
            name, 100, inventory.owner_description(DEPLOYMENT, net, PHYSNET,
                                                   100),
            num_ports=args.ports)
        spec.defaultPortConfig.filterPolicy = ports._filter(
            group_rules(args.rules))
        switches.create_dvs_port_groups(session, dvs, [spec], DVS_NAME)
        key = find_named(si, vim.dvs.DistributedVirtualPortgroup, name).key
        runs: dict[str, list[tuple[float, float]]] = {v: [] for v in variants}
        for n in range(args.rounds):
            read = {}
            for variant in variants:
                t0, w0 = time.process_time(), time.perf_counter()
                read[variant] = VARIANTS[variant](session, dvs, key)
                cpu = time.process_time() - t0
                wall = time.perf_counter() - w0
                runs[variant].append((cpu, wall))
                assert len(read[variant]) == args.ports, len(read[variant])
                assert all(p.settings == inventory.INHERITED
                           for p in read[variant])
                print(f"round {n + 1} {variant}: {cpu:.2f} s CPU, "
                      f"{wall:.2f} s wall", flush=True)
            assert all(r == read[variants[0]] for r in read.values())
        session.close()
    print(f"\n{args.ports} ports inheriting a {args.rules:,}-rule filter, "
          f"one FetchDVPorts, median of {args.rounds}:\n")
    print("| variant | client CPU | per port | per inherited rule | wall |")
    print("|---|---|---|---|---|")
    for variant in variants:
        cpu = statistics.median(r[0] for r in runs[variant])
        wall = statistics.median(r[1] for r in runs[variant])
        print(f"| {variant} | {cpu:.2f} s | {cpu / args.ports * 1e3:.1f} ms "
              f"| {cpu / args.ports / args.rules * 1e6:.1f} us "
              f"| {wall:.2f} s |")


if __name__ == "__main__":
    main()

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

"""One NIC connecting on a port group of N ports: what the replica reads.

A VM NIC connecting to (or leaving) a DV port changes its port group's
``vm`` property; the replica then reads what may have changed of the
group's ports (vsphere/replica.py).  Set up with the driver's own code as
bench_ports.py does: one distributed port group of ours with N reserved DV
ports, each carrying the traffic filter of one shared security group (20
rules).  Then, per round and variant, a NIC is added to a VM on one of
those ports (``ReconfigVM_Task``, as Nova's VMware driver does), timed until
the replica shows the port connected, and removed again, timed until it
shows it free:

* ``narrow``  the replica as it is: reads only the ports whose connectee
              vCenter shows otherwise than the replica
              (``FetchDVPorts`` by ``portKey`` with ``connected``);
* ``whole``   the replica's former decision, reproduced by giving it back
              its former ``_ports_touched`` (any change of a group's
              ``portKeys``, ``vm`` or ``config``: the whole group read
              again, one ``FetchDVPorts`` of all its ports).

Counted in the replica's thread while the change is seen: ``FetchDVPorts``
calls (its long poll is not counted), the DV ports they answered (calls of
``ports.port_of``) and the seconds spent in them.  2 ms on every SOAP call
(``-delay``), as the other benches.

Run: ``.venv/bin/python bench/bench_nic.py [--ports N] [--rounds R]
[--delay-ms MS]``.  Figures: RESULTS.md.  Nothing here imports tests/.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import shutil
import statistics
import sys
import tempfile
import threading
import time
from unittest import mock

import bench_ports
from bench_common import (  # noqa: E402 - puts the repository on sys.path
    DVS_NAME, REPLICA_THREAD, SoapCounter, Vcsim, commit, find_named,
    machine, reconciler)
from pyVmomi import vim  # noqa: E402

from networking_vcenter.vsphere import ports as ports_mod  # noqa: E402
from networking_vcenter.vsphere import replica as replica_mod  # noqa: E402

VM_NAME = "DC0_C0_RP0_VM0"


def whole_group_touched(update, objects) -> set[str]:
    """The replica's former ``_ports_touched``: every group whose
    portKeys, VMs or config changed, or that came or went, read whole."""
    keys = set()
    for fs in update.filterSet or []:
        for ou in fs.objectSet or []:
            if replica_mod._kind(ou.obj) != "dvpg":
                continue
            if ou.kind in ("enter", "leave") or any(
                    c.name.split(".")[0] in replica_mod.PORT_PATHS
                    for c in ou.changeSet or []):
                obj = objects.get(ou.obj._moId)
                key = obj.props.get("key") if obj else None
                keys.add(key or ou.obj._moId)
    return keys


@dataclasses.dataclass
class Seen:
    seconds: float          # the NIC's task started -> the replica shows it
    fetches: int            # FetchDVPorts by the replica's thread
    ports: int              # DV ports those answered
    fetch_seconds: float    # in those calls


class PortsParsed:
    """DV ports turned into plain data by the replica's thread."""

    def __init__(self):
        self.count = 0
        real = ports_mod.port_of

        def port_of(p):
            if threading.current_thread().name == REPLICA_THREAD:
                self.count += 1
            return real(p)

        self.patch = mock.patch.object(ports_mod, "port_of", port_of)


def change(rec, counter, parsed, do, seen_when) -> Seen:
    with counter.counting() as calls:
        before = parsed.count
        t0 = time.perf_counter()
        do()
        assert rec.replica.wait_until(seen_when, 120), "replica never saw it"
        elapsed = time.perf_counter() - t0
    return Seen(elapsed, calls.count("FetchDVPorts"), parsed.count - before,
                calls.replica_seconds)


def run(sim: Vcsim, n: int, rounds: int, lock_dir: str) -> dict:
    neutron = bench_ports.Neutron(n)
    rec = reconciler(sim, lock_dir, "nic",
                     compute_host=bench_ports.COMPUTE_HOST)
    si = sim.connect()
    try:
        made = bench_ports.set_up(rec, neutron)
        inv = rec.inventory()
        pg = next(p for p in inv.dvs_portgroups if p.owner == neutron.net.id)
        dvs = inv.dvs(DVS_NAME)
        by_name = {p.name: p for p in inv.dv_ports[pg.key]}
        print(f"N={n}: port group {pg.name} ({pg.key}), "
              f"{len(inv.dv_ports[pg.key])} DV ports, {n} reserved and "
              f"configured in {made:.1f} s (untimed set-up)", flush=True)
        vm = find_named(si, vim.VirtualMachine, VM_NAME)

        def wait(task):
            while task.info.state not in ("success", "error"):
                time.sleep(0.005)
            assert task.info.state == "success", task.info.error

        def connected(key):
            return lambda inv: any(p.connected for p in inv.dv_ports.get(
                pg.key, ()) if p.key == key)

        def attach(key):
            nic = vim.vm.device.VirtualVmxnet3(
                key=-1, backing=vim.vm.device.VirtualEthernetCard
                .DistributedVirtualPortBackingInfo(port=vim.dvs.PortConnection(
                    switchUuid=dvs.uuid, portgroupKey=pg.key, portKey=key)))
            wait(vm.ReconfigVM_Task(vim.vm.ConfigSpec(deviceChange=[
                vim.vm.device.VirtualDeviceSpec(operation="add",
                                                device=nic)])))

        def detach(key):
            (dev,) = [d for d in vm.config.hardware.device
                      if isinstance(d, vim.vm.device.VirtualEthernetCard)
                      and getattr(d.backing, "port", None) is not None
                      and d.backing.port.portKey == key]
            wait(vm.ReconfigVM_Task(vim.vm.ConfigSpec(deviceChange=[
                vim.vm.device.VirtualDeviceSpec(operation="remove",
                                                device=dev)])))

        counter = SoapCounter()
        parsed = PortsParsed()
        results: dict[str, dict[str, list[Seen]]] = {
            v: {"connect": [], "disconnect": []} for v in ("narrow", "whole")}
        with parsed.patch:
            for r in range(rounds):
                order = ("narrow", "whole") if r % 2 == 0 else \
                    ("whole", "narrow")
                for i, variant in enumerate(order):
                    key = by_name[neutron.port_ids[2 * r + i]].key
                    patch = mock.patch.object(
                        rec.replica, "_ports_touched",
                        lambda update, before, objects, held:
                        (whole_group_touched(update, objects), {})) \
                        if variant == "whole" else contextlib.nullcontext()
                    with patch:
                        on = change(rec, counter, parsed,
                                    lambda: attach(key), connected(key))
                        off = change(rec, counter, parsed,
                                     lambda: detach(key),
                                     lambda inv: not connected(key)(inv))
                    results[variant]["connect"].append(on)
                    results[variant]["disconnect"].append(off)
                    for what, m in (("connect", on), ("disconnect", off)):
                        print(f"  round {r + 1} {variant:6s} {what:10s} "
                              f"{m.seconds * 1000:8.1f} ms until seen, "
                              f"{m.fetches} FetchDVPorts, {m.ports:5d} "
                              f"ports, {m.fetch_seconds * 1000:8.1f} ms in "
                              f"them", flush=True)
        return results
    finally:
        from pyVim.connect import Disconnect
        Disconnect(si)
        rec.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ports", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--delay-ms", type=int, default=2,
                        help="added to every vSphere call")
    args = parser.parse_args()
    print(f"bench_nic: commit {commit()}, {machine()}; {args.delay_ms} ms "
          f"per call; {args.rounds} round(s), variants alternating",
          flush=True)
    lock_dir = tempfile.mkdtemp(prefix="bench-nic-locks-")
    sim = Vcsim(vms=1, extra_args=["-delay", str(args.delay_ms)]).start()
    try:
        res = run(sim, args.ports, args.rounds, lock_dir)
    finally:
        sim.stop()
        shutil.rmtree(lock_dir, ignore_errors=True)
    print()
    print(f"N={args.ports}, medians of {args.rounds} round(s):")
    print("| change | replica | until seen | FetchDVPorts | DV ports read "
          "| time in FetchDVPorts |")
    print("|---|---|---|---|---|---|")
    for what in ("connect", "disconnect"):
        for variant, label in (("whole", "whole group (before)"),
                               ("narrow", "narrow (after)")):
            ms = res[variant][what]

            def med(fn):
                return statistics.median(fn(m) for m in ms)
            print(f"| {what} | {label} | {med(lambda m: m.seconds) * 1000:.1f}"
                  f" ms | {med(lambda m: m.fetches):g} | "
                  f"{med(lambda m: m.ports):g} | "
                  f"{med(lambda m: m.fetch_seconds) * 1000:.1f} ms |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

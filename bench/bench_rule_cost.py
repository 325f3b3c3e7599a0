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

"""What one traffic rule costs the client to write and to read back.

Any security-group design is bounded by this (docs/security-groups.md,
"What a write costs"): N distinct rules (default 21,000: 1,000 ports of 21)
are built into pyVmomi objects with the driver's own ``ports.rule_spec``
(uncached: every rule differs), serialised as ``ReconfigureDVPort_Task``
sends them (one port's filter policy at a time) -- by stock pyVmomi, then by
the session's serializer, which writes a rule it wrote before from its
cached text (first write: cold, every rule new; second write: the same
rule objects again) -- and parsed back from a ``DistributedVirtualPort`` as
the replica's ``FetchDVPorts`` answer carries them.  Then one request of
``--shared`` distinct rules (default 5,000: a port group's shared filter in
its ``defaultPortConfig``), ``ReconfigureDVPortgroup_Task`` as the session's
stub serialises it, twice (cold, warm), and by stock pyVmomi's stub.  CPU
time (``time.process_time``) of each step, per rule, the median of
``--rounds``; every cached text is checked equal to stock pyVmomi's; no
vCenter involved (pure client cost).

    .venv/bin/python bench/bench_rule_cost.py [--rules 21000] [--shared 5000]
        [--rounds 3]
"""

from __future__ import annotations

import argparse
import datetime
import io
import statistics
import time

from bench_common import commit, machine  # noqa: E402 - sys.path
from pyVmomi import SoapAdapter, vim  # noqa: E402

from networking_vcenter.vsphere import ports  # noqa: E402
from networking_vcenter.vsphere import session  # noqa: E402
from networking_vcenter.vsphere.inventory import TrafficRule  # noqa: E402

PER_PORT = 21
VERSION = "vim.version.version13"
DVPort = vim.dvs.DistributedVirtualPort


def rules(n: int) -> list[TrafficRule]:
    return [TrafficRule("incomingPackets", "accept", protocol=6,
                        source=f"10.{i // 62500}.{i // 250 % 250}.{i % 250}"
                               f"/32",
                        destination_ports=(22, 22),
                        description=f"sg x rule {i}") for i in range(n)]


def _cached_str(policy, info) -> str:
    """SerializeToStr(policy, version=VERSION) by the session's serializer."""
    writer = io.StringIO()
    session._RuleCachingSerializer(writer, VERSION, {}).Serialize(policy,
                                                                  info)
    return writer.getvalue()


def one_round(n: int) -> tuple[float, ...]:
    ports.clear_rule_caches()
    todo = rules(n)
    t0 = time.process_time()
    policies = [ports._filter(tuple(todo[k:k + PER_PORT]))
                for k in range(0, n, PER_PORT)]
    built = time.process_time() - t0
    t0 = time.process_time()
    stock = [SoapAdapter.SerializeToStr(policy, version=VERSION)
             for policy in policies]
    serialised = time.process_time() - t0
    info = SoapAdapter.Object(name="obj", type=object, version=VERSION,
                              flags=0)
    cached = []
    for _ in ("first write", "second write"):
        t0 = time.process_time()
        texts = [_cached_str(policy, info) for policy in policies]
        cached.append(time.process_time() - t0)
        assert texts == stock
    answers = [SoapAdapter.SerializeToStr(DVPort(
        key=str(k), lastStatusChange=datetime.datetime(2026, 1, 1),
        config=DVPort.ConfigInfo(
            name="p", configVersion="1",
            setting=vim.dvs.VmwareDistributedVirtualSwitch
            .VmwarePortConfigPolicy(filterPolicy=policy))),
        version=VERSION) for k, policy in enumerate(policies)]
    t0 = time.process_time()
    for answer in answers:
        back = SoapAdapter.Deserialize(answer)
        assert len(back.config.setting.filterPolicy.filterConfig[0]
                   .trafficRuleset.rules) <= PER_PORT
    parsed = time.process_time() - t0
    return built, serialised, cached[0], cached[1], parsed


def shared_round(n: int) -> tuple[float, float, float]:
    """One ReconfigureDVPortgroup_Task of n distinct rules: stock pyVmomi's
    stub, the session's stub cold, the session's stub warm."""
    ports.clear_rule_caches()
    spec = vim.dvs.DistributedVirtualPortgroup.ConfigSpec(
        configVersion="1",
        defaultPortConfig=vim.dvs.VmwareDistributedVirtualSwitch
        .VmwarePortConfigPolicy(filterPolicy=ports._filter(tuple(rules(n)))))
    stubs = [SoapAdapter.SoapStubAdapter(host="192.0.2.1",
                                         ns=session.API_NAMESPACE),
             session._TimedStub(lambda: 30.0, host="192.0.2.1",
                                ns=session.API_NAMESPACE)]
    info = vim.dvs.DistributedVirtualPortgroup.ReconfigureDVPortgroup_Task \
        .info
    times, sent = [], []
    for stub in (stubs[0], stubs[1], stubs[1]):
        mo = vim.dvs.DistributedVirtualPortgroup("dvportgroup-1", stub)
        t0 = time.process_time()
        sent.append(stub.SerializeRequest(mo, info, (spec,)))
        times.append(time.process_time() - t0)
    assert sent[0] == sent[1] == sent[2]
    assert sent[0].count(b"<rules>") == n
    return times[0], times[1], times[2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rules", type=int, default=21000)
    parser.add_argument("--shared", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(f"commit {commit()}; {machine()}")
    runs = [one_round(args.rules) for _ in range(args.rounds)]
    print(f"\n{args.rules:,} rules, {args.rounds} rounds, median per rule:\n")
    print("| step | per rule | all rules |")
    print("|---|---|---|")
    for i, step in enumerate(("build (ports.rule_spec, uncached)",
                              "serialise (request), stock pyVmomi",
                              "serialise, cached: first write (cold)",
                              "serialise, cached: second write (warm)",
                              "parse back (FetchDVPorts answer)")):
        total = statistics.median(r[i] for r in runs)
        print(f"| {step} | {total / args.rules * 1e3:.4f} ms | "
              f"{total:.3f} s |")
    shared = [shared_round(args.shared) for _ in range(args.rounds)]
    print(f"\nOne ReconfigureDVPortgroup_Task of {args.shared:,} distinct "
          f"rules (SerializeRequest), {args.rounds} rounds, median:\n")
    print("| serialiser | per rule | the request |")
    print("|---|---|---|")
    for i, step in enumerate(("stock pyVmomi",
                              "session, first write (cold)",
                              "session, second write (warm)")):
        total = statistics.median(r[i] for r in shared)
        print(f"| {step} | {total / args.shared * 1e3:.4f} ms | "
              f"{total:.3f} s |")


if __name__ == "__main__":
    main()

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

"""The client CPU of the port-group write when one VM joins a big default
security group (the shared filter, ``portsettings.shared_rules``).

N ports (default 1,000) in the default group (bench_sg.py's ports); the
group's filter is written once for N-1 of them (the previous write), then
for all N: the joining port's address falls in the middle of the sorted
members, so its rules shift the sequences of the rules after them.  CPU
(``time.process_time``) of building the spec (``ports.filter_policy``,
rule_spec's caches warm from the previous write) and of serialising the
``ReconfigureDVPortgroup_Task`` request by the session's stub and by stock
pyVmomi's (checked byte-identical), the median of ``--rounds``.

    .venv/bin/python bench/bench_join_write.py [--ports 1000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

from bench_common import commit, machine  # noqa: E402 - sys.path
from bench_sg import default_group_ports  # noqa: E402
from pyVmomi import SoapAdapter, vim  # noqa: E402

from networking_vcenter.reconcile import portsettings  # noqa: E402
from networking_vcenter.vsphere import ports, session  # noqa: E402

DVPG = vim.dvs.DistributedVirtualPortgroup
INFO = DVPG.ReconfigureDVPortgroup_Task.info


def _spec(rules):
    return DVPG.ConfigSpec(
        configVersion="1",
        defaultPortConfig=vim.dvs.VmwareDistributedVirtualSwitch
        .VmwarePortConfigPolicy(filterPolicy=ports.filter_policy(rules)))


def one_round(n: int) -> tuple[float, float, float, int, int]:
    everyone = default_group_ports(n)
    joiner = everyone[n // 2]
    members = everyone[0].remote_groups["sg-default"]
    before = [dataclasses.replace(p, remote_groups={"sg-default": tuple(
        m for m in members if m != joiner.fixed_ips[0])})
        for p in everyone if p is not joiner]
    old, new = (portsettings.shared_rules(before),
                portsettings.shared_rules(everyone))
    ports.clear_rule_caches()
    ours = session._TimedStub(lambda: 30.0, host="192.0.2.1",
                              ns=session.API_NAMESPACE)
    stock = SoapAdapter.SoapStubAdapter(host="192.0.2.1",
                                        ns=session.API_NAMESPACE)
    ours.SerializeRequest(DVPG("dvportgroup-1", ours), INFO, (_spec(old),))
    t0 = time.process_time()
    spec = _spec(new)
    built = time.process_time() - t0
    t0 = time.process_time()
    sent = ours.SerializeRequest(DVPG("dvportgroup-1", ours), INFO, (spec,))
    cached = time.process_time() - t0
    t0 = time.process_time()
    want = stock.SerializeRequest(DVPG("dvportgroup-1", stock), INFO,
                                  (spec,))
    plain = time.process_time() - t0
    assert sent == want
    kept = len({(r, i) for i, r in enumerate(old)} &
               {(r, i) for i, r in enumerate(new)})
    return built, cached, plain, len(new), kept


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ports", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(f"commit {commit()}; {machine()}")
    runs = [one_round(args.ports) for _ in range(args.rounds)]
    _, _, _, rules, kept = runs[0]
    print(f"\n{args.ports:,} ports, one joins: {rules:,} rules, {kept:,} at "
          f"the sequence they had; median of {args.rounds}:\n")
    print("| step | client CPU |")
    print("|---|---|")
    for i, step in enumerate(("build the spec (rule_spec caches warm)",
                              "serialise, the session's stub",
                              "serialise, stock pyVmomi")):
        print(f"| {step} | {statistics.median(r[i] for r in runs):.3f} s |")


if __name__ == "__main__":
    main()

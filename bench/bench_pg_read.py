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

"""What reading a port group that holds a big shared filter costs the client.

The replica watches ``config.defaultPortConfig`` of our port groups
(replica.py ``DVPG_PATHS``); with a shared filter of N rules (default
5,000) in it, every change of the group makes each process parse all of
them.  Against the simulator, one port group whose
``defaultPortConfig.filterPolicy`` holds N rules (built by
``ports.rule_spec``); client CPU (``time.process_time``, median of
``--rounds``) of:

* ``RetrievePropertiesEx`` of ``config.defaultPortConfig``;
* the same narrowed to ``config.defaultPortConfig.vlan`` and
  ``config.defaultPortConfig.blocked``;
* ``WaitForUpdatesEx`` on a filter of either pathSet, after a change of the
  group's VLAN (the update each process parses), and whether an update
  comes at all after a change of the filter only (one rule more).

It also says whether the simulator accepts the nested paths in a
``PropertyFilterSpec`` for both calls.  No driver code but the rule
builder: a plain pyVmomi client, as the replica's deserializer.

    .venv/bin/python bench/bench_pg_read.py [--rules 5000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid

from bench_common import DVS_NAME, Vcsim, commit, machine  # noqa: E402
from pyVmomi import vim, vmodl  # noqa: E402

from networking_vcenter.vsphere import ports  # noqa: E402
from networking_vcenter.vsphere.inventory import TrafficRule  # noqa: E402

PC = vmodl.query.PropertyCollector
VmwareDVS = vim.dvs.VmwareDistributedVirtualSwitch
DVPG = vim.dvs.DistributedVirtualPortgroup
WHOLE = ["config.defaultPortConfig"]
NARROW = ["config.defaultPortConfig.vlan", "config.defaultPortConfig.blocked"]


def rules(n: int) -> tuple[TrafficRule, ...]:
    return tuple(TrafficRule("incomingPackets", "accept", protocol=6,
                             source=f"10.{i // 62500}.{i // 250 % 250}."
                                    f"{i % 250}/32",
                             destination_ports=(22, 22),
                             description=f"sg x rule {i}") for i in range(n))


def wait(task: vim.Task) -> None:
    while task.info.state not in ("success", "error"):
        time.sleep(0.05)
    if task.info.state == "error":
        raise task.info.error


def find(si, vimtype, name):
    view = si.content.viewManager.CreateContainerView(
        si.content.rootFolder, [vimtype], True)
    try:
        return next(o for o in view.view if o.name == name)
    finally:
        view.Destroy()


def spec_of(pg, paths) -> PC.FilterSpec:
    return PC.FilterSpec(objectSet=[PC.ObjectSpec(obj=pg)],
                         propSet=[PC.PropertySpec(type=DVPG, pathSet=paths)])


def retrieve(si, pg, paths, rounds) -> tuple[float, dict]:
    pc = si.content.propertyCollector
    times = []
    for _ in range(rounds):
        t0 = time.process_time()
        result = pc.RetrievePropertiesEx([spec_of(pg, paths)],
                                         PC.RetrieveOptions())
        times.append(time.process_time() - t0)
    (obj,) = result.objects
    return statistics.median(times), {p.name: p.val for p in obj.propSet}


def port_config(vlan: int, n: int) -> VmwareDVS.VmwarePortConfigPolicy:
    """The group's whole default port config: a change sends all of it (the
    simulator replaces the config's policies that a spec sets)."""
    return VmwareDVS.VmwarePortConfigPolicy(
        vlan=VmwareDVS.VlanIdSpec(inherited=False, vlanId=vlan),
        blocked=vim.BoolPolicy(inherited=False, value=False),
        filterPolicy=ports._filter(rules(n)))


def reconfigure(pg, vlan: int, n: int) -> None:
    wait(pg.ReconfigureDVPortgroup_Task(DVPG.ConfigSpec(
        configVersion=pg.config.configVersion,
        defaultPortConfig=port_config(vlan, n))))


def _names(update) -> list[str] | None:
    if update is None:
        return None
    return sorted(c.name for f in update.filterSet
                  for o in f.objectSet for c in o.changeSet or [])


def watch(si, pg, paths, n, rounds
          ) -> tuple[float, list[str] | None, list[str] | None,
                     list[str] | None]:
    """CPU of the WaitForUpdatesEx that brings a VLAN change (median), the
    paths it names, and those of the update a change of the filter alone
    (one rule more) brings, then a change of the group's description alone
    (None: no update)."""
    pc = si.content.propertyCollector.CreatePropertyCollector()
    try:
        pc.CreateFilter(spec_of(pg, paths), partialUpdates=False)
        update = pc.WaitForUpdatesEx("", PC.WaitOptions(maxWaitSeconds=5))
        version = update.version
        times, names = [], []
        for r in range(rounds):
            reconfigure(pg, 500 + r, n)
            t0 = time.process_time()
            update = pc.WaitForUpdatesEx(version,
                                         PC.WaitOptions(maxWaitSeconds=10))
            times.append(time.process_time() - t0)
            assert update is not None, "no update after a VLAN change"
            version = update.version
            names = _names(update)
        reconfigure(pg, 500 + rounds - 1, n + 1)
        n += 1
        update = pc.WaitForUpdatesEx(version, PC.WaitOptions(maxWaitSeconds=3))
        after_filter = _names(update)
        version = update.version if update is not None else version
        wait(pg.ReconfigureDVPortgroup_Task(DVPG.ConfigSpec(
            configVersion=pg.config.configVersion,
            description=f"changed {time.time()}")))
        update = pc.WaitForUpdatesEx(version, PC.WaitOptions(maxWaitSeconds=3))
        return statistics.median(times), names, after_filter, _names(update)
    finally:
        pc.DestroyPropertyCollector()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rules", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    print(f"commit {commit()}; {machine()}")
    with Vcsim(clusters=1, hosts=1, vms=0) as sim:
        si = sim.connect()
        print(f"simulator {si.content.about.fullName}, pyVmomi client at "
              f"{si._stub.version}")
        dvs = find(si, vim.DistributedVirtualSwitch, DVS_NAME)
        name = f"bench-{uuid.uuid4()}"
        wait(dvs.AddDVPortgroup_Task([DVPG.ConfigSpec(
            name=name, type="earlyBinding", numPorts=8,
            defaultPortConfig=port_config(401, args.rules))]))
        pg = find(si, DVPG, name)

        whole, got = retrieve(si, pg, WHOLE, args.rounds)
        held = got["config.defaultPortConfig"].filterPolicy.filterConfig[0] \
            .trafficRuleset.rules
        assert len(held) == args.rules, len(held)
        try:
            narrow, got_narrow = retrieve(si, pg, NARROW, args.rounds)
            retrieve_ok = f"accepted: {sorted(got_narrow)} = " + ", ".join(
                f"{type(v).__name__}" for _, v in sorted(got_narrow.items()))
        except vmodl.MethodFault as exc:
            narrow, retrieve_ok = float("nan"), f"refused: {exc!r}"
        print(f"\n{args.rules:,} rules in the group's defaultPortConfig, "
              f"median of {args.rounds}, client CPU:\n")
        print("| call | pathSet | client CPU |")
        print("|---|---|---|")
        print(f"| RetrievePropertiesEx | {', '.join(WHOLE)} | "
              f"{whole * 1e3:.1f} ms |")
        print(f"| RetrievePropertiesEx | {', '.join(NARROW)} | "
              f"{narrow * 1e3:.2f} ms |")
        results = []
        n = args.rules
        for paths in (WHOLE, NARROW):
            try:
                results.append((paths, *watch(si, pg, paths, n,
                                              args.rounds)))
                n += 1
            except vmodl.MethodFault as exc:
                results.append((paths, float("nan"), [repr(exc)], None,
                                None))
        for paths, cpu, *_ in results:
            print(f"| WaitForUpdatesEx (VLAN changed) | {', '.join(paths)} "
                  f"| {cpu * 1e3:.2f} ms |")
        print(f"\nNested pathSet in RetrievePropertiesEx: {retrieve_ok}")
        for paths, _, names, after_filter, after_text in results:
            print(f"WaitForUpdatesEx on {paths}: a VLAN change reports "
                  f"{names}; a change of the filter alone "
                  + ("brings no update" if after_filter is None else
                     f"reports {after_filter}")
                  + "; a change of the description alone "
                  + ("brings no update" if after_text is None else
                     f"reports {after_text}"))


if __name__ == "__main__":
    main()

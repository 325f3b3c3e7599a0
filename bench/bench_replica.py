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

"""The live replica's worth: binds, full passes and Neutron's API, measured.

Each scenario runs both variants in one process, in alternating rounds, and
prints every round and the median ratio; SOAP round trips are counted by
wrapping pyVmomi's ``SoapStubAdapter.InvokeMethod`` (the replica's own long
poll, ``WaitForUpdatesEx``, is not counted).  Latency is injected with the
simulator's own knob (``-delay``, ms on every call; ../shared/FACTS.md), as
bench.py does: the simulator itself answers in ~0.3 ms.

Scenarios:

* ``bind``      the vCenter part of a port bind (``Reconciler.port_group_for``)
                on a network whose port group exists, among ``--count`` of
                our port groups:
  - replica:    ``watch=True``, warm: answered from memory;
  - full read:  ``watch=False``: one full read of vCenter per bind (the
                naive "read everything, then decide" pattern).
* ``fullpass``  one no-drift full pass (``Reconciler.sync_all(
                neutron_db.networks, grace=0)``) over ``--count`` networks,
                the Neutron read included: a real Neutron database (sqlite
                file, Neutron's own schema) holding the networks, their VLAN
                segments and standard attributes; the simulator holding the
                matching distributed port groups, made by our own spec and
                owner description before the replica starts;
  - replica:    warm replica (target: 0 SOAP calls, <= 2 s at 10,000);
  - full read:  ``watch=False`` (the CLI's way): one full read per pass.
  ``--profile`` adds a cProfile of one warm pass (top functions).
* ``api``       network create / update (name) / delete through Neutron's
                ML2 plugin and API layer (neutron's ``Ml2PluginV2TestCase``,
                in process: WSGI request -> plugin -> mechanism drivers ->
                sqlite), mechanism drivers ``openvswitch`` against
                ``openvswitch,vcenter``, for VXLAN networks (not ours) and
                VLAN networks on physnet1 -> DVS0 (a port group made and
                removed per network).  A fresh plugin per variant and round.

Run: ``.venv/bin/python bench/bench_replica.py --scenario
bind|fullpass|api [--count N] [--rounds R] [--delay-ms MS] [--binds B]
[--profile LINES]``.  Figures: RESULTS.md.  Nothing here imports tests/.
"""

from __future__ import annotations

import argparse
import cProfile
import datetime
import io
import os
import pstats
import shutil
import statistics
import sys
import tempfile
import time
import uuid
import warnings

warnings.filterwarnings("ignore", message=r"(?s).*Eventlet is deprecated")

from bench_common import (  # noqa: E402 - puts the repository on sys.path
    CLUSTER, DEPLOYMENT, DVS_NAME, PHYSNET, SoapCounter, Vcsim, machine,
    reconciler)
from pyVmomi import vim  # noqa: E402

from networking_vcenter import conf  # noqa: E402
from networking_vcenter.reconcile import desired as desired_mod  # noqa: E402
from networking_vcenter.reconcile.reconciler import Reconciler  # noqa: E402
from networking_vcenter.vsphere import inventory  # noqa: E402
from networking_vcenter.vsphere import switches  # noqa: E402


# -- shared helpers -----------------------------------------------------------

def vlan_of(i: int) -> int:
    return 1 + i % 4094


def make_port_groups(sim: Vcsim, ids: list[str], batch: int = 100) -> float:
    """Our distributed port groups for ``ids`` (VLAN ``vlan_of(index)``),
    exactly as the driver makes them (its spec, its owner description),
    in tasks of ``batch`` specs; before any replica watches."""
    si = sim.connect()
    t0 = time.perf_counter()
    try:
        content = si.RetrieveContent()
        view = content.viewManager.CreateContainerView(
            content.rootFolder, [vim.DistributedVirtualSwitch], True)
        dvs = next(d for d in view.view if d.name == DVS_NAME)
        view.DestroyView()
        for start in range(0, len(ids), batch):
            specs = []
            for i in range(start, min(start + batch, len(ids))):
                vlan = vlan_of(i)
                specs.append(switches.dvs_port_group_spec(
                    desired_mod.dvs_port_group_name(
                        conf.DEFAULT_DVS_NAME_TEMPLATE, ids[i], PHYSNET, vlan),
                    vlan, inventory.owner_description(
                        DEPLOYMENT, ids[i], PHYSNET, vlan)))
            task = dvs.AddDVPortgroup_Task(specs)
            while task.info.state not in ("success", "error"):
                time.sleep(0.005)
            if task.info.state == "error":
                raise RuntimeError(f"AddDVPortgroup_Task: {task.info.error}")
    finally:
        from pyVim.connect import Disconnect
        Disconnect(si)
    return time.perf_counter() - t0


def specs_for(ids: list[str]) -> list[desired_mod.NetworkSpec]:
    return [desired_mod.NetworkSpec(net_id, ({
        "network_type": "vlan", "physical_network": PHYSNET,
        "segmentation_id": vlan_of(i)},)) for i, net_id in enumerate(ids)]


def median_line(label: str, ratios: list[float], fmt: str = ".1f") -> None:
    print(f"median ratio ({label}): {statistics.median(ratios):{fmt}}x")


# -- scenario bind ------------------------------------------------------------

def bind(args) -> int:
    sim = Vcsim(extra_args=("-delay", str(args.delay_ms))).start()
    lock_dir = tempfile.mkdtemp(prefix="bench-replica-locks-")
    recs: list[Reconciler] = []
    try:
        ids = [str(uuid.uuid4()) for _ in range(args.count)]
        made = make_port_groups(sim, ids)
        nets = specs_for(ids)
        target = nets[len(nets) // 2]

        def source(wanted):
            return [target] if wanted is None or target.id in wanted else []

        warm = reconciler(sim, lock_dir, "watch", watch=True)
        recs.append(warm)
        full = reconciler(sim, lock_dir, "full", watch=False)
        recs.append(full)
        counter = SoapCounter(waits=False)
        print(f"scenario bind: port_group_for on an existing network among "
              f"{args.count} port groups ({made:.1f} s to make), "
              f"{args.delay_ms} ms per call, {args.binds} binds a round; "
              f"{machine()}")

        def run(rec: Reconciler) -> tuple[float, float]:
            with counter.counting() as calls:
                t0 = time.perf_counter()
                for _ in range(args.binds):
                    pg, found = rec.port_group_for(
                        target.id, PHYSNET, source, time.monotonic() + 60)
                    assert found.name == pg.name, (pg, found)
                elapsed = time.perf_counter() - t0
            return elapsed / args.binds, len(calls) / args.binds

        run(warm), run(full)    # warm-up: first snapshot, connections
        ratios = []
        for r in range(args.rounds):
            (a, ca), (b, cb) = run(warm), run(full)
            ratios.append(b / a)
            print(f"round {r + 1}: replica {a * 1000:8.3f} ms, {ca:g} SOAP "
                  f"calls per bind   full read {b * 1000:8.1f} ms, {cb:g} "
                  f"SOAP calls per bind   ratio {b / a:8.0f}x")
        median_line("full read / replica", ratios, ".0f")
    finally:
        for rec in recs:
            rec.close()
        sim.stop()
        shutil.rmtree(lock_dir, ignore_errors=True)
    return 0


# -- scenario fullpass --------------------------------------------------------

def build_neutron_db(path: str, ids: list[str]) -> float:
    """A Neutron database (Neutron's own schema, FACTS.md) holding ``ids``
    as VLAN networks on physnet1 with one segment each; bulk inserts."""
    import sqlalchemy as sa
    from neutron.db.migration.models import head
    t0 = time.perf_counter()
    engine = sa.create_engine(f"sqlite:///{path}")
    metadata = head.get_metadata()
    metadata.create_all(engine)
    attrs = metadata.tables["standardattributes"]
    networks = metadata.tables["networks"]
    segments = metadata.tables["networksegments"]
    now = datetime.datetime.utcnow().replace(microsecond=0) - \
        datetime.timedelta(hours=1)
    project = uuid.uuid4().hex
    attr_rows, net_rows, seg_rows = [], [], []
    for i, net_id in enumerate(ids):
        net_attr, seg_attr = 2 * i + 1, 2 * i + 2
        attr_rows.append({"id": net_attr, "resource_type": "networks",
                          "description": "", "revision_number": 1,
                          "created_at": now, "updated_at": now})
        attr_rows.append({"id": seg_attr, "resource_type": "networksegments",
                          "description": "", "revision_number": 0,
                          "created_at": now, "updated_at": now})
        net_rows.append({"id": net_id, "project_id": project,
                         "name": f"bench-{i}", "status": "ACTIVE",
                         "admin_state_up": True, "mtu": 1500,
                         "vlan_transparent": False,
                         "standard_attr_id": net_attr})
        seg_rows.append({"id": str(uuid.uuid4()), "network_id": net_id,
                         "network_type": "vlan", "physical_network": PHYSNET,
                         "segmentation_id": vlan_of(i), "is_dynamic": False,
                         "segment_index": 0, "standard_attr_id": seg_attr})
    with engine.begin() as conn:
        conn.execute(attrs.insert(), attr_rows)
        conn.execute(networks.insert(), net_rows)
        conn.execute(segments.insert(), seg_rows)
    engine.dispose()
    return time.perf_counter() - t0


def use_neutron_db(path: str) -> None:
    """Point oslo.db (Neutron's enginefacade) at the file, as the CLI's
    load_config does."""
    from neutron.common import config as common_config
    from oslo_config import cfg
    from oslo_db import options as db_options
    common_config.register_common_config_options()
    db_options.set_defaults(cfg.CONF, connection=f"sqlite:///{path}")
    cfg.CONF([], project="neutron", default_config_files=[])


def fullpass(args) -> int:
    from networking_vcenter import neutron_db
    workdir = tempfile.mkdtemp(prefix="bench-replica-")
    sim = Vcsim(extra_args=("-delay", str(args.delay_ms)))
    recs: list[Reconciler] = []
    try:
        ids = [str(uuid.uuid4()) for _ in range(args.count)]
        db_path = os.path.join(workdir, "neutron.sqlite")
        built = build_neutron_db(db_path, ids)
        use_neutron_db(db_path)
        sim.start()
        made = make_port_groups(sim, ids)
        t0 = time.perf_counter()
        warm = reconciler(sim, workdir, "watch", watch=True)
        recs.append(warm)
        first_read = time.perf_counter() - t0
        full = reconciler(sim, workdir, "full", watch=False)
        recs.append(full)
        counter = SoapCounter(waits=False)
        t0 = time.perf_counter()
        read = len(neutron_db.networks())
        neutron_read = time.perf_counter() - t0
        assert read == args.count, read
        print(f"scenario fullpass: no-drift full pass over {args.count} "
              f"networks (Neutron database built in {built:.1f} s, "
              f"{args.count} port groups made in {made:.1f} s, replica's "
              f"first read {first_read:.1f} s, first Neutron read "
              f"{neutron_read:.2f} s), {args.delay_ms} ms per call; "
              f"{machine()}")

        def run(rec: Reconciler) -> tuple[float, int]:
            with counter.counting() as calls:
                t0 = time.perf_counter()
                result = rec.sync_all(neutron_db.networks, grace=0)
                elapsed = time.perf_counter() - t0
            assert result is not None
            assert not result.plan.steps, result.plan.describe()[:5]
            assert not result.plan.conflicts, result.plan.conflicts[:5]
            assert len(result.plan.in_sync) == args.count, \
                len(result.plan.in_sync)
            return elapsed, len(calls)

        ratios = []
        warm_times = []
        for r in range(args.rounds):
            (a, ca), (b, cb) = run(warm), run(full)
            ratios.append(b / a)
            warm_times.append(a)
            print(f"round {r + 1}: replica {a:6.2f} s, {ca} SOAP calls   "
                  f"full read {b:6.2f} s, {cb} SOAP calls   ratio "
                  f"{b / a:5.1f}x")
        median_line("full read / replica", ratios)
        print(f"replica pass, median {statistics.median(warm_times):.2f} s "
              f"(target <= 2 s at 10,000)")
        t0 = time.perf_counter()
        neutron_db.networks()
        print(f"of which the Neutron read alone: "
              f"{time.perf_counter() - t0:.2f} s")
        if args.profile:
            prof = cProfile.Profile()
            prof.enable()
            warm.sync_all(neutron_db.networks, grace=0)
            prof.disable()
            for key in ("cumulative", "tottime"):
                out = io.StringIO()
                pstats.Stats(prof, stream=out).strip_dirs().sort_stats(
                    key).print_stats(args.profile)
                print(f"-- profile of one warm pass, by {key}")
                print("\n".join(out.getvalue().splitlines()[4:]))
    finally:
        for rec in recs:
            rec.close()
        sim.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


# -- scenario api -------------------------------------------------------------

def api(args) -> int:
    """Drive neutron's Ml2PluginV2TestCase programmatically: one test case
    instance per variant and round (setUp loads a fresh plugin with the
    variant's mechanism drivers; the test method times the API calls)."""
    import unittest

    # As the test runner does: logs captured in memory at INFO, not
    # printed (oslotest's ConfigureLogging).
    os.environ["OS_LOG_CAPTURE"] = "1"
    os.environ["OS_DEBUG"] = "0"
    from neutron.tests.unit.plugins.ml2 import test_plugin
    from neutron_lib.api.definitions import provider_net as pnet

    sim = Vcsim(extra_args=("-delay", str(args.delay_ms))).start()
    results: dict = {}
    counter = SoapCounter(waits=False)

    class ApiBench(test_plugin.Ml2PluginV2TestCase):
        variant = "openvswitch"
        round_no = 0

        def setUp(self):
            self._mechanism_drivers = self.variant.split(",")
            super().setUp()
            if "vcenter" in self._mechanism_drivers:
                obj = self.driver.mechanism_manager.mech_drivers[
                    "vcenter"].obj
                self.addCleanup(obj.backend.reconciler.close)

        def setup_config(self):
            fd, path = tempfile.mkstemp(prefix="bench-ml2_vcenter-",
                                        suffix=".ini")
            with os.fdopen(fd, "w") as f:
                f.write(
                    "[ml2_vcenter]\n"
                    f"host_ip = {sim.host}\nhost_port = {sim.port}\n"
                    f"host_username = {sim.username}\n"
                    f"host_password = {sim.password}\ninsecure = true\n"
                    "api_retry_count = 1\nresync_interval = 0\n"
                    f"switch_mappings = {PHYSNET}:{DVS_NAME}\n"
                    f"compute_hosts = vc-compute-1:{CLUSTER}\n"
                    "[ml2_type_vxlan]\nvni_ranges = 1:5000\n")
            self.addCleanup(os.unlink, path)
            self.config_parse(args=["--config-file", path])

        def request(self, req, status):
            t0 = time.perf_counter()
            res = req.get_response(self.api)
            elapsed = time.perf_counter() - t0
            if res.status_int != status:
                raise AssertionError(f"{res.status_int}: {res.body[:500]}")
            return res, elapsed

        def test_api(self):
            for kind in ("vxlan", "vlan"):
                times = {"create": [], "update": [], "delete": []}
                soap = {}
                with counter.counting() as calls:
                    made = []
                    for i in range(args.count):
                        body = {pnet.NETWORK_TYPE: kind}
                        if kind == "vlan":
                            body.update({pnet.PHYSICAL_NETWORK: PHYSNET,
                                         pnet.SEGMENTATION_ID: 1000 + i})
                        req = self.new_create_request("networks", {
                            "network": {"name": f"bench-{i}",
                                        "admin_state_up": True,
                                        "project_id": self._project_id,
                                        **body}}, project_id=self._project_id,
                            as_admin=True)
                        res, t = self.request(req, 201)
                        times["create"].append(t)
                        made.append(self.deserialize(self.fmt, res)
                                    ["network"]["id"])
                    soap["create"] = len(calls)
                    for net_id in made:
                        req = self.new_update_request(
                            "networks", {"network": {"name": "renamed"}},
                            net_id, as_admin=True)
                        times["update"].append(self.request(req, 200)[1])
                    soap["update"] = len(calls) - soap["create"]
                    for net_id in made:
                        req = self.new_delete_request("networks", net_id,
                                                      as_admin=True)
                        times["delete"].append(self.request(req, 204)[1])
                    soap["delete"] = len(calls) - soap["create"] - \
                        soap["update"]
                results[(self.variant, self.round_no, kind)] = (
                    {op: statistics.median(ts) for op, ts in times.items()},
                    {op: n / args.count for op, n in soap.items()})

    variants = ("openvswitch", "openvswitch,vcenter")
    print(f"scenario api: network create/update/delete through Neutron's "
          f"ML2 plugin and API (in process, sqlite), {args.count} networks "
          f"per kind, variant and round, median per call; simulator "
          f"{args.delay_ms} ms per call; {machine()}")
    try:
        # Round -1 warms both variants up (imports, first plugin); not shown.
        for r in range(-1, args.rounds):
            for variant in (variants if r % 2 == 0 else variants[::-1]):
                ApiBench.variant, ApiBench.round_no = variant, r
                outcome = unittest.TestResult()
                ApiBench("test_api").run(outcome)
                for _, trace in outcome.errors + outcome.failures:
                    print(trace)
                    return 1
            if r < 0:
                continue
            for kind in ("vxlan", "vlan"):
                base, _ = results[(variants[0], r, kind)]
                ours, soap = results[(variants[1], r, kind)]
                print(f"round {r + 1} {kind:5}: " + "   ".join(
                    f"{op} {base[op] * 1000:5.1f} / {ours[op] * 1000:5.1f} "
                    f"ms ({ours[op] / base[op]:4.2f}x, {soap[op]:g} SOAP)"
                    for op in base))
        for kind in ("vxlan", "vlan"):
            line = []
            for op in ("create", "update", "delete"):
                ratios = [results[(variants[1], r, kind)][0][op] /
                          results[(variants[0], r, kind)][0][op]
                          for r in range(args.rounds)]
                line.append(f"{op} {statistics.median(ratios):.2f}x")
            print(f"median ratio {kind} (openvswitch,vcenter / openvswitch): "
                  + ", ".join(line))
    finally:
        sim.stop()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", choices=("bind", "fullpass", "api"),
                        default="bind")
    parser.add_argument("--count", type=int, default=None,
                        help="bind: port groups around (1000); fullpass: "
                        "networks (1000); api: networks per kind (20)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--binds", type=int, default=20,
                        help="bind: binds per variant and round")
    parser.add_argument("--delay-ms", type=int, default=2,
                        help="added to every vSphere call")
    parser.add_argument("--profile", type=int, default=0, metavar="LINES",
                        help="fullpass: cProfile one warm pass, print LINES")
    args = parser.parse_args()
    if args.count is None:
        args.count = 20 if args.scenario == "api" else 1000
    return {"bind": bind, "fullpass": fullpass, "api": api}[args.scenario](
        args)


if __name__ == "__main__":
    sys.exit(main())

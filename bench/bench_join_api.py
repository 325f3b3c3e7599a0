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

"""One VM joining a big default security group, through the real Neutron
API: server CPU, wall time and vCenter tasks until vSphere shows it.

Issue 15's budget, measured end to end (bench_join.py measures the driver
alone, with plain-data Neutron).  A simulator (``-delay``: 2 ms per SOAP
call) and an embedded Neutron server (tools/neutron_server.py: uWSGI API
and ``neutron-periodic-workers`` on sqlite) with ``shared_security_filter``
on.  Set up, untimed: one VLAN network, a /20 subnet and N member ports
created in bulk through the API (100 a request) and bound to
``vc-compute-1`` (``binding:host_id``, ``device_owner`` compute:nova, a
``device_id``: as Nova makes them), their addresses a random sample of the
/20 (holes between them), all in the project's default security group
(Neutron's default rules: egress anywhere, ingress from the group's own
members); then a bounded wait until vSphere holds all N.

Timed, each ``--rounds`` times (median and max printed):

* **join**: one port created and bound in the group (one POST with
  ``binding:host_id``), until the group's filter admits its address;
* **rule added** / **rule removed**: ingress tcp 443 from 0.0.0.0/0 added
  to the default group, until the filter has it; deleted, until gone;
* **groups changed**: one member moved from the default group to another
  (one ingress rule, tcp 8080 from 198.51.100.0/24), until no member
  admits it (with the shared filter: its MAC and address gone from the
  filter) and its DV port holds that rule (read by key);
* **member deleted**: one member port deleted, until its MAC and address
  are gone from the filter.

Per step:

* server CPU: user + system CPU time summed over every process of the
  server (``NeutronServer.pids()``: uWSGI master and worker, the periodic
  workers' master and workers), by psutil, from just before the API call
  to the moment the effect is seen, and to the moment the server is idle
  again (no vCenter task and under 5% of a core for 3 s: the work a step
  leaves behind, e.g. the maintenance worker's sync of the ports whose
  Neutron fingerprint the step changed, every 2 s a poll);
* wall time until vSphere shows the effect, read by this process with
  plain pyVmomi (its own session, none of the driver's code): with the
  shared filter, the port group's ``config.configVersion`` is polled and,
  once it moves, ``config.defaultPortConfig`` read and checked (the
  member's address admitted, its MAC-qualified anti-spoofing rule there,
  as tests/e2e/test_shared_filter_api.py ``carries()``); with per-port
  filters (``--compare``), the time the last vCenter task of the step
  completed (vCenter's own ``info.completeTime``), checked afterwards by
  reading every member's DV port (``FetchDVPorts``);
* vCenter tasks: every task the simulator created during the step, seen by
  a second session of this process watching ``taskManager.recentTask``
  with ``WaitForUpdatesEx`` (the simulator keeps the last 200: a step
  making more would be flagged); their names are printed.  The counter is
  checked at start on a known case (a folder renamed three times and
  destroyed: four tasks); every step's tasks are printed by name and
  state (a task that ended in error is shown as such).

``--compare``: the same at the same N with ``shared_security_filter =
False`` (a filter of its own on each member's DV port: the path until
issue 15), on a simulator and a server of its own.  Run it at N = 100
only: per-port filters at N = 1,000 rewrite 1,000 filters of ~900 rules
on each join (bench_join.py, bench_sg.py), ~30 min of set-up and steps.

    VCSIM_BUILD_DIR=... .venv/bin/python bench/bench_join_api.py \\
        [--members 1000] [--rounds 3] [--delay-ms 2] [--compare]

Not measured: Nova (no VM NIC is connected to any port, as in
bench_join.py), Keystone (``auth_strategy = noauth``), a real database
(sqlite, one API worker); the simulator finishes a task inside the call
that starts it, whatever the task does.
"""

from __future__ import annotations

import argparse
import bisect
import collections
import contextlib
import ipaddress
import json
import os
import random
import re
import shutil
import statistics
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid

import psutil
from bench_common import (  # noqa: E402 - puts the repository on sys.path
    DVS_NAME, PHYSNET, Vcsim, commit, find_named, machine)
from pyVmomi import vim  # noqa: E402
from pyVmomi import vmodl  # noqa: E402

import neutron_server  # noqa: E402 - tools/, on sys.path by bench_common
import vsphere_reader  # noqa: E402
from networking_vcenter.reconcile import portsettings  # noqa: E402

HOST = "vc-compute-1"
CLUSTER = "DC0_C0"
TO_VM, FROM_VM = portsettings.TO_VM, portsettings.FROM_VM
CIDR = "10.0.0.0/20"
VLAN = 100
BULK = 100
RECENT_TASKS = 200          # govmomi simulator: task_manager.go
ANY = ipaddress.ip_network("0.0.0.0/0")
PROBE = "192.0.2.1"         # an address outside the group: the 443 rule


# -- the Neutron API, plain HTTP ----------------------------------------------


class Api:
    """The Neutron API of an ``auth_strategy = noauth`` server."""

    _open = urllib.request.build_opener(
        urllib.request.ProxyHandler({})).open

    def __init__(self, url: str):
        self.url = url

    def call(self, method: str, path: str, body: dict | None = None,
             want: int = 200):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(
            self.url + path, data=data, method=method,
            headers={"Content-Type": "application/json",
                     "Accept": "application/json"})
        try:
            with self._open(req, timeout=600) as resp:
                status, text = resp.status, resp.read()
        except urllib.error.HTTPError as err:
            status, text = err.code, err.read()
        if status != want:
            raise RuntimeError(f"{method} {path}: HTTP {status}: "
                               f"{text[:2000]!r}")
        return json.loads(text) if text else None


# -- reading vSphere, plain pyVmomi -------------------------------------------


Rule = collections.namedtuple(
    "Rule", "direction action smac dmac src dst proto dports")


def _net(address):
    if address is None:
        return None
    if isinstance(address, vim.SingleIp):
        return ipaddress.ip_network(address.address)
    # The simulator leaves out a prefix length of 0.
    return ipaddress.ip_network(
        f"{address.addressPrefix}/{address.prefixLength or 0}", strict=False)


def rules_of(policy) -> list[Rule] | None:
    """A traffic filter policy's rules as tuples (addresses as networks);
    None: no filter."""
    held = vsphere_reader.ruleset_rules(policy)
    if held is None:
        return None
    out = []
    for r in held:
        macs, ip = {}, None
        for q in r.qualifier or []:
            if isinstance(q, vim.dvs.TrafficRule.MacQualifier):
                macs = {"src": getattr(q.sourceAddress, "address", None),
                        "dst": getattr(q.destinationAddress, "address",
                                       None)}
            elif isinstance(q, vim.dvs.TrafficRule.IpQualifier):
                ip = q
        out.append(Rule(
            r.direction, "accept" if isinstance(
                r.action, vim.dvs.TrafficRule.AcceptAction) else "drop",
            macs.get("src"), macs.get("dst"),
            _net(ip.sourceAddress) if ip else None,
            _net(ip.destinationAddress) if ip else None,
            ip.protocol.value if ip and ip.protocol else None,
            vsphere_reader.port_range(ip.destinationIpPort) if ip else None))
    return out


def admits(rules, ip: str, port: int | None = None) -> bool:
    """A to-the-VM accept from ``ip`` naming no MAC and no destination: to
    any port (a member's admission), or tcp to ``port`` (the 443 rule)."""
    addr = ipaddress.ip_address(ip)
    for r in rules or ():
        if r.direction != TO_VM or r.action != "accept" or r.smac or \
                r.dmac or r.dst is not None:
            continue
        if r.src is not None and (r.src.version != addr.version or
                                  addr not in r.src):
            continue
        if port is None and r.proto is None and r.dports is None:
            return True
        if port is not None and r.proto == 6 and r.dports == (port, port):
            return True
    return False


def carries(rules, ip: str, mac: str) -> bool:
    """The shared filter holds a member: its address admitted, and its
    MAC-qualified anti-spoofing rule from its address."""
    host = ipaddress.ip_network(ip)
    return admits(rules, ip) and any(
        r.direction == FROM_VM and r.action == "accept" and r.smac == mac
        and r.src == host for r in rules)


def mentions(rules, ip: str, mac: str) -> bool:
    """The filter names ``mac`` or admits ``ip`` as a member (any CIDR
    holding it but 0.0.0.0/0)."""
    addr = ipaddress.ip_address(ip)
    return any(mac in (r.smac, r.dmac) or (
        r.direction == TO_VM and r.action == "accept" and r.src is not None
        and r.src != ANY and r.src.version == addr.version and addr in r.src)
        for r in rules or ())


class Index:
    """One filter's member admissions (to-the-VM accepts of any protocol
    from a CIDR, naming no MAC and no destination) as merged integer
    ranges, and its (MAC, source) anti-spoofing pairs: a check of 1,000
    members against ~5,000 rules in milliseconds."""

    def __init__(self, rules):
        spans = sorted(
            (int(r.src.network_address), int(r.src.broadcast_address))
            for r in rules or () if r.direction == TO_VM and
            r.action == "accept" and not r.smac and not r.dmac and
            r.dst is None and r.proto is None and r.dports is None and
            r.src is not None and r.src.version == 4)
        merged: list[list[int]] = []
        for a, b in spans:
            if merged and a <= merged[-1][1] + 1:
                merged[-1][1] = max(merged[-1][1], b)
            else:
                merged.append([a, b])
        self.starts = [a for a, _ in merged]
        self.ends = [b for _, b in merged]
        self.anti = {(r.smac, r.src) for r in rules or ()
                     if r.direction == FROM_VM and r.action == "accept"
                     and r.smac}

    def admits(self, ip: str) -> bool:
        x = int(ipaddress.ip_address(ip))
        i = bisect.bisect_right(self.starts, x) - 1
        return i >= 0 and x <= self.ends[i]

    def carries(self, ip: str, mac: str) -> bool:
        return self.admits(ip) and \
            (mac, ipaddress.ip_network(ip)) in self.anti


class Reader:
    """This process's own session: port groups, DV ports, tasks."""

    def __init__(self, sim: Vcsim):
        self.si = sim.connect()
        self.content = self.si.RetrieveContent()
        self.pc = self.content.propertyCollector
        self.dvs = find_named(self.si, vim.DistributedVirtualSwitch,
                              DVS_NAME)
        self._pgs: dict[str, object] = {}

    def close(self) -> None:
        from pyVim.connect import Disconnect
        with contextlib.suppress(Exception):
            Disconnect(self.si)

    def props(self, objs: list, paths: list[str]) -> dict:
        """{moId: {path: value}} by one RetrievePropertiesEx."""
        pc = vmodl.query.PropertyCollector
        spec = pc.FilterSpec(
            objectSet=[pc.ObjectSpec(obj=o, skip=False) for o in objs],
            propSet=[pc.PropertySpec(type=type(objs[0]), pathSet=paths)])
        out: dict = {}
        res = self.pc.RetrievePropertiesEx([spec], pc.RetrieveOptions())
        while res is not None:
            for oc in res.objects or []:
                out[oc.obj._moId] = {p.name: p.val for p in oc.propSet or []}
            res = self.pc.ContinueRetrievePropertiesEx(res.token) \
                if res.token else None
        return out

    def pg(self, key: str):
        if key not in self._pgs:
            self._pgs[key] = next(p for p in self.dvs.portgroup
                                  if p.key == key)
        return self._pgs[key]

    def version(self, key: str) -> str:
        pg = self.pg(key)
        return self.props([pg], ["config.configVersion"])[pg._moId][
            "config.configVersion"]

    def num_ports(self, key: str) -> int:
        pg = self.pg(key)
        return self.props([pg], ["config.numPorts"])[pg._moId][
            "config.numPorts"]

    def shared_rules(self, key: str) -> list[Rule] | None:
        pg = self.pg(key)
        cfg = self.props([pg], ["config.defaultPortConfig"])[pg._moId][
            "config.defaultPortConfig"]
        return rules_of(cfg.filterPolicy)

    def own_rules(self, key: str) -> dict[str, list[Rule] | None]:
        """{DV port key: its own filter's rules} of the group's ports.
        Never with the shared filter: each port would come with the
        group's rules (~2.6 GB at 1,000 x 4,900, RESULTS.md)."""
        out = {}
        for p in self.dvs.FetchDVPorts(vim.dvs.PortCriteria(
                portgroupKey=[key], inside=True)):
            fp = p.config.setting.filterPolicy
            out[p.key] = None if fp is None or fp.inherited else \
                rules_of(fp)
        return out

    def port_rules(self, key: str) -> list[Rule] | None:
        """One DV port's own filter (None: inherited or none)."""
        (p,) = self.dvs.FetchDVPorts(vim.dvs.PortCriteria(portKey=[key]))
        fp = p.config.setting.filterPolicy
        return None if fp is None or fp.inherited else rules_of(fp)

    def tasks(self, values: list[str]) -> list[dict]:
        """Name, state and times of these tasks, in the order given."""
        if not values:
            return []
        refs = [vim.Task(v, self.si._stub) for v in values]
        got = self.props(refs, ["info.name", "info.descriptionId",
                                "info.state", "info.queueTime",
                                "info.completeTime"])
        return [dict(id=v, **{k.split(".")[1]: x for k, x in
                              got.get(v, {}).items()}) for v in values]


class TaskWatch:
    """Every task the simulator creates, seen through a session of its own
    watching ``taskManager.recentTask`` (WaitForUpdatesEx)."""

    def __init__(self, sim: Vcsim):
        self.si = sim.connect()
        content = self.si.RetrieveContent()
        pc = vmodl.query.PropertyCollector
        self.pc = content.propertyCollector
        self.filter = self.pc.CreateFilter(pc.FilterSpec(
            objectSet=[pc.ObjectSpec(obj=content.taskManager, skip=False)],
            propSet=[pc.PropertySpec(type=vim.TaskManager,
                                     pathSet=["recentTask"])]), True)
        self.seen: dict[str, float] = {}
        self.order: list[str] = []
        self.overflow = 0
        self.lock = threading.Lock()
        self.version = ""
        self._stop = threading.Event()
        self._poll()            # the tasks made before: not counted
        self.order.clear()
        self.thread = threading.Thread(target=self._run, daemon=True,
                                       name="bench-task-watch")
        self.thread.start()

    def _poll(self) -> None:
        upd = self.pc.WaitForUpdatesEx(
            self.version, vmodl.query.PropertyCollector.WaitOptions(
                maxWaitSeconds=1))
        if upd is None:
            return
        self.version = upd.version
        now = time.monotonic()
        for fs in upd.filterSet or []:
            for oc in fs.objectSet or []:
                for ch in oc.changeSet or []:
                    if ch.name != "recentTask":
                        continue
                    refs = [r._moId for r in ch.val or []]
                    with self.lock:
                        if len(refs) >= RECENT_TASKS and self.seen and \
                                refs[0] not in self.seen:
                            self.overflow += 1
                        for r in refs:
                            if r not in self.seen:
                                self.seen[r] = now
                                self.order.append(r)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._poll()
            except Exception as exc:  # noqa: BLE001 - the simulator stopped
                if not self._stop.is_set():
                    print(f"  task watch: {exc}", flush=True)
                return

    def mark(self) -> int:
        with self.lock:
            return len(self.order)

    def since(self, mark: int) -> list[str]:
        with self.lock:
            return self.order[mark:]

    def last_seen(self) -> float:
        with self.lock:
            return self.seen[self.order[-1]] if self.order else 0.0

    def close(self) -> None:
        self._stop.set()
        from pyVim.connect import Disconnect
        with contextlib.suppress(Exception):
            self.filter.Destroy()
        with contextlib.suppress(Exception):
            Disconnect(self.si)
        self.thread.join(timeout=5)


# -- the server's CPU ---------------------------------------------------------


class ServerCpu:
    """User + system CPU seconds of every process of the server."""

    def __init__(self, server: neutron_server.NeutronServer):
        self.server = server
        self.procs: dict[int, psutil.Process] = {}

    def sample(self) -> dict:
        out = {}
        for pid in self.server.pids():
            p = self.procs.get(pid)
            try:
                if p is None or not p.is_running():
                    p = self.procs[pid] = psutil.Process(pid)
                t = p.cpu_times()
                out[(pid, p.create_time())] = t.user + t.system
            except psutil.NoSuchProcess:
                continue
        return out

    @staticmethod
    def delta(before: dict, after: dict) -> float:
        """A process gone meanwhile loses its share (none expected)."""
        return sum(v - before.get(k, 0.0) for k, v in after.items())

    def by_service(self, before: dict, after: dict) -> dict[str, float]:
        """The delta per service: uwsgi (the API) and
        neutron-periodic-workers (the maintenance worker among them)."""
        names = {m.pid: p.name for p in self.server.procs
                 for m in p.members()}
        out: dict[str, float] = collections.defaultdict(float)
        for (pid, t0), v in after.items():
            out[names.get(pid, "?")] += v - before.get((pid, t0), 0.0)
        return dict(out)


# -- one variant --------------------------------------------------------------


class Step(collections.namedtuple(
        "Step", "cpu_seen cpu_idle wall tasks names api")):
    """CPU to the effect seen / to idle, wall to the effect, tasks."""


class Bench:
    def __init__(self, shared: bool, n: int, rounds: int, delay_ms: int,
                 keep_logs: bool):
        self.shared = shared
        self.variant = "shared" if shared else "per-port"
        self.n = n
        self.rounds = rounds
        self.delay_ms = delay_ms
        self.keep_logs = keep_logs
        self.sim = self.server = self.reader = self.tasks = None
        self.workdir = tempfile.mkdtemp(prefix="bench-join-api-")
        self.phases: list[tuple[str, float]] = []
        self.steps: dict[str, list[Step]] = collections.defaultdict(list)
        self.members: dict[str, dict] = {}      # port id: API port
        self.pg_key = None
        self.rules_count = 0

    def say(self, msg: str) -> None:
        print(f"  [{self.variant} N={self.n}] {msg}", flush=True)

    @contextlib.contextmanager
    def phase(self, name: str):
        t0 = time.perf_counter()
        yield
        took = time.perf_counter() - t0
        self.phases.append((name, took))
        self.say(f"{name}: {took:.1f} s")

    # -- set-up ----------------------------------------------------------

    def start(self) -> None:
        with self.phase("simulator started"):
            self.sim = Vcsim(extra_args=("-delay", str(self.delay_ms)))
            self.sim.start()
            self.reader = Reader(self.sim)
            self.tasks = TaskWatch(self.sim)
        with self.phase("task counter checked"):
            self.check_counter()
        with self.phase("Neutron server started"):
            self.server = neutron_server.NeutronServer(
                self.workdir, "embedded", vcenter_host=self.sim.host,
                vcenter_port=self.sim.port, vcenter_user=self.sim.username,
                vcenter_password=self.sim.password,
                switch_mappings=f"{PHYSNET}:{DVS_NAME}",
                compute_hosts=f"{HOST}:{CLUSTER}",
                port=neutron_server.free_port(), quiet=True,
                extra_ml2_opts={"shared_security_filter": self.shared,
                                "deployment_name": "bench-join-api"})
            self.server.start()
            self.api = Api(self.server.url)
            self.cpu = ServerCpu(self.server)

    def check_counter(self) -> None:
        """Four tasks of known names: a folder renamed three times, then
        destroyed; the watch must see exactly those."""
        dc = find_named(self.reader.si, vim.Datacenter, "DC0")
        folder = dc.vmFolder.CreateFolder("bench-task-probe")
        mark = self.tasks.mark()
        for i in range(3):
            vsphere_reader.Reader.wait(folder.Rename_Task(f"probe-{i}"))
        vsphere_reader.Reader.wait(folder.Destroy_Task())
        deadline = time.monotonic() + 10
        while len(self.tasks.since(mark)) < 4 and \
                time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
        names = [t["name"].removesuffix("_Task") for t in
                 self.reader.tasks(self.tasks.since(mark))]
        self.say(f"task counter: 4 known tasks made, seen {names}")
        if sorted(names) != ["Destroy"] + ["Rename"] * 3:
            raise SystemExit(f"task counter wrong: {names}")

    def setup(self) -> None:
        rnd = random.Random(15)
        net = ipaddress.ip_network(CIDR)
        # Neutron's pool: the gateway (.1) and the broadcast left out.
        pool = list(net.hosts())[1:]
        picked = rnd.sample(pool, self.n + 3 * self.rounds)
        self.addrs = sorted(picked[:self.n])
        self.spare = picked[self.n:]
        with self.phase("network and subnet created"):
            self.net = self.api.call("POST", "/v2.0/networks", {"network": {
                "name": "bench-join-api", "provider:network_type": "vlan",
                "provider:physical_network": PHYSNET,
                "provider:segmentation_id": VLAN}}, 201)["network"]
            # Neutron's default quota is 500 ports a project.
            self.api.call("PUT", f"/v2.0/quotas/{self.net['project_id']}",
                          {"quota": {"port": -1}})
            self.subnet = self.api.call("POST", "/v2.0/subnets", {"subnet": {
                "network_id": self.net["id"], "ip_version": 4,
                "cidr": CIDR, "name": "bench-join-api"}}, 201)["subnet"]
        took = []
        with self.phase(f"{self.n} ports created and bound ({BULK} a "
                        f"request)"):
            for i in range(0, self.n, BULK):
                body = {"ports": [self.port_body(ip, f"member-{i + j}")
                                  for j, ip in enumerate(
                                      self.addrs[i:i + BULK])]}
                t0 = time.perf_counter()
                got = self.api.call("POST", "/v2.0/ports", body, 201)
                took.append(time.perf_counter() - t0)
                for p in got["ports"]:
                    self.members[p["id"]] = p
        self.say("bulk requests: " + ", ".join(f"{t:.1f}" for t in took)
                 + " s")
        with self.phase("every member bound (bounded wait)"):
            self.wait_bound()
        first = next(iter(self.members.values()))
        self.sg = first["security_groups"][0]
        keys = {p["binding:vif_details"].get("pg_id")
                for p in self.members.values()}
        types = collections.Counter(p["binding:vif_type"]
                                    for p in self.members.values())
        if len(keys) != 1 or None in keys:
            raise SystemExit(f"members not bound to one port group: "
                             f"{keys} {types}")
        (self.pg_key,) = keys
        with self.phase("vSphere holds every member (bounded wait)"):
            ok = self.wait(self.all_members, 1800)
        if not ok:
            raise SystemExit("vSphere does not hold every member")
        with self.phase("server idle"):
            self.idle()
        self.rules_count = max(len(r or ()) for r in self.view())
        self.say(f"port group {self.pg_key}: "
                 f"{self.reader.num_ports(self.pg_key)} ports; "
                 f"{self.rules_count} rules per filter")

    def wait_bound(self, limit: float = 900, nudge: float = 240) -> None:
        """Until every member is bound (``binding:vif_type`` dvs): a bind
        that failed in a bulk create is tried again by the driver's
        maintenance worker; after ``nudge`` seconds, by the API too (its
        ``binding:host_id`` set again: ML2 binds a failed binding again
        on an update)."""
        t0 = time.monotonic()
        first, nudged = None, 0
        while True:
            got = self.api.call(
                "GET", f"/v2.0/ports?network_id={self.net['id']}")["ports"]
            for p in got:
                if p["id"] in self.members:
                    self.members[p["id"]] = p
            unbound = [p for p in self.members.values()
                       if p["binding:vif_type"] != "dvs"]
            if first is None:
                first = len(unbound)
            if not unbound:
                break
            took = time.monotonic() - t0
            if took > limit:
                raise SystemExit(f"{len(unbound)} members still unbound "
                                 f"after {limit:.0f} s")
            if took > nudge and not nudged:
                for p in unbound:
                    self.api.call("PUT", f"/v2.0/ports/{p['id']}", {
                        "port": {"binding:host_id": HOST}})
                nudged = len(unbound)
            time.sleep(2)
        self.say(f"{first} members not bound by the bulk create; all bound "
                 f"after {time.monotonic() - t0:.0f} s"
                 + (f" ({nudged} bound again through the API)"
                    if nudged else ""))

    def port_body(self, ip, name: str) -> dict:
        return {"network_id": self.net["id"], "name": name,
                "fixed_ips": [{"subnet_id": self.subnet["id"],
                               "ip_address": str(ip)}],
                "binding:host_id": HOST, "device_owner": "compute:nova",
                "device_id": str(uuid.uuid4())}

    # -- reading the effect ----------------------------------------------

    def view(self) -> list:
        """The filters the members apply, as read from vSphere: the
        shared one once, or each member's own."""
        if self.shared:
            return [self.reader.shared_rules(self.pg_key)]
        own = self.reader.own_rules(self.pg_key)
        return [own.get(p["binding:vif_details"]["dvs_port_key"])
                for p in self.members.values()]

    def all_members(self, view) -> bool:
        if self.shared:
            idx = Index(view[0])
            return all(idx.carries(ip_of(p), p["mac_address"])
                       for p in self.members.values())
        ips = [ip_of(p) for p in self.members.values()]
        for rules in view:
            idx = Index(rules)
            if not all(idx.admits(ip) for ip in ips):
                return False
        return True

    def wait(self, check, timeout: float) -> float | None:
        """Until ``check(view)``: the monotonic time it was first seen,
        None after ``timeout``.  Shared: the port group's configVersion
        polled, its filter read once it moved.  Per-port: once no task
        ran for 1 s, every member's DV port read (the wall time is then
        the last task's completion, vCenter's clock)."""
        end = time.monotonic() + timeout
        if self.shared:
            last = None
            while time.monotonic() < end:
                v = self.reader.version(self.pg_key)
                seen = time.monotonic()
                if v != last:
                    last = v
                    if check(self.view()):
                        return seen
                time.sleep(0.02)
            return None
        while time.monotonic() < end:
            self.quiet_tasks(end)
            if check(self.view()):
                return time.monotonic()
        return None

    def quiet_tasks(self, end: float, quiet: float = 1.0) -> None:
        while time.monotonic() < end:
            if time.monotonic() - self.tasks.last_seen() >= quiet:
                return
            time.sleep(0.1)

    def idle(self, limit: float = 600, window: float = 3.0) -> float:
        """Until the server has made no task and used under 5% of a core
        for ``window`` seconds (longer than the maintenance worker's poll
        of Neutron, every 2 s: worker.py ``POLL``, so that the work it
        starts on what a step changed is counted); the monotonic time it
        became so."""
        end = time.monotonic() + limit
        while time.monotonic() < end:
            mark, c0, t0 = self.tasks.mark(), self.cpu.sample(), \
                time.monotonic()
            time.sleep(window)
            used = self.cpu.delta(c0, self.cpu.sample())
            if self.tasks.mark() == mark and used < 0.05 * window:
                return t0
        self.say(f"server not idle after {limit:.0f} s")
        return time.monotonic()

    # -- the steps -------------------------------------------------------

    def measured(self, name: str, call, check, timeout: float = 600):
        """``call()`` (the API request), then until ``check(view,
        result)`` holds in vSphere; then until the server is idle."""
        self.idle()
        mark, c0 = self.tasks.mark(), self.cpu.sample()
        t0, w0 = time.monotonic(), time.time()
        result = call()
        api = time.monotonic() - t0
        seen = self.wait(lambda view: check(view, result), timeout)
        c_seen = self.cpu.sample()
        if seen is None:
            raise SystemExit(f"{name}: not seen in vSphere after "
                             f"{timeout:.0f} s")
        t_idle = self.idle()
        c_idle = self.cpu.sample()
        made = self.reader.tasks(self.tasks.since(mark))
        if self.shared:
            wall = seen - t0
        else:
            done = [t["completeTime"].timestamp() for t in made
                    if t.get("completeTime")]
            wall = (max(done) - w0) if done else seen - t0
        names = collections.Counter(
            t["name"] + ("" if t.get("state") == "success" else
                         f" ({t.get('state')})") for t in made)
        step = Step(self.cpu.delta(c0, c_seen), self.cpu.delta(c0, c_idle),
                    wall, len(made), dict(names), api)
        self.steps[name].append(step)
        split = ", ".join(f"{k} {v:.2f}" for k, v in
                          self.cpu.by_service(c0, c_idle).items())
        self.say(f"{name}: CPU {step.cpu_seen:.2f} s to seen, "
                 f"{step.cpu_idle:.2f} s to idle ({t_idle - t0:.1f} s; "
                 f"{split}); "
                 f"wall {wall:.2f} s (API call {api:.2f} s); "
                 f"tasks {len(made)} {dict(names)}")
        return result

    def run_steps(self) -> None:
        for i in range(self.rounds):
            body = {"port": self.port_body(self.spare[i], f"joiner-{i}")}
            new = self.measured(
                "join", lambda body=body: self.api.call(
                    "POST", "/v2.0/ports", body, 201)["port"],
                self.joined)
            if new["binding:vif_details"].get("pg_id") != self.pg_key:
                raise SystemExit(f"joiner bound elsewhere: "
                                 f"{new['binding:vif_details']}")
            self.members[new["id"]] = new
            if not self.all_members(self.view()):
                raise SystemExit("after a join, a member misses another")

        def https(view) -> bool:
            return [admits(r, PROBE, 443) for r in view]

        for _ in range(self.rounds):
            rule = self.measured(
                "rule added", lambda: self.api.call(
                    "POST", "/v2.0/security-group-rules",
                    {"security_group_rule": {
                        "security_group_id": self.sg,
                        "direction": "ingress", "ethertype": "IPv4",
                        "protocol": "tcp", "port_range_min": 443,
                        "port_range_max": 443,
                        "remote_ip_prefix": "0.0.0.0/0"}},
                    201)["security_group_rule"],
                lambda view, _: all(https(view)))
            self.measured(
                "rule removed", lambda: self.api.call(
                    "DELETE", f"/v2.0/security-group-rules/{rule['id']}",
                    None, 204),
                lambda view, _: not any(https(view)))

        # A member moved from the default group to another group: the
        # members no longer admit it (the shared filter no longer names
        # it), and its DV port holds its new group's rule.
        web = self.api.call("POST", "/v2.0/security-groups", {
            "security_group": {"name": "bench-web"}}, 201)["security_group"]
        self.api.call("POST", "/v2.0/security-group-rules", {
            "security_group_rule": {
                "security_group_id": web["id"], "direction": "ingress",
                "ethertype": "IPv4", "protocol": "tcp",
                "port_range_min": 8080, "port_range_max": 8080,
                "remote_ip_prefix": "198.51.100.0/24"}}, 201)
        for i in range(self.rounds):
            mover = self.members.pop(sorted(self.members)[-1 - i])
            ip, mac = ip_of(mover), mover["mac_address"]
            key = mover["binding:vif_details"]["dvs_port_key"]

            def moved(view, _, ip=ip, mac=mac, key=key) -> bool:
                if any(mentions(r, ip, mac) if self.shared else admits(r, ip)
                       for r in view):
                    return False
                return any(r.dports == (8080, 8080) and r.src ==
                           ipaddress.ip_network("198.51.100.0/24")
                           for r in self.reader.port_rules(key) or ())
            self.measured(
                "groups changed", lambda mover=mover: self.api.call(
                    "PUT", f"/v2.0/ports/{mover['id']}", {"port": {
                        "security_groups": [web["id"]]}}, 200),
                moved, timeout=60)

        for i in range(self.rounds):
            gone = self.members.pop(sorted(self.members)[i])
            ip, mac = ip_of(gone), gone["mac_address"]
            self.measured(
                "member deleted", lambda gone=gone: self.api.call(
                    "DELETE", f"/v2.0/ports/{gone['id']}", None, 204),
                lambda view, _, ip=ip, mac=mac: not any(
                    mentions(r, ip, mac) if self.shared else admits(r, ip)
                    for r in view),
                timeout=60)
            if not self.all_members(self.view()):
                raise SystemExit("after a delete, a member misses another")

    def joined(self, view, port: dict) -> bool:
        ip = ip_of(port)
        if self.shared:
            return Index(view[0]).carries(ip, port["mac_address"])
        return all(Index(r).admits(ip) for r in view)

    def log_errors(self) -> None:
        """The server's ERROR lines and the driver's WARNING lines, counted
        by message (ids, times and numbers blanked)."""
        line = re.compile(r"^\S+ \S+ \d+ (ERROR|CRITICAL|WARNING "
                          r"networking_vcenter)\S* (.*)$")
        blank = re.compile(r"\[[^]]*\]|[0-9a-f]{8}-[0-9a-f-]{27}|\d+")
        for path in (self.server.api_log, self.server.periodic_log):
            found: collections.Counter = collections.Counter()
            with contextlib.suppress(OSError), \
                    open(path, errors="replace") as f:
                for ln in f:
                    m = line.match(ln)
                    if m:
                        found[blank.sub("#", m.group(1) + " " +
                                        m.group(2))[:200]] += 1
            for msg, count in found.most_common(5):
                self.say(f"{os.path.basename(path)}: {count} x {msg}")

    def stop(self) -> None:
        if self.tasks is not None and self.tasks.overflow:
            self.say(f"WARNING: {self.tasks.overflow} task updates may "
                     f"have lost tasks (more than {RECENT_TASKS} at once)")
        if self.server is not None:
            with contextlib.suppress(Exception):
                self.log_errors()
            try:
                self.server.stop()
            except neutron_server.ServerError as exc:
                self.say(f"server stop: {exc}")
        if self.tasks is not None:
            self.tasks.close()
        if self.reader is not None:
            self.reader.close()
        if self.sim is not None:
            self.sim.stop()
        if self.keep_logs:
            self.say(f"logs kept in {self.workdir}/log")
        else:
            shutil.rmtree(self.workdir, ignore_errors=True)


def ip_of(port: dict) -> str:
    return port["fixed_ips"][0]["ip_address"]


def run(shared: bool, args) -> Bench:
    b = Bench(shared, args.members, args.rounds, args.delay_ms,
              args.keep_logs)
    try:
        b.start()
        b.setup()
        b.run_steps()
    finally:
        b.stop()
    return b


def rows(b: Bench) -> list[str]:
    out = []
    for name in ("join", "rule added", "rule removed", "groups changed",
                 "member deleted"):
        s = b.steps[name]
        med = statistics.median

        def cell(xs):
            return f"{med(xs):.2f} / {max(xs):.2f} s"
        failed = sum(n for x in s for k, n in x.names.items()
                     if k.endswith(")"))
        out.append(
            f"| {b.n:,} | {b.variant} | {b.rules_count:,} | {name} | "
            f"{cell([x.cpu_seen for x in s])} | "
            f"{cell([x.cpu_idle for x in s])} | "
            f"{cell([x.wall for x in s])} | "
            f"{', '.join(str(x.tasks) for x in s)}"
            f"{f' ({failed} failed)' if failed else ''} |")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--delay-ms", type=int, default=2)
    parser.add_argument("--compare", action="store_true",
                        help="also per-port filters at the same N (N = 100)")
    parser.add_argument("--keep-logs", action="store_true")
    args = parser.parse_args()
    print(f"bench_join_api: commit {commit()}, {machine()}; "
          f"{args.delay_ms} ms per vSphere call; N={args.members}, "
          f"{args.rounds} rounds", flush=True)
    benches = [run(True, args)]
    if args.compare:
        benches.append(run(False, args))
    for b in benches:
        print(f"\n{b.variant}, set-up: " + "; ".join(
            f"{name} {t:.1f} s" for name, t in b.phases))
        for name, steps in b.steps.items():
            print(f"{b.variant}, {name}: tasks per round "
                  f"{[s.tasks for s in steps]}, names "
                  f"{[s.names for s in steps]}, API call "
                  f"{[round(s.api, 2) for s in steps]} s")
    print(f"\n{args.rounds} rounds a step: median / max; tasks: each "
          f"round's.\n")
    print("| N | variant | rules per filter | step | server CPU to seen | "
          "server CPU to idle | wall to seen | vCenter tasks |")
    print("|---|---|---|---|---|---|---|---|")
    for b in benches:
        print("\n".join(rows(b)))


if __name__ == "__main__":
    main()

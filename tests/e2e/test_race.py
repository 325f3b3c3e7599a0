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

"""Two Neutron API servers of one deployment, as two server hosts would be:
two uWSGI masters of one worker each, each with its own configuration, log
and ``[oslo_concurrency] lock_path`` (so file locks cannot coordinate them),
on one MariaDB database and one RabbitMQ, with the driver's locks in tooz
over that database.  They race on the same 50 networks (each created on one
server and renamed on the other at once) and with the maintenance worker's
full passes (every second, no grace period): no port group lost, none duplicated, and
concurrent deletes spread over both servers leave none behind.  Of the two
maintenance workers only one looks after the vCenter (the holder of its
maintenance lock, as MariaDB itself says); killed with ``kill -9``, the other
takes over within seconds and repairs drift made meanwhile.

Then the same two servers, restarted with their locks in Redis and then in
etcd (private servers of ``tools/lock_backends.py``), run a shorter race:
MySQL's named locks are per database node (Galera does not replicate them),
so a deployment on Galera needs one of those.  The backend's own records
(Redis's slow log, etcd's history) must show the locks of the race's
networks and of the full passes, which no file or MySQL lock would leave
there; ``networking-vcenter check`` takes its test lock there, and names
the option when the backend is down, its password masked."""

from __future__ import annotations

import concurrent.futures
import json
import os
import shutil
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time

import psutil
import pytest

from networking_vcenter.reconcile import locks
from networking_vcenter.reconcile.reconciler import FULL_PASS_LOCK
from tests.e2e import conftest
from tests.fixtures.vcsim import Vcsim
from tests.fixtures.vsphere_reader import Reader

import lock_backends  # noqa: E402 - tools/, on sys.path by conftest

pytestmark = pytest.mark.e2e
CLI = os.path.join(os.path.dirname(sys.executable), "networking-vcenter")
# The race on Redis and on etcd: fewer networks than on MySQL (the same
# assertions; the servers' start and the full passes take the time).
SHORT_RACE = 10


@pytest.fixture(scope="module")
def sim():
    # A simulator of its own: this server's full passes own what they see.
    s = Vcsim(extra_args=("-extra-vswitch", "vSwitch1")).start()
    yield s
    s.stop()


# One deployment (the same name on both servers), locks in the shared
# database: "{tooz_db}" is the first server's, on both.
ML2_OPTS = {"deployment_name": "race", "resync_interval": "1",
            "resync_grace_period": "0", "coordination_backend_url": "{tooz_db}"}


@pytest.fixture(scope="module")
def lock_servers():
    """``get(kind)``: the module's Redis or etcd, started at the first call.
    The servers depend on this fixture, so they stop before these do."""
    workdir = tempfile.mkdtemp(prefix="lock-backends-")
    started: dict[str, lock_backends.LockBackend] = {}

    def get(kind: str) -> lock_backends.LockBackend:
        if kind not in started:
            started[kind] = lock_backends.start_backend(
                kind, os.path.join(workdir, kind))
        return started[kind]

    yield get
    problems = []
    for backend in started.values():
        try:
            backend.stop()
        except lock_backends.ServerError as exc:
            problems.append(str(exc))
    if not os.environ.get("E2E_KEEP_LOGS"):
        shutil.rmtree(workdir, ignore_errors=True)
    assert not problems, problems


@pytest.fixture(scope="module")
def servers(sim, lock_servers):
    first = conftest.start_server(
        sim, "real", conftest.neutron_server.free_port(), workers=1,
        extra_ml2_opts=ML2_OPTS)
    try:
        second = conftest.start_server(
            sim, "real", conftest.neutron_server.free_port(), workers=1,
            extra_ml2_opts=ML2_OPTS, backend_of=first)
    except BaseException:
        conftest.stop_server(first)
        raise
    try:
        yield first, second
    finally:
        # The second server first: it uses the first one's database.
        try:
            conftest.stop_server(second)
        finally:
            conftest.stop_server(first)


def managed(reader: Reader) -> dict[str, list[dict]]:
    """Our distributed port groups by name, and standard ones by name."""
    out: dict[str, list] = {}
    for pg in reader._all(__import__("pyVmomi").vim.dvs
                          .DistributedVirtualPortgroup):
        if "networking-vcenter" in (pg.config.description or ""):
            out.setdefault(pg.name, []).append(pg)
    return out


def test_servers_are_separate_on_shared_backends(servers):
    first, second = servers
    assert first.workdir != second.workdir
    assert first.url != second.url
    assert [s["name"] for s in second.services()] == [
        "uwsgi", "neutron-periodic-workers"]
    assert second.state["backend"]["workdir"] == first.workdir
    assert second.state["backend"]["mariadb"] == first.state["ports"]["mariadb"]
    assert second.state["backend"]["amqp"] == first.state["ports"]["amqp"]
    # The configuration holds the database password: only booleans and
    # counts go into the assertions, so that a failure cannot print it.
    shared = []
    for srv in servers:
        with open(srv.neutron_conf) as f:
            neutron_conf = f.read().splitlines()
        with open(srv.ml2_conf) as f:
            ml2_conf = f.read().splitlines()
        own_locks = f"lock_path = {srv.path('data', 'lock')}" in neutron_conf
        own_log = f"log_file = {srv.api_log}" in neutron_conf
        assert own_locks and own_log, f"{srv.workdir}: shared lock_path or log"
        shared.append(sorted(
            ln for ln in neutron_conf + ml2_conf
            if ln.startswith(("connection =", "transport_url =",
                              "coordination_backend_url =",
                              "deployment_name ="))))
    # The same database, queue, lock backend and deployment on both.
    same = shared[0] == shared[1]
    count = len(shared[0])
    tooz_in_db = any(ln.startswith("coordination_backend_url = mysql://")
                     for ln in shared[0])
    one_deployment = "deployment_name = race" in shared[0]
    assert count == 4
    assert same, "the servers differ in database, queue, locks or deployment"
    assert tooz_in_db, "the locks are not in tooz over the database"
    assert one_deployment, "the servers are not one deployment"


def test_racing_servers_keep_exactly_one_port_group_each(servers, sim):
    apis = [conftest.Api(srv.url) for srv in servers]
    reader = Reader(sim.connect())
    try:
        race(apis, reader)
    finally:
        reader.close()


def race(apis: list[conftest.Api], reader: Reader,
         count: int = 50) -> list[dict]:
    """``count`` networks raced on and deleted; they are returned."""
    made: list[dict] = []
    try:
        return _race(apis, reader, count, made)
    except BaseException:
        # Left for nobody: the tests after this one reuse the servers and
        # the VLAN range.
        for net in made:
            apis[0].http("DELETE", f"/v2.0/networks/{net['id']}")
        raise


def _race(apis, reader, count, made):
    def create(i):
        # Created on one server, renamed on the other at once: both
        # reconcile the same network concurrently.
        a, b = apis[i % 2], apis[(i + 1) % 2]
        code, body = a.http("POST", "/v2.0/networks", {"network": {
            "name": f"race-{i}", "provider:network_type": "vlan",
            "provider:physical_network": "physnet1" if i % 2 else "physnet2",
            "provider:segmentation_id": (100 if i % 2 else 200) + i}})
        assert code == 201, body
        net = body["network"]
        made.append(net)
        code, _ = b.http("PUT", f"/v2.0/networks/{net['id']}",
                         {"network": {"name": f"race-{i}-renamed"}})
        assert code == 200
        return net

    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        nets = list(pool.map(create, range(count)))
    time.sleep(3)          # several full passes by the maintenance holder
    dvs = [n for n in nets if n["provider:physical_network"] == "physnet1"]
    std = [n for n in nets if n["provider:physical_network"] == "physnet2"]
    pgs = managed(reader)
    assert sorted(pgs) == sorted(f"neutron-physnet1-{n['id']}" for n in dvs)
    assert all(len(v) == 1 for v in pgs.values())
    hosts = reader.hosts_of_cluster("DC0_C0") + \
        reader.hosts_of_cluster("DC0_C1")
    for n in std:
        assert reader.host_portgroups(n["id"]) == {
            h: ("vSwitch1", n["provider:segmentation_id"]) for h in hosts}
        assert len(reader.networks_named(n["id"])) == 1
    assert len(dvs) + len(std) == count

    # Each server deletes half of the networks (not those it created).
    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        codes = list(pool.map(lambda i: apis[(i + 1) % 2].http(
            "DELETE", f"/v2.0/networks/{nets[i]['id']}")[0],
            range(len(nets))))
    assert set(codes) == {204}
    time.sleep(2)
    assert managed(reader) == {}
    assert all(reader.host_portgroups(n["id"]) == {} for n in std)
    return nets


def files_holding(servers, secret: str) -> list[str]:
    """The log files of the servers that hold ``secret``."""
    found = []
    for srv in servers:
        for root, _, files in os.walk(srv.path("log")):
            for name in files:
                with open(os.path.join(root, name), encoding="utf-8",
                          errors="replace") as f:
                    if secret in f.read():
                        found.append(os.path.join(root, name))
    return found


def test_no_secret_in_any_log(servers):
    """After both servers ran the race above with debug logging on, no log
    of either (API, periodic workers, rpc server, uWSGI, set-up, MariaDB,
    RabbitMQ) holds the database password, which is also the password in
    the coordination backend's URL (tooz over MySQL): the driver masks it
    in every line it writes."""
    password = servers[0].state["db_password"]
    assert len(password) >= 16      # a token: no accidental match
    # The URL does reach the log, masked (so the search below means
    # something).
    with open(servers[0].api_log, encoding="utf-8", errors="replace") as f:
        assert "; locks: mysql://" in f.read()
    leaks = files_holding(servers, password)
    # Only file names go into the message: a failure must not print it.
    assert not leaks, f"the database password is in {leaks}"


# The vCenter's maintenance lock, as MySQL names it (one deployment, "race",
# at the simulator on 127.0.0.1).
MAINTENANCE_LOCK = "networking-vcenter-maintenance-race@127.0.0.1"
# "this process (HOST:PID) holds the lock ..." and the like: what each
# maintenance worker says of itself.
CLAIM = re.compile(r"this process \([^)]*:(\d+)\) (holds|lost|let go of) "
                   r"the lock " + re.escape(MAINTENANCE_LOCK[19:]) + r"\b")


def mysql_holder(servers) -> int | None:
    """The PID of the process whose connection holds the maintenance lock,
    from MariaDB itself: ``IS_USED_LOCK`` names the connection, the process
    list its client port, and the periodic workers' sockets the process.
    None: nobody's; 0: a connection of no live periodic worker (a dead
    one's, not dropped yet)."""
    import pymysql
    st = servers[0].state
    conn = pymysql.connect(host="127.0.0.1", port=st["mariadb"],
                           user="neutron", password=st["db_password"],
                           database="neutron", connect_timeout=5)
    try:
        cur = conn.cursor()
        cur.execute("SELECT IS_USED_LOCK(%s)", (MAINTENANCE_LOCK,))
        (conn_id,) = cur.fetchone()
        if conn_id is None:
            return None
        cur.execute("SELECT HOST FROM information_schema.PROCESSLIST "
                    "WHERE ID = %s", (conn_id,))
        row = cur.fetchone()
    finally:
        conn.close()
    if row is None:
        return None             # gone meanwhile
    port = int(row[0].rsplit(":", 1)[1])
    for srv in servers:
        for p in periodic(srv).members():
            try:
                if any(c.laddr.port == port and c.raddr and
                       c.raddr.port == st["mariadb"]
                       for c in p.net_connections("tcp")):
                    return p.pid
            except psutil.NoSuchProcess:
                pass
    return 0


def periodic(srv):
    return next(p for p in srv.procs if p.name == "neutron-periodic-workers")


class Claims:
    """Which live processes say they hold the maintenance lock, from the
    periodic workers' logs (read on from where they were)."""

    def __init__(self, servers):
        self.logs = {srv.periodic_log: 0 for srv in servers}
        self.held: dict[int, bool] = {}

    def now(self) -> set[int]:
        for log, offset in self.logs.items():
            with open(log, "rb") as f:
                f.seek(offset)
                data = f.read()
            # Whole lines only: the rest is read next time.
            data = data[:data.rfind(b"\n") + 1]
            self.logs[log] = offset + len(data)
            for m in CLAIM.finditer(data.decode(errors="replace")):
                self.held[int(m.group(1))] = m.group(2) == "holds"
        return {pid for pid, held in self.held.items()
                if held and psutil.pid_exists(pid) and
                conftest.neutron_server.is_alive(psutil.Process(pid))}


def agent_row(api) -> dict:
    code, body = api.http("GET", "/v2.0/agents?binary=networking-vcenter")
    assert code == 200, body
    (row,) = [a for a in body["agents"] if a["host"] == "race@127.0.0.1"]
    return row


def test_one_maintenance_holder_and_takeover_after_kill_9(servers, sim):
    """Issue 13 point 3, with the locks in MySQL: of the two servers'
    maintenance workers one holds the vCenter's maintenance lock (MariaDB
    says whose connection; the agent row names it) and only it does the
    maintenance --
    the other's log has no full pass although ``resync_interval`` is 1 s.
    Its periodic workers killed with SIGKILL (the master too, so that it is
    not restarted), the other server takes over within seconds (MySQL drops
    a dead connection's lock at once; the bound is ``agent_down_time``, 75 s)
    and repairs a port group deleted by hand meanwhile.  Sampled all along:
    never two live processes claiming the lock."""
    apis = [conftest.Api(srv.url) for srv in servers]
    claims = Claims(servers)
    samples, both = [0], []
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            claimed = claims.now()
            if len(claimed) > 1:
                both.append(claimed)
            samples[0] += 1
            stop.wait(0.1)
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    created = []
    try:
        took, repaired = takeover(servers, apis, claims, sim, created)
        # Sampled on for 3 s after the takeover: a second claim coming late
        # (the dead holder's, or a third one) would show there.  The
        # takeover itself may take well under a second.
        stop.wait(3)
    finally:
        stop.set()
        sampler.join()
        # Deleted whatever happened: the tests after this one reuse the
        # servers and the VLAN range.
        for net in created:
            apis[0].http("DELETE", f"/v2.0/networks/{net['id']}")
    print(f"\nmaintenance taken over {took:.1f}s after kill -9, drift "
          f"repaired after {repaired:.1f}s ({samples[0]} samples)")
    assert took < 75
    assert samples[0] > 20
    assert not both, f"two holders at once: {both}"


def takeover(servers, apis, claims, sim, created: list):
    """The test above without its sampler: (seconds until another process
    held the lock, seconds until the drift was repaired); the network it
    makes is appended to ``created``."""
    assert conftest.neutron_server.wait_for(
        lambda: mysql_holder(servers), 15), "no periodic worker holds it"
    holder = mysql_holder(servers)
    (dead,) = [i for i, srv in enumerate(servers)
               if holder in {p.pid for p in periodic(srv).members()}]
    alive = 1 - dead
    assert conftest.neutron_server.wait_for(
        lambda: claims.now() == {holder}, 10), claims.held
    assert conftest.neutron_server.wait_for(lambda: agent_row(
        apis[alive])["configurations"].get("maintenance_holder", "")
        .endswith(f":{holder}"), 30), agent_row(apis[alive])
    # Not repeated: the other server's worker never made a full pass.
    with open(servers[alive].periodic_log, encoding="utf-8",
              errors="replace") as f:
        assert "vcenter full pass:" not in f.read()

    # A network of the survivor's API, its port group made by the hook.
    code, body = apis[alive].http("POST", "/v2.0/networks", {"network": {
        "name": "holder-dies", "provider:network_type": "vlan",
        "provider:physical_network": "physnet1",
        "provider:segmentation_id": 390}})
    assert code == 201, body
    net = body["network"]
    created.append(net)
    name = f"neutron-physnet1-{net['id']}"
    reader = Reader(sim.connect())
    try:
        assert [pg["vlan"] for pg in reader.dv_portgroups(name)] == [390]
        workers = periodic(servers[dead])
        workers.signal(signal.SIGKILL, everyone=True)
        killed = time.monotonic()
        reader.destroy_dv_portgroup(name)
        assert conftest.neutron_server.wait_for(
            lambda: not workers.members(), 10)
        assert conftest.neutron_server.wait_for(
            lambda: mysql_holder(servers) not in (None, 0, holder), 75), \
            "no other holder within agent_down_time"
        took = time.monotonic() - killed
        new = mysql_holder(servers)
        assert new in {p.pid for p in periodic(servers[alive]).members()}
        assert conftest.neutron_server.wait_for(
            lambda: [pg["vlan"] for pg in reader.dv_portgroups(name)] ==
            [390], 30), "the port group deleted by hand was not rebuilt"
        repaired = time.monotonic() - killed
        assert conftest.neutron_server.wait_for(
            lambda: claims.now() == {new}, 10), claims.held
        row = agent_row(apis[alive])
        assert conftest.neutron_server.wait_for(lambda: agent_row(
            apis[alive])["configurations"]["maintenance_holder"]
            .endswith(f":{new}"), 30), row
        assert agent_row(apis[alive])["alive"]
    finally:
        reader.close()
    return took, repaired


def last_lock_line(log: str) -> str:
    """The backend named by the driver's last start line in ``log``."""
    with open(log, encoding="utf-8", errors="replace") as f:
        lines = [ln for ln in f if "vcenter driver ready:" in ln]
    return lines[-1].rsplit("; locks: ", 1)[-1].strip() if lines else ""


def config_of(server) -> list[str]:
    """The server's configuration files, in order."""
    return [server.neutron_conf, server.ml2_conf]


def copy_config(server, name: str) -> list[str]:
    """A copy of the server's configuration files, in its ``etc/NAME``."""
    copies = []
    for i, path in enumerate(config_of(server)):
        with open(path) as f:
            text = f.read()
        copies.append(server.path("etc", name, f"{i}-"
                                  f"{os.path.basename(path)}"))
        conftest.neutron_server._write_private(copies[-1], text)
    return copies


def check(config: list[str], extra: str = "") -> tuple[int, dict, str]:
    """``networking-vcenter check`` on these configuration files (and
    ``extra``, one more after them): its exit status, its checks by name,
    and everything it printed."""
    files = list(config)
    if extra:
        files.append(os.path.join(os.path.dirname(files[-1]),
                                  "check-extra.ini"))
        conftest.neutron_server._write_private(files[-1], extra)
    proc = subprocess.run([CLI, *(a for f in files
                                  for a in ("--config-file", f)),
                           "--format", "json", "check"],
                          capture_output=True, text=True, timeout=120)
    checks = {c["check"]: c for c in json.loads(proc.stdout)["checks"]} \
        if proc.stdout.strip() else {}
    return proc.returncode, checks, proc.stdout + proc.stderr


@pytest.mark.parametrize("kind", ["redis", "etcd"])
def test_race_with_the_locks_in(kind, servers, sim, lock_servers):
    backend = lock_servers(kind)
    shown = locks.mask_url(backend.url)
    opts = {**ML2_OPTS, "coordination_backend_url": backend.url}
    # The operator's check with the backend down (nothing listening on
    # its port) fails, naming the option, with the password masked.  It
    # waits seconds for an answer: it runs while the servers restart, on
    # a copy of their configuration as it is now (the restart rewrites it).
    down = backend.url.replace(f":{backend.client_port}",
                               f":{conftest.neutron_server.free_port()}")
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        down_run = pool.submit(
            check, copy_config(servers[1], f"check-{kind}-down"),
            f"[ml2_vcenter]\ncoordination_backend_url = {down}\n")
        # Both servers at once (each waits for its own processes).
        list(pool.map(lambda srv: srv.restart(opts), servers))
        # Every process that loads the driver started on the backend.
        for srv in servers:
            logs = [srv.api_log, srv.periodic_log]
            if srv.backend_of is None:
                logs.append(srv.path("log", "neutron-rpc-server.log"))
            assert {last_lock_line(log) for log in logs} == {shown}, \
                srv.workdir

        # The operator's check takes its test lock there, during the race.
        up_run = pool.submit(check, config_of(servers[0]))
        apis = [conftest.Api(srv.url) for srv in servers]
        reader = Reader(sim.connect())
        try:
            nets = race(apis, reader, count=SHORT_RACE)
        finally:
            reader.close()
        (code, checks, out), (down_code, down_checks, down_out) = \
            up_run.result(), down_run.result()

    # The backend's own records: the locks were taken there.
    taken = backend.lock_names()
    prefix = "networking-vcenter-"
    assert prefix + FULL_PASS_LOCK in taken
    missing = [n["id"] for n in nets
               if f"{prefix}network-{n['id']}" not in taken]
    assert not missing, f"networks not locked in {kind}: {missing}"

    # One maintenance worker of the two looks after the vCenter, its lock
    # in this backend as well.
    assert MAINTENANCE_LOCK in taken
    claimed = Claims(servers).now()
    assert len(claimed) == 1, claimed
    assert claimed <= {p.pid for srv in servers
                       for p in periodic(srv).members()}

    assert code == 0, out
    assert checks["coordination backend"] == {
        "check": "coordination backend", "result": "ok",
        "detail": f"{shown}: a test lock taken and released"}
    assert prefix + "check" in taken
    assert down_code == 2, down_out
    detail = down_checks["coordination backend"]["detail"]
    assert down_checks["coordination backend"]["result"] == "FAIL"
    assert "coordination_backend_url" in detail, detail
    assert locks.mask_url(down) in detail, detail

    secret = getattr(backend, "password", "")
    if secret:
        assert secret not in out + down_out, "the password is shown"
        # Only file names go into the message: a failure must not print it.
        leaks = files_holding(servers, secret)
        assert not leaks, f"the {kind} password is in {leaks}"

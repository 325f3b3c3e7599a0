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

"""Start and stop a real Neutron server on loopback with the ``vcenter`` driver.

For the end-to-end tests and ``make demo``; import it with ``tools/`` on
``sys.path`` and run it with the venv's Python (Neutron's commands are found
next to ``sys.executable``)::

    from neutron_server import NeutronServer, free_port
    srv = NeutronServer(workdir, vcenter_port=sim.port, port=free_port())
    srv.start()
    ... srv.url, srv.neutron_conf, srv.ml2_conf ...
    srv.stop()

    # A second server host on the first one's database and RabbitMQ:
    second = NeutronServer(workdir_b, "real", vcenter_port=sim.port,
                           port=free_port(), backend_of=first).start()
    second.stop()      # before first.stop()

    # Neutron's processes again, on other [ml2_vcenter] options (the
    # database and the message queue stay):
    srv.restart({"coordination_backend_url": "redis://:PW@127.0.0.1:6379"})

Modes:

embedded
    sqlite file ``DIR/data/neutron.sqlite``, ``transport_url = fake://``
    (oslo.messaging's in-process driver): the uWSGI API and
    ``neutron-periodic-workers``, two processes on the same sqlite file.
real
    a private MariaDB and a private RabbitMQ (every port on 127.0.0.1),
    ``neutron-db-manage upgrade heads``, ``neutron-rpc-server``, the uWSGI API
    and ``neutron-periodic-workers``.  With ``backend_of``: only the API and
    the periodic workers, on another real-mode server's MariaDB and RabbitMQ.

Why ``neutron-periodic-workers``: in Neutron 29 the API under uWSGI
(``neutron.wsgi.api``) starts no plugin workers, and ``neutron-rpc-server``
starts only the RPC workers (``service.start_rpc_workers``).  The workers that
plugins and mechanism drivers return from ``get_workers()`` run in the
``neutron-periodic-workers`` command (``neutron.cmd.server:main_periodic`` ->
``service.start_periodic_workers``): one master, one process per worker with
``worker_process_count`` > 0, and one "services worker" process for all
those with 0.

Every process is started in its own session, recorded with psutil (which
tells a reused PID from ours by its start time) and stopped by PID: SIGTERM,
then SIGKILL for whatever of it (its children included) is left after a grace
period.  Nothing listens on anything but 127.0.0.1.  Messages never contain
the vCenter or database password.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import contextlib
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import psutil

from networking_vcenter import conf
from networking_vcenter import exceptions
from networking_vcenter.reconcile import locks

MODES = ("embedded", "real")
TOOLS = os.path.dirname(os.path.abspath(__file__))
# Stopped in this order (the reverse of their start).
STOP_ORDER = ("uwsgi", "neutron-periodic-workers", "neutron-rpc-server",
              "rabbitmq", "epmd", "mariadb")
# Neutron's own processes: each loads the ML2 plugin, so the driver, and
# reads the configuration once, at its start (restart() starts them again).
NEUTRON_PROCS = STOP_ORDER[:3]
# Seconds each has to stop gracefully in restart() before SIGKILL.
RESTART_GRACE = 2.0

DEFAULT_SWITCH_MAPPINGS = "physnet1:DVS0,physnet2:vSwitch1"
DEFAULT_COMPUTE_HOSTS = "vc-compute-1:DC0_C0"
EXTRA_PHYSNET = "physnet3"

MARIADBD = "/usr/sbin/mariadbd"
RABBITMQ_SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"
# oslo.log: "2026-11-25 14:30:09.463 12483 ERROR name [...] message".
LOG_LEVEL_RE = re.compile(
    r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+ \d+ (CRITICAL|ERROR) ")
# Unix socket paths are limited to 108 bytes (sun_path).
MAX_SOCKET_PATH = 100

# Embedded mode's schema (run in the venv's Python, with the database URL):
# built from Neutron's models, since its migrations fail on sqlite. The one
# migration that seeds rows into an empty database is Neutron's
# 2023.2/expand/c33da356b165_security_group_default_rules.py: the templates of
# the rules every new security group gets (egress IPv4 and IPv6 to anywhere in
# every group; ingress IPv4 and IPv6 from the group itself in a project's
# `default` group). Without them a new group has no rule at all. Its own
# `default_template_rules` are inserted as its upgrade() inserts them (its
# upgrade() itself does nothing once the table exists).
SQLITE_SCHEMA = """\
import glob, importlib.util, os, sys
import sqlalchemy as sa
import neutron.db.migration
from neutron.db.migration.models import head

engine = sa.create_engine(sys.argv[1])
metadata = head.get_metadata()
metadata.create_all(engine)

(path,) = glob.glob(os.path.join(
    os.path.dirname(neutron.db.migration.__file__), "alembic_migrations",
    "versions", "*", "*", "c33da356b165_*.py"))
spec = importlib.util.spec_from_file_location("c33da356b165", path)
migration = importlib.util.module_from_spec(spec)
spec.loader.exec_module(migration)
templates = metadata.tables[migration.table_name]
with engine.begin() as conn:
    for rule in migration.default_template_rules:
        rule = dict(rule)
        res = conn.execute(sa.insert(migration.standardattr).values(
            {"description": rule.pop("description"),
             "resource_type": migration.table_name}))
        rule["standard_attr_id"] = res.inserted_primary_key[0]
        conn.execute(sa.insert(templates).values(rule))
print(f"seeded {len(migration.default_template_rules)} security group "
      f"default rule templates (migration {migration.revision})")
"""


# An embedded server's fresh database as the first one of this process got
# it (built, seeded and stamped; see _init_sqlite), copied for the next ones.
_sqlite_template: str | None = None


class ServerError(RuntimeError):
    """Start or stop failed; the message is safe to print (no passwords)."""


# -- helpers ---------------------------------------------------------------------


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def listeners(port: int) -> set[int]:
    """PIDs of the processes listening on TCP ``port``."""
    return {c.pid for c in psutil.net_connections("tcp")
            if c.status == psutil.CONN_LISTEN and c.laddr and
            c.laddr.port == port and c.pid is not None}


# Loopback checks never go through a proxy of the caller's environment.
_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http_status(url: str, timeout: float = 5) -> int:
    """Status of GET url (HTTP errors included); OSError when no answer."""
    req = urllib.request.Request(url, headers={"Accept": "application/json"})
    try:
        with _HTTP.open(req, timeout=timeout) as r:
            r.read()
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code


def wait_for(predicate, timeout: float, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
    return True


def read_from(path: str, offset: int = 0) -> str:
    """What a log holds from byte offset on (its last 4 MiB at most)."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(offset, size - (4 << 20), 0))
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def report(text: str, lines: int = 15) -> str:
    """The ERROR/CRITICAL lines of oslo.log text, else its last lines."""
    errors = [ln[:1000] for ln in text.splitlines() if LOG_LEVEL_RE.match(ln)
              and "Traceback" not in ln]
    return "\n".join(errors[-8:] or text.splitlines()[-lines:])


def _write_private(path: str, text: str) -> None:
    """Mode 0600: configuration files hold passwords."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def _ini(sections: dict[str, dict[str, object]]) -> str:
    out = []
    for section, opts in sections.items():
        out.append(f"[{section}]")
        for k, v in opts.items():
            v = ("true" if v else "false") if isinstance(v, bool) else str(v)
            if "\n" in v or "\r" in v:
                raise ServerError(f"[{section}] {k}: a value cannot span "
                                  f"lines")
            # oslo.config substitutes $name: "$$" is a literal "$".
            out.append(f"{k} = {v.replace('$', '$$')}")
        out.append("")
    return "\n".join(out)


def vlan_ranges(physnets: list[str]) -> str:
    """physnet1:100:199,physnet2:200:299,... plus one unmapped physnet."""
    items = [p if i * 100 + 99 > 4094 else f"{p}:{i * 100}:{i * 100 + 99}"
             for i, p in enumerate(physnets, start=1)]
    n, extra = 3, EXTRA_PHYSNET
    while extra in physnets:
        n += 1
        extra = f"physnet{n}"
    return ",".join(items + [extra])


def _physnets(switch_mappings: str) -> list[str]:
    """The physical networks of ``switch_mappings``, parsed as the driver
    parses the option."""
    try:
        return list(conf.parse_pairs("switch_mappings",
                                     switch_mappings.split(",")))
    except exceptions.ConfigError as exc:
        raise ServerError(str(exc)) from None


def find_api_paste() -> str:
    """The api-paste.ini that the installed Neutron release ships."""
    from importlib import metadata
    dist = metadata.distribution("neutron")
    for f in dist.files or ():
        path = str(f).replace("\\", "/")
        if path.endswith("etc/neutron/api-paste.ini") and "tests" not in path:
            return os.path.realpath(str(dist.locate_file(f)))
    for c in (os.path.join(sys.prefix, "etc", "neutron", "api-paste.ini"),
              "/etc/neutron/api-paste.ini"):
        if os.path.isfile(c):
            return c
    raise ServerError("cannot find Neutron's etc/neutron/api-paste.ini")


# -- processes -------------------------------------------------------------------


def is_alive(p: psutil.Process) -> bool:
    """Still our process (psutil compares the start time, so a reused PID is
    not ours) and not a zombie waiting to be reaped."""
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


class Proc:
    """One process we started (or, for epmd, found by its private port),
    with everything it started in turn."""

    def __init__(self, name: str, pid: int, popen: subprocess.Popen | None,
                 log: str | None = None):
        self.name = name
        self.pid = pid
        self.popen = popen
        self.log = log
        self.leader = psutil.Process(pid)
        # Descendants seen so far: those re-parented to init when their
        # parent dies are still found (and checked) through this.
        self.seen: dict[int, psutil.Process] = {}

    def running(self) -> bool:
        if self.popen is not None and self.popen.poll() is not None:
            return False
        return is_alive(self.leader)

    def members(self) -> list[psutil.Process]:
        """The live processes of this service: the leader, its descendants
        now, and those seen before."""
        found = {}
        if is_alive(self.leader):
            found[self.pid] = self.leader
            try:
                for child in self.leader.children(recursive=True):
                    found[child.pid] = child
            except psutil.NoSuchProcess:
                pass
        for pid, p in self.seen.items():
            found.setdefault(pid, p)
        self.seen.update(found)
        if self.popen is not None:
            self.popen.poll()       # reap the leader once it exits
        return [p for p in found.values() if is_alive(p)]

    def signal(self, sig: int, everyone: bool = False) -> None:
        targets = self.members() if everyone or not is_alive(self.leader) \
            else [self.leader]
        for p in targets:
            try:
                p.send_signal(sig)
            except psutil.NoSuchProcess:
                pass

    def stop(self, grace: float, everyone: bool = False) -> None:
        """SIGTERM (the leader, or every member), then SIGKILL whatever is
        left after ``grace`` seconds."""
        if not self.members():
            return
        self.signal(signal.SIGTERM, everyone)
        if wait_for(lambda: not self.members(), grace):
            return
        self.signal(signal.SIGKILL, everyone=True)
        if not wait_for(lambda: not self.members(), 10):
            raise ServerError(f"{self.name}: processes "
                              f"{[p.pid for p in self.members()]} survive "
                              f"SIGKILL")


def spawn(name: str, cmd: list[str], out: str, *, cwd: str,
          env: dict | None = None, log: str | None = None) -> Proc:
    """Start ``cmd`` in a session of its own, its output appended to
    ``out`` (``log``: where it writes its own log, if elsewhere)."""
    with open(out, "ab") as f:
        f.write(f"--- {time.strftime('%F %T')}: {' '.join(cmd)}\n".encode())
        f.flush()
        try:
            popen = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=f, stderr=f, env=env,
                cwd=cwd, close_fds=True, start_new_session=True)
        except OSError as exc:
            raise ServerError(f"cannot run {cmd[0]}: {exc}") from None
    return Proc(name, popen.pid, popen, log or out)


# -- the server ------------------------------------------------------------------


class NeutronServer:
    """The Neutron API and periodic workers (plus, in real mode, MariaDB,
    RabbitMQ and neutron-rpc-server), everything under ``workdir``:
    ``etc/`` configuration, ``log/`` logs, ``data/`` databases, ``run/``
    sockets.

    ``backend_of``: a running real-mode server whose database and message
    queue this one uses; its ``stop()`` never touches them.
    """

    def __init__(self, workdir: str, mode: str = "embedded", *,
                 vcenter_host: str = "127.0.0.1", vcenter_port: int = 443,
                 vcenter_user: str = "user", vcenter_password: str = "pass",
                 switch_mappings: str = DEFAULT_SWITCH_MAPPINGS,
                 compute_hosts: str = DEFAULT_COMPUTE_HOSTS,
                 port: int = 0, workers: int = 1,
                 extra_ml2_opts: dict[str, object] | None = None,
                 vcenter_sections: dict[str, dict[str, object]] | None = None,
                 neutron_opts: dict[str, object] | None = None,
                 timeout: float = 120.0, stop_grace: float = 10.0,
                 quiet: bool = False,
                 backend_of: NeutronServer | None = None):
        if mode not in MODES:
            raise ServerError(f"mode must be one of {', '.join(MODES)}")
        if backend_of is not None and mode != "real":
            raise ServerError("a server on another server's backends is a "
                              "real-mode server: use mode 'real'")
        if mode == "embedded" and workers != 1:
            raise ServerError("embedded mode uses sqlite: keep workers = 1")
        self.workdir = os.path.abspath(workdir)
        self.mode = mode
        self.vcenter = {"host_ip": vcenter_host, "host_port": int(vcenter_port),
                        "host_username": vcenter_user,
                        "host_password": vcenter_password}
        self.switch_mappings = switch_mappings
        self.compute_hosts = compute_hosts
        self.port = int(port)
        self.workers = int(workers)
        self.timeout = timeout
        self.stop_grace = stop_grace
        self.quiet = quiet
        self.backend_of = backend_of
        self.venv_bin = os.path.dirname(sys.executable)
        self._secrets = {vcenter_password} if vcenter_password else set()
        self._set_ml2_opts(extra_ml2_opts or {})
        # Several vCenters: name -> the options of [ml2_vcenter:<name>]
        # (with extra_ml2_opts' "vcenters" naming them).
        self.vcenter_sections = {name: dict(opts) for name, opts in
                                 (vcenter_sections or {}).items()}
        # More of neutron.conf's [DEFAULT] (e.g. agent_down_time).
        self.neutron_opts = dict(neutron_opts or {})
        for opts in self.vcenter_sections.values():
            if opts.get("host_password"):
                self._secrets.add(str(opts["host_password"]))
        self.procs: list[Proc] = []
        self._offsets: dict[str, int] = {}
        self.state: dict = {}

    def _set_ml2_opts(self, opts: dict[str, object]) -> None:
        for k in opts:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", k):
                raise ServerError(f"invalid [ml2_vcenter] option {k!r}")
        self.extra_ml2_opts = dict(opts)
        # A lock backend's URL may hold a password (redis://:PW@host:port).
        self._secrets.update(locks.url_secrets(str(opts.get(
            "coordination_backend_url", ""))))

    # -- paths ------------------------------------------------------------

    def path(self, *parts: str) -> str:
        return os.path.join(self.workdir, *parts)

    @property
    def neutron_conf(self) -> str:
        return self.path("etc", "neutron.conf")

    @property
    def ml2_conf(self) -> str:
        return self.path("etc", "plugins", "ml2", "ml2_conf.ini")

    @property
    def api_log(self) -> str:
        return self.path("log", "neutron-api.log")

    @property
    def periodic_log(self) -> str:
        return self.path("log", "neutron-periodic-workers.log")

    @property
    def url(self) -> str | None:
        return self.state.get("url")

    # -- output -----------------------------------------------------------

    def redact(self, text: str) -> str:
        """Hide the passwords (as whole words: the simulator's is "pass")."""
        for s in sorted(self._secrets, key=len, reverse=True):
            text = re.sub(r"(?<![A-Za-z0-9])%s(?![A-Za-z0-9])" % re.escape(s),
                          "***", text)
        return text

    def _say(self, msg: str) -> None:
        if not self.quiet:
            print(self.redact(msg), file=sys.stderr, flush=True)

    def _since(self, path: str) -> str:
        """What this run wrote to a log (logs are appended across runs)."""
        return read_from(path, self._offsets.get(path, 0))

    def _log_report(self, *paths: str) -> str:
        return self.redact("\n".join(
            f"--- {p} ---\n{report(self._since(p))}" for p in paths))

    # -- processes --------------------------------------------------------

    def services(self) -> list[dict]:
        """The processes started, in start order: name and PID."""
        return [{"name": p.name, "pid": p.pid} for p in self.procs]

    def pids(self) -> list[int]:
        """Every live PID of every service (children included)."""
        return sorted(m.pid for p in self.procs for m in p.members())

    def _spawn(self, name: str, cmd: list[str], env: dict | None = None,
               log: str | None = None) -> Proc:
        proc = spawn(name, cmd, self.path("log", name + ".out"),
                     cwd=self.workdir, env=env, log=log)
        self.procs.append(proc)
        return proc

    def _run(self, what: str, cmd: list[str], env: dict | None = None,
             input: str | None = None, timeout: float = 120) -> None:
        """Run a short command to completion; ServerError on failure."""
        t0 = time.monotonic()
        try:
            res = subprocess.run(cmd, input=input, env=env, cwd=self.workdir,
                                 stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True,
                                 timeout=timeout)
            output, rc = res.stdout, res.returncode
        except subprocess.TimeoutExpired as exc:
            output, rc = exc.output or "", None
            if isinstance(output, bytes):
                output = output.decode(errors="replace")
        with open(self.path("log", "setup.log"), "a") as f:
            f.write(f"--- {what}: {' '.join(cmd)} (exit {rc}, "
                    f"{time.monotonic() - t0:.1f}s)\n"
                    f"{self.redact(output)}\n")
        if rc != 0:
            why = f"timed out after {timeout}s" if rc is None \
                else f"failed (exit {rc})"
            raise ServerError(self.redact(
                f"{what} {why}:\n" + "\n".join(output.splitlines()[-30:])))

    def _neutron_env(self) -> dict:
        env = dict(os.environ)
        env["OS_NEUTRON_CONFIG_DIR"] = self.path("etc")
        env["OS_NEUTRON_CONFIG_FILES"] = "neutron.conf;plugins/ml2/ml2_conf.ini"
        # A proxy from the caller's environment must not catch loopback calls.
        env["no_proxy"] = env["NO_PROXY"] = "127.0.0.1,localhost"
        if self.mode == "embedded":     # for embedded_sqlite
            env["PYTHONPATH"] = os.pathsep.join(
                p for p in (TOOLS, env.get("PYTHONPATH")) if p)
        return env

    def _periodic_cmd(self) -> list[str]:
        cmd = self._neutron_cmd("neutron-periodic-workers",
                                "--log-file", self.periodic_log)
        if self.mode != "embedded":
            return cmd
        # The console script's own two lines, after the sqlite retry filter.
        return [sys.executable, "-c",
                "import sys, embedded_sqlite; "
                "from neutron.cmd.server import main_periodic; "
                "sys.argv[0] = 'neutron-periodic-workers'; "
                "sys.exit(main_periodic())", *cmd[1:]]

    def _neutron_cmd(self, command: str, *args: str) -> list[str]:
        return [os.path.join(self.venv_bin, command),
                "--config-file", self.neutron_conf,
                "--config-file", self.ml2_conf, *args]

    # -- configuration ----------------------------------------------------

    def write_config(self) -> None:
        physnets = _physnets(self.switch_mappings)
        if self.mode == "embedded":
            connection = "sqlite:///" + self.path("data", "neutron.sqlite")
            transport = "fake://"
            tooz_db = ""
        else:
            db, amqp = self.state["mariadb"], self.state["amqp"]
            pw = self.state["db_password"]
            connection = (f"mysql+pymysql://neutron:{pw}@127.0.0.1:{db}/"
                          f"neutron?charset=utf8")
            transport = f"rabbit://guest:guest@127.0.0.1:{amqp}/"
            tooz_db = f"mysql://neutron:{pw}@127.0.0.1:{db}/neutron"
        neutron = {
            "DEFAULT": {
                "debug": True,
                "log_file": self.api_log,
                "use_stderr": False,
                "state_path": self.path("data"),
                "core_plugin": "ml2",
                # Neutron adds its default service plugins to these
                # (neutron/plugins/common/constants.py DEFAULT_SERVICE_PLUGINS:
                # revisions, timestamp, tag, ...), as in any real server: the
                # revision numbers the driver's port fingerprints read.
                # qos: QoS policies and rules (the driver's 'vcenter' QoS
                # driver shapes DV ports); trunk: its 'vcenter' trunk driver.
                "service_plugins": "router,segments,qos,trunk",
                "auth_strategy": "noauth",
                "api_paste_config": find_api_paste(),
                "transport_url": transport,
                "notify_nova_on_port_status_changes": False,
                "notify_nova_on_port_data_changes": False,
                # neutron-rpc-server (real mode): one worker of each kind.
                "rpc_workers": 1,
                "rpc_state_report_workers": 1,
                **self.neutron_opts,
            },
            "database": {"connection": connection},
            "oslo_concurrency": {"lock_path": self.path("data", "lock")},
        }
        # The simulator's certificate is self-signed.
        vcenter = {**self.vcenter, "insecure": True,
                   "switch_mappings": self.switch_mappings,
                   "compute_hosts": self.compute_hosts,
                   "resync_interval": 0,
                   # A lost replica is read again at once (the spread,
                   # 0-10 s by default, has a test of its own).
                   "reread_spread": 0}
        # "{tooz_db}" in a value: a tooz URL for this server's database (the
        # first server's with backend_of), for the driver's locks.
        vcenter.update({k: str(v).replace("{tooz_db}", tooz_db)
                        for k, v in self.extra_ml2_opts.items()})
        ml2 = {
            "ml2": {
                "type_drivers": "vlan,flat,vxlan",
                "tenant_network_types": "vxlan",
                "mechanism_drivers": "openvswitch,vcenter",
                "extension_drivers": "port_security,qos",
            },
            "ml2_type_vlan": {"network_vlan_ranges": vlan_ranges(physnets)},
            "ml2_type_flat": {"flat_networks": "*"},
            "ml2_type_vxlan": {"vni_ranges": "1:1000"},
            "ml2_vcenter": vcenter,
            **{f"ml2_vcenter:{name}": opts
               for name, opts in self.vcenter_sections.items()},
        }
        _write_private(self.neutron_conf, _ini(neutron))
        _write_private(self.ml2_conf, _ini(ml2))
        os.makedirs(self.path("data", "lock"), exist_ok=True)

    # -- start ------------------------------------------------------------

    def start(self) -> NeutronServer:
        """Bring everything up; on failure stop what was started and raise."""
        t0 = time.monotonic()
        if self.procs:
            raise ServerError(f"{self.workdir}: already started")
        if not os.path.exists(os.path.join(self.venv_bin, "uwsgi")):
            raise ServerError(f"no uwsgi next to {sys.executable}: run this "
                              f"with the venv's python")
        api_port = self.port or free_port()
        if port_open(api_port):
            raise ServerError(f"port 127.0.0.1:{api_port} is already in use")
        for d in ("etc", "log", "data", "run"):
            os.makedirs(self.path(d), exist_ok=True)
        self._mark_logs()
        self.state = {"mode": self.mode, "url": f"http://127.0.0.1:{api_port}",
                      "ports": {"api": api_port}}
        atexit.register(self.stop)
        with self._stop_on_failure("start"):
            if self.backend_of is not None:
                self._use_backends_of(self.backend_of)
                self.write_config()
            elif self.mode == "real":
                self._start_real_backends()
            else:
                self.write_config()
                self._init_sqlite()
            self._start_neutron()
        self._say(f"neutron ({self.mode}) ready at {self.url} in "
                  f"{time.monotonic() - t0:.1f}s; logs in {self.path('log')}")
        return self

    def restart(self, extra_ml2_opts: dict[str, object] | None = None
                ) -> NeutronServer:
        """Stop Neutron's own processes (:data:`NEUTRON_PROCS`), write the
        configuration again (with ``extra_ml2_opts`` instead of the
        [ml2_vcenter] options given so far) and start them again; MariaDB
        and RabbitMQ stay up, with the database as it is.

        Why: the same servers on another setting (tests/e2e/test_race.py:
        another lock backend) in the seconds a start of Neutron takes,
        rather than the half minute of a new database and its migrations.
        """
        t0 = time.monotonic()
        neutron = [p for p in self.procs if p.name in NEUTRON_PROCS]
        if not neutron:
            raise ServerError(f"{self.workdir}: not started")
        if extra_ml2_opts is not None:
            self._set_ml2_opts(extra_ml2_opts)
        for p in neutron:           # remember every tree before it changes
            p.members()

        def stop(p: Proc) -> str:
            t1 = time.monotonic()
            p.stop(min(self.stop_grace, RESTART_GRACE))
            return f"{p.name} {time.monotonic() - t1:.1f}s"

        # All at once, with a short grace: the caller sends nothing to the
        # API meanwhile, so there is no order to keep and nothing in flight
        # worth waiting seconds for (each takes 2-8 s to stop gracefully).
        problems, timings = [], []
        with concurrent.futures.ThreadPoolExecutor(len(neutron)) as pool:
            for future in [pool.submit(stop, p) for p in neutron]:
                try:
                    timings.append(future.result())
                except ServerError as exc:
                    problems.append(str(exc))
        if problems:
            raise ServerError(self.redact("; ".join(problems)))
        self.procs = [p for p in self.procs if p not in neutron]
        stopped = time.monotonic() - t0
        self._mark_logs()
        with self._stop_on_failure("restart"):
            self.write_config()
            if any(p.name == "neutron-rpc-server" for p in neutron):
                self._spawn_rpc_server()
            self._start_neutron()
        self._say(f"neutron ({self.mode}) restarted at {self.url} in "
                  f"{time.monotonic() - t0:.1f}s (stopped in {stopped:.1f}s: "
                  f"{', '.join(timings)})")
        return self

    @contextlib.contextmanager
    def _stop_on_failure(self, what: str) -> Iterator[None]:
        """Whatever fails inside: stop everything started, then raise."""
        try:
            yield
        except BaseException as exc:
            self._say(f"{what} failed; stopping what was started...")
            try:
                self.stop()
            except ServerError as stop_exc:
                if isinstance(exc, ServerError):
                    raise ServerError(f"{exc}\nCLEANUP INCOMPLETE: "
                                      f"{stop_exc}") from None
            raise

    def _mark_logs(self) -> None:
        """From here on, ``_since`` reads what the logs get next."""
        self._offsets = {os.path.join(self.path("log"), n): os.path.getsize(
            os.path.join(self.path("log"), n))
            for n in os.listdir(self.path("log"))}

    def _start_neutron(self) -> None:
        """The API and the periodic workers, until both serve (and, in real
        mode, until neutron-rpc-server, started before, consumes)."""
        api = self._spawn_api()
        if self.mode == "embedded":
            # Both processes load the ML2 plugin, which writes the VLAN
            # allocation table at start: on sqlite one at a time, or the
            # second fails with "database is locked".
            self._wait_api(api)
        periodic = self._spawn("neutron-periodic-workers",
                               self._periodic_cmd(), env=self._neutron_env(),
                               log=self.periodic_log)
        self._wait_api(api)
        self._wait_periodic_workers(periodic)
        if any(p.name == "neutron-rpc-server" for p in self.procs):
            self._wait_rpc_server()

    def _init_sqlite(self) -> None:
        db = self.path("data", "neutron.sqlite")
        if os.path.exists(db):
            return
        global _sqlite_template
        if _sqlite_template is not None and os.path.exists(_sqlite_template):
            # The schema this process built for its first embedded server:
            # the same file the commands below would make again.
            shutil.copyfile(_sqlite_template, db + ".part")
            os.replace(db + ".part", db)
            with open(self.path("log", "setup.log"), "a") as f:
                f.write(f"--- sqlite schema: a copy of {_sqlite_template}\n")
            return
        # The migrations do not run on sqlite: build the schema from the
        # models, seed the rows a migration would have, then stamp it as
        # being at the heads.
        try:
            self._run("sqlite schema", [sys.executable, "-c", SQLITE_SCHEMA,
                                        "sqlite:///" + db],
                      env=self._neutron_env())
            self._run("neutron-db-manage stamp heads",
                      self._neutron_cmd("neutron-db-manage", "stamp",
                                        "heads"), env=self._neutron_env())
        except BaseException:
            if os.path.exists(db):
                os.unlink(db)
            raise
        # Kept (before any server opened it) for this process's next
        # embedded servers: building it takes seconds, a copy milliseconds.
        keep = tempfile.mkdtemp(prefix="nvc-sqlite-")
        shutil.copyfile(db, os.path.join(keep, "neutron.sqlite"))
        atexit.register(shutil.rmtree, keep, True)
        _sqlite_template = os.path.join(keep, "neutron.sqlite")

    # real mode --------------------------------------------------------------

    def _use_backends_of(self, first: NeutronServer) -> None:
        st = first.state
        if first.mode != "real" or first.backend_of is not None or \
                not {"mariadb", "amqp"} <= set(st.get("ports", {})):
            raise ServerError(f"{first.workdir} is no running real-mode "
                              f"server with its own MariaDB and RabbitMQ")
        down = [p.name for p in first.procs
                if p.name in ("mariadb", "rabbitmq") and not p.running()]
        if down or len([p for p in first.procs
                        if p.name in ("mariadb", "rabbitmq")]) != 2:
            raise ServerError(f"the backends of {first.workdir} are not "
                              f"running")
        self._secrets.add(st["db_password"])
        self.state["db_password"] = st["db_password"]
        self.state["mariadb"] = st["ports"]["mariadb"]
        self.state["amqp"] = st["ports"]["amqp"]
        self.state["backend"] = {"workdir": first.workdir,
                                 "mariadb": st["ports"]["mariadb"],
                                 "amqp": st["ports"]["amqp"]}

    def _start_real_backends(self) -> None:
        if subprocess.run([sys.executable, "-c", "import pymysql"],
                          capture_output=True).returncode != 0:
            raise ServerError("real mode needs PyMySQL in the venv")
        for exe in (MARIADBD, RABBITMQ_SERVER):
            if not os.access(exe, os.X_OK):
                raise ServerError(f"{exe} is missing: apt-get install "
                                  f"mariadb-server rabbitmq-server")
        ports = self.state["ports"]
        while len(set(ports.values())) < 5:
            for name in ("mariadb", "amqp", "dist", "epmd"):
                ports[name] = free_port()
        self.state["mariadb"], self.state["amqp"] = ports["mariadb"], \
            ports["amqp"]
        self.state["db_password"] = secrets.token_hex(16)
        self._secrets.add(self.state["db_password"])
        self.write_config()
        # RabbitMQ boots in ~3 s: let it boot while MariaDB starts and the
        # migrations run.
        t0 = time.monotonic()
        rabbit = self._spawn("rabbitmq", [RABBITMQ_SERVER],
                             env=self._rabbit_env(),
                             log=self.path("log", "rabbitmq.log"))
        self._start_mariadb()
        self._run("neutron-db-manage upgrade heads",
                  self._neutron_cmd("neutron-db-manage", "upgrade", "heads"),
                  env=self._neutron_env(), timeout=300)
        self._say(f"neutron database migrated "
                  f"({time.monotonic() - t0:.1f}s since start)")
        self._wait_rabbitmq(rabbit)
        self._spawn_rpc_server()

    def _spawn_rpc_server(self) -> Proc:
        log = self.path("log", "neutron-rpc-server.log")
        return self._spawn("neutron-rpc-server", self._neutron_cmd(
            "neutron-rpc-server", "--log-file", log),
            env=self._neutron_env(), log=log)

    def _mariadb_socket(self) -> str:
        sock = self.path("run", "mariadb.sock")
        if len(sock) > MAX_SOCKET_PATH:
            # sun_path is 108 bytes: a short private directory instead.
            if "short_run_dir" not in self.state:
                self.state["short_run_dir"] = tempfile.mkdtemp(prefix="nvc-")
            sock = os.path.join(self.state["short_run_dir"], "mariadb.sock")
        return sock

    def _start_mariadb(self) -> None:
        t0 = time.monotonic()
        port = self.state["ports"]["mariadb"]
        datadir = self.path("data", "mariadb")
        sock = self._mariadb_socket()
        cnf_path = self.path("etc", "mariadb.cnf")
        mysqld = {
            "datadir": datadir, "socket": sock, "port": port,
            "pid-file": self.path("run", "mariadbd.pid"),
            "bind-address": "127.0.0.1", "user": "root",
            "skip-name-resolve": "1",
            "log-error": self.path("log", "mariadb.err"),
            "character-set-server": "utf8",
            "collation-server": "utf8_general_ci",
            "max_connections": 500, "innodb_buffer_pool_size": "128M",
            "innodb_flush_log_at_trx_commit": 2,
            "tmpdir": self.path("data", "tmp"),
        }
        os.makedirs(self.path("data", "tmp"), exist_ok=True)
        _write_private(cnf_path, "[mysqld]\n" + "".join(
            f"{k}={v}\n" for k, v in mysqld.items()) +
            f"[client]\nsocket={sock}\nuser=root\n")
        defaults = "--defaults-file=" + cnf_path
        if not os.path.isdir(os.path.join(datadir, "mysql")):
            shutil.rmtree(datadir, ignore_errors=True)
            self._run("mariadb-install-db",
                      ["mariadb-install-db", defaults,
                       "--auth-root-authentication-method=socket",
                       "--skip-test-db"])
        proc = self._spawn("mariadb", [MARIADBD, defaults],
                           log=self.path("log", "mariadb.err"))

        def ready():
            if not proc.running():
                raise ServerError("mariadbd exited:\n" +
                                  self._log_report(proc.log))
            return os.path.exists(sock) and port_open(port)

        if not wait_for(ready, min(60, self.timeout)):
            raise ServerError("mariadbd not ready after 60s:\n" +
                              self._log_report(proc.log))
        pw = self.state["db_password"]
        # The password goes over stdin, never on a command line.
        self._run("create database neutron", ["mariadb", defaults], input=(
            "CREATE DATABASE IF NOT EXISTS neutron CHARACTER SET utf8;\n"
            f"CREATE USER IF NOT EXISTS 'neutron'@'127.0.0.1' "
            f"IDENTIFIED BY '{pw}';\n"
            f"ALTER USER 'neutron'@'127.0.0.1' IDENTIFIED BY '{pw}';\n"
            "GRANT ALL PRIVILEGES ON neutron.* TO 'neutron'@'127.0.0.1';\n"
            "FLUSH PRIVILEGES;\n"), timeout=60)
        self._say(f"mariadb ready on 127.0.0.1:{port} in "
                  f"{time.monotonic() - t0:.1f}s")

    def _rabbit_env(self) -> dict:
        ports = self.state["ports"]
        base = self.path("data", "rabbitmq")
        etc = self.path("etc", "rabbitmq")
        for d in (base, etc):
            os.makedirs(d, exist_ok=True)
        _write_private(os.path.join(etc, "rabbitmq-env.conf"),
                       "# private node: see the environment\n")
        _write_private(os.path.join(etc, "rabbitmq.conf"), "")
        _write_private(os.path.join(etc, "enabled_plugins"), "[].\n")
        loopback = "-kernel inet_dist_use_interface {127,0,0,1}"
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("RABBITMQ_", "ERL_"))}
        env.update({
            "HOME": base,  # .erlang.cookie
            "RABBITMQ_CONF_ENV_FILE": os.path.join(etc, "rabbitmq-env.conf"),
            "RABBITMQ_CONFIG_FILE": os.path.join(etc, "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": os.path.join(etc,
                                                          "advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": os.path.join(etc,
                                                          "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": os.path.join(base, "mnesia"),
            "RABBITMQ_PLUGINS_EXPAND_DIR": os.path.join(base,
                                                        "plugins-expand"),
            "RABBITMQ_LOG_BASE": self.path("log"),
            "RABBITMQ_LOGS": self.path("log", "rabbitmq.log"),
            "RABBITMQ_PID_FILE": self.path("run", "rabbitmq-beam.pid"),
            "RABBITMQ_NODENAME": "rabbit@localhost",
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(ports["amqp"]),
            "RABBITMQ_DIST_PORT": str(ports["dist"]),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "ERL_EPMD_PORT": str(ports["epmd"]),
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": loopback,
            "RABBITMQ_CTL_ERL_ARGS": loopback,
        })
        return env

    def _amqp_ready(self) -> bool:
        """The broker answers the AMQP 0-9-1 protocol header."""
        try:
            with socket.create_connection(
                    ("127.0.0.1", self.state["ports"]["amqp"]),
                    timeout=1) as s:
                s.sendall(b"AMQP\x00\x00\x09\x01")
                # method frame (type 1) on channel 0: connection.start
                return s.recv(7)[:3] == b"\x01\x00\x00"
        except OSError:
            return False

    def _wait_rabbitmq(self, proc: Proc) -> None:
        t0 = time.monotonic()

        def ready():
            if not proc.running():
                raise ServerError("rabbitmq-server exited:\n" +
                                  self._log_report(proc.log))
            return self._amqp_ready()

        if not wait_for(ready, min(90, self.timeout), 0.2):
            raise ServerError("rabbitmq not ready after 90s:\n" +
                              self._log_report(proc.log))
        # The Erlang runtime starts epmd, which daemonizes itself (its
        # parent becomes init): it is the process listening on our private
        # epmd port, recorded by PID like the others.
        epmd_port = self.state["ports"]["epmd"]
        for conn in psutil.net_connections("tcp4"):
            if conn.status == psutil.CONN_LISTEN and conn.pid and \
                    conn.laddr.port == epmd_port and \
                    psutil.Process(conn.pid).name() == "epmd":
                self.procs.append(Proc("epmd", conn.pid, None))
                break
        self._say(f"rabbitmq ready on 127.0.0.1:{self.state['ports']['amqp']}"
                  f" ({time.monotonic() - t0:.1f}s more)")

    def _wait_logged(self, proc: Proc, needed: tuple[str, ...],
                     what: str) -> None:
        """Wait until proc's log shows every line of ``needed`` (DEBUG
        lines: our neutron.conf has debug on) and no CRITICAL."""
        t0 = time.monotonic()
        while True:
            if not proc.running():
                raise ServerError(f"{proc.name} exited:\n" +
                                  self._log_report(proc.log,
                                                   self.path("log", proc.name
                                                             + ".out")))
            text = self._since(proc.log)
            if re.search(r"^\S+ \S+ \d+ CRITICAL ", text, re.M):
                raise ServerError(f"{proc.name} failed to start:\n" +
                                  self._log_report(proc.log))
            if all(n in text for n in needed):
                self._say(f"{proc.name} {what} after "
                          f"{time.monotonic() - t0:.1f}s")
                return
            if time.monotonic() - t0 > min(60, self.timeout):
                raise ServerError(f"{proc.name} not {what} after 60s:\n" +
                                  self._log_report(proc.log))
            time.sleep(0.2)

    def _wait_rpc_server(self) -> None:
        """neutron-rpc-server is up once it consumes from its RPC topics."""
        proc = next(p for p in self.procs if p.name == "neutron-rpc-server")
        self._wait_logged(proc, ("RpcWorker start finished",
                                 "RpcReportsWorker start finished"),
                          "consuming from RabbitMQ")

    def _wait_periodic_workers(self, proc: Proc) -> None:
        """The plugin workers run once the services worker (the process of
        every worker with worker_process_count 0: Neutron's own periodic
        workers always among them) has started its workers."""
        self._wait_logged(proc, ("AllServicesNeutronWorker start finished",),
                          "running the plugin workers")

    # API ----------------------------------------------------------------------

    def _spawn_api(self) -> Proc:
        cmd = [
            os.path.join(self.venv_bin, "uwsgi"),
            "--http-socket", f"127.0.0.1:{self.state['ports']['api']}",
            "--module", "neutron.wsgi.api:application",
            "--virtualenv", os.path.dirname(self.venv_bin),
            "--master", "--processes", str(self.workers),
            "--lazy-apps", "--need-app", "--enable-threads", "--thunder-lock",
            "--die-on-term",
            # SIGTERM: let workers finish in-flight requests (stop() then
            # SIGKILLs after a grace period).
            "--hook-master-start", "unix_signal:15 gracefully_kill_them_all",
            "--buffer-size", "65535",
            # No keep-alive: without this a client that reuses a connection
            # uWSGI has just closed gets "connection reset by peer".
            "--add-header", "Connection: close",
            "--worker-reload-mercy", str(int(self.stop_grace)),
            "--procname-prefix-spaced", "neutron-api",
            "--logto", self.path("log", "uwsgi.log"),
        ]
        if self.mode == "embedded":
            cmd += ["--pythonpath", TOOLS, "--import", "embedded_sqlite"]
        return self._spawn("uwsgi", cmd, env=self._neutron_env(),
                           log=self.api_log)

    def _wait_api(self, proc: Proc) -> None:
        t0 = time.monotonic()
        url = self.url + "/v2.0/networks"
        last = "no answer"
        while True:
            failed = not proc.running() or re.search(
                r"^\S+ \S+ \d+ CRITICAL ", self._since(self.api_log), re.M) \
                or "no app loaded" in self._since(self.path("log",
                                                            "uwsgi.log"))
            if failed:
                raise ServerError("neutron API failed to start:\n" +
                                  self._log_report(self.api_log,
                                                   self.path("log",
                                                             "uwsgi.log")))
            try:
                code = http_status(url)
                if code == 200:
                    break
                last = f"HTTP {code}"
            except OSError as exc:
                last = str(getattr(exc, "reason", exc))
            if time.monotonic() - t0 > self.timeout:
                raise ServerError(f"API not ready after {self.timeout}s (GET "
                                  f"{url}: {last})\n" +
                                  self._log_report(self.api_log))
            time.sleep(0.2)
        self._say(f"neutron API answered on {self.url} after "
                  f"{time.monotonic() - t0:.1f}s")

    # -- stop -------------------------------------------------------------

    def stop(self) -> None:
        """Stop every process this object started, by PID; idempotent.

        A server started with ``backend_of`` has no MariaDB or RabbitMQ of
        its own: the first server's stay up.  Raises ServerError naming
        whatever is still running afterwards.
        """
        atexit.unregister(self.stop)
        if not self.procs:
            return
        t0 = time.monotonic()
        for p in self.procs:        # remember every tree before it changes
            p.members()
        rank = {n: i for i, n in enumerate(STOP_ORDER)}
        problems, timings = [], []

        def stop(p: Proc) -> None:
            t1 = time.monotonic()
            try:
                self._stop_proc(p)
            except ServerError as exc:
                problems.append(str(exc))
            timings.append(f"{p.name} {time.monotonic() - t1:.1f}s")

        # Neutron's own processes at once (each takes seconds to stop
        # gracefully, and none waits for another), then what they used, in
        # order.
        ordered = sorted(reversed(self.procs), key=lambda p: rank[p.name])
        neutron = [p for p in ordered if p.name in NEUTRON_PROCS]
        with concurrent.futures.ThreadPoolExecutor(
                max(1, len(neutron))) as pool:
            list(pool.map(stop, neutron))
        for p in ordered:
            if p not in neutron:
                stop(p)
        left = {p.name: [m.pid for m in p.members()] for p in self.procs}
        left = {n: pids for n, pids in left.items() if pids}
        # A port still served by one of ours (by PID: once free, the port
        # may be another server's of a parallel test run already, or a
        # connect may meet itself on it).
        ours = {pid for p in self.procs for pid in p.seen}
        ports = {n: port for n, port in self.state.get("ports", {}).items()
                 if port_open(port) and listeners(port) & ours}
        if left or ports:
            problems.append("still running after stop: " + ", ".join(
                [f"{n} (pids {' '.join(map(str, pids))})"
                 for n, pids in left.items()] +
                [f"port {n}={port} open" for n, port in ports.items()]))
        if problems:
            raise ServerError(self.redact("; ".join(problems)))
        self.procs = []
        if self.state.get("short_run_dir"):
            shutil.rmtree(self.state["short_run_dir"], ignore_errors=True)
        self._say(f"stopped in {time.monotonic() - t0:.1f}s "
                  f"({', '.join(timings)})")

    def _stop_proc(self, p: Proc) -> None:
        if p.name == "neutron-rpc-server":
            # A graceful stop waits seconds for oslo.messaging's consumers;
            # it has nothing to finish that matters here.
            p.stop(min(self.stop_grace, 5))
        elif p.name == "rabbitmq":
            # The shell script, beam.smp and its helpers (some in sessions
            # of their own) all get the SIGTERM.
            p.stop(self.stop_grace, everyone=True)
        elif p.name == "mariadb":
            p.stop(30)
        else:
            p.stop(self.stop_grace)

#!/usr/bin/env python3
"""Start and stop a real Neutron API on loopback with the ``vcenter`` ML2 driver.

Used by ``make demo``, the end-to-end tests and CI.  Run it with the venv's
Python (it finds Neutron's commands next to ``sys.executable``)::

    .venv/bin/python tools/neutron_server.py start --workdir .work/neutron \\
        --vcenter-port 8989 [--mode real]         # prints NEUTRON_URL=...
    .venv/bin/python tools/neutron_server.py status --workdir .work/neutron
    .venv/bin/python tools/neutron_server.py stop --workdir .work/neutron

    # A second API server on the first one's database and RabbitMQ:
    .venv/bin/python tools/neutron_server.py start --workdir .work/neutron-b \\
        --vcenter-port 8989 --port 9697 --backend-workdir .work/neutron
    .venv/bin/python tools/neutron_server.py stop --workdir .work/neutron-b

Modes:

embedded (default)
    sqlite file ``DIR/data/neutron.sqlite``, ``transport_url = fake://``
    (oslo.messaging's in-process driver), one uWSGI process serving
    ``neutron.wsgi.api:application``.  No RPC server, no agents.
real
    a private MariaDB (datadir ``DIR/data/mariadb``, socket in ``DIR/run``,
    127.0.0.1 and a free port), a private RabbitMQ (own epmd, AMQP and
    distribution ports, all on 127.0.0.1), ``neutron-db-manage upgrade heads``,
    ``neutron-rpc-server`` and the uWSGI API.
real, with ``backend_of`` (``--backend-workdir``)
    one more uWSGI API on the MariaDB database and RabbitMQ of an already
    running real-mode server, as a second Neutron server host would be: its
    own work directory (configuration, logs, ``[oslo_concurrency] lock_path``,
    PIDs), no MariaDB, RabbitMQ, rpc-server or migrations of its own.  Its
    ``stop`` stops its uWSGI only; stop it before the first server.

Layout of the work directory: ``etc/`` configuration (mode 0600: it holds
passwords), ``log/`` every log, ``data/`` databases and state, ``run/`` PIDs,
sockets and ``state.json`` (what ``stop`` stops).  Every process runs in its
own session/process group, detached, so the ``start`` command can exit.

Importable (``sys.path.insert(0, "tools")``)::

    from neutron_server import NeutronServer
    srv = NeutronServer(workdir, vcenter_port=sim.port).start()
    ... srv.url ...
    srv.stop()

    first = NeutronServer(workdir_a, "real", vcenter_port=sim.port).start()
    second = NeutronServer(workdir_b, "real", vcenter_port=sim.port,
                           port=0, backend_of=first).start()
    ...
    second.stop()
    first.stop()

Nothing this script prints contains the vCenter or database password.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import sys
import time
import urllib.error
import urllib.request

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

MODES = ("embedded", "real")
# Order in which ``stop`` takes things down; ``start`` brings them up in the
# opposite order.
STOP_ORDER = ("uwsgi", "neutron-rpc-server", "rabbitmq", "epmd", "mariadb")

DEFAULT_SWITCH_MAPPINGS = "physnet1:DVS0,physnet2:vSwitch1"
DEFAULT_COMPUTE_HOSTS = "vc-compute-1:DC0_C0"
EXTRA_PHYSNET = "physnet3"

MARIADBD = "/usr/sbin/mariadbd"
RABBITMQ_SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"
RABBITMQCTL = "/usr/lib/rabbitmq/bin/rabbitmqctl"
# The level field of an oslo.log line: "2026-11-25 14:30:09.463 12483 ERROR ...".
LOG_HEADER_RE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+ \d+ [A-Z]+ ")
LEVEL_RE = re.compile(r"^\S+ \S+ \d+ (CRITICAL|ERROR) ")
# Unix socket paths are limited to 108 bytes (sun_path).
MAX_SOCKET_PATH = 100


class ServerError(RuntimeError):
    """Start or stop failed; the message is safe to print (no passwords)."""


# -- small helpers ----------------------------------------------------------------


def _venv_bin() -> str:
    """Directory of the venv's commands (neutron-db-manage, uwsgi...)."""
    candidates = [os.path.dirname(sys.executable),
                  os.path.join(sys.prefix, "bin"),
                  os.path.join(REPO, ".venv", "bin")]
    for d in candidates:
        if os.path.exists(os.path.join(d, "neutron-db-manage")):
            return d
    raise ServerError("cannot find neutron-db-manage next to %s or in %s; run "
                      "this script with the venv's python" %
                      (sys.executable, os.path.join(REPO, ".venv", "bin")))


def find_api_paste(venv_bin: str | None = None) -> str:
    """The real path of the api-paste.ini that the Neutron release ships."""
    candidates = []
    try:
        from importlib import metadata
        dist = metadata.distribution("neutron")
        for f in dist.files or ():
            if str(f).replace("\\", "/").endswith("etc/neutron/api-paste.ini") \
                    and "tests" not in str(f):
                candidates.append(str(dist.locate_file(f)))
    except Exception:  # noqa: BLE001 - fall back to the usual places
        pass
    prefix = os.path.dirname(venv_bin) if venv_bin else sys.prefix
    candidates += [os.path.join(prefix, "etc", "neutron", "api-paste.ini"),
                   os.path.join(sys.prefix, "etc", "neutron", "api-paste.ini"),
                   "/etc/neutron/api-paste.ini"]
    for c in candidates:
        if os.path.isfile(c):
            return os.path.realpath(c)
    raise ServerError("cannot find Neutron's etc/neutron/api-paste.ini "
                      "(looked at %s)" % ", ".join(candidates))


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """True when something listens on host:port (or binding it fails)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        if s.connect_ex((host, port)) == 0:
            return True
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # Like uWSGI: connections in TIME_WAIT do not make the port busy.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


# Loopback checks never go through a proxy of the caller's environment.
_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http_get(url: str, timeout: float = 5) -> int:
    """Status of GET url (HTTP errors included); OSError when no answer."""
    req = urllib.request.Request(url, headers={"Accept": "application/json"})
    try:
        with _HTTP.open(req, timeout=timeout) as r:
            r.read()
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def _proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name, or None if gone."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            data = f.read()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # "pid (comm) state ppid pgrp session ..." -- comm may contain spaces.
    return data[data.rindex(")") + 2:].split()


def proc_state(pid: int) -> str | None:
    """Kernel state letter of PID ("R", "S", "Z"...), None when absent."""
    st = _proc_stat(pid)
    return st[0] if st else None


def proc_alive(pid: int) -> bool:
    """Running (not absent, not a zombie waiting to be reaped)."""
    return proc_state(pid) not in (None, "Z", "X")


def proc_start_time(pid: int) -> int | None:
    st = _proc_stat(pid)
    return int(st[19]) if st else None


def process_table() -> dict[int, tuple[str, int, int, int]]:
    """{pid: (state, ppid, pgrp, start_time)} of every process."""
    table = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        st = _proc_stat(int(name))
        if st:
            table[int(name)] = (st[0], int(st[1]), int(st[2]), int(st[19]))
    return table


def process_tree(roots: list[int], pgid: int | None = None) -> dict[int, int]:
    """{pid: start_time} of the live roots, the live members of process group
    pgid, and all their live descendants (erl_child_setup and the like put
    themselves in new sessions, so the group alone is not enough)."""
    table = process_table()
    children: dict[int, list[int]] = {}
    for pid, (_, ppid, _, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    stack = list(roots)
    if pgid:
        stack += [pid for pid, (_, _, pgrp, _) in table.items() if pgrp == pgid]
    out: dict[int, int] = {}
    while stack:
        pid = stack.pop()
        info = table.get(pid)
        if pid in out or not info or info[0] in ("Z", "X"):
            continue
        out[pid] = info[3]
        stack += children.get(pid, [])
    return out


def _proc_environ(pid: int) -> dict[str, str]:
    try:
        with open("/proc/%d/environ" % pid, "rb") as f:
            raw = f.read()
    except OSError:
        return {}
    env = {}
    for item in raw.split(b"\0"):
        k, sep, v = item.partition(b"=")
        if sep:
            env[k.decode(errors="replace")] = v.decode(errors="replace")
    return env


def _proc_exe_name(pid: int) -> str:
    try:
        with open("/proc/%d/comm" % pid) as f:
            return f.read().strip()
    except OSError:
        return ""


def find_epmd(epmd_port: int) -> list[int]:
    """PIDs of the epmd daemons serving our private epmd port."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        pid = int(name)
        if _proc_exe_name(pid) != "epmd" or not proc_alive(pid):
            continue
        if _proc_environ(pid).get("ERL_EPMD_PORT") == str(epmd_port):
            found.append(pid)
    return found


def wait_for(predicate, timeout: float, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def read_log(path: str, offset: int = 0, limit: int = 4 << 20) -> str:
    """Text of a log from byte offset (at most its last `limit` bytes)."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(offset, size - limit, 0))
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def tail(path: str, lines: int = 40, offset: int = 0) -> str:
    if not os.path.exists(path):
        return "(no log at %s)" % path
    return "\n".join(read_log(path, offset, 256 << 10).splitlines()[-lines:])


def error_records(text: str, limit: int = 8, width: int = 1000) -> list[str]:
    """The last ERROR/CRITICAL records of oslo.log text, without tracebacks.

    A record is its header line plus the unprefixed lines that follow it (a
    multi-line message); traceback lines, which oslo.log prefixes like any
    other line, are left out, so what remains is the messages and the
    exception lines.
    """
    records: list[list[str]] = []
    current: list[str] | None = None
    for ln in text.splitlines():
        if LOG_HEADER_RE.match(ln):
            current = None
            m = LEVEL_RE.match(ln)
            if not m:
                continue
            _, _, rest = ln[m.end():].partition(" ")
            if (not rest.strip() or rest.startswith((" ", "\t", "Traceback ("))
                    or set(rest.strip()) <= set("^~ ")):
                continue
            current = [ln[:width]]
            records.append(current)
        elif current is not None and len(current) < 6:
            current.append(ln[:width])
    out: list[str] = []
    for rec in records:
        joined = "\n".join(rec)
        if joined not in out:
            out.append(joined)
    return out[-limit:]


def _write_private(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(path, 0o600)


def _ini(sections: dict[str, dict[str, object]]) -> str:
    out = []
    for section, opts in sections.items():
        out.append("[%s]" % section)
        for k, v in opts.items():
            if isinstance(v, bool):
                v = "true" if v else "false"
            v = str(v)
            if "\n" in v or "\r" in v:
                raise ServerError("[%s] %s: a value cannot span lines" % (section, k))
            # oslo.config substitutes $name: "$$" is a literal "$".
            out.append("%s = %s" % (k, v.replace("$", "$$")))
        out.append("")
    return "\n".join(out)


def vlan_ranges(switch_mappings: dict[str, str], extra: str = EXTRA_PHYSNET) -> str:
    """physnet1:100:199,physnet2:200:299,... plus one unmapped physnet."""
    items = []
    for i, physnet in enumerate(switch_mappings, start=1):
        lo = i * 100
        if lo + 99 > 4094:
            items.append(physnet)
        else:
            items.append("%s:%d:%d" % (physnet, lo, lo + 99))
    n = 3
    while extra in switch_mappings:
        n += 1
        extra = "physnet%d" % n
    items.append(extra)
    return ",".join(items)


def _parse_pairs(option: str, value: str) -> dict[str, str]:
    result: dict[str, str] = {}
    for entry in value.split(","):
        entry = entry.strip()
        if not entry:
            continue
        k, sep, v = entry.partition(":")
        if not sep or not k.strip() or not v.strip():
            raise ServerError("%s: '%s' is not of the form <name>:<name>" %
                              (option, entry))
        result[k.strip()] = v.strip()
    if not result:
        raise ServerError("%s is empty" % option)
    return result


# -- the server -------------------------------------------------------------------


class NeutronServer:
    """Neutron API (plus, in real mode, MariaDB, RabbitMQ, neutron-rpc-server).

    Everything lives under ``workdir``; ``stop()`` works from a fresh object
    (or another process) because the PIDs are recorded in
    ``workdir/run/state.json``.

    ``backend_of`` (a running real-mode server, or its work directory): start
    only an API that uses that server's database and message queue; they are
    recorded under ``state["backend"]``, never as services or ``ports`` of
    this one, so that its ``stop()`` cannot touch them.
    """

    def __init__(self, workdir: str, mode: str = "embedded", *,
                 vcenter_host: str = "127.0.0.1", vcenter_port: int = 443,
                 vcenter_user: str = "user", vcenter_password: str = "pass",
                 insecure: bool | None = None, ca_file: str | None = None,
                 switch_mappings: str = DEFAULT_SWITCH_MAPPINGS,
                 compute_hosts: str = DEFAULT_COMPUTE_HOSTS,
                 port: int = 9696, workers: int = 1,
                 extra_ml2_opts: dict[str, str] | list[str] | None = None,
                 fresh: bool = False, timeout: float = 120.0,
                 stop_grace: float = 10.0, quiet: bool = False,
                 out=None, backend_of: "NeutronServer | str | None" = None):
        if mode not in MODES:
            raise ServerError("mode must be one of %s" % ", ".join(MODES))
        if backend_of is not None and mode != "real":
            raise ServerError("an API server on another server's backends "
                              "is a real-mode server: use mode 'real'")
        self.workdir = os.path.abspath(workdir)
        # The first server's work directory: its state.json is read at start.
        self.backend_workdir = None if backend_of is None else os.path.abspath(
            backend_of if isinstance(backend_of, str) else backend_of.workdir)
        self.mode = mode
        self.vcenter_host = vcenter_host
        self.vcenter_port = int(vcenter_port)
        self.vcenter_user = vcenter_user
        self.vcenter_password = vcenter_password
        self.ca_file = os.path.abspath(ca_file) if ca_file else None
        # The simulator's certificate is self-signed: insecure unless a CA
        # bundle is given.
        self.insecure = (not ca_file) if insecure is None else insecure
        self.switch_mappings = switch_mappings
        self.compute_hosts = compute_hosts
        self.port = int(port)
        self.workers = int(workers)
        if isinstance(extra_ml2_opts, dict):
            extra = dict(extra_ml2_opts)
        else:
            extra = {}
            for item in extra_ml2_opts or ():
                k, sep, v = item.partition("=")
                if not sep:
                    raise ServerError("--extra-ml2-opt %r is not KEY=VALUE" %
                                      item.split("=")[0])
                extra[k.strip()] = v.strip()
        for k, v in extra.items():
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", k) or "\n" in str(v):
                raise ServerError("invalid [ml2_vcenter] option %r" % k)
        self.extra_ml2_opts = extra
        self.fresh = fresh
        self.timeout = timeout
        self.stop_grace = stop_grace
        self.quiet = quiet
        self.out = out
        self._secrets: set[str] = {s for s in (vcenter_password,) if s}
        self._popens: dict[int, subprocess.Popen] = {}
        self._snapshots: dict[int, dict[int, int]] = {}
        self._offsets: dict[str, int] = {}
        self.state: dict = {}

    # -- paths ------------------------------------------------------------------

    def path(self, *parts: str) -> str:
        return os.path.join(self.workdir, *parts)

    @property
    def etc(self) -> str:
        return self.path("etc")

    @property
    def logdir(self) -> str:
        return self.path("log")

    @property
    def datadir(self) -> str:
        return self.path("data")

    @property
    def rundir(self) -> str:
        return self.path("run")

    @property
    def state_file(self) -> str:
        return self.path("run", "state.json")

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
    def url(self) -> str | None:
        return self.state.get("url")

    # -- output -----------------------------------------------------------------

    def redact(self, text: str) -> str:
        """Hide the passwords (as whole words: the simulator's is "pass")."""
        for s in sorted(self._secrets, key=len, reverse=True):
            if s:
                text = re.sub(r"(?<![A-Za-z0-9])%s(?![A-Za-z0-9])" % re.escape(s),
                              "***", text)
        return text

    def _say(self, msg: str) -> None:
        if self.quiet:
            return
        stream = self.out or sys.stderr
        print(self.redact(msg), file=stream, flush=True)

    # -- state ------------------------------------------------------------------

    def load_state(self) -> dict:
        try:
            with open(self.state_file) as f:
                self.state = json.load(f)
        except FileNotFoundError:
            self.state = {}
        except ValueError as exc:
            raise ServerError("%s is corrupt: %s" % (self.state_file, exc))
        return self.state

    def _save_state(self) -> None:
        os.makedirs(self.rundir, exist_ok=True)
        # Mode 0600: it holds the generated database password.
        tmp = self.state_file + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(self.state, f, indent=2, sort_keys=True)
        os.replace(tmp, self.state_file)

    def _record(self, name: str, pid: int, **extra) -> dict:
        svc = {"name": name, "pid": pid, "start_time": proc_start_time(pid)}
        svc.update(extra)
        self.state.setdefault("services", []).append(svc)
        self._save_state()
        with open(os.path.join(self.rundir, name + ".pid"), "w") as f:
            f.write("%d\n" % pid)
        return svc

    def services(self) -> list[dict]:
        return list(self.state.get("services", []))

    def pids(self) -> dict[str, int]:
        return {s["name"]: s["pid"] for s in self.services()}

    def _ours(self, svc: dict) -> bool:
        """Is svc's PID still the process we started (not a reused PID)?"""
        pid = svc["pid"]
        if not proc_alive(pid):
            return False
        st = svc.get("start_time")
        return st is None or proc_start_time(pid) == st

    def _svc_pids(self, svc: dict) -> list[int]:
        """Live processes of svc: the leader, its process group, their
        descendants, and whatever of that was seen before stop() began."""
        tree = process_tree([svc["pid"]] if self._ours(svc) else [],
                            svc.get("pgid"))
        for pid, st in self._snapshots.get(svc["pid"], {}).items():
            if pid not in tree and proc_alive(pid) and proc_start_time(pid) == st:
                tree[pid] = st
        return sorted(tree)

    def alive(self) -> dict[str, list[int]]:
        """Live PIDs per recorded service (empty list: gone)."""
        if not self.state:
            self.load_state()
        self._reap()
        return {s["name"]: self._svc_pids(s) for s in self.services()}

    # -- processes --------------------------------------------------------------

    def _spawn(self, name: str, cmd: list[str], env: dict | None = None,
               logfile: str | None = None, **extra) -> subprocess.Popen:
        logfile = logfile or os.path.join(self.logdir, name + ".out")
        os.makedirs(os.path.dirname(logfile), exist_ok=True)
        with open(logfile, "ab") as log:
            log.write(("--- %s start: %s\n" % (
                time.strftime("%Y-%m-%d %H:%M:%S"), " ".join(cmd))).encode())
            log.flush()
            try:
                proc = subprocess.Popen(
                    cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                    env=env, cwd=self.workdir, close_fds=True,
                    start_new_session=True)  # own session + process group
            except OSError as exc:
                raise ServerError("cannot run %s: %s" % (cmd[0], exc)) from None
        self._popens[proc.pid] = proc
        self._record(name, proc.pid, pgid=proc.pid, log=logfile, **extra)
        return proc

    def _reap(self) -> None:
        for pid, p in list(self._popens.items()):
            if p.poll() is not None:
                del self._popens[pid]

    def _run(self, what: str, cmd: list[str], env: dict | None = None,
             input: str | None = None, timeout: float = 120,
             logfile: str | None = None) -> str:
        """Run a short command to completion; raise ServerError on failure."""
        logfile = logfile or os.path.join(self.logdir, "setup.log")
        t0 = time.monotonic()
        try:
            res = subprocess.run(cmd, input=input, env=env, cwd=self.workdir,
                                 stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True,
                                 timeout=timeout)
            output, rc = res.stdout, res.returncode
        except subprocess.TimeoutExpired as exc:
            output = exc.output or ""
            if isinstance(output, bytes):
                output = output.decode(errors="replace")
            rc = None
        with open(logfile, "a") as f:
            shown = " ".join("<script>" if "\n" in a else a for a in cmd)
            f.write("--- %s: %s (exit %s, %.1fs)\n%s\n" % (
                what, shown, rc, time.monotonic() - t0,
                self.redact(output)))
        if rc != 0:
            reason = "timed out after %ss" % timeout if rc is None \
                else "failed (exit %s)" % rc
            raise ServerError("%s %s:\n%s" % (
                what, reason, "\n".join(output.splitlines()[-30:])))
        return output

    # -- configuration ----------------------------------------------------------

    def _neutron_env(self) -> dict:
        env = dict(os.environ)
        env["OS_NEUTRON_CONFIG_DIR"] = self.etc
        env["OS_NEUTRON_CONFIG_FILES"] = "neutron.conf;plugins/ml2/ml2_conf.ini"
        # A proxy from the caller's environment must not catch loopback calls.
        env["no_proxy"] = env["NO_PROXY"] = "127.0.0.1,localhost"
        return env

    def _config_args(self) -> list[str]:
        return ["--config-file", self.neutron_conf,
                "--config-file", self.ml2_conf]

    def write_config(self) -> None:
        st = self.state
        mappings = _parse_pairs("--switch-mappings", self.switch_mappings)
        _parse_pairs("--compute-hosts", self.compute_hosts)
        if self.mode == "embedded":
            connection = "sqlite:///" + self.path("data", "neutron.sqlite")
            transport = "fake://"
        else:
            db_port, amqp_port = self._backend_ports()
            connection = "mysql+pymysql://neutron:%s@127.0.0.1:%d/neutron?charset=utf8" % (
                st["db_password"], db_port)
            transport = "rabbit://guest:guest@127.0.0.1:%d/" % amqp_port
        default = {
            "debug": True,
            "log_file": self.api_log,
            "use_stderr": False,
            "state_path": self.datadir,
            "core_plugin": "ml2",
            "service_plugins": "router,segments",
            "auth_strategy": "noauth",
            "api_paste_config": st["api_paste"],
            "transport_url": transport,
            "notify_nova_on_port_status_changes": False,
            "notify_nova_on_port_data_changes": False,
            # neutron-rpc-server (real mode): one worker of each kind.
            "rpc_workers": 1,
            "rpc_state_report_workers": 1,
        }
        neutron = {
            "DEFAULT": default,
            "database": {"connection": connection},
            "oslo_concurrency": {"lock_path": self.path("data", "lock")},
        }
        vcenter = {
            "host_ip": self.vcenter_host,
            "host_port": self.vcenter_port,
            "host_username": self.vcenter_user,
            "host_password": self.vcenter_password,
        }
        if self.ca_file:
            vcenter["ca_file"] = self.ca_file
        vcenter["insecure"] = bool(self.insecure)
        vcenter["switch_mappings"] = self.switch_mappings
        vcenter["compute_hosts"] = self.compute_hosts
        vcenter["resync_interval"] = 0
        # "{tooz_db}" in a value: a tooz URL for this server's database (the
        # first server's with backend_of), so that the driver's locks can
        # live where a deployment has them.
        tooz_db = ("mysql://neutron:%s@127.0.0.1:%d/neutron" % (
            st["db_password"], self._backend_ports()[0])
            if self.mode == "real" else "")
        vcenter.update({k: str(v).replace("{tooz_db}", tooz_db)
                        for k, v in self.extra_ml2_opts.items()})
        ml2 = {
            "ml2": {
                "type_drivers": "vlan,flat,vxlan",
                "tenant_network_types": "vxlan",
                "mechanism_drivers": "openvswitch,vcenter",
                "extension_drivers": "port_security",
            },
            "ml2_type_vlan": {"network_vlan_ranges": vlan_ranges(mappings)},
            "ml2_type_flat": {"flat_networks": "*"},
            "ml2_type_vxlan": {"vni_ranges": "1:1000"},
            "ml2_vcenter": vcenter,
        }
        _write_private(self.neutron_conf, _ini(neutron))
        _write_private(self.ml2_conf, _ini(ml2))
        os.makedirs(self.path("data", "lock"), exist_ok=True)

    def _backend_ports(self) -> tuple[int, int]:
        """(MariaDB, AMQP) ports: this server's own, or the first server's."""
        src = self.state.get("backend") or self.state["ports"]
        return src["mariadb"], src["amqp"]

    # -- start ------------------------------------------------------------------

    def start(self) -> "NeutronServer":
        """Bring everything up; on failure stop what was started and raise."""
        t0 = time.monotonic()
        self._check_no_leftovers()
        if self.mode == "embedded" and self.workers != 1:
            raise ServerError("embedded mode uses sqlite: keep --workers 1 "
                              "(use --mode real for more workers)")
        if self.workers < 1:
            raise ServerError("--workers must be at least 1")
        if self.ca_file and not os.path.isfile(self.ca_file):
            raise ServerError("--ca-file %s does not exist" % self.ca_file)
        venv_bin = _venv_bin()
        # Before anything is written: refuse early if they are not running.
        backend = self._backends_of_first() if self.backend_workdir else None
        api_port = self.port or free_port()
        if port_in_use(api_port):
            raise ServerError("port 127.0.0.1:%d is already in use (another "
                              "Neutron?); choose --port" % api_port)
        if self.fresh:
            for d in (self.datadir, self.logdir, self.rundir):
                shutil.rmtree(d, ignore_errors=True)
        for d in (self.etc, self.logdir, self.datadir, self.rundir):
            os.makedirs(d, exist_ok=True)
        self._note_log_offsets()

        self.state = {
            "mode": self.mode,
            "workdir": self.workdir,
            "url": "http://127.0.0.1:%d" % api_port,
            "ports": {"api": api_port},
            "venv_bin": venv_bin,
            "api_paste": find_api_paste(venv_bin),
            "services": [],
            "started_at": time.time(),
        }
        if backend:
            # Not under "ports": stop() checks and stops what "ports" holds.
            self.state["backend"] = backend
            self.state["db_password"] = backend.pop("db_password")
        self._save_state()
        try:
            if backend:
                self.write_config()
            elif self.mode == "real":
                self._start_real_backends(venv_bin)
            else:
                self.write_config()
                self._init_sqlite(venv_bin)
            self._start_api(venv_bin)
            if self.mode == "real" and not self.backend_workdir:
                self._wait_rpc_server()
        except BaseException as exc:
            if isinstance(exc, ServerError):
                msg = str(exc)
            elif isinstance(exc, KeyboardInterrupt):
                msg = "interrupted"
            else:
                msg = "%s: %s" % (type(exc).__name__, exc)
            self._say("start failed; stopping what was started...")
            try:
                self.stop()
            except Exception as stop_exc:  # noqa: BLE001 - report both
                msg += "\nCLEANUP INCOMPLETE: %s" % stop_exc
                self._say("cleanup incomplete: %s" % stop_exc)
            if isinstance(exc, ServerError):
                raise ServerError(self.redact(msg)) from None
            raise
        self.state["ready_after"] = round(time.monotonic() - t0, 2)
        self._save_state()
        self._say("neutron (%s%s) ready at %s in %.1fs; logs in %s" % (
            self.mode, ", backends of %s" % self.backend_workdir
            if self.backend_workdir else "", self.url,
            time.monotonic() - t0, self.logdir))
        return self

    def _check_no_leftovers(self) -> None:
        if not os.path.exists(self.state_file):
            return
        old = NeutronServer(self.workdir, quiet=True)
        old.load_state()
        live = {n: p for n, p in old.alive().items() if p}
        if live:
            raise ServerError("%s already runs processes %s; run 'stop "
                              "--workdir %s' first" % (
                                  self.workdir, ", ".join(
                                      "%s=%s" % (n, p[0]) for n, p in live.items()),
                                  self.workdir))
        # Also a private epmd left behind by a crashed run.
        epmd_port = old.state.get("ports", {}).get("epmd")
        if epmd_port and find_epmd(epmd_port):
            old.stop()

    # embedded ------------------------------------------------------------------

    def _init_sqlite(self, venv_bin: str) -> None:
        db = self.path("data", "neutron.sqlite")
        if os.path.exists(db):
            self._say("sqlite: reusing %s" % db)
            return
        t0 = time.monotonic()
        # One interpreter: build the schema from the models (the migrations
        # do not run on sqlite), then stamp it as being at the heads.
        code = (
            "import sys, sqlalchemy\n"
            "from neutron.db.migration.models import head\n"
            "engine = sqlalchemy.create_engine(sys.argv[1])\n"
            "head.get_metadata().create_all(engine)\n"
            "engine.dispose()\n"
        )
        try:
            self._run("sqlite schema", [os.path.join(venv_bin, "python"), "-c",
                                        code, "sqlite:///" + db],
                      env=self._neutron_env(), timeout=120)
            self._run("neutron-db-manage stamp heads",
                      [os.path.join(venv_bin, "neutron-db-manage")] +
                      self._config_args() + ["stamp", "heads"],
                      env=self._neutron_env(), timeout=120)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(db)
            raise
        self._say("sqlite schema created in %.1fs" % (time.monotonic() - t0))

    # real ----------------------------------------------------------------------

    def _start_real_backends(self, venv_bin: str) -> None:
        # oslo.db's mysql+pymysql:// needs PyMySQL, which neutron does not
        # depend on.
        if subprocess.run([os.path.join(venv_bin, "python"), "-c",
                           "import pymysql"], stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL).returncode != 0:
            raise ServerError("real mode needs PyMySQL in the venv: "
                              "%s/pip install PyMySQL" % venv_bin)
        for exe in (MARIADBD, RABBITMQ_SERVER, RABBITMQCTL):
            if not os.access(exe, os.X_OK):
                raise ServerError("%s is missing: apt-get install "
                                  "mariadb-server rabbitmq-server" % exe)
        ports = self.state["ports"]
        taken = {ports["api"]}
        for name in ("mariadb", "amqp", "dist", "epmd"):
            p = free_port()
            while p in taken:
                p = free_port()
            ports[name] = p
            taken.add(p)
        self.state["db_password"] = secrets.token_hex(16)
        self._secrets.add(self.state["db_password"])
        self._save_state()
        self.write_config()
        # RabbitMQ boots in ~3 s: let it boot while MariaDB starts and the
        # migrations run.
        t0 = time.monotonic()
        rabbit = self._spawn_rabbitmq()
        self._start_mariadb()
        self._run("neutron-db-manage upgrade heads",
                  [os.path.join(venv_bin, "neutron-db-manage")] +
                  self._config_args() + ["upgrade", "heads"],
                  env=self._neutron_env(), timeout=300)
        self._say("neutron database migrated (%.1fs since start)" %
                  (time.monotonic() - t0))
        self._wait_rabbitmq(rabbit)
        # Its own log file (the config's log_file is the API's).
        self._spawn("neutron-rpc-server",
                    [os.path.join(venv_bin, "neutron-rpc-server")] +
                    self._config_args() +
                    ["--log-file", self.path("log", "neutron-rpc-server.log")],
                    env=self._neutron_env(),
                    log_hint=self.path("log", "neutron-rpc-server.log"))
        self._rpc_t0 = time.monotonic()

    def _backends_of_first(self) -> dict:
        """The database and message queue of the first server, read from its
        state.json (with the database password); refuse unless they are
        running now."""
        first_dir = self.backend_workdir
        if first_dir == self.workdir:
            raise ServerError("--backend-workdir must be another server's "
                              "work directory, not %s itself" % self.workdir)
        first = NeutronServer(first_dir, quiet=True)
        st = first.load_state()
        ports = st.get("ports", {})
        if st.get("mode") != "real" or st.get("backend") or \
                not st.get("db_password") or \
                not {"mariadb", "amqp"} <= set(ports):
            raise ServerError("%s holds no real-mode server with its own "
                              "MariaDB and RabbitMQ (start one with --mode "
                              "real)" % first_dir)
        self._secrets.add(st["db_password"])
        alive = first.alive()
        down = [n for n in ("mariadb", "rabbitmq") if not alive.get(n)]
        down += ["port %s=%d" % (n, ports[n]) for n in ("mariadb", "amqp")
                 if not port_open(ports[n])]
        if down:
            raise ServerError("the backends of %s are not running (%s)" % (
                first_dir, ", ".join(down)))
        self._say("using the database (127.0.0.1:%d) and RabbitMQ "
                  "(127.0.0.1:%d) of %s" % (ports["mariadb"], ports["amqp"],
                                            first_dir))
        return {"workdir": first_dir, "mariadb": ports["mariadb"],
                "amqp": ports["amqp"], "db_password": st["db_password"]}

    # MariaDB

    def _mariadb_cnf(self) -> str:
        return self.path("etc", "mariadb.cnf")

    def _mariadb_socket(self) -> str:
        sock = self.path("run", "mariadb.sock")
        if len(sock) > MAX_SOCKET_PATH:
            # sun_path is 108 bytes: fall back to a short private directory.
            d = self.state.get("short_run_dir")
            if not d:
                d = tempfile.mkdtemp(prefix="nvc-")
                self.state["short_run_dir"] = d
                self._save_state()
            sock = os.path.join(d, "mariadb.sock")
        return sock

    def _start_mariadb(self) -> None:
        t0 = time.monotonic()
        port = self.state["ports"]["mariadb"]
        datadir = self.path("data", "mariadb")
        sock = self._mariadb_socket()
        self.state["mariadb_socket"] = sock
        cnf = {
            "mysqld": {
                "datadir": datadir,
                "socket": sock,
                "pid-file": self.path("run", "mariadbd.pid"),  # its own
                "port": port,
                "bind-address": "127.0.0.1",
                "user": "root",
                "skip-name-resolve": "1",
                "log-error": self.path("log", "mariadb.err"),
                "character-set-server": "utf8",
                "collation-server": "utf8_general_ci",
                "max_connections": 500,
                "innodb_buffer_pool_size": "128M",
                "innodb_flush_log_at_trx_commit": 2,
                "tmpdir": self.path("data", "tmp"),
            },
            "client": {"socket": sock, "user": "root"},
        }
        os.makedirs(self.path("data", "tmp"), exist_ok=True)
        _write_private(self._mariadb_cnf(), "\n".join(
            ["[%s]\n%s\n" % (s, "\n".join("%s=%s" % kv for kv in o.items()))
             for s, o in cnf.items()]))
        defaults = "--defaults-file=" + self._mariadb_cnf()
        if not os.path.isdir(os.path.join(datadir, "mysql")):
            shutil.rmtree(datadir, ignore_errors=True)
            self._run("mariadb-install-db",
                      ["mariadb-install-db", defaults,
                       "--auth-root-authentication-method=socket",
                       "--skip-test-db"], timeout=120)
        proc = self._spawn("mariadb", [MARIADBD, defaults],
                           logfile=self.path("log", "mariadb.out"),
                           log_hint=self.path("log", "mariadb.err"),
                           port=port)

        def ready():
            if proc.poll() is not None:
                raise ServerError("mariadbd exited with status %s:\n%s" % (
                    proc.returncode, self._tail(self.path("log", "mariadb.err"), 20)))
            return os.path.exists(sock) and port_open(port)

        if not wait_for(ready, min(60, self.timeout)):
            raise ServerError("mariadbd not ready after 60s:\n%s" %
                              self._tail(self.path("log", "mariadb.err"), 20))
        pw = self.state["db_password"]
        sql = (
            "CREATE DATABASE IF NOT EXISTS neutron CHARACTER SET utf8;\n"
            "CREATE USER IF NOT EXISTS 'neutron'@'127.0.0.1' IDENTIFIED BY '%s';\n"
            "ALTER USER 'neutron'@'127.0.0.1' IDENTIFIED BY '%s';\n"
            "GRANT ALL PRIVILEGES ON neutron.* TO 'neutron'@'127.0.0.1';\n"
            "FLUSH PRIVILEGES;\n" % (pw, pw))
        # The password goes over stdin, never on a command line.
        self._run("create database neutron", ["mariadb", defaults], input=sql,
                  timeout=60)
        self._say("mariadb ready on 127.0.0.1:%d in %.1fs" %
                  (port, time.monotonic() - t0))

    # RabbitMQ

    def _rabbit_env(self) -> dict:
        ports = self.state["ports"]
        base = self.path("data", "rabbitmq")
        etc = self.path("etc", "rabbitmq")
        loopback = "-kernel inet_dist_use_interface {127,0,0,1}"
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("RABBITMQ_", "ERL_"))}
        env.update({
            "HOME": base,  # .erlang.cookie
            "RABBITMQ_CONF_ENV_FILE": os.path.join(etc, "rabbitmq-env.conf"),
            "RABBITMQ_CONFIG_FILE": os.path.join(etc, "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": os.path.join(etc, "advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": os.path.join(etc, "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": os.path.join(base, "mnesia"),
            "RABBITMQ_PLUGINS_EXPAND_DIR": os.path.join(base, "plugins-expand"),
            "RABBITMQ_LOG_BASE": self.logdir,
            "RABBITMQ_LOGS": self.path("log", "rabbitmq.log"),
            # Not rabbitmq.pid: that one is ours (the process we started).
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

    def _spawn_rabbitmq(self) -> subprocess.Popen:
        env = self._rabbit_env()
        etc = self.path("etc", "rabbitmq")
        os.makedirs(etc, exist_ok=True)
        os.makedirs(env["HOME"], exist_ok=True)
        _write_private(env["RABBITMQ_CONF_ENV_FILE"], "# private node: see the environment\n")
        _write_private(env["RABBITMQ_CONFIG_FILE"], "")
        _write_private(env["RABBITMQ_ENABLED_PLUGINS_FILE"], "[].\n")
        return self._spawn("rabbitmq", [RABBITMQ_SERVER], env=env,
                           logfile=self.path("log", "rabbitmq.out"),
                           log_hint=self.path("log", "rabbitmq.log"),
                           port=self.state["ports"]["amqp"])

    def _amqp_ready(self) -> bool:
        """The broker answers the AMQP 0-9-1 protocol header."""
        port = self.state["ports"]["amqp"]
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"AMQP\x00\x00\x09\x01")
                data = s.recv(7)
                # method frame (type 1) on channel 0: connection.start
                return data[:3] == b"\x01\x00\x00"
        except OSError:
            return False

    def _wait_rabbitmq(self, proc: subprocess.Popen) -> None:
        t0 = time.monotonic()

        def ready():
            if proc.poll() is not None:
                raise ServerError("rabbitmq-server exited with status %s:\n%s\n%s" % (
                    proc.returncode, self._tail(self.path("log", "rabbitmq.out"), 15),
                    self._tail(self.path("log", "rabbitmq.log"), 15)))
            return self._amqp_ready()

        if not wait_for(ready, min(90, self.timeout), 0.2):
            raise ServerError("rabbitmq not ready after %ss:\n%s" % (
                min(90, self.timeout), self._tail(self.path("log", "rabbitmq.log"), 20)))
        epmd = find_epmd(self.state["ports"]["epmd"])
        if epmd:
            # epmd daemonizes itself: record it so that stop can check it.
            self._record("epmd", epmd[0], port=self.state["ports"]["epmd"])
        self._say("rabbitmq ready on 127.0.0.1:%d (%.1fs more)" % (
            self.state["ports"]["amqp"], time.monotonic() - t0))

    def _wait_rpc_server(self) -> None:
        """neutron-rpc-server is up once it consumes from its RPC topics."""
        svc = next(s for s in self.services() if s["name"] == "neutron-rpc-server")
        logf = self.path("log", "neutron-rpc-server.log")
        deadline = time.monotonic() + min(60, self.timeout)
        # neutron.service logs these (DEBUG, which our neutron.conf enables)
        # once each worker has created its RPC consumers.
        needed = ("RpcWorker start finished", "RpcReportsWorker start finished")
        while True:
            if not self._ours(svc):
                raise ServerError("neutron-rpc-server exited:\n%s" %
                                  self._log_report(logf, svc.get("log")))
            text = self._since(logf)
            if any(LEVEL_RE.match(r).group(1) == "CRITICAL"
                   for r in error_records(text, limit=50)):
                raise ServerError("neutron-rpc-server failed to start:\n%s" %
                                  self._log_report(logf))
            if all(n in text for n in needed):
                self._say("neutron-rpc-server consuming from RabbitMQ "
                          "after %.1fs" % (time.monotonic() - self._rpc_t0))
                return
            if time.monotonic() > deadline:
                raise ServerError("neutron-rpc-server not connected to RabbitMQ "
                                  "after 60s:\n%s" % self._log_report(logf))
            time.sleep(0.2)

    # API -----------------------------------------------------------------------

    def _start_api(self, venv_bin: str) -> None:
        t0 = time.monotonic()
        port = self.state["ports"]["api"]
        venv = os.path.dirname(venv_bin)
        cmd = [
            os.path.join(venv_bin, "uwsgi"),
            "--http-socket", "127.0.0.1:%d" % port,
            "--module", "neutron.wsgi.api:application",
            "--virtualenv", venv,
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
        proc = self._spawn("uwsgi", cmd, env=self._neutron_env(),
                           logfile=self.path("log", "uwsgi.out"),
                           log_hint=self.path("log", "uwsgi.log"), port=port)
        url = self.url + "/v2.0/networks"
        deadline = time.monotonic() + self.timeout
        last = "no answer"
        while True:
            if proc.poll() is not None:
                raise ServerError("uWSGI exited with status %s before the API "
                                  "answered:\n%s" % (proc.returncode,
                                                     self._api_failure_report()))
            problem = self._api_fatal()
            if problem:
                raise ServerError("neutron API failed to start:\n%s" %
                                  self._api_failure_report())
            try:
                code = http_get(url)
                if code == 200:
                    break
                last = "HTTP %d" % code
            except OSError as exc:  # URLError included
                last = str(getattr(exc, "reason", exc))
            if time.monotonic() > deadline:
                raise ServerError("API not ready after %ss (GET %s: %s)\n%s" % (
                    self.timeout, url, last, self._api_failure_report()))
            time.sleep(0.2)
        self._say("neutron API answered on %s after %.1fs" % (
            self.url, time.monotonic() - t0))

    def _api_fatal(self) -> str | None:
        """A fatal start-up error logged by this run (the app cannot load)."""
        for rec in error_records(self._since(self.api_log), limit=50):
            if LEVEL_RE.match(rec).group(1) == "CRITICAL":
                return rec.splitlines()[0]
        m = re.search(r"^.*(unable to load app|no app loaded).*$",
                      self._since(self.path("log", "uwsgi.log")), re.M)
        return m.group(0) if m else None

    def _since(self, path: str) -> str:
        """What this run wrote to a log (logs are appended across runs)."""
        return read_log(path, self._offsets.get(path, 0))

    def _tail(self, path: str, lines: int = 20) -> str:
        return tail(path, lines, self._offsets.get(path, 0))

    def _note_log_offsets(self) -> None:
        self._offsets = {}
        with contextlib.suppress(OSError):
            for name in os.listdir(self.logdir):
                p = os.path.join(self.logdir, name)
                with contextlib.suppress(OSError):
                    self._offsets[p] = os.path.getsize(p)

    def _log_report(self, *paths: str | None, lines: int = 15) -> str:
        parts = []
        for p in paths:
            if not p:
                continue
            errs = error_records(self._since(p))
            if errs:
                parts.append("--- errors in %s ---\n%s" % (p, "\n".join(errs)))
            else:
                parts.append("--- last lines of %s ---\n%s" % (p, self._tail(p, lines)))
        return self.redact("\n".join(parts))

    def _api_failure_report(self) -> str:
        report = self._log_report(self.api_log)
        uw = self.path("log", "uwsgi.log")
        report += "\n--- last lines of %s ---\n%s" % (uw, self.redact(self._tail(uw, 8)))
        return report

    # -- stop -------------------------------------------------------------------

    def stop(self) -> None:
        """Stop every recorded process, newest kind first; idempotent.

        A server started with ``backend_of`` recorded its uWSGI only: the
        shared MariaDB and RabbitMQ stay up for the first server.
        Raises ServerError naming whatever is still running afterwards.
        """
        t0 = time.monotonic()
        if not self.state:
            self.load_state()
        if not self.state:
            return
        for s in ("db_password",):
            if self.state.get(s):
                self._secrets.add(self.state[s])
        services = self.services()
        rank = {n: i for i, n in enumerate(STOP_ORDER)}
        # Known kinds in STOP_ORDER; within a kind, newest first.
        ordered = sorted(enumerate(services),
                         key=lambda t: (rank.get(t[1]["name"], -1), -t[0]))
        problems = []
        for _, svc in ordered:
            # Remember the whole tree now: children re-parented to init when
            # their leader dies must still be found (and checked) later.
            self._snapshots[svc["pid"]] = process_tree(
                [svc["pid"]] if self._ours(svc) else [], svc.get("pgid"))
        timings = []
        for _, svc in ordered:
            t1 = time.monotonic()
            try:
                stopper = getattr(self, "_stop_" + svc["name"].replace("-", "_"),
                                  self._stop_generic)
                stopper(svc)
            except Exception as exc:  # noqa: BLE001 - go on with the others
                problems.append("%s: %s" % (svc["name"], exc))
            timings.append("%s %.1fs" % (svc["name"], time.monotonic() - t1))
        # A private epmd that was not recorded (start failed early).
        epmd_port = self.state.get("ports", {}).get("epmd")
        if epmd_port:
            self._stop_epmd({"name": "epmd", "pid": None, "port": epmd_port})
        self._reap()
        left = {n: p for n, p in self.alive().items() if p}
        ports = self.state.get("ports", {})
        busy = [n for n, p in ports.items()
                if n != "epmd" and self._port_was_ours(n) and port_open(p)]
        if epmd_port and find_epmd(epmd_port):
            left["epmd"] = find_epmd(epmd_port)
        if left or busy:
            msg = "still running after stop: %s" % ", ".join(
                ["%s (pids %s)" % (n, " ".join(map(str, p))) for n, p in left.items()] +
                ["port %s=%d open" % (n, ports[n]) for n in busy])
            problems.append(msg)
        if problems:
            raise ServerError("; ".join(problems))
        # Nothing left: forget the PIDs so that a later stop is a no-op.
        for svc in services:
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(self.rundir, svc["name"] + ".pid"))
        self.state["services"] = []
        self.state["stopped_at"] = time.time()
        self._save_state()
        if self.state.get("short_run_dir"):
            shutil.rmtree(self.state["short_run_dir"], ignore_errors=True)
        if services:
            self._say("stopped in %.1fs (%s)" % (
                time.monotonic() - t0, ", ".join(timings)))

    def _port_was_ours(self, name: str) -> bool:
        """Only check ports of services that this run actually started."""
        owners = {"api": "uwsgi", "mariadb": "mariadb", "amqp": "rabbitmq",
                  "dist": "rabbitmq"}
        return owners.get(name) in {s["name"] for s in self.services()}

    def _signal_all(self, svc: dict, sig: int) -> None:
        for pid in self._svc_pids(svc):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)

    def _wait_gone(self, svc: dict, timeout: float) -> bool:
        def gone():
            self._reap()
            return not self._svc_pids(svc)
        return wait_for(gone, timeout, 0.1)

    def _stop_generic(self, svc: dict, grace: float | None = None,
                      quiet: bool = False) -> None:
        """SIGTERM the leader, then SIGKILL the whole group after grace."""
        grace = self.stop_grace if grace is None else grace
        if not self._svc_pids(svc):
            return
        if self._ours(svc):
            with contextlib.suppress(ProcessLookupError):
                os.kill(svc["pid"], signal.SIGTERM)
        else:  # leader gone: its left-overs get the SIGTERM
            self._signal_all(svc, signal.SIGTERM)
        if self._wait_gone(svc, grace):
            return
        if not quiet:
            self._say("%s did not stop within %ss: SIGKILL" % (
                svc["name"], grace))
        self._signal_all(svc, signal.SIGKILL)
        if not self._wait_gone(svc, 10):
            raise ServerError("%s: processes %s survive SIGKILL" % (
                svc["name"], self._svc_pids(svc)))

    def _stop_uwsgi(self, svc: dict) -> None:
        self._stop_generic(svc)
        # Workers in the group left behind by a SIGKILLed master.
        self._signal_all(svc, signal.SIGKILL)
        self._wait_gone(svc, 5)

    def _stop_neutron_rpc_server(self, svc: dict) -> None:
        # A graceful stop waits several seconds per RPC server for
        # oslo.messaging's consumers (measured 1-9 s); it has no request to
        # finish that matters here, and RabbitMQ goes next anyway.
        self._stop_generic(svc, grace=min(self.stop_grace, 5), quiet=True)
        self._signal_all(svc, signal.SIGKILL)
        self._wait_gone(svc, 5)

    def _stop_rabbitmq(self, svc: dict) -> None:
        if self._ours(svc) and "ports" in self.state:
            env = self._rabbit_env()
            with contextlib.suppress(Exception):
                subprocess.run([RABBITMQCTL, "shutdown", "--timeout", "30"],
                               env=env, stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, timeout=40)
            self._wait_gone(svc, 10)
        self._stop_generic(svc)
        self._signal_all(svc, signal.SIGKILL)  # erl_child_setup & co
        self._wait_gone(svc, 5)

    def _stop_epmd(self, svc: dict) -> None:
        port = svc.get("port") or self.state.get("ports", {}).get("epmd")
        if not port or not find_epmd(port):
            return
        env = self._rabbit_env() if "ports" in self.state else dict(os.environ)
        env["ERL_EPMD_PORT"] = str(port)
        with contextlib.suppress(Exception):
            subprocess.run(["epmd", "-kill"], env=env, stdin=subprocess.DEVNULL,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           timeout=10)
        if wait_for(lambda: not find_epmd(port), 5):
            return
        for pid in find_epmd(port):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if not wait_for(lambda: not find_epmd(port), 5):
            raise ServerError("epmd on port %d survives SIGKILL" % port)

    def _stop_mariadb(self, svc: dict) -> None:
        if self._ours(svc) and os.path.exists(self._mariadb_cnf()):
            with contextlib.suppress(Exception):
                subprocess.run(["mariadb-admin",
                                "--defaults-file=" + self._mariadb_cnf(),
                                "shutdown"], stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, timeout=60)
            self._wait_gone(svc, 30)
        self._stop_generic(svc, grace=30)

    # -- status -----------------------------------------------------------------

    def status(self) -> dict:
        self.load_state()
        alive = self.alive()
        api = None
        if self.url and alive.get("uwsgi"):
            try:
                api = http_get(self.url + "/v2.0/networks")
            except OSError as exc:
                api = str(getattr(exc, "reason", exc))
        return {"mode": self.state.get("mode"), "url": self.url,
                "backend_of": self.state.get("backend", {}).get("workdir"),
                "services": {s["name"]: {"pid": s["pid"],
                                         "alive": bool(alive.get(s["name"]))}
                             for s in self.services()},
                "api": api}

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        return False


# -- command line ---------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="neutron_server.py",
        description="Start/stop a Neutron API with the vcenter ML2 driver on "
                    "127.0.0.1.")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("start", help="write configs, start, wait until ready")
    s.add_argument("--workdir", required=True)
    s.add_argument("--mode", choices=MODES, default=None,
                   help="default: embedded (real with --backend-workdir)")
    s.add_argument("--backend-workdir", metavar="DIR",
                   help="only an API, on the MariaDB and RabbitMQ of the "
                        "real-mode server running from DIR (implies --mode "
                        "real; stop this one first)")
    s.add_argument("--vcenter-host", default="127.0.0.1")
    s.add_argument("--vcenter-port", type=int, required=True)
    s.add_argument("--vcenter-user", default="user")
    s.add_argument("--vcenter-password", default=None,
                   help="default: $VCENTER_PASSWORD or 'pass' (never printed)")
    tls = s.add_mutually_exclusive_group()
    tls.add_argument("--insecure", action="store_true",
                     help="do not verify vCenter's certificate (the default "
                          "without --ca-file)")
    tls.add_argument("--ca-file", help="verify vCenter's certificate with this CA")
    s.add_argument("--switch-mappings", default=DEFAULT_SWITCH_MAPPINGS)
    s.add_argument("--compute-hosts", default=DEFAULT_COMPUTE_HOSTS)
    s.add_argument("--port", type=int, default=9696,
                   help="API port on 127.0.0.1 (0: any free port)")
    s.add_argument("--workers", type=int, default=1, help="uWSGI processes")
    s.add_argument("--extra-ml2-opt", action="append", default=[],
                   metavar="KEY=VALUE", help="more [ml2_vcenter] options "
                   "(repeatable; overrides the defaults, e.g. resync_interval=0)")
    s.add_argument("--timeout", type=float, default=120,
                   help="seconds to wait for the API to answer")
    s.add_argument("--fresh", action="store_true",
                   help="wipe data/, log/ and run/ of the workdir first")

    for name, hlp in (("stop", "stop the processes recorded in DIR/run"),
                      ("status", "show the recorded processes")):
        x = sub.add_parser(name, help=hlp)
        x.add_argument("--workdir", required=True)
    return p


def _terminate(signum, frame):
    # Turn SIGTERM/SIGHUP (a CI timeout, a closed terminal) into an exception
    # so that a start in progress stops what it already started.
    raise KeyboardInterrupt("signal %d" % signum)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _terminate)
    if args.command == "start":
        password = args.vcenter_password
        if password is None:
            password = os.environ.get("VCENTER_PASSWORD", "pass")
        mode = args.mode or ("real" if args.backend_workdir else "embedded")
        try:
            srv = NeutronServer(
                args.workdir, mode, vcenter_host=args.vcenter_host,
                vcenter_port=args.vcenter_port, vcenter_user=args.vcenter_user,
                vcenter_password=password,
                insecure=True if args.insecure else None, ca_file=args.ca_file,
                switch_mappings=args.switch_mappings,
                compute_hosts=args.compute_hosts, port=args.port,
                workers=args.workers, extra_ml2_opts=args.extra_ml2_opt,
                fresh=args.fresh, timeout=args.timeout,
                backend_of=args.backend_workdir)
            srv.start()
        except ServerError as exc:
            print("neutron_server: %s" % exc, file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            return 130
        print("NEUTRON_URL=%s" % srv.url, flush=True)
        return 0

    srv = NeutronServer(args.workdir)
    if args.command == "stop":
        if not os.path.exists(srv.state_file):
            print("neutron_server: nothing recorded in %s" % srv.rundir,
                  file=sys.stderr)
            return 0
        try:
            srv.stop()
        except ServerError as exc:
            print("neutron_server: stop: %s" % exc, file=sys.stderr)
            return 1
        return 0

    st = srv.status()
    print(json.dumps(st, indent=2))
    states = [v["alive"] for v in st["services"].values()]
    if states and all(states) and st["api"] == 200:
        return 0
    return 3 if not any(states) else 1


if __name__ == "__main__":
    sys.exit(main())

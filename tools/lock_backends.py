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

"""A private Redis, etcd or MariaDB on loopback: the driver's locks over
tooz.

MySQL's named locks (``mysql://``, on the servers' own MariaDB, which
neutron_server.py starts) are per database node: Galera does not replicate
them, so a deployment on Galera puts its locks in Redis or etcd.  The
end-to-end race (tests/e2e/test_race.py) runs over each::

    from lock_backends import start_backend
    backend = start_backend("redis", workdir)
    backend.url            # redis://:PASSWORD@127.0.0.1:PORT, tooz's URL
    backend.lock_names()   # the tooz locks taken on it so far
    backend.stop()

Started the way neutron_server.py starts MariaDB and RabbitMQ: the Debian
package's binary (a clear error naming the package when it is missing), its
data under ``workdir``, free ports on 127.0.0.1 only, its own session,
waited for until it answers, stopped by PID (SIGTERM, then SIGKILL).
The Redis password is in a 0600 file, never on a command line.

``start_backend("mariadb", workdir)`` is a MariaDB of its own for the tests of
the locks themselves (tests/unit/test_leadership.py: a holder whose host stops
answering), without a Neutron server around it.
"""

from __future__ import annotations

import atexit
import base64
import http.client
import json
import os
import secrets
import socket
import subprocess
import time

from neutron_server import Proc, ServerError, _write_private, free_port, \
    port_open, read_from, spawn, wait_for

# tooz's names: "networking-vcenter-full-pass" is the key
# "_tooz_networking-vcenter-full-pass_lock" in Redis
# (tooz/drivers/redis.py RedisLock), "/tooz/locksnetworking-vcenter-full-pass"
# in etcd (tooz/drivers/etcd3gw.py Etcd3Lock.LOCK_PREFIX, no separator).
REDIS_LOCK = ("_tooz_", "_lock")
ETCD_LOCK_PREFIX = "/tooz/locks"


class LockBackend:
    """One server of a tooz backend, everything under ``workdir``: ``etc/``
    its configuration, ``data/`` its store, ``log/`` its output."""

    kind = ""
    package = ""
    binary = ""
    ports: tuple[str, ...] = ()

    def __init__(self, workdir: str, timeout: float = 30.0,
                 stop_grace: float = 10.0):
        self.workdir = os.path.abspath(workdir)
        self.timeout = timeout
        self.stop_grace = stop_grace
        self.port: dict[str, int] = {}
        self.proc: Proc | None = None
        self.started_in = 0.0       # seconds until it answered

    @property
    def url(self) -> str:
        """The URL for ``coordination_backend_url``."""
        raise NotImplementedError

    @property
    def client_port(self) -> int:
        """The port in :attr:`url` (the first of :attr:`ports`)."""
        return self.port[self.ports[0]]

    @property
    def log(self) -> str:
        return os.path.join(self.workdir, "log", self.kind + ".out")

    def path(self, *parts: str) -> str:
        return os.path.join(self.workdir, *parts)

    def start(self) -> LockBackend:
        if self.proc is not None:
            raise ServerError(f"{self.kind}: already started")
        if not os.access(self.binary, os.X_OK):
            raise ServerError(f"{self.binary} is missing: apt-get install "
                              f"{self.package}")
        for d in ("etc", "log", "data"):
            os.makedirs(self.path(d), exist_ok=True)
        while len(set(self.port.values())) < len(self.ports):
            self.port = {name: free_port() for name in self.ports}
        t0 = time.monotonic()
        self.proc = spawn(self.kind, self._command(), self.log,
                          cwd=self.workdir)
        atexit.register(self.stop)

        def ready():
            if not self.proc.running():
                raise ServerError(f"{self.binary} exited:\n{self._tail()}")
            return self._answers()

        try:
            if not wait_for(ready, self.timeout, 0.05):
                raise ServerError(f"{self.kind} not ready after "
                                  f"{self.timeout:g}s:\n{self._tail()}")
        except BaseException:
            self.stop()
            raise
        self.started_in = time.monotonic() - t0
        return self

    def stop(self) -> None:
        """Stop it by PID; idempotent.  ServerError if anything of it is
        left running or listening."""
        atexit.unregister(self.stop)
        if self.proc is None:
            return
        self.proc.stop(self.stop_grace)
        left = [p.pid for p in self.proc.members()]
        ports = [p for p in self.port.values() if port_open(p)]
        if left or ports:
            raise ServerError(f"{self.kind} still running after stop: pids "
                              f"{left}, ports {ports} open")
        self.proc = None

    def running(self) -> bool:
        return self.proc is not None and self.proc.running()

    def lock_names(self) -> set[str]:
        """Every tooz lock name taken on this server since its start."""
        raise NotImplementedError

    def _tail(self, lines: int = 15) -> str:
        return "\n".join(read_from(self.log).splitlines()[-lines:])

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _answers(self) -> bool:
        raise NotImplementedError


class RedisServer(LockBackend):
    """redis-server with a password, no persistence, and every command in
    its slow log (``slowlog-log-slower-than 0``): :meth:`lock_names` reads
    there the keys of the locks taken, since tooz deletes them when
    released."""

    kind = "redis"
    package = "redis-server"
    binary = "/usr/bin/redis-server"
    ports = ("redis",)

    def __init__(self, workdir: str, **kw):
        super().__init__(workdir, **kw)
        self.password = secrets.token_hex(16)

    @property
    def url(self) -> str:
        return f"redis://:{self.password}@127.0.0.1:{self.port['redis']}"

    def _command(self) -> list[str]:
        conf = self.path("etc", "redis.conf")
        _write_private(conf, "".join(f"{k} {v}\n" for k, v in {
            "bind": "127.0.0.1", "port": self.port["redis"],
            "daemonize": "no", "logfile": '""', "dir": self.path("data"),
            "save": '""', "appendonly": "no",
            "requirepass": self.password,
            "slowlog-log-slower-than": 0, "slowlog-max-len": 1000000,
        }.items()))
        return [self.binary, conf]

    def command(self, *args: str):
        """One command's reply, after AUTH (RESP2, on a connection of its
        own: the standard library suffices for what the tests ask)."""
        with socket.create_connection(("127.0.0.1", self.port["redis"]),
                                      timeout=5) as s:
            f = s.makefile("rb")
            for cmd in (("AUTH", self.password), args):
                s.sendall(b"*%d\r\n" % len(cmd) + b"".join(
                    b"$%d\r\n%s\r\n" % (len(a), a)
                    for a in (str(a).encode() for a in cmd)))
                reply = _resp(f)
            return reply

    def _answers(self) -> bool:
        try:
            return self.command("PING") == "PONG"
        except OSError:
            return False

    def lock_names(self) -> set[str]:
        head, tail = REDIS_LOCK
        names = set()
        # An entry: id, time, duration, [command and arguments], ...
        for entry in self.command("SLOWLOG", "GET", "-1"):
            cmd = entry[3]
            if len(cmd) > 1 and cmd[0].upper() == "SET" and \
                    cmd[1].startswith(head) and cmd[1].endswith(tail) and \
                    "NX" in (a.upper() for a in cmd[2:]):
                names.add(cmd[1][len(head):-len(tail)])
        return names


def _resp(f) -> object:
    """One RESP2 reply read from ``f``."""
    line = f.readline()
    if not line.endswith(b"\r\n"):
        raise OSError("redis: connection closed")
    kind, rest = line[:1], line[1:-2].decode(errors="replace")
    if kind == b"+":
        return rest
    if kind == b"-":
        raise ServerError(f"redis: {rest}")
    if kind == b":":
        return int(rest)
    if kind == b"$":
        return None if int(rest) < 0 else \
            f.read(int(rest) + 2)[:-2].decode(errors="replace")
    if kind == b"*":
        return None if int(rest) < 0 else [_resp(f) for _ in range(int(rest))]
    raise OSError(f"redis: unexpected reply {line[:40]!r}")


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


class EtcdServer(LockBackend):
    """A one-member etcd cluster, reached by tooz's etcd3gw driver through
    etcd's JSON gateway (``/v3/...``).  No auth: Debian's etcd has none on
    by default and tooz's etcd3gw driver takes no password."""

    kind = "etcd"
    package = "etcd-server"
    binary = "/usr/bin/etcd"
    ports = ("client", "peer")

    @property
    def url(self) -> str:
        return f"etcd3+http://127.0.0.1:{self.port['client']}"

    def _command(self) -> list[str]:
        client = f"http://127.0.0.1:{self.port['client']}"
        peer = f"http://127.0.0.1:{self.port['peer']}"
        return [self.binary, "--name", "nvc", "--data-dir",
                self.path("data", "etcd"),
                "--listen-client-urls", client,
                "--advertise-client-urls", client,
                "--listen-peer-urls", peer,
                "--initial-advertise-peer-urls", peer,
                "--initial-cluster", f"nvc={peer}",
                "--initial-cluster-state", "new"]

    def call(self, path: str, body: dict) -> dict:
        """POST to etcd's JSON gateway."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port["client"],
                                          timeout=10)
        try:
            conn.request("POST", path, json.dumps(body),
                         {"Content-Type": "application/json"})
            resp = conn.getresponse()
            text = resp.read()
            if resp.status != 200:
                raise ServerError(f"etcd {path}: HTTP {resp.status} "
                                  f"{text[:200]!r}")
            return json.loads(text)
        finally:
            conn.close()

    def _answers(self) -> bool:
        try:
            return self.call("/v3/kv/range", {"key": _b64("health")}) \
                .get("header", {}).get("revision") is not None
        except (OSError, ServerError, ValueError):
            return False

    def lock_names(self) -> set[str]:
        """From the store's history (etcd keeps every revision until it
        is compacted, never here): a watch of every key from revision 1,
        read up to the revision current now."""
        now = int(self.call("/v3/kv/range", {"key": _b64("x")})
                  ["header"]["revision"])
        names: set[str] = set()
        if now <= 1:
            return names
        conn = http.client.HTTPConnection("127.0.0.1", self.port["client"],
                                          timeout=10)
        try:
            # key and range_end "\0": every key.
            conn.request("POST", "/v3/watch", json.dumps({"create_request": {
                "key": _b64("\0"), "range_end": _b64("\0"),
                "start_revision": "1"}}),
                {"Content-Type": "application/json"})
            resp = conn.getresponse()
            seen = 1
            while seen < now:
                line = resp.readline()
                if not line:
                    raise ServerError(f"etcd watch ended at revision {seen} "
                                      f"of {now}")
                for ev in json.loads(line).get("result", {}).get("events",
                                                                  ()):
                    key = base64.b64decode(ev["kv"]["key"]).decode()
                    seen = max(seen, int(ev["kv"]["mod_revision"]))
                    if ev.get("type", "PUT") == "PUT" and \
                            key.startswith(ETCD_LOCK_PREFIX):
                        names.add(key[len(ETCD_LOCK_PREFIX):])
        finally:
            conn.close()
        return names


class MariaDBServer(LockBackend):
    """mariadbd with a data directory of its own (made at the first start),
    root over its socket only, and a user ``tooz`` with a password over TCP
    for tooz's ``mysql://`` driver."""

    kind = "mariadb"
    package = "mariadb-server"
    binary = "/usr/sbin/mariadbd"
    ports = ("mysql",)

    def __init__(self, workdir: str, **kw):
        super().__init__(workdir, **kw)
        self.password = secrets.token_hex(16)

    @property
    def url(self) -> str:
        return f"mysql://tooz:{self.password}@127.0.0.1:{self.port['mysql']}" \
            "/tooz"

    @property
    def _defaults(self) -> str:
        return "--defaults-file=" + self.path("etc", "my.cnf")

    def _sql(self, text: str) -> None:
        """SQL as root over the socket (the password goes over stdin)."""
        res = subprocess.run(["mariadb", self._defaults], input=text,
                             capture_output=True, text=True, timeout=60)
        if res.returncode != 0:
            raise ServerError(f"mariadb: {res.stderr.strip()[-500:]}")

    def _command(self) -> list[str]:
        sock = self.path("data", "mysqld.sock")
        _write_private(self.path("etc", "my.cnf"), "[mysqld]\n" + "".join(
            f"{k}={v}\n" for k, v in {
                "datadir": self.path("data", "db"), "socket": sock,
                "port": self.port["mysql"], "bind-address": "127.0.0.1",
                "pid-file": self.path("data", "mariadbd.pid"),
                "user": "root", "skip-name-resolve": 1,
                "log-error": self.path("log", "mariadb.err"),
                "tmpdir": self.path("data"),
            }.items()) + f"[client]\nsocket={sock}\nuser=root\n")
        if not os.path.isdir(self.path("data", "db", "mysql")):
            res = subprocess.run(
                ["mariadb-install-db", self._defaults,
                 "--auth-root-authentication-method=socket",
                 "--skip-test-db"], capture_output=True, text=True,
                timeout=120)
            if res.returncode != 0:
                raise ServerError(f"mariadb-install-db: "
                                  f"{res.stdout[-500:]}{res.stderr[-500:]}")
        return [self.binary, self._defaults]

    def _answers(self) -> bool:
        return os.path.exists(self.path("data", "mysqld.sock")) and \
            port_open(self.port["mysql"])

    def start(self) -> LockBackend:
        super().start()
        try:
            self._sql("CREATE DATABASE IF NOT EXISTS tooz;\n"
                      f"CREATE USER IF NOT EXISTS 'tooz'@'127.0.0.1' "
                      f"IDENTIFIED BY '{self.password}';\n"
                      "GRANT ALL ON tooz.* TO 'tooz'@'127.0.0.1';\n")
        except BaseException:
            self.stop()
            raise
        return self


BACKENDS = {"redis": RedisServer, "etcd": EtcdServer,
            "mariadb": MariaDBServer}


def start_backend(kind: str, workdir: str, **kw) -> LockBackend:
    """A running server of ``kind`` (redis, etcd)."""
    if kind not in BACKENDS:
        raise ServerError(f"no lock backend {kind!r}: one of "
                          f"{', '.join(BACKENDS)}")
    return BACKENDS[kind](workdir, **kw).start()

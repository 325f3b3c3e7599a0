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

"""Start and stop VMware's vCenter simulator (govmomi vcsim) for tests and scripts.

The simulator binary is built by ``tools/vcsim/build.sh`` (govmomi's simulator
from Debian plus the project's patches); see tools/vcsim/main.go for its flags.
Used by the tests (through tests/fixtures/vcsim.py), the demo and the
benchmark; it needs nothing but the standard library (pyVmomi for
``connect()``)::

    sys.path.insert(0, "tools")
    from vcsim_launcher import Vcsim

    with Vcsim(vms=2) as sim:
        si = sim.connect()
        print(sim.url, si.content.about.fullName)

Environment:
    VCSIM_BIN        use this simulator binary, never build one
    VCSIM_BUILD_DIR  build directory for build.sh (default tools/vcsim/build)
"""

import atexit
import fcntl
import os
import selectors
import signal
import subprocess
import tempfile
import threading
import time
import urllib.parse

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD_SH = os.path.join(REPO, "tools", "vcsim", "build.sh")

USERNAME = "user"
PASSWORD = "pass"


class VcsimError(RuntimeError):
    """The simulator could not be built or started."""


def _build_dir():
    return os.environ.get("VCSIM_BUILD_DIR") or os.path.join(REPO, "tools", "vcsim", "build")


def ensure_binary():
    """Return the simulator binary's path, building it first if needed.

    With VCSIM_BIN set, that binary is used as is. Otherwise build.sh runs (it
    returns at once when the binary is newer than its sources), under a lock
    so that parallel test processes do not build at the same time.
    """
    explicit = os.environ.get("VCSIM_BIN")
    if explicit:
        if not os.access(explicit, os.X_OK):
            raise VcsimError("VCSIM_BIN=%s is not an executable file" % explicit)
        return explicit

    build = _build_dir()
    binary = os.path.join(build, "vcsim")
    os.makedirs(build, exist_ok=True)
    with open(os.path.join(build, ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        proc = subprocess.run(
            ["bash", BUILD_SH],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            universal_newlines=True,
            env=dict(os.environ, VCSIM_BUILD_DIR=build),
        )
    if proc.returncode != 0 or not os.access(binary, os.X_OK):
        raise VcsimError("%s failed (exit %d):\n%s" % (BUILD_SH, proc.returncode, proc.stdout[-4000:]))
    return binary


class Vcsim:
    """One simulator process.

    model: "vpx" (vCenter: datacenter DC0, clusters DC0_C<n> of hosts DC0_C<n>_H<m>,
        distributed switch DVS0 with port group DC0_DVPG0) or "esx" (one ESXi host).
    clusters, hosts: clusters, and hosts per cluster (vpx only).
    vms: VMs per cluster (vpx) or per host (esx); they are connected to DC0_DVPG0.
    idle_timeout: seconds (or a Go duration string such as "15s") after which an
        idle session expires; expiry lands between T and 2T. None: never.
    extra_args: more flags for the launcher, e.g. ("-extra-vswitch", "vSwitch1").
    wsdl_dir: a directory whose files are served as /sdk/<name>.
    log_path: the simulator's log (stderr); default: a temporary file, removed by
        stop() unless the start failed.
    """

    def __init__(self, model="vpx", clusters=2, hosts=3, vms=0, idle_timeout=None,
                 extra_args=(), wsdl_dir=None, log_path=None):
        self.model = model
        self.clusters = clusters
        self.hosts = hosts
        self.vms = vms
        self.idle_timeout = idle_timeout
        self.extra_args = tuple(extra_args)
        self.wsdl_dir = wsdl_dir
        self.log_path = log_path
        self._own_log = log_path is None

        self.url = None
        self.host = None
        self.port = None
        self.username = USERNAME
        self.password = PASSWORD
        self.proc = None
        self.returncode = None
        self._log = None
        self._drain = None

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    def command(self, binary):
        cmd = [binary, "-model", self.model, "-listen", "127.0.0.1:0", "-vm", str(self.vms)]
        if self.model == "vpx":
            cmd += ["-cluster", str(self.clusters), "-host", str(self.hosts)]
        if self.idle_timeout is not None:
            t = self.idle_timeout
            cmd += ["-idle-timeout", t if isinstance(t, str) else "%gs" % t]
        if self.wsdl_dir:
            cmd += ["-wsdl-dir", str(self.wsdl_dir)]
        return cmd + [str(a) for a in self.extra_args]

    def start(self, timeout=30):
        """Start the simulator and wait for its SDK_URL line; return self."""
        if self.proc is not None:
            raise VcsimError("simulator already started (pid %d)" % self.proc.pid)
        cmd = self.command(ensure_binary())

        if self._own_log:
            fd, self.log_path = tempfile.mkstemp(prefix="vcsim-", suffix=".log")
            os.close(fd)
        self._log = open(self.log_path, "ab")
        self._log.write(("$ %s\n" % " ".join(cmd)).encode())
        self._log.flush()

        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self._log,
            start_new_session=True,  # a Ctrl-C meant for the test runner must not reach it
        )
        atexit.register(self.stop)
        try:
            line = self._read_sdk_url(timeout)
        except BaseException as exc:
            self._stop(keep_log=True)
            if isinstance(exc, VcsimError):
                raise VcsimError("%s\n--- %s (last lines) ---\n%s"
                                 % (exc, self.log_path, self.log_tail())) from None
            raise

        self.url = line
        u = urllib.parse.urlsplit(line)
        self.host, self.port = u.hostname, u.port

        # Anything else the process writes on stdout goes to the log, so that a
        # full pipe can never block it.
        self._drain = threading.Thread(target=self._drain_stdout, daemon=True)
        self._drain.start()
        return self

    def _read_sdk_url(self, timeout):
        deadline = time.monotonic() + timeout
        buf = b""
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            while b"\n" not in buf:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise VcsimError("simulator printed no SDK_URL line within %ss" % timeout)
                if not sel.select(min(left, 0.2)):
                    if self.proc.poll() is not None:
                        raise VcsimError("simulator exited with status %s before it was ready"
                                         % self.proc.returncode)
                    continue
                chunk = os.read(self.proc.stdout.fileno(), 4096)
                if not chunk:
                    self.proc.wait(timeout=5)
                    raise VcsimError("simulator exited with status %s before it was ready"
                                     % self.proc.returncode)
                buf += chunk
        first, _, rest = buf.partition(b"\n")
        if rest:
            self._log.write(rest)
        line = first.decode(errors="replace").strip()
        if not line.startswith("SDK_URL="):
            raise VcsimError("unexpected first line from the simulator: %r" % line)
        return line[len("SDK_URL="):]

    def _drain_stdout(self):
        try:
            for chunk in iter(lambda: os.read(self.proc.stdout.fileno(), 4096), b""):
                self._log.write(chunk)
        except (OSError, ValueError, AttributeError):
            pass  # closed by stop()

    def log_tail(self, lines=40):
        """The last lines of the simulator's log, as text."""
        if not self.log_path or not os.path.exists(self.log_path):
            return ""
        with open(self.log_path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 64 * 1024))
            return b"\n".join(f.read().splitlines()[-lines:]).decode(errors="replace")

    def stop(self, timeout=10):
        """SIGTERM the simulator, wait, SIGKILL if it does not exit. Idempotent."""
        self._stop(keep_log=False, timeout=timeout)

    def _stop(self, keep_log, timeout=10):
        proc, self.proc = self.proc, None
        if proc is None:
            return
        atexit.unregister(self.stop)
        if proc.poll() is None:
            try:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            except ProcessLookupError:
                pass
        if self._drain is not None:
            self._drain.join(timeout=2)
            self._drain = None
        proc.stdout.close()
        self.returncode = proc.returncode
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._own_log and not keep_log and self.log_path:
            try:
                os.unlink(self.log_path)
            except OSError:
                pass

    def connect(self):
        """A new pyVmomi ServiceInstance logged in to the simulator."""
        if self.url is None:
            raise VcsimError("simulator not started")
        from pyVim.connect import SmartConnect

        return SmartConnect(host=self.host, port=self.port, user=self.username,
                            pwd=self.password, disableSslCertValidation=True)

    def __enter__(self):
        if self.proc is None:
            self.start()
        return self

    def __exit__(self, *exc):
        self.stop()
        return False

    def __repr__(self):
        return "<Vcsim %s pid=%s url=%s>" % (self.model, self.pid, self.url)

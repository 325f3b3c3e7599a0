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

"""What the benchmarks share: paths, the simulator's names, the driver's
settings against a simulator, counting SOAP calls, the machine's line.

Importing it puts the repository and tools/ first on ``sys.path``.
Nothing here imports tests/ (the counter copies the idea of
tests/functional/base.py's ``soap_calls()``).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for _path in (os.path.join(REPO, "tools"), REPO):
    if _path not in sys.path:
        sys.path.insert(0, _path)

from networking_vcenter import conf  # noqa: E402
from networking_vcenter.reconcile.locks import Locks  # noqa: E402
from networking_vcenter.reconcile.reconciler import Reconciler  # noqa: E402
from vcsim_launcher import Vcsim  # noqa: E402
import vsphere_reader  # noqa: E402

PHYSNET = "physnet1"
DVS_NAME = "DVS0"
CLUSTER = "DC0_C0"
DEPLOYMENT = "default"
REPLICA_THREAD = "vcenter-replica"      # replica.py's long-poll thread


class Calls(list):
    """The names of the SOAP calls made, in order; ``seconds``: the wall
    time spent inside those of threads other than the replica's
    (serialising, the wire with the injected latency, parsing);
    ``replica_seconds``: inside those of the replica's thread;
    ``by_thread``: (thread name, call name) of each."""

    seconds: float = 0.0
    replica_seconds: float = 0.0

    def __init__(self):
        super().__init__()
        self.by_thread: list[tuple[str, str]] = []


class SoapCounter:
    """SOAP calls made by any thread while counting, except the replica's
    own long poll (``WaitForUpdatesEx`` on its thread).  ``waits`` False:
    no ``WaitForUpdatesEx`` counts at all (neither a task's wait)."""

    def __init__(self, waits: bool = True):
        self._waits = waits
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def counting(self):
        from pyVmomi import SoapAdapter
        real = SoapAdapter.SoapStubAdapter.InvokeMethod
        calls = Calls()

        def counted(stub, mo, info, args, *rest, **kw):
            name = info.wsdlName
            thread = threading.current_thread().name
            replica = thread == REPLICA_THREAD
            if name == "WaitForUpdatesEx" and (replica or not self._waits):
                return real(stub, mo, info, args, *rest, **kw)
            t0 = time.perf_counter()
            try:
                return real(stub, mo, info, args, *rest, **kw)
            finally:
                with self._lock:
                    calls.append(name)
                    calls.by_thread.append((thread, name))
                    if replica:
                        calls.replica_seconds += time.perf_counter() - t0
                    else:
                        calls.seconds += time.perf_counter() - t0

        SoapAdapter.SoapStubAdapter.InvokeMethod = counted
        try:
            yield calls
        finally:
            SoapAdapter.SoapStubAdapter.InvokeMethod = real


def find_named(si, vimtype, name: str):
    """The managed object of that type and name, through a container view
    of the whole inventory (a separate client's, not the driver's)."""
    return vsphere_reader.find_named(si.RetrieveContent(), vimtype, name)


def settings(sim: Vcsim, compute_host: str = "bench") -> conf.Settings:
    """The driver's settings against ``sim``: physnet1 -> DVS0, the
    cluster DC0_C0 as ``compute_host``."""
    return conf.Settings(
        host_ip=sim.host, host_port=sim.port, host_username=sim.username,
        host_password=sim.password, ca_file=None, insecure=True,
        api_retry_count=2, api_timeout=120, task_timeout=600,
        switch_mappings={PHYSNET: DVS_NAME},
        compute_hosts={compute_host: CLUSTER},
        dvs_name_template=conf.DEFAULT_DVS_NAME_TEMPLATE,
        max_parallel_tasks=8, dvs_batch_size=100,
        deployment_name=DEPLOYMENT)


def reconciler(sim: Vcsim, lock_dir: str, name: str, watch: bool = True,
               compute_host: str = "bench") -> Reconciler:
    """A started reconciler on ``sim``, its file locks in
    ``lock_dir``/``name``."""
    rec = Reconciler(settings(sim, compute_host),
                     Locks("file://" + os.path.join(lock_dir, name)),
                     watch=watch)
    rec.start()
    return rec


def machine() -> str:
    model = "?"
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            model = next((ln.split(":", 1)[1].strip() for ln in f
                          if ln.startswith("model name")), "?")
    return (f"{os.cpu_count()} cores ({model}), load "
            f"{os.getloadavg()[0]:.1f} at start, Python "
            f"{sys.version.split()[0]}")


def commit() -> str:
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        return subprocess.check_output(
            ["git", "-C", REPO, "rev-parse", "--short", "HEAD"],
            text=True).strip()
    return "?"

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

"""End-to-end fixtures: the simulator and a real Neutron API, started and
stopped by the tests themselves, driven by the real ``openstack`` CLI."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request

import psutil
import pytest

from tests.e2e import nova_client
from tests.fixtures.vcsim import Vcsim
from tests.fixtures.vsphere_reader import Reader

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))
sys.path.insert(0, os.path.join(REPO, "tools"))
import neutron_server  # noqa: E402

COMPUTE_HOSTS = "vc-compute-1:DC0_C0,vc-compute-2:DC0_C1"
SWITCH_MAPPINGS = "physnet1:DVS0,physnet2:vSwitch1"
OPENSTACK = os.path.join(os.path.dirname(sys.executable), "openstack")


class Api:
    """The Neutron API through the openstack CLI, and raw HTTP for bulk."""

    def __init__(self, url: str):
        self.url = url

    def cli(self, *args: str, check: bool = True) -> object:
        cmd = [OPENSTACK, "--os-auth-type", "none", "--os-endpoint",
               self.url, *args]
        if args[-1] != "--no-format":
            cmd += ["-f", "json"]
        else:
            cmd.pop(cmd.index("--no-format"))
        proc = subprocess.run(cmd, capture_output=True, text=True,
                              timeout=120)
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(args)} failed: {proc.stderr}")
        if not check:
            return proc
        return json.loads(proc.stdout) if proc.stdout.strip() else None

    def http(self, method: str, path: str, body: dict | None = None):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(
            self.url + path, data=data, method=method,
            headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=300) as resp:
                text = resp.read()
                return resp.status, json.loads(text) if text else None
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read() or b"null")


@pytest.fixture(scope="session")
def wsdl_dir():
    return nova_client.ensure_wsdl()


@pytest.fixture(scope="session")
def vcsim(wsdl_dir):
    sim = Vcsim(vms=1, wsdl_dir=wsdl_dir,
                extra_args=("-extra-vswitch", "vSwitch1")).start()
    yield sim
    sim.stop()


@pytest.fixture(scope="session")
def vsphere(vcsim):
    reader = Reader(vcsim.connect())
    yield reader
    reader.close()


def listening(pids: list[int]) -> list[tuple[str, int]]:
    """(address, port) of every listening TCP/UDP socket of those PIDs."""
    pids = set(pids)
    return sorted((c.laddr.ip, c.laddr.port)
                  for c in psutil.net_connections("inet")
                  if c.pid in pids and (c.status == psutil.CONN_LISTEN
                                        or c.type == socket.SOCK_DGRAM))


def start_server(vcsim, mode: str, port: int, **kw):
    """A Neutron server of its own deployment: the servers of one test run
    share the simulator as two clouds would share a vCenter."""
    workdir = tempfile.mkdtemp(prefix=f"neutron-{mode}-")
    kw["extra_ml2_opts"] = {"deployment_name": f"e2e-{mode}-{port}",
                            **kw.get("extra_ml2_opts", {})}
    server = neutron_server.NeutronServer(
        workdir, mode, vcenter_host=vcsim.host, vcenter_port=vcsim.port,
        vcenter_user=vcsim.username, vcenter_password=vcsim.password,
        switch_mappings=SWITCH_MAPPINGS, compute_hosts=COMPUTE_HOSTS,
        port=port, quiet=True, **kw)
    try:
        server.start()
    except BaseException:
        server.stop()
        raise
    return server


def stop_server(server) -> None:
    """Stop by PID, then remove the work directory (logs included) unless
    ``E2E_KEEP_LOGS`` is set, to read them after a failure."""
    server.stop()
    if os.environ.get("E2E_KEEP_LOGS"):
        print(f"\nserver logs kept in {server.workdir}")
        return
    shutil.rmtree(server.workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def neutron(vcsim):
    server = start_server(vcsim, "embedded", neutron_server.free_port())
    yield server
    stop_server(server)


@pytest.fixture(scope="session")
def api(neutron):
    return Api(neutron.url)

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

"""End to end: tools/neutron_server.py brings up a real Neutron server
(embedded mode: sqlite, fake:// transport, one uWSGI worker and
neutron-periodic-workers) with the vcenter driver against the simulator, the
openstack CLI drives it, and stop leaves nothing.

Select with ``pytest -m e2e``.  Needs the simulator (built on demand by
tests/fixtures/vcsim.py) and the venv's uwsgi and openstack commands.
"""

import json
import ipaddress
import os
import re
import subprocess
import sys

import psutil
import pytest

from tests.e2e import conftest
from tests.fixtures.vcsim import Vcsim

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "tools"))

import neutron_server  # noqa: E402

pytestmark = pytest.mark.e2e

OPENSTACK = os.path.join(os.path.dirname(sys.executable), "openstack")


@pytest.fixture(scope="module")
def vcsim():
    sim = Vcsim(extra_args=["-extra-vswitch", "vSwitch1"]).start()
    yield sim
    sim.stop()


@pytest.fixture(scope="module")
def server(vcsim, tmp_path_factory):
    srv = neutron_server.NeutronServer(
        str(tmp_path_factory.mktemp("neutron")), "embedded",
        vcenter_host=vcsim.host, vcenter_port=vcsim.port,
        vcenter_user=vcsim.username, vcenter_password=vcsim.password,
        port=0,  # any free port: never clash with a demo on 9696
        timeout=90, quiet=True)
    srv.start()
    yield srv
    srv.stop()  # idempotent: a no-op after test_stop_leaves_nothing


def openstack(url, *args):
    proc = subprocess.run(
        [OPENSTACK, "--os-auth-type", "none", "--os-endpoint", url, *args],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, "openstack %s failed:\n%s" % (
        " ".join(args), proc.stderr[-3000:])
    return json.loads(proc.stdout) if proc.stdout.strip() else None


def dvs_port_groups(vcsim):
    from pyVim.connect import Disconnect
    from pyVmomi import vim

    si = vcsim.connect()
    content = si.RetrieveContent()
    view = content.viewManager.CreateContainerView(
        content.rootFolder, [vim.dvs.DistributedVirtualPortgroup], True)
    try:
        return {pg.name for pg in view.view}
    finally:
        view.Destroy()
        Disconnect(si)


def test_vlan_network_create_bind_delete(server, vcsim):
    net = openstack(server.url, "network", "create", "-f", "json",
                    "--provider-network-type", "vlan",
                    "--provider-physical-network", "physnet1",
                    "--provider-segment", "101", "e2e-net")
    assert net["provider:network_type"] == "vlan"
    assert net["provider:physical_network"] == "physnet1"
    assert net["provider:segmentation_id"] == 101
    pg_name = "neutron-physnet1-%s" % net["id"]
    assert pg_name in dvs_port_groups(vcsim)

    port = openstack(server.url, "port", "create", "-f", "json",
                     "--network", net["id"], "--host", "vc-compute-1",
                     "e2e-port")
    assert port["binding_vif_type"] == "dvs"
    assert port["binding_vif_details"]["dvs_port_group_name"] == pg_name

    openstack(server.url, "port", "delete", port["id"])
    openstack(server.url, "network", "delete", net["id"])
    assert openstack(server.url, "network", "list", "-f", "json") == []
    assert pg_name not in dvs_port_groups(vcsim)


def test_plugin_workers_run_in_their_own_process(server):
    """Neutron 29 runs get_workers() in neutron-periodic-workers, not in the
    API: the launcher starts it, on the same sqlite file."""
    (periodic,) = [p for p in server.procs
                   if p.name == "neutron-periodic-workers"]
    assert periodic.running()
    titles = [" ".join(p.cmdline()) for p in periodic.members()]
    assert any("services worker" in t for t in titles), titles
    with open(server.periodic_log) as f:
        text = f.read()
    assert "AllServicesNeutronWorker start finished" in text
    assert not re.search(r"^\S+ \S+ \d+ (CRITICAL|ERROR) ", text, re.M)


def test_nothing_listens_beyond_loopback(server):
    sockets = conftest.listening(server.pids())
    assert ("127.0.0.1", server.state["ports"]["api"]) in sockets
    assert all(ipaddress.ip_address(ip).is_loopback for ip, _ in sockets), \
        sockets


def test_stop_leaves_nothing(server):
    """Runs last (file order): stops the module's server and checks."""
    port = server.state["ports"]["api"]
    assert neutron_server.port_open(port)
    # Every process of the server, children included (uWSGI's workers, the
    # periodic workers' children), as psutil objects: a PID reused after
    # the stop is not mistaken for ours.
    assert {p["name"] for p in server.services()} == {
        "uwsgi", "neutron-periodic-workers"}
    procs = [psutil.Process(pid) for pid in server.pids()]
    assert len(procs) >= 4, procs      # masters and their workers

    server.stop()

    alive = [p for p in procs if neutron_server.is_alive(p)]
    assert alive == []
    assert not neutron_server.port_open(port)
    assert server.services() == []
    server.stop()  # idempotent

"""End to end: tools/neutron_server.py brings up a real Neutron API (embedded
mode: sqlite, fake:// transport, one uWSGI worker) with the vcenter driver
against the simulator, the openstack CLI drives it, and stop leaves nothing.

Select with ``pytest -m e2e``.  Needs the simulator (built on demand by
tests/fixtures/vcsim.py) and the venv's uwsgi and openstack commands.
"""

import json
import os
import subprocess
import sys

import pytest

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


def test_stop_leaves_nothing(server):
    """Runs last (file order): stops the module's server and checks."""
    port = server.state["ports"]["api"]
    assert neutron_server.port_open(port)
    # Every process of the workdir: the recorded PIDs and their trees
    # (uWSGI's workers), with start times so that a reused PID is not
    # mistaken for ours.
    procs = {}
    for name in os.listdir(server.rundir):
        if name.endswith(".pid"):
            with open(os.path.join(server.rundir, name)) as f:
                pid = int(f.read())
            procs.update(neutron_server.process_tree([pid], pgid=pid))
    assert procs, "no PID recorded in %s" % server.rundir

    server.stop()

    alive = [pid for pid, start in procs.items()
             if neutron_server.proc_alive(pid)
             and neutron_server.proc_start_time(pid) == start]
    assert alive == []
    assert not neutron_server.port_open(port)
    assert not [n for n in os.listdir(server.rundir) if n.endswith(".pid")]
    server.stop()  # idempotent

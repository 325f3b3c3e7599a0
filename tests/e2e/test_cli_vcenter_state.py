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

"""The operator CLI against a vCenter it has never seen: ``status``,
``sync --dry-run`` and ``check`` change nothing in it (they must work under
a read-only role), and no command leaves a vCenter session behind.

The Neutron database is a real server's (embedded mode, on a simulator of its
own); the CLI is pointed at a second, FRESH simulator by one more
configuration file, so that nothing but the CLI ever talks to it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from pyVim.connect import Disconnect
from pyVmomi import vim

from tests.e2e import conftest
from tests.fixtures.vcsim import Vcsim

pytestmark = pytest.mark.e2e
CLI = os.path.join(os.path.dirname(sys.executable), "networking-vcenter")
OWNER_FIELD = "networking-vcenter.network"


@pytest.fixture(scope="module")
def server():
    home = Vcsim(extra_args=("-extra-vswitch", "vSwitch1")).start()
    srv = conftest.start_server(home, "embedded",
                                conftest.neutron_server.free_port())
    api = conftest.Api(srv.url)
    srv.networks = [api.cli("network", "create", "--provider-network-type",
                            "vlan", "--provider-physical-network", physnet,
                            "--provider-segment", str(vlan), name)
                    for physnet, vlan, name in (("physnet1", 110, "ro-dvs"),
                                                ("physnet2", 210, "ro-std"))]
    yield srv
    conftest.stop_server(srv)
    home.stop()


@pytest.fixture(scope="module")
def fresh(tmp_path_factory):
    sim = Vcsim(extra_args=("-extra-vswitch", "vSwitch1")).start()
    ini = tmp_path_factory.mktemp("fresh") / "fresh-vcenter.ini"
    ini.write_text(f"[ml2_vcenter]\nhost_ip = {sim.host}\n"
                   f"host_port = {sim.port}\n")
    sim.ini = str(ini)
    yield sim
    sim.stop()


def cli(server, sim, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [CLI, "--config-file", server.neutron_conf, "--config-file",
         server.ml2_conf, "--config-file", sim.ini, *args],
        capture_output=True, text=True, timeout=300)


def _all(content, vimtype):
    view = content.viewManager.CreateContainerView(content.rootFolder,
                                                   [vimtype], True)
    try:
        return list(view.view)
    finally:
        view.DestroyView()


def vlan_of(spec) -> object:
    """A VLAN spec as plain data (a trunk's ranges are pyVmomi objects,
    which compare by identity)."""
    vlan = getattr(spec, "vlanId", None)
    if isinstance(vlan, int) or vlan is None:
        return vlan
    return [(r.start, r.end) for r in vlan]


def vcenter_state(sim) -> dict[str, list]:
    """Everything a write of the driver could change, read with plain
    pyVmomi by a connection of its own."""
    si = sim.connect()
    try:
        content = si.RetrieveContent()
        return {
            "custom fields": sorted(
                (f.key, f.name, str(f.managedObjectType))
                for f in content.customFieldsManager.field or []),
            "entities": sorted(
                (type(e).__name__, e._moId, e.name)
                for e in _all(content, vim.ManagedEntity)),
            "distributed port groups": sorted(
                (pg.name, pg.config.distributedVirtualSwitch.name,
                 vlan_of(pg.config.defaultPortConfig.vlan),
                 pg.config.description or "", pg.config.configVersion)
                for pg in _all(content, vim.dvs.DistributedVirtualPortgroup)),
            "switches": sorted(
                (d.name, d.config.configVersion)
                for d in _all(content, vim.DistributedVirtualSwitch)),
            "host port groups": sorted(
                (h.name, pg.spec.name, pg.spec.vswitchName, pg.spec.vlanId)
                for h in _all(content, vim.HostSystem)
                for pg in h.config.network.portgroup or []),
            "custom values": sorted(
                (n.name, sorted((v.key, v.value) for v in n.customValue or []))
                for n in _all(content, vim.Network)),
        }
    finally:
        Disconnect(si)


def test_read_only_commands_change_nothing(server, fresh):
    before = vcenter_state(fresh)
    assert OWNER_FIELD not in {name for _, name, _ in before["custom fields"]}
    names = {"neutron-physnet1-" + server.networks[0]["id"],
             server.networks[1]["id"]}

    status = cli(server, fresh, "--format", "json", "status")
    assert status.returncode == 1, status.stdout + status.stderr
    rows = {r["port_group"]: r for r in json.loads(status.stdout)
            ["port_groups"]}
    assert {rows[n]["state"] for n in names} == {"missing"}

    dry = cli(server, fresh, "sync", "--dry-run")
    assert dry.returncode == 1, dry.stdout + dry.stderr
    dvs_name = "neutron-physnet1-" + server.networks[0]["id"]
    assert f"create distributed port group {dvs_name}" in dry.stdout
    assert server.networks[1]["id"] in dry.stdout

    check = cli(server, fresh, "--format", "json", "check")
    assert check.returncode == 0, check.stdout + check.stderr
    checks = {c["check"]: c for c in json.loads(check.stdout)["checks"]}
    attribute = checks["custom attribute"]
    assert attribute["result"] == "pending"
    assert OWNER_FIELD in attribute["detail"]
    assert "'networking-vcenter sync' or the Neutron server defines it" in \
        attribute["detail"]
    assert checks["privileges"]["result"] == "ok"

    assert vcenter_state(fresh) == before


def test_no_command_leaves_a_session(server, fresh):
    si = fresh.connect()     # the admin's own session, counted both times
    try:
        manager = si.RetrieveContent().sessionManager

        def sessions() -> list[str]:
            return sorted(s.key for s in manager.sessionList)

        before = sessions()
        runs = [(("status",), 1), (("sync", "--dry-run"), 1), (("check",), 0),
                (("sync",), 0), (("status",), 0)]
        for args, expected in runs:
            proc = cli(server, fresh, *args)
            assert proc.returncode == expected, (args, proc.stdout,
                                                 proc.stderr)
        after = sessions()
        assert after == before, f"{len(after) - len(before)} session(s) " \
                                f"left by 5 CLI runs"
    finally:
        Disconnect(si)

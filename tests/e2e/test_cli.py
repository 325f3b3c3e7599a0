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

"""The operator CLI on every state, against the real API and the simulator.

The Neutron server reaches the simulator through the fault proxy, so the test
can take vCenter away while API users keep working.  While the CLI is shown
the states, the server stays cut off: its maintenance worker would otherwise
repair them within seconds.  The operator's CLI reaches vCenter directly.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from tests.e2e import conftest
from tests.fixtures.vsphere_reader import Reader

sys.path.insert(0, os.path.join(conftest.REPO, "tools"))
import faultproxy  # noqa: E402

pytestmark = pytest.mark.e2e
CLI = os.path.join(os.path.dirname(sys.executable), "networking-vcenter")
HANG = 20   # seconds: beyond this an API call hung on the missing vCenter


@pytest.fixture(scope="module")
def proxy(vcsim):
    with faultproxy.FaultProxy(vcsim.host, vcsim.port) as p:
        yield p


@pytest.fixture(scope="module")
def server(vcsim, proxy):
    class ViaProxy:
        host, port = proxy.host, proxy.port
        username, password = vcsim.username, vcsim.password
    srv = conftest.start_server(
        ViaProxy, "embedded", conftest.neutron_server.free_port(),
        extra_ml2_opts={"api_call_budget": "3", "api_timeout": "3",
                        "api_retry_count": "1"})
    yield srv
    conftest.stop_server(srv)


@pytest.fixture(scope="module")
def direct(vcsim, tmp_path_factory):
    """One more configuration file: the CLI past the proxy."""
    ini = tmp_path_factory.mktemp("cli") / "direct.ini"
    ini.write_text(f"[ml2_vcenter]\nhost_ip = {vcsim.host}\n"
                   f"host_port = {vcsim.port}\n")
    return str(ini)


def cli(server, *args, direct=None):
    extra = ["--config-file", direct] if direct else []
    proc = subprocess.run(
        [CLI, "--config-file", server.neutron_conf, "--config-file",
         server.ml2_conf, *extra, *args], capture_output=True, text=True,
        timeout=300)
    return proc


def status(server, direct=None):
    proc = cli(server, "--format", "json", "status", direct=direct)
    assert proc.returncode in (0, 1), proc.stderr
    doc = json.loads(proc.stdout)
    return proc.returncode, {(r["network"], r["port_group"]): r
                             for r in doc["port_groups"]}


def test_cli_through_outage_hand_edits_and_repair(server, proxy, vcsim,
                                                 direct):
    api = conftest.Api(server.url)
    vsphere = Reader(vcsim.connect())
    assert cli(server, "check").returncode == 0

    # 100 networks while vCenter is unreachable: every call succeeds, fast.
    proxy.mode = "reset"
    nets = []
    for i in range(100):
        t0 = time.monotonic()
        code, body = api.http("POST", "/v2.0/networks", {"network": {
            "name": f"outage-{i}", "provider:network_type": "vlan",
            "provider:physical_network": "physnet1",
            "provider:segmentation_id": 100 + i % 100}})
        assert code == 201, body
        assert time.monotonic() - t0 < HANG
        nets.append(body["network"])
    # The server stays cut off from here on.
    names = {n["id"]: f"neutron-physnet1-{n['id']}" for n in nets}
    assert all(vsphere.dv_portgroups(name) == [] for name in names.values())

    code, rows = status(server, direct)
    assert code == 1
    assert {rows[(n, name)]["state"] for n, name in names.items()} == \
        {"missing"}

    dry = cli(server, "sync", "--dry-run", direct=direct)
    assert dry.returncode == 1
    assert dry.stdout.count("create distributed port group") == 100
    assert all(vsphere.dv_portgroups(name) == [] for name in names.values())

    synced = cli(server, "sync", direct=direct)      # one pass
    assert synced.returncode == 0, synced.stdout + synced.stderr
    assert "[100/100]" in synced.stderr
    for net in nets:
        (pg,) = vsphere.dv_portgroups(names[net["id"]])
        assert pg["vlan"] == net["provider:segmentation_id"]
    code, rows = status(server, direct)
    assert code == 0 and {r["state"] for r in rows.values()} == {"in-sync"}

    # Hand edits and a delete during an outage.
    a, b, c, d = (n["id"] for n in nets[:4])
    vsphere.retag_dv_portgroup(names[a], 999)
    vsphere.destroy_dv_portgroup(names[b])
    vsphere.destroy_dv_portgroup(names[c])
    foreign = vsphere.add_dv_portgroup("DVS0", names[c], 7, "made by hand")
    code, _ = api.http("DELETE", f"/v2.0/networks/{d}")
    assert code == 204

    code, rows = status(server, direct)
    assert code == 1
    assert rows[(a, names[a])]["state"] == "wrong-vlan"
    assert "VLAN 999" in rows[(a, names[a])]["detail"]
    assert rows[(b, names[b])]["state"] == "missing"
    assert rows[(c, names[c])]["state"] == "conflict"
    assert "was not made by networking-vcenter" in \
        rows[(c, names[c])]["detail"]
    assert rows[(d, names[d])]["state"] == "orphan"
    table = cli(server, "status", direct=direct)
    assert table.returncode == 1
    for state in ("wrong-vlan", "missing", "conflict", "orphan", "in-sync"):
        assert state in table.stdout

    plan = cli(server, "sync", "--dry-run", direct=direct).stdout
    assert f"retag distributed port group {names[a]}" in plan
    assert f"create distributed port group {names[b]}" in plan
    assert f"delete distributed port group {names[d]}" in plan
    assert f"CONFLICT: port group {names[c]}" in plan

    repaired = cli(server, "sync", direct=direct)
    assert repaired.returncode == 1          # the conflict remains
    assert "CONFLICT" in repaired.stdout
    code, rows = status(server, direct)
    assert {r["state"] for r in rows.values()} == {"in-sync", "conflict"}
    assert vsphere.dv_portgroups(names[a])[0]["vlan"] == 100
    assert vsphere.dv_portgroups(names[d]) == []
    assert vsphere.dv_portgroups(names[c])[0]["moid"] == foreign["moid"]

    vsphere.destroy_dv_portgroup(names[c])
    for net in nets:
        if net["id"] != d:
            api.http("DELETE", f"/v2.0/networks/{net['id']}")
    proxy.mode = "pass"


def test_check_reports_each_problem(server, proxy, tmp_path):
    proxy.mode = "pass"
    ok = cli(server, "--format", "json", "check")
    assert ok.returncode == 0, ok.stdout
    checks = {c["check"]: c for c in json.loads(ok.stdout)["checks"]}
    assert checks["privileges"]["result"] == "ok"
    assert checks["Neutron database"]["result"] == "ok"

    bad = tmp_path / "bad.ini"
    bad.write_text("[ml2_vcenter]\nhost_password = not-the-password\n"
                   "switch_mappings = physnet1:NoSuchDVS\n")
    proc = subprocess.run(
        [CLI, "--config-file", server.neutron_conf, "--config-file",
         server.ml2_conf, "--config-file", str(bad), "check"],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2          # vCenter unusable: cannot run
    assert "FAIL" in proc.stdout
    assert "refused the login of user 'user'" in proc.stdout
    assert "not-the-password" not in proc.stdout + proc.stderr

    missing = subprocess.run([CLI, "--config-file", "/nonexistent.conf",
                              "status"], capture_output=True, text=True)
    assert missing.returncode == 2
    assert "/nonexistent.conf" in missing.stderr
    assert "Traceback" not in missing.stderr

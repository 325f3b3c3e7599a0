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

"""One Neutron, two vCenters, through the real API and the ``openstack``
CLI: the session's simulator is site-a, a second one (reached through
:mod:`tools.faultproxy`) is site-b.  physnet1 is mapped in both, physnet2 in
site-a only.  A physnet1 network has a port group in each; a port bound on
a host of each vCenter has its DV port, with its filter, in that vCenter
only; each vCenter has its agent row; site-b black-holed, site-a's network
calls and bindings keep their usual times, and site-b's agent row turns down
in the agents API while site-a's stays alive.

The server runs with ``agent_down_time`` 9 s (Neutron's default is 75 s):
the heartbeat is a third of it, so the row's turning down is seen in
seconds; everything else is at its default."""

from __future__ import annotations

import os
import sys
import tempfile
import time

import pytest
from pyVmomi import vim

from networking_vcenter.reconcile import portsettings
from tests.e2e import conftest
from tests.e2e import nova_client
from tests.fixtures.vcsim import Vcsim
from tests.fixtures.vsphere_reader import Reader
from tests.fixtures.vsphere_reader import dv_port_rules

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..",
                                "tools"))
import faultproxy  # noqa: E402
import neutron_server  # noqa: E402

pytestmark = pytest.mark.e2e
HOST_A = "vc-compute-1"
HOST_B = "vc-compute-b"
AGENT_TYPE = "vCenter backend"
AGENT_DOWN_TIME = 9
CLUSTER = "DC0_C0"
VM = "DC0_C0_RP0_VM0"


@pytest.fixture(scope="module")
def site_b(wsdl_dir):
    # A VM for Nova's own code to attach a NIC to, as at site-a.
    sim = Vcsim(vms=1, wsdl_dir=wsdl_dir,
                extra_args=("-extra-vswitch", "vSwitch1")).start()
    proxy = faultproxy.FaultProxy(sim.host, sim.port).start()
    reader = Reader(sim.connect())
    yield sim, proxy, reader
    reader.close()
    proxy.stop()
    sim.stop()


@pytest.fixture(scope="module")
def two(vcsim, site_b):
    sim_b, proxy, _ = site_b
    workdir = tempfile.mkdtemp(prefix="neutron-vcenters-")
    server = neutron_server.NeutronServer(
        workdir, "embedded", vcenter_user=vcsim.username,
        vcenter_password=vcsim.password,
        switch_mappings=conftest.SWITCH_MAPPINGS, compute_hosts="",
        port=neutron_server.free_port(), quiet=True,
        neutron_opts={"agent_down_time": AGENT_DOWN_TIME},
        extra_ml2_opts={"vcenters": "site-a,site-b",
                        "deployment_name": "e2e-vcenters"},
        vcenter_sections={
            "site-a": {"host_ip": vcsim.host, "host_port": vcsim.port,
                       "compute_hosts": f"{HOST_A}:DC0_C0"},
            "site-b": {"host_ip": proxy.host, "host_port": proxy.port,
                       "switch_mappings": "physnet1:DVS0",
                       "compute_hosts": f"{HOST_B}:DC0_C0"}})
    try:
        server.start()
        yield server, conftest.Api(server.url)
    finally:
        proxy.mode = "pass"
        conftest.stop_server(server)


def named(reader, port_id):
    return [p for p in reader.dvs("DVS0").FetchDVPorts(
        vim.dvs.PortCriteria()) if p.config.name == port_id]


def post(api, what: str, body: dict) -> dict:
    status, out = api.http("POST", f"/v2.0/{what}s", {what: body})
    assert status == 201, out
    return out[what]


def delete(api, what: str, obj_id: str) -> None:
    status, out = api.http("DELETE", f"/v2.0/{what}s/{obj_id}")
    assert status == 204, out


def vlan_network(api, physnet: str, vlan: int) -> dict:
    return post(api, "network", {
        "name": f"e2e-vcenters-{vlan}", "provider:network_type": "vlan",
        "provider:physical_network": physnet,
        "provider:segmentation_id": vlan})


def test_each_vcenter_gets_its_share(two, vsphere, site_b):
    server, api = two
    _, _, vsphere_b = site_b
    # The CLI once, as operators would; raw HTTP for the rest (each CLI
    # call starts a Python process).
    net = api.cli("network", "create", "--provider-network-type", "vlan",
                  "--provider-physical-network", "physnet1",
                  "--provider-segment", "171", "e2e-two-vcenters")
    name = f"neutron-physnet1-{net['id']}"
    for reader in (vsphere, vsphere_b):
        assert [pg["vlan"] for pg in reader.dv_portgroups(name)] == [171]

    sg = post(api, "security_group", {"name": "e2e-two-vcenters-web"})
    post(api, "security_group_rule", {
        "security_group_id": sg["id"], "direction": "ingress",
        "ethertype": "IPv4", "protocol": "tcp", "port_range_min": 443,
        "port_range_max": 443, "remote_ip_prefix": "192.0.2.0/24"})
    ports = {host: post(api, "port", {
        "network_id": net["id"], "binding:host_id": host,
        "security_groups": [sg["id"]]}) for host in (HOST_A, HOST_B)}
    for host, mine, other in ((HOST_A, vsphere, vsphere_b),
                              (HOST_B, vsphere_b, vsphere)):
        port = ports[host]
        assert port["binding:vif_type"] == "dvs", port
        details = port["binding:vif_details"]
        assert details["dvs_id"] == mine.dvs("DVS0").uuid
        (dvp,) = named(mine, port["id"])
        assert dvp.key == details["dvs_port_key"]
        assert not named(other, port["id"])
        # Its own filter there: the rule of its group.
        assert any(r["protocol"] == 6 and r["dports"] == (443, 443)
                   for r in dv_port_rules(dvp.config.setting)), \
            dv_port_rules(dvp.config.setting)

    rows: dict = {}
    end = time.monotonic() + 60
    while len(rows) < 2 and time.monotonic() < end:
        _, out = api.http("GET", "/v2.0/agents?agent_type=vCenter%20backend")
        rows = {a["host"]: a for a in out["agents"]}
        time.sleep(0.5)
    assert set(rows) == {"e2e-vcenters@site-a", "e2e-vcenters@site-b"}
    for host, row in rows.items():
        assert row["alive"], row
        assert row["configurations"]["vcenter_name"] == host.split("@")[1]

    for port in ports.values():
        delete(api, "port", port["id"])
    api.cli("network", "delete", net["id"], "--no-format")
    for reader in (vsphere, vsphere_b):
        assert reader.dv_portgroups(name) == []
    delete(api, "security_group", sg["id"])


def test_trunk_qos_and_status_in_site_b(two, vsphere, site_b):
    """A trunk parent with a QoS policy bound on site-b's host: its DV port
    in site-b carries the trunk's VLANs and the shaping; Nova's own code
    attaches it there, on site-b's simulator; the port and the trunk turn
    ACTIVE.  Nothing of it in site-a."""
    _, api = two
    sim_b, _, vsphere_b = site_b
    nets = {vlan: vlan_network(api, "physnet1", vlan) for vlan in (176, 177)}
    status, out = api.http("POST", "/v2.0/qos/policies",
                           {"policy": {"name": "e2e-two-vcenters-slow"}})
    assert status == 201, out
    policy = out["policy"]
    status, out = api.http(
        "POST", f"/v2.0/qos/policies/{policy['id']}/bandwidth_limit_rules",
        {"bandwidth_limit_rule": {"max_kbps": 3000, "max_burst_kbps": 600,
                                  "direction": "egress"}})
    assert status == 201, out
    parent = post(api, "port", {"network_id": nets[176]["id"],
                                "qos_policy_id": policy["id"]})
    sub = post(api, "port", {"network_id": nets[177]["id"]})
    trunk = post(api, "trunk", {"port_id": parent["id"], "sub_ports": [{
        "port_id": sub["id"], "segmentation_type": "vlan",
        "segmentation_id": 177}]})
    vcenter = nova_client.vcenter_from_url(sim_b.url)
    attached = False
    try:
        status, out = api.http("PUT", f"/v2.0/ports/{parent['id']}", {
            "port": {"binding:host_id": HOST_B}})
        assert status == 200, out
        parent = out["port"]
        assert parent["binding:vif_type"] == "dvs", parent
        details = parent["binding:vif_details"]
        assert details["dvs_id"] == vsphere_b.dvs("DVS0").uuid
        assert not named(vsphere, parent["id"])

        def carried():
            return vsphere_b.dv_port_vlan("DVS0", details["dvs_port_key"])
        assert neutron_server.wait_for(
            lambda: carried() == (("trunk", [(176, 177)]), False), 15), \
            carried()

        def shaping():
            (dvp,) = named(vsphere_b, parent["id"])
            setting = dvp.config.setting
            s = setting.inShapingPolicy \
                if portsettings.FROM_VM == "incomingPackets" \
                else setting.outShapingPolicy
            return s if s.enabled and s.enabled.value else None
        assert neutron_server.wait_for(shaping, 15), "no shaping in site-b"
        assert shaping().averageBandwidth.value == 3000 * 1000  # bit/s

        nic = nova_client.attach(vcenter, CLUSTER, VM, parent,
                                 nets[176])["nic"]
        attached = True
        assert (nic["portgroupKey"], nic["portKey"]) == \
            (details["pg_id"], details["dvs_port_key"])

        def status_of(what, obj_id):
            code, body = api.http("GET", f"/v2.0/{what}s/{obj_id}")
            assert code == 200, body
            return body[what]["status"]
        assert neutron_server.wait_for(
            lambda: status_of("port", parent["id"]) == "ACTIVE", 30), \
            status_of("port", parent["id"])
        assert neutron_server.wait_for(
            lambda: status_of("trunk", trunk["id"]) == "ACTIVE", 30), \
            status_of("trunk", trunk["id"])
    finally:
        if attached:
            nova_client.detach(vcenter, CLUSTER, VM, parent)
        delete(api, "trunk", trunk["id"])
        for port in (parent, sub):
            delete(api, "port", port["id"])
        for net in nets.values():
            delete(api, "network", net["id"])
        status, _ = api.http("DELETE", f"/v2.0/qos/policies/{policy['id']}")
        assert status == 204


def test_site_b_black_holed_changes_nothing_for_site_a(two, vsphere, site_b):
    server, api = two
    _, proxy, _ = site_b
    took = []
    for vlan in (281, 282):
        if vlan == 282:
            proxy.mode = "drop"         # site-b black-holed from here on
        t0 = time.monotonic()
        net = vlan_network(api, "physnet2", vlan)
        t1 = time.monotonic()
        port = post(api, "port", {"network_id": net["id"],
                                  "binding:host_id": HOST_A})
        t2 = time.monotonic()
        assert port["binding:vif_type"] == "dvs", port
        assert vsphere.host_portgroups(net["id"])
        took.append((t1 - t0, t2 - t1))
        delete(api, "port", port["id"])
        delete(api, "network", net["id"])
    (net_before, port_before), (net_after, port_after) = took
    print(f"\nsite-a with site-b answering / black-holed: network create "
          f"{net_before:.2f}s / {net_after:.2f}s, port bind "
          f"{port_before:.2f}s / {port_after:.2f}s")
    # Far from the api_call_budget (20 s) that waiting on site-b costs.
    assert net_after < net_before + 2 and port_after < port_before + 2


def test_site_b_row_turns_down_site_a_row_stays_alive(two, site_b):
    """site-b black-holed (since the test above): its replica hears nothing
    for a long poll, its maintenance worker stops heartbeating, and the
    agents API shows its row down ``agent_down_time`` later -- site-a's row
    alive at every look.  The black hole ended, site-b's row comes back."""
    from networking_vcenter.vsphere import replica
    _, api = two
    _, proxy, _ = site_b
    proxy.mode = "drop"

    def alive() -> dict[str, bool]:
        status, out = api.http("GET", "/v2.0/agents?agent_type=vCenter%20"
                                      "backend")
        assert status == 200, out
        return {a["host"].split("@", 1)[1]: a["alive"]
                for a in out["agents"]}

    t0 = time.monotonic()
    seen = [alive()]
    # Noticed within a long poll (plus its margin), then agent_down_time.
    end = time.monotonic() + replica.LONG_POLL + 5 + 3 * AGENT_DOWN_TIME
    while seen[-1].get("site-b") and time.monotonic() < end:
        time.sleep(1)
        seen.append(alive())
    assert seen[-1] == {"site-a": True, "site-b": False}, seen[-1]
    assert all(s["site-a"] for s in seen), seen
    down = time.monotonic() - t0
    proxy.mode = "pass"
    assert neutron_server.wait_for(lambda: alive()["site-b"], 120), \
        "site-b's row not alive again after the black hole"
    assert alive()["site-a"]
    print(f"\nsite-b's row down {down:.1f}s into this test ({len(seen)} "
          f"looks, site-a alive at each), alive again "
          f"{time.monotonic() - t0 - down:.1f}s after the black hole ended")

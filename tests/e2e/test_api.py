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

"""Through the real Neutron API (uWSGI, embedded mode) and the openstack CLI,
against the simulator; Nova's own VMware code attaches the NICs."""

from __future__ import annotations

import json
import urllib.request
import uuid

import pytest

from tests.e2e import nova_client
from tests.e2e.conftest import Api

pytestmark = pytest.mark.e2e

VM = "DC0_C0_RP0_VM0"


def dvs_name(net_id, physnet="physnet1"):
    return f"neutron-{physnet}-{net_id}"


def create_vlan(api, name, physnet, vlan):
    return api.cli("network", "create", "--provider-network-type", "vlan",
                   "--provider-physical-network", physnet,
                   "--provider-segment", str(vlan), name)


def test_network_lifecycle(api, vsphere):
    vlan = create_vlan(api, "e2e-vlan", "physnet1", 120)
    api.cli("subnet", "create", "--network", vlan["id"], "--subnet-range",
            "10.20.0.0/24", "e2e-vlan-subnet")
    flat = api.cli("network", "create", "--provider-network-type", "flat",
                   "--provider-physical-network", "physnet2", "e2e-flat")
    vxlan = api.cli("network", "create", "--provider-network-type", "vxlan",
                    "e2e-vxlan")
    status, body = api.http("POST", "/v2.0/networks", {"network": {
        "name": "e2e-multi", "segments": [
            {"provider:network_type": "vlan",
             "provider:physical_network": "physnet1",
             "provider:segmentation_id": 121},
            {"provider:network_type": "vlan",
             "provider:physical_network": "physnet2",
             "provider:segmentation_id": 221}]}})
    assert status == 201, body
    multi = body["network"]
    cluster = vsphere.hosts_of_cluster("DC0_C0") + \
        vsphere.hosts_of_cluster("DC0_C1")

    (pg,) = vsphere.dv_portgroups(dvs_name(vlan["id"]))
    assert (pg["switch"], pg["vlan"]) == ("DVS0", 120)
    assert vsphere.host_portgroups(flat["id"]) == \
        {h: ("vSwitch1", 0) for h in cluster}
    assert vsphere.networks_named(vxlan["id"]) == []
    assert vsphere.dv_portgroups(dvs_name(multi["id"]))[0]["vlan"] == 121
    assert vsphere.host_portgroups(multi["id"]) == \
        {h: ("vSwitch1", 221) for h in cluster}

    # An update that does not touch segments leaves the port groups alone.
    api.cli("network", "set", "--name", "e2e-vlan-renamed", vlan["id"],
            "--no-format")
    assert vsphere.dv_portgroups(dvs_name(vlan["id"]))[0]["moid"] == \
        pg["moid"]

    for net in (vlan, flat, vxlan, multi):
        api.cli("network", "delete", net["id"], "--no-format")
    assert vsphere.dv_portgroups(dvs_name(vlan["id"])) == []
    assert vsphere.dv_portgroups(dvs_name(multi["id"])) == []
    assert vsphere.host_portgroups(flat["id"]) == {}
    assert vsphere.host_portgroups(multi["id"]) == {}


def test_bulk_create_50_networks(api, vsphere):
    nets = [{"name": f"bulk-{i}", "provider:network_type": "vlan",
             "provider:physical_network": "physnet1",
             "provider:segmentation_id": 130 + i} for i in range(50)]
    status, body = api.http("POST", "/v2.0/networks", {"networks": nets})
    assert status == 201, body
    created = body["networks"]
    assert len(created) == 50
    for net in created:
        (pg,) = vsphere.dv_portgroups(dvs_name(net["id"]))
        assert pg["vlan"] == net["provider:segmentation_id"]
    for net in created:
        status, _ = api.http("DELETE", f"/v2.0/networks/{net['id']}")
        assert status == 204
    for net in created:
        assert vsphere.dv_portgroups(dvs_name(net["id"])) == []


def test_ports_bound_and_attached_by_nova(api, vsphere, vcsim):
    dvs_net = create_vlan(api, "e2e-nova-dvs", "physnet1", 180)
    std_net = create_vlan(api, "e2e-nova-std", "physnet2", 280)
    vcenter = nova_client.vcenter_from_url(vcsim.url)
    for net in (dvs_net, std_net):
        port = api.cli("port", "create", "--network", net["id"], "--host",
                       "vc-compute-1", f"p-{net['name']}")
        assert port["binding_vif_type"] == "dvs"
        status, body = api.http("GET", f"/v2.0/ports/{port['id']}")
        result = nova_client.attach(vcenter, "DC0_C0", VM, body["port"], net)
        nic = result["nic"]
        if net is dvs_net:
            (pg,) = vsphere.dv_portgroups(dvs_name(net["id"]))
            assert nic["switchUuid"] == pg["switch_uuid"]
            assert nic["portgroupKey"] == pg["key"]
        else:
            (network,) = vsphere.networks_named(net["id"])
            assert nic["deviceName"] == net["id"]
            assert nic["network"] == network._moId
        api.cli("port", "delete", port["id"], "--no-format")


def test_port_moved_to_another_cluster(api, vsphere):
    net = create_vlan(api, "e2e-move", "physnet2", 281)
    port = api.cli("port", "create", "--network", net["id"], "--host",
                   "vc-compute-1", "p-move")
    assert port["binding_vif_type"] == "dvs"
    api.cli("port", "set", "--host", "vc-compute-2", port["id"],
            "--no-format")
    moved = api.cli("port", "show", port["id"])
    assert moved["binding_host_id"] == "vc-compute-2"
    assert moved["binding_vif_type"] == "dvs"
    assert moved["binding_vif_details"]["dvs_port_group_name"] == net["id"]
    for host in vsphere.hosts_of_cluster("DC0_C1"):
        assert vsphere.host_portgroups(net["id"])[host] == ("vSwitch1", 281)
    api.cli("port", "delete", port["id"], "--no-format")
    api.cli("network", "delete", net["id"], "--no-format")


def test_ovs_host_port_not_bound_by_vcenter(api):
    net = create_vlan(api, "e2e-ovs", "physnet1", 182)
    port = api.cli("port", "create", "--network", net["id"], "--host",
                   "network-node-1", "p-ovs")
    # Embedded mode has no agents: openvswitch cannot bind either, and
    # vcenter leaves a host it does not own alone (real mode binds it).
    assert port["binding_vif_type"] == "binding_failed"
    api.cli("port", "delete", port["id"], "--no-format")
    api.cli("network", "delete", net["id"], "--no-format")


def test_delete_network_with_ports(api, vsphere):
    net = create_vlan(api, "e2e-busy", "physnet1", 183)
    port = api.cli("port", "create", "--network", net["id"], "--host",
                   "vc-compute-1", "p-busy")
    proc = api.cli("network", "delete", net["id"], "--no-format",
                   check=False)
    assert proc.returncode != 0
    assert "in use" in proc.stderr.lower() or "InUse" in proc.stderr
    assert vsphere.dv_portgroups(dvs_name(net["id"]))
    api.cli("port", "delete", port["id"], "--no-format")
    api.cli("network", "delete", net["id"], "--no-format")
    assert vsphere.dv_portgroups(dvs_name(net["id"])) == []


def test_foreign_port_group_refused_clearly(api, vsphere, neutron):
    """A hand-made port group took our name: binding fails, nothing is
    overwritten, and the log names both sides."""
    net = create_vlan(api, "e2e-clash", "physnet1", 184)
    name = dvs_name(net["id"])
    # Someone takes our port group over by hand: in one reconfigure, our mark
    # replaced and the VLAN changed (a delete and a re-create would race the
    # maintenance worker, which re-creates ours within a second).
    vsphere.retag_dv_portgroup(name, 7, "made by hand")
    (foreign,) = vsphere.dv_portgroups(name)
    port = api.cli("port", "create", "--network", net["id"], "--host",
                   "vc-compute-1", "p-clash")
    assert port["binding_vif_type"] == "binding_failed"
    (pg,) = vsphere.dv_portgroups(name)
    assert (pg["moid"], pg["vlan"], pg["description"]) == \
        (foreign["moid"], 7, "made by hand")
    with open(neutron.api_log, encoding="utf-8", errors="replace") as f:
        log = f.read()
    assert f"cannot bind on network {net['id']}" in log
    assert f"{name} ({foreign['moid']}) on DVS0" in log
    assert "was not made by networking-vcenter" in log
    # Deleting the network leaves the foreign port group where it is.
    api.cli("port", "delete", port["id"], "--no-format")
    api.cli("network", "delete", net["id"], "--no-format")
    assert vsphere.dv_portgroups(name)[0]["moid"] == foreign["moid"]
    vsphere.destroy_dv_portgroup(name)


def test_hook_lines_carry_the_request_id(neutron, vsphere):
    """The driver's vCenter work runs in hook threads, not in the API
    request's thread: its log lines still carry the id of the request that
    caused it (oslo.log reads the thread's request context), so an operator
    can follow one API call into vCenter."""
    global_id = f"req-{uuid.uuid4()}"
    body = json.dumps({"network": {
        "name": "e2e-request-id", "provider:network_type": "vlan",
        "provider:physical_network": "physnet1",
        "provider:segmentation_id": 186}}).encode()
    req = urllib.request.Request(
        neutron.url + "/v2.0/networks", data=body, method="POST",
        headers={"Content-Type": "application/json",
                 "X-Openstack-Request-Id": global_id})
    with urllib.request.urlopen(req, timeout=120) as resp:
        net = json.loads(resp.read())["network"]
    assert len(vsphere.dv_portgroups(dvs_name(net["id"]))) == 1
    with open(neutron.api_log, encoding="utf-8", errors="replace") as f:
        log = f.read()
    # The port group is made by the hook thread's reconcile (apply.py).
    made = [line for line in log.splitlines()
            if f"network {net['id']}: create" in line]
    assert made, "no line of the port group's creation"
    assert all(global_id in line for line in made), made
    Api(neutron.url).http("DELETE", f"/v2.0/networks/{net['id']}")

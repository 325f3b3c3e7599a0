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

"""The backend seen through the real API and the ``openstack`` CLI: its row
in ``network agent list`` with no agent running, and the segment-to-host
mappings that routed provider networks place ports by."""

from __future__ import annotations

import ipaddress
import time

import pytest

pytestmark = pytest.mark.e2e

AGENT_TYPE = "vCenter backend"


def backend_rows(api) -> list[dict]:
    return [a for a in api.cli("network", "agent", "list")
            if a["Agent Type"] == AGENT_TYPE]


def test_agent_list_shows_the_backend_alive(api, neutron):
    end = time.monotonic() + 60
    while not backend_rows(api) and time.monotonic() < end:
        time.sleep(1)           # the maintenance worker's first beat
    (row,) = backend_rows(api)
    assert row["Alive"] is True, row
    assert row["Binary"] == "networking-vcenter"
    shown = api.cli("network", "agent", "show", row["ID"])
    config = shown["configuration"]
    assert config["switch_mappings"] == {"physnet1": "DVS0",
                                         "physnet2": "vSwitch1"}
    assert "vc-compute-1" in config["compute_hosts"]
    assert config["vcenter"].endswith(f":{neutron.vcenter['host_port']}")
    assert "last_full_pass" in config


def test_routed_network_port_gets_the_reached_segments_address(api):
    """A network with a segment on physnet3 (no switch mapping) and one on
    physnet1 (the DVS): a port bound to a vSphere compute host gets its
    address from the DVS segment's subnet, by the mapping the driver wrote."""
    net = api.cli("network", "create", "--provider-network-type", "vlan",
                  "--provider-physical-network", "physnet3",
                  "--provider-segment", "3301", "routed")
    try:
        (far,) = api.cli("network", "segment", "list", "--network",
                         net["id"])
        near = api.cli("network", "segment", "create", "--network",
                       net["id"], "--network-type", "vlan",
                       "--physical-network", "physnet1", "--segment", "143",
                       "routed-dvs")
        api.cli("subnet", "create", "--network", net["id"],
                "--network-segment", far["ID"], "--subnet-range",
                "10.33.0.0/24", "routed-far")
        api.cli("subnet", "create", "--network", net["id"],
                "--network-segment", near["id"], "--subnet-range",
                "10.43.0.0/24", "routed-near")
        port = api.cli("port", "create", "--network", net["id"], "--host",
                       "vc-compute-1", "routed-port")
        (ip,) = port["fixed_ips"]
        assert ipaddress.ip_address(ip["ip_address"]) in \
            ipaddress.ip_network("10.43.0.0/24"), port
        assert port["binding_vif_type"] == "dvs"
        assert port["binding_vif_details"]["segmentation_id"] == 143
        api.cli("port", "delete", port["id"], "--no-format")
    finally:
        api.cli("network", "delete", net["id"], "--no-format")


def test_network_mtu_above_the_switch_refused(api, vsphere):
    """``network create --mtu`` / ``network set --mtu`` above the DVS's
    maxMtu are refused, naming both values; at or below, accepted.  (Neutron
    itself allows up to 1500 here: DVS0 is lowered to 1400 for the test.)"""
    before = vsphere.dvs_max_mtu("DVS0")
    vsphere.set_dvs_max_mtu("DVS0", 1400)
    net = None
    try:
        time.sleep(2)           # the server's replica sees the change
        refused = api.cli("network", "create", "--provider-network-type",
                          "vlan", "--provider-physical-network", "physnet1",
                          "--provider-segment", "151", "--mtu", "1450",
                          "too-big", check=False)
        assert refused.returncode != 0
        assert "1450" in refused.stderr and "1400" in refused.stderr, \
            refused.stderr
        assert "DVS0" in refused.stderr, refused.stderr
        assert not [n for n in api.cli("network", "list", "--name",
                                       "too-big")]
        net = api.cli("network", "create", "--provider-network-type", "vlan",
                      "--provider-physical-network", "physnet1",
                      "--provider-segment", "152", "--mtu", "1400", "fits")
        assert net["mtu"] == 1400
        raised = api.cli("network", "set", "--mtu", "1500", net["id"],
                         "--no-format", check=False)
        assert raised.returncode != 0
        assert "1500" in raised.stderr and "1400" in raised.stderr, \
            raised.stderr
        assert api.cli("network", "show", net["id"])["mtu"] == 1400
    finally:
        if net is not None:
            api.cli("network", "delete", net["id"], "--no-format")
        vsphere.set_dvs_max_mtu("DVS0", before)

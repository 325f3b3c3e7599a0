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

"""The realistic deployment: MariaDB, RabbitMQ, neutron-rpc-server and the
uWSGI API, with an Open vSwitch agent reporting over RabbitMQ so that both
mechanism drivers bind, each its own hosts."""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys

import pytest

from tests.e2e import conftest

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def real(vcsim):
    server = conftest.start_server(vcsim, "real", conftest.neutron_server
                                   .free_port())
    yield server
    conftest.stop_server(server)


def test_real_mode_lifecycle_and_two_drivers(real, vsphere):
    api = conftest.Api(real.url)
    amqp = real.state["ports"]["amqp"]
    subprocess.run(
        [sys.executable, os.path.join(os.path.dirname(__file__),
                                      "report_ovs_agent.py"),
         f"rabbit://guest:guest@127.0.0.1:{amqp}/", "network-node-1",
         "physnet1:br-trunk"], check=True, timeout=120)
    agents = api.cli("network", "agent", "list", "--host", "network-node-1")
    assert [a["Agent Type"] for a in agents] == ["Open vSwitch agent"]

    net = api.cli("network", "create", "--provider-network-type", "vlan",
                  "--provider-physical-network", "physnet1",
                  "--provider-segment", "190", "real-dvs")
    (pg,) = vsphere.dv_portgroups(f"neutron-physnet1-{net['id']}")
    assert pg["vlan"] == 190
    ovs_port = api.cli("port", "create", "--network", net["id"], "--host",
                       "network-node-1", "p-ovs")
    vc_port = api.cli("port", "create", "--network", net["id"], "--host",
                      "vc-compute-1", "p-vc")
    assert ovs_port["binding_vif_type"] == "ovs"
    assert vc_port["binding_vif_type"] == "dvs"
    assert vc_port["binding_vif_details"]["pg_id"] == pg["key"]
    for port in (ovs_port, vc_port):
        api.cli("port", "delete", port["id"], "--no-format")
    api.cli("network", "delete", net["id"], "--no-format")
    assert vsphere.dv_portgroups(f"neutron-physnet1-{net['id']}") == []


def test_real_mode_listens_on_loopback_only(real):
    sockets = conftest.listening(real.pids())
    ports = real.state["ports"]
    for name in ("api", "mariadb", "amqp", "dist", "epmd"):
        assert ("127.0.0.1", ports[name]) in sockets, (name, sockets)
    # (epmd also listens on ::1, always: loopback too)
    assert all(ipaddress.ip_address(ip).is_loopback for ip, _ in sockets), \
        sockets

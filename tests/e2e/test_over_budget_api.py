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

"""A port over the rule budget never keeps rules Neutron no longer allows
(issue 15), through the real Neutron API.

Embedded Neutron (uWSGI, sqlite) with ``max_rules_per_port = 24``: a port
whose security group grows past it is blocked (its DV port passes no IP,
``blocked`` set) and shows ``ERROR``; a rule deleted meanwhile is gone from
its DV port; back within the budget it gets its rules again and its status
follows its NIC.  vSphere is read back with plain pyVmomi.
"""

from __future__ import annotations

import pytest

from networking_vcenter.reconcile import portsettings
from tests.e2e import conftest
from tests.e2e.test_ports_api import HOST, dv_port, eventually, port_json, \
    rules, vlan_network

pytestmark = pytest.mark.e2e

BUDGET = 24
TO_VM = portsettings.TO_VM


@pytest.fixture(scope="module")
def server(vcsim):
    s = conftest.start_server(vcsim, "embedded",
                              conftest.neutron_server.free_port(),
                              extra_ml2_opts={"max_rules_per_port": BUDGET})
    yield s
    conftest.stop_server(s)


@pytest.fixture(scope="module")
def api(server):
    return conftest.Api(server.url)


def add_rule(api, sg_id, **kw):
    status, body = api.http("POST", "/v2.0/security-group-rules", {
        "security_group_rule": {"security_group_id": sg_id,
                                "direction": "ingress", "ethertype": "IPv4",
                                **kw}})
    assert status == 201, body
    return body["security_group_rule"]


def delete_rule(api, rule_id):
    status, body = api.http("DELETE", f"/v2.0/security-group-rules/{rule_id}")
    assert status == 204, body


def admits_ssh(have):
    return any(r["action"] == "accept" and r["direction"] == TO_VM and
               r["dports"] == (22, 22) for r in have or [])


def test_over_budget_blocks_and_revokes(api, vsphere):
    net = vlan_network(api, "e2e-budget", 170, "10.70.0.0/24")
    status, body = api.http("POST", "/v2.0/security-groups", {
        "security_group": {"name": "e2e-budget"}})
    assert status == 201, body
    sg = body["security_group"]
    ssh = add_rule(api, sg["id"], protocol="tcp", port_range_min=22,
                   port_range_max=22, remote_ip_prefix="0.0.0.0/0")
    port = api.cli("port", "create", "--network", net["id"], "--host", HOST,
                   "--security-group", sg["id"], "e2e-budget-p1")
    details = port["binding_vif_details"]
    assert port["status"] == "DOWN"
    dvp = dv_port(vsphere, details)
    assert admits_ssh(rules(dvp)) and not dvp.config.setting.blocked.value

    extra = [add_rule(api, sg["id"], protocol="udp",
                      port_range_min=2000 + i, port_range_max=2000 + i,
                      remote_ip_prefix=f"192.0.2.{2 * i}/32")
             for i in range(1, 11)]

    def blocked():
        p = dv_port(vsphere, details)
        return port_json(api, port["id"])["status"] == "ERROR" and \
            p.config.setting.blocked.value and p
    found, took = eventually(blocked)
    assert found, "over the budget, the port is neither blocked nor ERROR"
    have = rules(found)
    assert not any(r["action"] == "accept" for r in have), have
    assert len(have) <= BUDGET

    delete_rule(api, ssh["id"])         # revoked while over the budget
    found = dv_port(vsphere, details)
    assert not admits_ssh(rules(found))
    assert found.config.setting.blocked.value

    for rule in extra:
        delete_rule(api, rule["id"])

    def back():
        p = dv_port(vsphere, details)
        have = rules(p)
        return port_json(api, port["id"])["status"] == "DOWN" and \
            not p.config.setting.blocked.value and have and \
            any(r["action"] == "accept" for r in have) and have
    have, took = eventually(back)
    assert have, "within the budget again, the port did not get its rules"
    assert not admits_ssh(have), "the deleted ssh rule came back"

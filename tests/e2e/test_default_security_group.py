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

"""A new project's ``default`` security group, through the real API (embedded
mode): it carries Neutron's default rules, as with ``neutron-db-manage upgrade
heads`` (the migration c33da356b165 seeds their templates; embedded mode
builds its schema from the models, so the launcher seeds them itself)."""

from __future__ import annotations

import uuid

import pytest

pytestmark = pytest.mark.e2e


def rule_set(group: dict) -> set[tuple]:
    return {(r["direction"], r["ethertype"], r["protocol"],
             r["port_range_min"], r["port_range_max"], r["remote_ip_prefix"],
             r["remote_group_id"], r["remote_address_group_id"])
            for r in group["security_group_rules"]}


def egress_any(ethertype: str) -> tuple:
    return ("egress", ethertype, None, None, None, None, None, None)


def test_new_projects_default_group_has_the_default_rules(api):
    project = uuid.uuid4().hex
    status, body = api.http("POST", "/v2.0/networks", {"network": {
        "name": "e2e-default-sg", "project_id": project}})
    assert status == 201, body
    net = body["network"]
    # A port of the new project, made without a security group: Neutron
    # creates the project's default group and puts the port in it.
    status, body = api.http("POST", "/v2.0/ports", {"port": {
        "name": "e2e-default-sg-port", "network_id": net["id"],
        "project_id": project}})
    assert status == 201, body
    port = body["port"]
    status, body = api.http(
        "GET", f"/v2.0/security-groups?project_id={project}&name=default")
    assert status == 200, body
    (default,) = body["security_groups"]
    assert port["security_groups"] == [default["id"]]
    assert rule_set(default) == {
        egress_any("IPv4"), egress_any("IPv6"),
        ("ingress", "IPv4", None, None, None, None, default["id"], None),
        ("ingress", "IPv6", None, None, None, None, default["id"], None)}
    assert all(r["project_id"] == project
               for r in default["security_group_rules"])

    # Any other group of the project gets the two egress rules (the
    # templates used in non-default groups), not the ingress ones.
    status, body = api.http("POST", "/v2.0/security-groups", {
        "security_group": {"name": "e2e-other", "project_id": project}})
    assert status == 201, body
    other = body["security_group"]
    assert rule_set(other) == {egress_any("IPv4"), egress_any("IPv6")}

    for path in (f"/v2.0/ports/{port['id']}",
                 f"/v2.0/networks/{net['id']}",
                 f"/v2.0/security-groups/{other['id']}",
                 f"/v2.0/security-groups/{default['id']}"):
        status, body = api.http("DELETE", path)
        assert status == 204, (path, body)

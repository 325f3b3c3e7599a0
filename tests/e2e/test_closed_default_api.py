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

"""Fail closed (issue 15), end to end: through the real Neutron API
(embedded mode) and the ``openstack`` CLI, with Nova 34's own vmwareapi
code attaching the NICs (tools/nova/attach.py).

A NIC that lands on a DV port of our port group that the driver has not
configured -- here Nova given a free port's key, as a stale or foreign
``vif_details`` would -- gets the group's default: every IP packet dropped
both ways.  A port the driver bound carries its security groups' rules as
its own, overriding that default.  vSphere is read back with plain pyVmomi
(FetchDVPorts: a port's own settings as set, its group's for the rest,
marked inherited).
"""

from __future__ import annotations

import pytest
from pyVmomi import vim

from networking_vcenter.reconcile import portsettings
from tests.e2e import nova_client
from tests.fixtures.vsphere_reader import (
    DROP_ALL_IP, dv_port_rules, effective_rules, filter_rules)

pytestmark = pytest.mark.e2e

HOST = "vc-compute-1"           # nova-compute of cluster DC0_C0
CLUSTER = "DC0_C0"
VM = "DC0_C0_RP0_VM0"
TO_VM = portsettings.TO_VM


def port_json(api, port_id):
    status, body = api.http("GET", f"/v2.0/ports/{port_id}")
    assert status == 200, body
    return body["port"]


def dv_ports(vsphere, pg_key):
    return {p.key: p for p in vsphere.dvs("DVS0").FetchDVPorts(
        vim.dvs.PortCriteria(portgroupKey=[pg_key], inside=True))}


def test_nova_nic_on_an_unconfigured_dv_port_is_closed(api, vsphere, vcsim):
    net = api.cli("network", "create", "--provider-network-type", "vlan",
                  "--provider-physical-network", "physnet1",
                  "--provider-segment", "165", "e2e-closed")
    api.cli("subnet", "create", "--network", net["id"], "--subnet-range",
            "10.65.0.0/24", "e2e-closed-subnet")
    sg = api.cli("security", "group", "create", "e2e-closed-ssh")
    api.cli("security", "group", "rule", "create", "--ingress", "--protocol",
            "tcp", "--dst-port", "22", "--remote-ip", "192.0.2.0/24",
            sg["id"])
    bound = api.cli("port", "create", "--network", net["id"], "--host",
                    HOST, "--security-group", sg["id"], "e2e-closed-bound")
    # A port the driver never binds: Nova is handed a free DV port of the
    # group for it (a stale or foreign vif_details).
    stray = api.cli("port", "create", "--network", net["id"],
                    "e2e-closed-stray")
    details = bound["binding_vif_details"]
    vcenter = nova_client.vcenter_from_url(vcsim.url)
    attached = []
    try:
        (pg,) = vsphere.dv_portgroups(f"neutron-physnet1-{net['id']}")
        assert details["pg_id"] == pg["key"]
        # The group's default: the closed filter.
        assert filter_rules(pg["ref"].config.defaultPortConfig
                            .filterPolicy) == DROP_ALL_IP
        ports = dv_ports(vsphere, pg["key"])
        free = sorted((k for k, p in ports.items()
                       if (p.config.name or "free") == "free"
                       and p.connectee is None), key=int)
        assert free and details["dvs_port_key"] not in free
        key = free[-1]

        nova_port = {**port_json(api, stray["id"]),
                     "binding:host_id": HOST, "binding:vif_type": "dvs",
                     "binding:vif_details": {**details,
                                             "dvs_port_key": key}}
        result = nova_client.attach(vcenter, CLUSTER, VM, nova_port,
                                    api.cli("network", "show", net["id"]))
        attached.append(nova_port)
        nic = result["nic"]
        assert (nic["portgroupKey"], nic["portKey"]) == (pg["key"], key)
        dvp = dv_ports(vsphere, pg["key"])[key]
        assert dvp.connectee is not None and \
            dvp.connectee.connectedEntity._moId == vsphere.vm(VM)._moId
        # Nothing of its own: the group's drop-all, marked inherited.
        assert dv_port_rules(dvp.config.setting) is None
        assert effective_rules(dvp.config.setting) == (DROP_ALL_IP, True)

        # The port the driver bound: Nova's own attach by its vif_details;
        # its DV port carries its security groups' rules as its own.
        result = nova_client.attach(vcenter, CLUSTER, VM,
                                    port_json(api, bound["id"]),
                                    api.cli("network", "show", net["id"]))
        attached.append(bound)
        assert result["nic"]["portKey"] == details["dvs_port_key"]
        mine = dv_ports(vsphere, pg["key"])[details["dvs_port_key"]]
        assert mine.config.name == bound["id"]
        assert mine.connectee is not None
        rules, inherited = effective_rules(mine.config.setting)
        assert not inherited and rules != DROP_ALL_IP
        ssh = [r for r in rules if r["direction"] == TO_VM
               and r["protocol"] == 6 and r["dports"] == (22, 22)]
        assert [(r["action"], r["source"]) for r in ssh] == \
            [("accept", ("192.0.2.0/24", False))]
        # The stray NIC's port is still closed: the driver leaves a port it
        # did not reserve as it is.
        dvp = dv_ports(vsphere, pg["key"])[key]
        assert effective_rules(dvp.config.setting) == (DROP_ALL_IP, True)
    finally:
        for port in attached:
            nova_client.detach(vcenter, CLUSTER, VM, port)
        for port in (bound, stray):
            api.cli("port", "delete", port["id"], "--no-format")
        api.cli("security", "group", "delete", sg["id"], "--no-format")
        api.cli("network", "delete", net["id"], "--no-format")

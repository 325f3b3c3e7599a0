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

"""The simulator's standard port groups and network lists: patches
0001 (network lists share no backing array), 0002 (standard port groups
share one Network across hosts) and 0005 (HostNetworkSystem.UpdatePortGroup).

Each test reads back through a fresh pyVmomi connection what an earlier call
changed, as a second client (Nova) would.
"""

import concurrent.futures

import pytest
from pyVmomi import vim

from tests.simulator.helpers import (
    _clusters, _names, _std_networks, _pg_spec, _all_network_lists)


def test_same_standard_portgroup_on_every_host_of_a_cluster(sim, si):
    cluster = _clusters(si)["DC0_C0"]
    hosts = list(cluster.host)
    assert len(hosts) == 3
    for h in hosts:
        h.configManager.networkSystem.AddPortGroup(portgrp=_pg_spec("pg-a", 101))

    si2 = sim.connect()  # an independent reader
    nets = _std_networks(si2, "pg-a")
    assert len(nets) == 1, "one Network object for all hosts"
    net = nets[0]
    assert sorted(_names(net.host)) == sorted(h.name for h in hosts)
    cluster2 = _clusters(si2)["DC0_C0"]
    assert net in list(cluster2.network)
    assert net not in list(_clusters(si2)["DC0_C1"].network)
    for h in cluster2.host:
        assert net in list(h.network)
        # The host reads its port group back, in networkInfo and config.network.
        for info in (h.configManager.networkSystem.networkInfo, h.config.network):
            pg = {p.spec.name: p for p in info.portgroup}["pg-a"]
            assert pg.spec.vlanId == 101
            assert pg.key == "key-vim.host.PortGroup-pg-a"
            assert pg.vswitch == "key-vim.host.VirtualSwitch-vSwitch0"
            vswitch0 = {v.name: v for v in info.vswitch}["vSwitch0"]
            assert pg.key in vswitch0.portgroup

    # ESXi refuses the same name twice on one host, whatever the vSwitch.
    with pytest.raises(vim.fault.AlreadyExists):
        hosts[0].configManager.networkSystem.AddPortGroup(portgrp=_pg_spec("pg-a", 102, "vSwitch1"))

    # Removing it host by host: the Network stays while any host has it.
    hosts[0].configManager.networkSystem.RemovePortGroup(pgName="pg-a")
    net = _std_networks(si2, "pg-a")[0]
    assert sorted(_names(net.host)) == sorted(h.name for h in hosts[1:])
    assert net not in list(hosts[0].network)
    assert net in list(cluster.network)
    assert "pg-a" not in [p.spec.name for p in hosts[0].configManager.networkSystem.networkInfo.portgroup]

    for h in hosts[1:]:
        h.configManager.networkSystem.RemovePortGroup(pgName="pg-a")
    assert _std_networks(si2, "pg-a") == []
    lists = _all_network_lists(si2)  # no dangling reference anywhere
    assert not any("pg-a" in names for names in lists.values())

    with pytest.raises(vim.fault.NotFound):
        hosts[0].configManager.networkSystem.RemovePortGroup(pgName="pg-a")


def test_standard_portgroup_added_in_parallel_on_all_hosts(sim, si):
    hosts = [h for c in _clusters(si).values() for h in c.host]
    assert len(hosts) == 6

    def add(host_id):
        own = sim.connect()  # one connection per thread
        h = vim.HostSystem(host_id, own._stub)
        h.configManager.networkSystem.AddPortGroup(portgrp=_pg_spec("pg-par", 7, "vSwitch1"))

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        list(pool.map(add, [h._moId for h in hosts]))

    nets = _std_networks(si, "pg-par")
    assert len(nets) == 1
    assert sorted(_names(nets[0].host)) == sorted(h.name for h in hosts)
    for c in _clusters(si).values():
        assert list(c.network).count(nets[0]) == 1
    for h in hosts:
        pg = {p.spec.name: p for p in h.configManager.networkSystem.networkInfo.portgroup}["pg-par"]
        assert pg.vswitch == "key-vim.host.VirtualSwitch-vSwitch1"
        h.configManager.networkSystem.RemovePortGroup(pgName="pg-par")
    assert _std_networks(si, "pg-par") == []
    assert not any("pg-par" in names for names in _all_network_lists(si).values())


def test_default_vm_network_survives_removal_from_one_host(si):
    host = _clusters(si)["DC0_C1"].host[0]
    host.configManager.networkSystem.RemovePortGroup(pgName="VM Network")
    nets = _std_networks(si, "VM Network")
    assert len(nets) == 1, "other hosts (and VMs) still use it"
    assert host.name not in _names(nets[0].host)
    assert nets[0] not in list(host.network)


def test_update_portgroup_changes_vlan_in_place(si):
    """Patch 0005: ESXi's UpdatePortGroup (esxcfg-vswitch --vlan)."""
    host = si.content.viewManager.CreateContainerView(
        si.content.rootFolder, [vim.HostSystem], True).view[0]
    ns = host.configManager.networkSystem
    ns.AddPortGroup(_pg_spec("pg-update", 10))
    ns.UpdatePortGroup("pg-update", _pg_spec("pg-update", 11))
    (pg,) = [p for p in host.config.network.portgroup
             if p.spec.name == "pg-update"]
    assert (pg.spec.vlanId, pg.spec.vswitchName) == (11, "vSwitch0")
    with pytest.raises(vim.fault.NotFound):
        ns.UpdatePortGroup("no-such-pg", _pg_spec("no-such-pg", 1))
    ns.RemovePortGroup("pg-update")

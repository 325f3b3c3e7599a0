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

"""Patch 0003: destroying a distributed port group leaves no references.

Each test reads back through a fresh pyVmomi connection what an earlier call
changed, as a second client (Nova) would.
"""

import pytest
from pyVmomi import vim

from tests.simulator.helpers import (
    _dc, _clusters, _names, _wait, _all_network_lists)


def test_destroyed_dvportgroup_leaves_no_dangling_reference(sim, si):
    dvs = [n for n in _dc(si).networkFolder.childEntity
           if isinstance(n, vim.DistributedVirtualSwitch) and n.name == "DVS0"][0]
    spec = vim.dvs.DistributedVirtualPortgroup.ConfigSpec(
        name="pg-b", type="earlyBinding", numPorts=8,
        defaultPortConfig=vim.dvs.VmwareDistributedVirtualSwitch.VmwarePortConfigPolicy(
            vlan=vim.dvs.VmwareDistributedVirtualSwitch.VlanIdSpec(vlanId=201, inherited=False)))
    _wait(dvs.AddDVPortgroup_Task([spec]))
    pg = [p for p in dvs.portgroup if p.name == "pg-b"][0]

    lists = _all_network_lists(si)
    for c in _clusters(si).values():
        assert lists[c.name].count("pg-b") == 1, "once per cluster, not once per host"
        for h in c.host:
            assert "pg-b" in lists[h.name]

    _wait(pg.Destroy_Task())

    si2 = sim.connect()
    lists = _all_network_lists(si2)  # reads every name: fails on a dangling reference
    assert not any("pg-b" in names for names in lists.values())
    dvs2 = type(dvs)(dvs._moId, si2._stub)
    assert "pg-b" not in _names(dvs2.portgroup)
    assert "pg-b" not in dvs2.summary.portgroupName


def test_dvportgroup_with_vms_cannot_be_destroyed(si):
    pg = [n for n in _dc(si).network
          if isinstance(n, vim.dvs.DistributedVirtualPortgroup) and n.name == "DC0_DVPG0"][0]
    vms = [vm for vm in _dc(si).vmFolder.childEntity if isinstance(vm, vim.VirtualMachine)]
    assert any(pg in list(vm.network) for vm in vms)
    with pytest.raises(vim.fault.ResourceInUse):
        _wait(pg.Destroy_Task())
    assert "DC0_DVPG0" in _names(_dc(si).network)

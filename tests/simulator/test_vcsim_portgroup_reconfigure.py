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

"""Patch 0008: a port group reconfigure merges its spec; a switch reports its
version; networks list their VMs.

Each test reads back through a fresh pyVmomi connection what an earlier call
changed, as a second client (Nova) would.
"""

import ssl

import pytest
from pyVmomi import vim

from tests.simulator.helpers import (
    VmwareDVS, PortCriteria, _std_networks, _wait, _Watch, _dvs0,
    _open_policy, _add_dvpgs, _pg_spec7, _as, _set_backing, _port_backing)


def _connect_671(sim):
    """A client speaking vim 6.7.1 (macManagementPolicy and its override
    flag are newer than the 6.5 that the default connection speaks)."""
    from pyVmomi import SoapStubAdapter
    stub = SoapStubAdapter(host=sim.host, port=sim.port, ns="vim25/6.7.1",
                           sslContext=ssl._create_unverified_context())
    si = vim.ServiceInstance("ServiceInstance", stub)
    si.content.sessionManager.Login(sim.username, sim.password)
    return si


def test_portgroup_reconfigure_merges_and_checks_config_version(sim, si):
    dvs = _dvs0(si)
    spec = _pg_spec7("merge-pg", 2, auto=True, policy=_open_policy(), vlan=310)
    spec.description = "kept"
    spec.defaultPortConfig.securityPolicy = VmwareDVS.SecurityPolicy(
        inherited=False, allowPromiscuous=vim.BoolPolicy(
            inherited=False, value=False))
    pg = _add_dvpgs(dvs, spec)["merge-pg"]
    try:
        assert pg.config.configVersion == "0"
        # Only numPorts and the VLAN: everything else stays.
        _wait(pg.ReconfigureDVPortgroup_Task(
            vim.dvs.DistributedVirtualPortgroup.ConfigSpec(
                configVersion="0", numPorts=4,
                defaultPortConfig=VmwareDVS.VmwarePortConfigPolicy(
                    vlan=VmwareDVS.VlanIdSpec(vlanId=311, inherited=False)))))
        cfg = _as(sim.connect(), pg).config
        assert cfg.configVersion == "1" and cfg.numPorts == 4
        assert (cfg.name, cfg.description, cfg.type, cfg.autoExpand) == (
            "merge-pg", "kept", "earlyBinding", True)
        assert cfg.defaultPortConfig.vlan.vlanId == 311
        assert cfg.defaultPortConfig.securityPolicy.allowPromiscuous.value \
            is False
        assert cfg.policy.trafficFilterOverrideAllowed is True
        assert cfg.policy.portConfigResetAtDisconnect is False
        assert len(_as(sim.connect(), pg).portKeys) == 4

        # A stale configVersion: refused, nothing changed.
        with pytest.raises(vim.fault.ConcurrentAccess):
            _wait(pg.ReconfigureDVPortgroup_Task(
                vim.dvs.DistributedVirtualPortgroup.ConfigSpec(
                    configVersion="0", numPorts=8, description="lost")))
        pg2 = _as(sim.connect(), pg)
        assert (pg2.config.configVersion, pg2.config.description,
                len(pg2.portKeys)) == ("1", "kept", 4)
    finally:
        _wait(pg.Destroy_Task())


def test_switch_version_and_mac_management_on_a_port(sim, si):
    dvs = _dvs0(si)
    version = dvs.summary.productInfo.version
    assert version and dvs.config.productInfo.version == version
    si671 = _connect_671(sim)
    dvs671 = _as(si671, dvs)
    spec = _pg_spec7("mac-pg", 2, policy=_open_policy())
    pg = _add_dvpgs(dvs671, spec)["mac-pg"]
    try:
        assert _as(si671, pg).config.policy.macManagementOverrideAllowed
        key = pg.portKeys[0]
        mac = VmwareDVS.MacManagementPolicy(
            inherited=False, allowPromiscuous=False, macChanges=True,
            forgedTransmits=True, macLearningPolicy=VmwareDVS.MacLearningPolicy(
                inherited=False, enabled=True, allowUnicastFlooding=True,
                limit=4096, limitPolicy="DROP"))
        _wait(dvs671.ReconfigureDVPort_Task(port=[
            vim.dvs.DistributedVirtualPort.ConfigSpec(
                key=key, operation="edit", configVersion="0",
                setting=VmwareDVS.VmwarePortConfigPolicy(
                    macManagementPolicy=mac))]))
        (port,) = _as(_connect_671(sim), dvs).FetchDVPorts(
            PortCriteria(portKey=[key]))
        got = port.config.setting.macManagementPolicy
        assert (got.inherited, got.allowPromiscuous, got.macChanges,
                got.forgedTransmits) == (False, False, True, True)
        assert (got.macLearningPolicy.enabled, got.macLearningPolicy.limit,
                got.macLearningPolicy.limitPolicy) == (True, 4096, "DROP")
    finally:
        _wait(pg.Destroy_Task())


def test_network_vm_lists_follow_the_nics(sim, si, model_vms):
    dvs = _dvs0(si)
    pg = _add_dvpgs(dvs, _pg_spec7("vm-list", 2))["vm-list"]
    vm0, _ = model_vms
    (dc_net,) = _std_networks(si, "VM Network")
    watch = _Watch(si, si.content.rootFolder,
                   [(vim.dvs.DistributedVirtualPortgroup, ["vm"])])
    try:
        _set_backing(vm0, _port_backing(pg, pg.portKeys[1]))
        assert [v._moId for v in _as(sim.connect(), pg).vm] == [vm0._moId]
        seen = [p["vm"] for moid, _, p in watch.changes()
                if moid == pg._moId]
        assert seen and [v._moId for v in seen[-1]] == [vm0._moId]
        _set_backing(vm0, vim.vm.device.VirtualEthernetCard.NetworkBackingInfo(
            deviceName="VM Network", network=dc_net))
        assert list(_as(sim.connect(), pg).vm) == []
        assert vm0._moId in [v._moId for v in
                             _as(sim.connect(), dc_net).vm]
        seen = [p["vm"] for moid, _, p in watch.changes()
                if moid == pg._moId]
        assert seen and not seen[-1]
    finally:
        watch.close()
        _wait(pg.Destroy_Task())

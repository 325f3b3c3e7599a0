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

"""Patch 0009: a distributed switch's maxMtu and a standard vSwitch's mtu,
stored, checked and reported.

Each test reads back through a fresh pyVmomi connection what an earlier call
changed, as a second client (Nova) would.
"""

import pytest
from pyVmomi import vim, vmodl

from tests.simulator.helpers import (
    VmwareDVS, _dc, _clusters, _names, _wait, _Watch, _dvs0, _as)


def _create_dvs(si, name, **config):
    folder = _dc(si).networkFolder
    spec = vim.DistributedVirtualSwitch.CreateSpec(
        configSpec=VmwareDVS.ConfigSpec(name=name, **config))
    return _wait(folder.CreateDVS_Task(spec))


def test_dvs_max_mtu_is_stored_checked_and_reported(sim, si):
    dvs0 = _dvs0(si)
    assert dvs0.config.maxMtu == 1500            # vCenter's default
    # "0" at create, one more for each host the model added since.
    assert int(dvs0.config.configVersion) > 0

    jumbo = _create_dvs(si, "mtu-dvs", maxMtu=9000)
    try:
        with pytest.raises(vmodl.fault.InvalidArgument):
            _create_dvs(si, "mtu-dvs-bad", maxMtu=9001)
        assert "mtu-dvs-bad" not in _names(_dc(si).networkFolder.childEntity)
        dvs = _as(sim.connect(), jumbo)
        assert (dvs.config.maxMtu, dvs.config.configVersion) == (9000, "0")

        watch = _Watch(si, si.content.rootFolder, [
            (vim.dvs.VmwareDistributedVirtualSwitch, ["config.maxMtu"])])
        try:
            _wait(jumbo.ReconfigureDvs_Task(VmwareDVS.ConfigSpec(
                configVersion="0", maxMtu=1600)))
            seen = [p for moid, _, p in watch.changes()
                    if moid == jumbo._moId]
            assert seen and seen[-1]["config.maxMtu"] == 1600
        finally:
            watch.close()
        dvs = _as(sim.connect(), jumbo)
        assert (dvs.config.maxMtu, dvs.config.configVersion) == (1600, "1")

        # A stale configVersion, or an MTU out of range: nothing changes.
        with pytest.raises(vim.fault.ConcurrentAccess):
            _wait(jumbo.ReconfigureDvs_Task(VmwareDVS.ConfigSpec(
                configVersion="0", maxMtu=9000)))
        with pytest.raises(vmodl.fault.InvalidArgument):
            _wait(jumbo.ReconfigureDvs_Task(VmwareDVS.ConfigSpec(
                configVersion="1", maxMtu=1000)))
        # A spec without maxMtu keeps it.
        _wait(jumbo.ReconfigureDvs_Task(VmwareDVS.ConfigSpec(
            configVersion="1", description="kept mtu")))
        dvs = _as(sim.connect(), jumbo)
        assert (dvs.config.maxMtu, dvs.config.configVersion) == (1600, "2")
    finally:
        _wait(jumbo.Destroy_Task())


def test_vswitch_mtu_is_stored_checked_and_reported(sim, si):
    cluster = _clusters(si)["DC0_C1"]
    host, other = cluster.host[0], cluster.host[1]
    ns = host.configManager.networkSystem
    for h in (host, other):
        v0 = {v.name: v for v in h.config.network.vswitch}["vSwitch0"]
        assert (v0.mtu, v0.spec.mtu) == (1500, 1500)

    ns.AddVirtualSwitch("vSwitchMtu", vim.host.VirtualSwitch.Specification(
        numPorts=64, mtu=9000))
    with pytest.raises(vmodl.fault.InvalidArgument):
        ns.AddVirtualSwitch("vSwitchBad", vim.host.VirtualSwitch.Specification(
            numPorts=64, mtu=100))
    try:
        names = {v.name: v for v in _as(sim.connect(), host).config.network.vswitch}
        assert "vSwitchBad" not in names
        assert (names["vSwitchMtu"].mtu, names["vSwitchMtu"].spec.mtu) == (9000, 9000)

        watch = _Watch(si, cluster, [(vim.HostSystem, ["config.network.vswitch"])])
        try:
            ns.UpdateVirtualSwitch("vSwitch1", vim.host.VirtualSwitch.Specification(
                numPorts=128, mtu=1400))
            seen = [p["config.network.vswitch"] for moid, _, p in watch.changes()
                    if moid == host._moId]
            assert seen and {v.name: v.mtu for v in seen[-1]}["vSwitch1"] == 1400
        finally:
            watch.close()
        for h, want in ((host, 1400), (other, 1500)):
            v1 = {v.name: v for v in _as(sim.connect(), h).config.network.vswitch}["vSwitch1"]
            assert (v1.mtu, v1.spec.mtu) == (want, want)
        assert {v.name: v.mtu for v in ns.networkInfo.vswitch}["vSwitch1"] == 1400

        with pytest.raises(vmodl.fault.InvalidArgument):
            ns.UpdateVirtualSwitch("vSwitch1", vim.host.VirtualSwitch.Specification(
                numPorts=128, mtu=9216))
        with pytest.raises(vim.fault.NotFound):
            ns.UpdateVirtualSwitch("vSwitchNone", vim.host.VirtualSwitch.Specification(
                numPorts=128, mtu=1500))
        assert {v.name: v.mtu for v in _as(sim.connect(), host)
                .config.network.vswitch}["vSwitch1"] == 1400
    finally:
        ns.UpdateVirtualSwitch("vSwitch1", vim.host.VirtualSwitch.Specification(
            numPorts=128, mtu=1500))
        ns.RemoveVirtualSwitch("vSwitchMtu")

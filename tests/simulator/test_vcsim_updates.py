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

"""Patch 0006: WaitForUpdatesEx reports what vCenter reports (port group,
custom value and rename changes, a host joining a cluster).

Each test reads back through a fresh pyVmomi connection what an earlier call
changed, as a second client (Nova) would.
"""

import time

import pytest
from pyVmomi import vim

from tests.simulator.helpers import (
    _dc, _clusters, _names, _std_networks, _pg_spec, _wait, _Watch)


def test_host_portgroup_changes_are_reported(si):
    host = _clusters(si)["DC0_C0"].host[0]
    watch = _Watch(si, _clusters(si)["DC0_C0"],
                   [(vim.HostSystem, ["config.network.portgroup"])])
    try:
        ns = host.configManager.networkSystem
        ns.AddPortGroup(_pg_spec("watched-pg", 5, "vSwitch1"))
        ((moid, kind, props),) = watch.changes()
        assert (moid, kind) == (host._moId, "modify")
        assert ("watched-pg", 5) in {(p.spec.name, p.spec.vlanId) for p in
                                     props["config.network.portgroup"]}
        ns.UpdatePortGroup("watched-pg", _pg_spec("watched-pg", 6,
                                                  "vSwitch1"))
        ((_, _, props),) = watch.changes()
        assert ("watched-pg", 6) in {(p.spec.name, p.spec.vlanId) for p in
                                     props["config.network.portgroup"]}
        ns.RemovePortGroup("watched-pg")
        ((_, _, props),) = watch.changes()
        assert "watched-pg" not in {p.spec.name for p in
                                    props["config.network.portgroup"]}
    finally:
        watch.close()


@pytest.mark.serial     # a 0.2 s wall-clock bound: no other worker runs
def test_dvportgroup_reconfigure_and_rename_are_reported(si):
    dvs = [d for d in _dc(si).networkFolder.childEntity
           if isinstance(d, vim.DistributedVirtualSwitch)][0]
    VmwareDVS = vim.dvs.VmwareDistributedVirtualSwitch
    spec = vim.dvs.DistributedVirtualPortgroup.ConfigSpec(
        name="watched-dvpg", type="earlyBinding", numPorts=8,
        description="before", defaultPortConfig=VmwareDVS
        .VmwarePortConfigPolicy(vlan=VmwareDVS.VlanIdSpec(vlanId=7)))
    _wait(dvs.AddDVPortgroup_Task([spec]))
    pg = [p for p in dvs.portgroup if p.name == "watched-dvpg"][0]
    watch = _Watch(si, si.content.rootFolder,
                   [(vim.dvs.DistributedVirtualPortgroup,
                     ["name", "config.description"])])
    try:
        spec.name, spec.description = "renamed-dvpg", "after"
        spec.configVersion = pg.config.configVersion
        t0 = time.monotonic()
        _wait(pg.ReconfigureDVPortgroup_Task(spec))
        changes = [c for c in watch.changes() if c[0] == pg._moId]
        assert time.monotonic() - t0 < 0.2     # not a 250 ms tick late
        props = {k: v for _, _, p in changes for k, v in p.items()}
        assert props == {"name": "renamed-dvpg",
                         "config.description": "after"}
        assert pg.name == "renamed-dvpg"
    finally:
        watch.close()
        _wait(pg.Destroy_Task())


def test_custom_value_set_twice_is_replaced_and_reported(si):
    cfm = si.content.customFieldsManager
    field = cfm.AddCustomFieldDef(name="watched-field", moType=vim.Network)
    net = _std_networks(si, "VM Network")[0]
    watch = _Watch(si, si.content.rootFolder, [(vim.Network, ["customValue"])])
    try:
        cfm.SetField(net, field.key, "one")
        cfm.SetField(net, field.key, "two")
        seen = [p["customValue"] for moid, _, p in watch.changes()
                if moid == net._moId]
        assert seen and [(v.key, v.value) for v in seen[-1]
                         if v.key == field.key] == [(field.key, "two")]
        assert [v.value for v in net.customValue if v.key == field.key] == \
            ["two"]
    finally:
        watch.close()
        cfm.RemoveCustomFieldDef(field.key)


def test_host_added_to_a_cluster_enters_its_views(si):
    cluster = _clusters(si)["DC0_C1"]
    watch = _Watch(si, cluster, [(vim.HostSystem, ["name"])])
    try:
        task = cluster.AddHost_Task(spec=vim.host.ConnectSpec(
            hostName="joined-host"), asConnected=True)
        _wait(task)
        entered = [(kind, p.get("name")) for _, kind, p in watch.changes()]
        assert ("enter", "joined-host") in entered
        assert "joined-host" in _names(cluster.host)
    finally:
        watch.close()

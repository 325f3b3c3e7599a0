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

"""Patch 0007: distributed virtual ports as vCenter keeps them.

Each test reads back through a fresh pyVmomi connection what an earlier call
changed, as a second client (Nova) would.
"""

import time

import pytest
from pyVmomi import vim, vmodl

from tests.simulator.helpers import (
    VmwareDVS, PortCriteria, _dc, _clusters, _std_networks, _wait, _Watch,
    _dvs0, _open_policy, _add_dvpgs, _pg_spec7, _as, _nic, _set_backing,
    _port_backing)


def _ports(dvs, **criteria):
    return {p.key: p for p in dvs.FetchDVPorts(PortCriteria(**criteria))}


def test_ports_come_with_their_port_group_keys_unique_in_the_switch(sim, si):
    dvs = _dvs0(si)
    pgs = _add_dvpgs(dvs, _pg_spec7("ports-a", 4), _pg_spec7("ports-b", 3))
    si2 = sim.connect()
    a, b = (_as(si2, pgs[n]) for n in ("ports-a", "ports-b"))
    assert len(a.portKeys) == 4 and a.config.numPorts == 4
    assert len(b.portKeys) == 3
    assert not set(a.portKeys) & set(b.portKeys), "keys unique per switch"
    dvs2 = _as(si2, dvs)
    ports = _ports(dvs2, portgroupKey=[a.key], inside=True)
    assert sorted(ports) == sorted(a.portKeys)
    for p in ports.values():
        assert (p.portgroupKey, p.dvsUuid) == (a.key, dvs.uuid)
        assert p.config.configVersion == "0" and p.connectee is None
        assert p.config.setting.vlan.vlanId == 300     # the group's
        assert p.config.setting.vlan.inherited is True
    all_keys = set(dvs2.FetchDVPortKeys())
    assert set(a.portKeys) | set(b.portKeys) <= all_keys
    assert len(all_keys) == len(dvs2.FetchDVPorts()), "no duplicates"

    a_keys, b_keys = set(a.portKeys), set(b.portKeys)
    _wait(pgs["ports-a"].Destroy_Task())
    left = set(_as(sim.connect(), dvs).FetchDVPortKeys())
    assert not a_keys & left and b_keys <= left
    _wait(pgs["ports-b"].Destroy_Task())


def test_fetch_dv_ports_honours_its_criteria(sim, si):
    dvs = _dvs0(si)
    pgs = _add_dvpgs(dvs, _pg_spec7("crit-a", 3), _pg_spec7("crit-b", 2))
    try:
        a, b = pgs["crit-a"], pgs["crit-b"]
        dvs2 = _as(sim.connect(), dvs)
        assert set(dvs2.FetchDVPortKeys(PortCriteria(
            portKey=[a.portKeys[1], b.portKeys[0]]))) == {
                a.portKeys[1], b.portKeys[0]}
        outside = set(dvs2.FetchDVPortKeys(PortCriteria(
            portgroupKey=[a.key], inside=False)))
        assert set(b.portKeys) <= outside and not set(a.portKeys) & outside
        both = _ports(dvs2, portgroupKey=[a.key, b.key])
        assert sorted(both) == sorted(a.portKeys + b.portKeys)
        # The model's VMs sit on DC0_DVPG0: their ports are the connected ones.
        connected = _ports(dvs2, connected=True)
        vms = {vm._moId for vm in _dc(si).vmFolder.childEntity
               if isinstance(vm, vim.VirtualMachine)
               and _nic(vm).backing.port.switchUuid == dvs.uuid}
        assert vms and {p.connectee.connectedEntity._moId
                        for p in connected.values()} == vms
        free = set(dvs2.FetchDVPortKeys(PortCriteria(connected=False)))
        assert not free & set(connected) and set(a.portKeys) <= free
        active = _ports(dvs2, active=True)
        assert all(p.state.runtimeInfo.linkUp for p in active.values())
        assert set(active) <= set(connected)
    finally:
        for pg in pgs.values():
            _wait(pg.Destroy_Task())


def _filter_policy():
    IpQ = vim.dvs.TrafficRule.IpQualifier
    return vim.dvs.DistributedVirtualPort.FilterPolicy(inherited=False, filterConfig=[
        vim.dvs.DistributedVirtualPort.TrafficFilterConfig(
            agentName="dvfilter-generic-vmware", inherited=False,
            trafficRuleset=vim.dvs.TrafficRuleset(enabled=True, rules=[
                vim.dvs.TrafficRule(
                    sequence=10, direction="incomingPackets",
                    description="ssh", action=vim.dvs.TrafficRule.AcceptAction(),
                    qualifier=[IpQ(
                        protocol=vim.IntExpression(value=6),
                        sourceAddress=vim.IpRange(
                            addressPrefix="10.0.0.0", prefixLength=8),
                        destinationIpPort=vim.dvs.TrafficRule.IpPortRange(
                            startPortNumber=22, endPortNumber=22))]),
                vim.dvs.TrafficRule(
                    sequence=100, direction="both",
                    action=vim.dvs.TrafficRule.DropAction(),
                    qualifier=[IpQ(sourceAddress=vim.SingleIp(
                        address="0.0.0.0", negate=False))])]))])


def test_reconfigure_three_ports_in_one_task(sim, si):
    dvs = _dvs0(si)
    pg = _add_dvpgs(dvs, _pg_spec7("cfg-3", 4, policy=_open_policy()))["cfg-3"]
    try:
        k1, k2, k3, k4 = pg.portKeys
        reject = vim.BoolPolicy(inherited=False, value=False)
        shaping = vim.dvs.DistributedVirtualPort.TrafficShapingPolicy(
            inherited=False, enabled=vim.BoolPolicy(inherited=False, value=True),
            averageBandwidth=vim.LongPolicy(inherited=False, value=10240000),
            peakBandwidth=vim.LongPolicy(inherited=False, value=20480000),
            burstSize=vim.LongPolicy(inherited=False, value=1280000))
        Spec = vim.dvs.DistributedVirtualPort.ConfigSpec
        specs = [
            Spec(key=k1, operation="edit", configVersion="0", name="port-one",
                 description="filtered",
                 setting=VmwareDVS.VmwarePortConfigPolicy(
                     filterPolicy=_filter_policy())),
            Spec(key=k2, operation="edit", configVersion="0",
                 setting=VmwareDVS.VmwarePortConfigPolicy(
                     securityPolicy=VmwareDVS.SecurityPolicy(
                         inherited=False, allowPromiscuous=reject,
                         macChanges=reject, forgedTransmits=reject),
                     inShapingPolicy=shaping, outShapingPolicy=shaping)),
            Spec(key=k3, operation="edit", configVersion="0",
                 setting=VmwareDVS.VmwarePortConfigPolicy(
                     vlan=VmwareDVS.TrunkVlanSpec(inherited=False, vlanId=[
                         vim.NumericRange(start=100, end=199),
                         vim.NumericRange(start=300, end=300)]))),
        ]
        _wait(dvs.ReconfigureDVPort_Task(port=specs))

        ports = _ports(_as(sim.connect(), dvs), portKey=[k1, k2, k3, k4])
        p1, p2, p3, p4 = (ports[k] for k in (k1, k2, k3, k4))
        assert [p.config.configVersion for p in (p1, p2, p3, p4)] == \
            ["1", "1", "1", "0"]
        assert (p1.config.name, p1.config.description) == ("port-one",
                                                           "filtered")
        (fc,) = p1.config.setting.filterPolicy.filterConfig
        assert fc.agentName == "dvfilter-generic-vmware"
        assert fc.trafficRuleset.enabled is True
        ssh, drop = fc.trafficRuleset.rules
        assert (ssh.sequence, ssh.direction) == (10, "incomingPackets")
        assert isinstance(ssh.action, vim.dvs.TrafficRule.AcceptAction)
        (q,) = ssh.qualifier
        assert q.protocol.value == 6
        assert (q.sourceAddress.addressPrefix, q.sourceAddress.prefixLength) \
            == ("10.0.0.0", 8)
        assert (q.destinationIpPort.startPortNumber,
                q.destinationIpPort.endPortNumber) == (22, 22)
        assert isinstance(drop.action, vim.dvs.TrafficRule.DropAction)
        assert p1.config.setting.vlan.vlanId == 300            # inherited
        assert p1.config.setting.vlan.inherited is True
        sec = p2.config.setting.securityPolicy
        assert [sec.allowPromiscuous.value, sec.macChanges.value,
                sec.forgedTransmits.value] == [False, False, False]
        for s in (p2.config.setting.inShapingPolicy,
                  p2.config.setting.outShapingPolicy):
            assert s.enabled.value is True
            assert (s.averageBandwidth.value, s.peakBandwidth.value,
                    s.burstSize.value) == (10240000, 20480000, 1280000)
        assert isinstance(p3.config.setting.vlan, VmwareDVS.TrunkVlanSpec)
        assert [(r.start, r.end) for r in p3.config.setting.vlan.vlanId] == \
            [(100, 199), (300, 300)]
        assert p4.config.setting.filterPolicy is None

        # A later edit merges: the filter stays, the VLAN goes back to the group's.
        _wait(dvs.ReconfigureDVPort_Task(port=[
            Spec(key=k1, operation="edit", configVersion="1",
                 setting=VmwareDVS.VmwarePortConfigPolicy(
                     blocked=vim.BoolPolicy(inherited=False, value=True))),
            Spec(key=k3, operation="edit", configVersion="1",
                 setting=VmwareDVS.VmwarePortConfigPolicy(
                     vlan=VmwareDVS.VlanIdSpec(inherited=True)))]))
        ports = _ports(_as(sim.connect(), dvs), portKey=[k1, k3])
        assert ports[k1].config.setting.filterPolicy.filterConfig
        assert ports[k1].config.setting.blocked.value is True
        assert ports[k1].state.runtimeInfo.blocked is True
        assert ports[k3].config.setting.vlan.vlanId == 300
        assert ports[k3].config.configVersion == "2"
    finally:
        _wait(pg.Destroy_Task())


def _filter_spec(key, direction="both", address="10.0.0.1"):
    """A port spec (at configVersion 1) with one rule of a given direction
    and source address."""
    rule = vim.dvs.TrafficRule(
        sequence=1, direction=direction,
        action=vim.dvs.TrafficRule.DropAction(),
        qualifier=[vim.dvs.TrafficRule.IpQualifier(
            sourceAddress=vim.SingleIp(address=address))])
    return vim.dvs.DistributedVirtualPort.ConfigSpec(
        key=key, operation="edit", configVersion="1",
        setting=VmwareDVS.VmwarePortConfigPolicy(
            filterPolicy=vim.dvs.DistributedVirtualPort.FilterPolicy(
                inherited=False, filterConfig=[
                    vim.dvs.DistributedVirtualPort.TrafficFilterConfig(
                        agentName="dvfilter-generic-vmware", inherited=False,
                        trafficRuleset=vim.dvs.TrafficRuleset(
                            enabled=True, rules=[rule]))])))


def test_stale_config_version_unknown_key_or_forbidden_override_changes_nothing(sim, si):
    dvs = _dvs0(si)
    pgs = _add_dvpgs(dvs, _pg_spec7("cfg-stale", 2, policy=_open_policy()),
                     _pg_spec7("cfg-closed", 1))        # simulator's default
    try:
        k1, k2 = pgs["cfg-stale"].portKeys
        (closed,) = pgs["cfg-closed"].portKeys
        Spec = vim.dvs.DistributedVirtualPort.ConfigSpec

        def named(key, name, version):
            return Spec(key=key, operation="edit", name=name,
                        configVersion=version)

        _wait(dvs.ReconfigureDVPort_Task(port=[named(k2, "v1", "0")]))
        attempts = [
            (vim.fault.ConcurrentAccess,          # k2 is at "1" now
             [named(k1, "lost", "0"), named(k2, "lost", "0")]),
            (vim.fault.NotFound, [named(k1, "lost", "0"),
                                  named("no-such-port", "lost", None)]),
            (vmodl.fault.InvalidArgument, [named(k1, "lost", "0"),
                                           named(k1, "lost2", "0")]),
            (vmodl.fault.InvalidArgument, [       # override not allowed
                named(k1, "lost", "0"),
                Spec(key=closed, operation="edit", configVersion="0",
                     setting=VmwareDVS.VmwarePortConfigPolicy(
                         filterPolicy=_filter_policy()))]),
            (vmodl.fault.InvalidArgument, [       # VLAN out of range
                named(k1, "lost", "0"),
                Spec(key=k2, operation="edit", configVersion="1",
                     setting=VmwareDVS.VmwarePortConfigPolicy(
                         vlan=VmwareDVS.TrunkVlanSpec(inherited=False, vlanId=[
                             vim.NumericRange(start=4000, end=4095)])))]),
            (vmodl.fault.InvalidArgument, [       # no such direction
                named(k1, "lost", "0"), _filter_spec(k2, direction="ingress")]),
            (vmodl.fault.InvalidArgument, [       # not an address
                named(k1, "lost", "0"), _filter_spec(k2, address="10.0.0.300")]),
            (vmodl.fault.InvalidArgument, [       # negative bandwidth
                named(k1, "lost", "0"),
                Spec(key=k2, operation="edit", configVersion="1",
                     setting=VmwareDVS.VmwarePortConfigPolicy(
                         inShapingPolicy=vim.dvs.DistributedVirtualPort
                         .TrafficShapingPolicy(
                             inherited=False, averageBandwidth=vim.LongPolicy(
                                 inherited=False, value=-1))))]),
        ]
        for fault, specs in attempts:
            with pytest.raises(fault):
                _wait(dvs.ReconfigureDVPort_Task(port=specs))
        ports = _ports(_as(sim.connect(), dvs), portKey=[k1, k2, closed])
        assert (ports[k1].config.name, ports[k1].config.configVersion) == \
            (None, "0")
        assert (ports[k2].config.name, ports[k2].config.configVersion) == \
            ("v1", "1")
        assert ports[closed].config.setting.filterPolicy is None
        # Inherited values are no override: allowed on a closed group.
        _wait(dvs.ReconfigureDVPort_Task(port=[Spec(
            key=closed, operation="edit", configVersion="0",
            setting=VmwareDVS.VmwarePortConfigPolicy(
                vlan=VmwareDVS.VlanIdSpec(inherited=True)))]))
    finally:
        for pg in pgs.values():
            _wait(pg.Destroy_Task())


def test_nic_on_a_given_port_key_is_its_connectee_until_detached(
        sim, si, model_vms):
    dvs = _dvs0(si)
    pg = _add_dvpgs(dvs, _pg_spec7("nic-pin", 4, policy=_open_policy(
        portConfigResetAtDisconnect=True)))["nic-pin"]
    vm0, vm1 = model_vms
    key = pg.portKeys[2]
    watch = _Watch(si, si.content.rootFolder,
                   [(vim.VirtualMachine, ["config.hardware.device"])])
    try:
        Spec = vim.dvs.DistributedVirtualPort.ConfigSpec
        _wait(dvs.ReconfigureDVPort_Task(port=[Spec(
            key=key, operation="edit", configVersion="0", name="neutron-port",
            setting=VmwareDVS.VmwarePortConfigPolicy(
                filterPolicy=_filter_policy()))]))
        nic_key = _set_backing(vm0, _port_backing(pg, key))

        seen = [p["config.hardware.device"] for moid, _, p in watch.changes()
                if moid == vm0._moId]
        assert seen and any(
            getattr(d.backing, "port", None) and d.backing.port.portKey == key
            for d in seen[-1])
        si2 = sim.connect()
        (port,) = _as(si2, dvs).FetchDVPorts(PortCriteria(portKey=[key]))
        assert port.connectee.connectedEntity._moId == vm0._moId
        assert port.connectee.nicKey == str(nic_key)
        assert port.connectee.type == "vmVnic"
        assert port.state.runtimeInfo.linkUp == (
            vm0.runtime.powerState == "poweredOn")
        assert port.config.setting.filterPolicy.filterConfig   # kept
        assert _nic(_as(si2, vm0)).backing.port.portKey == key
        assert pg in list(_as(si2, vm0).network)

        # Another NIC cannot have it; that VM is left as it was.
        before = _nic(vm1).backing
        with pytest.raises(vim.fault.ResourceInUse):
            _set_backing(vm1, _port_backing(pg, key))
        after = _nic(_as(sim.connect(), vm1)).backing
        assert (after.port.portgroupKey, after.port.portKey) == (
            before.port.portgroupKey, before.port.portKey)
        with pytest.raises(vim.fault.NotFound):
            _set_backing(vm1, _port_backing(pg, "no-such-port"))

        # Without a port key: a free port of the group, filled in.
        _set_backing(vm1, _port_backing(pg))
        got = _nic(_as(sim.connect(), vm1)).backing.port.portKey
        assert got in pg.portKeys and got != key

        # Detached: the port is free again and, as the group says
        # (portConfigResetAtDisconnect), back to the group's settings.
        (dc_net,) = _std_networks(si, "VM Network")
        _set_backing(vm0, vim.vm.device.VirtualEthernetCard.NetworkBackingInfo(
            deviceName="VM Network", network=dc_net))
        (port,) = _as(sim.connect(), dvs).FetchDVPorts(
            PortCriteria(portKey=[key]))
        assert port.connectee is None
        assert port.state.runtimeInfo.linkUp is False
        assert port.config.setting.filterPolicy is None
        assert port.config.configVersion == "2"
        assert key in _as(sim.connect(), dvs).FetchDVPortKeys(
            PortCriteria(connected=False))
    finally:
        watch.close()
        (dc_net,) = _std_networks(si, "VM Network")
        for vm in (vm0, vm1):   # off the group, so that it can go
            _set_backing(vm, vim.vm.device.VirtualEthernetCard
                         .NetworkBackingInfo(deviceName="VM Network",
                                             network=dc_net))
        _wait(pg.Destroy_Task())


def test_port_groups_grow_on_demand_and_on_reconfigure(sim, si, model_vms):
    dvs = _dvs0(si)
    pgs = _add_dvpgs(dvs, _pg_spec7("grow-auto", 1, auto=True),
                     _pg_spec7("grow-fixed", 1, auto=False))
    auto, fixed = pgs["grow-auto"], pgs["grow-fixed"]
    vm0, vm1 = model_vms
    watch = _Watch(si, si.content.rootFolder,
                   [(vim.dvs.DistributedVirtualPortgroup, ["portKeys"]),
                    (vim.DistributedVirtualSwitch, ["summary.numPorts"])])
    try:
        before = dvs.summary.numPorts
        _set_backing(vm0, _port_backing(auto))
        _set_backing(vm1, _port_backing(auto))      # full: 8 more ports
        changes, deadline = [], time.monotonic() + 5
        while time.monotonic() < deadline and not (
                {auto._moId, dvs._moId} <= {c[0] for c in changes}):
            changes += watch.changes(wait=1)
        grown = [p["portKeys"] for moid, _, p in changes
                 if moid == auto._moId]
        assert grown and len(grown[-1]) == 9
        counts = [p["summary.numPorts"] for moid, _, p in changes
                  if moid == dvs._moId]
        assert counts and counts[-1] == before + 8
        auto2 = _as(sim.connect(), auto)
        assert len(auto2.portKeys) == 9 and auto2.config.numPorts == 9
        assert {_nic(_as(sim.connect(), vm)).backing.port.portKey
                for vm in (vm0, vm1)} <= set(auto2.portKeys)

        _set_backing(vm0, _port_backing(fixed))
        with pytest.raises(vim.fault.ResourceNotAvailable):   # full, fixed
            _set_backing(vm1, _port_backing(fixed))
        assert _nic(_as(sim.connect(), vm1)).backing.port.portgroupKey == \
            auto.key

        # numPorts raised by hand: ports added, reported.
        spec = _pg_spec7("grow-fixed", 3)
        spec.configVersion = fixed.config.configVersion
        _wait(fixed.ReconfigureDVPortgroup_Task(spec))
        grown = [p["portKeys"] for moid, _, p in watch.changes()
                 if moid == fixed._moId]
        assert grown and len(grown[-1]) == 3
        _set_backing(vm1, _port_backing(fixed))     # room now
        keys = set(_as(sim.connect(), dvs).FetchDVPortKeys())
        assert set(_as(sim.connect(), fixed).portKeys) <= keys

        # Fewer ports than are connected: refused, nothing removed.
        spec.numPorts = 1
        spec.configVersion = fixed.config.configVersion
        with pytest.raises(vmodl.fault.InvalidArgument):
            _wait(fixed.ReconfigureDVPortgroup_Task(spec))
        assert len(_as(sim.connect(), fixed).portKeys) == 3
        spec.numPorts = 2                            # the free one goes
        _wait(fixed.ReconfigureDVPortgroup_Task(spec))
        fixed2 = _as(sim.connect(), fixed)
        assert len(fixed2.portKeys) == 2 and fixed2.config.numPorts == 2
        assert {_nic(_as(sim.connect(), vm)).backing.port.portKey
                for vm in (vm0, vm1)} == set(fixed2.portKeys)
    finally:
        watch.close()
        (dc_net,) = _std_networks(si, "VM Network")
        for vm in (vm0, vm1):
            _set_backing(vm, vim.vm.device.VirtualEthernetCard
                         .NetworkBackingInfo(deviceName="VM Network",
                                             network=dc_net))
        for pg in pgs.values():
            _wait(pg.Destroy_Task())


def test_new_vm_takes_its_port_and_destroying_it_frees_the_port(sim, si):
    dvs = _dvs0(si)
    pg = _add_dvpgs(dvs, _pg_spec7("vm-life", 2))["vm-life"]
    key = pg.portKeys[1]
    cluster = _clusters(si)["DC0_C0"]
    try:
        nic = vim.vm.device.VirtualVmxnet3(
            key=-1, backing=_port_backing(pg, key),
            connectable=vim.vm.device.VirtualDevice.ConnectInfo(
                startConnected=True, connected=True))
        config = vim.vm.ConfigSpec(
            name="port-life-vm", guestId="otherGuest",
            files=vim.vm.FileInfo(vmPathName="[LocalDS_0]"),
            deviceChange=[vim.vm.device.VirtualDeviceSpec(
                operation="add", device=nic)])
        vm = _wait(_dc(si).vmFolder.CreateVM_Task(
            config, cluster.resourcePool, cluster.host[0]))
        dvs2 = _as(sim.connect(), dvs)
        (port,) = dvs2.FetchDVPorts(PortCriteria(portKey=[key]))
        assert port.connectee.connectedEntity._moId == vm._moId
        assert port.state.runtimeInfo.linkUp is False       # powered off
        _wait(vm.PowerOnVM_Task())
        (port,) = dvs2.FetchDVPorts(PortCriteria(portKey=[key], active=True))
        assert port.state.runtimeInfo.linkUp is True
        _wait(vm.PowerOffVM_Task())
        _wait(vm.Destroy_Task())
        (port,) = dvs2.FetchDVPorts(PortCriteria(portKey=[key]))
        assert port.connectee is None
    finally:
        _wait(pg.Destroy_Task())

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

"""Helpers of the simulator tests (tests/simulator/test_vcsim_*.py): the
model's objects, a second client's PropertyCollector watch, DV port
groups and VM NICs.
"""

import time

from pyVmomi import vim, vmodl


VmwareDVS = vim.dvs.VmwareDistributedVirtualSwitch
PortCriteria = vim.dvs.PortCriteria


def _dc(si):
    return si.content.rootFolder.childEntity[0]


def _clusters(si):
    return {c.name: c for c in _dc(si).hostFolder.childEntity
            if isinstance(c, vim.ClusterComputeResource)}


def _names(objs):
    """Names of a managed object list; raises if any reference dangles."""
    return [o.name for o in objs]


def _std_networks(si, name):
    return [n for n in _dc(si).networkFolder.childEntity
            if type(n) is vim.Network and n.name == name]


def _pg_spec(name, vlan, vswitch="vSwitch0"):
    return vim.host.PortGroup.Specification(
        name=name, vlanId=vlan, vswitchName=vswitch, policy=vim.host.NetworkPolicy())


def _wait(task):
    while task.info.state not in (vim.TaskInfo.State.success, vim.TaskInfo.State.error):
        time.sleep(0.01)
    if task.info.state == vim.TaskInfo.State.error:
        raise task.info.error
    return task.info.result


def _all_network_lists(si):
    """{owner name: [network names]} for the datacenter, every compute resource and host."""
    dc = _dc(si)
    out = {dc.name: _names(dc.network)}
    for cr in dc.hostFolder.childEntity:
        out[cr.name] = _names(cr.network)
        for h in cr.host:
            out[h.name] = _names(h.network)
    return out


class _Watch:
    """A second client's PropertyCollector filter over a container view, as
    the driver's replica (and any vCenter client) watches."""

    def __init__(self, si, container, types_paths):
        content = si.RetrieveContent()
        self.pc = content.propertyCollector.CreatePropertyCollector()
        view = content.viewManager.CreateContainerView(
            container, [t for t, _ in types_paths], True)
        PC = vmodl.query.PropertyCollector
        self.pc.CreateFilter(PC.FilterSpec(
            objectSet=[PC.ObjectSpec(obj=view, skip=True, selectSet=[
                PC.TraversalSpec(name="v", path="view", skip=False,
                                 type=vim.view.ContainerView)])],
            propSet=[PC.PropertySpec(type=t, pathSet=p)
                     for t, p in types_paths]), partialUpdates=False)
        self.version = self.pc.WaitForUpdatesEx(
            "", PC.WaitOptions(maxWaitSeconds=0)).version

    def changes(self, wait=5):
        """(moid, kind, {property: value}) of the next batch of changes."""
        update = self.pc.WaitForUpdatesEx(
            self.version, vmodl.query.PropertyCollector.WaitOptions(
                maxWaitSeconds=wait))
        if update is None:
            return []
        self.version = update.version
        return [(o.obj._moId, o.kind, {c.name: c.val for c in o.changeSet})
                for fs in update.filterSet for o in fs.objectSet]

    def close(self):
        self.pc.DestroyPropertyCollector()


def _dvs0(si):
    return [d for d in _dc(si).networkFolder.childEntity
            if isinstance(d, vim.DistributedVirtualSwitch)
            and d.name == "DVS0"][0]


def _open_policy(**flags):
    """A port group policy letting ports override what issue 8 needs."""
    allowed = dict(
        blockOverrideAllowed=True, shapingOverrideAllowed=True,
        vendorConfigOverrideAllowed=False, livePortMovingAllowed=False,
        portConfigResetAtDisconnect=False,
        networkResourcePoolOverrideAllowed=False,
        trafficFilterOverrideAllowed=True, vlanOverrideAllowed=True,
        uplinkTeamingOverrideAllowed=False,
        securityPolicyOverrideAllowed=True, ipfixOverrideAllowed=False,
        macManagementOverrideAllowed=True)
    allowed.update(flags)
    return VmwareDVS.VMwarePortgroupPolicy(**allowed)


def _add_dvpgs(dvs, *specs):
    """Add port groups in one task; answers {name: port group}."""
    _wait(dvs.AddDVPortgroup_Task(list(specs)))
    names = {s.name for s in specs}
    return {p.name: p for p in dvs.portgroup if p.name in names}


def _pg_spec7(name, ports, auto=False, policy=None, vlan=300):
    return vim.dvs.DistributedVirtualPortgroup.ConfigSpec(
        name=name, type="earlyBinding", numPorts=ports, autoExpand=auto,
        policy=policy, defaultPortConfig=VmwareDVS.VmwarePortConfigPolicy(
            vlan=VmwareDVS.VlanIdSpec(vlanId=vlan, inherited=False)))


def _as(si, obj):
    """The same managed object through another client's connection."""
    return type(obj)(obj._moId, si._stub)


def _vm(si, name):
    return [vm for vm in _dc(si).vmFolder.childEntity
            if isinstance(vm, vim.VirtualMachine) and vm.name == name][0]


def _nic(vm):
    return next(d for d in vm.config.hardware.device
                if isinstance(d, vim.vm.device.VirtualEthernetCard))


def _set_backing(vm, backing):
    """Edit the VM's first NIC onto backing, connected, as Nova (vm_util)
    does."""
    nic = _nic(vm)
    nic.backing = backing
    nic.connectable = vim.vm.device.VirtualDevice.ConnectInfo(
        startConnected=True, connected=True, allowGuestControl=True)
    _wait(vm.ReconfigVM_Task(vim.vm.ConfigSpec(deviceChange=[
        vim.vm.device.VirtualDeviceSpec(operation="edit", device=nic)])))
    return nic.key


def _port_backing(pg, port_key=None):
    return vim.vm.device.VirtualEthernetCard.DistributedVirtualPortBackingInfo(
        port=vim.dvs.PortConnection(
            switchUuid=pg.config.distributedVirtualSwitch.uuid,
            portgroupKey=pg.key, portKey=port_key))

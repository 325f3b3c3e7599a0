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

"""An independent read of vSphere (the simulator), for test assertions and
for what the demo shows.

Deliberately written with plain pyVmomi container views and attribute reads,
sharing no code with the driver's own inventory module, so that a bug there
cannot hide itself in the tests.  Also a few direct writes that tests use to
play the part of an operator editing vCenter by hand.  Needs nothing but
pyVmomi: tests import it through tests/fixtures/vsphere_reader.py, tools/
(the demo) from here.
"""

from __future__ import annotations

import ipaddress

from pyVmomi import vim
from pyVmomi import vmodl


def find_named(content, vimtype, name: str):
    """The managed object of that type and name, through a container view
    of the whole inventory of ``content`` (a ServiceInstanceContent: the
    client's own, or a driver session's when the object must be bound to
    that session)."""
    view = content.viewManager.CreateContainerView(
        content.rootFolder, [vimtype], True)
    try:
        return next(o for o in view.view if o.name == name)
    finally:
        view.DestroyView()


class Reader:
    def __init__(self, si):
        self.si = si
        self.content = si.RetrieveContent()

    def close(self) -> None:
        from pyVim.connect import Disconnect
        try:
            Disconnect(self.si)
        except Exception:  # noqa: BLE001 - the simulator may be gone already
            pass

    def _all(self, vimtype):
        view = self.content.viewManager.CreateContainerView(
            self.content.rootFolder, [vimtype], True)
        try:
            return list(view.view)
        finally:
            view.DestroyView()

    def dvs(self, name):
        for d in self._all(vim.DistributedVirtualSwitch):
            if d.name == name:
                return d
        raise LookupError(name)

    def dv_portgroups(self, name):
        """Distributed port groups of that name: list of dicts.  A group
        deleted between the listing and the read (the worker may be removing
        it while a test looks) is not there."""
        out = []
        for pg in self._all(vim.dvs.DistributedVirtualPortgroup):
            try:
                if pg.name != name:
                    continue
                config = pg.config
            except vmodl.fault.ManagedObjectNotFound:
                continue
            vlan = config.defaultPortConfig.vlan
            trunk = isinstance(
                vlan, vim.dvs.VmwareDistributedVirtualSwitch.TrunkVlanSpec)
            out.append({
                "moid": pg._moId, "key": config.key, "ref": pg,
                "switch": config.distributedVirtualSwitch.name,
                "switch_uuid": config.distributedVirtualSwitch.uuid,
                "vlan": None if trunk else getattr(vlan, "vlanId", None),
                # A trunk's (start, end) ranges as vCenter holds them.
                "trunk": [(r.start, r.end) for r in vlan.vlanId or []]
                if trunk else None,
                "description": config.description or ""})
        return out

    def dv_port(self, switch_uuid, port_key):
        """One DV port as FetchDVPorts shows it, by its switch's UUID (as
        a binding's ``vif_details`` name it)."""
        (dvs,) = [d for d in self._all(vim.DistributedVirtualSwitch)
                  if d.uuid == switch_uuid]
        (port,) = dvs.FetchDVPorts(vim.dvs.PortCriteria(portKey=[port_key]))
        return port

    def dv_port_vlan(self, switch, port_key):
        """The VLAN setting of one DV port, as FetchDVPorts shows it:
        ``("trunk", [(start, end), ...])`` for a VLAN trunk,
        ``("vlan", id)`` for a single VLAN, with ``inherited`` (True: the
        port group's)."""
        (port,) = self.dvs(switch).FetchDVPorts(
            vim.dvs.PortCriteria(portKey=[port_key]))
        vlan = port.config.setting.vlan
        if isinstance(vlan, vim.dvs.VmwareDistributedVirtualSwitch
                      .TrunkVlanSpec):
            value = ("trunk", [(r.start, r.end) for r in vlan.vlanId])
        else:
            value = ("vlan", vlan.vlanId)
        return value, bool(vlan.inherited)

    def set_dv_port_trunk(self, switch, port_key, ranges):
        """Set one DV port's VLAN trunk ranges, as an operator does in the
        vSphere Client (only the VLAN in the setting)."""
        (port,) = self.dvs(switch).FetchDVPorts(
            vim.dvs.PortCriteria(portKey=[port_key]))
        dvs = vim.dvs.VmwareDistributedVirtualSwitch
        self.wait(self.dvs(switch).ReconfigureDVPort_Task(port=[
            vim.dvs.DistributedVirtualPort.ConfigSpec(
                key=port_key, operation="edit",
                configVersion=port.config.configVersion,
                setting=dvs.VmwarePortConfigPolicy(vlan=dvs.TrunkVlanSpec(
                    inherited=False, vlanId=[
                        vim.NumericRange(start=a, end=b)
                        for a, b in ranges])))]))

    def attach_nic(self, vm_name, mac, details):
        """Add a NIC to a VM on the DV port a binding's ``vif_details``
        name (as Nova's VMware driver does), with pyVmomi."""
        vm = self.vm(vm_name)
        nic = vim.vm.device.VirtualVmxnet3(
            key=-1, macAddress=mac, addressType="manual",
            backing=vim.vm.device.VirtualEthernetCard
            .DistributedVirtualPortBackingInfo(port=vim.dvs.PortConnection(
                switchUuid=details["dvs_id"], portgroupKey=details["pg_id"],
                portKey=details["dvs_port_key"])))
        self.wait(vm.ReconfigVM_Task(vim.vm.ConfigSpec(deviceChange=[
            vim.vm.device.VirtualDeviceSpec(operation="add", device=nic)])))
        return vm

    def detach_nic(self, vm, port_key):
        """Remove the VM's NIC that is on this DV port, with pyVmomi."""
        (dev,) = [d for d in vm.config.hardware.device
                  if isinstance(d, vim.vm.device.VirtualEthernetCard)
                  and getattr(d.backing, "port", None) is not None
                  and d.backing.port.portKey == port_key]
        self.wait(vm.ReconfigVM_Task(vim.vm.ConfigSpec(deviceChange=[
            vim.vm.device.VirtualDeviceSpec(operation="remove",
                                            device=dev)])))

    def nic(self, vm_name, mac):
        """(VM, its NIC with that MAC or None)."""
        vm = self.vm(vm_name)
        return vm, next((d for d in vm.config.hardware.device
                         if isinstance(d, vim.vm.device.VirtualEthernetCard)
                         and d.macAddress == mac), None)

    def vm(self, name):
        for v in self._all(vim.VirtualMachine):
            if v.name == name:
                return v
        raise LookupError(name)

    def hosts_of_cluster(self, cluster):
        for c in self._all(vim.ComputeResource):
            if c.name == cluster:
                return sorted(h.name for h in c.host)
        raise LookupError(cluster)

    def host(self, name):
        for h in self._all(vim.HostSystem):
            if h.name == name:
                return h
        raise LookupError(name)

    def host_portgroup_security(self, name):
        """{host name: (allowPromiscuous, macChanges, forgedTransmits)} of
        the port group's own security policy (None where it has none)."""
        out = {}
        for h in self._all(vim.HostSystem):
            for pg in h.config.network.portgroup or []:
                if pg.spec.name == name:
                    sec = pg.spec.policy.security if pg.spec.policy else None
                    out[h.name] = None if sec is None else (
                        sec.allowPromiscuous, sec.macChanges,
                        sec.forgedTransmits)
        return out

    def host_portgroups(self, name):
        """{host name: (vswitch, vlan)} for every host with that port group."""
        out = {}
        for h in self._all(vim.HostSystem):
            for pg in h.config.network.portgroup or []:
                if pg.spec.name == name:
                    out[h.name] = (pg.spec.vswitchName, pg.spec.vlanId)
        return out

    def networks_named(self, name):
        out = []
        for n in self._all(vim.Network):
            try:
                if n.name == name:
                    out.append(n)
            except vmodl.fault.ManagedObjectNotFound:
                continue        # deleted since the listing
        return out

    # -- an operator's hand edits ------------------------------------------

    def add_dv_portgroup(self, switch, name, vlan, description="hand-made"):
        spec = vim.dvs.DistributedVirtualPortgroup.ConfigSpec(
            name=name, type="earlyBinding", numPorts=8,
            description=description,
            defaultPortConfig=vim.dvs.VmwareDistributedVirtualSwitch
            .VmwarePortConfigPolicy(
                vlan=vim.dvs.VmwareDistributedVirtualSwitch.VlanIdSpec(
                    vlanId=vlan, inherited=False)))
        task = self.dvs(switch).AddDVPortgroup_Task([spec])
        self.wait(task)
        return self.dv_portgroups(name)[0]

    def retag_dv_portgroup(self, name, vlan, description=None):
        pg = self.dv_portgroups(name)[0]["ref"]
        spec = vim.dvs.DistributedVirtualPortgroup.ConfigSpec(
            name=pg.name, type=pg.config.type, numPorts=pg.config.numPorts,
            configVersion=pg.config.configVersion,
            description=pg.config.description if description is None
            else description,
            defaultPortConfig=vim.dvs.VmwareDistributedVirtualSwitch
            .VmwarePortConfigPolicy(
                vlan=vim.dvs.VmwareDistributedVirtualSwitch.VlanIdSpec(
                    vlanId=vlan, inherited=False)))
        self.wait(pg.ReconfigureDVPortgroup_Task(spec))

    def set_dv_portgroup_trunk(self, name, ranges):
        """Set a distributed port group's trunk ranges, as an operator
        does in the vSphere Client (only the VLAN policy in the spec)."""
        pg = self.dv_portgroups(name)[0]["ref"]
        dvs = vim.dvs.VmwareDistributedVirtualSwitch
        spec = vim.dvs.DistributedVirtualPortgroup.ConfigSpec(
            configVersion=pg.config.configVersion,
            defaultPortConfig=dvs.VmwarePortConfigPolicy(
                vlan=dvs.TrunkVlanSpec(inherited=False, vlanId=[
                    vim.NumericRange(start=a, end=b) for a, b in ranges])))
        self.wait(pg.ReconfigureDVPortgroup_Task(spec))

    def set_host_portgroup_vlan(self, host, name, vlan):
        """Retag one host's standard port group (``esxcfg-vswitch``)."""
        ns = self.host(host).configManager.networkSystem
        (pg,) = [p for p in ns.networkInfo.portgroup if p.spec.name == name]
        ns.UpdatePortGroup(name, vim.host.PortGroup.Specification(
            name=name, vlanId=vlan, vswitchName=pg.spec.vswitchName,
            policy=pg.spec.policy))

    def destroy_dv_portgroup(self, name):
        for pg in self.dv_portgroups(name):
            self.wait(pg["ref"].Destroy_Task())

    def add_host_portgroup(self, host, vswitch, name, vlan):
        ns = self.host(host).configManager.networkSystem
        ns.AddPortGroup(vim.host.PortGroup.Specification(
            name=name, vlanId=vlan, vswitchName=vswitch,
            policy=vim.host.NetworkPolicy()))

    def remove_host_portgroup(self, host, name):
        self.host(host).configManager.networkSystem.RemovePortGroup(name)

    def dvs_max_mtu(self, name):
        return self.dvs(name).config.maxMtu

    def set_dvs_max_mtu(self, name, mtu):
        """As an operator would: with the switch's current configVersion."""
        d = self.dvs(name)
        self.wait(d.ReconfigureDvs_Task(
            vim.dvs.VmwareDistributedVirtualSwitch.ConfigSpec(
                configVersion=d.config.configVersion, maxMtu=mtu)))

    def vswitch_mtus(self, vswitch):
        """{host name: mtu} of the standard vSwitch of that name."""
        return {h.name: v.mtu for h in self._all(vim.HostSystem)
                for v in h.config.network.vswitch or []
                if v.name == vswitch}

    def set_vswitch_mtu(self, host, vswitch, mtu):
        h = self.host(host)
        (v,) = [v for v in h.config.network.vswitch if v.name == vswitch]
        spec = v.spec
        spec.mtu = mtu
        h.configManager.networkSystem.UpdateVirtualSwitch(vswitch, spec)

    @staticmethod
    def wait(task):
        import time
        for _ in range(600):
            if task.info.state in ("success", "error"):
                break
            time.sleep(0.05)
        if task.info.state != "success":
            raise RuntimeError(task.info.error)


def _addr(a):
    """A qualifier address as CIDR text (None: any)."""
    if a is None:
        return None
    if isinstance(a, vim.SingleIp):
        net = ipaddress.ip_network(a.address)
        return str(net), bool(a.negate)
    # The simulator leaves out a prefix length of 0 (vCenter sends it).
    return (str(ipaddress.ip_network(f"{a.addressPrefix}/{a.prefixLength or 0}",
                                     strict=False)), bool(a.negate))


def port_range(p):
    """A qualifier's port (range) as (first, last); None: any."""
    if p is None:
        return None
    if isinstance(p, vim.dvs.TrafficRule.IpPortRange):
        return (p.startPortNumber, p.endPortNumber)
    return (p.portNumber, p.portNumber)


def dv_port_rules(setting):
    """The traffic rules of a DV port's own filter as dicts, in sequence
    order; None when the port has no filter of its own, [] when it has an
    empty or disabled one."""
    fp = setting.filterPolicy
    if fp is None or fp.inherited:
        return None
    return filter_rules(fp)


def effective_rules(setting):
    """(rules, inherited) of the traffic filter a DV port applies, as
    FetchDVPorts shows it: its own (inherited False) or its port group's
    default (inherited True); rules as :func:`dv_port_rules`, None when
    there is no filter at all."""
    fp = setting.filterPolicy
    return filter_rules(fp), bool(fp is not None and fp.inherited)


def ruleset_rules(fp):
    """The ``DvsTrafficRule`` objects of a traffic filter policy (a port's
    or a port group's ``defaultPortConfig.filterPolicy``), held or
    inherited alike, in sequence order; None when there is no filter, []
    when it is empty or disabled."""
    if fp is None or not fp.filterConfig:
        return None
    ruleset = fp.filterConfig[0].trafficRuleset
    if ruleset is None or not ruleset.enabled:
        return []
    return sorted(ruleset.rules or [], key=lambda r: r.sequence)


def filter_rules(fp):
    """The rules of a traffic filter policy as dicts, as
    :func:`ruleset_rules` finds them (None: no filter).  Each dict's ``ip``
    says whether the rule has an IP qualifier (else it would match non-IP
    frames such as ARP too)."""
    rules = ruleset_rules(fp)
    if rules is None:
        return None
    out = []
    for r in rules:
        q = (r.qualifier or [None])[0]
        action = "accept" if isinstance(
            r.action, vim.dvs.TrafficRule.AcceptAction) else "drop"
        proto = q.protocol.value if q is not None and q.protocol else None
        out.append({
            "direction": r.direction, "action": action, "protocol": proto,
            "source": _addr(q.sourceAddress) if q is not None else None,
            "destination": (_addr(q.destinationAddress)
                            if q is not None else None),
            "dports": port_range(q.destinationIpPort) if q is not None else None,
            "sports": port_range(q.sourceIpPort) if q is not None else None,
            "ip": isinstance(q, vim.dvs.TrafficRule.IpQualifier)})
    return out


# The traffic filter a DV port of a networking-vcenter port group applies
# while the driver has not configured it (free, released, or taken by a NIC
# the driver does not know): every IPv4 and IPv6 packet dropped, both ways;
# each rule IP-qualified, so ARP passes.  As filter_rules() reads it.
DROP_ALL_IP = [
    {"direction": direction, "action": "drop", "protocol": None,
     "source": (any_ip, False), "destination": None, "dports": None,
     "sports": None, "ip": True}
    for direction in ("incomingPackets", "outgoingPackets")
    for any_ip in ("0.0.0.0/0", "::/0")]

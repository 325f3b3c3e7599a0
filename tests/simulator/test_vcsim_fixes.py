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

"""The project's vCenter simulator: its patches to govmomi 0.24.2 and its launcher.

Each test reads back through a fresh pyVmomi connection what an earlier call
changed, as a second client (Nova) would.
"""

import concurrent.futures
import os
import re
import signal
import ssl
import subprocess
import time
import urllib.request

import pytest
from pyVmomi import vim, vmodl

from tests.fixtures.vcsim import Vcsim, VcsimError, ensure_binary


@pytest.fixture(scope="module")
def sim():
    with Vcsim(clusters=2, hosts=3, vms=2,
               extra_args=("-extra-vswitch", "vSwitch1", "-extra-dvs", "DVS1")) as s:
        yield s


@pytest.fixture
def si(sim):
    return sim.connect()


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


# (a) HostNetworkSystem.AddPortGroup / RemovePortGroup: one shared Network

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


# (b) DistributedVirtualPortgroup.Destroy_Task leaves no dangling references

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


# (c) PropertyCollector honours TraversalSpec.type (oslo.vmware get_objects)

def _oslo_vmware_recursive_traversal():
    """The traversal of oslo_vmware.vim_util.build_recursive_traversal_spec."""
    TS = vmodl.query.PropertyCollector.TraversalSpec
    SS = vmodl.query.PropertyCollector.SelectionSpec

    def sel(*names):
        return [SS(name=n) for n in names]

    rp_next = sel("rp_to_rp", "rp_to_vm")
    hops = [
        # name, type, path, next
        ("h_to_vm", "HostSystem", "vm", sel("visitFolders")),
        ("dc_to_hf", "Datacenter", "hostFolder", sel("visitFolders")),
        ("dc_to_vmf", "Datacenter", "vmFolder", sel("visitFolders")),
        ("dc_to_netf", "Datacenter", "networkFolder", sel("visitFolders")),
        ("dc_to_df", "Datacenter", "datastoreFolder", sel("visitFolders")),
        ("cr_to_ds", "ComputeResource", "datastore", []),
        ("cr_to_h", "ComputeResource", "host", []),
        ("cr_to_rp", "ComputeResource", "resourcePool", rp_next),
        ("ccr_to_h", "ClusterComputeResource", "host", []),
        ("ccr_to_ds", "ClusterComputeResource", "datastore", []),
        ("ccr_to_rp", "ClusterComputeResource", "resourcePool", rp_next),
        ("rp_to_rp", "ResourcePool", "resourcePool", rp_next),
        ("rp_to_vm", "ResourcePool", "vm", rp_next),
    ]
    select = sel("visitFolders") + [
        TS(name=n, type=getattr(vim, t), path=p, skip=False, selectSet=s) for n, t, p, s in hops]
    return TS(name="visitFolders", type=vim.Folder, path="childEntity", skip=False,
              selectSet=select)


def _get_objects(si, type_):
    pc = si.content.propertyCollector
    spec = vmodl.query.PropertyCollector.FilterSpec(
        objectSet=[vmodl.query.PropertyCollector.ObjectSpec(
            obj=si.content.rootFolder, skip=False, selectSet=[_oslo_vmware_recursive_traversal()])],
        propSet=[vmodl.query.PropertyCollector.PropertySpec(type=type_, pathSet=["name"])])
    result = pc.RetrievePropertiesEx([spec], vmodl.query.PropertyCollector.RetrieveOptions(maxObjects=100))
    return sorted(o.propSet[0].val for o in result.objects)


def test_oslo_vmware_traversal_with_vms(sim, si):
    assert _get_objects(si, vim.VirtualMachine) == [
        "DC0_C0_RP0_VM0", "DC0_C0_RP0_VM1", "DC0_C1_RP0_VM0", "DC0_C1_RP0_VM1"]
    assert _get_objects(si, vim.ClusterComputeResource) == ["DC0_C0", "DC0_C1"]
    assert len(_get_objects(si, vim.HostSystem)) == 6
    assert "DVS0" in _get_objects(si, vim.DistributedVirtualSwitch)
    assert sim.proc.poll() is None, "the simulator is still alive"
    assert sim.connect().CurrentTime()


# (d) the launcher

def test_extra_switches(si):
    dvs1 = [n for n in _dc(si).networkFolder.childEntity
            if isinstance(n, vim.DistributedVirtualSwitch) and n.name == "DVS1"][0]
    hosts = [h for c in _clusters(si).values() for h in c.host]
    assert sorted(_names(dvs1.summary.hostMember)) == sorted(_names(hosts))
    for h in hosts:
        vswitches = {v.name: v for v in h.configManager.networkSystem.networkInfo.vswitch}
        assert vswitches["vSwitch1"].key == "key-vim.host.VirtualSwitch-vSwitch1"


def test_esx_model():
    with Vcsim(model="esx") as s:
        si = s.connect()
        assert si.content.about.apiType == "HostAgent"
        host = _dc(si).hostFolder.childEntity[0].host[0]
        host.configManager.networkSystem.AddPortGroup(portgrp=_pg_spec("pg-esx", 5))
        net = [n for n in host.network if n.name == "pg-esx"][0]
        assert _names(net.host) == [host.name]
        host.configManager.networkSystem.RemovePortGroup(pgName="pg-esx")
        assert "pg-esx" not in _names(host.network)


def test_idle_timeout_expires_session():
    with Vcsim(clusters=1, hosts=1, idle_timeout=1) as s:
        si = s.connect()
        assert si.CurrentTime()
        time.sleep(2.5)  # expiry lands between T and 2T
        with pytest.raises(vim.fault.NotAuthenticated):
            si.content.rootFolder.childEntity
        assert s.connect().CurrentTime(), "a new login works"


def test_wsdl_dir_is_served(tmp_path):
    (tmp_path / "vimService.wsdl").write_text("<definitions>vim service</definitions>")
    (tmp_path / "vim-types.xsd").write_text("<schema/>")
    with Vcsim(clusters=1, hosts=1, wsdl_dir=tmp_path) as s:
        ctx = ssl._create_unverified_context()
        with urllib.request.urlopen("https://%s:%d/sdk/vimService.wsdl" % (s.host, s.port),
                                    context=ctx) as r:
            assert r.read() == b"<definitions>vim service</definitions>"
            assert r.headers["Content-Type"].startswith("text/xml")
        with urllib.request.urlopen("https://%s:%d/sdk/vim-types.xsd" % (s.host, s.port),
                                    context=ctx) as r:
            assert r.read() == b"<schema/>"
        assert s.connect().CurrentTime(), "/sdk still answers SOAP"


def test_method_delay():
    with Vcsim(clusters=1, hosts=1, extra_args=("-method-delay", "CurrentTime:300")) as s:
        si = s.connect()
        t = time.monotonic()
        si.CurrentTime()
        assert time.monotonic() - t >= 0.3


def test_sigterm_exits_cleanly_and_pidfile(tmp_path):
    pidfile = tmp_path / "vcsim.pid"
    proc = subprocess.Popen([ensure_binary(), "-cluster", "1", "-host", "1", "-pidfile", str(pidfile)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        line = proc.stdout.readline().decode()
        assert line.startswith("SDK_URL=https://127.0.0.1:") and line.endswith("/sdk\n")
        assert int(pidfile.read_text()) == proc.pid
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
        assert proc.stdout.read() == b"", "exactly one line on stdout"
        assert not pidfile.exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_failed_start_reports_log_and_leaves_nothing_running():
    s = Vcsim(extra_args=("-model", "bogus"))
    with pytest.raises(VcsimError) as err:
        s.start(timeout=10)
    assert "unknown -model" in str(err.value)
    assert s.proc is None and s.returncode not in (None, 0)
    s.stop()  # idempotent
    os.unlink(s.log_path)


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


def test_login_checks_the_password():
    """A real vCenter refuses a wrong password; stock vcsim accepts any."""
    with Vcsim(extra_args=("-password", "right-one")) as s:
        s.password = "wrong-one"
        with pytest.raises(vim.fault.InvalidLogin):
            s.connect()
        s.password = "right-one"
        assert s.connect().RetrieveContent().about.apiType == "VirtualCenter"


# -- 0006: WaitForUpdatesEx reports what vCenter reports ----------------------

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


# -- 0007: distributed virtual ports as vCenter keeps them --------------------

VmwareDVS = vim.dvs.VmwareDistributedVirtualSwitch
PortCriteria = vim.dvs.PortCriteria


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


def _ports(dvs, **criteria):
    return {p.key: p for p in dvs.FetchDVPorts(PortCriteria(**criteria))}


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


@pytest.fixture
def model_vms(si):
    """The model's VMs of cluster DC0_C0 (DC0_C1 has a host outside DVS0 once
    0006's test added one); their NICs go back to where they were."""
    names = ("DC0_C0_RP0_VM0", "DC0_C0_RP0_VM1")
    before = {name: _nic(_vm(si, name)).backing for name in names}
    yield [_vm(si, name) for name in names]
    for name, backing in before.items():
        backing.port.portKey = None
        _set_backing(_vm(si, name), backing)


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


# -- 0008: a port group reconfigure merges; a switch reports its version -----

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


# -- 0009: switch MTUs ---------------------------------------------------------

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


# -- 0010: a VM's changeVersion -------------------------------------------------

def test_vm_change_version_follows_each_reconfigure(sim, si):
    vm = _vm(si, "DC0_C1_RP0_VM1")
    before = vm.config.changeVersion
    # vCenter's form: the UTC time of the change, to the microsecond.
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", before), before
    watch = _Watch(si, si.content.rootFolder,
                   [(vim.VirtualMachine, ["config.changeVersion"])])
    try:
        _wait(vm.ReconfigVM_Task(vim.vm.ConfigSpec(annotation="changed")))
        seen = [p for moid, _, p in watch.changes() if moid == vm._moId]
        assert seen and seen[-1]["config.changeVersion"] > before
        after = seen[-1]["config.changeVersion"]
        # A refused reconfigure changes nothing.
        with pytest.raises(vmodl.fault.InvalidArgument):
            _wait(vm.ReconfigVM_Task(vim.vm.ConfigSpec(guestId="no-such-guest")))
        assert _as(sim.connect(), vm).config.changeVersion == after
    finally:
        watch.close()
        _wait(vm.ReconfigVM_Task(vim.vm.ConfigSpec(annotation="")))

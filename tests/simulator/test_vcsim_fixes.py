"""The project's vCenter simulator: its patches to govmomi 0.24.2 and its launcher.

Each test reads back through a fresh pyVmomi connection what an earlier call
changed, as a second client (Nova) would.
"""

import concurrent.futures
import os
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
    dvs2 = vim.DistributedVirtualSwitch(dvs._moId, si2._stub)
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

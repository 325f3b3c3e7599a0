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

"""The vSphere side of per-port settings (issue 8) against the simulator.

:mod:`networking_vcenter.vsphere.ports` writes and reads DV ports through the
driver's own session; every assertion about what vCenter holds reads it back
with a second, plain pyVmomi client (:class:`Reader` and the helpers below),
as Nova or an operator would see it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ssl
import threading
import uuid

import pytest
from pyVmomi import SoapAdapter, VmomiSupport, vim

from networking_vcenter import conf
from networking_vcenter import exceptions
from networking_vcenter.vsphere import inventory
from networking_vcenter.vsphere import ports
from networking_vcenter.vsphere import session as session_mod
from networking_vcenter.vsphere import switches
from networking_vcenter.vsphere.inventory import (
    INCOMING, OUTGOING, PortSettings, Shaping, TrafficRule)
from networking_vcenter.vsphere import replica as replica_mod
from networking_vcenter.vsphere.replica import Replica
from tests.fixtures.soap import each_request
from tests.fixtures.vcsim import Vcsim, driver_settings
from tests.fixtures.vsphere_reader import Reader

VmwareDVS = vim.dvs.VmwareDistributedVirtualSwitch
DEPLOYMENT = "default"


@pytest.fixture(scope="module")
def sim():
    with Vcsim(clusters=1, hosts=2, vms=2) as s:
        yield s


@pytest.fixture(scope="module")
def reader(sim):
    r = Reader(sim.connect())
    yield r
    r.close()


def _settings(sim) -> conf.Settings:
    return driver_settings(
        sim, dvs_name_template="neutron-{physnet}-{network_id}",
        deployment_name=DEPLOYMENT)


@pytest.fixture
def session(sim):
    s = session_mod.Session(_settings(sim))
    yield s
    s.close()


def _connect_671(sim):
    """A plain pyVmomi client speaking vim 6.7.1."""
    stub = SoapAdapter.SoapStubAdapter(
        host=sim.host, port=sim.port, ns="vim25/6.7.1",
        sslContext=ssl._create_unverified_context())
    si = vim.ServiceInstance("ServiceInstance", stub)
    si.content.sessionManager.Login(sim.username, sim.password)
    return si


# The replica's long-poll thread (replica.py).
REPLICA = "vcenter-replica"


@contextlib.contextmanager
def requests():
    """[(thread name, SOAP method)] of the requests made in the block by
    any thread, the replica's long poll left out."""
    calls: list[tuple[str, str]] = []
    lock = threading.Lock()

    def record(who, method):
        if not (who == REPLICA and method == "WaitForUpdatesEx"):
            with lock:
                calls.append((who, method))

    with each_request(record):
        yield calls


@contextlib.contextmanager
def soap_calls():
    """The names of the SOAP calls made in the block (any thread)."""
    calls: list[str] = []
    with each_request(lambda who, method: calls.append(method)):
        yield calls


# -- helpers: our port groups, and an independent read ----------------------

def _our_group(session, reader, vlan, num_ports=None, switch="DVS0"):
    """One of our port groups, made with the driver's spec; its reader
    dict."""
    net = str(uuid.uuid4())
    name = f"neutron-physnet1-{net}"
    spec = switches.dvs_port_group_spec(
        name, vlan, inventory.owner_description(DEPLOYMENT, net, "physnet1",
                                                vlan),
        num_ports=num_ports)
    dvs = _as(session, reader.dvs(switch))
    switches.create_dvs_port_groups(session, dvs, [spec], switch)
    return reader.dv_portgroups(name)[0]


def _old_style_group(reader, vlan):
    """A group as the previous version made it: static, auto-expanding,
    the simulator's default policy (no port overrides, settings reset at
    disconnect), our mark."""
    net = str(uuid.uuid4())
    name = f"neutron-physnet1-{net}"
    spec = vim.dvs.DistributedVirtualPortgroup.ConfigSpec(
        name=name, type="earlyBinding", numPorts=8, autoExpand=True,
        description=inventory.owner_description(DEPLOYMENT, net, "physnet1",
                                                vlan),
        defaultPortConfig=VmwareDVS.VmwarePortConfigPolicy(
            vlan=VmwareDVS.VlanIdSpec(vlanId=vlan, inherited=False)))
    reader.wait(reader.dvs("DVS0").AddDVPortgroup_Task([spec]))
    return reader.dv_portgroups(name)[0]


def _as(session_or_si, obj):
    stub = session_or_si.content.propertyCollector._stub \
        if isinstance(session_or_si, session_mod.Session) \
        else session_or_si._stub
    return type(obj)(obj._moId, stub)


def _raw_ports(reader, pg):
    """{key: DistributedVirtualPort} of a group, read by the reader."""
    dvs = reader.dvs(pg["switch"])
    return {p.key: p for p in dvs.FetchDVPorts(vim.dvs.PortCriteria(
        portgroupKey=[pg["key"]], inside=True))}


def _vm(reader, name):
    for vm in reader._all(vim.VirtualMachine):
        if vm.name == name:
            return vm
    raise LookupError(name)


def _set_nic(reader, vm, backing):
    nic = next(d for d in vm.config.hardware.device
               if isinstance(d, vim.vm.device.VirtualEthernetCard))
    nic.backing = backing
    nic.connectable = vim.vm.device.VirtualDevice.ConnectInfo(
        startConnected=True, connected=True, allowGuestControl=True)
    reader.wait(vm.ReconfigVM_Task(vim.vm.ConfigSpec(deviceChange=[
        vim.vm.device.VirtualDeviceSpec(operation="edit", device=nic)])))
    return nic


def _on_port(pg, key=None):
    return vim.vm.device.VirtualEthernetCard.DistributedVirtualPortBackingInfo(
        port=vim.dvs.PortConnection(switchUuid=pg["switch_uuid"],
                                    portgroupKey=pg["key"], portKey=key))


def _off(reader):
    (net,) = [n for n in reader.networks_named("VM Network")
              if type(n) is vim.Network]
    return vim.vm.device.VirtualEthernetCard.NetworkBackingInfo(
        deviceName="VM Network", network=net)


@pytest.fixture
def vm0(reader):
    vm = _vm(reader, "DC0_C0_RP0_VM0")
    yield vm
    _set_nic(reader, vm, _off(reader))


def _destroy(reader, pg):
    reader.wait(pg["ref"].Destroy_Task())


# -- the shapes of settings -------------------------------------------------

RULES = (
    TrafficRule(INCOMING, "accept", protocol=6, source="10.0.0.0/8",
                destination_ports=(22, 22), description="ssh"),
    TrafficRule(INCOMING, "accept", protocol=17, source="192.0.2.7/32",
                source_ports=(67, 68), destination_ports=(1024, 65535)),
    TrafficRule(OUTGOING, "accept", protocol=1, destination="0.0.0.0/0"),
    TrafficRule(INCOMING, "accept", protocol=58, source="2001:db8::/32",
                source_negated=True),
    TrafficRule(OUTGOING, "accept", source="2001:db8::1/128",
                destination="198.51.100.0/24", destination_negated=True),
    TrafficRule(INCOMING, "drop", source="::/0"),
    TrafficRule(INCOMING, "drop"),                     # any IP, any protocol
    TrafficRule(OUTGOING, "drop", protocol=6, destination_ports=(0, 65535)),
)

SHAPES = {
    "inherited": PortSettings(),
    "all rules": PortSettings(rules=RULES),
    "one rule": PortSettings(rules=RULES[:1]),
    "no filter": PortSettings(rules=()),
    "blocked": PortSettings(blocked=True),
    "unblocked, open": PortSettings(blocked=False, allow_promiscuous=True,
                                    mac_changes=True, forged_transmits=True),
    "port security": PortSettings(rules=RULES[-2:], allow_promiscuous=False,
                                  mac_changes=False, forged_transmits=False),
    "one security flag": PortSettings(forged_transmits=True),
    "shaping": PortSettings(
        in_shaping=Shaping(True, 10_240_000, 20_480_000, 1_280_000),
        out_shaping=Shaping(False)),
    "trunk": PortSettings(trunk_vlans=((401, 403), (410, 410))),
    "everything": PortSettings(
        blocked=False, rules=RULES, allow_promiscuous=False,
        mac_changes=True, forged_transmits=False,
        in_shaping=Shaping(True, 1024, 2048, 128),
        out_shaping=Shaping(True, 8192, 8192, 4096),
        trunk_vlans=((0, 4094),)),
}


def test_settings_round_trip_many_ports_in_one_task(session, reader):
    pg = _our_group(session, reader, 401, num_ports=len(SHAPES) + 1)
    try:
        dvs = _as(session, reader.dvs("DVS0"))
        before = ports.fetch_ports(session, dvs, [pg["key"]])[pg["key"]]
        assert len(before) == len(SHAPES) + 1
        assert all(p.settings == inventory.INHERITED and p.name == "" and
                   not p.connected for p in before)
        changes = [(p.key, p.config_version, f"port-{name}", s)
                   for p, (name, s) in zip(before, SHAPES.items())]
        with soap_calls() as calls:
            ports.reconfigure_ports(session, dvs, changes, "configure ports")
        assert calls.count("ReconfigureDVPort_Task") == 1
        # One task, awaited: no call per port.
        assert len(calls) < 8, calls

        with soap_calls() as calls:
            after = ports.fetch_ports(session, dvs, [pg["key"]])[pg["key"]]
        assert calls == ["FetchDVPorts"]
        by_key = {p.key: p for p in after}
        for p, (name, s) in zip(before, SHAPES.items()):
            got = by_key[p.key]
            assert got.settings == s, name
            assert got.name == f"port-{name}"
            assert int(got.config_version) == int(p.config_version) + 1
        untouched = by_key[before[-1].key]
        assert untouched.config_version == before[-1].config_version

        # The independent read agrees on what vSphere holds.
        raw = _raw_ports(reader, pg)[before[1].key].config.setting
        (fc,) = raw.filterPolicy.filterConfig
        assert fc.agentName == "dvfilter-generic-vmware"
        assert fc.trafficRuleset.enabled is True
        assert [r.sequence for r in fc.trafficRuleset.rules] == \
            [10 * (i + 1) for i in range(len(RULES))]
        ssh = fc.trafficRuleset.rules[0]
        assert isinstance(ssh.action, vim.dvs.TrafficRule.AcceptAction)
        (q,) = ssh.qualifier
        assert (q.protocol.value, q.sourceAddress.addressPrefix,
                q.sourceAddress.prefixLength) == (6, "10.0.0.0", 8)
        assert q.destinationIpPort.portNumber == 22
        nofilter = _raw_ports(reader, pg)[before[3].key].config.setting
        (fc,) = nofilter.filterPolicy.filterConfig
        assert fc.trafficRuleset.enabled is False
        # The group's defaults show through, inherited.
        inherited = _raw_ports(reader, pg)[before[0].key].config.setting
        assert inherited.securityPolicy.inherited is True
        assert inherited.securityPolicy.allowPromiscuous.value is False
        assert inherited.vlan.vlanId == 401
        trunk = _raw_ports(reader, pg)[before[list(SHAPES).index(
            "trunk")].key].config.setting.vlan
        assert isinstance(trunk, VmwareDVS.TrunkVlanSpec)
        assert not trunk.inherited
        assert [(r.start, r.end) for r in trunk.vlanId] == \
            [(401, 403), (410, 410)]

        # Back to inherited: the port's own values are dropped.
        changes = [(p.key, by_key[p.key].config_version, None,
                    inventory.INHERITED) for p in before]
        ports.reconfigure_ports(session, dvs, changes, "reset ports")
        again = ports.fetch_ports(session, dvs, [pg["key"]])[pg["key"]]
        assert all(p.settings == inventory.INHERITED for p in again)
        assert {p.name for p in again} == {f"port-{n}" for n in SHAPES} | {""}
    finally:
        _destroy(reader, pg)


# A shared filter's per-port rules: MAC and IP qualifiers, ANDed.
MAC_RULES = (
    TrafficRule(INCOMING, "drop", protocol=17, source="0.0.0.0/0",
                source_ports=(67, 67), destination_ports=(68, 68)),
    TrafficRule(INCOMING, "accept", source="10.0.0.5/32",
                destination="0.0.0.0/0", description="sg-a rule r1",
                source_mac="fa:16:3e:00:00:05"),
    TrafficRule(INCOMING, "accept", protocol=58,
                source="fe80::f816:3eff:fe00:5/128",
                source_mac="fa:16:3e:00:00:05"),
    TrafficRule(OUTGOING, "accept", source="0.0.0.0/0",
                destination="10.0.0.5/32",
                destination_mac="fa:16:3e:00:00:05"),
    TrafficRule(OUTGOING, "accept", protocol=6, source="10.0.0.0/24",
                destination_ports=(22, 22), source_mac="fa:16:3e:00:00:07",
                destination_mac="fa:16:3e:00:00:05"),
    TrafficRule(INCOMING, "drop", source="0.0.0.0/0"),
    TrafficRule(OUTGOING, "drop", source="::/0"),
)


def test_mac_qualified_rules_round_trip_on_the_wire():
    """Beside the simulator's round trip (below): a filter with MAC-qualified
    rules, serialised as pyVmomi sends it and parsed back as pyVmomi reads
    an answer, is the same rules (one IP and one SingleMac qualifier per
    such rule)."""
    # As a session speaking vim 6.7.1 (session.API_NAMESPACE) sends it.
    version = VmomiSupport.GetVersionFromVersionUri(
        session_mod.API_NAMESPACE.replace("vim25/", "urn:vim25/"))
    sent = SoapAdapter.Serialize(ports._filter(MAC_RULES), version=version)
    assert sent.count(b'xsi:type="DvsMacNetworkRuleQualifier"') == 4
    assert sent.count(b'xsi:type="SingleMac"') == 5
    back = SoapAdapter.Deserialize(sent)
    assert ports._rules_of(back) == MAC_RULES
    default = SoapAdapter.Deserialize(SoapAdapter.Serialize(
        VmwareDVS.VmwarePortConfigPolicy(
            filterPolicy=ports._filter(MAC_RULES)), version=version))
    assert ports._rules_of(default.filterPolicy) == MAC_RULES


def test_mac_qualified_rules_round_trip(sim, reader):
    """Rules with a MAC qualifier on a port, written and read back equal
    through the driver's session (the simulator decodes MAC qualifiers
    since tools/vcsim/patches-govmomi/0001)."""
    settings = dataclasses.replace(_settings(sim), api_retry_count=0)
    session = session_mod.Session(settings)
    pg = _our_group(session, reader, 406)
    try:
        dvs = _as(session, reader.dvs("DVS0"))
        (p, *_) = ports.fetch_ports(session, dvs, [pg["key"]])[pg["key"]]
        ports.reconfigure_ports(session, dvs, [
            (p.key, p.config_version, "shared", PortSettings(
                rules=MAC_RULES))], "MAC-qualified rules")
        got = {q.key: q for q in ports.fetch_ports(
            session, dvs, [pg["key"]])[pg["key"]]}[p.key]
        assert got.settings == PortSettings(rules=MAC_RULES)
        raw = _raw_ports(reader, pg)[p.key].config.setting
        (fc,) = raw.filterPolicy.filterConfig
        rules = sorted(fc.trafficRuleset.rules, key=lambda r: r.sequence)
        ip, mac = rules[4].qualifier
        assert isinstance(mac, vim.dvs.TrafficRule.MacQualifier)
        assert (mac.sourceAddress.address, mac.destinationAddress.address) \
            == ("fa:16:3e:00:00:07", "fa:16:3e:00:00:05")
    finally:
        session.close()
        _destroy(reader, pg)


def test_group_defaults_read_whole_name_their_digest(sim, reader):
    """A port group's defaults written with the driver's spec (the shared
    filter) and read back whole (``ports.group_defaults_of``) give the
    digest the description names: what a full pass checks, so that a
    group holding what we wrote is never written again."""
    settings = dataclasses.replace(_settings(sim), api_retry_count=0)
    session = session_mod.Session(settings)
    pg = _our_group(session, reader, 407)
    try:
        ref = _as(session, pg["ref"])
        for blocked, rules in ((True, MAC_RULES), (True, ports.CLOSED_RULES),
                               (False, MAC_RULES[:2])):
            token = inventory.defaults_token(blocked, rules)
            config = pg["ref"].config
            switches.reconfigure_dvs_port_group(
                session, ref, switches.group_defaults_spec(
                    config.configVersion, inventory.with_defaults_token(
                        config.description, token), blocked, rules),
                "defaults")
            got = ports.group_defaults_of(session, ref, "read")
            assert got[:2] == (blocked, rules)
            assert got[2] == pg["ref"].config.description
            assert inventory.defaults_token(*got[:2]) == \
                inventory.defaults_token_of(got[2])
    finally:
        session.close()
        _destroy(reader, pg)


def test_mac_qualifier_shapes_not_ours_are_not_read():
    """A MAC range, a negated MAC, a MAC qualifier with a protocol: the
    module cannot say them, so reading them fails as for any unknown
    shape (and is_closed says no)."""
    R = vim.dvs.TrafficRule
    good = ports.rule_spec(MAC_RULES[1], 10)
    assert ports.rule_of(good) == MAC_RULES[1]
    upper = R(sequence=10, direction=INCOMING, action=R.AcceptAction(),
              qualifier=[R.IpQualifier(), R.MacQualifier(
                  sourceAddress=vim.SingleMac(address="FA-16-3E-00-00-05"))])
    assert ports.rule_of(upper).source_mac == "fa:16:3e:00:00:05"
    for mac in (R.MacQualifier(sourceAddress=vim.MacRange(
                    address="fa:16:3e:00:00:00", mask="ff:ff:ff:00:00:00")),
                R.MacQualifier(destinationAddress=vim.SingleMac(
                    address="fa:16:3e:00:00:05", negate=True)),
                R.MacQualifier(sourceAddress=vim.SingleMac(
                    address="fa:16:3e:00:00:05"),
                    protocol=vim.IntExpression(value=0x0800))):
        bad = R(sequence=10, direction=INCOMING, action=R.AcceptAction(),
                qualifier=[R.IpQualifier(), mac])
        with pytest.raises(ValueError):
            ports.rule_of(bad)


def test_mac_learning_round_trip_on_a_6_6_switch(sim, session, reader,
                                                 monkeypatch):
    """macManagementPolicy is vim 6.7: a session speaking 6.7.1 sends it
    (the driver's session speaks 6.5 and leaves it out)."""
    si = reader.si
    spec = vim.DistributedVirtualSwitch.CreateSpec(
        configSpec=VmwareDVS.ConfigSpec(name="DVS-7"),
        productInfo=vim.dvs.ProductSpec(name="DVS", vendor="VMware, Inc.",
                                        version="7.0.0"))
    folder = si.content.rootFolder.childEntity[0].networkFolder
    reader.wait(folder.CreateDVS_Task(spec))
    inv = Replica.read_once(session, _settings(sim))
    assert inv.dvs("DVS-7").version == "7.0.0"
    assert inventory.mac_management_supported(inv.dvs("DVS-7"))
    assert inv.dvs("DVS0").version and \
        not inventory.mac_management_supported(inv.dvs("DVS0"))

    monkeypatch.setattr(session_mod, "API_NAMESPACE", "vim25/6.7.1")
    new = session_mod.Session(_settings(sim))
    pg = None
    try:
        pg = _our_group(new, reader, 402, switch="DVS-7")
        assert _as(_connect_671(sim), pg["ref"]).config.policy \
            .macManagementOverrideAllowed is True
        dvs = _as(new, reader.dvs("DVS-7"))
        shapes = [PortSettings(mac_learning=True, allow_promiscuous=False,
                               mac_changes=True, forged_transmits=True),
                  PortSettings(mac_learning=False, allow_promiscuous=False,
                               mac_changes=False, forged_transmits=False),
                  PortSettings(mac_learning=True, allow_promiscuous=False,
                               mac_changes=False, forged_transmits=False,
                               rules=RULES[:2]),
                  PortSettings()]
        found = ports.fetch_ports(new, dvs, [pg["key"]])[pg["key"]]
        ports.reconfigure_ports(
            new, dvs, [(p.key, p.config_version, None, s)
                       for p, s in zip(found, shapes)],
            "mac learning", mac_management=True)
        got = {p.key: p for p in
               ports.fetch_ports(new, dvs, [pg["key"]])[pg["key"]]}
        for p, s in zip(found, shapes):
            assert got[p.key].settings == s
        # The independent read speaks 6.7.1 too: the simulator answers
        # newer properties to older clients, which pyVmomi 6.5 cannot parse
        # (a real vCenter leaves them out).
        si671 = _connect_671(sim)
        (raw,) = _as(si671, reader.dvs("DVS-7")).FetchDVPorts(
            vim.dvs.PortCriteria(portKey=[found[0].key]))
        setting = raw.config.setting
        assert setting.securityPolicy.macChanges.value is True
        assert setting.macManagementPolicy.macLearningPolicy.enabled is True
    finally:
        new.close()
        if pg is not None:
            _destroy(reader, pg)


def test_fetch_ports_of_several_groups_in_one_call(session, reader, vm0):
    a = _our_group(session, reader, 403)
    b = _our_group(session, reader, 404, num_ports=9)
    try:
        port_key = _raw_ports(reader, a)
        target = sorted(port_key, key=int)[3]
        nic = _set_nic(reader, vm0, _on_port(a, target))
        dvs = _as(session, reader.dvs("DVS0"))
        with soap_calls() as calls:
            found = ports.fetch_ports(session, dvs,
                                      [a["key"], b["key"], "no-such-group"])
        assert calls == ["FetchDVPorts"]
        assert found["no-such-group"] == ()
        assert sorted(p.key for p in found[a["key"]]) == sorted(port_key)
        assert len(found[b["key"]]) == 9
        assert not set(p.key for p in found[a["key"]]) & \
            set(p.key for p in found[b["key"]])
        (connected,) = [p for p in found[a["key"]] if p.connected]
        assert (connected.key, connected.vm_moid, connected.mac) == (
            target, vm0._moId, nic.macAddress)
        assert all(p.portgroup_key == a["key"] and
                   p.dvs_uuid == a["switch_uuid"] for p in found[a["key"]])
        assert ports.fetch_ports(session, dvs, []) == {}
    finally:
        _set_nic(reader, vm0, _off(reader))
        _destroy(reader, a)
        _destroy(reader, b)


def test_stale_config_version_changes_nothing(session, reader):
    pg = _our_group(session, reader, 405)
    try:
        dvs = _as(session, reader.dvs("DVS0"))
        p1, p2 = ports.fetch_ports(session, dvs, [pg["key"]])[pg["key"]][:2]
        # Another client edits p2 meanwhile.
        reader.wait(reader.dvs("DVS0").ReconfigureDVPort_Task(port=[
            vim.dvs.DistributedVirtualPort.ConfigSpec(
                key=p2.key, operation="edit", configVersion=p2.config_version,
                name="by hand")]))
        with pytest.raises(exceptions.ConcurrentModification):
            ports.reconfigure_ports(
                session, dvs,
                [(p1.key, p1.config_version, "mine", PortSettings(
                    blocked=True)),
                 (p2.key, p2.config_version, "mine", PortSettings(
                     rules=RULES))], "configure two ports")
        raw = _raw_ports(reader, pg)
        assert (raw[p1.key].config.name, raw[p1.key].config.configVersion) \
            == (None, p1.config_version)
        assert raw[p1.key].config.setting.blocked.inherited is True
        assert raw[p2.key].config.name == "by hand"
        # Not its own: the group's (closed) filter, inherited.
        assert raw[p2.key].config.setting.filterPolicy.inherited is True
        with pytest.raises(exceptions.NotFound):
            ports.reconfigure_ports(session, dvs, [("no-such-port", "0", "x",
                                                    None)], "unknown port")
    finally:
        _destroy(reader, pg)


def test_grow_port_group(sim, session, reader):
    pg = _our_group(session, reader, 406)
    try:
        inv = Replica.read_once(session, _settings(sim))
        (got,) = [p for p in inv.dvs_portgroups if p.key == pg["key"]]
        assert (got.num_ports, got.ports_ready) == (8, True)
        assert len(inv.dv_ports[pg["key"]]) == 8
        with soap_calls() as calls:
            total = ports.grow_port_group(session, got, 4)
        assert total == 12 and calls.count("ReconfigureDVPortgroup_Task") == 1
        again = _as(reader.si, pg["ref"])
        assert len(again.portKeys) == 12 and again.config.numPorts == 12
        inv = Replica.read_once(session, _settings(sim))
        (grown,) = [p for p in inv.dvs_portgroups if p.key == pg["key"]]
        assert ports.grow_port_group(session, grown) == 12 + ports.GROW_BY
        assert len(_as(reader.si, pg["ref"]).portKeys) == 20
        # Merged, not replaced: the group is as it was otherwise.
        assert again.config.description == pg["description"]
        assert again.config.defaultPortConfig.vlan.vlanId == 406
        assert again.config.policy.trafficFilterOverrideAllowed is True
        with pytest.raises(exceptions.ConcurrentModification):
            ports.grow_port_group(session, got, 4, "grow again, stale")
        assert len(_as(reader.si, pg["ref"]).portKeys) == 20
    finally:
        _destroy(reader, pg)


def test_ports_read_in_bounded_batches(sim, session, reader, monkeypatch):
    """Given the groups' port keys, no FetchDVPorts reads more than
    READ_BATCH ports (whole groups together, a bigger one by its keys), and
    the ports read are those one unbounded call reads; the replica reads
    its groups that way."""
    groups = [_our_group(session, reader, 409, num_ports=n)
              for n in (12, 8, 8)]
    try:
        dvs = _as(session, reader.dvs("DVS0"))
        keys = [g["key"] for g in groups]
        whole = ports.fetch_ports(session, dvs, keys)
        assert [len(whole[k]) for k in keys] == [12, 8, 8]
        monkeypatch.setattr(ports, "READ_BATCH", 10)
        port_keys = {k: [p.key for p in whole[k]] for k in keys}
        with soap_calls() as calls:
            batched = ports.fetch_ports(session, dvs, keys, port_keys)
        assert batched == whole
        # 12 ports by key (10 + 2), then 8 and 8 (16 > 10): a call each.
        assert calls.count("FetchDVPorts") == 4, calls

        replica = Replica(session, _settings(sim))
        with soap_calls() as calls:
            replica.start()
        try:
            inv = replica.snapshot()
            assert {k: inv.dv_ports[k] for k in keys} == whole
            assert calls.count("FetchDVPorts") >= 4, calls
        finally:
            replica.stop()
    finally:
        for g in groups:
            _destroy(reader, g)


def test_replica_keeps_the_ports_of_our_groups(sim, session, reader, vm0):
    settings = _settings(sim)
    replica = Replica(session, settings)
    events = []
    seen = threading.Event()

    def listener(event):
        events.append(event)
        if event.portgroups:
            seen.set()

    replica.add_listener(listener)
    foreign_name = f"hand-{uuid.uuid4()}"
    foreign = reader.add_dv_portgroup("DVS0", foreign_name, 407)
    with soap_calls() as calls:
        replica.start()
    try:
        # One FetchDVPorts for the switch of our groups per full read.
        assert calls.count("FetchDVPorts") <= 1
        pg = _our_group(session, reader, 408)
        assert replica.wait_until(lambda inv: pg["key"] in inv.dv_ports, 10)
        inv = replica.snapshot()
        assert foreign["key"] not in inv.dv_ports
        assert len(inv.dv_ports[pg["key"]]) == 8
        assert all(not p.connected for p in inv.dv_ports[pg["key"]])
        assert any(e.portgroups == frozenset({pg["key"]}) for e in events)

        # A NIC connected to a port by Nova: seen without any refresh (the
        # group's vm list changes).
        target = sorted(_raw_ports(reader, pg), key=int)[2]
        _set_nic(reader, vm0, _on_port(pg, target))
        assert replica.wait_until(lambda inv: any(
            p.key == target and p.connected and p.vm_moid == vm0._moId
            for p in inv.dv_ports[pg["key"]]), 10)

        # A port reconfigured by hand: vCenter reports no property change,
        # refresh_ports reads it (one call) and tells the listeners.
        raw = _raw_ports(reader, pg)[target]
        reader.wait(reader.dvs("DVS0").ReconfigureDVPort_Task(port=[
            vim.dvs.DistributedVirtualPort.ConfigSpec(
                key=target, operation="edit",
                configVersion=raw.config.configVersion,
                setting=ports.setting_spec(PortSettings(blocked=True),
                                           False))]))
        seen.clear()
        with soap_calls() as calls:
            changed = replica.refresh_ports(timeout=10)
        assert changed == frozenset({pg["key"]})
        assert calls == ["FetchDVPorts"]
        assert seen.wait(5)
        (port,) = [p for p in replica.snapshot().dv_ports[pg["key"]]
                   if p.key == target]
        assert port.settings == PortSettings(blocked=True)
        assert replica.refresh_ports([pg["key"]], timeout=10) == frozenset()

        # NIC gone: the port is free again, its settings kept (the group
        # does not reset them at disconnect).
        _set_nic(reader, vm0, _off(reader))
        assert replica.wait_until(lambda inv: not any(
            p.connected for p in inv.dv_ports[pg["key"]]), 10)
        (port,) = [p for p in replica.snapshot().dv_ports[pg["key"]]
                   if p.key == target]
        assert port.settings == PortSettings(blocked=True)

        # The group gone: its ports too.
        _destroy(reader, pg)
        assert replica.wait_until(
            lambda inv: pg["key"] not in inv.dv_ports, 10)
    finally:
        replica.stop()
        reader.destroy_dv_portgroup(foreign_name)


def test_replica_sees_a_second_nic_of_a_vm_already_on_the_group(
        sim, session, reader, vm0):
    """A VM on one of our groups that gets another NIC there changes none
    of the group's properties (its vm list holds the VM already): the
    replica sees the port taken, and let go, from the VM's changeVersion,
    with no refresh."""
    replica = Replica(session, _settings(sim))
    replica.start()
    pg = _our_group(session, reader, 411)
    second = None
    try:
        first_key, second_key = sorted(_raw_ports(reader, pg), key=int)[:2]
        _set_nic(reader, vm0, _on_port(pg, first_key))

        def connected(inv):
            return {p.key for p in inv.dv_ports.get(pg["key"], ())
                    if p.connected and p.vm_moid == vm0._moId}

        assert replica.wait_until(lambda inv: connected(inv) == {first_key},
                                  10)
        # Every change so far handled (vm0's may come after the port read
        # that showed its NIC): a group made after them is read.
        sentinel = _our_group(session, reader, 413)
        assert replica.wait_until(
            lambda inv: sentinel["key"] in inv.dv_ports, 10)
        _destroy(reader, sentinel)
        assert replica.wait_until(
            lambda inv: sentinel["key"] not in inv.dv_ports, 10)

        # A VM on none of our groups reconfigured: no port read for it (the
        # one read is the whole read of a group made after it, by which the
        # replica has seen the VM's change, reported before).
        other = _vm(reader, "DC0_C0_RP0_VM1")
        with soap_calls() as calls:
            reader.wait(other.ReconfigVM_Task(vim.vm.ConfigSpec(
                annotation="not on our groups")))
            later = _our_group(session, reader, 412)
            assert replica.wait_until(
                lambda inv: later["key"] in inv.dv_ports, 10)
        assert calls.count("FetchDVPorts") == 1, calls
        _destroy(reader, later)

        reader.wait(vm0.ReconfigVM_Task(vim.vm.ConfigSpec(deviceChange=[
            vim.vm.device.VirtualDeviceSpec(
                operation="add", device=vim.vm.device.VirtualVmxnet3(
                    key=-1, backing=_on_port(pg, second_key)))])))
        second = second_key
        assert replica.wait_until(
            lambda inv: connected(inv) == {first_key, second_key}, 10), \
            connected(replica.snapshot())
        reader.detach_nic(vm0, second_key)
        second = None
        assert replica.wait_until(lambda inv: connected(inv) == {first_key},
                                  10), connected(replica.snapshot())
    finally:
        if second is not None:
            reader.detach_nic(vm0, second)
        replica.stop()
        _set_nic(reader, vm0, _off(reader))
        _destroy(reader, pg)


def test_replica_reads_the_group_whole_when_a_new_vm_is_on_no_port_found(
        sim, session, reader, vm0):
    """The narrow read's fallback.  Between two reads of the replica, VM0
    moved its NIC from port a to port b of the group and VM1 took port a:
    the replica still holds a connected to VM0, so neither the read of the
    ports it holds free (b is found, VM0's) nor of those it holds connected
    (a is still connected) finds VM1, which came on the group -- the group
    is read whole, and shows a as VM1's."""
    pg = _our_group(session, reader, 413)
    vm1 = _vm(reader, "DC0_C0_RP0_VM1")
    a, b = sorted(_raw_ports(reader, pg), key=int)[:2]
    _set_nic(reader, vm0, _on_port(pg, a))
    replica = Replica(session, _settings(sim))
    try:
        replica._reload()           # one read, no watch: what it holds
        held = replica._ports
        assert {p.key: p.vm_moid for p in held[pg["key"]]
                if p.connected} == {a: vm0._moId}
        _set_nic(reader, vm0, _on_port(pg, b))
        _set_nic(reader, vm1, _on_port(pg, a))
        # What the group's update says: VM1 joined (VM0 was reconfigured).
        narrow = {pg["key"]: replica_mod._Narrow(
            connectees=True, vms={vm1._moId}, joined={vm1._moId})}
        ours = replica._our_groups(replica._objects)
        with soap_calls() as calls:
            _, found, whole = replica._fetch_narrow(ours, narrow, held)
        assert pg["key"] not in found
        assert whole is not None
        now = {p.key: p.vm_moid for p in whole[1][pg["key"]] if p.connected}
        assert now == {a: vm1._moId, b: vm0._moId}
        # Held free read (finds b), held connected read (a: still
        # connected, not answered), then the whole read.
        assert calls == ["FetchDVPorts"] * 3, calls
    finally:
        replica.stop()
        _set_nic(reader, vm1, _off(reader))
        _set_nic(reader, vm0, _off(reader))
        _destroy(reader, pg)


def test_read_once_includes_ports_with_one_fetch_per_switch(sim, session,
                                                            reader):
    a = _our_group(session, reader, 409)
    b = _our_group(session, reader, 410)
    try:
        with soap_calls() as calls:
            inv = Replica.read_once(session, _settings(sim))
        assert calls.count("FetchDVPorts") == 1
        assert {a["key"], b["key"]} <= set(inv.dv_ports)
        for key in (a["key"], b["key"]):
            (pg,) = [p for p in inv.dvs_portgroups if p.key == key]
            assert pg.ports_ready and pg.num_ports == 8
            assert sorted(p.key for p in inv.dv_ports[key]) == \
                sorted(pg.port_keys)
        # Nothing is read when the snapshot is taken.
        replica = Replica(session, _settings(sim))
        replica._reload()
        with soap_calls() as calls:
            replica.snapshot()
        assert calls == []
        replica._destroy_collector()
    finally:
        _destroy(reader, a)
        _destroy(reader, b)


def test_old_style_group_converted_in_place_keeps_its_nic(sim, session,
                                                          reader, vm0):
    pg = _old_style_group(reader, 411)
    try:
        target = sorted(_raw_ports(reader, pg), key=int)[5]
        nic = _set_nic(reader, vm0, _on_port(pg, target))
        inv = Replica.read_once(session, _settings(sim))
        (old,) = [p for p in inv.dvs_portgroups if p.key == pg["key"]]
        assert not old.ports_ready
        dvs = _as(session, reader.dvs("DVS0"))
        found = {p.key: p for p in inv.dv_ports[pg["key"]]}
        # Ports of a closed group cannot hold a filter.
        with pytest.raises(exceptions.TaskFailed):
            ports.reconfigure_ports(session, dvs, [(
                target, found[target].config_version, None,
                PortSettings(rules=RULES))], "filter before conversion")

        spec = switches.convert_port_group_spec(old.config_version,
                                                old.num_ports)
        switches.reconfigure_dvs_port_group(session, pg["ref"], spec,
                                            "convert")
        inv = Replica.read_once(session, _settings(sim))
        (new,) = [p for p in inv.dvs_portgroups if p.key == pg["key"]]
        assert new.ports_ready and new.num_ports == old.num_ports
        assert (new.vlan, new.description, new.owner) == (
            411, old.description, old.owner)
        assert sorted(new.port_keys) == sorted(old.port_keys)
        (connected,) = [p for p in inv.dv_ports[pg["key"]] if p.connected]
        assert (connected.key, connected.vm_moid) == (target, vm0._moId)
        again = next(d for d in _as(reader.si, vm0).config.hardware.device
                     if d.key == nic.key)
        assert again.backing.port.portKey == target

        # Now the port takes its settings, connected as it is.
        ports.reconfigure_ports(session, dvs, [(
            target, connected.config_version, "neutron-port",
            PortSettings(rules=RULES))], "filter after conversion")
        (port,) = [p for p in ports.fetch_ports(
            session, dvs, [pg["key"]])[pg["key"]] if p.key == target]
        assert port.settings == PortSettings(rules=RULES) and port.connected

        # The driver's full spec on a converted group (a retag) is a no-op
        # for its ports.
        spec = switches.dvs_port_group_spec(
            new.name, 412, new.description, new.config_version,
            new.num_ports)
        switches.reconfigure_dvs_port_group(session, pg["ref"], spec,
                                            "retag")
        (port,) = [p for p in ports.fetch_ports(
            session, dvs, [pg["key"]])[pg["key"]] if p.key == target]
        assert port.settings == PortSettings(rules=RULES) and port.connected
    finally:
        _set_nic(reader, vm0, _off(reader))
        _destroy(reader, pg)


def test_version_parsing():
    def dvs(version):
        return inventory.Dvs("dvs-1", "D", "u", frozenset(), ref=None,
                             version=version)

    assert inventory.mac_management_supported(dvs("6.6.0"))
    assert inventory.mac_management_supported(dvs("8.0.3"))
    assert not inventory.mac_management_supported(dvs("6.5.0"))
    assert not inventory.mac_management_supported(dvs(None))
    assert not inventory.mac_management_supported(dvs("unknown"))


# -- big filters, written from the session's cached rule text ---------------

def _big_rules(n):
    """n distinct rules of every shape rule_spec builds: IPv4 and IPv6
    hosts, negated sources, single ports and ranges, TCP/UDP/any."""
    out = []
    for i in range(n):
        proto = (6, 17, None)[i % 3]
        dports = None if proto is None else \
            (1 + i % 1000, 1 + i % 1000 + i % 2 * 99)
        source = f"2001:db8::{i + 1:x}/128" if i % 5 == 0 else \
            f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}/32"
        out.append(TrafficRule(
            INCOMING if i % 2 else OUTGOING, "accept", protocol=proto,
            source=source, source_negated=i % 7 == 0,
            source_ports=(1024, 65535) if proto == 17 else None,
            destination_ports=dports, description=f"sg big rule {i}"))
    return tuple(out)


@pytest.fixture
def rule_writes(monkeypatch):
    """The SOAP requests our stubs send ((method, their bytes, stock
    pyVmomi's bytes for the same arguments)) and the traffic rules
    pyVmomi's own serializer writes, in the block."""
    real_request = session_mod._RuleCachingStub.SerializeRequest
    real_object = SoapAdapter.SoapSerializer._SerializeDataObject
    seen = {"requests": [], "rules": []}

    def request(stub, mo, info, args):
        sent = real_request(stub, mo, info, args)
        if info.wsdlName.startswith("Reconfigure"):
            stock = SoapAdapter.SoapStubAdapterBase.SerializeRequest(
                stub, mo, info, args)
            seen["requests"].append((info.wsdlName, sent, stock))
        return sent

    def data_object(ser, val, info, attr, ns):
        if type(val) is vim.dvs.TrafficRule and \
                type(ser) is session_mod._RuleCachingSerializer:
            seen["rules"].append(val)
        return real_object(ser, val, info, attr, ns)

    monkeypatch.setattr(session_mod._RuleCachingStub, "SerializeRequest",
                        request)
    monkeypatch.setattr(SoapAdapter.SoapSerializer, "_SerializeDataObject",
                        data_object)
    return seen


def test_big_port_filter_written_twice_from_cached_rules(session, reader,
                                                         rule_writes):
    big = PortSettings(rules=_big_rules(1000))
    pg = _our_group(session, reader, 407)
    try:
        dvs = _as(session, reader.dvs("DVS0"))
        p = ports.fetch_ports(session, dvs, [pg["key"]])[pg["key"]][0]
        ports.clear_rule_caches()
        rule_writes["requests"].clear()
        rule_writes["rules"].clear()
        ports.reconfigure_ports(session, dvs, [(p.key, p.config_version,
                                                "big", big)], "big filter")
        # Each rule serialised by pyVmomi once.
        assert len(rule_writes["rules"]) == 1000
        (got,) = [x for x in ports.fetch_ports(session, dvs, [pg["key"]])[
            pg["key"]] if x.key == p.key]
        assert got.settings == big

        rule_writes["rules"].clear()
        ports.reconfigure_ports(session, dvs, [(p.key, got.config_version,
                                                "big", big)], "big again")
        # The same rule_spec objects: none serialised again...
        assert rule_writes["rules"] == []
        # ... and both requests are byte for byte stock pyVmomi's.
        assert [m for m, _, _ in rule_writes["requests"]] == \
            ["ReconfigureDVPort_Task"] * 2
        for _, sent, stock in rule_writes["requests"]:
            assert sent == stock
            assert sent.count(b"<rules>") == 1000

        (again,) = [x for x in ports.fetch_ports(session, dvs, [pg["key"]])[
            pg["key"]] if x.key == p.key]
        assert again.settings == big
        assert int(again.config_version) == int(got.config_version) + 1
        # The independent read agrees, rule by rule, in order.
        raw = _raw_ports(reader, pg)[p.key].config.setting
        assert ports.settings_of(raw).rules == big.rules
        (fc,) = raw.filterPolicy.filterConfig
        assert [r.sequence for r in fc.trafficRuleset.rules] == \
            [10 * (i + 1) for i in range(1000)]
    finally:
        _destroy(reader, pg)


def test_big_shared_group_filter_written_twice_from_cached_rules(
        session, reader, rule_writes):
    """The shared-filter design: 5,000 rules in the group's default port
    config, written twice through the session; one rule more the third
    time, when only that rule is serialised."""
    rules = _big_rules(5001)
    pg = _our_group(session, reader, 408)
    try:
        ref = _as(session, pg["ref"])
        ports.clear_rule_caches()
        rule_writes["requests"].clear()
        # Rules pyVmomi serialises in each write: all, none, the new one.
        for n, serialised in ((5000, 5000), (5000, 0), (5001, 1)):
            rule_writes["rules"].clear()
            version = pg["ref"].config.configVersion
            session.run_task(
                "shared filter", ref.ReconfigureDVPortgroup_Task,
                vim.dvs.DistributedVirtualPortgroup.ConfigSpec(
                    configVersion=version,
                    defaultPortConfig=VmwareDVS.VmwarePortConfigPolicy(
                        filterPolicy=ports._filter(rules[:n]))))
            assert len(rule_writes["rules"]) == serialised
            config = pg["ref"].config
            assert int(config.configVersion) == int(version) + 1
            assert ports._rules_of(config.defaultPortConfig.filterPolicy) \
                == rules[:n]
        assert len(rule_writes["requests"]) == 3
        for _, sent, stock in rule_writes["requests"]:
            assert sent == stock
    finally:
        _destroy(reader, pg)

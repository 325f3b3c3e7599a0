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

"""Fail closed (issue 15) against the project's simulator.

Our distributed port groups' default port config carries a traffic filter
that drops all IPv4 and IPv6 both ways, so a DV port the driver has not
configured -- free, released, or taken by a NIC the driver does not know --
is closed, while the ports the driver configures keep overriding it (their
own rules; an explicit empty filter for port security off).  Groups made
before (no filter in their defaults) are converted in place by a full pass.

Everything vCenter holds is read back with plain pyVmomi
(:mod:`tests.fixtures.vsphere_reader`): FetchDVPorts shows a port's own
settings as set and its group's for the rest, marked inherited.
"""

from __future__ import annotations

import dataclasses

import pytest
from neutron_lib.api.definitions import portbindings
from pyVmomi import vim

from networking_vcenter.vsphere import inventory
from networking_vcenter.vsphere import ports
from networking_vcenter.vsphere import session as session_mod
from networking_vcenter.vsphere import switches
from networking_vcenter.vsphere.inventory import PortSettings, TrafficRule
from networking_vcenter.vsphere.replica import Replica
from tests.fixtures.vsphere_reader import (
    DROP_ALL_IP, dv_port_rules, effective_rules, filter_rules)
from tests.functional import test_ports
from tests.functional.test_ports_vsphere import (  # noqa: F401 (fixtures)
    _as, _destroy, _off, _on_port, _our_group, _raw_ports, _set_nic,
    _settings, _vm, reader, sim)

SSH = (TrafficRule(inventory.OUTGOING, "accept", protocol=6,
                   source="192.0.2.0/24", destination_ports=(22, 22)),
       TrafficRule(inventory.OUTGOING, "drop", source="0.0.0.0/0"))


@pytest.fixture
def session(sim):
    s = session_mod.Session(_settings(sim))
    yield s
    s.close()


@pytest.fixture
def vm0(reader):
    vm = _vm(reader, "DC0_C0_RP0_VM0")
    yield vm
    _set_nic(reader, vm, _off(reader))


def _group(session, sim, key):
    """The group as a replica reads it with filters per port: its default
    filter parsed (with ``shared_security_filter`` a replica passes over
    group filters and goes by the digest in the description)."""
    inv = Replica.read_once(session, dataclasses.replace(
        _settings(sim), shared_security_filter=False))
    (pg,) = [p for p in inv.dvs_portgroups if p.key == key]
    return pg


def test_new_port_group_default_config_is_the_closed_filter(sim, session,
                                                            reader):
    pg = _our_group(session, reader, 501)
    try:
        config = pg["ref"].config.defaultPortConfig
        fp = config.filterPolicy
        assert fp is not None and not fp.inherited
        (fc,) = fp.filterConfig
        assert fc.agentName == "dvfilter-generic-vmware"
        assert fc.trafficRuleset.enabled
        assert filter_rules(fp) == DROP_ALL_IP
        # The other defaults as they were.
        assert (config.vlan.vlanId, config.vlan.inherited) == (501, False)
        assert config.securityPolicy.forgedTransmits.value is False
        assert config.blocked.value is False
        got = _group(session, sim, pg["key"])
        assert got.default_closed and got.ports_ready and got.vlan == 501
    finally:
        _destroy(reader, pg)


def test_free_and_unknown_ports_closed_configured_ports_keep_their_own(
        sim, session, reader, vm0):
    pg = _our_group(session, reader, 502)
    try:
        raw = _raw_ports(reader, pg)
        assert len(raw) == 8
        for p in raw.values():
            # Nothing of its own; the group's filter, marked inherited.
            assert dv_port_rules(p.config.setting) is None
            assert effective_rules(p.config.setting) == (DROP_ALL_IP, True)

        # A NIC put on the group by hand (no port key: vCenter picks a free
        # port), before or without the driver: closed.
        _set_nic(reader, vm0, _on_port(pg))
        raw = _raw_ports(reader, pg)
        (taken,) = [p for p in raw.values() if p.connectee is not None]
        assert taken.connectee.connectedEntity._moId == vm0._moId
        assert effective_rules(taken.config.setting) == (DROP_ALL_IP, True)

        # Ports the driver configures override the group's filter: rules of
        # their own, and port security off (rules=()): an explicit empty,
        # disabled filter of its own, not the group's drop-all.
        a, b = sorted((k for k, p in raw.items() if p.connectee is None),
                      key=int)[:2]
        dvs = _as(session, reader.dvs("DVS0"))
        ports.reconfigure_ports(session, dvs, [
            (a, raw[a].config.configVersion, "port-a",
             PortSettings(rules=SSH)),
            (b, raw[b].config.configVersion, "port-b",
             PortSettings(rules=()))], "configure two ports")
        raw = _raw_ports(reader, pg)
        rules_a, inherited_a = effective_rules(raw[a].config.setting)
        assert not inherited_a
        assert [(r["action"], r["protocol"], r["dports"]) for r in rules_a] \
            == [("accept", 6, (22, 22)), ("drop", None, None)]
        assert effective_rules(raw[b].config.setting) == ([], False)
        assert raw[b].config.setting.filterPolicy.filterConfig[0] \
            .trafficRuleset.enabled is False
        read = {p.key: p for p in ports.fetch_ports(
            session, dvs, [pg["key"]])[pg["key"]]}
        assert read[a].settings.rules == SSH
        assert read[b].settings.rules == ()

        # Released (the group's settings again): closed again.
        ports.reconfigure_ports(session, dvs, [
            (b, raw[b].config.configVersion, "free", inventory.INHERITED)],
            "release")
        raw = _raw_ports(reader, pg)
        assert effective_rules(raw[b].config.setting) == (DROP_ALL_IP, True)
        assert effective_rules(taken.config.setting) == (DROP_ALL_IP, True)
    finally:
        _set_nic(reader, vm0, _off(reader))
        _destroy(reader, pg)


def test_convert_spec_closes_an_open_group_in_place(sim, session, reader,
                                                    vm0):
    """switches.convert_port_group_spec on a group made by the previous
    version (per-port ready, no filter in its defaults)."""
    spec = switches.dvs_port_group_spec(
        "neutron-physnet1-open-503", 503,
        "open group of the previous version")
    spec.defaultPortConfig.filterPolicy = None      # as it was made then
    reader.wait(reader.dvs("DVS0").AddDVPortgroup_Task([spec]))
    (pg,) = reader.dv_portgroups("neutron-physnet1-open-503")
    try:
        before = pg["ref"].config.defaultPortConfig
        assert filter_rules(before.filterPolicy) is None
        old = _group(session, sim, pg["key"])
        assert old.ports_ready and not old.default_closed
        raw = _raw_ports(reader, pg)
        target = sorted(raw, key=int)[3]
        _set_nic(reader, vm0, _on_port(pg, target))
        assert effective_rules(_raw_ports(reader, pg)[target].config
                               .setting)[0] is None     # open

        switches.reconfigure_dvs_port_group(
            session, pg["ref"], switches.convert_port_group_spec(
                old.config_version, old.num_ports), "convert")

        config = pg["ref"].config
        assert filter_rules(config.defaultPortConfig.filterPolicy) == \
            DROP_ALL_IP
        assert config.defaultPortConfig.vlan.vlanId == 503
        assert config.defaultPortConfig.securityPolicy.macChanges.value \
            is False
        assert config.description == "open group of the previous version"
        new = _group(session, sim, pg["key"])
        assert new.default_closed and new.ports_ready
        assert sorted(new.port_keys) == sorted(old.port_keys)
        raw = _raw_ports(reader, pg)
        assert raw[target].connectee.connectedEntity._moId == vm0._moId
        assert effective_rules(raw[target].config.setting) == \
            (DROP_ALL_IP, True)
    finally:
        _set_nic(reader, vm0, _off(reader))
        _destroy(reader, pg)


class TestOpenGroupConverted(test_ports.PortsTestCase):
    """With a filter per port (``shared_security_filter = False``): the
    groups' defaults hold the drop-all; see TestOpenGroupConvertedShared
    for the default."""
    vcsim_kwargs = {**test_ports.PortsTestCase.vcsim_kwargs, "vms": 1}
    extra_ml2_vcenter = {"shared_security_filter": "false"}

    VM = "DC0_C0_RP0_VM0"

    def free_keys(self, pg_key):
        return sorted((p.key for p in self.dv_ports(pg_key)
                       if (p.config.name or "free") == "free"
                       and p.connectee is None), key=int)

    def nic_keys(self, vm, pg_key):
        """The DV ports of the VM's NICs on that port group."""
        return {d.backing.port.portKey for d in vm.config.hardware.device
                if isinstance(d, vim.vm.device.VirtualEthernetCard)
                and isinstance(getattr(d.backing, "port", None),
                               vim.dvs.PortConnection)
                and d.backing.port.portgroupKey == pg_key}

    def attach(self, mac, details):
        """A NIC on that DV port (as Nova does), removed after the test."""
        vm = self.vsphere.attach_nic(self.VM, mac, details)
        self.addCleanup(self.vsphere.detach_nic, vm, details["dvs_port_key"])
        return vm

    def test_open_group_converted_in_place_by_the_full_pass(self):
        """A group of ours whose defaults carry no filter, as the version
        before this one made them -- ready for per-port settings, with
        ports it configured and NICs on them -- is converted by the next
        full pass: its VLAN, ports, reservations and NICs stay; the ports
        the driver configured keep their own filters; the others -- free,
        or taken by a NIC the driver does not know -- become closed."""
        net = self.make_net(89)
        name = self.dvs_name(net["id"])
        # Ports bound by the driver (DV ports of their own): one with
        # security groups, Nova's NIC on it; one with port security off.
        bound = self.port_on(net["id"])
        off = self.port_on(net["id"], port_security_enabled=False,
                           security_groups=[])
        details = bound[portbindings.VIF_DETAILS]
        key_off = off[portbindings.VIF_DETAILS]["dvs_port_key"]
        vm = self.attach(bound["mac_address"], details)
        # A NIC the driver knows nothing of, on a free port.
        free = self.free_keys(details["pg_id"])
        stranger = free[0]
        self.attach("00:50:56:00:00:89", {**details,
                                           "dvs_port_key": stranger})
        # The group's defaults as the previous version left them: no
        # traffic filter (the switch's: none).
        (old,) = self.vsphere.dv_portgroups(name)
        self.vsphere.wait(old["ref"].ReconfigureDVPortgroup_Task(
            vim.dvs.DistributedVirtualPortgroup.ConfigSpec(
                configVersion=old["ref"].config.configVersion,
                defaultPortConfig=vim.dvs.VmwareDistributedVirtualSwitch
                .VmwarePortConfigPolicy(filterPolicy=vim.dvs
                                        .DistributedVirtualPort
                                        .FilterPolicy(inherited=True)))))
        self.assertIsNone(filter_rules(
            old["ref"].config.defaultPortConfig.filterPolicy))
        before = {p.key: p for p in self.dv_ports(old["key"])}
        own_bound = dv_port_rules(before[details["dvs_port_key"]].config
                                  .setting)
        self.assertTrue(own_bound)
        self.assertEqual([], dv_port_rules(before[key_off].config.setting))
        self.assertIsNone(effective_rules(before[stranger].config
                                          .setting)[0])     # open

        result = self.resync()
        self.assertEqual(["convert"], [
            s.verb for s in result.plan.for_network(net["id"]).steps])

        (pg,) = self.vsphere.dv_portgroups(name)
        self.assertEqual((old["key"], old["moid"], 89),
                         (pg["key"], pg["moid"], pg["vlan"]))
        self.assertEqual(DROP_ALL_IP, filter_rules(
            pg["ref"].config.defaultPortConfig.filterPolicy))
        after = {p.key: p for p in self.dv_ports(pg["key"])}
        self.assertEqual(sorted(before, key=int), sorted(after, key=int))
        self.assertEqual(
            {k: (p.config.name, p.connectee and
                 p.connectee.connectedEntity._moId)
             for k, p in before.items()},
            {k: (p.config.name, p.connectee and
                 p.connectee.connectedEntity._moId)
             for k, p in after.items()})
        self.assertEqual({details["dvs_port_key"], stranger},
                         {k for k, p in after.items()
                          if p.connectee is not None})
        self.assertEqual({details["dvs_port_key"], stranger},
                         self.nic_keys(vm, pg["key"]))
        # The driver's ports keep their own filters; the rest is closed.
        self.assertEqual((own_bound, False), effective_rules(
            after[details["dvs_port_key"]].config.setting))
        self.assertEqual(([], False), effective_rules(
            after[key_off].config.setting))
        for key in free:
            self.assertEqual((DROP_ALL_IP, True), effective_rules(
                after[key].config.setting), key)
        # Converted once: the next pass finds nothing to do.
        self.assertTrue(self.vcenter_driver.backend.reconciler.replica.wait_until(
            lambda inv: all(g.default_closed for g in inv.dvs_portgroups
                            if g.name == name), 10))
        self.assertEqual([], self.resync().plan.for_network(net["id"]).steps)

    def test_group_made_the_old_way_converted_before_a_bind(self):
        """A group created by the previous version's spec (no filter in
        its defaults), with a NIC the driver does not know on one of its
        ports: the first bind on its network converts it in place before
        it reserves a port."""
        net = self.make_net(88)
        name = self.dvs_name(net["id"])
        (made,) = self.vsphere.dv_portgroups(name)
        self.vsphere.destroy_dv_portgroup(name)
        spec = switches.dvs_port_group_spec(name, 88, made["description"])
        spec.defaultPortConfig.filterPolicy = None     # as it was made then
        self.vsphere.wait(self.vsphere.dvs("DVS0").AddDVPortgroup_Task(
            [spec]))
        (old,) = self.vsphere.dv_portgroups(name)
        self.assertIsNone(filter_rules(
            old["ref"].config.defaultPortConfig.filterPolicy))
        stranger = self.free_keys(old["key"])[2]
        vm = self.attach("00:50:56:00:00:88", {
            "dvs_id": old["switch_uuid"], "pg_id": old["key"],
            "dvs_port_key": stranger})
        before = sorted((p.key for p in self.dv_ports(old["key"])), key=int)
        self.replica_caught_up()

        port = self.port_on(net["id"])

        (pg,) = self.vsphere.dv_portgroups(name)
        self.assertEqual((old["key"], old["moid"], 88),
                         (pg["key"], pg["moid"], pg["vlan"]))
        self.assertEqual(DROP_ALL_IP, filter_rules(
            pg["ref"].config.defaultPortConfig.filterPolicy))
        after = {p.key: p for p in self.dv_ports(pg["key"])}
        self.assertEqual(before, sorted(after, key=int))
        self.assertEqual({stranger}, self.nic_keys(vm, pg["key"]))
        self.assertEqual(vm._moId, after[stranger].connectee
                         .connectedEntity._moId)
        self.assertEqual((DROP_ALL_IP, True), effective_rules(
            after[stranger].config.setting))
        details = port[portbindings.VIF_DETAILS]
        self.assertEqual(pg["key"], details["pg_id"])
        mine = after[details["dvs_port_key"]]
        self.assertEqual(port["id"], mine.config.name)
        rules, inherited = effective_rules(mine.config.setting)
        self.assertFalse(inherited)
        self.assertTrue(rules and rules != DROP_ALL_IP)


class TestOpenGroupConvertedShared(TestOpenGroupConverted):
    """With the shared filter (the default) a replica does not parse group
    filters: a group of ours whose description names no digest of defaults
    we wrote (made by an earlier version) is converted before a bind
    reserves a port in it, and the port syncs then give it the shared
    filter, blocked for every port not configured."""

    extra_ml2_vcenter = {}

    test_open_group_converted_in_place_by_the_full_pass = None
    test_group_made_the_old_way_converted_before_a_bind = None

    def test_old_group_closed_before_the_first_bind_reserves(self):
        net = self.make_net(87)
        name = self.dvs_name(net["id"])
        (made,) = self.vsphere.dv_portgroups(name)
        self.vsphere.destroy_dv_portgroup(name)
        # As the version before the closed defaults made it: ready for
        # per-port settings, no filter in its defaults, no digest.
        spec = switches.dvs_port_group_spec(name, 87, inventory
                                            .owner_description(
                                                "test", net["id"],
                                                "physnet1", 87))
        spec.description = made["description"].split(" Port defaults")[0]
        spec.defaultPortConfig.filterPolicy = None
        self.vsphere.wait(self.vsphere.dvs("DVS0").AddDVPortgroup_Task(
            [spec]))
        (old,) = self.vsphere.dv_portgroups(name)
        self.assertIsNone(filter_rules(
            old["ref"].config.defaultPortConfig.filterPolicy))
        self.assertIsNone(inventory.defaults_token_of(old["description"]))
        stranger = self.free_keys(old["key"])[2]
        self.attach("00:50:56:00:00:87", {
            "dvs_id": old["switch_uuid"], "pg_id": old["key"],
            "dvs_port_key": stranger})
        self.replica_caught_up()

        with self.soap_calls() as calls:
            port = self.port_on(net["id"])
        self.assert_group_written_first(
            calls, "a port was reserved in the open group before it was "
                   "closed")

        (pg,) = self.vsphere.dv_portgroups(name)
        self.assertEqual(old["key"], pg["key"])
        after = {p.key: p for p in self.dv_ports(pg["key"])}
        # The stranger's NIC: closed (blocked, or all IP dropped).
        setting = after[stranger].config.setting
        self.assertTrue(setting.blocked.value or effective_rules(setting)
                        == (DROP_ALL_IP, True))
        # The port: configured, filtered.
        mine = after[port[portbindings.VIF_DETAILS]["dvs_port_key"]]
        self.assertEqual(port["id"], mine.config.name)
        self.assertFalse(mine.config.setting.blocked.value)
        self.assertTrue(effective_rules(mine.config.setting)[0])
        # Converted once: a digest of ours named, nothing left to do.
        self.assertIsNotNone(inventory.defaults_token_of(
            self.vsphere.dv_portgroups(name)[0]["description"]))
        self.assertEqual([], self.resync().plan.for_network(net["id"]).steps)

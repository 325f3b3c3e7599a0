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

"""One shared filter per port group (``shared_security_filter``, issue 15),
through Neutron's real ML2 plugin and the simulator.

The ports of a network's default security group inherit one filter in
their port group's defaults.  What a join costs vCenter is counted request
by request: the bind's reservation and one reconfigure of the port group,
two tasks, whatever the number of members.  A port leaving the group gets a
filter of its own; a group whose shared filter would pass its budget shares
nothing.
"""

from __future__ import annotations

import collections
import dataclasses
import ipaddress

from neutron_lib.api.definitions import portbindings
from pyVmomi import vim

from networking_vcenter.reconcile import portsettings
from networking_vcenter.vsphere import inventory
from networking_vcenter.vsphere import ports as ports_mod
from networking_vcenter.vsphere import switches
from tests.functional.test_ports import PortsTestCase

TO_VM = portsettings.TO_VM


class TestSharedFilter(PortsTestCase):

    extra_ml2_vcenter = {"shared_security_filter": "true"}

    def group(self, port):
        key = port[portbindings.VIF_DETAILS]["pg_id"]
        (pg,) = [pg for pg in self.vsphere.dvs("DVS0").portgroup
                 if pg.key == key]
        return pg

    def shared(self, port):
        """The port group's default rules, read back from vCenter."""
        policy = self.group(port).config.defaultPortConfig.filterPolicy
        return [ports_mod.rule_of(r) for c in policy.filterConfig or []
                for r in c.trafficRuleset.rules or []]

    @staticmethod
    def admits(rules, port):
        """Whether the shared rules carry ``port``: its MAC-qualified rule
        from its address and its address as a member source."""
        ip = port["fixed_ips"][0]["ip_address"]
        mac = port["mac_address"]
        return any(r.source_mac == mac and r.source == ip + "/32"
                   for r in rules) and any(
            r.direction == TO_VM and r.source and r.source_mac is None and
            r.destination_mac is None and r.destination is None and
            ipaddress.ip_address(ip) in ipaddress.ip_network(r.source)
            for r in rules)

    def own_rules(self, port):
        setting = self.dv_port(port).config.setting
        return ports_mod.settings_of(setting).rules

    def test_a_join_is_one_reservation_and_one_group_write(self):
        net = self.make_net(201)
        members = [self.port_on(net["id"]) for _ in range(3)]
        rules = self.eventually(lambda: (lambda r: all(
            self.admits(r, p) for p in members) and r)(
            self.shared(members[0])))
        self.assertTrue(rules, "the shared filter lacks a member")
        for p in members:
            self.assertIsNone(self.own_rules(p), "a member has its own")
            self.assertFalse(self.dv_port(p).config.setting.blocked.value)
        self.assertTrue(
            self.group(members[0]).config.defaultPortConfig.blocked.value)
        self.replica_caught_up()
        before = {p["id"]: self.dv_port(p).config.configVersion
                  for p in members}

        with self.soap_calls() as calls:
            new = self.port_on(net["id"])
            self.settled()
        tasks = collections.Counter(c for c in calls if c.endswith("_Task"))
        self.assertEqual({"ReconfigureDVPort_Task": 1,
                          "ReconfigureDVPortgroup_Task": 1}, dict(tasks),
                         calls)
        self.assertTrue(all(self.admits(self.shared(new), p)
                            for p in members + [new]))
        self.assertEqual(before, {p["id"]: self.dv_port(p).config.configVersion
                                  for p in members})

    def test_a_join_reads_the_networks_ports_once(self):
        """The hook's sync after a join covers every member (their
        remote group changed): they are read once, with the network's
        ports for its shared filter, not once more by id."""
        net = self.make_net(203)
        members = [self.port_on(net["id"]) for _ in range(3)]
        self.assertTrue(self.eventually(lambda: all(
            self.admits(self.shared(members[0]), p) for p in members)))
        self.settled()
        drv = self.vcenter_driver
        real = drv.backend.port_source
        reads = []

        def spy(ids, **kw):
            found = list(real(ids, **kw))
            reads.append((None if ids is None else set(ids), kw,
                          {p.id for p in found}))
            return found
        drv.backend.port_source = spy
        self.addCleanup(setattr, drv, "port_source", real)
        new = self.port_on(net["id"])
        self.assertTrue(self.eventually(
            lambda: self.admits(self.shared(new), new)))
        self.settled()
        everyone = {p["id"] for p in members + [new]}
        self.assertEqual([(None, {"network_ids": {net["id"]}}, everyone)],
                         reads)

    def test_a_port_leaving_the_group_gets_its_own_filter(self):
        net = self.make_net(202)
        stay, leave = self.port_on(net["id"]), self.port_on(net["id"])
        self.assertTrue(self.eventually(
            lambda: self.admits(self.shared(stay), leave)))
        sg = self.make_sg("shared-leave")
        self.add_rule(sg["id"], direction="ingress", ethertype="IPv4",
                      protocol="tcp", port_range_min=22, port_range_max=22,
                      remote_ip_prefix="192.0.2.0/24")
        res = self._update("ports", leave["id"], {"port": {
            "security_groups": [sg["id"]]}}, as_admin=True)
        self.assertIn("port", res)
        own = self.eventually(lambda: self.own_rules(leave))
        self.assertTrue(own, "the port that left has no filter of its own")
        self.assertIn(((22, 22), "192.0.2.0/24"),
                      [(r.destination_ports, r.source) for r in own])
        shared = self.eventually(lambda: (lambda r: not any(
            leave["mac_address"] in (x.source_mac, x.destination_mac)
            for x in r) and r)(self.shared(stay)))
        self.assertTrue(shared, "the shared filter still names the port")
        self.assertTrue(self.admits(shared, stay))
        self.assertIsNone(self.own_rules(stay))

    def test_a_port_joining_the_group_is_named_before_it_drops_its_own(
            self):
        """A port with a filter of its own moved into the default group:
        the group's filter names it before its DV port drops its own, so
        that it is never under a filter that does not name it (all its
        traffic dropped)."""
        net = self.make_net(206)
        stay = self.port_on(net["id"])
        sg = self.make_sg("shared-join")
        join = self.port_on(net["id"], security_groups=[sg["id"]])
        self.assertTrue(self.eventually(lambda: self.own_rules(join)))
        self.assertFalse(self.admits(self.shared(stay), join))
        with self.soap_calls() as calls:
            res = self._update("ports", join["id"], {"port": {
                "security_groups": stay["security_groups"]}},
                as_admin=True)
            self.assertIn("port", res)
            self.settled()
            joined = self.eventually(lambda: self.own_rules(join) is None
                                     and self.admits(self.shared(stay),
                                                     join))
        self.assertTrue(joined, "the port did not join the shared filter")
        self.assert_group_written_first(
            calls, "the port dropped its own filter before its group's "
                   "named it")

    def test_a_hand_edit_of_the_shared_filter_is_undone(self):
        # The replica does not parse a shared filter: what the group's
        # description names is checked against what vCenter holds.
        net = self.make_net(204)
        members = [self.port_on(net["id"]) for _ in range(2)]
        want = self.eventually(lambda: (lambda r: all(
            self.admits(r, p) for p in members) and r)(
            self.shared(members[0])))
        self.assertTrue(want, "the shared filter lacks a member")

        # A full pass reads the filter whole and finds it true: no write.
        with self.soap_calls() as calls:
            self.resync()
        self.assertNotIn("ReconfigureDVPortgroup_Task", calls)

        # By hand: an accept-all first, and the defaults unblocked; the
        # description (with its digest) left as it was.
        pg = self.group(members[0])
        policy = pg.config.defaultPortConfig.filterPolicy
        ruleset = policy.filterConfig[0].trafficRuleset
        ruleset.rules = [ports_mod.rule_spec(dataclasses.replace(
            ports_mod.CLOSED_RULES[0], action="accept",
            description="by hand"), 1)] + list(ruleset.rules)
        self.vsphere.wait(pg.ReconfigureDVPortgroup_Task(
            vim.dvs.DistributedVirtualPortgroup.ConfigSpec(
                configVersion=pg.config.configVersion,
                defaultPortConfig=vim.dvs.VmwareDistributedVirtualSwitch
                .VmwarePortConfigPolicy(
                    blocked=vim.BoolPolicy(inherited=False, value=False),
                    filterPolicy=policy))))
        edited = self.group(members[0])
        self.assertIn("by hand", [r.description for r in self.shared(
            members[0])])
        self.assertFalse(edited.config.defaultPortConfig.blocked.value)
        self.assertEqual(pg.config.description, edited.config.description)

        with self.soap_calls() as calls:
            self.resync()
        self.assertEqual(1, calls.count("ReconfigureDVPortgroup_Task"),
                         calls)
        self.assertEqual(want, self.shared(members[0]))
        self.assertTrue(
            self.group(members[0]).config.defaultPortConfig.blocked.value)

    def replica_shows(self, group) -> None:
        """Wait until the driver's replica shows ``group`` (a port group
        as vCenter answers it now) at its current configVersion: an edit of
        its defaults changes no plan, so replica_caught_up does not wait
        for it."""
        key, version = group.key, str(group.config.configVersion)
        rec = self.vcenter_driver.backend.reconciler
        self.assertTrue(rec.replica.wait_until(lambda inv: any(
            g.key == key and str(g.config_version) == version
            for g in inv.dvs_portgroups), 15),
            f"the replica does not show {key} at configVersion {version}")

    def test_a_grow_of_ours_is_not_taken_for_a_hand_edit(self):
        """A port group of ours grown (a write of ours that leaves its
        defaults alone) names its digest again on the configVersion it was
        written on: no process reads it whole for it (~2.5 s of parsing at
        N = 1,000).  A hand edit after it still is."""
        net = self.make_net(207)
        member = self.port_on(net["id"])
        self.assertTrue(self.eventually(
            lambda: self.admits(self.shared(member), member)))
        self.settled()
        rec = self.vcenter_driver.backend.reconciler
        self.replica_caught_up()
        self.assertFalse(rec.defaults_suspect(net["id"]))
        key = member[portbindings.VIF_DETAILS]["pg_id"]
        (pg,) = [g for g in rec.inventory().dvs_portgroups if g.key == key]
        self.assertTrue(pg.defaults_written_last)
        ports_mod.grow_port_group(rec.session, pg, 4)
        self.replica_caught_up()
        (grown,) = [g for g in rec.inventory().dvs_portgroups
                    if g.key == key]
        self.assertEqual(pg.num_ports + 4, grown.num_ports)
        self.assertEqual(pg.config_version, grown.defaults_base)
        self.assertFalse(rec.defaults_suspect(net["id"]),
                         "a grow of ours was taken for a hand edit")
        # By hand, after it: the defaults unblocked.
        group = self.group(member)
        self.vsphere.wait(group.ReconfigureDVPortgroup_Task(
            vim.dvs.DistributedVirtualPortgroup.ConfigSpec(
                configVersion=group.config.configVersion,
                defaultPortConfig=vim.dvs.VmwareDistributedVirtualSwitch
                .VmwarePortConfigPolicy(
                    blocked=vim.BoolPolicy(inherited=False, value=False)))))
        self.replica_shows(self.group(member))
        self.assertTrue(rec.defaults_suspect(net["id"]))

    def test_a_hand_edit_right_behind_a_write_made_elsewhere_is_undone(
            self):
        """Another server writes the shared filter (a new digest) and an
        operator edits the group right behind it, before this process's
        replica showed that write: the replica shows both as one change.
        The group's configVersion is past the one the digest was written
        on, so the digest is not trusted: the group is read whole and
        written again."""
        net = self.make_net(205)
        members = [self.port_on(net["id"]) for _ in range(2)]
        want = self.eventually(lambda: (lambda r: all(
            self.admits(r, p) for p in members) and r)(
            self.shared(members[0])))
        self.assertTrue(want, "the shared filter lacks a member")
        self.settled()
        drv = self.vcenter_driver
        rec = drv.backend.reconciler
        self.replica_caught_up()
        self.assertFalse(rec.defaults_suspect(net["id"]))

        def elsewhere(port="2224"):
            """The other server's write: a filter with one rule more, its
            digest and the configVersion it was written on."""
            pg = self.group(members[0])
            config = pg.config
            rules = (dataclasses.replace(
                ports_mod.CLOSED_RULES[0], action="accept",
                description=f"elsewhere {port}"),) + tuple(want)
            self.vsphere.wait(pg.ReconfigureDVPortgroup_Task(
                switches.group_defaults_spec(
                    config.configVersion, inventory.with_defaults_token(
                        config.description,
                        inventory.defaults_token(True, rules),
                        config.configVersion), True, rules)))
            return pg

        # A write of ours elsewhere, alone: taken for ours, nothing read.
        self.replica_shows(elsewhere())
        self.assertFalse(rec.defaults_suspect(net["id"]),
                         "a write made elsewhere was doubted")

        # ... and one with a hand edit right behind it.
        pg = elsewhere("2225")
        self.vsphere.wait(pg.ReconfigureDVPortgroup_Task(
            vim.dvs.DistributedVirtualPortgroup.ConfigSpec(
                configVersion=pg.config.configVersion,
                defaultPortConfig=vim.dvs.VmwareDistributedVirtualSwitch
                .VmwarePortConfigPolicy(
                    blocked=vim.BoolPolicy(inherited=False, value=False)))))
        self.assertFalse(self.group(members[0]).config.defaultPortConfig
                         .blocked.value)
        self.replica_shows(self.group(members[0]))
        self.assertTrue(rec.defaults_suspect(net["id"]),
                        "an edit right behind a write made elsewhere was "
                        "taken for ours")
        with self.soap_calls() as calls:
            rec.sync_ports(set(), drv.backend.source, drv.backend.port_source,
                           networks={net["id"]})
        self.assertEqual(1, calls.count("ReconfigureDVPortgroup_Task"),
                         calls)
        self.assertEqual(want, self.shared(members[0]))
        self.assertTrue(
            self.group(members[0]).config.defaultPortConfig.blocked.value)


class TestSharedFilterBudget(TestSharedFilter):
    """A budget of 16 rules: no shared filter fits."""

    extra_ml2_vcenter = {"shared_security_filter": "true",
                         "max_rules_per_port_group": 16}

    test_a_join_is_one_reservation_and_one_group_write = None
    test_a_join_reads_the_networks_ports_once = None
    test_a_port_leaving_the_group_gets_its_own_filter = None
    test_a_hand_edit_of_the_shared_filter_is_undone = None
    test_a_hand_edit_right_behind_a_write_made_elsewhere_is_undone = None
    test_a_grow_of_ours_is_not_taken_for_a_hand_edit = None
    test_a_port_joining_the_group_is_named_before_it_drops_its_own = None

    def test_over_its_budget_a_group_shares_nothing(self):
        net = self.make_net(203)
        ports = [self.port_on(net["id"]) for _ in range(2)]
        for p in ports:
            own = self.eventually(lambda p=p: self.own_rules(p))
            self.assertTrue(own, "over the budget a port has no filter")
        closed = [dataclasses.replace(r, description="")
                  for r in ports_mod.CLOSED_RULES]
        self.assertTrue(self.eventually(lambda: [
            dataclasses.replace(r, description="")
            for r in self.shared(ports[0])] == closed),
            "over its budget the group's default is not the drop-all")

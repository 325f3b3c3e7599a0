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

"""Ports as first-class vSphere ports: the real ML2 plugin (with security
groups, port security and QoS) against the simulator.

Each Neutron port bound on the distributed switch gets a DV port of its own,
named after it, that carries its policy.  Everything is read back with plain
pyVmomi calls written here (FetchDVPorts and attribute reads), sharing no
code with the driver's conversion of settings.
"""

from __future__ import annotations

import contextlib
import threading
import time
from unittest import mock

from neutron_lib.api.definitions import portbindings
from oslo_config import cfg
from pyVmomi import vim

from networking_vcenter.reconcile.reconciler import Reconciler
from tests.functional import base
from tests.fixtures.vsphere_reader import dv_port_rules, effective_rules


class PortsTestCase(base.VCenterMl2TestCase):
    """ML2 with security groups, port security and QoS."""

    def get_additional_service_plugins(self):
        return {"qos": "neutron.services.qos.qos_plugin.QoSPlugin"}

    def preSetUp(self):
        cfg.CONF.set_override("extension_drivers", ["port_security", "qos"],
                              group="ml2")

    # -- reading the simulator -----------------------------------------------

    def dv_ports(self, pg_key, switch="DVS0"):
        dvs = self.vsphere.dvs(switch)
        return dvs.FetchDVPorts(vim.dvs.PortCriteria(
            portgroupKey=[pg_key], inside=True))

    def dv_port(self, port):
        """The DV port the binding handed to Nova, read from vCenter."""
        details = port[portbindings.VIF_DETAILS]
        (found,) = [p for p in self.dv_ports(details["pg_id"])
                    if p.key == details["dvs_port_key"]]
        return found

    def setUp(self):
        super().setUp()
        base.patch_qos_resource_requests(self)

    def eventually(self, fn, timeout=15):
        end = time.monotonic() + timeout
        while True:
            self.settled()
            value = fn()
            if value or time.monotonic() > end:
                return value
            time.sleep(0.2)

    def make_net(self, vlan):
        """A VLAN network on the distributed switch, with an IPv4 subnet."""
        net = self.make_network("vlan", "physnet1", vlan)
        res = self._create_subnet(self.fmt, net["id"], f"10.{vlan}.0.0/24",
                                  as_admin=True)
        self.assertEqual(201, res.status_int, res.body)
        return net

    def make_sg(self, name="web", stateful=True):
        return self.driver.create_security_group(self.context, {
            "security_group": {"name": name, "description": "",
                               "tenant_id": "p1", "project_id": "p1",
                               "stateful": stateful}})

    def add_rule(self, sg_id, **kw):
        rule = {"security_group_id": sg_id, "direction": "ingress",
                "ethertype": "IPv4", "protocol": None,
                "port_range_min": None, "port_range_max": None,
                "remote_ip_prefix": None, "remote_group_id": None,
                "remote_address_group_id": None, "description": "",
                "tenant_id": "p1", "project_id": "p1"}
        rule.update(kw)
        return self.driver.create_security_group_rule(
            self.context, {"security_group_rule": rule})

    def port_on(self, net_id, **kw):
        args = {portbindings.HOST_ID: base.COMPUTE_HOST, **kw}
        res = self._create_port(self.fmt, net_id, is_admin=True,
                                arg_list=tuple(args), **args)
        body = self.deserialize(self.fmt, res)
        self.assertEqual(201, res.status_int, body)
        self.settled()
        return body["port"]

    def update_port(self, port_id, **kw):
        port = self.driver.update_port(self.context, port_id, {"port": kw})
        self.settled()
        return port


class TestReservation(PortsTestCase):

    def test_bind_reserves_a_configured_dv_port_for_nova(self):
        net = self.make_net(90)
        port = self.port_on(net["id"])
        details = port[portbindings.VIF_DETAILS]
        self.assertIn("dvs_port_key", details)
        dvp = self.dv_port(port)
        # Named after the port: the reservation, found again by name.
        self.assertEqual(port["id"], dvp.config.name)
        self.assertIsNone(dvp.connectee)
        # Its own filter, or (shared_security_filter, the default: a port
        # of its network's default group) its group's, which it inherits;
        # configured, so not blocked.
        rules, _ = effective_rules(dvp.config.setting)
        self.assertTrue(rules, "the port has no traffic filter")
        self.assertFalse(dvp.config.setting.blocked.value)
        # Ends with drops for IPv4 and IPv6 in both directions.
        drops = {(r["direction"], r["source"] or r["destination"])
                 for r in rules if r["action"] == "drop"}
        for direction in ("incomingPackets", "outgoingPackets"):
            self.assertTrue(any(d == direction for d, _ in drops), drops)
        # Anti-spoofing: what the VM sends is accepted only from its own
        # addresses (or DHCP's 0.0.0.0).
        ip = port["fixed_ips"][0]["ip_address"]
        sources = {r["source"][0] for r in rules
                   if r["action"] == "accept" and r["source"]
                   and r["direction"] == "incomingPackets"}
        self.assertIn(f"{ip}/32", sources)
        self.assertFalse(sources - {f"{ip}/32", "0.0.0.0/32", "::/128"} - {
            s for s in sources if s.startswith("fe80:")}, sources)
        sec = dvp.config.setting.securityPolicy
        self.assertFalse(sec.forgedTransmits.value)
        self.assertFalse(sec.macChanges.value)
        self.assertFalse(sec.allowPromiscuous.value)
        self.assertEqual("DOWN", self.driver.get_port(
            self.context, port["id"])["status"])

    def test_two_ports_two_dv_ports_and_rebinding_is_idempotent(self):
        net = self.make_net(91)
        a = self.port_on(net["id"])
        b = self.port_on(net["id"])
        ka = a[portbindings.VIF_DETAILS]["dvs_port_key"]
        kb = b[portbindings.VIF_DETAILS]["dvs_port_key"]
        self.assertNotEqual(ka, kb)
        # A new reconciler (a restart) finds the reservations by name and
        # has nothing to do.
        drv = self.vcenter_driver
        rec = Reconciler.from_settings(drv.settings, watch=False)
        self.addCleanup(rec.close)
        rec.start()
        result = rec.sync_ports({a["id"], b["id"]}, drv.backend.source,
                                drv.backend.port_source, dry_run=True)
        self.assertEqual([], result.plan.steps)
        self.assertEqual({a["id"]: ka, b["id"]: kb},
                         {i: p.key for i, p in result.plan.reserved.items()})

    def test_delete_releases_and_resets_the_dv_port(self):
        net = self.make_net(92)
        port = self.port_on(net["id"])
        key = port[portbindings.VIF_DETAILS]["dvs_port_key"]
        pg_key = port[portbindings.VIF_DETAILS]["pg_id"]
        self._delete("ports", port["id"])
        self.settled()
        (dvp,) = [p for p in self.dv_ports(pg_key) if p.key == key]
        self.assertEqual("free", dvp.config.name)
        self.assertIsNone(dv_port_rules(dvp.config.setting))
        self.assertTrue(dvp.config.setting.securityPolicy.inherited)

    def test_full_port_group_grows(self):
        net = self.make_net(93)
        ports = [self.port_on(net["id"]) for _ in range(10)]
        keys = {p[portbindings.VIF_DETAILS]["dvs_port_key"] for p in ports}
        self.assertEqual(10, len(keys))
        pg_key = ports[0][portbindings.VIF_DETAILS]["pg_id"]
        named = {p.config.name for p in self.dv_ports(pg_key)}
        self.assertTrue({p["id"] for p in ports} <= named)


class TestPolicy(PortsTestCase):

    def test_rule_added_and_removed_reaches_the_port(self):
        net = self.make_net(94)
        sg = self.make_sg()
        port = self.port_on(net["id"], security_groups=[sg["id"]])

        def ssh_rules():
            return [r for r in dv_port_rules(self.dv_port(port).config.setting)
                    if r["protocol"] == 6 and r["dports"] == (22, 22)]

        self.assertEqual([], ssh_rules())
        rule = self.add_rule(sg["id"], protocol="tcp", port_range_min=22,
                             port_range_max=22,
                             remote_ip_prefix="192.0.2.0/24")
        found = self.eventually(ssh_rules)
        self.assertTrue(found)
        self.assertTrue(all(r["action"] == "accept" for r in found))
        self.assertIn(("192.0.2.0/24", False),
                      [r["source"] for r in found
                       if r["direction"] == "outgoingPackets"])
        self.driver.delete_security_group_rule(self.context, rule["id"])
        self.assertEqual([], self.eventually(lambda: not ssh_rules()
                                             and ssh_rules() or [], 15))
        self.assertEqual([], ssh_rules())

    def test_remote_group_membership_fans_out(self):
        net = self.make_net(95)
        sg = self.make_sg("db")
        self.add_rule(sg["id"], protocol="tcp", port_range_min=5432,
                      port_range_max=5432, remote_group_id=sg["id"])
        first = self.port_on(net["id"], security_groups=[sg["id"]])

        def db_sources():
            return {r["source"][0] for r in
                    dv_port_rules(self.dv_port(first).config.setting)
                    if r["dports"] == (5432, 5432)
                    and r["direction"] == "outgoingPackets"}

        own = f"{first['fixed_ips'][0]['ip_address']}/32"
        self.assertEqual({own}, db_sources())
        second = self.port_on(net["id"], security_groups=[sg["id"]])
        theirs = f"{second['fixed_ips'][0]['ip_address']}/32"
        self.assertTrue(self.eventually(lambda: theirs in db_sources()))

    def test_a_port_created_bound_is_synced_once_with_its_binding(self):
        """ML2 calls create_port_postcommit before it binds: that sync
        would write the port's address into the filters naming its group
        before the port is bound (a shared filter: one port group write
        more per VM).  The port and the fan-out are synced once, from
        update_port_postcommit with the committed binding."""
        net = self.make_net(96)
        sg = self.make_sg("once")
        self.add_rule(sg["id"], protocol="tcp", port_range_min=5432,
                      port_range_max=5432, remote_group_id=sg["id"])
        backend = self.vcenter_driver.backend
        real = backend.ports_changed
        calls = []

        def spy(ids, ids_of=None, *args, **kw):
            calls.append((set(ids), ids_of is not None))
            return real(ids, ids_of, *args, **kw)
        backend.ports_changed = spy
        self.addCleanup(setattr, backend, "ports_changed", real)
        port = self.port_on(net["id"], security_groups=[sg["id"]])
        self.assertEqual("dvs", port[portbindings.VIF_TYPE])
        self.assertEqual([({port["id"]}, True)], calls)

    def test_port_security_off_and_on(self):
        net = self.make_net(96)
        port = self.port_on(net["id"])
        self.update_port(port["id"], security_groups=[],
                         port_security_enabled=False)

        def open_():
            s = self.dv_port(port).config.setting
            return dv_port_rules(s) == [] and \
                s.securityPolicy.forgedTransmits.value

        self.assertTrue(self.eventually(open_))
        s = self.dv_port(port).config.setting
        self.assertTrue(s.securityPolicy.macChanges.value)
        self.update_port(port["id"], port_security_enabled=True)
        self.assertTrue(self.eventually(
            lambda: dv_port_rules(self.dv_port(port).config.setting)))
        s = self.dv_port(port).config.setting
        self.assertFalse(s.securityPolicy.forgedTransmits.value)

    def test_allowed_address_pair_is_a_permitted_source(self):
        net = self.make_net(97)
        port = self.port_on(net["id"])
        self.update_port(port["id"], allowed_address_pairs=[
            {"ip_address": "10.99.0.0/24"}])

        def sources():
            return {r["source"][0] for r in
                    effective_rules(self.dv_port(port).config.setting)[0]
                    if r["action"] == "accept" and r["source"]
                    and r["direction"] == "incomingPackets"}

        self.assertTrue(self.eventually(lambda: "10.99.0.0/24" in sources()))

    def test_qos_bandwidth_limit_becomes_shaping(self):
        from neutron_lib.plugins import directory
        qos = directory.get_plugin("QOS")
        net = self.make_net(98)
        policy = qos.create_policy(self.context, {"policy": {
            "name": "slow", "project_id": "p1", "tenant_id": "p1",
            "shared": False}})
        qos.create_policy_bandwidth_limit_rule(
            self.context, policy["id"], {"bandwidth_limit_rule": {
                "max_kbps": 2000, "max_burst_kbps": 400,
                "direction": "egress"}})
        port = self.port_on(net["id"], qos_policy_id=policy["id"])

        def shaping():
            s = self.dv_port(port).config.setting
            return s.inShapingPolicy if s.inShapingPolicy.enabled.value \
                else None

        shape = self.eventually(shaping)
        self.assertIsNotNone(shape)
        self.assertEqual(2000 * 1000, shape.averageBandwidth.value)
        self.assertFalse(self.dv_port(port).config.setting
                         .outShapingPolicy.enabled.value)

    def test_rule_removed_by_hand_is_restored_by_the_full_pass(self):
        # A port with a filter of its own (not its network's default group,
        # whose ports share one: test_shared_filter.py).
        net = self.make_net(99)
        sg = self.make_sg("by-hand")
        self.add_rule(sg["id"], protocol="tcp", port_range_min=22,
                      port_range_max=22, remote_ip_prefix="192.0.2.0/24")
        port = self.port_on(net["id"], security_groups=[sg["id"]])
        dvp = self.dv_port(port)
        want = dv_port_rules(dvp.config.setting)
        setting = dvp.config.setting
        rules = setting.filterPolicy.filterConfig[0].trafficRuleset.rules
        setting.filterPolicy.filterConfig[0].trafficRuleset.rules = rules[1:]
        dvs = self.vsphere.dvs("DVS0")
        self.vsphere.wait(dvs.ReconfigureDVPort_Task([
            vim.dvs.DistributedVirtualPort.ConfigSpec(
                key=dvp.key, operation="edit",
                configVersion=dvp.config.configVersion,
                setting=vim.dvs.VmwareDistributedVirtualSwitch
                .VmwarePortConfigPolicy(filterPolicy=setting.filterPolicy))]))
        self.assertEqual(len(want) - 1,
                         len(dv_port_rules(self.dv_port(port).config.setting)))
        self.resync()
        self.assertEqual(want, dv_port_rules(self.dv_port(port).config.setting))


class TestStatus(PortsTestCase):
    vcsim_kwargs = {**PortsTestCase.vcsim_kwargs, "vms": 1}

    def test_port_active_while_a_nic_is_on_its_dv_port(self):
        net = self.make_net(89)
        port = self.port_on(net["id"])
        details = port[portbindings.VIF_DETAILS]
        vm = self.vsphere.attach_nic("DC0_C0_RP0_VM0", port["mac_address"],
                                     details)
        self.assertIsNotNone(self.dv_port(port).connectee)
        rec = self.vcenter_driver.backend.reconciler
        rec.sync_ports({port["id"]}, self.vcenter_driver.backend.source,
                       self.vcenter_driver.backend.port_source)
        self.assertEqual("ACTIVE", self.driver.get_port(
            self.context, port["id"])["status"])
        self.vsphere.detach_nic(vm, details["dvs_port_key"])
        self.assertTrue(rec.replica.wait_until(
            lambda inv: not any(p.connected for ps in inv.dv_ports.values()
                                for p in ps if p.name == port["id"]), 10))
        rec.sync_ports({port["id"]}, self.vcenter_driver.backend.source,
                       self.vcenter_driver.backend.port_source)
        self.assertEqual("DOWN", self.driver.get_port(
            self.context, port["id"])["status"])


class TestNarrowPortReads(PortsTestCase):
    """A NIC coming or going, or ports added to a group, make the replica
    read the ports that changed, not its port group's every port."""
    vcsim_kwargs = {**PortsTestCase.vcsim_kwargs, "vms": 1}

    @contextlib.contextmanager
    def replica_reads(self):
        """{"FetchDVPorts": calls, "ports": DV ports parsed} by the
        replica's thread inside the block."""
        from networking_vcenter.vsphere import ports as ports_mod
        seen = {"FetchDVPorts": 0, "ports": 0}
        real_port_of = ports_mod.port_of

        def port_of(p):
            if threading.current_thread().name == "vcenter-replica":
                seen["ports"] += 1
            return real_port_of(p)

        with self.soap_calls() as calls, \
                mock.patch.object(ports_mod, "port_of", port_of):
            start = len(calls)
            yield seen
            seen["FetchDVPorts"] = calls[start:].count("FetchDVPorts")

    def ports_of(self, pg_key):
        return self.vcenter_driver.backend.reconciler.replica.snapshot().dv_ports.get(
            pg_key, ())

    def test_nic_attach_and_detach_read_one_port_of_200(self):
        net = self.make_net(87)
        port = self.port_on(net["id"])
        details = port[portbindings.VIF_DETAILS]
        pg_key = details["pg_id"]
        rec = self.vcenter_driver.backend.reconciler
        (pg,) = [g for g in self.vsphere._all(
            vim.dvs.DistributedVirtualPortgroup) if g.key == pg_key]
        before = len(pg.portKeys)
        self.assertEqual(before, len(self.ports_of(pg_key)))

        # 200 ports: the added ones are read by key, the others not again.
        with self.replica_reads() as reads:
            self.vsphere.wait(pg.ReconfigureDVPortgroup_Task(
                vim.dvs.DistributedVirtualPortgroup.ConfigSpec(
                    configVersion=pg.config.configVersion, numPorts=200)))
            self.assertTrue(rec.replica.wait_until(
                lambda inv: len(inv.dv_ports.get(pg_key, ())) == 200, 10))
        self.assertEqual(200 - before, reads["ports"], reads)
        self.assertEqual(sorted(pg.portKeys), sorted(
            p.key for p in self.ports_of(pg_key)))

        # A NIC connects: one port read, not 200; the port turns ACTIVE.
        with self.replica_reads() as reads:
            vm = self.vsphere.attach_nic("DC0_C0_RP0_VM0",
                                         port["mac_address"], details)
            self.assertTrue(rec.replica.wait_until(
                lambda inv: any(p.connected and p.name == port["id"]
                                for p in inv.dv_ports.get(pg_key, ())), 10))
        self.assertEqual(1, reads["ports"], reads)
        # At most two per update; vCenter may report the group's new VM
        # and the VM's new changeVersion in one update or in two.
        self.assertLessEqual(reads["FetchDVPorts"], 4, reads)
        (mine,) = [p for p in self.ports_of(pg_key)
                   if p.key == details["dvs_port_key"]]
        self.assertEqual((True, vm._moId), (mine.connected, mine.vm_moid))
        rec.sync_ports({port["id"]}, self.vcenter_driver.backend.source,
                       self.vcenter_driver.backend.port_source)
        self.assertEqual("ACTIVE", self.driver.get_port(
            self.context, port["id"])["status"])

        # It goes: one port read again; DOWN.
        with self.replica_reads() as reads:
            self.vsphere.detach_nic(vm, details["dvs_port_key"])
            self.assertTrue(rec.replica.wait_until(
                lambda inv: not any(p.connected for p in inv.dv_ports.get(
                    pg_key, ())), 10))
        self.assertEqual(1, reads["ports"], reads)
        self.assertEqual(200, len(self.ports_of(pg_key)))
        rec.sync_ports({port["id"]}, self.vcenter_driver.backend.source,
                       self.vcenter_driver.backend.port_source)
        self.assertEqual("DOWN", self.driver.get_port(
            self.context, port["id"])["status"])


class TestStandardVswitchBind(PortsTestCase):
    """Default: bind, and say the policy is not enforced."""

    def test_bound_with_a_warning_and_reported_not_enforced(self):
        net = self.make_network("vlan", "physnet2", 290)
        res = self._create_subnet(self.fmt, net["id"], "10.29.0.0/24",
                                  as_admin=True)
        self.assertEqual(201, res.status_int)
        with self.assertLogs("networking_vcenter", "WARNING") as logs:
            port = self.port_on(net["id"])
            self.assertEqual("dvs", port[portbindings.VIF_TYPE])
            self.assertNotIn("dvs_port_key", port[portbindings.VIF_DETAILS])
            result = self.resync()
        (u,) = [u for u in result.ports.unenforced if u.port_id == port["id"]]
        self.assertEqual(("security groups",), u.what)
        self.assertTrue(any("NOT ENFORCED" in line and net["id"] in line
                            for line in logs.output), logs.output)
        from networking_vcenter import cli
        (row,) = [r for r in cli.port_rows(result.ports)
                  if r["port"] == port["id"]]
        self.assertEqual("not-enforced", row["state"])


    def test_port_security_follows_the_port_group_where_ports_agree(self):
        net = self.make_network("vlan", "physnet2", 292)
        res = self._create_subnet(self.fmt, net["id"], "10.31.0.0/24",
                                  as_admin=True)
        self.assertEqual(201, res.status_int)
        hosts = self.cluster_hosts()
        secure = self.port_on(net["id"])
        self.assertEqual({h: (False, False, False) for h in hosts},
                         self.vsphere.host_portgroup_security(net["id"]))
        # Ports disagree: the port group stays secure, the one without port
        # security is reported.
        open_port = self.port_on(net["id"], security_groups=[],
                                 port_security_enabled=False)
        self.assertEqual({h: (False, False, False) for h in hosts},
                         self.vsphere.host_portgroup_security(net["id"]))
        result = self.resync()
        (u,) = [u for u in result.ports.unenforced
                if u.port_id == open_port["id"]]
        self.assertIn("disabled port security", " ".join(u.what))
        # All agree (no port security): forged transmits, MAC changes and
        # promiscuous mode allowed.
        self._delete("ports", secure["id"])
        self.settled()
        self.assertEqual({h: (True, True, True) for h in hosts},
                         self.vsphere.host_portgroup_security(net["id"]))


    def test_a_full_pass_reads_the_bound_ports_once(self):
        net = self.make_network("vlan", "physnet2", 293)
        res = self._create_subnet(self.fmt, net["id"], "10.32.0.0/24",
                                  as_admin=True)
        self.assertEqual(201, res.status_int)
        open_port = self.port_on(net["id"], security_groups=[],
                                 port_security_enabled=False)
        hosts = self.cluster_hosts()
        self.assertEqual({h: (True, True, True) for h in hosts},
                         self.vsphere.host_portgroup_security(net["id"]))
        # Made secure by hand on one host: the full pass opens it again,
        # from the ports it read.
        ns = self.vsphere.host(hosts[0]).configManager.networkSystem
        (pg,) = [p for p in ns.networkInfo.portgroup
                 if p.spec.name == net["id"]]
        policy = pg.spec.policy
        policy.security = vim.host.NetworkPolicy.SecurityPolicy(
            allowPromiscuous=False, macChanges=False, forgedTransmits=False)
        ns.UpdatePortGroup(net["id"], vim.host.PortGroup.Specification(
            name=net["id"], vlanId=pg.spec.vlanId,
            vswitchName=pg.spec.vswitchName, policy=policy))
        self.assertEqual((False, False, False),
                         self.vsphere.host_portgroup_security(
                             net["id"])[hosts[0]])
        drv = self.vcenter_driver
        rec = drv.backend.reconciler
        reads = []

        def counted(read):
            def wrapper(ids, *args, **kw):
                reads.append(ids)
                return read(ids, *args, **kw)
            return wrapper

        with mock.patch.object(drv.backend, "port_source",
                               counted(drv.backend.port_source)), \
                mock.patch.object(rec, "network_ports",
                                  counted(rec.network_ports)):
            result = self.resync()
        # All bound ports, once: for the standard port group's security
        # and for the DV ports.
        self.assertEqual([None], [r for r in reads if r is None], reads)
        self.assertIn(open_port["id"], {p.id for p in result.ports.ports})
        self.assertEqual({h: (True, True, True) for h in hosts},
                         self.vsphere.host_portgroup_security(net["id"]))


class TestStandardVswitchRefuse(PortsTestCase):
    extra_ml2_vcenter = {"standard_vswitch_ports": "refuse"}

    def test_policy_it_cannot_enforce_is_refused_the_rest_bound(self):
        net = self.make_network("vlan", "physnet2", 291)
        res = self._create_subnet(self.fmt, net["id"], "10.30.0.0/24",
                                  as_admin=True)
        self.assertEqual(201, res.status_int)
        port = self.port_on(net["id"])
        self.assertEqual("binding_failed", port[portbindings.VIF_TYPE])
        # Without security groups (port security off) nothing is lost.
        open_port = self.port_on(net["id"], security_groups=[],
                                 port_security_enabled=False)
        self.assertEqual("dvs", open_port[portbindings.VIF_TYPE])
        # A distributed switch enforces it: bound.
        dvs_net = self.make_net(88)
        self.assertIn("dvs_port_key",
                      self.port_on(dvs_net["id"])[portbindings.VIF_DETAILS])

    def test_refused_binding_retried_less_and_less_often(self):
        """The heartbeat tries failed bindings again; one that fails again
        with vCenter answering waits (doubling) instead of being tried, and
        logged, at every beat -- until vCenter comes back from an outage."""
        net = self.make_network("vlan", "physnet2", 292)
        port = self.port_on(net["id"])
        self.assertEqual("binding_failed", port[portbindings.VIF_TYPE])
        drv = self.vcenter_driver
        tried = []
        real = self.driver.get_bound_port_context

        def counting(ctx, port_id, *args, **kwargs):
            tried.append(port_id)
            return real(ctx, port_id, *args, **kwargs)

        with mock.patch.object(self.driver, "get_bound_port_context",
                               counting):
            self.assertEqual(0, drv.backend.rebind_failed())
            self.assertEqual([port["id"]], tried)
            self.assertEqual(0, drv.backend.rebind_failed())    # waits its turn
            self.assertEqual([port["id"]], tried)
            tries, next_at = drv.backend.rebind_state(port["id"])
            self.assertEqual(1, tries)
            self.assertGreater(next_at - time.monotonic(), 50)
            # An outage ends: every failed binding is tried at once.
            maintenance = mock.Mock(last_pass=None, last_pass_at=None,
                                    beats=1)
            replica = drv.backend.reconciler.replica
            with mock.patch.object(type(replica), "current", False):
                self.assertFalse(drv.backend.report_health(maintenance))
            self.assertEqual([port["id"]], tried)
            self.assertTrue(drv.backend.report_health(maintenance))
            self.assertEqual([port["id"]] * 2, tried)
        # A port that is bound (here: deleted) leaves the backoff.
        self._delete("ports", port["id"])
        drv.backend.rebind_failed()
        self.assertIsNone(drv.backend.rebind_state(port["id"]))


class TestConversion(PortsTestCase):
    vcsim_kwargs = {**PortsTestCase.vcsim_kwargs, "vms": 1}

    def test_port_group_of_the_previous_version_converted_in_place(self):
        """A port group made by the version before DV ports (no port
        overrides allowed) is converted by the next pass, with the NIC on
        it left on its port, and then ports get DV ports of their own."""
        net = self.make_net(87)
        name = self.dvs_name(net["id"])
        (pg,) = self.vsphere.dv_portgroups(name)
        description = pg["description"]
        rec = self.vcenter_driver.backend.reconciler
        self.vsphere.destroy_dv_portgroup(name)
        old = self.vsphere.add_dv_portgroup("DVS0", name, 87, description)
        self.assertFalse(old["ref"].config.policy.trafficFilterOverrideAllowed)
        vm = self.vsphere.vm("DC0_C0_RP0_VM0")
        nic = vim.vm.device.VirtualVmxnet3(
            key=-1, backing=vim.vm.device.VirtualEthernetCard
            .DistributedVirtualPortBackingInfo(port=vim.dvs.PortConnection(
                switchUuid=old["switch_uuid"], portgroupKey=old["key"])))
        self.vsphere.wait(vm.ReconfigVM_Task(vim.vm.ConfigSpec(deviceChange=[
            vim.vm.device.VirtualDeviceSpec(operation="add", device=nic)])))
        (connected,) = [p.key for p in self.dv_ports(old["key"])
                        if p.connectee is not None]
        result = self.resync()
        self.assertEqual(["convert"], [s.verb for s in result.plan.steps])
        (pg,) = self.vsphere.dv_portgroups(name)
        self.assertEqual(old["key"], pg["key"])
        policy = pg["ref"].config.policy
        self.assertTrue(policy.trafficFilterOverrideAllowed)
        self.assertTrue(policy.securityPolicyOverrideAllowed)
        self.assertTrue(policy.vlanOverrideAllowed)     # trunk parents
        self.assertFalse(policy.portConfigResetAtDisconnect)
        self.assertEqual([connected], [p.key for p in self.dv_ports(pg["key"])
                                       if p.connectee is not None])
        self.assertTrue(rec.replica.wait_until(
            lambda inv: all(getattr(g, "ports_ready", True)
                            for g in inv.dvs_portgroups if g.name == name),
            10))
        port = self.port_on(net["id"])
        self.assertNotEqual(connected,
                            port[portbindings.VIF_DETAILS]["dvs_port_key"])
        self.assertEqual(port["id"], self.dv_port(port).config.name)

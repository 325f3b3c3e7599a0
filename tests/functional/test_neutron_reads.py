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

"""The port reads of :mod:`networking_vcenter.neutron_db` and the QoS driver
of :mod:`networking_vcenter.qos`, in the real ML2 plugin with the vcenter
driver, the QoS service plugin and the ``port_security`` and ``qos``
extension drivers; ports are bound by the driver on the simulator.
"""

from __future__ import annotations

import contextlib
from unittest import mock

import sqlalchemy as sa
from neutron_lib.api.definitions import portbindings
from neutron_lib import context as n_context
from neutron_lib.plugins import directory

from networking_vcenter import neutron_db
from networking_vcenter import qos
from networking_vcenter.reconcile import desired
from tests.functional import base

HOST = base.COMPUTE_HOST
QOS_PLUGIN = "neutron.services.qos.qos_plugin.QoSPlugin"
REVISION_PLUGIN = "neutron.services.revisions.revision_plugin.RevisionPlugin"


class PortReadsTestCase(base.VCenterMl2TestCase):

    def get_additional_service_plugins(self):
        # Neutron's test base leaves out the default service plugins; the
        # revision plugin is one (always loaded with ML2 in a server) and
        # the change tokens and fingerprints rely on its revision bumps.
        return {"qos": QOS_PLUGIN, "revisions": REVISION_PLUGIN}

    def preSetUp(self):
        from oslo_config import cfg
        cfg.CONF.set_override("extension_drivers", ["port_security", "qos"],
                              group="ml2")
        # What the mechanism driver's initialize() is to do: register the
        # QoS driver before the QoS plugin starts (after ML2's drivers).
        # (Imported here: the driver's module must come after Neutron's
        # test package, which selects oslo.service's backend.)
        from networking_vcenter.ml2 import driver as mech_driver
        real = mech_driver.VCenterMechanismDriver.initialize

        def initialize(drv):
            real(drv)
            qos.register()
            # Open vSwitch's QoS driver, as in a server: its register()
            # keeps one instance per process, subscribed only in the first
            # test's callback registry (Neutron's tests make one per test).
            from neutron.services.qos.drivers.openvswitch import \
                driver as ovs_qos
            from neutron_lib.callbacks import events
            from neutron_lib.callbacks import registry
            from neutron_lib.services.qos import constants as qos_consts
            ovs_qos.register()
            registry.subscribe(ovs_qos.DRIVER._register,
                               qos_consts.QOS_PLUGIN, events.AFTER_INIT)

        patchers = [mock.patch.object(mech_driver.VCenterMechanismDriver,
                                      "initialize", initialize)]
        for patcher in patchers:
            patcher.start()
            self.addCleanup(patcher.stop)
        base.patch_qos_resource_requests(self)

    def setUp(self):
        super().setUp()
        self.resource_prefix_map = {"policies": "/qos"}
        self.ctx = n_context.get_admin_context()
        self.net = self.make_network("vlan", "physnet1", 71)
        self.subnet = self._make_subnet(
            self.fmt, {"network": self.net}, "10.7.0.1",
            "10.7.0.0/24")["subnet"]

    # -- helpers -------------------------------------------------------------

    def call(self, method, resource, data=None, id=None, subresource=None,
             sub_id=None, expect=None):
        req = self._admin_req(method, resource, data, self.fmt, id=id,
                              subresource=subresource, sub_id=sub_id)
        res = req.get_response(self.ext_api if hasattr(self, "ext_api")
                               else self.api)
        body = self.deserialize(self.fmt, res) if res.body else None
        if expect is not None:
            self.assertEqual(expect, res.status_int, body)
        return res.status_int, body

    def port(self, net_id=None, host=HOST, **attrs):
        args = dict(attrs)
        if host is not None:
            args[portbindings.HOST_ID] = host
        res = self._create_port(self.fmt, net_id or self.net["id"],
                                is_admin=True, arg_list=tuple(args), **args)
        body = self.deserialize(self.fmt, res)
        self.assertEqual(201, res.status_int, body)
        return body["port"]

    def update_port(self, port_id, **attrs):
        return self.call("PUT", "ports", {"port": attrs}, id=port_id,
                         expect=200)[1]["port"]

    def sg(self, name):
        return self.call("POST", "security-groups",
                         {"security_group": {"name": name,
                                             "tenant_id": self._project_id}},
                         expect=201)[1]["security_group"]

    def rule(self, sg_id, **attrs):
        data = {"security_group_id": sg_id, "direction": "ingress",
                "ethertype": "IPv4", **attrs}
        return self.call("POST", "security-group-rules",
                         {"security_group_rule": data},
                         expect=201)[1]["security_group_rule"]

    def address_group(self, *cidrs):
        return self.call("POST", "address-groups",
                         {"address_group": {"name": "ag",
                                            "addresses": list(cidrs)}},
                         expect=201)[1]["address_group"]

    def policy(self):
        return self.call("POST", "policies", {"policy": {"name": "p"}},
                         expect=201)[1]["policy"]

    def bw_rule(self, policy_id, direction, kbps, burst=0, expect=201):
        return self.call("POST", "policies", {"bandwidth_limit_rule": {
            "direction": direction, "max_kbps": kbps,
            "max_burst_kbps": burst}}, id=policy_id,
            subresource="bandwidth_limit_rules", expect=expect)[1]

    def default_sg(self):
        """The project's default group with Neutron's usual rules (egress
        anywhere, ingress from the group): the schema of these tests
        (create_all) has no default rule templates, so they are added."""
        sg_id = self.driver._ensure_default_security_group(
            self.ctx, self._project_id)
        if not getattr(self, "_default_rules", False):
            self._default_rules = True
            for ethertype in ("IPv4", "IPv6"):
                self.rule(sg_id, direction="egress", ethertype=ethertype)
                self.rule(sg_id, ethertype=ethertype, remote_group_id=sg_id)
        return sg_id

    def spec(self, port_id) -> desired.PortSpec:
        (spec,) = [p for p in neutron_db.ports() if p.id == port_id]
        return spec

    @contextlib.contextmanager
    def statements(self):
        seen: list[str] = []

        def count(conn, cursor, statement, *args):
            if statement.lstrip().upper().startswith("SELECT"):
                seen.append(statement)

        sa.event.listen(sa.engine.Engine, "before_cursor_execute", count)
        try:
            yield seen
        finally:
            sa.event.remove(sa.engine.Engine, "before_cursor_execute", count)


class TestPorts(PortReadsTestCase):

    def test_bound_port_spec(self):
        web = self.sg("web")
        ag = self.address_group("192.0.2.0/24", "2001:db8::/64")
        ssh = self.rule(web["id"], protocol="tcp", port_range_min=22,
                        port_range_max=22, remote_address_group_id=ag["id"])
        pol = self.policy()
        self.bw_rule(pol["id"], "egress", 1000, 100)
        self.bw_rule(pol["id"], "ingress", 2000)
        sgs = [self.default_sg(), web["id"]]
        a = self.port(allowed_address_pairs=[{"ip_address": "10.7.0.200"}],
                      security_groups=sgs)
        a = self.update_port(a["id"], qos_policy_id=pol["id"])
        # Another member of the default group, not bound here.
        b = self.port(host=None, allowed_address_pairs=[
            {"ip_address": "10.7.1.0/24", "mac_address": "fa:16:3e:00:00:01"}])

        spec = self.spec(a["id"])
        self.assertEqual(self.net["id"], spec.network_id)
        self.assertEqual(HOST, spec.host)
        self.assertEqual("physnet1", spec.physnet)
        self.assertEqual(a["mac_address"], spec.mac)
        self.assertEqual(tuple(ip["ip_address"] for ip in a["fixed_ips"]),
                         spec.fixed_ips)
        self.assertEqual((("10.7.0.200", a["mac_address"]),),
                         spec.allowed_address_pairs)
        self.assertTrue(spec.port_security)
        self.assertEqual(a["status"], spec.status)
        self.assertEqual(a["device_owner"], spec.device_owner)
        self.assertEqual(sorted(sgs), [g.id for g in spec.security_groups])
        groups = {g.id: g for g in spec.security_groups}
        self.assertTrue(groups[web["id"]].stateful)
        web_rules = {r.id: r for r in groups[web["id"]].rules}
        self.assertEqual(desired.SgRule(
            direction="ingress", ethertype="IPv4", protocol="tcp",
            port_range_min=22, port_range_max=22,
            remote_address_group_id=ag["id"], id=ssh["id"]),
            web_rules[ssh["id"]])
        # The default group: egress anywhere, ingress from the group.
        default_rules = {(r.direction, r.ethertype, r.remote_group_id)
                         for r in groups[self.default_sg()].rules}
        self.assertEqual({("egress", "IPv4", None), ("egress", "IPv6", None),
                          ("ingress", "IPv4", self.default_sg()),
                          ("ingress", "IPv6", self.default_sg())},
                         default_rules)
        members = sorted([ip["ip_address"] for p in (a, b)
                          for ip in p["fixed_ips"]] +
                         ["10.7.0.200", "10.7.1.0/24"])
        self.assertEqual({self.default_sg(): tuple(members)},
                         spec.remote_groups)
        self.assertEqual({ag["id"]: ("192.0.2.0/24", "2001:db8::/64")},
                         spec.address_groups)
        self.assertEqual((desired.BandwidthLimit("egress", 1000, 100),
                          desired.BandwidthLimit("ingress", 2000, 0)),
                         spec.qos)

    def test_port_security_off_and_network_qos(self):
        pol = self.policy()
        self.bw_rule(pol["id"], "egress", 500)
        self.call("PUT", "networks", {"network": {"qos_policy_id": pol["id"]}},
                  id=self.net["id"], expect=200)
        a = self.port(port_security_enabled=False, security_groups=[])
        spec = self.spec(a["id"])
        self.assertFalse(spec.port_security)
        self.assertEqual((), spec.security_groups)
        self.assertEqual({}, spec.remote_groups)
        self.assertEqual((desired.BandwidthLimit("egress", 500, 0),),
                         spec.qos)
        # The port's own policy wins over the network's.
        own = self.policy()
        self.bw_rule(own["id"], "ingress", 700)
        self.update_port(a["id"], qos_policy_id=own["id"])
        self.assertEqual((desired.BandwidthLimit("ingress", 700, 0),),
                         self.spec(a["id"]).qos)

    def test_unbound_and_other_ports(self):
        ours = self.port()
        unbound = self.port(host=None)
        ovs = self.port(host=base.NETWORK_NODE)     # no agent: not bound
        got = {p.id for p in neutron_db.ports()}
        self.assertIn(ours["id"], got)
        self.assertNotIn(unbound["id"], got)
        self.assertNotIn(ovs["id"], got)
        self.assertEqual([], neutron_db.ports(host_filter={"elsewhere"}))
        self.assertEqual([ours["id"]], [
            p.id for p in neutron_db.ports(host_filter={HOST})
            if p.id == ours["id"]])

        wanted = {ours["id"], unbound["id"], ovs["id"], "no-such-port"}
        by_id = {p.id: p for p in neutron_db.ports(ids=wanted)}
        self.assertEqual(wanted - {"no-such-port"}, set(by_id))
        self.assertEqual(("physnet1", HOST),
                         (by_id[ours["id"]].physnet, by_id[ours["id"]].host))
        self.assertEqual((None, ""), (by_id[unbound["id"]].physnet,
                                      by_id[unbound["id"]].host))
        self.assertEqual((None, base.NETWORK_NODE),
                         (by_id[ovs["id"]].physnet, by_id[ovs["id"]].host))
        # Not ours on a host outside the filter, but still returned.
        (moved,) = neutron_db.ports(ids={ours["id"]},
                                    host_filter={"elsewhere"})
        self.assertEqual((None, HOST), (moved.physnet, moved.host))
        self.assertEqual(by_id[ours["id"]].fixed_ips, moved.fixed_ips)
        # Unbound here (host cleared): released.
        self.update_port(ours["id"], **{portbindings.HOST_ID: ""})
        self.assertNotIn(ours["id"], {p.id for p in neutron_db.ports()})
        (gone,) = neutron_db.ports(ids={ours["id"]})
        self.assertIsNone(gone.physnet)

    def test_standard_vswitch_port(self):
        net2 = self.make_network("vlan", "physnet2", 272)
        p = self.port(net_id=net2["id"])
        self.assertEqual("physnet2", self.spec(p["id"]).physnet)


class TestChanges(PortReadsTestCase):
    """Tokens and fingerprints change when what a port's spec depends on
    changes, and for the ports it affects."""

    def setUp(self):
        super().setUp()
        self.web = self.sg("web")
        self.ag = self.address_group("192.0.2.0/24")
        self.rule(self.web["id"], remote_address_group_id=self.ag["id"])
        self.pol = self.policy()
        self.bw = self.bw_rule(self.pol["id"], "egress", 1000)[
            "bandwidth_limit_rule"]
        # a: default + web, own policy; b: default only; c: web only (no
        # remote group reference: web's rules do not reference a group).
        self.a = self.port(security_groups=[self.default_sg(),
                                            self.web["id"]])
        self.update_port(self.a["id"], qos_policy_id=self.pol["id"])
        self.b = self.port(security_groups=[self.default_sg()])
        self.c = self.port(security_groups=[self.web["id"]])

    def changed(self, action) -> set[str]:
        """The ports among a, b, c whose fingerprint ``action`` changed;
        the change token must change whenever a fingerprint does."""
        token, prints = neutron_db.port_change_token(), \
            neutron_db.port_fingerprints()
        action()
        new_token, new_prints = neutron_db.port_change_token(), \
            neutron_db.port_fingerprints()
        names = {self.a["id"]: "a", self.b["id"]: "b", self.c["id"]: "c"}
        changed = {names[p] for p in names
                   if prints.get(p) != new_prints.get(p)}
        if changed:
            self.assertNotEqual(token, new_token)
        return changed

    def test_nothing_changed(self):
        self.assertEqual(set(), self.changed(lambda: None))
        self.assertEqual(neutron_db.port_change_token(),
                         neutron_db.port_change_token())

    def test_sg_rule_add_and_delete(self):
        box = {}

        def add():
            box["rule"] = self.rule(self.web["id"], protocol="udp")

        self.assertEqual({"a", "c"}, self.changed(add))
        self.assertEqual({"a", "c"}, self.changed(lambda: self.call(
            "DELETE", "security-group-rules", id=box["rule"]["id"],
            expect=204)))

    def test_remote_group_membership_fans_out(self):
        # A new port joins the default group: every port whose rules
        # reference it (a and b, through the default group's own rules).
        box = {}
        self.assertEqual({"a", "b"}, self.changed(
            lambda: box.setdefault("d", self.port(host=None))))
        # A member's new allowed address pair: same fan-out, and its own.
        self.assertEqual({"a", "b"}, self.changed(lambda: self.update_port(
            box["d"]["id"],
            allowed_address_pairs=[{"ip_address": "10.7.0.250"}])))
        # A member leaving the group.
        self.assertEqual({"a", "b"}, self.changed(lambda: self.update_port(
            box["d"]["id"], security_groups=[self.web["id"]])))
        # A member's status/name change does not fan out.
        self.assertEqual(set(), self.changed(lambda: self.update_port(
            box["d"]["id"], name="renamed")))

    def test_remote_group_deleted(self):
        # Deleting a group that another group's rule names as remote group
        # deletes that rule too (no rule event for it: the callback side
        # must ask ports_referencing before the delete).
        gone = self.sg("gone")
        self.rule(self.web["id"], remote_group_id=gone["id"])
        self.assertEqual({self.a["id"], self.c["id"]},
                         set(neutron_db.ports_referencing(
                             security_group_ids=[gone["id"]])))
        self.assertEqual({"a", "c"}, self.changed(lambda: self._delete(
            "security-groups", gone["id"])))
        self.assertEqual({}, neutron_db.ports_referencing(
            security_group_ids=[gone["id"]]))

    def test_address_group_addresses(self):
        self.assertEqual({"a", "c"}, self.changed(lambda: self.call(
            "PUT", "address-groups", {"addresses": ["198.51.100.0/24"]},
            id=self.ag["id"], subresource="add_addresses", expect=200)))
        self.assertEqual({"a", "c"}, self.changed(lambda: self.call(
            "PUT", "address-groups", {"addresses": ["192.0.2.0/24"]},
            id=self.ag["id"], subresource="remove_addresses", expect=200)))

    def test_qos_rule_change(self):
        self.assertEqual({"a"}, self.changed(lambda: self.call(
            "PUT", "policies", {"bandwidth_limit_rule": {"max_kbps": 5}},
            id=self.pol["id"], subresource="bandwidth_limit_rules",
            sub_id=self.bw["id"], expect=200)))
        self.assertEqual({"a"}, self.changed(lambda: self.call(
            "DELETE", "policies", id=self.pol["id"],
            subresource="bandwidth_limit_rules", sub_id=self.bw["id"],
            expect=204)))

    def test_network_qos_policy(self):
        # b and c have no policy of their own: the network's applies.
        self.assertEqual({"b", "c"}, self.changed(lambda: self.call(
            "PUT", "networks", {"network": {"qos_policy_id":
                                            self.pol["id"]}},
            id=self.net["id"], expect=200)))

    def test_port_update(self):
        self.assertEqual({"a", "b"}, self.changed(lambda: self.update_port(
            self.a["id"],
            allowed_address_pairs=[{"ip_address": "10.7.0.201"}])))
        self.assertEqual({"c"}, self.changed(lambda: self.update_port(
            self.c["id"], port_security_enabled=False, security_groups=[])))
        self.assertEqual({"b"}, self.changed(lambda: self.update_port(
            self.b["id"], **{portbindings.HOST_ID: ""})))
        self.assertNotIn(self.b["id"], neutron_db.port_fingerprints())

    def test_port_delete(self):
        self.assertEqual({"a", "b"}, self.changed(lambda: self._delete(
            "ports", self.b["id"])))

    def test_a_port_binding_here_changes_its_groups_members_once_bound(
            self):
        """A port created on one of our hosts joins its groups' member
        digests (and so the fingerprints of the ports whose remote groups
        they are) when its binding commits, not while it is under way: the
        maintenance worker would otherwise fan out to every member between
        the create and the bind and write a shared filter that names the
        new address but not its MAC (a third task for one VM joining)."""
        from neutron.plugins.ml2 import plugin as ml2_plugin
        hosts = {HOST}
        a, b = self.a["id"], self.b["id"]
        before = neutron_db.port_fingerprints(hosts)
        with mock.patch.object(ml2_plugin.Ml2Plugin, "_bind_port_if_needed",
                               side_effect=lambda context, *a, **kw:
                               context):
            d = self.port(security_groups=[self.default_sg()])
        self.assertEqual(portbindings.VIF_TYPE_UNBOUND,
                         d[portbindings.VIF_TYPE])
        under_way = neutron_db.port_fingerprints(hosts)
        self.assertEqual((before[a], before[b]),
                         (under_way[a], under_way[b]))
        # Its binding commits (the next update binds it).
        bound = self.update_port(d["id"], name="bound-now")
        self.assertEqual("dvs", bound[portbindings.VIF_TYPE])
        after = neutron_db.port_fingerprints(hosts)
        self.assertNotEqual(under_way[a], after[a])
        self.assertNotEqual(under_way[b], after[b])

    def test_ports_referencing(self):
        a, b, c = self.a["id"], self.b["id"], self.c["id"]
        def ref(**kw):
            found = neutron_db.ports_referencing(**kw)
            # Each with its network.
            self.assertEqual({self.net["id"]}, set(found.values()) or
                             {self.net["id"]})
            return set(found)
        self.assertEqual({a, b}, ref(security_group_ids=[self.default_sg()]))
        self.assertEqual({a, c}, ref(security_group_ids=[self.web["id"]]))
        self.assertEqual({a, c}, ref(address_group_ids=[self.ag["id"]]))
        self.assertEqual({a}, ref(qos_policy_ids=[self.pol["id"]]))
        self.assertEqual({a, b, c}, ref(network_ids=[self.net["id"]]))
        self.assertEqual(set(), ref())
        # Remote group only (not a member): a group referencing web.
        other = self.sg("other")
        self.rule(other["id"], remote_group_id=self.web["id"])
        d = self.port(security_groups=[other["id"]])
        self.assertEqual({a, c, d["id"]},
                         ref(security_group_ids=[self.web["id"]]))
        # A network's policy: its ports without one of their own.
        net_pol = self.policy()
        self.call("PUT", "networks", {"network": {"qos_policy_id":
                                                  net_pol["id"]}},
                  id=self.net["id"], expect=200)
        self.assertEqual({b, c, d["id"]},
                         ref(qos_policy_ids=[net_pol["id"]]))
        # Ports not bound here are never returned.
        e = self.port(host=None, security_groups=[self.web["id"]])
        self.assertNotIn(e["id"], ref(security_group_ids=[self.web["id"]]))


class TestScale(PortReadsTestCase):

    def test_queries_for_200_ports_are_few(self):
        ag = self.address_group("192.0.2.0/24")
        web = self.sg("web")
        self.rule(web["id"], remote_address_group_id=ag["id"])
        pol = self.policy()
        self.bw_rule(pol["id"], "egress", 1000)
        self.call("PUT", "networks", {"network": {"qos_policy_id": pol["id"]}},
                  id=self.net["id"], expect=200)
        sgs = [self.default_sg(), web["id"]]
        for i in range(200):
            self.port(security_groups=sgs, allowed_address_pairs=[
                {"ip_address": f"10.8.{i // 250}.{i % 250}"}])

        with self.statements() as seen:
            specs = neutron_db.ports()
        self.assertEqual(200, len(specs))
        # 12, and one for the trunks (a second, for their networks'
        # segments, only when there is one).
        self.assertLessEqual(len(seen), 13, seen)
        self.assertTrue(all(len(s.remote_groups[self.default_sg()]) == 400
                            for s in specs))
        with self.statements() as seen:
            prints = neutron_db.port_fingerprints()
        self.assertEqual(200, len(prints))
        self.assertLessEqual(len(seen), 10, seen)    # 9 + the trunks
        with self.statements() as seen:
            neutron_db.port_change_token()
        self.assertEqual(1, len(seen), seen)
        with self.statements() as seen:
            self.assertEqual(200, len(neutron_db.ports_referencing(
                security_group_ids=[web["id"]])))
        self.assertEqual(1, len(seen), seen)
        ids = {s.id for s in specs[:50]}
        with self.statements() as seen:
            self.assertEqual(ids, {s.id for s in neutron_db.ports(ids=ids)})
        self.assertLessEqual(len(seen), 13, seen)


class TestQosDriver(PortReadsTestCase):

    def test_registered_with_the_qos_plugin(self):
        manager = directory.get_plugin("QOS").driver_manager
        names = [d.name for d in manager._drivers]
        self.assertIn("vcenter", names)
        self.assertEqual(1, names.count("vcenter"))
        drv = qos.DRIVER
        self.assertFalse(drv.requires_rpc_notifications)
        self.assertEqual(["dvs"], drv.vif_types)
        self.assertEqual(["normal"], drv.vnic_types)
        self.assertEqual({"bandwidth_limit"}, set(drv.supported_rules))

    def test_bandwidth_limit_accepted_unsupported_rule_refused(self):
        p = self.port()
        self.assertEqual("dvs", p[portbindings.VIF_TYPE])
        pol = self.policy()
        self.update_port(p["id"], qos_policy_id=pol["id"])
        self.bw_rule(pol["id"], "ingress", 1000, 10)
        self.bw_rule(pol["id"], "egress", 1000, 10)
        # DSCP marking on a policy in use by a port bound here: refused.
        status, body = self.call("POST", "policies", {"dscp_marking_rule": {
            "dscp_mark": 16}}, id=pol["id"],
            subresource="dscp_marking_rules")
        self.assertEqual(409, status, body)
        self.assertIn("dscp_marking", body["NeutronError"]["message"])
        self.assertIn(p["id"], body["NeutronError"]["message"])
        # A policy holding one cannot be set on the port either.
        dscp = self.policy()
        self.call("POST", "policies", {"dscp_marking_rule": {
            "dscp_mark": 16}}, id=dscp["id"],
            subresource="dscp_marking_rules", expect=201)
        status, body = self.call("PUT", "ports", {"port": {
            "qos_policy_id": dscp["id"]}}, id=p["id"])
        self.assertEqual(409, status, body)
        # Nor on the network of a port bound here without its own policy.
        self.port()
        status, body = self.call("PUT", "networks", {"network": {
            "qos_policy_id": dscp["id"]}}, id=self.net["id"])
        self.assertEqual(409, status, body)
        # Packet rate and minimum bandwidth: refused as well.
        for sub, rule in (("packet_rate_limit_rules", {"max_kpps": 10}),
                          ("minimum_bandwidth_rules", {"min_kbps": 10})):
            status, body = self.call("POST", "policies", {
                sub[:-1]: rule}, id=pol["id"], subresource=sub)
            self.assertEqual(409, status, (sub, body))
        # A port not bound here is the other drivers' business.
        other = self.port(host=None)
        self.update_port(other["id"], qos_policy_id=dscp["id"])

    def test_standard_vswitch_port_has_no_shaping(self):
        net2 = self.make_network("vlan", "physnet2", 273)
        p = self.port(net_id=net2["id"])
        pol = self.policy()
        self.bw_rule(pol["id"], "egress", 1000)
        # standard_vswitch_ports = bind (the default): accepted, as the
        # bind accepts such a port (not enforced).
        self.update_port(p["id"], qos_policy_id=pol["id"])
        self.update_port(p["id"], qos_policy_id=None)
        # refuse: refused, naming the rule and the port.
        from oslo_config import cfg
        cfg.CONF.set_override("standard_vswitch_ports", "refuse",
                              group="ml2_vcenter")
        self.addCleanup(cfg.CONF.clear_override, "standard_vswitch_ports",
                        group="ml2_vcenter")
        status, body = self.call("PUT", "ports", {"port": {
            "qos_policy_id": pol["id"]}}, id=p["id"])
        self.assertEqual(409, status, body)
        self.assertIn("bandwidth_limit", body["NeutronError"]["message"])
        self.assertIn(p["id"], body["NeutronError"]["message"])
        # A port on a distributed switch is not concerned.
        dv = self.port()
        self.update_port(dv["id"], qos_policy_id=pol["id"])

    def test_register_is_idempotent(self):
        self.assertIs(qos.register(), qos.register())

    def test_policy_changes_reach_the_hook(self):
        calls = []
        hook = qos.DRIVER.on_policy_change
        self.addCleanup(setattr, qos.DRIVER, "on_policy_change", hook)
        qos.register(lambda ctx, policy_id: calls.append(
            (policy_id, set(neutron_db.ports_referencing(
                qos_policy_ids=[policy_id])))))
        p = self.port()
        pol = self.policy()
        self.update_port(p["id"], qos_policy_id=pol["id"])
        self.assertEqual([], calls)     # a port update: the mech driver's
        rule = self.bw_rule(pol["id"], "egress", 1000)["bandwidth_limit_rule"]
        self.assertEqual([(pol["id"], {p["id"]})], calls)
        self.call("PUT", "policies", {"bandwidth_limit_rule": {
            "max_kbps": 9}}, id=pol["id"],
            subresource="bandwidth_limit_rules", sub_id=rule["id"],
            expect=200)
        self.assertEqual(2, len(calls))
        # A failing hook does not fail the request.
        qos.register(mock.Mock(side_effect=RuntimeError("boom")))
        self.call("DELETE", "policies", id=pol["id"],
                  subresource="bandwidth_limit_rules", sub_id=rule["id"],
                  expect=204)
        qos.DRIVER.on_policy_change.assert_called_once()

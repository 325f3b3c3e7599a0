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

"""DV port reservations on the race paths, deterministically (issue 15).

Each test puts the other party's move exactly between the driver's read and
its write -- by wrapping the function the driver reads Neutron or binds with,
or by editing a DV port with the test's own vSphere session where the
driver's replica cannot see it (vCenter reports no change of a port group
when one of its ports is renamed) -- with no sleeps and no timing.  Each
fails on the code before issue 15: a DV port handed to Nova released, the
key Nova holds given up for another, a key of another port handed to Nova,
revoked rules kept.  Through Neutron's real ML2 plugin against the
simulator; vCenter is read back with the test's own pyVmomi calls.
"""

from __future__ import annotations

import contextlib
from unittest import mock

from neutron_lib.api.definitions import portbindings
from pyVmomi import vim

from networking_vcenter.reconcile import apply as apply_mod
from networking_vcenter.reconcile import plan as plan_mod
from networking_vcenter.vsphere import inventory
from networking_vcenter.vsphere import ports as ports_mod
from tests.fixtures.vsphere_reader import dv_port_rules, effective_rules
from tests.functional import test_ports

real_fetch_ports = ports_mod.fetch_ports
real_fetch_port_keys = ports_mod.fetch_port_keys
real_grow = ports_mod.grow_port_group


class PortRaceTestCase(test_ports.PortsTestCase):

    def port_by_key(self, key, switch="DVS0"):
        (found,) = self.vsphere.dvs(switch).FetchDVPorts(
            vim.dvs.PortCriteria(portKey=[key]))
        return found

    def rename(self, key, name, switch="DVS0"):
        """Name a DV port as another server would (its own session, with
        the port's configVersion): the driver's replica does not see it."""
        port = self.port_by_key(key, switch)
        self.vsphere.wait(self.vsphere.dvs(switch).ReconfigureDVPort_Task(
            port=[vim.dvs.DistributedVirtualPort.ConfigSpec(
                key=key, operation="edit", name=name,
                configVersion=port.config.configVersion)]))

    @contextlib.contextmanager
    def port_reads(self):
        """([args of each whole-group read], [args of each read by key]):
        the DV port reads made in the block (any thread)."""
        whole, by_key = [], []
        with mock.patch.object(ports_mod, "fetch_ports", side_effect=lambda
                               *a, **kw: whole.append(a) or
                               real_fetch_ports(*a, **kw)), \
                mock.patch.object(ports_mod, "fetch_port_keys",
                                  side_effect=lambda *a, **kw: by_key.append(
                                      a) or real_fetch_port_keys(*a, **kw)):
            yield whole, by_key

    def make_port_unbound(self, net_id):
        res = self._create_port(self.fmt, net_id, is_admin=True)
        body = self.deserialize(self.fmt, res)
        self.assertEqual(201, res.status_int, body)
        self.settled()
        return body["port"]

    def assert_reserved_for(self, port):
        """The DV port in the port's binding is named for it (not
        released) and configured for it: not blocked, with a filter -- its
        own, or its group's shared filter (``shared_security_filter``, the
        default, for a port of its network's default group)."""
        key = port[portbindings.VIF_DETAILS]["dvs_port_key"]
        dvp = self.port_by_key(key)
        self.assertEqual(port["id"], dvp.config.name,
                         f"DV port {key}, handed to Nova, is not the port's")
        self.assertFalse(dvp.config.setting.blocked.value,
                         f"DV port {key} is blocked: not configured")
        rules, inherited = effective_rules(dvp.config.setting)
        self.assertTrue(rules, f"DV port {key} has no filter")
        # Whatever admits, the rest is dropped both ways (a port that just
        # joined a shared filter not naming it yet passes less, not more).
        drops = {r["direction"] for r in rules if r["action"] == "drop"
                 and r["protocol"] is None and r["dports"] is None}
        self.assertEqual({"incomingPackets", "outgoingPackets"}, drops,
                         f"DV port {key} (filter inherited: {inherited}) "
                         f"does not drop the rest")
        return dvp


class TestReleaseRaces(PortRaceTestCase):

    def test_bind_between_a_full_pass_read_and_its_write(self):
        """A full pass reads Neutron's bound ports; a port is bound (its
        DV port reserved) right after; the pass must not release it."""
        net = self.make_net(81)
        drv = self.vcenter_driver
        real = drv.backend.port_source
        bound = []

        def racing(ids):
            answer = list(real(ids))
            if ids is None and not bound:
                bound.append(self.port_on(net["id"]))   # binds, reserves
            return answer

        result = drv.backend.reconciler.sync_all(drv.backend.source, 0,
                                                 port_source=racing)
        self.assertTrue(bound, "the bind did not happen inside the pass")
        self.assertFalse([s for s in result.ports.outcome.done
                          if isinstance(s, plan_mod.ReleasePort)])
        self.assert_reserved_for(bound[0])

    def test_update_port_postcommit_hook_running_before_the_binding_commits(
            self):
        """ML2 runs update_port_postcommit before it binds; its hook may
        read Neutron after bind_port reserved the DV port and before ML2
        commits the binding: the port shows its host and no binding."""
        net = self.make_net(82)
        drv = self.vcenter_driver
        port = self.make_port_unbound(net["id"])
        real_bind = drv.bind_port
        named = []

        def bind_then_hook(context):
            real_bind(context)
            if context.current["id"] == port["id"]:
                # The hook, now: Neutron has not committed the binding.
                drv.backend.ports_changed({port["id"]})
                drv.backend.drain()
                # What Nova is about to be given is still the port's.
                named.append([p.key for p in self.vsphere.dvs(
                    "DVS0").FetchDVPorts(vim.dvs.PortCriteria())
                    if p.config.name == port["id"]])

        drv.bind_port = bind_then_hook
        self.addCleanup(setattr, drv, "bind_port", real_bind)
        port = self.update_port(port["id"], **{
            portbindings.HOST_ID: test_ports.base.COMPUTE_HOST})
        self.assertEqual("dvs", port[portbindings.VIF_TYPE])
        self.assertEqual(
            [[port[portbindings.VIF_DETAILS]["dvs_port_key"]]], named,
            "the DV port reserved by bind_port was released before ML2 "
            "committed the binding")
        self.assert_reserved_for(port)

    def test_two_reservations_keep_the_key_nova_was_given(self):
        """Another server reserved a second DV port for the port (a lower
        key, no NIC): the one in the committed binding is kept."""
        net = self.make_net(83)
        # Of two ports, the one with the lower key goes; its DV port is
        # then named for the other.
        first, second = sorted(
            (self.port_on(net["id"]) for _ in range(2)),
            key=lambda p: int(p[portbindings.VIF_DETAILS]["dvs_port_key"]))
        low = first[portbindings.VIF_DETAILS]["dvs_port_key"]
        given = second[portbindings.VIF_DETAILS]["dvs_port_key"]
        self.assertLess(int(low), int(given))
        self._delete("ports", first["id"])
        self.settled()
        self.assertEqual(plan_mod.FREE, self.port_by_key(low).config.name)
        self.rename(low, second["id"])          # the other server's
        self.vcenter_driver.resync(grace=0)
        self.assert_reserved_for(second)
        self.assertEqual(plan_mod.FREE, self.port_by_key(low).config.name)


class TestReservedElsewhere(PortRaceTestCase):

    def test_a_reservation_made_elsewhere_is_read_by_its_key(self):
        """Another server reserved the port's DV port (the key in the
        committed binding) after this server's replica last read it: a
        rename no watched property shows.  The sync about to reserve one
        reads that DV port alone, finds it the port's and writes nothing;
        it never reads the whole group (whose ports may each bring a
        shared filter of thousands of rules)."""
        net = self.make_net(85)
        port = self.port_on(net["id"])
        key = port[portbindings.VIF_DETAILS]["dvs_port_key"]
        pg_key = port[portbindings.VIF_DETAILS]["pg_id"]
        rec = self.vcenter_driver.backend.reconciler
        # This server's replica last saw the DV port free...
        self.rename(key, plan_mod.FREE)
        rec.replica.refresh_ports({pg_key})
        self.assertNotIn(port["id"], [p.name for p in
                                      rec.replica.snapshot().dv_ports[pg_key]])
        # ... and another server has reserved it for the port since.
        self.rename(key, port["id"])
        with self.port_reads() as (whole, by_key), \
                self.soap_calls() as calls:
            rec.sync_ports({port["id"]}, self.vcenter_driver.backend.source,
                           self.vcenter_driver.backend.port_source)
        self.assertEqual([], whole)
        self.assertEqual([{key}], [set(a[2]) for a in by_key])
        self.assertNotIn("ReconfigureDVPort_Task", calls)
        self.assert_reserved_for(port)


    def test_a_release_made_elsewhere_is_read_by_its_key(self):
        """The API hook of another server released a deleted port's DV
        port after this server's replica last read it (the maintenance
        worker, following the same delete): the sync about to release it
        reads that DV port alone, finds it released and writes nothing --
        no task that vCenter refuses, no read of the whole group."""
        net = self.make_net(87)
        port = self.port_on(net["id"])
        key = port[portbindings.VIF_DETAILS]["dvs_port_key"]
        pg_key = port[portbindings.VIF_DETAILS]["pg_id"]
        drv = self.vcenter_driver
        rec = drv.backend.reconciler
        self.settled()
        self.assertIn(port["id"], [p.name for p in
                                   rec.replica.snapshot().dv_ports[pg_key]])
        # The port deleted, its hook run by the other server, not here.
        with mock.patch.object(drv.backend, "ports_changed"):
            self._delete("ports", port["id"])
        self.rename(key, plan_mod.FREE)
        with self.port_reads() as (whole, by_key), \
                self.soap_calls() as calls:
            # as the worker syncs:
            rec.sync_ports({port["id"]}, drv.backend.source,
                           drv.backend.port_source, read_first=True)
        self.assertEqual([], whole)
        self.assertEqual([{key}], [set(a[2]) for a in by_key])
        self.assertNotIn("ReconfigureDVPort_Task", calls)
        self.assertEqual(plan_mod.FREE, self.port_by_key(key).config.name)

    def test_the_workers_follow_up_of_a_write_made_elsewhere_reads_first(
            self):
        """The maintenance worker follows an API hook of another process
        that already gave a port its new rules: its replica still shows
        the old ones.  It reads that DV port by key first and writes
        nothing (no task refused by vCenter)."""
        net = self.make_net(89)
        sg = self.make_sg("first-elsewhere")
        port = self.port_on(net["id"], security_groups=[sg["id"]])
        key = port[portbindings.VIF_DETAILS]["dvs_port_key"]
        drv = self.vcenter_driver
        rec = drv.backend.reconciler
        self.settled()
        # The rule and its write by the other server's hook, not here.
        with mock.patch.object(drv.backend, "ports_changed"):
            self.add_rule(sg["id"], protocol="tcp", port_range_min=2223,
                          port_range_max=2223,
                          remote_ip_prefix="192.0.2.0/24")
        planned = rec.sync_ports({port["id"]}, drv.backend.source,
                                 drv.backend.port_source,
                                 dry_run=True).plan.steps
        (step,) = [s for s in planned
                   if isinstance(s, plan_mod.ConfigurePort)]
        # ... written by the other server (its own session).
        dvs = rec.inventory().dvs(step.switch)
        self.vsphere.wait(self.vsphere.dvs("DVS0").ReconfigureDVPort_Task(
            port=[ports_mod.port_spec(
                (key, self.port_by_key(key).config.configVersion, None,
                 step.settings),
                inventory.mac_management_supported(dvs))]))
        with self.port_reads() as (whole, by_key), \
                self.soap_calls() as calls:
            rec.sync_ports({port["id"]}, drv.backend.source,
                           drv.backend.port_source, read_first=True)
        self.assertEqual([], whole)
        self.assertIn({key}, [set(a[2]) for a in by_key])
        self.assertNotIn("ReconfigureDVPort_Task", calls)
        self.assertIn(2223, [r.destination_ports[0] for r in
                             ports_mod.settings_of(self.port_by_key(
                                 key).config.setting).rules or ()
                             if r.destination_ports])

    def test_a_write_refused_for_a_port_changed_elsewhere_reads_it_alone(
            self):
        """Another server wrote the port's DV port (its configVersion
        moved, which the replica does not see): this server's write of a
        rule change is refused, that DV port is read again by key -- not
        its whole group -- and the write made with its configVersion."""
        net = self.make_net(86)
        sg = self.make_sg("elsewhere")
        port = self.port_on(net["id"], security_groups=[sg["id"]])
        key = port[portbindings.VIF_DETAILS]["dvs_port_key"]
        self.settled()
        before = self.port_by_key(key).config.configVersion
        self.rename(key, port["id"])            # the other server's write
        with self.port_reads() as (whole, by_key), \
                self.soap_calls() as calls:
            self.add_rule(sg["id"], protocol="tcp", port_range_min=2222,
                          port_range_max=2222,
                          remote_ip_prefix="192.0.2.0/24")
            self.settled()
        self.assertIn(2222, [r.destination_ports[0] for r in
                             ports_mod.settings_of(self.port_by_key(
                                 key).config.setting).rules or ()
                             if r.destination_ports])
        self.assertEqual([], whole)
        self.assertIn({key}, [set(a[2]) for a in by_key])
        # Refused once, then written.
        self.assertEqual(2, calls.count("ReconfigureDVPort_Task"), calls)
        self.assertGreater(int(self.port_by_key(key).config.configVersion),
                           int(before) + 1)


    def test_a_group_changed_while_growing_is_grown_once_seen(self):
        """Another worker changes the port group (its shared filter, say)
        just before this one grows it for a bind: vCenter refuses the grow
        (configVersion), and the bind grows it again once the replica
        shows the change -- bound, not failed."""
        net = self.make_net(87)
        first = self.port_on(net["id"])
        pg_key = first[portbindings.VIF_DETAILS]["pg_id"]
        mine = first[portbindings.VIF_DETAILS]["dvs_port_key"]
        free = [p for p in self.dv_ports(pg_key) if p.key != mine]
        self.assertTrue(free)
        for p in free:                   # taken elsewhere: none free here
            self.rename(p.key, "0e0e0e0e-0000-4000-8000-0000000000%02d"
                        % int(p.key))
        self.vcenter_driver.backend.reconciler.replica.refresh_ports({pg_key})
        grows = []

        def raced(session, pg, *args, **kw):
            grows.append(pg.config_version)
            if len(grows) == 1:
                (ref,) = [g for g in self.vsphere.dvs("DVS0").portgroup
                          if g.key == pg_key]
                self.vsphere.wait(ref.ReconfigureDVPortgroup_Task(
                    vim.dvs.DistributedVirtualPortgroup.ConfigSpec(
                        configVersion=ref.config.configVersion,
                        description=ref.config.description)))
            return real_grow(session, pg, *args, **kw)

        with mock.patch.object(ports_mod, "grow_port_group",
                               side_effect=raced), \
                mock.patch.object(apply_mod.LOG, "error") as error:
            port = self.port_on(net["id"])
        self.assertEqual("dvs", port[portbindings.VIF_TYPE])
        # Not a failure (a failed binding that ML2 happens to try again).
        self.assertEqual([], error.call_args_list)
        self.assertEqual(2, len(grows))
        self.assertNotEqual(grows[0], grows[1])
        self.assert_reserved_for(port)


class TestKeyHandedToNova(PortRaceTestCase):

    def test_key_released_and_taken_by_another_process(self):
        """Another server released the port's DV port and reserved it for
        another Neutron port; this server's replica still shows it as the
        port's.  Bound again here, the port must get a DV port vCenter
        says is its own, never the other port's."""
        net = self.make_net(84)
        port = self.port_on(net["id"])
        key = port[portbindings.VIF_DETAILS]["dvs_port_key"]
        other = "0e0e0e0e-0000-4000-8000-00000000abcd"
        self.rename(key, other)                 # the other server's
        # Unbound and bound again (ML2's binding, in the API call; the
        # unbind's hook has not run, so nothing here read the port since).
        self.driver.update_port(self.context, port["id"], {"port": {
            portbindings.HOST_ID: ""}})
        port = self.driver.update_port(self.context, port["id"], {"port": {
            portbindings.HOST_ID: test_ports.base.COMPUTE_HOST}})
        self.settled()
        self.assertEqual("dvs", port[portbindings.VIF_TYPE])
        self.assertNotEqual(key, port[portbindings.VIF_DETAILS]
                            ["dvs_port_key"])
        self.assert_reserved_for(port)
        self.assertEqual(other, self.port_by_key(key).config.name)


    def test_a_free_port_taken_elsewhere_is_read_by_its_key(self):
        """Another server took the free DV port this server's bind picks
        (its replica still shows it free): vCenter refuses the write, that
        DV port alone is read again -- not its group, whose ports may each
        bring a shared filter of thousands of rules -- and another is
        taken, within the one bind."""
        net = self.make_net(88)
        self.port_on(net["id"])
        port = self.make_port_unbound(net["id"])
        rec = self.vcenter_driver.backend.reconciler
        (pg_key,) = {pg.key for pg in rec.replica.snapshot().dvs_portgroups
                     if pg.owner == net["id"]}
        free = sorted((p.key for p in rec.replica.snapshot().dv_ports[pg_key]
                       if p.name in ("", plan_mod.FREE) and not p.connected),
                      key=int)
        picked = free[plan_mod._spread(port["id"], len(free))]
        other = "0e0e0e0e-0000-4000-8000-00000000beef"
        self.rename(picked, other)              # the other server's
        with self.port_reads() as (whole, by_key), \
                self.soap_calls() as calls:
            port = self.driver.update_port(self.context, port["id"], {
                "port": {portbindings.HOST_ID:
                         test_ports.base.COMPUTE_HOST}})
        self.assertEqual("dvs", port[portbindings.VIF_TYPE])
        self.assertEqual([], whole)
        self.assertIn({picked}, [set(a[2]) for a in by_key])
        self.assertEqual(2, calls.count("ReconfigureDVPort_Task"), calls)
        self.assertNotEqual(picked, port[portbindings.VIF_DETAILS]
                            ["dvs_port_key"])
        self.assert_reserved_for(port)
        self.assertEqual(other, self.port_by_key(picked).config.name)


class TestOverBudget(PortRaceTestCase):

    extra_ml2_vcenter = {"max_rules_per_port": 24}

    def test_rule_deleted_while_over_budget_is_revoked(self):
        """A port pushed over the rule budget must not keep the rules it
        had: "allow ssh from anywhere", deleted while it is over, must not
        stay on its DV port.  It is blocked, and Neutron shows ERROR."""
        net = self.make_net(85)
        sg = self.make_sg("budget")
        ssh = self.add_rule(sg["id"], protocol="tcp", port_range_min=22,
                            port_range_max=22,
                            remote_ip_prefix="0.0.0.0/0")
        port = self.port_on(net["id"], security_groups=[sg["id"]])
        dvp = self.assert_reserved_for(port)

        def admits_ssh(setting):
            return any(r["action"] == "accept" and
                       r["direction"] == "outgoingPackets" and
                       r["dports"] == (22, 22)
                       for r in dv_port_rules(setting) or [])

        self.assertTrue(admits_ssh(dvp.config.setting))
        for i in range(1, 7):
            self.add_rule(sg["id"], protocol="udp", port_range_min=1000 + i,
                          port_range_max=1000 + i,
                          remote_ip_prefix=f"192.0.2.{i * 2}/32")
        self.settled()
        self.driver.delete_security_group_rule(self.context, ssh["id"])
        self.settled()
        key = port[portbindings.VIF_DETAILS]["dvs_port_key"]
        setting = self.port_by_key(key).config.setting
        self.assertFalse(admits_ssh(setting),
                         "a deleted rule still admits ssh from anywhere")
        self.assertTrue(setting.blocked.value)
        self.assertEqual("ERROR", self.driver.get_port(
            self.context, port["id"])["status"])

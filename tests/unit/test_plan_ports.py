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

"""The pure port planner on plain data: exact steps asserted."""

import dataclasses

from networking_vcenter.reconcile import desired as D
from networking_vcenter.reconcile import plan as P
from networking_vcenter.vsphere import inventory as I
from tests.unit.test_plan import NET_A, dvpg, inventory

PORT_1 = "11111111-0000-4000-8000-000000000001"
PORT_2 = "22222222-0000-4000-8000-000000000002"
PG_NAME = f"neutron-physnet1-{NET_A}"
WANT = I.PortSettings(blocked=False, rules=(), allow_promiscuous=False,
                      mac_changes=False, forged_transmits=False,
                      mac_learning=False)
OTHER = dataclasses.replace(WANT, forged_transmits=True)


def released(connected):
    return dataclasses.replace(I.INHERITED, blocked=True if connected
                               else None)


def port(key, name="", settings=I.INHERITED, connected=False, pg="key-pg1",
         version="1"):
    return I.DvPort(key, "uuid-dvs0", pg, name, version, connected,
                    settings=settings)


def setup(ports, pg_ready=True):
    pg = dataclasses.replace(dvpg(PG_NAME, 10, NET_A, moid="pg1"))
    if hasattr(pg, "ports_ready"):
        pg = dataclasses.replace(pg, ports_ready=pg_ready)
    inv = inventory([pg])
    inv.dv_ports = {pg.key: tuple(ports)}
    return inv


def want(port_id, settings=WANT, status="DOWN"):
    pg = D.DesiredPortGroup(NET_A, "physnet1", D.DVS, "DVS0", PG_NAME, 10)
    return D.DesiredPort(port_id, NET_A, pg, settings, status=status)


def test_reserve_takes_a_free_port_with_its_settings():
    inv = setup([port("10", "x-hand-named"), port("9", connected=True),
                 port("12"), port("11", P.FREE)])
    plan = P.plan_ports([want(PORT_1)], inv, released)
    (step,) = plan.steps
    assert isinstance(step, P.ReservePort)
    assert (step.key, step.name, step.settings, step.config_version) == \
        (["11", "12"][P._spread(PORT_1, 2)], PORT_1, WANT, "1")


def test_free_ports_taken_spread_by_port_id_the_same_everywhere():
    """Another server's reservations are not in this replica: taking the
    lowest free key, two servers would take the same one.  The choice is
    spread by the Neutron port's id, distinct within a plan and the same
    in every process."""
    inv = setup([port(str(k)) for k in range(100)])
    ids = [f"{i:08x}-0000-4000-8000-{i:012x}" for i in range(40)]
    plan = P.plan_ports([want(i) for i in ids], inv, released)
    keys = [s.key for s in plan.steps]
    assert len(set(keys)) == 40 and None not in keys
    # Not the lowest keys in order: most of the 40 are above 39.
    assert sum(int(k) >= 40 for k in keys) > 10, keys
    again = P.plan_ports([want(ids[7])], inv, released)
    assert again.steps[0].key == \
        [str(k) for k in range(100)][P._spread(ids[7], 100)]


def test_in_sync_reservation_plans_nothing_and_reports_status():
    inv = setup([port("3", PORT_1, WANT, connected=True)])
    plan = P.plan_ports([want(PORT_1, status="DOWN")], inv, released)
    assert plan.steps == []
    assert plan.reserved[PORT_1].key == "3"
    assert plan.status == {PORT_1: "ACTIVE"}


def test_drifted_settings_are_configured_with_the_seen_version():
    inv = setup([port("3", PORT_1, OTHER, version="7")])
    (step,) = P.plan_ports([want(PORT_1)], inv, released).steps
    assert isinstance(step, P.ConfigurePort)
    assert (step.key, step.config_version, step.settings, step.name) == \
        ("3", "7", WANT, None)


def test_no_free_port_asks_to_grow():
    inv = setup([port("0", connected=True)])
    (step,) = P.plan_ports([want(PORT_1)], inv, released).steps
    assert isinstance(step, P.ReservePort) and step.key is None


def test_duplicate_reservations_keep_the_connected_one():
    inv = setup([port("1", PORT_1, WANT), port("2", PORT_1, WANT,
                                                connected=True)])
    plan = P.plan_ports([want(PORT_1)], inv, released)
    (step,) = plan.steps
    assert isinstance(step, P.ReleasePort) and step.key == "1"
    assert plan.reserved[PORT_1].key == "2"


def test_reservation_of_a_gone_port_released_in_scope_only():
    inv = setup([port("1", PORT_2, WANT, connected=True)])
    (step,) = P.plan_ports([], inv, released, scope={PORT_2}).steps
    assert isinstance(step, P.ReleasePort)
    assert (step.key, step.name, step.settings) == \
        ("1", P.FREE, released(True))
    assert P.plan_ports([], inv, released, scope={PORT_1}).steps == []
    # A port changed too recently to judge is kept.
    assert P.plan_ports([], inv, released, keep={PORT_2}).steps == []
    # Names that are no Neutron port id are not ours to release.
    assert P.plan_ports([], setup([port("1", "web-1")]), released).steps == []


def test_unreadable_or_unready_port_group_waits():
    inv = setup([port("1")])
    inv.dv_ports = {}
    plan = P.plan_ports([want(PORT_1)], inv, released)
    assert (plan.steps, plan.waiting) == ([], {PORT_1})


def test_unexpressible_policy_is_a_conflict_and_keeps_the_port():
    inv = setup([port("3", PORT_1, OTHER)])
    bad = dataclasses.replace(want(PORT_1, settings=None),
                              problem="needs 2000 rules")
    plan = P.plan_ports([bad], inv, released)
    assert plan.steps == []
    assert [c.reason for c in plan.conflicts] == ["needs 2000 rules"]
    assert plan.reserved[PORT_1].key == "3"


# -- failing closed (issue 15) ------------------------------------------------

def test_duplicates_keep_the_key_nova_was_given():
    """Not the connected one, not the lowest: the committed binding's."""
    inv = setup([port("1", PORT_1, WANT, connected=True),
                 port("2", PORT_1, WANT), port("3", PORT_1, WANT)])
    mine = dataclasses.replace(want(PORT_1), bound_key="3")
    plan = P.plan_ports([mine], inv, released)
    assert plan.reserved[PORT_1].key == "3"
    assert sorted((s.key, s.settings) for s in plan.steps) == \
        [("1", released(True)), ("2", released(False))]
    assert all(isinstance(s, P.ReleasePort) for s in plan.steps)


def test_confirm_names_an_in_sync_reservation_again_with_its_version():
    inv = setup([port("3", PORT_1, WANT, version="9")])
    assert P.plan_ports([want(PORT_1)], inv, released).steps == []
    (step,) = P.plan_ports([want(PORT_1)], inv, released,
                           confirm={PORT_1}).steps
    assert isinstance(step, P.ConfigurePort)
    assert (step.key, step.config_version, step.name, step.settings) == \
        ("3", "9", PORT_1, WANT)


def test_policy_that_cannot_be_had_blocks_the_port_and_says_error():
    from networking_vcenter.reconcile import portsettings
    blocked = portsettings.blocked_settings()
    inv = setup([port("3", PORT_1, WANT, connected=True)])
    bad = dataclasses.replace(want(PORT_1, settings=blocked,
                                   status="ACTIVE"),
                              problem="needs 2000 rules")
    plan = P.plan_ports([bad], inv, released)
    (step,) = plan.steps
    assert isinstance(step, P.ConfigurePort) and step.settings == blocked
    assert plan.status == {PORT_1: "ERROR"}
    assert [c.reason for c in plan.conflicts] == ["needs 2000 rules"]
    # Back within budget: its status follows its NIC again.
    good = want(PORT_1, status="ERROR")
    inv = setup([port("3", PORT_1, WANT, connected=True)])
    assert P.plan_ports([good], inv, released).status == {PORT_1: "ACTIVE"}

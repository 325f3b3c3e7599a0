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

"""Reading DV ports that inherit a big traffic filter, against the simulator.

FetchDVPorts answers a port's effective settings: a port that inherits its
group's filter carries all the group's rules, marked inherited.
:mod:`networking_vcenter.vsphere.ports` reads them without building those
rules (``ports._OwnFiltersOnly``); here the ports it reads are compared with
the same answer parsed by pyVmomi's own deserializer, and the rules built
are counted.
"""

from __future__ import annotations

import uuid

import pytest
from pyVmomi import vim

from networking_vcenter import conf
from networking_vcenter import exceptions
from networking_vcenter.vsphere import inventory
from networking_vcenter.vsphere import ports
from networking_vcenter.vsphere import session as session_mod
from networking_vcenter.vsphere import switches
from networking_vcenter.vsphere.inventory import (
    INCOMING, OUTGOING, PortSettings, TrafficRule)
from tests.fixtures.vcsim import Vcsim
from tests.fixtures.vsphere_reader import find_named

DEPLOYMENT = "default"
# The group's filter: big enough that parsing it shows, small enough that
# the stock parse the tests compare with stays quick.
GROUP_RULES = tuple(
    TrafficRule(INCOMING if i % 2 else OUTGOING, "accept", protocol=6,
                source=f"10.{i // 250}.{i % 250}.0/24",
                destination_ports=(1000 + i, 1000 + i),
                description=f"shared filter rule {i}")
    for i in range(300))
OWN_RULES = (
    TrafficRule(INCOMING, "accept", protocol=6, source="10.0.0.0/8",
                destination_ports=(22, 22), description="ssh"),
    TrafficRule(INCOMING, "accept", protocol=17, source="192.0.2.7/32",
                source_ports=(67, 68), destination_ports=(1024, 65535)),
    TrafficRule(OUTGOING, "accept", protocol=1, destination="0.0.0.0/0"),
    TrafficRule(INCOMING, "drop", source="::/0"),
    TrafficRule(OUTGOING, "drop"),
)
# What the first ports of the group get as their own; the others inherit
# everything.
OWN = (
    PortSettings(rules=OWN_RULES),
    PortSettings(rules=OWN_RULES[:2], blocked=True),
    PortSettings(rules=()),                 # own filter, empty and disabled
    PortSettings(blocked=True, allow_promiscuous=True),  # filter inherited
    PortSettings(trunk_vlans=((401, 403),)),             # filter inherited
)
INHERITING = 6          # ports that inherit everything
NUM_PORTS = len(OWN) + INHERITING


@pytest.fixture(scope="module")
def sim():
    with Vcsim(clusters=1, hosts=1, vms=0) as s:
        yield s


@pytest.fixture(scope="module")
def session(sim):
    s = session_mod.Session(conf.Settings(
        host_ip=sim.host, host_port=sim.port, host_username=sim.username,
        host_password=sim.password, ca_file=None, insecure=True,
        api_retry_count=1, api_timeout=60, task_timeout=120,
        switch_mappings={"physnet1": "DVS0"},
        compute_hosts={"vc-compute-1": "DC0_C0"},
        dvs_name_template="neutron-{physnet}-{network_id}",
        max_parallel_tasks=4, dvs_batch_size=100,
        deployment_name=DEPLOYMENT))
    s.connect()
    yield s
    s.close()


@pytest.fixture(scope="module")
def group(session):
    """(switch, port group key, ports in key order): a group of ours whose
    default filter holds GROUP_RULES, its first ports with OWN settings."""
    dvs = find_named(session.content, vim.DistributedVirtualSwitch,
                     "DVS0")
    net = str(uuid.uuid4())
    name = f"neutron-physnet1-{net}"
    spec = switches.dvs_port_group_spec(
        name, 400, inventory.owner_description(DEPLOYMENT, net, "physnet1",
                                               400),
        num_ports=NUM_PORTS)
    spec.defaultPortConfig.filterPolicy = ports._filter(GROUP_RULES)
    switches.create_dvs_port_groups(session, dvs, [spec], "DVS0")
    pg = find_named(session.content, vim.dvs.DistributedVirtualPortgroup,
                    name)
    before = ports.fetch_ports(session, dvs, [pg.key])[pg.key]
    assert len(before) == NUM_PORTS
    ports.reconfigure_ports(session, dvs, [
        (p.key, p.config_version, f"own-{i}", s)
        for i, (p, s) in enumerate(zip(before, OWN))], "configure ports")
    yield dvs, pg.key, before
    session.run_task("remove the group", pg.Destroy_Task)


def _stock(session, dvs, criteria):
    """FetchDVPorts through the session, parsed by pyVmomi's own
    deserializer: (raw ports, their DvPorts in key order)."""
    raw = session.call("read ports, stock", dvs.FetchDVPorts, criteria)
    return raw, tuple(sorted(map(ports.port_of, raw), key=ports.key_order))


@pytest.fixture
def rules_built(monkeypatch):
    """How many ``vim.dvs.TrafficRule`` objects are constructed (by any
    code: pyVmomi's deserializer makes them with a bare ``cls()``)."""
    built = [0]
    real = vim.dvs.TrafficRule.__init__

    def counting(self, *args, **kwargs):
        built[0] += 1
        real(self, *args, **kwargs)

    monkeypatch.setattr(vim.dvs.TrafficRule, "__init__", counting)
    return built


def test_the_answer_carries_the_group_rules_inherited(session, group):
    """The premise: a port inheriting the filter gets the group's rules in
    its effective setting, marked inherited, with ``inherited`` first."""
    dvs, key, before = group
    raw, _ = _stock(session, dvs, vim.dvs.PortCriteria(
        portKey=[before[-1].key]))
    (port,) = raw
    fp = port.config.setting.filterPolicy
    assert fp.inherited is True
    (fc,) = fp.filterConfig
    assert [ports.rule_of(r) for r in fc.trafficRuleset.rules] == \
        list(GROUP_RULES)


def test_fetch_ports_reads_as_stock_parsing_does(session, group):
    dvs, key, before = group
    ours = ports.fetch_ports(session, dvs, [key])[key]
    raw, stock = _stock(session, dvs, vim.dvs.PortCriteria(
        portgroupKey=[key], inside=True))
    assert ours == stock
    # The comparison is not empty-handed: each shape is there.
    assert [p.settings for p in ours] == \
        [*OWN, *[inventory.INHERITED] * INHERITING]
    assert [p.name for p in ours] == \
        [f"own-{i}" for i in range(len(OWN))] + [""] * INHERITING
    assert all(p.config_version and p.dvs_uuid and p.portgroup_key == key
               for p in ours)
    # ... and the stock answer did carry the group's rules for them.
    inheriting = [p for p in raw
                  if p.config.setting.filterPolicy.inherited]
    assert len(inheriting) == INHERITING + 2
    assert all(len(p.config.setting.filterPolicy.filterConfig[0]
                   .trafficRuleset.rules) == len(GROUP_RULES)
               for p in inheriting)


def test_fetch_port_keys_reads_as_stock_parsing_does(session, group):
    dvs, key, before = group
    # Own filters, inherited ones, and one key that is not there.
    keys = [before[0].key, before[2].key, before[3].key, before[-1].key]
    ours = ports.fetch_port_keys(session, dvs, keys + ["99999"])
    _, stock = _stock(session, dvs, vim.dvs.PortCriteria(portKey=keys))
    assert ours == stock
    assert [p.settings for p in ours] == \
        [OWN[0], OWN[2], OWN[3], inventory.INHERITED]
    free = ports.fetch_port_keys(session, dvs, keys, connected=False)
    _, stock = _stock(session, dvs, vim.dvs.PortCriteria(
        portKey=keys, connected=False))
    assert free == stock == ours        # none is connected


def test_inherited_rules_are_not_built(session, group, rules_built):
    dvs, key, before = group
    inheriting = [p.key for p in before[len(OWN):]] + \
        [before[3].key, before[4].key]
    got = ports.fetch_port_keys(session, dvs, inheriting)
    assert len(got) == len(inheriting)
    assert all(p.settings.rules is None for p in got)
    assert rules_built[0] == 0

    # Ports with rules of their own get theirs, and only theirs.
    got = ports.fetch_ports(session, dvs, [key])[key]
    assert got[0].settings.rules == OWN_RULES
    assert got[1].settings.rules == OWN_RULES[:2]
    assert rules_built[0] == len(OWN_RULES) + 2

    # The control: pyVmomi's own parse builds every inherited rule.
    rules_built[0] = 0
    _stock(session, dvs, vim.dvs.PortCriteria(portKey=inheriting))
    assert rules_built[0] == len(inheriting) * len(GROUP_RULES)


def test_a_fault_is_still_typed(session, monkeypatch):
    made = []
    real = ports._OwnFiltersOnly.__init__

    def init(self, *args, **kwargs):
        made.append(self)
        real(self, *args, **kwargs)

    monkeypatch.setattr(ports._OwnFiltersOnly, "__init__", init)
    gone = vim.DistributedVirtualSwitch("dvs-404", session._stub)
    with pytest.raises(exceptions.NotFound):
        ports.fetch_ports(session, gone, ["dvportgroup-1"])
    # The fault's answer went through the ports' deserializer ...
    assert made
    # ... and no other call of the thread is parsed by it.
    assert session._stub.element_deserializer() is None

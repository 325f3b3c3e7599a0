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

"""The replica's full read pages, as vCenter pages it (simulator patch 0012):
``RetrievePropertiesEx`` answers ``READ_PAGE`` objects and a token,
``WaitForUpdatesEx`` ``READ_PAGE`` object updates and ``truncated``,
``FetchDVPorts`` is asked ``ports.READ_BATCH`` ports at a time.  An
inventory larger than a page, read with small pages, gives the same replica
as read unpaged, in the round trips the page sizes say.
"""

from __future__ import annotations

import collections
import gc
import math
import uuid

import pytest
from pyVmomi import vim

from networking_vcenter.vsphere import inventory
from networking_vcenter.vsphere import ports
from networking_vcenter.vsphere import reads
from networking_vcenter.vsphere import replica as replica_mod
from networking_vcenter.vsphere import session as session_mod
from networking_vcenter.vsphere import switches
from tests.fixtures.soap import each_request
from tests.fixtures.vcsim import Vcsim, driver_settings

DEPLOYMENT = "default"
GROUPS = 6
PORTS = 8            # per group (our groups' least): 48, 12 reserved
PAGE = 4             # objects per read answer (the inventory holds ~40)
BATCH = 5            # ports per FetchDVPorts: a group in two calls


@pytest.fixture(scope="module")
def session():
    with Vcsim(clusters=1, hosts=2, vms=2) as sim:
        s = session_mod.Session(driver_settings(sim, api_retry_count=2))
        s.connect()
        _populate(s)
        yield s
        s.close()


def _populate(s) -> None:
    """GROUPS port groups of ours of PORTS ports each, two ports of each
    reserved (named by a Neutron port id), as the driver does."""
    content = s.content
    view = content.viewManager.CreateContainerView(
        content.rootFolder, [vim.DistributedVirtualSwitch], True)
    (dvs,) = [d for d in view.view if d.name == "DVS0"]
    view.DestroyView()
    specs = []
    for i in range(GROUPS):
        net = str(uuid.uuid4())
        specs.append(switches.dvs_port_group_spec(
            f"neutron-physnet1-{net}", 100 + i,
            inventory.owner_description(DEPLOYMENT, net, "physnet1",
                                        100 + i), num_ports=PORTS))
    switches.create_dvs_port_groups(s, dvs, specs, "DVS0")
    found = dvs.FetchDVPorts(vim.dvs.PortCriteria(inside=True))
    ours = {pg.key for pg in dvs.portgroup
            if pg.name.startswith("neutron-")}
    by_group = collections.defaultdict(list)
    for p in found:
        if p.portgroupKey in ours:
            by_group[p.portgroupKey].append(p)
    assert len(by_group) == GROUPS
    changes = [(p.key, p.config.configVersion, str(uuid.uuid4()), None)
               for group in by_group.values() for p in group[:2]]
    ports.reconfigure_ports(s, dvs, changes, "reserve ports")


def _read(session, monkeypatch, page, batch):
    """A full read (the replica's, as at start and after a reconnect) with
    these page sizes: the inventory and the SOAP calls by method."""
    monkeypatch.setattr(reads, "READ_PAGE", page)
    monkeypatch.setattr(ports, "READ_BATCH", batch)
    calls: collections.Counter = collections.Counter()
    truncated = []
    real = session_mod.Session.call

    def call(self, what, fn, *args, **kwargs):
        result = real(self, what, fn, *args, **kwargs)
        if what == "read the inventory" and result is not None:
            truncated.append((bool(result.truncated), sum(
                len(fs.objectSet or []) for fs in result.filterSet or [])))
        return result

    monkeypatch.setattr(session_mod.Session, "call", call)
    with each_request(lambda _, method: calls.update([method])):
        inv = replica_mod.Replica.read_once(session, _settings_of(session))
    monkeypatch.setattr(session_mod.Session, "call", real)
    return inv, calls, truncated


def _settings_of(session):
    return session._settings


def _objects(inv):
    """What the inventory says, without the managed object references."""
    return (sorted((pg.moid, pg.name, pg.vlan, pg.owner, pg.port_keys)
                   for pg in inv.dvs_portgroups),
            sorted(inv.std_networks), sorted(inv.hosts),
            sorted(inv.switches), sorted(inv.clusters),
            {k: v for k, v in inv.dv_ports.items()})


def test_full_read_pages_and_matches_unpaged(session, monkeypatch):
    whole, calls_whole, trunc_whole = _read(session, monkeypatch,
                                            100000, 100000)
    paged, calls_paged, trunc_paged = _read(session, monkeypatch,
                                            PAGE, BATCH)
    assert _objects(paged) == _objects(whole)
    held = sum(len(v) for v in paged.dv_ports.values())
    assert len(paged.dv_ports) == GROUPS and held == GROUPS * PORTS
    assert sum(1 for v in paged.dv_ports.values() for p in v
               if inventory.UUID_RE.match(p.name or "")) == GROUPS * 2

    # Unpaged: one answer each.
    ((cut, total),) = trunc_whole
    assert not cut and total > PAGE * 3
    assert calls_whole["WaitForUpdatesEx"] == 1
    assert calls_whole["ContinueRetrievePropertiesEx"] == 0
    assert calls_whole["FetchDVPorts"] == 1

    # Paged: every answer but the last truncated at PAGE objects, as many
    # answers as the objects need; a group's ports in two FetchDVPorts.
    answers = math.ceil(total / PAGE)
    assert calls_paged["WaitForUpdatesEx"] == answers
    assert trunc_paged == [(True, PAGE)] * (answers - 1) + \
        [(False, total - PAGE * (answers - 1))]
    assert calls_paged["FetchDVPorts"] == GROUPS * math.ceil(PORTS / BATCH)


def test_retrieve_follows_tokens(session, monkeypatch):
    monkeypatch.setattr(reads, "READ_PAGE", 3)
    calls: collections.Counter = collections.Counter()
    with each_request(lambda _, method: calls.update([method])):
        paged = reads.retrieve(session, vim.Network, ["name"], "networks")
    monkeypatch.setattr(reads, "READ_PAGE", 100000)
    whole = reads.retrieve(session, vim.Network, ["name"], "networks")
    assert len(whole) > 3 * 2
    assert sorted((r._moId, p["name"]) for r, p in paged) == \
        sorted((r._moId, p["name"]) for r, p in whole)
    assert calls["RetrievePropertiesEx"] == 1
    assert calls["ContinueRetrievePropertiesEx"] == \
        math.ceil(len(whole) / 3) - 1


def test_answers_freed_without_a_full_collection(session):
    """A page read and dropped is freed at once, not left in a reference
    cycle for the next full garbage collection (pyVmomi's deserializer,
    its parser and handlers hold the answer): else every page of a full
    read stays in memory until one, and paging bounds nothing."""
    gc.collect()
    gc.disable()
    try:
        gc.set_debug(gc.DEBUG_SAVEALL)
        assert reads.retrieve(session, vim.dvs.DistributedVirtualPortgroup,
                              ["name", "config.defaultPortConfig"], "groups")
        gc.collect()
        kinds = collections.Counter(type(o).__name__ for o in gc.garbage)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    answer = {k: n for k, n in kinds.items()
              if k.startswith(("vmodl.", "vim."))}
    assert not answer, answer

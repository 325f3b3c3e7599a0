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

"""Neutron's changes as the ports they touch (``ml2.callbacks``), against
backends that record what they are told: no Neutron, no vCenter."""

from __future__ import annotations

import types
from unittest import mock

from neutron_lib.api.definitions import portbindings
from neutron_lib.callbacks import events as n_events
from neutron_lib.callbacks import manager
from neutron_lib.callbacks import registry as n_registry
from neutron_lib.callbacks import resources
import pytest

from networking_vcenter.constants import VIF_TYPE_DVS
from networking_vcenter.ml2 import callbacks
from networking_vcenter import neutron_api
from networking_vcenter import neutron_db


class Backend:
    def __init__(self, *hosts):
        self.settings = types.SimpleNamespace(
            compute_hosts={h: "cluster" for h in hosts})
        self.told = []

    def serves(self, host):
        return host in self.settings.compute_hosts

    def ports_changed(self, ids, ids_of=None, networks=frozenset(),
                      network_of=None):
        self.told.append((ids, ids_of, networks, network_of))


def events(*backends, shared=False, reached=None):
    backends = list(backends) or [Backend("esx1")]
    settings = types.SimpleNamespace(shared_security_filter=shared)
    return callbacks.NeutronEvents(
        backends, settings, {"physnet1": "dvs1"},
        reached or (lambda context, segs, hosts, getter: set(hosts)))


def port(pid="p1", host="esx1", groups=("sg1",), ips=("10.0.0.5",),
         details=None):
    return {"id": pid, "network_id": "net1",
            portbindings.HOST_ID: host,
            portbindings.VIF_TYPE: VIF_TYPE_DVS,
            portbindings.VIF_DETAILS: details or {"dvs_id": "dvs-1"},
            "security_groups": list(groups),
            "fixed_ips": [{"ip_address": ip} for ip in ips]}


def test_membership_is_groups_and_addresses_in_any_order():
    a = port(groups=("b", "a"), ips=("10.0.0.6", "10.0.0.5"))
    b = port(groups=("a", "b"), ips=("10.0.0.5", "10.0.0.6"))
    assert callbacks.membership(a) == callbacks.membership(b)
    assert callbacks.membership(None) == ()
    assert callbacks.membership(a) != callbacks.membership(port())


def test_a_port_update_on_our_host_is_told_to_every_backend():
    one, two = Backend("esx1"), Backend("esx2")
    events(one, two).port_changed(port(), port())
    for b in (one, two):
        assert b.told == [({"p1"}, None, set(), {"p1": "net1"})]


def test_a_port_elsewhere_is_not_synced():
    b = Backend("esx1")
    events(b).port_changed(port(host="kvm1"), port(host="kvm1"))
    assert b.told == []


def test_a_membership_change_names_the_ports_of_its_remote_groups():
    b = Backend("esx1")
    events(b).port_changed(port(ips=("10.0.0.9",)), port())
    [(ids, ids_of, networks, network_of)] = b.told
    assert ids == {"p1"} and network_of == {"p1": "net1"}
    assert ids_of.func is neutron_db.ports_referencing
    assert ids_of.keywords == {"security_group_ids": {"sg1"}}


def test_a_port_joining_names_its_remote_groups_though_unchanged():
    b = Backend("esx1")
    events(b).port_changed(port(), port(), joined=True)
    assert b.told[0][1].keywords == {"security_group_ids": {"sg1"}}


def test_a_port_on_a_standard_vswitch_names_its_network():
    b = Backend("esx1")
    events(b).port_changed(port(details={"port_group": "x"}), None)
    assert b.told[0][2] == {"net1"}


def test_a_port_deleted_names_its_network_with_the_shared_filter():
    plain, shared = Backend("esx1"), Backend("esx1")
    events(plain).port_changed(None, port(groups=()))
    events(shared, shared=True).port_changed(None, port(groups=()))
    assert plain.told[0][2] == set()
    assert shared.told[0][2] == {"net1"}
    # Updated: its network's filter is read with it.
    events(shared, shared=True).port_changed(port(groups=()),
                                             port(groups=()))
    assert shared.told[1][2] == set()


def test_a_qos_policy_change_names_the_ports_referencing_it():
    b = Backend()
    events(b).qos_policy_changed(None, "pol1")
    [(ids, ids_of, _, _)] = b.told
    assert ids == set()
    assert ids_of.keywords == {"qos_policy_ids": ["pol1"]}


@pytest.fixture
def registry():
    """A callback registry of the test's own."""
    with mock.patch.object(n_registry, "_get_callback_manager",
                           return_value=manager.CallbacksManager()):
        yield n_registry


def publish(registry, resource, event, **payload):
    registry.publish(resource, event, None,
                     payload=n_events.DBEventPayload("ctx", **payload))


@pytest.mark.parametrize("resource, event, payload, which", [
    (resources.SECURITY_GROUP_RULE, n_events.AFTER_CREATE,
     {"states": [{"security_group_id": "sg1"}]},
     {"security_group_ids": ["sg1"]}),
    (resources.SECURITY_GROUP_RULE, n_events.AFTER_DELETE,
     {"metadata": {"security_group_id": "sg1"}},
     {"security_group_ids": ["sg1"]}),
    (resources.SECURITY_GROUP, n_events.AFTER_UPDATE,
     {"resource_id": "sg1"}, {"security_group_ids": ["sg1"]}),
    (resources.ADDRESS_GROUP, n_events.AFTER_UPDATE,
     {"resource_id": "ag1"}, {"address_group_ids": ["ag1"]}),
])
def test_a_policy_event_names_the_ports_referencing_it(
        registry, resource, event, payload, which):
    b = Backend()
    events(b).subscribe()
    publish(registry, resource, event, **payload)
    [(ids, ids_of, _, _)] = b.told
    assert ids == set()
    assert ids_of.func is neutron_db.ports_referencing
    assert ids_of.keywords == which


def test_a_rule_event_without_its_group_is_left_to_the_worker(registry):
    b = Backend()
    events(b).subscribe()
    publish(registry, resources.SECURITY_GROUP_RULE, n_events.AFTER_DELETE,
            metadata={})
    assert b.told == []


def test_a_security_group_deleted_syncs_the_ports_found_before(registry):
    b = Backend()
    events(b).subscribe()
    with mock.patch.object(neutron_db, "ports_referencing",
                           return_value={"p1": "net1"}) as found:
        publish(registry, resources.SECURITY_GROUP, n_events.BEFORE_DELETE,
                resource_id="sg1")
    found.assert_called_once_with(security_group_ids=["sg1"])
    assert b.told == []
    publish(registry, resources.SECURITY_GROUP, n_events.AFTER_DELETE,
            resource_id="sg1")
    assert b.told == [({"p1"}, None, frozenset(), {"p1": "net1"})]
    # Told once.
    publish(registry, resources.SECURITY_GROUP, n_events.AFTER_DELETE,
            resource_id="sg1")
    assert len(b.told) == 1


def test_a_security_group_deleted_though_its_ports_cannot_be_read(registry):
    b = Backend()
    events(b).subscribe()
    with mock.patch.object(neutron_db, "ports_referencing",
                           side_effect=RuntimeError("database gone")):
        publish(registry, resources.SECURITY_GROUP, n_events.BEFORE_DELETE,
                resource_id="sg1")
    publish(registry, resources.SECURITY_GROUP, n_events.AFTER_DELETE,
            resource_id="sg1")
    assert b.told == []


def segment(physnet="physnet1"):
    return types.SimpleNamespace(id="seg1", network_type="vlan",
                                 physical_network=physnet)


def test_a_mapped_segment_is_mapped_to_the_hosts_it_reaches(registry):
    events(Backend("esx1", "esx2"), Backend("esx3"),
           reached=lambda ctx, segs, hosts, getter: hosts - {"esx2"}
           ).subscribe()
    with mock.patch.object(neutron_api, "map_segment_to_hosts") as mapped:
        publish(registry, resources.SEGMENT, n_events.PRECOMMIT_CREATE,
                states=[segment()])
        publish(registry, resources.SEGMENT, n_events.PRECOMMIT_CREATE,
                states=[segment(physnet="physnet9")])
    mapped.assert_called_once_with("ctx", "seg1", ["esx1", "esx3"])


def test_a_segment_is_created_though_its_hosts_cannot_be_told(registry):
    def reached(*args):
        raise RuntimeError("no replica")

    events(reached=reached).subscribe()
    with mock.patch.object(neutron_api, "map_segment_to_hosts") as mapped:
        publish(registry, resources.SEGMENT, n_events.PRECOMMIT_CREATE,
                states=[segment()])
    mapped.assert_not_called()

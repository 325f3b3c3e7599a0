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

"""Two Neutron API servers of one deployment, as two server hosts would be:
two uWSGI masters of one worker each, each with its own configuration, log
and ``[oslo_concurrency] lock_path`` (so file locks cannot coordinate them),
on one MariaDB database and one RabbitMQ, with the driver's locks in tooz
over that database.  They race on the same 50 networks (each created on one
server and renamed on the other at once) and with each other's full passes
(every second, no grace period): no port group lost, none duplicated, and
concurrent deletes spread over both servers leave none behind."""

from __future__ import annotations

import concurrent.futures
import os
import time

import pytest

from tests.e2e import conftest
from tests.fixtures.vcsim import Vcsim
from tests.fixtures.vsphere_reader import Reader

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def sim():
    # A simulator of its own: this server's full passes own what they see.
    s = Vcsim(extra_args=("-extra-vswitch", "vSwitch1")).start()
    yield s
    s.stop()


# One deployment (the same name on both servers), locks in the shared
# database: "{tooz_db}" is the first server's, on both.
ML2_OPTS = {"deployment_name": "race", "resync_interval": "1",
            "resync_grace_period": "0", "coordination_backend_url": "{tooz_db}"}


@pytest.fixture(scope="module")
def servers(sim):
    first = conftest.start_server(
        sim, "real", conftest.neutron_server.free_port(), workers=1,
        extra_ml2_opts=ML2_OPTS)
    try:
        second = conftest.start_server(
            sim, "real", conftest.neutron_server.free_port(), workers=1,
            extra_ml2_opts=ML2_OPTS, backend_of=first)
    except BaseException:
        conftest.stop_server(first)
        raise
    try:
        yield first, second
    finally:
        # The second server first: it uses the first one's database.
        try:
            conftest.stop_server(second)
        finally:
            conftest.stop_server(first)


def managed(reader: Reader) -> dict[str, list[dict]]:
    """Our distributed port groups by name, and standard ones by name."""
    out: dict[str, list] = {}
    for pg in reader._all(__import__("pyVmomi").vim.dvs
                          .DistributedVirtualPortgroup):
        if "networking-vcenter" in (pg.config.description or ""):
            out.setdefault(pg.name, []).append(pg)
    return out


def test_servers_are_separate_on_shared_backends(servers):
    first, second = servers
    assert first.workdir != second.workdir
    assert first.url != second.url
    assert [s["name"] for s in second.services()] == [
        "uwsgi", "neutron-periodic-workers"]
    assert second.state["backend"]["workdir"] == first.workdir
    assert second.state["backend"]["mariadb"] == first.state["ports"]["mariadb"]
    assert second.state["backend"]["amqp"] == first.state["ports"]["amqp"]
    # The configuration holds the database password: only booleans and
    # counts go into the assertions, so that a failure cannot print it.
    shared = []
    for srv in servers:
        with open(srv.neutron_conf) as f:
            neutron_conf = f.read().splitlines()
        with open(srv.ml2_conf) as f:
            ml2_conf = f.read().splitlines()
        own_locks = f"lock_path = {srv.path('data', 'lock')}" in neutron_conf
        own_log = f"log_file = {srv.api_log}" in neutron_conf
        assert own_locks and own_log, f"{srv.workdir}: shared lock_path or log"
        shared.append(sorted(
            ln for ln in neutron_conf + ml2_conf
            if ln.startswith(("connection =", "transport_url =",
                              "coordination_backend_url =",
                              "deployment_name ="))))
    # The same database, queue, lock backend and deployment on both.
    same = shared[0] == shared[1]
    count = len(shared[0])
    tooz_in_db = any(ln.startswith("coordination_backend_url = mysql://")
                     for ln in shared[0])
    one_deployment = "deployment_name = race" in shared[0]
    assert count == 4
    assert same, "the servers differ in database, queue, locks or deployment"
    assert tooz_in_db, "the locks are not in tooz over the database"
    assert one_deployment, "the servers are not one deployment"


def test_racing_servers_keep_exactly_one_port_group_each(servers, sim):
    apis = [conftest.Api(srv.url) for srv in servers]
    reader = Reader(sim.connect())
    try:
        race(apis, reader)
    finally:
        reader.close()


def race(apis: list[conftest.Api], reader: Reader) -> None:
    def create(i):
        # Created on one server, renamed on the other at once: both
        # reconcile the same network concurrently.
        a, b = apis[i % 2], apis[(i + 1) % 2]
        code, body = a.http("POST", "/v2.0/networks", {"network": {
            "name": f"race-{i}", "provider:network_type": "vlan",
            "provider:physical_network": "physnet1" if i % 2 else "physnet2",
            "provider:segmentation_id": (100 if i % 2 else 200) + i}})
        assert code == 201, body
        net = body["network"]
        code, _ = b.http("PUT", f"/v2.0/networks/{net['id']}",
                         {"network": {"name": f"race-{i}-renamed"}})
        assert code == 200
        return net

    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        nets = list(pool.map(create, range(50)))
    time.sleep(3)          # several full passes by both servers
    dvs = [n for n in nets if n["provider:physical_network"] == "physnet1"]
    std = [n for n in nets if n["provider:physical_network"] == "physnet2"]
    pgs = managed(reader)
    assert sorted(pgs) == sorted(f"neutron-physnet1-{n['id']}" for n in dvs)
    assert all(len(v) == 1 for v in pgs.values())
    hosts = reader.hosts_of_cluster("DC0_C0") + \
        reader.hosts_of_cluster("DC0_C1")
    for n in std:
        assert reader.host_portgroups(n["id"]) == {
            h: ("vSwitch1", n["provider:segmentation_id"]) for h in hosts}
        assert len(reader.networks_named(n["id"])) == 1
    assert len(dvs) + len(std) == 50

    # Each server deletes half of the networks (not those it created).
    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        codes = list(pool.map(lambda i: apis[(i + 1) % 2].http(
            "DELETE", f"/v2.0/networks/{nets[i]['id']}")[0],
            range(len(nets))))
    assert set(codes) == {204}
    time.sleep(2)
    assert managed(reader) == {}
    assert all(reader.host_portgroups(n["id"]) == {} for n in std)


def test_no_secret_in_any_log(servers):
    """After both servers ran the race above with debug logging on, no log
    of either (API, periodic workers, rpc server, uWSGI, set-up, MariaDB,
    RabbitMQ) holds the database password, which is also the password in
    the coordination backend's URL (tooz over MySQL): the driver masks it
    in every line it writes."""
    password = servers[0].state["db_password"]
    assert len(password) >= 16      # a token: no accidental match
    # The URL does reach the log, masked (so the search below means
    # something).
    with open(servers[0].api_log, encoding="utf-8", errors="replace") as f:
        assert "; locks: mysql://" in f.read()
    leaks = []
    for srv in servers:
        for root, _, files in os.walk(srv.path("log")):
            for name in files:
                with open(os.path.join(root, name), encoding="utf-8",
                          errors="replace") as f:
                    if password in f.read():
                        leaks.append(os.path.join(root, name))
    # Only file names go into the message: a failure must not print it.
    assert not leaks, f"the database password is in {leaks}"

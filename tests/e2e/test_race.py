"""Two API worker processes on one MariaDB database, racing on the same 50
networks with each other and with their own full passes (every second, no
grace period), locks in tooz over that database: no port group lost, none
duplicated."""

from __future__ import annotations

import concurrent.futures
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


@pytest.fixture(scope="module")
def server(sim):
    srv = conftest.start_server(
        sim, "real", conftest.neutron_server.free_port(), workers=2,
        extra_ml2_opts={"resync_interval": "1", "resync_grace_period": "0",
                        "coordination_backend_url": "{tooz_db}"})
    yield srv
    conftest.stop_server(srv)


def managed(reader: Reader) -> dict[str, list[dict]]:
    """Our distributed port groups by name, and standard ones by name."""
    out: dict[str, list] = {}
    for pg in reader._all(__import__("pyVmomi").vim.dvs
                          .DistributedVirtualPortgroup):
        if "networking-vcenter" in (pg.config.description or ""):
            out.setdefault(pg.name, []).append(pg)
    return out


def test_racing_workers_keep_exactly_one_port_group_each(server, sim):
    api = conftest.Api(server.url)
    reader = Reader(sim.connect())

    def create(i):
        code, body = api.http("POST", "/v2.0/networks", {"network": {
            "name": f"race-{i}", "provider:network_type": "vlan",
            "provider:physical_network": "physnet1" if i % 2 else "physnet2",
            "provider:segmentation_id": (100 if i % 2 else 200) + i}})
        assert code == 201, body
        net = body["network"]
        # A second worker reconciles the same network at once.
        code, _ = api.http("PUT", f"/v2.0/networks/{net['id']}",
                           {"network": {"name": f"race-{i}-renamed"}})
        assert code == 200
        return net

    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        nets = list(pool.map(create, range(50)))
    time.sleep(3)          # several full passes by both workers
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

    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        codes = list(pool.map(lambda n: api.http(
            "DELETE", f"/v2.0/networks/{n['id']}")[0], nets))
    assert set(codes) == {204}
    time.sleep(2)
    assert managed(reader) == {}
    assert all(reader.host_portgroups(n["id"]) == {} for n in std)

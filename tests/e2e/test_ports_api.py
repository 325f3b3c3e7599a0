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

"""A DV port per Neutron port (issue 8), end to end.

Through the real Neutron API (uWSGI, ``neutron-periodic-workers``, MariaDB,
RabbitMQ, Neutron's own migrations -- so security groups get the default
rules a real deployment gives them) and the real ``openstack`` CLI, with
``resync_interval`` at its default (300 s): nothing here waits for a
periodic full pass.  Nova 34's own VMware code attaches and detaches the
NIC.  vSphere is read back independently, with plain pyVmomi
(``FetchDVPorts``, attribute reads), sharing no code with the driver's.
"""

from __future__ import annotations

import time

import pytest
from pyVmomi import vim

from networking_vcenter.reconcile import portsettings
from tests.e2e import conftest
from tests.e2e import nova_client
from tests.fixtures.vsphere_reader import dv_port_rules

pytestmark = pytest.mark.e2e

HOST = "vc-compute-1"           # nova-compute of cluster DC0_C0
CLUSTER = "DC0_C0"
VM = "DC0_C0_RP0_VM0"
# Seconds a change may take to reach the DV port (the hook thread right
# after the API call; the worker's poll if that failed) or the port status
# (the worker, told by its replica that a NIC came or went).
SOON = 15.0
# The one place that says which way vSphere's directions point
# (docs/security-groups.md "Direction"): Neutron ingress is to the VM.
TO_VM, FROM_VM = portsettings.TO_VM, portsettings.FROM_VM


@pytest.fixture(scope="module")
def server(vcsim):
    # Real mode; the launcher sets resync_interval = 0 for the other tests,
    # put back to its default here.
    s = conftest.start_server(vcsim, "real", conftest.neutron_server
                              .free_port(),
                              extra_ml2_opts={"resync_interval": 300})
    yield s
    conftest.stop_server(s)


@pytest.fixture(scope="module")
def api(server):
    return conftest.Api(server.url)


@pytest.fixture
def timings(request):
    """Seconds each step took, printed with the test's output (-s / -rA)."""
    took: list[tuple[str, float]] = []
    yield took
    print(f"\n{request.node.name}: " + ", ".join(
        f"{what} {secs:.2f}s" for what, secs in took))


# -- reading vSphere (plain pyVmomi) ---------------------------------------


def dv_port(vsphere, details):
    """The DV port the binding handed to Nova, read from vCenter."""
    dvs = vsphere.dvs("DVS0")
    assert dvs.uuid == details["dvs_id"]
    found = [p for p in dvs.FetchDVPorts(vim.dvs.PortCriteria(
        portgroupKey=[details["pg_id"]], inside=True))
        if p.key == details["dvs_port_key"]]
    assert len(found) == 1, (details, [p.key for p in found])
    return found[0]


def rules(port):
    """The DV port's own traffic rules, in order, as plain dicts with
    addresses as CIDR text; None when it has no filter of its own
    (inherited from the port group)."""
    found = dv_port_rules(port.config.setting)
    if found is None:
        return None
    return [{"direction": r["direction"], "action": r["action"],
             "protocol": r["protocol"],
             "source": r["source"] and r["source"][0],
             "destination": r["destination"] and r["destination"][0],
             "dports": r["dports"]} for r in found]


def shaping_from_vm(setting):
    """The shaping policy of traffic from the VM (Neutron QoS egress)."""
    return setting.inShapingPolicy if FROM_VM == "incomingPackets" \
        else setting.outShapingPolicy


def eventually(fn, timeout=SOON):
    """fn()'s first true value within timeout and the seconds it took;
    (last value, seconds) when it never came."""
    t0 = time.monotonic()
    while True:
        value = fn()
        took = time.monotonic() - t0
        if value or took > timeout:
            return value, took
        time.sleep(0.1)


# -- the Neutron side ------------------------------------------------------


def vlan_network(api, name, vlan, cidr):
    net = api.cli("network", "create", "--provider-network-type", "vlan",
                  "--provider-physical-network", "physnet1",
                  "--provider-segment", str(vlan), name)
    api.cli("subnet", "create", "--network", net["id"], "--subnet-range",
            cidr, f"{name}-subnet")
    return net


def port_json(api, port_id):
    status, body = api.http("GET", f"/v2.0/ports/{port_id}")
    assert status == 200, body
    return body["port"]


# -- the tests --------------------------------------------------------------


def test_port_policy_follows_the_api(api, vsphere, timings):
    net = vlan_network(api, "e2e-ports", 160, "10.60.0.0/24")
    sg = api.cli("security", "group", "create", "e2e-web")
    # Neutron's own default rules for a new group (from its migrations):
    # egress to anywhere, IPv4 and IPv6.
    assert {(r["direction"], r["ethertype"], r["remote_ip_prefix"])
            for r in sg["rules"]} == {("egress", "IPv4", None),
                                      ("egress", "IPv6", None)}

    t0 = time.monotonic()
    port = api.cli("port", "create", "--network", net["id"], "--host", HOST,
                   "--security-group", sg["id"], "e2e-ports-p1")
    timings.append(("port create (bind)", time.monotonic() - t0))
    assert port["binding_vif_type"] == "dvs"
    details = port["binding_vif_details"]
    assert details["dvs_port_key"]
    (pg,) = vsphere.dv_portgroups(f"neutron-physnet1-{net['id']}")
    assert details["pg_id"] == pg["key"]
    assert port["status"] == "DOWN"     # no NIC on it yet

    dvp = dv_port(vsphere, details)
    assert dvp.config.name == port["id"]
    assert dvp.connectee is None
    have = rules(dvp)
    assert have, "the reserved DV port has no traffic filter"
    ip = port["fixed_ips"][0]["ip_address"]
    # The group's egress rules, from the port's own address only
    # (anti-spoofing); everything else dropped at the end, both ways.
    assert {"direction": FROM_VM, "action": "accept", "protocol": None,
            "source": f"{ip}/32", "destination": "0.0.0.0/0",
            "dports": None} in have
    assert [r["action"] for r in have if r["direction"] == TO_VM][-2:] == \
        ["drop", "drop"]
    assert [r["action"] for r in have if r["direction"] == FROM_VM][-2:] == \
        ["drop", "drop"]
    sec = dvp.config.setting.securityPolicy
    assert not sec.inherited and sec.forgedTransmits.value is False

    def https():
        return [r for r in rules(dv_port(vsphere, details)) or []
                if r["direction"] == TO_VM and r["protocol"] == 6
                and r["dports"] == (443, 443)]

    assert https() == []
    t0 = time.monotonic()
    rule = api.cli("security", "group", "rule", "create", "--ingress",
                   "--protocol", "tcp", "--dst-port", "443",
                   "--remote-ip", "198.51.100.0/24", sg["id"])
    cli = time.monotonic() - t0
    found, took = eventually(https)
    timings.append(("rule create: CLI", cli))
    timings.append(("rule create: on the DV port after", took))
    assert found, f"tcp/443 not on DV port {details['dvs_port_key']} " \
                  f"after {SOON}s"
    assert [(r["action"], r["source"]) for r in found] == \
        [("accept", "198.51.100.0/24")]

    api.cli("security", "group", "rule", "delete", rule["id"], "--no-format")
    gone, took = eventually(lambda: not https())
    timings.append(("rule delete: gone from the DV port after", took))
    assert gone, f"tcp/443 still on the DV port after {SOON}s"

    # Port security off: no filter of its own that drops anything, MAC
    # changes and forged transmits allowed.
    api.cli("port", "set", "--no-security-group", "--disable-port-security",
            port["id"], "--no-format")

    def open_():
        s = dv_port(vsphere, details).config.setting
        return rules(dv_port(vsphere, details)) == [] and \
            s.securityPolicy.forgedTransmits.value is True

    opened, took = eventually(open_)
    timings.append(("port security off: on the DV port after", took))
    assert opened, rules(dv_port(vsphere, details))
    assert dv_port(vsphere, details).config.setting.securityPolicy \
        .macChanges.value is True

    # QoS: a bandwidth limit on what the VM sends.
    policy = api.cli("network", "qos", "policy", "create", "e2e-slow")
    api.cli("network", "qos", "rule", "create", "--type", "bandwidth-limit",
            "--max-kbps", "3000", "--max-burst-kbits", "600", "--egress",
            policy["id"])
    api.cli("port", "set", "--qos-policy", policy["id"], port["id"],
            "--no-format")

    def shaped():
        s = shaping_from_vm(dv_port(vsphere, details).config.setting)
        return s if s.enabled and s.enabled.value else None

    shape, took = eventually(shaped)
    timings.append(("qos policy set: shaping on the DV port after", took))
    assert shape is not None, "no shaping on the DV port"
    assert shape.averageBandwidth.value == 3000 * 1000      # bit/s
    assert shape.peakBandwidth.value == 3000 * 1000
    assert shape.burstSize.value == 600 * 1000 // 8         # bytes
    setting = dv_port(vsphere, details).config.setting
    to_vm = setting.outShapingPolicy if FROM_VM == "incomingPackets" \
        else setting.inShapingPolicy
    assert not to_vm.enabled.value                          # no ingress rule

    # A rule type a DV port cannot enforce: refused, naming rule and port.
    proc = api.cli("network", "qos", "rule", "create", "--type",
                   "dscp-marking", "--dscp-mark", "26", policy["id"],
                   check=False)
    assert proc.returncode != 0
    assert "409" in proc.stderr, proc.stderr
    assert f"Rule dscp_marking is not supported by port {port['id']}" in \
        proc.stderr, proc.stderr
    status, body = api.http("GET", f"/v2.0/qos/policies/{policy['id']}")
    assert [r["type"] for r in body["policy"]["rules"]] == ["bandwidth_limit"]

    # Delete: the DV port is released, its settings the port group's again.
    api.cli("port", "delete", port["id"], "--no-format")

    def released():
        p = dv_port(vsphere, details)
        return p.config.name == "free" and rules(p) is None and \
            p.config.setting.securityPolicy.inherited and \
            p.config.setting.inShapingPolicy.inherited

    free, took = eventually(released)
    timings.append(("port delete: DV port released after", took))
    assert free, dv_port(vsphere, details).config.name
    api.cli("network", "qos", "policy", "delete", policy["id"], "--no-format")
    api.cli("security", "group", "delete", sg["id"], "--no-format")
    api.cli("network", "delete", net["id"], "--no-format")


def test_nova_attaches_to_the_reserved_port(api, vsphere, vcsim, server,
                                            timings):
    net = vlan_network(api, "e2e-ports-nova", 161, "10.61.0.0/24")
    sg = api.cli("security", "group", "create", "e2e-ssh")
    api.cli("security", "group", "rule", "create", "--ingress", "--protocol",
            "tcp", "--dst-port", "22", "--remote-ip", "192.0.2.0/24",
            sg["id"])
    port = api.cli("port", "create", "--network", net["id"], "--host", HOST,
                   "--security-group", sg["id"], "e2e-ports-nova-p1")
    details = port["binding_vif_details"]
    assert port["status"] == "DOWN"
    vcenter = nova_client.vcenter_from_url(vcsim.url)

    # Nova gets the port as Neutron's API returns it (binding:vif_details
    # with dvs_port_key) and attaches with its own vmwareapi code.
    t0 = time.monotonic()
    result = nova_client.attach(vcenter, CLUSTER, VM,
                                port_json(api, port["id"]),
                                api.cli("network", "show", net["id"]))
    timings.append(("Nova attach (its own process, login included)",
                    time.monotonic() - t0))
    assert result["network_ref"]["dvs_port_key"] == details["dvs_port_key"]
    nic = result["nic"]
    assert (nic["switchUuid"], nic["portgroupKey"], nic["portKey"]) == \
        (details["dvs_id"], details["pg_id"], details["dvs_port_key"])

    # Read back here too: the NIC on exactly that DV port, and the DV port
    # connected to that VM, with the filter Neutron's rules make.
    vm = vsphere.vm(VM)
    (dev,) = [d for d in vm.config.hardware.device
              if isinstance(d, vim.vm.device.VirtualEthernetCard)
              and d.macAddress == port["mac_address"]]
    assert dev.backing.port.portKey == details["dvs_port_key"]
    dvp = dv_port(vsphere, details)
    assert dvp.config.name == port["id"]
    assert dvp.connectee is not None and dvp.connectee.connectedEntity \
        ._moId == vm._moId
    assert dvp.connectee.nicKey == str(dev.key)
    ssh = [r for r in rules(dvp) if r["direction"] == TO_VM
           and r["protocol"] == 6 and r["dports"] == (22, 22)]
    assert [(r["action"], r["source"]) for r in ssh] == \
        [("accept", "192.0.2.0/24")]

    # ACTIVE within seconds: the maintenance worker, told by its replica
    # that a NIC came, sets it (not the API process).
    active, took = eventually(
        lambda: port_json(api, port["id"])["status"] == "ACTIVE")
    timings.append(("ACTIVE after the attach", took))
    assert active, port_json(api, port["id"])["status"]
    with open(server.periodic_log, encoding="utf-8", errors="replace") as f:
        assert f"port {port['id']} is ACTIVE: a VM NIC is connected to its " \
               f"DV port" in f.read()

    # A rule added while the VM runs reaches its (connected) DV port.
    api.cli("security", "group", "rule", "create", "--ingress", "--protocol",
            "tcp", "--dst-port", "443", sg["id"])
    found, took = eventually(lambda: [
        r for r in rules(dv_port(vsphere, details)) if r["direction"] == TO_VM
        and r["protocol"] == 6 and r["dports"] == (443, 443)])
    timings.append(("rule on the connected DV port after", took))
    assert found
    assert dv_port(vsphere, details).connectee is not None

    # Nova's own detach: the NIC is gone, the port DOWN within seconds.
    t0 = time.monotonic()
    out = nova_client.detach(vcenter, CLUSTER, VM, port)
    timings.append(("Nova detach", time.monotonic() - t0))
    assert port["mac_address"] not in out["vm_nics"]["mac_addresses"]
    assert dv_port(vsphere, details).connectee is None
    down, took = eventually(
        lambda: port_json(api, port["id"])["status"] == "DOWN")
    timings.append(("DOWN after the detach", took))
    assert down, port_json(api, port["id"])["status"]
    # Still reserved for the port, with its policy.
    dvp = dv_port(vsphere, details)
    assert dvp.config.name == port["id"] and rules(dvp)

    api.cli("port", "delete", port["id"], "--no-format")
    api.cli("security", "group", "delete", sg["id"], "--no-format")
    api.cli("network", "delete", net["id"], "--no-format")


def test_trunk_through_the_cli_and_nova(api, vsphere, vcsim):
    """``network trunk create`` with two subports (one ``inherit``), the
    parent bound to a vSphere compute host: its DV port carries the three
    VLANs, Nova's own code attaches the parent to it, the trunk turns
    ACTIVE and its subports follow the NIC; a subport vSphere cannot carry
    and a trunk on a standard vSwitch are refused with the reason."""
    nets = {vlan: vlan_network(api, f"e2e-trunk-{vlan}", vlan,
                               f"10.{vlan - 100}.0.0/24")
            for vlan in (171, 172, 173)}
    parent = api.cli("port", "create", "--network", nets[171]["id"],
                     "e2e-trunk-parent")
    subs = {vlan: api.cli("port", "create", "--network", nets[vlan]["id"],
                          f"e2e-trunk-sub-{vlan}") for vlan in (172, 173)}
    trunk = api.cli("network", "trunk", "create", "--parent-port",
                    parent["id"], "--subport",
                    f"port={subs[172]['id']},segmentation-type=vlan,"
                    f"segmentation-id=172", "--subport",
                    f"port={subs[173]['id']},segmentation-type=inherit",
                    "e2e-trunk")
    vcenter = nova_client.vcenter_from_url(vcsim.url)
    std_net = parent_std = None
    try:
        # vSphere cannot translate VLAN IDs: 999 for a VLAN-174 network.
        odd = vlan_network(api, "e2e-trunk-174", 174, "10.74.0.0/24")
        nets[174] = odd
        odd_port = api.cli("port", "create", "--network", odd["id"],
                           "e2e-trunk-odd")
        refused = api.cli("network", "trunk", "set", "--subport",
                          f"port={odd_port['id']},segmentation-type=vlan,"
                          f"segmentation-id=999", trunk["id"],
                          "--no-format", check=False)
        assert refused.returncode != 0
        assert "999" in refused.stderr and "174" in refused.stderr, \
            refused.stderr

        # Nova binds the parent on its host, then attaches it.
        bound = api.cli("port", "set", "--host", HOST, parent["id"],
                        "--no-format")
        assert bound is None
        parent = port_json(api, parent["id"])
        details = parent["binding:vif_details"]
        assert parent["binding:vif_type"] == "dvs"

        def vlans():
            return vsphere.dv_port_vlan("DVS0", details["dvs_port_key"])

        carried, _ = eventually(
            lambda: vlans() == (("trunk", [(171, 173)]), False))
        assert carried, vlans()
        result = nova_client.attach(vcenter, CLUSTER, VM, parent,
                                    api.cli("network", "show",
                                            nets[171]["id"]))
        nic = result["nic"]
        assert (nic["portgroupKey"], nic["portKey"]) == \
            (details["pg_id"], details["dvs_port_key"])
        assert dv_port(vsphere, details).connectee is not None
        assert vlans() == (("trunk", [(171, 173)]), False)

        active, _ = eventually(lambda: api.cli(
            "network", "trunk", "show", trunk["id"])["status"] == "ACTIVE")
        assert active, api.cli("network", "trunk", "show", trunk["id"])
        for sub in subs.values():
            shown, _ = eventually(lambda: port_json(api, sub["id"])[
                "status"] == "ACTIVE")
            got = port_json(api, sub["id"])
            assert shown, got["status"]
            assert got["binding:host_id"] == HOST
            assert got["device_owner"] == "trunk:subport"

        # A subport removed: its VLAN leaves the DV port.
        api.cli("network", "trunk", "unset", "--subport", subs[173]["id"],
                trunk["id"], "--no-format")
        gone, _ = eventually(
            lambda: vlans() == (("trunk", [(171, 172)]), False))
        assert gone, vlans()

        out = nova_client.detach(vcenter, CLUSTER, VM, parent)
        assert parent["mac_address"] not in out["vm_nics"]["mac_addresses"]

        # A trunk whose parent's network reaches the hosts only through a
        # standard vSwitch cannot be carried.
        std_net = api.cli("network", "create", "--provider-network-type",
                          "vlan", "--provider-physical-network", "physnet2",
                          "--provider-segment", "275", "e2e-trunk-std")
        parent_std = api.cli("port", "create", "--network", std_net["id"],
                             "e2e-trunk-std-parent")
        refused = api.cli("network", "trunk", "create", "--parent-port",
                          parent_std["id"], "e2e-trunk-std", check=False)
        assert refused.returncode != 0
        assert "standard vSwitch" in refused.stderr or "vSwitch1" in \
            refused.stderr, refused.stderr
    finally:
        api.cli("network", "trunk", "delete", trunk["id"], "--no-format")
        for port in api.cli("port", "list"):
            if port["Name"].startswith("e2e-trunk"):
                api.cli("port", "delete", port["ID"], "--no-format")
        for net in list(nets.values()) + [std_net]:
            if net is not None:
                api.cli("network", "delete", net["id"], "--no-format")

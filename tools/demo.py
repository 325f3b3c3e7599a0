#!/usr/bin/env python3
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

"""The networking-vcenter demo: `make demo` (MODE=real for MariaDB + RabbitMQ).

Starts the vCenter simulator and a real Neutron API with the vcenter driver,
then, with the real `openstack` CLI, makes a VLAN network and subnet on a
distributed-switch physnet and one on a standard-vSwitch physnet, binds a port
of each to the Nova compute host, and shows what vSphere holds. The first
port, made without --security-group, is in its project's `default` group:
that group's rules (Neutron's default ones) are shown next to its DV port's
rules as vSphere holds them. Then a port with a security group of its own:
Nova's own VMware code attaches a VM NIC to the DV port reserved for it, the
port's traffic rules are shown as vSphere holds them next to the security
group rules they come from, a rule is added and seen on the
port, and the port turns ACTIVE (DOWN again after Nova detaches the NIC).
Then a trunk with a subport on a second VLAN network: the parent's DV port
holds both VLANs, and the trunk turns ACTIVE.
Then deletes the networks and shows the port groups gone. Everything it
started is stopped, by PID, whatever happens.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import neutron_server  # noqa: E402
from vcsim_launcher import Vcsim  # noqa: E402
from vsphere_reader import Reader, ruleset_rules  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OPENSTACK = os.path.join(os.path.dirname(sys.executable), "openstack")
COMPUTE_HOST = "vc-compute-1"
VM = "DC0_C0_RP0_VM0"               # a VM of cluster DC0_C0 (vc-compute-1)
# Nova 34 in its own venv, and the vSphere WSDL its session needs (both made
# by `make deps`).
NOVA_PYTHON = os.path.join(os.environ.get("NOVA_VENV") or
                           os.path.join(REPO, ".venv-nova"), "bin", "python")
WSDL_DIR = os.path.join(os.environ.get("VCSIM_BUILD_DIR") or
                        os.path.join(REPO, "tools", "vcsim", "build"), "wsdl")
PROTOCOLS = {1: "icmp", 6: "tcp", 17: "udp", 58: "icmpv6"}


def openstack(url: str, *args: str) -> object:
    cmd = [OPENSTACK, "--os-auth-type", "none", "--os-endpoint", url, *args]
    shown = " ".join(["openstack", *args])
    print(f"  $ {shown}")
    fmt = [] if args[1] == "delete" else ["-f", "json"]
    proc = subprocess.run(cmd + fmt, capture_output=True, text=True,
                          timeout=120)
    if proc.returncode:
        raise SystemExit(f"demo: '{shown}' failed:\n{proc.stderr.strip()}")
    return json.loads(proc.stdout) if fmt else None


def traffic_rules(dv_port, mac: str | None = None) -> tuple[list, bool]:
    """(the traffic rules the DV port applies, in their order; whether it
    inherits them).  Inherited from a port group's shared filter
    (``shared_security_filter``): only those that apply to ``mac`` (the
    unqualified ones and those naming it)."""
    fp = dv_port.config.setting.filterPolicy
    if fp is None:
        return [], False
    rules = ruleset_rules(fp) or []
    if fp.inherited and mac is not None:
        rules = [r for r in rules if mac_of(r) in (None, mac.lower())]
    return rules, bool(fp.inherited)


def mac_of(rule) -> str | None:
    """The MAC a rule is qualified by (source or destination), if any."""
    from pyVmomi import vim
    for q in rule.qualifier or ():
        if isinstance(q, vim.dvs.TrafficRule.MacQualifier):
            a = q.sourceAddress or q.destinationAddress
            return getattr(a, "address", None) and a.address.lower()
    return None


def unconfigured_text(default_config) -> str:
    """What a DV port of the group gets until the driver configures it
    (free, released, or taken by a NIC without a key): the group's
    default filter."""
    from pyVmomi import vim
    rules = ruleset_rules(default_config.filterPolicy) or []
    blocked = getattr(default_config.blocked, "value", False)
    if blocked:
        return (f"ports not configured by the driver: blocked (pass "
                f"nothing); its {len(rules)} default rules are the shared "
                f"filter its configured ports inherit")
    if rules and all(isinstance(r.action, vim.dvs.TrafficRule.DropAction)
                     for r in rules):
        return (f"ports not configured by the driver: {len(rules)} rules, "
                f"all drop (IPv4 and IPv6, both ways)")
    return f"ports not configured by the driver: OPEN ({len(rules)} rules)"


def dv_rule_text(rule) -> str:
    """One vSphere traffic rule, one line."""
    from networking_vcenter.reconcile.portsettings import TO_VM
    from pyVmomi import vim

    def addr(a):
        if a is None:
            return "any"
        if isinstance(a, vim.SingleIp):
            return a.address
        return f"{a.addressPrefix}/{a.prefixLength or 0}"

    def port(p):
        if p is None:
            return ""
        if isinstance(p, vim.dvs.TrafficRule.IpPortRange):
            return f":{p.startPortNumber}-{p.endPortNumber}"
        return f":{p.portNumber}"

    q = next((q for q in rule.qualifier or ()
              if isinstance(q, vim.dvs.TrafficRule.IpQualifier)), None)
    mac = mac_of(rule)
    action = type(rule.action).__name__.split(".")[-1].replace("Action", "")
    proto = PROTOCOLS.get(q.protocol.value, q.protocol.value) \
        if q is not None and q.protocol else "any"
    way = "to the VM" if rule.direction == TO_VM else "from the VM"
    return (f"#{rule.sequence} {rule.direction} ({way}) {action.lower()} "
            f"{proto} {addr(q and q.sourceAddress)}"
            f"{port(q and q.sourceIpPort)} -> "
            f"{addr(q and q.destinationAddress)}"
            f"{port(q and q.destinationIpPort)}"
            f"{f' (MAC {mac})' if mac else ''}")


def sg_rule_text(r: dict) -> str:
    ports = "" if r["port_range_min"] is None else \
        f" {r['port_range_min']}" + ("" if r["port_range_max"] ==
                                     r["port_range_min"] else
                                     f"-{r['port_range_max']}")
    group = r.get("remote_group_id")
    remote = r["remote_ip_prefix"] or (
        None if group is None else "group itself"
        if group == r.get("security_group_id") else f"group {group}")
    return (f"{r['direction']} {r['ethertype']} {r['protocol'] or 'any'}"
            f"{ports} remote {remote or 'any'}")


def reply(dv_rule) -> str:
    """The filter is stateless: a rule's replies have rules of their own."""
    return "  (its replies)" if (dv_rule.description or "").endswith(
        "(reply)") else ""


def show_rules(sg: dict, rules: list) -> None:
    """Each security group rule, with the vSphere rules made of it (their
    description names it); then the rules every port gets."""
    for r in sg["rules"]:
        print(f"    Neutron rule {sg_rule_text(r)}")
        made = [dv for dv in rules if r["id"] in (dv.description or "")]
        for dv in made:
            print(f"      vSphere {dv_rule_text(dv)}{reply(dv)}")
        if not made and r.get("remote_group_id"):
            print(f"      (no vSphere rule: the group's ports have no "
                  f"{r['ethertype']} fixed IP or allowed address pair)")
    rest = [dv for dv in rules
            if not any(r["id"] in (dv.description or "") for r in sg["rules"])]
    print(f"    + {len(rest)} rules every port with port security gets (DHCP, "
          f"ICMPv6 neighbour discovery, anti-spoofing, the final drops), "
          f"ending:")
    for dv in rest[-2:]:
        print(f"      vSphere {dv_rule_text(dv)}  ({dv.description})")


def nova(action: str, sim, port: dict, network: dict | None = None) -> dict:
    """tools/nova/attach.py: Nova 34's own VMware code, in Nova's venv."""
    request = {"action": action, "cluster": "DC0_C0", "vm": VM, "port": port,
               "vcenter": {"host": sim.host, "port": sim.port,
                           "username": sim.username,
                           "password": sim.password}}
    if network is not None:
        request["network"] = network
    proc = subprocess.run(
        [NOVA_PYTHON, os.path.join(REPO, "tools", "nova", "attach.py")],
        input=json.dumps(request), capture_output=True, text=True,
        timeout=300)
    if proc.returncode:
        raise RuntimeError(f"Nova's {action} failed:\n{proc.stderr.strip()}")
    return json.loads(proc.stdout)


def status(url: str, port: dict) -> str:
    return api_get(url, f"/v2.0/ports/{port['id']}")["port"]["status"]


def until(fn, timeout: float = 15.0):
    """fn()'s first true value and the seconds it took (None: timed out)."""
    t0 = time.monotonic()
    while True:
        value = fn()
        if value:
            return value, time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            return None, timeout
        time.sleep(0.1)


def default_group_demo(url: str, vsphere: Reader, port: dict) -> bool:
    """The port made without --security-group: its project's `default`
    group, with Neutron's default rules, and its DV port's rules."""
    print(f"A port in its project's default security group ({port['name']}, "
          f"made above without --security-group):")
    sg = openstack(url, "security", "group", "show", "default")
    # (in the same order whatever the database returns)
    sg["rules"].sort(key=lambda r: (r["direction"], r["ethertype"]))
    d = port["binding_vif_details"]
    dv = vsphere.dv_port(d["dvs_id"], d["dvs_port_key"])
    rules, inherited = traffic_rules(dv, port["mac_address"])
    print(f"  Security group {sg['name']} (Neutron's default rules) and DV "
          f"port {dv.key}'s traffic rules (read back from vSphere)"
          + (": inherited from its port group's shared filter, the rules "
             "for every member and those naming its MAC"
             if inherited else ":"))
    show_rules(sg, rules)
    print()
    if port["security_group_ids"] != [sg["id"]] or len(sg["rules"]) != 4:
        print(f"  {port['name']} is in {port['security_group_ids']}; group "
              f"default has {len(sg['rules'])} rule(s), not Neutron's 4")
        return False
    # Every rule is in vSphere, but a remote-group rule of a family the
    # members have no address of (IPv6 here: link-local only).
    wanted = {r["id"] for r in sg["rules"]
              if not r.get("remote_group_id") or r["ethertype"] == "IPv4"}
    made = {r["id"] for r in sg["rules"]
            if any(r["id"] in (dv.description or "") for dv in rules)}
    if not wanted <= made:
        missing = len(wanted - made)
        print(f"  DV port {dv.key}: no vSphere rule for {missing} of the "
              f"group's rules")
        return False
    return True


def port_demo(url: str, sim, vsphere: Reader, net: dict) -> bool:
    """A VM NIC on the DV port reserved for its Neutron port."""
    print(f"A port with a security group of its own, and a VM NIC on its "
          f"own DV port (network {net['name']}):")
    openstack(url, "security", "group", "create", "demo-web")
    openstack(url, "security", "group", "rule", "create", "--ingress",
              "--protocol", "tcp", "--dst-port", "22", "--remote-ip",
              "192.0.2.0/24", "demo-web")
    port = openstack(url, "port", "create", "--network", net["id"], "--host",
                     COMPUTE_HOST, "--security-group", "demo-web", "demo-vm")
    d = port["binding_vif_details"]
    dv = vsphere.dv_port(d["dvs_id"], d["dvs_port_key"])
    print(f"    port demo-vm: status {port['status']}, vif_details "
          f"dvs_port_key={d['dvs_port_key']}: DV port {dv.key} of "
          f"{d['pg_id']}, named {dv.config.name}")
    print(f"  Nova 34's own vmwareapi code attaches a NIC for it to {VM} "
          f"(vif.get_network_ref, vm_util.get_network_attach_config_spec, "
          f"vm_util.reconfigure_vm):")
    attached = nova("attach", sim,
                    api_get(url, f"/v2.0/ports/{port['id']}")["port"],
                    api_get(url, f"/v2.0/networks/{net['id']}")["network"])
    vm, nic = vsphere.nic(VM, port["mac_address"])
    dv = vsphere.dv_port(d["dvs_id"], d["dvs_port_key"])
    owner = dv.connectee.connectedEntity.name if dv.connectee else None
    print(f"    Nova's network_ref: {attached['network_ref']}")
    print(f"    NIC {nic.macAddress} of {vm.name}: backing port "
          f"{nic.backing.port.portKey} of {nic.backing.port.portgroupKey}; "
          f"DV port {dv.key} connected to {owner}")
    if nic.backing.port.portKey != d["dvs_port_key"] or owner != VM:
        print("    NOT ON THE RESERVED DV PORT")
        return False
    active, took = until(lambda: status(url, port) == "ACTIVE")
    shown = openstack(url, "port", "show", "demo-vm")
    print(f"    status {shown['status']} (ACTIVE {took:.1f}s after Nova's "
          f"attach returned: the maintenance worker saw the NIC come)")
    sg = openstack(url, "security", "group", "show", "demo-web")
    print(f"  Security group {sg['name']} and DV port {dv.key}'s traffic "
          f"rules (read back from vSphere):")
    show_rules(sg, traffic_rules(dv)[0])
    print("  A rule added while the VM runs:")
    rule = openstack(url, "security", "group", "rule", "create", "--ingress",
                     "--protocol", "tcp", "--dst-port", "443", "demo-web")
    rule = api_get(url, f"/v2.0/security-group-rules/{rule['id']}")[
        "security_group_rule"]
    new, took = until(lambda: [r for r in traffic_rules(vsphere.dv_port(
        d["dvs_id"], d["dvs_port_key"]))[0]
        if rule["id"] in (r.description or "")])
    print(f"    on DV port {dv.key} {took:.1f}s after the command returned:")
    print(f"    Neutron rule {sg_rule_text(rule)}")
    for r in new or []:
        print(f"      vSphere {dv_rule_text(r)}{reply(r)}")
    print("  Nova's own code detaches the NIC (VMwareVMOps.detach_interface's "
          "calls):")
    nova("detach", sim, port)
    down, took = until(lambda: status(url, port) == "DOWN")
    print(f"    port demo-vm: {status(url, port)} {took:.1f}s after Nova's "
          f"detach returned\n")
    return bool(active and new and down)


def trunk_demo(url: str, vsphere: Reader, net: dict) -> bool:
    """A trunk: the parent's DV port carries its VLAN and the subport's.
    The ports and the second network are made (and removed) through the
    API directly, to keep the demo short: each `openstack` call costs a
    second or two."""
    print("A trunk (VLAN-aware VM): its parent's DV port carries the VLAN "
          "of each network, the guest tags:")
    sub_net = api(url, "POST", "/v2.0/networks", {"network": {
        "name": "demo-trunk-net", "provider:network_type": "vlan",
        "provider:physical_network": "physnet1",
        "provider:segmentation_id": 102}})["network"]
    parent = api(url, "POST", "/v2.0/ports", {"port": {
        "name": "demo-trunk-parent", "network_id": net["id"],
        "binding:host_id": COMPUTE_HOST}})["port"]
    sub = api(url, "POST", "/v2.0/ports", {"port": {
        "name": "demo-trunk-sub", "network_id": sub_net["id"]}})["port"]
    print(f"  (made through the API: network demo-trunk-net, VLAN 102 on "
          f"physnet1; port demo-trunk-parent on {net['name']} (VLAN 101), "
          f"bound to {COMPUTE_HOST}; port demo-trunk-sub on demo-trunk-net)")
    trunk = openstack(url, "network", "trunk", "create", "--parent-port",
                      "demo-trunk-parent", "--subport", "port=demo-trunk-sub,"
                      "segmentation-type=vlan,segmentation-id=102",
                      "demo-trunk")
    d = parent["binding:vif_details"]

    def vlans():
        vlan = vsphere.dv_port(d["dvs_id"], d["dvs_port_key"]
                               ).config.setting.vlan
        ranges = getattr(vlan, "vlanId", None)
        return ",".join(f"{r.start}-{r.end}" if r.start != r.end
                        else str(r.start) for r in ranges) \
            if isinstance(ranges, list) else None

    held, took = until(vlans, 10)
    print(f"    DV port {d['dvs_port_key']} of demo-trunk-parent, read back "
          f"from vSphere: trunk VLANs {held} ({took:.1f}s after the command "
          f"returned)")
    state, took = until(lambda: api_get(url, f"/v2.0/trunks/{trunk['id']}")[
        "trunk"]["status"] == "ACTIVE" and "ACTIVE", 10)
    host = api_get(url, f"/v2.0/ports/{sub['id']}")["port"]["binding:host_id"]
    print(f"    trunk demo-trunk: status {state or 'not ACTIVE'}; subport "
          f"demo-trunk-sub bound to {host or '(nothing)'}\n")
    api(url, "DELETE", f"/v2.0/trunks/{trunk['id']}")
    for port in (parent, sub):
        api(url, "DELETE", f"/v2.0/ports/{port['id']}")
    api(url, "DELETE", f"/v2.0/networks/{sub_net['id']}")
    gone, _ = until(lambda: not port_group_report(vsphere, sub_net["id"],
                                                  "dvs"), 10)
    if not gone:
        print("  demo-trunk-net: its port group is LEFT in vSphere")
    return held == "101-102" and bool(state) and bool(gone)


def api(url: str, method: str, path: str, body: dict | None = None) -> dict:
    """A call to Neutron's API; the answer's JSON ({} when none)."""
    import urllib.error
    import urllib.request
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    req = urllib.request.Request(
        url + path, method=method,
        headers={"Content-Type": "application/json"},
        data=json.dumps(body).encode() if body is not None else None)
    try:
        with opener.open(req, timeout=30) as resp:
            data = resp.read()
    except urllib.error.HTTPError as exc:
        raise RuntimeError(f"{method} {path}: {exc.code} "
                           f"{exc.read().decode(errors='replace')}")
    return json.loads(data) if data else {}


def api_get(url: str, path: str) -> dict:
    """GET from Neutron's API (what Nova reads: ``binding:vif_details``)."""
    return api(url, "GET", path)


def port_group_report(vsphere: Reader, net_id: str, kind: str) -> list[str]:
    if kind == "dvs":
        name = f"neutron-physnet1-{net_id}"
        return [f"distributed port group {name} ({pg['moid']}) on "
                f"{pg['switch']}, VLAN {pg['vlan']}, key {pg['key']}; "
                f"{unconfigured_text(pg['ref'].config.defaultPortConfig)}"
                for pg in vsphere.dv_portgroups(name)]
    return sorted(f"standard port group {net_id} on {vswitch}, VLAN {vlan}, "
                  f"host {host}" for host, (vswitch, vlan)
                  in vsphere.host_portgroups(net_id).items())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("embedded", "real"),
                        default="embedded")
    args = parser.parse_args()
    t0 = time.monotonic()
    workdir = tempfile.mkdtemp(prefix="networking-vcenter-demo-")
    print(f"== networking-vcenter demo ({args.mode} mode)")
    sim = server = vsphere = None
    ok = False
    try:
        if not os.path.isfile(os.path.join(WSDL_DIR, "vimService.wsdl")) \
                or not os.access(NOVA_PYTHON, os.X_OK):
            raise RuntimeError("Nova's venv or the vSphere WSDL is missing: "
                               "run 'make deps'")
        sim = Vcsim(vms=1, wsdl_dir=WSDL_DIR,
                    extra_args=("-extra-vswitch", "vSwitch1"),
                    log_path=os.path.join(workdir, "vcsim.log")).start()
        print(f"vCenter simulator: {sim.url} (pid {sim.pid})")
        server = neutron_server.NeutronServer(
            workdir, args.mode, vcenter_host=sim.host, vcenter_port=sim.port,
            vcenter_user=sim.username, vcenter_password=sim.password,
            switch_mappings="physnet1:DVS0,physnet2:vSwitch1",
            compute_hosts=f"{COMPUTE_HOST}:DC0_C0",
            port=neutron_server.free_port(), quiet=True)
        server.start()
        url = server.url
        print(f"Neutron API: {url} (ML2: openvswitch,vcenter; "
              f"physnet1 -> DVS0, physnet2 -> vSwitch1 on cluster DC0_C0)\n")
        vsphere = Reader(sim.connect())
        made = []
        for physnet, vlan, kind, cidr in (("physnet1", 101, "dvs",
                                           "10.1.0.0/24"),
                                          ("physnet2", 201, "std",
                                           "10.2.0.0/24")):
            name = f"demo-{physnet}"
            net = openstack(url, "network", "create",
                            "--provider-network-type", "vlan",
                            "--provider-physical-network", physnet,
                            "--provider-segment", str(vlan), name)
            openstack(url, "subnet", "create", "--network", net["id"],
                      "--subnet-range", cidr, f"{name}-subnet")
            port = openstack(url, "port", "create", "--network", net["id"],
                             "--host", COMPUTE_HOST, f"{name}-port")
            (listed,) = openstack(url, "network", "segment", "list",
                                  "--network", net["id"])
            seg = openstack(url, "network", "segment", "show", listed["ID"])
            made.append((net, kind, port))
            print(f"\n  Neutron network {net['name']} {net['id']}")
            print(f"    segment {seg['id']}: {seg['network_type']} on "
                  f"{seg['physical_network']}, VLAN {seg['segmentation_id']}")
            print("    vSphere (read back from the simulator):")
            for line in port_group_report(vsphere, net["id"], kind):
                print(f"      {line}")
            print(f"    port {port['name']} on {port['binding_host_id']}: "
                  f"vif_type={port['binding_vif_type']}")
            details = json.dumps(port["binding_vif_details"],
                                 sort_keys=True)
            print(f"      vif_details={details}\n")
        if not default_group_demo(url, vsphere, made[0][2]):
            return 1
        if not port_demo(url, sim, vsphere, made[0][0]):
            return 1
        if not trunk_demo(url, vsphere, made[0][0]):
            return 1
        # The backend's health, without an agent: the maintenance worker's
        # heartbeat (in neutron-periodic-workers).
        rows = [r for r in openstack(url, "network", "agent", "list")
                if r["Binary"] == "networking-vcenter"]
        for row in rows:
            shown = openstack(url, "network", "agent", "show", row["ID"])
            conf = shown["configuration"]
            print(f"\n  agent {row['Agent Type']!r} on {row['Host']}: "
                  f"alive={row['Alive']}")
            print(f"    vcenter={conf['vcenter']} managed: "
                  f"{conf['managed_distributed_port_groups']} distributed, "
                  f"{conf['managed_standard_port_groups']} standard port "
                  f"group(s); last full pass "
                  f"{conf['last_full_pass'].get('time')}: "
                  f"{conf['last_full_pass'].get('result')}\n")
        if not rows:
            print("  no networking-vcenter row in the agent list")
            return 1
        print("Deleting the networks:")
        for net, kind, _ in made:
            for port in openstack(url, "port", "list", "--network",
                                  net["id"]):
                openstack(url, "port", "delete", port["ID"])
            openstack(url, "network", "delete", net["id"])
        for net, kind, _ in made:
            left = port_group_report(vsphere, net["id"], kind)
            print(f"  {net['name']}: " + ("port groups gone from vSphere"
                                          if not left else f"LEFT: {left}"))
            if left:
                return 1
        print(f"\n== demo done in {time.monotonic() - t0:.1f}s")
        ok = True
        return 0
    except (neutron_server.ServerError, RuntimeError) as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 1
    finally:
        if vsphere is not None:
            vsphere.close()
        if server is not None:
            server.stop()
        if sim is not None:
            sim.stop()
        if ok:
            shutil.rmtree(workdir, ignore_errors=True)
            print("(simulator and Neutron stopped)")
        else:
            print(f"(simulator and Neutron stopped; logs kept in {workdir})")


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""The networking-vcenter demo: `make demo` (MODE=real for MariaDB + RabbitMQ).

Starts the vCenter simulator and a real Neutron API with the vcenter driver,
then, with the real `openstack` CLI, makes a VLAN network and subnet on a
distributed-switch physnet and one on a standard-vSwitch physnet, binds a port
of each to the Nova compute host, and shows what vSphere holds. Then deletes the
networks and shows the port groups gone. Everything it started is stopped, by
PID, whatever happens.
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

OPENSTACK = os.path.join(os.path.dirname(sys.executable), "openstack")
COMPUTE_HOST = "vc-compute-1"


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


class VSphere:
    """What vSphere holds, read with plain pyVmomi (not the driver's code)."""

    def __init__(self, si):
        self.si = si
        self.content = si.RetrieveContent()

    def _all(self, vimtype):
        view = self.content.viewManager.CreateContainerView(
            self.content.rootFolder, [vimtype], True)
        try:
            return list(view.view)
        finally:
            view.DestroyView()

    def dv_portgroups(self, name: str) -> list[str]:
        from pyVmomi import vim
        return [f"distributed port group {pg.name} ({pg._moId}) on "
                f"{pg.config.distributedVirtualSwitch.name}, VLAN "
                f"{pg.config.defaultPortConfig.vlan.vlanId}, key {pg.key}"
                for pg in self._all(vim.dvs.DistributedVirtualPortgroup)
                if pg.name == name]

    def host_portgroups(self, name: str) -> list[str]:
        from pyVmomi import vim
        return sorted(f"standard port group {name} on {pg.spec.vswitchName}"
                      f", VLAN {pg.spec.vlanId}, host {h.name}"
                      for h in self._all(vim.HostSystem)
                      for pg in h.config.network.portgroup or []
                      if pg.spec.name == name)

    def close(self) -> None:
        from pyVim.connect import Disconnect
        Disconnect(self.si)


def port_group_report(vsphere: VSphere, net_id: str, kind: str) -> list[str]:
    if kind == "dvs":
        return vsphere.dv_portgroups(f"neutron-physnet1-{net_id}")
    return vsphere.host_portgroups(net_id)


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
        sim = Vcsim(extra_args=("-extra-vswitch", "vSwitch1"),
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
        vsphere = VSphere(sim.connect())
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
            made.append((net, kind))
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
        for net, kind in made:
            for port in openstack(url, "port", "list", "--network",
                                  net["id"]):
                openstack(url, "port", "delete", port["ID"])
            openstack(url, "network", "delete", net["id"])
        for net, kind in made:
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

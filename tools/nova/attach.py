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

"""Attach (or detach) a NIC for a Neutron port to a vSphere VM with Nova's own code.

Run with the Nova venv's python (tools/nova/setup-venv.sh). Nova is not
patched: this script does what Nova's VMware driver does for a port of
binding:vif_type "dvs", with Nova's own functions:

  - the VIF: ``nova.network.model.VIF``/``Network`` built from the Neutron
    port and network dicts exactly as ``nova/network/neutron.py``
    (``_build_vif_model`` / ``_nw_info_build_network``) does; for a dvs port
    the network's ``bridge`` is the Neutron network UUID and the VIF's
    ``details`` are ``binding:vif_details``;
  - ``nova.virt.vmwareapi.session.VMwareAPISession`` logged in to the vCenter;
  - ``vm_util.get_cluster_ref_by_name``;
  - what ``VMwareVMOps.attach_interface`` does: ``vif.get_vif_dict`` (->
    ``vif.get_network_ref``), ``vm_util.get_attach_port_index``,
    ``vm_util.get_network_attach_config_spec``, ``vm_util.reconfigure_vm``.
    The VIF's details are the port's ``binding:vif_details`` as they are, so
    ``dvs_port_key`` (a DV port the mechanism driver reserved) pins the NIC
    to that port (``vif.get_network_ref`` copies it into the network ref,
    ``vm_util._create_vif_spec`` into the backing's ``portKey``);
  - with ``"action": "detach"``, what ``VMwareVMOps.detach_interface`` does:
    ``vm_util.get_vm_detach_port_index`` (the ``nvp.iface-id.N`` extraConfig
    the attach wrote), ``vm_util.get_hardware_devices``,
    ``vif.get_network_device`` (by MAC), ``vm_util.get_network_detach_config_spec``,
    ``vm_util.reconfigure_vm``.

The NIC is then read back with a separate pyVmomi connection (after a
detach: that the VM has no NIC with the port's MAC any more).

Input: a JSON object on stdin, or in the file named as the only argument::

  {"vcenter": {"host": "127.0.0.1", "port": 443, "username": "user",
               "password": "pass"},
   "cluster": "DC0_C0",
   "vm": "DC0_C0_RP0_VM0",           (a VM name, a moref "vm-42", or a uuid)
   "port": {... the Neutron port as the API returns it ...},
   "network": {... the Neutron network as the API returns it ...},
   "vif_model": "e1000",             (optional: Nova's default image vif model)
   "action": "attach"}               (optional: "attach" (default) or "detach";
                                      a detach needs no "network", and of the
                                      port only "id" and "mac_address")

Output (stdout): one JSON object with the network ref Nova resolved and the
NIC backing read back (detach: the port index freed and the VM's NICs left). Exit status 1 with a message on stderr on failure,
2 on bad input.
"""

import json
import logging
import os
import ssl
import sys
import time
import traceback
import warnings


class AttachError(Exception):
    pass


class InputError(Exception):
    pass


def _load_request(argv):
    if len(argv) > 2:
        raise InputError("usage: attach.py [REQUEST.json]  (or the JSON on stdin)")
    try:
        if len(argv) == 2 and argv[1] != "-":
            with open(argv[1]) as f:
                req = json.load(f)
        else:
            req = json.load(sys.stdin)
    except (OSError, ValueError) as e:
        raise InputError("cannot read the request JSON: %s" % e)
    if not isinstance(req, dict):
        raise InputError("the request must be a JSON object")
    action = req.setdefault("action", "attach")
    if action not in ("attach", "detach"):
        raise InputError("action must be 'attach' or 'detach', not %r" % (action,))
    for key in ("vcenter", "cluster", "vm", "port") + (
            ("network",) if action == "attach" else ()):
        if key not in req:
            raise InputError("the request lacks %r" % key)
    vc = req["vcenter"]
    for key in ("host", "username", "password"):
        if key not in vc:
            raise InputError("the request's vcenter lacks %r" % key)
    port = req["port"]
    if action == "detach":
        for key in ("id", "mac_address"):
            if key not in port:
                raise InputError("the port lacks %r" % key)
        return req
    for key in ("id", "mac_address", "network_id", "binding:vif_type"):
        if key not in port:
            raise InputError("the port lacks %r" % key)
    if port["binding:vif_type"] != "dvs":
        raise InputError("binding:vif_type is %r, not 'dvs' (port not bound by "
                         "the vcenter driver?)" % port["binding:vif_type"])
    if "id" not in req["network"]:
        raise InputError("the network lacks 'id'")
    return req


def _setup_nova_conf(vc):
    """Parse an empty Nova configuration and set what the VMware driver reads."""
    import nova.conf

    conf = nova.conf.CONF
    conf([], project="nova", default_config_files=[])
    opts = {
        "host_ip": vc["host"],
        "host_port": int(vc.get("port", 443)),
        "host_username": vc["username"],
        "host_password": vc["password"],
        "insecure": True,
        "api_retry_count": 2,
        "task_poll_interval": 0.1,
        "integration_bridge": None,
        "use_linked_clone": False,
    }
    for name, value in opts.items():
        conf.set_override(name, value, group="vmware")
    return conf


def build_vif(port, network):
    """The VIF Nova builds from a bound Neutron port (nova/network/neutron.py).

    Mirrors ``_nw_info_build_network`` and ``_build_vif_model`` for a port of
    binding:vif_type dvs (no subnets: the VMware driver does not use them
    for attaching).
    """
    from nova.network import constants as nova_net_constants
    from nova.network import model as network_model
    from nova.network.neutron import get_binding_profile

    vif_type = port.get("binding:vif_type")
    network_name = None
    network_mtu = None
    tenant_id = port.get("tenant_id", port.get("project_id"))
    if port["network_id"] == network["id"]:
        network_name = network.get("name")
        tenant_id = network.get("tenant_id", network.get("project_id"))
        network_mtu = network.get("mtu")

    bridge = None
    if vif_type == network_model.VIF_TYPE_DVS:
        # "The name of the DVS port group will contain the neutron network id"
        bridge = port["network_id"]

    # _get_physnet_tunneled_info: from the network's segments (multi-provider)
    # or its provider attributes.
    physnet = network.get("provider:physical_network")
    for segment in network.get("segments") or []:
        if segment.get("provider:physical_network"):
            physnet = segment["provider:physical_network"]
            break
    tunneled = network.get("provider:network_type") in nova_net_constants.L3_NETWORK_TYPES
    net = network_model.Network(
        id=port["network_id"],
        bridge=bridge,
        injected=False,  # CONF.flat_injected default
        label=network_name,
        tenant_id=tenant_id,
        mtu=network_mtu,
        physical_network=physnet,
        tunneled=tunneled,
    )
    net["subnets"] = []

    return network_model.VIF(
        id=port["id"],
        address=port["mac_address"],
        network=net,
        vnic_type=port.get("binding:vnic_type", network_model.VNIC_TYPE_NORMAL),
        type=port.get("binding:vif_type"),
        profile=get_binding_profile(port),
        details=port.get("binding:vif_details"),
        ovs_interfaceid=None,
        devname=("tap" + port["id"])[: network_model.NIC_NAME_LEN],
        active=(port.get("admin_state_up") is False or port.get("status") == "ACTIVE"),
        preserve_on_delete=True,
        delegate_create=True,
    )


def _find_vm_ref(session, vm):
    from oslo_vmware import vim_util as vutil
    from nova.virt.vmwareapi import vm_util

    if vm.startswith("vm-"):
        return vutil.get_moref(vm, "VirtualMachine")
    ref = vm_util._get_vm_ref_from_name(session, vm)
    if ref is None:
        ref = vm_util.search_vm_ref_by_identifier(session, vm)
    if ref is None:
        raise AttachError("no VM named (or with uuid) %r in the vCenter" % vm)
    return ref


def _wsdl_status(host, port):
    """HTTP status of /sdk/vimService.wsdl, or None when unreachable."""
    import requests

    try:
        return requests.get("https://%s:%s/sdk/vimService.wsdl" % (host, port),
                            verify=False, timeout=10).status_code
    except Exception:
        return None


def _login(req, timings):
    """Nova's VMwareAPISession, logged in as nova-compute would be."""
    from nova.virt.vmwareapi import session as vmw_session

    conf = _setup_nova_conf(req["vcenter"])
    t = time.monotonic()
    try:
        session = vmw_session.VMwareAPISession(
            host_ip=conf.vmware.host_ip,
            host_port=conf.vmware.host_port,
            username=conf.vmware.host_username,
            password=conf.vmware.host_password,
            retry_count=conf.vmware.api_retry_count,
            cacert=conf.vmware.ca_file,
            insecure=conf.vmware.insecure,
            pool_size=conf.vmware.connection_pool_size,
        )
    except Exception as e:
        hint = ""
        status = _wsdl_status(conf.vmware.host_ip, conf.vmware.host_port)
        if status is not None and status != 200:
            hint = (" (GET /sdk/vimService.wsdl answers HTTP %s: the server must "
                    "serve the vSphere WSDL; start the simulator with -wsdl-dir "
                    "DIR, DIR made by tools/vcsim/assemble-wsdl.sh)" % status)
        raise AttachError("Nova's VMwareAPISession could not log in to %s:%s: "
                          "%s: %s%s" % (conf.vmware.host_ip, conf.vmware.host_port,
                                        type(e).__name__, e, hint))
    timings["nova_login_s"] = round(time.monotonic() - t, 3)
    return session


def nova_attach(req, timings):
    """Attach with Nova's code; returns the network ref, VM moref, port index etc."""
    from nova.virt.vmwareapi import constants
    from nova.virt.vmwareapi import vif as vmwarevif
    from nova.virt.vmwareapi import vm_util
    from oslo_vmware import vim_util as vutil

    vif = build_vif(req["port"], req["network"])
    session = _login(req, timings)
    try:
        t = time.monotonic()
        cluster_ref = vm_util.get_cluster_ref_by_name(session, req["cluster"])
        if cluster_ref is None:
            clusters = vm_util.get_all_cluster_mors(session)
            if clusters is None:
                raise AttachError(
                    "vm_util.get_cluster_ref_by_name could not list the clusters "
                    "(Nova's warning above has the cause; a simulator without the "
                    "PropertyCollector traversal fix dies on this inventory "
                    "traversal as soon as VMs exist)")
            names = sorted(str(c.propSet[0].val) for c in clusters
                           if getattr(c, "propSet", None))
            raise AttachError("vm_util.get_cluster_ref_by_name found no cluster "
                              "%r; the vCenter has %s" % (req["cluster"], names))
        vm_ref = _find_vm_ref(session, req["vm"])
        timings["nova_lookup_s"] = round(time.monotonic() - t, 3)

        # VMwareVMOps.attach_interface, without the instance/lock/Neutron bits.
        t = time.monotonic()
        vif_model = vm_util.convert_vif_model(
            req.get("vif_model") or constants.DEFAULT_VIF_MODEL)
        vif_info = vmwarevif.get_vif_dict(session, cluster_ref, vif_model, vif)
        network_ref = dict(vif_info["network_ref"])
        timings["nova_network_ref_s"] = round(time.monotonic() - t, 3)
        if network_ref.get("type") == "Network" and \
                network_ref.get("name") != vif_info["network_name"]:
            # vm_util._create_vif_spec backs a standard NIC with
            # deviceName = network['bridge'] (the Neutron network UUID for dvs
            # ports), not with the port group Nova found.
            logging.getLogger("attach.py").warning(
                "Nova resolved the standard port group %r but will back the NIC "
                "with deviceName %r (the network's bridge); the attach fails or "
                "lands elsewhere unless a port group has that name",
                network_ref.get("name"), vif_info["network_name"])

        t = time.monotonic()
        port_index = vm_util.get_attach_port_index(session, vm_ref)
        client_factory = session.vim.client.factory
        spec = vm_util.get_network_attach_config_spec(
            client_factory, vif_info, port_index, vm_util.Limits())
        vm_util.reconfigure_vm(session, vm_ref, spec)
        timings["nova_reconfigure_s"] = round(time.monotonic() - t, 3)
        return {
            "network_ref": network_ref,
            "network_name": vif_info["network_name"],
            "vif_model": vif_info["vif_model"],
            "vm": vutil.get_moref_value(vm_ref),
            "cluster": vutil.get_moref_value(cluster_ref),
            "port_index": port_index,
        }
    finally:
        try:
            session.logout()
        except Exception:  # noqa: S110 - best effort
            pass


def nova_detach(req, timings):
    """Detach with Nova's code (``VMwareVMOps.detach_interface`` without the
    instance lock and the Neutron vnic-index update); returns the VM moref
    and the port index freed."""
    from nova.virt.vmwareapi import vif as vmwarevif
    from nova.virt.vmwareapi import vm_util
    from oslo_vmware import vim_util as vutil

    port = req["port"]
    session = _login(req, timings)
    try:
        t = time.monotonic()
        vm_ref = _find_vm_ref(session, req["vm"])
        timings["nova_lookup_s"] = round(time.monotonic() - t, 3)
        t = time.monotonic()
        port_index = vm_util.get_vm_detach_port_index(session, vm_ref, port["id"])
        if port_index is None:
            raise AttachError("No device with interface-id %s exists on VM %s "
                              "(Nova's check: no nvp.iface-id.N extraConfig "
                              "names it)" % (port["id"], req["vm"]))
        hardware_devices = vm_util.get_hardware_devices(session, vm_ref)
        device = vmwarevif.get_network_device(hardware_devices, port["mac_address"])
        if device is None:
            raise AttachError("No device with MAC address %s exists on VM %s"
                              % (port["mac_address"], req["vm"]))
        client_factory = session.vim.client.factory
        spec = vm_util.get_network_detach_config_spec(client_factory, device,
                                                      port_index)
        vm_util.reconfigure_vm(session, vm_ref, spec)
        timings["nova_reconfigure_s"] = round(time.monotonic() - t, 3)
        return {"vm": vutil.get_moref_value(vm_ref), "port_index": port_index,
                "device_key": device.key}
    finally:
        try:
            session.logout()
        except Exception:  # noqa: S110 - best effort
            pass


def read_back_detached(vc, vm_moref, mac):
    """After a detach: the VM's NICs, read with a separate pyVmomi
    connection; none may have this MAC."""
    from pyVim.connect import Disconnect, SmartConnect
    from pyVmomi import vim

    si = SmartConnect(host=vc["host"], port=int(vc.get("port", 443)),
                      user=vc["username"], pwd=vc["password"],
                      sslContext=ssl._create_unverified_context())
    try:
        vm = vim.VirtualMachine(vm_moref, si._stub)
        macs = [d.macAddress for d in vm.config.hardware.device
                if isinstance(d, vim.vm.device.VirtualEthernetCard)]
        if any((m or "").lower() == mac.lower() for m in macs):
            raise AttachError("VM %s still has a NIC with MAC %s after the "
                              "detach" % (vm_moref, mac))
        return {"vm": vm_moref, "vm_name": vm.name, "nic_count": len(macs),
                "mac_addresses": macs}
    finally:
        Disconnect(si)


def read_back(vc, vm_moref, mac):
    """Read the VM's NIC with this MAC with a separate pyVmomi connection."""
    from pyVim.connect import Disconnect, SmartConnect
    from pyVmomi import vim

    si = SmartConnect(host=vc["host"], port=int(vc.get("port", 443)),
                      user=vc["username"], pwd=vc["password"],
                      sslContext=ssl._create_unverified_context())
    try:
        vm = vim.VirtualMachine(vm_moref, si._stub)
        nics = [d for d in vm.config.hardware.device
                if isinstance(d, vim.vm.device.VirtualEthernetCard)]
        nic = next((d for d in nics if (d.macAddress or "").lower() == mac.lower()), None)
        if nic is None:
            raise AttachError("VM %s has no NIC with MAC %s after the reconfigure "
                              "(NICs: %s)" % (vm_moref, mac,
                                              [d.macAddress for d in nics]))
        b = nic.backing
        out = {
            "vm": vm_moref,
            "vm_name": vm.name,
            "device_key": nic.key,
            "device_type": type(nic).__name__.split(".")[-1],
            "mac_address": nic.macAddress,
            "connected": bool(nic.connectable and nic.connectable.connected),
            "backing_type": type(b).__name__,
            "nic_count": len(nics),
        }
        if isinstance(b, vim.vm.device.VirtualEthernetCard.DistributedVirtualPortBackingInfo):
            out["switchUuid"] = b.port.switchUuid
            out["portgroupKey"] = b.port.portgroupKey
            out["portKey"] = b.port.portKey
            # The port group's name, for the reader: find it among the VM's networks.
            for net in vm.network:
                if isinstance(net, vim.dvs.DistributedVirtualPortgroup) and \
                        net.key == b.port.portgroupKey:
                    out["portgroupName"] = net.name
                    out["portgroup"] = net._moId
        elif isinstance(b, vim.vm.device.VirtualEthernetCard.NetworkBackingInfo):
            out["deviceName"] = b.deviceName
            if b.network is not None:
                out["network"] = b.network._moId
                out["network_name"] = b.network.name
            else:
                out["network"] = None
        elif isinstance(b, vim.vm.device.VirtualEthernetCard.OpaqueNetworkBackingInfo):
            out["opaqueNetworkId"] = b.opaqueNetworkId
            out["opaqueNetworkType"] = b.opaqueNetworkType
        out["extraConfig"] = {o.key: o.value for o in (vm.config.extraConfig or [])
                              if o.key.startswith("nvp.iface-id.")}
        return out
    finally:
        Disconnect(si)


def main(argv):
    # Noise that says nothing about the attach: unverified TLS to the
    # (simulated) vCenter and eventlet's deprecation notice at Nova's import.
    warnings.filterwarnings("ignore", message="Unverified HTTPS request")
    warnings.filterwarnings("ignore", message=r"\s*Eventlet is deprecated")
    # Nova's and oslo.vmware's warnings to stderr; stdout is only the result.
    # ATTACH_DEBUG=1: debug logs and a traceback for every failure.
    debug = os.environ.get("ATTACH_DEBUG", "") not in ("", "0")
    logging.basicConfig(stream=sys.stderr,
                        level=logging.DEBUG if debug else logging.WARNING,
                        format="attach.py: %(levelname)s %(name)s: %(message)s")
    if not debug:
        # oslo.vmware's retry loop logs every failure it re-raises with a
        # full traceback; the failure is reported once below.
        logging.getLogger("oslo.service").setLevel(logging.CRITICAL)
        logging.getLogger("oslo_service").setLevel(logging.CRITICAL)
    try:
        req = _load_request(argv)
    except InputError as e:
        print("attach.py: error: %s" % e, file=sys.stderr)
        return 2

    timings = {}
    start = time.monotonic()
    try:
        t = time.monotonic()
        import nova.conf  # noqa: F401 - registers the options
        import nova.exception
        import nova.virt.vmwareapi.vm_util  # noqa: F401
        from oslo_vmware import exceptions as vexc
        timings["nova_import_s"] = round(time.monotonic() - t, 3)
    except ImportError as e:
        print("attach.py: error: cannot import Nova (%s): run this with the Nova "
              "venv's python (tools/nova/setup-venv.sh)" % e, file=sys.stderr)
        return 1
    expected = (AttachError, nova.exception.NovaException, vexc.VMwareDriverException)
    try:
        if req["action"] == "detach":
            nova = nova_detach(req, timings)
            back = read_back_detached
        else:
            nova = nova_attach(req, timings)
            back = read_back
        t = time.monotonic()
        nic = back(req["vcenter"], nova["vm"], req["port"]["mac_address"])
        timings["readback_s"] = round(time.monotonic() - t, 3)
    except Exception as e:
        if debug or not isinstance(e, expected):
            traceback.print_exc(file=sys.stderr)
        msg = str(e).strip().replace("\n", "; ")
        if not isinstance(e, AttachError):
            msg = "%s: %s" % (type(e).__name__, msg)
        print("attach.py: error: %s" % msg, file=sys.stderr)
        return 1
    timings["total_s"] = round(time.monotonic() - start, 3)

    from importlib.metadata import version
    result = dict(nova)
    result["action"] = req["action"]
    result["nic" if req["action"] == "attach" else "vm_nics"] = nic
    result["nova_version"] = version("nova")
    result["timings"] = timings
    json.dump(result, sys.stdout, indent=2, sort_keys=True, default=str)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

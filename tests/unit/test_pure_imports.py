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

"""The pure modules load without pyVmomi, even indirectly.

desired, plan, portsettings and mtu compute on plain data; their data types
come from ``vsphere.inventory``, which must stay free of pyVmomi (reading
vCenter and converting its objects is ``vsphere.reads``).  Checked in a
fresh interpreter where importing pyVmomi fails.
"""

import os
import subprocess
import sys

import pytest

PURE = ("networking_vcenter.reconcile.desired",
        "networking_vcenter.reconcile.plan",
        "networking_vcenter.reconcile.portsettings",
        "networking_vcenter.reconcile.mtu",
        "networking_vcenter.vsphere.inventory")

# None in sys.modules makes "import pyVmomi" raise ImportError.
PROBE = """
import importlib, sys
sys.modules["pyVmomi"] = None
importlib.import_module(sys.argv[1])
print(sorted(m for m in sys.modules if m.startswith("pyVmomi.")))
"""


def probe(module):
    """Import ``module`` in a new interpreter that has no pyVmomi; this
    tree first on the path."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        filter(None, [root, os.environ.get("PYTHONPATH")])))
    return subprocess.run([sys.executable, "-W", "ignore", "-c", PROBE,
                           module], capture_output=True, text=True,
                          env=env, timeout=120)


@pytest.mark.parametrize("module", PURE)
def test_loads_without_pyvmomi(module):
    done = probe(module)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_probe_sees_an_import_of_pyvmomi():
    # The shim itself works: the module that converts vSphere's objects
    # does not load.
    done = probe("networking_vcenter.vsphere.reads")
    assert done.returncode != 0
    assert "import of pyVmomi halted" in done.stderr, done.stderr

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

"""Fixtures of the simulator tests: one simulator per test module (2
clusters of 3 hosts, 2 VMs each, an extra vSwitch1 and DVS1), a fresh
connection per test, and the model's VMs whose NICs a test moves.
"""

import pytest

from tests.fixtures.vcsim import Vcsim
from tests.simulator.helpers import _vm, _nic, _set_backing


@pytest.fixture(scope="module")
def sim():
    with Vcsim(clusters=2, hosts=3, vms=2,
               extra_args=("-extra-vswitch", "vSwitch1", "-extra-dvs", "DVS1")) as s:
        yield s


@pytest.fixture
def si(sim):
    return sim.connect()


@pytest.fixture
def model_vms(si):
    """The model's VMs of cluster DC0_C0 (DC0_C1 has a host outside DVS0 once
    0006's test added one); their NICs go back to where they were."""
    names = ("DC0_C0_RP0_VM0", "DC0_C0_RP0_VM1")
    before = {name: _nic(_vm(si, name)).backing for name in names}
    yield [_vm(si, name) for name in names]
    for name, backing in before.items():
        backing.port.portKey = None
        _set_backing(_vm(si, name), backing)

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

"""Patch 0010: a VM's config.changeVersion changes with each reconfigure.

Each test reads back through a fresh pyVmomi connection what an earlier call
changed, as a second client (Nova) would.
"""

import re

import pytest
from pyVmomi import vim, vmodl

from tests.simulator.helpers import _wait, _Watch, _as, _vm


def test_vm_change_version_follows_each_reconfigure(sim, si):
    vm = _vm(si, "DC0_C1_RP0_VM1")
    before = vm.config.changeVersion
    # vCenter's form: the UTC time of the change, to the microsecond.
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", before), before
    watch = _Watch(si, si.content.rootFolder,
                   [(vim.VirtualMachine, ["config.changeVersion"])])
    try:
        _wait(vm.ReconfigVM_Task(vim.vm.ConfigSpec(annotation="changed")))
        seen = [p for moid, _, p in watch.changes() if moid == vm._moId]
        assert seen and seen[-1]["config.changeVersion"] > before
        after = seen[-1]["config.changeVersion"]
        # A refused reconfigure changes nothing.
        with pytest.raises(vmodl.fault.InvalidArgument):
            _wait(vm.ReconfigVM_Task(vim.vm.ConfigSpec(guestId="no-such-guest")))
        assert _as(sim.connect(), vm).config.changeVersion == after
    finally:
        watch.close()
        _wait(vm.ReconfigVM_Task(vim.vm.ConfigSpec(annotation="")))

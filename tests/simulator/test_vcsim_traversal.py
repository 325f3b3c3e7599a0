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

"""Patch 0004: the PropertyCollector honours TraversalSpec.type (oslo.vmware's
get_objects).

Each test reads back through a fresh pyVmomi connection what an earlier call
changed, as a second client (Nova) would.
"""

from pyVmomi import vim, vmodl


def _oslo_vmware_recursive_traversal():
    """The traversal of oslo_vmware.vim_util.build_recursive_traversal_spec."""
    TS = vmodl.query.PropertyCollector.TraversalSpec
    SS = vmodl.query.PropertyCollector.SelectionSpec

    def sel(*names):
        return [SS(name=n) for n in names]

    rp_next = sel("rp_to_rp", "rp_to_vm")
    hops = [
        # name, type, path, next
        ("h_to_vm", "HostSystem", "vm", sel("visitFolders")),
        ("dc_to_hf", "Datacenter", "hostFolder", sel("visitFolders")),
        ("dc_to_vmf", "Datacenter", "vmFolder", sel("visitFolders")),
        ("dc_to_netf", "Datacenter", "networkFolder", sel("visitFolders")),
        ("dc_to_df", "Datacenter", "datastoreFolder", sel("visitFolders")),
        ("cr_to_ds", "ComputeResource", "datastore", []),
        ("cr_to_h", "ComputeResource", "host", []),
        ("cr_to_rp", "ComputeResource", "resourcePool", rp_next),
        ("ccr_to_h", "ClusterComputeResource", "host", []),
        ("ccr_to_ds", "ClusterComputeResource", "datastore", []),
        ("ccr_to_rp", "ClusterComputeResource", "resourcePool", rp_next),
        ("rp_to_rp", "ResourcePool", "resourcePool", rp_next),
        ("rp_to_vm", "ResourcePool", "vm", rp_next),
    ]
    select = sel("visitFolders") + [
        TS(name=n, type=getattr(vim, t), path=p, skip=False, selectSet=s) for n, t, p, s in hops]
    return TS(name="visitFolders", type=vim.Folder, path="childEntity", skip=False,
              selectSet=select)


def _get_objects(si, type_):
    pc = si.content.propertyCollector
    spec = vmodl.query.PropertyCollector.FilterSpec(
        objectSet=[vmodl.query.PropertyCollector.ObjectSpec(
            obj=si.content.rootFolder, skip=False, selectSet=[_oslo_vmware_recursive_traversal()])],
        propSet=[vmodl.query.PropertyCollector.PropertySpec(type=type_, pathSet=["name"])])
    result = pc.RetrievePropertiesEx([spec], vmodl.query.PropertyCollector.RetrieveOptions(maxObjects=100))
    return sorted(o.propSet[0].val for o in result.objects)


def test_oslo_vmware_traversal_with_vms(sim, si):
    assert _get_objects(si, vim.VirtualMachine) == [
        "DC0_C0_RP0_VM0", "DC0_C0_RP0_VM1", "DC0_C1_RP0_VM0", "DC0_C1_RP0_VM1"]
    assert _get_objects(si, vim.ClusterComputeResource) == ["DC0_C0", "DC0_C1"]
    assert len(_get_objects(si, vim.HostSystem)) == 6
    assert "DVS0" in _get_objects(si, vim.DistributedVirtualSwitch)
    assert sim.proc.poll() is None, "the simulator is still alive"
    assert sim.connect().CurrentTime()

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

"""Simulator patch 0012: RetrievePropertiesEx honours ``maxObjects`` (a
token, ContinueRetrievePropertiesEx, CancelRetrievePropertiesEx) and
WaitForUpdatesEx ``maxObjectUpdates`` (``truncated``, the rest on the next
call), as vCenter does.  The stock simulator answers everything at once.
"""

import pytest
from pyVmomi import vim, vmodl

PC = vmodl.query.PropertyCollector

# The package's simulator (conftest.py): 2 clusters of 3 hosts, 2 VMs each.


def _spec(si, types):
    view = si.content.viewManager.CreateContainerView(
        si.content.rootFolder, types, True)
    return view, PC.FilterSpec(
        objectSet=[PC.ObjectSpec(obj=view, skip=True, selectSet=[
            PC.TraversalSpec(name="view", path="view", skip=False,
                             type=vim.view.ContainerView)])],
        propSet=[PC.PropertySpec(type=t, pathSet=["name"]) for t in types])


TYPES = [vim.HostSystem, vim.Network, vim.VirtualMachine]


def _names(objects):
    return sorted((o.obj._moId, o.propSet[0].val) for o in objects)


def test_retrieve_pages_with_a_token(si):
    pc = si.content.propertyCollector
    view, spec = _spec(si, TYPES)
    whole = pc.RetrievePropertiesEx([spec], PC.RetrieveOptions())
    assert whole.token is None
    assert len(whole.objects) > 10

    res = pc.RetrievePropertiesEx([spec], PC.RetrieveOptions(maxObjects=3))
    pages = [res]
    while res.token:
        res = pc.ContinueRetrievePropertiesEx(res.token)
        pages.append(res)
    assert [len(p.objects) for p in pages[:-1]] == [3] * (len(pages) - 1)
    assert 1 <= len(pages[-1].objects) <= 3
    assert len(pages) == -(-len(whole.objects) // 3)
    assert _names(o for p in pages for o in p.objects) == \
        _names(whole.objects)
    view.DestroyView()


def test_token_good_once_and_cancelled(si):
    pc = si.content.propertyCollector
    view, spec = _spec(si, TYPES)
    first = pc.RetrievePropertiesEx([spec], PC.RetrieveOptions(maxObjects=2))
    assert first.token
    pc.ContinueRetrievePropertiesEx(first.token)
    with pytest.raises(vmodl.fault.InvalidArgument):
        pc.ContinueRetrievePropertiesEx(first.token)

    other = pc.RetrievePropertiesEx([spec], PC.RetrieveOptions(maxObjects=2))
    pc.CancelRetrievePropertiesEx(other.token)
    with pytest.raises(vmodl.fault.InvalidArgument):
        pc.ContinueRetrievePropertiesEx(other.token)
    view.DestroyView()


def test_wait_for_updates_truncates(si):
    pc = si.content.propertyCollector.CreatePropertyCollector()
    view, spec = _spec(si, TYPES)
    whole = si.content.propertyCollector.RetrievePropertiesEx(
        [spec], PC.RetrieveOptions()).objects
    pc.CreateFilter(spec, partialUpdates=False)
    version, parts, seen = "", [], []
    while True:
        update = pc.WaitForUpdatesEx(version, PC.WaitOptions(
            maxWaitSeconds=0, maxObjectUpdates=4))
        assert update is not None
        version = update.version
        n = sum(len(fs.objectSet) for fs in update.filterSet)
        parts.append((n, bool(update.truncated)))
        seen += [ou.obj._moId for fs in update.filterSet
                 for ou in fs.objectSet]
        if not update.truncated:
            break
    assert all(n == 4 and t for n, t in parts[:-1]), parts
    assert parts[-1][0] <= 4 and len(parts) > 2, parts
    assert sorted(seen) == sorted(o.obj._moId for o in whole)
    # Nothing left: the next calculation is empty.
    assert pc.WaitForUpdatesEx(version, PC.WaitOptions(
        maxWaitSeconds=0, maxObjectUpdates=4)) is None
    pc.DestroyPropertyCollector()
    view.DestroyView()

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

"""pyVmomi faults -> typed errors, and the retry policy, on plain data."""

from __future__ import annotations

import http.client
import socket
import time

import pytest
from pyVmomi import vim, vmodl

from networking_vcenter import exceptions
from networking_vcenter.vsphere import session as session_mod


@pytest.mark.parametrize("fault, error", [
    (vmodl.fault.ManagedObjectNotFound(), exceptions.NotFound),
    (vim.fault.NotFound(), exceptions.NotFound),
    (vim.fault.AlreadyExists(name="x"), exceptions.AlreadyExists),
    (vim.fault.DuplicateName(name="x"), exceptions.DuplicateName),
    (vim.fault.ResourceInUse(), exceptions.InUse),
    (vim.fault.NotAuthenticated(), exceptions.NotAuthenticated),
    (vim.fault.ConcurrentAccess(), exceptions.ConcurrentModification),
    (vmodl.query.InvalidCollectorVersion(),
     exceptions.InvalidCollectorVersion),
    (vmodl.fault.HostCommunication(), exceptions.TransientFault),
    (vmodl.fault.HostNotReachable(), exceptions.TransientFault),
    (vmodl.fault.SystemError(reason="busy"), exceptions.TransientFault),
    (vim.fault.TaskInProgress(), exceptions.TransientFault),
    (vim.fault.InvalidLogin(), exceptions.AuthenticationFailed),
    (vim.fault.NoPermission(privilegeId="Network.Assign"),
     exceptions.PermanentFault),
    (vmodl.fault.InvalidArgument(invalidProperty="vlanId"),
     exceptions.PermanentFault),
    (ConnectionResetError(104, "reset"), exceptions.TransientFault),
    (socket.timeout("timed out"), exceptions.TransientFault),
    (http.client.RemoteDisconnected("closed"), exceptions.TransientFault),
])
def test_translate(fault, error):
    exc = session_mod.translate("create port group X on DVS0", fault)
    assert type(exc) is error
    assert str(exc).startswith("create port group X on DVS0: ")


def test_permanent_and_transient_kinds():
    for error in (exceptions.NotFound, exceptions.AlreadyExists,
                  exceptions.DuplicateName, exceptions.InvalidCollectorVersion,
                  exceptions.TaskFailed, exceptions.NotOwned):
        assert issubclass(error, exceptions.PermanentFault)
    for error in (exceptions.ConnectionFailed, exceptions.NotAuthenticated,
                  exceptions.ConcurrentModification, exceptions.OutOfTime,
                  exceptions.TaskTimeout, exceptions.InUse):
        assert issubclass(error, exceptions.TransientFault)


def test_a_tasks_error_is_typed_too():
    what = "destroy port group X"
    assert type(session_mod.translate(what, vim.fault.ResourceInUse(),
                                      task=True)) is exceptions.InUse
    assert type(session_mod.translate(what, vim.fault.DuplicateName(),
                                      task=True)) is exceptions.DuplicateName
    other = session_mod.translate(
        what, vim.fault.DvsFault(faultMessage=[]), task=True)
    assert type(other) is exceptions.TaskFailed
    assert "DvsFault" in str(other)


def test_only_transient_faults_are_retried():
    retriable = session_mod.retriable
    assert retriable(exceptions.TransientFault("x"))
    assert retriable(exceptions.ConnectionFailed("x"))
    assert retriable(exceptions.NotAuthenticated("x"))
    assert retriable(exceptions.ConcurrentModification("x"))
    for exc in (exceptions.PermanentFault("x"), exceptions.NotFound("x"),
                exceptions.DuplicateName("x"), exceptions.InUse("x"),
                exceptions.OutOfTime("x"), exceptions.TaskTimeout("x"),
                exceptions.AuthenticationFailed("x"), ValueError("bug")):
        assert not retriable(exc)


class Clock:
    """What retry_policy needs of a session: the time left."""

    def __init__(self, budget):
        self.deadline = None if budget is None else time.monotonic() + budget

    def time_left(self):
        return None if self.deadline is None else \
            self.deadline - time.monotonic()


def failing(errors):
    calls = []

    def fn():
        calls.append(time.monotonic())
        raise errors.pop(0) if errors else exceptions.TransientFault("x")

    return fn, calls


def test_retries_then_gives_up_with_backoff():
    fn, calls = failing([])
    policy = session_mod.retry_policy(Clock(None), "read", retries=2)
    with pytest.raises(exceptions.TransientFault):
        policy(fn)
    assert len(calls) == 3
    gaps = [b - a for a, b in zip(calls, calls[1:])]
    assert 0.45 <= gaps[0] < 0.8 and 0.95 <= gaps[1] < 1.4   # 0.5 s, 1 s


def test_never_retries_past_the_deadline():
    fn, calls = failing([])
    policy = session_mod.retry_policy(Clock(1.8), "read", retries=10)
    t0 = time.monotonic()
    with pytest.raises(exceptions.TransientFault):
        policy(fn)
    # Tries at 0 and 0.5 s; the next backoff (1 s) would end at 1.5 s,
    # the one after (2 s) after the deadline: not made, no sleep into it.
    assert len(calls) == 3
    assert time.monotonic() - t0 < 1.8
    assert policy.statistics["stopped_at_deadline"]


def test_permanent_fault_raised_at_once():
    fn, calls = failing([exceptions.DuplicateName("create X", "taken")])
    policy = session_mod.retry_policy(Clock(None), "create X", retries=10)
    with pytest.raises(exceptions.DuplicateName):
        policy(fn)
    assert len(calls) == 1

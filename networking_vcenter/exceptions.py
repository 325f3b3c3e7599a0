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

"""Errors of networking-vcenter.

Each error names the option, network, switch or port group at fault.  Faults from
vSphere are sorted into *transient* (worth retrying: the connection, a busy
vCenter) and *permanent* (retrying cannot help: a bad VLAN, a missing privilege,
a name taken by someone else), because only the first may be retried and only the
second should reach an API user as a refusal.

pyVmomi's faults are translated into the typed errors below once, at the session
boundary (:mod:`networking_vcenter.vsphere.session`); everything else catches
these types and never looks at vCenter's fault text (``fault``), which is kept
for messages only.

::

    VCenterError
     +-- ConfigError
     +-- VSphereFault
          +-- AuthenticationFailed, TLSFailed
          +-- TransientFault           retried by Session.call (not all)
          |    +-- ConnectionFailed
          |    +-- NotAuthenticated      (re-login; raised only if it persists)
          |    +-- ConcurrentModification
          |    +-- OutOfTime             the budget is spent; not retried
          |    +-- TaskTimeout           not retried
          |    +-- InUse                 not retried: the next pass tries again
          +-- PermanentFault           never retried
               +-- NotFound, AlreadyExists, DuplicateName
               +-- InvalidCollectorVersion
               +-- TaskFailed            a task ended in any other fault
               +-- NotOwned              ours to refuse, not vCenter's
"""

from __future__ import annotations

from neutron_lib import exceptions as n_exc
from neutron_lib.exceptions import vlanqinq as qinq_exc
from neutron_lib.exceptions import vlantransparent as vlan_exc


class VCenterError(Exception):
    """Base of every error this package raises."""


class ConfigError(VCenterError):
    """The configuration cannot work; one line per problem found."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__(
            "networking-vcenter configuration is invalid:\n  - "
            + "\n  - ".join(self.problems))


class VSphereFault(VCenterError):
    """A vSphere call failed; ``fault`` is vCenter's own fault text (for
    messages: code decides by the exception's type, never by this text)."""

    transient = False

    def __init__(self, what: str, fault: str = ""):
        self.what = what
        self.fault = fault
        super().__init__(f"{what}: {fault}" if fault else what)


class TransientFault(VSphereFault):
    """Connection lost, timed out or vCenter busy: retrying may help."""

    transient = True


class LockBusy(TransientFault):
    """Another worker holds a lock this work needs (it is doing the same
    work, or other work on the same objects): trying again once it is
    released is expected to succeed."""


class ConnectionFailed(TransientFault):
    """vCenter could not be reached at all."""


class NotAuthenticated(TransientFault):
    """The session is gone (idle expiry, vCenter restart) and logging in
    again did not bring it back.  Re-login is done by the session itself;
    callers see this only when it keeps failing."""


class ConcurrentModification(TransientFault):
    """Someone changed the object at the same time (vSphere's
    ConcurrentAccess): reading it again and retrying may help."""


class OutOfTime(TransientFault):
    """The time budget of the calling API request is spent (see
    ``Session.budget``): the call was not made, or was cut short."""


class AuthenticationFailed(VSphereFault):
    """vCenter refused the credentials (never retried: it locks accounts)."""


class TLSFailed(VSphereFault):
    """The certificate of vCenter could not be verified."""


class PermanentFault(VSphereFault):
    """vCenter refused the request itself; retrying cannot help."""


class NotFound(PermanentFault):
    """The object is not there (vSphere's NotFound, ManagedObjectNotFound)."""


class AlreadyExists(PermanentFault):
    """An object of that name exists there already (vSphere's AlreadyExists,
    e.g. a standard port group on a host)."""


class DuplicateName(PermanentFault):
    """The name is taken in that folder (vSphere's DuplicateName, e.g. a
    distributed port group or a custom attribute definition)."""


class InvalidCollectorVersion(PermanentFault):
    """A property collector was asked for updates since a version it no
    longer knows: the reader must read everything again."""


class TaskFailed(PermanentFault):
    """A vSphere task ended in a fault that has no type of its own here."""


class TaskTimeout(TransientFault):
    """A vSphere task did not finish within task_timeout."""


class InUse(TransientFault):
    """A port group still has VMs attached: its delete is left for later."""


class NotOwned(PermanentFault):
    """A port group of the wanted name exists and was not made by us."""


class PortGroupConflict(n_exc.Conflict):
    """What an API user sees when vCenter cannot hold the network."""

    message = "%(reason)s"


class VlanTransparencyRefused(vlan_exc.VlanTransparencyDriverError):
    """What an API user sees for a VLAN-transparent network vSphere cannot
    carry: ML2's own error (400), saying why."""

    message = ("VLAN-transparent network %(network)s is refused by the "
               "vcenter mechanism driver: %(reason)s")


class VlanQinqRefused(qinq_exc.VlanQinqDriverError):
    """What an API user sees for a QinQ network on a vSphere switch: ML2's
    own error (400), saying why."""

    message = ("QinQ network %(network)s is refused by the vcenter "
               "mechanism driver: %(reason)s")


class MtuTooLarge(n_exc.InvalidInput):
    """What an API user sees when a network's MTU is above a switch's (400,
    as Neutron's own "Requested MTU is too big")."""


class TrunkRefused(n_exc.BadRequest):
    """What an API user sees when a trunk cannot be carried by vSphere."""

    message = "%(reason)s"

"""Errors of networking-vcenter.

Each error names the option, network, switch or port group at fault.  Faults from
vSphere are sorted into *transient* (worth retrying: the connection, a busy
vCenter) and *permanent* (retrying cannot help: a bad VLAN, a missing privilege,
a name taken by someone else), because only the first may be retried and only the
second should reach an API user as a refusal.
"""

from __future__ import annotations

from neutron_lib import exceptions as n_exc


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
    """A vSphere call failed; ``fault`` is vCenter's own fault text."""

    transient = False

    def __init__(self, what: str, fault: str = ""):
        self.what = what
        self.fault = fault
        super().__init__(f"{what}: {fault}" if fault else what)


class TransientFault(VSphereFault):
    """Connection lost, timed out or vCenter busy: retrying may help."""

    transient = True


class ConnectionFailed(TransientFault):
    """vCenter could not be reached at all."""


class AuthenticationFailed(VSphereFault):
    """vCenter refused the credentials (never retried: it locks accounts)."""


class TLSFailed(VSphereFault):
    """The certificate of vCenter could not be verified."""


class PermanentFault(VSphereFault):
    """vCenter refused the request itself; retrying cannot help."""


class TaskFailed(PermanentFault):
    """A vSphere task ended in error."""


class TaskTimeout(TransientFault):
    """A vSphere task did not finish within task_timeout."""


class InUse(TransientFault):
    """A port group still has VMs attached: its delete is left for later."""


class NotOwned(PermanentFault):
    """A port group of the wanted name exists and was not made by us."""


class PortGroupConflict(n_exc.Conflict):
    """What an API user sees when vCenter cannot hold the network."""

    message = "%(reason)s"


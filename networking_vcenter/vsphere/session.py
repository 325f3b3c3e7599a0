"""The vSphere session: login, re-login, retries of transient faults, task waits.

This is the only place that opens connections to vCenter.  Every call of the
package goes through :meth:`Session.call`, which

* logs in lazily, under a lock, and logs in again when vCenter says the session
  is gone (idle expiry, vCenter restart) -- transparently to the caller;
* retries transient faults (connection reset or refused, timeouts, a busy
  vCenter) with exponential backoff, ``api_retry_count`` times at most;
* never retries a permanent fault (bad VLAN, no privilege, a name taken): it is
  raised at once as :class:`~networking_vcenter.exceptions.PermanentFault` with
  vCenter's own fault text;
* caps the calls in flight (``max_parallel_tasks``), because vCenter becomes
  unstable under many parallel tasks.

Tasks are awaited together with one property-collector filter and
``WaitForUpdatesEx`` under one deadline, rather than polled one by one.
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from pyVmomi import SoapStubAdapter, vim, vmodl

from networking_vcenter import conf
from networking_vcenter import exceptions

LOG = logging.getLogger(__name__)

T = TypeVar("T")

# The API version we speak: every vCenter from 6.5 on accepts it, and it has all
# we use (DVS port group specs, custom fields, container views).
API_NAMESPACE = "vim25/6.5"

# vSphere faults after which the same call can succeed a moment later.
TRANSIENT_FAULTS: tuple[type, ...] = (
    vmodl.fault.HostCommunication,
    vmodl.fault.SystemError,
    vim.fault.ConcurrentAccess,
    vim.fault.TaskInProgress,
    vim.fault.HostConnectFault,
    vim.fault.ResourceInUse,
)

# Python-level failures of the transport.  A certificate failure is an
# ssl.SSLError too but never transient: it is sorted out first.
TRANSPORT_ERRORS: tuple[type, ...] = (
    ConnectionError, TimeoutError, socket.timeout, socket.gaierror,
    http.client.HTTPException, ssl.SSLError, OSError,
)


def fault_text(exc: BaseException) -> str:
    """vCenter's own words for a fault, without the SOAP noise."""
    msg = getattr(exc, "msg", None) or getattr(exc, "faultMessage", None)
    if isinstance(msg, list):
        msg = "; ".join(getattr(m, "message", str(m)) for m in msg)
    name = type(exc).__name__
    return f"{name}: {msg}" if msg else name


class Session:
    """A logged-in vSphere API session shared by the threads of one process."""

    def __init__(self, settings: conf.Settings):
        self._settings = settings
        self._lock = threading.RLock()
        self._slots = threading.BoundedSemaphore(settings.max_parallel_tasks)
        self._stub: SoapStubAdapter | None = None
        self._content: vim.ServiceInstanceContent | None = None
        self._generation = 0
        self._local = threading.local()
        self._unreachable_at: float | None = None

    def unreachable_for(self) -> float | None:
        """Seconds since vCenter was last found unreachable; None if it
        answered since.  API hooks use it to leave work to the resync at
        once instead of waiting on a vCenter known to be down."""
        at = self._unreachable_at
        return None if at is None else time.monotonic() - at

    @contextlib.contextmanager
    def budget(self, seconds: float):
        """Bound the retries of every call made in this block by this thread.

        API hooks use it so that a network create never waits on a vCenter
        that is down for longer than configured; once the budget is spent a
        transient fault is raised at once instead of retried.
        """
        previous = getattr(self._local, "deadline", None)
        self._local.deadline = time.monotonic() + seconds
        try:
            yield
        finally:
            self._local.deadline = previous

    def _out_of_time(self, delay: float) -> bool:
        deadline = getattr(self._local, "deadline", None)
        return deadline is not None and time.monotonic() + delay > deadline

    # -- connection --------------------------------------------------------

    @property
    def endpoint(self) -> str:
        return f"{self._settings.host_ip}:{self._settings.host_port}"

    def _ssl_context(self) -> ssl.SSLContext:
        if self._settings.insecure:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            return ctx
        try:
            return ssl.create_default_context(cafile=self._settings.ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise exceptions.ConfigError(
                [f"[{conf.GROUP}] ca_file '{self._settings.ca_file}' cannot be "
                 f"read as a CA bundle: {exc}"])

    def _login(self) -> None:
        """Log in; typed errors, the password never shown.

        One SOAP stub serves the session for its whole life and a re-login
        happens on it: managed-object references read earlier are bound to
        the stub, and must carry the new session cookie too.
        """
        s = self._settings
        if self._stub is None:
            self._stub = SoapStubAdapter(
                host=s.host_ip, port=s.host_port, ns=API_NAMESPACE,
                sslContext=self._ssl_context(),
                httpConnectionTimeout=s.api_timeout,
                poolSize=s.max_parallel_tasks)
        si = vim.ServiceInstance("ServiceInstance", self._stub)
        try:
            content = si.RetrieveContent()
            content.sessionManager.Login(s.host_username, s.host_password)
        except ssl.SSLCertVerificationError as exc:
            raise exceptions.TLSFailed(
                f"TLS verification of vCenter {self.endpoint} failed "
                f"(set [{conf.GROUP}] ca_file, or insecure = true for a lab)",
                str(exc.verify_message or exc))
        except vim.fault.InvalidLogin:
            raise exceptions.AuthenticationFailed(
                f"vCenter {self.endpoint} refused the login of user "
                f"'{s.host_username}' ([{conf.GROUP}] host_username / "
                f"host_password)")
        except TRANSPORT_ERRORS as exc:
            self._unreachable_at = time.monotonic()
            raise exceptions.ConnectionFailed(
                f"vCenter {self.endpoint} ([{conf.GROUP}] host_ip/host_port) "
                f"is unreachable", str(exc) or type(exc).__name__)
        self._content = content
        self._generation += 1
        self._unreachable_at = None
        LOG.info("Logged in to vCenter %s as %s (%s)", self.endpoint,
                 s.host_username, content.about.fullName)

    def connect(self) -> None:
        """Log in now (start-up), raising the typed error on failure."""
        with self._lock:
            if self._content is None:
                self._login()

    @property
    def content(self) -> vim.ServiceInstanceContent:
        self.connect()
        assert self._content is not None
        return self._content

    def _relogin(self, seen_generation: int) -> None:
        # Several threads may see NotAuthenticated at once; only the first
        # logs in again, the others reuse its session.
        with self._lock:
            if self._generation == seen_generation:
                LOG.info("vCenter session at %s expired; logging in again",
                         self.endpoint)
                self._content = None
                self._login()

    def close(self) -> None:
        with self._lock:
            if self._content is not None:
                try:
                    self._content.sessionManager.Logout()
                except Exception:  # noqa: BLE001 - best effort on shutdown
                    pass
            if self._stub is not None:
                self._stub.DropConnections()
            self._content = self._stub = None

    # -- calls -------------------------------------------------------------

    def call(self, what: str, fn: Callable[..., T], *args: Any,
             attempts: int | None = None, **kwargs: Any) -> T:
        """Run one vSphere call with re-login and bounded, typed retries.

        ``what`` says in words what the call does ("create port group X on
        DVS0"); it heads every log line and error about it.  ``fn`` may be a
        bound method of a managed object or any callable doing one API call.
        """
        retries = self._settings.api_retry_count if attempts is None \
            else attempts
        delay = 0.5
        attempt = 0
        while True:
            generation = self._generation
            try:
                with self._slots:
                    self.connect()
                    result = fn(*args, **kwargs)
                self._unreachable_at = None
                return result
            except vim.fault.NotAuthenticated:
                if attempt >= retries:
                    raise exceptions.TransientFault(
                        what, "session expired again after re-login")
                self._relogin(generation)
            except exceptions.VCenterError:
                raise
            except vim.fault.InvalidLogin:
                raise exceptions.AuthenticationFailed(what, "login refused")
            except ssl.SSLCertVerificationError as exc:
                raise exceptions.TLSFailed(what, str(exc))
            except TRANSIENT_FAULTS + TRANSPORT_ERRORS as exc:
                if isinstance(exc, vim.fault.ResourceInUse):
                    raise exceptions.InUse(what, fault_text(exc))
                if attempt >= retries or self._out_of_time(delay):
                    if isinstance(exc, TRANSPORT_ERRORS):
                        self._unreachable_at = time.monotonic()
                    raise exceptions.TransientFault(what, fault_text(exc)
                                                    if isinstance(exc, vmodl.MethodFault)
                                                    else repr(exc))
                LOG.warning("%s: transient fault (%s), retry %d/%d in %.1fs",
                            what, fault_text(exc), attempt + 1, retries, delay)
                # A dead pooled connection is dropped by the stub itself; the
                # retry opens a new one (and NotAuthenticated, if vCenter
                # restarted meanwhile, logs in again).
                time.sleep(delay)
                delay = min(delay * 2, 10.0)
            except vmodl.MethodFault as exc:
                raise exceptions.PermanentFault(what, fault_text(exc))
            attempt += 1

    # -- tasks -------------------------------------------------------------

    def wait_for_tasks(self, tasks: Sequence[vim.Task],
                       what: str) -> list[Any]:
        """Wait for all ``tasks`` under one deadline; return their results.

        One property-collector filter over every task's ``info.state`` and
        ``WaitForUpdatesEx``: one round trip per change rather than a poll per
        task.  A failed task raises TaskFailed with vCenter's fault text; a
        deadline passed raises TaskTimeout.
        """
        if not tasks:
            return []
        deadline = time.monotonic() + self._settings.task_timeout
        return self.call(what, self._wait, list(tasks), deadline, what,
                         attempts=0)

    def _wait(self, tasks: list[vim.Task], deadline: float,
              what: str) -> list[Any]:
        pc = self.content.propertyCollector.CreatePropertyCollector()
        try:
            spec = vmodl.query.PropertyCollector.FilterSpec(
                objectSet=[vmodl.query.PropertyCollector.ObjectSpec(obj=t)
                           for t in tasks],
                propSet=[vmodl.query.PropertyCollector.PropertySpec(
                    type=vim.Task, pathSet=["info.state"])])
            pc.CreateFilter(spec, partialUpdates=False)
            states: dict[str, str] = {}
            version = ""
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise exceptions.TaskTimeout(
                        what, f"not finished after "
                              f"{self._settings.task_timeout}s")
                opts = vmodl.query.PropertyCollector.WaitOptions(
                    maxWaitSeconds=max(1, min(int(remaining), 60)))
                update = pc.WaitForUpdatesEx(version, opts)
                if update is None:
                    continue
                version = update.version
                for fs in update.filterSet:
                    for obj in fs.objectSet:
                        for change in obj.changeSet:
                            states[obj.obj._moId] = change.val
                if all(states.get(t._moId) in ("success", "error")
                       for t in tasks):
                    break
        finally:
            pc.DestroyPropertyCollector()
        results = []
        for task in tasks:
            info = task.info
            if info.state == "error":
                raise exceptions.TaskFailed(what, fault_text(info.error))
            results.append(info.result)
        return results

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

"""The vSphere session: login, re-login, typed faults, retries, deadlines.

This is the only place that opens connections to vCenter and the only place
that looks at pyVmomi's faults.  Every call of the package goes through
:meth:`Session.call` (or :meth:`Session.run_task` / :meth:`Session.host_write`,
which are calls with a concurrency cap), which

* logs in lazily, under a lock, and logs in again when vCenter says the session
  is gone (idle expiry, vCenter restart) -- transparently to the caller;
* translates every pyVmomi fault into the typed errors of
  :mod:`networking_vcenter.exceptions` (:data:`FAULTS`), once: nothing else
  reads fault text;
* retries what is transient (connection reset or refused, timeouts, a busy
  vCenter) by a declared policy (:func:`retry_policy`: ``api_retry_count``
  retries, exponential backoff), and never a permanent fault;
* never runs past the deadline of :meth:`Session.budget`: before each attempt
  the time left is checked, each HTTP request's socket timeout is the smaller
  of ``api_timeout`` and the time left, and a retry whose backoff would end
  after the deadline is not made.

Tasks are awaited together with one property-collector filter and
``WaitForUpdatesEx`` under one deadline, rather than polled one by one: on the
live replica's own collector when one is attached (:meth:`Session.attach`; one
``CreateFilter`` per wait, no collector of its own, and the ports a task wrote
read by the replica before the wait returns), else on a collector made for the
wait (the CLI, or while the replica is not current).  At most
``max_parallel_tasks`` tasks run at once (vCenter becomes unstable under many
parallel tasks); standard port group writes on hosts, which are not vCenter
tasks, have their own cap, ``max_parallel_host_writes``, and run on threads the
session keeps (:meth:`Session.run_parallel`).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import http.client
import io
import socket
import ssl
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol, TypeVar

from oslo_log import log as logging
import tenacity
from pyVmomi import SoapAdapter, SoapStubAdapter, vim, vmodl

from networking_vcenter import conf
from networking_vcenter import exceptions

LOG = logging.getLogger(__name__)

T = TypeVar("T")

# The API version we speak: vSphere 6.7 Update 1 and later accept it, and it
# has all we use (DVS port group specs, custom fields, container views, and
# the per-port MAC management policy, which pyVmomi silently leaves out of
# requests made at an older version).
API_NAMESPACE = "vim25/6.7.1"


def _faults(*names: str) -> tuple[type, ...]:
    """The pyVmomi fault classes of these names that this pyVmomi knows."""
    found = []
    for name in names:
        obj: Any = {"vim": vim, "vmodl": vmodl}[name.split(".")[0]]
        for part in name.split(".")[1:]:
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if obj is not None:
            found.append(obj)
    return tuple(found)


# pyVmomi faults -> our types, first match wins.  Anything else that vCenter
# answers is a PermanentFault (TaskFailed when a task ended in it).
FAULTS: tuple[tuple[tuple[type, ...], type[exceptions.VSphereFault]], ...] = (
    (_faults("vim.fault.InvalidLogin"), exceptions.AuthenticationFailed),
    (_faults("vim.fault.NotAuthenticated"), exceptions.NotAuthenticated),
    (_faults("vmodl.query.InvalidCollectorVersion",
             "vim.fault.InvalidCollectorVersion"),
     exceptions.InvalidCollectorVersion),
    (_faults("vmodl.fault.ManagedObjectNotFound", "vim.fault.NotFound"),
     exceptions.NotFound),
    (_faults("vim.fault.DuplicateName"), exceptions.DuplicateName),
    (_faults("vim.fault.AlreadyExists"), exceptions.AlreadyExists),
    (_faults("vim.fault.ResourceInUse"), exceptions.InUse),
    (_faults("vim.fault.ConcurrentAccess", "vim.fault.ConcurrentModification"),
     exceptions.ConcurrentModification),
    # After these the same call can succeed a moment later.
    (_faults("vmodl.fault.HostCommunication", "vmodl.fault.SystemError",
             "vim.fault.TaskInProgress", "vim.fault.HostConnectFault",
             "vim.fault.Timedout"), exceptions.TransientFault),
)

# Python-level failures of the transport.  A certificate failure is an
# ssl.SSLError too but never transient: it is sorted out first.
TRANSPORT_ERRORS: tuple[type, ...] = (
    ConnectionError, TimeoutError, socket.timeout, socket.gaierror,
    http.client.HTTPException, ssl.SSLError, OSError,
)

# Transient, but retrying the same call at once cannot help: the caller's
# budget is spent, a task overran, VMs still use the port group.
NOT_RETRIED = (exceptions.OutOfTime, exceptions.TaskTimeout, exceptions.InUse)
# Seconds a close waits for a login under way (vCenter not answering).
CLOSE_WAIT = 2.0


def fault_text(exc: BaseException) -> str:
    """vCenter's own words for a fault, without the SOAP noise."""
    msg = getattr(exc, "msg", None) or getattr(exc, "faultMessage", None)
    if isinstance(msg, list):
        msg = "; ".join(getattr(m, "message", str(m)) for m in msg)
    name = type(exc).__name__
    return f"{name}: {msg}" if msg else name


def translate(what: str, exc: BaseException, task: bool = False
              ) -> exceptions.VSphereFault:
    """The typed error for a pyVmomi fault or a transport failure.

    ``task``: the fault is a task's ``info.error``; faults without a type of
    their own then become :class:`TaskFailed`.
    """
    if isinstance(exc, ssl.SSLCertVerificationError):
        return exceptions.TLSFailed(what, str(exc.verify_message or exc))
    if isinstance(exc, TRANSPORT_ERRORS):
        return exceptions.TransientFault(what, str(exc) or type(exc).__name__)
    for faults, error in FAULTS:
        if faults and isinstance(exc, faults):
            return error(what, fault_text(exc))
    if task:
        return exceptions.TaskFailed(what, fault_text(exc))
    return exceptions.PermanentFault(what, fault_text(exc))


def retriable(exc: BaseException) -> bool:
    return isinstance(exc, exceptions.TransientFault) and \
        not isinstance(exc, NOT_RETRIED)


# What a task wrote that must be read before its wait returns: (the switch,
# the keys of the DV ports written).
ReadBack = tuple[Any, frozenset[str]]


class TaskWatcher(Protocol):
    """What waits for tasks on a collector that is watched already (the
    replica, :class:`~networking_vcenter.vsphere.replica.Replica`)."""

    def watch_tasks(self, tasks: Sequence[vim.Task], what: str,
                    deadline: float, read_back: ReadBack | None
                    ) -> dict[str, dict[str, Any]] | None:
        """Each task's {"info.state", "info.error", "info.result"} once all
        ended (and, with ``read_back``, once the watcher holds those ports
        as vCenter shows them after the tasks); None when it cannot watch
        (not current): the session waits on its own collector instead.
        Never past ``deadline`` (TaskTimeout) nor the calling thread's
        budget (OutOfTime); typed errors as :meth:`Session.call`."""

    def refresh_port_keys(self, dvs_moid: str, port_keys: Any) -> None:
        """Read these ports of one switch now, in the caller's thread."""


class _BudgetSpent(Exception):
    """Raised inside pyVmomi when a request would start after the deadline;
    turned into OutOfTime with the call's words by Session.call."""


class _ResponseDeserializer(SoapAdapter.SoapResponseDeserializer):
    """pyVmomi's SOAP response deserializer, whose element deserializer (the
    one that builds the answer's objects, a fault's too) is the one a
    :class:`_TimedStub` was asked to use for the call this thread is making
    (:meth:`Session.parsed_by`); pyVmomi's own for every other call, and
    for any other stub.

    pyVmomi has no hook for this: ``SoapStubAdapter.InvokeMethod`` makes a
    ``SoapResponseDeserializer`` by its module's name, so that name is
    pointed at this subclass (below, once), which changes nothing unless a
    call asks.
    """

    def __init__(self, stub: Any):
        super().__init__(stub)
        make = getattr(stub, "element_deserializer", None)
        deserializer = make() if callable(make) else None
        if deserializer is not None:
            self.deser = deserializer(stub)

    def Deserialize(self, response, resultType, nsMap=None):  # noqa: N802
        # An element deserializer that passes parts of an answer over can
        # name them (``passed_over``: a start pattern and an end tag): they
        # are then cut out of the bytes before expat sees them.
        cut = getattr(self.deser, "passed_over", None)
        if cut is not None and hasattr(response, "read"):
            response = Stripped(response, *cut)
        try:
            return super().Deserialize(response, resultType, nsMap)
        finally:
            # pyVmomi leaves this object, its expat parser and the parser's
            # handlers (bound methods of this object) in a reference cycle
            # that holds the whole answer (``self.deser.result``): freed
            # only by a full garbage collection, rare in a big heap, so the
            # pages of a full read all stayed in memory until one.
            self.__dict__.pop("parser", None)
            self.deser.result = None


class Stripped:
    """A response body read with parts cut out: from the end of each match
    of ``start`` (a compiled bytes pattern that matches at most ``longest``
    bytes) to the next ``end`` (bytes, kept), as a file expat's
    ``ParseFile`` reads.

    ``FetchDVPorts`` answers each port's inherited filter in full: a shared
    filter's thousands of rules, ~520 bytes each, for every port.  An element
    deserializer passes them over (``ports._OwnFiltersOnly``), but expat
    still tokenises each byte and calls back at each end tag (~28 us a
    rule); cut here, by ``re`` and ``bytes.find`` over 1 MiB blocks, they
    cost next to nothing and what is left parses as before.  What the
    pattern does not match (another spelling of the same XML) is left for
    the element deserializer to pass over, as before: correct, only slower.
    """

    BLOCK = 1 << 20

    def __init__(self, raw: Any, start: Any, end: bytes, longest: int):
        self._raw = raw
        self._start, self._end, self._longest = start, end, longest
        self._out = bytearray()
        self._held = b""            # bytes not yet decided on
        self._cutting = False
        self._eof = False
        self.cut = 0                # bytes cut so far

    def read(self, n: int = -1) -> bytes:
        while not self._eof and (n < 0 or len(self._out) < n):
            self._fill()
        if n < 0:
            n = len(self._out)
        taken = bytes(self._out[:n])
        del self._out[:n]
        return taken

    def _fill(self) -> None:
        block = self._raw.read(self.BLOCK)
        if not block:
            self._eof = True
            self._out += self._held     # a cut never closed: expat says so
            self._held = b""
            return
        data = self._held + block
        pos = 0
        while True:
            if self._cutting:
                i = data.find(self._end, pos)
                if i < 0:
                    keep = max(pos, len(data) - len(self._end) + 1)
                    self.cut += keep - pos
                    self._held = data[keep:]
                    return
                self.cut += i - pos
                pos, self._cutting = i, False
            m = self._start.search(data, pos)
            if m is None:
                # A match may begin in the last ``longest`` bytes.
                keep = max(pos, len(data) - self._longest)
                self._out += data[pos:keep]
                self._held = data[keep:]
                return
            self._out += data[pos:m.end()]
            pos, self._cutting = m.end(), True


if not issubclass(SoapAdapter.SoapResponseDeserializer,
                  _ResponseDeserializer):
    SoapAdapter.SoapResponseDeserializer = _ResponseDeserializer


# -- serialising the same traffic rules again, for free ----------------------
#
# A port group's shared filter holds thousands of ``vim.dvs.TrafficRule``
# objects, and each write sends all of them although nearly all were in the
# previous write too -- but for their sequence, which is their position, and
# shifts for every rule after one inserted.  ``ports.rule_spec`` builds each
# rule once (a template, :func:`immutable_rule`) and hands out copies of it
# at each sequence (:func:`rule_at`); pyVmomi would serialise every copy
# again each time (~0.23 ms a rule).  Here a declared rule's XML text is
# made once per template and serialisation context, around its sequence,
# and reused: the text written is the one pyVmomi writes for that object,
# byte for byte.

_TRAFFIC_RULE = vim.dvs.TrafficRule

# rule object -> {serialisation context: (text before the sequence's value,
# text after it)}, one dict shared by a template and its copies.  Weak keys:
# an entry lives exactly as long as its rule object (held by rule_spec's
# caches or a spec being sent), so the cache is bounded by them, and a dead
# object's entry is gone before its id could be reused (the key is the
# object, not its id: DataObjects hash and compare by identity).
_RULE_TEXTS: "weakref.WeakKeyDictionary[Any, dict[tuple, tuple[str, str]]]" \
    = weakref.WeakKeyDictionary()
# Contexts kept per rule: one in practice (a ruleset's ``rules`` item at the
# session's version); more means something unusual, then keep the latest.
_CONTEXTS_PER_RULE = 4


def immutable_rule(rule: Any) -> Any:
    """Declare a ``vim.dvs.TrafficRule`` (and all it holds) never changed
    again, so that requests may reuse its serialised text; returns it.

    Only for objects nobody mutates after this call (``ports.rule_spec``'s,
    which are shared by every spec that holds the rule).  Other objects, and
    rules not declared, are serialised by pyVmomi every time.
    """
    if type(rule) is not _TRAFFIC_RULE:
        raise TypeError(f"not a vim.dvs.TrafficRule: {type(rule).__name__}")
    _RULE_TEXTS.setdefault(rule, {})
    return rule


def rule_at(template: Any, sequence: int) -> Any:
    """A copy of a rule declared :func:`immutable_rule` at ``sequence``:
    it shares everything else the template holds, and is declared
    immutable with it, so that its text is the template's cached text
    around its own sequence."""
    texts = _RULE_TEXTS.get(template)
    if texts is None:
        raise ValueError("rule_at: the template is not an immutable_rule")
    # copy.copy(template), four times as fast (no __reduce_ex__).
    rule = _TRAFFIC_RULE.__new__(_TRAFFIC_RULE)
    rule.__dict__.update(template.__dict__)
    rule.sequence = sequence
    _RULE_TEXTS[rule] = texts
    return rule


class _RuleCachingSerializer(SoapAdapter.SoapSerializer):
    """pyVmomi's SoapSerializer, except that a traffic rule declared
    :func:`immutable_rule` is written from its cached text.

    The text of a data object depends on the object, the field it is written
    as (name, type, flags, version), the attributes and default namespace
    handed down by the parent (``attr``, ``currDefNS``) and the serializer's
    own state (version, namespace map, xsi/xsd prefixes): all of them are in
    the key, so a rule written in another context is serialised afresh.
    The sequence is the one value written from the object itself: pyVmomi
    writes an int as ``str(value)``, between the ``<sequence>`` tags (the
    only ``<sequence`` in a rule's text: every string is escaped).
    """

    def __init__(self, writer: Any, version: str, nsMap: dict[str, str]):
        super().__init__(writer, version, nsMap)
        self._context = (version, frozenset(self.nsMap.items()),
                         self.defaultNS, self.xsiPrefix, self.xsdPrefix)

    def _SerializeDataObject(self, val, info, attr, currDefNS):  # noqa: N802
        texts = _RULE_TEXTS.get(val) \
            if type(val) is _TRAFFIC_RULE and not self.outermostAttrs \
            else None
        sequence = val.sequence if texts is not None else None
        if type(sequence) is not int:
            super()._SerializeDataObject(val, info, attr, currDefNS)
            return
        key = (info.name, info.type, info.flags, info.version, attr,
               currDefNS, self._context)
        around = texts.get(key)
        if around is None:
            writer, self.writer = self.writer, io.StringIO()
            try:
                super()._SerializeDataObject(val, info, attr, currDefNS)
                text = self.writer.getvalue()
            finally:
                self.writer = writer
            self.writer.write(text)
            start = text.find("<sequence")
            start = text.find(">", start) + 1 if start >= 0 else -1
            end = text.find("</sequence>", start)
            if start <= 0 or text[start:end] != str(sequence):
                return          # not the text expected: never cached
            if len(texts) >= _CONTEXTS_PER_RULE:
                texts.clear()
            texts[key] = (text[:start], text[end:])
            return
        self.writer.write(f"{around[0]}{sequence}{around[1]}")


class _RuleCachingStub(SoapStubAdapter):
    """A SoapStubAdapter whose requests write declared traffic rules from
    their cached text (:class:`_RuleCachingSerializer`); the bytes sent are
    those of pyVmomi's own ``SerializeRequest``."""

    def SerializeRequest(self, mo, info, args):  # noqa: N802
        # pyVmomi's request without its parameters (envelope, headers,
        # request context, ``_this``, method element), then the parameters
        # spliced in before the method's end tag, each serialised as
        # pyVmomi's SoapStubAdapterBase.SerializeRequest does (its
        # ``_SerializeToStr(arg, param, self.version, nsMap)``, with its nsMap)
        # but by our serializer.  Follows pyVmomi 9.1.1.0; if the request's
        # end is not what that version writes, pyVmomi serialises it all.
        request = super().SerializeRequest(mo, info, ())
        if not args:
            return request
        end = (f"</{info.wsdlName}>" + SoapAdapter.SOAP_BODY_END +
               SoapAdapter.SOAP_ENVELOPE_END).encode(SoapAdapter.XML_ENCODING)
        if not request.endswith(end):
            return super().SerializeRequest(mo, info, args)
        ns_map = SoapAdapter.SOAP_NSMAP.copy()
        ns_map[SoapAdapter.GetWsdlNamespace(self.version)] = ""
        writer = io.StringIO()
        for param, arg in zip(info.params, args):
            _RuleCachingSerializer(writer, self.version, ns_map).Serialize(
                arg, param)
        return request[:-len(end)] + \
            writer.getvalue().encode(SoapAdapter.XML_ENCODING) + end


class _TimedStub(_RuleCachingStub):
    """A SoapStubAdapter whose every HTTP request gets its own socket timeout.

    pyVmomi fixes ``httpConnectionTimeout`` when the stub is made; here the
    timeout is asked of ``timeout_of`` (the session: this thread's call
    timeout bounded by its deadline) each time a pooled connection is handed
    to a request, and when a new connection is opened (its TCP connect and
    TLS handshake run under it too).  A connection belongs to one request at
    a time, so this holds under threads.
    """

    def __init__(self, timeout_of: Callable[[], float], **kwargs: Any):
        super().__init__(**kwargs)
        self._timeout_of = timeout_of
        base = self.scheme

        class TimedConnection(base):  # type: ignore[misc, valid-type]
            def __init__(conn, *args: Any, **kw: Any):
                kw["timeout"] = timeout_of()
                super().__init__(*args, **kw)

        self.scheme = TimedConnection
        self._parsing = threading.local()

    def element_deserializer(self) -> type | None:
        """The deserializer this thread's call on the stub asked for
        (:meth:`parsing`); None: pyVmomi's own."""
        return getattr(self._parsing, "deserializer", None)

    @contextlib.contextmanager
    def parsing(self, deserializer: type) -> Iterator[None]:
        """Parse the answers of this thread's calls in the block with
        ``deserializer``, a subclass of pyVmomi's ``SoapDeserializer``."""
        previous = self.element_deserializer()
        self._parsing.deserializer = deserializer
        try:
            yield
        finally:
            self._parsing.deserializer = previous

    def GetConnection(self):  # noqa: N802 - pyVmomi's name
        timeout = self._timeout_of()
        conn = super().GetConnection()
        conn.timeout = timeout
        if conn.sock is not None:
            conn.sock.settimeout(timeout)
        return conn


class _StopAtDeadline(tenacity.stop.stop_base):
    """Stop retrying when the backoff would end after the deadline."""

    def __init__(self, session: "Session"):
        self._session = session

    def __call__(self, retry_state: tenacity.RetryCallState) -> bool:
        left = self._session.time_left()
        stop = left is not None and left <= retry_state.upcoming_sleep
        if stop:
            retry_state.retry_object.statistics["stopped_at_deadline"] = True
        return stop


def retry_policy(session: "Session", what: str, retries: int
                 ) -> tenacity.Retrying:
    """The one retry policy: transient faults only, ``retries`` retries at
    most, exponential backoff (0.5 s, 1 s, 2 s ... 10 s), never past the
    deadline of the calling thread's budget."""
    def log(state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        LOG.warning("%s: transient fault (%s), retry %d/%d in %.1fs", what,
                    getattr(exc, "fault", exc), state.attempt_number, retries,
                    state.upcoming_sleep)

    return tenacity.Retrying(
        retry=tenacity.retry_if_exception(retriable),
        stop=tenacity.stop_after_attempt(retries + 1) | _StopAtDeadline(
            session),
        wait=tenacity.wait_exponential(multiplier=0.5, max=10),
        before_sleep=log, reraise=True)


class Session:
    """A logged-in vSphere API session shared by the threads of one process."""

    def __init__(self, settings: conf.Settings):
        self._settings = settings
        self._lock = threading.RLock()
        self._closed = False
        self._task_slots = threading.BoundedSemaphore(
            settings.max_parallel_tasks)
        self._host_write_slots = threading.BoundedSemaphore(
            self.max_parallel_host_writes)
        self._stub: SoapStubAdapter | None = None
        self._content: vim.ServiceInstanceContent | None = None
        self._generation = 0
        self._local = threading.local()
        self._unreachable_at: float | None = None
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._watcher: TaskWatcher | None = None

    @property
    def generation(self) -> int:
        """How many times this session has logged in: a change means the
        server-side objects of the old login (property collectors, views)
        are gone."""
        return self._generation

    @property
    def max_parallel_host_writes(self) -> int:
        return self._settings.max_parallel_host_writes

    # -- the task watcher ---------------------------------------------------

    def attach(self, watcher: TaskWatcher) -> None:
        """Wait for tasks on ``watcher`` (the running replica) from now on."""
        self._watcher = watcher

    def detach(self, watcher: TaskWatcher) -> None:
        """Wait on collectors of the session's own again (``watcher``
        stops)."""
        if self._watcher is watcher:
            self._watcher = None

    @property
    def watcher(self) -> TaskWatcher | None:
        """The attached task watcher, if any: it reads back the ports
        :meth:`run_task` is told were written."""
        return self._watcher

    def unreachable_for(self) -> float | None:
        """Seconds since vCenter was last found unreachable; None if it
        answered since.  API hooks use it to leave work to the resync at
        once instead of waiting on a vCenter known to be down."""
        at = self._unreachable_at
        return None if at is None else time.monotonic() - at

    # -- deadlines ---------------------------------------------------------

    @contextlib.contextmanager
    def budget(self, seconds: float) -> Iterator[None]:
        """Bound everything this thread does with vCenter in this block.

        API hooks use it so that a network create or a port bind returns
        within ``seconds`` whatever vCenter does: no call starts after the
        deadline (:class:`OutOfTime` is raised instead), each request's
        socket timeout is at most the time left, task waits and retries end
        at the deadline.  Nested budgets never extend an outer one.  Threads
        started in the block do not inherit it: pass :attr:`deadline` to
        :meth:`until` in them.
        """
        deadline = time.monotonic() + seconds
        outer = self.deadline
        with self.until(deadline if outer is None else min(outer, deadline)):
            yield

    @contextlib.contextmanager
    def until(self, deadline: float | None) -> Iterator[None]:
        """Run this block under a deadline (``time.monotonic()`` seconds)
        taken from another thread's :attr:`deadline`; None: no deadline."""
        previous = self.deadline
        self._local.deadline = deadline
        try:
            yield
        finally:
            self._local.deadline = previous

    @property
    def deadline(self) -> float | None:
        """This thread's deadline (``time.monotonic()``), None if unbounded."""
        return getattr(self._local, "deadline", None)

    def time_left(self) -> float | None:
        """Seconds left before this thread's deadline; None if unbounded."""
        deadline = self.deadline
        return None if deadline is None else deadline - time.monotonic()

    def _socket_timeout(self) -> float:
        """Socket timeout of the request this thread is about to send."""
        timeout = getattr(self._local, "timeout", None) or \
            self._settings.api_timeout
        left = self.time_left()
        if left is not None:
            if left <= 0:
                raise _BudgetSpent()
            timeout = min(timeout, left)
        self._local.sent_timeout = timeout
        return timeout

    def _unreachable(self, cause: BaseException | None) -> bool:
        """Whether a failed request says vCenter is unreachable: a transport
        failure -- but not a request timed out only because the budget left
        it less than a second."""
        if not isinstance(cause, TRANSPORT_ERRORS):
            return False
        return not isinstance(cause, TimeoutError) or \
            getattr(self._local, "sent_timeout", 1.0) >= 1.0

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
            self._stub = _TimedStub(
                self._socket_timeout,
                host=s.host_ip, port=s.host_port, ns=API_NAMESPACE,
                sslContext=self._ssl_context(),
                httpConnectionTimeout=s.api_timeout,
                # Idle connections kept: one per task and host write that may
                # run at once, and a few for reads and long polls.
                poolSize=s.max_parallel_tasks +
                self.max_parallel_host_writes + 4)
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
        if self._closed:
            # Closed while this login waited for vCenter: leave no session.
            self._closed = False
            self._logout(content)
            self._stub.DropConnections()
            raise exceptions.ConnectionFailed(
                f"vCenter {self.endpoint}", "the session was closed")
        self._content = content
        self._generation += 1
        self._unreachable_at = None
        LOG.info("Logged in to vCenter %s as %s (%s)", self.endpoint,
                 s.host_username, content.about.fullName)

    def _logout(self, content: Any) -> None:
        """Best effort, and briefly: a stop must not wait for a vCenter
        that does not answer."""
        previous = getattr(self._local, "timeout", None)
        self._local.timeout = min(self._settings.api_timeout, 10)
        try:
            content.sessionManager.Logout()
        except Exception:  # noqa: BLE001 - best effort on shutdown
            pass
        finally:
            self._local.timeout = previous

    def connect(self) -> None:
        """Log in now (start-up), raising the typed error on failure."""
        with self._lock:
            if self._content is None:
                try:
                    self._login()
                except _BudgetSpent:
                    raise exceptions.OutOfTime(
                        f"log in to vCenter {self.endpoint}",
                        "the time budget is spent") from None

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
        # A login under way holds the lock until vCenter answers or
        # api_timeout passes; told so, it logs out itself.
        if not self._lock.acquire(timeout=CLOSE_WAIT):
            self._closed = True
            LOG.debug("vCenter %s: a login is under way; not waiting for it",
                      self.endpoint)
            return
        try:
            if self._content is not None:
                self._logout(self._content)
            if self._stub is not None:
                self._stub.DropConnections()
            self._content = self._stub = None
            pool, self._pool = self._pool, None
        finally:
            self._lock.release()
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)

    # -- calls -------------------------------------------------------------

    def call(self, what: str, fn: Callable[..., T], *args: Any,
             timeout: float | None = None, attempts: int | None = None,
             **kwargs: Any) -> T:
        """Run one vSphere call with re-login, typed faults, bounded retries.

        ``what`` says in words what the call does ("create port group X on
        DVS0"); it heads every log line and error about it.  ``fn`` may be a
        bound method of a managed object or any callable doing one API call.
        ``timeout``: this call's socket timeout instead of ``api_timeout``
        (a long poll needs more), still cut to the time left of
        :meth:`budget`.  ``attempts``: retries instead of ``api_retry_count``.
        Raises only :class:`~networking_vcenter.exceptions.VCenterError`
        subtypes for what vCenter or the network did.
        """
        return self._call(what, fn, args, kwargs, timeout, attempts, None)

    def parsed_by(self, deserializer: type, fn: Callable[..., T]
                  ) -> Callable[..., T]:
        """``fn`` -- one call on a managed object of this session -- with
        its answer parsed by ``deserializer`` (a subclass of pyVmomi's
        ``SoapDeserializer``) instead of pyVmomi's own; for :meth:`call`,
        which still does the re-login, retries, deadline and typed faults::

            session.call(what, session.parsed_by(Mine, dvs.FetchDVPorts),
                         criteria)

        Only ``fn``'s own request is parsed so (a re-login in between is
        not); an object bound to another stub is parsed as usual."""
        def parsed(*args: Any, **kwargs: Any) -> T:
            stub = self._stub
            if not isinstance(stub, _TimedStub):
                return fn(*args, **kwargs)
            with stub.parsing(deserializer):
                return fn(*args, **kwargs)

        return parsed

    def host_write(self, what: str, fn: Callable[..., T], *args: Any,
                   **kwargs: Any) -> T:
        """A call that changes a host's standard port groups (not a vCenter
        task): at most ``max_parallel_host_writes`` at once per process."""
        return self._call(what, fn, args, kwargs, None, None,
                          self._host_write_slots)

    def run_task(self, what: str, fn: Callable[..., Any], *args: Any,
                 read_back: ReadBack | None = None, **kwargs: Any) -> Any:
        """Start a task and wait for it; its result, or the typed error of
        the fault it ended in.  At most ``max_parallel_tasks`` tasks run at
        once per process: the slot is held until the task has ended.
        ``read_back``: the DV ports the task writes, (switch, port keys),
        read by the attached watcher (the replica) once the task succeeded
        and before this returns (see :meth:`wait_for_tasks`)."""
        with self._slot(self._task_slots, what):
            task = self.call(what, fn, *args, **kwargs)
            return self.wait_for_tasks([task], what, read_back)[0]

    def run_parallel(self, fn: Callable[[Any], T],
                     items: Sequence[Any]) -> list[T]:
        """``fn`` over ``items`` in parallel, each under the caller's
        deadline (:meth:`budget`), on this session's worker threads: at most
        ``max_parallel_host_writes`` at once.  The threads live as long as
        the session, so that writing a port group on 32 hosts does not
        first start 32 threads."""
        deadline = self.deadline

        def bounded(item: Any) -> T:
            with self.until(deadline):
                return fn(item)

        with self._lock:
            if self._pool is None:
                self._pool = concurrent.futures.ThreadPoolExecutor(
                    self.max_parallel_host_writes,
                    thread_name_prefix="vcenter-writes")
            pool = self._pool
        return list(pool.map(bounded, items))

    @contextlib.contextmanager
    def _slot(self, slots: threading.BoundedSemaphore | None,
              what: str) -> Iterator[None]:
        if slots is None:
            yield
            return
        left = self.time_left()
        if not slots.acquire(timeout=None if left is None else max(left, 0)):
            raise exceptions.OutOfTime(what, "no time left to wait for a "
                                             "free slot")
        try:
            yield
        finally:
            slots.release()

    def _call(self, what: str, fn: Callable[..., T], args: Sequence[Any],
              kwargs: dict[str, Any], timeout: float | None,
              attempts: int | None,
              slots: threading.BoundedSemaphore | None) -> T:
        retries = self._settings.api_retry_count if attempts is None \
            else attempts
        policy = retry_policy(self, what, retries)
        try:
            result = policy(self._attempt, what, fn, args, kwargs, timeout,
                            slots)
        except exceptions.TransientFault as exc:
            if self._unreachable(exc.__cause__):
                self._unreachable_at = time.monotonic()
            if policy.statistics.get("stopped_at_deadline") and \
                    not isinstance(exc, exceptions.OutOfTime):
                # Cut short by the deadline, not given up after retries.
                raise exceptions.OutOfTime(
                    what, f"no time left to retry ({exc.fault})") from exc
            raise
        self._unreachable_at = None
        return result

    def _attempt(self, what: str, fn: Callable[..., T], args: Sequence[Any],
                 kwargs: dict[str, Any], timeout: float | None,
                 slots: threading.BoundedSemaphore | None) -> T:
        """One try: the deadline checked, the socket timeout set, a lost
        session logged in again (and the call repeated once, at once), the
        fault typed."""
        left = self.time_left()
        if left is not None and left <= 0:
            raise exceptions.OutOfTime(what, "the time budget is spent")
        previous = getattr(self._local, "timeout", None)
        self._local.timeout = timeout
        try:
            with self._slot(slots, what):
                generation = self._generation
                self.connect()
                try:
                    return fn(*args, **kwargs)
                except vim.fault.NotAuthenticated:
                    self._relogin(generation)
                    return fn(*args, **kwargs)
        except exceptions.VCenterError:
            raise
        except _BudgetSpent:
            raise exceptions.OutOfTime(what, "the time budget is spent")
        except (vmodl.MethodFault,) + TRANSPORT_ERRORS as exc:
            raise translate(what, exc) from exc
        finally:
            self._local.timeout = previous

    # -- tasks -------------------------------------------------------------

    def wait_for_tasks(self, tasks: Sequence[vim.Task], what: str,
                       read_back: ReadBack | None = None) -> list[Any]:
        """Wait for all ``tasks``; return their results in order.

        One property-collector filter over the tasks' state, error and
        result, and ``WaitForUpdatesEx``: one round trip per change rather
        than a poll per task.  With a watcher attached (the replica) the
        filter goes on its collector, which it long-polls anyway: one
        ``CreateFilter`` here, and the watcher's thread sees the tasks end;
        otherwise -- no watcher (the CLI), or it is not current -- on a
        collector made for this wait and destroyed after.  Waits at most
        ``task_timeout`` (then :class:`TaskTimeout`) and never past the
        budget's deadline (then :class:`OutOfTime`).  A task that ended in
        error raises the typed error of its fault (ResourceInUse -> InUse,
        DuplicateName -> DuplicateName...; TaskFailed for the others).

        ``read_back`` (switch, port keys): when all tasks succeeded, the
        watcher holds these DV ports as vCenter shows them after the tasks
        (their new configVersion) before this returns -- read by the
        watcher's own thread when it saw the tasks end, or here after a
        wait on an own collector.  Without a watcher it is not read.
        """
        if not tasks:
            return []
        tasks = list(tasks)
        deadline = time.monotonic() + self._settings.task_timeout
        outer = self.deadline
        # Everything below, retries included, ends by the task deadline too.
        bound = deadline if outer is None else min(outer, deadline)
        watcher = self._watcher
        try:
            info = None
            if watcher is not None:
                with self.until(bound):
                    info = watcher.watch_tasks(tasks, what, deadline,
                                               read_back)
            if info is None:
                info = self._watch_tasks(tasks, deadline, bound, what)
                if read_back is not None and watcher is not None and all(
                        p.get("info.state") == "success"
                        for p in info.values()):
                    # Waited on an own collector: the ports are read here.
                    with self.until(bound):
                        watcher.refresh_port_keys(read_back[0]._moId,
                                                  read_back[1])
        except exceptions.OutOfTime as exc:
            if outer is None or deadline < outer:
                raise exceptions.TaskTimeout(
                    what, f"not finished after "
                          f"{self._settings.task_timeout}s") from exc
            raise
        results = []
        for task in tasks:
            props = info[task._moId]
            if props.get("info.state") == "error":
                raise translate(what, props.get("info.error"), task=True) \
                    if props.get("info.error") is not None else \
                    exceptions.TaskFailed(what, "task failed")
            results.append(props.get("info.result"))
        return results

    def _watch_tasks(self, tasks: list[vim.Task], deadline: float,
                     bound: float, what: str) -> dict[str, dict[str, Any]]:
        for watch in (1, 2):
            generation = self._generation
            with self.until(bound):
                pc = self.call(f"{what}: watch its task(s)", self.content
                               .propertyCollector.CreatePropertyCollector)
            try:
                with self.until(bound):
                    return self._watch(pc, tasks, deadline, what)
            except exceptions.NotFound as exc:
                # The collector (or a task) is unknown: the session was
                # lost and logged in again meanwhile.  Never a verdict on
                # the task's own object: watch again once with a new one.
                if watch == 2 or generation == self._generation:
                    raise exceptions.TransientFault(
                        what, f"lost track of its task(s): {exc.fault}"
                    ) from exc
            finally:
                # Under the caller's deadline only: a task that overran
                # still gets its collector removed.
                try:
                    self.call(f"{what}: stop watching",
                              pc.DestroyPropertyCollector, attempts=0)
                except exceptions.VCenterError:
                    pass  # session-scoped: gone with the session at least
        raise AssertionError("unreachable")

    def _watch(self, pc: Any, tasks: list[vim.Task], deadline: float,
               what: str) -> dict[str, dict[str, Any]]:
        spec = vmodl.query.PropertyCollector.FilterSpec(
            objectSet=[vmodl.query.PropertyCollector.ObjectSpec(obj=t)
                       for t in tasks],
            propSet=[vmodl.query.PropertyCollector.PropertySpec(
                type=vim.Task,
                pathSet=["info.state", "info.error", "info.result"])])
        self.call(f"{what}: watch its task(s)", pc.CreateFilter, spec,
                  partialUpdates=False)
        info: dict[str, dict[str, Any]] = {t._moId: {} for t in tasks}
        version = ""
        while not all(p.get("info.state") in ("success", "error")
                      for p in info.values()):
            remaining = deadline - time.monotonic()
            left = self.time_left()
            if left is not None and left <= 0:
                raise exceptions.OutOfTime(what, "the time budget is spent "
                                                 "before its task(s) ended")
            if remaining <= 0:
                raise exceptions.TaskTimeout(
                    what, f"not finished after "
                          f"{self._settings.task_timeout}s")
            wait = remaining if left is None else min(remaining, left)
            wait_s = max(1, min(int(wait), 60))
            update = self.call(
                f"{what}: wait for its task(s)", pc.WaitForUpdatesEx, version,
                vmodl.query.PropertyCollector.WaitOptions(
                    maxWaitSeconds=wait_s),
                timeout=wait_s + self._settings.api_timeout)
            if update is None:
                continue
            version = update.version
            for fs in update.filterSet or []:
                for obj in fs.objectSet or []:
                    for change in obj.changeSet or []:
                        info[obj.obj._moId][change.name] = change.val
        return info

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

"""Locks shared by every worker and server that runs the driver.

Two API workers (or two Neutron servers) may reconcile the same network at the
same time, and every one of them runs the periodic full pass.  A lock per
network serialises the first; one lock for the full pass makes it run once at a
time across the deployment (a worker that finds it taken skips its turn).

The locks are tooz locks over a backend the deployment already has: the default
``file://`` backend serves the workers of one host; ``mysql://``,
``redis://`` or ``etcd3+http://`` serve several servers.

The backend URL may hold a password (``mysql://neutron:PW@db/neutron``,
``redis://:PW@host:6379``, ``...?password=PW``): it is shown only through
:func:`mask_url` -- ``Locks.backend_url`` is the masked URL -- and the text
of every error from the backend goes through :func:`mask_text`.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import os
import re
import socket
import tempfile
import threading
import urllib.parse
from collections.abc import Iterator

from oslo_log import log as logging
from tooz import coordination

from networking_vcenter import exceptions

LOG = logging.getLogger(__name__)


MASK = "***"
OPTION = "[ml2_vcenter] coordination_backend_url"

# A query key whose value is a secret: its name (lower case) contains one of
# these, or ends with "key" (api_key, access_key).
_SECRET_WORDS = ("pass", "pwd", "secret", "token", "credential")
# A URL inside some text: up to a blank or a quote around it.
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")


def _secret_key(name: str) -> bool:
    name = urllib.parse.unquote_plus(name).strip().lower()
    return any(w in name for w in _SECRET_WORDS) or name.endswith("key")


def _split_url(url: str) -> tuple[str, str, str, str, str] | None:
    """(scheme://, user, password, rest of the netloc after '@', the rest
    of the URL), or None if there is no ``user:password@`` in it."""
    scheme, sep, after = url.partition("://")
    if not sep:
        return None
    end = len(after)
    for c in "/?#":
        i = after.find(c)
        if i >= 0:
            end = min(end, i)
    netloc, rest = after[:end], after[end:]
    # The host is what follows the last '@': a password may hold one.
    userinfo, at, hostport = netloc.rpartition("@")
    user, colon, password = userinfo.partition(":")
    if not (at and colon):
        return None
    return scheme + sep, user, password, hostport, rest


def mask_url(url: str) -> str:
    """``url`` with its secrets replaced by ``***``: the password of its
    ``user:password@`` and the value of every query key that names a secret
    (password, passwd, pwd, secret, token, api_key...).  The scheme, user,
    host, port, path and the other query keys stay, for the operator; a URL
    with no secret is returned unchanged."""
    if not url:
        return url
    parts = _split_url(url)
    if parts:
        scheme, user, _, hostport, rest = parts
        url = f"{scheme}{user}:{MASK}@{hostport}{rest}"
    head, q, query = url.partition("?")
    if not q:
        return url
    query, hash_, fragment = query.partition("#")
    pieces = re.split(r"([&;])", query)
    for i, piece in enumerate(pieces):
        key, eq, value = piece.partition("=")
        if eq and value and _secret_key(key):
            pieces[i] = f"{key}={MASK}"
    return f"{head}?{''.join(pieces)}{hash_}{fragment}"


def url_secrets(url: str) -> list[str]:
    """The secrets :func:`mask_url` masks in ``url``, as written and
    URL-decoded, longest first."""
    found = set()
    parts = _split_url(url or "")
    if parts:
        found.add(parts[2])
    query = (url or "").partition("?")[2].partition("#")[0]
    for piece in re.split(r"[&;]", query):
        key, eq, value = piece.partition("=")
        if eq and _secret_key(key):
            found.add(value)
    found |= {urllib.parse.unquote(s) for s in found} | \
        {urllib.parse.unquote_plus(s) for s in found}
    return sorted((s for s in found if s), key=len, reverse=True)


def mask_text(text: str, *urls: str) -> str:
    """``text`` (a library's error message, say) with the secrets masked:
    those of ``urls``, wherever they appear in it (a message may quote just
    the password, or the URL decoded), and those of every URL in it."""
    text = str(text)
    for url in urls:
        if not url:
            continue
        text = text.replace(url, mask_url(url))
        for secret in url_secrets(url):
            if secret != MASK:
                text = text.replace(secret, MASK)
    return _URL_IN_TEXT.sub(lambda m: mask_url(m.group()), text)


def mask_exception(exc: BaseException, *urls: str) -> BaseException:
    """Mask the secrets of ``urls`` in the text of ``exc`` and of the
    exceptions it was raised from (its traceback is logged), in place."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        try:
            e.args = tuple(mask_text(a, *urls) if isinstance(a, str) else a
                           for a in e.args)
        except Exception:  # noqa: BLE001 - an exception that refuses
            pass
        cause = getattr(e, "cause", None)      # tooz's own chaining
        todo += [e.__cause__, e.__context__,
                 cause if isinstance(cause, BaseException) else None]
    return exc


def _reason(exc: BaseException) -> str:
    """The text of ``exc``; if it has none (etcd3gw's
    ConnectionFailedError), its type and the text of the first exception
    it was raised from that has one (requests' "Connection refused")."""
    if str(exc):
        return str(exc)
    seen, e = set(), exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if str(e):
            return f"{type(exc).__name__}: {e}"
        e = e.__cause__ or e.__context__
    return type(exc).__name__


def configured_lock_path() -> str | None:
    """Neutron's ``[oslo_concurrency] lock_path``, if registered and set."""
    from oslo_config import cfg
    try:
        return cfg.CONF.oslo_concurrency.lock_path
    except cfg.NoSuchOptError:
        return None


def default_backend_url(lock_path: str | None) -> str:
    base = lock_path or os.path.join(tempfile.gettempdir(),
                                     "networking-vcenter-locks")
    return "file://" + os.path.join(base, "networking-vcenter")


# Seconds a lock waits at least for the backend to be joined (the join
# goes on in the background past it): tooz's Redis client retries a refused
# connection for about a minute, nested retries, before it gives up, and a
# lock wait must not last that long (an API hook's deadline).
JOIN_WAIT = 2.0
# Threads for lock calls bounded in time, per process: calls that hang on
# a dead backend occupy them until tooz gives up; the next ones time out.
CALL_THREADS = 4
# The longest lock name every backend takes (MySQL's GET_LOCK: 64).
MAX_NAME = 64


class Locks:
    """The locks over the tooz backend at ``backend_url``.

    ``backend_url`` is the URL as shown -- its password masked -- and the
    only one to put in a message or a log; the URL itself is private."""

    def __init__(self, backend_url: str, scope: str = ""):
        """``scope``: the vCenter whose locks these are, where there are
        several (the locks of the only one keep their names, so that
        servers of an earlier version still exclude these)."""
        self._url = backend_url
        self._prefix = f"networking-vcenter-{scope}-" if scope else \
            "networking-vcenter-"
        self.backend_url = mask_url(backend_url)
        self._coordinator = self._new_coordinator()
        self._started = False
        self._pid = os.getpid()
        # The join under way (or last done) and what it raised.
        self._join_lock = threading.Lock()
        self._join: threading.Thread | None = None
        self._join_error: BaseException | None = None
        self._stopped = False
        # The threads of bounded lock calls (_bounded), made when first
        # needed (and again in a forked worker).
        self._calls: concurrent.futures.ThreadPoolExecutor | None = None
        self._calls_pid: int | None = None

    def _unusable(self, exc: BaseException) -> exceptions.ConfigError:
        mask_exception(exc, self._url)
        return exceptions.ConfigError(
            [f"{OPTION} '{self.backend_url}' cannot be used: "
             f"{self.mask(_reason(exc))}"])

    @contextlib.contextmanager
    def _masked(self) -> Iterator[None]:
        """The backend's errors, their text masked."""
        try:
            yield
        except coordination.ToozError as exc:
            mask_exception(exc, self._url)
            raise

    def _new_coordinator(self) -> coordination.CoordinationDriver:
        member = f"networking-vcenter-{socket.gethostname()}-{os.getpid()}"
        try:
            return coordination.get_coordinator(self._url, member.encode())
        except Exception as exc:  # noqa: BLE001 - tooz's, an unknown scheme
            # (stevedore), the backend's client library missing (ImportError)
            raise self._unusable(exc) from exc

    def _ensure_started(self, wait: float | None = None) -> None:
        """Join the backend, waiting for at most ``wait`` seconds (None:
        until the backend answers or fails).  A join not done in time
        raises LockBusy and goes on in its own thread, for the next lock;
        one that failed raises ConfigError (and the next lock tries
        again)."""
        if self._started and self._pid == os.getpid():
            return
        with self._join_lock:
            if self._pid != os.getpid():
                # A forked worker must not reuse its parent's connection.
                self._coordinator = self._new_coordinator()
                self._pid = os.getpid()
                self._started, self._join = False, None
            if self._started:
                return
            if self._join is None or not self._join.is_alive():
                self._join_error, self._stopped = None, False
                self._join = threading.Thread(
                    target=self._joining, name="lock-backend-join",
                    daemon=True)
                self._join.start()
            join = self._join
        join.join(wait)
        if join.is_alive():
            raise exceptions.LockBusy(
                f"join the lock backend {self.backend_url}",
                f"{OPTION} did not answer within {wait:g} s (still trying)")
        error = self._join_error
        if error is not None:
            raise self._unusable(error) from error
        if not self._started:       # stopped meanwhile
            raise exceptions.LockBusy(
                f"join the lock backend {self.backend_url}",
                "the locks were stopped while it joined")

    def _joining(self) -> None:
        coordinator = self._coordinator
        try:
            coordinator.start(start_heart=True)
        except Exception as exc:  # noqa: BLE001 - tooz's, or the client
            # library's own when the driver does not wrap it (etcd3gw's
            # ConnectionFailedError while etcd is down)
            self._join_error = exc
            return
        with self._join_lock:
            if not self._stopped:
                self._started = True
                return
        # Stopped while it was joining: leave at once.
        with contextlib.suppress(Exception), self._masked():
            coordinator.stop()

    def mask(self, text: object) -> str:
        """``text`` with the backend URL's secrets (and any URL's) masked."""
        return mask_text(text, self._url)

    def start(self) -> None:
        """Join the backend now (``ConfigError`` if it cannot be used)
        rather than at the first lock."""
        self._ensure_started()

    @contextlib.contextmanager
    def hold(self, name: str, timeout: float = -1,
             blocking: bool = True) -> Iterator[bool]:
        """Hold lock ``name``; yields False if not had in time (or at once).
        Joining the backend first waits for :data:`JOIN_WAIT` seconds, or
        ``timeout`` if longer (LockBusy past it)."""
        unbounded = blocking and (timeout is None or timeout < 0)
        lock = self.lock(name, None if unbounded else max(JOIN_WAIT,
                                                          timeout or 0))
        if unbounded:
            with self._masked():
                got = lock.acquire(blocking=True)
        else:
            got = self._bounded(
                f"take the lock {name}",
                lambda: lock.acquire(blocking=timeout if blocking else False),
                (timeout or 0) + JOIN_WAIT, on_late=lock.release)
        try:
            yield bool(got)
        finally:
            if got:
                try:
                    self._bounded(f"let the lock {name} go", lock.release,
                                  JOIN_WAIT)
                except exceptions.LockBusy as exc:
                    # It expires in the backend (Redis, etcd: its TTL;
                    # MySQL: with the connection).
                    LOG.warning("%s", exc)

    def _bounded(self, what: str, call, bound: float, on_late=None):
        """``call()`` -- an acquire or a release -- for at most ``bound``
        seconds: a backend that died after the join is retried for about a
        minute inside tooz and its client, which no lock wait of an API
        call may wait out.  Past the bound: LockBusy, and the call goes on
        in its thread (an acquire that succeeds late is let go at once,
        ``on_late``)."""
        with self._join_lock:
            if self._calls is None or self._calls_pid != os.getpid():
                self._calls = concurrent.futures.ThreadPoolExecutor(
                    CALL_THREADS, thread_name_prefix="lock-backend")
                self._calls_pid = os.getpid()
            calls = self._calls

        def run():
            with self._masked():
                return call()

        future = calls.submit(run)
        try:
            return future.result(timeout=bound)
        except concurrent.futures.TimeoutError:
            if on_late is not None:
                future.add_done_callback(
                    lambda f: f.exception() is None and f.result() and
                    self._late(on_late))
            raise exceptions.LockBusy(
                what, f"{OPTION} '{self.backend_url}' did not answer within "
                      f"{bound:g} s (is the backend down?)") from None

    def _late(self, release) -> None:
        with contextlib.suppress(Exception), self._masked():
            release()

    def lock(self, name: str, wait: float | None = JOIN_WAIT):
        """tooz's lock ``name`` itself (not taken), for :meth:`hold` or for
        a holder that keeps it past a ``with`` block (:mod:`.leadership`):
        the errors of its calls are the backend's, to be masked with
        :meth:`mask`.  Joining the backend first waits ``wait`` seconds
        (None: until it answers or fails; LockBusy past it)."""
        self._ensure_started(wait)
        with self._masked():
            return self._coordinator.get_lock(self.full_name(name).encode())

    def full_name(self, name: str) -> str:
        """The backend's name of lock ``name``: MySQL refuses names longer
        than :data:`MAX_NAME` bytes, so a longer one (a vCenter's name in
        it) is its digest."""
        full = f"{self._prefix}{name}"
        if len(full.encode()) <= MAX_NAME:
            return full
        digest = hashlib.sha256(full.encode()).hexdigest()
        return f"networking-vcenter-{digest}"[:MAX_NAME]

    def stop(self) -> None:
        """Leave the backend: within JOIN_WAIT seconds, answering or not
        (what this process held expires there)."""
        with self._join_lock:
            self._stopped = True
        if self._started:
            try:
                self._bounded("leave the lock backend",
                              self._coordinator.stop, JOIN_WAIT)
            except Exception as exc:  # noqa: BLE001 - a stop goes on
                LOG.warning("%s", self.mask(exc))
            finally:
                self._started = False
        with self._join_lock:
            calls, self._calls = self._calls, None
        if calls is not None:
            calls.shutdown(wait=False, cancel_futures=True)

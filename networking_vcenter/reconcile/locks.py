"""Locks shared by every worker and server that runs the driver.

Two API workers (or two Neutron servers) may reconcile the same network at the
same time, and every one of them runs the periodic full pass.  A lock per
network serialises the first; one lock for the full pass makes it run once at a
time across the deployment (a worker that finds it taken skips its turn).

The locks are tooz locks over a backend the deployment already has: the default
``file://`` backend serves the workers of one host; ``mysql://``,
``redis://`` or ``etcd3+http://`` serve several servers.
"""

from __future__ import annotations

import contextlib
import os
import socket
import tempfile
from collections.abc import Iterator

from tooz import coordination

from networking_vcenter import exceptions


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


class Locks:
    def __init__(self, backend_url: str):
        self.backend_url = backend_url
        member = f"networking-vcenter-{socket.gethostname()}-{os.getpid()}"
        self._coordinator = coordination.get_coordinator(
            backend_url, member.encode())
        self._started = False
        self._pid = os.getpid()

    def _ensure_started(self) -> None:
        # A forked worker must not reuse its parent's coordinator connection.
        if self._started and self._pid == os.getpid():
            return
        if self._pid != os.getpid():
            member = (f"networking-vcenter-{socket.gethostname()}-"
                      f"{os.getpid()}")
            self._coordinator = coordination.get_coordinator(
                self.backend_url, member.encode())
            self._pid = os.getpid()
        try:
            self._coordinator.start(start_heart=True)
        except coordination.ToozError as exc:
            raise exceptions.ConfigError(
                [f"[ml2_vcenter] coordination_backend_url "
                 f"'{self.backend_url}' cannot be used: {exc}"])
        self._started = True

    @contextlib.contextmanager
    def hold(self, name: str, timeout: float = -1,
             blocking: bool = True) -> Iterator[bool]:
        """Hold lock ``name``; yields False if not had in time (or at once)."""
        self._ensure_started()
        lock = self._coordinator.get_lock(f"networking-vcenter-{name}"
                                          .encode())
        if not blocking:
            got = lock.acquire(blocking=False)
        elif timeout is None or timeout < 0:
            got = lock.acquire(blocking=True)
        else:
            got = lock.acquire(blocking=timeout)
        try:
            yield bool(got)
        finally:
            if got:
                lock.release()

    def stop(self) -> None:
        if self._started:
            try:
                self._coordinator.stop()
            finally:
                self._started = False

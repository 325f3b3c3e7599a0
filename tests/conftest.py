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

"""The whole suite's set-up for running it in parallel (pytest-xdist,
``make test`` runs ``-n 2 --dist loadscope``); without xdist it changes
nothing.

Per worker: a temporary directory of its own (``TMPDIR``, so
``tempfile.gettempdir()`` here and in every process a test starts: the
driver's default lock directory, the simulators' logs, the Neutron servers'
work directories), all under one directory of the run, removed at its end
when every test passed (kept, and named, otherwise).  Ports are never fixed:
every server listens on a port the kernel gave it.

Work units (``--dist loadscope``): a module's test functions, or one test
class, so that a module's fixtures (a simulator, a Neutron server) are made
once and its tests run in their order, on one worker.  (Not ``loadgroup``:
pytest-xdist 3.8 marks a group in ``item._nodeid``, which pytest 9 no longer
reads, so every test would be a unit of its own.)

Tests marked ``serial`` (those asserting wall-clock bounds of a second or
so) run with no test of another worker running: every other test holds a
shared lock while it runs (set-up and tear-down included), a ``serial``
test's call holds it exclusively (a turnstile first, so that the workers'
shared locks cannot starve it), and keeps it while the next test of its
worker is ``serial`` too, so that a serial module runs in one go rather
than test by test in turn with the other worker's.  Their bounds stay as
they are.  The run's summary says what the gate cost: how long serial tests
held the other worker off, and the waits on each side (measured: ~150 s
held either way, the serial modules being handed out first to both
workers).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
import time

import pytest

RUN_DIR_ENV = "NVC_TEST_RUN_DIR"
GATE_TIMES = "serial.times"
# The machine's temporary directory, for what must stay shared between the
# workers (tests/e2e/nova_client.py's build locks).
SHARED_TMPDIR_ENV = "NVC_SHARED_TMPDIR"
WORKER = os.environ.get("PYTEST_XDIST_WORKER")


def _worker_tmpdir() -> None:
    """On an xdist worker: TMPDIR is a directory of this worker's own."""
    run_dir = os.environ.get(RUN_DIR_ENV)
    if not WORKER or not run_dir:
        return
    own = os.path.join(run_dir, WORKER)
    os.makedirs(own, exist_ok=True)
    os.environ["TMPDIR"] = own
    tempfile.tempdir = None         # gettempdir() reads TMPDIR again


_worker_tmpdir()


def pytest_configure(config):
    if WORKER is None and _parallel(config):
        # The controller, before it starts the workers (they inherit this).
        os.environ.setdefault(SHARED_TMPDIR_ENV, tempfile.gettempdir())
        os.environ[RUN_DIR_ENV] = tempfile.mkdtemp(prefix="nvc-tests-")
        config._nvc_run_dir = os.environ[RUN_DIR_ENV]


def _parallel(config) -> bool:
    return bool(getattr(config.option, "numprocesses", None)) and \
        getattr(config.option, "dist", "no") != "no"


def pytest_sessionfinish(session, exitstatus):
    run_dir = getattr(session.config, "_nvc_run_dir", None)
    if run_dir is None:
        return
    session.config._nvc_gate = _gate_times(run_dir)
    if exitstatus == 0 and not os.environ.get("E2E_KEEP_LOGS"):
        shutil.rmtree(run_dir, ignore_errors=True)
    else:
        session.config._nvc_kept = run_dir


def _gate_times(run_dir: str) -> dict[str, tuple[int, float]]:
    """What the serial gate cost: kind -> (times, seconds)."""
    totals: dict[str, tuple[int, float]] = {}
    try:
        with open(os.path.join(run_dir, GATE_TIMES)) as f:
            for line in f:
                what, secs = line.split()
                n, total = totals.get(what, (0, 0.0))
                totals[what] = (n + 1, total + float(secs))
    except (OSError, ValueError):
        pass
    return totals


def pytest_terminal_summary(terminalreporter, config):
    gate = getattr(config, "_nvc_gate", None)
    if gate:
        (held_n, held), (_, waited) = gate.get("exclusive-held", (0, 0.0)), \
            gate.get("exclusive-wait", (0, 0.0))
        others = gate.get("shared-wait", (0, 0.0))[1]
        terminalreporter.write_line(
            f"serial tests: the other worker held off {held:.0f}s "
            f"({held_n} time(s)); serial tests waited {waited:.0f}s for the "
            f"other worker's test to end, other tests {others:.0f}s for "
            f"serial ones (a worker idle meanwhile)")
    kept = getattr(config, "_nvc_kept", None)
    if kept:
        terminalreporter.write_line(
            f"the workers' temporary files are kept in {kept}")


# The modules that take a minute or more (make test's durations), handed
# out first so that no long one is left for the end of the run.
LONGEST_FIRST = (
    "tests/functional/test_maintenance.py",
    "tests/e2e/test_ports_api.py",
    "tests/e2e/test_race.py",
    "tests/e2e/test_cli.py",
    "tests/functional/test_outage.py",
    "tests/e2e/test_api.py",
)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """On an xdist worker: the modules with a ``serial`` test first (the
    other worker waits while a serial test runs: no wait at the end), with
    the unit tests (short: a serial test waits little for one to end), then
    the longest modules, then the rest in file order; xdist's ``loadscope``
    hands them out in this order (``--no-loadscope-reorder``).  The tests
    of a module keep their order."""
    if not WORKER:
        return

    def module(item):
        return item.nodeid.split("::")[0]

    serial = {module(i) for i in items if i.get_closest_marker("serial")}

    def rank(item):
        name = module(item)
        if name in serial:
            return 0
        if name.startswith("tests/unit/"):
            return 1
        if name in LONGEST_FIRST:
            return 2 + LONGEST_FIRST.index(name)
        return 2 + len(LONGEST_FIRST)

    items.sort(key=rank)        # stable: file order otherwise


# -- serial tests ----------------------------------------------------------


class _Gate:
    """A readers-writer lock between the workers' processes (flock on two
    files of the run directory)."""

    def __init__(self, run_dir: str):
        self._turnstile = open(os.path.join(run_dir, "serial.turnstile"), "a")
        self._rw = open(os.path.join(run_dir, "serial.lock"), "a")
        self._times = os.path.join(run_dir, GATE_TIMES)
        self._since = 0.0

    def _note(self, what: str, since: float) -> None:
        """Seconds spent, for the run's summary (one line, appended)."""
        with open(self._times, "a") as f:
            f.write(f"{what} {time.monotonic() - since:.3f}\n")

    @contextlib.contextmanager
    def shared(self):
        t0 = time.monotonic()
        fcntl.flock(self._turnstile, fcntl.LOCK_EX)
        try:
            fcntl.flock(self._rw, fcntl.LOCK_SH)
        finally:
            fcntl.flock(self._turnstile, fcntl.LOCK_UN)
        self._note("shared-wait", t0)
        try:
            yield
        finally:
            fcntl.flock(self._rw, fcntl.LOCK_UN)

    def take(self) -> None:
        """Exclusively, until :meth:`leave` (again: no-op)."""
        if self.held:
            return
        t0 = time.monotonic()
        fcntl.flock(self._turnstile, fcntl.LOCK_EX)
        try:
            fcntl.flock(self._rw, fcntl.LOCK_EX)
        except BaseException:
            fcntl.flock(self._turnstile, fcntl.LOCK_UN)
            raise
        self._note("exclusive-wait", t0)
        self._since = time.monotonic()
        self.held = True

    def leave(self) -> None:
        if not self.held:
            return
        self.held = False
        self._note("exclusive-held", self._since)
        try:
            fcntl.flock(self._rw, fcntl.LOCK_UN)
        finally:
            fcntl.flock(self._turnstile, fcntl.LOCK_UN)

    held = False


_gate = None


def _the_gate():
    global _gate
    run_dir = os.environ.get(RUN_DIR_ENV)
    if WORKER is None or not run_dir:
        return None
    if _gate is None:
        _gate = _Gate(run_dir)
    return _gate


_next_is_serial = False


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    global _next_is_serial
    gate = _the_gate()
    _next_is_serial = nextitem is not None and \
        nextitem.get_closest_marker("serial") is not None
    if gate is None or item.get_closest_marker("serial"):
        yield
        return
    with gate.shared():
        yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    gate = _the_gate()
    if gate is None or not item.get_closest_marker("serial"):
        yield
        return
    gate.take()
    try:
        yield
    finally:
        if not _next_is_serial:
            gate.leave()

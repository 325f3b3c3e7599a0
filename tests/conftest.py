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
shared locks cannot starve it).  Their bounds stay as they are.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile

import pytest

RUN_DIR_ENV = "NVC_TEST_RUN_DIR"
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
    if exitstatus == 0 and not os.environ.get("E2E_KEEP_LOGS"):
        shutil.rmtree(run_dir, ignore_errors=True)
    else:
        session.config._nvc_kept = run_dir


def pytest_terminal_summary(terminalreporter, config):
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

    @contextlib.contextmanager
    def shared(self):
        fcntl.flock(self._turnstile, fcntl.LOCK_EX)
        try:
            fcntl.flock(self._rw, fcntl.LOCK_SH)
        finally:
            fcntl.flock(self._turnstile, fcntl.LOCK_UN)
        try:
            yield
        finally:
            fcntl.flock(self._rw, fcntl.LOCK_UN)

    @contextlib.contextmanager
    def exclusive(self):
        fcntl.flock(self._turnstile, fcntl.LOCK_EX)
        try:
            fcntl.flock(self._rw, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(self._rw, fcntl.LOCK_UN)
        finally:
            fcntl.flock(self._turnstile, fcntl.LOCK_UN)


_gate = None


def _the_gate():
    global _gate
    run_dir = os.environ.get(RUN_DIR_ENV)
    if WORKER is None or not run_dir:
        return None
    if _gate is None:
        _gate = _Gate(run_dir)
    return _gate


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    gate = _the_gate()
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
    with gate.exclusive():
        yield

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

"""What tests/conftest.py gives each pytest-xdist worker: a temporary
directory of its own (so the driver's default lock directory, the
simulators' logs and the Neutron servers' work directories are never
another worker's), and ``serial`` tests running alone.  Without xdist the
suite runs as it always did."""

import fcntl
import os
import tempfile

import pytest

from networking_vcenter.reconcile import locks as locks_mod

WORKER = os.environ.get("PYTEST_XDIST_WORKER")
RUN_DIR = os.environ.get("NVC_TEST_RUN_DIR")


def test_each_worker_has_its_own_temporary_directory():
    if not WORKER:
        assert RUN_DIR is None      # one process: the machine's as always
        return
    own = os.path.join(RUN_DIR, WORKER)
    assert tempfile.gettempdir() == own
    assert os.environ["TMPDIR"] == own
    # A server or simulator the test starts inherits it.
    path = tempfile.mkdtemp(prefix="isolation-")
    try:
        assert os.path.dirname(path) == own
    finally:
        os.rmdir(path)


def test_the_default_lock_directory_is_the_workers_own():
    url = locks_mod.default_backend_url(None)
    assert url == "file://" + os.path.join(
        tempfile.gettempdir(), "networking-vcenter-locks",
        "networking-vcenter")
    if WORKER:
        assert url.startswith(f"file://{os.path.join(RUN_DIR, WORKER)}/")


def test_the_nova_build_locks_stay_shared():
    from tests.e2e import nova_client
    lock = nova_client._lock_path("/some/target")
    if WORKER:
        assert os.path.dirname(lock) == os.environ["NVC_SHARED_TMPDIR"]
        assert not lock.startswith(RUN_DIR)


@pytest.mark.serial
def test_a_serial_test_runs_alone():
    if not WORKER:
        return
    # Every other worker's test holds the shared lock while it runs: it
    # cannot be had now, not even shared.
    with open(os.path.join(RUN_DIR, "serial.lock"), "a") as f:
        with pytest.raises(BlockingIOError):
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)

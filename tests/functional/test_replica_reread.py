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

"""Re-reads after a lost replica are spread (``reread_spread``): two
processes' replicas that lose vCenter together (here their connections are
cut by :mod:`tools.faultproxy`, as a vCenter restart cuts them) do not read
the whole inventory again at the same moment; each waits its own random
time once vCenter answers.  Their first reads are not delayed.
"""

from __future__ import annotations

import os
import random
import sys
import threading
import time

import pytest

from networking_vcenter.vsphere import replica as replica_mod
from networking_vcenter.vsphere import session as session_mod
from tests.fixtures.vcsim import Vcsim, driver_settings

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..",
                                "tools"))
import faultproxy  # noqa: E402

SPREAD = 2.0
# Each replica's own draw, seeded so that the test is not at the mercy of
# two uniform draws landing close (seed 1 draws 0.27 s of 2, seed 2 1.91 s).
SEEDS = (1, 2)


@pytest.fixture(scope="module")
def proxied():
    with Vcsim(clusters=1, hosts=1, vms=0) as sim:
        with faultproxy.FaultProxy(sim.host, sim.port) as proxy:
            yield sim, proxy


class _Watched:
    """A replica on a session of its own, the times at which its full reads
    began ("read the inventory", the first part of one) and at which
    vCenter answered before each (its collector made)."""

    def __init__(self, settings, seed):
        self.session = session_mod.Session(settings)
        self.replica = replica_mod.Replica(self.session, settings)
        self.replica._random = random.Random(seed)
        self.draw = random.Random(seed).uniform(0, SPREAD)
        self.reads: list[float] = []
        self.answered: list[float] = []
        real = self.session.call
        lock = threading.Lock()

        def call(what, fn, *args, **kwargs):
            result = real(what, fn, *args, **kwargs)
            with lock:
                if what == "create the replica's property collector":
                    self.answered.append(time.monotonic())
                    self._first_part = True
            return result

        def read(what, fn, *args, **kwargs):
            if what == "read the inventory" and self._first_part:
                self._first_part = False
                self.reads.append(time.monotonic())
            return call(what, fn, *args, **kwargs)

        self._first_part = False
        self.session.call = read


def test_rereads_do_not_start_together(proxied, monkeypatch):
    # Long polls cut by the proxy go on in the simulator until they time
    # out; short ones let it stop at once after the test.
    monkeypatch.setattr(replica_mod, "LONG_POLL", 1)
    sim, proxy = proxied
    settings = driver_settings(sim, proxy.port, api_retry_count=0,
                               api_timeout=5, max_parallel_tasks=2,
                               reread_spread=SPREAD)
    procs = [_Watched(settings, seed) for seed in SEEDS]
    assert abs(procs[0].draw - procs[1].draw) > SPREAD / 2
    for p in procs:
        p.replica.start()
    try:
        # The first reads: not delayed (no wait drawn).
        assert all(len(p.reads) == 1 for p in procs)
        assert all(p.replica._random.getstate() ==
                   random.Random(seed).getstate()
                   for p, seed in zip(procs, SEEDS))

        proxy.mode = "reset"            # vCenter gone: every connection cut
        deadline = time.monotonic() + 10
        while any(p.replica.error is None for p in procs):
            assert time.monotonic() < deadline, "the replicas saw no outage"
            time.sleep(0.05)
        proxy.mode = "pass"             # back
        deadline = time.monotonic() + 10 + SPREAD
        while any(p.replica.reloads < 2 for p in procs):
            assert time.monotonic() < deadline, "no re-read"
            time.sleep(0.05)
    finally:
        proxy.mode = "pass"
        for p in procs:
            p.replica.stop()
            p.session.close()

    again = [p.reads[-1] for p in procs]
    # Each re-read began its own draw after vCenter answered it again
    # (not much later: a busy machine's slack)...
    for p, at in zip(procs, again):
        assert at - p.answered[-1] >= p.draw - 0.05, (p.draw, p.answered)
        assert at - p.answered[-1] <= p.draw + 3
    # ... so that the two did not begin together, though both processes
    # found vCenter back within a retry or so of each other.
    found = abs(procs[0].answered[-1] - procs[1].answered[-1])
    assert found < SPREAD
    assert abs(again[0] - again[1]) >= \
        abs(procs[0].draw - procs[1].draw) - found - 0.5 > 0


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

"""A Neutron server logs out of vCenter when it stops: two restarts of a real
server (embedded mode: the uWSGI API and neutron-periodic-workers, where the
driver's maintenance worker runs) leave vCenter's session count where it was.

Sessions are counted by vCenter itself (``SessionManager.sessionList``),
read by an administrator connection of the test's own on a simulator that
nothing else uses.
"""

from __future__ import annotations

import time

import pytest
from pyVim.connect import Disconnect

from tests.e2e import conftest
from tests.fixtures.vcsim import Vcsim

pytestmark = pytest.mark.e2e


@pytest.fixture
def sim():
    s = Vcsim(extra_args=("-extra-vswitch", "vSwitch1")).start()
    yield s
    s.stop()


def test_restarts_leave_no_session(sim):
    si = sim.connect()
    server = None
    try:
        manager = si.RetrieveContent().sessionManager

        def sessions() -> set[str]:
            return {s.key for s in manager.sessionList}

        def settled() -> int:
            """The count once it has not changed for 3 s (workers log in
            in the background after the API answers)."""
            last, since = len(sessions()), time.monotonic()
            deadline = since + 30
            while time.monotonic() - since < 3 and \
                    time.monotonic() < deadline:
                time.sleep(0.5)
                now = len(sessions())
                if now != last:
                    last, since = now, time.monotonic()
            return last

        admin = sessions()
        server = conftest.start_server(sim, "embedded",
                                       conftest.neutron_server.free_port())
        api = conftest.Api(server.url)
        api.cli("network", "create", "--provider-network-type", "vlan",
                "--provider-physical-network", "physnet1",
                "--provider-segment", "120", "sessions")
        running = settled()
        assert running > len(admin)        # the server is logged in
        for restart in (1, 2):
            server.stop()
            left = sessions() - admin
            assert not left, f"stop {restart} left {len(left)} session(s)"
            server.start()
            api.cli("network", "list")
        after = settled()
        assert after == running, \
            f"{running} sessions before the restarts, {after} after"
    finally:
        Disconnect(si)
        if server is not None:
            conftest.stop_server(server)

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

"""The simulator's launcher (tools/vcsim_launcher.py) and the flags of
tools/vcsim/main.go.

Each test reads back through a fresh pyVmomi connection what an earlier call
changed, as a second client (Nova) would.
"""

import os
import signal
import ssl
import subprocess
import time
import urllib.request

import pytest
from pyVmomi import vim

from tests.fixtures.vcsim import Vcsim, VcsimError, ensure_binary
from tests.simulator.helpers import _dc, _clusters, _names, _pg_spec


def test_extra_switches(si):
    dvs1 = [n for n in _dc(si).networkFolder.childEntity
            if isinstance(n, vim.DistributedVirtualSwitch) and n.name == "DVS1"][0]
    hosts = [h for c in _clusters(si).values() for h in c.host]
    assert sorted(_names(dvs1.summary.hostMember)) == sorted(_names(hosts))
    for h in hosts:
        vswitches = {v.name: v for v in h.configManager.networkSystem.networkInfo.vswitch}
        assert vswitches["vSwitch1"].key == "key-vim.host.VirtualSwitch-vSwitch1"


def test_esx_model():
    with Vcsim(model="esx") as s:
        si = s.connect()
        assert si.content.about.apiType == "HostAgent"
        host = _dc(si).hostFolder.childEntity[0].host[0]
        host.configManager.networkSystem.AddPortGroup(portgrp=_pg_spec("pg-esx", 5))
        net = [n for n in host.network if n.name == "pg-esx"][0]
        assert _names(net.host) == [host.name]
        host.configManager.networkSystem.RemovePortGroup(pgName="pg-esx")
        assert "pg-esx" not in _names(host.network)


def test_idle_timeout_expires_session():
    with Vcsim(clusters=1, hosts=1, idle_timeout=1) as s:
        si = s.connect()
        assert si.CurrentTime()
        time.sleep(2.5)  # expiry lands between T and 2T
        with pytest.raises(vim.fault.NotAuthenticated):
            si.content.rootFolder.childEntity
        assert s.connect().CurrentTime(), "a new login works"


def test_wsdl_dir_is_served(tmp_path):
    (tmp_path / "vimService.wsdl").write_text("<definitions>vim service</definitions>")
    (tmp_path / "vim-types.xsd").write_text("<schema/>")
    with Vcsim(clusters=1, hosts=1, wsdl_dir=tmp_path) as s:
        ctx = ssl._create_unverified_context()
        with urllib.request.urlopen("https://%s:%d/sdk/vimService.wsdl" % (s.host, s.port),
                                    context=ctx) as r:
            assert r.read() == b"<definitions>vim service</definitions>"
            assert r.headers["Content-Type"].startswith("text/xml")
        with urllib.request.urlopen("https://%s:%d/sdk/vim-types.xsd" % (s.host, s.port),
                                    context=ctx) as r:
            assert r.read() == b"<schema/>"
        assert s.connect().CurrentTime(), "/sdk still answers SOAP"


def test_method_delay():
    with Vcsim(clusters=1, hosts=1, extra_args=("-method-delay", "CurrentTime:300")) as s:
        si = s.connect()
        t = time.monotonic()
        si.CurrentTime()
        assert time.monotonic() - t >= 0.3


def test_sigterm_exits_cleanly_and_pidfile(tmp_path):
    pidfile = tmp_path / "vcsim.pid"
    proc = subprocess.Popen([ensure_binary(), "-cluster", "1", "-host", "1", "-pidfile", str(pidfile)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        line = proc.stdout.readline().decode()
        assert line.startswith("SDK_URL=https://127.0.0.1:") and line.endswith("/sdk\n")
        assert int(pidfile.read_text()) == proc.pid
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
        assert proc.stdout.read() == b"", "exactly one line on stdout"
        assert not pidfile.exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_failed_start_reports_log_and_leaves_nothing_running():
    s = Vcsim(extra_args=("-model", "bogus"))
    with pytest.raises(VcsimError) as err:
        s.start(timeout=10)
    assert "unknown -model" in str(err.value)
    assert s.proc is None and s.returncode not in (None, 0)
    s.stop()  # idempotent
    os.unlink(s.log_path)


def test_login_checks_the_password():
    """A real vCenter refuses a wrong password; stock vcsim accepts any."""
    with Vcsim(extra_args=("-password", "right-one")) as s:
        s.password = "wrong-one"
        with pytest.raises(vim.fault.InvalidLogin):
            s.connect()
        s.password = "right-one"
        assert s.connect().RetrieveContent().about.apiType == "VirtualCenter"

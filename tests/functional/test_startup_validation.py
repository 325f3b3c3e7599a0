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

"""Start-up validation: each bad configuration is refused with its own message.

The driver is loaded through its ``neutron.ml2.mechanism_drivers`` entry point,
as ML2 loads it, and initialised against the simulator.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import time
from importlib.metadata import entry_points

import pytest
from oslo_config import cfg
from oslo_config import fixture as config_fixture
from pyVmomi import vim

from networking_vcenter import conf
from networking_vcenter import exceptions
from tests.fixtures.vcsim import Vcsim
from tests.fixtures.vsphere_reader import Reader

PASSWORD = "vc-S3cret-4711"   # distinctive: a leak cannot hide in a word


@pytest.fixture(scope="module")
def vcsim():
    sim = Vcsim(extra_args=("-extra-vswitch", "vSwitch1", "-password",
                            PASSWORD))
    sim.password = PASSWORD
    sim.start()
    reader = Reader(sim.connect())
    # A vSwitch on one host only, and a vSwitch named like the DVS.
    host = reader.host("DC0_C0_H0").configManager.networkSystem
    host.AddVirtualSwitch("vSwitchLonely", vim.host.VirtualSwitch.Specification(
        numPorts=64))
    host.AddVirtualSwitch("DVS0", vim.host.VirtualSwitch.Specification(
        numPorts=64))
    yield sim
    sim.stop()


@pytest.fixture
def config(vcsim):
    fix = config_fixture.Config(cfg.CONF)
    fix.setUp()
    conf.register_opts(cfg.CONF)
    base = dict(host_ip=vcsim.host, host_port=vcsim.port,
                host_username=vcsim.username, host_password=PASSWORD,
                insecure=True, api_retry_count=0, resync_interval=0,
                switch_mappings=["physnet1:DVS0"],
                compute_hosts=["vc-compute-1:DC0_C1"])

    def set_(**overrides):
        for k, v in {**base, **overrides}.items():
            fix.config(**{k: v}, group=conf.GROUP)
    yield set_
    fix.cleanUp()


def start_driver():
    (ep,) = entry_points(group="neutron.ml2.mechanism_drivers",
                         name="vcenter")
    driver = ep.load()()
    driver.initialize()
    return driver


def refused(caplog, error_type=exceptions.VCenterError) -> str:
    with caplog.at_level(logging.DEBUG):
        with pytest.raises(error_type) as err:
            start_driver()
    text = str(err.value)
    assert PASSWORD not in text
    assert PASSWORD not in caplog.text
    assert "cannot start" in caplog.text   # logged once, clearly
    return text


def test_good_configuration_starts(config):
    config()
    driver = start_driver()
    assert driver.backend.reconciler.validate().targets["physnet1"].kind == "dvs"
    driver.backend.reconciler.close()


def test_unreachable_vcenter_refused_when_asked(config, caplog):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    config(host_port=closed, start_without_vcenter=False)
    text = refused(caplog, exceptions.ConnectionFailed)
    assert f"127.0.0.1:{closed}" in text and "unreachable" in text
    assert "host_ip/host_port" in text


def started_degraded(caplog) -> tuple[object, float]:
    """The driver started as ML2 starts it, without vCenter; the seconds
    its start took."""
    t0 = time.monotonic()
    with caplog.at_level(logging.WARNING):
        driver = start_driver()
    took = time.monotonic() - t0
    assert "starts without vCenter" in caplog.text
    assert PASSWORD not in caplog.text
    assert not driver.backend.reconciler.replica.synced
    return driver, took


def test_unreachable_vcenter_does_not_stop_neutron(config, caplog):
    """By default (issue 13: vCenter never stops Neutron), with the
    default retries and timeouts."""
    assert cfg.CONF.ml2_vcenter.start_without_vcenter is True
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    config(host_port=closed, api_retry_count=10, api_timeout=30.0)
    driver, took = started_degraded(caplog)
    driver.backend.reconciler.close()
    assert took < 10, took


def test_black_holed_vcenter_does_not_stop_neutron(config, caplog):
    """A vCenter that takes connections and never answers (a black hole):
    the start waits no longer than one API call's budget
    (``api_call_budget``, 20 s by default), with the default retries and
    timeouts, then goes on without vCenter."""
    with socket.socket() as hole:
        hole.bind(("127.0.0.1", 0))
        hole.listen(64)     # the kernel accepts; nobody answers
        config(host_port=hole.getsockname()[1], api_retry_count=10,
               api_timeout=30.0)
        budget = cfg.CONF.ml2_vcenter.api_call_budget
        assert budget == 20.0
        driver, took = started_degraded(caplog)
        # Nor does its stop wait for the login under way (api_timeout).
        t0 = time.monotonic()
        driver.backend.reconciler.close()
        stopped = time.monotonic() - t0
    assert took < budget + 5, took
    assert stopped < 10, stopped


def test_bad_credentials(config, caplog):
    config(host_password="wrong-" + "secret")
    text = refused(caplog, exceptions.AuthenticationFailed)
    assert "refused the login of user 'user'" in text
    assert "wrong-secret" not in text and "wrong-secret" not in caplog.text


def test_tls_verified_by_default(config, caplog):
    config(insecure=False)
    text = refused(caplog, exceptions.TLSFailed)
    assert "TLS verification" in text and "ca_file" in text


def test_unknown_switch(config, caplog):
    config(switch_mappings=["physnet1:DVS0", "physnet2:NoSuchSwitch"])
    text = refused(caplog, exceptions.ConfigError)
    assert "'physnet2:NoSuchSwitch'" in text
    assert "neither a distributed switch" in text


def test_unknown_cluster(config, caplog):
    config(compute_hosts=["vc-compute-1:NoSuchCluster"])
    text = refused(caplog, exceptions.ConfigError)
    assert "cluster 'NoSuchCluster' does not exist" in text


def test_malformed_mapping(config, caplog):
    config(switch_mappings=["physnet1-DVS0"])
    text = refused(caplog, exceptions.ConfigError)
    assert "switch_mappings: Invalid mapping: 'physnet1-DVS0'; each entry " \
        "is <physical_network>:<switch>" in text


def test_vswitch_missing_on_some_hosts(config, caplog):
    config(switch_mappings=["physnet2:vSwitchLonely"],
           compute_hosts=["vc-compute-1:DC0_C0"])
    text = refused(caplog, exceptions.ConfigError)
    assert "'vSwitchLonely' is missing on host(s) DC0_C0_H1, DC0_C0_H2" in text


def test_switch_both_distributed_and_standard(config, caplog):
    config(compute_hosts=["vc-compute-1:DC0_C0"])
    text = refused(caplog, exceptions.ConfigError)
    assert "'DVS0' is both a distributed switch and a standard vSwitch " \
           "(on DC0_C0_H0)" in text


def test_several_problems_one_line_each(config, caplog):
    config(switch_mappings=["physnet1:Nope1", "physnet2:Nope2"],
           compute_hosts=["a:DC0_C0", "b:Missing"])
    text = refused(caplog, exceptions.ConfigError)
    lines = [ln for ln in text.splitlines() if ln.strip().startswith("- ")]
    assert len(lines) == 3, text


def test_name_template_with_bad_format_spec(config, caplog, tmp_path):
    """Refused at start-up and by ``networking-vcenter check``, with the
    option named, before any network could fail on it."""
    template = "{physical_network:d}-{network_id}"
    config(dvs_port_group_name_template=template)
    text = refused(caplog, exceptions.ConfigError)
    assert "[ml2_vcenter] dvs_port_group_name_template" in text
    assert "Unknown format code 'd'" in text

    ini = tmp_path / "ml2_conf.ini"
    ini.write_text(
        "[ml2_vcenter]\n"
        f"host_ip = {cfg.CONF.ml2_vcenter.host_ip}\n"
        f"host_port = {cfg.CONF.ml2_vcenter.host_port}\n"
        "host_username = user\nhost_password = " + PASSWORD + "\n"
        "insecure = true\nswitch_mappings = physnet1:DVS0\n"
        "compute_hosts = vc-compute-1:DC0_C1\n"
        f"dvs_port_group_name_template = {template}\n")
    cli = os.path.join(os.path.dirname(sys.executable), "networking-vcenter")
    proc = subprocess.run([cli, "--config-file", str(ini), "check"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr  # cannot run
    assert "configuration" in proc.stdout and "FAIL" in proc.stdout
    assert "[ml2_vcenter] dvs_port_group_name_template" in proc.stdout
    assert "Unknown format code 'd'" in proc.stdout
    assert "vCenter login" not in proc.stdout    # refused before any login
    assert PASSWORD not in proc.stdout + proc.stderr

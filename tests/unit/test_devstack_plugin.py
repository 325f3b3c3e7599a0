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

"""The DevStack plugin (devstack/settings, devstack/plugin.sh) run by bash
with DevStack's helpers stubbed.

DevStack is not on this machine, so its functions the plugin calls
(``iniset``, ``setup_develop``, ``is_service_enabled``, ``enable_service``,
``trueorfalse``, ``die``, ...) are small bash functions that record each
call, one line per call with tab-separated arguments, and behave as
DevStack's do where the plugin depends on it (``die`` exits, a disabled
service cannot be enabled, ``trueorfalse`` normalises).  The plugin is
sourced as stack.sh sources it: settings first, then ``plugin.sh <mode>
<phase>`` for each phase, in one shell with ``errexit``, ``nounset`` and
``xtrace`` on (stack.sh runs with xtrace on, so whatever the plugin expands
while tracing lands in the stack log).
"""

import os
import pathlib
import shlex
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
SETTINGS = ROOT / "devstack" / "settings"
PLUGIN = ROOT / "devstack" / "plugin.sh"

PASSWORD = "Pw-0f-svc-neutron&x"
ML2_CONF = "etc/neutron/plugins/ml2/ml2_conf.ini"
CONF_PATH = "/" + ML2_CONF
SRC_DIR = "/opt/stack/networking-vcenter"

STUBS = r"""
rec() { local IFS=$'\t'; printf '%s\n' "$*" >> "$REC"; }
iniset() { rec iniset "$@"; }
setup_develop() { rec setup_develop "$@"; }
pip_install() { rec pip_install "$@"; }
echo_summary() { echo "$@"; }
define_plugin() { rec define_plugin "$@"; }
plugin_requires() { rec plugin_requires "$@"; }
warn() { echo "[WARNING] $*"; }
die() { local line=$1; shift; rec die "$*"; echo "[ERROR] $*" >&2; exit 1; }
is_service_enabled() {
    local service
    for service in "$@"; do
        [[ ,${ENABLED_SERVICES}, =~ ,${service}, ]] && return 0
    done
    return 1
}
enable_service() {
    local service
    for service in "$@"; do
        if [[ ,${DISABLED_SERVICES}, =~ ,${service}, ]]; then
            warn "Attempt to enable_service ${service}:" \
                "it has been disabled"
            continue
        fi
        is_service_enabled "$service" || ENABLED_SERVICES+=",$service"
    done
}
trueorfalse() {
    local default=$1 testval=${!2:-}
    case "$testval" in
        "1" | [yY]es | "YES" | [tT]rue | "TRUE" ) echo "True" ;;
        "0" | [nN]o | "NO" | [fF]alse | "FALSE" ) echo "False" ;;
        * ) echo "$default" ;;
    esac
}
"""

BASE_ENV = {
    "VCENTER_HOST": "vcenter.example.org",
    "VCENTER_USER": "svc-neutron@vsphere.local",
    "VCENTER_PASSWORD": PASSWORD,
    "VCENTER_INSECURE": "True",
    "VCENTER_SWITCH_MAPPINGS": "physnet1:DVS0,physnet2:vSwitch1",
    "VCENTER_COMPUTE_HOSTS": "vc-compute-1:Cluster1",
}

STACK_PHASES = ("pre-install", "install", "post-config", "extra")


def run(tmp_path, env=None, calls=tuple(("stack", p) for p in STACK_PHASES),
        enabled="key,q-svc,q-ovn-agent", disabled="",
        mechanism_drivers="ovn", check_rc=0, shell_vars=""):
    """Source settings, then plugin.sh once per (mode, phase) of calls.

    Returns (returncode, stdout, stderr, recorded calls as tuples)."""
    rec = tmp_path / "calls"
    rec.write_text("")
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    fake_cli = bindir / "networking-vcenter"
    fake_cli.write_text(
        '#!/bin/bash\n{ IFS=$\'\\t\'; printf "%s\\n" '
        '"networking-vcenter${IFS}$*"; } >> "$REC"\n'
        f'echo "fake check"; exit {check_rc}\n')
    fake_cli.chmod(0o755)
    lines = [
        "set -o errexit -o nounset",
        STUBS,
        f"ENABLED_SERVICES={shlex.quote(enabled)}",
        f"DISABLED_SERVICES={shlex.quote(disabled)}",
        "DEST=/opt/stack",
        f"Q_PLUGIN_CONF_FILE={ML2_CONF}",
        f"Q_ML2_PLUGIN_MECHANISM_DRIVERS={shlex.quote(mechanism_drivers)}",
        "NEUTRON_CONF=/etc/neutron/neutron.conf",
        f"NEUTRON_BIN_DIR={shlex.quote(str(bindir))}",
        shell_vars,
        "set -o xtrace",
        f"source {shlex.quote(str(SETTINGS))}",
    ]
    for call in calls:
        lines.append(f"source {shlex.quote(str(PLUGIN))} "
                     + " ".join(shlex.quote(a) for a in call))
    lines.append("rec done")
    full_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                "REC": str(rec), "HOME": str(tmp_path)}
    full_env.update(env if env is not None else BASE_ENV)
    proc = subprocess.run(["bash", "-c", "\n".join(lines)],
                          capture_output=True, text=True, env=full_env,
                          timeout=30)
    recorded = [tuple(line.split("\t"))
                for line in rec.read_text().splitlines()]
    return proc.returncode, proc.stdout, proc.stderr, recorded


def inisets(recorded):
    return [c[1:] for c in recorded if c[0] == "iniset"]


def test_stack_installs_and_writes_ml2_vcenter(tmp_path):
    rc, out, err, recorded = run(tmp_path)
    assert rc == 0, err
    assert ("setup_develop", SRC_DIR) in recorded
    assert inisets(recorded) == [
        (CONF_PATH, "ml2", "mechanism_drivers", "ovn,vcenter"),
        (CONF_PATH, "ml2_vcenter", "host_ip", "vcenter.example.org"),
        (CONF_PATH, "ml2_vcenter", "host_port", "443"),
        (CONF_PATH, "ml2_vcenter", "host_username",
         "svc-neutron@vsphere.local"),
        (CONF_PATH, "ml2_vcenter", "host_password", PASSWORD),
        (CONF_PATH, "ml2_vcenter", "switch_mappings",
         "physnet1:DVS0,physnet2:vSwitch1"),
        (CONF_PATH, "ml2_vcenter", "compute_hosts", "vc-compute-1:Cluster1"),
        (CONF_PATH, "ml2_vcenter", "insecure", "True"),
    ]
    # extra: the driver's own check against the running cloud
    assert ("networking-vcenter", "--config-file", "/etc/neutron/neutron.conf",
            "--config-file", CONF_PATH, "check") in recorded
    assert recorded[-1] == ("done",)
    # the order of the phases: install before configure before check
    kinds = [c[0].split()[0] for c in recorded]
    assert kinds.index("setup_develop") < kinds.index("iniset") < \
        kinds.index("networking-vcenter")
    assert "WARNING: insecure = True" in out


def test_password_never_printed_even_with_xtrace(tmp_path):
    rc, out, err, recorded = run(tmp_path)
    assert rc == 0, err
    # xtrace was on and traced the plugin (so a leak would show) ...
    assert "+ source " in err and "check_networking_vcenter" in err
    # ... but the password reached iniset only
    assert PASSWORD not in out
    assert PASSWORD not in err
    assert ("iniset", CONF_PATH, "ml2_vcenter", "host_password",
            PASSWORD) in recorded


def test_password_not_printed_when_a_setting_is_refused(tmp_path):
    env = dict(BASE_ENV, VCENTER_SWITCH_MAPPINGS="physnet1=DVS0")
    rc, out, err, _ = run(tmp_path, env=env)
    assert rc != 0
    assert PASSWORD not in out + err


def test_ca_file_deployment_name_and_port(tmp_path):
    ca = tmp_path / "vcenter-ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    env = dict(BASE_ENV, VCENTER_CA_FILE=str(ca), VCENTER_PORT="8443",
               VCENTER_DEPLOYMENT_NAME="devstack-lab1")
    del env["VCENTER_INSECURE"]
    rc, out, err, recorded = run(
        tmp_path, env=env, calls=[("stack", "post-config")],
        mechanism_drivers="openvswitch,l2population")
    assert rc == 0, err
    assert inisets(recorded) == [
        (CONF_PATH, "ml2", "mechanism_drivers",
         "openvswitch,l2population,vcenter"),
        (CONF_PATH, "ml2_vcenter", "host_ip", "vcenter.example.org"),
        (CONF_PATH, "ml2_vcenter", "host_port", "8443"),
        (CONF_PATH, "ml2_vcenter", "host_username",
         "svc-neutron@vsphere.local"),
        (CONF_PATH, "ml2_vcenter", "host_password", PASSWORD),
        (CONF_PATH, "ml2_vcenter", "switch_mappings",
         "physnet1:DVS0,physnet2:vSwitch1"),
        (CONF_PATH, "ml2_vcenter", "compute_hosts", "vc-compute-1:Cluster1"),
        (CONF_PATH, "ml2_vcenter", "ca_file", str(ca)),
        (CONF_PATH, "ml2_vcenter", "insecure", "False"),
        (CONF_PATH, "ml2_vcenter", "deployment_name", "devstack-lab1"),
    ]
    assert "insecure" not in out


def test_vcenter_already_in_mechanism_drivers_is_not_added_again(tmp_path):
    rc, _, err, recorded = run(tmp_path, calls=[("stack", "post-config")],
                               mechanism_drivers="vcenter,ovn")
    assert rc == 0, err
    assert inisets(recorded)[0] == (CONF_PATH, "ml2", "mechanism_drivers",
                                    "vcenter,ovn")


@pytest.mark.parametrize("variable,option", [
    ("VCENTER_HOST", "host_ip"),
    ("VCENTER_USER", "host_username"),
    ("VCENTER_PASSWORD", "host_password"),
    ("VCENTER_SWITCH_MAPPINGS", "switch_mappings"),
    ("VCENTER_COMPUTE_HOSTS", "compute_hosts"),
])
def test_missing_required_variable_stops_before_installing(
        tmp_path, variable, option):
    env = dict(BASE_ENV)
    del env[variable]
    rc, out, err, recorded = run(tmp_path, env=env)
    assert rc == 1
    message = f"not set in local.conf: {variable} ([ml2_vcenter] {option})"
    assert message in err
    assert recorded == [("define_plugin", "networking-vcenter"),
                        ("die", "networking-vcenter: " + message)]
    assert PASSWORD not in out + err


def test_missing_variable_at_post_config_writes_nothing(tmp_path):
    env = dict(BASE_ENV)
    del env["VCENTER_HOST"]
    rc, _, err, recorded = run(tmp_path, env=env,
                               calls=[("stack", "post-config")])
    assert rc == 1
    assert "VCENTER_HOST ([ml2_vcenter] host_ip)" in err
    assert inisets(recorded) == []


def test_every_missing_variable_is_named(tmp_path):
    env = {"VCENTER_SWITCH_MAPPINGS": "physnet1:DVS0"}
    rc, _, err, _ = run(tmp_path, env=env, calls=[("stack", "pre-install")])
    assert rc == 1
    assert ("not set in local.conf: VCENTER_HOST ([ml2_vcenter] host_ip), "
            "VCENTER_USER ([ml2_vcenter] host_username), VCENTER_PASSWORD "
            "([ml2_vcenter] host_password), VCENTER_COMPUTE_HOSTS "
            "([ml2_vcenter] compute_hosts)") in err


@pytest.mark.parametrize("change,named", [
    ({"VCENTER_SWITCH_MAPPINGS": "physnet1=DVS0"}, "VCENTER_SWITCH_MAPPINGS"),
    ({"VCENTER_COMPUTE_HOSTS": "vc-compute-1:Cluster1, vc-compute-2:C2"},
     "VCENTER_COMPUTE_HOSTS"),
    ({"VCENTER_PORT": "https"}, "VCENTER_PORT"),
    ({"VCENTER_PORT": "70000"}, "VCENTER_PORT"),
    ({"VCENTER_CA_FILE": "/nonexistent/ca.pem", "VCENTER_INSECURE": "False"},
     "VCENTER_CA_FILE"),
    ({"VCENTER_CA_FILE": "/etc/hostname"},
     "VCENTER_CA_FILE and VCENTER_INSECURE=True are both set"),
    ({"VCENTER_DEPLOYMENT_NAME": "lab 1"}, "VCENTER_DEPLOYMENT_NAME"),
])
def test_malformed_variable_is_named(tmp_path, change, named):
    rc, _, err, recorded = run(tmp_path, env=dict(BASE_ENV, **change))
    assert rc == 1
    assert named in err
    assert not any(c[0] in ("setup_develop", "iniset") for c in recorded)


def test_disabled_periodic_workers_stop_the_run(tmp_path):
    rc, out, err, recorded = run(tmp_path,
                                 disabled="neutron-periodic-workers")
    assert rc == 1
    assert "neutron-periodic-workers is disabled" in err
    assert "maintenance worker" in err
    assert inisets(recorded) == []


def test_settings_enable_the_plugin_and_periodic_workers(tmp_path):
    rc, out, err, _ = run(
        tmp_path, calls=[],
        shell_vars='trap \'echo "SERVICES=$ENABLED_SERVICES"\' EXIT')
    assert rc == 0, err
    services = out.split("SERVICES=")[1].split()[0].split(",")
    assert "networking_vcenter" in services
    assert "neutron-periodic-workers" in services


def test_failed_check_stops_the_run(tmp_path):
    rc, out, err, recorded = run(tmp_path, check_rc=3)
    assert rc == 1
    assert "networking-vcenter check failed against vcenter.example.org" \
        in err
    assert PASSWORD not in out + err


def test_check_can_be_skipped(tmp_path):
    rc, out, err, recorded = run(
        tmp_path, env=dict(BASE_ENV, VCENTER_RUN_CHECK="False"))
    assert rc == 0, err
    assert not any(c[0].startswith("networking-vcenter") for c in recorded)
    assert "not run" in out


def test_node_without_neutron_server_is_left_alone(tmp_path):
    rc, _, err, recorded = run(tmp_path, enabled="n-cpu,q-ovn-agent",
                               env={})
    assert rc == 0, err
    assert recorded == [("define_plugin", "networking-vcenter"), ("done",)]


def test_defaults_from_devstacks_vsphere_nova_settings(tmp_path):
    env = {"VMWAREAPI_IP": "10.0.0.5", "VMWAREAPI_USER": "nova@vsphere.local",
           "VMWAREAPI_PASSWORD": PASSWORD, "VMWAREAPI_CLUSTER": "Cluster1",
           "VCENTER_SWITCH_MAPPINGS": "physnet1:DVS0"}
    hostname = subprocess.run(["hostname"], capture_output=True,
                              text=True).stdout.strip()
    rc, out, err, recorded = run(tmp_path, env=env,
                                 calls=[("stack", "post-config")])
    assert rc == 0, err
    written = {c[2]: c[3] for c in inisets(recorded)
               if c[1] == "ml2_vcenter"}
    assert written["host_ip"] == "10.0.0.5"
    assert written["host_username"] == "nova@vsphere.local"
    assert written["host_password"] == PASSWORD
    assert written["compute_hosts"] == f"{hostname}:Cluster1"
    assert written["insecure"] == "False"
    assert PASSWORD not in out + err


@pytest.mark.parametrize("mode", ["unstack", "clean"])
def test_unstack_and_clean_leave_vcenter_alone(tmp_path, mode):
    # unstack.sh and clean.sh source the plugin with no phase
    rc, out, err, recorded = run(tmp_path, calls=[(mode,)])
    assert rc == 0, err
    assert recorded == [("define_plugin", "networking-vcenter"), ("done",)]
    assert "vCenter left as it is" in out

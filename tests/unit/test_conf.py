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

"""Parsing and validation of [ml2_vcenter] without any vCenter."""

import pytest
from oslo_config import cfg

from networking_vcenter import conf
from networking_vcenter import exceptions


def make_conf(**overrides):
    c = cfg.ConfigOpts()
    conf.register_opts(c)
    c([], project="neutron")
    base = dict(host_ip="vc.example.org", host_username="svc",
                host_password="s3cret-pw", switch_mappings=["physnet1:DVS0"],
                compute_hosts=["vc-compute-1:Cluster1"])
    base.update(overrides)
    for k, v in base.items():
        c.set_override(k, v, group=conf.GROUP)
    return c


def test_valid_settings():
    s = conf.load(make_conf(switch_mappings=["physnet1:DVS0",
                                             "physnet2:vSwitch1"],
                            compute_hosts=["a:C1", "b:C2", "c:C1"]))
    assert s.switch_mappings == {"physnet1": "DVS0", "physnet2": "vSwitch1"}
    assert s.compute_hosts == {"a": "C1", "b": "C2", "c": "C1"}
    assert s.clusters == ["C1", "C2"]
    assert s.host_port == 443 and s.insecure is False
    assert "s3cret-pw" not in repr(s)


@pytest.mark.parametrize("entries, expected", [
    (["physnet1"], "switch_mappings: Invalid mapping: 'physnet1'; each "
                   "entry is <physical_network>:<switch>"),
    (["physnet1:"], "switch_mappings: Missing value in mapping: "
                    "'physnet1:'; each entry is"),
    ([":DVS0"], "switch_mappings: Missing key in mapping: ':DVS0'; each "
                "entry is"),
    (["a:b:c"], "switch_mappings: Invalid mapping: 'a:b:c'; each entry is"),
    (["p1:DVS0", "p1:DVS1"], "switch_mappings: 'p1' is mapped more than "
                             "once ('DVS0', 'DVS1')"),
])
def test_malformed_switch_mappings(entries, expected):
    with pytest.raises(exceptions.ConfigError) as err:
        conf.load(make_conf(switch_mappings=entries))
    assert expected in str(err.value)
    assert "[ml2_vcenter]" in str(err.value)


def test_malformed_compute_hosts_named_with_their_form():
    with pytest.raises(exceptions.ConfigError) as err:
        conf.load(make_conf(compute_hosts=["vc-compute-1"]))
    assert err.value.problems == [
        "[ml2_vcenter] compute_hosts: Invalid mapping: 'vc-compute-1'; each "
        "entry is <nova-compute host>:<cluster>"]


def test_repeated_pair_is_one_and_values_may_repeat():
    s = conf.load(make_conf(switch_mappings=["physnet1:DVS0", " physnet1 : "
                                             "DVS0", "physnet2:DVS0"]))
    assert s.switch_mappings == {"physnet1": "DVS0", "physnet2": "DVS0"}


def test_every_problem_reported_once():
    with pytest.raises(exceptions.ConfigError) as err:
        conf.load(make_conf(host_ip=None, switch_mappings=["bad"],
                            compute_hosts=[],
                            dvs_port_group_name_template="pg-{vlan}"))
    problems = err.value.problems
    assert any("host_ip is not set" in p for p in problems)
    assert any("Invalid mapping: 'bad'" in p for p in problems)
    assert any("compute_hosts is empty" in p for p in problems)
    assert any("must contain {network_id}" in p for p in problems)
    assert any("unknown field {vlan}" in p for p in problems)
    assert len(problems) == 5


def test_password_never_in_errors():
    with pytest.raises(exceptions.ConfigError) as err:
        conf.load(make_conf(switch_mappings=["x"]))
    assert "s3cret-pw" not in str(err.value)


def test_ca_file_and_insecure_exclusive():
    with pytest.raises(exceptions.ConfigError) as err:
        conf.load(make_conf(ca_file="/etc/ssl/ca.pem", insecure=True))
    assert "ca_file and insecure" in str(err.value)


def test_list_opts_for_generator():
    groups = dict(conf.list_opts())
    names = {o.name for o in groups["ml2_vcenter"]}
    assert {"host_ip", "host_port", "host_username", "host_password",
            "ca_file", "insecure", "switch_mappings", "compute_hosts",
            "dvs_port_group_name_template", "task_timeout",
            "api_retry_count", "resync_interval"} <= names
    secret = [o for o in groups["ml2_vcenter"] if o.name == "host_password"]
    assert secret[0].secret


def load_error(tmp_path, lines: str) -> str:
    """conf.load's error for a file with the required options and
    ``lines``."""
    ini = tmp_path / "bad.ini"
    ini.write_text("[ml2_vcenter]\nhost_ip = vc\nhost_username = u\n"
                   "host_password = p\nswitch_mappings = p1:DVS0\n"
                   "compute_hosts = h:C\n" + lines)
    c = cfg.ConfigOpts()
    conf.register_opts(c)
    c(["--config-file", str(ini)], project="neutron")
    with pytest.raises(exceptions.ConfigError) as err:
        conf.load(c)
    return str(err.value)


def test_bad_option_value_named(tmp_path):
    text = load_error(tmp_path, "deployment_name = has space\n"
                                "host_port = not-a-port\n")
    assert "[ml2_vcenter] deployment_name" in text
    assert "[ml2_vcenter] host_port" in text


def test_reread_spread_bounded_and_named(tmp_path):
    assert conf.load(make_conf()).reread_spread == conf.REREAD_SPREAD
    assert conf.load(make_conf(reread_spread=0)).reread_spread == 0
    text = load_error(tmp_path,
                      f"reread_spread = {conf.MAX_REREAD_SPREAD + 1}\n")
    assert "[ml2_vcenter] reread_spread" in text


OPTION = "[ml2_vcenter] dvs_port_group_name_template"
UUID = "0c1d2e3f-4a5b-4c6d-8e7f-8091a2b3c4d5"


def template_error(template, mappings=("physnet1:DVS0",)):
    with pytest.raises(exceptions.ConfigError) as err:
        conf.load(make_conf(dvs_port_group_name_template=template,
                            switch_mappings=list(mappings)))
    text = str(err.value)
    assert OPTION in text, text
    return text


@pytest.mark.parametrize("template", [
    "neutron-{physical_network}-{network_id}",
    "{network_id}",
    "vlan{segmentation_id:04d}-{network_id}",
    "{physical_network:.10}-{network_id}",
    "{{literal}}-{network_id}",
])
def test_name_template_accepted(template):
    s = conf.load(make_conf(dvs_port_group_name_template=template))
    assert s.dvs_name_template == template


@pytest.mark.parametrize("template, expected", [
    # A format spec that does not fit its value: found by formatting.
    ("{physical_network:d}-{network_id}",
     "cannot be formatted with physical_network='physnet1', "
     "segmentation_id=0: ValueError: Unknown format code 'd'"),
    ("{network_id:x}", "ValueError: Unknown format code 'x'"),
    ("{segmentation_id:s}-{network_id}", "Unknown format code 's'"),
    ("{network_id!r}", "field {network_id!r}: conversions"),
    ("{network_id!s}", "conversions (!r, !s, !a) are not supported"),
    ("{vlan}-{network_id}", "unknown field {vlan}; allowed: network_id, "
                            "physical_network, segmentation_id"),
    ("{}-{network_id}", "positional field {}: use a named field"),
    ("{0}-{network_id}", "positional field {0}: use a named field"),
    ("{network_id.hex}", "field {network_id.hex}: attribute and index "
                         "access are not supported"),
    ("{network_id[0]}", "field {network_id[0]}: attribute and index"),
    ("{physical_network}-{network_id:{width}}", "unknown field {width}"),
    ("{network_id", "expected '}' before end of string"),
    ("pg-{physical_network}", "must contain {network_id}"),
    ("{network_id:.8}", "does not keep the network UUID whole "
                        "(gives '0c1d2e3f')"),
])
def test_name_template_refused(template, expected):
    assert expected in template_error(template)


def test_name_template_spec_nested_field_is_formatted():
    # A nested spec takes its value from the segment: width 4094.
    text = template_error("{network_id:{segmentation_id}}")
    assert "gives names of up to 4094 characters" in text
    assert len(text) < 600          # the example name is shortened


def test_name_template_length_for_longest_physnet():
    # 80 characters exactly for the longest mapped physnet at VLAN 4094.
    template = "neutron-{physical_network}-{segmentation_id}-{network_id}"
    fixed = len("neutron--4094-") + len(UUID)
    fits = "p" * (conf.MAX_NAME_LENGTH - fixed)
    s = conf.load(make_conf(dvs_port_group_name_template=template,
                            switch_mappings=["short:DVS0", f"{fits}:DVS1"]))
    assert s.switch_mappings[fits] == "DVS1"
    longer = fits + "x"
    text = template_error(template, ["short:DVS0", f"{longer}:DVS1"])
    assert "gives names of up to 81 characters, more than vSphere's 80" \
        in text
    assert f"'neutron-{longer}-4094-{UUID}'" in text


def test_name_template_length_counts_a_padding_spec():
    text = template_error("{physical_network:>60}{network_id}")
    assert "gives names of up to 96 characters" in text


def test_name_template_fields_include_nested_specs():
    assert conf.name_template_fields(
        "pg-{network_id}-{physical_network:{segmentation_id}}") == \
        {"network_id", "physical_network", "segmentation_id"}

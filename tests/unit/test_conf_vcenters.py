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

"""Several vCenters: [ml2_vcenter] vcenters and a section per vCenter, read
from a real configuration file as oslo.config reads Neutron's."""

import textwrap

import pytest
from oslo_config import cfg

from networking_vcenter import agent
from networking_vcenter import conf
from networking_vcenter import exceptions

BASE = """
[ml2_vcenter]
host_username = svc
host_password = s3cret-pw
deployment_name = cloud1
"""


def load(tmp_path, text):
    path = tmp_path / "ml2_conf.ini"
    path.write_text(textwrap.dedent(text))
    c = cfg.ConfigOpts()
    c(["--config-file", str(path)], project="neutron")
    return conf.load_all(c)


def test_one_vcenter_unchanged(tmp_path):
    (s,) = load(tmp_path, BASE + """
host_ip = vc.example.org
switch_mappings = physnet1:DVS0
compute_hosts = c1:Cluster1
""")
    assert (s.name, s.section, s.host_ip) == ("", "ml2_vcenter",
                                              "vc.example.org")
    assert agent.host(s) == "cloud1@vc.example.org"


def test_two_vcenters_each_with_its_section(tmp_path):
    a, b = load(tmp_path, BASE + """
vcenters = site-a, site-b
switch_mappings = physnet1:DVS0

[ml2_vcenter:site-a]
host_ip = vc-a.example.org
compute_hosts = a1:ClusterA

[ml2_vcenter:site-b]
host_ip = vc-b.example.org
host_username = other
insecure = true
switch_mappings = physnet1:DVS-B, physnet2:DVS-B
compute_hosts = b1:ClusterB, b2:ClusterB
""")
    assert (a.name, a.section) == ("site-a", "ml2_vcenter:site-a")
    # Unset in its section: [ml2_vcenter]'s.
    assert (a.host_ip, a.host_username, a.insecure) == (
        "vc-a.example.org", "svc", False)
    assert a.switch_mappings == {"physnet1": "DVS0"}
    assert a.compute_hosts == {"a1": "ClusterA"}
    assert (b.host_username, b.host_password, b.insecure) == (
        "other", "s3cret-pw", True)
    assert b.switch_mappings == {"physnet1": "DVS-B", "physnet2": "DVS-B"}
    assert b.compute_hosts == {"b1": "ClusterB", "b2": "ClusterB"}
    # The deployment's options are the same in both.
    assert a.deployment_name == b.deployment_name == "cloud1"
    assert {agent.host(a), agent.host(b)} == {"cloud1@site-a",
                                              "cloud1@site-b"}


@pytest.mark.parametrize("text, expected", [
    # A host in two vCenters.
    ("""
vcenters = a, b
switch_mappings = physnet1:DVS0
[ml2_vcenter:a]
host_ip = vc-a
compute_hosts = h1:C1
[ml2_vcenter:b]
host_ip = vc-b
compute_hosts = h1:C2
""", ["[ml2_vcenter:b] compute_hosts: 'h1' is also in [ml2_vcenter:a] "
      "compute_hosts"]),
    # The same vCenter twice.
    ("""
vcenters = a, b
host_ip = vc
switch_mappings = physnet1:DVS0
[ml2_vcenter:a]
compute_hosts = h1:C1
[ml2_vcenter:b]
compute_hosts = h2:C2
""", ["[ml2_vcenter:b] host_ip: vc:443 is also [ml2_vcenter:a]'s"]),
    # Each vCenter's problems, named with its section.
    ("""
vcenters = a, b
[ml2_vcenter:a]
host_ip = vc-a
switch_mappings = physnet1
compute_hosts = h1:C1
[ml2_vcenter:b]
switch_mappings = physnet1:DVS0
compute_hosts = h2:C2
host_port = seventy
""", ["[ml2_vcenter:a] switch_mappings: Invalid mapping: 'physnet1'",
      "[ml2_vcenter:b] host_port:", "[ml2_vcenter:b] host_ip is not set"]),
    ("""
vcenters = a, a, b c
""", ["[ml2_vcenter] vcenters: 'b c' is not a valid name",
      "[ml2_vcenter] vcenters: 'a' is named twice"]),
])
def test_problems_name_their_section(tmp_path, text, expected):
    with pytest.raises(exceptions.ConfigError) as err:
        load(tmp_path, BASE + text)
    for text in expected:
        assert text in str(err.value)
    assert "s3cret-pw" not in str(err.value)


def test_sample_documents_a_vcenter_section():
    groups = dict((g if isinstance(g, str) else g.name, opts)
                  for g, opts in conf.list_opts())
    section = groups["ml2_vcenter:<name>"]
    assert {o.dest for o in section} == set(conf.VCENTER_OPTION_NAMES)
    assert all(o.default is None for o in section)


def test_lock_names_per_vcenter_fit_every_backend(tmp_path):
    from networking_vcenter.reconcile.locks import MAX_NAME, Locks
    url = f"file://{tmp_path}"
    net = "network-0c1d2e3f-4a5b-4c6d-8e7f-8091a2b3c4d5"
    one = Locks(url)
    # The one vCenter's locks keep their names (servers of an earlier
    # version take the same ones).
    assert one.full_name(net) == f"networking-vcenter-{net}"
    names = {Locks(url, scope).full_name(net)
             for scope in ("site-a", "site-b", "x" * 32)}
    assert len(names) == 3 and f"networking-vcenter-{net}" not in names
    assert all(len(n) <= MAX_NAME for n in names)

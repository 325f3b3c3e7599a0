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

"""The operator docs name what the code has: options, defaults, the names
the driver gives its objects in vCenter and in Neutron's agents table.

Cheap text checks, no vCenter and no Neutron: a renamed option or marker
fails here instead of leaving an instruction in the docs that no longer
works.
"""

import pathlib
import re

import pytest

from networking_vcenter import agent
from networking_vcenter import conf
from networking_vcenter.reconcile import plan
from networking_vcenter.vsphere import inventory

ROOT = pathlib.Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
OPTIONS = {opt.name: opt for opt in conf.ALL_OPTS}


def _text(path):
    return path.read_text(encoding="utf-8")


def _blocks(text, lang):
    return re.findall(r"^```" + lang + r"\n(.*?)^```", text,
                      flags=re.S | re.M)


def _ini_options(text):
    """``(section, key)`` of every ``key = value`` line of the ini blocks."""
    found = []
    for block in _blocks(text, "ini"):
        section = None
        for line in block.splitlines():
            line = line.strip()
            if line.startswith("[") and line.endswith("]"):
                section = line[1:-1]
            elif "=" in line and not line.startswith("#"):
                found.append((section, line.split("=", 1)[0].strip()))
    return found


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_ini_examples_use_existing_options(path):
    unknown = [key for section, key in _ini_options(_text(path))
               if section == conf.GROUP and key not in OPTIONS]
    assert not unknown, f"{path.name}: no such [{conf.GROUP}] option"


def test_openstack_ansible_override_uses_existing_options():
    text = _text(ROOT / "docs" / "install.md")
    keys = []
    for block in _blocks(text, "yaml"):
        inside = False
        for line in block.splitlines():
            if re.match(rf"^\s+{conf.GROUP}:\s*$", line):
                inside, indent = True, len(line) - len(line.lstrip())
                continue
            if inside:
                depth = len(line) - len(line.lstrip())
                if line.strip() and depth <= indent:
                    inside = False
                elif line.strip():
                    keys.append(line.split(":", 1)[0].strip())
    assert keys, "the OpenStack-Ansible example lost its ml2_vcenter keys"
    assert set(keys) <= set(OPTIONS)


def _table_rows():
    """``(option, default cell)`` of the options table of deployment.md."""
    text = _text(ROOT / "docs" / "deployment.md")
    table = text[text.index("| option | default | meaning |"):]
    rows = []
    for line in table.splitlines()[2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows.append((cells[0].strip("`"), cells[1]))
    return rows


def test_options_table_names_and_defaults():
    rows = _table_rows()
    assert len(rows) >= 10
    for name, default in rows:
        assert name in OPTIONS, f"deployment.md table: no option {name}"
        value = OPTIONS[name].default
        if default in ("`true`", "`false`"):
            assert value is (default == "`true`"), name
        elif re.fullmatch(r"\d+", default):
            assert value == int(default), name
        elif re.fullmatch(r"`[^`]+`", default):
            assert value == default.strip("`"), name


def test_names_of_what_the_driver_leaves_behind():
    install = _text(ROOT / "docs" / "install.md")
    migration = _text(ROOT / "docs" / "migration.md")
    # the agents row
    assert f"`{agent.AGENT_TYPE}`" in install
    assert f"`{agent.BINARY}`" in install
    assert f'$2 == "{agent.BINARY}"' in install
    assert "`<deployment_name>@<host_ip>`" in install
    # the ownership marks, as the listing script and the tables write them
    uuid = "0c1d2e3f-4a5b-4c6d-8e7f-8091a2b3c4d5"
    description = inventory.owner_description("default", uuid, "physnet1",
                                              101)
    assert description.startswith(
        "networking-vcenter managed by default: ")
    assert 'f"networking-vcenter managed by {deployment}: "' in install
    assert inventory.mark_from_description(description) == \
        inventory.Mark("default", uuid)
    assert f'f.name == "{inventory.OWNER_FIELD}"' in install
    assert f"`{inventory.OWNER_FIELD}`" in migration
    assert inventory.owner_value("d", uuid) == f"d/{uuid}"
    assert "`<deployment_name>/<network UUID>`" in install
    # released DV ports, and the listing script skipping them
    assert f'!= "{plan.FREE}"' in install
    # the default distributed port group name
    assert conf.DEFAULT_DVS_NAME_TEMPLATE == \
        "neutron-{physical_network}-{network_id}"
    assert "`neutron-<physnet>-<network UUID>`" in install


def test_entry_points_named_in_install_guide():
    tomllib = pytest.importorskip("tomllib")    # Python 3.11+
    project = tomllib.loads(_text(ROOT / "pyproject.toml"))["project"]
    drivers = project["entry-points"]["neutron.ml2.mechanism_drivers"]
    install = _text(ROOT / "docs" / "install.md")
    assert list(drivers) == ["vcenter"]
    assert "`vcenter` (entry point `neutron.ml2.mechanism_drivers`)" \
        in install
    assert list(project["scripts"]) == ["networking-vcenter"]
    assert "`networking-vcenter` (console script)" in install
    assert list(project["entry-points"]["oslo.config.opts"]) == \
        ["networking_vcenter"]


def _slug(heading):
    """GitHub's anchor of a Markdown heading."""
    text = heading.strip().lower().replace("`", "")
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_links_between_docs_resolve(path):
    for target, anchor in re.findall(r"\]\(([\w./-]*\.md)?#?([\w-]*)\)",
                                     _text(path)):
        page = (path.parent / target).resolve() if target else path
        assert page.exists(), f"{path.name}: link to missing {target}"
        if anchor:
            slugs = {_slug(h) for h in re.findall(r"^#+ (.+)$",
                                                  _text(page), flags=re.M)}
            assert anchor in slugs, f"{path.name}: no #{anchor} in {page.name}"

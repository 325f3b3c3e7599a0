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

"""What the package declares against what it is: its imports, its licence.

The declared dependencies are compared with the third-party modules that
networking_vcenter/ imports (at module level or inside a function), mapped to
their distributions through the installed packages' metadata.  The slow
proof -- the built wheel in a fresh virtualenv -- is tools/check_install.sh.
"""

import ast
import importlib.metadata
import pathlib
import re
import sys
import tomllib

ROOT = pathlib.Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "networking_vcenter"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())

# Declared but not imported yet, and why.
NOT_IMPORTED_YET: dict[str, str] = {}     # distribution -> why

HEADER = """\
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
"""


def normalized(name: str) -> str:
    """A distribution name as PEP 503 compares them."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str:
    return normalized(re.match(r"[A-Za-z0-9._-]+", requirement).group(0))


def top_level_imports(root: pathlib.Path) -> dict[str, set[str]]:
    """Each top-level module imported under ``root`` -> the files."""
    found: dict[str, set[str]] = {}
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.split(".")[0], set()).add(
                    str(path.relative_to(ROOT)))
    return found


def third_party_distributions() -> dict[str, set[str]]:
    """Each distribution that provides a module networking_vcenter/
    imports -> the files importing it."""
    providers = importlib.metadata.packages_distributions()
    used: dict[str, set[str]] = {}
    unknown = {}
    for module, files in top_level_imports(PACKAGE).items():
        if (module in sys.stdlib_module_names or module == "__future__"
                or module == "networking_vcenter"):
            continue
        dists = providers.get(module)
        if not dists:
            unknown[module] = sorted(files)
            continue
        for dist in dists:
            used.setdefault(normalized(dist), set()).update(files)
    assert not unknown, (
        f"imported, but no installed distribution provides them: {unknown}")
    return used


def test_every_import_is_declared_and_every_dependency_imported():
    declared = {requirement_name(r)
                for r in PYPROJECT["project"]["dependencies"]}
    used = third_party_distributions()

    undeclared = {d: sorted(f) for d, f in used.items() if d not in declared}
    assert not undeclared, (
        "imported by networking_vcenter/ but not in pyproject.toml's "
        f"[project] dependencies: {undeclared}")

    unused = declared - used.keys() - NOT_IMPORTED_YET.keys()
    assert not unused, (
        "declared in pyproject.toml's [project] dependencies but imported "
        f"nowhere in networking_vcenter/: {sorted(unused)}")


def test_dependencies_have_lower_bounds():
    for requirement in PYPROJECT["project"]["dependencies"]:
        assert ">=" in requirement, f"{requirement}: no lower bound"


def test_coordination_extras_are_tooz_backends():
    extras = PYPROJECT["project"]["optional-dependencies"]
    for name in ("mysql", "redis", "etcd3gw", "zookeeper", "memcached"):
        assert extras[name] == [f"tooz[{name}]>=2.0"], name


def test_sample_config_is_shipped():
    data = PYPROJECT["tool"]["setuptools"]["data-files"]
    assert data["etc/neutron/plugins/ml2"] == [
        "etc/ml2_conf_vcenter.ini.sample"]
    assert (ROOT / "etc/ml2_conf_vcenter.ini.sample").is_file()


def test_license():
    assert PYPROJECT["project"]["license"] == "Apache-2.0"
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License\n" in text and "Version 2.0, January 2004" in text


def test_every_python_file_has_the_license_header():
    missing = []
    for top in ("networking_vcenter", "tests", "tools", "bench"):
        for path in sorted((ROOT / top).rglob("*.py")):
            rel = path.relative_to(ROOT)
            if rel.parts[:3] == ("tools", "vcsim", "build"):
                continue
            text = path.read_text()
            if text.startswith("#!"):
                text = text.partition("\n")[2]
            if not text.startswith(HEADER):
                missing.append(str(rel))
    assert not missing, f"no Apache 2.0 header at the top: {missing}"

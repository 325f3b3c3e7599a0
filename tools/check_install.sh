#!/usr/bin/env bash
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

# Is the built package installable on its own?  Builds the wheel, installs it
# into a fresh virtualenv with nothing but its declared dependencies (from the
# package index, under upper-constraints.txt), and from outside the source tree:
#   - loads the driver through its neutron.ml2.mechanism_drivers entry point,
#     imports every module of the package and makes the maintenance worker;
#   - runs `networking-vcenter --help` and reads a configuration file the way
#     the CLI does (Neutron's and oslo.db's options with the driver's);
#   - compares the installed sample configuration with what
#     oslo-config-generator makes from the installed package;
#   - `pip check`;
# then installs the coordination extras and makes a tooz coordinator of each
# backend (no connection: this shows the backend's library imports).
#
#   tools/check_install.sh          (or: tox -e install)
#
# PYTHON (default python3) builds and runs the venv; KEEP=1 keeps the temporary
# directory; UPPER_CONSTRAINTS (default upper-constraints.txt) is the
# constraints file (a path or a URL).  Slow (Neutron's dependencies: about two minutes from a
# warm pip cache), so it is not part of `make test`.
set -euo pipefail
cd "$(dirname "$0")/.."
SRC=$PWD
PYTHON=${PYTHON:-python3}
CONSTRAINTS=${UPPER_CONSTRAINTS:-upper-constraints.txt}
case $CONSTRAINTS in
    *://*) ;;                                  # a URL, as OpenStack's
    *) CONSTRAINTS=$(realpath "$CONSTRAINTS") ;;
esac
EXTRAS=mysql,redis,etcd3gw,zookeeper,memcached
# shellcheck source=tools/pip-quiet.sh
. tools/pip-quiet.sh

TMP=$(mktemp -d /tmp/networking-vcenter-install.XXXXXX)
if [ "${KEEP:-0}" = 1 ]; then
    echo "keeping $TMP"
else
    trap 'rm -rf "$TMP"' EXIT
fi
start=$SECONDS
step() { echo "== [$((SECONDS - start))s] $*"; }

step "build the wheel"
pip_quiet "$PYTHON" wheel -q --no-deps -w "$TMP/dist" "$SRC"
WHEEL=$(ls "$TMP"/dist/networking_vcenter-*.whl)
echo "$WHEEL"

step "a fresh virtualenv: $TMP/venv"
"$PYTHON" -m venv "$TMP/venv"
V=$TMP/venv/bin
step "install the wheel with its declared dependencies (-c $CONSTRAINTS)"
pip_quiet "$V/python" install -q -c "$CONSTRAINTS" "$WHEEL"
"$V/python" -m pip list --format=freeze 2>/dev/null > "$TMP/installed.txt"
echo "$(wc -l < "$TMP/installed.txt") packages"

# Run from an empty directory: networking_vcenter must come from the venv.
mkdir "$TMP/run"
cd "$TMP/run"

step "the driver, every module, the maintenance worker"
"$V/python" - <<'EOF'
import importlib
import importlib.metadata as md
import os
import pkgutil
import sys

import networking_vcenter

here = os.path.dirname(networking_vcenter.__file__)
assert here.startswith(sys.prefix), f"imported from {here}, not the venv"

(ep,) = md.entry_points(group="neutron.ml2.mechanism_drivers", name="vcenter")
driver = ep.load()
from neutron_lib.plugins.ml2 import api
assert issubclass(driver, api.MechanismDriver), driver
print(f"entry point vcenter -> {driver.__module__}.{driver.__name__}")

names = [m.name for m in pkgutil.walk_packages([here], "networking_vcenter.")]
for name in names:
    importlib.import_module(name)
print(f"imported {len(names)} modules")

from neutron_lib import worker as n_worker
from networking_vcenter.reconcile import worker
w = worker.MaintenanceWorker(lambda: None, lambda: None)
assert isinstance(w, n_worker.BaseWorker)
print(f"worker: {type(w).__name__}, {w.worker_process_count} processes")

dist = md.distribution("networking-vcenter")
assert any(str(f).endswith("LICENSE") for f in dist.files), "no LICENSE"
print("LICENSE in", dist._path.name)
EOF

step "the CLI"
"$V/networking-vcenter" --help | head -3
cat > "$TMP/ml2_conf.ini" <<'EOF'
[ml2_vcenter]
host_ip = vcenter.invalid
host_username = svc
host_password = secret
switch_mappings = physnet1:DVS0
compute_hosts = vc-compute-1:Cluster1
EOF
"$V/python" - "$TMP/ml2_conf.ini" <<'EOF'
import sys
from networking_vcenter import cli
s = cli.load_config([sys.argv[1]])
assert s.switch_mappings == {"physnet1": "DVS0"}, s
print("cli.load_config: read", sys.argv[1])
EOF

step "the installed sample configuration"
SAMPLE=$TMP/venv/etc/neutron/plugins/ml2/ml2_conf_vcenter.ini.sample
test -f "$SAMPLE"
cmp "$SAMPLE" "$SRC/etc/ml2_conf_vcenter.ini.sample"
"$V/oslo-config-generator" --namespace networking_vcenter --wrap-width 79 \
    --output-file "$TMP/generated.sample"
diff -u "$SAMPLE" "$TMP/generated.sample"
echo "$SAMPLE matches oslo-config-generator's output"

step "pip check"
"$V/python" -m pip check

step "the coordination extras: [$EXTRAS]"
pip_quiet "$V/python" install -q -c "$CONSTRAINTS" "$WHEEL[$EXTRAS]"
"$V/python" - <<'EOF'
from tooz import coordination
# Making a coordinator loads its driver, which imports the backend's library;
# nothing connects before start().
for url in ("mysql://u:p@127.0.0.1/neutron", "redis://127.0.0.1:6379",
            "etcd3+http://127.0.0.1:2379", "zookeeper://127.0.0.1:2181",
            "memcached://127.0.0.1:11211"):
    c = coordination.get_coordinator(url, b"check-install")
    print(f"{url.split(':')[0]:>10}: {type(c).__module__}")
EOF
"$V/python" -m pip check
"$V/python" -m pip list --format=freeze 2>/dev/null \
    | grep -vxF -f "$TMP/installed.txt" | sed 's/^/extras added: /'

step "OK: networking-vcenter installs and imports with its declared dependencies"

#!/bin/bash
# Create the separate virtualenv that holds OpenStack Nova for the end-to-end
# tests (Nova's own, unmodified VMware driver code attaches NICs to simulator
# VMs; see tools/nova/attach.py).
#
#   NOVA_VENV   where to create it (default: <repo>/.venv-nova, gitignored)
#   NOVA_PYTHON interpreter for the venv (default: python3)
#   NOVA_VERSION Nova release from PyPI (default: 34.0.0)
#
# Installs nova[vmware]==$NOVA_VERSION (the extra brings oslo.vmware) and
# pyvmomi (for reading results back). Idempotent: nothing is done when the
# venv already holds that Nova version with oslo.vmware and pyvmomi importable.
# Prints the venv's python path on stdout as its last line; messages go to stderr.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
venv=${NOVA_VENV:-$repo/.venv-nova}
python=${NOVA_PYTHON:-python3}
version=${NOVA_VERSION:-34.0.0}

say() { echo "setup-venv.sh: $*" >&2; }
die() { echo "setup-venv.sh: error: $*" >&2; exit 1; }

installed() {
    [[ -x $venv/bin/python ]] || return 1
    "$venv/bin/python" - "$version" <<'EOF' >/dev/null 2>&1
import sys
from importlib.metadata import version
assert version("nova") == sys.argv[1], version("nova")
import oslo_vmware, pyVmomi, nova.virt.vmwareapi.vm_util  # noqa: F401
EOF
}

if installed; then
    say "up to date: nova $version in $venv"
    echo "$venv/bin/python"
    exit 0
fi

command -v "$python" >/dev/null || die "no '$python' interpreter (set NOVA_PYTHON)"

start=$(date +%s)
if [[ ! -x $venv/bin/python ]]; then
    say "creating venv $venv with $("$python" --version 2>&1)"
    "$python" -m venv "$venv" || die "could not create venv $venv"
fi

# shellcheck source=../pip-quiet.sh
. "$(dirname "${BASH_SOURCE[0]}")/../pip-quiet.sh"

say "installing nova[vmware]==$version and pyvmomi into $venv (about 30 s)"
pip_quiet "$venv/bin/python" install --quiet --upgrade pip \
    || say "warning: could not upgrade pip; going on with $("$venv/bin/python" -m pip --version)"
pip_quiet "$venv/bin/python" install --quiet "nova[vmware]==$version" pyvmomi \
    || die "pip install nova[vmware]==$version pyvmomi failed (see above)"

installed || die "nova $version installed but the check failed: $venv/bin/python -c 'import nova.virt.vmwareapi.vm_util, oslo_vmware, pyVmomi'"
say "done in $(( $(date +%s) - start )) s: nova $version in $venv"
echo "$venv/bin/python"

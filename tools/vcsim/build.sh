#!/bin/bash
# Build the patched vCenter simulator used by the tests, without any network.
#
# Debian's golang-github-vmware-govmomi-dev ships govmomi's `simulator` package
# as source but no vcsim command. This script copies that package (the
# installed files are never touched) into an overlay GOPATH, applies
# tools/vcsim/patches/*.patch in order, and builds tools/vcsim/main.go against
# the overlay first and /usr/share/gocode second:
#
#   ${VCSIM_BUILD_DIR:-<repo>/tools/vcsim/build}/vcsim
#
# Nothing is rebuilt when that binary is newer than main.go, the patches and
# this script. Needs: golang-go, golang-github-vmware-govmomi-dev, patch.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
build=${VCSIM_BUILD_DIR:-$here/build}
gocode=/usr/share/gocode
src=$gocode/src/github.com/vmware/govmomi/simulator
bin=$build/vcsim

die() { echo "build.sh: error: $*" >&2; exit 1; }
say() { echo "build.sh: $*" >&2; }

patches=()
shopt -s nullglob
for p in "$here"/patches/*.patch; do patches+=("$p"); done
# Patches of govmomi outside the simulator package (vim25/types), relative
# to govmomi's root: the top-level directories they touch are copied into
# the overlay instead of linked.
root_patches=()
for p in "$here"/patches-govmomi/*.patch; do root_patches+=("$p"); done
shopt -u nullglob

# Up to date? (Directories count too: removing a patch changes the patches
# directory, upgrading the Debian package the simulator directory.)
if [[ -x $bin ]]; then
    stale=0
    for f in "$here/main.go" "$here/build.sh" "$here/patches" "${patches[@]}" \
             "$here/patches-govmomi" "${root_patches[@]}" "$src"; do
        if [[ $f -nt $bin ]]; then stale=1; break; fi
    done
    if [[ $stale == 0 ]]; then
        say "up to date: $bin"
        exit 0
    fi
fi

command -v go >/dev/null || die "no 'go' command: apt-get install golang-go"
command -v patch >/dev/null || die "no 'patch' command: apt-get install patch"
[[ -d $src ]] || die "$src not found: apt-get install golang-github-vmware-govmomi-dev"

start=$(date +%s%N)
overlay=$build/gopath
dst=$overlay/src/github.com/vmware/govmomi/simulator

say "copying $src -> $dst"
rm -rf "$overlay"
mkdir -p "$(dirname "$dst")"
cp -r "$src" "$dst"
chmod -R u+w "$dst"
# In GOPATH mode an import path resolves in the first GOPATH entry holding its
# directory, so the overlay's govmomi directory must hold every other govmomi
# package too: link them to the installed ones.
for e in "$(dirname "$src")"/*; do
    [[ $(basename "$e") == simulator ]] || ln -s "$e" "$(dirname "$dst")/"
done

root=$(dirname "$dst")
for p in "${root_patches[@]}"; do
    for top in $(sed -n 's|^+++ b/\([^/]*\)/.*|\1|p' "$p" | sort -u); do
        if [[ -L $root/$top ]]; then
            rm "$root/$top"
            cp -r "$(dirname "$src")/$top" "$root/$top"
            chmod -R u+w "$root/$top"
        fi
    done
    say "applying $(basename "$p") (govmomi)"
    if ! out=$(patch -p1 --forward --batch --no-backup-if-mismatch -d "$root" <"$p" 2>&1); then
        echo "$out" >&2
        die "patch $(basename "$p") does not apply to $(dirname "$src")"
    fi
done

for p in "${patches[@]}"; do
    say "applying $(basename "$p")"
    if ! out=$(patch -p1 --forward --batch --no-backup-if-mismatch -d "$dst" <"$p" 2>&1); then
        echo "$out" >&2
        die "patch $(basename "$p") does not apply to $src (govmomi $(dpkg-query -W -f='${Version}' golang-github-vmware-govmomi-dev 2>/dev/null || echo '?'))"
    fi
done

say "building $bin ($(go version | cut -d' ' -f3))"
# GOPATH mode (no module proxy here): the overlay's simulator shadows the
# installed one, everything else comes from /usr/share/gocode.
(
    cd "$here"
    GO111MODULE=off GOFLAGS= GOPATH="$overlay:$gocode" GOCACHE="${GOCACHE:-$build/go-cache}" \
        go build -o "$bin.tmp" ./main.go
) || die "go build failed"
mv -f "$bin.tmp" "$bin"

ms=$((($(date +%s%N) - start) / 1000000))
say "built $bin in $((ms / 1000)).$((ms % 1000 / 100)) s"

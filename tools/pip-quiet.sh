# Sourced by the project's shell scripts: pip_quiet PYTHON ARGS... runs
# "PYTHON -m pip ARGS...", keeping pip's exit status, with the harmless
# "Location 'file:///...' is ignored" warnings that a pip.conf pointing at
# partial local indexes causes filtered out.
pip_quiet() {
    local py=$1 status
    shift
    set +e
    "$py" -m pip "$@" 2>&1 | grep -v "^WARNING: Location 'file:" >&2
    status=("${PIPESTATUS[@]}")
    set -e
    return "${status[0]}"
}

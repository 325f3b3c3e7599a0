#!/usr/bin/env bash
# DevStack plugin of networking-vcenter: installs the ML2 driver and writes
# [ml2_vcenter] for the vCenter given by the VCENTER_* variables of
# devstack/settings.
#
#   stack pre-install   check the VCENTER_* variables (fail before installing)
#   stack install       pip install -e the checkout (setup_develop)
#   stack post-config   vcenter in [ml2] mechanism_drivers, [ml2_vcenter]
#   stack extra         networking-vcenter check against the running cloud
#   unstack, clean      nothing: see networking_vcenter_leftovers
#
# Everything happens on the node that runs the Neutron server; other nodes
# need nothing (agents and nova-compute do not load mechanism drivers).
#
# VCENTER_PASSWORD never goes through xtrace: the functions that read it turn
# tracing off and put back what they found.

_XTRACE_NETWORKING_VCENTER=$(set +o | grep xtrace)
set +o xtrace

NETWORKING_VCENTER_GROUP=ml2_vcenter
NETWORKING_VCENTER_REQUIRED="VCENTER_HOST VCENTER_USER VCENTER_PASSWORD VCENTER_SWITCH_MAPPINGS VCENTER_COMPUTE_HOSTS"

# The [ml2_vcenter] option a VCENTER_* variable is written to.
function networking_vcenter_option_of {
    case "$1" in
        VCENTER_HOST) echo host_ip ;;
        VCENTER_PORT) echo host_port ;;
        VCENTER_USER) echo host_username ;;
        VCENTER_PASSWORD) echo host_password ;;
        VCENTER_CA_FILE) echo ca_file ;;
        VCENTER_INSECURE) echo insecure ;;
        VCENTER_SWITCH_MAPPINGS) echo switch_mappings ;;
        VCENTER_COMPUTE_HOSTS) echo compute_hosts ;;
        VCENTER_DEPLOYMENT_NAME) echo deployment_name ;;
    esac
}

# Dies naming every VCENTER_* variable that is missing or malformed; the
# values themselves are never shown (one of them is the password).
function networking_vcenter_check_settings {
    local xtrace
    xtrace=$(set +o | grep xtrace)
    set +o xtrace

    local var problems=()
    local missing=()
    for var in $NETWORKING_VCENTER_REQUIRED; do
        if [[ -z "${!var:-}" ]]; then
            missing+=("$var ([$NETWORKING_VCENTER_GROUP] $(networking_vcenter_option_of $var))")
        fi
    done
    if [[ ${#missing[@]} -gt 0 ]]; then
        local joined
        joined=$(printf '%s, ' "${missing[@]}")
        problems+=("not set in local.conf: ${joined%, }")
    fi
    local pairs='^[^:,[:space:]]+:[^:,[:space:]]+(,[^:,[:space:]]+:[^:,[:space:]]+)*$'
    for var in VCENTER_SWITCH_MAPPINGS VCENTER_COMPUTE_HOSTS; do
        if [[ -n "${!var:-}" && ! "${!var}" =~ $pairs ]]; then
            problems+=("$var must be comma-separated <name>:<name> pairs without spaces, e.g. $([[ $var == VCENTER_SWITCH_MAPPINGS ]] && echo physnet1:DVS0 || echo vc-compute-1:Cluster1)")
        fi
    done
    if [[ ! "${VCENTER_PORT:-}" =~ ^[0-9]+$ ]] || (( VCENTER_PORT < 1 || VCENTER_PORT > 65535 )); then
        problems+=("VCENTER_PORT must be a TCP port number (1-65535)")
    fi
    if [[ -n "${VCENTER_CA_FILE:-}" && "${VCENTER_INSECURE:-False}" == "True" ]]; then
        problems+=("VCENTER_CA_FILE and VCENTER_INSECURE=True are both set: choose one")
    elif [[ -n "${VCENTER_CA_FILE:-}" && ! -r "$VCENTER_CA_FILE" ]]; then
        problems+=("VCENTER_CA_FILE names a file that cannot be read: $VCENTER_CA_FILE")
    fi
    if [[ -n "${VCENTER_DEPLOYMENT_NAME:-}" && ! "$VCENTER_DEPLOYMENT_NAME" =~ ^[A-Za-z0-9_.-]{1,32}$ ]]; then
        problems+=("VCENTER_DEPLOYMENT_NAME must be 1 to 32 letters, digits, '_', '.' or '-'")
    fi
    if ! is_service_enabled neutron-periodic-workers; then
        problems+=("neutron-periodic-workers is disabled: the driver's maintenance worker runs there (drift repair, work an API call could not finish, the backend's agent row); remove it from disable_service in local.conf")
    fi

    if [[ ${#problems[@]} -gt 0 ]]; then
        local problem
        for problem in "${problems[@]}"; do
            echo "networking-vcenter: $problem" >&2
        done
        die $LINENO "networking-vcenter: ${problems[0]}${problems[1]:+ (and $((${#problems[@]} - 1)) more problem(s) above)}"
    fi
    $xtrace
}

function install_networking_vcenter {
    setup_develop $NETWORKING_VCENTER_DIR
}

# Writes the [ml2_vcenter] options and adds vcenter to [ml2]
# mechanism_drivers in the ML2 file DevStack made (/$Q_PLUGIN_CONF_FILE),
# which the Neutron API, neutron-rpc-server and neutron-periodic-workers read.
function configure_networking_vcenter {
    local xtrace
    xtrace=$(set +o | grep xtrace)
    set +o xtrace

    networking_vcenter_check_settings
    local conf=/$Q_PLUGIN_CONF_FILE

    if [[ -z "${Q_ML2_PLUGIN_MECHANISM_DRIVERS:-}" ]]; then
        Q_ML2_PLUGIN_MECHANISM_DRIVERS=vcenter
    elif [[ ! ",$Q_ML2_PLUGIN_MECHANISM_DRIVERS," =~ ,vcenter, ]]; then
        Q_ML2_PLUGIN_MECHANISM_DRIVERS+=",vcenter"
    fi
    iniset $conf ml2 mechanism_drivers "$Q_ML2_PLUGIN_MECHANISM_DRIVERS"

    local var
    for var in VCENTER_HOST VCENTER_PORT VCENTER_USER VCENTER_PASSWORD \
               VCENTER_SWITCH_MAPPINGS VCENTER_COMPUTE_HOSTS; do
        iniset $conf $NETWORKING_VCENTER_GROUP $(networking_vcenter_option_of $var) "${!var}"
    done
    if [[ -n "${VCENTER_CA_FILE:-}" ]]; then
        iniset $conf $NETWORKING_VCENTER_GROUP ca_file "$VCENTER_CA_FILE"
    fi
    iniset $conf $NETWORKING_VCENTER_GROUP insecure "$VCENTER_INSECURE"
    if [[ -n "${VCENTER_DEPLOYMENT_NAME:-}" ]]; then
        iniset $conf $NETWORKING_VCENTER_GROUP deployment_name "$VCENTER_DEPLOYMENT_NAME"
    fi

    echo "networking-vcenter: [$NETWORKING_VCENTER_GROUP] written to $conf for $VCENTER_USER at $VCENTER_HOST:$VCENTER_PORT (host_password not shown); [ml2] mechanism_drivers = $Q_ML2_PLUGIN_MECHANISM_DRIVERS"
    if [[ "$VCENTER_INSECURE" == "True" ]]; then
        echo "networking-vcenter: WARNING: insecure = True, the vCenter certificate is not verified"
    fi
    $xtrace
}

# Once Neutron runs: the driver's own check (configuration, login, mappings,
# privileges, database). It only reads, and exits non-zero when a check fails.
function check_networking_vcenter {
    if [[ "$VCENTER_RUN_CHECK" != "True" ]]; then
        echo "networking-vcenter: VCENTER_RUN_CHECK=False, 'networking-vcenter check' not run"
        return 0
    fi
    if ! $NEUTRON_BIN_DIR/networking-vcenter --config-file $NEUTRON_CONF \
            --config-file /$Q_PLUGIN_CONF_FILE check; then
        die $LINENO "networking-vcenter check failed against $VCENTER_HOST (its output above says which check); fix the VCENTER_* variables or vCenter and stack again"
    fi
}

# unstack and clean leave vCenter alone: the port groups and DV ports of
# networks that still exist stay there. Once clean.sh has dropped Neutron's
# database, the next stack's driver (same VCENTER_DEPLOYMENT_NAME) finds them
# without a network and removes them once no VM uses them.
function networking_vcenter_leftovers {
    echo "networking-vcenter: vCenter left as it is; the next stack with deployment_name '${VCENTER_DEPLOYMENT_NAME:-default}' removes port groups of networks that are gone"
}

$_XTRACE_NETWORKING_VCENTER

if is_service_enabled networking_vcenter && is_service_enabled neutron-api q-svc; then
    if [[ "${1:-}" == "stack" && "${2:-}" == "pre-install" ]]; then
        echo_summary "Checking the networking-vcenter settings"
        networking_vcenter_check_settings

    elif [[ "${1:-}" == "stack" && "${2:-}" == "install" ]]; then
        echo_summary "Installing networking-vcenter"
        install_networking_vcenter

    elif [[ "${1:-}" == "stack" && "${2:-}" == "post-config" ]]; then
        echo_summary "Configuring the networking-vcenter ML2 driver"
        configure_networking_vcenter

    elif [[ "${1:-}" == "stack" && "${2:-}" == "extra" ]]; then
        echo_summary "Checking networking-vcenter against vCenter"
        check_networking_vcenter
    fi

    if [[ "${1:-}" == "unstack" || "${1:-}" == "clean" ]]; then
        networking_vcenter_leftovers
    fi
fi

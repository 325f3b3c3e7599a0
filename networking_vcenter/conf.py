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

"""Configuration of the vcenter mechanism driver: the ``[ml2_vcenter]`` section.

One vCenter is configured in ``[ml2_vcenter]`` itself.  Several are named in
``[ml2_vcenter] vcenters``, each with a section of its own,
``[ml2_vcenter:<name>]``, holding its connection, ``switch_mappings`` and
``compute_hosts``; an option a vCenter's section leaves unset is taken from
``[ml2_vcenter]`` (one set of credentials for all, say).  Everything else
(deadlines, locks, security groups) is the deployment's, in
``[ml2_vcenter]``.

Option names follow Nova's ``[vmware]`` section (``host_ip``, ``host_username``,
``host_password``, ``ca_file``, ``insecure``, ``api_retry_count``...) so that an
operator can copy the connection settings of the nova-compute that runs the same
clusters.  Parsing of the two mapping options lives here too, so that a malformed
mapping is reported with the option's name before anything talks to vCenter.
"""

from __future__ import annotations

import copy
import dataclasses
import re
import string

from neutron_lib.utils import helpers
from oslo_config import cfg

from networking_vcenter import exceptions

GROUP = "ml2_vcenter"
# The section of a vCenter named in [ml2_vcenter] vcenters.
VCENTER_GROUP = GROUP + ":{}"
# What a vCenter's name may be (it names its section, its locks and its
# agent row).
NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,32}$")

# vSphere refuses names longer than this for any managed entity.
MAX_NAME_LENGTH = 80

DEFAULT_DVS_NAME_TEMPLATE = "neutron-{physical_network}-{network_id}"

connection_opts = [
    cfg.HostAddressOpt(
        "host_ip",
        help="Address of the vCenter server (or of a standalone ESXi host) "
             "whose switches carry the port groups."),
    cfg.PortOpt("host_port", default=443,
                help="HTTPS port of the vSphere API."),
    cfg.StrOpt("host_username",
               help="vSphere user the driver logs in as. See the deployment "
                    "guide for the privileges it needs."),
    cfg.StrOpt("host_password", secret=True,
               help="Password of host_username. Never logged."),
    cfg.StrOpt("ca_file",
               help="CA bundle used to verify the vCenter certificate. "
                    "Default: the system trust store."),
    cfg.BoolOpt("insecure", default=False,
                help="Do not verify the vCenter certificate. Only for tests "
                     "and labs: the connection can then be intercepted."),
    cfg.IntOpt("api_retry_count", default=10, min=0,
               help="How many times a vSphere call is retried after a "
                    "transient fault (connection lost, vCenter busy). "
                    "Permanent faults are never retried."),
    cfg.FloatOpt("api_timeout", default=30.0, min=1.0,
                 help="Seconds to wait for one vSphere API response before "
                      "the call counts as failed (and may be retried)."),
    cfg.IntOpt("task_timeout", default=300, min=1,
               help="Seconds to wait for a vSphere task (port group create, "
                    "reconfigure, destroy) before giving up on it."),
]

mapping_opts = [
    cfg.ListOpt(
        "switch_mappings", default=[],
        help="Comma-separated <physical_network>:<switch> pairs, e.g. "
             "'physnet1:DVS0,physnet2:vSwitch1'. The switch is a distributed "
             "switch when one of that name exists in vCenter, otherwise a "
             "standard vSwitch that must exist on every host of the clusters "
             "listed in compute_hosts (or on the ESXi host itself). Networks "
             "on other physical networks are ignored by this driver."),
    cfg.ListOpt(
        "compute_hosts", default=[],
        help="Comma-separated <nova-compute host>:<cluster> pairs, e.g. "
             "'vc-compute-1:Cluster1': the binding:host_id values of ports "
             "this driver binds (Nova's VMware driver runs one nova-compute "
             "per cluster), and the clusters whose hosts carry "
             "standard-vSwitch port groups. Against a standalone ESXi host "
             "give its host name as the cluster."),
    cfg.StrOpt(
        "deployment_name", default="default",
        regex=r"^[A-Za-z0-9_.-]{1,32}$",
        help="Names this Neutron deployment in the mark the driver puts on "
             "every port group it creates (letters, digits, '_', '.', '-'). "
             "OpenStack deployments that share one vCenter must each have "
             "their own: a deployment never changes or deletes port groups "
             "marked by another. Never change it once port groups exist."),
    cfg.StrOpt(
        "dvs_port_group_name_template", default=DEFAULT_DVS_NAME_TEMPLATE,
        help="Name of the distributed port group made for a network "
             "segment. Fields: {network_id} (required), "
             "{physical_network}, {segmentation_id}, with format specs "
             "that fit their value (e.g. {segmentation_id:04d}); no "
             "conversions, positional fields or attribute access. Names "
             "are limited to 80 characters: the template is tried with "
             "every mapped physical network and VLAN 4094 at start-up. "
             "Standard port groups are always named exactly "
             "the network UUID, because that is the name Nova attaches "
             "the NIC to."),
]

# Seconds over which a re-read after a lost replica is spread (the option's
# default and its bound: convergence after a vCenter restart waits at most
# that long for the spread).
REREAD_SPREAD = 10.0
MAX_REREAD_SPREAD = 120.0

behaviour_opts = [
    cfg.ListOpt(
        "vcenters", default=[],
        help="Names of the vCenters this Neutron uses, when more than one "
             "(letters, digits, '_', '.', '-'): each has a section "
             "[ml2_vcenter:<name>] with its connection (host_ip, "
             "credentials, TLS...), switch_mappings and compute_hosts; "
             "what a section leaves unset is taken from [ml2_vcenter]. A "
             "network gets its port groups in every vCenter that maps its "
             "physical network; a port binds in the vCenter of its host. "
             "Empty: the one vCenter of [ml2_vcenter] itself."),
    cfg.IntOpt("resync_interval", default=300, min=0,
               help="Seconds between two full reconcile passes of the "
                    "maintenance worker (in neutron-periodic-workers), which "
                    "make vCenter match Neutron again (missing port groups "
                    "re-created, wrong VLANs fixed, port groups of deleted "
                    "networks removed). Drift that vCenter reports (hand "
                    "edits, a restart, a host joining a cluster) and work "
                    "an API call could not finish are handled within "
                    "seconds regardless. 0 disables the periodic pass."),
    cfg.BoolOpt("start_without_vcenter", default=True,
                help="Start even when vCenter cannot be reached or does not "
                     "answer within api_call_budget (Neutron keeps serving; "
                     "port groups are made once vCenter answers, ports "
                     "cannot be bound until then, the agent row shows it "
                     "down). False: an unreachable vCenter stops the driver "
                     "-- and neutron-server -- from starting, with a message "
                     "saying so. Other problems (credentials, TLS, "
                     "mappings) always stop it."),
    cfg.FloatOpt("reread_spread", default=REREAD_SPREAD, min=0.0,
                 max=MAX_REREAD_SPREAD,
                 help="Seconds over which the processes of a vCenter spread "
                      "their full re-reads of it. Each Neutron process (every "
                      "API worker of every server, and the periodic worker) "
                      "holds a replica of vCenter; after losing it (vCenter "
                      "restarted, the session expired, the connection "
                      "broke) a process waits, once vCenter answers again, "
                      "a random time between 0 and this before reading the "
                      "whole inventory again, so that they do not all ask "
                      "vCenter for everything at the same moment. The read "
                      "at start is not delayed. While a process waits, its "
                      "replica is not current, as during the outage. 0: "
                      "read again at once. See the sizing table of the "
                      "deployment guide."),
    cfg.IntOpt("resync_grace_period", default=30, min=0,
               help="A full resync leaves alone networks changed less than "
                    "this many seconds ago: their own API call is still "
                    "reconciling them."),
    cfg.StrOpt("coordination_backend_url", secret=True,
               help="tooz backend for the locks that keep API workers and "
                    "servers from reconciling the same network at once, "
                    "run one full resync at a time and let one server's "
                    "maintenance worker at a time look after each vCenter "
                    "(taken over when it dies), e.g. "
                    "'mysql://neutron:PW@db/neutron', 'redis://host:6379', "
                    "'etcd3+http://host:2379'. Default: a file lock in "
                    "[oslo_concurrency] lock_path, enough for the workers "
                    "of one host."),
    cfg.FloatOpt("api_call_budget", default=20.0, min=0.0,
                 help="Hard deadline, in seconds, of the driver's work in "
                      "a network create, update or delete API call and in a "
                      "port binding, whatever vCenter does (down, "
                      "black-holed, slow). Network calls then succeed and "
                      "leave the port group work to the maintenance worker; "
                      "a binding that needs a port group vCenter has not "
                      "made in time fails."),
    cfg.IntOpt("max_parallel_tasks", default=8, min=1,
               help="Upper bound on vSphere tasks (distributed port group "
                    "create, reconfigure, destroy) the driver runs at the "
                    "same time. More than about 16 destabilises vCenter."),
    cfg.IntOpt("max_parallel_host_writes", default=32, min=1,
               help="Upper bound on standard port group writes on hosts "
                    "(HostNetworkSystem AddPortGroup, UpdatePortGroup, "
                    "RemovePortGroup) the driver runs at the same time. "
                    "These are not vCenter tasks and have no batch form, so "
                    "a port group reaches every host of a cluster in about "
                    "the time of one host only if this is at least the "
                    "number of hosts of the largest mapped cluster."),
    cfg.IntOpt("dvs_batch_size", default=100, min=1,
               help="Most distributed port groups created by one "
                    "AddDVPortgroup task, and most distributed ports "
                    "reconfigured by one ReconfigureDVPort task (a rule "
                    "change on 1,000 ports takes 10 tasks)."),
]

port_opts = [
    cfg.IntOpt("max_rules_per_port", default=1024, min=16, max=65535,
               help="Budget of traffic filter rules on one distributed "
                    "port: a port whose security groups need more (after "
                    "remote groups are expanded and collapsed into CIDRs) "
                    "is blocked (its DV port passes no traffic, its "
                    "Neutron status is ERROR) until it fits, and the "
                    "reason is logged and shown by 'networking-vcenter "
                    "status' -- rules are never silently dropped, and a "
                    "port never keeps rules Neutron no longer allows. See "
                    "docs/security-groups.md."),
    cfg.BoolOpt("shared_security_filter", default=True,
                help="Hold the traffic filter of the ports in their "
                     "network's default security group once, in their "
                     "distributed port group's default port config, "
                     "instead of on each DV port: one VM joining or "
                     "leaving the group then rewrites one port group, not "
                     "every member's port. The group's other ports are "
                     "blocked until configured. False gives every port "
                     "a filter of its own: a join then rewrites every "
                     "member's filter (minutes of CPU past a few hundred "
                     "members). See docs/security-groups.md, 'Scale: one "
                     "shared filter per port group'."),
    cfg.IntOpt("max_rules_per_port_group", default=16384, min=16,
               max=1048576,
               help="Budget of traffic filter rules in one port group's "
                    "shared filter (shared_security_filter): past it the "
                    "ports of that port group get filters of their own "
                    "(each within max_rules_per_port)."),
    cfg.StrOpt("standard_vswitch_ports", default="bind",
               choices=[("bind", "bind the port; its security groups and "
                                 "QoS are not enforced (a warning per "
                                 "network, shown by status)"),
                        ("refuse", "refuse to bind a port whose security "
                                   "groups or QoS policy a standard vSwitch "
                                   "cannot enforce")],
               help="A standard vSwitch has no per-port settings: port "
                    "security follows the port group (enforced when all "
                    "its ports have it), security groups and QoS cannot be "
                    "enforced. What to do with ports that have them."),
]

mtu_opts = [
    cfg.BoolOpt("raise_switch_mtu", default=False,
                help="A network whose MTU is above the MTU of a switch it "
                     "reaches is refused at create and update (the error "
                     "names both values). With this set, a distributed "
                     "switch's maximum MTU is raised instead, to the "
                     "largest MTU of the networks on it (never lowered); "
                     "raising it briefly takes the switch's uplinks down "
                     "and up on every member host, and the physical "
                     "network must carry the larger frames. Standard "
                     "vSwitches are never raised: their MTU is set per "
                     "host by whoever set up the host."),
]

ALL_OPTS = connection_opts + mapping_opts + behaviour_opts + port_opts + \
    mtu_opts
# The options of one vCenter.
VCENTER_OPTION_NAMES = [o.dest for o in connection_opts] + \
    ["switch_mappings", "compute_hosts"]


def _per_vcenter(opt: cfg.Opt) -> cfg.Opt:
    """``opt`` in a vCenter's section: unset, it is [ml2_vcenter]'s."""
    opt = copy.deepcopy(opt)
    opt.default = None
    opt.help = f"{opt.help} Unset here: [{GROUP}] {opt.dest}."
    return opt


VCENTER_OPTS = [_per_vcenter(o) for o in ALL_OPTS
                if o.dest in VCENTER_OPTION_NAMES]


def register_opts(conf: cfg.ConfigOpts = cfg.CONF) -> None:
    conf.register_opts(ALL_OPTS, group=GROUP)


def list_opts():
    """Entry point of ``oslo.config.opts`` for oslo-config-generator."""
    return [(GROUP, ALL_OPTS),
            (cfg.OptGroup(VCENTER_GROUP.format("<name>"),
                          help="One vCenter named in [ml2_vcenter] "
                               "vcenters.",
                          dynamic_group_owner="vcenters"), VCENTER_OPTS)]


@dataclasses.dataclass(frozen=True)
class Settings:
    """One vCenter's parsed, validated settings as plain data."""

    host_ip: str
    host_port: int
    host_username: str
    host_password: str = dataclasses.field(repr=False)
    ca_file: str | None
    insecure: bool
    api_retry_count: int
    api_timeout: float
    task_timeout: int
    switch_mappings: dict[str, str]
    compute_hosts: dict[str, str]
    dvs_name_template: str
    max_parallel_tasks: int
    dvs_batch_size: int
    max_parallel_host_writes: int = 32
    resync_interval: int = 0
    api_call_budget: float = 20.0
    resync_grace_period: int = 30
    # A lost replica's re-read waits a random time in [0, this] once
    # vCenter answers (0 here: tests read again at once).
    reread_spread: float = 0.0
    coordination_backend_url: str | None = None
    deployment_name: str = "default"
    start_without_vcenter: bool = True
    max_rules_per_port: int = 1024
    shared_security_filter: bool = True
    max_rules_per_port_group: int = 16384
    standard_vswitch_ports: str = "bind"
    raise_switch_mtu: bool = False
    # Neutron's [securitygroup] enable_security_group: False means no
    # traffic filter on any port (as Neutron's noop firewall).
    security_groups: bool = True
    # Its name in [ml2_vcenter] vcenters; "" for the one vCenter of
    # [ml2_vcenter] itself.
    name: str = ""

    @property
    def section(self) -> str:
        """The configuration section of its connection and mappings."""
        return VCENTER_GROUP.format(self.name) if self.name else GROUP

    @property
    def clusters(self) -> list[str]:
        """The mapped clusters, each once, in configuration order."""
        return list(dict.fromkeys(self.compute_hosts.values()))


# What each entry of a mapping option looks like, for its errors.
PAIR_FORMS = {"switch_mappings": "<physical_network>:<switch>",
              "compute_hosts": "<nova-compute host>:<cluster>"}


def parse_pairs(option: str, values: list[str],
                group: str = GROUP) -> dict[str, str]:
    """Parse the ``key:value`` pairs of a list option (neutron-lib's
    ``parse_mappings``), refusing what is ambiguous: a malformed entry, a
    key mapped to two values.  The same pair twice is one; a value may
    serve several keys (physical networks on one switch, hosts of one
    cluster).

    Problems name the option and the offending entry, since a typo here
    silently leaves networks without port groups.
    """
    try:
        found = helpers.parse_mappings(values, unique_keys=False)
    except ValueError as exc:
        form = PAIR_FORMS.get(option, "<name>:<name>")
        raise exceptions.ConfigError(
            [f"[{group}] {option}: {exc}; each entry is {form}"]) from None
    problems = [f"[{group}] {option}: '{key}' is mapped more than once "
                f"({', '.join(repr(v) for v in found[key])})"
                for key in found if len(found[key]) > 1]
    if problems:
        raise exceptions.ConfigError(problems)
    return {key: found[key][0] for key in found}


NAME_TEMPLATE_FIELDS = ("network_id", "physical_network", "segmentation_id")
# Sample values the template is tried with: a UUID, and the VLANs of flat
# networks (0) and the longest one (4094).
SAMPLE_NETWORK_ID = "0c1d2e3f-4a5b-4c6d-8e7f-8091a2b3c4d5"
SAMPLE_VLANS = (0, 4094)


def name_template_fields(template: str) -> set[str]:
    """The field names a name template uses, nested format specs included
    (``{segmentation_id:04d}`` uses ``segmentation_id``).  Raises ValueError
    on a template that does not parse."""
    fields: set[str] = set()
    for _, name, spec, _ in string.Formatter().parse(template):
        if name is not None:
            fields.add(name)
        if spec:
            fields |= name_template_fields(spec)
    return fields


def _template_problems(template: str) -> list[str]:
    """What is wrong with the fields of a template, without formatting it."""
    problems = []
    for _, name, spec, conversion in string.Formatter().parse(template):
        if name is None:
            continue
        if name == "" or name.isdigit():
            problems.append(f"positional field {{{name}}}: use a named field "
                            f"({', '.join(NAME_TEMPLATE_FIELDS)})")
        elif name not in NAME_TEMPLATE_FIELDS:
            base = re.split(r"[.\[]", name, maxsplit=1)[0]
            if base in NAME_TEMPLATE_FIELDS:
                problems.append(f"field {{{name}}}: attribute and index "
                                f"access are not supported")
            else:
                problems.append(f"unknown field {{{name}}}; allowed: "
                                f"{', '.join(NAME_TEMPLATE_FIELDS)}")
        if conversion is not None:
            problems.append(f"field {{{name}!{conversion}}}: conversions "
                            f"(!r, !s, !a) are not supported")
        if spec:
            problems.extend(_template_problems(spec))
    return problems


def check_name_template(template: str,
                        physical_networks: list[str] | None = None) -> None:
    """Refuse a template that cannot give unique, Nova-attachable names.

    The template is formatted, as the driver will format it, with a sample
    network UUID, every mapped physical network and the VLANs 0 and 4094: a
    format spec that does not fit its value (``{physical_network:d}``), an
    unknown or positional field, a conversion, an attribute or index access,
    a name that does not hold the whole UUID, or one longer than
    MAX_NAME_LENGTH is refused here, at start-up, rather than later on
    every network.
    """
    option = f"[{GROUP}] dvs_port_group_name_template"
    try:
        fields = name_template_fields(template)
        problems = _template_problems(template)
    except ValueError as exc:
        raise exceptions.ConfigError([f"{option}: '{template}': {exc}"])
    if not any(re.match(r"network_id\b", f) for f in fields):
        problems.append("must contain {network_id} so that each network "
                        "gets its own port group")
    if problems:
        raise exceptions.ConfigError(
            [f"{option}: '{template}': {p}" for p in problems])
    longest = ""
    for physnet in physical_networks or ["physnet1"]:
        for vlan in SAMPLE_VLANS:
            try:
                name = template.format(network_id=SAMPLE_NETWORK_ID,
                                       physical_network=physnet,
                                       segmentation_id=vlan)
            except (ValueError, TypeError, KeyError, IndexError,
                    AttributeError) as exc:
                raise exceptions.ConfigError([
                    f"{option}: '{template}' cannot be formatted with "
                    f"physical_network='{physnet}', segmentation_id={vlan}: "
                    f"{type(exc).__name__}: {exc}"])
            if SAMPLE_NETWORK_ID not in name:
                raise exceptions.ConfigError([
                    f"{option}: '{template}' does not keep the network UUID "
                    f"whole (gives '{name}'), so networks could share a "
                    f"port group"])
            if len(name) > len(longest):
                longest = name
    if len(longest) > MAX_NAME_LENGTH:
        shown = longest if len(longest) <= 2 * MAX_NAME_LENGTH else \
            longest[:MAX_NAME_LENGTH] + "..."
        raise exceptions.ConfigError([
            f"{option}: '{template}' gives names of up to {len(longest)} "
            f"characters, more than vSphere's {MAX_NAME_LENGTH} (e.g. "
            f"'{shown}' for a network UUID and VLAN 4094 on the longest "
            f"mapped physical network)"])


class _Values(dict):
    """Option values read once, by attribute or key."""

    __getattr__ = dict.__getitem__


def load(conf: cfg.ConfigOpts = cfg.CONF) -> Settings:
    """Read and validate ``[ml2_vcenter]`` without talking to vCenter: the
    first vCenter where several are configured (see :func:`load_all`)."""
    return load_all(conf)[0]


def load_all(conf: cfg.ConfigOpts = cfg.CONF) -> list[Settings]:
    """Every vCenter's settings, validated without talking to vCenter: the
    one of ``[ml2_vcenter]``, or each named in ``[ml2_vcenter] vcenters``.
    Every problem found is reported at once, each naming its section and
    option."""
    register_opts(conf)
    values, problems = _read(conf, GROUP, ALL_OPTS)
    if problems:
        raise exceptions.ConfigError(problems)
    names = values["vcenters"] or []
    if not names:
        return [_settings(conf, values, "", GROUP)]
    for name in names:
        if not NAME_RE.match(name):
            problems.append(f"[{GROUP}] vcenters: '{name}' is not a valid "
                            f"name (1-32 letters, digits, '_', '.', '-')")
    for name in sorted({n for n in names if names.count(n) > 1}):
        problems.append(f"[{GROUP}] vcenters: '{name}' is named twice")
    if problems:
        raise exceptions.ConfigError(problems)
    found: list[Settings] = []
    for name in names:
        section = VCENTER_GROUP.format(name)
        conf.register_opts(VCENTER_OPTS, group=section)
        own, bad = _read(conf, section, VCENTER_OPTS)
        problems.extend(bad)
        merged = dict(values)
        merged.update({k: v for k, v in own.items() if v is not None})
        try:
            found.append(_settings(conf, merged, name, section))
        except exceptions.ConfigError as exc:
            problems.extend(exc.problems)
    if problems:
        raise exceptions.ConfigError(problems)
    problems.extend(_clashes(found))
    if problems:
        raise exceptions.ConfigError(problems)
    return found


def _read(conf: cfg.ConfigOpts, group: str, opts: list[cfg.Opt]
          ) -> tuple[dict, list[str]]:
    """The values of a section's options, and the problems of those that
    do not parse."""
    problems: list[str] = []
    values = {}
    for opt in opts:
        try:
            values[opt.dest] = conf[group][opt.dest]
        except (cfg.ConfigFileValueError, ValueError) as exc:
            problems.append(f"[{group}] {opt.dest}: {exc}")
            values[opt.dest] = opt.default
    return values, problems


def _clashes(vcenters: list[Settings]) -> list[str]:
    """What two vCenters may not share: a nova-compute host (a port binds
    in the vCenter of its host), the vCenter itself."""
    problems = []
    host_of: dict[str, Settings] = {}
    where: dict[tuple, Settings] = {}
    for s in vcenters:
        for host in s.compute_hosts:
            other = host_of.setdefault(host, s)
            if other is not s:
                problems.append(
                    f"[{s.section}] compute_hosts: '{host}' is also in "
                    f"[{other.section}] compute_hosts: a nova-compute host "
                    f"belongs to one vCenter")
        other = where.setdefault((s.host_ip, s.host_port), s)
        if other is not s:
            problems.append(f"[{s.section}] host_ip: {s.host_ip}:"
                            f"{s.host_port} is also [{other.section}]'s")
    return problems


def _settings(conf: cfg.ConfigOpts, values: dict, name: str,
              section: str) -> Settings:
    """One vCenter's settings from its values; ``section`` names where
    its own options are set in the problems found."""
    problems: list[str] = []
    group = _Values(values)
    for option in ("host_ip", "host_username", "host_password"):
        if not group[option]:
            problems.append(f"[{section}] {option} is not set")
    mappings: dict[str, dict[str, str]] = {}
    for option in ("switch_mappings", "compute_hosts"):
        try:
            mappings[option] = parse_pairs(option, group[option], section)
        except exceptions.ConfigError as exc:
            problems.extend(exc.problems)
            mappings[option] = {}
    if not group.switch_mappings:
        problems.append(f"[{section}] switch_mappings is empty: no physical "
                        f"network would reach vSphere")
    if not group.compute_hosts:
        problems.append(f"[{section}] compute_hosts is empty: no port could "
                        f"be bound and no cluster carries port groups")
    try:
        check_name_template(group.dvs_port_group_name_template,
                            list(mappings["switch_mappings"]))
    except exceptions.ConfigError as exc:
        problems.extend(exc.problems)
    if group.ca_file and group.insecure:
        problems.append(f"[{section}] ca_file and insecure = true are both "
                        f"set: choose one")
    if problems:
        raise exceptions.ConfigError(problems)
    return Settings(
        host_ip=group.host_ip,
        host_port=group.host_port,
        host_username=group.host_username,
        host_password=group.host_password,
        ca_file=group.ca_file,
        insecure=group.insecure,
        api_retry_count=group.api_retry_count,
        api_timeout=group.api_timeout,
        task_timeout=group.task_timeout,
        switch_mappings=mappings["switch_mappings"],
        compute_hosts=mappings["compute_hosts"],
        dvs_name_template=group.dvs_port_group_name_template,
        max_parallel_tasks=group.max_parallel_tasks,
        max_parallel_host_writes=group.max_parallel_host_writes,
        dvs_batch_size=group.dvs_batch_size,
        resync_interval=group.resync_interval,
        api_call_budget=group.api_call_budget,
        resync_grace_period=group.resync_grace_period,
        reread_spread=group.reread_spread,
        coordination_backend_url=group.coordination_backend_url,
        deployment_name=group.deployment_name,
        max_rules_per_port=group.max_rules_per_port,
        shared_security_filter=group.shared_security_filter,
        max_rules_per_port_group=group.max_rules_per_port_group,
        standard_vswitch_ports=group.standard_vswitch_ports,
        start_without_vcenter=group.start_without_vcenter,
        raise_switch_mtu=group.raise_switch_mtu,
        security_groups=security_groups_enabled(conf),
        name=name,
    )


def security_groups_enabled(conf: cfg.ConfigOpts = cfg.CONF) -> bool:
    """Neutron's ``[securitygroup] enable_security_group`` (registered
    here when Neutron has not, as in the CLI)."""
    try:
        return bool(conf.SECURITYGROUP.enable_security_group)
    except (cfg.NoSuchOptError, cfg.NoSuchGroupError):
        pass
    from neutron.conf.agent import securitygroups_rpc
    securitygroups_rpc.register_securitygroups_opts(conf)
    return bool(conf.SECURITYGROUP.enable_security_group)

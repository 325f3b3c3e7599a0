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

"""Report an Open vSwitch agent's state to Neutron over its real RPC bus.

Run in a subprocess (it initialises oslo.messaging on the global config):
``python report_ovs_agent.py TRANSPORT_URL HOST PHYSNET:BRIDGE`` -- what a
neutron-openvswitch-agent on a network node sends every report_interval.
"""

import sys
import tempfile

from neutron.agent import rpc as agent_rpc
from neutron.common import config as common_config
from neutron.conf.agent import common as agent_config
from neutron.tests.common import helpers
from neutron_lib import constants
from neutron_lib import context
from neutron_lib import rpc as n_rpc
from oslo_config import cfg


def main(url: str, host: str, mapping: str) -> None:
    # As neutron's own services do: control exchange "neutron" and options.
    common_config.register_common_config_options()
    agent_config.register_agent_state_opts_helper(cfg.CONF)
    # oslo.messaging registers transport_url itself: give it through a file.
    with tempfile.NamedTemporaryFile("w", suffix=".conf") as f:
        f.write(f"[DEFAULT]\ntransport_url = {url}\n")
        f.flush()
        cfg.CONF(["--config-file", f.name], project="neutron")
        n_rpc.init(cfg.CONF)
    physnet, bridge = mapping.split(":")
    state = helpers._get_l2_agent_dict(
        host, constants.AGENT_TYPE_OVS, constants.AGENT_PROCESS_OVS,
        tunnel_types=["vxlan"], bridge_mappings={physnet: bridge})
    agent_rpc.PluginReportStateAPI("q-reports-plugin").report_state(
        context.get_admin_context(), state, use_call=True)


if __name__ == "__main__":
    main(*sys.argv[1:4])

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

"""The real ML2 plugin, with the vcenter driver loaded by its entry point,
against a running simulator.

One simulator per test class (started in setUpClass); each test makes its own
networks, whose UUIDs keep the tests apart.  Assertions read the simulator with
:mod:`tests.fixtures.vsphere_reader`, which shares no code with the driver.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import tempfile
import threading
from unittest import mock

from neutron.tests.unit.plugins.ml2 import test_plugin
from neutron_lib.api.definitions import portbindings
from neutron_lib.api.definitions import provider_net as pnet

from tests.fixtures.soap import each_request
from tests.fixtures.vcsim import Vcsim
from tests.fixtures.vsphere_reader import Reader

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..",
                                "tools"))
import faultproxy  # noqa: E402

COMPUTE_HOST = "vc-compute-1"
CLUSTER = "DC0_C0"
NETWORK_NODE = "network-node-1"


class VCenterMl2TestCase(test_plugin.Ml2PluginV2TestCase):
    """ML2 with ``openvswitch,vcenter``, as operators configure it."""

    _mechanism_drivers = ["openvswitch", "vcenter"]
    vcsim_kwargs: dict = {"extra_args": ("-extra-vswitch", "vSwitch1")}
    switch_mappings = "physnet1:DVS0,physnet2:vSwitch1"
    compute_hosts = f"{COMPUTE_HOST}:{CLUSTER}"
    extra_ml2_vcenter: dict = {}

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.vcsim = Vcsim(**cls.vcsim_kwargs).start()
        cls.vsphere = Reader(cls.vcsim.connect())

    @classmethod
    def tearDownClass(cls):
        cls.vsphere.close()
        cls.vcsim.stop()
        super().tearDownClass()

    def setup_config(self):
        fd, path = tempfile.mkstemp(prefix="ml2_vcenter-", suffix=".ini")
        with os.fdopen(fd, "w") as f:
            f.write(self.ml2_vcenter_ini())
        self.addCleanup(os.unlink, path)
        # As NeutronDbPluginV2TestCase does, plus our file (FACTS.md).
        self.config_parse(args=["--config-file", path])

    def ml2_vcenter_options(self) -> dict:
        return {
            "host_ip": self.vcsim.host,
            "host_port": self.vcsim.port,
            "host_username": self.vcsim.username,
            "host_password": self.vcsim.password,
            "insecure": "true",
            "api_retry_count": 1,
            "resync_interval": 0,
            # A lost replica is read again at once (the spread has a test
            # of its own: test_replica_reread.py).
            "reread_spread": 0,
            "switch_mappings": self.switch_mappings,
            "compute_hosts": self.compute_hosts,
            **self.extra_ml2_vcenter,
        }

    def ml2_vcenter_ini(self) -> str:
        lines = [f"{k} = {v}" for k, v in self.ml2_vcenter_options().items()]
        return ("[ml2_vcenter]\n" + "\n".join(lines) +
                "\n[ml2_type_vxlan]\nvni_ranges = 1:1000\n")

    def setUp(self):
        super().setUp()
        for backend in self.vcenter_driver.backends:
            self.addCleanup(backend.reconciler.close)
        # The driver syncs ports in a hook thread right after an API call;
        # this test base shares one sqlite connection between threads, so
        # here the same drain runs in the test's thread, when the test asks
        # for it (settled()).
        for backend in self.vcenter_driver.backends:
            backend.drain_delay = None
        # With several vCenters, their backends' hook threads read Neutron
        # at the same time, here over that one sqlite connection ("cannot
        # rollback - no transaction is active"): one read at a time.  (A
        # real server's database takes them concurrently: tests/e2e.)
        if len(self.vcenter_driver.backends) > 1:
            one_at_a_time = threading.Lock()

            def serialized(fn):
                @functools.wraps(fn)
                def read(*args, **kwargs):
                    with one_at_a_time:
                        return fn(*args, **kwargs)
                return read
            for backend in self.vcenter_driver.backends:
                backend.source = serialized(backend.source)
                backend.port_source = serialized(backend.port_source)
                rec = backend.reconciler
                rec.network_ports = serialized(rec.network_ports)

    def settled(self):
        """Run the port syncs that API calls handed to the driver."""
        for backend in self.vcenter_driver.backends:
            backend.drain()

    # -- helpers -------------------------------------------------------------

    @property
    def vcenter_driver(self):
        return self.driver.mechanism_manager.mech_drivers["vcenter"].obj

    def make_network(self, net_type, physnet=None, vlan=None, **kwargs):
        args = {pnet.NETWORK_TYPE: net_type}
        if physnet:
            args[pnet.PHYSICAL_NETWORK] = physnet
        if vlan is not None:
            args[pnet.SEGMENTATION_ID] = vlan
        args.update(kwargs)
        res = self._create_network(self.fmt, "net", True, as_admin=True,
                                   arg_list=tuple(args), **args)
        body = self.deserialize(self.fmt, res)
        self.assertEqual(201, res.status_int, body)
        return body["network"]

    def make_multi_segment_network(self, segments):
        res = self._create_network(self.fmt, "multi", True, as_admin=True,
                                   arg_list=("segments",), segments=segments)
        body = self.deserialize(self.fmt, res)
        self.assertEqual(201, res.status_int, body)
        return body["network"]

    def delete_network(self, net_id):
        req = self.new_delete_request("networks", net_id, as_admin=True)
        res = req.get_response(self.api)
        self.assertEqual(204, res.status_int, res.body)

    def bind_port(self, net_id, host):
        res = self._create_port(self.fmt, net_id, is_admin=True,
                                arg_list=(portbindings.HOST_ID,),
                                **{portbindings.HOST_ID: host})
        body = self.deserialize(self.fmt, res)
        self.assertEqual(201, res.status_int, body)
        return body["port"]

    def assert_group_written_first(self, calls: list[str], why: str):
        """Of ``calls`` (:meth:`soap_calls`), the first write is of a port
        group, and a DV port write follows; ``why`` says what it would
        mean otherwise."""
        writes = [c for c in calls if c in ("ReconfigureDVPortgroup_Task",
                                            "ReconfigureDVPort_Task")]
        self.assertIn("ReconfigureDVPort_Task", writes)
        self.assertEqual("ReconfigureDVPortgroup_Task", writes[0],
                         f"{why}: {writes}")

    @contextlib.contextmanager
    def soap_calls(self):
        """Collect the names of the SOAP calls made inside the block, by any
        thread, except the replica's own long poll (WaitForUpdatesEx)."""
        calls: list[str] = []

        def record(_, method):
            if method != "WaitForUpdatesEx":
                calls.append(method)

        with each_request(record):
            yield calls

    def replica_caught_up(self, timeout: float = 15) -> None:
        """Wait until the driver's replica plans what a fresh full read of
        vCenter plans: it has seen every change made so far."""
        from networking_vcenter.vsphere.replica import Replica
        rec = self.vcenter_driver.backend.reconciler
        nets = list(self.vcenter_driver.backend.source(None))

        def plan_of(inv):
            return sorted(rec._plan(inv, nets, None, set())[2].describe())

        fresh = plan_of(Replica.read_once(rec.session, rec.settings))
        self.assertTrue(rec.replica.wait_until(
            lambda inv: plan_of(inv) == fresh, timeout),
            f"the replica did not catch up with vCenter: {fresh} "
            f"(replica: {rec.replica.error!r}, {rec.replica.reloads} reads)")

    def resync(self, grace: float = 0):
        """A full pass, as the maintenance worker runs it, once the replica
        has seen every change made so far."""
        self.replica_caught_up()
        result = self.vcenter_driver.resync(grace=grace)
        self.assertIsNotNone(result)
        return result

    def dvs_name(self, net_id, physnet="physnet1"):
        return f"neutron-{physnet}-{net_id}"

    def cluster_hosts(self):
        return self.vsphere.hosts_of_cluster(CLUSTER)


def patch_qos_resource_requests(test) -> None:
    """The QoS plugin extends every port dict that has a policy with its
    Placement resource request, read under a new admin context.  On the
    tests' in-memory sqlite every session shares one connection, so closing
    that reader rolls back the port's transaction: the policy binding is
    silently lost on update, and a create fails (StaleDataError on
    ml2_port_bindings).  The tests use no minimum-bandwidth or
    minimum-packet-rate rule: no request groups."""
    from neutron.services.qos import qos_plugin
    for name in ("_get_min_bw_request_group", "_get_min_pps_request_group"):
        patcher = mock.patch.object(qos_plugin.QoSPlugin, name,
                                    staticmethod(lambda *a, **kw: {}))
        patcher.start()
        test.addCleanup(patcher.stop)


class ProxiedMixin:
    """The driver reaches the simulator through :mod:`tools.faultproxy`,
    which the tests switch between passing, resetting, black-holing and
    delaying; the tests themselves read the simulator directly."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.proxy = faultproxy.FaultProxy(cls.vcsim.host,
                                          cls.vcsim.port).start()

    @classmethod
    def tearDownClass(cls):
        cls.proxy.stop()
        super().tearDownClass()

    def ml2_vcenter_options(self) -> dict:
        return {**super().ml2_vcenter_options(), "host_port": self.proxy.port}

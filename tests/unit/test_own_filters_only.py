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

"""``ports._OwnFiltersOnly`` on hand-made answers: what it passes over and
what it leaves to pyVmomi (the simulator's answers are in
tests/functional/test_ports_inherited_filter.py)."""

from __future__ import annotations

import datetime
import io
from xml.parsers.expat import ParserCreate

from pyVmomi import SoapAdapter, vim

from networking_vcenter.vsphere import ports
from networking_vcenter.vsphere import session
from networking_vcenter.vsphere.inventory import INCOMING, TrafficRule

VERSION = "vim.version.version13"
DVPort = vim.dvs.DistributedVirtualPort
RULES = tuple(TrafficRule(INCOMING, "accept", protocol=6,
                          source=f"10.0.{i}.0/24", description=f"r{i}")
              for i in range(4))


def _port(policy, key="7"):
    return DVPort(
        key=key, lastStatusChange=datetime.datetime(2026, 1, 1),
        config=DVPort.ConfigInfo(
            name="p", configVersion="3",
            setting=vim.dvs.VmwareDistributedVirtualSwitch
            .VmwarePortConfigPolicy(
                blocked=vim.BoolPolicy(inherited=True, value=False),
                filterPolicy=policy)))


def _inherited(rules=RULES, configs=1):
    """A filter policy as FetchDVPorts shows an inherited one: the group's
    filter, marked inherited; ``configs`` filter configs."""
    policy = ports._filter(rules)
    policy.inherited = True
    policy.filterConfig = policy.filterConfig * configs
    return policy


def _wire(port):
    return SoapAdapter.SerializeToStr(port, version=VERSION)


def _parse(xml, deserializer):
    parser = ParserCreate(namespace_separator=SoapAdapter.NS_SEP)
    parser.buffer_text = True
    ds = deserializer(version=VERSION)
    ds.Deserialize(parser, DVPort)
    parser.Parse(xml, True)
    return ds.GetResult()


def test_an_inherited_filter_is_passed_over():
    xml = _wire(_port(_inherited(configs=3)))
    # The wire order this relies on: ``inherited`` first.
    start = xml.index("<filterPolicy>")
    assert xml[start:].startswith(
        "<filterPolicy><inherited>true</inherited><filterConfig")
    ours = _parse(xml, ports._OwnFiltersOnly)
    stock = _parse(xml, SoapAdapter.SoapDeserializer)
    assert len(stock.config.setting.filterPolicy.filterConfig) == 3
    fp = ours.config.setting.filterPolicy
    assert fp.inherited is True and list(fp.filterConfig) == []
    # The rest of the port is pyVmomi's parse, and reads the same.
    assert ours.config.setting.blocked.inherited is True
    assert ours.lastStatusChange == stock.lastStatusChange
    assert ports.port_of(ours) == ports.port_of(stock)


def test_an_own_filter_is_parsed():
    xml = _wire(_port(ports._filter(RULES)))
    ours = _parse(xml, ports._OwnFiltersOnly)
    assert ports.port_of(ours).settings.rules == RULES
    assert ports.port_of(ours) == ports.port_of(
        _parse(xml, SoapAdapter.SoapDeserializer))


def test_inherited_after_the_rules_is_parsed_as_usual():
    """Another server's order: the rules come before it is known that they
    are inherited; they are built, and dropped by ``settings_of``."""
    xml = _wire(_port(_inherited()))
    moved = xml.replace("<filterPolicy><inherited>true</inherited>",
                        "<filterPolicy>", 1).replace(
        "</filterConfig></filterPolicy>",
        "</filterConfig><inherited>true</inherited></filterPolicy>", 1)
    assert moved != xml
    ours = _parse(moved, ports._OwnFiltersOnly)
    fp = ours.config.setting.filterPolicy
    assert fp.inherited is True
    assert len(fp.filterConfig[0].trafficRuleset.rules) == len(RULES)
    assert ports.port_of(ours).settings.rules is None


class _Stub:
    """What pyVmomi's response deserializer asks of a stub, and the hook
    of session._TimedStub."""
    version = VERSION

    def __init__(self, deserializer):
        self._deserializer = deserializer

    def element_deserializer(self):
        return self._deserializer


def test_several_ports_in_one_soap_answer():
    """A whole answer, through pyVmomi's response deserializer as the
    session's stub has it parsed (session._ResponseDeserializer)."""
    own = ports._filter(RULES[:1])
    body = "".join(
        _wire(p).replace("<obj ", "<returnval ").replace(
            "</obj>", "</returnval>")
        for p in (_port(_inherited(), "1"), _port(own, "2"),
                  _port(_inherited(), "3")))
    answer = (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<soapenv:Envelope xmlns:soapenv='
        '"http://schemas.xmlsoap.org/soap/envelope/"><soapenv:Body>'
        '<FetchDVPortsResponse xmlns="urn:vim25">' + body +
        '</FetchDVPortsResponse></soapenv:Body></soapenv:Envelope>')
    assert SoapAdapter.SoapResponseDeserializer is \
        session._ResponseDeserializer
    result = {}
    for name, deserializer in (("ours", ports._OwnFiltersOnly),
                               ("stock", None)):
        found = SoapAdapter.SoapResponseDeserializer(
            _Stub(deserializer)).Deserialize(answer.encode(), DVPort.Array)
        result[name] = found
    assert [len(p.config.setting.filterPolicy.filterConfig)
            for p in result["ours"]] == [0, 1, 0]
    assert [len(p.config.setting.filterPolicy.filterConfig)
            for p in result["stock"]] == [1, 1, 1]
    got = [ports.port_of(p) for p in result["ours"]]
    assert [p.key for p in got] == ["1", "2", "3"]
    assert [p.settings.rules for p in got] == [None, RULES[:1], None]
    assert got == [ports.port_of(p) for p in result["stock"]]


def _answer(*ports_):
    body = "".join(
        _wire(p).replace("<obj ", "<returnval ").replace(
            "</obj>", "</returnval>") for p in ports_)
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<soapenv:Envelope xmlns:soapenv='
        '"http://schemas.xmlsoap.org/soap/envelope/"><soapenv:Body>'
        '<FetchDVPortsResponse xmlns="urn:vim25">' + body +
        '</FetchDVPortsResponse></soapenv:Body></soapenv:Envelope>').encode()


def _cut_whole(data, start, end):
    """What session.Stripped should give, on the whole text at once."""
    out, pos = [], 0
    while (m := start.search(data, pos)) is not None:
        stop = data.find(end, m.end())
        out.append(data[pos:m.end()])
        pos = stop
    return b"".join(out) + data[pos:]


def test_inherited_filters_are_cut_before_expat_at_any_block_size(
        monkeypatch):
    """session.Stripped over a body read in blocks of every size from 1
    byte: the same bytes as cutting the whole text at once, and the same
    ports as pyVmomi's own parse."""
    data = _answer(_port(_inherited(), "1"), _port(ports._filter(RULES[:2]),
                                                   "2"),
                   _port(_inherited(configs=2), "3"))
    start, end, longest = ports._OwnFiltersOnly.passed_over
    want = _cut_whole(data, start, end)
    assert len(want) < len(data) - 1000
    assert want.count(b"<inherited>true</inherited></filterPolicy>") == 2
    for block in (1, 2, 3, 7, 15, 64, 299, 300, 301, 1000, len(data)):
        monkeypatch.setattr(session.Stripped, "BLOCK", block)
        s = session.Stripped(io.BytesIO(data), start, end, longest)
        got = b"".join(iter(lambda: s.read(2048), b""))
        assert got == want, block
        assert s.cut == len(data) - len(want)
    monkeypatch.setattr(session.Stripped, "BLOCK", 5)
    ours = SoapAdapter.SoapResponseDeserializer(
        _Stub(ports._OwnFiltersOnly)).Deserialize(io.BytesIO(data),
                                                  DVPort.Array)
    stock = SoapAdapter.SoapResponseDeserializer(_Stub(None)).Deserialize(
        io.BytesIO(data), DVPort.Array)
    assert [ports.port_of(p) for p in ours] == \
        [ports.port_of(p) for p in stock]
    assert [p.settings.rules for p in map(ports.port_of, ours)] == \
        [None, RULES[:2], None]


def test_a_self_closed_policy_is_not_cut_to_the_next_one():
    start, end, longest = ports.GroupFiltersUnread.passed_over
    data = (b'<a><filterPolicy xsi:type="DvsFilterPolicy"/><b>keep</b>'
            b'<filterPolicy><x>cut</x></filterPolicy></a>')
    s = session.Stripped(io.BytesIO(data), start, end, longest)
    assert s.read(-1) == (b'<a><filterPolicy xsi:type="DvsFilterPolicy"/>'
                          b'<b>keep</b><filterPolicy></filterPolicy></a>')

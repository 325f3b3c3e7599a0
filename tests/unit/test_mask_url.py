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

"""The coordination backend URL's secrets never reach a message or a log.

``[ml2_vcenter] coordination_backend_url`` is a tooz URL that may carry a
password (``mysql://neutron:PW@db/neutron``, ``redis://:PW@host``, a
``?password=PW`` query); everything that shows it shows it masked, with its
scheme, user, host and port left for the operator to see.
"""

from __future__ import annotations

import logging
import sys

import pytest
from tooz import coordination

from networking_vcenter import exceptions
from networking_vcenter.reconcile import locks as locks_mod

SECRET = "S3cr3t-pw"


@pytest.mark.parametrize("url, masked", [
    ("mysql://neutron:S3cr3t-pw@db/neutron",
     "mysql://neutron:***@db/neutron"),
    ("mysql+pymysql://neutron:S3cr3t-pw@db.example.org:3306/neutron"
     "?charset=utf8",
     "mysql+pymysql://neutron:***@db.example.org:3306/neutron"
     "?charset=utf8"),
    ("redis://:S3cr3t-pw@redis.example.org:6379",
     "redis://:***@redis.example.org:6379"),
    ("etcd3+http://user:S3cr3t-pw@etcd.example.org:2379",
     "etcd3+http://user:***@etcd.example.org:2379"),
    ("etcd3+https://user:S3cr3t-pw@[2001:db8::1]:2379/?timeout=30",
     "etcd3+https://user:***@[2001:db8::1]:2379/?timeout=30"),
    ("redis://redis.example.org:6379?password=S3cr3t-pw",
     "redis://redis.example.org:6379?password=***"),
    ("redis://redis.example.org:6379/?db=0&sentinel=mymaster"
     "&sentinel_password=S3cr3t-pw&timeout=5",
     "redis://redis.example.org:6379/?db=0&sentinel=mymaster"
     "&sentinel_password=***&timeout=5"),
    ("zookeeper://zk:2181?passwd=S3cr3t-pw&pwd=S3cr3t-pw&secret=S3cr3t-pw"
     "&token=S3cr3t-pw&api_key=S3cr3t-pw&Password=S3cr3t-pw",
     "zookeeper://zk:2181?passwd=***&pwd=***&secret=***&token=***"
     "&api_key=***&Password=***"),
    ("memcached://u:S3cr3t-pw@mc:11211?password=S3cr3t-pw",
     "memcached://u:***@mc:11211?password=***"),
])
def test_secrets_masked_host_port_scheme_user_kept(url, masked):
    assert locks_mod.mask_url(url) == masked
    assert SECRET not in locks_mod.mask_url(url)
    assert locks_mod.mask_url(masked) == masked      # idempotent


@pytest.mark.parametrize("url", [
    "file:///var/lib/neutron/lock/networking-vcenter",
    "mysql://neutron@db/neutron",
    "redis://redis.example.org:6379?db=0&timeout=5",
    "etcd3+http://etcd.example.org:2379",
    "kazoo://zk1:2181,zk2:2181/neutron",
    "",
])
def test_url_without_a_secret_unchanged(url):
    assert locks_mod.mask_url(url) == url


@pytest.mark.parametrize("url, masked, raw", [
    # URL-encoded '@' and ':' inside the password.
    ("mysql://neutron:p%40ss%3Aw0rd@db:3306/neutron",
     "mysql://neutron:***@db:3306/neutron", ["p%40ss%3Aw0rd", "p@ss:w0rd"]),
    # ... and not encoded: the host is what follows the last '@'.
    ("mysql://neutron:p@ss:w0rd@db:3306/neutron",
     "mysql://neutron:***@db:3306/neutron", ["p@ss:w0rd", "ss:w0rd"]),
    ("redis://db:6379?password=p%40ss%3Aw%26rd",
     "redis://db:6379?password=***", ["p%40ss%3Aw%26rd", "p@ss:w&rd"]),
])
def test_at_and_colon_inside_the_password(url, masked, raw):
    assert locks_mod.mask_url(url) == masked
    for secret in raw:
        assert secret not in locks_mod.mask_url(url)


def test_secret_masked_inside_any_text():
    """A library's message may quote the URL, or just its password (raw or
    URL-decoded): masked all the same, the host kept."""
    url = "mysql://neutron:p%40ss%3Aw0rd@db.example.org:3306/neutron"
    text = (f"cannot connect with '{url}': user neutron, password "
            f"p@ss:w0rd; netloc neutron:p%40ss%3Aw0rd@db.example.org; "
            f"other url redis://:Other-Secret@cache:6379/0.")
    out = locks_mod.mask_text(text, url)
    for secret in ("p%40ss%3Aw0rd", "p@ss:w0rd", "Other-Secret"):
        assert secret not in out
    assert "'mysql://neutron:***@db.example.org:3306/neutron'" in out
    assert "redis://:***@cache:6379/0." in out
    assert "db.example.org" in out


def _assert_masked(text: str, host: str) -> None:
    assert SECRET not in text
    assert "[ml2_vcenter] coordination_backend_url" in text
    assert host in text


def test_unreachable_backend_error_and_logs_masked(caplog):
    """The real error path: tooz over MySQL on a port nobody listens on.
    The error names the option and the host, never the password -- nor does
    its cause, nor the log of it (the maintenance worker logs the
    traceback)."""
    url = f"mysql://neutron:{SECRET}@127.0.0.1:1/neutron?password={SECRET}"
    caplog.set_level(logging.DEBUG)
    locks = locks_mod.Locks(url)
    try:
        with pytest.raises(exceptions.ConfigError) as err:
            with locks.hold("network-x", timeout=1):
                pass
        logging.getLogger("networking_vcenter.reconcile.worker").error(
            "vcenter maintenance: network %s", "x", exc_info=err.value)
    finally:
        locks.stop()
    text = str(err.value)
    _assert_masked(text, "127.0.0.1:1")
    assert "mysql://neutron:***@127.0.0.1:1/neutron?password=***" in text
    assert SECRET not in repr(err.value.__cause__)
    assert SECRET not in caplog.text              # tracebacks included
    assert all(SECRET not in r.getMessage() for r in caplog.records)
    assert SECRET not in locks.backend_url


@pytest.mark.parametrize("url, host, modules", [
    # The scheme's client library is not installed (or not known at all):
    # an error naming the option, not a bare ImportError with no context.
    (f"redis://:{SECRET}@127.0.0.1:1", "127.0.0.1:1",
     ("redis", "tooz.drivers.redis")),
    (f"etcd3+http://user:{SECRET}@127.0.0.1:1", "127.0.0.1:1",
     ("etcd3gw", "tooz.drivers.etcd3gw")),
    (f"nosuchbackend://user:{SECRET}@db.example.org/x", "db.example.org",
     ()),
])
def test_backend_that_cannot_load_error_masked(caplog, monkeypatch, url,
                                               host, modules):
    caplog.set_level(logging.DEBUG)
    # The client library missing, as without its extra, whether this venv
    # has it or not (the test extra installs redis and etcd3gw): an import
    # of a name that is None in sys.modules fails.
    for name in modules:
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(exceptions.ConfigError) as err:
        locks_mod.Locks(url)
    _assert_masked(str(err.value), host)
    assert SECRET not in caplog.text


class _Coordinator:
    """Stand-in coordinator whose every call fails, quoting the URL it was
    given -- as a driver may."""

    def __init__(self, url):
        self.url = url

    def _fail(self, *args, **kwargs):
        raise coordination.ToozConnectionError(
            f"lost connection to {self.url}",
            cause=ConnectionError(f"to {self.url.split('//')[1]}"))

    start = stop = _fail

    def get_lock(self, name):
        return self

    acquire = release = _fail


def test_tooz_error_text_masked(monkeypatch, caplog):
    url = f"redis://:{SECRET}@redis.example.org:6379"
    monkeypatch.setattr(coordination, "get_coordinator",
                        lambda u, member: _Coordinator(u))
    locks = locks_mod.Locks(url)
    with pytest.raises(exceptions.ConfigError) as err:
        with locks.hold("x"):
            pass
    _assert_masked(str(err.value), "redis.example.org:6379")
    assert "lost connection to redis://:***@redis.example.org:6379" in \
        str(err.value)
    cause = err.value.__cause__
    assert SECRET not in str(cause) and SECRET not in str(cause.cause)

    # Started, a lock call that fails raises tooz's own error, its text
    # masked.
    locks._started = True
    with pytest.raises(coordination.ToozConnectionError) as err2:
        with locks.hold("x"):
            pass
    assert SECRET not in str(err2.value)
    assert "redis.example.org:6379" in str(err2.value)
    assert SECRET not in str(err2.value.cause)
    # Leaving it fails: said in a warning (a stop goes on), masked.
    locks.stop()
    assert "redis.example.org:6379" in caplog.text
    assert SECRET not in caplog.text


def _cli(tmp_path, url: str, command: str):
    import os
    import subprocess
    import sys
    ini = tmp_path / "ml2_conf.ini"
    ini.write_text(
        "[ml2_vcenter]\nhost_ip = 127.0.0.1\nhost_port = 1\n"
        "host_username = user\nhost_password = pw\ninsecure = true\n"
        "switch_mappings = physnet1:DVS0\n"
        "compute_hosts = vc-compute-1:DC0_C1\n"
        f"coordination_backend_url = {url}\n")
    cli = os.path.join(os.path.dirname(sys.executable), "networking-vcenter")
    return subprocess.run([cli, "--config-file", str(ini), command],
                          capture_output=True, text=True, timeout=120)


def test_cli_sync_unreachable_backend_masked(tmp_path):
    """``sync`` joins the lock backend first (``status`` takes no lock):
    its error, on stderr, names the option and the host, not the
    password."""
    proc = _cli(tmp_path, f"mysql://neutron:{SECRET}@127.0.0.1:1/neutron",
                "sync")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert SECRET not in proc.stdout + proc.stderr
    _assert_masked(proc.stderr, "mysql://neutron:***@127.0.0.1:1/neutron")
    assert "Traceback" not in proc.stderr


def test_cli_check_backend_that_cannot_load_masked(tmp_path):
    """``check``: a FAIL row, not a traceback, and no password."""
    proc = _cli(tmp_path, f"nosuchbackend://neutron:{SECRET}@db.example.org"
                f"/x?password={SECRET}", "check")
    assert proc.returncode == 2, proc.stdout + proc.stderr  # cannot run
    assert SECRET not in proc.stdout + proc.stderr
    assert "FAIL" in proc.stdout
    _assert_masked(proc.stdout, "nosuchbackend://neutron:***@db.example.org"
                                "/x?password=***")
    assert "Traceback" not in proc.stderr
    assert "vCenter" not in proc.stdout       # refused before any login


class _Quiet(Exception):
    """An error with no text of its own (as etcd3gw's
    ConnectionFailedError), raised from one that has some."""


def test_start_error_without_text_says_why(monkeypatch):
    url = f"etcd3+http://user:{SECRET}@etcd.example.org:2379"

    class Coordinator(_Coordinator):
        def start(self, start_heart=False):
            try:
                raise ConnectionError(f"refused: {self.url}")
            except ConnectionError as exc:
                raise _Quiet() from exc

    monkeypatch.setattr(coordination, "get_coordinator",
                        lambda u, member: Coordinator(u))
    with pytest.raises(exceptions.ConfigError) as err:
        locks_mod.Locks(url).start()
    _assert_masked(str(err.value), "etcd.example.org:2379")
    assert ("cannot be used: _Quiet: refused: "
            "etcd3+http://user:***@etcd.example.org:2379") in str(err.value)

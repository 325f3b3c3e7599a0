#!/usr/bin/env python3
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

"""A fault-injecting TCP proxy on loopback, for outage tests.

Sits between the driver and the vCenter simulator and, on command, behaves
like the network failures a real deployment sees:

* ``pass``    forward everything (the default);
* ``delay``   forward, ``delay_ms`` late on every chunk (a slow vCenter);
* ``drop``    accept connections and swallow them: requests never get an
              answer (a black hole: firewall, dead route) -- clients time out;
* ``reset``   accept and reset at once (vCenter restarting, a load balancer
              without backends): clients see ``Connection reset``.

Switching mode also cuts every connection in flight, as a failover would.
Use it in-process (``FaultProxy(...).start()``, ``proxy.mode = "drop"``) or
from the shell: ``faultproxy.py --target 127.0.0.1:8989 --listen 127.0.0.1:0``
reads one mode per line on stdin.
"""

from __future__ import annotations

import argparse
import socket
import struct
import sys
import threading
import time

MODES = ("pass", "delay", "drop", "reset")


class FaultProxy:
    def __init__(self, target_host: str, target_port: int,
                 listen_host: str = "127.0.0.1", listen_port: int = 0,
                 mode: str = "pass", delay_ms: int = 0):
        self.target = (target_host, target_port)
        self._listener = socket.create_server((listen_host, listen_port))
        self.host, self.port = self._listener.getsockname()[:2]
        self._mode = mode
        self.delay_ms = delay_ms
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._stopped = threading.Event()
        self.accepted = 0

    # -- control ---------------------------------------------------------

    @property
    def mode(self) -> str:
        return self._mode

    @mode.setter
    def mode(self, value: str) -> None:
        self.switch(value)

    def switch(self, value: str, cut: bool = True) -> None:
        """Change mode; ``cut`` also ends every connection in flight (a
        failover).  Without it, connections already open stay open and
        behave as the new mode says: a black hole or a slow link that
        clients only notice by waiting."""
        if value not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}")
        self._mode = value
        if cut:
            self.cut()

    def cut(self) -> None:
        """Close every connection in flight."""
        with self._lock:
            conns, self._conns = self._conns, set()
        for s in conns:
            _close(s, reset=True)

    def start(self) -> "FaultProxy":
        threading.Thread(target=self._accept_loop, daemon=True,
                         name=f"faultproxy-{self.port}").start()
        return self

    def stop(self) -> None:
        self._stopped.set()
        _close(self._listener)
        self.cut()

    def __enter__(self) -> "FaultProxy":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- data path -------------------------------------------------------

    def _accept_loop(self) -> None:
        while not self._stopped.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            self.accepted += 1
            mode = self._mode
            if mode == "reset":
                _close(client, reset=True)
                continue
            with self._lock:
                self._conns.add(client)
            if mode == "drop":
                threading.Thread(target=self._swallow, args=(client,),
                                 daemon=True).start()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                _close(client, reset=True)
                continue
            with self._lock:
                self._conns.add(upstream)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b),
                                 daemon=True).start()

    def _swallow(self, s: socket.socket) -> None:
        try:
            while s.recv(65536):
                pass
        except OSError:
            pass

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if self._mode == "delay" and self.delay_ms:
                    time.sleep(self.delay_ms / 1000)
                elif self._mode == "drop":
                    continue
                dst.sendall(data)
        except OSError:
            pass
        finally:
            _close(src)
            _close(dst)


def _close(s: socket.socket, reset: bool = False) -> None:
    try:
        if reset:
            # SO_LINGER 0: close with RST, as a crashed peer would.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                         struct.pack("ii", 1, 0))
        # close() alone does not end a connection while a pump thread is
        # blocked reading it (the kernel keeps the socket for that read):
        # the peer would wait for its own timeout. shutdown() ends it now.
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        s.close()
    except OSError:
        pass


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", required=True, help="HOST:PORT")
    parser.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT")
    parser.add_argument("--delay-ms", type=int, default=200)
    args = parser.parse_args()
    th, tp = args.target.rsplit(":", 1)
    lh, lp = args.listen.rsplit(":", 1)
    if lh not in ("127.0.0.1", "localhost", "::1"):
        parser.error("--listen must be a loopback address")
    proxy = FaultProxy(th, int(tp), lh, int(lp),
                       delay_ms=args.delay_ms).start()
    print(f"LISTEN={proxy.host}:{proxy.port}", flush=True)
    for line in sys.stdin:
        mode = line.strip()
        if mode:
            try:
                proxy.mode = mode
                print(f"mode={mode}", flush=True)
            except ValueError as exc:
                print(f"error: {exc}", flush=True)
    proxy.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The discovery worker's role: announce this node on the LAN and keep the table of its peers.

Announcements go by UDP to the IPv4 broadcast address, to an IPv6 link-local multicast group on
every interface (`ipv6 = true`) and to each static peer: at start, at once when the parent
reports a change of the local services, and every `interval`; a goodbye on a clean stop. What
arrives goes through `PeerTable`; every change of the peers is reported to the parent. A peer
heard for the first time (or after it restarted) gets this node's announcement back at once, by
unicast to where its packet came from (`Replies` limits how often), so the two nodes learn of
each other at about the same moment: a peer that routes to us is not refused by our proxy
for want of having heard us.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import socket
import struct
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from devmesh import messages as m
from devmesh.discovery.packet import BYE, HELLO, Announcement, ServiceInfo, encode
from devmesh.discovery.peers import PeerTable, Replies
from devmesh.workers.base import WorkerRuntime

log = logging.getLogger("devmesh.discovery")

# The IPv6 link-local group devmesh nodes join ("devm" in the last 32 bits).
MULTICAST6 = "ff02::6465:766d"


class _Receiver(asyncio.DatagramProtocol):
    def __init__(self, role: DiscoveryRole, sock: socket.socket) -> None:
        self.role = role
        self.sock = sock

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        host = str(addr[0])
        if len(addr) == 4 and addr[3] and "%" not in host:
            host = f"{host}%{addr[3]}"  # a link-local address is reachable through its interface
        self.role.received(data, host, self.sock, addr)

    def error_received(self, exc: Exception) -> None:
        self.role.errors += 1


def static_peer(spec: str, default_port: int) -> tuple[str, int]:
    """`host:port`, `host`, `[v6]:port` -> (host, port)."""
    host, sep, port = spec.rpartition(":")
    if not sep or (host.count(":") and not host.startswith("[")):
        return spec.strip("[]"), default_port  # no port (or a bare IPv6 address)
    return host.strip("[]"), int(port)


class DiscoveryRole:
    """Announces, listens, expires; reports the peers to the parent."""

    def __init__(self, runtime: WorkerRuntime, settings: dict[str, Any]) -> None:
        self.runtime = runtime
        self.port = int(settings["port"])
        self.broadcast = str(settings["broadcast_addr"])
        self.interval = float(settings["interval"])
        self.ipv6 = bool(settings["ipv6"])
        self.static = [static_peer(p, self.port) for p in settings.get("peers", ())]
        self.me = Announcement(
            kind=HELLO,
            node=str(settings["node"]),
            boot=str(settings["boot"]),
            seq=time.time_ns() // 1_000_000,  # grows across restarts of this worker too
            namespace=str(settings["namespace"]),
            proxy_port=int(settings["proxy_port"]),
            interval=self.interval,
            name=str(settings.get("name", "")),
        )
        self.table = PeerTable(self.me.node, self.me.namespace)
        self.replies = Replies(self.interval)
        self.errors = 0  # failed sends and socket errors
        self.sent = 0
        self._socks: list[socket.socket] = []
        self._transports: list[asyncio.DatagramTransport] = []
        self._wake = asyncio.Event()
        self._stopping = False
        self._left = False  # said goodbye: the node is shutting down
        self._leaving: asyncio.Task[None] | None = None
        self._measuring: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reported = 0.0

    # ---- the role ----

    async def serve(self) -> None:
        """Listen and announce until stopped, then say goodbye."""
        loop = self._loop = asyncio.get_running_loop()
        for sock in self._open():
            receiver = functools.partial(_Receiver, self, sock)
            transport, _ = await loop.create_datagram_endpoint(receiver, sock=sock)
            self._transports.append(transport)
        self._expire_later()
        self._measuring = loop.create_task(self._measure())
        while not self._stopping:
            if not self._left:
                await self._announce(HELLO)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval)
            self._wake.clear()
        await self._announce(BYE)
        for transport in self._transports:
            transport.close()

    def handle(self, msg: m.ParentMessage) -> None:
        """New local services: announce at once."""
        if isinstance(msg, m.Leave):
            if not self._left:
                self._left = True
                self._leaving = asyncio.get_running_loop().create_task(self._announce(BYE))
        elif isinstance(msg, m.Announce):
            services = tuple(ServiceInfo(**s) for s in msg.services)
            if services != self.me.services or msg.proxy_port != self.me.proxy_port:
                self.me = replace(self.me, services=services, proxy_port=msg.proxy_port)
                self._wake.set()

    def stop(self) -> None:
        """Say goodbye and stop."""
        self._stopping = True
        self._wake.set()

    # ---- receiving ----

    def received(
        self, data: bytes, address: str, sock: socket.socket, source: tuple[Any, ...]
    ) -> None:
        """One datagram from anyone (`source`: where it came from, on `sock`)."""
        now = time.monotonic()
        changed = self.table.datagram(data, address, now)
        joined = self.table.joined
        if joined:
            # Only a valid announcement of our namespace that made a peer new gets here.
            if not self._left and any(self.replies.due(node, now) for node in joined):
                self._send(sock, source, self._datagrams(HELLO))
            joined.clear()
        if changed:
            self.report()

    def _expire_later(self) -> None:
        assert self._loop is not None
        now = time.monotonic()
        # A change goes up at once; otherwise once an interval, so "last heard" stays true.
        if self.table.expire(now) or now - self._reported >= self.interval:
            self.report()
        # Wake when the next silent peer runs out of time, so it goes right at 3 intervals.
        delay = min(self.interval / 4, 0.25)
        expiry = self.table.next_expiry()
        if expiry is not None:
            delay = min(delay, max(0.005, expiry - now + 0.001))
        self._loop.call_later(delay, self._expire_later)

    def report(self) -> None:
        """The peers and the counters, to the parent."""
        wall, now = time.time(), time.monotonic()
        peers = tuple(
            p.as_dict(now) | {"last_seen": wall - (now - p.last_seen)}
            for p in self.table.peers.values()
        )
        stats = {
            "received": self.table.received,
            "sent": self.sent,
            "send_errors": self.errors,
            "replied": self.replies.spent_total,
            "replies_limited": self.replies.refused,
            "dropped": dict(self.table.dropped),
        }
        self.runtime.send(m.PeersUpdate(peers=peers, stats=stats))
        self._reported = now

    async def _measure(self) -> None:
        """Every interval, the round trip to each peer: how long a TCP connect to its proxy
        takes (the path requests take). Routing prefers the nearest peer."""
        while not self._stopping:
            for peer in list(self.table.peers.values()):
                started = time.monotonic()
                try:
                    _, writer = await asyncio.wait_for(
                        asyncio.open_connection(peer.address, peer.proxy_port), self.interval
                    )
                except (OSError, TimeoutError):
                    peer.rtt = None
                    continue
                peer.rtt = time.monotonic() - started
                writer.close()
            await asyncio.sleep(self.interval)

    # ---- sending ----

    def _datagrams(self, kind: str) -> list[bytes]:
        """This node's announcement (a new sequence number), as datagrams."""
        me = self.me = replace(self.me, seq=self.me.seq + 1)
        return encode(replace(me, kind=kind, services=() if kind == BYE else me.services))

    def _send(self, sock: socket.socket, address: tuple[Any, ...], datagrams: list[bytes]) -> None:
        for data in datagrams:
            try:
                sock.sendto(data, address)
                self.sent += 1
            except OSError:
                self.errors += 1  # no route, interface gone: the next interval tries again

    async def _announce(self, kind: str) -> None:
        datagrams = self._datagrams(kind)
        for sock, address in await self._destinations():
            self._send(sock, address, datagrams)

    async def _destinations(self) -> list[tuple[socket.socket, tuple[Any, ...]]]:
        out: list[tuple[socket.socket, tuple[Any, ...]]] = []
        v4 = next((s for s in self._socks if s.family == socket.AF_INET), None)
        v6 = next((s for s in self._socks if s.family == socket.AF_INET6), None)
        if v4 is not None and self.broadcast:
            out.append((v4, (self.broadcast, self.port)))
        if v6 is not None:
            for index, _name in _multicast_interfaces():
                out.append((v6, (MULTICAST6, self.port, 0, index)))
        assert self._loop is not None
        for host, port in self.static:
            try:
                infos = await self._loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
            except OSError:
                self.errors += 1
                continue
            for family, _type, _proto, _name, sockaddr in infos[:1]:
                sock = v4 if family == socket.AF_INET else v6
                if sock is not None:
                    out.append((sock, sockaddr))
        return out

    def _open(self) -> list[socket.socket]:
        """The UDP sockets: IPv4 (broadcast) and IPv6 (multicast), both on the discovery port
        and shared with other devmesh nodes on this machine."""
        v4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        v4.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        v4.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        v4.bind(("0.0.0.0", self.port))
        v4.setblocking(False)
        self._socks.append(v4)
        if self.ipv6 and socket.has_ipv6:
            try:
                v6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
            except OSError:
                return self._socks
            v6.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            v6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            v6.bind(("::", self.port))
            group = socket.inet_pton(socket.AF_INET6, MULTICAST6)
            for index, _name in _multicast_interfaces():
                with contextlib.suppress(OSError):
                    mreq = group + struct.pack("@I", index)
                    v6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, mreq)
            v6.setblocking(False)
            self._socks.append(v6)
        return self._socks


def _multicast_interfaces() -> Sequence[tuple[int, str]]:
    """Every interface but loopback (link-local multicast is per interface)."""
    try:
        return [(i, n) for i, n in socket.if_nameindex() if n != "lo"]
    except OSError:
        return []


def make_role(
    runtime: WorkerRuntime, configure: m.Configure, sockets: list[socket.socket]
) -> DiscoveryRole:
    """The discovery worker's role factory (named in the parent's worker table)."""
    return DiscoveryRole(runtime, configure.settings)

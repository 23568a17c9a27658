"""The proxy in one process: a listening socket, its client connections, backend pools, timers.

`ProxyServer` is what the proxy worker role and the tests run; `serve()` is the short form.
Everything here runs on the event loop's thread; nothing blocks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from bisect import bisect_left
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

from devmesh.metrics import DURATION_BUCKETS
from devmesh.proxy.client import ClientProtocol
from devmesh.proxy.headers import TraceIds
from devmesh.proxy.ingress import LAN_ACCESS
from devmesh.proxy.outbox import Outbox
from devmesh.proxy.router import Router, Target
from devmesh.proxy.stats import STATS_CELLS, RequestLog, RequestStats
from devmesh.proxy.table import RouteTable
from devmesh.proxy.upstream import Pool

if TYPE_CHECKING:
    from devmesh.proxy.exchange import Exchange
    from devmesh.proxy.spans import SpanExport
    from devmesh.proxy.tunnel import Tunnel

log = logging.getLogger("devmesh.proxy")
STICKY_MAX = 10_000
# A request a peer refused (it has not heard of this node yet) is sent to it again after
# waits of AGAIN_FIRST, doubling, for at most AGAIN_INTERVALS of the peer's announcement
# intervals in all: the time after which a peer drops a silent one. One interval was not
# enough on a loaded 2-core machine (the refusing node's discovery -> parent -> proxy took
# longer right after its start: tests/test_race_lab.py).
AGAIN_FIRST = 0.025
AGAIN_INTERVALS = 3


@dataclass(frozen=True)
class Settings:
    """The proxy's knobs (from `Configure.settings`; unknown keys are ignored)."""

    proxy_port: int = 8080
    lan_access: str = "peers"  # "peers" | "any" | "none"
    header_timeout: float = 10.0  # a request's headers must be complete within this
    keepalive_timeout: float = 75.0  # an idle client connection is closed after this
    max_header: int = 64 * 1024  # total header bytes (431 above)
    max_url: int = 8 * 1024  # request-target bytes (414 above)
    pool_max_idle: int = 64  # idle connections kept per backend
    pool_idle_timeout: float = 60.0
    connect_timeout: float = 10.0
    retries: int = 2  # other candidates (peers) tried when one fails
    # Passive health: a copy that failed gets no traffic this long (longer than active detection
    # takes with the defaults), or until it leaves the routes and comes back.
    eject_for: float = 30.0
    grace: float = 5.0  # how long a stop waits for requests in flight

    @classmethod
    def from_mapping(cls, settings: Mapping[str, Any]) -> Settings:
        """Settings from a `Configure.settings` dict."""
        known = {f.name for f in fields(cls)}
        result = cls(**{k: v for k, v in settings.items() if k in known})
        if result.lan_access not in LAN_ACCESS:
            raise ValueError(f"lan_access: {result.lan_access!r} is not one of {LAN_ACCESS}")
        return result


class ProxyServer:
    """All proxy state of one process; the protocols reach it through `self.server`."""

    def __init__(self, settings: Settings, table: RouteTable | None = None) -> None:
        self.settings = settings
        self.log = log
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]
        self.router = Router(table or RouteTable(version=0, proxy_port=settings.proxy_port))
        self.pools: dict[tuple[str, int], Pool] = {}
        self.connections: set[ClientProtocol] = set()
        self.tunnels: set[Tunnel] = set()
        # Protocols with queued output: flushed once at the end of each callback, so a
        # response head and its body leave in one write.
        self.dirty: list[Outbox] = []
        self.trace_ids = TraceIds()
        self.closing = False
        self.now = 0.0  # the loop's clock, read once per tick: timeouts need no better
        self.refused = 0  # requests refused by the LAN policy
        self.stats = RequestStats()
        # Request lines (`[log] requests`), when asked for; the worker takes them out.
        self.requests: RequestLog | None = None
        self.spans: SpanExport | None = None  # `[tracing] otlp_endpoint`
        # (client address, service) -> the peer that served it last: the client sticks to it.
        self.sticky: dict[tuple[bytes, str], str] = {}
        # Passive health: copies (pool keys) that just failed, and until when they are avoided.
        self.ejected: dict[tuple[str, int], float] = {}
        # Peers a request waited for in vain (`again`): until when no request waits for them.
        self.waited_out: dict[tuple[str, int], float] = {}
        self._led: dict[tuple[int, str], Target] = {}
        self._servers: list[asyncio.AbstractServer] = []
        self._tick_handle: asyncio.TimerHandle | None = None
        self._drained: asyncio.Event | None = None

    # ---- lifecycle ----

    async def start(self, sock: socket.socket) -> None:
        """Serve on an already listening socket (bound by the parent, maybe shared)."""
        self.loop = asyncio.get_running_loop()
        self.now = self.loop.time()
        sock.setblocking(False)
        server = await self.loop.create_server(lambda: ClientProtocol(self), sock=sock)
        self._servers.append(server)
        if self._tick_handle is None:
            self._tick_handle = self.loop.call_later(self._tick_period(), self._tick)

    async def shutdown(self, grace: float | None = None) -> None:
        """Stop accepting, let requests in flight finish (bounded), close the rest."""
        self.closing = True
        for server in self._servers:
            server.close()
        self._servers.clear()
        for conn in list(self.connections):
            conn.shutdown()
        self.flush()
        for pool in self.pools.values():
            pool.close()
        if self.connections or self.tunnels:
            self._drained = asyncio.Event()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._drained.wait(), self.settings.grace if grace is None else grace
                )
        for conn in list(self.connections):
            conn.transport.abort()
        for tunnel in list(self.tunnels):
            tunnel.close()
        for pool in self.pools.values():
            pool.close()
        if self._tick_handle is not None:
            self._tick_handle.cancel()
            self._tick_handle = None

    # ---- the route table ----

    def set_table(self, table: RouteTable) -> None:
        """Install a new route table. Requests in flight keep the targets they were given."""
        if table.version < self.router.table.version:
            return  # an older snapshot arriving late
        before = {c.key for t in self.router.targets for c in t.candidates}
        self.router = Router(table)
        self._led.clear()
        after = {c.key for t in self.router.targets for c in t.candidates}
        # A copy that left the routes (unhealthy, gone) and is back has recovered: no longer
        # avoided; one that stayed stays avoided until its time is up.
        for key in [k for k in self.ejected if k not in before or k not in after]:
            del self.ejected[key]
        keys = {c.key for t in self.router.targets for c in t.candidates}
        for key in [k for k in self.pools if k not in keys]:
            self.pools.pop(key).close()

    def stick(self, client: bytes, target: Target, peer: str) -> None:
        """Remember which peer served this client (bounded: forgotten all at once when full)."""
        if len(self.sticky) >= STICKY_MAX:
            self.sticky.clear()
        self.sticky[(client, target.name)] = peer

    def stuck(self, client: bytes, target: Target) -> Target:
        """`target` led by the peer this client had, if it is still one of its candidates."""
        peer = self.sticky.get((client, target.name))
        if peer is None or peer == target.candidates[0].peer or peer not in target.peer_lines:
            return target
        key = (id(target), peer)
        led = self._led.get(key)
        if led is None:
            led = self._led[key] = target.led_by(peer)
        return led

    def failed(self, key: tuple[str, int]) -> None:
        """A copy refused a connection, broke off or answered 5xx: avoid it for a while
        (when another copy exists), without waiting for the next health probe."""
        self.ejected[key] = self.loop.time() + self.settings.eject_for

    def recovered(self, key: tuple[str, int]) -> None:
        """A copy answered: no longer avoided, and worth waiting for again."""
        self.ejected.pop(key, None)
        self.waited_out.pop(key, None)

    def avoiding(self, target: Target) -> Target:
        """`target` with the copies that failed lately moved to the end (in their order)."""
        now = self.loop.time()
        for key in [k for k, until in self.ejected.items() if until <= now]:
            del self.ejected[key]
        bad = [c for c in target.candidates if c.key in self.ejected]
        if not bad or len(bad) == len(target.candidates):
            return target  # nothing to avoid, or nothing better: try them all
        return target.reordered((*[c for c in target.candidates if c not in bad], *bad))

    def again(self, ex: Exchange) -> bool:
        """Send `ex` to the same peer again after a short wait: the peer refused it (it has
        not heard of this node yet) or could not be reached (no route yet after a partition
        healed), which a few of its intervals should settle. False for this node's own
        process, and when the waits add up to AGAIN_INTERVALS intervals: then no request
        waits for that peer again (for `eject_for`) until it answers."""
        target = ex.target
        assert target is not None
        candidate = target.candidates[ex.attempt]
        key = candidate.key
        waited = ex.waited
        if not candidate.peer or self.waited_out.get(key, 0.0) > self.loop.time():
            return False
        limit = AGAIN_INTERVALS * candidate.interval
        if waited >= limit:
            self.waited_out[key] = self.loop.time() + self.settings.eject_for
            self.failed(key)
            return False
        delay = min(max(AGAIN_FIRST, waited), limit - waited)
        ex.waited = waited + delay
        self.loop.call_later(delay, self._again, ex, key)
        return True

    def _again(self, ex: Exchange, key: tuple[str, int]) -> None:
        if ex.dead:
            return
        self.pool(key).acquire(ex)
        self.flush()

    def pool(self, key: tuple[str, int]) -> Pool:
        """The connection pool for one backend address."""
        pool = self.pools.get(key)
        if pool is None:
            pool = self.pools[key] = Pool(self, key)
        return pool

    # ---- called by the protocols ----

    def done(self, ex: Exchange, gone: bool = False) -> None:
        """`ex` is answered (or its client went away: 499, as nginx counts it)."""
        seconds = time.monotonic() - ex.start
        code = 499 if gone else ex.local or ex.status
        target = ex.target
        service = peer = ""
        if target is not None:
            service = target.name
            if target.candidates and not ex.local:
                peer = target.candidates[ex.attempt].peer
        # RequestStats.record, inlined (once per request).
        key = (service, peer, ex.method, code)
        cells = self.stats.cells.get(key)
        if cells is None:
            cells = self.stats.cells[key] = [0.0] * STATS_CELLS
        cells[bisect_left(DURATION_BUCKETS, seconds)] += 1
        cells[-1] += seconds
        spans = self.spans
        if spans is not None and ex.span:
            end = time.time_ns()
            spans.record(
                trace_id=ex.otel_trace,
                span_id=ex.span,
                parent_id=ex.parent_span,
                name=f"{ex.method.decode('latin-1')} {service or 'devmesh'}",
                start_ns=end - int(seconds * 1e9),
                end_ns=end,
                method=ex.method.decode("latin-1"),
                target=ex.path.decode("latin-1"),
                status=code,
                service=service,
                peer=peer,
                host=ex.host.decode("latin-1"),
                client=ex.client.client_ip.decode("latin-1"),
                bytes_out=ex.sent,
                devmesh_trace=ex.trace.decode("latin-1"),
            )
        log = self.requests
        if log is not None:
            log.add(
                method=ex.method,
                path=ex.path,
                status=code,
                service=service,
                peer=peer,
                seconds=seconds,
                size=ex.sent,
                trace=ex.trace,
                host=ex.host,
                client=ex.client.client_ip,
            )

    def flush(self) -> None:
        """Write everything the callback that is ending queued."""
        dirty = self.dirty
        if dirty:
            for writer in dirty:
                writer.flush()
            dirty.clear()

    def forget(self, conn: ClientProtocol) -> None:
        """A client connection closed."""
        self.connections.discard(conn)
        self._check_drained()

    def upgraded(self, conn: ClientProtocol) -> None:
        """A client connection became a tunnel."""
        self.connections.discard(conn)

    def tunnel_opened(self, tunnel: Tunnel) -> None:
        """A tunnel started."""
        self.tunnels.add(tunnel)

    def tunnel_closed(self, tunnel: Tunnel) -> None:
        """A tunnel ended."""
        self.tunnels.discard(tunnel)
        self._check_drained()

    def _check_drained(self) -> None:
        if self._drained is not None and not self.connections and not self.tunnels:
            self._drained.set()

    # ---- timers ----

    def _tick_period(self) -> float:
        s = self.settings
        return max(0.05, min(1.0, s.header_timeout / 4, s.keepalive_timeout / 4))

    def _tick(self) -> None:
        """One timer for every connection's timeouts and the pools' idle limits."""
        now = self.now = self.loop.time()
        for conn in list(self.connections):
            conn.check(now)
        for pool in self.pools.values():
            pool.sweep(now)
        self.flush()
        self._tick_handle = self.loop.call_later(self._tick_period(), self._tick)


async def serve(
    sock: socket.socket,
    table: RouteTable,
    settings: Settings | None = None,
    stop: asyncio.Event | None = None,
) -> ProxyServer:
    """Serve `table` on `sock` until `stop` is set (forever without one), then shut down."""
    server = ProxyServer(settings or Settings(proxy_port=table.proxy_port), table)
    await server.start(sock)
    try:
        await (stop or asyncio.Event()).wait()
    finally:
        await server.shutdown()
    return server

"""The proxy worker's role: serve the socket the parent bound, with the routes it pushes.

Started by the parent as `devmesh.proxy.worker:make_role`. Several workers may serve the same
listening socket; each holds its own copy of the route table.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket

from devmesh import messages as m
from devmesh.proxy.server import ProxyServer, Settings
from devmesh.proxy.table import RouteTable
from devmesh.workers.base import WorkerRuntime

STATS_INTERVAL = 1.0  # how often the counters go to the parent (when they changed)


class ProxyRole:
    """Runs a `ProxyServer` on `sockets[0]` until the parent says stop."""

    def __init__(self, runtime: WorkerRuntime, settings: Settings, sock: socket.socket) -> None:
        self.runtime = runtime
        self.sock = sock
        self.server = ProxyServer(settings, RouteTable(version=0, proxy_port=settings.proxy_port))
        self._stop = asyncio.Event()

    async def serve(self) -> None:
        """Serve until `stop()`, then let requests in flight finish (bounded) and return."""
        await self.server.start(self.sock)
        reported = -1
        while not self._stop.is_set():
            if self.server.refused != reported:
                reported = self.server.refused
                self.runtime.send(m.ProxyStats(worker=self.runtime.name, refused=reported))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), STATS_INTERVAL)
        await self.server.shutdown()

    def handle(self, msg: m.ParentMessage) -> None:
        """A new route table replaces the old one at once; requests in flight are unaffected."""
        if isinstance(msg, m.RoutesUpdate):
            self.server.set_table(msg.table)

    def stop(self) -> None:
        """Stop accepting and finish what is in flight."""
        self._stop.set()


def make_role(
    runtime: WorkerRuntime, configure: m.Configure, sockets: list[socket.socket]
) -> ProxyRole:
    """The proxy worker's role factory (named in the parent's worker table)."""
    if not sockets:
        raise ValueError("the proxy worker needs its listening socket")
    return ProxyRole(runtime, Settings.from_mapping(configure.settings), sockets[0])

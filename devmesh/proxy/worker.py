"""The proxy worker's role: serve the socket the parent bound, with the routes it pushes.

Started by the parent as `devmesh.proxy.worker:make_role`. Several workers may serve the same
listening socket; each holds its own copy of the route table. Once a second it writes its
request counts to the metric files and tells the parent its refusals; request lines, when
`[log] requests` asks for them, go out every `LINES_INTERVAL` (to their file, or to the parent).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from typing import Any

from devmesh import messages as m
from devmesh.logs.writer import write_all
from devmesh.metrics import ProxyMetrics
from devmesh.proxy.server import ProxyServer, Settings
from devmesh.proxy.spans import load_span_export
from devmesh.proxy.stats import RequestLog
from devmesh.proxy.table import RouteTable
from devmesh.workers.base import WorkerRuntime

log = logging.getLogger("devmesh.proxy")
STATS_INTERVAL = 1.0  # how often the counters go to the metric files and the parent
LINES_INTERVAL = 0.1  # how long a request line may wait to be written


class ProxyRole:
    """Runs a `ProxyServer` on `sockets[0]` until the parent says stop."""

    def __init__(
        self, runtime: WorkerRuntime, settings: Settings, sock: socket.socket, requests: str = "off"
    ) -> None:
        self.runtime = runtime
        self.sock = sock
        self.server = ProxyServer(settings, RouteTable(version=0, proxy_port=settings.proxy_port))
        # Made at the first report, a second in: prometheus-client's import (about 40 ms of
        # CPU) stays out of the start, when the services need the cores.
        self.metrics: ProxyMetrics | None = None
        self._stop = asyncio.Event()
        self._refused = 0
        # `[log] requests`: "off", "stdout" or "service" (through the parent), or a file path.
        self.requests = requests
        self._file = -1
        self._lines: asyncio.TimerHandle | None = None

    def log_requests(self, json_lines: bool) -> None:
        """Keep a line per request (the parent's `[log]` said so)."""
        if self.requests == "off":
            return
        if self.requests not in ("stdout", "service"):
            try:
                self._file = os.open(self.requests, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            except OSError as exc:  # a reload pointed it somewhere it cannot write
                log.error("no request lines: %s: %s", self.requests, exc.strerror or exc)
                return  # the proxy serves on without them
        self.server.requests = RequestLog(json_lines)

    async def serve(self) -> None:
        """Serve until `stop()`, then let requests in flight finish (bounded) and return."""
        await self.server.start(self.sock)
        loop = asyncio.get_running_loop()
        if self.server.requests is not None:
            self._lines = loop.call_later(LINES_INTERVAL, self._write_lines)
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), STATS_INTERVAL)
            self._report()
        await self.server.shutdown()
        self._report()
        if self._lines is not None:
            self._lines.cancel()
        self._write_lines(again=False)
        if self.server.spans is not None:
            self.server.spans.close()

    def _report(self) -> None:
        server = self.server
        stats = server.stats.take()
        refused = server.refused - self._refused
        metrics = self.metrics
        if metrics is None:
            metrics = self.metrics = ProxyMetrics()
        if stats or refused:
            metrics.flush(stats.counts, stats.times, refused, stats.retries)
        metrics.connections.set(len(server.connections) + len(server.tunnels))
        if refused:
            self._refused = server.refused
            self.runtime.send(m.ProxyStats(worker=self.runtime.name, refused=server.refused))

    def _write_lines(self, again: bool = True) -> None:
        log = self.server.requests
        if log is not None and log.count:
            taken = log.take()
            if self._file >= 0:
                data = b"\n".join(taken.values()) + b"\n"
                with contextlib.suppress(OSError):  # a full disk loses lines, not requests
                    write_all(self._file, data)
            else:
                self.runtime.send(m.RequestLines(lines=tuple(taken.items())))
        if again:
            self._lines = asyncio.get_running_loop().call_later(LINES_INTERVAL, self._write_lines)

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
    settings: dict[str, Any] = configure.settings
    role = ProxyRole(
        runtime, Settings.from_mapping(settings), sockets[0], str(settings.get("requests", "off"))
    )
    role.log_requests(settings.get("request_format") == "json")
    if settings.get("otlp_endpoint"):
        try:
            role.server.spans = load_span_export(
                str(settings["otlp_endpoint"]),
                str(settings.get("node", "")),
                headers=settings.get("otlp_headers") or None,
            )
        except (RuntimeError, ValueError) as exc:  # a reload asked for it without the extra
            log.error("no span export: %s", exc)  # the proxy serves on without
    return role

"""The floor under devmesh's proxy: a bare uvloop + httptools relay, for the proxy benchmark.

`python relay.py PORT ORIGIN_PORT` listens on 127.0.0.1:PORT and gives every client connection
its own connection to the origin; bytes go through unchanged, httptools only finds where each
request and response ends (so both connections are kept alive). No routing, no header
rewriting, no pool, no limits: what the same event loop and parser cost with none of
devmesh's features, so the benchmark shows how much the features themselves cost.
Flow control both ways, so a 1 GiB download holds little memory here too.
"""

from __future__ import annotations

import asyncio
import sys

import httptools
import uvloop


class Upstream(asyncio.Protocol):
    """The origin side: relay response bytes to the client."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)  # validates and frames; nothing is rewritten
        self.client.transport.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.client.transport.close()

    def pause_writing(self) -> None:
        self.client.transport.pause_reading()

    def resume_writing(self) -> None:
        self.client.transport.resume_reading()


class Client(asyncio.Protocol):
    """The client side: relay request bytes to this connection's own origin connection."""

    def __init__(self, origin_port: int) -> None:
        self.origin_port = origin_port
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.upstream: Upstream | None = None
        self.pending: list[bytes] = []
        self.parser = httptools.HttpRequestParser(self)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        loop = asyncio.get_running_loop()
        self.connecting = loop.create_task(self.connect(loop))

    async def connect(self, loop: asyncio.AbstractEventLoop) -> None:
        _, self.upstream = await loop.create_connection(
            lambda: Upstream(self), "127.0.0.1", self.origin_port
        )
        assert self.upstream.transport is not None
        for data in self.pending:
            self.upstream.transport.write(data)
        self.pending.clear()

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)
        up = self.upstream
        if up is None or up.transport is None:
            self.pending.append(data)
        else:
            up.transport.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.close()

    def pause_writing(self) -> None:
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.resume_reading()


async def main(port: int, origin_port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Client(origin_port), "127.0.0.1", port)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1]), int(sys.argv[2])))

"""Output queued while a callback runs and written once when it returns.

A response head and its body usually arrive in the same read: queued together, they leave in
one system call instead of two. Both connection protocols are `Outbox`es; the server keeps
those with queued bytes in `dirty` and flushes them when a callback that may have queued
something ends (`ProxyServer.flush`).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from devmesh.proxy.server import ProxyServer


class Outbox(asyncio.Protocol):
    """A protocol whose writes are queued (`emit`) and written in one go (`flush`)."""

    def __init__(self, server: ProxyServer) -> None:
        self.server = server
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.wbuf: list[bytes] = []

    def emit(self, data: bytes) -> None:
        """Queue bytes; they go out in one write when the callback ends."""
        if not self.wbuf:
            self.server.dirty.append(self)
        self.wbuf.append(data)

    def flush(self) -> None:
        """Write what is queued (nothing, if the transport is closing)."""
        buf = self.wbuf
        if not buf:
            return
        transport = self.transport
        if not transport.is_closing():
            if len(buf) == 1:
                transport.write(buf[0])
            else:
                transport.writelines(buf)  # one writev
        buf.clear()

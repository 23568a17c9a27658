"""After `101 Switching Protocols` (WebSocket or any other upgrade): bytes both ways, unparsed.

Both transports get a `TunnelEnd` protocol; each end writes what it reads to the other and
pauses the other's reading while its own transport is above the high water mark, so a fast
sender cannot fill the proxy's memory. A half-close is passed on; the tunnel ends when both
directions have ended or either connection is lost.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from devmesh.proxy.client import ClientProtocol
    from devmesh.proxy.server import ProxyServer
    from devmesh.proxy.upstream import UpstreamConn


class TunnelEnd(asyncio.Protocol):
    """One side of a tunnel: what arrives here is written to `peer`'s transport."""

    def __init__(self, tunnel: Tunnel, transport: asyncio.Transport) -> None:
        self.tunnel = tunnel
        self.transport = transport
        self.peer: TunnelEnd = self  # set by `splice`
        self.eof = False

    def data_received(self, data: bytes) -> None:
        """Relay as is."""
        self.peer.transport.write(data)

    def eof_received(self) -> bool | None:
        """Pass the half-close on; keep this side open for the other direction."""
        self.eof = True
        peer = self.peer.transport
        if self.peer.eof or peer.is_closing():
            self.tunnel.close()
            return False
        peer.write_eof()
        return True

    def pause_writing(self) -> None:
        """This side's receiver is slow: stop reading from the other side."""
        self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        """It caught up."""
        self.peer.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        """Either side gone ends the tunnel."""
        self.tunnel.close()


class Tunnel:
    """The two ends of one upgraded connection."""

    def __init__(
        self, server: ProxyServer, client: asyncio.Transport, upstream: asyncio.Transport
    ) -> None:
        self.server = server
        self.client = TunnelEnd(self, client)
        self.upstream = TunnelEnd(self, upstream)
        self.client.peer = self.upstream
        self.upstream.peer = self.client
        self.closed = False

    def close(self) -> None:
        """Close both connections (each flushes what it holds first)."""
        if self.closed:
            return
        self.closed = True
        self.client.transport.close()
        self.upstream.transport.close()
        self.server.tunnel_closed(self)


def splice(
    server: ProxyServer, client: ClientProtocol, upstream: UpstreamConn, rest: bytes
) -> Tunnel:
    """Turn a client connection and its backend connection into a tunnel.

    `rest` is what the backend sent after its 101 head; the head itself is in the client's
    write queue and goes out first.
    """
    client.flush()
    upstream.flush()
    ct, ut = client.transport, upstream.transport
    tunnel = Tunnel(server, ct, ut)
    ct.set_protocol(tunnel.client)
    ut.set_protocol(tunnel.upstream)
    server.tunnel_opened(tunnel)
    if rest:
        ct.write(rest)
    # Reading may have been paused for the HTTP exchange; from now on the ends decide.
    if ut.get_write_buffer_size() <= ut.get_write_buffer_limits()[1]:
        ct.resume_reading()
    else:
        ct.pause_reading()
    if ct.get_write_buffer_size() <= ct.get_write_buffer_limits()[1]:
        ut.resume_reading()
    else:
        ut.pause_reading()
    return tunnel

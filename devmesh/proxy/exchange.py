"""One request and its response: the only object the data path creates per request.

The client side (`client.py`) creates it when a request's headers are complete, the upstream
side (`upstream.py`) fills in the response, and it is dropped when both are done. It forwards
request body bytes to its backend connection, or holds them until there is one. The defaults
live on the class, so creating one sets only the few fields a request changes (about half the
cost of assigning every slot).
"""

from __future__ import annotations

from time import monotonic
from typing import TYPE_CHECKING

from devmesh.proxy.flow import BUFFER

if TYPE_CHECKING:
    from devmesh.proxy.client import ClientProtocol
    from devmesh.proxy.router import Target
    from devmesh.proxy.upstream import UpstreamConn

# How the request body is framed.
NO_BODY = 0
LENGTH = 1
CHUNKED = 2

# Bytes held for a backend that is not connected yet before reading from the client pauses.
PENDING_LIMIT = 256 * 1024

IDEMPOTENT = frozenset((b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"))


class Exchange:
    """A request in flight (or queued behind a pipelined one) and the state of its response."""

    target: Target | None = None
    head = b""  # the request head for the backend
    host = b""  # the client's Host, for the 404 page
    accept = b""  # the client's Accept, for the proxy's own pages (JSON or HTML)
    keep_alive = True  # the client's connection stays open after this exchange
    http10 = False
    is_head = False
    upgrade = False
    body_kind = NO_BODY
    body_left = 0  # Content-Length bytes not yet received
    # Bytes for the backend that arrived before a connection to it was attached.
    pending: list[bytes] | None = None
    pending_size = 0
    upstream: UpstreamConn | None = None
    # 0: proxied; else the status of the proxy's own answer (403, 404, 503, ...).
    local = 0
    local_detail = ""
    local_extra = b""  # header lines for that answer
    req_done = False  # the whole request has been received from the client
    resp_started = False  # the final response head went to the client
    resp_done = False
    chunk_out = False  # the proxy chunks the response body for the client
    close_after = False  # the client connection closes after this response
    retried = False
    waited = 0.0  # seconds spent waiting for a peer that refused it to hear of this node
    turned_away = False  # a peer's proxy refused it by its LAN policy
    status = 0  # the backend's final status (0 until its response head arrived)
    sent = 0  # response body bytes relayed
    path = b""  # the request-target as the client sent it
    span = b""  # the proxy's span id, when it exports spans
    otel_trace = b""  # and the trace it belongs to
    parent_span = b""  # the client's span (its traceparent), when it sent one
    attempt = 0  # which of the target's candidates serves it
    warning = b""  # a header line for the response (a peer's version differs from ours)
    dead = False  # the client went away

    def __init__(self, client: ClientProtocol, method: bytes, trace: bytes) -> None:
        self.client = client
        self.method = method
        self.trace = trace
        self.start = monotonic()

    @property
    def repeatable(self) -> bool:
        """Has no body and repeating it changes nothing (RFC 9110 §9.2.2): it may be sent
        again after a connection broke, or to another candidate after a 5xx."""
        return self.body_kind == NO_BODY and self.method in IDEMPOTENT

    @property
    def retryable(self) -> bool:
        """May be sent again on a fresh connection if a pooled one failed before answering."""
        return not self.retried and self.repeatable

    @property
    def as_json(self) -> bool:
        """The client prefers JSON (`Accept: application/json`) for the proxy's own pages."""
        return b"application/json" in self.accept

    def body(self, data: bytes) -> None:
        """Request body bytes (de-chunked): framed again if the request was chunked."""
        if self.local:
            return  # answered by the proxy: the body goes nowhere
        if self.body_kind == CHUNKED:
            self.send(b"%x\r\n" % len(data))
            self.send(data)
            self.send(b"\r\n")
        else:
            self.send(data)

    def send(self, data: bytes) -> None:
        """Bytes for the backend: now if connected, else held (reading pauses past a limit)."""
        up = self.upstream
        if up is not None:
            up.emit(data)
            return
        if self.local:
            return
        if self.pending is None:
            self.pending = [data]
        else:
            self.pending.append(data)
        self.pending_size += len(data)
        if self.pending_size > PENDING_LIMIT:
            self.client.gate.block(BUFFER)

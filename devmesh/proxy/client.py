"""The client side of the proxy: one `ClientProtocol` per accepted connection.

httptools parses requests; each request becomes an `Exchange` when its headers are complete.
Requests are answered strictly in order: the first is the active one, pipelined ones wait in a
queue (reading pauses while they wait, so the queue holds at most one read's worth of bytes).
The upstream side calls back `response_complete` and `upstream_failed`. Flow control: `flow.py`.

The common request runs through `data_received`, `on_url`, `RequestHead.add` per header,
`on_headers_complete` and `on_message_complete`, and nothing else: the parser has no
`on_message_begin`, times come from the server's coarse clock, and rare cases leave the path
early.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING, cast

import httptools

from devmesh.proxy import pages
from devmesh.proxy.exchange import CHUNKED, LENGTH, NO_BODY, Exchange
from devmesh.proxy.flow import BUFFER, PIPELINE, UPGRADE, UPSTREAM, ReadGate
from devmesh.proxy.headers import REFUSED_HEADER, HeadersTooLarge, RequestHead
from devmesh.proxy.ingress import admits
from devmesh.proxy.outbox import Outbox
from devmesh.proxy.router import absolute_form, retarget
from devmesh.proxy.spans import otel_trace_id, parse_traceparent, traceparent

if TYPE_CHECKING:
    from devmesh.proxy.router import Target
    from devmesh.proxy.server import ProxyServer
    from devmesh.proxy.upstream import Pool

# Parser phases.
IDLE = 0  # between requests
HEAD = 1  # a request line or headers are arriving
BODY = 2  # the headers are complete, the body is arriving
CLOSED = 3  # nothing more is parsed (upgrade, error, lingering close)

# The proxy's own answers after which the connection closes.
CLOSING_ERRORS = frozenset((400, 405, 408, 414, 431, 500, 501))
# After an answer that leaves a request body unread: how long unread bytes are drained, so
# that closing does not reset the connection before the client has read the answer.
LINGER = 2.0


class Reject(Exception):
    """Raised in a parser callback to answer with `status` and close."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class ClientProtocol(Outbox):
    """One client connection: parse requests, route them, relay responses in order."""

    def __init__(self, server: ProxyServer) -> None:
        # Per connection.
        super().__init__(server)
        self.settings = server.settings
        self.head = RequestHead(server.settings.max_header)  # reused for every request
        # The parser hands headers straight to the head (one call per header, not two).
        self.on_header = self.head.add
        self.parser = httptools.HttpRequestParser(self)
        self.client_ip = b""
        self.peer_host: str | None = None  # the client's address (None: a unix socket)
        self.admitted = True
        self.http10: bool | None = None  # known from the first request
        self.phase = IDLE
        self.since = 0.0  # when the current phase began (server clock, for timeouts)
        self.served = 0
        self.gate: ReadGate = None  # type: ignore[assignment]
        self.write_paused = False
        self.closing = False  # finish what is in flight, then close
        self.active: Exchange | None = None
        self.queue: deque[Exchange] = deque()
        self.linger: asyncio.TimerHandle | None = None
        self._target: Target | None = None  # the last target and its pool, a one-entry cache
        self._pool: Pool | None = None
        # Per request (the one being parsed).
        self.url = b""
        self.head_bytes = 0
        self.parsing: Exchange | None = None
        self.last: Exchange | None = None  # the last upgrade request
        self.raw_left = 0  # Content-Length bytes relayed without the parser

    # ---- asyncio.Protocol ----

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Note the peer (for X-Forwarded-For and the LAN policy) and start the header clock."""
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        self.gate = ReadGate(self.transport)
        server = self.server
        peer = transport.get_extra_info("peername")
        host = peer[0] if isinstance(peer, tuple) and peer else None
        self.peer_host = host
        self.client_ip = (host or "unix").encode("latin-1")
        self.admitted = admits(host, self.settings.lan_access, server.router.peer_ips)
        self.since = server.now
        server.connections.add(self)
        if server.closing:
            transport.close()

    def data_received(self, data: bytes) -> None:
        """Feed the parser (or pass a long Content-Length body straight through)."""
        if self.raw_left:
            data = self._raw_body(data)
            if not data:
                self.server.flush()
                return
        if self.phase == CLOSED:
            return  # lingering close or an upgrade in progress: nothing more is parsed
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self._upgraded(data[exc.args[0] :])
        except httptools.HttpParserCallbackError as exc:
            self._callback_error(exc.__context__)
        except httptools.HttpParserError as exc:
            self._reject(400, f"malformed request: {exc}")
        else:
            if self.phase:  # a request is partly received
                self._partial(len(data))
        server = self.server
        if server.dirty:
            server.flush()

    def eof_received(self) -> bool | None:
        """The client finished sending; let answers in flight go out, then close."""
        if (self.active is None and not self.queue) or self.parsing is not None:
            return False  # nothing to answer, or a request that can never complete: close
        self.closing = True
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        """Drop everything this connection had in flight."""
        self.server.forget(self)
        self.phase = CLOSED
        if self.linger is not None:
            self.linger.cancel()
            self.linger = None
        ex = self.active
        self.active = None
        if ex is not None:
            if not ex.resp_done and not ex.upgrade:
                self.server.done(ex, gone=True)
            ex.dead = True
            up = ex.upstream
            if up is not None:
                up.abandon()  # mid-response: the connection cannot be reused
        for queued in self.queue:
            queued.dead = True
        self.queue.clear()
        self.wbuf.clear()

    def pause_writing(self) -> None:
        """The client reads slower than the backend sends: stop reading from the backend."""
        self.write_paused = True
        ex = self.active
        if ex is not None and ex.upstream is not None:
            ex.upstream.transport.pause_reading()

    def resume_writing(self) -> None:
        """The client caught up."""
        self.write_paused = False
        ex = self.active
        if ex is not None and ex.upstream is not None:
            ex.upstream.transport.resume_reading()

    # ---- parser callbacks (on_header is RequestHead.add) ----

    def on_url(self, url: bytes) -> None:
        """The request-target (or a piece of it): a request starts."""
        if self.phase == HEAD:
            self.url += url
        else:
            self.phase = HEAD
            self.since = self.server.now
            self.url = url
            self.head_bytes = 0

    def on_headers_complete(self) -> None:
        """Route the request and start it (or queue it behind the one being answered)."""
        self.phase = BODY
        head = self.head
        head.done = True  # what the parser reports from now on are trailers
        parser = self.parser
        server = self.server
        method = parser.get_method()
        trace = head.trace
        if head.rare and head.traceparent:  # a W3C trace goes on: it may give the trace id
            parent = parse_traceparent(head.traceparent)
            if not trace and parent is not None:
                trace = parent[0]
        else:
            parent = None
        if not trace:
            ids = server.trace_ids.ready
            trace = ids.pop() if ids else server.trace_ids.next()
        ex = Exchange(self, method, trace)
        if server.spans is not None:
            self._span(ex, parent)
        if not parser.should_keep_alive():
            ex.keep_alive = False
        if self.http10 is None:
            self.http10 = parser.get_http_version() == "1.0"
        if self.http10:
            ex.http10 = True
        if method == b"HEAD":
            ex.is_head = True
        if head.accept:
            ex.accept = head.accept
        if head.content_length > 0:
            ex.body_kind = LENGTH
            ex.body_left = head.content_length
        url = ex.path = self.url
        host = head.host
        if url[0] != 47:  # not "/...": absolute-form, authority-form or "*"
            url, host = absolute_form(url, host)
        if head.rare or method == b"CONNECT" or head.hosts != 1 or not self.admitted:
            self._unusual(ex, host)
        if not ex.local:
            if len(url) > self.settings.max_url:
                self._local(ex, 414, "request-target too long")
            else:
                router = server.router
                # A known Host without path routes is one dict lookup, else the full lookup.
                target = router.host_only.get(host) or router.resolve(host, url)
                if head.rare and head.mesh_hop and target is not None:
                    target = self._forwarded(ex, target, head.mesh_hop)
                ex.host = host
                if target is None:
                    if not ex.local:
                        ex.local = 404
                elif target.key is None:
                    ex.target = target
                    ex.local = 503  # the page names the peers considered (versions, states)
                else:
                    if target.remote_choice:
                        target = server.stuck(self.client_ip, target)
                    if server.ejected:
                        target = server.avoiding(target)
                    ex.target = target
                    if target.candidates[0].warning:
                        ex.warning = target.candidates[0].warning
                    ex.head = head.build(
                        method, url, target.host_line, self.client_ip, ex.trace, ex.upgrade
                    )
        self.parsing = ex
        if self.active is None:
            self._activate(ex)
        else:
            self.queue.append(ex)
            self.gate.block(PIPELINE)

    def on_body(self, body: bytes) -> None:
        """Part of the request body (de-chunked by the parser)."""
        ex = self.parsing
        if ex is not None:
            ex.body_left -= len(body)
            ex.body(body)

    def on_message_complete(self) -> None:
        """The request is fully received."""
        ex = self.parsing
        self.parsing = None
        self.phase = IDLE
        self.since = self.server.now
        self.head.reset()
        if ex is None:
            return
        ex.req_done = True
        if ex.body_kind == CHUNKED:
            ex.send(b"0\r\n\r\n")
        if ex.local and ex is self.active and not ex.resp_done:
            self._answer_local(ex)

    # ---- requests ----

    def _unusual(self, ex: Exchange, host: bytes) -> None:
        """Everything a plain request does not need: policy, upgrades, odd framing."""
        head = self.head
        if head.chunked:
            ex.body_kind = CHUNKED
        if self.parser.should_upgrade():
            self.last = ex  # for `_upgraded`, after the parser stops
            ex.upgrade = True
            ex.keep_alive = False  # after the upgrade, the parser is done with this connection
        if not self.admitted and not self._admitted_now():
            self._refuse(ex)
        elif ex.method == b"CONNECT":
            self._local(ex, 405, "CONNECT is not supported")
        elif head.hosts > 1:
            self._local(ex, 400, "more than one Host header")
        elif head.te_other:
            self._local(ex, 501, "transfer codings other than chunked are not supported")
        elif not host and not ex.http10:
            self._local(ex, 400, "no Host header")

    def _admitted_now(self) -> bool:
        """Ask the policy again, per request: a peer's connection accepted before this node
        heard of the peer (it routed to us first) is served once the route table lists it."""
        router = self.server.router
        self.admitted = admits(self.peer_host, self.settings.lan_access, router.peer_ips)
        return self.admitted

    def _refuse(self, ex: Exchange) -> None:
        """403 by the LAN policy. With `lan_access = "peers"` the answer names this node
        (`X-DevMesh-Refused`): a peer's proxy that gets it knows that no service saw the
        request and that this node has not heard of it yet, so it may send it again."""
        self.server.refused += 1
        self._local(ex, 403, "this proxy serves this machine only (lan_access)")
        node = self.server.router.table.node
        if self.settings.lan_access == "peers" and node:
            ex.local_extra = REFUSED_HEADER + b": " + node.encode("latin-1") + b"\r\n"

    def _span(self, ex: Exchange, parent: tuple[bytes, bytes, bytes] | None) -> None:
        """The proxy exports spans: this request's span is the backend's parent, and the child
        of the client's span when it sent a valid `traceparent` (its trace goes on, whatever
        devmesh trace id the client also sent: that one is an attribute of the span)."""
        head = self.head
        ex.span = self.server.trace_ids.next()[:16]
        if parent is not None:
            ex.otel_trace, ex.parent_span, flags = parent
        else:
            ex.otel_trace, flags = otel_trace_id(ex.trace), b"01"
        head.traceparent_out = traceparent(ex.otel_trace, ex.span, flags)
        head.rare = True  # the head is built by the path that writes traceparent

    def _forwarded(self, ex: Exchange, target: Target, hop: bytes) -> Target | None:
        """A peer's proxy sent this request: it is served by this node's own process or not
        at all (forwarding it again could go round in circles)."""
        router = self.server.router
        if hop == router.table.node.encode("latin-1") or target.here is None:
            where = "it came back to this node" if target.here is not None else "not running here"
            self._local(ex, 508, f"a peer forwarded a request for {target.name}: {where}")
            return None
        return target.here

    def _local(self, ex: Exchange, status: int, detail: str) -> None:
        ex.local = status
        ex.local_detail = detail
        if status in CLOSING_ERRORS:
            ex.keep_alive = False  # a client this confused is not trusted with the next request

    def _activate(self, ex: Exchange) -> None:
        """Start answering `ex`: send it to its backend, or answer it here."""
        self.active = ex
        if ex.local:
            # A bodyless request is answered once complete (keep-alive); one with a body at
            # once (and the connection closes), so a client waiting for 100 Continue is not
            # left waiting.
            if ex.req_done or ex.body_kind != NO_BODY:
                self._answer_local(ex)
            return
        target = ex.target
        if target is self._target and self._pool is not None and not self._pool.retired:
            pool = self._pool
        else:
            assert target is not None and target.key is not None
            pool = self._pool = self.server.pool(target.key)
            self._target = target
        idle = pool.idle  # Pool.acquire, inlined: a pooled connection is the usual case
        while idle:
            conn = idle.pop()
            if not conn.closed and not conn.transport.is_closing():
                conn.start(ex)
                return
        pool.connect(ex)

    def _raw_body(self, data: bytes) -> bytes:
        """Relay Content-Length body bytes without the parser; return what follows the body."""
        n = self.raw_left
        ex = self.parsing
        assert ex is not None
        if len(data) < n:
            self.raw_left = n - len(data)
            ex.body_left = self.raw_left
            ex.body(data)
            return b""
        self.raw_left = 0
        ex.body_left = 0
        ex.body(data if len(data) == n else data[:n])
        # The old parser still waits for this body; the next request needs a fresh one.
        self.parser = httptools.HttpRequestParser(self)
        self.on_message_complete()
        return data[n:]

    def _partial(self, nbytes: int) -> None:
        """After a read that left a request incomplete: limits, and the straight-through body."""
        if self.phase == HEAD:
            # Headers that do not end: count what they take before the parser reports them.
            self.head_bytes += nbytes
            settings = self.settings
            if len(self.url) > settings.max_url:
                self._reject(414, "request-target too long")
            elif self.head_bytes > settings.max_header + settings.max_url:
                self._reject(431, "request headers too large")
        elif self.phase == BODY:
            ex = self.parsing
            if ex is not None and ex.body_kind == LENGTH and ex.body_left > 0:
                # The rest of the body needs no parsing: pass reads through as they come.
                self.raw_left = ex.body_left

    def _upgraded(self, rest: bytes) -> None:
        """The parser stopped after an upgrade request; what follows is not HTTP."""
        self.phase = CLOSED
        ex = self.last
        if ex is None or not ex.upgrade or ex.local:
            if ex is not None:
                ex.close_after = True
            return
        if rest:
            ex.send(rest)  # early bytes of the new protocol, after the request head
        self.gate.block(UPGRADE)  # until the backend switches (or refuses)

    def _callback_error(self, cause: BaseException | None) -> None:
        if isinstance(cause, Reject):
            self._reject(cause.status, cause.message)
        elif isinstance(cause, HeadersTooLarge):
            self._reject(431, "request headers too large")
        else:
            self.server.log.error("proxy: error handling a request", exc_info=cause)
            self._reject(500, "internal error in the proxy")

    def _reject(self, status: int, message: str) -> None:
        """A request that cannot be parsed or breaks a limit: answer once it is its turn, close."""
        self.phase = CLOSED
        self.raw_left = 0
        ex = self.parsing
        self.parsing = None
        if ex is not None:
            ex.dead = True
            if ex in self.queue:
                self.queue.remove(ex)
            elif ex is self.active:
                if ex.upstream is not None:
                    ex.upstream.abandon()
                    ex.upstream = None
                if ex.resp_started:
                    self.close()
                    return
                self.active = None
        err = Exchange(self, b"GET", self.server.trace_ids.next())
        self._local(err, status, message)
        err.keep_alive = False
        err.req_done = True
        if self.active is None:
            self._activate(err)
        else:
            self.queue.append(err)
            self.gate.block(PIPELINE)

    # ---- answers ----

    def _answer_local(self, ex: Exchange) -> None:
        """The proxy's own answer for `ex` (404, 503, 4xx, 502)."""
        close = not ex.req_done or not ex.keep_alive or self.closing
        page = pages.for_exchange(ex, self.server.router, close)
        ex.sent = len(page) - page.find(b"\r\n\r\n") - 4
        self.server.done(ex)
        self.emit(page)
        ex.resp_started = ex.resp_done = True
        ex.close_after = close
        self._finish(ex)

    def response_complete(self, ex: Exchange) -> None:
        """The backend's response is fully relayed."""
        if ex.dead:
            return
        self.server.done(ex)
        if ex.chunk_out:
            self.emit(b"0\r\n\r\n")
        ex.resp_done = True
        if ex.close_after or not ex.req_done or self.queue or self.gate.reasons or self.closing:
            self._finish(ex)
            return
        # `_finish` for the usual case: keep-alive, nothing queued, nothing paused.
        self.active = None
        self.served += 1
        if self.phase == IDLE:
            self.since = self.server.now

    def upstream_failed(self, ex: Exchange, status: int, detail: str) -> None:
        """The backend could not be reached (503) or broke off (502): the next candidate, if
        there is one and the request can be sent again; for a peer that could not be reached
        and no other copy, the same peer after a short wait (`ProxyServer.again`: right after
        a partition heals, the first connects may find no route yet); else the proxy's own
        answer."""
        if ex.dead or ex is not self.active:
            return
        if ex.resp_started:
            self.close()  # a truncated response is the only honest signal left
            return
        target = ex.target
        if target is not None and target.candidates:
            self.server.failed(target.candidates[ex.attempt].key)
        if self.retry(ex, status) or (status == 503 and self.server.again(ex)):
            return
        self._local(ex, status, detail)
        self._answer_local(ex)

    def refused(self, ex: Exchange) -> bool:
        """A peer's proxy refused `ex` because it has not heard of this node yet (the two
        nodes learnt of each other at different moments). No service saw it, so a bodyless
        request goes on like after a failed connect: to the next copy, or, when none is left,
        to the same peer again a little later (`ProxyServer.again`). False: the 403 is relayed
        (a body already went out and is not kept, or the peer keeps refusing)."""
        if ex.dead or ex.body_kind != NO_BODY:
            return False
        return self.retry(ex, 503) or self.server.again(ex)

    def retry(self, ex: Exchange, status: int) -> bool:
        """Send `ex` to the target's next candidate (`[proxy] retries` times at most): after a
        failed connect (503: nothing was sent), or a broken connection or a 5xx answer for a
        request that may be repeated. False if it cannot be."""
        target = ex.target
        if target is None or ex.attempt >= min(len(target.candidates) - 1, self.settings.retries):
            return False
        if status != 503 and not ex.repeatable:
            return False
        old = target.candidates[ex.attempt]
        self.server.stats.retried(target.name)
        ex.sent = 0  # a response held whole (`upstream.HOLD_MAX`) may have been counted
        ex.attempt += 1
        new = target.candidates[ex.attempt]
        line = target.line_for(new)
        if line is None and old.peer:  # the client's own Host is gone: the canonical one
            line = f"Host: {target.name}.localhost:{target.proxy_port}\r\n".encode("latin-1")
        ex.head = retarget(ex.head, target.line_for(old), line)
        ex.warning = new.warning
        self.server.pool(new.key).acquire(ex)
        return True

    def _finish(self, ex: Exchange) -> None:
        """`ex` is answered: close, or go on with the next request."""
        self.active = None
        self.served += 1
        if ex.close_after or not ex.req_done:
            self._close_after_answer(linger=not ex.req_done and self.phase != CLOSED)
            return
        queue = self.queue
        if queue:
            nxt = queue.popleft()
            if not queue:
                self.gate.unblock(PIPELINE)
            self._activate(nxt)
            return
        if self.gate.reasons:
            self.gate.unblock(PIPELINE)
        if self.phase == IDLE:
            self.since = self.server.now
        if self.closing:
            self.close()

    # ---- writing and closing ----

    def close(self) -> None:
        """Write what is queued, then close."""
        self.flush()
        self.phase = CLOSED
        self.transport.close()

    def _close_after_answer(self, linger: bool) -> None:
        if not linger:
            self.close()
            return
        # Unread request bytes would make close() send a reset that can destroy the answer
        # before the client reads it: send FIN, read and drop for a while, then close.
        self.flush()
        self.phase = CLOSED
        self.raw_left = 0
        transport = self.transport
        if transport.is_closing():
            return
        transport.write_eof()
        self.gate.open()
        self.linger = self.server.loop.call_later(LINGER, transport.close)

    def upstream_paused(self, paused: bool) -> None:
        """The backend's transport went above (True) or below (False) its high water mark."""
        if paused:
            self.gate.block(UPSTREAM)
        else:
            self.gate.unblock(UPSTREAM)

    def attached(self) -> None:
        """Bytes held for the backend went out: reading may go on."""
        self.gate.unblock(BUFFER)

    # ---- timeouts and shutdown ----

    def check(self, now: float) -> None:
        """Called by the server's tick: enforce the header and keep-alive timeouts."""
        if self.active is not None or self.queue:
            return
        settings = self.settings
        if self.phase == HEAD:
            if now - self.since > settings.header_timeout:
                self._reject(408, "the request headers did not arrive in time")
        elif self.phase == IDLE:
            limit = settings.keepalive_timeout if self.served else settings.header_timeout
            if now - self.since > limit:
                self.close()

    def shutdown(self) -> None:
        """Stop after what is in flight; close at once if idle."""
        self.closing = True
        if self.active is None and not self.queue and self.phase != BODY:
            self.close()

"""The backend side of the proxy: one `UpstreamConn` per connection to a service, pooled.

A connection carries one exchange at a time (no pipelining towards backends: dev servers
handle it badly). When a response ends and both sides allow it, the connection goes back to
its `Pool` (LIFO, so warm connections are reused; at most `max_idle`, closed after
`idle_timeout`). A pooled connection the backend closes is dropped by `connection_lost`; if a
reused one fails before the first response byte, a bodyless idempotent request is sent once
more on a fresh connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from typing import TYPE_CHECKING, cast

import httptools

from devmesh.proxy import tunnel
from devmesh.proxy.exchange import NO_BODY, Exchange
from devmesh.proxy.headers import STATUS_LINES, ResponseHead, status_line
from devmesh.proxy.outbox import Outbox

if TYPE_CHECKING:
    from devmesh.proxy.router import Target
    from devmesh.proxy.server import ProxyServer


# A response head larger than this (the parser sets no limit) fails the exchange with a 502.
MAX_RESPONSE_HEAD = 1024 * 1024
# A peer's response up to this size (Content-Length) to a repeatable request is held whole
# before its head goes to the client: if the peer dies mid-body, the request can still go to
# the next copy instead of ending in a truncated body.
HOLD_MAX = 64 * 1024


class BadResponse(Exception):
    """Raised in a parser callback when the backend's response makes no sense."""


class UpstreamConn(Outbox):
    """One connection to a backend: writes requests, parses and relays responses.

    The common response runs through `data_received`, `on_headers_complete`, `on_body` and
    `on_message_complete`: no `on_header` (the head is read from the raw bytes once the parser
    has accepted it, see `ResponseHead`), no `on_status` (the reason phrase is the standard one).
    """

    def __init__(self, pool: Pool) -> None:
        # Per connection.
        super().__init__(pool.server)
        self.pool = pool
        self.peer = pool.peer
        self.head = ResponseHead()
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.reused = False  # it has answered before (so it may have gone stale in the pool)
        self.write_paused = False
        self.idle_since = 0.0
        # Per exchange.
        self.ex: Exchange | None = None
        self.got_bytes = False  # any response byte for the current exchange
        self.reading_head = False  # a response head (1xx or final) is expected or arriving
        self.hbuf = b""  # the bytes received since the head being read began (at `hstart`)
        self.hstart = 0
        self.interim = False  # a 1xx response is being parsed
        self.switching = False  # a 101 answered an upgrade request
        self.in_body = False
        self.stale_parser = False  # the parser is mid-message for nothing: replace it
        self.keep_alive = False
        self.eof_body = False  # the body ends when the backend closes
        self.body_left = 0
        self.raw_left = 0
        # Where response bytes go: the client's queue, or `held` until the body is complete.
        self.sink: list[bytes] = []
        self.held: list[bytes] | None = None

    # ---- asyncio.Protocol ----

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Connected (the pool attaches an exchange next)."""
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        """Response bytes: parse them, or pass a long Content-Length body straight through."""
        ex = self.ex
        if ex is None:
            self.transport.close()  # bytes nobody asked for: the connection is not usable
            return
        client = ex.client
        self.got_bytes = True
        if self.reading_head:
            if self.hbuf:  # a head in several reads (or after a 1xx)
                self.hbuf = self.hbuf[self.hstart :] + data
                self.hstart = 0
                if len(self.hbuf) > MAX_RESPONSE_HEAD:
                    self._fail("the service's response head is too large")
                    return
            else:
                self.hbuf = data
        elif self.raw_left:
            data = self._raw_body(data)
            if not data:
                if client.wbuf:
                    client.flush()
                return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self._switch(data[exc.args[0] :])
        except httptools.HttpParserError as exc:
            cause: BaseException | None = None
            if isinstance(exc, httptools.HttpParserCallbackError):
                cause = exc.__context__
                if not isinstance(cause, BadResponse):
                    self.server.log.error("proxy: error relaying a response", exc_info=cause)
            self._fail(f"invalid response from the service: {cause or exc}")
        else:
            if self.stale_parser:
                self.parser = httptools.HttpResponseParser(self)
                self.stale_parser = False
            elif self.in_body and self.body_left > 0:
                # The rest of a Content-Length body needs no parsing: pass reads through.
                self.raw_left = self.body_left
        # The parser callbacks append to the client's queue directly: write it in one go.
        if client.wbuf:
            client.flush()
        server = self.server
        if server.dirty:
            server.flush()

    def eof_received(self) -> bool | None:
        """The backend closed its side: close ours (connection_lost does the rest)."""
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        """Leave the pool; end, retry or fail the exchange in flight."""
        self.closed = True
        self.pool.discard(self)
        ex = self.ex
        if ex is None:
            return
        self._detach(ex)
        client = ex.client
        if self.in_body and self.eof_body and exc is None:
            self.in_body = False
            client.response_complete(ex)  # a body delimited by the end of the connection
        elif ex.resp_started or self.switching:
            client.upstream_failed(ex, 502, "the service closed the connection mid-response")
        elif self.reused and not self.got_bytes and ex.retryable and not ex.dead:
            ex.retried = True  # a pooled connection the backend had closed: once more, fresh
            self.pool.connect(ex)
        else:
            why = f": {exc}" if exc else ""
            client.upstream_failed(ex, 502, f"the service closed the connection{why}")
        self.server.flush()

    def pause_writing(self) -> None:
        """The backend reads slower than the client sends: stop reading from the client."""
        self.write_paused = True
        if self.ex is not None:
            self.ex.client.upstream_paused(True)

    def resume_writing(self) -> None:
        """The backend caught up."""
        self.write_paused = False
        if self.ex is not None:
            self.ex.client.upstream_paused(False)

    # ---- parser callbacks ----

    def on_headers_complete(self) -> None:
        """Relay a 1xx as is; for the final response, decide its framing and send the head."""
        ex = self.ex
        if ex is None or self.stale_parser:
            return
        parser = self.parser
        code = parser.get_status_code()
        head = self.head
        # The head the parser has just accepted: from hstart to the first blank line.
        hbuf, start = self.hbuf, self.hstart
        end = hbuf.find(b"\r\n\r\n", start) + 2
        head.parse(hbuf[hbuf.find(b"\r\n", start) + 2 : end])
        if code < 200:
            self.hstart = end + 2  # the next head follows this one
            self._informational(ex, code)
            return
        self.reading_head = False
        self.hbuf = b""
        target = ex.target
        if code == 403 and target is not None and self._refused(ex, target):
            return
        ex.status = code
        if target is not None and target.remote_choice and code < 500:
            self.server.stick(ex.client.client_ip, target, target.candidates[ex.attempt].peer)
        server = self.server
        if (
            (server.ejected or server.waited_out)
            and target is not None
            and code < 500
            and not ex.turned_away
        ):
            server.recovered(target.candidates[ex.attempt].key)
        if code >= 500 and target is not None and len(target.candidates) > 1:
            server.failed(target.candidates[ex.attempt].key)  # passive health
            # Another candidate may do better: this answer is dropped (with its connection).
            self.ex = None
            ex.upstream = None
            if ex.client.retry(ex, code):
                self.close()
                return
            self.ex, ex.upstream = ex, self
        self.in_body = True
        # Read inside the callback (after feed_data returns it says False): the flags it reads
        # are final once the headers are parsed, and the HEAD and straight-through paths end
        # without an on_message_complete.
        self.keep_alive = parser.should_keep_alive()
        client = ex.client
        length = head.content_length
        # The framing towards the client (its side of the connection decides keep-alive).
        close = not ex.keep_alive or not ex.req_done or client.closing or ex.close_after
        if ex.is_head or code == 204 or code == 304:
            chunk = False
            length = 0
        elif length >= 0 and not head.chunked:
            chunk = False
        elif ex.http10:
            chunk = False  # an HTTP/1.0 client reads to the end of the connection
            close = True
        else:
            chunk = True  # chunked from the backend, or delimited by its closing
        if chunk:
            ex.chunk_out = True
        if close:
            ex.close_after = True
        status = STATUS_LINES.get(code) or status_line(code)
        keep_10 = ex.http10 and not close
        built = head.build(status, ex.trace, chunk, close, keep_10, extra=ex.warning)
        if length > 0 and not head.chunked:
            self.body_left = length
            if self.peer and length <= HOLD_MAX and ex.repeatable:
                self.held = self.sink = [built]  # the client gets it once the body is here
                return
        elif length < 0 and not head.chunked:
            self.eof_body = True
        ex.resp_started = True
        # Straight into the client's queue: data_received writes it when the parser returns.
        self.sink = client.wbuf
        client.wbuf.append(built)
        if ex.is_head:
            # httptools cannot be told the request was HEAD, so it would wait for a body that
            # never comes: the response ends here and the next one gets a fresh parser.
            self.stale_parser = True
            self._complete()

    def _refused(self, ex: Exchange, target: Target) -> bool:
        """A 403 from a peer's proxy that says it refused us by its LAN policy (it has not
        heard of this node yet): no service saw the request, so the client side may send it
        elsewhere or again (this connection and its answer are dropped). False: relay it."""
        peer = target.candidates[ex.attempt].peer
        if not peer or not self.head.refused_by(peer):
            return False  # a service's own 403 (or one from a proxy that will not change)
        self.ex = None
        ex.upstream = None
        if ex.client.refused(ex):
            self.close()
            return True
        ex.turned_away = True  # relayed, it does not count as the peer answering
        self.ex, ex.upstream = ex, self
        return False

    def _informational(self, ex: Exchange, code: int) -> None:
        """A 1xx: 101 starts a tunnel; others (100 Continue, 103) are passed on as they are."""
        head = self.head
        client = ex.client
        if code == 101:
            if not ex.upgrade or not head.upgrade:
                raise BadResponse("101 Switching Protocols without an upgrade")
            self.switching = True
            ex.status = 101
            client.server.done(ex)
            client.emit(head.build(status_line(101), ex.trace, False, False, switching=True))
            ex.resp_started = True
        else:
            self.interim = True
            if not ex.http10:  # HTTP/1.0 clients do not expect 1xx
                client.emit(head.build_interim(status_line(code)))

    def on_body(self, body: bytes) -> None:
        """Part of the body (de-chunked by the parser)."""
        ex = self.ex
        if ex is None or self.stale_parser:
            return
        self.body_left -= len(body)
        ex.sent += len(body)
        if ex.chunk_out:
            self.sink += (b"%x\r\n" % len(body), body, b"\r\n")
        else:
            self.sink.append(body)

    def on_message_complete(self) -> None:
        """The end of a response: for the final one, hand the connection back."""
        if self.interim:
            self.interim = False
        elif self.ex is not None and not self.stale_parser and not self.switching:
            self._complete()

    # ---- exchanges ----

    def start(self, ex: Exchange) -> None:
        """Carry `ex`: send its head and whatever body bytes arrived before."""
        self.ex = ex
        ex.upstream = self
        self.got_bytes = False
        self.reading_head = True
        self.hbuf = b""
        self.hstart = 0
        client = ex.client
        pending = ex.pending
        if pending is None and ex.body_kind == NO_BODY and not self.wbuf:
            # A whole bodyless request: one write now, none of the queueing below.
            self.transport.write(ex.head)
        else:
            self.emit(ex.head)
            if pending is not None:
                ex.pending = None
                ex.pending_size = 0
                self.wbuf.extend(pending)
                client.attached()
        if client.write_paused:
            self.transport.pause_reading()
        if self.write_paused:
            client.upstream_paused(True)

    def _detach(self, ex: Exchange) -> None:
        self.ex = None
        ex.upstream = None
        client = ex.client
        if self.write_paused:
            client.upstream_paused(False)
        if client.write_paused and not self.closed:
            self.transport.resume_reading()

    def _complete(self) -> None:
        """The final response is relayed: release the connection, tell the client side."""
        ex = self.ex
        assert ex is not None
        self.in_body = self.eof_body = False
        self.body_left = 0
        self.ex = None
        ex.upstream = None
        client = ex.client
        held = self.held
        if held is not None:  # the whole response is here: now the client gets it
            self.held = None
            ex.resp_started = True
            client.wbuf += held
        if self.write_paused or client.write_paused:
            self.ex = ex
            self._detach(ex)
        self.reused = True
        pool = self.pool
        server = self.server
        if (
            self.keep_alive
            and ex.req_done
            and not self.closed
            and not pool.retired
            and not server.closing
            and len(pool.idle) < pool.max_idle
        ):
            self.idle_since = server.now
            pool.idle.append(self)  # back to the pool (Pool.release, inlined)
        else:
            self.close()
        client.response_complete(ex)

    def _raw_body(self, data: bytes) -> bytes:
        """Relay Content-Length body bytes without the parser; return what follows the body."""
        ex = self.ex
        assert ex is not None
        n = self.raw_left
        if len(data) < n:
            self.raw_left = n - len(data)
            ex.sent += len(data)
            self.sink.append(data)
            return b""
        ex.sent += n
        self.raw_left = 0
        self.sink.append(data if len(data) == n else data[:n])
        self.parser = httptools.HttpResponseParser(self)
        self._complete()
        return data[n:]

    def _switch(self, rest: bytes) -> None:
        """The backend answered 101: from now on both connections are a byte tunnel."""
        ex = self.ex
        if ex is None or not self.switching:
            self._fail("unexpected protocol switch")
            return
        self.ex = None
        ex.upstream = None
        self.pool.discard(self)
        self.server.upgraded(ex.client)
        tunnel.splice(self.server, ex.client, self, rest)

    def _fail(self, detail: str) -> None:
        ex = self.ex
        self.close()
        if ex is not None:
            self._detach(ex)
            ex.client.upstream_failed(ex, 502, detail)

    def abandon(self) -> None:
        """The client went away mid-exchange: this connection is in an unknown state."""
        self.ex = None
        self.close()

    # ---- writing ----

    def close(self) -> None:
        """Close the connection (it leaves the pool in connection_lost)."""
        self.closed = True
        self.wbuf.clear()
        self.transport.close()


class Pool:
    """Connections to one backend address: idle ones to reuse, and new ones on demand."""

    def __init__(self, server: ProxyServer, key: tuple[str, int]) -> None:
        self.server = server
        self.host, self.port = key
        self.idle: list[UpstreamConn] = []
        self.retired = False  # the address left the route table
        self.max_idle = server.settings.pool_max_idle
        self.opened = 0  # connections made, for tests and stats
        self.peer = key in server.router.peer_keys  # a peer's proxy, not a service here

    def acquire(self, ex: Exchange) -> None:
        """Give `ex` a connection: an idle one now, or a new one when it is connected."""
        idle = self.idle
        while idle:
            conn = idle.pop()
            if not conn.closed and not conn.transport.is_closing():
                conn.start(ex)
                return
        self.connect(ex)

    def connect(self, ex: Exchange) -> None:
        """Open a new connection for `ex` (a Task per new connection, none per request)."""
        loop = self.server.loop
        self.opened += 1
        task = loop.create_task(
            loop.create_connection(functools.partial(UpstreamConn, self), self.host, self.port)
        )
        timer = loop.call_later(self.server.settings.connect_timeout, task.cancel)
        task.add_done_callback(functools.partial(self._connected, ex, timer))

    def _connected(
        self,
        ex: Exchange,
        timer: asyncio.TimerHandle,
        task: asyncio.Task[tuple[asyncio.Transport, UpstreamConn]],
    ) -> None:
        timer.cancel()
        if task.cancelled():
            error: BaseException | None = TimeoutError("connect timed out")
        else:
            error = task.exception()
        if error is not None:
            if not ex.dead:
                ex.client.upstream_failed(
                    ex, 503, f"cannot connect to {self.host}:{self.port}: {error}"
                )
                self.server.flush()
            return
        conn = task.result()[1]
        if ex.dead:
            self.release(conn)
            return
        conn.start(ex)
        self.server.flush()

    def release(self, conn: UpstreamConn) -> None:
        """Keep an idle connection for the next request (or close it if there are enough)."""
        if self.retired or self.server.closing or len(self.idle) >= self.max_idle:
            conn.close()
            return
        conn.idle_since = self.server.now
        self.idle.append(conn)

    def discard(self, conn: UpstreamConn) -> None:
        """Forget a connection that closed."""
        with contextlib.suppress(ValueError):
            self.idle.remove(conn)

    def sweep(self, now: float) -> None:
        """Close connections idle for longer than the idle timeout (the oldest are first)."""
        limit = self.server.settings.pool_idle_timeout
        idle = self.idle
        while idle and now - idle[0].idle_since > limit:
            idle.pop(0).close()

    def close(self) -> None:
        """Close every idle connection (busy ones close when their exchange ends)."""
        self.retired = True
        while self.idle:
            self.idle.pop().close()

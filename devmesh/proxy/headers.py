"""Header rewriting, as bytes: what a backend sees of a request, what a client sees of a response.

Each connection owns one `RequestHead` (client side) or `ResponseHead` (upstream side) that the
parser's `on_header` feeds and that is reset per message, so a request allocates nothing here
beyond its header lines. Hop-by-hop headers (RFC 9110 §7.6.1) are dropped, including every
header the `Connection` header names; framing is re-decided by the proxy; `X-Forwarded-*`,
`Via` and the trace id are set exactly once.
"""

from __future__ import annotations

import http
import os

VIA = b"1.1 devmesh"
TRACE_HEADER = b"X-DevMesh-Trace-ID"
_VIA_TRACE = b"Via: 1.1 devmesh\r\nX-DevMesh-Trace-ID: "
TRACE_MAX = 64
# A client may bring its own trace id; anything else (too long, odd bytes) is replaced.
_TRACE_CHARS = b"0123456789abcdefABCDEFghijklmnopqrstuvwxyzGHIJKLMNOPQRSTUVWXYZ-_."

# ---- request side ----

# Kinds of request headers that are not copied through unchanged.
_HOST, _CONN, _HOP, _TE, _CL, _UPGRADE, _XFF, _DROP, _VIA, _TRACE, _ACCEPT, _EXPECT = range(12)
REQUEST_SPECIAL: dict[bytes, int] = {
    b"host": _HOST,
    b"connection": _CONN,
    b"keep-alive": _HOP,
    b"proxy-connection": _HOP,
    b"te": _HOP,
    b"trailer": _HOP,
    b"transfer-encoding": _TE,
    b"content-length": _CL,
    b"upgrade": _UPGRADE,
    b"x-forwarded-for": _XFF,
    b"x-forwarded-host": _DROP,  # set from the real Host; a client's own would be forged
    b"x-forwarded-proto": _DROP,
    b"via": _VIA,
    b"x-devmesh-trace-id": _TRACE,
    b"accept": _ACCEPT,
    b"expect": _EXPECT,
}
_REQUEST_LENGTHS = frozenset(map(len, REQUEST_SPECIAL))
# Connection options that are not header names.
_CONN_OPTIONS = frozenset((b"close", b"keep-alive", b"upgrade", b""))


class HeadersTooLarge(Exception):
    """Raised from `RequestHead.add` when the headers pass the size limit."""


class RequestHead:
    """Collects one request's headers (via `add`) and writes the head the backend gets.

    The parser calls `add` directly (it is the client protocol's `on_header`), so the limit on
    the headers' total size and the end of the headers (`done`: later ones are trailers, which
    are dropped) are checked here.
    """

    __slots__ = (
        "accept",
        "chunked",
        "conn_drop",
        "content_length",
        "done",
        "expect_continue",
        "host",
        "hosts",
        "limit",
        "lines",
        "rare",
        "size",
        "te_other",
        "trace",
        "upgrade",
        "via",
        "xff",
    )

    def __init__(self, limit: int = 64 * 1024) -> None:
        self.limit = limit
        self.lines: list[bytes] = []
        self.rare = True
        self.reset()

    def reset(self) -> None:
        """Forget the previous request."""
        self.lines.clear()
        self.size = 0
        self.host = b""
        self.hosts = 0
        self.done = False
        self.content_length = -1
        self.trace = b""
        self.accept = b""
        if self.rare:
            self._reset_rare()

    def _reset_rare(self) -> None:
        # Most requests set none of these (`rare` says whether one was), and the head for
        # the backend is then built by the short path of `build`.
        self.rare = False
        self.conn_drop: list[bytes] | None = None
        self.chunked = False
        self.te_other = False
        self.expect_continue = False
        self.upgrade = b""
        self.xff = b""
        self.via = b""

    def add(self, name: bytes, value: bytes) -> None:
        """One header as the parser saw it (name in its original case)."""
        if self.done:
            return  # a trailer
        self.size += len(name) + len(value) + 4
        if self.size > self.limit:
            raise HeadersTooLarge
        # Most names cannot be special by their length alone: no lower() for them.
        kind = REQUEST_SPECIAL.get(name.lower()) if len(name) in _REQUEST_LENGTHS else None
        if kind is None:
            self.lines += (name, b": ", value, b"\r\n")
            return
        if kind == _HOST:
            self.host = value
            self.hosts += 1
        elif kind == _ACCEPT:
            self.accept = value
            self.lines += (name, b": ", value, b"\r\n")
        elif kind == _CL:
            self.content_length = int(value)  # the parser has checked it is digits, and single
            self.lines += (name, b": ", value, b"\r\n")
        elif kind == _CONN:
            named = connection_names(value)
            if named:
                self.rare = True
                self.conn_drop = [*(self.conn_drop or ()), *named]
        elif kind == _TRACE:
            if not self.trace and valid_trace_id(value):
                self.trace = value
        elif kind != _HOP and kind != _DROP:
            self.rare = True
            self._add_rare(kind, name, value)
        # _HOP, _DROP: not forwarded

    def _add_rare(self, kind: int, name: bytes, value: bytes) -> None:
        if kind == _EXPECT:
            self.expect_continue = value.strip().lower() == b"100-continue"
            self.lines += (name, b": ", value, b"\r\n")
        elif kind == _TE:
            for coding in value.lower().split(b","):
                coding = coding.strip()
                if coding == b"chunked":
                    self.chunked = True
                elif coding:
                    self.te_other = True
        elif kind == _UPGRADE:
            self.upgrade = value
        elif kind == _XFF:
            self.xff = self.xff + b", " + value if self.xff else value
        elif kind == _VIA:
            self.via = self.via + b", " + value if self.via else value

    def build(
        self,
        method: bytes,
        target: bytes,
        host_line: bytes | None,
        client_ip: bytes,
        trace: bytes,
        upgrade: bool,
    ) -> bytes:
        """The request head for the backend (HTTP/1.1, ends with the blank line).

        Called once per request: it may use up what `add` collected (until `reset`).
        """
        host = self.host
        if not self.rare and host:
            # The usual request: no header that needs more than copying, and a Host. The
            # pieces go into `lines` itself (it is reset before the next request).
            lines = self.lines
            lines.insert(0, b"%s %s HTTP/1.1\r\n" % (method, target))
            lines.insert(1, host_line or b"Host: " + host + b"\r\n")
            lines += (
                b"X-Forwarded-For: ",
                client_ip,
                b"\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Host: ",
                host,
                b"\r\n" + _VIA_TRACE,
                trace,
                b"\r\n\r\n",
            )
            return b"".join(lines)
        return self._build(method, target, host_line, client_ip, trace, upgrade)

    def _build(
        self,
        method: bytes,
        target: bytes,
        host_line: bytes | None,
        client_ip: bytes,
        trace: bytes,
        upgrade: bool,
    ) -> bytes:
        lines = self.lines
        xff, via = self.xff, self.via
        drop = self.conn_drop
        if drop is not None:
            lines = _without(lines, drop)
            # What the client's Connection names is hop-by-hop, its X-Forwarded-For and Via too.
            if b"x-forwarded-for" in drop:
                xff = b""
            if b"via" in drop:
                via = b""
        host = self.host
        out = [method, b" ", target, b" HTTP/1.1\r\n"]
        if host_line is not None:
            out.append(host_line)
        elif host:
            out.append(b"Host: " + host + b"\r\n")
        out += lines
        if self.chunked:
            out.append(b"Transfer-Encoding: chunked\r\n")
        if upgrade and self.upgrade:
            out.append(b"Connection: upgrade\r\nUpgrade: " + self.upgrade + b"\r\n")
        xff = xff + b", " + client_ip if xff else client_ip
        out.append(b"X-Forwarded-For: " + xff + b"\r\nX-Forwarded-Proto: http\r\n")
        if host:
            out.append(b"X-Forwarded-Host: " + host + b"\r\n")
        via = via + b", " + VIA if via else VIA
        out.append(b"Via: " + via + b"\r\nX-DevMesh-Trace-ID: " + trace + b"\r\n\r\n")
        return b"".join(out)


def _without(lines: list[bytes], names: list[bytes]) -> list[bytes]:
    """`lines` (name, ": ", value, CRLF pieces) without the headers called one of `names`."""
    out: list[bytes] = []
    for i in range(0, len(lines), 4):
        if lines[i].lower() not in names:
            out += lines[i : i + 4]
    return out


def connection_names(value: bytes) -> list[bytes]:
    """The header names a Connection header lists (lowercase), which are hop-by-hop too;
    the plain options (keep-alive, close, upgrade) are not names to drop."""
    names = [token.strip() for token in value.lower().split(b",")]
    return [n for n in names if n not in _CONN_OPTIONS]


def valid_trace_id(value: bytes) -> bool:
    """A trace id a client may set: 1-64 characters of [0-9A-Za-z-_.]."""
    return 0 < len(value) <= TRACE_MAX and not value.translate(None, _TRACE_CHARS)


class TraceIds:
    """Random 128-bit trace ids as 32 hex digits, made 2048 at a time.

    One `os.urandom` call and one list per 2048 ids; taking one is a `list.pop()`: about
    50 ns instead of about 470 ns for `os.urandom(16).hex()` per request.
    """

    BLOCK = 2048

    def __init__(self) -> None:
        self.ready: list[bytes] = []

    def next(self) -> bytes:
        """A fresh id."""
        try:
            return self.ready.pop()
        except IndexError:
            self.refill()
            return self.ready.pop()

    def refill(self) -> None:
        """Make the next block of ids."""
        block = os.urandom(16 * self.BLOCK).hex().encode()
        self.ready = [block[i : i + 32] for i in range(0, len(block), 32)]


# ---- response side ----

_R_CONN, _R_HOP, _R_TE, _R_CL, _R_UPGRADE, _R_DROP, _R_VIA = range(7)
RESPONSE_SPECIAL: dict[bytes, int] = {
    b"connection": _R_CONN,
    b"keep-alive": _R_HOP,
    b"proxy-connection": _R_HOP,
    b"te": _R_HOP,
    b"trailer": _R_HOP,
    b"transfer-encoding": _R_TE,
    b"content-length": _R_CL,
    b"upgrade": _R_UPGRADE,
    b"x-devmesh-trace-id": _R_DROP,  # the client gets the id the backend was given
    b"via": _R_VIA,
}


_RESPONSE_LENGTHS = frozenset(map(len, RESPONSE_SPECIAL))


def _status_line(code: int, reason: bytes) -> bytes:
    return b"HTTP/1.1 %d %s\r\n" % (code, reason)


STATUS_LINES: dict[int, bytes] = {
    s.value: _status_line(s.value, s.phrase.encode("latin-1")) for s in http.HTTPStatus
}
REASONS: dict[int, bytes] = {s.value: s.phrase.encode("latin-1") for s in http.HTTPStatus}


def status_line(code: int) -> bytes:
    """`HTTP/1.1 <code> <reason>` with the standard reason phrase (empty for unknown codes).

    The backend's own phrase is not kept: clients ignore it (RFC 9112 §4), and not parsing it
    saves a callback per response.
    """
    line = STATUS_LINES.get(code)
    return line if line is not None else _status_line(code, b"")


class ResponseHead:
    """Collects one response's headers from the backend and writes the head the client gets."""

    __slots__ = (
        "chunked",
        "codings",
        "conn_drop",
        "content_length",
        "done",
        "lines",
        "rare",
        "upgrade",
        "via",
    )

    def __init__(self) -> None:
        self.lines: list[bytes] = []
        self.rare = True
        self.reset()

    def reset(self) -> None:
        """Forget the previous response."""
        self.lines.clear()
        self.content_length = -1
        self.chunked = False
        self.done = False
        if self.rare:
            self.rare = False
            self.conn_drop: list[bytes] | None = None
            self.codings: list[bytes] | None = None  # transfer codings other than chunked
            self.upgrade = b""
            self.via = b""

    def add(self, name: bytes, value: bytes) -> None:
        """One header from the backend (the upstream protocol's `on_header`)."""
        if self.done:
            return  # a trailer
        kind = RESPONSE_SPECIAL.get(name.lower()) if len(name) in _RESPONSE_LENGTHS else None
        if kind is None:
            self.lines += (name, b": ", value, b"\r\n")
        elif kind == _R_CL:
            self.content_length = int(value)
            self.lines += (name, b": ", value, b"\r\n")
        elif kind == _R_TE:
            for coding in value.split(b","):
                coding = coding.strip()
                if coding.lower() == b"chunked":
                    self.chunked = True
                elif coding:
                    self.rare = True
                    if self.codings is None:
                        self.codings = []
                    self.codings.append(coding)
        elif kind == _R_CONN:
            named = connection_names(value)
            if named:
                self.rare = True
                self.conn_drop = [*(self.conn_drop or ()), *named]
        elif kind in (_R_UPGRADE, _R_VIA):
            self.rare = True
            self._add_rare(kind, value)
        # _R_HOP, _R_DROP: not passed on

    def _add_rare(self, kind: int, value: bytes) -> None:
        if kind == _R_UPGRADE:
            self.upgrade = value
        elif kind == _R_VIA:
            self.via = self.via + b", " + value if self.via else value

    def build(
        self,
        status: bytes,
        trace: bytes,
        chunk: bool,
        close: bool,
        keep_alive_10: bool = False,
        switching: bool = False,
    ) -> bytes:
        """The head for the client: `status` is its status line; `chunk`: the proxy chunks the
        body; `close`: the connection closes after it; `keep_alive_10`: an HTTP/1.0 client
        asked to keep it open; `switching`: a 101 whose Upgrade is passed on. Called once per
        response: it may use up what `add` collected (until `reset`)."""
        if not self.rare and not keep_alive_10 and not switching:
            # The usual response: the pieces go into `lines` itself (reset before the next).
            lines = self.lines
            lines.insert(0, status)
            if close:
                lines.append(b"Connection: close\r\n")
            if chunk:
                lines.append(b"Transfer-Encoding: chunked\r\n")
            lines += (_VIA_TRACE, trace, b"\r\n\r\n")
            return b"".join(lines)
        lines = self.lines
        if self.conn_drop is not None:
            lines = _without(lines, self.conn_drop)
        out = [status, *lines]
        if switching:
            out.append(b"Connection: upgrade\r\nUpgrade: " + self.upgrade + b"\r\n")
        elif close:
            out.append(b"Connection: close\r\n")
        elif keep_alive_10:
            out.append(b"Connection: keep-alive\r\n")
        if chunk:
            if self.codings:
                out.append(b"Transfer-Encoding: " + b", ".join(self.codings) + b", chunked\r\n")
            else:
                out.append(b"Transfer-Encoding: chunked\r\n")
        via = self.via + b", " + VIA if self.via else VIA
        out.append(b"Via: " + via + b"\r\nX-DevMesh-Trace-ID: " + trace + b"\r\n\r\n")
        return b"".join(out)

    def build_interim(self, status: bytes) -> bytes:
        """A 1xx head (100 Continue, 103 Early Hints) relayed as is, minus hop-by-hop headers."""
        return b"".join([status, *self.lines, b"\r\n"])

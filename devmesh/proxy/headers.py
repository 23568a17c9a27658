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
import re

VIA = b"1.1 devmesh"
TRACE_HEADER = b"X-DevMesh-Trace-ID"
# On a 403 of the LAN policy, the refusing node's id: no service saw the request.
REFUSED_HEADER = b"X-DevMesh-Refused"
_VIA_TRACE = b"Via: 1.1 devmesh\r\nX-DevMesh-Trace-ID: "
TRACE_MAX = 64
# A client may bring its own trace id; anything else (too long, odd bytes) is replaced.
_TRACE_CHARS = b"0123456789abcdefABCDEFghijklmnopqrstuvwxyzGHIJKLMNOPQRSTUVWXYZ-_."

# ---- request side ----

# Kinds of request headers that are not copied through unchanged.
(
    _HOST,
    _CONN,
    _HOP,
    _TE,
    _CL,
    _UPGRADE,
    _XFF,
    _DROP,
    _VIA,
    _TRACE,
    _ACCEPT,
    _EXPECT,
    _MESH_HOP,
    _TRACEPARENT,
) = range(14)
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
    b"x-devmesh-hop": _MESH_HOP,  # set by a peer's proxy: serve from here only; not passed on
    b"traceparent": _TRACEPARENT,  # W3C: passed on, or replaced when the proxy makes spans
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
        "mesh_hop",
        "rare",
        "size",
        "te_other",
        "trace",
        "traceparent",
        "traceparent_out",
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
        self.mesh_hop = b""
        self.traceparent = b""  # the client's (the first one)
        self.traceparent_out = b""  # the proxy's own, for the backend (when it exports spans)

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
        elif kind == _MESH_HOP:
            self.mesh_hop = value
        elif kind == _TRACEPARENT and not self.traceparent:
            self.traceparent = value

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
        traceparent = self.traceparent_out or self.traceparent
        if traceparent:
            out.append(b"traceparent: " + traceparent + b"\r\n")
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

# Response headers that are not passed on as they are, found in the raw head (lowercased, with
# a newline in front so that every line starts with one). llhttp has already accepted the head:
# every line is `name:` (no space before the colon), an optional space, the value and CRLF.
_RESPONSE_SPECIAL = re.compile(
    rb"\n(connection|keep-alive|proxy-connection|te|trailer|transfer-encoding|content-length"
    rb"|upgrade|x-devmesh-trace-id|via):[ \t]*([^\r]*)\r"
)
# Never passed on: hop-by-hop (RFC 9110 §7.6.1), framing the proxy redoes, and the trace id
# (the client gets the id the backend was given). Via is passed on, with the proxy added.
_RESPONSE_DROP = frozenset(
    (
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"x-devmesh-trace-id",
        b"via",
    )
)


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
    """One response head from the backend, read from its raw bytes, and the head the client gets.

    The upstream parser has no `on_header` (a Python call per header is most of what a small
    response costs): once it has accepted a head, `parse` takes the header lines as they came,
    one regular-expression pass finds the few that matter, and `build` passes the rest on in
    one piece, cutting out only the lines that must not go through.
    """

    __slots__ = ("block", "chunked", "codings", "content_length", "drop", "lower", "upgrade", "via")

    def __init__(self) -> None:
        self.parse(b"")

    def parse(self, block: bytes) -> None:
        """Read the header lines of one head (each ends with CRLF; no status line, no blank
        line), as llhttp accepted them."""
        self.block = block
        self.lower = lower = b"\n" + block.lower()
        self.content_length = -1
        self.chunked = False
        self.codings: list[bytes] | None = None  # transfer codings other than chunked
        self.upgrade = self.via = b""
        self.drop: list[bytes] = []  # the names of the lines not passed on
        drop = self.drop
        for name, value in _RESPONSE_SPECIAL.findall(lower):
            if name == b"content-length":
                self.content_length = int(value)  # llhttp checked: digits, one value
            elif name == b"connection":  # every Connection header counts
                if name not in drop:
                    drop.append(name)
                if value not in _CONN_OPTIONS:  # a plain keep-alive or close names nothing
                    named = connection_names(value)
                    drop += named
                    if b"via" in named:
                        self.via = b""  # the backend's Via was for the hop to us only
            elif name == b"transfer-encoding":  # and every Transfer-Encoding
                if name not in drop:
                    drop.append(name)
                self._codings(value)
            elif name not in drop:
                drop.append(name)
                if name == b"upgrade" or name == b"via":  # every line of them, at once
                    values = b", ".join(_lines_named(block, lower, name)[1])
                    if name == b"upgrade":
                        self.upgrade = values
                    else:
                        self.via = values

    def _codings(self, value: bytes) -> None:
        for coding in value.split(b","):
            coding = coding.strip()
            if coding == b"chunked":
                self.chunked = True
            elif coding:
                if self.codings is None:
                    self.codings = []
                self.codings.append(coding)

    def passed_on(self) -> bytes:
        """The header lines the client gets as they are: all but the dropped ones."""
        drop = self.drop
        if not drop:
            return self.block
        block, lower = self.block, self.lower
        if len(drop) == 1:
            # Usually one line (`Connection: keep-alive`): two finds and a join.
            pattern = b"\n" + drop[0] + b":"
            start = lower.find(pattern)
            end = lower.find(b"\n", start + 1)
            if lower.find(pattern, end) < 0:
                return block[:start] + block[end:]
        spans: list[tuple[int, int]] = []
        for name in drop:
            spans += _lines_named(block, lower, name)[0]
        spans.sort()
        out: list[bytes] = []
        pos = 0
        for start, end in spans:
            out.append(block[pos:start])
            pos = end
        out.append(block[pos:])
        return b"".join(out)

    def build(
        self,
        status: bytes,
        trace: bytes,
        chunk: bool,
        close: bool,
        keep_alive_10: bool = False,
        switching: bool = False,
        extra: bytes = b"",
    ) -> bytes:
        """The head for the client: `status` is its status line; `chunk`: the proxy chunks the
        body; `close`: the connection closes after it; `keep_alive_10`: an HTTP/1.0 client
        asked to keep it open; `switching`: a 101 whose Upgrade is passed on; `extra`: header
        lines of the proxy's own (a version warning)."""
        out = [status, self.passed_on(), extra]
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
        if self.via:
            out.append(b"Via: " + self.via + b", " + VIA + b"\r\nX-DevMesh-Trace-ID: ")
        else:
            out.append(_VIA_TRACE)
        out += (trace, b"\r\n\r\n")
        return b"".join(out)

    def refused_by(self, node: str) -> bool:
        """Whether this head carries `X-DevMesh-Refused: <node>`: the LAN policy of that
        node's proxy refused the request (checked on a peer's 403 only)."""
        marker = b"\n" + REFUSED_HEADER.lower() + b":"
        at = self.lower.find(marker)
        if at < 0:
            return False
        end = self.lower.find(b"\n", at + 1)
        value = self.block[at + len(marker) - 1 : end - 1].strip()
        return value == node.encode("latin-1")

    def build_interim(self, status: bytes) -> bytes:
        """A 1xx head (100 Continue, 103 Early Hints) relayed as is, minus hop-by-hop headers."""
        return status + self.passed_on() + b"\r\n"


def _lines_named(
    block: bytes, lower: bytes, name: bytes
) -> tuple[list[tuple[int, int]], list[bytes]]:
    """The spans in `block` of the lines called `name`, and their values (`lower` is
    newline + block, lowercased, so an offset in it is the offset of the line in `block`)."""
    spans: list[tuple[int, int]] = []
    values: list[bytes] = []
    pattern = b"\n" + name + b":"
    i = lower.find(pattern)
    while i >= 0:
        end = lower.find(b"\n", i + 1)  # every line ends with CRLF
        spans.append((i, end))
        values.append(block[i + len(pattern) - 1 : end - 2].strip())
        i = lower.find(pattern, end)
    return spans, values

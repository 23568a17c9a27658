"""Header rewriting (as the backend and the client see it), the proxy's own pages, trace ids,
and the LAN policy, without sockets."""

from __future__ import annotations

import asyncio
import json

import httptools
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from devmesh.proxy import pages
from devmesh.proxy.headers import (
    HeadersTooLarge,
    RequestHead,
    ResponseHead,
    TraceIds,
    status_line,
    valid_trace_id,
)
from devmesh.proxy.ingress import admits, is_loopback
from devmesh.proxy.router import Router
from devmesh.proxy.table import RouteTable, ServiceRoute, Upstream

HOP = {
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
}
SET_BY_PROXY = {
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "via",
    "x-devmesh-trace-id",
}
SPECIAL_NAMES = sorted(HOP | SET_BY_PROXY | {"host", "content-length", "accept", "expect"})

token = st.one_of(
    st.from_regex(r"[A-Za-z][A-Za-z0-9-]{0,10}", fullmatch=True),
    st.sampled_from(["X-Drop", "x-other"]),
)
value = st.from_regex(r"[!-~]([ -~]{0,20}[!-~])?", fullmatch=True)


def mixed_case(draw: st.DrawFn, name: str) -> str:
    flips = draw(st.lists(st.booleans(), min_size=len(name), max_size=len(name)))
    return "".join(c.upper() if f else c for c, f in zip(name, flips, strict=True))


@st.composite
def header_lists(draw: st.DrawFn) -> list[tuple[str, str]]:
    """Headers as a client might send them, special ones in any case, some repeated."""
    out = [("Host", draw(st.sampled_from(["api", "api.localhost:8080", "web:1"])))]
    for _ in range(draw(st.integers(0, 12))):
        if draw(st.booleans()):
            name = mixed_case(draw, draw(st.sampled_from(SPECIAL_NAMES)))
        else:
            name = draw(token)
        low = name.lower()
        if low in ("host", "content-length", "transfer-encoding", "upgrade"):
            continue  # framing and routing are covered by the integration tests
        if low == "connection":
            v = ", ".join(
                draw(
                    st.lists(
                        st.sampled_from(
                            ["keep-alive", "close", "x-drop", "X-Other", "X-Forwarded-For", "via"]
                        ),
                        min_size=1,
                        max_size=3,
                    )
                )
            )
        else:
            v = draw(value)
        out.append((name, v))
    return out


def parse_request(head: bytes) -> tuple[bytes, bytes, list[tuple[str, str]]]:
    """Parse a request head with httptools (so it must be valid HTTP/1.1)."""

    class P:
        url = b""
        headers: list[tuple[str, str]] = []

        def on_url(self, u: bytes) -> None:
            self.url += u

        def on_header(self, n: bytes, v: bytes) -> None:
            self.headers.append((n.decode(), v.decode()))

    p = P()
    p.headers = []
    parser = httptools.HttpRequestParser(p)
    parser.feed_data(head)
    return parser.get_method(), p.url, p.headers


def build(
    headers: list[tuple[str, str]], host_line: bytes | None = b"Host: api.localhost:8080\r\n"
) -> tuple[RequestHead, bytes]:
    rh = RequestHead()
    for n, v in headers:
        rh.add(n.encode(), v.encode())
    rh.done = True
    trace = rh.trace or b"0123456789abcdef0123456789abcdef"
    return rh, rh.build(b"GET", b"/x?y=1", host_line, b"127.0.0.1", trace, False)


@settings(deadline=None)  # a loaded machine must not make these flaky
@given(header_lists())
def test_request_rewrite_model(headers: list[tuple[str, str]]) -> None:
    _, head = build(headers)
    method, url, out = parse_request(head)
    assert method == b"GET" and url == b"/x?y=1"
    names = [n.lower() for n, _ in out]
    # each header the proxy sets is there exactly once; no hop-by-hop header is
    for name in (
        "host",
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
        "via",
        "x-devmesh-trace-id",
    ):
        assert names.count(name) == 1, (name, out)
    assert not HOP & set(names)
    dropped = {
        t.strip().lower() for n, v in headers if n.lower() == "connection" for t in v.split(",")
    }
    got = dict((n.lower(), v) for n, v in out)
    assert got["host"] == "api.localhost:8080"
    assert got["x-forwarded-host"] == headers[0][1]
    assert got["x-forwarded-proto"] == "http"
    xff = [
        v for n, v in headers if n.lower() == "x-forwarded-for" and "x-forwarded-for" not in dropped
    ]
    assert got["x-forwarded-for"] == ", ".join([*xff, "127.0.0.1"])
    via = [v for n, v in headers if n.lower() == "via" and "via" not in dropped]
    assert got["via"] == ", ".join([*via, "1.1 devmesh"])
    # everything else passes in order, unless the Connection header named it
    kept = [
        (n, v)
        for n, v in headers[1:]
        if n.lower() not in HOP | SET_BY_PROXY and n.lower() not in dropped
    ]
    assert [(n, v) for n, v in out if n.lower() not in HOP | SET_BY_PROXY | {"host"}] == kept


def test_request_fast_and_general_paths_agree() -> None:
    headers = [("Host", "api"), ("Accept", "*/*"), ("X-A", "1"), ("Connection", "keep-alive")]
    rh, fast = build(headers)
    assert not rh.rare
    rh = RequestHead()
    for n, v in headers:
        rh.add(n.encode(), v.encode())
    general = rh._build(
        b"GET",
        b"/x?y=1",
        b"Host: api.localhost:8080\r\n",
        b"127.0.0.1",
        b"0123456789abcdef0123456789abcdef",
        False,
    )
    assert fast == general


def test_request_head_keep_mode_upgrade_and_trace() -> None:
    rh, head = build([("Host", "web.localhost:1"), ("X-DevMesh-Trace-ID", "abc-1")], host_line=None)
    _, _, out = parse_request(head)
    assert ("Host", "web.localhost:1") in out
    assert ("X-DevMesh-Trace-ID", "abc-1") in out
    rh = RequestHead()
    for n, v in [("Host", "ws"), ("Connection", "Upgrade"), ("Upgrade", "websocket")]:
        rh.add(n.encode(), v.encode())
    head = rh.build(b"GET", b"/", None, b"::1", b"t", True)
    assert b"Connection: upgrade\r\nUpgrade: websocket\r\n" in head
    assert b"X-Forwarded-For: ::1\r\n" in head


def test_trailers_are_ignored_and_size_is_limited() -> None:
    rh = RequestHead(limit=100)
    rh.add(b"Host", b"a")
    rh.done = True
    rh.add(b"X-Trailer", b"1")
    assert rh.lines == []
    rh.reset()
    with pytest.raises(HeadersTooLarge):
        for i in range(10):
            rh.add(b"X-%d" % i, b"v" * 20)


def response_head(headers: list[tuple[str, str]]) -> ResponseHead:
    """A ResponseHead that has parsed these header lines (as the backend sent them)."""
    rh = ResponseHead()
    rh.parse(b"".join(n.encode() + b": " + v.encode() + b"\r\n" for n, v in headers))
    return rh


@settings(deadline=None, max_examples=500)  # pure and quick: many cases
@given(header_lists())
@example([("Host", "api"), ("via", "0"), ("connection", "via")])  # Via named after it came
@example([("Host", "api"), ("connection", "close"), ("X-Drop", "0"), ("connection", "x-drop")])
def test_response_rewrite_model(headers: list[tuple[str, str]]) -> None:
    headers = headers[1:]  # no Host in a response
    named = {
        t.strip().lower()
        for n, v in headers
        if n.lower() == "connection"
        for t in v.split(",")
        if t.strip().lower() not in ("keep-alive", "close")
    }
    for chunk, close in ((False, False), (True, True)):
        head = response_head(headers).build(status_line(200), b"t" * 32, chunk, close)

        class P:
            headers: list[tuple[str, str]] = []

            def on_header(self, n: bytes, v: bytes) -> None:
                self.headers.append((n.decode(), v.decode()))

        p = P()
        p.headers = []
        httptools.HttpResponseParser(p).feed_data(head)
        names = [n.lower() for n, _ in p.headers]
        assert names.count("x-devmesh-trace-id") == 1 and names.count("via") == 1
        assert p.headers[-1] == ("X-DevMesh-Trace-ID", "t" * 32)
        assert (
            ("Transfer-Encoding", "chunked") in p.headers
            if chunk
            else "transfer-encoding" not in names
        )
        assert ("Connection", "close") in p.headers if close else "connection" not in names
        assert not {"keep-alive", "proxy-connection", "te", "trailer", "upgrade"} & set(names)
        # Every other header goes through unchanged and in order, but those Connection names.
        kept = [
            (n, v)
            for n, v in headers
            if n.lower() not in HOP | {"via", "x-devmesh-trace-id"} and n.lower() not in named
        ]
        ours = HOP | {"via", "x-devmesh-trace-id"}
        assert [h for h in p.headers if h[0].lower() not in ours] == kept
        vias = [v for n, v in headers if n.lower() == "via" and "via" not in named]
        assert ("Via", ", ".join([*vias, "1.1 devmesh"])) in p.headers


def test_response_codings_kept_and_101() -> None:
    rh = response_head(
        [
            ("Transfer-Encoding", "gzip, chunked"),
            ("Connection", "keep-alive, X-Hop"),
            ("X-Hop", "1"),
            ("X-DevMesh-Trace-ID", "backend-made-this"),
            ("Content-Type", "text/plain"),
        ]
    )
    assert rh.chunked and rh.content_length == -1
    head = rh.build(status_line(200), b"mine", True, False)
    assert b"Transfer-Encoding: gzip, chunked\r\n" in head
    assert b"X-Hop" not in head and b"backend-made-this" not in head
    assert b"\r\nContent-Type: text/plain\r\n" in head
    rh = response_head([("Upgrade", "WebSocket"), ("Connection", "Upgrade")])
    head = rh.build(status_line(101), b"t", False, False, switching=True)
    assert head.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    assert b"Connection: upgrade\r\nUpgrade: WebSocket\r\n" in head
    assert status_line(599) == b"HTTP/1.1 599 \r\n"


def test_response_head_framing_and_case() -> None:
    rh = response_head([("content-LENGTH", "42 "), ("CONNECTION", "close"), ("Via", "1.0 a")])
    assert rh.content_length == 42 and not rh.chunked
    head = rh.build(status_line(200), b"t", False, False)
    assert head == (
        b"HTTP/1.1 200 OK\r\ncontent-LENGTH: 42 \r\n"
        b"Via: 1.0 a, 1.1 devmesh\r\nX-DevMesh-Trace-ID: t\r\n\r\n"
    )
    assert response_head([]).build(status_line(204), b"t", False, True) == (
        b"HTTP/1.1 204 No Content\r\nConnection: close\r\n"
        b"Via: 1.1 devmesh\r\nX-DevMesh-Trace-ID: t\r\n\r\n"
    )
    interim = response_head([("Link", "</a.css>; rel=preload"), ("Connection", "keep-alive")])
    assert interim.build_interim(status_line(103)) == (
        b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"
    )


def test_trace_ids() -> None:
    ids = TraceIds()
    seen = {ids.next() for _ in range(3 * TraceIds.BLOCK)}
    assert len(seen) == 3 * TraceIds.BLOCK
    for t in list(seen)[:100]:
        assert len(t) == 32 and int(t, 16) >= 0
    assert valid_trace_id(b"abc-DEF_1.2")
    assert not valid_trace_id(b"")
    assert not valid_trace_id(b"a" * 65)
    assert not valid_trace_id(b"a b")
    assert not valid_trace_id(b"a\xffb")


def test_ingress() -> None:
    for host in ("127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1"):
        assert is_loopback(host), host
    for host in ("192.168.1.2", "10.0.0.1", "::ffff:192.168.1.2", "fe80::1%eth0", "nonsense"):
        assert not is_loopback(host), host
    assert admits("192.168.1.2", "any")
    assert not admits("192.168.1.2", "peers") and not admits("192.168.1.2", "none")
    assert admits(None, "none")  # a unix socket


def test_pages() -> None:
    table = RouteTable(
        1,
        8080,
        (
            ServiceRoute("api", Upstream("127.0.0.1", 1), "running"),
            ServiceRoute(
                "w<b>", None, "starting", restarts=2, reason="exit 1", last_lines=("<x>",)
            ),
        ),
    )
    router = Router(table)
    page = pages.not_found(router, b"nope<", as_json=False, close=False, trace=b"t1")
    head, _, body = page.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 404 Not Found\r\n")
    assert b"Content-Length: %d\r\n" % len(body) in head
    assert b"X-DevMesh-Trace-ID: t1" in head and b"Connection" not in head
    assert b"http://api.localhost:8080/" in body and b"nope&lt;" in body and b"w&lt;b&gt;" in body
    page = pages.not_found(router, b"x", as_json=True, close=True, trace=b"t", head_only=True)
    assert page.endswith(b"\r\n\r\n") and b"Connection: close" in page
    target = router.get("w<b>")
    assert target is not None
    page = pages.unavailable(target, as_json=True, close=False, trace=b"t")
    head, _, body = page.partition(b"\r\n\r\n")
    assert b"Retry-After: 1\r\n" in head
    data = json.loads(body)
    assert data == {
        "error": "service unavailable",
        "service": "w<b>",
        "url": "http://w<b>.localhost:8080/",
        "state": "starting",
        "restarts": 2,
        "reason": "exit 1",
        "peers_considered": [],
        "last_lines": ["<x>"],
    }
    html_page = pages.unavailable(target, as_json=False, close=False, trace=b"t")
    assert b"&lt;x&gt;" in html_page and b'http-equiv="refresh"' in html_page


class FakeTransport:
    """Just enough of a transport to drive a ClientProtocol in-process."""

    def __init__(self, peer: tuple[str, int]) -> None:
        self.peer = peer
        self.out: list[bytes] = []
        self.closed = False

    def get_extra_info(self, key: str, default: object = None) -> object:
        return self.peer if key == "peername" else default

    def write(self, data: bytes) -> None:
        self.out.append(data)

    def writelines(self, data: list[bytes]) -> None:
        self.out.extend(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


@pytest.mark.parametrize(
    ("lan_access", "status"), [("peers", b"403"), ("none", b"403"), ("any", b"503")]
)
def test_lan_clients_are_refused_unless_any(lan_access: str, status: bytes) -> None:
    from devmesh.proxy.client import ClientProtocol
    from devmesh.proxy.server import ProxyServer, Settings

    async def run() -> tuple[bytes, int]:
        table = RouteTable(1, 8080, (ServiceRoute("api", None, "starting"),))
        server = ProxyServer(Settings(lan_access=lan_access), table)
        server.loop = asyncio.get_running_loop()
        proto = ClientProtocol(server)
        transport = FakeTransport(("192.0.2.7", 40000))
        proto.connection_made(transport)  # type: ignore[arg-type]
        for _ in range(2):
            proto.data_received(b"GET / HTTP/1.1\r\nHost: api\r\n\r\n")
        proto.connection_lost(None)
        return b"".join(transport.out), server.refused

    out, refused = asyncio.run(run())
    assert out.startswith(b"HTTP/1.1 " + status)
    assert out.count(b"HTTP/1.1 " + status) == 2  # the connection stays usable
    assert refused == (2 if status == b"403" else 0)


def test_lan_upgrade_is_refused_and_closed() -> None:
    from devmesh.proxy.client import ClientProtocol
    from devmesh.proxy.server import ProxyServer, Settings

    async def run() -> tuple[bytes, bool]:
        table = RouteTable(1, 8080, (ServiceRoute("ws", Upstream("127.0.0.1", 9), "running"),))
        server = ProxyServer(Settings(), table)
        server.loop = asyncio.get_running_loop()
        proto = ClientProtocol(server)
        transport = FakeTransport(("10.1.2.3", 40000))
        proto.connection_made(transport)  # type: ignore[arg-type]
        proto.data_received(
            b"GET / HTTP/1.1\r\nHost: ws\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\nxx"
        )
        proto.connection_lost(None)
        return b"".join(transport.out), transport.closed

    out, closed = asyncio.run(run())
    assert out.startswith(b"HTTP/1.1 403") and b"Connection: close\r\n" in out
    assert closed

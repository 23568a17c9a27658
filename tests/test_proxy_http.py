"""The proxy as a process in front of real backends: routing, pages, HTTP/1.1 semantics."""

from __future__ import annotations

import collections.abc
import http.client
import json
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.proxy_helpers import (
    LOOP,
    Backend,
    ProxyProc,
    RawBackend,
    ResponseReader,
    pattern,
    read_head,
    read_response,
    request,
    service,
    ws_echo_script,
    ws_frame,
    ws_read,
)


@pytest.fixture
def backend() -> collections.abc.Iterator[Backend]:
    """The plain HTTP/1.1 backend."""
    with Backend() as b:
        yield b


@pytest.fixture
def proxy(tmp_path: Path, backend: Backend) -> collections.abc.Iterator[ProxyProc]:
    """The proxy with `api` (aliases `backend`, routes /api/*), `web`, `down` (starting), `off`."""
    services = [
        service("api", backend.port, aliases=["backend"], routes=["/api/*"]),
        service("web", backend.port, routes=["/web-only"]),
        service(
            "down",
            None,
            state="backoff",
            restarts=3,
            reason="exited with code 1",
            last_lines=["Traceback (most recent call last):", "<script>boom</script>"],
        ),
        service("off", None, state="stopped", reason="stopped by the user"),
    ]
    with ProxyProc(tmp_path, services) as p:
        yield p


def headers_of(echo: dict[str, Any]) -> dict[str, list[str]]:
    """The backend's view of the request headers: lowercase name -> values."""
    out: dict[str, list[str]] = {}
    for name, value in echo["headers"]:
        out.setdefault(name.lower(), []).append(value)
    return out


# ---- routing ----


@pytest.mark.parametrize(
    "host", ["api", "api.localhost", "API.LocalHost.", "api:8080", "backend", "backend.localhost"]
)
def test_host_forms_reach_the_service(proxy: ProxyProc, host: str) -> None:
    resp = request(proxy.port, host=host)
    assert resp.status == 200
    echo = resp.json()
    assert echo["path"] == "/echo"
    # canonical Host for the backend, the client's in X-Forwarded-Host
    assert headers_of(echo)["host"] == [f"api.localhost:{proxy.port}"]
    assert headers_of(echo)["x-forwarded-host"] == [host]


def test_longest_path_route_beats_the_host(proxy: ProxyProc) -> None:
    # web.localhost/api/x goes to api (same-origin SPA + API); /apix does not match /api
    resp = request(proxy.port, path="/api/x?q=1", host=f"web.localhost:{proxy.port}")
    assert headers_of(resp.json())["host"] == [f"api.localhost:{proxy.port}"]
    assert resp.json()["path"] == "/api/x?q=1"
    resp = request(proxy.port, path="/apix", host="web")
    assert headers_of(resp.json())["host"] == [f"web.localhost:{proxy.port}"]
    resp = request(proxy.port, path="/web-only/a", host="nothing-here")
    assert headers_of(resp.json())["host"] == [f"web.localhost:{proxy.port}"]
    resp = request(proxy.port, path="/web-onlyx", host="nothing-here")
    assert resp.status == 404 and b"devmesh" in resp.body


def test_unknown_name_gets_the_404_page_listing_services(proxy: ProxyProc) -> None:
    resp = request(proxy.port, host="nope.localhost")
    assert resp.status == 404
    assert resp.header("content-type") == "text/html; charset=utf-8"
    page = resp.body.decode()
    for name in ("api", "web", "down", "off"):
        assert f"http://{name}.localhost:{proxy.port}/" in page
    assert "nope.localhost" in page
    resp = request(proxy.port, host="nope", headers=[("Accept", "application/json")])
    data = resp.json()
    assert data["host"] == "nope"
    assert [s["name"] for s in data["services"]] == ["api", "web", "down", "off"]
    assert data["services"][0]["url"] == f"http://api.localhost:{proxy.port}/"
    assert resp.header("x-devmesh-trace-id")


def test_503_page_for_a_service_without_upstream(proxy: ProxyProc) -> None:
    resp = request(proxy.port, host="down")
    assert resp.status == 503
    assert resp.header("retry-after") == "1"
    page = resp.body.decode()
    assert "backoff" in page and "exited with code 1" in page and "Traceback" in page
    assert "<script>boom" not in page and "&lt;script&gt;boom" in page  # escaped
    resp = request(proxy.port, host="down", headers=[("Accept", "application/json")])
    data = resp.json()
    assert data["state"] == "backoff" and data["restarts"] == 3
    assert data["last_lines"][-1] == "<script>boom</script>"
    # stopped: no Retry-After (it will not come back by itself)
    resp = request(proxy.port, host="off", headers=[("Accept", "application/json")])
    assert resp.status == 503 and resp.header("retry-after") is None
    assert resp.json()["reason"] == "stopped by the user"


def test_503_when_connect_is_refused(tmp_path: Path) -> None:
    dead = socket.create_server((LOOP, 0))
    port = dead.getsockname()[1]
    dead.close()  # nothing listens there now
    with ProxyProc(tmp_path, [service("api", port, state="starting")]) as proxy:
        resp = request(proxy.port, headers=[("Accept", "application/json")])
        assert resp.status == 503
        assert resp.header("retry-after") == "1"
        assert "cannot connect" in resp.json()["reason"]
        # the client connection stays usable after a 503
        with proxy.raw() as sock:
            reader = ResponseReader(sock)
            for _ in range(2):
                sock.sendall(b"GET / HTTP/1.1\r\nHost: api\r\n\r\n")
                assert reader.next().status == 503


def test_host_header_modes(tmp_path: Path, backend: Backend) -> None:
    services = [
        service("keep", backend.port, host_header="keep"),
        service("fixed", backend.port, host_header="localhost:5173"),
        service("canon", backend.port),
    ]
    with ProxyProc(tmp_path, services) as proxy:
        keep = headers_of(request(proxy.port, host="keep.localhost:1234").json())
        assert keep["host"] == ["keep.localhost:1234"]
        fixed = headers_of(request(proxy.port, host="fixed").json())
        assert fixed["host"] == ["localhost:5173"] and fixed["x-forwarded-host"] == ["fixed"]
        # an absolute redirect built from the canonical Host comes back through the proxy
        resp = request(proxy.port, path="/redirect", host="canon")
        assert resp.status == 302
        assert resp.header("location") == f"http://canon.localhost:{proxy.port}/echo"


# ---- headers ----


def test_forwarded_headers_and_hop_by_hop(proxy: ProxyProc) -> None:
    resp = request(
        proxy.port,
        headers=[
            ("X-Forwarded-For", "203.0.113.9"),
            ("X-Forwarded-Host", "forged.example"),
            ("X-Forwarded-Proto", "https"),
            ("Via", "1.0 corp-proxy"),
            ("Connection", "keep-alive, X-Secret-Hop"),
            ("X-Secret-Hop", "must not pass"),
            ("Keep-Alive", "timeout=5"),
            ("Proxy-Connection", "keep-alive"),
            ("TE", "trailers"),
            ("Upgrade", "h2c"),  # without Connection: upgrade it is just a hop-by-hop header
            ("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
            ("X-Custom", "kept"),
        ],
    )
    h = headers_of(resp.json())
    assert h["x-forwarded-for"] == ["203.0.113.9, 127.0.0.1"]
    assert h["x-forwarded-host"] == ["api"]
    assert h["x-forwarded-proto"] == ["http"]
    assert h["via"] == ["1.0 corp-proxy, 1.1 devmesh"]
    assert h["traceparent"] == ["00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"]
    assert h["x-custom"] == ["kept"]
    for hop in ("connection", "x-secret-hop", "keep-alive", "proxy-connection", "te", "upgrade"):
        assert hop not in h, hop
    assert resp.header("via") == "1.1 devmesh"


def test_trace_id_generated_propagated_and_kept(proxy: ProxyProc) -> None:
    resp = request(proxy.port)
    trace = resp.header("x-devmesh-trace-id")
    assert trace is not None and len(trace) == 32 and int(trace, 16) >= 0
    assert headers_of(resp.json())["x-devmesh-trace-id"] == [trace]
    other = request(proxy.port).header("x-devmesh-trace-id")
    assert other != trace
    resp = request(proxy.port, headers=[("X-DevMesh-Trace-ID", "my-trace-1")])
    assert resp.header("x-devmesh-trace-id") == "my-trace-1"
    assert headers_of(resp.json())["x-devmesh-trace-id"] == ["my-trace-1"]
    # a bogus one is replaced, not passed on
    resp = request(proxy.port, headers=[("X-DevMesh-Trace-ID", "a b<c>")])
    assert resp.header("x-devmesh-trace-id") != "a b<c>"
    assert len(resp.all("x-devmesh-trace-id")) == 1


# ---- HTTP/1.1 ----


def test_keep_alive_on_both_sides(proxy: ProxyProc, backend: Backend) -> None:
    before = backend.connections
    conns = set()
    with proxy.raw() as sock:
        reader = ResponseReader(sock)
        for _ in range(20):
            sock.sendall(b"GET /echo HTTP/1.1\r\nHost: api\r\n\r\n")
            resp = reader.next()
            assert resp.status == 200 and resp.keep_alive
            conns.add(resp.json()["conn"])
    # another client reuses the pooled backend connection
    with proxy.raw() as sock:
        sock.sendall(b"GET /echo HTTP/1.1\r\nHost: api\r\n\r\n")
        conns.add(read_response(sock).json()["conn"])
    assert len(conns) == 1
    assert backend.connections - before == 1


def test_pipelined_requests_answered_in_order(proxy: ProxyProc) -> None:
    paths = [f"/echo/{i}" for i in range(30)]
    batch = b"".join(f"GET {p} HTTP/1.1\r\nHost: api\r\n\r\n".encode() for p in paths)
    # a HEAD and a POST with a body in the middle of the pipeline
    batch += b"HEAD /bytes/50 HTTP/1.1\r\nHost: api\r\n\r\n"
    batch += b"POST /echo/post HTTP/1.1\r\nHost: api\r\nContent-Length: 5\r\n\r\nhello"
    batch += b"GET /echo/last HTTP/1.1\r\nHost: nope\r\n\r\n"
    with proxy.raw() as sock:
        sock.sendall(batch)
        reader = ResponseReader(sock, ["GET"] * len(paths) + ["HEAD", "POST", "GET"])
        got = [reader.next().json()["path"] for _ in paths]
        head = reader.next()
        post = reader.next()
        last = reader.next()
    assert got == paths
    assert head.status == 200 and head.header("content-length") == "50" and head.body == b""
    assert post.json()["length"] == 5
    assert last.status == 404


def test_bodies_content_length_and_chunked_both_ways(proxy: ProxyProc) -> None:
    body = pattern(3 * 1024 * 1024 + 17)
    conn = proxy.conn()
    try:
        conn.request("POST", "/echo", body=body, headers={"Host": "api"})
        resp = conn.getresponse()
        echo = json.loads(resp.read())
        assert echo["length"] == len(body)
        assert echo["sha256"] == __import__("hashlib").sha256(body).hexdigest()
        # a chunked upload arrives chunked (re-chunked by the proxy)
        pieces = [body[i : i + 100_000] for i in range(0, len(body), 100_000)]
        conn.request(
            "POST", "/echo", body=iter(pieces), headers={"Host": "api"}, encode_chunked=True
        )
        echo = json.loads(conn.getresponse().read())
        assert echo["length"] == len(body)
        assert "chunked" in headers_of(echo)["transfer-encoding"][0]
        assert "content-length" not in headers_of(echo)
        # downloads: Content-Length and chunked
        conn.request("GET", "/bytes/5000000", headers={"Host": "api"})
        resp = conn.getresponse()
        assert resp.getheader("content-length") == "5000000"
        assert resp.read() == pattern(5_000_000)
        conn.request("GET", "/chunked/777777", headers={"Host": "api"})
        resp = conn.getresponse()
        assert resp.getheader("transfer-encoding") == "chunked"
        assert resp.read() == pattern(777777)
    finally:
        conn.close()


def test_head_and_bodyless_statuses(proxy: ProxyProc) -> None:
    with proxy.raw() as sock:
        reader = ResponseReader(sock)
        sock.sendall(b"HEAD /bytes/12345 HTTP/1.1\r\nHost: api\r\n\r\n")
        head = reader.next(head_only=True)
        assert head.status == 200 and head.header("content-length") == "12345"
        sock.sendall(b"HEAD /chunked/100 HTTP/1.1\r\nHost: api\r\n\r\n")
        assert reader.next(head_only=True).status == 200
        # the connection is still in step after HEADs
        for code in (204, 304, 200):
            sock.sendall(f"GET /status/{code} HTTP/1.1\r\nHost: api\r\n\r\n".encode())
            assert reader.next().status == code
        sock.sendall(b"GET /bytes/10 HTTP/1.1\r\nHost: api\r\n\r\n")
        assert reader.next().body == pattern(10)


def test_http10_client_gets_a_body_it_can_read(proxy: ProxyProc) -> None:
    with proxy.raw() as sock:
        sock.sendall(b"GET /chunked/1000 HTTP/1.0\r\nHost: api\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert b"chunked" not in head.lower()
    assert body == pattern(1000)


def test_backend_closing_keepalive_connections(tmp_path: Path) -> None:
    """A backend that answers without Connection: close and then closes (an idle timeout
    racing the next request): requests keep succeeding, GETs retried on a fresh connection."""

    def script(conn: socket.socket, index: int) -> None:
        head = read_head(conn)
        if not head:
            return
        body = json.dumps({"conn": index}).encode()
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        # Read the next request on this connection, then drop it unanswered.
        read_head(conn)
        conn.close()

    with (
        RawBackend(script) as raw,
        ProxyProc(tmp_path, [service("api", raw.port)]) as proxy,
        proxy.raw() as sock,
    ):
        reader = ResponseReader(sock)
        seen = []
        for _ in range(6):
            sock.sendall(b"GET / HTTP/1.1\r\nHost: api\r\n\r\n")
            resp = reader.next()
            assert resp.status == 200, resp.body
            seen.append(resp.json()["conn"])
        # each reused connection failed once and the GET went to a new one
        assert seen == sorted(set(seen))
        # a POST is not retried: it fails with 502 (nothing was sent to the client yet)
        sock.sendall(b"POST / HTTP/1.1\r\nHost: api\r\nContent-Length: 2\r\n\r\nhi")
        assert reader.next().status == 502


def test_reset_mid_response_closes_the_client(tmp_path: Path) -> None:
    def script(conn: socket.socket, index: int) -> None:
        read_head(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"x" * 10)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        conn.close()  # RST

    def garbage(conn: socket.socket, index: int) -> None:
        read_head(conn)
        conn.sendall(b"NOT HTTP AT ALL\r\n\r\n")

    with RawBackend(script) as raw, RawBackend(garbage) as bad:
        services = [service("api", raw.port), service("bad", bad.port)]
        with ProxyProc(tmp_path, services) as proxy:
            with proxy.raw() as sock:
                sock.sendall(b"GET / HTTP/1.1\r\nHost: api\r\n\r\n")
                data = b""
                while chunk := sock.recv(65536):
                    data += chunk
            assert data.startswith(b"HTTP/1.1 200")
            assert data.endswith(b"x" * 10)  # truncated, then closed: the client can tell
            resp = request(proxy.port, host="bad")
            assert resp.status == 502


def test_expect_100_continue_with_curl(proxy: ProxyProc, tmp_path: Path) -> None:
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is not installed")
    payload = tmp_path / "payload"
    payload.write_bytes(pattern(2 * 1024 * 1024))
    url = f"http://{LOOP}:{proxy.port}/echo"
    started = time.monotonic()
    out = subprocess.run(
        [curl, "-sS", "-v", "-H", "Host: api", "-H", "Expect: 100-continue",
         "--expect100-timeout", "20", "--data-binary", f"@{payload}", url],
        capture_output=True, timeout=30, check=True,
    )  # fmt: skip
    elapsed = time.monotonic() - started
    assert b"HTTP/1.1 100 Continue" in out.stderr  # relayed from the backend
    assert json.loads(out.stdout)["length"] == 2 * 1024 * 1024
    assert elapsed < 10  # curl did not sit out its 20 s expect timeout
    # the backend refuses: curl gets the 417 and never sends the 2 MiB
    out = subprocess.run(
        [curl, "-sS", "-o", "/dev/null", "-w", "%{http_code} %{size_upload}",
         "-H", "Host: api", "-H", "Expect: 100-continue", "--expect100-timeout", "20",
         "--data-binary", f"@{payload}", url.replace("/echo", "/expect-reject")],
        capture_output=True, timeout=30, check=True,
    )  # fmt: skip
    code, uploaded = out.stdout.split()
    assert code == b"417" and float(uploaded) < 1024 * 1024
    # a service that is down: the proxy answers 503 at once, curl does not wait to upload
    started = time.monotonic()
    out = subprocess.run(
        [curl, "-sS", "-o", "/dev/null", "-w", "%{http_code} %{size_upload}",
         "-H", "Host: down", "-H", "Expect: 100-continue", "--expect100-timeout", "20",
         "--data-binary", f"@{payload}", url],
        capture_output=True, timeout=30, check=True,
    )  # fmt: skip
    code, uploaded = out.stdout.split()
    assert code == b"503" and float(uploaded) < 1024 * 1024
    assert time.monotonic() - started < 10


def test_websocket_echo_through_the_proxy(tmp_path: Path) -> None:
    with (
        RawBackend(ws_echo_script) as ws,
        ProxyProc(tmp_path, [service("ws", ws.port)]) as proxy,
        proxy.raw() as sock,
    ):
        sock.sendall(
            b"GET /socket HTTP/1.1\r\nHost: ws.localhost\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            b"Sec-WebSocket-Version: 13\r\n\r\n"
        )
        head = read_head(sock)
        status, _, rest = head.partition(b"\r\n\r\n")
        assert status.startswith(b"HTTP/1.1 101")
        assert b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" in status
        buf = bytearray(rest)
        for size in (5, 200, 70_000, 3 * 1024 * 1024):
            payload = pattern(size)
            sock.sendall(ws_frame(payload, opcode=2))
            opcode, echoed = ws_read(sock, buf)
            assert opcode == 2 and echoed == payload
        sock.sendall(ws_frame(b"\x03\xe8", opcode=8))
        assert ws_read(sock, buf)[0] == 8


def test_upgrade_refused_by_backend_is_relayed(proxy: ProxyProc) -> None:
    with proxy.raw() as sock:
        sock.sendall(
            b"GET /echo HTTP/1.1\r\nHost: api\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
        )
        resp = read_response(sock)
        assert resp.status == 200  # http.server ignores the upgrade and answers normally
        assert resp.header("connection") == "close"
        assert sock.recv(10) == b""


# ---- the route table changing under load ----


def test_table_swap_keeps_in_flight_requests(proxy: ProxyProc, backend: Backend) -> None:
    results: list[bytes | Exception] = []

    def slow() -> None:
        try:
            conn = http.client.HTTPConnection(LOOP, proxy.port, timeout=20)
            try:
                conn.request("GET", "/slow/40", headers={"Host": "api"})  # ~2 s
                results.append(conn.getresponse().read())
            finally:
                conn.close()
        except Exception as exc:
            results.append(exc)

    threads = [threading.Thread(target=slow) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.3)  # let them start streaming
    # api disappears from the table, then comes back under another name
    proxy.reload([service("web", backend.port)])
    assert request(proxy.port, host="api").status == 404
    proxy.reload([service("api2", backend.port, aliases=["api"])])
    assert request(proxy.port, host="api").status == 200
    for t in threads:
        t.join(20)
    assert results == [_chunked_slow(40)] * 4


def _chunked_slow(n: int) -> bytes:
    return pattern(10) * n


def test_graceful_stop_finishes_in_flight(proxy: ProxyProc) -> None:
    results: list[bytes | Exception] = []

    def slow() -> None:
        conn = http.client.HTTPConnection(LOOP, proxy.port, timeout=20)
        try:
            conn.request("GET", "/slow/20", headers={"Host": "api"})  # ~1 s
            resp = conn.getresponse()
            results.append(resp.read())
            results.append(str(resp.getheader("connection")).encode())
        except Exception as exc:
            results.append(exc)
        finally:
            conn.close()

    idle = proxy.raw()
    try:
        idle.sendall(b"GET /echo HTTP/1.1\r\nHost: api\r\n\r\n")
        read_response(idle)
        t = threading.Thread(target=slow)
        t.start()
        time.sleep(0.3)
        started = time.monotonic()
        assert proxy.stop() == 0
        t.join(10)
        assert results[0] == _chunked_slow(20)
        assert time.monotonic() - started < 5
        assert idle.recv(10) == b""  # the idle keep-alive connection was closed
    finally:
        idle.close()


def test_interim_and_close_delimited_responses(tmp_path: Path) -> None:
    """103 Early Hints is relayed; a body delimited by the backend closing reaches an HTTP/1.1
    client chunked (its connection stays open) and an HTTP/1.0 client until the close."""

    def script(conn: socket.socket, index: int) -> None:
        head = read_head(conn)
        if b"/hints" in head:
            conn.sendall(
                b"HTTP/1.1 103 Early Hints\r\nLink: </app.css>; rel=preload\r\n\r\n"
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
            )
            read_head(conn)
        else:
            conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil")
            conn.sendall(b" the end")

    with (
        RawBackend(script) as raw,
        ProxyProc(tmp_path, [service("api", raw.port)]) as proxy,
        proxy.raw() as sock,
    ):
        reader = ResponseReader(sock)
        sock.sendall(b"GET /hints HTTP/1.1\r\nHost: api\r\n\r\n")
        resp = reader.next()
        assert reader.interim == [103] and resp.body == b"ok"
        sock.sendall(b"GET /eof HTTP/1.1\r\nHost: api\r\n\r\n")
        resp = reader.next()
        assert resp.header("transfer-encoding") == "chunked" and resp.body == b"until the end"
        sock.sendall(b"GET /hints HTTP/1.1\r\nHost: api\r\n\r\n")  # still usable
        assert reader.next().body == b"ok"
        with proxy.raw() as old:
            old.sendall(b"GET /eof HTTP/1.0\r\nHost: api\r\n\r\n")
            data = b""
            while chunk := old.recv(65536):
                data += chunk
        assert data.endswith(b"\r\n\r\nuntil the end")
        assert b"chunked" not in data


def test_response_heads_in_pieces_and_too_large(tmp_path: Path) -> None:
    """A response head is read from its raw bytes: heads split over many reads (a 1xx's too)
    come out whole and rewritten; a head past the limit is a 502, and the proxy serves on."""
    pieces = [
        b"HTTP/1.1 100 Cont",
        b"inue\r\n\r\nHTTP/1.1 200 OK\r\nX-A: 1\r\nCONNECTION: keep-alive, X-Hop\r",
        b"\nX-Hop: secret\r\nContent-Len",
        b"gth: 5\r\nX-B: 2\r\n",
        b"\r\nhel",
        b"lo",
    ]

    def script(conn: socket.socket, index: int) -> None:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        head = read_head(conn)
        if b"/huge" in head:
            conn.sendall(b"HTTP/1.1 200 OK\r\n" + b"X-Big: " + b"b" * (2 << 20) + b"\r\n\r\n")
            return
        for piece in pieces:
            conn.sendall(piece)
            time.sleep(0.02)  # pacing, so that the proxy reads each piece on its own
        read_head(conn)

    with (
        RawBackend(script) as raw,
        ProxyProc(tmp_path, [service("api", raw.port)]) as proxy,
        proxy.raw() as sock,
    ):
        reader = ResponseReader(sock)
        sock.sendall(b"GET /pieces HTTP/1.1\r\nHost: api\r\n\r\n")
        resp = reader.next()
        assert reader.interim == [100]
        assert resp.status == 200 and resp.body == b"hello"
        names = [n.lower() for n, _ in resp.headers]
        assert names[:3] == ["x-a", "content-length", "x-b"]
        assert "x-hop" not in names and "connection" not in names
        assert resp.header("x-devmesh-trace-id")
        sock.sendall(b"GET /huge HTTP/1.1\r\nHost: api\r\n\r\n")
        resp = reader.next()
        assert resp.status == 502 and b"too large" in resp.body
        with proxy.raw() as other:
            other.sendall(b"GET /pieces HTTP/1.1\r\nHost: api\r\n\r\n")
            assert ResponseReader(other).next().body == b"hello"


def test_http10_keep_alive_and_absolute_form(proxy: ProxyProc) -> None:
    with proxy.raw() as sock:
        reader = ResponseReader(sock)
        for _ in range(2):
            sock.sendall(b"GET /echo HTTP/1.0\r\nHost: api\r\nConnection: keep-alive\r\n\r\n")
            resp = reader.next()
            assert resp.status == 200 and resp.header("connection") == "keep-alive"
        sock.sendall(b"GET http://web.localhost/echo?x=1 HTTP/1.1\r\nHost: ignored\r\n\r\n")
        echo = reader.next().json()
        assert echo["path"] == "/echo?x=1"
        assert headers_of(echo)["host"] == [f"web.localhost:{proxy.port}"]


def test_early_answer_to_an_upload_reaches_the_client(tmp_path: Path) -> None:
    """A backend that answers 413 without reading a large body: the client reads the 413
    (the proxy drains instead of resetting), and the connection then closes."""

    def script(conn: socket.socket, index: int) -> None:
        read_head(conn)
        conn.sendall(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 4\r\n\r\nbig!")
        time.sleep(0.5)

    with (
        RawBackend(script) as raw,
        ProxyProc(tmp_path, [service("api", raw.port)]) as proxy,
        proxy.raw(timeout=10) as sock,
    ):
        sock.sendall(b"POST / HTTP/1.1\r\nHost: api\r\nContent-Length: 50000000\r\n\r\n")
        sent = 0
        try:
            while sent < 50_000_000:
                sent += sock.send(b"z" * 65536)
        except (BrokenPipeError, ConnectionResetError):
            pass
        resp = read_response(sock)
        assert resp.status == 413 and resp.body == b"big!"
        assert resp.header("connection") == "close"

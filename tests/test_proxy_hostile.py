"""Hostile and broken clients on raw sockets, while a well-behaved client keeps being served."""

from __future__ import annotations

import collections.abc
import socket
import threading
import time
from pathlib import Path

import pytest

from tests.proxy_helpers import (
    Backend,
    ProxyProc,
    ResponseReader,
    read_response,
    recv_all,
    service,
)

HEADER_TIMEOUT = 1.0
KEEPALIVE_TIMEOUT = 1.5
# The proxy checks timeouts on a tick (a quarter of the shortest timeout here) with a clock read
# once per tick, so a timeout fires up to one tick early or late.
TICK = min(HEADER_TIMEOUT, KEEPALIVE_TIMEOUT) / 4


@pytest.fixture
def proxy(tmp_path: Path) -> collections.abc.Iterator[ProxyProc]:
    """The proxy with short timeouts in front of the plain backend."""
    with (
        Backend() as backend,
        ProxyProc(
            tmp_path,
            [service("api", backend.port)],
            header_timeout=HEADER_TIMEOUT,
            keepalive_timeout=KEEPALIVE_TIMEOUT,
        ) as p,
    ):
        yield p


class Bystander:
    """A well-behaved keep-alive client in a thread, requesting in a loop until stopped."""

    def __init__(self, proxy: ProxyProc) -> None:
        self.proxy = proxy
        self.ok = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            with self.proxy.raw(timeout=10) as sock:
                reader = ResponseReader(sock)
                while not self._stop.is_set():
                    sock.sendall(b"GET /echo HTTP/1.1\r\nHost: api\r\n\r\n")
                    resp = reader.next()
                    if resp.status != 200:
                        self.failures.append(f"status {resp.status}")
                    self.ok += 1
                    # Stay under the keep-alive timeout while not hurrying.
                    self._stop.wait(0.01)
        except Exception as exc:
            self.failures.append(repr(exc))

    def __enter__(self) -> Bystander:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        before = self.ok
        deadline = time.monotonic() + 5
        while self.ok == before and not self.failures and time.monotonic() < deadline:
            time.sleep(0.01)  # it must still be making progress at the end
        self._stop.set()
        self._thread.join(10)
        assert not self.failures, self.failures
        assert self.ok > before, "the well-behaved client stopped being served"


def exchange(proxy: ProxyProc, data: bytes) -> bytes:
    """Send raw bytes; everything the proxy answers until it closes (at once, not by a timer)."""
    started = time.monotonic()
    with proxy.raw(timeout=10) as sock:
        sock.sendall(data)
        answer = recv_all(sock)
    assert time.monotonic() - started < HEADER_TIMEOUT * 0.8, "closed by a timeout"
    return answer


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(200), b"400"),  # TLS hello
        (b"GARBAGE\r\n\r\n", b"400"),
        (b"GET / HTTP/1.1\nHost: api\n\n", b"400"),  # bare LF
        (b"GET / HTTP/1.1\r\nHost: api\r\nX-A: 1\r\n folded\r\n\r\n", b"400"),  # obs-fold
        (b"GET / HTTP/1.1\r\nHost: api\r\nX-A: a\x00b\r\n\r\n", b"400"),  # NUL
        (b"GET / HTTP/1.1\r\nHost: api\r\nX-A: a\rInjected: 1\r\n\r\n", b"400"),  # bare CR
        (b"GET / HTTP/1.1\r\nHost: api\r\nBad Name: 1\r\n\r\n", b"400"),
        (b"GET / HTTP/1.1\r\nHost: api\r\nHost: other\r\n\r\n", b"400"),  # two Hosts
        (b"GET / HTTP/1.1\r\n\r\n", b"400"),  # no Host
        # request smuggling shapes
        (
            b"POST / HTTP/1.1\r\nHost: api\r\nContent-Length: 4\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            b"400",
        ),
        (b"POST / HTTP/1.1\r\nHost: api\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\n", b"400"),
        (b"POST / HTTP/1.1\r\nHost: api\r\nContent-Length: -1\r\n\r\n", b"400"),
        (b"POST / HTTP/1.1\r\nHost: api\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", b"400"),
        (b"POST / HTTP/1.1\r\nHost: api\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nabc", b""),
        (
            b"POST / HTTP/1.1\r\nHost: api\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
            b"501",
        ),
        (b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n", b"405"),
    ],
)
def test_malformed_requests_get_an_answer_and_a_close(
    proxy: ProxyProc, data: bytes, status: bytes
) -> None:
    with Bystander(proxy):
        if status == b"":
            # a body that never completes: the client half-closes, the proxy closes too
            with proxy.raw() as sock:
                sock.sendall(data)
                sock.shutdown(socket.SHUT_WR)
                answer = recv_all(sock)
            assert not answer.startswith(b"HTTP/1.1 200")
            return
        answer = exchange(proxy, data)
        assert answer.startswith(b"HTTP/1.1 " + status), answer[:200]
        assert b"Connection: close" in answer.split(b"\r\n\r\n")[0]


def test_oversized_headers_get_431(proxy: ProxyProc) -> None:
    with Bystander(proxy):
        many = b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 100) for i in range(800))  # ~85 KB
        answer = exchange(proxy, b"GET / HTTP/1.1\r\nHost: api\r\n" + many + b"\r\n")
        assert answer.startswith(b"HTTP/1.1 431")
        # one header that never ends, sent in pieces: refused before it is all in memory
        with proxy.raw() as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: api\r\nX-Big: ")
            answer = b""
            for _ in range(200):
                try:
                    sock.sendall(b"a" * 4096)
                except (BrokenPipeError, ConnectionResetError):
                    break
            answer = recv_all(sock)
        assert answer.startswith(b"HTTP/1.1 431")
        # just under the limit is fine (http.server takes at most 100 headers)
        fine = b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 1000) for i in range(60))  # ~60 KB
        with proxy.raw() as sock:
            sock.sendall(b"GET /echo HTTP/1.1\r\nHost: api\r\n" + fine + b"\r\n")
            assert read_response(sock).status == 200


def test_long_url_gets_414(proxy: ProxyProc) -> None:
    with Bystander(proxy):
        answer = exchange(proxy, b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: api\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 414")
        # sent in pieces, never finished
        with proxy.raw() as sock:
            sock.sendall(b"GET /")
            for _ in range(5):
                sock.sendall(b"b" * 4000)
            answer = recv_all(sock)
        assert answer.startswith(b"HTTP/1.1 414")
        with proxy.raw() as sock:
            sock.sendall(b"GET /echo?" + b"a" * 7000 + b" HTTP/1.1\r\nHost: api\r\n\r\n")
            assert read_response(sock).status == 200


def test_slowloris_gets_408_within_the_bound(proxy: ProxyProc) -> None:
    with Bystander(proxy), proxy.raw(timeout=10) as sock:
        started = time.monotonic()
        sock.sendall(b"GET / HTTP/1.1\r\n")
        answer = b""
        # one header byte every 100 ms: it never finishes in time
        for byte in b"X-Slow: " + b"z" * 100:
            try:
                sock.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                break
            time.sleep(0.1)
            if time.monotonic() - started > HEADER_TIMEOUT + 2:
                break
        answer = recv_all(sock)
        elapsed = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 408")
    assert HEADER_TIMEOUT - TICK <= elapsed < HEADER_TIMEOUT + 2 * TICK + 0.5


def test_idle_connections_are_closed(proxy: ProxyProc) -> None:
    with proxy.raw(timeout=10) as fresh, proxy.raw(timeout=10) as used:
        used.sendall(b"GET /echo HTTP/1.1\r\nHost: api\r\n\r\n")
        assert read_response(used).status == 200
        started = time.monotonic()
        assert recv_all(fresh) == b""  # nothing sent: closed without an answer
        fresh_closed = time.monotonic() - started
        assert recv_all(used) == b""  # idle keep-alive: closed after its timeout
        used_closed = time.monotonic() - started
    assert HEADER_TIMEOUT - TICK <= fresh_closed < HEADER_TIMEOUT + 2 * TICK + 0.5
    assert KEEPALIVE_TIMEOUT - TICK <= used_closed < KEEPALIVE_TIMEOUT + 2 * TICK + 0.5


def test_many_garbage_connections_at_once(proxy: ProxyProc) -> None:
    with Bystander(proxy):
        socks = [proxy.raw() for _ in range(50)]
        try:
            for i, sock in enumerate(socks):
                sock.sendall(b"\xff" * (i + 1) + b"\r\n\r\n")
            for sock in socks:
                assert recv_all(sock).startswith(b"HTTP/1.1 400")
        finally:
            for sock in socks:
                sock.close()


def test_client_that_never_reads_does_not_grow_the_proxy(proxy: ProxyProc) -> None:
    """Pipelined requests from a client that does not read: the proxy stops reading too."""
    before = proxy.rss()
    with Bystander(proxy), proxy.raw() as sock:
        sock.setblocking(False)
        request = b"GET /bytes/1000000 HTTP/1.1\r\nHost: api\r\n\r\n"
        sent = 0
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            try:
                sent += sock.send(request * 100)
            except BlockingIOError:
                time.sleep(0.05)
        sock.setblocking(True)
    # hundreds of 1 MB responses were asked for; the proxy held on to a few MB at most
    assert sent > 100 * len(request)
    assert proxy.rss() - before < 32 * 1024 * 1024

"""Large bodies through the proxy: streamed both ways with back-pressure, memory bounded."""

from __future__ import annotations

import hashlib
import json
import socket
import time
from pathlib import Path

from tests.proxy_helpers import (
    Backend,
    ProxyProc,
    RawBackend,
    pattern,
    read_head,
    read_response,
    rss_sampler,
    service,
)

MiB = 1024 * 1024
RSS_LIMIT = 64 * MiB
PERIOD = 251  # the pattern's period (see proxy_helpers.pattern)
_REF = pattern(2 * MiB + PERIOD)


def download(proxy: ProxyProc, path: str, size: int, stall: float = 0.0) -> int:
    """GET `path` and check every byte against the pattern without keeping the body."""
    with proxy.raw(timeout=30) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: api\r\n\r\n".encode())
        head = read_head(sock)
        assert head.startswith(b"HTTP/1.1 200"), head[:200]
        head, _, first = head.partition(b"\r\n\r\n")
        assert b"content-length: %d" % size in head.lower()
        buf = bytearray(MiB)
        view = memoryview(buf)
        got = 0
        pending = first
        stalled = False
        while got < size:
            if pending:
                n = len(pending)
                view[:n] = pending
                pending = b""
            else:
                n = sock.recv_into(buf)
                if not n:
                    break
            start = got % PERIOD
            assert view[:n] == _REF[start : start + n], f"wrong bytes at {got}"
            got += n
            if stall and not stalled and got > 4 * MiB:
                stalled = True
                time.sleep(stall)  # a client that stops reading: the proxy must stop too
        return got


def upload(proxy: ProxyProc, size: int, host: str = "api") -> dict[str, object]:
    """POST `size` pattern bytes with Content-Length; the backend's echo."""
    digest = hashlib.sha256()
    with proxy.raw(timeout=60) as sock:
        sock.sendall(
            f"POST /echo HTTP/1.1\r\nHost: {host}\r\nContent-Length: {size}\r\n\r\n".encode()
        )
        left = size
        off = 0
        while left:
            n = min(left, MiB)
            start = off % PERIOD
            piece = _REF[start : start + n]
            digest.update(piece)
            sock.sendall(piece)
            left -= n
            off += n
        resp = read_response(sock)
    assert resp.status == 200, resp.body[:300]
    echo: dict[str, object] = resp.json()
    assert echo["length"] == size
    assert echo["sha256"] == digest.hexdigest()
    return echo


def run_bulk(tmp_path: Path, size: int) -> int:
    with Backend() as backend, ProxyProc(tmp_path, [service("api", backend.port)]) as proxy:
        with rss_sampler(proxy.pid) as samples:
            assert download(proxy, f"/bytes/{size}", size) == size
            upload(proxy, size)
        assert samples, "no RSS sample"
        peak = max(samples)
        assert peak < RSS_LIMIT, f"proxy RSS peaked at {peak / MiB:.1f} MiB"
    return peak


def test_1gib_download_and_upload_in_bounded_memory(tmp_path: Path) -> None:
    # About 5 s here (the Python backend and client set the pace), so it runs by default.
    peak = run_bulk(tmp_path, 1024 * MiB)
    assert 0 < peak < RSS_LIMIT


def test_stalled_client_and_stalled_backend_push_back(tmp_path: Path) -> None:
    """A reader that stops, and a backend that does not read: the proxy holds a few MiB, not
    the body, and everything arrives once they go on."""

    def slow_reader(conn: socket.socket, index: int) -> None:
        head = read_head(conn)
        length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        got = len(head.partition(b"\r\n\r\n")[2])
        time.sleep(1.0)  # not reading: the proxy must stop reading from the client
        digest_len = got
        while digest_len < length:
            piece = conn.recv(MiB)
            if not piece:
                break
            digest_len += len(piece)
        body = json.dumps({"length": digest_len}).encode()
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))

    with (
        Backend() as backend,
        RawBackend(slow_reader) as slow,
        ProxyProc(tmp_path, [service("api", backend.port), service("slow", slow.port)]) as proxy,
    ):
        size = 128 * MiB
        with rss_sampler(proxy.pid) as samples:
            assert download(proxy, f"/bytes/{size}", size, stall=1.0) == size
            with proxy.raw(timeout=30) as sock:
                sock.sendall(b"POST / HTTP/1.1\r\nHost: slow\r\nContent-Length: %d\r\n\r\n" % size)
                block = _REF[:MiB]
                for _ in range(size // MiB):
                    sock.sendall(block)
                resp = read_response(sock)
            assert resp.json() == {"length": size}
        assert max(samples) < RSS_LIMIT
        # the stalls showed: while nobody moved, the proxy did not grow by the body
        assert max(samples) - min(samples) < 24 * MiB


def test_tunnel_pushes_back_both_ways(tmp_path: Path) -> None:
    """After a 101, bytes flow raw; a side that stops reading stops the other (bounded memory)."""
    size = 96 * MiB

    def sink(conn: socket.socket, index: int) -> None:
        read_head(conn)
        conn.sendall(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: raw\r\nConnection: Upgrade\r\n\r\n"
        )
        time.sleep(1.0)  # not reading: the proxy must stop reading from the client
        got = 0
        while got < size:
            piece = conn.recv(MiB)
            if not piece:
                break
            got += len(piece)
        conn.sendall(b"%d\n" % got)
        # then the other way: the client stalls, the backend pushes
        block = _REF[:MiB]
        for _ in range(size // MiB):
            conn.sendall(block)

    with (
        RawBackend(sink) as raw,
        ProxyProc(tmp_path, [service("raw", raw.port)]) as proxy,
        rss_sampler(proxy.pid) as samples,
        proxy.raw(timeout=30) as sock,
    ):
        sock.sendall(b"GET / HTTP/1.1\r\nHost: raw\r\nConnection: Upgrade\r\nUpgrade: raw\r\n\r\n")
        head = read_head(sock)
        assert head.startswith(b"HTTP/1.1 101")
        assert head.endswith(b"\r\n\r\n")  # nothing else came yet
        block = _REF[:MiB]
        for _ in range(size // MiB):
            sock.sendall(block)
        line = b""
        while not line.endswith(b"\n"):
            line += sock.recv(1)
        assert int(line) == size
        time.sleep(1.0)  # not reading now
        got = 0
        while got < size:
            piece = sock.recv(MiB)
            assert piece
            got += len(piece)
        assert got == size
    assert max(samples) < RSS_LIMIT
    assert max(samples) - min(samples) < 24 * MiB

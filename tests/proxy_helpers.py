"""Real parts for the proxy tests: backends, the proxy as a process, raw HTTP and WebSocket clients.

Everything listens on 127.0.0.1 with a port the kernel picks; every wait is bounded; whatever
is started is stopped by the object that started it (threads joined, processes by pid).
"""

from __future__ import annotations

import base64
import collections
import contextlib
import hashlib
import http.client
import json
import os
import queue
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httptools

REPO = Path(__file__).resolve().parent.parent
LOOP = "127.0.0.1"
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


# ---- a plain HTTP/1.1 backend ----


class BackendHandler(BaseHTTPRequestHandler):
    """What the test backend answers, by path:

    /echo, /api*, /web*
                     JSON: method, path, headers (as pairs), body length and sha256, connection id
    /bytes/N         N bytes of a repeating pattern, Content-Length, written in 1 MiB pieces
    /chunked/N       N bytes, chunked, in ~64 KiB chunks
    /slow/N          N chunks of 10 bytes, one every 50 ms (chunked), for in-flight tests
    /close           answers with `Connection: close`
    /redirect        302 to an absolute URL built from the Host it received
    /status/N        an empty response with status N
    /expect-reject   417 to `Expect: 100-continue`, without reading the body
    """

    protocol_version = "HTTP/1.1"
    server: Backend  # type: ignore[assignment]

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""

    def setup(self) -> None:
        """Number this connection (one handler per connection)."""
        super().setup()
        # As dev servers do: without it, head and body written apart wait on delayed ACKs.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.conn_id = self.server.next_conn_id()

    def handle_expect_100(self) -> bool:
        """Send 100 Continue, except on /expect-reject."""
        if self.path.startswith("/expect-reject"):
            self.send_response(417)
            self.send_header("Content-Length", "0")
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True
            return False
        return super().handle_expect_100()

    def _body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            parts = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self._read_hashing(length)

    def _read_hashing(self, length: int) -> bytes:
        # Large bodies are hashed as they come, never held whole.
        if length <= 1 << 20:
            return self.rfile.read(length)
        digest = hashlib.sha256()
        left = length
        while left:
            piece = self.rfile.read(min(left, 1 << 20))
            if not piece:
                break
            digest.update(piece)
            left -= len(piece)
        self._big = (length - left, digest.hexdigest())
        return b""

    def _send(
        self, status: int, body: bytes, ctype: str = "application/json", **extra: str
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for name, value in extra.items():
            self.send_header(name.replace("_", "-"), value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_HEAD(self) -> None:
        """Like GET without the body."""
        self.do_GET()

    def do_POST(self) -> None:
        """Echo what was received."""
        self._big: tuple[int, str] | None = None
        body = self._body()
        self._echo(body)

    do_PUT = do_POST

    def _echo(self, body: bytes) -> None:
        length, digest = self._big or (len(body), hashlib.sha256(body).hexdigest())
        data = {
            "method": self.command,
            "path": self.path,
            "headers": [[k, v] for k, v in self.headers.items()],
            "length": length,
            "sha256": digest,
            "conn": self.conn_id,
        }
        self._send(200, json.dumps(data).encode())

    def do_GET(self) -> None:
        """See the class docstring."""
        path = self.path
        if path.startswith(("/echo", "/api", "/web")) or path == "/":
            self._big = None
            self._echo(b"")
        elif path.startswith("/bytes/"):
            self._bytes(int(path.split("/")[2]))
        elif path.startswith("/chunked/"):
            self._chunked(int(path.split("/")[2]), 251 * 256, 0.0)
        elif path.startswith("/slow/"):
            self._chunked(int(path.split("/")[2]) * 10, 10, 0.05)
        elif path.startswith("/close"):
            self.close_connection = True
            self._send(200, b"bye", "text/plain", Connection="close")
        elif path.startswith("/redirect"):
            host = self.headers.get("Host", "")
            self._send(302, b"", "text/plain", Location=f"http://{host}/echo")
        elif path.startswith("/status/"):
            code = int(path.split("/")[2])
            self.send_response(code)
            if code not in (204, 304):
                self.send_header("Content-Length", "0")
            self.end_headers()
        else:
            self._send(404, b'{"error": "backend: not found"}')

    def _bytes(self, n: int) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(n))
        self.end_headers()
        if self.command == "HEAD":
            return
        block = pattern(PATTERN_BLOCK)
        while n:
            piece = block[: min(n, len(block))]
            self.wfile.write(piece)
            n -= len(piece)

    def _chunked(self, n: int, size: int, pause: float) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        if self.command == "HEAD":
            return
        block = pattern(size)
        while n:
            piece = block[: min(n, size)]
            self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.flush()
            n -= len(piece)
            if pause:
                time.sleep(pause)
        self.wfile.write(b"0\r\n\r\n")


PATTERN_BLOCK = 251 * 4096  # a whole number of pattern periods: blocks continue the pattern


def pattern(n: int) -> bytes:
    """`n` bytes of a fixed, non-trivial pattern (so truncation or reordering shows)."""
    unit = bytes(range(251))  # a prime length: pieces never line up with powers of two
    return (unit * (n // len(unit) + 1))[:n]


class Backend(ThreadingHTTPServer):
    """The plain HTTP/1.1 backend on 127.0.0.1, in a thread; counts its connections."""

    daemon_threads = True
    block_on_close = False

    def __init__(self) -> None:
        super().__init__((LOOP, 0), BackendHandler)
        self.port = self.server_address[1]
        self._ids = 0
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self.serve_forever, args=(0.05,), daemon=True)

    def next_conn_id(self) -> int:
        """A new connection was accepted: its number."""
        with self._lock:
            self._ids += 1
            return self._ids

    @property
    def connections(self) -> int:
        """How many connections it has accepted."""
        return self._ids

    def __enter__(self) -> Backend:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        self.server_close()
        self._thread.join(5)


# ---- scripted raw backends ----


class RawBackend:
    """A TCP server whose every connection runs `script(conn, index)` in a thread."""

    def __init__(self, script: Callable[[socket.socket, int], None]) -> None:
        self.sock = socket.create_server((LOOP, 0))
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.script = script
        self.accepted = 0
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._conns: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(10)
            self._conns.append(conn)
            index = self.accepted
            self.accepted += 1
            t = threading.Thread(target=self._run, args=(conn, index), daemon=True)
            self._threads.append(t)
            t.start()

    def _run(self, conn: socket.socket, index: int) -> None:
        with contextlib.suppress(OSError):
            self.script(conn, index)
        with contextlib.suppress(OSError):
            conn.shutdown(socket.SHUT_RDWR)  # the script is done with it: the peer sees EOF

    def __enter__(self) -> RawBackend:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()
        for conn in self._conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()
        for t in self._threads:
            t.join(5)


def read_head(conn: socket.socket) -> bytes:
    """Read up to the end of a request head (a test backend's helper)."""
    data = b""
    while b"\r\n\r\n" not in data:
        piece = conn.recv(65536)
        if not piece:
            return data
        data += piece
    return data


# ---- WebSocket (RFC 6455), just enough for an echo ----


def ws_accept(key: bytes) -> bytes:
    """The Sec-WebSocket-Accept value for a key."""
    return base64.b64encode(hashlib.sha1(key + WS_GUID).digest())


def ws_frame(payload: bytes, opcode: int = 1, mask: bool = True) -> bytes:
    """One final frame (clients mask, servers do not)."""
    head = bytes([0x80 | opcode])
    n = len(payload)
    bit = 0x80 if mask else 0
    if n < 126:
        head += bytes([bit | n])
    elif n < 1 << 16:
        head += bytes([bit | 126]) + struct.pack("!H", n)
    else:
        head += bytes([bit | 127]) + struct.pack("!Q", n)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + _mask(payload, key)


def _mask(payload: bytes, key: bytes) -> bytes:
    n = len(payload)
    if not n:
        return payload
    keys = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(keys, "big")).to_bytes(n, "big")


def _recv_exact(sock: socket.socket, n: int, buf: bytearray) -> bytes:
    while len(buf) < n:
        piece = sock.recv(65536)
        if not piece:
            raise ConnectionError("closed mid-frame")
        buf += piece
    out = bytes(buf[:n])
    del buf[:n]
    return out


def ws_read(sock: socket.socket, buf: bytearray) -> tuple[int, bytes]:
    """One frame: (opcode, unmasked payload). `buf` holds bytes read past the frame."""
    b0, b1 = _recv_exact(sock, 2, buf)
    n = b1 & 0x7F
    if n == 126:
        (n,) = struct.unpack("!H", _recv_exact(sock, 2, buf))
    elif n == 127:
        (n,) = struct.unpack("!Q", _recv_exact(sock, 8, buf))
    key = _recv_exact(sock, 4, buf) if b1 & 0x80 else b""
    payload = _recv_exact(sock, n, buf)
    if key:
        payload = _mask(payload, key)
    return b0 & 0x0F, payload


def ws_echo_script(conn: socket.socket, index: int) -> None:
    """A WebSocket echo server's connection: handshake, then echo until a close frame."""
    head = read_head(conn)
    key = b""
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"sec-websocket-key:"):
            key = line.split(b":", 1)[1].strip()
    conn.sendall(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + ws_accept(key) + b"\r\n\r\n"
    )
    buf = bytearray(head.split(b"\r\n\r\n", 1)[1])
    while True:
        opcode, payload = ws_read(conn, buf)
        if opcode == 8:
            conn.sendall(ws_frame(payload, 8, mask=False))
            return
        conn.sendall(ws_frame(payload, opcode, mask=False))


# ---- the proxy as a process ----


def service(name: str, port: int | None, **fields: Any) -> dict[str, Any]:
    """A service entry of the JSON route table."""
    entry: dict[str, Any] = {"name": name, "state": fields.pop("state", "running")}
    entry["upstream"] = {"host": LOOP, "port": port} if port is not None else None
    entry.update(fields)
    return entry


class ProxyProc:
    """`python -m devmesh.proxy` on a socket this object binds (as the parent would)."""

    def __init__(self, tmp: Path, services: list[dict[str, Any]], **settings: Any) -> None:
        self.sock = socket.create_server((LOOP, 0), backlog=512)
        self.port: int = self.sock.getsockname()[1]
        self.table_path = tmp / "routes.json"
        self.version = 1
        self.write_table(services)
        self.settings = {"proxy_port": self.port, **settings}
        env = dict(os.environ, PYTHONPATH=str(REPO))
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "devmesh.proxy",
                "--table",
                str(self.table_path),
                "--fd",
                str(self.sock.fileno()),
                "--settings",
                json.dumps(self.settings),
            ],
            pass_fds=[self.sock.fileno()],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd=REPO,
        )
        self.pid = self.proc.pid
        self.lines: queue.Queue[str] = queue.Queue()
        self.errors: list[str] = []
        self._readers = [
            threading.Thread(target=self._read, args=(self.proc.stdout, self.lines), daemon=True),
            threading.Thread(target=self._read_err, daemon=True),
        ]
        for t in self._readers:
            t.start()
        first = self.expect("port", 15)
        assert first["port"] == self.port

    def _read(self, stream: Any, into: queue.Queue[str]) -> None:
        for line in stream:
            into.put(line.decode(errors="replace"))

    def _read_err(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.errors.append(line.decode(errors="replace"))

    def expect(self, key: str, timeout: float) -> dict[str, Any]:
        """The next JSON line on stdout that has `key`."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"proxy did not print {key!r}; stderr: {''.join(self.errors)}")
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            data: dict[str, Any] = json.loads(line)
            if key in data:
                return data

    def write_table(
        self, services: list[dict[str, Any]], proxy_port: int | None = None, **extra: Any
    ) -> None:
        """Write the JSON route table (a new version each time); `extra`: peers, node."""
        table = {
            "version": self.version,
            "proxy_port": proxy_port or self.port,
            "services": services,
            **extra,
        }
        tmp = self.table_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(table))
        tmp.replace(self.table_path)

    def reload(self, services: list[dict[str, Any]], **extra: Any) -> None:
        """Swap the route table (SIGHUP) and wait until the proxy says it has."""
        self.version += 1
        self.write_table(services, **extra)
        self.proc.send_signal(signal.SIGHUP)
        assert self.expect("reloaded", 10)["reloaded"] == self.version

    def rss(self) -> int:
        """The proxy's resident memory in bytes."""
        import psutil

        return int(psutil.Process(self.pid).memory_info().rss)

    def stop(self, timeout: float = 10) -> int:
        """SIGTERM, wait (SIGKILL if it does not exit), close everything; the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait(5)
        for t in self._readers:
            t.join(5)
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self.proc.stdout.close()
        self.proc.stderr.close()
        self.sock.close()
        return code

    def __enter__(self) -> ProxyProc:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def conn(self, timeout: float = 10) -> http.client.HTTPConnection:
        """An http.client connection to the proxy (keep-alive)."""
        return http.client.HTTPConnection(LOOP, self.port, timeout=timeout)

    def raw(self, timeout: float = 10) -> socket.socket:
        """A plain socket connected to the proxy."""
        return socket.create_connection((LOOP, self.port), timeout=timeout)


# ---- requests and responses ----


class Response:
    """A response read by `read_response`."""

    def __init__(self) -> None:
        self.status = 0
        self.headers: list[tuple[str, str]] = []
        self.body = b""
        self.keep_alive = True

    def header(self, name: str) -> str | None:
        """The first value of a header (case-insensitive)."""
        name = name.lower()
        return next((v for k, v in self.headers if k.lower() == name), None)

    def all(self, name: str) -> list[str]:
        """Every value of a header."""
        name = name.lower()
        return [v for k, v in self.headers if k.lower() == name]

    def json(self) -> Any:
        """The body as JSON."""
        return json.loads(self.body)


class ResponseReader:
    """Reads responses from one connection in order (pipelined ones included).

    A response to HEAD has no body whatever its headers say, and the parser cannot be told:
    pass the methods of pipelined requests as `methods` (or `head_only` to `next`), and while a
    HEAD answer is still to come, bytes are fed one at a time so none past it is lost.
    """

    def __init__(self, sock: socket.socket, methods: list[str] | None = None) -> None:
        self.sock = sock
        self.parser = httptools.HttpResponseParser(self)
        self.methods = collections.deque(methods or [])
        self.ready: collections.deque[Response] = collections.deque()
        self.cur = Response()
        self.parts: list[bytes] = []
        self.interim: list[int] = []  # 1xx status codes seen
        self.head_only = False
        self.stale = False  # after a HEAD response the parser waits for a body that never comes

    def _is_head(self) -> bool:
        return self.head_only or bool(self.methods and self.methods[0] == "HEAD")

    def on_header(self, name: bytes, value: bytes) -> None:
        """Parser callback."""
        if not self.stale:
            self.cur.headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        """Parser callback."""
        if self.stale:
            return
        code = self.parser.get_status_code()
        if 100 <= code < 200 and code != 101:
            self.interim.append(code)
            self.cur.headers.clear()
            return
        self.cur.status = code
        self.cur.keep_alive = self.parser.should_keep_alive()
        if self._is_head() or code == 101:
            self.stale = True
            self._finish()

    def on_body(self, body: bytes) -> None:
        """Parser callback."""
        if not self.stale:
            self.parts.append(body)

    def on_message_complete(self) -> None:
        """Parser callback."""
        if not self.stale and self.cur.status:
            self._finish()

    def _finish(self) -> None:
        self.cur.body = b"".join(self.parts)
        self.parts = []
        self.ready.append(self.cur)
        self.cur = Response()
        if self.methods:
            self.methods.popleft()

    def _feed(self, data: bytes) -> None:
        with contextlib.suppress(httptools.HttpParserUpgrade):
            self.parser.feed_data(data)
        if self.stale:
            self.parser = httptools.HttpResponseParser(self)
            self.stale = False

    def next(self, head_only: bool = False) -> Response:
        """The next complete response (`head_only`: the answer to a HEAD request)."""
        self.head_only = head_only
        while not self.ready:
            data = self.sock.recv(1 << 20)
            if not data:
                if self.cur.status:
                    self._finish()  # a body delimited by the end of the connection
                    break
                raise ConnectionError("connection closed before a complete response")
            if "HEAD" in self.methods:
                for i in range(len(data)):
                    self._feed(data[i : i + 1])
            else:
                self._feed(data)
        return self.ready.popleft()


def read_response(sock: socket.socket, head_only: bool = False) -> Response:
    """Read one response from a connection that carries nothing after it."""
    return ResponseReader(sock).next(head_only)


def request(
    port: int,
    method: str = "GET",
    path: str = "/echo",
    host: str | None = "api",
    headers: list[tuple[str, str]] | None = None,
    body: bytes = b"",
    timeout: float = 10,
) -> Response:
    """One request on a fresh connection (closed after the answer)."""
    lines = [f"{method} {path} HTTP/1.1"]
    if host is not None:
        lines.append(f"Host: {host}")
    for name, value in headers or []:
        lines.append(f"{name}: {value}")
    if body:
        lines.append(f"Content-Length: {len(body)}")
    raw = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
    with socket.create_connection((LOOP, port), timeout=timeout) as sock:
        sock.sendall(raw)
        return read_response(sock, head_only=method == "HEAD")


def recv_all(sock: socket.socket) -> bytes:
    """Everything until the peer closes (bounded by the socket's timeout)."""
    parts = []
    while True:
        try:
            piece = sock.recv(65536)
        except ConnectionResetError:
            break
        if not piece:
            break
        parts.append(piece)
    return b"".join(parts)


@contextlib.contextmanager
def rss_sampler(pid: int, every: float = 0.02) -> Iterator[list[int]]:
    """Sample a process's RSS in a thread while the block runs; the samples (bytes)."""
    import psutil

    proc = psutil.Process(pid)
    samples: list[int] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            with contextlib.suppress(psutil.Error):
                samples.append(proc.memory_info().rss)
            stop.wait(every)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    try:
        yield samples
    finally:
        stop.set()
        t.join(5)

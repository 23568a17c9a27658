"""Health checks: what probe results mean (a fake clock), the probes against real servers and
commands, and a mesh whose routing and dependencies follow health."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from devmesh.health.policy import Health, HealthTracker
from devmesh.health.probes import expand, probe
from tests.apps import http_app
from tests.conftest import Project, free_port, wait_until
from tests.proxy_helpers import ProxyProc, service

# ---------------------------------------------------------------------- policy


def tracker(healthy: int = 1, unhealthy: int = 3, start_period: float = 0.0) -> HealthTracker:
    return HealthTracker(healthy, unhealthy, start_period, started_at=100.0)


def test_thresholds() -> None:
    t = tracker(healthy=2, unhealthy=3)
    assert not t.record(True, "HTTP 200", 0.01, 101.0)  # one success of two
    assert t.status is Health.UNKNOWN
    assert t.record(True, "HTTP 200", 0.01, 102.0) and t.status is Health.HEALTHY
    assert t.changed_at == 102.0
    assert not t.record(False, "HTTP 500", 0.01, 103.0)
    assert not t.record(False, "HTTP 500", 0.01, 104.0)
    assert not t.record(True, "HTTP 200", 0.01, 105.0)  # a success resets the failures
    for now in (106.0, 107.0):
        assert not t.record(False, "refused", None, now)
    assert t.record(False, "refused", None, 108.0) and t.status is Health.UNHEALTHY
    assert t.last_detail == "refused" and t.last_ok is False
    assert not t.record(True, "HTTP 200", 0.01, 109.0)  # healthy again after 2 successes
    assert t.record(True, "HTTP 200", 0.01, 110.0) and t.status is Health.HEALTHY


def test_start_period_forgives_failures_but_not_after() -> None:
    t = tracker(unhealthy=1, start_period=5.0)
    for now in (100.5, 102.0, 104.9):
        assert not t.record(False, "refused", None, now)
    assert t.status is Health.UNKNOWN and t.fail_streak == 0
    assert t.record(False, "refused", None, 105.1) and t.status is Health.UNHEALTHY
    # A success within the start period counts at once.
    t = tracker(start_period=5.0)
    assert t.record(True, "connected", 0.001, 100.2) and t.status is Health.HEALTHY


# ---------------------------------------------------------------------- probes


class Backend:
    """An HTTP server on loopback whose /health answers `status` (or hangs)."""

    def __init__(self, body: bytes = b"") -> None:
        self.status = 200
        self.body = body
        self.hits = 0
        self.hanging = False
        self.release = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.hits += 1
                if outer.hanging:
                    outer.release.wait(30)  # bounded; released when the backend stops
                self.send_response(outer.status)
                self.send_header("Content-Length", str(len(outer.body)))
                self.end_headers()
                self.wfile.write(outer.body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Backend:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def backend() -> Iterator[Backend]:
    with Backend() as b:
        yield b


def run(kind: str, target: str, timeout: float = 2.0) -> tuple[bool, str, float]:
    started = time.monotonic()
    result = asyncio.run(probe(kind, target, timeout))
    return result.ok, result.detail, time.monotonic() - started


def test_http_probe(backend: Backend) -> None:
    url = f"http://127.0.0.1:{backend.port}/health"
    assert run("http", url)[:2] == (True, "HTTP 200")
    backend.status = 302
    assert run("http", url)[:2] == (True, "HTTP 302")
    backend.status = 503
    assert run("http", url)[:2] == (False, "HTTP 503")
    backend.hanging = True
    ok, detail, took = run("http", url, timeout=0.3)
    assert not ok and detail == "timed out after 0.3s" and took < 2


def test_tcp_and_command_probes(tmp_path: object) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert run("tcp", f"127.0.0.1:{port}")[:2] == (True, "connected")
    ok, detail, _ = run("tcp", f"127.0.0.1:{free_port()}")
    assert not ok and "refused" in detail.lower()
    assert run("cmd", "true")[:2] == (True, "exit 0")
    assert run("cmd", "echo not ready >&2; exit 3")[:2] == (False, "exit 3: not ready")
    # A command that hangs is cut at the timeout, with its children.
    ok, detail, took = run("cmd", "sleep 30 & sleep 30", timeout=0.3)
    assert not ok and detail == "timed out after 0.3s" and took < 2
    assert expand("http://localhost:$PORT/h?p=${PORT}", 5001) == "http://localhost:5001/h?p=5001"


# ---------------------------------------------------------------------- a mesh

FLIP = http_app(
    """
    if self.path == "/health":
        status = 200 if os.path.exists("healthy") else 503
    body = f"{os.environ['DEVMESH_SERVICE']} {self.path}".encode()
    """
)


def test_routing_and_dependencies_follow_health(project: Project) -> None:
    import http.client

    def get(host: str) -> tuple[int, str]:
        conn = http.client.HTTPConnection("127.0.0.1", project.proxy_port, timeout=5)
        try:
            conn.request("GET", "/x", headers={"Host": host, "Accept": "application/json"})
            resp = conn.getresponse()
            return resp.status, resp.read().decode()
        finally:
            conn.close()

    project.write("flip.py", FLIP)
    project.toml(
        """
        [services.api]
        command = "python3 flip.py"
        health = "http://127.0.0.1:$PORT/health"
        health_interval = "200ms"
        unhealthy_threshold = 2

        [services.web]
        command = "python3 flip.py"
        depends_on = { api = "healthy" }
        """
    )
    project.up()
    # api answers but its health says 503: no traffic, and web waits for it.
    wait_until(
        lambda: (project.service("api")["health"] or {}).get("status") == "unhealthy",
        10,
        "api unhealthy",
    )
    api = project.service("api")
    assert api["health"]["detail"] == "HTTP 503" and api["health"]["latency_ms"] is not None
    web = project.service("web")
    assert web["state"] == "stopped" and "api (healthy)" in (web["reason"] or "")
    status, body = get("api")
    assert status == 503 and "unhealthy" in body
    assert "unhealthy (HTTP 503)" in project.cli("status").stdout
    # Healthy: routed, and web starts.
    (project.root / "healthy").write_text("")
    wait_until(lambda: get("api") == (200, "api /x"), 10, "api routed once healthy")
    project.wait_state("web", "running")
    wait_until(lambda: get("web")[0] == 200, 10, "web routed")
    # Unhealthy again: out of the routes within interval x threshold (+ slack).
    (project.root / "healthy").unlink()
    started = time.monotonic()
    wait_until(lambda: get("api")[0] == 503, 5, "api out of the routes")
    assert time.monotonic() - started < 2.0
    assert "api is unhealthy: HTTP 503" in project.running[0].text()


def test_restart_on_unhealthy_uses_the_crash_backoff(project: Project) -> None:
    """A run that stays unhealthy is ended like a crash: restarted with backoff, and a loop of
    it ends in `failed` like a crash loop does."""
    project.toml(
        """
        [services.api]
        command = "exec sleep 600"
        health = "cmd:exit 1"
        health_interval = "100ms"
        unhealthy_threshold = 2
        restart_on_unhealthy = true
        max_restarts = 2
        # Every run ends while still starting, however slow the probes are on a loaded
        # machine: each is a quick crash, so the crash-loop limit is met at the third.
        start_secs = "60s"
        """
    )
    run = project.up()
    wait_until(lambda: project.service("api")["restarts"] >= 1, 15, "a restart for ill health")
    assert "stays unhealthy: ending it to restart it" in run.text()
    failed = project.wait_state("api", "failed", timeout=30)
    assert failed["restarts"] == 2
    assert "restarting in" in run.text()  # the same backoff as a crash


def test_passive_ejection(tmp_path: Path) -> None:
    """A copy that answers 5xx is skipped at once for `eject_for` (the request that met it goes
    to the other copy), then tried again."""
    with Backend(b"local") as local, Backend(b"peer") as peer:
        table = [service("api", local.port)]
        with ProxyProc(tmp_path, table, eject_for=0.5) as proxy:
            proxy.reload(
                table,
                peers=[
                    {
                        "node": "p1",
                        "address": "127.0.0.1",
                        "proxy_port": peer.port,
                        "services": [{"name": "api", "state": "running"}],
                    }
                ],
                node="me",
            )

            def body() -> str:
                status, data = fetch(proxy.port)
                assert status == 200, (status, data)
                return data

            wait_until(lambda: body() == "local" and peer.hits == 0, 10, "the local copy first")
            local.status = 500
            hits = local.hits
            assert body() == "peer"  # the 500 was not shown: the other copy answered
            assert local.hits == hits + 1
            for _ in range(5):
                assert body() == "peer"
            assert local.hits == hits + 1  # ejected: not asked again meanwhile
            local.status = 200
            wait_until(lambda: body() == "local", 10, "the local copy back after eject_for")


def fetch(port: int) -> tuple[int, str]:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/", headers={"Host": "api"})
        resp = conn.getresponse()
        return resp.status, resp.read().decode()
    finally:
        conn.close()


def test_a_port_check_says_ready_or_not_never_unhealthy() -> None:
    t = HealthTracker(1, 2, 0.0, started_at=0.0, readiness=True)
    for now in (0.1, 0.2, 0.3):
        assert not t.record(False, "connection refused", None, now)
    assert t.status is Health.UNKNOWN  # a worker without a port: not routed, not "unhealthy"
    assert t.record(True, "connected", 0.001, 0.4) and t.status is Health.HEALTHY
    assert not t.record(False, "connection refused", None, 0.5)
    assert t.record(False, "connection refused", None, 0.6) and t.status is Health.UNKNOWN

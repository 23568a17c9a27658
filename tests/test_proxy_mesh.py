"""The proxy inside a running mesh: routes follow the services, survive a killed worker, and
follow a saved devmesh.toml (hot reload)."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import time

from tests.apps import http_app
from tests.conftest import Project, free_port, pid_alive, wait_until

HELLO = http_app(
    """body = f"{NAME} {self.headers['Host']} {self.path}".encode()""",
    setup='NAME = os.environ["DEVMESH_SERVICE"] + os.environ.get("SUFFIX", "")',
)


def get(port: int, host: str, path: str = "/", accept: str = "") -> tuple[int, str, dict[str, str]]:
    """One GET through the proxy on loopback with the given Host header."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        headers = {"Host": host}
        if accept:
            headers["Accept"] = accept
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read().decode(errors="replace"), dict(resp.getheaders())
    finally:
        conn.close()


def answer(port: int, host: str, path: str = "/") -> str | None:
    """The body of a 200 answer, or None (refused, or not 200 yet)."""
    try:
        status, body, _ = get(port, host, path)
    except OSError:
        return None
    return body if status == 200 else None


def test_routes_follow_services_and_pages_explain(project: Project) -> None:
    project.write("hello.py", HELLO)
    project.toml(
        """
        [services.api]
        command = "python3 hello.py"
        routes = ["/api/*"]

        [services.web]
        command = "python3 hello.py"
        aliases = ["www"]
        """
    )
    project.up()
    port = project.proxy_port
    body = wait_until(lambda: answer(port, f"api.localhost:{port}"), 15, "api through the proxy")
    assert body == f"api api.localhost:{port} /"
    assert wait_until(lambda: answer(port, "WWW."), 15, "the alias").startswith("web ")
    # A path route wins over the Host: the same-origin SPA setup.
    assert wait_until(lambda: answer(port, f"web.localhost:{port}", "/api/x"), 5, "path route") == (
        f"api api.localhost:{port} /api/x"
    )
    status, page, _ = get(port, "nope.localhost")
    assert status == 404 and f"http://api.localhost:{port}/" in page
    assert project.cli("stop", "api").returncode == 0

    def unavailable() -> dict[str, object] | None:
        status, text, _ = get(port, "api", accept="application/json")
        return json.loads(text) if status == 503 else None

    info = wait_until(unavailable, 10, "a 503 for the stopped api")
    assert info["state"] == "stopped"


def test_killed_proxy_worker_serves_again_quickly(project: Project) -> None:
    project.write("hello.py", HELLO)
    project.toml(
        """
        [services.api]
        command = "python3 hello.py"
        """
    )
    project.up()
    port = project.proxy_port
    wait_until(lambda: answer(port, "api"), 15, "api through the proxy")
    svc_pid = project.service("api")["pid"]
    worker = next(w for w in project.status()["workers"] if w["name"] == "proxy-1")
    os.kill(worker["pid"], signal.SIGKILL)
    killed = time.monotonic()
    # The listening socket belongs to the parent: this request waits in its backlog until the
    # new worker accepts it.
    body = wait_until(lambda: answer(port, "api"), 5, "api after the kill", step=0.005)
    elapsed = time.monotonic() - killed
    assert body.startswith("api ")
    assert elapsed < 0.5, f"served again after {elapsed:.3f}s"
    assert project.service("api")["pid"] == svc_pid


def test_hot_reload_applies_only_the_differences(project: Project) -> None:
    project.write("hello.py", HELLO)
    base = """
        [services.api]
        command = "python3 hello.py"

        [services.web]
        command = "python3 hello.py"
        """
    project.toml(base)
    run = project.up()
    port = project.proxy_port
    api_pid = project.wait_state("api", "running")["pid"]
    web_pid = project.wait_state("web", "running")["pid"]
    # Change web, add admin.
    project.toml(
        base.replace("[services.web]", '[services.web]\n        env = { SUFFIX = "-v2" }')
        + """
        [services.admin]
        command = "python3 hello.py"
        """
    )
    v2 = f"web-v2 web.localhost:{port} /"
    wait_until(lambda: answer(port, "web") == v2, 15, "web v2")
    wait_until(lambda: answer(port, "admin"), 15, "the new admin service")
    assert project.service("api")["pid"] == api_pid  # untouched
    assert project.service("web")["pid"] != web_pid
    # An invalid file changes nothing and says why.
    project.write("devmesh.toml", (project.root / "devmesh.toml").read_text() + "\n[services.x\n")
    wait_until(lambda: project.status()["node"]["config_error"], 10, "the config error")
    assert "config not applied" in run.text()
    assert project.service("api")["pid"] == api_pid and pid_alive(api_pid)
    # Removing a service stops it.
    project.toml(base)
    wait_until(
        lambda: "admin" not in {s["name"] for s in project.status()["services"]}, 15, "admin gone"
    )
    assert project.service("api")["pid"] == api_pid


def test_several_proxy_workers_share_the_port(project: Project) -> None:
    project.write("hello.py", HELLO)
    project.toml(
        f"""
        [proxy]
        port = {project.proxy_port}
        workers = 2

        [services.api]
        command = "python3 hello.py"
        """
    )
    project.up()
    port = project.proxy_port
    names = {w["name"] for w in project.status()["workers"]}
    assert {"proxy-1", "proxy-2"} <= names
    for _ in range(20):
        assert wait_until(lambda: answer(port, "api"), 15, "api").startswith("api ")


def test_devmesh_run_announces_a_service_run_by_hand(project: Project) -> None:
    """`devmesh run api`: devmesh routes to the process the user started on api's port until
    the command ends (devmesh stop, Ctrl+C, or the command dying)."""
    project.write("hello.py", HELLO)
    api_port = free_port()
    project.toml(
        f"""
        [services.api]
        command = "python3 hello.py"
        port = {api_port}

        [services.web]
        command = "python3 hello.py"
        """
    )
    project.up("web")
    project.wait_state("web", "running")
    port = project.proxy_port
    env = {**project.env, "PORT": str(api_port), "DEVMESH_SERVICE": "by-hand"}
    by_hand = subprocess.Popen([sys.executable, "hello.py"], cwd=project.root, env=env)
    runs: list[subprocess.Popen[str]] = []

    def run() -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "devmesh", "run", "api"],
            cwd=project.root,
            env=project.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            # As a background job of a shell starts it: SIGINT ignored. Ctrl+C must still work.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
        )
        runs.append(proc)
        assert proc.stdout is not None
        assert f"port {api_port}" in proc.stdout.readline()
        return proc

    try:
        for ending in ("devmesh stop", "Ctrl+C", "SIGTERM", "kill -9"):
            proc = run()
            assert project.service("api")["by_hand"] == proc.pid
            wait_until(lambda: answer(port, "api") or "", 10, "the hand-run api via the proxy")
            assert answer(port, "api", "/x") == f"by-hand api.localhost:{port} /x"
            if ending == "devmesh stop":
                assert project.cli("stop", "api").returncode == 0
                assert proc.wait(10) == 0
            elif ending in ("Ctrl+C", "SIGTERM"):
                proc.send_signal(signal.SIGINT if ending == "Ctrl+C" else signal.SIGTERM)
                assert proc.wait(10) == 0
            else:
                proc.kill()
                proc.wait(10)
            wait_until(lambda: project.service("api")["state"] == "stopped", 5, "api let go")
            assert get(port, "api")[0] == 503
            assert by_hand.poll() is None  # devmesh never signals what it did not start
        # What runs under devmesh cannot be taken over; nor can a name it does not know.
        taken = project.cli("run", "web")
        assert taken.returncode == 1 and "runs under devmesh" in taken.stderr
        unknown = project.cli("run", "nope")
        assert unknown.returncode == 1 and "Traceback" not in unknown.stderr
    finally:
        for proc in runs:
            if proc.poll() is None:
                proc.kill()
            proc.communicate(timeout=10)  # and its pipes are closed
        by_hand.kill()
        by_hand.wait(10)

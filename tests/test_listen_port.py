"""A service whose command ignores $PORT (a dev server with its own default port): devmesh finds
the port its processes really listen on among their sockets, says so at `up` and in `status`,
and routes there. Real processes on real ports, through the real proxy."""

from __future__ import annotations

import socket

import pytest

from tests.apps import http_app
from tests.conftest import Project, free_port, wait_until
from tests.test_proxy_mesh import answer

# Listens on the port (and address) given on its command line, whatever $PORT says.
OWN_PORT = http_app(
    'body = f"own port {PORT} on {HOST}".encode()',
    setup="HOST, PORT = sys.argv[1], int(sys.argv[2])",
)


def ipv6_loopback() -> bool:
    """Whether ::1 can be bound here."""
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_a_command_that_ignores_port_is_routed_where_it_listens(
    project: Project, host: str
) -> None:
    if host == "::1" and not ipv6_loopback():
        pytest.skip("no IPv6 loopback on this machine")
    project.write("own.py", OWN_PORT)
    own = free_port()
    project.toml(f'[services.web]\ncommand = "python3 own.py {host} {own}"\n')
    run = project.up()
    port = project.proxy_port
    svc = project.wait_state("web", "running")
    wait_until(lambda: answer(port, "web") == f"own port {own} on {host}", 10, "web routed")
    svc = project.service("web")
    assert svc["listen_port"] == own and svc["port"] != own and svc["routable"]
    assert f"web listens on port {own}, not on its $PORT {svc['port']}" in run.text()
    status = project.cli("status").stdout
    row = next(line for line in status.splitlines() if line.startswith("web"))
    assert f"listens on port {own}, not on its $PORT" in row
    # A restart is a new run: found again.
    assert project.cli("restart", "web").returncode == 0
    wait_until(lambda: answer(port, "web") is not None, 10, "web routed after a restart")
    assert project.service("web")["listen_port"] == own

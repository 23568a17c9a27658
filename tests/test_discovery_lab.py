"""Discovery between real devmesh nodes, each in its own network namespace of a lab LAN.

Every node is a whole `devmesh up` run inside a lab host (`ip netns exec`); the tests read what
each node knows through `devmesh peers --json` on its unix socket. Nothing is sent from the root
namespace. Skipped, with the reason, where namespaces cannot be made (not root, no iproute2).
"""

from __future__ import annotations

import json
import signal
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from conftest import Project, wait_until
from lab import Lab, lab_unavailable

pytestmark = pytest.mark.skipif(lab_unavailable() is not None, reason=str(lab_unavailable()))

INTERVAL = 0.3
SERVICE = """
[services.{name}]
command = "python3 -m http.server $PORT --bind 127.0.0.1"
version = "{version}"
"""


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    built = Lab(n=3).up()
    try:
        yield built
    finally:
        built.down()


def node(
    new_project: Callable[[], Project],
    lab: Lab,
    host: int,
    service: str,
    *,
    namespace: str = "team",
    discovery: str = "",
    version: str = "1.0",
) -> Project:
    """A devmesh node on lab host `host` running one service, up and answering."""
    proj = new_project()
    proj.env.pop("DEVMESH_DISCOVERY")  # inside the lab, discovery is on
    proj.prefix = lab.exec(host, [])
    proj.toml(
        f'[mesh]\nnamespace = "{namespace}"\n\n'
        f'[discovery]\ninterval = "{int(INTERVAL * 1000)}ms"\n{discovery}\n'
        + SERVICE.format(name=service, version=version)
    )
    proj.up()
    proj.wait_state(service, "running")
    return proj


def peers_json(proj: Project) -> dict[str, Any]:
    """`devmesh peers --json` of a node."""
    result = proj.cli("peers", "--json")
    assert result.returncode == 0, result.stderr
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def services_seen(proj: Project) -> set[str]:
    """The services of every peer a node knows."""
    result = proj.cli("peers", "--json")
    if result.returncode != 0:
        return set()
    data = json.loads(result.stdout)
    return {s["name"] for p in data["peers"] for s in p["services"]}


def test_join_leave_and_crash(new_project: Callable[[], Project], lab: Lab) -> None:
    a = node(new_project, lab, 1, "api")
    b = node(new_project, lab, 2, "web")
    c = node(new_project, lab, 3, "jobs", version="2.0")
    # Join: every node sees the other two, with their services, states and versions.
    for proj, others in ((a, {"web", "jobs"}), (b, {"api", "jobs"}), (c, {"api", "web"})):
        wait_until(lambda p=proj, o=others: services_seen(p) == o, 10, f"peers of {proj.root}")
    data = peers_json(a)
    by_service = {p["services"][0]["name"]: p for p in data["peers"]}
    assert by_service["jobs"]["services"][0] == {
        "name": "jobs",
        "state": "running",
        "version": "2.0",
        "routes": [],
    }
    assert by_service["web"]["address"] == lab.ip(2)
    assert by_service["web"]["proxy_port"] == b.proxy_port
    assert data["namespace"] == "team" and data["stats"]["received"] > 0
    table = a.cli("peers").stdout
    assert "web@1.0 (running)" in table and lab.ip(3) in table
    # A service change is announced at once.
    assert b.cli("stop", "web").returncode == 0
    wait_until(
        lambda: any(s["state"] == "stopped" for p in peers_json(a)["peers"] for s in p["services"]),
        5,
        "web stopped, as node 1 sees it",
    )
    # A clean stop says goodbye: gone from the others well before 3 intervals.
    c.running[0].stop()
    wait_until(lambda: "jobs" not in services_seen(a), 3 * INTERVAL, "the goodbye of node 3")
    assert "jobs" not in services_seen(b)
    assert "peer left" in a.running[0].text()
    # kill -9: no goodbye; dropped after 3 silent intervals.
    b.running[0].proc.send_signal(signal.SIGKILL)
    b.running[0].proc.wait(10)
    wait_until(lambda: services_seen(a) == set(), 3 * INTERVAL + 3, "node 2 expired")


def test_namespaces_are_isolated(new_project: Callable[[], Project], lab: Lab) -> None:
    a = node(new_project, lab, 1, "api", namespace="main")
    b = node(new_project, lab, 2, "web", namespace="main")
    other = node(new_project, lab, 3, "admin", namespace="feature-x")
    wait_until(lambda: services_seen(a) == {"web"}, 10, "node 1 sees node 2")
    wait_until(
        lambda: peers_json(other)["stats"]["dropped"].get("other_namespace", 0) >= 2,
        10,
        "the other namespace's packets arrive and are dropped",
    )
    assert services_seen(other) == set()
    assert services_seen(b) == {"api"}

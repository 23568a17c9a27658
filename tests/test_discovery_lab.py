"""Discovery between real devmesh nodes, each in its own network namespace of a lab LAN.

Every node is a whole `devmesh up` run inside a lab host (`ip netns exec`); the tests read what
each node knows through `devmesh peers --json` on its unix socket. Nothing is sent from the root
namespace. Skipped, with the reason, where namespaces cannot be made (not root, no iproute2).
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.apps import http_app
from tests.conftest import Project, wait_until
from tests.lab import Lab, lab_unavailable

pytestmark = pytest.mark.skipif(lab_unavailable() is not None, reason=str(lab_unavailable()))

INTERVAL = 0.3
SERVICE = """
[services.{name}]
command = "python3 -m http.server $PORT --bind 127.0.0.1 --directory site"
version = "{version}"
"""
CLIENT = Path(__file__).parent / "fixtures" / "lab_client.py"


def node(
    new_project: Callable[[], Project],
    lab: Lab,
    host: int,
    service: str,
    *,
    namespace: str = "team",
    discovery: str = "",
    version: str = "1.0",
    body: str = "",
    extra: str = "",
    only: tuple[str, ...] = (),
) -> Project:
    """A devmesh node on lab host `host` running one service (whose page says `body`), up
    and answering."""
    proj = new_project()
    proj.write("site/index.html", (body or f"{service} on host {host}") + "\n")
    proj.env.pop("DEVMESH_DISCOVERY")  # inside the lab, discovery is on
    proj.prefix = lab.exec(host, [])
    proj.toml(
        f'[mesh]\nnamespace = "{namespace}"\n\n'
        f'[discovery]\ninterval = "{int(INTERVAL * 1000)}ms"\n{discovery}\n'
        + SERVICE.format(name=service, version=version)
        + extra.replace("[proxy]\n", f"[proxy]\nport = {proj.proxy_port}\n")
    )
    proj.up(*only)
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


def get(lab: Lab, host: int, address: str, port: int, name: str, count: int, *headers: str) -> Any:
    """`count` GETs for service `name` from inside lab host `host`; the client's report."""
    argv = lab.exec(host, [sys.executable, str(CLIENT), address, str(port), name, str(count), "20"])
    out = subprocess.run([*argv, *headers], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.splitlines()[-1])


@contextlib.contextmanager
def load(
    lab: Lab, host: int, port: int, name: str, count: int
) -> Iterator[Callable[[], dict[str, Any]]]:
    """GETs for `name` through the proxy on `port`, from inside lab host `host`, flowing (50
    done) when the block starts; the block calls `finish()` for the client's report."""
    argv = [sys.executable, str(CLIENT), "127.0.0.1", str(port), name, str(count), "20"]
    client = subprocess.Popen(lab.exec(host, argv), stdout=subprocess.PIPE, text=True)

    def finish() -> dict[str, Any]:
        out, _ = client.communicate(timeout=60)
        report: dict[str, Any] = json.loads(out.splitlines()[-1])
        return report

    try:
        assert client.stdout is not None
        assert client.stdout.readline().strip() == "going"
        yield finish
    finally:
        if client.poll() is None:
            client.kill()
        client.communicate(timeout=10)


def sees(proj: Project, service: str, nodes: int) -> bool:
    """Whether `proj` knows `nodes` peers that run `service`."""
    return (
        sum(
            1
            for p in peers_json(proj)["peers"]
            for s in p["services"]
            if s["name"] == service and s["state"] == "running"
        )
        == nodes
    )


def test_peer_routing_ingress_and_loops(new_project: Callable[[], Project], lab: Lab) -> None:
    a = node(new_project, lab, 1, "api", body="api of A")
    b = node(new_project, lab, 2, "web")
    wait_until(lambda: sees(b, "api", 1) and sees(a, "web", 1), 10, "the nodes see each other")
    # B runs no api: its proxy forwards to A's, which serves its own.
    report = get(lab, 2, "127.0.0.1", b.proxy_port, "api", 5)
    assert report["ok"] == 5 and report["bodies"] == {"api of A": 5}
    # Host 3 runs no devmesh: not a peer, so A's proxy refuses it (lan_access = "peers").
    report = get(lab, 3, lab.ip(1), a.proxy_port, "api", 1)
    assert report["ok"] == 0 and next(iter(report["other"])).startswith("403")
    wait_until(lambda: a.status()["node"]["proxy"]["refused"] == 1, 5, "the refusal counted")
    # A forwarded request is served from the node's own process or not at all.
    report = get(lab, 2, lab.ip(1), a.proxy_port, "web", 1, "X-DevMesh-Hop:some-node")
    assert next(iter(report["other"])).startswith("508")
    # B's own api, once running, is preferred over A's.
    b.toml(
        (b.root / "devmesh.toml").read_text().replace(f"[proxy]\nport = {b.proxy_port}\n", "")
        + SERVICE.format(name="api", version="1.0")
    )
    wait_until(
        lambda: any(s["name"] == "api" and s["state"] == "running" for s in b.status()["services"]),
        15,
        "B's own api running",
    )
    report = get(lab, 2, "127.0.0.1", b.proxy_port, "api", 3)
    assert report["bodies"] == {"web on host 2": 3}  # B's site directory serves both


def test_failover_while_requests_flow(new_project: Callable[[], Project], lab: Lab) -> None:
    a = node(new_project, lab, 1, "api", body="api of A")
    b = node(new_project, lab, 2, "web")
    c = node(new_project, lab, 3, "api", body="api of C")
    wait_until(lambda: sees(b, "api", 2), 10, "node 2 sees both copies of api")
    wait_until(lambda: sees(a, "web", 1) and sees(c, "web", 1), 10, "both see node 2")
    with load(lab, 2, b.proxy_port, "api", 3000) as finish:
        # kill -9 of whichever node serves first: no goodbye, its proxy is gone at once.
        first = a if "api of A" in get(lab, 2, "127.0.0.1", b.proxy_port, "api", 1)["bodies"] else c
        first.running[0].proc.send_signal(signal.SIGKILL)
        report = finish()
    assert report["other"] == {}, report
    assert report["ok"] >= 500
    survivor = "api of C" if first is a else "api of A"
    assert report["bodies"][survivor] > 0


def test_ipv6_only_discovery_and_routing(new_project: Callable[[], Project], lab: Lab) -> None:
    """No IPv4 broadcast: the nodes find each other over IPv6 link-local multicast and route
    over their link-local addresses."""
    only6 = 'broadcast_addr = ""\nipv6 = true'
    a = node(new_project, lab, 1, "api", discovery=only6, body="api of A")
    b = node(new_project, lab, 2, "web", discovery=only6)
    wait_until(lambda: sees(b, "api", 1) and sees(a, "web", 1), 10, "discovery over IPv6")
    [peer] = peers_json(b)["peers"]
    assert peer["address"].startswith("fe80::") and "%" in peer["address"]
    report = get(lab, 2, "127.0.0.1", b.proxy_port, "api", 3)
    assert report["ok"] == 3 and report["bodies"] == {"api of A": 3}


def test_static_peers_without_broadcast(new_project: Callable[[], Project], lab: Lab) -> None:
    """Broadcast and multicast off: only the configured peers are announced to."""

    def static(*hosts: int) -> str:
        peers = ", ".join(f'"{lab.ip(h)}:35555"' for h in hosts)
        return f'broadcast_addr = ""\nipv6 = false\npeers = [{peers}]'

    a = node(new_project, lab, 1, "api", discovery=static(2))
    b = node(new_project, lab, 2, "web", discovery=static(1))
    c = node(new_project, lab, 3, "jobs", discovery='broadcast_addr = ""\nipv6 = false')
    wait_until(lambda: services_seen(a) == {"web"}, 10, "A and B through static peers")
    wait_until(lambda: services_seen(b) == {"api"}, 10, "B sees A")
    # C announces to no one and nobody names it: it stays alone, and alone it is.
    assert services_seen(c) == set()
    assert services_seen(a) == {"web"} and peers_json(c)["stats"]["received"] == 0


def test_partition_and_heal(new_project: Callable[[], Project], lab: Lab) -> None:
    a = node(new_project, lab, 1, "api")
    b = node(new_project, lab, 2, "web")
    c = node(new_project, lab, 3, "jobs")
    wait_until(lambda: services_seen(a) == {"web", "jobs"}, 10, "all joined")
    lab.cut(3)
    try:
        wait_until(lambda: services_seen(a) == {"web"}, 3 * INTERVAL + 3, "node 3 cut off")
        wait_until(lambda: services_seen(c) == set(), 3 * INTERVAL + 3, "node 3 alone")
        assert services_seen(b) == {"api"}
    finally:
        lab.heal(3)
    wait_until(lambda: services_seen(a) == {"web", "jobs"}, 5, "node 3 back")
    wait_until(lambda: services_seen(c) == {"api", "web"}, 5, "node 3 sees the others again")


def test_versions_warn_or_refuse(new_project: Callable[[], Project], lab: Lab) -> None:
    """A peer running another version than this node declares: used with a warning header
    and a log line, or with `version_strict` refused with a page naming both versions."""
    a = node(new_project, lab, 1, "api", version="2.0", body="api of A")
    declared = SERVICE.format(name="api", version="1.0")
    b = node(new_project, lab, 2, "web", extra=declared, only=("web",))
    strict = "\n[proxy]\nversion_strict = true\n"
    c = node(new_project, lab, 3, "jobs", extra=declared + strict, only=("jobs",))
    wait_until(lambda: sees(b, "api", 1) and sees(c, "api", 1), 10, "B and C see A's api")
    wait_until(lambda: sees(a, "web", 1) and sees(a, "jobs", 1), 10, "A sees B and C")
    report = get(lab, 2, "127.0.0.1", b.proxy_port, "api", 2)
    assert report["bodies"] == {"api of A": 2}
    warning = report["headers"]["x-devmesh-version-warning"]
    assert "2.0" in warning and "1.0" in warning
    wait_until(lambda: "version mismatch: api is 2.0" in b.running[0].text(), 5, "the log line")
    report = get(lab, 3, "127.0.0.1", c.proxy_port, "api", 1, "Accept:application/json")
    [(answer, count)] = report["other"].items()
    assert answer.startswith("503") and count == 1
    # Every peer that has api, and why it is not used: A's version, B's stopped copy.
    considered = sorted(json.loads(answer[4:])["peers_considered"])
    assert len(considered) == 2 and considered[1].endswith(": stopped"), considered
    assert "runs api 2.0" in considered[0] and "declares 1.0 (version_strict)" in considered[0]


def test_choice_pin_stickiness_and_views(new_project: Callable[[], Project], lab: Lab) -> None:
    """Two peers run api: a client sticks to the one it got; a pin overrides; `status
    --routes` says who serves each name and why; `graph` draws the mesh."""
    a = node(new_project, lab, 1, "api", body="api of A")
    b = node(new_project, lab, 2, "web")
    c = node(new_project, lab, 3, "api", body="api of C")
    wait_until(lambda: sees(b, "api", 2), 10, "B sees both copies")
    wait_until(lambda: sees(a, "web", 1) and sees(c, "web", 1), 10, "A and C see B")
    wait_until(
        lambda: all(p["rtt_ms"] is not None for p in peers_json(b)["peers"]), 10, "round trips"
    )
    routes = {
        r["service"]: r for r in json.loads(b.cli("status", "--routes", "--json").stdout)["routes"]
    }
    first = routes["api"]["served_by"]
    assert "nearest of 2 peer(s)" in routes["api"]["why"]
    assert [f["node"] for f in routes["api"]["fallbacks"]] != [first["node"]]
    assert routes["web"]["served_by"]["node"] == "local"
    # One client keeps getting the same copy.
    report = get(lab, 2, "127.0.0.1", b.proxy_port, "api", 20)
    assert report["ok"] == 20 and len(report["bodies"]) == 1
    # Pin api to the copy that was not first; then clear the pin.
    other = next(p for p in peers_json(b)["peers"] if p["node"] != first["node"])
    pinned = b.cli("route", "api", "--peer", other["node"][:6])
    assert pinned.returncode == 0, pinned.stderr
    assert "pinned" in pinned.stdout
    expected = "api of A" if other["address"] == lab.ip(1) else "api of C"
    report = get(lab, 2, "127.0.0.1", b.proxy_port, "api", 5)
    assert report["bodies"] == {expected: 5}
    assert b.cli("route", "api", "--clear").returncode == 0
    after = json.loads(b.cli("status", "--routes", "--json").stdout)["routes"]
    assert next(r for r in after if r["service"] == "api")["pinned"] is None
    bad = b.cli("route", "api", "--peer", "nobody")
    assert bad.returncode == 1 and "no peer matches 'nobody'" in bad.stderr
    assert "Traceback" not in bad.stderr
    # The graph, three ways.
    text = b.cli("graph").stdout
    assert "this node" in text and "api --> " in text and text.count("[") == 3
    dot = b.cli("graph", "--format", "dot").stdout
    assert dot.startswith("digraph devmesh {") and dot.count("subgraph") == 3
    doc = json.loads(b.cli("graph", "--format", "json").stdout)
    assert len(doc["nodes"]) == 3 and {r["service"] for r in doc["routes"]} == {"web", "api"}


def test_proxy_only_node_and_two_namespaces_on_one_host(
    new_project: Callable[[], Project], lab: Lab
) -> None:
    """`devmesh proxy` runs none of the project's services and serves them from peers; a
    second project on the same host, in another namespace, shares the UDP port unseen."""
    a = node(new_project, lab, 1, "api", namespace="main", body="api of A")
    other = node(new_project, lab, 2, "api", namespace="other", body="api of other")
    p = new_project()
    p.env.pop("DEVMESH_DISCOVERY")
    p.prefix = lab.exec(2, [])
    p.toml(
        f'[mesh]\nnamespace = "main"\n\n[discovery]\ninterval = "{int(INTERVAL * 1000)}ms"\n'
        + SERVICE.format(name="api", version="1.0")
    )
    run = p.up(command="proxy")
    [api] = p.status()["services"]  # declared, not started: a peer's copy serves it
    assert (api["state"], api["pid"]) == ("stopped", None) and "devmesh proxy" in api["reason"]
    assert "proxy only" in run.text()
    wait_until(lambda: sees(p, "api", 1), 10, "the proxy-only node sees A")
    report = get(lab, 2, "127.0.0.1", p.proxy_port, "api", 3)
    assert report["bodies"] == {"api of A": 3}
    # Same host, same UDP port, other namespace: each hears the other and drops it.
    assert services_seen(other) == set()
    assert peers_json(other)["stats"]["dropped"].get("other_namespace", 0) > 0
    assert {p["address"] for p in peers_json(a)["peers"]} == {lab.ip(2)}


def test_discovery_worker_killed_comes_back_unnoticed(
    new_project: Callable[[], Project], lab: Lab
) -> None:
    """kill -9 of a node's discovery worker: the parent starts a new one, whose announcements
    the peers take at once (its sequence goes on growing): no leave, no rejoin."""
    a = node(new_project, lab, 1, "api")
    b = node(new_project, lab, 2, "web")
    wait_until(lambda: services_seen(a) == {"web"}, 10, "A sees B")

    def discovery_pid() -> int | None:
        worker = next(w for w in b.status()["workers"] if w["name"] == "discovery")
        pid: int | None = worker["pid"] if worker["state"] == "running" else None
        return pid

    old = discovery_pid()
    assert old is not None
    os.kill(old, signal.SIGKILL)
    wait_until(lambda: (discovery_pid() or old) != old, 10, "a new discovery worker")
    assert b.cli("stop", "web").returncode == 0  # a change the new worker announces
    wait_until(
        lambda: any(s["state"] == "stopped" for p in peers_json(a)["peers"] for s in p["services"]),
        5,
        "A hears the new worker",
    )
    assert "peer left" not in a.running[0].text()


def test_garbage_datagrams_are_dropped_and_counted(
    new_project: Callable[[], Project], lab: Lab
) -> None:
    """Junk, oversized and wrong-version datagrams at a node's discovery port (from another
    lab host): each dropped under its reason, the node goes on seeing its peers."""
    a = node(new_project, lab, 1, "api")
    b = node(new_project, lab, 2, "web")
    wait_until(lambda: services_seen(a) == {"web"}, 10, "A sees B")
    sender = (
        "import socket, json\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        f"to = ('{lab.ip(1)}', 35555)\n"
        "for junk in (b'', b'\\xff' * 50, b'{', b'[1,2]', b'{\"dm\": 1}', b'x' * 1400,\n"
        "             json.dumps({'dm': 99}).encode()):\n"
        "    s.sendto(junk, to)\n"
    )
    out = subprocess.run(
        lab.exec(3, [sys.executable, "-c", sender]), capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0, out.stderr

    def dropped() -> dict[str, int]:
        counts: dict[str, int] = peers_json(a)["stats"]["dropped"]
        return counts

    wait_until(lambda: sum(dropped().values()) >= 7, 5, "the junk counted")
    assert dropped()["malformed"] >= 5 and dropped()["oversized"] == 1
    assert dropped()["version"] == 1
    assert services_seen(a) == {"web"}
    assert b.cli("stop", "web").returncode == 0  # and A still hears B's changes
    wait_until(
        lambda: any(s["state"] == "stopped" for p in peers_json(a)["peers"] for s in p["services"]),
        5,
        "A hears B after the junk",
    )


SICKLY = http_app(
    """
    sick = os.path.exists("sick")
    body = ("sick" if sick else open("site/index.html").read().strip()).encode()
    status = 503 if sick else 200
    """
)


def test_a_peer_copy_turning_unhealthy_mid_load(
    new_project: Callable[[], Project], lab: Lab
) -> None:
    """One of two copies turns unhealthy (503 on everything) while a client hammers the name:
    passive ejection and retries hide it at once, the health probe takes it out of the routes
    and its node announces it, and not one request fails."""
    health = '\nhealth = "http://127.0.0.1:$PORT/"\nhealth_interval = "200ms"\n'
    sickly = SERVICE.replace(
        "python3 -m http.server $PORT --bind 127.0.0.1 --directory site", "python3 sickly.py"
    )

    def copy(host: int, body: str) -> Project:
        proj = new_project()
        proj.write("sickly.py", SICKLY)
        proj.env.pop("DEVMESH_DISCOVERY")
        proj.prefix = lab.exec(host, [])
        proj.write("site/index.html", body + "\n")
        proj.toml(
            f'[mesh]\nnamespace = "team"\n\n'
            f'[discovery]\ninterval = "{int(INTERVAL * 1000)}ms"\n'
            + sickly.format(name="api", version="1.0")
            + health
        )
        proj.up()
        proj.wait_state("api", "running")
        return proj

    a = copy(1, "api of A")
    c = copy(3, "api of C")
    b = node(new_project, lab, 2, "web")
    wait_until(lambda: sees(b, "api", 2), 10, "B sees both healthy copies")
    wait_until(lambda: sees(a, "web", 1) and sees(c, "web", 1), 10, "both see B")
    with load(lab, 2, b.proxy_port, "api", 2000) as finish:
        (a.root / "sick").write_text("")
        (c.root / "sick").unlink(missing_ok=True)
        wait_until(
            lambda: (a.service("api")["health"] or {}).get("status") == "unhealthy", 10, "A sick"
        )
        wait_until(lambda: sees(b, "api", 1), 5, "B routes only to C")
        report = finish()
    assert report["other"] == {}, report
    assert report["bodies"]["api of C"] > 0


def test_trace_id_and_request_lines_across_peers(
    new_project: Callable[[], Project], lab: Lab
) -> None:
    lines = '[log]\nrequests = "requests.jsonl"\nformat = "json"\n'
    a = node(new_project, lab, 1, "api", body="api of A", extra=lines)
    b = node(new_project, lab, 2, "web", extra=lines)
    wait_until(lambda: sees(b, "api", 1), 10, "node 2 sees api on node 1")
    trace = "0af7651916cd43dd8448eb211c80319c"
    parent = f"00-{trace}-b7ad6b7169203331-01"
    report = get(lab, 2, "127.0.0.1", b.proxy_port, "api", 1, f"traceparent:{parent}")
    assert report["ok"] == 1 and report["headers"]["x-devmesh-trace-id"] == trace
    a_node = peers_json(b)["peers"][0]["node"]

    def line(proj: Project) -> dict[str, Any] | None:
        path = proj.root / "requests.jsonl"
        found = [json.loads(t) for t in (path.read_text().splitlines() if path.exists() else ())]
        return next((r for r in found if r["trace_id"] == trace), None)

    # The same trace id on both nodes: B forwarded to A's proxy, which served it itself.
    at_b = wait_until(lambda: line(b), 10, "node 2's request line")
    at_a = wait_until(lambda: line(a), 10, "node 1's request line")
    assert (at_b["service"], at_b["peer_id"], at_b["status"]) == ("api", a_node, 200)
    assert (at_a["service"], at_a["peer_id"], at_a["status"]) == ("api", "", 200)
    # B's metrics count the request under A's node id (read from inside host 2).
    url = b.status()["node"]["dashboard"]["metrics"]
    scrape = f"import urllib.request as u; print(u.urlopen({url!r}).read().decode())"

    def metrics() -> str:
        argv = lab.exec(2, [sys.executable, "-c", scrape])
        return subprocess.run(argv, capture_output=True, text=True, timeout=30).stdout

    counted = f'devmesh_requests_total{{code="200",method="GET",peer="{a_node}",service="api"}} 1.0'
    text = wait_until(lambda: next((t for t in [metrics()] if counted in t), None), 10, "metrics")
    assert f'devmesh_service_up{{service="api",source="{a_node}"}} 1.0' in text
    assert "devmesh_peers 1.0" in text
    received = next(
        line for line in text.splitlines() if line.startswith("devmesh_discovery_packets_received")
    )
    assert float(received.split()[-1]) > 0


def test_spans_of_both_proxies_join_one_trace(new_project: Callable[[], Project], lab: Lab) -> None:
    # A real OTLP receiver inside lab host 1; both nodes export their proxy spans to it.
    receiver = subprocess.Popen(
        lab.exec(1, [sys.executable, "-m", "tests.otlp_receiver", lab.ip(1), "4318"]),
        cwd=Path(__file__).parent.parent,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert receiver.stdout is not None and receiver.stdout.readline().strip() == "ready"
        tracing = f'[tracing]\notlp_endpoint = "http://{lab.ip(1)}:4318"\n'
        a = node(new_project, lab, 1, "api", body="api of A", extra=tracing)
        b = node(new_project, lab, 2, "web", extra=tracing)
        wait_until(lambda: sees(b, "api", 1), 10, "node 2 sees api on node 1")
        trace, client_span = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
        header = f"traceparent:00-{trace}-{client_span}-01"
        assert get(lab, 2, "127.0.0.1", b.proxy_port, "api", 1, header)["ok"] == 1
        a_node = peers_json(b)["peers"][0]["node"]
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(
            target=lambda: [lines.put(x) for x in receiver.stdout], daemon=True
        ).start()
        spans: list[dict[str, Any]] = []
        deadline = time.monotonic() + 20  # each node's proxy exports within about a second
        while len(spans) < 2:
            span = json.loads(lines.get(timeout=max(0.01, deadline - time.monotonic())))
            if span["trace_id"] == trace:
                spans.append(span)
        at_b = next(s for s in spans if s["attributes"].get("devmesh.peer") == a_node)
        at_a = next(s for s in spans if s is not at_b)
        # Client -> B's proxy -> A's proxy: one trace, each span the child of the one before.
        assert at_b["parent_id"] == client_span
        assert at_a["parent_id"] == at_b["span_id"]
        assert at_a["attributes"]["devmesh.service"] == at_b["attributes"]["devmesh.service"]
        assert a.status()["node"]["project"]  # node 1 still answers after exporting
    finally:
        receiver.kill()
        receiver.communicate(timeout=10)

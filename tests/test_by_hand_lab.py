"""Services run by hand, across real devmesh nodes in the network namespaces of a lab LAN: a
0.1.x service declared with only a port hands traffic to and from a teammate's copy without a
failed request, and `devmesh proxy` + `devmesh run` is seen by the peers and leaves with a
goodbye. Skipped, with the reason, where namespaces cannot be made (not root, no iproute2)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Callable

import pytest

from tests.conftest import PY, Project, free_port, wait_until
from tests.lab import Lab, lab_unavailable
from tests.test_discovery_lab import INTERVAL, get, load, node, peers_json, sees

pytestmark = pytest.mark.skipif(lab_unavailable() is not None, reason=str(lab_unavailable()))

SERVE = [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "--directory", "site"]


def hand_node(
    new_project: Callable[[], Project], lab: Lab, host: int, port: int, extra: str = ""
) -> Project:
    """A node on lab host `host` that declares `mono` the 0.1.x way: a port, no command."""
    proj = new_project()
    proj.write("site/index.html", f"mono of host {host}\n")
    proj.env.pop("DEVMESH_DISCOVERY")
    proj.prefix = lab.exec(host, [])
    proj.toml(
        f'[mesh]\nnamespace = "team"\n\n[discovery]\ninterval = "{int(INTERVAL * 1000)}ms"\n\n'
        f"[proxy]\nport = {proj.proxy_port}\n{extra}\n"
        f'[services.mono]\nport = {port}\nversion = "1.0"\n'
    )
    proj.up()
    proj.wait_state("mono", "external")
    return proj


def by_hand(
    lab: Lab, host: int, proj: Project, port: int, procs: list[subprocess.Popen[str]]
) -> subprocess.Popen[str]:
    """The user's own `mono` on `port` of lab host `host`, started without devmesh."""
    argv = lab.exec(host, [*SERVE, str(port)])
    proc = subprocess.Popen(
        argv, cwd=proj.root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True
    )
    procs.append(proc)
    return proc


def peer_state(proj: Project, service: str) -> str | None:
    """How `proj`'s (only) peer announces `service`."""
    states = [s["state"] for p in peers_json(proj)["peers"] for s in p["services"]]
    names = [s["name"] for p in peers_json(proj)["peers"] for s in p["services"]]
    return dict(zip(names, states, strict=True)).get(service)


def test_started_service_takes_over_from_and_hands_back_to_a_peer(
    new_project: Callable[[], Project], lab: Lab, started: list[subprocess.Popen[str]]
) -> None:
    """B declares mono with a port only; A runs mono. Requests on B go to A's copy; the user
    starting mono by hand on B makes it local (and announced) within a probe; stopping it hands
    the traffic back to A with no failed request under load; and again the other way."""
    a = node(new_project, lab, 1, "mono", body="mono of A")
    port = free_port()
    b = hand_node(new_project, lab, 2, port)
    wait_until(lambda: sees(b, "mono", 1), 10, "B sees A's mono")
    assert get(lab, 2, "127.0.0.1", b.proxy_port, "mono", 3)["bodies"] == {"mono of A": 3}
    assert peer_state(a, "mono") == "external"  # B announces it, not as one that serves

    app = by_hand(lab, 2, b, port, started)
    wait_until(lambda: b.service("mono")["routable"], 5, "B's own mono answers")
    assert get(lab, 2, "127.0.0.1", b.proxy_port, "mono", 3)["bodies"] == {"mono of host 2": 3}
    wait_until(lambda: peer_state(a, "mono") == "running", 5, "A hears B's mono running")
    assert b.service("mono")["state"] == "external"  # never "stopped" while it serves

    # The user stops it: every GET in flight moves to A's copy.
    with load(lab, 2, b.proxy_port, "mono", 4000) as finish:
        app.kill()
        app.wait(10)
        wait_until(lambda: not b.service("mono")["routable"], 15, "B's mono not listening")
        report = finish()
    assert report["other"] == {}, report["other"]
    assert set(report["bodies"]) == {"mono of A", "mono of host 2"}
    wait_until(lambda: peer_state(a, "mono") == "external", 5, "A hears B's mono gone")
    health = b.service("mono")["health"]
    assert health["status"] == "unknown" and health["check"] == "port"  # not listening

    # And back: started by hand again under load, B serves its own, still no failure.
    with load(lab, 2, b.proxy_port, "mono", 4000) as finish:
        by_hand(lab, 2, b, port, started)
        wait_until(lambda: b.service("mono")["routable"], 5, "B's mono back")
        report = finish()
    assert report["other"] == {}, report["other"]
    assert report["bodies"]["mono of host 2"] > 0


def test_version_strict_page_names_both_versions_and_the_port(
    new_project: Callable[[], Project], lab: Lab
) -> None:
    """With version_strict, a peer's copy of another version is not used: the 503 page says
    that nothing listens on mono's port here and names the peer, its version and ours."""
    node(new_project, lab, 1, "mono", version="2.0", body="mono of A")
    port = free_port()
    b = hand_node(new_project, lab, 2, port, extra="version_strict = true\n")
    wait_until(lambda: peer_state(b, "mono") == "running", 10, "B sees A's mono")
    report = get(lab, 2, "127.0.0.1", b.proxy_port, "mono", 1, "Accept:application/json")
    [(answer, count)] = report["other"].items()
    assert answer.startswith("503") and count == 1
    page = json.loads(answer[4:])
    assert page["state"] == "external"
    assert f"nothing listens on port {port} here" in page["reason"]
    [considered] = page["peers_considered"]
    assert "runs mono 2.0" in considered and "this node declares 1.0 (version_strict)" in considered


def test_proxy_and_run_are_seen_by_peers_and_leave_with_a_goodbye(
    new_project: Callable[[], Project], lab: Lab
) -> None:
    """`devmesh proxy` on A (no services declared) and `devmesh run api -- CMD` there: B's
    proxy routes to it within an announcement or two; Ctrl+C ends the command and B stops
    routing to it at once (the announcement without it), not after an expiry."""
    b = node(new_project, lab, 2, "web")
    a = new_project()
    a.write("site/index.html", "api run by hand on A\n")
    a.env.pop("DEVMESH_DISCOVERY")
    a.prefix = lab.exec(1, [])
    a.toml(f'[mesh]\nnamespace = "team"\n\n[discovery]\ninterval = "{int(INTERVAL * 1000)}ms"\n')
    a.up(command="proxy")
    run = subprocess.Popen(
        lab.exec(1, [PY, "-m", "devmesh", "run", "api", "--", *SERVE, "$PORT"]),
        cwd=a.root,
        env=a.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert run.stdout is not None and "PORT=" in run.stdout.readline()
        wait_until(lambda: sees(b, "api", 1), 10, "B sees the api run by hand on A")
        report = get(lab, 2, "127.0.0.1", b.proxy_port, "api", 3)
        assert report["bodies"] == {"api run by hand on A": 3}
        run.send_signal(signal.SIGINT)  # Ctrl+C: not from a terminal, so passed on to CMD
        out, _ = run.communicate(timeout=10)
        assert "api no longer registered" in out
        # Gone from B at the announcement that follows, well before an expiry (3 intervals).
        wait_until(lambda: not sees(b, "api", 1), 2 * INTERVAL + 1, "B stops seeing api")
        assert a.status()["services"] == []
        assert get(lab, 2, "127.0.0.1", b.proxy_port, "api", 1)["other"]
    finally:
        if run.poll() is None:
            run.kill()
        run.communicate(timeout=10)

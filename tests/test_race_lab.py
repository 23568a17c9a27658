"""Two nodes that learned of each other at different moments, and peers that die mid-response,
between real devmesh nodes in network namespaces (tests/lab.py), with a busy loop on every core.

Whichever of two nodes hears the other first routes to it at once; the other's proxy, which has
not heard it yet, refuses it (`lan_access = "peers"`). No client request may fail because of
that order: after a partition heals, when a node joins, and when a serving peer is killed with
-9 in the middle of the load.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.apps import http_app
from tests.conftest import Project, wait_until
from tests.lab import Lab, lab_unavailable
from tests.test_discovery_lab import CLIENT, INTERVAL, get, load, peers_json, sees, services_seen

pytestmark = pytest.mark.skipif(lab_unavailable() is not None, reason=str(lab_unavailable()))

# A service that answers its own 403 (a header and a body of its own) when asked to.
SERVICE = http_app(
    """
    deny = self.headers.get("X-Want-403") is not None
    body = b"denied by the service itself" if deny else BODY
    if deny:
        status, headers = 403, {"X-Reason": "the service's own"}
    """,
    setup='BODY = open("body.txt").read().strip().encode()',
    keep_alive=True,
)


BUSY = "import time\nend = time.monotonic() + {seconds}\nwhile time.monotonic() < end: pass\n"


@contextlib.contextmanager
def cpu_load(seconds: float = 90) -> Iterator[None]:
    """A busy loop on every core (each ends by itself after `seconds`), stopped by pid."""
    loops = [
        subprocess.Popen([sys.executable, "-c", BUSY.format(seconds=seconds)])
        for _ in range(os.cpu_count() or 1)
    ]
    try:
        yield
    finally:
        for proc in loops:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
            proc.wait(10)


def node(
    new_project: Callable[[], Project],
    lab: Lab,
    host: int,
    service: str,
    body: str = "",
    interval: float = INTERVAL,
    start: bool = True,
) -> Project:
    """A devmesh node on lab host `host` running `service` (the script above), up and answering
    (`start`: else only written)."""
    proj = new_project()
    proj.write("svc.py", SERVICE)
    proj.write("body.txt", (body or f"{service} on host {host}") + "\n")
    proj.env.pop("DEVMESH_DISCOVERY")
    proj.prefix = lab.exec(host, [])
    proj.toml(
        f'[mesh]\nnamespace = "team"\n\n[discovery]\ninterval = "{int(interval * 1000)}ms"\n\n'
        f'[services.{service}]\ncommand = "python3 svc.py"\n'
    )
    if start:
        proj.up()
        proj.wait_state(service, "running")
    return proj


@contextlib.contextmanager
def client(
    lab: Lab, host: int, port: int, name: str, seconds: float
) -> Iterator[Callable[[], dict[str, Any]]]:
    """GETs for `name` through the proxy on `port` in lab host `host` for `seconds`, started at
    once (not waiting for them to succeed); the block calls `finish()` for the report."""
    argv = [sys.executable, str(CLIENT), "127.0.0.1", str(port), name, "1000000", str(seconds)]
    proc = subprocess.Popen(lab.exec(host, argv), stdout=subprocess.PIPE, text=True)

    def finish() -> dict[str, Any]:
        out, _ = proc.communicate(timeout=seconds + 30)
        report: dict[str, Any] = json.loads(out.splitlines()[-1])
        return report

    try:
        yield finish
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)


def never_failed_once_served(report: dict[str, Any]) -> None:
    """No 403 at all, and nothing but 200 from the first 200 on (before it the name may be
    unknown yet, 404, or known and starting, 503)."""
    runs = report["runs"]
    statuses = [status for status, *_ in runs]
    assert 403 not in statuses, runs
    assert 200 in statuses, runs
    assert all(s == 200 for s in statuses[statuses.index(200) :]), runs
    assert set(statuses[: statuses.index(200)]) <= {404, 503}, runs


def test_partition_heals_under_load(new_project: Callable[[], Project], lab: Lab) -> None:
    """Host 3 runs api, host 1 asks for it. Cut host 3 off until both sides forget each other,
    heal, and ask at once: three times, with every core busy. Then the service's own 403 goes
    through untouched."""
    a = node(new_project, lab, 1, "web")
    c = node(new_project, lab, 3, "api", body="api of C")
    wait_until(lambda: sees(a, "api", 1) and services_seen(c) == {"web"}, 10, "A and C meet")
    with cpu_load():
        for _ in range(3):
            lab.cut(3)
            try:
                wait_until(lambda: services_seen(a) == set(), 3 * INTERVAL + 5, "A forgets C")
                wait_until(lambda: services_seen(c) == set(), 3 * INTERVAL + 5, "C forgets A")
            finally:
                lab.heal(3)
            with client(lab, 1, a.proxy_port, "api", 4) as finish:
                report = finish()
            never_failed_once_served(report)
    report = get(lab, 1, "127.0.0.1", a.proxy_port, "api", 1, "X-Want-403:1")
    assert report["other"] == {"403 denied by the service itself": 1}, report
    assert report["headers"]["x-reason"] == "the service's own"
    assert "x-devmesh-refused" not in report["headers"]


def test_a_node_joins_under_load(new_project: Callable[[], Project], lab: Lab) -> None:
    """Host 1 asks for api while the node of host 2, which runs it, starts; three times (it
    stops in between), with every core busy and the default interval of 1 s (the service is
    up before the next periodic announcement of host 1 would tell host 2 about it): from the
    first answer on, every request is served."""
    a = node(new_project, lab, 1, "web", interval=1.0)
    b = node(new_project, lab, 2, "api", body="api of B", interval=1.0, start=False)
    with cpu_load():
        for _ in range(3):
            with client(lab, 1, a.proxy_port, "api", 6) as finish:
                b.up()
                wait_until(lambda: sees(a, "api", 1), 10, "A sees B's api")
                report = finish()
            never_failed_once_served(report)
            assert report["bodies"].get("api of B", 0) > 0
            b.running[-1].stop()
            wait_until(lambda: services_seen(a) == set(), 10, "B's goodbye")


def test_kill_9_of_a_serving_peer_under_load(new_project: Callable[[], Project], lab: Lab) -> None:
    """Two copies of api (hosts 1 and 3), a client through host 2's node: the copy that
    serves is killed with -9 in the middle of the load, three times (a new node takes the
    killed one's place each time), with every core busy: not one GET fails."""
    b = node(new_project, lab, 2, "web")
    copies = {
        1: node(new_project, lab, 1, "api", "api of 1"),
        3: node(new_project, lab, 3, "api", "api of 3"),
    }
    failed: list[Any] = []
    with cpu_load():
        for _ in range(3):
            wait_until(lambda: sees(b, "api", 2), 15, "B sees both copies")
            for proj in copies.values():
                wait_until(lambda p=proj: services_seen(p) >= {"web"}, 10, "the copies see B")
            with load(lab, 2, b.proxy_port, "api", 3000) as finish:
                served = get(lab, 2, "127.0.0.1", b.proxy_port, "api", 1)["bodies"]
                host = 1 if "api of 1" in served else 3
                copies[host].running[0].proc.send_signal(signal.SIGKILL)
                copies[host].running[0].proc.wait(10)
                report = finish()
            failed += [report["other"]] if report["other"] else []
            assert report["ok"] >= 100, report  # (slow: every core is busy)
            wait_until(lambda: sees(b, "api", 1), 3 * INTERVAL + 5, "B drops the killed node")
            copies[host] = node(new_project, lab, host, "api", f"api of {host}")
    assert failed == []


def test_a_new_peer_is_answered_at_once(new_project: Callable[[], Project], lab: Lab) -> None:
    """With an interval of 30 s, host 2's node starts after host 1's last announcement: it
    hears host 1 at once all the same, because host 1 answers its first announcement by
    unicast (counted in `replied`), instead of 30 s later."""
    a = node(new_project, lab, 1, "api", interval=30.0)
    b = node(new_project, lab, 2, "web", interval=30.0)
    wait_until(lambda: services_seen(b) == {"api"}, 3, "B hears A without waiting 30 s")
    assert services_seen(a) == {"web"}
    assert peers_json(a)["stats"]["replied"] >= 1

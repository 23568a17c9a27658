"""The proxy worker role run by the real worker framework (`python -m devmesh.workers`)."""

from __future__ import annotations

import http.client
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from multiprocessing.connection import Connection

import pytest

from devmesh import messages as m
from devmesh.proxy.table import RouteTable, ServiceRoute, Upstream
from tests.conftest import wait_until
from tests.proxy_helpers import LOOP, REPO, Backend, pattern, request


class Worker:
    """A proxy worker process with this test as its parent."""

    def __init__(self, settings: dict[str, object]) -> None:
        self.listener = socket.create_server((LOOP, 0), backlog=128)
        self.port = self.listener.getsockname()[1]
        parent, child = socket.socketpair()
        fds = [child.fileno(), self.listener.fileno()]
        argv = [sys.executable, "-m", "devmesh.workers", "proxy-1"]
        argv += ["devmesh.proxy.worker:make_role", str(os.getpid()), *map(str, fds)]
        env = dict(os.environ, PYTHONPATH=str(REPO))
        self.proc = subprocess.Popen(argv, pass_fds=fds, stdin=subprocess.DEVNULL, env=env)
        child.close()
        self.conn = Connection(parent.detach())
        self.received: list[object] = []
        self.conn.send(
            m.Configure(worker="proxy-1", protocol=m.PROTOCOL, project="t", settings=settings)
        )

    def wait_for(self, kind: type, timeout: float) -> object:
        """The next message of a kind (heartbeats and others are kept in `received`)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.conn.poll(0.05):
                msg = self.conn.recv()
                self.received.append(msg)
                if isinstance(msg, kind):
                    return msg
        raise AssertionError(f"no {kind.__name__} from the worker within {timeout}s")

    def close(self) -> None:
        """Stop the process (by pid) and close everything."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        self.conn.close()
        self.listener.close()


@pytest.fixture
def worker() -> Iterator[Worker]:
    """A started proxy worker (Ready received)."""
    w = Worker({"proxy_port": 0, "lan_access": "peers"})
    try:
        w.wait_for(m.Ready, 15)
        yield w
    finally:
        w.close()


def table(version: int, port: int, backend: int | None) -> RouteTable:
    """A route table with `api` at `backend`."""
    up = Upstream(LOOP, backend) if backend is not None else None
    state = "running" if backend is not None else "starting"
    return RouteTable(version, port, (ServiceRoute("api", up, state),))


def test_worker_serves_routes_it_is_sent_and_stops_gracefully(worker: Worker) -> None:
    with Backend() as backend:
        # before any table: a 404 page (no services), served at once
        assert request(worker.port).status == 404
        worker.conn.send(m.RoutesUpdate(table(1, worker.port, None)))
        wait_until(lambda: request(worker.port).status == 503, 10, "the first table")
        worker.conn.send(m.RoutesUpdate(table(2, worker.port, backend.port)))
        wait_until(lambda: request(worker.port).status == 200, 10, "the second table")
        # an older table arriving late is ignored
        worker.conn.send(m.RoutesUpdate(table(1, worker.port, None)))
        worker.conn.send(m.RoutesUpdate(table(3, worker.port, backend.port)))
        time.sleep(0.2)  # no acknowledgement exists: give the worker a moment to read both
        assert request(worker.port).status == 200
        echo = request(worker.port).json()
        assert dict(echo["headers"])["Host"] == f"api.localhost:{worker.port}"
        worker.wait_for(m.Heartbeat, 3)

        # Stop while a slow response streams: it completes, then the worker exits.
        conn = http.client.HTTPConnection(LOOP, worker.port, timeout=20)
        try:
            conn.request("GET", "/slow/20", headers={"Host": "api"})  # ~1 s of body
            resp = conn.getresponse()  # the head is here: the request is in flight
            worker.conn.send(m.Stop())
            assert resp.read() == pattern(10) * 20
            assert resp.getheader("connection") is None or resp.will_close
        finally:
            conn.close()
        assert worker.proc.wait(10) == 0

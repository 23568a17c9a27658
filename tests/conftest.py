"""Shared fixtures: an isolated project directory and a driver for the real `devmesh` command."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.lab import Lab

PY = sys.executable
REPO = Path(__file__).resolve().parent.parent


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, step: float = 0.02) -> Any:
    """Poll `predicate` until it returns something truthy; fail the test after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(step)


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_get(
    port: int, host: str, path: str = "/", headers: dict[str, str] | None = None
) -> tuple[int, bytes, dict[str, str]]:
    """One GET to 127.0.0.1:`port` with this Host: status, body and headers (lowercase names)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers={"Host": host, **(headers or {})})
        resp = conn.getresponse()
        return resp.status, resp.read(), {k.lower(): v for k, v in resp.getheaders()}
    finally:
        conn.close()


def pid_alive(pid: int) -> bool:
    """True if `pid` exists and is not a zombie."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


class Running:
    """A `devmesh up` started by a test, in the foreground, with its output in a file."""

    def __init__(self, project: Project, proc: subprocess.Popen[bytes], output: Path) -> None:
        self.project = project
        self.proc = proc
        self.output = output

    @property
    def pid(self) -> int:
        """The supervisor's pid."""
        return self.proc.pid

    def text(self) -> str:
        """Everything it printed so far."""
        return self.output.read_text(errors="replace")

    def stop(self, timeout: float = 20) -> int:
        """SIGTERM the supervisor and wait for it to exit; its exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)


class Project:
    """A temporary project directory with its own XDG dirs, driven through the real CLI."""

    def __init__(self, root: Path, home: Path) -> None:
        self.root = root
        self.env = dict(os.environ)
        self.env.update(
            XDG_RUNTIME_DIR=str(home / "run"),
            XDG_STATE_HOME=str(home / "state"),
            NO_COLOR="1",
            PYTHONUNBUFFERED="1",
            # Nothing leaves loopback from the root namespace: the lab tests turn it back on
            # inside their own network namespaces.
            DEVMESH_DISCOVERY="off",
        )
        self.env.pop("DEVMESH_LOG", None)
        # The devmesh of this checkout, whatever else is installed.
        self.env["PYTHONPATH"] = os.pathsep.join(
            [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]
        )
        (home / "run").mkdir(mode=0o700)
        self.proxy_port = free_port()
        self.running: list[Running] = []
        self.prefix: list[str] = []  # runs `devmesh up` under this (a lab host's `ip netns exec`)

    def write(self, name: str, text: str) -> Path:
        """Write a file into the project (dedented)."""
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip())
        return path

    def toml(self, text: str) -> Path:
        """Write devmesh.toml; without a [proxy] section, on a free proxy port (not 8080)."""
        text = textwrap.dedent(text).lstrip()
        if "[proxy]" not in text:
            text = f"[proxy]\nport = {self.proxy_port}\n\n{text}"
        return self.write("devmesh.toml", text)

    def cli(
        self,
        *args: str,
        timeout: float = 60,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run `devmesh ARGS` in the project directory (or `cwd`) and wait for it."""
        return subprocess.run(
            [PY, "-m", "devmesh", *args],
            cwd=cwd or self.root,
            env={**self.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )

    def up(
        self, *args: str, wait: bool = True, timeout: float = 30, command: str = "up"
    ) -> Running:
        """Start `devmesh up ARGS` (or `devmesh proxy ARGS`) in the background of the test;
        wait until it answers."""
        output = self.root.parent / f"up-{len(self.running)}.out"
        with open(output, "wb") as out:
            proc = subprocess.Popen(
                [*self.prefix, PY, "-m", "devmesh", command, *args],
                cwd=self.root,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        run = Running(self, proc, output)
        self.running.append(run)
        if wait:

            def answering() -> bool:
                if proc.poll() is not None:
                    raise AssertionError(f"devmesh up exited {proc.returncode}:\n{run.text()}")
                return self.try_status() is not None

            wait_until(answering, timeout, "devmesh up to answer")
        return run

    def try_status(self) -> dict[str, Any] | None:
        """`devmesh status --json`, or None when no mesh answers."""
        result = self.cli("status", "--json")
        if result.returncode != 0:
            return None
        data: dict[str, Any] = json.loads(result.stdout)
        return data

    def status(self) -> dict[str, Any]:
        """`devmesh status --json` (it must answer)."""
        result = self.cli("status", "--json")
        assert result.returncode == 0, f"devmesh status did not answer: {result.stderr}"
        data: dict[str, Any] = json.loads(result.stdout)
        return data

    def service(self, name: str) -> dict[str, Any]:
        """One service from the status document."""
        return next(s for s in self.status()["services"] if s["name"] == name)

    def wait_state(self, name: str, *states: str, timeout: float = 20) -> dict[str, Any]:
        """Wait until service `name` is in one of `states`; its status entry."""

        def reached() -> dict[str, Any] | None:
            svc = self.service(name)
            return svc if svc["state"] in states else None

        result: dict[str, Any] = wait_until(reached, timeout, f"{name} to be {'/'.join(states)}")
        return result

    def cleanup(self) -> None:
        """Stop every supervisor this test started, then anything they left (by pid)."""
        for run in self.running:
            # Shown by pytest only when the test failed.
            print(f"---- devmesh up (pid {run.pid}) printed:\n{run.text()}")
            if run.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    run.proc.send_signal(signal.SIGTERM)
                try:
                    run.proc.wait(15)
                except subprocess.TimeoutExpired:
                    run.proc.kill()
                    run.proc.wait(5)


@pytest.fixture
def project() -> Iterator[Project]:
    """A fresh project directory with private runtime/state dirs (short paths for sockets)."""
    home = Path(tempfile.mkdtemp(prefix="dm", dir="/tmp"))
    root = home / "proj"
    root.mkdir()
    proj = Project(root, home)
    try:
        yield proj
    finally:
        proj.cleanup()
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def new_project() -> Iterator[Callable[[], Project]]:
    """Makes as many fresh projects as a test needs (several nodes of one mesh)."""
    made: list[tuple[Project, Path]] = []

    def make() -> Project:
        home = Path(tempfile.mkdtemp(prefix="dm", dir="/tmp"))
        (home / "proj").mkdir()
        proj = Project(home / "proj", home)
        made.append((proj, home))
        return proj

    try:
        yield make
    finally:
        for proj, home in made:
            proj.cleanup()
            shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def started() -> Iterator[list[subprocess.Popen[str]]]:
    """Processes a test starts itself (an app run by hand, `devmesh run`): the test appends
    them; each is killed by its pid at the end, and its pipes are closed."""
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    """A LAN of three network namespaces (tests/lab.py) for one test module, removed after."""
    built = Lab(n=3).up()
    try:
        yield built
    finally:
        built.down()

"""The parent's side of a worker: spawn it, talk to it, notice its death or silence, restart it."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import devmesh
from devmesh import messages as m
from devmesh.supervisor.states import WorkerState
from devmesh.workers.base import HEARTBEAT_INTERVAL

# Where the devmesh package lives, so a worker imports the same one as its parent.
_PACKAGE_ROOT = str(Path(devmesh.__file__).resolve().parent.parent)

SILENCE_LIMIT = 5 * HEARTBEAT_INTERVAL  # a worker silent this long is killed and restarted
STARTUP_LIMIT = 30.0  # the same for a worker that has not said Ready yet (imports, a busy CPU)
STABLE_AFTER = 5.0  # a worker that lived this long restarts at once after a crash
MAX_DELAY = 10.0


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker is: its name, its role factory and what it is handed at start."""

    name: str
    factory: str  # "module:function" returning a Role
    sockets: Callable[[], list[socket.socket]] = lambda: []
    settings: Callable[[], dict[str, Any]] = dict


@dataclass
class WorkerHandle:
    """One worker process as the parent tracks it."""

    spec: WorkerSpec
    project: str
    state: WorkerState = WorkerState.STOPPED
    process: subprocess.Popen[bytes] | None = None
    conn: Connection | None = None
    restarts: int = 0
    started_at: float = 0.0
    last_heard: float = 0.0
    restart_at: float | None = None
    quick_deaths: int = 0
    last_exit: str = ""
    pending: list[m.ParentMessage] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)  # over the parent's environment

    @property
    def name(self) -> str:
        """The worker's name (`control`, later `proxy-1`, `discovery`, `health`)."""
        return self.spec.name

    @property
    def pid(self) -> int | None:
        """The worker's pid while it has a process."""
        return self.process.pid if self.process is not None else None

    def start(self, now: float) -> None:
        """Start a fresh interpreter for the worker and send it its `Configure`.

        The start method is a plain exec (`python -m devmesh.workers`): never a fork of the
        parent's state, and no multiprocessing resource tracker process.
        """
        parent_sock, child_sock = socket.socketpair()
        sockets = self.spec.sockets()
        fds = [child_sock.fileno(), *(s.fileno() for s in sockets)]
        argv = [sys.executable, "-m", "devmesh.workers", self.spec.name, self.spec.factory]
        argv += [str(os.getpid()), *map(str, fds)]
        env = dict(os.environ) | self.env
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [_PACKAGE_ROOT, env.get("PYTHONPATH")]))
        # SIGINT (Ctrl+C reaches the whole foreground group) stays blocked in the new process
        # until it has set SIG_IGN: no KeyboardInterrupt traceback from a half-started worker.
        old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            process = subprocess.Popen(argv, pass_fds=fds, stdin=subprocess.DEVNULL, env=env)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)
            child_sock.close()
        self.process = process
        self.conn = Connection(parent_sock.detach())
        self.state = WorkerState.STARTING
        self.started_at = self.last_heard = now
        self.restart_at = None
        self.send(
            m.Configure(
                worker=self.spec.name,
                protocol=m.PROTOCOL,
                project=self.project,
                settings=self.spec.settings(),
            )
        )

    def send(self, msg: m.ParentMessage) -> None:
        """Send a message; a dead pipe is noticed by the sentinel, not here."""
        if self.conn is None:
            return
        with contextlib.suppress(OSError):
            self.conn.send(msg)

    def receive(self, now: float) -> tuple[list[m.WorkerMessage], bool]:
        """Every message waiting on the pipe, and whether it reached EOF (the worker died)."""
        got: list[m.WorkerMessage] = []
        if self.conn is None:
            return got, True
        try:
            while self.conn.poll():
                got.append(self.conn.recv())
        except (EOFError, OSError):
            return got, True
        if got:
            self.last_heard = now
        for msg in got:
            if isinstance(msg, m.Ready) and self.state is WorkerState.STARTING:
                self.state = WorkerState.RUNNING  # STARTING -> RUNNING
        return got, False

    def reap(self, now: float, *, restart: bool) -> float | None:
        """After its pipe closed: collect the exit, and when to start it again (None: don't)."""
        assert self.process is not None
        try:
            code: int | None = self.process.wait(1.0)
        except subprocess.TimeoutExpired:  # closed its pipe but lives on: not a worker of ours
            self.kill()
            code = self.process.wait(1.0)
        self.last_exit = f"signal {-code}" if code is not None and code < 0 else f"code {code}"
        if self.conn is not None:
            self.conn.close()
        self.process, self.conn = None, None
        if not restart:
            self.state = WorkerState.STOPPED
            return None
        # A worker that lived a while comes back at once; a crash loop slows down.
        lived = now - self.started_at
        self.quick_deaths = 0 if lived >= STABLE_AFTER else self.quick_deaths + 1
        delay = (
            0.0 if self.quick_deaths <= 1 else min(0.25 * 2 ** (self.quick_deaths - 2), MAX_DELAY)
        )
        self.state = WorkerState.BACKOFF
        self.restarts += 1
        self.restart_at = now + delay
        return self.restart_at

    def silent_for(self, now: float) -> float:
        """Seconds since the last message (heartbeats included)."""
        return now - self.last_heard

    def kill(self) -> None:
        """SIGKILL the process (a hung worker, or one that ignored Stop)."""
        if self.process is not None:
            with contextlib.suppress(OSError):
                os.kill(self.process.pid, signal.SIGKILL)

    def snapshot(self) -> dict[str, Any]:
        """The worker as `devmesh status --json` shows it."""
        return {
            "name": self.name,
            "pid": self.pid,
            "state": self.state.value,
            "restarts": self.restarts,
            "last_exit": self.last_exit or None,
        }

"""The parent's side of a worker: spawn it, talk to it, notice its death or silence, restart it."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from devmesh import messages as m
from devmesh.supervisor.states import WorkerState
from devmesh.workers.base import HEARTBEAT_INTERVAL, worker_main

# The spawn start method: a fresh interpreter, never a fork of the parent's state.
_ctx = multiprocessing.get_context("spawn")

SILENCE_LIMIT = 5 * HEARTBEAT_INTERVAL  # a worker silent this long is killed and restarted
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
    process: BaseProcess | None = None
    conn: Connection | None = None
    restarts: int = 0
    started_at: float = 0.0
    last_heard: float = 0.0
    restart_at: float | None = None
    quick_deaths: int = 0
    last_exit: str = ""
    pending: list[m.ParentMessage] = field(default_factory=list)

    @property
    def name(self) -> str:
        """The worker's name (`control`, later `proxy-1`, `discovery`, `health`)."""
        return self.spec.name

    @property
    def pid(self) -> int | None:
        """The worker's pid while it has a process."""
        return self.process.pid if self.process is not None else None

    def start(self, now: float) -> None:
        """Spawn the process and send it its `Configure`."""
        parent_conn, child_conn = _ctx.Pipe(duplex=True)
        process = _ctx.Process(
            target=worker_main,
            args=(self.spec.name, child_conn, self.spec.sockets(), os.getpid(), self.spec.factory),
            name=f"devmesh-{self.spec.name}",
            daemon=True,
        )
        # SIGINT (Ctrl+C reaches the whole foreground group) stays blocked in the new process
        # until it has set SIG_IGN: no KeyboardInterrupt traceback from a half-started worker.
        old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            process.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)
        child_conn.close()
        self.process, self.conn = process, parent_conn
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

    def receive(self, now: float) -> list[m.WorkerMessage]:
        """Every message waiting on the pipe (empty on EOF: the sentinel reports the death)."""
        got: list[m.WorkerMessage] = []
        if self.conn is None:
            return got
        try:
            while self.conn.poll():
                got.append(self.conn.recv())
        except (EOFError, OSError):
            return got
        if got:
            self.last_heard = now
        for msg in got:
            if isinstance(msg, m.Ready) and self.state is WorkerState.STARTING:
                self.state = WorkerState.RUNNING  # STARTING -> RUNNING
        return got

    def reap(self, now: float, *, restart: bool) -> float | None:
        """After its sentinel fired: collect the exit, and when to start it again (None: don't)."""
        assert self.process is not None
        self.process.join(0.5)
        code = self.process.exitcode
        self.last_exit = f"signal {-code}" if code is not None and code < 0 else f"code {code}"
        if self.conn is not None:
            self.conn.close()
        self.process.close()
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
        if self.process is not None and self.process.pid is not None:
            with contextlib.suppress(OSError):
                os.kill(self.process.pid, 9)

    def snapshot(self) -> dict[str, Any]:
        """The worker as `devmesh status --json` shows it."""
        return {
            "name": self.name,
            "pid": self.pid,
            "state": self.state.value,
            "restarts": self.restarts,
            "last_exit": self.last_exit or None,
        }

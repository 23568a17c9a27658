"""What every worker process does: watch its parent, heartbeat, read parent messages, run a role.

A worker is started with the `spawn` method (a fresh interpreter, no inherited loop or lock).
It dies with its parent twice over: `PR_SET_PDEATHSIG`, and EOF on its pipe.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Protocol

from devmesh import messages as m
from devmesh.supervisor.procs import set_parent_death_signal

HEARTBEAT_INTERVAL = 1.0


class Role(Protocol):
    """The part of a worker that does its job."""

    async def serve(self) -> None:
        """Run until `stop()`."""

    def handle(self, msg: m.ParentMessage) -> None:
        """A message from the parent other than `Stop`."""

    def stop(self) -> None:
        """Finish in-flight work and make `serve()` return."""


RoleFactory = Callable[["WorkerRuntime", m.Configure, list[socket.socket]], Role]


class WorkerRuntime:
    """The link to the parent: send messages, receive them on the loop, heartbeat.

    The pipe stays a blocking socket, read by a thread of its own: a message larger than the
    socket buffer (the state of 250 services, a big route table) arrives in many reads, and
    an event loop's reader (libuv makes the fd non-blocking) would see it half there. The
    thread hands each whole message to the loop. Sends come from the loop and may wait for
    the parent to read, which it always does (it never waits on a worker).
    """

    def __init__(self, name: str, conn: Connection) -> None:
        self.name = name
        self.conn = conn
        self.role: Role | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def send(self, msg: m.WorkerMessage) -> None:
        """Send one message to the parent."""
        try:
            self.conn.send(msg)
        except (BrokenPipeError, ConnectionResetError, OSError):
            self._parent_gone()

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start reading parent messages (for `loop`) and heartbeating on `loop`."""
        self._loop = loop
        threading.Thread(target=self._read, name="parent-pipe", daemon=True).start()
        self._beat()

    def _beat(self) -> None:
        self.send(m.Heartbeat(worker=self.name))
        assert self._loop is not None
        self._loop.call_later(HEARTBEAT_INTERVAL, self._beat)

    def _read(self) -> None:
        """The pipe's thread: whole messages to the loop, in order, until the parent is gone."""
        assert self._loop is not None
        try:
            while True:
                self._loop.call_soon_threadsafe(self._dispatch, self.conn.recv())
        except (EOFError, OSError):
            self._parent_gone()
        except RuntimeError:  # the loop is closed: the worker is exiting anyway
            return

    def _dispatch(self, msg: m.ParentMessage) -> None:
        if isinstance(msg, m.Stop):
            if self.role is not None:
                self.role.stop()
        elif isinstance(msg, m.LogLevel):
            set_log_level(msg.level)
        elif self.role is not None:
            self.role.handle(msg)

    def _parent_gone(self) -> None:
        # Nobody is left to report to and every client was the parent's: leave now.
        os._exit(0)


def set_log_level(level: str) -> None:
    """The worker's logging at `level` (debug, info, warning, error)."""
    level = level.upper()
    logging.getLogger().setLevel(logging.getLevelNamesMapping().get(level, logging.INFO))
    # uvicorn's start and stop lines are noise at the other levels.
    logging.getLogger("uvicorn").setLevel(logging.NOTSET if level == "DEBUG" else logging.WARNING)


def worker_main(
    name: str,
    conn: Connection,
    sockets: list[socket.socket],
    parent_pid: int,
    factory_path: str,
) -> None:
    """Entry point of a spawned worker: `factory_path` is `module:function` returning a Role."""
    set_parent_death_signal(signal.SIGKILL)
    if os.getppid() != parent_pid:
        os._exit(0)
    # Ctrl+C reaches the whole foreground group; only the parent decides what stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # blocked by the parent
    configure = conn.recv()
    if not isinstance(configure, m.Configure) or configure.protocol != m.PROTOCOL:
        sys.exit(3)
    # Python logging of the worker (errors it caught, debug detail) to the parent's stderr.
    logging.basicConfig(format=f"devmesh {name}: %(levelname)s %(message)s")
    set_log_level(os.environ.get("DEVMESH_LOG", "info"))
    module_name, _, func_name = factory_path.partition(":")
    module = __import__(module_name, fromlist=[func_name])
    factory: RoleFactory = getattr(module, func_name)
    runtime = WorkerRuntime(name, conn)
    _run(runtime, factory, configure, sockets)


def _run(
    runtime: WorkerRuntime,
    factory: RoleFactory,
    configure: m.Configure,
    sockets: list[socket.socket],
) -> None:
    try:
        import uvloop

        loop_factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - uvloop is a dependency; this keeps other OSes alive
        loop_factory = asyncio.new_event_loop

    async def main() -> None:
        loop = asyncio.get_running_loop()
        role = factory(runtime, configure, sockets)
        runtime.role = role
        runtime.attach(loop)
        runtime.send(m.Ready(worker=runtime.name, pid=os.getpid()))
        await role.serve()

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(main())

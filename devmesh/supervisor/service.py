"""One service as the supervisor tracks it: config, state, process, exits and the user's intent."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

import psutil

from devmesh.config.model import ServiceConfig
from devmesh.supervisor.policy import Exit
from devmesh.supervisor.procs import Spawned
from devmesh.supervisor.states import ServiceState, check_transition


@dataclass
class Service:
    """Runtime record of a service. The supervisor alone changes it, through `to()`."""

    config: ServiceConfig
    port: int
    state: ServiceState = ServiceState.STOPPED
    proc: Spawned | None = None
    wanted: bool = False  # should run: part of `up`, or started by the user
    user_stopped: bool = False  # stopped by the user: never restarted on its own
    restart_after_stop: bool = False  # `devmesh restart`: start again once stopped
    ever_started: bool = False
    started_at: float = 0.0  # monotonic
    started_wall: float = 0.0  # time.time(), for display
    changed_wall: float = field(default_factory=time.time)
    history: list[Exit] = field(default_factory=list)
    restarts: int = 0
    reason: str = ""  # why it is EXITED / FAILED / BACKOFF
    escaped: list[psutil.Process] = field(default_factory=list)  # left its group; killed at stop
    timer_token: int = 0  # bumps on every transition: stale timers see a different token

    @property
    def name(self) -> str:
        """The service's name."""
        return self.config.name

    @property
    def pid(self) -> int | None:
        """The main pid while a process exists."""
        return self.proc.pid if self.proc is not None else None

    def to(self, new: ServiceState, reason: str = "") -> None:
        """Move to `new` (asserted against the state machine) and invalidate pending timers."""
        check_transition(self.name, self.state, new)
        self.state = new
        self.reason = reason
        self.changed_wall = time.time()
        self.timer_token += 1

    def last_exit_code(self) -> int | None:
        """Exit code of the last exit (None if it never exited or a signal killed it)."""
        return self.history[-1].code if self.history else None

    def kill_escaped(self) -> None:
        """SIGKILL the processes that left the service's group, if still the same processes."""
        for proc in self.escaped:
            with contextlib.suppress(psutil.Error):
                if proc.is_running():
                    proc.kill()
        self.escaped.clear()

    def snapshot(self, now: float) -> dict[str, Any]:
        """The service as `devmesh status --json` shows it."""
        last = self.history[-1] if self.history else None
        return {
            "name": self.name,
            "port": self.port,
            "state": self.state.value,
            "pid": self.pid,
            "restarts": self.restarts,
            "health": None,  # health checks arrive with the health worker
            "exit_code": last.code if last else None,
            "exit_signal": last.signal if last else None,
            "reason": self.reason or None,
            "uptime": round(now - self.started_at, 3) if self.proc is not None else None,
            "started_at": self.started_wall or None,
            "changed_at": self.changed_wall,
            "command": self.config.command,
            "user_stopped": self.user_stopped,
        }

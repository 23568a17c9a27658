"""One service as the supervisor tracks it: config, state, process, exits and the user's intent."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from devmesh.config.model import ServiceConfig
from devmesh.health.policy import Health, HealthTracker
from devmesh.supervisor.policy import Exit
from devmesh.supervisor.procs import Spawned
from devmesh.supervisor.states import ServiceState, check_transition

# States whose service is probed: a run of ours, or one the user runs by hand (external).
PROBED = frozenset({ServiceState.STARTING, ServiceState.RUNNING, ServiceState.EXTERNAL})


@dataclass
class OutputPipe:
    """The read end of one process's stdout+stderr; `open` until EOF."""

    name: str
    fd: int
    open: bool = True


@dataclass
class Service:
    """Runtime record of a service. The supervisor alone changes it, through `to()`."""

    config: ServiceConfig
    port: int
    state: ServiceState = ServiceState.STOPPED
    proc: Spawned | None = None  # while the main process has not been reaped
    pgid: int | None = None  # its process group, until nothing of it is left
    output: OutputPipe | None = None
    instance: str = ""  # DEVMESH_INSTANCE of the current (or last) process
    wanted: bool = False  # should run: part of `up`, or started by the user
    user_stopped: bool = False  # stopped by the user: never restarted on its own
    restart_after_stop: bool = False  # `devmesh restart`: start again once stopped
    removing: bool = False  # gone from the config: forgotten once stopped
    ever_started: bool = False
    started_at: float = 0.0  # monotonic
    started_wall: float = 0.0  # time.time(), for display
    changed_wall: float = field(default_factory=time.time)
    history: list[Exit] = field(default_factory=list)
    restarts: int = 0
    reason: str = ""  # why it is EXITED / FAILED / BACKOFF
    timer_token: int = 0  # bumps on every transition: stale timers see a different token
    by_hand: int | None = None  # `devmesh run`: the pid of that command while it lasts
    adhoc: bool = False  # not in the config: `devmesh run NAME --port N` added it
    health: HealthTracker | None = None  # the verdict on the current run (None: not probed)
    # Where the current run really listens when it is not its $PORT (a command that ignores
    # it), found among its processes' sockets; None: on `port`, or not known.
    listens: tuple[str, int] | None = None
    port_looked_at: float = 0.0  # monotonic: the next look at its processes' sockets
    port_looks: int = 0  # looks that found nothing, this run: each waits twice as long

    def new_health(self, now: float) -> None:
        """A new run: its health is unknown until its probes decide."""
        cfg = self.config
        self.health = HealthTracker(
            cfg.healthy_threshold,
            cfg.unhealthy_threshold,
            cfg.start_period,
            now,
            readiness=cfg.health is None,
        )

    @property
    def healthy(self) -> bool:
        """Whether the current run is up and its probes say healthy."""
        h = self.health
        return h is not None and h.status is Health.HEALTHY and self.state in PROBED

    @property
    def address(self) -> tuple[str, int]:
        """Where the proxy and the probes reach this node's copy."""
        return self.listens or ("127.0.0.1", self.port)

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

    def _health_snapshot(self, now: float) -> dict[str, Any] | None:
        h = self.health
        if h is None or self.state not in PROBED:
            return None
        wall = time.time()
        return {
            "status": h.status.value,
            "check": self.config.health.kind if self.config.health else "port",
            "last_ok": h.last_ok,
            "detail": h.last_detail or None,
            "latency_ms": None if h.last_latency is None else round(h.last_latency * 1000, 2),
            "checked_at": None if h.last_at is None else wall - (now - h.last_at),
            "changed_at": None if h.changed_at is None else wall - (now - h.changed_at),
        }

    def snapshot(self, now: float) -> dict[str, Any]:
        """The service as `devmesh status --json` shows it."""
        last = self.history[-1] if self.history else None
        return {
            "name": self.name,
            "port": self.port,
            "state": self.state.value,
            "pid": self.pid,
            "restarts": self.restarts,
            "health": self._health_snapshot(now),
            "exit_code": last.code if last else None,
            "exit_signal": last.signal if last else None,
            "reason": self.reason or None,
            "uptime": round(now - self.started_at, 3) if self.proc is not None else None,
            "started_at": self.started_wall or None,
            "changed_at": self.changed_wall,
            "command": self.config.command,
            "version": self.config.version,
            "user_stopped": self.user_stopped,
            "stop_timeout": self.config.stop_timeout,
            "start_secs": self.config.start_secs,
            "by_hand": self.by_hand,
            "listen_port": self.listens[1] if self.listens else None,
            "declared": not self.adhoc,
        }

"""Every message between the parent supervisor and its workers: small frozen dataclasses.

They cross a `multiprocessing` pipe (pickled). `PROTOCOL` changes whenever a field does, and a
worker that reads a `Configure` of another version exits instead of guessing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from devmesh.proxy.table import RouteTable

PROTOCOL = 7


# ---- worker -> parent ----


@dataclass(frozen=True)
class Ready:
    """The worker finished starting and serves."""

    worker: str
    pid: int
    kind: Literal["ready"] = "ready"


@dataclass(frozen=True)
class Heartbeat:
    """Sent from the worker's event loop, so a blocked loop goes silent and is restarted."""

    worker: str
    kind: Literal["heartbeat"] = "heartbeat"


@dataclass(frozen=True)
class ControlRequest:
    """A CLI or dashboard action for the parent: status, start, stop, restart, shutdown."""

    id: int
    action: str
    args: dict[str, Any] = field(default_factory=dict)
    kind: Literal["control_request"] = "control_request"


@dataclass(frozen=True)
class PeersUpdate:
    """The discovery worker's peers (as `devmesh peers --json` shows them) and its counters."""

    peers: tuple[dict[str, Any], ...]
    stats: dict[str, Any]
    kind: Literal["peers_update"] = "peers_update"


@dataclass(frozen=True)
class ProxyStats:
    """A proxy worker's counters, sent every second (the parent sums them up per node)."""

    worker: str
    refused: int  # requests refused by the LAN policy (403)
    kind: Literal["proxy_stats"] = "proxy_stats"


@dataclass(frozen=True)
class RequestLines:
    """A proxy worker's request lines of the last moment (`[log] requests` = stdout or
    service), whole lines joined per service: one message per batch, never one per line."""

    lines: tuple[tuple[str, bytes], ...]  # (service, lines); service "" matched none
    kind: Literal["request_lines"] = "request_lines"


@dataclass(frozen=True)
class HealthResult:
    """One probe result from the health worker, for one run (`generation`) of a service."""

    service: str
    generation: str
    ok: bool
    detail: str
    latency: float  # seconds
    kind: Literal["health_result"] = "health_result"


@dataclass(frozen=True)
class FilesChanged:
    """A burst of changes to files a service watches, once it is over (the watch worker):
    the first changed path (relative to the service's cwd) and how many paths in all."""

    service: str
    first: str
    count: int
    kind: Literal["files_changed"] = "files_changed"


@dataclass(frozen=True)
class Watching:
    """The watch worker applied a plan: from now on a change to these services' files is
    seen (`dirs` directories are watched); `problems` say what could not be watched."""

    services: tuple[str, ...]
    dirs: int
    problems: tuple[str, ...] = ()
    kind: Literal["watching"] = "watching"


# ---- parent -> worker ----


@dataclass(frozen=True)
class Configure:
    """The first message a worker gets: who it is and the settings it needs."""

    worker: str
    protocol: int
    project: str
    settings: dict[str, Any] = field(default_factory=dict)
    kind: Literal["configure"] = "configure"


@dataclass(frozen=True)
class ControlReply:
    """The parent's answer to a `ControlRequest` with the same id."""

    id: int
    ok: bool
    data: Any = None
    error: str = ""
    status: int = 200  # the HTTP status the control API answers with
    kind: Literal["control_reply"] = "control_reply"


@dataclass(frozen=True)
class RoutesUpdate:
    """A new route table for the proxy workers (sent on start and on every change)."""

    table: RouteTable
    kind: Literal["routes_update"] = "routes_update"


@dataclass(frozen=True)
class Announce:
    """What the discovery worker announces about this node's services (sent on every change)."""

    services: tuple[dict[str, Any], ...]  # ServiceInfo fields
    proxy_port: int
    kind: Literal["announce"] = "announce"


@dataclass(frozen=True)
class ProbeTarget:
    """What the health worker probes for one run of a service, and how often."""

    service: str
    generation: str  # changes with every start: results of an older run are dropped
    check: str  # http | tcp | cmd
    target: str  # URL, host:port or command ($PORT expanded)
    interval: float
    timeout: float
    cwd: str
    # Probed every FAST seconds whenever it does not answer, not only before its first answer:
    # a service the user runs by hand, which may start (or stop) at any moment.
    eager: bool = False


@dataclass(frozen=True)
class HealthPlan:
    """Every probe the health worker should run now (the rest stop)."""

    targets: tuple[ProbeTarget, ...]
    kind: Literal["health_plan"] = "health_plan"


@dataclass(frozen=True)
class WatchTarget:
    """What the watch worker watches for one service: its `watch` and `watch_ignore`
    entries, relative to its `cwd`."""

    service: str
    cwd: str
    watch: tuple[str, ...]
    ignore: tuple[str, ...]


@dataclass(frozen=True)
class WatchPlan:
    """Every service the watch worker should watch now (the rest are no longer watched)."""

    targets: tuple[WatchTarget, ...]
    kind: Literal["watch_plan"] = "watch_plan"


@dataclass(frozen=True)
class StateUpdate:
    """The node as `devmesh status`, `peers` and `status --routes` show it, for the control
    worker (dashboard, `/metrics`): sent on every change, and once a second."""

    status: dict[str, Any]
    peers: dict[str, Any]
    routes: dict[str, Any]
    probes: dict[str, Any]  # health probe counts and latencies (`metrics.ProbeStats`)
    kind: Literal["state_update"] = "state_update"


@dataclass(frozen=True)
class LogLevel:
    """`[log] level` changed by a reload: the worker's own logging follows at once."""

    level: str
    kind: Literal["log_level"] = "log_level"


@dataclass(frozen=True)
class Leave:
    """The node is shutting down: say goodbye now (peers stop routing here at once)."""

    kind: Literal["leave"] = "leave"


@dataclass(frozen=True)
class Stop:
    """Finish what is in flight and exit."""

    kind: Literal["stop"] = "stop"


WorkerMessage = (
    Ready
    | Heartbeat
    | ControlRequest
    | PeersUpdate
    | ProxyStats
    | RequestLines
    | HealthResult
    | FilesChanged
    | Watching
)
ParentMessage = (
    Configure
    | ControlReply
    | RoutesUpdate
    | Announce
    | HealthPlan
    | WatchPlan
    | StateUpdate
    | LogLevel
    | Leave
    | Stop
)

"""The resolved configuration of a project.

Frozen dataclasses: the only shape of the config that the rest of devmesh sees.

`devmesh.config.load` turns `devmesh.toml` (or a `Procfile` + `.env`) into a `Config`; every
default lives here so that `devmesh check` and the supervisor agree on them.
"""

from __future__ import annotations

import enum
import signal
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path


class RestartPolicy(enum.StrEnum):
    """When a service that exited on its own is started again."""

    ALWAYS = "always"
    ON_FAILURE = "on-failure"
    NO = "no"


class DependCondition(enum.StrEnum):
    """What a dependency must reach before its dependent starts."""

    STARTED = "started"
    HEALTHY = "healthy"
    COMPLETED = "completed"


class LanAccess(enum.StrEnum):
    """Who on the LAN may use this node's proxy."""

    PEERS = "peers"
    ANY = "any"
    NONE = "none"


class HostHeader(enum.StrEnum):
    """Which Host header the proxy sends to a service (issue 3 gives it behaviour)."""

    CANONICAL = "canonical"  # <name>.localhost:<proxy port>
    KEEP = "keep"  # what the client sent
    # any other value of `host_header` is a fixed Host value, kept as is


class ConfigSource(enum.StrEnum):
    """Where the services came from."""

    TOML = "devmesh.toml"
    PROCFILE = "Procfile"


@dataclass(frozen=True)
class HealthCheck:
    """A parsed `health` value: `http://...`, `tcp://host:port` or `cmd:...`."""

    kind: str  # "http" | "tcp" | "cmd"
    target: str  # the URL, "host:port", or the shell command


@dataclass(frozen=True)
class MeshConfig:
    """`[mesh]`: which mesh this node belongs to."""

    namespace: str = "auto"
    secret: str = ""
    secret_file: Path | None = None


@dataclass(frozen=True)
class ProxyConfig:
    """`[proxy]`: the local reverse proxy."""

    port: int = 8080
    workers: int = 1
    lan_access: LanAccess = LanAccess.PEERS
    retries: int = 2
    tls: bool = False
    cert: Path | None = None
    key: Path | None = None
    ca: Path | None = None
    version_strict: bool = False


@dataclass(frozen=True)
class DiscoveryConfig:
    """`[discovery]`: how this node finds its peers."""

    port: int = 35555
    broadcast_addr: str = "255.255.255.255"
    interval: float = 2.0  # seconds
    ipv6: bool = True
    peers: tuple[str, ...] = ()
    enabled: bool = True


@dataclass(frozen=True)
class DashboardConfig:
    """`[dashboard]`: the dashboard, the HTTP control API and `/metrics`, on loopback."""

    enabled: bool = True
    # None: 8081, or the next free port when that one is taken; a port given is used or fails.
    port: int | None = None


@dataclass(frozen=True)
class TracingConfig:
    """`[tracing]`: OpenTelemetry export of the proxy's spans (needs `devmesh[otel]`)."""

    otlp_endpoint: str = ""  # "" = off; e.g. "http://127.0.0.1:4318"
    otlp_headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class LogConfig:
    """`[log]`: devmesh's own logging, request logs and the per-service log files."""

    level: str = "info"  # debug | info | warning | error
    format: str = "text"  # text | json: how request lines are written
    requests: str = "off"  # off | stdout | service | a file path (request lines)
    max_size: int = 10 * 1024 * 1024  # bytes per service log file before rotation ("10MB")
    backups: int = 3  # rotated files kept per service


@dataclass(frozen=True)
class ServiceConfig:
    """`[services.NAME]` (or one Procfile line), with every default applied."""

    name: str
    command: str | None = None  # None: an external process announced with `devmesh run`
    port: int | None = None  # None: a free port is allocated at start and passed as $PORT
    version: str | None = None
    cwd: Path = Path(".")  # absolute after loading
    env: Mapping[str, str] = field(default_factory=dict)
    restart: RestartPolicy = RestartPolicy.ON_FAILURE
    depends_on: Mapping[str, DependCondition] = field(default_factory=dict)
    health: HealthCheck | None = None
    health_interval: float = 5.0
    health_timeout: float = 2.0
    healthy_threshold: int = 1
    unhealthy_threshold: int = 3
    start_period: float = 0.0
    restart_on_unhealthy: bool = False
    routes: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()
    host_header: str = HostHeader.CANONICAL.value  # "canonical" | "keep" | a fixed Host value
    watch: tuple[str, ...] = ()  # paths and globs relative to cwd: a change restarts it
    watch_ignore: tuple[str, ...] = ()  # globs (relative to cwd) or names never watched
    watch_restart_dependents: bool = False  # a watch restart restarts its dependents too
    stop_signal: signal.Signals = signal.SIGTERM
    stop_timeout: float = 10.0
    start_secs: float = 1.0  # alive this long after start = RUNNING (supervisord's startsecs)
    max_restarts: int = 5  # consecutive quick crashes before FAILED (supervisord's startretries)
    backoff: float = 0.5  # first restart delay; doubles per quick crash, capped at 30 s
    line: int | None = None  # where it is defined, for messages


@dataclass(frozen=True)
class Config:
    """A whole project: where it lives, its mesh settings and its services in file order."""

    path: Path  # the devmesh.toml or Procfile that was read (absolute)
    root: Path  # the project directory (absolute)
    source: ConfigSource
    services: Mapping[str, ServiceConfig]
    mesh: MeshConfig = MeshConfig()
    proxy: ProxyConfig = ProxyConfig()
    discovery: DiscoveryConfig = DiscoveryConfig()
    log: LogConfig = LogConfig()
    dashboard: DashboardConfig = DashboardConfig()
    tracing: TracingConfig = TracingConfig()
    env_file: Path | None = None  # the .env that was read, if any
    dotenv: Mapping[str, str] = field(default_factory=dict)  # its values, given to every service
    # What `devmesh check` and `devmesh up` warn about (keys that do nothing yet, ...).
    warnings: tuple[ConfigIssue, ...] = ()

    @property
    def name(self) -> str:
        """The project's short name (its directory's name)."""
        return self.root.name or "project"


@dataclass(frozen=True)
class ConfigIssue:
    """One mistake in a config file: where it is, what is wrong, and what to do."""

    file: Path
    line: int | None
    key: str  # dotted, e.g. "services.api.port"; "" for a syntax error
    message: str  # e.g. "70000 is not a port (1-65535)"
    fix: str = ""  # e.g. "use a port between 1 and 65535"

    def __str__(self) -> str:
        where = f"{self.file.name}:{self.line}" if self.line else self.file.name
        text = f"{where}: {self.key}: {self.message}" if self.key else f"{where}: {self.message}"
        return f"{text}; {self.fix}" if self.fix else text


class ConfigError(Exception):
    """Raised by `load`: one or more `ConfigIssue`s, each printed on its own line."""

    def __init__(self, issues: list[ConfigIssue]) -> None:
        super().__init__("\n".join(str(i) for i in issues))
        self.issues = issues

"""The route table the parent pushes to every proxy worker: what each name leads to, right now.

Built by the parent from the services' state (`devmesh.supervisor.routes`); the proxy only
reads it. Numbered, so a worker can tell an old table from a new one.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Upstream:
    """Where a service accepts connections."""

    host: str
    port: int


@dataclass(frozen=True)
class ServiceRoute:
    """One service as the proxy sees it."""

    name: str
    upstream: Upstream | None  # None: no address to try (stopped, failed, not started)
    state: str  # as peers see it: running (healthy), starting, backoff, ..., external
    restarts: int = 0
    reason: str = ""  # why it is down, as `devmesh status` shows it
    aliases: tuple[str, ...] = ()  # more host names (lowercase, no port)
    routes: tuple[str, ...] = ()  # path prefixes: "/api/*" or "/api"
    host_header: str = "canonical"  # "canonical" | "keep" | a fixed Host value
    last_lines: tuple[str, ...] = ()  # the end of its log, for the 503 page
    version: str | None = None
    port: int = 0  # where this node's own copy listens (or would)

    @property
    def starting(self) -> bool:
        """A state in which it will (probably) accept connections soon: 503 with Retry-After."""
        return self.state in ("starting", "backoff")


@dataclass(frozen=True)
class PeerService:
    """A service as a peer announced it."""

    name: str
    state: str
    version: str | None = None


@dataclass(frozen=True)
class PeerRoute:
    """Another node of the namespace: its proxy serves its services to us."""

    node: str
    name: str  # host/project, for pages and `devmesh status --routes`
    address: str  # its IP (a link-local IPv6 one with %scope)
    proxy_port: int
    services: tuple[PeerService, ...] = ()
    rtt_ms: int | None = None  # the measured round trip, whole milliseconds (None: unknown)
    stale: bool = False  # its announcements stopped coming (not yet gone): tried last
    interval: float = 1.0  # how often it announces (bounds the wait when it refuses us)


@dataclass(frozen=True)
class RouteTable:
    """Every service of this node, in config order, the proxy's own port, and the peers of the
    namespace (whose proxies serve what is not running here)."""

    version: int
    proxy_port: int
    services: tuple[ServiceRoute, ...] = ()
    peers: tuple[PeerRoute, ...] = ()
    node: str = ""  # this node's id: a request forwarded with it has looped
    version_strict: bool = False  # a peer whose version differs from ours is not used
    pins: tuple[tuple[str, str], ...] = ()  # (service, peer node): `devmesh route --peer`

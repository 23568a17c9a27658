"""Which service a request is for: by the longest path route, else by its Host header.

Pure: a `Router` is built once per route table and answers `resolve(host, path)` for every
request, so all the work (names, prefixes, the Host line each service gets) is done here,
at table-swap time, and a lookup is one or two dict gets in the common case.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import httptools

from devmesh.proxy.table import PeerRoute, RouteTable, ServiceRoute

LOCALHOST_SUFFIX = ".localhost"
# Lookups by raw Host bytes are cached; a client inventing a new Host per request must not
# grow the cache without bound, so it is dropped when full (rebuilt from the hot names).
HOST_CACHE_SIZE = 1024


HOP_HEADER = b"X-DevMesh-Hop"
# Peer states whose proxies are asked for a service (a peer announces a service it runs by hand
# as `running` only while it answers there, else `external`).
SERVING = frozenset(("running",))


@dataclass(frozen=True)
class Candidate:
    """One place a service can be reached: this node's own process, or a peer's proxy."""

    key: tuple[str, int]  # the pool key: address and port
    peer: str = ""  # the peer's node id; "" for this node's own service
    peer_name: str = ""
    # A response header line when the peer runs another version than this node declares.
    warning: bytes = b""
    # The peer's discovery interval: how long a request it refuses may wait for it to know us.
    interval: float = 1.0


@dataclass(frozen=True, eq=False)
class Target:
    """A service as the data path needs it, precomputed when the table is installed."""

    route: ServiceRoute
    proxy_port: int
    # The Host line sent to the first candidate (with the hop header when it is a peer);
    # None: the client's Host is kept.
    host_line: bytes | None
    url: str  # http://<name>.localhost:<port>/, for pages
    key: tuple[str, int] | None = field(default=None)  # the first candidate; None: nowhere
    # Where the service can be reached, best first: the rest are tried when one fails.
    candidates: tuple[Candidate, ...] = ()
    # The same service served by this node's own process only (what a peer's request gets);
    # None when it has none that may serve.
    here: Target | None = None
    # The Host line for this node's own process (None: the client's is kept), and the one
    # (with the hop header) for a peer's proxy.
    own_line: bytes | None = None
    peer_lines: dict[str, bytes] = field(default_factory=dict)
    # Peers left out because they run another version (`version_strict`): for the error page.
    mismatched: tuple[str, ...] = ()
    # Peers that have the service but cannot serve it now (`bob (10.0.0.2): starting`).
    idle_peers: tuple[str, ...] = ()
    # Served by one of several peers, none pinned: a client sticks to the one it had.
    remote_choice: bool = False

    def led_by(self, peer: str) -> Target:
        """This target with `peer`'s candidate first (the others keep their order)."""
        first = next(c for c in self.candidates if c.peer == peer)
        return self.reordered((first, *(c for c in self.candidates if c is not first)))

    def reordered(self, candidates: tuple[Candidate, ...]) -> Target:
        """This target with its candidates in another order."""
        first = candidates[0]
        return replace(self, host_line=self.line_for(first), key=first.key, candidates=candidates)

    @property
    def warning(self) -> bytes:
        """The version warning of the first candidate (usually none)."""
        return self.candidates[0].warning if self.candidates else b""

    def line_for(self, candidate: Candidate) -> bytes | None:
        """The Host line (and hop header) a request for `candidate` carries."""
        return self.peer_lines[candidate.peer] if candidate.peer else self.own_line

    @property
    def name(self) -> str:
        """The service's name."""
        return self.route.name


def normalize_host(host: str) -> str:
    """`API.localhost.:8080` -> `api.localhost`: lowercase, no port, no trailing dot."""
    host = host.strip().lower()
    if host.startswith("["):
        # An IPv6 literal: the port (if any) follows the bracket.
        end = host.find("]")
        return host[: end + 1] if end != -1 else host
    name, colon, port = host.rpartition(":")
    if colon and port.isdigit():
        host = name
    elif colon and not port:
        host = name  # "api:" (empty port) is still "api"
    return host.rstrip(".")


def service_name(host: str) -> str:
    """The name a Host asks for: `api.localhost:8080` and `API` both give `api`."""
    host = normalize_host(host)
    if host.endswith(LOCALHOST_SUFFIX):
        return host[: -len(LOCALHOST_SUFFIX)]
    return host


def route_prefix(pattern: str) -> str:
    """A path route as a prefix without its trailing slash: `/api/*`, `/api/`, `/api` -> `/api`.

    `/` and `/*` become `` (the empty prefix), which matches every path.
    """
    if pattern.endswith("*"):
        pattern = pattern[:-1]
    pattern = pattern.rstrip("/")
    if pattern and not pattern.startswith("/"):
        pattern = "/" + pattern
    return pattern


def prefix_matches(path: bytes, prefix: bytes) -> bool:
    """True if `path` is `prefix` or lies under it on a segment boundary (`/api` ~ `/api/x`)."""
    if not path.startswith(prefix):
        return False
    n = len(prefix)
    return len(path) == n or path[n] in b"/?"


def retarget(head: bytes, old: bytes | None, new: bytes | None) -> bytes:
    """A request head built for one candidate, for another: the Host line (and hop header)
    that follows the request line is swapped. `None` is the client's own Host line."""
    start = head.index(b"\r\n") + 2
    if old is None:
        end = head.index(b"\r\n", start) + 2 if head.startswith(b"Host:", start) else start
    else:
        end = start + len(old)
    if new is None:
        return head if old is None else head[:start] + head[end:]
    return head[:start] + new + head[end:]


def request_path(target: bytes) -> bytes:
    """The path of a request-target (origin form): `/a/b?q` -> `/a/b`."""
    end = target.find(b"?")
    return target if end == -1 else target[:end]


def absolute_form(url: bytes, host: bytes) -> tuple[bytes, bytes]:
    """`GET http://api:8080/x?q`: the URL's authority is the host (RFC 9112 §3.2.2), and the
    backend gets the origin form (`/x?q`). Anything else (`*`, unparsable) is left alone."""
    if url == b"*":
        return url, host
    try:
        parsed = httptools.parse_url(url)
    except httptools.HttpParserInvalidURLError:
        return url, host
    if parsed.host:
        host = parsed.host if parsed.port is None else b"%s:%d" % (parsed.host, parsed.port)
    path = parsed.path or b"/"
    if parsed.query:
        path += b"?" + parsed.query
    return path, host


class Router:
    """Host and path lookup over one `RouteTable`."""

    def __init__(self, table: RouteTable) -> None:
        self.table = table
        self.proxy_port = table.proxy_port
        self.hop_line = HOP_HEADER + b": " + table.node.encode("latin-1") + b"\r\n"
        self._pins = dict(table.pins)
        # Peer addresses (without an IPv6 scope): the clients `lan_access = "peers"` admits.
        self.peer_ips = frozenset(p.address.partition("%")[0] for p in table.peers)
        local = {s.name for s in table.services}
        remote_only = sorted(
            {s.name for p in table.peers for s in p.services if s.name not in local}
        )
        routes = [
            *table.services,
            *(ServiceRoute(name=n, upstream=None, state="remote") for n in remote_only),
        ]
        self.targets: list[Target] = [self._target(s, table.peers) for s in routes]
        # Where peers' proxies listen: a pool to one of them holds small answers whole.
        self.peer_keys = frozenset(c.key for t in self.targets for c in t.candidates if c.peer)
        # Names first, then aliases: a service's own name beats another's alias.
        self._by_name: dict[str, Target] = {}
        for t in self.targets:
            self._by_name.setdefault(t.name.lower(), t)
        for t in self.targets:
            for alias in t.route.aliases:
                self._by_name.setdefault(service_name(alias), t)
                self._by_name.setdefault(normalize_host(alias), t)
        prefixes: list[tuple[bytes, Target]] = []
        seen: set[bytes] = set()
        for t in self.targets:
            for pattern in t.route.routes:
                p = route_prefix(pattern).encode("latin-1")
                if p not in seen:  # the first service to claim a prefix keeps it
                    seen.add(p)
                    prefixes.append((p, t))
        # Longest first, so the first match is the longest.
        self._prefixes = sorted(prefixes, key=lambda item: -len(item[0]))
        self._host_cache: dict[bytes, Target | None] = {}
        # The same cache when no path route can override the Host (else empty): what the
        # data path tries first.
        self.host_only: dict[bytes, Target | None] = {} if self._prefixes else self._host_cache

    def _target(self, route: ServiceRoute, peers: tuple[PeerRoute, ...]) -> Target:
        port = self.proxy_port
        if route.host_header == "keep":
            host_line = None
        elif route.host_header == "canonical":
            host_line = f"Host: {route.name}.localhost:{port}\r\n".encode("latin-1")
        else:
            host_line = f"Host: {route.host_header}\r\n".encode("latin-1")
        up = route.upstream
        local_key = (up.host, up.port) if up is not None else None
        strict = self.table.version_strict
        pin = self._pins.get(route.name, "")
        candidates, mismatched = self._candidates(route, local_key, peers, strict, pin)
        idle = tuple(
            f"{p.name} ({p.address}): {s.state}"
            for p in peers
            for s in p.services
            if s.name == route.name and s.state not in SERVING
        )
        # A peer's proxy routes by the name and rewrites the Host for its own service.
        peer_lines = {
            c.peer: f"Host: {route.name}.localhost:{c.key[1]}\r\n".encode("latin-1") + self.hop_line
            for c in candidates
            if c.peer
        }
        url = f"http://{route.name}.localhost:{port}/"
        here = None
        if local_key is not None:
            own = (Candidate(local_key),)
            here = Target(route, port, host_line, url, local_key, own, None, host_line)
        first = candidates[0] if candidates else None
        return Target(
            route,
            port,
            peer_lines[first.peer] if first is not None and first.peer else host_line,
            url,
            first.key if first is not None else None,
            candidates,
            here,
            host_line,
            peer_lines,
            mismatched,
            idle,
            remote_choice=(
                first is not None
                and bool(first.peer)
                and first.peer != pin
                and sum(1 for c in candidates if c.peer) > 1
            ),
        )

    @staticmethod
    def _candidates(
        route: ServiceRoute,
        local_key: tuple[str, int] | None,
        peers: tuple[PeerRoute, ...],
        strict: bool,
        pin: str = "",
    ) -> tuple[tuple[Candidate, ...], tuple[str, ...]]:
        """Where `route` can be served, best first: a pinned peer (`devmesh route`), then
        this node's own process when it runs, then the peers that run it, fresh before stale,
        nearest first (measured round trip; then by node id, so every worker agrees), then
        this node's process if it is starting; and the peers left out for running another
        version than this node declares (strict)."""
        remote: list[Candidate] = []
        mismatched: list[str] = []
        ours = route.version

        def order(p: PeerRoute) -> tuple[bool, bool, bool, int, str]:
            return (p.node != pin, p.stale, p.rtt_ms is None, p.rtt_ms or 0, p.node)

        for p in sorted(peers, key=order):
            for s in p.services:
                if s.name != route.name or s.state not in SERVING:
                    continue
                warning = b""
                if ours is not None and s.version != ours:
                    theirs = s.version or "none"
                    if strict:
                        mismatched.append(
                            f"{p.name} ({p.address}) runs {route.name} {theirs}, "
                            f"this node declares {ours} (version_strict)"
                        )
                        continue
                    warning = (
                        f"X-DevMesh-Version-Warning: {route.name} {theirs} from {p.name}, "
                        f"{ours} declared here\r\n"
                    ).encode("latin-1", "replace")
                remote.append(
                    Candidate((p.address, p.proxy_port), p.node, p.name, warning, p.interval)
                )
        pinned = remote[:1] if remote and remote[0].peer == pin else []
        rest = remote[len(pinned) :]
        if local_key is None:
            return tuple(remote), tuple(mismatched)
        local = Candidate(local_key)
        if route.state in SERVING:
            return (*pinned, local, *rest), tuple(mismatched)
        return (*remote, local), tuple(mismatched)

    @property
    def has_path_routes(self) -> bool:
        """Whether any service claims a path (if not, the path is never looked at)."""
        return bool(self._prefixes)

    def by_host(self, host: bytes) -> Target | None:
        """The service a Host header value names, or None."""
        cache = self._host_cache
        try:
            return cache[host]
        except KeyError:
            pass
        text = host.decode("latin-1")
        target = self._by_name.get(service_name(text)) or self._by_name.get(normalize_host(text))
        if len(cache) >= HOST_CACHE_SIZE:
            cache.clear()
        cache[host] = target
        return target

    def by_path(self, path: bytes) -> Target | None:
        """The service whose path route is the longest prefix of `path`, or None."""
        for prefix, target in self._prefixes:
            if prefix_matches(path, prefix):
                return target
        return None

    def resolve(self, host: bytes, target: bytes) -> Target | None:
        """The service for a request: longest path route across all services, else the Host."""
        if self._prefixes:
            found = self.by_path(request_path(target))
            if found is not None:
                return found
        try:
            return self._host_cache[host]  # the usual case, without a call
        except KeyError:
            return self.by_host(host)

    def get(self, name: str) -> Target | None:
        """A service by name (case-insensitive)."""
        return self._by_name.get(name.lower())

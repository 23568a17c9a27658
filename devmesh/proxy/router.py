"""Which service a request is for: by the longest path route, else by its Host header.

Pure: a `Router` is built once per route table and answers `resolve(host, path)` for every
request, so all the work (names, prefixes, the Host line each service gets) is done here,
at table-swap time, and a lookup is one or two dict gets in the common case.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import httptools

from devmesh.proxy.table import RouteTable, ServiceRoute

LOCALHOST_SUFFIX = ".localhost"
# Lookups by raw Host bytes are cached; a client inventing a new Host per request must not
# grow the cache without bound, so it is dropped when full (rebuilt from the hot names).
HOST_CACHE_SIZE = 1024


@dataclass(frozen=True, eq=False)
class Target:
    """A service as the data path needs it, precomputed when the table is installed."""

    route: ServiceRoute
    proxy_port: int
    # The Host line sent to the backend; None: the client's Host is kept.
    host_line: bytes | None
    url: str  # http://<name>.localhost:<port>/, for pages
    key: tuple[str, int] | None = field(default=None)  # the pool key; None: no upstream

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
        self.targets: list[Target] = [self._target(s) for s in table.services]
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

    def _target(self, route: ServiceRoute) -> Target:
        port = self.proxy_port
        if route.host_header == "keep":
            host_line = None
        elif route.host_header == "canonical":
            host_line = f"Host: {route.name}.localhost:{port}\r\n".encode("latin-1")
        else:
            host_line = f"Host: {route.host_header}\r\n".encode("latin-1")
        up = route.upstream
        key = (up.host, up.port) if up is not None else None
        return Target(route, port, host_line, f"http://{route.name}.localhost:{port}/", key)

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

"""The route table the proxy workers serve from, derived from the services' state."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from devmesh.proxy.table import PeerRoute, PeerService, RouteTable, ServiceRoute, Upstream
from devmesh.supervisor.service import Service
from devmesh.supervisor.states import ServiceState

S = ServiceState
# A process exists that may accept connections; the proxy learns the rest by trying.
ROUTABLE = frozenset({S.STARTING, S.RUNNING})
TAIL_LINES = 10


def service_route(svc: Service, tail: Callable[[str, int], list[str]]) -> ServiceRoute:
    """What the proxy needs to know about one service."""
    cfg = svc.config
    external = cfg.command is None
    routable = external or svc.state in ROUTABLE
    return ServiceRoute(
        name=svc.name,
        upstream=Upstream("127.0.0.1", svc.port) if routable else None,
        state="external" if external else svc.state.value,
        restarts=svc.restarts,
        reason=svc.reason,
        aliases=tuple(a.lower() for a in cfg.aliases),
        routes=cfg.routes,
        host_header=cfg.host_header,
        last_lines=() if external or svc.state is S.RUNNING else tuple(tail(svc.name, TAIL_LINES)),
        version=cfg.version,
    )


def peer_routes(peers: Iterable[dict[str, Any]]) -> tuple[PeerRoute, ...]:
    """The peers as the proxy needs them, from the discovery worker's report."""
    return tuple(
        PeerRoute(
            node=p["node"],
            name=p["name"],
            address=p["address"],
            proxy_port=p["proxy_port"],
            services=tuple(
                PeerService(s["name"], s["state"], s.get("version")) for s in p["services"]
            ),
        )
        for p in peers
    )


def build_table(
    version: int,
    proxy_port: int,
    services: Iterable[Service],
    tail: Callable[[str, int], list[str]],
    peers: tuple[PeerRoute, ...] = (),
    node: str = "",
    version_strict: bool = False,
) -> RouteTable:
    """The whole table, in config order, with the peers of the namespace."""
    return RouteTable(
        version=version,
        proxy_port=proxy_port,
        services=tuple(service_route(s, tail) for s in services),
        peers=peers,
        node=node,
        version_strict=version_strict,
    )


def version_mismatches(table: RouteTable) -> list[str]:
    """One line per peer service whose version differs from what this node declares."""
    ours = {s.name: s.version for s in table.services if s.version is not None}
    return [
        f"{s.name} is {s.version or 'unversioned'} on {p.name} ({p.address}), "
        f"{ours[s.name]} here"
        + ("; not used (version_strict)" if table.version_strict else "; used with a warning")
        for p in table.peers
        for s in p.services
        if s.name in ours and s.version != ours[s.name]
    ]


def url(name: str, proxy_port: int) -> str:
    """The stable URL of a service through the proxy."""
    return f"http://{name}.localhost:{proxy_port}/"

"""The route table the proxy workers serve from, derived from the services' state."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from devmesh.proxy.table import RouteTable, ServiceRoute, Upstream
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


def build_table(
    version: int,
    proxy_port: int,
    services: Iterable[Service],
    tail: Callable[[str, int], list[str]],
) -> RouteTable:
    """The whole table, in config order."""
    return RouteTable(
        version=version,
        proxy_port=proxy_port,
        services=tuple(service_route(s, tail) for s in services),
    )


def url(name: str, proxy_port: int) -> str:
    """The stable URL of a service through the proxy."""
    return f"http://{name}.localhost:{proxy_port}/"

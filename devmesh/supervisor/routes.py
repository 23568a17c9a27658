"""The route table the proxy workers serve from, derived from the services' state."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from devmesh.proxy.router import Candidate, Router
from devmesh.proxy.table import PeerRoute, PeerService, RouteTable, ServiceRoute, Upstream
from devmesh.supervisor.service import PROBED, Service
from devmesh.supervisor.states import ServiceState

S = ServiceState
# A process exists that may accept connections; the proxy learns the rest by trying.
ROUTABLE = frozenset({S.STARTING, S.RUNNING})
TAIL_LINES = 10
RTT_STEP = 5  # ms: peers nearer to each other than this count as equally near


def public_state(svc: Service) -> str:
    """The state the proxy and peers see: `running` only once healthy; a service the user runs
    by hand (external) is `running` while it answers on its port, else `external`."""
    if svc.state is S.EXTERNAL:
        return "running" if svc.healthy else "external"
    if svc.state in ROUTABLE and not svc.healthy:
        h = svc.health
        return "unhealthy" if h is not None and h.status.value == "unhealthy" else "starting"
    return svc.state.value


def routable(svc: Service) -> bool:
    """Whether the proxy sends this node's own copy traffic: a run its probes call healthy, or
    a service run by hand while it answers."""
    return svc.state in PROBED and svc.healthy


def not_answering(svc: Service) -> str:
    """Why an external service gets no traffic here: what its probes found."""
    h = svc.health
    if svc.config.health is not None and h is not None and h.last_ok is False:
        return f"run by hand on port {svc.port}: health check failed ({h.last_detail})"
    return f"nothing listens on port {svc.port} here (it is run by hand)"


def status_reason(svc: Service) -> str:
    """What `devmesh status` says of a service beyond its own reason ('' for nothing): an
    external one is served here or why not; a run listens on another port than its $PORT."""
    if svc.state is S.EXTERNAL:
        if routable(svc):
            return f"run by hand: answers on port {svc.port}, served here"
        return not_answering(svc)
    if svc.listens is not None and not svc.reason:
        return f"listens on port {svc.listens[1]}, not on its $PORT {svc.port}"
    return ""


def service_route(svc: Service, tail: Callable[[str, int], list[str]]) -> ServiceRoute:
    """What the proxy needs to know about one service."""
    cfg = svc.config
    up = routable(svc)
    external = svc.state is S.EXTERNAL
    quiet = external or svc.state is S.RUNNING or cfg.command is None
    return ServiceRoute(
        name=svc.name,
        upstream=Upstream(*svc.address) if up else None,
        state=public_state(svc),
        restarts=svc.restarts,
        reason=not_answering(svc) if external and not up else svc.reason,
        aliases=tuple(a.lower() for a in cfg.aliases),
        routes=cfg.routes,
        host_header=cfg.host_header,
        last_lines=() if quiet else tuple(tail(svc.name, TAIL_LINES)),
        version=cfg.version,
        port=svc.port,
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
            # In steps of RTT_STEP ms: a LAN's jitter must not rebuild the routes every interval.
            rtt_ms=None if p.get("rtt_ms") is None else int(p["rtt_ms"] // RTT_STEP) * RTT_STEP,
            stale=bool(p.get("stale")),
            interval=float(p.get("interval", 1.0)),
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
    pins: tuple[tuple[str, str], ...] = (),
) -> RouteTable:
    """The whole table, in config order, with the peers of the namespace."""
    return RouteTable(
        version=version,
        proxy_port=proxy_port,
        services=tuple(service_route(s, tail) for s in services),
        peers=peers,
        node=node,
        version_strict=version_strict,
        pins=pins,
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


def describe_routes(table: RouteTable) -> list[dict[str, Any]]:
    """For every name the proxy serves: where a request goes first, the other candidates,
    and why (what `devmesh status --routes` and `devmesh graph` show)."""
    router = Router(table)
    peers = {p.node: p for p in table.peers}
    pins = dict(table.pins)
    out: list[dict[str, Any]] = []
    for target in router.targets:
        route = target.route

        def where(c: Candidate) -> dict[str, Any]:
            if not c.peer:
                return {"node": "local", "address": f"{c.key[0]}:{c.key[1]}"}
            p = peers[c.peer]
            return {
                "node": c.peer,
                "name": p.name,
                "address": f"{p.address}:{p.proxy_port}",
                "rtt_ms": p.rtt_ms,
                "version_warning": c.warning.decode("latin-1").strip() or None,
            }

        first = target.candidates[0] if target.candidates else None
        local_state = None if route.state == "remote" else route.state
        if first is None:
            why = f"nowhere to send it: {local_state or 'no peer runs it'}"
            if target.mismatched:
                why += "; other versions refused: " + "; ".join(target.mismatched)
        elif first.peer and pins.get(route.name) == first.peer:
            why = "pinned (devmesh route)"
        elif not first.peer:
            why = f"this node's own process ({local_state})"
        else:
            others = sum(1 for c in target.candidates if c.peer)
            here = f"not running here ({local_state})" if local_state else "not a service here"
            why = (
                f"{here}; nearest of {others} peer(s) running it"
                if others > 1
                else (f"{here}; the only peer running it")
            )
        out.append(
            {
                "service": route.name,
                "served_by": where(first) if first is not None else None,
                "why": why,
                "fallbacks": [where(c) for c in target.candidates[1:]],
                "pinned": pins.get(route.name),
            }
        )
    return out

"""Routing is pure: Host normalisation, path prefixes, and the choice between them."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from devmesh.proxy.ingress import admits
from devmesh.proxy.router import (
    HOST_CACHE_SIZE,
    Router,
    normalize_host,
    prefix_matches,
    request_path,
    retarget,
    route_prefix,
    service_name,
)
from devmesh.proxy.server import ProxyServer, Settings
from devmesh.proxy.table import PeerRoute, PeerService, RouteTable, ServiceRoute, Upstream
from devmesh.supervisor.routes import peer_routes

label = st.from_regex(r"[a-z][a-z0-9-]{0,14}", fullmatch=True)


def svc(name: str, port: int | None = 1000, **kw: object) -> ServiceRoute:
    """A service route (upstream on 127.0.0.1:`port`)."""
    up = Upstream("127.0.0.1", port) if port is not None else None
    return ServiceRoute(name, up, "running", **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("host", "name"),
    [
        ("api", "api"),
        ("api.localhost", "api"),
        ("api:8080", "api"),
        ("API.localhost.", "api"),
        ("Api.LOCALHOST.:8080", "api"),
        ("api.localhost:", "api"),
        ("  api  ", "api"),
        ("[::1]:8080", "[::1]"),
        ("127.0.0.1:8080", "127.0.0.1"),
        ("localhost", "localhost"),
        ("a.b.localhost", "a.b"),
    ],
)
def test_service_name_examples(host: str, name: str) -> None:
    assert service_name(host) == name


@settings(deadline=None)  # a loaded machine must not make these flaky
@given(
    name=label,
    port=st.one_of(st.none(), st.integers(0, 65535)),
    suffix=st.booleans(),
    dot=st.booleans(),
    case=st.lists(st.booleans(), min_size=30, max_size=30),
)
def test_service_name_ignores_case_port_dot_and_localhost(
    name: str, port: int | None, suffix: bool, dot: bool, case: list[bool]
) -> None:
    host = name + (".localhost" if suffix else "") + ("." if dot else "")
    host = "".join(c.upper() if up else c for c, up in zip(host, case * 2, strict=False))
    if port is not None:
        host += f":{port}"
    assert service_name(host) == name
    assert normalize_host(host) == name + (".localhost" if suffix else "")


@pytest.mark.parametrize(
    ("pattern", "prefix"),
    [
        ("/api/*", "/api"),
        ("/api", "/api"),
        ("/api/", "/api"),
        ("/", ""),
        ("/*", ""),
        ("api", "/api"),
    ],
)
def test_route_prefix(pattern: str, prefix: str) -> None:
    assert route_prefix(pattern) == prefix


segments = st.lists(st.from_regex(r"[a-zA-Z0-9._~-]{1,8}", fullmatch=True), min_size=1, max_size=4)


@settings(deadline=None)  # a loaded machine must not make these flaky
@given(prefix=segments, rest=st.lists(st.from_regex(r"[a-z0-9]{0,6}", fullmatch=True), max_size=3))
def test_prefix_matches_on_segment_boundaries(prefix: list[str], rest: list[str]) -> None:
    p = ("/" + "/".join(prefix)).encode()
    assert prefix_matches(p, p)
    assert prefix_matches(p + b"/", p)
    assert prefix_matches(p + b"/" + "/".join(rest).encode(), p)
    assert prefix_matches(p + b"?q=1", p)
    assert not prefix_matches(p + b"x", p)  # /api does not take /apix
    assert not prefix_matches(p[:-1], p)
    assert prefix_matches(p, b"")  # the empty prefix ("/") takes everything


def test_request_path() -> None:
    assert request_path(b"/a/b?x=/c") == b"/a/b"
    assert request_path(b"/a") == b"/a"


def test_router_longest_prefix_then_host() -> None:
    table = RouteTable(
        1,
        8080,
        (
            svc("web", routes=("/",)),
            svc("api", routes=("/api/*",), aliases=("backend",)),
            svc("admin", routes=("/api/admin",)),
            svc("docs"),
        ),
    )
    r = Router(table)
    assert r.resolve(b"web.localhost:8080", b"/api/x").name == "api"  # type: ignore[union-attr]
    assert r.resolve(b"docs", b"/api/admin/users").name == "admin"  # type: ignore[union-attr]
    assert r.resolve(b"docs", b"/api").name == "api"  # type: ignore[union-attr]
    assert r.resolve(b"docs", b"/apix").name == "web"  # type: ignore[union-attr]
    assert r.resolve(b"anything", b"/index.html").name == "web"  # type: ignore[union-attr]
    r2 = Router(
        RouteTable(1, 8080, (svc("api", routes=("/api",), aliases=("backend",)), svc("docs")))
    )
    assert r2.resolve(b"docs", b"/x").name == "docs"  # type: ignore[union-attr]
    assert r2.resolve(b"BACKEND.localhost", b"/x").name == "api"  # type: ignore[union-attr]
    assert r2.resolve(b"nope", b"/x") is None
    assert r2.resolve(b"", b"/x") is None


def test_names_beat_aliases_and_first_claim_wins() -> None:
    r = Router(
        RouteTable(
            1,
            8080,
            (svc("a", 1, aliases=("b",), routes=("/x",)), svc("b", 2, routes=("/x",))),
        )
    )
    assert r.resolve(b"b", b"/").name == "b"  # type: ignore[union-attr]
    assert r.resolve(b"b", b"/x/1").name == "a"  # type: ignore[union-attr]


def test_targets_carry_the_host_line_and_pool_key() -> None:
    r = Router(
        RouteTable(
            1,
            9000,
            (
                svc("c", 1),
                svc("k", 2, host_header="keep"),
                svc("f", 3, host_header="localhost:5173"),
                svc("d", None),
            ),
        )
    )
    assert r.get("c").host_line == b"Host: c.localhost:9000\r\n"  # type: ignore[union-attr]
    assert r.get("k").host_line is None  # type: ignore[union-attr]
    assert r.get("f").host_line == b"Host: localhost:5173\r\n"  # type: ignore[union-attr]
    assert r.get("d").key is None  # type: ignore[union-attr]
    assert r.get("c").key == ("127.0.0.1", 1)  # type: ignore[union-attr]
    assert r.get("c").url == "http://c.localhost:9000/"  # type: ignore[union-attr]


def test_host_cache_is_bounded() -> None:
    r = Router(RouteTable(1, 8080, (svc("api"),)))
    for i in range(HOST_CACHE_SIZE * 3):
        assert r.resolve(b"h%d" % i, b"/") is None
    assert len(r._host_cache) <= HOST_CACHE_SIZE
    assert r.resolve(b"api", b"/") is r.resolve(b"API:1", b"/")


@settings(deadline=None)  # a loaded machine must not make these flaky
@given(
    names=st.lists(label, min_size=1, max_size=5, unique=True),
    routes=st.lists(st.lists(segments, max_size=2), min_size=5, max_size=5),
    host_pick=st.integers(0, 10),
    path=st.lists(st.from_regex(r"[a-z0-9]{1,4}", fullmatch=True), max_size=4),
)
def test_router_matches_a_brute_force_model(
    names: list[str], routes: list[list[list[str]]], host_pick: int, path: list[str]
) -> None:
    services = []
    for i, name in enumerate(names):
        prefixes = tuple("/" + "/".join(r) + "/*" for r in routes[i])
        services.append(svc(name, 1000 + i, routes=prefixes))
    r = Router(RouteTable(1, 8080, tuple(services)))
    host = names[host_pick % len(names)] if host_pick < 8 else "unknown-host"
    target = ("/" + "/".join(path)).encode()
    # the model: every (prefix, service) in config order, the longest matching prefix wins,
    # the first service to claim a prefix keeps it; else the Host
    best: tuple[int, str] | None = None
    claimed: set[str] = set()
    for s in services:
        for p in s.routes:
            pre = p[:-2]
            if pre in claimed:
                continue
            claimed.add(pre)
            t = target.decode()
            if (t == pre or t.startswith(pre + "/")) and (best is None or len(pre) > best[0]):
                best = (len(pre), s.name)
    expected = best[1] if best else (host if host in names else None)
    found = r.resolve(host.encode(), target)
    assert (found.name if found else None) == expected


def peer(node: str, port: int, *services: tuple[str, str]) -> PeerRoute:
    return PeerRoute(
        node, f"host-{node}", f"10.0.0.{port % 250}", port, tuple(PeerService(*s) for s in services)
    )


def test_candidates_local_first_then_peers_and_peer_only_services() -> None:
    peers = (
        peer("b", 8082, ("api", "running"), ("billing", "running")),
        peer("a", 8081, ("api", "running"), ("web", "stopped")),
    )
    table = RouteTable(1, 8080, (svc("api", 5000), svc("web", None)), peers, node="me")
    router = Router(table)
    api = router.get("api")
    assert api is not None and api.key == ("127.0.0.1", 5000)
    assert [c.peer for c in api.candidates] == ["", "a", "b"]  # peers in node order
    assert api.here is not None and api.here.candidates == (api.candidates[0],)
    # Not running here and nowhere else: nowhere to go (web is stopped on its peer too).
    web = router.get("web")
    assert web is not None and web.key is None and web.here is None
    # Only on a peer: reached through that peer's proxy, with the hop header.
    billing = router.get("billing")
    assert billing is not None and billing.key == ("10.0.0.82", 8082)
    assert billing.host_line == b"Host: billing.localhost:8082\r\nX-DevMesh-Hop: me\r\n"
    assert router.peer_ips == {"10.0.0.81", "10.0.0.82"}
    # A service that is starting here: the running peers first, then this node's process.
    starting = Router(
        RouteTable(
            1,
            8080,
            (ServiceRoute("api", Upstream("127.0.0.1", 5000), "starting"),),
            peers,
            node="me",
        )
    ).get("api")
    assert starting is not None and [c.peer for c in starting.candidates] == ["a", "b", ""]


def test_retarget_swaps_the_host_line() -> None:
    head = b"GET / HTTP/1.1\r\nHost: api.localhost:8080\r\nA: 1\r\n\r\n"
    peer_line = b"Host: api.localhost:8081\r\nX-DevMesh-Hop: me\r\n"
    moved = retarget(head, b"Host: api.localhost:8080\r\n", peer_line)
    assert moved == b"GET / HTTP/1.1\r\n" + peer_line + b"A: 1\r\n\r\n"
    assert retarget(moved, peer_line, b"Host: api.localhost:8080\r\n") == head
    kept = b"GET / HTTP/1.1\r\nHost: API:8080\r\nA: 1\r\n\r\n"
    assert retarget(kept, None, peer_line) == b"GET / HTTP/1.1\r\n" + peer_line + b"A: 1\r\n\r\n"
    assert retarget(kept, None, None) == kept


@pytest.mark.parametrize(
    ("host", "access", "ok"),
    [
        ("127.0.0.1", "none", True),
        ("::1", "peers", True),
        ("10.0.0.81", "peers", True),
        ("::ffff:10.0.0.81", "peers", True),
        ("fe80::1%2", "peers", True),
        ("10.0.0.99", "peers", False),
        ("10.0.0.81", "none", False),
        ("10.0.0.99", "any", True),
    ],
)
def test_ingress_admits_peers(host: str, access: str, ok: bool) -> None:
    assert admits(host, access, frozenset({"10.0.0.81", "fe80::1"})) is ok


def test_a_client_sticks_to_the_peer_it_had() -> None:
    peers = (peer("a", 8081, ("api", "running")), peer("b", 8082, ("api", "running")))
    server = ProxyServer(Settings(), RouteTable(1, 8080, (), peers, node="me"))
    target = server.router.get("api")
    assert target is not None and target.remote_choice
    assert [c.peer for c in target.candidates] == ["a", "b"]
    assert server.stuck(b"10.0.0.5", target) is target  # nothing known yet
    server.stick(b"10.0.0.5", target, "b")
    led = server.stuck(b"10.0.0.5", target)
    assert [c.peer for c in led.candidates] == ["b", "a"]
    assert led.host_line == b"Host: api.localhost:8082\r\nX-DevMesh-Hop: me\r\n"
    assert server.stuck(b"10.0.0.6", target) is target  # another client is not affected
    assert server.stuck(b"10.0.0.5", target) is led  # made once per table
    # A pin beats stickiness: no choice left to make.
    pinned = Router(RouteTable(1, 8080, (), peers, node="me", pins=(("api", "b"),))).get("api")
    assert pinned is not None and not pinned.remote_choice
    assert [c.peer for c in pinned.candidates] == ["b", "a"]


def test_nearest_peer_first() -> None:
    peers = (
        PeerRoute("a", "A", "10.0.0.1", 8080, (PeerService("api", "running"),), rtt_ms=9),
        PeerRoute("b", "B", "10.0.0.2", 8080, (PeerService("api", "running"),), rtt_ms=2),
        PeerRoute("c", "C", "10.0.0.3", 8080, (PeerService("api", "running"),)),
    )
    target = Router(RouteTable(1, 8080, (), peers)).get("api")
    assert target is not None and [c.peer for c in target.candidates] == ["b", "a", "c"]


def test_stale_peers_last() -> None:
    peers = (
        PeerRoute("a", "A", "10.0.0.1", 8080, (PeerService("api", "running"),), 1, stale=True),
        PeerRoute("b", "B", "10.0.0.2", 8080, (PeerService("api", "running"),), 9),
    )
    target = Router(RouteTable(1, 8080, (), peers)).get("api")
    assert target is not None and [c.peer for c in target.candidates] == ["b", "a"]


def test_rtt_counts_in_steps() -> None:
    base: dict[str, Any] = {"node": "a", "name": "A", "address": "10.0.0.1", "proxy_port": 8080}
    reports = [{**base, "services": [], "rtt_ms": r} for r in (0.4, 4.9, 7.2, None)]
    assert [p.rtt_ms for p in peer_routes(reports)] == [0, 0, 5, None]


def test_ejection_survives_a_new_table_unless_the_copy_left_and_came_back() -> None:
    peers = (peer("a", 8081, ("api", "running")),)
    table = RouteTable(1, 8080, (svc("api", 5000),), peers, node="me")
    server = ProxyServer(Settings(), table)
    server.loop = asyncio.new_event_loop()
    try:
        server.failed(("127.0.0.1", 5000))
        target = server.router.get("api")
        assert target is not None
        assert [c.peer for c in server.avoiding(target).candidates] == ["a", ""]
        server.set_table(RouteTable(2, 8080, (svc("api", 5000),), peers, node="me"))
        assert ("127.0.0.1", 5000) in server.ejected  # still there: still avoided
        server.set_table(RouteTable(3, 8080, (svc("api", None),), peers, node="me"))
        server.set_table(RouteTable(4, 8080, (svc("api", 5000),), peers, node="me"))
        assert not server.ejected  # it left the routes and came back: recovered
    finally:
        server.loop.close()


class FakeClock:
    """Stands in for the event loop's clock (only `time()` is used)."""

    def __init__(self) -> None:
        self.now = 0.0

    def time(self) -> float:
        return self.now


def test_ejection_cooldown_on_a_fake_clock() -> None:
    peers = (peer("a", 8081, ("api", "running")),)
    server = ProxyServer(Settings(eject_for=30.0), RouteTable(1, 8080, (svc("api", 5000),), peers))
    clock = FakeClock()
    server.loop = clock  # type: ignore[assignment]
    target = server.router.get("api")
    assert target is not None and [c.peer for c in target.candidates] == ["", "a"]
    server.failed(("127.0.0.1", 5000))
    clock.now = 29.9
    assert [c.peer for c in server.avoiding(target).candidates] == ["a", ""]
    server.recovered(("10.0.0.81", 8081))  # another copy answering changes nothing here
    assert server.avoiding(target).candidates[0].peer == "a"
    clock.now = 30.1
    assert server.avoiding(target) is target and not server.ejected
    # Every copy failed: nothing better to go to, all are tried in their order.
    server.failed(("127.0.0.1", 5000))
    server.failed(("10.0.0.81", 8081))
    assert server.avoiding(target) is target
    server.recovered(("127.0.0.1", 5000))  # it answered
    assert [c.peer for c in server.avoiding(target).candidates] == ["", "a"]

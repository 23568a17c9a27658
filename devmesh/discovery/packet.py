"""The discovery packet: what a node says about itself on the LAN, as compact JSON in UDP.

One announcement may not fit one datagram (at most `MAX_DATAGRAM` bytes, below every path MTU
a LAN or VPN has), so its services are split over numbered parts that each carry the whole
header; a receiver keeps the last complete set (`peers.PeerTable`). Every field is checked on
the way in: whatever arrives is either an `Announcement` or a `BadPacket` with the reason it
is counted under, never an exception that reaches the worker's loop.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

VERSION = 1
MAX_DATAGRAM = 1200
HELLO = "hello"
BYE = "bye"
_KINDS = (HELLO, BYE)
_MAX_TEXT = 200  # any one string field
_MAX_ROUTES = 32


class BadPacket(Exception):
    """A datagram that is dropped; `reason` is the counter it goes to."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass(frozen=True)
class ServiceInfo:
    """One service as a node announces it."""

    name: str
    state: str  # running, starting, ... (health comes with the health worker)
    version: str | None = None
    routes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Announcement:
    """One datagram's worth: the node's header and part `part` of `parts` of its services."""

    kind: str  # hello | bye
    node: str  # node id: stable for a project on a machine
    boot: str  # new each time the node starts: a restart is not a replay
    seq: int  # grows with every announcement of one boot
    namespace: str
    proxy_port: int
    interval: float  # how often it announces: silent for 3 of them, it is gone
    name: str = ""  # a human name (host and project)
    part: int = 0
    parts: int = 1
    services: tuple[ServiceInfo, ...] = ()


def _service_obj(s: ServiceInfo) -> dict[str, Any]:
    obj: dict[str, Any] = {"n": s.name, "s": s.state}
    if s.version is not None:
        obj["v"] = s.version
    if s.routes:
        obj["r"] = list(s.routes)
    return obj


def _header_obj(a: Announcement, part: int, parts: int) -> dict[str, Any]:
    return {
        "dm": VERSION,
        "k": a.kind,
        "id": a.node,
        "b": a.boot,
        "q": a.seq,
        "ns": a.namespace,
        "p": a.proxy_port,
        "i": a.interval,
        "nm": a.name,
        "pt": [part, parts],
    }


def _dump(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def encode(a: Announcement) -> list[bytes]:
    """The datagrams of one announcement, each at most MAX_DATAGRAM bytes."""
    services = [_service_obj(s) for s in a.services]
    groups: list[list[dict[str, Any]]] = [[]]
    empty = len(_dump({**_header_obj(a, 999, 999), "sv": []}))
    size = empty
    for svc in services:
        n = len(_dump(svc)) + 1
        if empty + n > MAX_DATAGRAM:
            raise ValueError(f"service {svc['n']!r} alone does not fit in one datagram")
        if size + n > MAX_DATAGRAM and groups[-1]:
            groups.append([])
            size = empty
        groups[-1].append(svc)
        size += n
    return [
        _dump({**_header_obj(a, i, len(groups)), "sv": group}) for i, group in enumerate(groups)
    ]


def _text(obj: dict[str, Any], key: str, *, empty: bool = False) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or len(value) > _MAX_TEXT or (not value and not empty):
        raise BadPacket("malformed", f"field {key!r}")
    return value


def _int(obj: dict[str, Any], key: str, low: int, high: int) -> int:
    value = obj.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise BadPacket("malformed", f"field {key!r}")
    return value


def _service(obj: Any) -> ServiceInfo:
    if not isinstance(obj, dict):
        raise BadPacket("malformed", "service")
    version = obj.get("v")
    if version is not None and (not isinstance(version, str) or len(version) > _MAX_TEXT):
        raise BadPacket("malformed", "service version")
    routes = obj.get("r", [])
    if (
        not isinstance(routes, list)
        or len(routes) > _MAX_ROUTES
        or not all(isinstance(r, str) and 0 < len(r) <= _MAX_TEXT for r in routes)
    ):
        raise BadPacket("malformed", "service routes")
    return ServiceInfo(_text(obj, "n"), _text(obj, "s"), version, tuple(routes))


def decode(data: bytes) -> Announcement:
    """The announcement in one datagram, or `BadPacket` (oversized, malformed, version)."""
    if len(data) > MAX_DATAGRAM:
        raise BadPacket("oversized", f"{len(data)} bytes")
    try:
        obj = json.loads(data)
    except (ValueError, RecursionError):
        raise BadPacket("malformed", "not JSON") from None
    if not isinstance(obj, dict) or "dm" not in obj:
        raise BadPacket("malformed", "not a devmesh packet")
    if obj["dm"] != VERSION:
        raise BadPacket("version", f"version {obj['dm']!r}")
    kind = obj.get("k")
    if kind not in _KINDS:
        raise BadPacket("malformed", "field 'k'")
    interval = obj.get("i")
    if not isinstance(interval, int | float) or isinstance(interval, bool):
        raise BadPacket("malformed", "field 'i'")
    if not 0.05 <= interval <= 3600:
        raise BadPacket("malformed", "field 'i'")
    pt = obj.get("pt")
    if (
        not isinstance(pt, list)
        or len(pt) != 2
        or not all(isinstance(x, int) and not isinstance(x, bool) for x in pt)
        or not 0 <= pt[0] < pt[1] <= 64
    ):
        raise BadPacket("malformed", "field 'pt'")
    services = obj.get("sv", [])
    if not isinstance(services, list):
        raise BadPacket("malformed", "field 'sv'")
    return Announcement(
        kind=kind,
        node=_text(obj, "id"),
        boot=_text(obj, "b"),
        seq=_int(obj, "q", 0, 2**53),
        namespace=_text(obj, "ns"),
        proxy_port=_int(obj, "p", 1, 65535),
        interval=float(interval),
        name=_text(obj, "nm", empty=True),
        part=pt[0],
        parts=pt[1],
        services=tuple(_service(s) for s in services),
    )

"""The peers a node knows, from the announcements it receives. Pure: time is passed in.

A peer is known by its node id. Its services are those of its last complete announcement (all
parts of one sequence number); a packet older than the last one of the same boot is a replay
or arrived late and is dropped; a new boot id starts the peer afresh. A goodbye removes the
peer at once; silence for `MISSES` of its own intervals removes it too. A peer heard for the
first time (or with a new boot) is listed in `joined`, for the worker to answer (`Replies`).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from devmesh.discovery.packet import BYE, Announcement, BadPacket, ServiceInfo, decode

MISSES = 3
STALE = 1.5  # intervals of silence after which a peer is shown (and ranked) as stale


@dataclass
class Peer:
    """Another devmesh node of this namespace."""

    node: str
    boot: str
    address: str  # where its packets come from: its proxy is at address:proxy_port
    proxy_port: int
    interval: float
    name: str
    seq: int = -1
    services: tuple[ServiceInfo, ...] = ()
    last_seen: float = 0.0
    joined: float = 0.0
    rtt: float | None = None  # seconds to connect to its proxy, last measured
    heard: dict[str, float] = field(default_factory=dict)  # address -> when it was last heard
    # The parts of an announcement still arriving: part index -> services.
    _pending_seq: int = -1
    _pending: dict[int, tuple[ServiceInfo, ...]] = field(default_factory=dict)

    def as_dict(self, now: float) -> dict[str, object]:
        """What `devmesh peers --json` shows of it."""
        return {
            "node": self.node,
            "name": self.name,
            "address": self.address,
            "proxy_port": self.proxy_port,
            "boot": self.boot,
            "interval": self.interval,
            "seen_ago": round(max(0.0, now - self.last_seen), 3),
            "rtt_ms": None if self.rtt is None else round(self.rtt * 1000, 3),
            # Silent for more than an interval and a half: an announcement went missing.
            "stale": now - self.last_seen > STALE * self.interval,
            "services": [
                {"name": s.name, "state": s.state, "version": s.version, "routes": list(s.routes)}
                for s in self.services
            ],
        }


def preferred_address(heard: dict[str, float], since: float) -> str:
    """Of the addresses a node was heard from (over IPv4 broadcast, IPv6 multicast, unicast),
    the one to reach it at: IPv4 if it was heard on one lately (it needs no interface scope),
    else the most recent. Addresses not heard since `since` are forgotten."""
    for address in [a for a, t in heard.items() if t < since]:
        del heard[address]
    return max(heard, key=lambda a: (":" not in a, heard[a]))


class PeerTable:
    """Every peer of one namespace, and counts of the packets that were dropped, and why."""

    def __init__(self, node: str, namespace: str) -> None:
        self.node = node
        self.namespace = namespace
        self.peers: dict[str, Peer] = {}
        self.dropped: Counter[str] = Counter()  # reason -> packets
        self.received = 0
        # Peers new since the worker last looked (a new node, or a new boot of one): node ids.
        self.joined: list[str] = []

    def datagram(self, data: bytes, address: str, now: float) -> bool:
        """Take one datagram; True if what is known about the peers changed."""
        self.received += 1
        try:
            ann = decode(data)
        except BadPacket as exc:
            self.dropped[exc.reason] += 1
            return False
        return self.announcement(ann, address, now)

    def announcement(self, ann: Announcement, address: str, now: float) -> bool:
        """Take one decoded announcement; True if the peers changed."""
        if ann.node == self.node:
            return False  # our own broadcast, looped back: not counted as dropped
        if ann.namespace != self.namespace:
            self.dropped["other_namespace"] += 1
            return False
        peer = self.peers.get(ann.node)
        if peer is not None and peer.boot == ann.boot and ann.seq < peer._pending_seq:
            self.dropped["stale"] += 1
            return False
        if ann.kind == BYE:
            return self.peers.pop(ann.node, None) is not None
        changed = False
        if peer is None or peer.boot != ann.boot:
            peer = Peer(ann.node, ann.boot, address, ann.proxy_port, ann.interval, ann.name)
            peer.joined = now
            self.peers[ann.node] = peer
            self.joined.append(ann.node)
            changed = True
        peer.heard[address] = now
        best = preferred_address(peer.heard, now - MISSES * ann.interval)
        if (peer.address, peer.proxy_port) != (best, ann.proxy_port):
            peer.address, peer.proxy_port = best, ann.proxy_port
            changed = True
        peer.interval, peer.name, peer.last_seen = ann.interval, ann.name, now
        if ann.seq != peer._pending_seq:
            peer._pending_seq = ann.seq
            peer._pending = {}
        peer._pending[ann.part] = ann.services
        if len(peer._pending) == ann.parts and peer.seq != ann.seq:
            services = tuple(s for i in range(ann.parts) for s in peer._pending.get(i, ()))
            peer.seq = ann.seq
            if services != peer.services:
                peer.services = services
                changed = True
        return changed

    def expire(self, now: float) -> bool:
        """Forget peers silent for MISSES of their intervals; True if one was."""
        gone = [n for n, p in self.peers.items() if now - p.last_seen > MISSES * p.interval]
        for node in gone:
            del self.peers[node]
        return bool(gone)

    def next_expiry(self) -> float | None:
        """When the next peer would expire if it stays silent."""
        times = [p.last_seen + MISSES * p.interval for p in self.peers.values()]
        return min(times) if times else None


class Replies:
    """When to answer a peer's announcement with this node's own, by unicast, at once: so a
    node that just heard a new peer is heard by it too, instead of an interval later. At most
    once per peer (node id) per interval, and at most `budget` replies per interval in all,
    so forged announcements (any node id, any source address) cannot make it a storm or an
    amplifier. Pure: time is passed in."""

    def __init__(self, interval: float, budget: int = 16) -> None:
        self.interval = interval
        self.budget = budget
        self.last: dict[str, float] = {}  # node id -> when it was last answered
        self.window = -interval  # when the current interval's budget began
        self.spent = 0
        self.spent_total = 0  # replies sent
        self.refused = 0  # replies not sent because of a limit

    def due(self, node: str, now: float) -> bool:
        """Whether to answer `node` now (and count it if so)."""
        if now - self.window >= self.interval:
            self.window, self.spent = now, 0
            # Forget answers older than an interval: the dict stays as small as the budget.
            self.last = {n: t for n, t in self.last.items() if now - t < self.interval}
        last = self.last.get(node)
        if (last is not None and now - last < self.interval) or self.spent >= self.budget:
            self.refused += 1
            return False
        self.last[node] = now
        self.spent += 1
        self.spent_total += 1
        return True

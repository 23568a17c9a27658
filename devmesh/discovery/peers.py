"""The peers a node knows, from the announcements it receives. Pure: time is passed in.

A peer is known by its node id. Its services are those of its last complete announcement (all
parts of one sequence number); a packet older than the last one of the same boot is a replay
or arrived late and is dropped; a new boot id starts the peer afresh. A goodbye removes the
peer at once; silence for `MISSES` of its own intervals removes it too.
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

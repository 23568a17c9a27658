"""The discovery packet and the peer table, without sockets: encoding, splitting, validation,
replays, goodbyes and expiry."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from devmesh.discovery.packet import (
    BYE,
    HELLO,
    MAX_DATAGRAM,
    Announcement,
    BadPacket,
    ServiceInfo,
    decode,
    encode,
)
from devmesh.discovery.peers import MISSES, PeerTable, Replies


def announcement(node: str = "n2", seq: int = 1, **kw: object) -> Announcement:
    fields: dict[str, object] = {
        "kind": HELLO,
        "node": node,
        "boot": "b1",
        "seq": seq,
        "namespace": "main",
        "proxy_port": 8080,
        "interval": 1.0,
        "name": "host2/proj",
        "services": (ServiceInfo("api", "running", "1.2", ("/api/*",)),),
    }
    fields.update(kw)
    return Announcement(**fields)  # type: ignore[arg-type]


def test_round_trip() -> None:
    a = announcement()
    [data] = encode(a)
    assert len(data) <= MAX_DATAGRAM
    assert decode(data) == a


def test_many_services_are_split_and_reassembled() -> None:
    services = tuple(ServiceInfo(f"service-{i:03d}", "running", "v" * 20) for i in range(120))
    a = announcement(services=services)
    datagrams = encode(a)
    assert len(datagrams) > 3
    assert all(len(d) <= MAX_DATAGRAM for d in datagrams)
    table = PeerTable("n1", "main")
    changed = [table.datagram(d, "10.0.0.2", 1.0) for d in reversed(datagrams)]
    # Only the last part completes the set (until then the old set stays).
    assert changed == [True] + [False] * (len(datagrams) - 2) + [True]
    assert table.peers["n2"].services == services


@settings(deadline=None)
@given(st.binary(max_size=1500))
def test_garbage_is_dropped_and_counted(data: bytes) -> None:
    table = PeerTable("n1", "main")
    assert table.datagram(data, "10.0.0.9", 1.0) is False
    assert sum(table.dropped.values()) == 1 and not table.peers


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda o: o.update(dm=2), "version"),
        (lambda o: o.update(p=0), "malformed"),
        (lambda o: o.update(p="8080"), "malformed"),
        (lambda o: o.update(q=-1), "malformed"),
        (lambda o: o.update(k="hi"), "malformed"),
        (lambda o: o.update(pt=[2, 2]), "malformed"),
        (lambda o: o.update(i=0), "malformed"),
        (lambda o: o.update(id=""), "malformed"),
        (lambda o: o.update(sv=[{"n": "api"}]), "malformed"),
        (lambda o: o.update(sv=[{"n": "api", "s": "running", "r": [1]}]), "malformed"),
        (lambda o: o.update(nm="x" * 1300), "oversized"),
        (lambda o: o.pop("dm"), "malformed"),
    ],
)
def test_bad_fields_are_named(mutate: object, reason: str) -> None:
    obj = json.loads(encode(announcement())[0])
    mutate(obj)  # type: ignore[operator]
    with pytest.raises(BadPacket) as exc:
        decode(json.dumps(obj).encode())
    assert exc.value.reason == reason


def test_own_other_namespace_replay_bye_and_expiry() -> None:
    table = PeerTable("n1", "main")
    assert not table.datagram(encode(announcement(node="n1"))[0], "10.0.0.1", 0.0)
    assert not table.dropped  # our own packets are expected, not counted
    assert not table.datagram(encode(announcement(namespace="other"))[0], "10.0.0.2", 0.0)
    assert table.dropped["other_namespace"] == 1 and not table.peers
    assert table.datagram(encode(announcement(seq=5))[0], "10.0.0.2", 0.0)
    assert not table.datagram(encode(announcement(seq=5))[0], "10.0.0.2", 0.5)  # nothing new
    assert not table.datagram(encode(announcement(seq=4))[0], "10.0.0.2", 0.6)
    assert table.dropped["stale"] == 1
    # A restart (new boot) may start its sequence again.
    assert table.datagram(encode(announcement(seq=1, boot="b2"))[0], "10.0.0.2", 0.7)
    assert table.peers["n2"].boot == "b2"
    # Services change: a new seq with another list.
    changed = announcement(seq=2, boot="b2", services=())
    assert table.datagram(encode(changed)[0], "10.0.0.2", 0.8)
    assert table.peers["n2"].services == ()
    # Silence: gone after MISSES intervals, not before.
    assert not table.expire(0.8 + MISSES * 1.0 - 0.01)
    assert table.expire(0.8 + MISSES * 1.0 + 0.01) and not table.peers
    # Goodbye.
    table.datagram(encode(announcement(seq=3, boot="b3"))[0], "10.0.0.2", 10.0)
    assert table.datagram(encode(announcement(seq=4, boot="b3", kind=BYE))[0], "10.0.0.2", 10.1)
    assert not table.peers


def test_ipv4_address_preferred_while_heard() -> None:
    table = PeerTable("n1", "main")
    table.datagram(encode(announcement(seq=1))[0], "fe80::1%2", 0.0)
    assert table.peers["n2"].address == "fe80::1%2"
    table.datagram(encode(announcement(seq=2))[0], "10.0.0.2", 0.1)
    table.datagram(encode(announcement(seq=3))[0], "fe80::1%2", 0.2)
    assert table.peers["n2"].address == "10.0.0.2"
    # IPv4 silent for 3 intervals (IPv6 still heard): IPv6 it is.
    table.datagram(encode(announcement(seq=4))[0], "fe80::1%2", 3.5)
    assert table.peers["n2"].address == "fe80::1%2"


def test_a_silent_peer_is_stale_before_it_is_gone() -> None:
    table = PeerTable("n1", "main")
    table.datagram(encode(announcement(seq=1))[0], "10.0.0.2", 0.0)
    assert table.peers["n2"].as_dict(1.4)["stale"] is False
    assert table.peers["n2"].as_dict(1.6)["stale"] is True  # 1.5 intervals of 1 s
    table.datagram(encode(announcement(seq=2))[0], "10.0.0.2", 1.7)
    assert table.peers["n2"].as_dict(1.8)["stale"] is False


def test_new_peers_are_listed_for_an_answer_and_answers_are_limited() -> None:
    """A new node or a new boot is listed in `joined` (the worker answers it by unicast);
    nothing else is: own, other namespace, junk, goodbyes, repeats. `Replies` answers a peer
    once per interval, and at most `budget` peers per interval."""
    table = PeerTable("n1", "main")
    for data in (
        encode(announcement(node="n1"))[0],
        encode(announcement(namespace="other"))[0],
        b'{"dm": 1, "k": "hello"}',
        encode(announcement(kind=BYE))[0],
    ):
        table.datagram(data, "10.0.0.2", 0.0)
    assert table.joined == []
    table.datagram(encode(announcement(seq=1))[0], "10.0.0.2", 0.0)
    table.datagram(encode(announcement(seq=2))[0], "10.0.0.2", 0.1)
    assert table.joined == ["n2"]
    table.joined.clear()
    table.datagram(encode(announcement(seq=1, boot="b2"))[0], "10.0.0.2", 0.2)
    assert table.joined == ["n2"]  # it restarted: it does not know us any more

    replies = Replies(interval=1.0, budget=3)
    assert replies.due("n2", 0.0) and not replies.due("n2", 0.5) and replies.due("n2", 1.0)
    assert replies.due("a", 1.1) and replies.due("b", 1.2)
    assert not replies.due("c", 1.3)  # the budget of this interval is spent
    assert replies.due("c", 2.0)
    assert replies.refused == 2 and replies.spent_total == 5
    # Forged node ids, a thousand an interval: answers stay within the budget, memory too.
    sent = sum(replies.due(f"forged-{i}", 3.0 + i / 1000) for i in range(10_000))
    assert sent <= 3 * 11 and len(replies.last) <= 2 * 3

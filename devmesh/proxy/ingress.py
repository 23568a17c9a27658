"""Who may use the proxy: loopback always; other addresses depending on `lan_access`.

The ingress policy of ARCHITECTURE §4 without a team secret: a request from loopback is always
served; from another address only from a discovered peer of this namespace (`peers`, the
default), from anyone (`any`: phones, tablets) or from no one (`none`).
"""

from __future__ import annotations

import ipaddress

LAN_ACCESS = ("peers", "any", "none")


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 and ::ffff:127.x.y.z; anything unparsable is not loopback."""
    try:
        addr = ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped.is_loopback
    return addr.is_loopback


def admits(host: str | None, lan_access: str, peers: frozenset[str] = frozenset()) -> bool:
    """Whether a client at `host` (None: a unix socket) may send requests; `peers` are the
    addresses of the discovered peers of this namespace."""
    if host is None or lan_access == "any" or is_loopback(host):
        return True
    if lan_access == "peers":
        plain = host.partition("%")[0]
        return plain in peers or plain.removeprefix("::ffff:") in peers
    return False

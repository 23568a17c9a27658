"""Who may use the proxy: loopback always; other addresses depending on `lan_access`.

A stub of the ingress policy (ARCHITECTURE §4): discovered and authenticated peers come with
discovery; until then a non-loopback client is refused unless `lan_access = "any"`.
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


def admits(host: str | None, lan_access: str) -> bool:
    """Whether a client at `host` (None: a unix socket) may send requests."""
    if host is None or lan_access == "any":
        return True
    return is_loopback(host)

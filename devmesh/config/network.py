"""Converters for network values: host names, `host:port`, health checks, routes, Host headers."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from devmesh.config.model import HealthCheck
from devmesh.config.values import MAX_NAME, NAME_RE, BadValue, as_str, as_text, show


def is_hostname(text: str) -> bool:
    """True for a DNS name whose labels look like service names (`api.localhost`, `db_1`)."""
    labels = text.rstrip(".").split(".")
    return len(text) <= 253 and all(
        len(label) <= MAX_NAME and NAME_RE.match(label) for label in labels
    )


def as_hostname(value: object) -> str:
    """A host name such as `api.test` or `localhost`."""
    text = as_text(value)
    if not is_hostname(text):
        raise BadValue(
            f"{show(value)} is not a host name", "use letters, digits, '-' and '.' like api.test"
        )
    return text


def split_host_port(text: str) -> tuple[str, int | None] | None:
    """`host`, `host:port` or `[v6]:port` as (host, port); None when it is not one of those."""
    try:
        parts = urlsplit("//" + text)
        port = parts.port
    except ValueError:
        return None
    host = parts.hostname
    if not host or parts.path or parts.query or parts.fragment or parts.username:
        return None
    if not is_hostname(host):
        try:
            ipaddress.ip_address(host)
        except ValueError:
            return None
    return host, port


def as_host_port(value: object) -> str:
    """A `host:port` string (the port is required)."""
    text = as_text(value)
    hp = split_host_port(text)
    if hp is None or hp[1] is None or hp[1] == 0:
        raise BadValue(
            f"{show(value)} is not host:port", 'write it like "10.0.0.5:35555" or "[fd00::5]:35555"'
        )
    return text


def as_ipv4(value: object) -> str:
    """An IPv4 address, e.g. a broadcast address; "" for none (no IPv4 broadcast)."""
    text = as_str(value).strip()
    if not text:
        return text
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        raise BadValue(
            f"{show(value)} is not an IPv4 address",
            'write it like "255.255.255.255", or "" for no IPv4 broadcast',
        ) from None
    return text


def parse_health(value: object) -> HealthCheck:
    """`http(s)://...` -> "http", `tcp://host:port` -> "tcp", `cmd:...` -> "cmd". `$PORT`
    stands for the service's port (checked here as if it were a port)."""
    fix = 'use "http://host:port/path", "tcp://host:port" or "cmd:COMMAND"'
    text = as_text(value)
    checked = text.replace("${PORT}", "1").replace("$PORT", "1")
    scheme = text.split(":", 1)[0].lower()
    if scheme in ("http", "https"):
        try:
            ok = bool(urlsplit(checked).hostname) and urlsplit(checked).port != 0
        except ValueError:
            ok = False
        if not ok:
            raise BadValue(
                f"{show(value)} is not a valid URL", "write it like http://localhost:3000/health"
            )
        return HealthCheck("http", text)
    if scheme == "tcp" and text[3:6] == "://":
        hp = split_host_port(checked[6:])
        if hp is None or not hp[1]:
            raise BadValue(
                f"{show(value)} is not tcp://host:port", "write it like tcp://localhost:5432"
            )
        return HealthCheck("tcp", text[6:])
    if scheme == "cmd":
        command = text[4:].strip()
        if not command:
            raise BadValue("cmd: has no command", 'write it like "cmd:pg_isready -h localhost"')
        return HealthCheck("cmd", command)
    raise BadValue(f"{show(value)} is not a health check", fix)


def as_route(value: object) -> str:
    """A path route such as `/api/*`."""
    text = as_text(value)
    if not text.startswith("/") or any(c.isspace() for c in text):
        raise BadValue(
            f"{show(value)} is not a path route", f'start it with "/", like "/{text.lstrip("/")}"'
        )
    return text


def as_host_header(value: object) -> str:
    """`canonical`, `keep`, or a fixed `host[:port]` value."""
    text = as_text(value)
    if text.lower() in ("canonical", "keep"):
        return text.lower()
    if split_host_port(text) is None:
        raise BadValue(
            f"{show(value)} is not a Host value",
            'use "canonical", "keep" or a host like "api.example.test:443"',
        )
    return text

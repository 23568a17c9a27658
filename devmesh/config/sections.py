"""The node-wide sections of devmesh.toml: `[mesh]`, `[proxy]`, `[discovery]`, `[log]`,
`[dashboard]` and `[tracing]`."""

from __future__ import annotations

from pathlib import Path

from devmesh.config.model import (
    DashboardConfig,
    DiscoveryConfig,
    LanAccess,
    LogConfig,
    MeshConfig,
    ProxyConfig,
    TracingConfig,
)
from devmesh.config.network import as_host_port, as_ipv4
from devmesh.config.report import Report, Table
from devmesh.config.values import (
    BadValue,
    as_bool,
    as_port,
    as_str,
    as_text,
    choice,
    duration_at_least,
    existing_path,
    int_at_least,
    parse_size,
    show,
    word_in,
)

MESH_KEYS = ("namespace", "secret", "secret_file")
PROXY_KEYS = (
    "port", "workers", "lan_access", "retries", "tls", "cert", "key", "ca", "version_strict",
)  # fmt: skip
DISCOVERY_KEYS = ("port", "broadcast_addr", "interval", "ipv6", "peers", "enabled")
LOG_KEYS = ("level", "format", "requests", "max_size", "backups")
DASHBOARD_KEYS = ("enabled", "port")
TRACING_KEYS = ("otlp_endpoint", "otlp_headers")
SECTIONS = ("mesh", "proxy", "discovery", "log", "dashboard", "tracing", "services")

LOG_LEVELS = ("debug", "info", "warning", "error")
# Keys of the security work still to come: accepted, so that a file written for it loads, but
# never shown as on. Until then, say what the user does not get.
NO_SECRET_YET = (
    "a team secret is not supported yet: discovery and peer requests are NOT authenticated "
    "or encrypted, and the mesh stays open to the LAN",
    'remove it; to keep the mesh closed meanwhile, set [proxy] lan_access = "none" and '
    "[discovery] enabled = false",
)
NO_TLS_YET = (
    "TLS between peers is not supported yet: peers are reached over plain HTTP",
    "remove it (tls, cert, key and ca take effect with devmesh's security release)",
)


def where_keys_belong() -> dict[str, str]:
    """For a misplaced key (`port = 8080` at the top), the section it probably belongs to."""
    homes: dict[str, str] = {}
    for section, keys in (
        ("[mesh]", MESH_KEYS),
        ("[log]", LOG_KEYS),
        ("[tracing]", TRACING_KEYS),
        ("[dashboard]", DASHBOARD_KEYS),
        ("[discovery]", DISCOVERY_KEYS),
        ("[proxy]", PROXY_KEYS),
    ):
        for key in keys:
            homes[key] = section  # later wins: `port` points at [proxy]
    return homes


def read_mesh(report: Report, data: object, root: Path) -> MeshConfig:
    """`[mesh]`: namespace and the team secret (inline or from a file, not both)."""
    d = MeshConfig()
    t = Table(report, ("mesh",), data, MESH_KEYS)
    secret = t.get("secret", as_str, d.secret)
    secret_file = t.get("secret_file", existing_path(root, directory=False), d.secret_file)
    if secret and "secret_file" in t:
        t.issue("secret_file", "both secret and secret_file are set", "keep only one of them")
    for name in ("secret", "secret_file"):
        if name in t:
            t.warn(name, *NO_SECRET_YET)
    return MeshConfig(
        namespace=t.get("namespace", as_text, d.namespace),
        secret=secret,
        secret_file=secret_file,
    )


def read_proxy(report: Report, data: object, root: Path) -> ProxyConfig:
    """`[proxy]`: port, workers, LAN policy, retries and TLS files."""
    d = ProxyConfig()
    t = Table(report, ("proxy",), data, PROXY_KEYS)
    file = existing_path(root, directory=False)
    cert = t.get("cert", file, d.cert)
    key = t.get("key", file, d.key)
    # A certificate is useless without its private key and the other way round.
    if ("cert" in t) != ("key" in t):
        given, missing = ("cert", "key") if "cert" in t else ("key", "cert")
        t.issue(given, f"{given} is set but {missing} is not", "set both cert and key, or neither")
    for name in ("tls", "cert", "key", "ca"):
        if name in t and t.data[name] is not False:
            t.warn(name, *NO_TLS_YET)
    return ProxyConfig(
        port=t.get("port", as_port, d.port),
        workers=t.get("workers", int_at_least(1), d.workers),
        lan_access=t.get("lan_access", choice(LanAccess, "a LAN access policy"), d.lan_access),
        retries=t.get("retries", int_at_least(0), d.retries),
        tls=t.get("tls", as_bool, d.tls),
        cert=cert,
        key=key,
        ca=t.get("ca", file, d.ca),
        version_strict=t.get("version_strict", as_bool, d.version_strict),
    )


def read_discovery(report: Report, data: object) -> DiscoveryConfig:
    """`[discovery]`: UDP port, broadcast address, interval, IPv6 and static peers."""
    d = DiscoveryConfig()
    t = Table(report, ("discovery",), data, DISCOVERY_KEYS)
    return DiscoveryConfig(
        port=t.get("port", as_port, d.port),
        broadcast_addr=t.get("broadcast_addr", as_ipv4, d.broadcast_addr),
        interval=t.get("interval", duration_at_least(0, strict=True), d.interval),
        ipv6=t.get("ipv6", as_bool, d.ipv6),
        peers=t.get_list("peers", as_host_port),
        enabled=t.get("enabled", as_bool, d.enabled),
    )


def read_log(report: Report, data: object) -> LogConfig:
    """`[log]`: devmesh's log level and format, request log target, rotation."""
    d = LogConfig()
    t = Table(report, ("log",), data, LOG_KEYS)
    return LogConfig(
        level=t.get("level", word_in(LOG_LEVELS, "a log level"), d.level),
        format=t.get("format", word_in(("text", "json"), "a log format"), d.format),
        requests=t.get("requests", as_text, d.requests),
        max_size=t.get("max_size", parse_size, d.max_size),
        backups=t.get("backups", int_at_least(0), d.backups),
    )


def read_dashboard(report: Report, data: object) -> DashboardConfig:
    """`[dashboard]`: on or off, and its loopback port."""
    d = DashboardConfig()
    t = Table(report, ("dashboard",), data, DASHBOARD_KEYS)
    return DashboardConfig(
        enabled=t.get("enabled", as_bool, d.enabled),
        port=t.get("port", as_port, d.port),
    )


def as_http_url(value: object) -> str:
    """An `http://` or `https://` URL with a host."""
    text = as_text(value)
    scheme, sep, rest = text.partition("://")
    if not sep or scheme.lower() not in ("http", "https") or not rest.split("/")[0]:
        raise BadValue(f"{show(text)} is not an http(s) URL", 'use e.g. "http://127.0.0.1:4318"')
    return text


def read_tracing(report: Report, data: object) -> TracingConfig:
    """`[tracing]`: where the proxy's spans go over OTLP/HTTP (off when not set)."""
    d = TracingConfig()
    t = Table(report, ("tracing",), data, TRACING_KEYS)
    return TracingConfig(
        otlp_endpoint=t.get("otlp_endpoint", as_http_url, d.otlp_endpoint),
        otlp_headers=t.get_map("otlp_headers", as_str),
    )

"""`describe(config)`: the plain-text summary that `devmesh check` prints."""

from __future__ import annotations

import os
from pathlib import Path

from devmesh.config.model import Config, ConfigSource, DependCondition, ServiceConfig
from devmesh.config.sections import NO_SECRET_YET
from devmesh.config.values import format_duration, format_size


def describe(config: Config) -> str:
    """The project, its source, node settings in two lines, then one row per service."""
    lines = [f"project    {config.name}  ({config.root})"]
    source = _relative(config.path, config.root)
    if config.source is ConfigSource.PROCFILE:
        source += " (Procfile mode: ports from 5000, +100 per process)"
    if config.env_file is not None:
        count = _count(len(config.dotenv), "variable")
        source += f" + {_relative(config.env_file, config.root)} ({count})"
    lines.append(f"source     {source}")
    lines.append(f"mesh       {_mesh(config)}")
    lines.append(f"discovery  {describe_discovery(config)}")
    log = config.log
    lines.append(
        f"log        level {log.level}, {log.format}, requests {log.requests}, "
        f"rotate at {format_size(log.max_size)} keeping {log.backups}"
    )
    dashboard = config.dashboard
    where = f"127.0.0.1:{dashboard.port}" if dashboard.port else "127.0.0.1:8081 or the next free"
    lines.append(f"dashboard  {where} (with /metrics)" if dashboard.enabled else "dashboard  off")
    otlp = config.tracing.otlp_endpoint
    lines.append(f"tracing    OTLP spans to {otlp}" if otlp else "tracing    trace ids only")
    lines.append("")
    if config.services:
        lines.extend(_table(config))
    else:
        lines.append(
            "no services: `devmesh proxy` serves teammates' services (`devmesh up` needs one)"
        )
    return "\n".join(lines) + "\n"


def runtime_warnings(config: Config) -> list[str]:
    """The config's warnings, and the environment's: what `devmesh check` and `up` print."""
    found = [str(w) for w in config.warnings]
    if os.environ.get("DEVMESH_SECRET"):
        found.append(f"DEVMESH_SECRET: {NO_SECRET_YET[0]}; unset it")
    return found


def _mesh(config: Config) -> str:
    mesh, proxy = config.mesh, config.proxy
    # Accepted but not supported yet (warned about): never shown as on.
    secret = "no secret"
    if mesh.secret or mesh.secret_file is not None:
        secret += " (the one set is not supported yet)"
    tls = "no tls"
    if proxy.tls or proxy.cert or proxy.ca:
        tls += " (not supported yet)"
    strict = ", version strict" if proxy.version_strict else ""
    return (
        f"namespace {mesh.namespace}, {secret}; proxy :{proxy.port}, "
        f"{_count(proxy.workers, 'worker')}, lan_access {proxy.lan_access.value}, "
        f"{_count(proxy.retries, 'retry', 'retries')}, {tls}{strict}"
    )


def describe_discovery(config: Config) -> str:
    """`[discovery]` in one line, as `devmesh check` shows it."""
    d = config.discovery
    if not d.enabled:
        return "off"
    ipv6 = "+ IPv6 multicast" if d.ipv6 else "IPv4 only"
    peers = f", static peers {', '.join(d.peers)}" if d.peers else ""
    return (
        f"udp :{d.port}, broadcast {d.broadcast_addr} {ipv6}, "
        f"every {format_duration(d.interval)}{peers}"
    )


def _table(config: Config) -> list[str]:
    show_cwd = any(s.cwd != config.root for s in config.services.values())
    show_watch = any(s.watch for s in config.services.values())
    header = ["SERVICE", "PORT", "RESTART", "DEPENDS ON"]
    header += ["WATCH"] if show_watch else []
    header += ["CWD", "COMMAND"] if show_cwd else ["COMMAND"]
    rows = [header]
    for service in config.services.values():
        row = [
            service.name,
            str(service.port) if service.port is not None else "auto",
            service.restart.value if service.command is not None else "-",
            _depends(service) or "-",
        ]
        if show_watch:
            row.append(_watch(service) or "-")
        if show_cwd:
            row.append(_relative(service.cwd, config.root))
        row.append(service.command if service.command is not None else "(external: devmesh run)")
        rows.append(row)
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    # The last column is not padded, so lines carry no trailing spaces.
    return [
        "  ".join([*(c.ljust(w) for c, w in zip(row, widths[:-1], strict=False)), row[-1]])
        for row in rows
    ]


def _depends(service: ServiceConfig) -> str:
    return ", ".join(
        dep if condition is DependCondition.STARTED else f"{dep} ({condition.value})"
        for dep, condition in service.depends_on.items()
    )


def _watch(service: ServiceConfig) -> str:
    """`src/**/*.py, templates/ (not *.log; +dependents)`: what restarts it on a change."""
    if not service.watch:
        return ""
    extra = [f"not {', '.join(service.watch_ignore)}"] if service.watch_ignore else []
    extra += ["+dependents"] if service.watch_restart_dependents else []
    return ", ".join(service.watch) + (f" ({'; '.join(extra)})" if extra else "")


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def _count(n: int, word: str, plural: str = "") -> str:
    return f"{n} {word if n == 1 else (plural or word + 's')}"

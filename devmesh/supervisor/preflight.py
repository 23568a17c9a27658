"""Checks made before `devmesh up` starts anything: each failure is one clear line."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterable

from devmesh.config.model import Config
from devmesh.supervisor import procs


def otel_installed() -> bool:
    """Whether the OpenTelemetry packages of the `otel` extra can be imported."""
    try:
        return all(
            importlib.util.find_spec(name) is not None
            for name in ("opentelemetry.sdk", "opentelemetry.exporter.otlp.proto.http")
        )
    except ImportError:  # a parent package is missing
        return False


def preflight(config: Config, names: Iterable[str]) -> list[str]:
    """A taken proxy port, and missing programs and taken ports among the services to start."""
    errors: list[str] = []
    file = config.path.name
    who = procs.port_holder(config.proxy.port)
    if who is not None:
        errors.append(
            f"{file}: proxy.port: port {config.proxy.port} is already in use by {who}; "
            "stop that process or set [proxy] port to another port"
        )
    if config.tracing.otlp_endpoint and not otel_installed():
        errors.append(
            f"{file}: tracing.otlp_endpoint: OTLP export needs the otel extra; "
            "pip install 'devmesh[otel]', or remove otlp_endpoint"
        )
    requests = config.log.requests
    if requests not in ("off", "stdout", "service"):
        folder = (config.root / requests).parent
        if not folder.is_dir() or not os.access(folder, os.W_OK):
            errors.append(
                f"{file}: log.requests: cannot write request lines in {folder} (no such "
                'directory, or not writable); create it, or use another path, "service", '
                '"stdout" or "off"'
            )
    dashboard = config.dashboard
    if dashboard.enabled and dashboard.port is not None:
        who = procs.port_holder(dashboard.port)
        if who is not None:
            errors.append(
                f"{file}: dashboard.port: port {dashboard.port} is already in use by {who}; "
                "stop that process, set [dashboard] port to another port, or remove it (then "
                "the first free port from 8081 is used)"
            )
    for name in names:
        svc = config.services[name]
        where = f"{file}:{svc.line}" if svc.line else file
        if svc.command is not None:
            env = {**os.environ, **config.dotenv, **svc.env}
            program = procs.missing_program(svc.command, cwd=svc.cwd, env=env)
            if program is not None:
                errors.append(
                    f"{where}: services.{name}.command: {program!r} not found"
                    f"{' on PATH' if '/' not in program else ''}; install it or fix the command"
                )
        if svc.port is not None and svc.command is not None:
            who = procs.port_holder(svc.port)
            if who is not None:
                errors.append(
                    f"{where}: services.{name}.port: port {svc.port} is already in use by {who}; "
                    "stop that process or choose another port"
                )
    return errors

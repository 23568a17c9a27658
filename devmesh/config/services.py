"""`[services.NAME]` tables: each read on its own, then checked against each other.

Checks across services (names equal ignoring case, shared ports, unknown or circular
dependencies, routes or aliases claimed twice) run after every service is read, so that one
`devmesh check` lists them all.
"""

from __future__ import annotations

import graphlib
from collections.abc import Mapping
from pathlib import Path

from devmesh.config.locate import Key
from devmesh.config.model import DependCondition, RestartPolicy, ServiceConfig
from devmesh.config.network import as_host_header, as_hostname, as_route, parse_health
from devmesh.config.report import Report, Table
from devmesh.config.values import (
    MAX_NAME,
    NAME_RE,
    BadValue,
    as_bool,
    as_port,
    as_text,
    choice,
    did_you_mean,
    duration_at_least,
    existing_path,
    int_at_least,
    kind_of,
    parse_signal,
    show,
    watched_path,
)

SERVICE_KEYS = (
    "command", "run", "port", "version", "cwd", "env", "restart", "depends_on",
    "health", "health_interval", "health_timeout", "healthy_threshold", "unhealthy_threshold",
    "start_period", "restart_on_unhealthy", "routes", "aliases", "host_header", "watch",
    "watch_ignore", "watch_restart_dependents", "stop_signal", "stop_timeout", "start_secs",
    "max_restarts", "backoff",
)  # fmt: skip

NO_SERVICES_FIX = "add [services.NAME] with a command"


def check_name(name: str) -> tuple[str, str] | None:
    """Why `name` cannot be a service name (it becomes a host name), as (message, fix)."""
    if len(name) > MAX_NAME:
        return f"service name is {len(name)} characters long", f"use at most {MAX_NAME}"
    if not NAME_RE.match(name):
        return (
            f"{show(name)} is not a valid service name (it becomes the host {name}.localhost)",
            "use letters, digits, '-' and '_', starting and ending with a letter or digit",
        )
    return None


def env_value(value: object) -> str:
    """An environment value: strings as they are, numbers and booleans as TOML spells them."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return str(value)
    raise BadValue(f"{kind_of(value)} cannot be an environment value", "use a string")


def read_services(
    report: Report, data: object, root: Path, proxy_port: int
) -> dict[str, ServiceConfig]:
    """All `[services.NAME]` tables in file order, with the cross-service checks applied."""
    if data is None:
        return {}  # `devmesh proxy` needs none; `devmesh up` says what to add
    if not isinstance(data, dict):
        report.add(("services",), f"must be a table, not {kind_of(data)}", NO_SERVICES_FIX)
        return {}
    services: dict[str, ServiceConfig] = {}
    dep_keys: dict[str, dict[str, Key]] = {}
    for name, table in data.items():
        key: Key = ("services", name)
        bad_name = check_name(name)
        if bad_name:
            report.add(key, *bad_name)
        if not isinstance(table, dict):
            report.add(key, f"must be a table, not {kind_of(table)}", f"write [services.{name}]")
            continue
        services[name], dep_keys[name] = read_service(report, name, table, root)
    check_names(report, services)
    check_ports(report, services, proxy_port)
    check_claims(report, services)
    check_dependencies(report, services, dep_keys)
    return services


def read_service(
    report: Report, name: str, data: dict[str, object], root: Path
) -> tuple[ServiceConfig, dict[str, Key]]:
    """One service table; also returns where each dependency is written, for later messages."""
    d = ServiceConfig(name=name)
    key: Key = ("services", name)
    t = Table(report, key, data, SERVICE_KEYS)
    command = t.get("command", as_text, None)
    run = t.get("run", as_text, None)
    if "command" in t and "run" in t:
        t.issue("run", "both command and run are set", "keep one of them (run means command)")
    env: dict[str, str] = {}
    for var, value in t.get_map("env", env_value).items():
        if not var or "=" in var or "\0" in var:  # execve() cannot pass such a name
            report.add(
                (*key, "env", var), "is not a valid variable name", "use a name like NODE_ENV"
            )
        else:
            env[var] = value
    depends_on, dep_keys = read_depends_on(t)
    cwd = t.get("cwd", existing_path(root, directory=True), root)
    command = command if command is not None else run
    watch, watch_ignore, watch_dependents = read_watch(t, cwd, command)
    return (
        ServiceConfig(
            name=name,
            command=command,
            port=t.get("port", as_port, d.port),
            version=t.get("version", as_text, d.version),
            cwd=cwd,
            env=env,
            restart=t.get("restart", choice(RestartPolicy, "a restart policy"), d.restart),
            depends_on=depends_on,
            health=t.get("health", parse_health, d.health),
            health_interval=t.get(
                "health_interval", duration_at_least(0, strict=True), d.health_interval
            ),
            health_timeout=t.get(
                "health_timeout", duration_at_least(0, strict=True), d.health_timeout
            ),
            healthy_threshold=t.get("healthy_threshold", int_at_least(1), d.healthy_threshold),
            unhealthy_threshold=t.get(
                "unhealthy_threshold", int_at_least(1), d.unhealthy_threshold
            ),
            start_period=t.get("start_period", duration_at_least(0), d.start_period),
            restart_on_unhealthy=t.get("restart_on_unhealthy", as_bool, d.restart_on_unhealthy),
            routes=t.get_list("routes", as_route),
            aliases=t.get_list("aliases", as_hostname),
            host_header=t.get("host_header", as_host_header, d.host_header),
            watch=watch,
            watch_ignore=watch_ignore,
            watch_restart_dependents=watch_dependents,
            stop_signal=t.get("stop_signal", parse_signal, d.stop_signal),
            stop_timeout=t.get("stop_timeout", duration_at_least(0), d.stop_timeout),
            start_secs=t.get("start_secs", duration_at_least(0), d.start_secs),
            max_restarts=t.get("max_restarts", int_at_least(0), d.max_restarts),
            backoff=t.get("backoff", duration_at_least(0), d.backoff),
            line=report.line(key),
        ),
        dep_keys,
    )


def read_watch(
    t: Table, cwd: Path, command: str | None
) -> tuple[tuple[str, ...], tuple[str, ...], bool]:
    """`watch` (every entry must exist, relative to `cwd`), `watch_ignore` and
    `watch_restart_dependents`; the last two, or `watch` on an external service, would do
    nothing, so they are errors."""
    watch = t.get_list("watch", watched_path(cwd))
    ignore = t.get_list("watch_ignore", as_text)
    dependents = t.get("watch_restart_dependents", as_bool, False)
    if not t.data.get("watch"):
        for key in ("watch_ignore", "watch_restart_dependents"):
            if key in t:
                t.issue(key, "does nothing without watch", f'add watch = ["src/"] or remove {key}')
    if t.data.get("watch") and command is None:
        t.issue(
            "watch",
            "an external service (no command) is not run by devmesh, so nothing restarts it",
            "give it a command, or remove watch",
        )
    return watch, ignore, dependents


def read_depends_on(t: Table) -> tuple[dict[str, DependCondition], dict[str, Key]]:
    """`depends_on = ["db"]` (each "started") or `{ db = "healthy" }`, and each name's key."""
    raw = t.data.get("depends_on")
    where: Key = (*t.key, "depends_on")
    if raw is None:
        return {}, {}
    if isinstance(raw, list):
        names = t.get_list("depends_on", as_text)
        keys: dict[str, Key] = {}
        for index, item in enumerate(raw):
            if isinstance(item, str):
                keys.setdefault(item.strip(), (*where, index))
        return dict.fromkeys(names, DependCondition.STARTED), keys
    if isinstance(raw, dict):
        conditions = t.get_map("depends_on", choice(DependCondition, "a dependency condition"))
        return conditions, {dep: (*where, dep) for dep in raw}
    t.issue(
        "depends_on",
        f"must be an array or a table, not {kind_of(raw)}",
        'write depends_on = ["db"] or depends_on = { db = "healthy" }',
    )
    return {}, {}


def check_names(report: Report, services: Mapping[str, ServiceConfig]) -> None:
    """Host names ignore case, so `API` and `api` would be the same host."""
    seen: dict[str, str] = {}
    for name in services:
        first = seen.setdefault(name.lower(), name)
        if first != name:
            report.add(
                ("services", name),
                f'same host name as service "{first}" (names ignore case)',
                "rename one of them",
            )


def check_ports(report: Report, services: Mapping[str, ServiceConfig], proxy_port: int) -> None:
    """A fixed port belongs to one service, and never the proxy's port."""
    owners: dict[int, str] = {}
    for name, service in services.items():
        if service.port is None:
            continue
        key: Key = ("services", name, "port")
        if service.port == proxy_port:
            report.add(
                key,
                f"port {service.port} is the proxy's port ([proxy] port)",
                "use another port, or change [proxy] port",
            )
            continue
        owner = owners.setdefault(service.port, name)
        if owner != name:
            report.add(
                key,
                f'port {service.port} is already used by service "{owner}"',
                "give each service its own port, or omit port to get a free one",
            )


def check_claims(report: Report, services: Mapping[str, ServiceConfig]) -> None:
    """A route or an alias leads to one service only; an alias cannot be another's name."""
    names = {name.lower(): name for name in services}
    routes: dict[str, str] = {}
    aliases: dict[str, str] = {}
    for name, service in services.items():
        for index, route in enumerate(service.routes):
            owner = routes.setdefault(route, name)
            if owner != name:
                report.add(
                    ("services", name, "routes", index),
                    f'route {show(route)} is already routed to service "{owner}"',
                    "keep it in one service",
                )
        for index, alias in enumerate(service.aliases):
            key: Key = ("services", name, "aliases", index)
            other = names.get(alias.lower())
            owner = aliases.setdefault(alias.lower(), name)
            if other is not None and other != name:
                report.add(
                    key, f'alias {show(alias)} is the name of service "{other}"', "remove it"
                )
            elif owner != name:
                report.add(
                    key,
                    f'alias {show(alias)} is already an alias of service "{owner}"',
                    "keep it in one service",
                )


def check_dependencies(
    report: Report,
    services: Mapping[str, ServiceConfig],
    dep_keys: Mapping[str, Mapping[str, Key]],
) -> None:
    """Every dependency exists, can reach its condition, and there is no cycle."""
    graph = graphlib.TopologicalSorter[str]()
    for name, service in services.items():
        graph.add(name)
        for dep, condition in service.depends_on.items():
            key = dep_keys[name].get(dep, ("services", name, "depends_on"))
            target = services.get(dep)
            if dep == name:
                report.add(key, f'service "{name}" depends on itself', "remove it from depends_on")
            elif target is None:
                fix = did_you_mean(
                    dep,
                    [s for s in services if s != name],
                    "add that service or remove the dependency",
                )
                report.add(key, f'unknown service "{dep}"', fix)
            elif condition is DependCondition.COMPLETED and target.command is None:
                report.add(
                    key,
                    f'"{dep}" is external (no command), so it never completes',
                    'use "started" or "healthy", or give it a command',
                )
            elif condition is DependCondition.COMPLETED and target.restart is RestartPolicy.ALWAYS:
                report.add(
                    key,
                    f'"{dep}" has restart = "always", so it never completes',
                    f'set restart = "on-failure" or "no" on "{dep}", or use "started"',
                )
            else:
                graph.add(name, dep)
    try:
        graph.prepare()
    except graphlib.CycleError as error:
        report_cycle(report, list(services), error.args[1], dep_keys)


def report_cycle(
    report: Report,
    order: list[str],
    cycle: list[str],
    dep_keys: Mapping[str, Mapping[str, Key]],
) -> None:
    """Name the cycle the way it reads in the file: `api -> db -> api`."""
    # graphlib lists it from dependency to dependent; we print who depends on whom, starting
    # at the service defined first so that the message is stable.
    path = list(reversed(cycle[:-1]))
    start = min(range(len(path)), key=lambda i: order.index(path[i]))
    path = path[start:] + path[:start]
    first, second = path[0], path[1 % len(path)]
    key = dep_keys[first].get(second, ("services", first, "depends_on"))
    report.add(
        key,
        "dependency cycle " + " -> ".join([*path, first]),
        "remove one of these dependencies",
    )

"""What each CLI command does. `cli.py` parses arguments and calls these; they raise
`UserError` for the user's own mistakes, which the CLI prints as one line, never a traceback."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from devmesh.config import Config, ConfigError, find_project, load
from devmesh.config import describe as describe_config
from devmesh.config.describe import runtime_warnings
from devmesh.config.sections import LOG_LEVELS
from devmesh.config.services import NO_SERVICES_FIX
from devmesh.control.client import ControlClient, ControlError, NoMesh
from devmesh.logs import reader
from devmesh.logs.writer import want_color
from devmesh.paths import ProjectPaths
from devmesh.supervisor import frameworks, policy, procs
from devmesh.supervisor.lock import AlreadyRunning, holder
from devmesh.supervisor.policy import unknown_service
from devmesh.supervisor.preflight import preflight

DETACH_TIMEOUT = 60.0
RUN_POLL = 0.5  # how often `devmesh run` checks that it is still the one announced
STOP_GRACE = 10.0  # `devmesh run NAME -- CMD`: SIGKILL after `devmesh stop NAME` + this


class UserError(Exception):
    """A mistake the user can fix; printed as `devmesh: <message>` with exit code `code`."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def out(text: str = "") -> None:
    """Print a line of command output."""
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def project(file: Path | None) -> tuple[Config, ProjectPaths]:
    """The project the CLI is pointed at (`-f`, or found from the current directory)."""
    config = load(find_project(Path.cwd(), file))
    return config, ProjectPaths.for_root(config.root)


def warn_config(config: Config) -> None:
    """Print the config's warnings (lines skipped, keys that do nothing yet) on stderr."""
    for warning in runtime_warnings(config):
        sys.stderr.write(f"devmesh: warning: {warning}\n")
    sys.stderr.flush()


def locate(file: Path | None) -> tuple[Path, ProjectPaths]:
    """The project directory and its paths, without reading the config: a running mesh must
    stay controllable while its devmesh.toml is being edited (or is broken)."""
    root = find_project(Path.cwd(), file).parent
    return root, ProjectPaths.for_root(root)


def client(file: Path | None) -> ControlClient:
    """A client for the project's running mesh."""
    root, paths = locate(file)
    return ControlClient(paths, root)


def pick_file(global_file: Path | None, file: Path | None) -> Path | None:
    """The config file named before the command (`devmesh -f FILE up`) or after it (`up -f
    FILE`); both at once must agree."""
    if global_file is not None and file is not None and global_file != file:
        raise UserError(
            f"two config files given: -f {global_file} before the command and {file} after it; "
            "give one",
            code=2,
        )
    return file if file is not None else global_file


def service_names(file: Path | None) -> list[str]:
    """The project's service names for shell completion; none when the config cannot be read
    (completion must never print an error into the user's prompt)."""
    try:
        return list(load(find_project(Path.cwd(), file)).services)
    except (ConfigError, OSError):
        return []


def check_names(known: Iterable[str], names: Sequence[str]) -> None:
    """UserError for a service name the project does not have."""
    known = list(known)
    for name in names:
        if name not in known:
            raise UserError(unknown_service(name, known))


# ---------------------------------------------------------------------- up / down


def up(
    file: Path | None,
    names: Sequence[str],
    *,
    detach: bool,
    namespace: str | None,
    log_level: str | None = None,
    detached_child: bool = False,
    proxy_only: bool = False,
) -> int:
    """`devmesh up`: run the supervisor in the foreground, or in the background with --detach.
    `devmesh proxy` (`proxy_only`): the same without the project's services."""
    if log_level is not None:
        os.environ["DEVMESH_LOG"] = log_level  # for a detached supervisor and the workers too
    level = os.environ.get("DEVMESH_LOG", "").strip().lower()
    if level and level not in LOG_LEVELS:
        source = "--log-level" if log_level is not None else "DEVMESH_LOG"
        raise UserError(
            f"{source}: {level!r} is not a log level; use one of {', '.join(LOG_LEVELS)}"
        )
    config, paths = project(file)
    warn_config(config)
    if not config.services and not proxy_only:
        raise UserError(
            f"{config.path.name}: no services defined; {NO_SERVICES_FIX}, or run `devmesh proxy` "
            "to serve teammates' services only"
        )
    check_names(config.services, names)
    pid = holder(paths.lock)
    if pid is not None:
        raise UserError(str(AlreadyRunning(pid)))
    depends = {n: dict(c.depends_on) for n, c in config.services.items()}
    starting = [
        n
        for n in config.services
        if n in policy.closure(names or config.services, depends) and not proxy_only
    ]
    errors = preflight(config, starting)
    if errors:
        raise UserError("\n".join(errors))
    if detach:
        return _up_detached(config, paths, names, namespace, proxy_only)
    from devmesh.supervisor.core import Supervisor

    supervisor = Supervisor(
        config,
        paths,
        only=names,
        terminal_fd=1,
        color=want_color(1),
        # A detached supervisor's stdout is devmesh.log: its own lines only, the service
        # output is in the (rotated) service logs already.
        echo_services=not detached_child,
        namespace=namespace,
        proxy_only=proxy_only,
    )
    try:
        return supervisor.run()
    except AlreadyRunning as exc:
        raise UserError(str(exc)) from None


def _up_detached(
    config: Config,
    paths: ProjectPaths,
    names: Sequence[str],
    namespace: str | None,
    proxy_only: bool = False,
) -> int:
    paths.ensure()
    command = "proxy" if proxy_only else "up"
    argv = [sys.executable, "-m", "devmesh", command, "-f", str(config.path), "--detached-child"]
    argv += [*names, *(["--namespace", namespace] if namespace else [])]
    with open(paths.daemon_log, "ab") as log:
        log_start = log.tell()
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
            cwd=config.root,
        )
    ctl = ControlClient(paths, config.root, timeout=5.0)
    deadline = time.monotonic() + DETACH_TIMEOUT
    status: dict[str, Any] | None = None
    settled = False
    while not settled and time.monotonic() < deadline:
        code = proc.poll()
        if code is not None:
            with open(paths.daemon_log, "rb") as f:
                f.seek(log_start)
                tail = f.read().decode(errors="replace").splitlines()[-5:]
            raise UserError("devmesh exited at start:\n" + "\n".join(tail), code or 1)
        try:
            status = ctl.status()
        except (NoMesh, ControlError):  # not listening yet
            time.sleep(0.05)
            continue
        wanted = [
            s for s in status["services"] if s["command"] and (not names or s["name"] in names)
        ]
        settled = all(s["state"] not in ("starting", "stopped") for s in wanted)
        if not settled:
            time.sleep(0.05)
    if status is None:
        raise UserError(f"devmesh (pid {proc.pid}) did not answer; see {paths.daemon_log}")
    out(f"devmesh running in the background (pid {proc.pid}); logs: devmesh logs -f")
    out(render_status(status))
    if not settled:
        raise UserError(f"not every service started within {DETACH_TIMEOUT:g}s")
    bad = [s["name"] for s in status["services"] if s["state"] in ("failed", "backoff")]
    if bad:
        raise UserError(f"started, but not healthy: {', '.join(bad)} (see devmesh logs)")
    return 0


def down(file: Path | None) -> int:
    """`devmesh down`: stop the project's mesh and wait until it is gone."""
    ctl = client(file)
    status = ctl.status()
    # Stops run along dependency chains, so the worst case is every timeout in a row.
    budget = sum(s["stop_timeout"] for s in status["services"] if s["pid"]) + 10
    pid = ctl.shutdown()
    deadline = time.monotonic() + budget
    while procs.pid_alive(pid):
        if time.monotonic() > deadline:
            raise UserError(f"devmesh (pid {pid}) is still stopping; see devmesh status")
        time.sleep(0.05)
    out(f"devmesh stopped (pid {pid})")
    return 0


# ---------------------------------------------------------------------- check / status


def check(file: Path | None) -> int:
    """`devmesh check`: validate the config and print the resolved services."""
    config, _ = project(file)
    out(describe_config(config))
    for svc in config.services.values():  # dev servers that ignore $PORT
        added = frameworks.with_port_flags(svc, svc.port)[1] if svc.command else ""
        if added:
            out(added)
    warn_config(config)
    return 0


def status(file: Path | None, *, as_json: bool, routes: bool = False) -> int:
    """`devmesh status`: a table, or the JSON document; `--routes`: the routes instead."""
    if routes:
        doc = client(file).routes()
        out(json.dumps(doc, indent=2) if as_json else render_routes(doc))
        return 0
    data = client(file).status()
    out(json.dumps(data, indent=2) if as_json else render_status(data))
    return 0


def _place(where: dict[str, Any] | None) -> str:
    if where is None:
        return "-"
    if where["node"] == "local":
        return f"local {where['address']}"
    rtt = f", {where['rtt_ms']} ms" if where.get("rtt_ms") is not None else ""
    return f"{where['name']} {where['address']}{rtt}"


def dashboard(file: Path | None, *, open_browser: bool) -> int:
    """`devmesh dashboard`: print the running mesh's dashboard URL and open it in a browser."""
    url = (client(file).status()["node"].get("dashboard") or {}).get("url")
    if not url:
        raise UserError("the dashboard is off ([dashboard] enabled = false)")
    out(url)
    if open_browser:
        import webbrowser

        if not webbrowser.open(url):
            sys.stderr.write("devmesh: no browser found here; open the URL above\n")
    return 0


def render_routes(doc: dict[str, Any]) -> str:
    """`devmesh status --routes`: one row per name."""
    rows: list[tuple[str, ...]] = [("SERVICE", "SERVED BY", "WHY", "THEN")]
    for r in doc["routes"]:
        then = ", ".join(_place(w) for w in r["fallbacks"]) or "-"
        rows.append((r["service"], _place(r["served_by"]), r["why"], then))
    return "\n".join(_table(rows))


def route(file: Path | None, service: str, *, peer: str | None, clear: bool) -> int:
    """`devmesh route SERVICE --peer ID` / `--clear`."""
    if clear == (peer is not None):
        raise UserError("give either --peer ID or --clear")
    doc = client(file).pin(service, None if clear else peer)
    out(render_routes({"routes": [r for r in doc["routes"] if r["service"] == service]}))
    return 0


def graph(file: Path | None, fmt: str) -> int:
    """`devmesh graph`: this node, its peers, their services, and the routes."""
    if fmt not in ("ascii", "json", "dot"):
        raise UserError(f"unknown format {fmt!r}; use ascii, json or dot")
    c = client(file)
    status_doc, peers_doc, routes_doc = c.status(), c.peers(), c.routes()
    me = peers_doc.get("node") or "local"
    nodes = [
        {
            "node": me,
            "name": f"this node ({status_doc['node']['project']})",
            "services": [{"name": s["name"], "state": s["state"]} for s in status_doc["services"]],
        },
        *(
            {
                "node": p["node"],
                "name": p["name"],
                "address": f"{p['address']}:{p['proxy_port']}",
                "services": [{"name": s["name"], "state": s["state"]} for s in p["services"]],
            }
            for p in peers_doc["peers"]
        ),
    ]
    routes = [
        {
            "service": r["service"],
            "to": me
            if r["served_by"] is None or r["served_by"]["node"] == "local"
            else r["served_by"]["node"],
            "served": r["served_by"] is not None,
            "why": r["why"],
        }
        for r in routes_doc["routes"]
    ]
    doc = {"namespace": peers_doc["namespace"], "nodes": nodes, "routes": routes}
    if fmt == "json":
        out(json.dumps(doc, indent=2))
    elif fmt == "dot":
        out(render_dot(doc))
    else:
        out(render_graph(doc))
    return 0


def render_graph(doc: dict[str, Any]) -> str:
    """The graph as text: the nodes with their services, then where each name goes."""
    names = {n["node"]: n["name"] for n in doc["nodes"]}
    lines = [f"namespace {doc['namespace']}", ""]
    for n in doc["nodes"]:
        lines.append(f"[{n['name']}]" + (f" {n['address']}" if n.get("address") else ""))
        for s in n["services"]:
            lines.append(f"  - {s['name']} ({s['state']})")
    lines += ["", "routes from this node:"]
    for r in doc["routes"]:
        arrow = f"--> {names.get(r['to'], r['to'])}" if r["served"] else "--x"
        lines.append(f"  {r['service']} {arrow}  ({r['why']})")
    return "\n".join(lines)


def render_dot(doc: dict[str, Any]) -> str:
    """The graph in Graphviz's dot language: one cluster per node, an edge per route."""

    def q(text: str) -> str:
        return json.dumps(text)  # a double-quoted string with escapes dot understands

    lines = ["digraph devmesh {", "  rankdir=LR;", f"  label={q('namespace ' + doc['namespace'])};"]
    for i, n in enumerate(doc["nodes"]):
        lines.append(f"  subgraph cluster_{i} {{ label={q(n['name'])};")
        for s in n["services"]:
            label = f"{s['name']} ({s['state']})"
            lines.append(f"    {q(n['node'] + '/' + s['name'])} [label={q(label)}];")
        lines.append("  }")
    for r in doc["routes"]:
        if r["served"]:
            lines.append(
                f"  {q('route/' + r['service'])} [shape=plaintext,label={q(r['service'])}];"
            )
            lines.append(
                f"  {q('route/' + r['service'])} -> {q(r['to'] + '/' + r['service'])}"
                f" [tooltip={q(r['why'])}];"
            )
    lines.append("}")
    return "\n".join(lines)


def peers(file: Path | None, *, as_json: bool) -> int:
    """`devmesh peers`: a table, or the JSON document."""
    data = client(file).peers()
    out(json.dumps(data, indent=2) if as_json else render_peers(data))
    return 0


def render_peers(data: dict[str, Any]) -> str:
    """The peers table (`devmesh peers`)."""
    disc = data["discovery"]
    if not disc["enabled"]:
        return "discovery is off ([discovery] enabled = false, or DEVMESH_DISCOVERY=off)"
    head = f"node {data['node']}  namespace {data['namespace']}  udp port {disc['port']}"
    if not data["peers"]:
        return f"{head}\n\nno peers found yet (they announce every {disc['interval']:g}s)"
    rows: list[tuple[str, ...]] = [("PEER", "NAME", "ADDRESS", "SEEN", "SERVICES")]
    for p in data["peers"]:
        services = ", ".join(
            s["name"] + (f"@{s['version']}" if s["version"] else "") + f" ({s['state']})"
            for s in p["services"]
        )
        rows.append(
            (
                p["node"],
                p["name"],
                f"{p['address']}:{p['proxy_port']}",
                f"{p['seen_ago']:.1f}s ago",
                services or "-",
            )
        )
    return "\n".join([head, "", *_table(rows)])


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def _health(h: dict[str, Any] | None) -> str:
    """`healthy`, `unhealthy (HTTP 503)`, `unknown`; `ready` / `not listening` for a service
    checked only by its port; `-` when nothing runs."""
    if not h:
        return "-"
    if h.get("check") == "port":
        return "ready" if h["status"] == "healthy" else "not listening"
    if h["status"] == "unhealthy" and h.get("detail"):
        return f"unhealthy ({h['detail']})"
    return str(h["status"])


def render_status(data: dict[str, Any]) -> str:
    """The status table (`devmesh status`)."""
    node = data["node"]
    lines = [f"project {node['project']}  namespace {node['namespace']}  pid {node['pid']}"]
    dashboard = node.get("dashboard") or {}
    if dashboard.get("url"):
        lines.append(f"dashboard {dashboard['url']}  metrics {dashboard['metrics']}")
    lines.append("")
    rows: list[tuple[str, ...]] = [
        ("SERVICE", "STATE", "HEALTH", "PID", "PORT", "RESTARTS", "UPTIME", "URL", "INFO")
    ]
    for s in data["services"]:
        rows.append(
            (
                s["name"],
                s["state"],
                _health(s.get("health")),
                str(s["pid"] or "-"),
                str(s["port"] or "-"),
                str(s["restarts"]),
                _age(s["uptime"]),
                s.get("url") or "-",
                s["reason"] or "",
            )
        )
    lines += _table(rows)
    workers = ", ".join(
        f"{w['name']} {w['state']} (pid {w['pid'] or '-'}, restarts {w['restarts']})"
        for w in data["workers"]
    )
    lines += ["", f"workers: {workers}"]
    for error in node.get("config_error") or []:
        lines.append(f"config not applied: {error}")
    return "\n".join(lines)


def _table(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]


# ---------------------------------------------------------------------- service actions


def service_action(file: Path | None, name: str, action: str) -> int:
    """`devmesh start|stop|restart SERVICE`: ask, then wait until it is done."""
    ctl = client(file)
    services = {s["name"]: s for s in ctl.status()["services"]}
    check_names(services, [name])
    before = services[name]
    try:
        ctl.action(name, action)
    except ControlError as exc:
        raise UserError(str(exc)) from None
    if action == "stop":
        svc = ctl.wait_service(name, until={"stopped"}, timeout=before["stop_timeout"] + 5)
        ok = svc["state"] == "stopped"
    else:
        timeout = before["stop_timeout"] + before["start_secs"] + 10
        svc = ctl.wait_service(
            name,
            until={"running", "failed", "exited", "backoff", "external"},
            changed_from=before["pid"] if action == "restart" else None,
            timeout=timeout,
        )
        # A one-shot that ran and exited 0 did what it was started for.
        ok = svc["state"] in ("running", "external") or (
            svc["state"] == "exited" and svc["exit_code"] == 0
        )
    detail = f" (pid {svc['pid']})" if svc["pid"] else ""
    reason = f": {svc['reason']}" if svc["reason"] else ""
    out(f"{name} {svc['state']}{detail}{reason}")
    return 0 if ok else 1


def run(file: Path | None, name: str, *, port: int | None = None, argv: Sequence[str] = ()) -> int:
    """`devmesh run SERVICE [--port N] [-- CMD ARGS]`: register a service the user runs by hand
    into the project's running mesh (`devmesh up` or `devmesh proxy`), until Ctrl+C, `devmesh
    stop SERVICE`, or the mesh stopping; with CMD, run it in the foreground with $PORT set and
    register it for as long as it runs."""
    ctl = client(file)
    status = ctl.status()
    declared = {s["name"] for s in status["services"]}
    if name not in declared and port is None:
        if not argv:
            raise UserError(
                unknown_service(name, declared)
                + f"; to run a service devmesh.toml does not declare, give its port: "
                f"devmesh run {name} --port N"
            )
        port = 0  # an undeclared service with a command: any free port, passed as $PORT
    me = os.getpid()
    # Ctrl+C and SIGTERM end it cleanly, even when started with SIGINT ignored (a background
    # job of a shell, which Python would otherwise leave ignored).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        svc = ctl.attach(name, me, port)
    except ControlError as exc:
        raise UserError(str(exc)) from None
    if argv:
        return _run_command(ctl, file, name, svc, status, list(argv))
    out(
        f"{name} is registered on port {svc['port']}: start it there (PORT={svc['port']}); "
        f"devmesh routes to it and announces it while that port answers. "
        f"Ctrl+C or `devmesh stop {name}` ends this."
    )
    try:
        while True:
            time.sleep(RUN_POLL)
            gone, _ = _registration_gone(ctl, name, me)
            if gone:
                out(gone)
                return 0
    except KeyboardInterrupt:
        with contextlib.suppress(ControlError, NoMesh):
            ctl.release(name, me)
        out(f"{name} no longer registered by devmesh run")
        return 0


def _registration_gone(ctl: ControlClient, name: str, me: int) -> tuple[str, bool]:
    """Why `devmesh run` (pid `me`) no longer holds `name` ('' if it does), and whether the
    mesh took it away (`devmesh stop NAME`, a config change) rather than stopped."""
    try:
        current = {s["name"]: s for s in ctl.status()["services"]}.get(name)
    except NoMesh:
        return f"devmesh stopped; {name} is no longer announced", False
    if current is None or current.get("by_hand") != me:
        why = current["reason"] if current else "removed from the config"
        return f"{name} no longer announced ({why or 'devmesh stop'})", True
    return "", False


def _run_command(
    ctl: ControlClient,
    file: Path | None,
    name: str,
    svc: dict[str, Any],
    status: dict[str, Any],
    argv: list[str],
) -> int:
    """`devmesh run NAME -- CMD`: CMD in the foreground (a debugger, a watcher: it keeps the
    terminal) with the service's environment and $PORT, registered while it runs. Signals:
    Ctrl+C reaches it from the terminal; SIGTERM and a `devmesh stop NAME` are passed on."""
    from devmesh.config.model import ServiceConfig
    from devmesh.health.probes import expand
    from devmesh.supervisor.lifecycle import service_env

    config, _ = project(file)
    cfg = config.services.get(name) or ServiceConfig(name=name, cwd=Path.cwd())
    ports = {s["name"]: s["port"] for s in status["services"]}
    env = service_env(os.environ, config, cfg, svc["port"], status["node"]["namespace"], ports)
    me = os.getpid()
    # `'$PORT'` quoted past the shell (`-- vite --port '$PORT'`) means the port, as in a command.
    argv = [expand(arg, svc["port"]) for arg in argv]
    out(f"{name}: running {shlex.join(argv)} with PORT={svc['port']}; routed while it answers")
    received: list[int] = []

    def on_signal(signum: int, frame: object) -> None:
        received.append(signum)  # only enqueue: the loop passes it on

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    try:
        child = subprocess.Popen(argv, env=env, cwd=cfg.cwd)
    except OSError as exc:
        with contextlib.suppress(ControlError, NoMesh):
            ctl.release(name, me)
        raise UserError(f"cannot run {argv[0]}: {exc.strerror or exc}") from None
    polled, stopping_since = time.monotonic(), None
    mesh = True
    try:
        while True:
            try:
                code = child.wait(timeout=0.1)
                break
            except subprocess.TimeoutExpired:
                pass
            while received:
                signum = received.pop(0)
                # From a terminal, Ctrl+C reached the whole foreground group, CMD included.
                if signum != signal.SIGINT or not _terminal_sent_it():
                    child.send_signal(signum)
            now = time.monotonic()
            if stopping_since is not None and now - stopping_since > STOP_GRACE:
                child.kill()
            if mesh and now - polled >= RUN_POLL:
                polled = now
                gone, taken = _registration_gone(ctl, name, me)
                if gone:
                    out(gone)
                    mesh = False
                    if taken:  # `devmesh stop NAME`: the command it registered stops too
                        child.terminate()
                        stopping_since = now
    finally:
        with contextlib.suppress(ControlError, NoMesh):
            ctl.release(name, me)
    what = f"killed by signal {-code}" if code < 0 else f"exited with code {code}"
    out(f"{name} no longer registered ({argv[0]} {what})")
    return code if code >= 0 else 128 - code


def _terminal_sent_it() -> bool:
    """Whether this process runs in the foreground of its terminal, so that the terminal's
    Ctrl+C went to the command it runs as well."""
    try:
        return os.tcgetpgrp(sys.stdin.fileno()) == os.getpgrp()
    except (OSError, ValueError):
        return False


# ---------------------------------------------------------------------- logs


def logs(file: Path | None, names: Sequence[str], *, follow: bool, lines: int | None) -> int:
    """`devmesh logs [SERVICE...] [-f] [-n N]`, read from the log files."""
    try:
        _, paths = locate(file)
    except ConfigError:
        _path_for_a_service(names, follow)  # `logs -f FILE`, outside any project
        raise
    on_disk = reader.services_in(paths.logs)
    try:  # the config's order, when it can be read; the files are what counts
        order = [n for n in load(find_project(Path.cwd(), file)).services if n in on_disk]
    except ConfigError:
        order = []
    order += [n for n in on_disk if n not in order]
    _path_for_a_service([n for n in names if n not in order], follow)
    check_names(order, names)
    services = list(names) or order
    color = want_color(1)
    width = max([len(n) for n in services] + [7])
    index = {n: i for i, n in enumerate(order)}
    write = sys.stdout.write

    def history() -> None:
        for rec in reader.read_records(paths.logs, services, lines):
            write(reader.format_record(rec, width=width, color=color, index=index[rec.service]))
            write("\n")
        sys.stdout.flush()

    if not follow:
        history()
        return 0
    try:
        for rec in reader.follow(paths.logs, services, on_open=history):
            write(reader.format_record(rec, width=width, color=color, index=index[rec.service]))
            write("\n")
            sys.stdout.flush()
    except (KeyboardInterrupt, BrokenPipeError):
        pass
    return 0


def _path_for_a_service(names: Sequence[str], follow: bool) -> None:
    """UserError when a name is an existing file or directory: `devmesh logs -f FILE` meant
    the file (as -f does on the other commands), but on `logs` -f is --follow."""
    for name in names:
        if Path(name).exists():
            flag = " -f" if follow else ""
            raise UserError(
                f"{name} is a file, not a service: on `logs`, -f means --follow. "
                f"For that project's logs: devmesh -f {name} logs{flag}",
                code=2,
            )

"""What each CLI command does. `cli.py` parses arguments and calls these; they raise
`UserError` for the user's own mistakes, which the CLI prints as one line, never a traceback."""

from __future__ import annotations

import json
import os
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
from devmesh.render import render_dot, render_graph, render_peers, render_routes, render_status
from devmesh.supervisor import frameworks, policy, procs
from devmesh.supervisor.lock import AlreadyRunning, holder
from devmesh.supervisor.policy import unknown_service
from devmesh.supervisor.preflight import preflight

DETACH_TIMEOUT = 60.0


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


def peers(file: Path | None, *, as_json: bool) -> int:
    """`devmesh peers`: a table, or the JSON document."""
    data = client(file).peers()
    out(json.dumps(data, indent=2) if as_json else render_peers(data))
    return 0


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

"""`devmesh run`: a service the user runs by hand (a debugger, a watcher), registered into the
project's running mesh (`devmesh up` or `devmesh proxy`) for as long as it runs."""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from devmesh.commands import UserError, client, out, project
from devmesh.control.client import ControlClient, ControlError, NoMesh
from devmesh.supervisor.policy import unknown_service

RUN_POLL = 0.5  # how often `devmesh run` checks that it is still the one announced
STOP_GRACE = 10.0  # `devmesh run NAME -- CMD`: SIGKILL after `devmesh stop NAME` + this


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

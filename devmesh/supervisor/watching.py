"""Watch mode, the parent's side: what the watch worker watches (`WatchPlan`), and what a burst
of changed files (`FilesChanged`) restarts.

The worker only watches and debounces; what a change does is decided here, where the services'
state is: a service the user stopped stays stopped, one already stopping is not stopped twice
(its next start sees the change), and `watch_restart_dependents` takes its dependents along.
"""

from __future__ import annotations

import logging

from devmesh import messages as m
from devmesh.config.model import Config
from devmesh.supervisor import policy
from devmesh.supervisor.lifecycle import ServiceSet


def watch_plan(config: Config) -> m.WatchPlan:
    """One target per service with `watch` (empty: no watch worker is needed)."""
    return m.WatchPlan(
        tuple(
            m.WatchTarget(s.name, str(s.cwd), tuple(s.watch), tuple(s.watch_ignore))
            for s in config.services.values()
            if s.watch and s.command is not None
        )
    )


def describe_change(msg: m.FilesChanged) -> str:
    """`src/app.py changed (and 11 more)`."""
    more = f" (and {msg.count - 1} more)" if msg.count > 1 else ""
    return f"{msg.first} changed{more}"


def files_changed(svcs: ServiceSet, msg: m.FilesChanged) -> None:
    """Restart the service whose files changed and, with `watch_restart_dependents`, every
    service that depends on it, directly or not."""
    svc = svcs.services.get(msg.service)
    if svc is None or not svc.config.watch or svcs.host.shutting_down:
        return
    why = describe_change(msg)
    if not svcs.change_restart(svc, why):
        state = "stopped by user" if svc.user_stopped else svc.state.value
        svcs.host.logs.system(
            f"{svc.name}: {why}; not restarted ({state})", svc.name, logging.DEBUG
        )
        return
    if svc.config.watch_restart_dependents:
        for name in policy.all_dependents(svc.name, svcs.depends()):
            if name in svcs.services:
                svcs.change_restart(svcs[name], f"depends on {svc.name}, which restarts")


def watching_lines(msg: m.Watching) -> list[tuple[str, int]]:
    """What the supervisor logs when the worker watches a new plan: (line, level)."""
    lines = [(f"watch: {problem}", logging.WARNING) for problem in msg.problems]
    if msg.services:
        dirs = f"{msg.dirs} director{'y' if msg.dirs == 1 else 'ies'}"
        lines.append((f"watching files for {', '.join(msg.services)} ({dirs})", logging.INFO))
    return lines

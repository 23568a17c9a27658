"""Pure policies of the supervisor: restart backoff, crash loops, start and stop order.

Functions of history and a monotonic time only, so they are tested with a fake clock.
"""

from __future__ import annotations

import difflib
import graphlib
from collections.abc import Iterable, Mapping, Set
from dataclasses import dataclass

from devmesh.config.model import DependCondition, RestartPolicy

MAX_BACKOFF = 30.0
STABLE_SECS = 10.0  # a service that lived this long restarts after the base backoff again
NOT_FOUND = {126: "command not executable", 127: "command not found"}  # from /bin/sh


@dataclass(frozen=True)
class Exit:
    """One exit of a service: when it started, when it ended, and how."""

    started_at: float
    ended_at: float
    code: int | None  # None: killed by a signal
    signal: int | None = None

    @property
    def uptime(self) -> float:
        """Seconds it was alive."""
        return self.ended_at - self.started_at

    @property
    def failed(self) -> bool:
        """Exit code 0 is success; anything else (a signal included) is a failure."""
        return self.code != 0


@dataclass(frozen=True)
class Restart:
    """Start it again at `at` (monotonic); `attempt` counts quick crashes in a row."""

    at: float
    attempt: int


@dataclass(frozen=True)
class StayDown:
    """Do not restart; `failed` marks a crash loop rather than a policy that says no."""

    failed: bool
    reason: str


Decision = Restart | StayDown


def quick_exits(history: Iterable[Exit], start_secs: float) -> int:
    """How many of the latest exits in a row came before the service lived `start_secs`."""
    count = 0
    for ex in reversed(list(history)):
        if ex.uptime >= start_secs:
            break
        count += 1
    return count


def describe_exit(ex: Exit) -> str:
    """`exited with code 1` / `killed by signal 9`."""
    if ex.signal is not None:
        return f"killed by signal {ex.signal}"
    return f"exited with code {ex.code}"


def after_exit(
    history: Iterable[Exit],
    *,
    policy: RestartPolicy,
    start_secs: float,
    max_restarts: int,
    backoff: float,
) -> Decision:
    """What to do after the last exit in `history` (not a user stop: those never restart)."""
    exits = list(history)
    last = exits[-1]
    quick = quick_exits(exits, start_secs)
    if quick and last.code in NOT_FOUND:
        # The shell could not run the program: trying again cannot help.
        return StayDown(failed=True, reason=f"{NOT_FOUND[last.code]} (exit {last.code})")
    if policy is RestartPolicy.NO or (policy is RestartPolicy.ON_FAILURE and not last.failed):
        return StayDown(failed=False, reason=describe_exit(last))
    if quick > max_restarts:
        return StayDown(
            failed=True,
            reason=(
                f"{describe_exit(last)}; crashed {quick} times in a row within "
                f"{start_secs:g}s of starting, not restarting"
            ),
        )
    # A service that ran a while is restarted after the base backoff; one that keeps dying
    # soon waits longer every time (backoff, 2x, 4x ... capped), and one that dies before
    # start_secs max_restarts times in a row is a crash loop (above).
    recent = quick_exits(exits, max(start_secs, STABLE_SECS))
    delay = min(backoff * 2 ** max(recent - 1, 0), MAX_BACKOFF)
    return Restart(at=last.ended_at + delay, attempt=quick)


def start_order(depends_on: Mapping[str, Mapping[str, DependCondition]]) -> list[str]:
    """Every service after all it depends on; ties keep the mapping's (file) order."""
    sorter: graphlib.TopologicalSorter[str] = graphlib.TopologicalSorter()
    for name, deps in depends_on.items():
        sorter.add(name, *deps)
    position = {name: i for i, name in enumerate(depends_on)}
    order: list[str] = []
    sorter.prepare()
    while sorter.is_active():
        ready = sorted(sorter.get_ready(), key=lambda n: position.get(n, len(position)))
        order.extend(ready)
        sorter.done(*ready)
    return [n for n in order if n in depends_on]


def closure(
    names: Iterable[str], depends_on: Mapping[str, Mapping[str, DependCondition]]
) -> set[str]:
    """`names` plus everything they depend on, transitively (what `devmesh up api` starts)."""
    todo = list(names)
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo.extend(depends_on.get(name, {}))
    return seen


def dependents(name: str, depends_on: Mapping[str, Mapping[str, DependCondition]]) -> set[str]:
    """Services that depend on `name` directly."""
    return {other for other, deps in depends_on.items() if name in deps}


def all_dependents(name: str, depends_on: Mapping[str, Mapping[str, DependCondition]]) -> set[str]:
    """Services that depend on `name`, directly or through others."""
    found: set[str] = set()
    todo = [name]
    while todo:
        for other in dependents(todo.pop(), depends_on) - found:
            found.add(other)
            todo.append(other)
    found.discard(name)
    return found


def ready_to_stop(
    alive: Set[str], depends_on: Mapping[str, Mapping[str, DependCondition]]
) -> set[str]:
    """During shutdown: the alive services that no alive service depends on (reverse order)."""
    return {n for n in alive if not (dependents(n, depends_on) & alive)}


def dependency_met(
    condition: DependCondition, *, started: bool, running: bool, completed: bool, healthy: bool
) -> bool:
    """Whether one dependency in its current condition lets its dependent start."""
    if condition is DependCondition.STARTED:
        return started
    if condition is DependCondition.COMPLETED:
        return completed
    return healthy and running


def unknown_service(name: str, services: Iterable[str]) -> str:
    """`unknown service 'apu' (did you mean 'api'?); known: api, web`."""
    known = list(services)
    close = difflib.get_close_matches(name, known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown service {name!r}{hint}; known: {', '.join(known) or 'none'}"

"""Service and worker states: enums with the allowed edges, asserted on every transition."""

from __future__ import annotations

import enum


class ServiceState(enum.StrEnum):
    """Where a service is in its life; the values are what `devmesh status` shows."""

    STOPPED = "stopped"  # not started yet, or stopped by the user
    STARTING = "starting"  # spawned, not yet alive for start_secs
    RUNNING = "running"
    BACKOFF = "backoff"  # exited; waiting to be started again
    STOPPING = "stopping"  # stop signal sent, waiting for the group to exit
    EXITED = "exited"  # exited on its own and the restart policy says stay down
    FAILED = "failed"  # crash loop, or it could not be spawned at all
    # No command: the user runs it by hand (devmesh 0.1.x). Probed on its port, routed here and
    # announced only while it answers; otherwise a peer's copy serves it.
    EXTERNAL = "external"


# A process exists for these states.
ALIVE_STATES = frozenset({ServiceState.STARTING, ServiceState.RUNNING, ServiceState.STOPPING})
# Nothing runs and nothing is scheduled: a user may start it.
DOWN_STATES = frozenset({ServiceState.STOPPED, ServiceState.EXITED, ServiceState.FAILED})

_S = ServiceState
SERVICE_EDGES: dict[ServiceState, frozenset[ServiceState]] = {
    _S.STOPPED: frozenset({_S.STARTING, _S.FAILED, _S.EXTERNAL}),  # FAILED: spawn itself failed
    _S.STARTING: frozenset({_S.RUNNING, _S.BACKOFF, _S.EXITED, _S.FAILED, _S.STOPPING}),
    _S.RUNNING: frozenset({_S.BACKOFF, _S.EXITED, _S.FAILED, _S.STOPPING}),
    _S.BACKOFF: frozenset({_S.STARTING, _S.STOPPED, _S.FAILED}),
    _S.STOPPING: frozenset({_S.STOPPED}),
    _S.EXITED: frozenset({_S.STARTING, _S.STOPPED}),
    _S.FAILED: frozenset({_S.STARTING, _S.STOPPED}),
    _S.EXTERNAL: frozenset({_S.STOPPED}),  # stopped by the user, `devmesh run`, or removed
}


class IllegalTransition(RuntimeError):
    """A bug: code asked for an edge the state machine does not have."""


def check_transition(name: str, old: ServiceState, new: ServiceState) -> None:
    """Raise `IllegalTransition` unless old -> new is an edge of the service state machine."""
    if new not in SERVICE_EDGES[old]:
        raise IllegalTransition(f"service {name}: {old.value} -> {new.value} is not allowed")


class WorkerState(enum.StrEnum):
    """A worker process as the parent sees it."""

    STARTING = "starting"  # spawned, no Ready yet
    RUNNING = "running"
    BACKOFF = "backoff"  # died; restart scheduled
    STOPPING = "stopping"
    STOPPED = "stopped"

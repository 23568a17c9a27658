"""Pure supervisor policies, driven by a fake clock: backoff, crash loops, start and stop order."""

from __future__ import annotations

import pytest

from devmesh.config.model import DependCondition, RestartPolicy
from devmesh.supervisor import policy
from devmesh.supervisor.policy import Exit, Restart, StayDown
from devmesh.supervisor.states import IllegalTransition, ServiceState, check_transition

S = ServiceState
D = DependCondition


class FakeClock:
    """Monotonic time that moves only when told to."""

    def __init__(self) -> None:
        self.now = 1000.0

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


def decide(history: list[Exit], restart: RestartPolicy) -> policy.Decision:
    """The restart decision with the default start_secs (1 s), max_restarts (5), backoff (0.5 s)."""
    return policy.after_exit(history, policy=restart, start_secs=1, max_restarts=5, backoff=0.5)


def run_crash_loop(
    clock: FakeClock, *, uptime: float, count: int, max_restarts: int = 5
) -> list[policy.Decision]:
    """Replay `count` crashes, each after `uptime` seconds, restarting when told to."""
    history: list[Exit] = []
    decisions: list[policy.Decision] = []
    for _ in range(count):
        started = clock.now
        clock.advance(uptime)
        history.append(Exit(started_at=started, ended_at=clock.now, code=1))
        decision = policy.after_exit(
            history,
            policy=RestartPolicy.ON_FAILURE,
            start_secs=1.0,
            max_restarts=max_restarts,
            backoff=0.5,
        )
        decisions.append(decision)
        if isinstance(decision, StayDown):
            break
        clock.now = decision.at
    return decisions


def test_backoff_doubles_for_quick_crashes_then_gives_up() -> None:
    clock = FakeClock()
    decisions = run_crash_loop(clock, uptime=0.1, count=10)
    delays = []
    for d in decisions[:-1]:
        assert isinstance(d, Restart)
        delays.append(d.attempt)
    assert delays == [1, 2, 3, 4, 5]
    last = decisions[-1]
    assert isinstance(last, StayDown) and last.failed
    assert "exited with code 1" in last.reason and "6 times" in last.reason


def test_backoff_delays_are_exponential_and_capped() -> None:
    history = [Exit(started_at=0, ended_at=0.1, code=1)]
    delays = []
    for _ in range(12):
        d = policy.after_exit(
            history, policy=RestartPolicy.ALWAYS, start_secs=1, max_restarts=100, backoff=0.5
        )
        assert isinstance(d, Restart)
        delays.append(round(d.at - history[-1].ended_at, 3))
        t = d.at
        history.append(Exit(started_at=t, ended_at=t + 0.1, code=1))
    assert delays[:5] == [0.5, 1.0, 2.0, 4.0, 8.0]
    assert max(delays) == policy.MAX_BACKOFF


def test_a_service_that_ran_long_enough_restarts_quickly_and_resets_the_count() -> None:
    clock = FakeClock()
    assert all(isinstance(d, Restart) for d in run_crash_loop(clock, uptime=5.0, count=50))


def test_on_failure_does_not_restart_a_clean_exit() -> None:
    d = decide([Exit(0, 10, code=0)], RestartPolicy.ON_FAILURE)
    assert d == StayDown(failed=False, reason="exited with code 0")


def test_policy_no_never_restarts_and_signals_are_failures() -> None:
    d = decide([Exit(0, 10, code=None, signal=9)], RestartPolicy.NO)
    assert isinstance(d, StayDown) and not d.failed and d.reason == "killed by signal 9"
    d2 = decide([Exit(0, 10, code=None, signal=9)], RestartPolicy.ON_FAILURE)
    assert isinstance(d2, Restart)


def test_always_restarts_clean_exits() -> None:
    d = policy.after_exit(
        [Exit(0, 10, code=0)], policy=RestartPolicy.ALWAYS, start_secs=1, max_restarts=5, backoff=2
    )
    assert d == Restart(at=12, attempt=0)


def test_start_order_respects_dependencies_and_file_order() -> None:
    deps = {
        "web": {"api": D.STARTED},
        "api": {"db": D.HEALTHY, "migrate": D.COMPLETED},
        "migrate": {"db": D.HEALTHY},
        "db": {},
        "clock": {},
    }
    order = policy.start_order(deps)
    assert order.index("db") < order.index("migrate") < order.index("api") < order.index("web")
    assert order[:2] == ["db", "clock"]  # both free at first: file order


def test_closure_and_reverse_stop_order() -> None:
    deps = {"web": {"api": D.STARTED}, "api": {"db": D.STARTED}, "db": {}, "other": {}}
    assert policy.closure(["web"], deps) == {"web", "api", "db"}
    assert policy.ready_to_stop({"web", "api", "db", "other"}, deps) == {"web", "other"}
    assert policy.ready_to_stop({"api", "db"}, deps) == {"api"}
    assert policy.ready_to_stop({"db"}, deps) == {"db"}


def test_dependency_conditions() -> None:
    assert policy.dependency_met(
        D.STARTED, started=True, running=False, completed=False, healthy=False
    )
    assert not policy.dependency_met(
        D.COMPLETED, started=True, running=True, completed=False, healthy=True
    )
    assert policy.dependency_met(
        D.COMPLETED, started=True, running=False, completed=True, healthy=False
    )
    assert not policy.dependency_met(
        D.HEALTHY, started=True, running=True, completed=False, healthy=False
    )


@pytest.mark.parametrize(
    ("old", "new", "ok"),
    [
        (S.STOPPED, S.STARTING, True),
        (S.STARTING, S.RUNNING, True),
        (S.RUNNING, S.BACKOFF, True),
        (S.BACKOFF, S.STARTING, True),
        (S.STOPPING, S.STOPPED, True),
        (S.STOPPED, S.RUNNING, False),
        (S.EXITED, S.RUNNING, False),
        (S.STOPPING, S.STARTING, False),
        (S.FAILED, S.BACKOFF, False),
    ],
)
def test_state_machine_edges(old: ServiceState, new: ServiceState, ok: bool) -> None:
    if ok:
        check_transition("api", old, new)
    else:
        with pytest.raises(IllegalTransition, match=f"{old.value} -> {new.value}"):
            check_transition("api", old, new)


def test_command_not_found_is_not_retried() -> None:
    d = decide([Exit(0, 0.01, code=127)], RestartPolicy.ALWAYS)
    assert d == StayDown(failed=True, reason="command not found (exit 127)")
    # The same code after a long run is an ordinary failure.
    d2 = decide([Exit(0, 30, code=127)], RestartPolicy.ALWAYS)
    assert isinstance(d2, Restart)


def test_backoff_grows_for_services_that_die_soon_after_start_secs() -> None:
    history: list[Exit] = []
    t = 0.0
    delays = []
    for _ in range(6):
        history.append(Exit(started_at=t, ended_at=t + 3, code=1))  # lives 3 s, < STABLE_SECS
        d = policy.after_exit(
            history, policy=RestartPolicy.ON_FAILURE, start_secs=1, max_restarts=5, backoff=0.5
        )
        assert isinstance(d, Restart)  # not a crash loop: it outlived start_secs
        delays.append(d.at - (t + 3))
        t = d.at
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0]


def test_unknown_service_suggests_the_closest_name() -> None:
    msg = policy.unknown_service("apu", ["api", "web"])
    assert msg == "unknown service 'apu' (did you mean 'api'?); known: api, web"

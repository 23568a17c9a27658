"""The life of every service: start in dependency order, read output, reap, restart, stop.

`ServiceSet` owns the `Service` records and is driven by the supervisor's loop (`core.py`),
which gives it a selector for output pipes, a timer heap, the log sink and the watchdog.
"""

from __future__ import annotations

import logging
import os
import selectors
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from devmesh.config.model import Config, DependCondition, ServiceConfig
from devmesh.logs.writer import LogSink
from devmesh.supervisor import frameworks, policy, procs
from devmesh.supervisor.reload import ConfigDiff
from devmesh.supervisor.service import OutputPipe, Service
from devmesh.supervisor.states import ALIVE_STATES, DOWN_STATES, ServiceState
from devmesh.supervisor.watchdog import Watchdog

S = ServiceState
LINGER_POLL = 0.05  # while a stopped service's group still has members
# A scan of /proc for marked processes is reused this long: a mass stop of 200 services would
# otherwise read every process's environment once per loop iteration.
SCAN_TTL = 0.25
HISTORY = 20  # exits kept per service (more if max_restarts needs them)
PROXY_ONLY = "not started (devmesh proxy): `devmesh run NAME` or `devmesh start NAME`"


class Host(Protocol):
    """What the supervisor's loop lends to the services."""

    logs: LogSink
    selector: selectors.BaseSelector
    watchdog: Watchdog
    shutting_down: bool

    def at(self, when: float, callback: Callable[[], None]) -> None:
        """Run `callback` at monotonic time `when`."""


class ServiceSet:
    """Every service of the project and the rules that move them between states."""

    def __init__(
        self,
        host: Host,
        config: Config,
        *,
        namespace: str,
        node_id: str,
        only: Sequence[str],
        run_commands: bool = True,
    ) -> None:
        self.host = host
        self.config = config
        self.namespace = namespace
        # False for `devmesh proxy`: no command is started on its own (services run by hand
        # are still probed and routed, and `devmesh run` or `devmesh start` may add more).
        self.run_commands = run_commands
        # Marks every process of this run (DEVMESH_INSTANCE=<node_id>.<n>), so that a process
        # that left its service's group can still be found and stopped.
        self.node_id = node_id
        self._marked_cache: dict[str, list[int]] | None = None
        self._marked_at = 0.0
        self._groups_cache: set[int] | None = None
        self._groups_at = 0.0
        self.dirty = True  # something changed: re-check which services may start
        self._spawns = 0
        self.services: dict[str, Service] = {}
        wanted = policy.closure(only or list(config.services), self.depends())
        self._add(list(config.services), wanted)

    def _add(self, names: list[str], wanted: set[str]) -> None:
        cfgs = [self.config.services[n] for n in names]
        ports = procs.free_ports(sum(1 for c in cfgs if c.port is None))
        for cfg in cfgs:
            port = cfg.port if cfg.port is not None else ports.pop()
            want = cfg.name in wanted and (self.run_commands or cfg.command is None)
            svc = self.services[cfg.name] = Service(config=cfg, port=port, wanted=want)
            if not self.run_commands and cfg.command is not None:
                svc.reason = PROXY_ONLY
            if cfg.command is not None:
                self.host.logs.open(cfg.name)
        self._set_urls()

    def _set_urls(self) -> None:
        self._ports = {s.name: s.port for s in self.services.values()}

    def apply(self, config: Config, change: ConfigDiff) -> None:
        """Run `config` from now on: start what was added, restart what changed, stop what
        was removed; leave everything else alone."""
        self.config = config
        for name in change.added:  # declared now: what `devmesh run --port` added stays
            svc = self.services.get(name)
            if svc is not None and svc.adhoc:
                svc.adhoc, svc.config = False, config.services[name]
        added = [n for n in change.added if n not in self.services]
        self._add(added, set(added))
        restart = set(change.changed)
        if change.env_changed:
            restart |= {n for n, c in config.services.items() if c.command is not None}
        for name in restart - set(change.added):
            svc = self.services[name]
            cfg = config.services[name]
            if cfg.port is not None:
                svc.port = cfg.port
            svc.config = cfg
            svc.history.clear()
            if svc.state in (S.STARTING, S.RUNNING, S.STOPPING):
                svc.restart_after_stop = True
                self.stop(svc)
            elif svc.state is S.EXTERNAL or (
                svc.state in (S.EXITED, S.FAILED, S.BACKOFF) and svc.wanted
            ):
                svc.to(S.STOPPED)  # the new config gets its chance; advance() starts it
        for name in change.removed:
            svc = self.services[name]
            svc.removing = True
            svc.user_stopped = True
            if svc.by_hand is not None:
                continue  # forgotten when `devmesh run` ends
            if svc.state in (S.STARTING, S.RUNNING):
                self.stop(svc)
            elif svc.state is not S.STOPPING:
                del self.services[name]
        # Config order, then what is still stopping.
        order = [n for n in config.services] + [
            n for n in self.services if n not in config.services
        ]
        self.services = {n: self.services[n] for n in order if n in self.services}
        self.dirty = True

    def __getitem__(self, name: str) -> Service:
        return self.services[name]

    def depends(self) -> dict[str, dict[str, DependCondition]]:
        """Each service's dependencies, in file order."""
        return {n: dict(c.depends_on) for n, c in self.config.services.items()}

    def alive(self) -> bool:
        """Whether any service still has a process."""
        return any(s.state in ALIVE_STATES for s in self.services.values())

    # ------------------------------------------------------------------ starting

    def env(self, svc: Service) -> dict[str, str]:
        """The environment of a service: ours, .env, its own env, then what devmesh defines."""
        env = service_env(
            os.environ, self.config, svc.config, svc.port, self.namespace, self._ports
        )
        env["DEVMESH_INSTANCE"] = svc.instance
        return env

    def advance(self) -> None:
        """Start every wanted service whose dependencies allow it, in dependency order."""
        if self.host.shutting_down:
            alive = {n for n, s in self.services.items() if s.state in ALIVE_STATES}
            for name in policy.ready_to_stop(alive, self.depends()):
                self.stop(self.services[name])
            return
        for name in policy.start_order(self.depends()):
            svc = self.services[name]
            if not svc.wanted or svc.user_stopped or svc.state is not S.STOPPED:
                continue
            if svc.config.command is None:
                self._expect_by_hand(svc)
                continue
            blocked = self._blocked_by(svc)
            if blocked is None:
                self.start(svc)
            elif blocked:
                svc.to(S.FAILED, blocked)
                self.host.logs.system(f"{name} not started: {blocked}", name, logging.WARNING)

    def _blocked_by(self, svc: Service) -> str | None:
        """None: may start now; "": wait (the reason says for what); else why it never can."""
        waiting: list[str] = []
        for dep_name, cond in svc.config.depends_on.items():
            dep = self.services[dep_name]
            last = dep.history[-1] if dep.history else None
            if dep.state is S.FAILED:
                return f"dependency {dep_name} failed"
            if dep.state is S.EXITED and last is not None:
                if cond is DependCondition.COMPLETED and last.failed:
                    return f"dependency {dep_name} {policy.describe_exit(last)}"
                if cond is DependCondition.HEALTHY:
                    return f"dependency {dep_name} {policy.describe_exit(last)}"
            met = policy.dependency_met(
                cond,
                # A dependency on its way down (a restart) is not "started" for a new start.
                started=dep.ever_started and dep.state not in (S.STOPPED, S.STOPPING),
                running=dep.state is S.RUNNING,
                completed=dep.state is S.EXITED and last is not None and not last.failed,
                healthy=dep.healthy or (dep.config.command is None),  # external: assumed
            )
            if not met:
                waiting.append(f"{dep_name} ({cond.value})")
        if waiting:
            svc.reason = "waiting for " + ", ".join(waiting)
            return ""
        return None

    def _expect_by_hand(self, svc: Service) -> None:
        """A service with no command: the user runs it by hand. Probed from now on; routed here
        and announced while it answers (STOPPED -> EXTERNAL)."""
        self._spawns += 1
        svc.instance = f"{self.node_id}.ext.{self._spawns}"
        svc.to(S.EXTERNAL, "")
        svc.ever_started = True
        svc.started_wall = time.time()
        svc.new_health(time.monotonic())
        self.dirty = True

    def start(self, svc: Service) -> None:
        """Spawn the service's process (its dependencies were checked by the caller)."""
        assert svc.config.command is not None
        self._spawns += 1
        svc.instance = f"{self.node_id}.{self._spawns}"
        command, added = frameworks.with_port_flags(svc.config, svc.port)  # vite & co.
        if added and not svc.ever_started:
            self.host.logs.system(added, svc.name)
        try:
            spawned = procs.spawn(command, cwd=svc.config.cwd, env=self.env(svc))
        except OSError as exc:
            svc.to(S.FAILED, f"cannot start: {exc.strerror or exc}")
            self.host.logs.system(f"{svc.name} cannot start: {exc}", svc.name, logging.ERROR)
            self.dirty = True
            return
        svc.proc = spawned
        svc.pgid = spawned.pid
        svc.listens, svc.port_looks = None, 0  # a new run: where it listens is found again
        svc.to(S.STARTING)  # STOPPED/BACKOFF/EXITED/FAILED -> STARTING
        svc.ever_started = True
        svc.started_at = time.monotonic()
        svc.started_wall = time.time()
        svc.new_health(svc.started_at)
        self.host.watchdog.add_group(spawned.pid)
        svc.output = OutputPipe(svc.name, spawned.output_fd)
        self.host.selector.register(
            spawned.output_fd, selectors.EVENT_READ, self._reader(svc.output)
        )
        self.host.logs.system(f"{svc.name} started (pid {spawned.pid}, port {svc.port})", svc.name)
        self._timer(svc, svc.config.start_secs, self._promote)
        self.dirty = True  # dependents waiting for "started"

    def _promote(self, svc: Service) -> None:
        if svc.state is S.STARTING:
            svc.to(S.RUNNING)  # STARTING -> RUNNING: alive for start_secs
            self.dirty = True

    def _reader(self, pipe: OutputPipe) -> Callable[[Any], None]:
        def on_readable(_: Any) -> None:
            self.read(pipe, chunks=4)  # bounded: one chatty service cannot starve the loop

        return on_readable

    def read(self, pipe: OutputPipe, chunks: int) -> None:
        """Hand up to `chunks` reads of a service's output to the log sink; close on EOF."""
        for _ in range(chunks):
            if not pipe.open:
                return
            try:
                data = os.read(pipe.fd, procs.READ_CHUNK)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                self.host.selector.unregister(pipe.fd)
                os.close(pipe.fd)
                pipe.open = False
                self.host.logs.end(pipe.name)
                return
            self.host.logs.feed(pipe.name, data)

    # ------------------------------------------------------------------ exits

    def reap(self) -> None:
        """Collect every service whose main process exited."""
        # A copy: a removed service that finishes stopping leaves the dict.
        for svc in list(self.services.values()):
            if svc.by_hand is not None and not procs.pid_alive(svc.by_hand):
                self.detach(svc, f" (devmesh run, pid {svc.by_hand}, ended)", by_user=False)
            if svc.proc is not None:
                code = svc.proc.popen.poll()
                if code is not None:
                    self._on_exit(svc, code)

    def _on_exit(self, svc: Service, code: int) -> None:
        assert svc.proc is not None
        if svc.output is not None:
            # Everything it wrote before it died comes before the news of its exit.
            self.read(svc.output, chunks=64)
        now = time.monotonic()
        ex = policy.Exit(
            started_at=svc.started_at,
            ended_at=now,
            code=code if code >= 0 else None,
            signal=-code if code < 0 else None,
        )
        keep = max(HISTORY, svc.config.max_restarts + 2)
        svc.history = [*svc.history[-keep + 1 :], ex]
        svc.proc = None
        self.dirty = True
        if svc.state is S.STOPPING:
            # The group may still be finishing (a shell's children got the signal too); it
            # gets until stop_timeout like the main process did.
            self._linger(svc)
            return
        # An exit on its own: whatever is left of it goes too, before it is started again.
        self._kill_remains(svc)
        what = policy.describe_exit(ex)
        decision = policy.after_exit(
            svc.history,
            policy=svc.config.restart,
            start_secs=svc.config.start_secs,
            max_restarts=svc.config.max_restarts,
            backoff=svc.config.backoff,
        )
        if self.host.shutting_down:
            svc.to(S.EXITED, what)
        elif isinstance(decision, policy.Restart):
            delay = max(0.0, decision.at - now)
            svc.to(S.BACKOFF, f"{what}; restarting in {delay:.2g}s")
            self.host.logs.system(
                f"{svc.name} {what}, restarting in {delay:.2g}s", svc.name, logging.WARNING
            )
            self._timer(svc, delay, self._restart_from_backoff)
        elif decision.failed:
            svc.to(S.FAILED, decision.reason)
            self.host.logs.system(f"{svc.name} failed: {decision.reason}", svc.name, logging.ERROR)
        else:
            svc.to(S.EXITED, decision.reason)
            self.host.logs.system(f"{svc.name} {decision.reason}", svc.name)

    def _restart_from_backoff(self, svc: Service) -> None:
        if svc.state is S.BACKOFF and not self.host.shutting_down:
            svc.restarts += 1
            self.start(svc)  # BACKOFF -> STARTING

    def _kill_remains(self, svc: Service) -> None:
        """SIGKILL what is left of a service: its group and processes that left the group."""
        if svc.pgid is not None:
            procs.signal_group(svc.pgid, signal.SIGKILL)
            self.host.watchdog.remove_group(svc.pgid)
            svc.pgid = None
        for pid in self.marked(svc.instance):
            procs.signal_pid(pid, signal.SIGKILL)

    # ------------------------------------------------------------------ stopping

    def stop(self, svc: Service) -> None:
        """Send the stop signal to the service's group; SIGKILL after stop_timeout."""
        if svc.by_hand is not None:
            self.detach(svc, "")  # not ours to signal: it is only no longer announced
            return
        if svc.state is S.EXTERNAL:  # EXTERNAL -> STOPPED: no longer probed, routed, announced
            svc.to(S.STOPPED, "stopped by user" if svc.user_stopped else "")
            self.dirty = True
            return
        if svc.state is S.BACKOFF:
            svc.to(S.STOPPED, "stopped by user" if svc.user_stopped else "")
            return
        if svc.state not in (S.STARTING, S.RUNNING) or svc.pgid is None:
            return
        svc.to(S.STOPPING)  # STARTING/RUNNING -> STOPPING
        sig = svc.config.stop_signal
        procs.signal_group(svc.pgid, sig)
        for pid in self.marked(svc.instance):
            if procs.pgid_of(pid) != svc.pgid:  # the group got it already
                procs.signal_pid(pid, sig)
        self._timer(svc, svc.config.stop_timeout, self._escalate)

    def _escalate(self, svc: Service) -> None:
        if svc.state is S.STOPPING:
            self.host.logs.system(
                f"{svc.name} did not stop within {svc.config.stop_timeout:g}s, killing it",
                svc.name,
            )
            self._kill_remains(svc)
            if svc.proc is None:
                self._finish_stop(svc)

    def _linger(self, svc: Service) -> None:
        if svc.state is not S.STOPPING or svc.proc is not None:
            return
        if svc.pgid is not None and self._group_alive(svc.pgid):
            self._timer(svc, LINGER_POLL, self._linger)
        else:
            self._finish_stop(svc)

    def _group_alive(self, pgid: int) -> bool:
        """Whether a live (not zombie) process is left in the group; one /proc scan serves
        every lingering service for LINGER_POLL."""
        if not procs.group_alive(pgid):
            return False
        now = time.monotonic()
        if self._groups_cache is None or now - self._groups_at >= LINGER_POLL:
            self._groups_cache = procs.live_groups()
            self._groups_at = now
        return self._groups_cache is None or pgid in self._groups_cache

    def _finish_stop(self, svc: Service) -> None:
        self._kill_remains(svc)
        last = svc.history[-1] if svc.history else None
        svc.to(S.STOPPED, "stopped by user" if svc.user_stopped else "")  # STOPPING -> STOPPED
        what = f" ({policy.describe_exit(last)})" if last else ""
        self.host.logs.system(f"{svc.name} stopped{what}", svc.name)
        if svc.removing:
            del self.services[svc.name]
        elif svc.restart_after_stop and not self.host.shutting_down:
            svc.restart_after_stop = False
            svc.wanted = True  # started again by advance(), once its dependencies allow
        self.dirty = True

    def kill_all(self) -> None:
        """The second Ctrl+C: SIGKILL every service now."""
        for svc in list(self.services.values()):  # a removed service may leave the dict
            if svc.state in (S.STARTING, S.RUNNING):
                svc.to(S.STOPPING)
            if svc.state is S.STOPPING:
                self._kill_remains(svc)
                if svc.proc is None:
                    self._finish_stop(svc)

    def begin_shutdown(self) -> None:
        """Cancel pending restarts; advance() then stops services in reverse dependency order."""
        for svc in self.services.values():
            if svc.state is S.BACKOFF:
                svc.to(S.STOPPED)
        self.dirty = True

    # ------------------------------------------------------------------ user actions

    def end_unhealthy(self, svc: Service) -> None:
        """`restart_on_unhealthy`: end the run the way a crash would, so the restart policy and
        its backoff (and the crash-loop limit) decide what comes next."""
        if svc.proc is None or svc.pgid is None or svc.state not in (S.STARTING, S.RUNNING):
            return
        self.host.logs.system(
            f"{svc.name} stays unhealthy: ending it to restart it (restart_on_unhealthy)", svc.name
        )
        procs.signal_group(svc.pgid, svc.config.stop_signal)
        self._timer(svc, svc.config.stop_timeout, self._kill_remains)  # the same run, still up

    def attach(self, svc: Service, pid: int) -> str:
        """`devmesh run`: the user runs the service by hand on its port; devmesh routes to it
        and announces it while its port answers, until that command ends. '' or why not."""
        if svc.by_hand is not None:
            return f"{svc.name} is already run by hand (devmesh run, pid {svc.by_hand})"
        if svc.state in ALIVE_STATES or svc.state is S.BACKOFF:
            return (
                f"{svc.name} runs under devmesh ({svc.state.value}); "
                f"stop it first with `devmesh stop {svc.name}`"
            )
        if svc.state is not S.STOPPED:
            svc.to(S.STOPPED)  # EXTERNAL/EXITED/FAILED -> STOPPED
        svc.by_hand = pid
        svc.user_stopped = True  # devmesh never starts it while it is run by hand
        svc.instance = f"{self.node_id}.hand.{pid}"
        svc.new_health(time.monotonic())
        svc.to(S.STARTING)
        svc.to(S.RUNNING, f"run by hand (devmesh run, pid {pid})")
        self.host.logs.system(f"{svc.name} run by hand on port {svc.port} (pid {pid})", svc.name)
        self.dirty = True
        return ""

    def register(self, name: str, port: int, pid: int) -> Service:
        """`devmesh run NAME --port N` for a name the config does not declare: a service that
        lasts as long as that command (`port` 0: a free one)."""
        cfg = ServiceConfig(name=name, port=port or None, cwd=self.config.root)
        svc = Service(config=cfg, port=port or procs.free_ports(1)[0], adhoc=True)
        self.services[name] = svc
        self._set_urls()
        self.attach(svc, pid)
        return svc

    def detach(self, svc: Service, why: str, *, by_user: bool = True) -> None:
        """The end of `devmesh run` for `svc`: no longer routed here nor announced. A declared
        service without a command goes back to being probed on its port, unless the user
        stopped it (`devmesh stop`); one that only `devmesh run` declared is forgotten."""
        if svc.by_hand is None:
            return
        svc.by_hand = None
        svc.to(S.STOPPING)
        svc.to(S.STOPPED, "stopped by user" if by_user else "")
        self.host.logs.system(f"{svc.name} no longer run by hand{why}", svc.name)
        if svc.removing or svc.adhoc:
            del self.services[svc.name]
            self._set_urls()
        elif svc.config.command is None and not by_user:
            svc.user_stopped = False  # advance(): STOPPED -> EXTERNAL
        self.dirty = True

    def user_start(self, svc: Service) -> str:
        """`devmesh start`: start it and whatever it needs; '' or why not."""
        if svc.by_hand is not None:
            return f"{svc.name} is run by hand (devmesh run, pid {svc.by_hand})"
        if svc.state in ALIVE_STATES or svc.state is S.EXTERNAL:
            return f"{svc.name} is already {svc.state.value}"
        svc.history.clear()  # a user start forgives an old crash loop
        for name in policy.closure([svc.name], self.depends()):
            dep = self.services[name]
            dep.wanted = True
            dep.user_stopped = False
            last = dep.history[-1] if dep.history else None
            retry = dep.state is S.FAILED or (dep.state is S.EXITED and last and last.failed)
            if name == svc.name or retry:
                if dep.state in (S.EXITED, S.FAILED):
                    dep.to(S.STOPPED)  # EXITED/FAILED -> STOPPED, started by advance()
                elif dep.state is S.BACKOFF:
                    dep.to(S.STOPPED)
        self.dirty = True
        return ""

    def user_stop(self, svc: Service) -> str:
        """`devmesh stop`: stop it and never restart it on its own; '' or why not."""
        if svc.state in DOWN_STATES:
            return f"{svc.name} is not running ({svc.state.value})"
        svc.user_stopped = True
        svc.restart_after_stop = False
        self.host.logs.system(f"stopping {svc.name} (devmesh stop)", svc.name)
        self.stop(svc)
        return ""

    def user_restart(self, svc: Service) -> str:
        """`devmesh restart`: stop it if it runs, then start it again."""
        if svc.by_hand is not None:
            return f"{svc.name} is run by hand (devmesh run, pid {svc.by_hand})"
        if svc.config.command is None:
            return f"{svc.name} has no command: you run it by hand, so devmesh cannot restart it"
        svc.user_stopped = False
        svc.history.clear()
        if svc.state in (S.STARTING, S.RUNNING, S.STOPPING):
            svc.restart_after_stop = True
            self.host.logs.system(f"restarting {svc.name} (devmesh restart)", svc.name)
            self.stop(svc)
            return ""
        return self.user_start(svc)

    def change_restart(self, svc: Service, why: str) -> bool:
        """Watch mode: files `svc` watches changed (`why` says which). Restart it if it runs;
        start it again if it crashed, waits in backoff or exited (with a fresh crash count, as
        the change may be the fix). Never one the user stopped, nor one already stopping (its
        next start sees the change). Whether it did something."""
        if svc.user_stopped or not svc.wanted or svc.removing or svc.by_hand is not None:
            return False
        if svc.state in (S.STARTING, S.RUNNING):
            svc.restart_after_stop = True
            svc.history.clear()
            self.host.logs.system(f"{svc.name} restarting: {why}", svc.name)
            self.stop(svc)
            return True
        if svc.state in (S.BACKOFF, S.EXITED, S.FAILED):
            svc.history.clear()
            svc.to(S.STOPPED)  # BACKOFF/EXITED/FAILED -> STOPPED, started by advance()
            self.host.logs.system(f"{svc.name} starting again: {why}", svc.name)
            self.dirty = True
            return True
        return False

    # ------------------------------------------------------------------ marked processes

    def marked(self, instance: str) -> list[int]:
        """Processes carrying DEVMESH_INSTANCE=instance (from a scan at most SCAN_TTL old)."""
        now = time.monotonic()
        if self._marked_cache is None or now - self._marked_at > SCAN_TTL:
            self._marked_cache = procs.scan_marked(self.node_id)
            self._marked_at = now
        return self._marked_cache.get(instance, [])

    def sweep(self) -> None:
        """The end of a shutdown: SIGKILL every process still carrying this node's mark."""
        for pids in procs.scan_marked(self.node_id).values():
            for pid in pids:
                procs.signal_pid(pid, signal.SIGKILL)

    # ------------------------------------------------------------------ timers

    def _timer(self, svc: Service, delay: float, action: Callable[[Service], None]) -> None:
        """Run `action(svc)` after `delay`, unless the service changed state in between."""
        token = svc.timer_token

        def fire() -> None:
            if svc.timer_token == token:
                action(svc)

        self.host.at(time.monotonic() + delay, fire)


def service_env(
    base: Mapping[str, str],
    config: Config,
    cfg: ServiceConfig,
    port: int,
    namespace: str,
    ports: Mapping[str, int],
) -> dict[str, str]:
    """A service's environment: `base` (devmesh's own), .env, its `env`, then what devmesh
    defines (`PORT`, `DEVMESH_<NAME>_URL` of the others, ...). `devmesh run NAME -- CMD` gives
    its command the same."""
    env = dict(base)
    env.update(config.dotenv)
    env.update(cfg.env)
    env.setdefault("PYTHONUNBUFFERED", "1")  # output line by line without the user asking
    env.update(
        {
            f"DEVMESH_{env_name(n)}_URL": f"http://localhost:{p}"
            for n, p in ports.items()
            if n != cfg.name
        }
    )
    env["PORT"] = str(port)
    env["DEVMESH_SERVICE"] = cfg.name
    env["DEVMESH_NAMESPACE"] = namespace
    return env


def env_name(name: str) -> str:
    """`web-ui` -> `WEB_UI`, for DEVMESH_<NAME>_URL."""
    return "".join(c if c.isalnum() else "_" for c in name).upper()

"""The parent supervisor: the only owner of state, the only terminal writer.

One thread, one loop: a selector waits on service output pipes, worker pipes and sentinels, and
a signal wake-up fd at once. Signal handlers only append to a list. Everything that happens later
(a backoff restart, a stop escalating to SIGKILL, STARTING becoming RUNNING) is a timer on a heap.
"""

from __future__ import annotations

import contextlib
import heapq
import os
import selectors
import signal
import socket
import time
from collections.abc import Callable, Sequence
from typing import Any

import psutil

from devmesh import __version__
from devmesh import messages as m
from devmesh.config.model import Config, DependCondition
from devmesh.logs.writer import LogSink
from devmesh.namespace import resolve_namespace
from devmesh.paths import ProjectPaths
from devmesh.supervisor import policy, procs
from devmesh.supervisor.lock import ProjectLock
from devmesh.supervisor.service import Service
from devmesh.supervisor.states import ALIVE_STATES, DOWN_STATES, ServiceState, WorkerState
from devmesh.supervisor.watchdog import Watchdog
from devmesh.supervisor.workers import SILENCE_LIMIT, WorkerHandle, WorkerSpec

S = ServiceState
READ_CHUNK = 256 * 1024
TICK = 1.0  # the loop wakes at least this often (heartbeat checks, reaping as a fallback)
WORKER_STOP_GRACE = 3.0


class Supervisor:
    """Runs one project's services and workers until shut down."""

    def __init__(
        self,
        config: Config,
        paths: ProjectPaths,
        *,
        only: Sequence[str] = (),
        terminal_fd: int | None = 1,
        color: bool = False,
        namespace: str | None = None,
    ) -> None:
        self.config = config
        self.paths = paths
        self.namespace = namespace or resolve_namespace(config.mesh.namespace, config.root)
        self.logs = LogSink(
            terminal_fd,
            color=color,
            log_dir=paths.logs,
            max_bytes=config.log.max_size,
            backups=config.log.backups,
        )
        self.selector = selectors.DefaultSelector()
        self.services: dict[str, Service] = {}
        self.workers: dict[str, WorkerHandle] = {}
        self._signals: list[int] = []
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = 0
        self._dirty = True  # something changed: re-check which services may start
        self._shutting_down = False
        self._forced = False
        self._exit_code = 0
        self._control_sock: socket.socket | None = None
        self._lock = ProjectLock(paths.lock)
        self._only = list(only)
        self.started_wall = time.time()
        self.watchdog = Watchdog()

    # ------------------------------------------------------------------ running

    def run(self) -> int:
        """Start everything, loop until shut down, stop everything; the process exit code."""
        self.paths.ensure()
        self._lock.acquire()  # raises AlreadyRunning
        try:
            self.paths.pidfile.write_text(f"{os.getpid()}\n")
            self.watchdog.start()  # first: before anything it must clean up exists
            self._install_signals()
            self._bind_control_socket()
            self._create_services()
            self._start_workers()
            self.logs.system(
                f"devmesh {__version__} up: project {self.config.name}, namespace "
                f"{self.namespace}, {len(self.services)} services, control {self.paths.socket}"
            )
            while not self._finished():
                self._tick()
            self._stop_workers()
            return self._exit_code
        finally:
            self._cleanup()

    def _finished(self) -> bool:
        return self._shutting_down and not any(
            s.state in ALIVE_STATES for s in self.services.values()
        )

    def _tick(self) -> None:
        now = time.monotonic()
        timeout = TICK
        if self._timers:
            timeout = max(0.0, min(timeout, self._timers[0][0] - now))
        if self._dirty:
            timeout = 0.0
        for key, _ in self.selector.select(timeout):
            key.data(key.fileobj)
        self._handle_signals()
        self._run_timers()
        if self._dirty:
            self._dirty = False
            self._advance()
        self._check_workers()
        if self.watchdog.poll():
            self.logs.system(f"watchdog restarted (pid {self.watchdog.pid})")
        self.logs.flush()

    # ------------------------------------------------------------------ timers

    def _at(self, when: float, callback: Callable[[], None]) -> None:
        self._seq += 1
        heapq.heappush(self._timers, (when, self._seq, callback))

    def _service_timer(self, svc: Service, delay: float, action: Callable[[Service], None]) -> None:
        """Run `action(svc)` after `delay`, unless the service changed state in between."""
        token = svc.timer_token

        def fire() -> None:
            if svc.timer_token == token:
                action(svc)

        self._at(time.monotonic() + delay, fire)

    def _run_timers(self) -> None:
        now = time.monotonic()
        while self._timers and self._timers[0][0] <= now:
            _, _, callback = heapq.heappop(self._timers)
            callback()

    # ------------------------------------------------------------------ signals

    def _install_signals(self) -> None:
        wake_r, wake_w = socket.socketpair()
        wake_r.setblocking(False)
        wake_w.setblocking(False)
        self._wake = (wake_r, wake_w)
        signal.set_wakeup_fd(wake_w.fileno(), warn_on_full_buffer=False)
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(sig, self._on_signal)
        self.selector.register(wake_r, selectors.EVENT_READ, self._on_wake)

    def _on_signal(self, signum: int, frame: object) -> None:
        self._signals.append(signum)  # only enqueue: the loop does the work

    def _on_wake(self, sock: Any) -> None:
        with contextlib.suppress(BlockingIOError):
            while sock.recv(4096):
                pass

    def _handle_signals(self) -> None:
        while self._signals:
            signum = self._signals.pop(0)
            if signum == signal.SIGCHLD:
                self._reap_services()
            elif signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                if self._shutting_down:
                    self._force_kill()
                else:
                    name = signal.Signals(signum).name
                    self.logs.system(f"{name} received, stopping (again to kill at once)")
                    self.begin_shutdown()

    # ------------------------------------------------------------------ services

    def _create_services(self) -> None:
        cfgs = self.config.services
        ports: dict[str, int] = {}
        for name, cfg in cfgs.items():
            ports[name] = cfg.port if cfg.port is not None else procs.free_port()
        wanted = policy.closure(self._only or list(cfgs), self._depends())
        for name, cfg in cfgs.items():
            svc = Service(config=cfg, port=ports[name], wanted=name in wanted)
            self.services[name] = svc
            if cfg.command is not None:
                self.logs.open(name)
        self._urls = {
            f"DEVMESH_{_env_name(n)}_URL": f"http://localhost:{p}" for n, p in ports.items()
        }

    def _depends(self) -> dict[str, dict[str, DependCondition]]:
        return {n: dict(c.depends_on) for n, c in self.config.services.items()}

    def _env(self, svc: Service) -> dict[str, str]:
        env = dict(os.environ)
        env.update(self.config.dotenv)
        env.update(svc.config.env)
        env.setdefault("PYTHONUNBUFFERED", "1")  # output line by line without the user asking
        own = f"DEVMESH_{_env_name(svc.name)}_URL"
        env.update({k: v for k, v in self._urls.items() if k != own})
        env["PORT"] = str(svc.port)
        env["DEVMESH_SERVICE"] = svc.name
        env["DEVMESH_NAMESPACE"] = self.namespace
        return env

    def _advance(self) -> None:
        """Start every wanted service whose dependencies allow it, in dependency order."""
        if self._shutting_down:
            self._stop_ready_for_shutdown()
            return
        for name in policy.start_order(self._depends()):
            svc = self.services[name]
            if not svc.wanted or svc.user_stopped or svc.state is not S.STOPPED:
                continue
            if svc.config.command is None:
                continue  # external: announced by `devmesh run`
            blocked = self._blocked_by(svc)
            if blocked is None:
                self._start(svc)
            elif blocked:
                svc.to(S.FAILED, blocked)
                self.logs.system(f"{name} not started: {blocked}", name)

    def _blocked_by(self, svc: Service) -> str | None:
        """None: may start now; "": wait; else why it never can."""
        for dep_name, cond in svc.config.depends_on.items():
            dep = self.services[dep_name]
            if dep.state is S.FAILED:
                return f"dependency {dep_name} failed"
            if cond is DependCondition.COMPLETED and dep.state is S.EXITED and dep.last_exit_code():
                return f"dependency {dep_name} exited with code {dep.last_exit_code()}"
            met = policy.dependency_met(
                cond,
                started=dep.ever_started and dep.state is not S.STOPPED,
                running=dep.state is S.RUNNING,
                completed=dep.state is S.EXITED and dep.last_exit_code() == 0,
                healthy=dep.state is S.RUNNING,  # until health checks exist: alive start_secs
            )
            if not met:
                return ""
        return None

    def _start(self, svc: Service) -> None:
        assert svc.config.command is not None
        try:
            svc.proc = procs.spawn(svc.config.command, cwd=svc.config.cwd, env=self._env(svc))
        except OSError as exc:
            svc.to(S.FAILED, f"cannot start: {exc.strerror or exc}")
            self.logs.system(f"{svc.name} cannot start: {exc}", svc.name)
            self._dirty = True
            return
        svc.to(S.STARTING)  # STOPPED/BACKOFF/EXITED/FAILED -> STARTING
        svc.ever_started = True
        svc.started_at = time.monotonic()
        svc.started_wall = time.time()
        self.watchdog.add_group(svc.proc.pid)
        fd = svc.proc.output_fd
        self.selector.register(fd, selectors.EVENT_READ, self._output_reader(svc.name, fd))
        self.logs.system(f"{svc.name} started (pid {svc.proc.pid}, port {svc.port})", svc.name)
        self._service_timer(svc, svc.config.start_secs, self._promote)
        self._dirty = True  # dependents waiting for "started"

    def _promote(self, svc: Service) -> None:
        if svc.state is S.STARTING:
            svc.to(S.RUNNING)  # STARTING -> RUNNING: alive for start_secs
            self._dirty = True

    def _output_reader(self, name: str, fd: int) -> Callable[..., None]:
        def on_readable(_: Any, chunks: int = 4) -> None:
            # Bounded, so that one chatty service cannot starve the loop.
            for _ in range(chunks):
                try:
                    data = os.read(fd, READ_CHUNK)
                except BlockingIOError:
                    return
                except OSError:
                    data = b""
                if not data:
                    self.selector.unregister(fd)
                    os.close(fd)
                    self.logs.end(name)
                    return
                self.logs.feed(name, data)

        return on_readable

    def _reap_services(self) -> None:
        for svc in self.services.values():
            if svc.proc is None:
                continue
            code = svc.proc.popen.poll()
            if code is not None:
                self._on_exit(svc, code)

    def _on_exit(self, svc: Service, code: int) -> None:
        assert svc.proc is not None
        pid = svc.proc.pid
        # Everything it wrote before it died comes before the news of its exit.
        key = self.selector.get_map().get(svc.proc.output_fd)
        if key is not None:
            key.data(key.fileobj, chunks=64)
        # Whatever is left of its group (a background grandchild) goes with it.
        procs.signal_group(pid, signal.SIGKILL)
        svc.kill_escaped()
        self.watchdog.remove_group(pid)
        svc.proc = None
        now = time.monotonic()
        ex = policy.Exit(
            started_at=svc.started_at,
            ended_at=now,
            code=code if code >= 0 else None,
            signal=-code if code < 0 else None,
        )
        svc.history = [*svc.history[-20:], ex]
        what = policy.describe_exit(ex)
        self._dirty = True
        if svc.state is S.STOPPING:
            svc.to(S.STOPPED, "stopped by user" if svc.user_stopped else "")
            self.logs.system(f"{svc.name} stopped ({what})", svc.name)
            if svc.restart_after_stop and not self._shutting_down:
                svc.restart_after_stop = False
                svc.restarts += 1
                self._start(svc)
            return
        decision = policy.after_exit(
            svc.history,
            policy=svc.config.restart,
            start_secs=svc.config.start_secs,
            max_restarts=svc.config.max_restarts,
            backoff=svc.config.backoff,
        )
        if self._shutting_down:
            svc.to(S.EXITED, what)
        elif isinstance(decision, policy.Restart):
            delay = max(0.0, decision.at - now)
            svc.to(S.BACKOFF, f"{what}; restarting in {delay:.2g}s")
            self.logs.system(f"{svc.name} {what}, restarting in {delay:.2g}s", svc.name)
            self._service_timer(svc, delay, self._restart_from_backoff)
        elif decision.failed:
            svc.to(S.FAILED, decision.reason)
            self.logs.system(f"{svc.name} failed: {decision.reason}", svc.name)
        else:
            svc.to(S.EXITED, decision.reason)
            self.logs.system(f"{svc.name} {decision.reason}", svc.name)

    def _restart_from_backoff(self, svc: Service) -> None:
        if svc.state is S.BACKOFF and not self._shutting_down:
            svc.restarts += 1
            self._start(svc)  # BACKOFF -> STARTING

    def _stop(self, svc: Service) -> None:
        """Send the stop signal to the service's group; SIGKILL after stop_timeout."""
        if svc.state is S.BACKOFF:
            svc.to(S.STOPPED)
            return
        if svc.state not in (S.STARTING, S.RUNNING) or svc.proc is None:
            return
        pid = svc.proc.pid
        svc.escaped = _escaped_from_group(pid)
        svc.to(S.STOPPING)  # STARTING/RUNNING -> STOPPING
        procs.signal_group(pid, svc.config.stop_signal)
        for proc in svc.escaped:
            with contextlib.suppress(psutil.Error):
                proc.send_signal(svc.config.stop_signal)
        self._service_timer(svc, svc.config.stop_timeout, self._escalate)

    def _escalate(self, svc: Service) -> None:
        if svc.state is S.STOPPING and svc.proc is not None:
            self.logs.system(
                f"{svc.name} did not stop within {svc.config.stop_timeout:g}s, killing it",
                svc.name,
            )
            procs.signal_group(svc.proc.pid, signal.SIGKILL)
            svc.kill_escaped()

    # ------------------------------------------------------------------ shutdown

    def begin_shutdown(self) -> None:
        """Stop every service in reverse dependency order, then the workers."""
        self._shutting_down = True
        for svc in self.services.values():
            if svc.state is S.BACKOFF:
                svc.to(S.STOPPED)
        self._dirty = True

    def _stop_ready_for_shutdown(self) -> None:
        alive = {n for n, s in self.services.items() if s.state in ALIVE_STATES}
        for name in policy.ready_to_stop(alive, self._depends()):
            self._stop(self.services[name])

    def _force_kill(self) -> None:
        if self._forced:
            return
        self._forced = True
        self.logs.system("killing every service now")
        for svc in self.services.values():
            if svc.proc is not None:
                procs.signal_group(svc.proc.pid, signal.SIGKILL)
                svc.kill_escaped()
                if svc.state is not S.STOPPING:
                    svc.to(S.STOPPING)

    # ------------------------------------------------------------------ workers

    def _bind_control_socket(self) -> None:
        path = self.paths.socket
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # we hold the project lock, so a socket file here is stale
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(str(path))
        os.chmod(path, 0o600)
        sock.listen(128)
        self._control_sock = sock

    def _start_workers(self) -> None:
        assert self._control_sock is not None
        ctl = self._control_sock
        specs = [WorkerSpec("control", "devmesh.control.worker:make_role", sockets=lambda: [ctl])]
        for spec in specs:
            handle = WorkerHandle(spec=spec, project=self.config.name)
            self.workers[spec.name] = handle
            self._start_worker(handle)

    def _start_worker(self, handle: WorkerHandle) -> None:
        handle.start(time.monotonic())
        assert handle.process is not None and handle.conn is not None
        pid = handle.process.pid
        assert pid is not None
        self.watchdog.add_pid(pid)
        self.selector.register(
            handle.conn, selectors.EVENT_READ, lambda _: self._from_worker(handle)
        )
        self.selector.register(
            handle.process.sentinel, selectors.EVENT_READ, lambda _: self._worker_died(handle)
        )

    def _from_worker(self, handle: WorkerHandle) -> None:
        for msg in handle.receive(time.monotonic()):
            if isinstance(msg, m.ControlRequest):
                handle.send(self._control(msg))

    def _worker_died(self, handle: WorkerHandle) -> None:
        assert handle.process is not None and handle.conn is not None
        self.selector.unregister(handle.conn)
        self.selector.unregister(handle.process.sentinel)
        pid = handle.pid
        if pid is not None:
            self.watchdog.remove_pid(pid)
        stopping = handle.state is WorkerState.STOPPING or self._shutting_down
        restart_at = handle.reap(time.monotonic(), restart=not stopping)
        if restart_at is None:
            return
        self.logs.system(f"worker {handle.name} died ({handle.last_exit}), restarting")

        def restart() -> None:
            if handle.state is WorkerState.BACKOFF and not self._shutting_down:
                self._start_worker(handle)

        self._at(restart_at, restart)

    def _check_workers(self) -> None:
        now = time.monotonic()
        for handle in self.workers.values():
            live = handle.state in (WorkerState.STARTING, WorkerState.RUNNING)
            if live and handle.silent_for(now) > SILENCE_LIMIT:
                self.logs.system(f"worker {handle.name} silent for {SILENCE_LIMIT:g}s, killing it")
                handle.kill()
                handle.last_heard = now  # its sentinel reports the death

    def _stop_workers(self) -> None:
        live = [h for h in self.workers.values() if h.process is not None]
        for handle in live:
            handle.state = WorkerState.STOPPING
            handle.send(m.Stop())
        deadline = time.monotonic() + WORKER_STOP_GRACE
        for handle in live:
            assert handle.process is not None
            handle.process.join(max(0.0, deadline - time.monotonic()))
            if handle.process.exitcode is None:
                handle.kill()
                handle.process.join(1.0)
            pid = handle.pid
            if pid is not None:
                self.watchdog.remove_pid(pid)

    def _cleanup(self) -> None:
        self.logs.flush()
        for svc in self.services.values():  # only after an error in the loop itself
            if svc.proc is not None:
                procs.signal_group(svc.proc.pid, signal.SIGKILL)
        if self._control_sock is not None:
            self._control_sock.close()
            with contextlib.suppress(FileNotFoundError):
                self.paths.socket.unlink()
        with contextlib.suppress(FileNotFoundError):
            self.paths.pidfile.unlink()
        self.watchdog.close()
        self.logs.close()
        self._lock.release()

    # ------------------------------------------------------------------ control

    def _control(self, req: m.ControlRequest) -> m.ControlReply:
        if req.action == "status":
            return m.ControlReply(id=req.id, ok=True, data=self.status())
        if req.action == "shutdown":
            if not self._shutting_down:
                self.logs.system("shutdown requested (devmesh down)")
                self.begin_shutdown()
            return m.ControlReply(id=req.id, ok=True, data={"pid": os.getpid()})
        name = str(req.args.get("name", ""))
        svc = self.services.get(name)
        if svc is None:
            return m.ControlReply(
                id=req.id, ok=False, status=404, error=unknown_service(name, self.services)
            )
        if self._shutting_down:
            return m.ControlReply(id=req.id, ok=False, status=409, error="devmesh is shutting down")
        if svc.config.command is None:
            return m.ControlReply(
                id=req.id,
                ok=False,
                status=409,
                error=f"{name} has no command: it is an external service",
            )
        error = getattr(self, f"_user_{req.action}")(svc)
        if error:
            return m.ControlReply(id=req.id, ok=False, status=409, error=error)
        return m.ControlReply(id=req.id, ok=True, data=svc.snapshot(time.monotonic()))

    def _user_start(self, svc: Service) -> str:
        if svc.state in ALIVE_STATES:
            return f"{svc.name} is already {svc.state.value}"
        svc.user_stopped = False
        svc.history.clear()  # a user start forgives an old crash loop
        for name in policy.closure([svc.name], self._depends()):
            dep = self.services[name]
            dep.wanted = True
            if dep.state in (S.EXITED, S.FAILED) and (name == svc.name or dep.state is S.FAILED):
                dep.to(S.STOPPED)
        if svc.state is S.BACKOFF:
            svc.to(S.STOPPED)
        self._dirty = True
        return ""

    def _user_stop(self, svc: Service) -> str:
        svc.user_stopped = True
        svc.restart_after_stop = False
        if svc.state in DOWN_STATES:
            return f"{svc.name} is not running ({svc.state.value})"
        self.logs.system(f"stopping {svc.name} (devmesh stop)", svc.name)
        self._stop(svc)
        return ""

    def _user_restart(self, svc: Service) -> str:
        svc.user_stopped = False
        svc.history.clear()
        if svc.state in (S.STARTING, S.RUNNING):
            svc.restart_after_stop = True
            self.logs.system(f"restarting {svc.name} (devmesh restart)", svc.name)
            self._stop(svc)
            return ""
        if svc.state is S.STOPPING:
            svc.restart_after_stop = True
            return ""
        return self._user_start(svc)

    def status(self) -> dict[str, Any]:
        """The whole node as `devmesh status --json` shows it."""
        now = time.monotonic()
        return {
            "node": {
                "namespace": self.namespace,
                "pid": os.getpid(),
                "project": self.config.name,
                "root": str(self.config.root),
                "config": str(self.config.path),
                "socket": str(self.paths.socket),
                "logs": str(self.paths.logs),
                "started_at": self.started_wall,
                "version": __version__,
                "shutting_down": self._shutting_down,
                "watchdog_pid": self.watchdog.pid,
            },
            "services": [s.snapshot(now) for s in self.services.values()],
            "workers": [w.snapshot() for w in self.workers.values()],
        }


def _env_name(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).upper()


def _escaped_from_group(pid: int) -> list[psutil.Process]:
    """Descendants of `pid` that moved to another process group (they would outlive a killpg)."""
    found: list[psutil.Process] = []
    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return found
    for child in children:
        try:
            if os.getpgid(child.pid) != pid:
                found.append(child)
        except OSError:
            continue
    return found


def unknown_service(name: str, services: Sequence[str] | dict[str, Any]) -> str:
    """`unknown service 'apu' (did you mean 'api'?); known: api, web`."""
    import difflib

    known = list(services)
    close = difflib.get_close_matches(name, known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown service {name!r}{hint}; known: {', '.join(known) or 'none'}"

"""The parent supervisor: the only owner of state, the only terminal writer.

One thread, one loop: a selector waits on service output pipes, worker pipes and sentinels, and
a signal wake-up fd at once. Signal handlers only append to a list. Everything that happens later
(a backoff restart, a stop escalating to SIGKILL, STARTING becoming RUNNING) is a timer on a heap.
The services themselves are `lifecycle.ServiceSet`'s; this module runs the loop, the workers and
the control requests.
"""

from __future__ import annotations

import contextlib
import heapq
import logging
import os
import secrets
import selectors
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from devmesh import __version__
from devmesh import messages as m
from devmesh.config import ConfigError, load
from devmesh.config.describe import describe_discovery
from devmesh.config.model import Config
from devmesh.config.services import check_name
from devmesh.health.probes import expand
from devmesh.logs.writer import LogSink
from devmesh.metrics import ProbeStats, prepare_dir, probe_checks, worker_died
from devmesh.namespace import resolve_namespace
from devmesh.paths import ProjectPaths
from devmesh.proxy.table import RouteTable
from devmesh.supervisor import procs
from devmesh.supervisor.lifecycle import ServiceSet
from devmesh.supervisor.lock import ProjectLock
from devmesh.supervisor.policy import unknown_service
from devmesh.supervisor.reload import FileWatch, diff
from devmesh.supervisor.routes import (
    build_table,
    describe_routes,
    peer_routes,
    public_state,
    routable,
    status_reason,
    url,
    version_mismatches,
)
from devmesh.supervisor.service import PROBED, Service
from devmesh.supervisor.states import ServiceState, WorkerState
from devmesh.supervisor.watchdog import Watchdog
from devmesh.supervisor.watching import files_changed, watch_plan, watching_lines
from devmesh.supervisor.workers import SILENCE_LIMIT, STARTUP_LIMIT, WorkerHandle, WorkerSpec

TICK = 1.0  # the loop wakes at least this often: heartbeat checks, and reaping as a fallback
STATE_CHECK = 0.05  # seconds between looks for a state change to push to the dashboard
DASHBOARD_PORT = 8081  # the dashboard's port when [dashboard] port is not set (or the next free)
WORKER_STOP_GRACE = 3.0
# A run that does not answer on its $PORT this long after its start: are its processes
# listening on another port? Looked at no more often than this either.
PORT_LOOK_AFTER = 1.0
PORT_LOOK_MAX = 30.0  # a worker that serves no port is looked at less and less, down to this


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
        echo_services: bool = True,
        namespace: str | None = None,
        proxy_only: bool = False,
    ) -> None:
        self.config = config
        self.proxy_only = proxy_only  # `devmesh proxy`: the project's services are not run
        self.paths = paths
        self.namespace = namespace or resolve_namespace(config.mesh.namespace, config.root)
        self.node_id = f"{os.getpid()}-{secrets.token_hex(4)}"
        self.logs = LogSink(
            terminal_fd,
            color=color,
            log_dir=paths.logs,
            max_bytes=config.log.max_size,
            backups=config.log.backups,
            echo_services=echo_services,
        )
        # `--log-level` / DEVMESH_LOG over `[log] level`: how much of its own devmesh shows.
        self.log_level = os.environ.get("DEVMESH_LOG", "").strip().lower() or config.log.level
        self.logs.level = logging.getLevelNamesMapping().get(self.log_level.upper(), logging.INFO)
        self.selector: selectors.BaseSelector = selectors.DefaultSelector()
        self.watchdog = Watchdog(self.node_id)
        self.shutting_down = False
        self.workers: dict[str, WorkerHandle] = {}
        self._only = list(only)
        self._signals: list[int] = []
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = 0
        self._forced = False
        self._retired: list[WorkerHandle] = []
        # Retired workers that go on serving until their replacement is ready (discovery).
        self._replaced: list[WorkerHandle] = []
        self._last_reap = 0.0
        self._watch_at = 0.0
        self._control_sock: socket.socket | None = None
        self._dashboard_sock: socket.socket | None = None
        self.dashboard_url = ""
        self._worker_env: dict[str, str] = {}
        self._state_key: object = None
        self._state_at = 0.0
        self._state_checked = 0.0
        self.probe_stats = ProbeStats()  # for /metrics (the health worker sends every result)
        self._state_wake = False
        self._proxy_sock: socket.socket | None = None
        self._proxy_key: tuple[object, ...] | None = None  # port, workers and settings served
        self._routes: RouteTable | None = None
        self._announced: m.Announce | None = None
        self._health_plan: m.HealthPlan | None = None
        self._watch_plan: m.WatchPlan | None = None  # None: no watch worker
        self._mismatches: list[str] = []
        self.pins: dict[str, str] = {}  # service -> peer node id (`devmesh route --peer`)
        self._proxy_refused: dict[str, int] = {}  # proxy worker -> requests it refused (403)
        self.peers: m.PeersUpdate = m.PeersUpdate(peers=(), stats={})
        self._routes_key: object = None
        self._routes_at = 0.0
        self._watch = FileWatch((config.path, config.root / ".env"))
        self.config_error: list[str] = []
        # What a saved config asks for that applies at the next start (`node.config_pending`).
        self.config_pending: list[str] = []
        self._started = config  # what this run was started with (the dashboard's socket)
        # Set on the command line (or DEVMESH_LOG): the config's value does not apply.
        self._log_override = bool(os.environ.get("DEVMESH_LOG", "").strip())
        self._namespace_override = namespace or ""
        self._lock = ProjectLock(paths.lock)
        self.started_wall = time.time()
        self.services: ServiceSet | None = None

    @property
    def svcs(self) -> ServiceSet:
        """The services (they exist once `run()` has started)."""
        assert self.services is not None
        return self.services

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
            self._proxy_sock = bind_proxy(self.config.proxy.port)
            if self.config.dashboard.enabled:
                self._dashboard_sock = bind_dashboard(self.config.dashboard.port)
                port = self._dashboard_sock.getsockname()[1]
                self.dashboard_url = f"http://127.0.0.1:{port}/"
            self._worker_env = prepare_dir(self.paths.metrics) | {"DEVMESH_LOG": self.log_level}
            self.services = ServiceSet(
                self,
                self.config,
                namespace=self.namespace,
                node_id=self.node_id,
                only=self._only,
                run_commands=not self.proxy_only,
            )
            self._start_workers()
            self.logs.system(
                f"devmesh {__version__} up: project {self.config.name}, namespace "
                f"{self.namespace}, "
                + ("proxy only" if self.proxy_only else f"{len(self.svcs.services)} services")
                + f", pid {os.getpid()}"
            )
            if self.dashboard_url:
                self.logs.system(
                    f"dashboard {self.dashboard_url} (metrics {self.dashboard_url}metrics)"
                )
            while not (self.shutting_down and not self.svcs.alive()):
                self._tick()
            self.svcs.sweep()  # whatever left a group and outlived the cache's last look
            self._stop_workers()
            return 0
        finally:
            self._cleanup()

    def _tick(self) -> None:
        svcs = self.svcs
        now = time.monotonic()
        timeout = 0.0 if svcs.dirty else TICK
        if self._timers:
            timeout = max(0.0, min(timeout, self._timers[0][0] - now))
        for key, _ in self.selector.select(timeout):
            key.data(key.fileobj)
        self._handle_signals()
        if time.monotonic() - self._last_reap > TICK:  # in case a SIGCHLD was missed
            self._reap()
        self._run_timers()
        if svcs.dirty:
            svcs.dirty = False
            svcs.advance()
        self._check_workers()
        self._push_routes()
        self._push_state()
        if time.monotonic() - self._watch_at > TICK:
            self._watch_at = time.monotonic()
            if self._watch.changed():
                self.reload()
        if self.watchdog.poll():
            self.logs.system(f"watchdog restarted (pid {self.watchdog.pid})")
        self.logs.flush()

    def _reap(self) -> None:
        self._last_reap = time.monotonic()
        self.svcs.reap()
        for handle in [*self.workers.values(), *self._retired]:  # their pipe's EOF tells first
            if handle.process is not None and handle.process.poll() is not None:
                self._worker_died(handle)

    # ------------------------------------------------------------------ timers

    def at(self, when: float, callback: Callable[[], None]) -> None:
        """Run `callback` from the loop at monotonic time `when`."""
        self._seq += 1
        heapq.heappush(self._timers, (when, self._seq, callback))

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
                self._reap()
            elif signum == signal.SIGHUP:
                self.logs.system("SIGHUP received, reloading the config")
                self.reload()
            elif self.shutting_down:
                if not self._forced:
                    self._forced = True
                    self.logs.system("killing every service now")
                    self.svcs.kill_all()
            else:
                name = signal.Signals(signum).name
                self.logs.system(f"{name} received, stopping (again to kill at once)")
                self.begin_shutdown()

    def begin_shutdown(self) -> None:
        """Stop every service in reverse dependency order, then the workers."""
        self.shutting_down = True
        self.svcs.begin_shutdown()
        discovery = self.workers.get("discovery")
        if discovery is not None:
            discovery.send(m.Leave())  # peers stop sending requests here at once

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
        dash = [self._dashboard_sock] if self._dashboard_sock is not None else []
        self._add_worker(
            WorkerSpec(
                "control",
                "devmesh.control.worker:make_role",
                sockets=lambda: [ctl, *dash],
                settings=lambda: {
                    "metrics": str(self.paths.metrics),
                    "logs": str(self.paths.logs),
                    "url": self.dashboard_url,
                },
            )
        )
        self._reconcile_proxy()
        self._add_worker(WorkerSpec("health", "devmesh.health.worker:make_role"))
        self._add_discovery()
        self._reconcile_watch()

    def _add_discovery(self) -> bool:
        """Start the discovery worker with the current settings, unless discovery is off."""
        if not self.discovery_enabled:
            return False
        self._add_worker(
            WorkerSpec(
                "discovery", "devmesh.discovery.worker:make_role", settings=self._discovery_settings
            )
        )
        return True

    @property
    def discovery_enabled(self) -> bool:
        """`[discovery] enabled`, unless DEVMESH_DISCOVERY=off says otherwise for this run."""
        env = os.environ.get("DEVMESH_DISCOVERY", "").strip().lower()
        return self.config.discovery.enabled and env not in ("off", "0", "false", "no")

    def _discovery_settings(self) -> dict[str, Any]:
        d = self.config.discovery
        return {
            "node": node_identity(self.paths),
            "boot": self.node_id,
            "namespace": self.namespace,
            "name": f"{socket.gethostname()}/{self.config.name}",
            "proxy_port": self.config.proxy.port,
            "port": d.port,
            "broadcast_addr": d.broadcast_addr,
            "interval": d.interval,
            "ipv6": d.ipv6,
            "peers": list(d.peers),
        }

    def _add_worker(self, spec: WorkerSpec) -> None:
        handle = WorkerHandle(spec=spec, project=self.config.name, env=self._worker_env)
        self.workers[spec.name] = handle
        self._start_worker(handle)

    def _reconcile_proxy(self) -> None:
        """Run `[proxy] workers` proxy workers on `[proxy] port`; after a config change, replace
        them (a new port is bound first: if it is taken, the old proxy keeps serving)."""
        proxy = self.config.proxy
        log, tracing = self.config.log, self.config.tracing
        key = (
            proxy.port,
            proxy.workers,
            proxy.lan_access.value,
            proxy.retries,
            (log.requests, log.format),
            (tracing.otlp_endpoint, tuple(tracing.otlp_headers.items())),
        )
        if key == self._proxy_key:
            return
        if self._proxy_key is not None and proxy.port != self._proxy_key[0]:
            try:
                new_sock = bind_proxy(proxy.port)
            except OSError as exc:
                self.logs.system(
                    f"proxy port {proxy.port} not applied: {exc.strerror or exc}",
                    level=logging.WARNING,
                )
                return
            assert self._proxy_sock is not None
            old_sock, self._proxy_sock = self._proxy_sock, new_sock
            old_sock.close()  # the old workers hold their own copy until they exit
        for handle in [h for h in self.workers.values() if h.name.startswith("proxy-")]:
            handle.state = WorkerState.STOPPING
            handle.send(m.Stop())
            del self.workers[handle.name]
            self._retired.append(handle)
        self._proxy_key = key
        sock = self._proxy_sock
        assert sock is not None
        requests = self.config.log.requests
        if requests not in ("off", "stdout", "service"):
            requests = str(self.config.root / requests)  # a file, relative to the project
        settings = {
            "proxy_port": proxy.port,
            "lan_access": proxy.lan_access.value,
            "retries": proxy.retries,
            "requests": requests,
            "request_format": self.config.log.format,
            "node": node_identity(self.paths),
            "otlp_endpoint": self.config.tracing.otlp_endpoint,
            "otlp_headers": dict(self.config.tracing.otlp_headers),
        }
        for i in range(1, proxy.workers + 1):
            self._add_worker(
                WorkerSpec(
                    f"proxy-{i}",
                    "devmesh.proxy.worker:make_role",
                    sockets=lambda: [sock],
                    settings=lambda: dict(settings),
                )
            )

    def _push_routes(self, force: bool = False) -> None:
        """Send the route table to the proxy workers when it changed."""
        svcs = self.svcs
        # Every transition bumps a service's timer token; a service that is not running also
        # gets its log tail refreshed once a second, for the 503 page.
        peers = peer_routes(self.peers.peers)
        pins = tuple(sorted(self.pins.items()))
        key = (
            tuple((s.timer_token, s.healthy, s.listens) for s in svcs.services.values()),
            tuple(svcs.services),
            peers,
            pins,
        )
        now = time.monotonic()
        stale = now - self._routes_at > TICK and any(
            s.state is not ServiceState.RUNNING for s in svcs.services.values()
        )
        if not force and key == self._routes_key and not stale:
            return
        version = self._routes.version + 1 if self._routes else 1
        node = node_identity(self.paths) if self.discovery_enabled else ""
        table = build_table(
            version,
            self.config.proxy.port,
            svcs.services.values(),
            self.logs.tail,
            peers,
            node,
            self.config.proxy.version_strict,
            pins,
        )
        self._routes_key, self._routes_at = key, now
        self._plan_health()  # every transition: a new run gets probed at once
        old = self._routes
        same = old is not None and (table.services, table.peers, table.pins) == (
            old.services,
            old.peers,
            old.pins,
        )
        if same and not force:
            return
        self._routes = table
        if self.logs.level <= logging.DEBUG:
            here = ", ".join(f"{s.name} ({s.state})" for s in table.services) or "none"
            there = ", ".join(f"{p.name}: {len(p.services)}" for p in table.peers) or "none"
            self.logs.system(
                f"route table v{table.version}: here {here}; peers {there}", level=logging.DEBUG
            )
        mismatches = version_mismatches(table)
        for line in sorted(set(mismatches) - set(self._mismatches)):
            self.logs.system(f"version mismatch: {line}", level=logging.WARNING)
        self._mismatches = mismatches
        for handle in self.workers.values():
            if handle.name.startswith("proxy-"):
                handle.send(m.RoutesUpdate(table))
        self._announce()

    def _plan_health(self) -> None:
        """Tell the health worker what to probe: every run that is up (a changed plan only)."""
        targets = []
        for s in self.svcs.services.values():
            if s.health is None or s.state not in PROBED:
                continue
            check = s.config.health
            host, port = s.address
            host = f"[{host}]" if ":" in host else host
            kind, target = (check.kind, check.target) if check else ("tcp", f"{host}:{port}")
            by_hand = s.state is ServiceState.EXTERNAL or s.by_hand is not None
            targets.append(
                m.ProbeTarget(
                    service=s.name,
                    generation=s.instance,
                    check=kind,
                    target=expand(target, s.port),
                    interval=s.config.health_interval,
                    timeout=s.config.health_timeout,
                    cwd=str(s.config.cwd),
                    eager=by_hand and kind != "cmd",  # a command every 250 ms would cost
                )
            )
        plan = m.HealthPlan(targets=tuple(targets))
        if plan == self._health_plan:
            return
        self._health_plan = plan
        handle = self.workers.get("health")
        if handle is not None:
            handle.send(plan)

    def _health_result(self, msg: m.HealthResult) -> None:
        svc = self.svcs.services.get(msg.service)
        if svc is None or svc.health is None or svc.instance != msg.generation:
            return  # a run that has ended
        check = svc.config.health.kind if svc.config.health else "tcp"
        self.probe_stats.record(svc.name, check, msg.ok, msg.latency)
        if not msg.ok and svc.health.readiness and svc.config.command is not None:
            self._find_port(svc)
        if not svc.health.record(msg.ok, msg.detail, msg.latency, time.monotonic()):
            return
        status = svc.health.status.value
        detail = "" if msg.ok else f": {msg.detail}"
        if svc.health.readiness:  # only its port is checked
            status = "ready" if msg.ok else "not ready"
        level = logging.WARNING if status in ("unhealthy", "not ready") else logging.INFO
        if svc.state is ServiceState.EXTERNAL:  # run by hand: whether it is here at all
            level = logging.INFO
            self.logs.system(
                f"{svc.name} answers on port {svc.port}: served here"
                if svc.healthy
                else f"{svc.name} no longer answers on port {svc.port}{detail}: "
                "not served here (a peer's copy is used if there is one)",
                svc.name,
                level,
            )
        else:
            self.logs.system(f"{svc.name} is {status}{detail}", svc.name, level)
        self.svcs.dirty = True  # dependents waiting for "healthy"; the routes follow
        if status == "unhealthy" and svc.config.restart_on_unhealthy:
            self.svcs.end_unhealthy(svc)

    def _find_port(self, svc: Service) -> None:
        """A run whose $PORT does not answer: does it listen elsewhere (a command that ignores
        $PORT)? Then say so and route there. From a second after its start, at growing intervals
        (1, 2, 4 ... 30 s) while nothing is found: a worker that serves no port costs little."""
        now = time.monotonic()
        if (
            svc.listens is not None
            or svc.proc is None
            or now - svc.started_at < PORT_LOOK_AFTER
            or now < svc.port_looked_at
        ):
            return
        svc.port_looked_at = now + min(PORT_LOOK_MAX, PORT_LOOK_AFTER * 2**svc.port_looks)
        svc.port_looks += 1
        found = procs.listening([svc.proc.pid, *self.svcs.marked(svc.instance)])
        if not found or any(port == svc.port for _, port in found):
            return
        svc.listens = found[0]
        also = ", ".join(str(p) for _, p in found[1:])
        self.logs.system(
            f"{svc.name} listens on port {found[0][1]}, not on its $PORT {svc.port} (its "
            f"command ignores $PORT): routed to {found[0][1]}"
            + (f" (it also listens on {also})" if also else ""),
            svc.name,
            logging.WARNING,
        )
        self.svcs.dirty = True

    def _announce(self) -> None:
        """Tell the discovery worker what this node has, when that changed."""
        services = tuple(
            {
                "name": s.config.name,
                "state": public_state(s),  # running once healthy
                "version": s.config.version,
                "routes": tuple(s.config.routes),
            }
            for s in self.svcs.services.values()
        )
        msg = m.Announce(services=services, proxy_port=self.config.proxy.port)
        if msg == self._announced:
            return
        self._announced = msg
        handle = self.workers.get("discovery")
        if handle is not None:
            handle.send(msg)

    def reload(self) -> None:
        """Apply a saved config: validated first; if invalid, the running one stays."""
        try:
            new = load(self.config.path)
        except ConfigError as exc:
            self.config_error = [str(i) for i in exc.issues]
            for line in self.config_error:
                self.logs.system(f"config not applied: {line}", level=logging.ERROR)
            return
        except OSError as exc:
            self.config_error = [f"{self.config.path}: {exc.strerror or exc}"]
            self.logs.system(f"config not applied: {self.config_error[0]}", level=logging.ERROR)
            return
        self.config_error = []
        for warning in sorted(set(map(str, new.warnings)) - set(map(str, self.config.warnings))):
            self.logs.system(f"warning: {warning}", level=logging.WARNING)
        saved = new
        # The dashboard's socket was bound at start: what runs keeps it (config_pending says).
        new = replace(new, dashboard=self._started.dashboard)
        change = diff(self.config, new)
        if not change.empty:
            self.logs.system(f"config reloaded: {change.describe()}")
            old, self.config = self.config, new
            self.svcs.apply(new, change)
            self._reconcile_watch()
            self._apply_sections(old, new)
        self._pending(saved)

    def _apply_sections(self, old: Config, new: Config) -> None:
        """The node-wide sections of a reloaded config, applied live; each says what it did."""
        self._reconcile_proxy()  # [proxy] port, workers, lan_access, retries; request lines; spans
        if (old.proxy.version_strict, old.proxy.retries) != (
            new.proxy.version_strict,
            new.proxy.retries,
        ):
            self.logs.system(
                f"[proxy] applied: retries {new.proxy.retries}, version_strict "
                f"{str(new.proxy.version_strict).lower()}"
            )
        if old.log.level != new.log.level and not self._log_override:
            self._set_log_level(new.log.level)
        if (old.log.max_size, old.log.backups) != (new.log.max_size, new.log.backups):
            self.logs.rotate_at(new.log.max_size, new.log.backups)
            self.logs.system(
                f"[log] applied: rotate at {new.log.max_size} bytes, keep {new.log.backups}"
            )
        namespace = self._namespace_override or resolve_namespace(new.mesh.namespace, new.root)
        moved = namespace != self.namespace
        if moved:
            self.logs.system(
                f"[mesh] namespace is now {namespace} (was {self.namespace}): said goodbye to "
                "the old one; services see DEVMESH_NAMESPACE change when they restart"
            )
            self.namespace = self.svcs.namespace = namespace
            self.peers = m.PeersUpdate(peers=(), stats=self.peers.stats)
        if moved or old.discovery != new.discovery:
            self._reconcile_discovery(goodbye=moved or not self.discovery_enabled)
        self._push_routes(force=True)  # version_strict, and peers that left with a namespace

    def _reconcile_discovery(self, *, goodbye: bool) -> None:
        """A discovery worker with the current settings. The old one says goodbye (a namespace
        left, discovery turned off) or is replaced silently: it goes on announcing until the new
        one is ready, which goes on with the same node id and a growing sequence, so peers see
        no leave and no join."""
        old = self.workers.pop("discovery", None)
        if old is not None and old.process is not None:
            old.state = WorkerState.STOPPING
            self._retired.append(old)
            if goodbye:
                old.send(m.Stop())
            else:
                self._replaced.append(old)  # killed when the new one says Ready
        if self._add_discovery():
            self.logs.system(f"[discovery] applied: {describe_discovery(self.config)}")
        else:
            self.peers = m.PeersUpdate(peers=(), stats=self.peers.stats)
            self.logs.system("[discovery] applied: off")

    def _set_log_level(self, level: str) -> None:
        """devmesh's own verbosity, now: here and in every worker (and those started later)."""
        self.log_level = level
        self.logs.level = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
        self._worker_env["DEVMESH_LOG"] = level
        for handle in self.workers.values():
            handle.send(m.LogLevel(level))
        self.logs.system(f"[log] applied: level {level}")

    def _pending(self, saved: Config) -> None:
        """What the saved config asks for that applies only at the next start (or that the
        command line overrides): logged once, and shown as `node.config_pending`."""
        new = saved
        pending = []
        if new.dashboard != self._started.dashboard:
            pending.append(
                "[dashboard]: applies when devmesh restarts (its port is bound at start)"
            )
        if self._log_override and new.log.level != self.log_level:
            pending.append(
                f"[log] level {new.log.level}: --log-level/DEVMESH_LOG {self.log_level} "
                "wins while this devmesh runs"
            )
        if self._namespace_override and (
            resolve_namespace(new.mesh.namespace, new.root) != self._namespace_override
        ):
            pending.append(
                f"[mesh] namespace: --namespace {self._namespace_override} wins while this "
                "devmesh runs"
            )
        for line in pending:
            if line not in self.config_pending:
                self.logs.system(f"config not applied: {line}", level=logging.WARNING)
        self.config_pending = pending

    def _reconcile_watch(self) -> None:
        """Run the watch worker while some service has `watch`, and send it what to watch
        when that changed (at start and after a reload). `devmesh proxy` runs no command."""
        plan = watch_plan(self.config) if not self.proxy_only else m.WatchPlan(targets=())
        handle = self.workers.get("watch")
        if not plan.targets:
            self._watch_plan = None
            if handle is not None:
                self._retire_worker(handle)
            return
        if plan == self._watch_plan and handle is not None:
            return
        self._watch_plan = plan
        if handle is None:
            self._add_worker(WorkerSpec("watch", "devmesh.watch.worker:make_role"))
        else:
            handle.send(plan)

    def _retire_worker(self, handle: WorkerHandle) -> None:
        """Stop a worker that the config no longer needs (it is reaped, not restarted)."""
        handle.state = WorkerState.STOPPING
        handle.send(m.Stop())
        del self.workers[handle.name]
        self._retired.append(handle)

    def _start_worker(self, handle: WorkerHandle) -> None:
        handle.start(time.monotonic())
        assert handle.process is not None and handle.conn is not None
        self.watchdog.add_pid(handle.process.pid)
        if handle.name.startswith("proxy-") and self._routes is not None:
            handle.send(m.RoutesUpdate(self._routes))  # a restarted worker serves at once
        if handle.name == "discovery" and self._announced is not None:
            handle.send(self._announced)
        if handle.name == "health" and self._health_plan is not None:
            handle.send(self._health_plan)
        if handle.name == "watch" and self._watch_plan is not None:
            handle.send(self._watch_plan)
        self.selector.register(
            handle.conn, selectors.EVENT_READ, lambda _: self._from_worker(handle)
        )

    def _from_worker(self, handle: WorkerHandle) -> None:
        messages, eof = handle.receive(time.monotonic())
        for msg in messages:
            if isinstance(msg, m.Ready):
                for old in [h for h in self._replaced if h.name == handle.name]:
                    self._replaced.remove(old)
                    old.kill()  # its replacement serves now
            elif isinstance(msg, m.ControlRequest):
                handle.send(self._control(msg))
            elif isinstance(msg, m.PeersUpdate):
                self._peers_changed(msg)
            elif isinstance(msg, m.HealthResult):
                self._health_result(msg)
            elif isinstance(msg, m.ProxyStats):
                self._proxy_refused[msg.worker] = msg.refused
            elif isinstance(msg, m.RequestLines):
                self._request_lines(msg)
            elif isinstance(msg, m.FilesChanged):
                files_changed(self.svcs, msg)
            elif isinstance(msg, m.Watching):
                for line, level in watching_lines(msg):
                    self.logs.system(line, level=level)
        if eof:  # the worker's end of the pipe closed: it died
            self._worker_died(handle)

    def _worker_died(self, handle: WorkerHandle) -> None:
        assert handle.process is not None and handle.conn is not None
        self.selector.unregister(handle.conn)
        pid = handle.pid
        if pid is not None:
            self.watchdog.remove_pid(pid)
            worker_died(self.paths.metrics, pid)
        if handle in self._retired:  # replaced after a config change
            self._retired.remove(handle)
            if handle in self._replaced:
                self._replaced.remove(handle)
            handle.reap(time.monotonic(), restart=False)
            return
        stopping = handle.state is WorkerState.STOPPING or self.shutting_down
        restart_at = handle.reap(time.monotonic(), restart=not stopping)
        if restart_at is None:
            return
        self.logs.system(
            f"worker {handle.name} died ({handle.last_exit}), restarting", level=logging.WARNING
        )

        def restart() -> None:
            if handle.state is WorkerState.BACKOFF and not self.shutting_down:
                self._start_worker(handle)

        self.at(restart_at, restart)

    def _check_workers(self) -> None:
        now = time.monotonic()
        for handle in self.workers.values():
            live = handle.state in (WorkerState.STARTING, WorkerState.RUNNING)
            # Until it is ready, a worker may be importing on a loaded machine: more time.
            limit = SILENCE_LIMIT if handle.state is WorkerState.RUNNING else STARTUP_LIMIT
            if live and handle.silent_for(now) > limit:
                self.logs.system(
                    f"worker {handle.name} silent for {limit:g}s, killing it", level=logging.WARNING
                )
                handle.kill()
                handle.last_heard = now  # its sentinel reports the death

    def _stop_workers(self) -> None:
        live = [h for h in [*self.workers.values(), *self._retired] if h.process is not None]
        for handle in live:
            handle.state = WorkerState.STOPPING
            handle.send(m.Stop())
        deadline = time.monotonic() + WORKER_STOP_GRACE
        for handle in live:
            assert handle.process is not None
            try:
                handle.process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                handle.kill()
                handle.process.wait(1.0)
            pid = handle.pid
            if pid is not None:
                self.watchdog.remove_pid(pid)

    def _cleanup(self) -> None:
        self.logs.flush()
        if self.services is not None:  # only not empty after an error in the loop itself
            self.svcs.kill_all()
        if self._proxy_sock is not None:
            self._proxy_sock.close()
        if self._dashboard_sock is not None:
            self._dashboard_sock.close()
        if self._control_sock is not None:
            self._control_sock.close()
            with contextlib.suppress(FileNotFoundError):
                self.paths.socket.unlink()
        with contextlib.suppress(FileNotFoundError):
            self.paths.pidfile.unlink()
        shutil.rmtree(self.paths.metrics, ignore_errors=True)
        self.watchdog.close()
        self.logs.close()
        self._lock.release()

    def _request_lines(self, msg: m.RequestLines) -> None:
        """A proxy worker's request lines: among the service's own, or as they are."""
        into_services = self.config.log.requests == "service"
        for service, block in msg.lines:
            if not into_services:
                self.logs.raw(block)
            elif service:
                self.logs.lines(service, block)
            else:  # matched no service
                self.logs.system(block.decode("utf-8", "replace"))

    def _state_woken(self) -> None:
        self._state_wake = False

    def _push_state(self) -> None:
        """Send the control worker the node's state when it changed, and once a second."""
        handle = self.workers.get("control")
        if handle is None or handle.state is not WorkerState.RUNNING:
            self._state_key = None  # a restarted one gets the state as soon as it is ready
            return
        now = time.monotonic()
        if now - self._state_checked < STATE_CHECK and self._state_key is not None:
            # A busy loop (a chatty service) looks at most this often, and a quiet one wakes
            # for the look it skipped.
            if not self._state_wake:
                self._state_wake = True
                self.at(self._state_checked + STATE_CHECK, self._state_woken)
            return
        self._state_checked = now
        key = (
            self._routes.version if self._routes else 0,
            tuple(
                (s.state, s.timer_token, s.restarts, s.pid, s.healthy)
                for s in self.svcs.services.values()
            ),
            id(self.peers),
            tuple(self.config_error),
            self.shutting_down,
            tuple(w.state for w in self.workers.values()),
        )
        if key == self._state_key and now - self._state_at < TICK:
            return
        self._state_key, self._state_at = key, now
        handle.send(
            m.StateUpdate(
                status=self.status(),
                peers=self.peers_document(),
                routes=self.routes_document(),
                probes=self.probe_stats.snapshot(probe_checks(self.config.services)),
            )
        )

    def _peers_changed(self, update: m.PeersUpdate) -> None:
        old = {p["node"]: p for p in self.peers.peers}
        new = {p["node"]: p for p in update.peers}
        for node in new.keys() - old.keys():
            self.logs.system(f"peer joined: {new[node]['name']} ({new[node]['address']})")
        for node in old.keys() - new.keys():
            self.logs.system(f"peer left: {old[node]['name']} ({old[node]['address']})")
        self.peers = update
        self._push_routes()

    # ------------------------------------------------------------------ control

    def _control(self, req: m.ControlRequest) -> m.ControlReply:
        def fail(status: int, error: str) -> m.ControlReply:
            return m.ControlReply(id=req.id, ok=False, status=status, error=error)

        if req.action == "status":
            return m.ControlReply(id=req.id, ok=True, data=self.status())
        if req.action == "peers":
            return m.ControlReply(id=req.id, ok=True, data=self.peers_document())
        if req.action == "routes":
            return m.ControlReply(id=req.id, ok=True, data=self.routes_document())
        if req.action == "pin":
            error = self._pin(str(req.args.get("name", "")), str(req.args.get("peer", "")))
            if error:
                return fail(409 if error.startswith("no peer") else 404, error)
            return m.ControlReply(id=req.id, ok=True, data=self.routes_document())
        if req.action == "shutdown":
            if not self.shutting_down:
                self.logs.system("shutdown requested (devmesh down)")
                self.begin_shutdown()
            return m.ControlReply(id=req.id, ok=True, data={"pid": os.getpid()})
        name = str(req.args.get("name", ""))
        if self.shutting_down:
            return fail(409, "devmesh is shutting down")
        if req.action in ("attach", "release"):
            return self._by_hand(req, name)
        svc = self.svcs.services.get(name)
        if svc is None:
            return fail(404, unknown_service(name, self.svcs.services))
        actions = {
            "start": self.svcs.user_start,
            "stop": self.svcs.user_stop,
            "restart": self.svcs.user_restart,
        }
        if req.action not in actions:
            return fail(404, f"unknown action {req.action!r}")
        error = actions[req.action](svc)
        if error:
            return fail(409, error)
        return m.ControlReply(id=req.id, ok=True, data=svc.snapshot(time.monotonic()))

    def _by_hand(self, req: m.ControlRequest, name: str) -> m.ControlReply:
        """`devmesh run NAME [--port N]` registers (attach) a service run by hand, declared or
        not; its end (release) hands it back to what the config says."""
        pid = int(req.args.get("pid", 0))
        raw_port = req.args.get("port")
        port = None if raw_port is None else int(raw_port)
        svcs = self.svcs
        svc = svcs.services.get(name)

        def fail(status: int, error: str) -> m.ControlReply:
            return m.ControlReply(id=req.id, ok=False, status=status, error=error)

        if req.action == "release":
            if svc is not None and svc.by_hand == pid:
                svcs.detach(svc, " (devmesh run ended)", by_user=False)
            return m.ControlReply(id=req.id, ok=True, data={})
        if svc is None:
            if port is None:
                return fail(
                    404,
                    unknown_service(name, svcs.services)
                    + f"; to run an undeclared service, give its port: devmesh run {name} --port N",
                )
            bad = check_name(name)
            if bad is not None:
                return fail(400, f"{bad[0]}; {bad[1]}")
            svc = svcs.register(name, port, pid)
        else:
            if port not in (None, 0, svc.port):
                return fail(
                    409,
                    f"{name} is on port {svc.port} here; drop --port, or change its port "
                    f"in {self.config.path.name}",
                )
            error = svcs.attach(svc, pid)
            if error:
                return fail(409, error)
        return m.ControlReply(id=req.id, ok=True, data=svc.snapshot(time.monotonic()))

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
                "shutting_down": self.shutting_down,
                "watchdog_pid": self.watchdog.pid,
                "proxy": {
                    "port": self.config.proxy.port,
                    "workers": self.config.proxy.workers,
                    "lan_access": self.config.proxy.lan_access.value,
                    # Counted since each worker started (a restarted one starts again at 0).
                    "refused": sum(self._proxy_refused.values()),
                },
                "config_error": self.config_error,
                "config_pending": self.config_pending,
                "routes_version": self._routes.version if self._routes else 0,
                "dashboard": {
                    "url": self.dashboard_url or None,
                    "metrics": f"{self.dashboard_url}metrics" if self.dashboard_url else None,
                },
            },
            "services": [
                s.snapshot(now)
                | {
                    "url": url(s.name, self.config.proxy.port),
                    "routable": routable(s),
                    "reason": status_reason(s) or s.reason or None,
                }
                for s in self.svcs.services.values()
            ],
            "workers": [w.snapshot() for w in self.workers.values()],
        }

    def _pin(self, name: str, peer: str) -> str:
        """Pin `name` to the peer whose node id (or name) starts with `peer`; "" clears."""
        if not peer:
            self.pins.pop(name, None)
            self.logs.system(f"route for {name}: pin cleared")
            self._push_routes(force=True)
            return ""
        known = {s["name"] for p in self.peers.peers for s in p["services"]}
        if name not in known and name not in self.svcs.services:
            return unknown_service(name, sorted(known | set(self.svcs.services)))
        matches = [
            p
            for p in self.peers.peers
            if p["node"].startswith(peer) or p["name"] == peer or p["address"] == peer
        ]
        if len(matches) != 1:
            ids = ", ".join(f"{p['node']} ({p['name']})" for p in self.peers.peers) or "none"
            what = "no peer" if not matches else "more than one peer"
            return f"{what} matches {peer!r}; peers: {ids}"
        self.pins[name] = matches[0]["node"]
        self.logs.system(f"route for {name}: pinned to {matches[0]['name']} ({matches[0]['node']})")
        self._push_routes(force=True)
        return ""

    def routes_document(self) -> dict[str, Any]:
        """`devmesh status --routes`: who serves each name, and why."""
        table = self._routes
        if table is None:
            return {"routes": []}
        return {"routes": describe_routes(table)}

    def peers_document(self) -> dict[str, Any]:
        """`devmesh peers --json`: this node, its peers and the discovery counters."""
        wall = time.time()
        d = self.config.discovery
        on = self.discovery_enabled
        return {
            "node": node_identity(self.paths) if on else None,
            "namespace": self.namespace,
            "discovery": {"enabled": on, "port": d.port, "interval": d.interval},
            "peers": [
                p | {"seen_ago": round(max(0.0, wall - p["last_seen"]), 3)}
                for p in self.peers.peers
            ],
            "stats": self.peers.stats,
        }


def node_identity(paths: ProjectPaths) -> str:
    """This project's node id on this machine: random once, then kept in the state dir."""
    path = paths.state / "node-id"
    try:
        node = path.read_text().strip()
    except OSError:
        node = ""
    if not node:
        node = secrets.token_hex(8)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(node + "\n")
    return node


def bind_dashboard(port: int | None) -> socket.socket:
    """The dashboard's socket on 127.0.0.1: `port`, or without one the first free port from
    8081 (then any free port)."""
    error: OSError | None = None
    for p in [port] if port is not None else [*range(DASHBOARD_PORT, DASHBOARD_PORT + 10), 0]:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", p))
            sock.listen(128)
        except OSError as exc:
            sock.close()
            error = exc
            continue
        sock.set_inheritable(False)
        return sock
    assert error is not None
    raise error


def bind_proxy(port: int) -> socket.socket:
    """The proxy's listening socket, bound here so a restarted proxy worker serves at once:
    dual-stack [::] where IPv6 exists (browsers try ::1 for *.localhost), else 0.0.0.0."""
    try:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        address: tuple[str, int] = ("::", port)
    except OSError:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        address = ("0.0.0.0", port)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(1024)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(False)
    return sock

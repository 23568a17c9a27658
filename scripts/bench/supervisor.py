#!/usr/bin/env python3
"""Supervisor benchmark: devmesh against honcho and supervisord, side by side in one run.

What it measures, the same way for the three managers, repeated (`--repeat`, default 3) with the
order of the managers rotated every repeat; it reports medians (with min-max) and ratios:

1. Start time: from right before the manager is launched (`Popen`) until all `--services`
   (default 200) trivial services (`sleep 3600`) are running, found by polling `/proc` (bounded)
   until that many `sleep` processes descend from the manager.
2. Memory: PSS (psutil `memory_full_info().pss`), summed over the manager's own processes, about
   2 s after all services run: the manager and every descendant that is not a service (`sleep`,
   `sh`). devmesh: supervisor, watchdog, workers; honcho:
   honcho and its one multiprocessing child per process; supervisord: itself. Also at 10
   services, giving the cost per service: (PSS at N - PSS at 10) / (N - 10).
3. Log fan-in: 4 services each write `--lines`/4 lines of 80 bytes (50 lines per write(2), then
   they sleep, so no manager sees an exit), and the clock runs from launch until the manager has
   written every line: devmesh and honcho to their stdout (redirected to a file), supervisord to
   the per-program `stdout_logfile`s. lines/s = lines / time. Every line is then checked: lost,
   duplicated or torn lines are reported.

Each manager runs in its own temporary directory (devmesh with its own `XDG_RUNTIME_DIR` and
`XDG_STATE_HOME`), with `NO_COLOR=1`, started by this interpreter (`python -m devmesh up`,
`python -m honcho start`, `python -m supervisor.supervisord`) so no wrapper is timed. Everything
is stopped by pid: SIGTERM, SIGKILL after a bounded wait, then any service left over (by pid and
start time, and by its process group). Every wait is bounded.

devmesh is imported from a frozen copy of the project's last commit (`git archive HEAD`, or the
working tree with `--source worktree`), put first on `PYTHONPATH`, so edits during the run and
whatever `pip install -e` points at do not matter. The three packages' bytecode is compiled
first, and `PYTHONDONTWRITEBYTECODE`/`PYTHONUNBUFFERED` are removed from the managers' env.

Run it from the project root (honcho and supervisor must be installed: `pip install -e .[bench]`):

    python3 scripts/bench/supervisor.py --repeat 5 --markdown docs/benchmarks.md

Options: `--repeat N`, `--services N`, `--lines N`, `--only start|memory|logs`, `--managers`,
`--source head|worktree`, `--markdown PATH` (writes or replaces the "## Supervisor" section of
that file). The exit code is 1 when a measured goal fails.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib.util
import os
import platform
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import IO

import psutil
from common import (  # scripts/bench/common.py
    CALLER_ONLY,
    DevmeshSource,
    Goal,
    add_output_options,
    devmesh_under_test,
    verdict,
    write_section,
)

MANAGERS = ("devmesh", "honcho", "supervisord")
SERVICE_COMMS = frozenset({"sleep", "sh", "dash"})  # service processes, never the manager's own
SLEEP_COMMAND = "sleep 3600"
SMALL_SERVICES = 10
LOG_SERVICES = 4
LINE_BYTES = 80
LINES_PER_WRITE = 50  # 4000 bytes: one atomic pipe write, like a 4 KiB stdio buffer
MARKER = b"BENCHLN"
POLL = 0.02
SETTLE = 2.0
START_TIMEOUT = 120.0
LOG_TIMEOUT = 180.0
STALL = 20.0  # no progress for this long: give up on the run
STOP_TIMEOUT = 10.0  # supervisord stops one program per loop pass: 200 take longer
KILL_TIMEOUT = 5.0
MIB = 2**20
CLOSE_CALL = 0.2  # a goal met or missed by less than this is within the noise
# supervisord's own warnings about how this benchmark runs it, not problems of the run.
BENIGN = (b"Supervisor is running as root", b"running without any HTTP authentication")

PRODUCER = f"""\
import os, sys, time
n, name = int(sys.argv[1]), sys.argv[2].encode()
head = b"{MARKER.decode()} %s " % name
pad = {LINE_BYTES} - len(head) - 8
for first in range(0, n, {LINES_PER_WRITE}):
    os.write(1, b"".join(
        head + b"%06d " % i + b"x" * pad + b"\\n"
        for i in range(first, min(first + {LINES_PER_WRITE}, n))
    ))
time.sleep(3600)
"""
LINE_RE = re.compile(rb"BENCHLN (s\d{3}) (\d{6}) x+")


# ---------------------------------------------------------------------------- processes


@dataclass
class Proc:
    """One process as /proc/<pid>/stat shows it."""

    pid: int
    ppid: int
    pgid: int
    comm: str
    start: int  # clock ticks after boot: (pid, start) names a process for good


def read_stat(pid: int) -> Proc | None:
    """The process `pid`, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    close = raw.rfind(b")")
    rest = raw[close + 2 :].split()
    comm = raw[raw.find(b"(") + 1 : close].decode(errors="replace")
    return Proc(pid, int(rest[1]), int(rest[2]), comm, int(rest[19]))


class ProcTable:
    """A cheap, repeatable view of the process tree under one root.

    A process outside the tree, or a `sleep`, is read once; only the tree's other processes
    (which may still exec) are read again on each refresh. So polling during a start costs little
    CPU next to the manager being measured.
    """

    def __init__(self, root: int) -> None:
        self.root = root
        self._known: dict[int, Proc] = {}
        self._outside: set[int] = set()

    def refresh(self) -> list[Proc]:
        """The root's descendants now (not the root itself)."""
        alive = {int(name) for name in os.listdir("/proc") if name.isdigit()}
        for pid in list(self._known):
            if pid not in alive:
                del self._known[pid]
        self._outside &= alive
        for pid in alive:
            if pid in self._outside:
                continue
            old = self._known.get(pid)
            if old is not None and old.comm == "sleep":
                continue
            proc = read_stat(pid)
            if proc is not None:
                self._known[pid] = proc
        children: dict[int, list[Proc]] = {}
        for proc in self._known.values():
            children.setdefault(proc.ppid, []).append(proc)
        tree: list[Proc] = []
        todo = [self.root]
        while todo:
            for child in children.get(todo.pop(), []):
                tree.append(child)
                todo.append(child.pid)
        inside = {p.pid for p in tree} | {self.root}
        self._outside |= {pid for pid in self._known if pid not in inside}
        for pid in self._outside:
            self._known.pop(pid, None)
        return tree


def full_tree(root: int) -> list[Proc]:
    """The root's descendants, every process read afresh."""
    return ProcTable(root).refresh()


def pss(pids: Iterable[int]) -> int:
    """Summed PSS in bytes of the processes that still exist."""
    total = 0
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            total += psutil.Process(pid).memory_full_info().pss
    return total


# ---------------------------------------------------------------------------- managers


@dataclass(frozen=True)
class Service:
    """A service to run: its name and shell command."""

    name: str
    command: str


@dataclass
class Plan:
    """How to launch one manager and where its output lands."""

    argv: list[str]
    cwd: Path
    env: dict[str, str]
    stdout: Path
    stderr: Path
    line_files: list[Path]  # where service lines are counted


def base_env(work: Path) -> dict[str, str]:
    """The environment of every manager: private XDG dirs, no colour."""
    env = dict(os.environ)
    for var in CALLER_ONLY:
        env.pop(var, None)
    run, state = work / "xdg-run", work / "xdg-state"
    run.mkdir(mode=0o700)
    state.mkdir()
    env.update(XDG_RUNTIME_DIR=str(run), XDG_STATE_HOME=str(state), NO_COLOR="1")
    return env


SOURCE: DevmeshSource | None = None  # set by main()


def warm_up(source: DevmeshSource) -> None:
    """Compile the three managers' bytecode caches, so no run pays for compiling them."""
    dirs = [str(source.dir / "devmesh")]
    for module in ("honcho", "supervisor"):
        spec = importlib.util.find_spec(module)
        if spec is not None and spec.submodule_search_locations:
            dirs += list(spec.submodule_search_locations)
    env = {k: v for k, v in os.environ.items() if k not in CALLER_ONLY}
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", *dirs],
        env=env,
        stdout=subprocess.DEVNULL,
        timeout=300,
        check=False,
    )


def plan_devmesh(work: Path, services: Sequence[Service]) -> Plan:
    """A devmesh.toml with one `[services.sNNN]` per service, no LAN discovery (nothing leaves
    this machine); `devmesh up -f`."""
    config = work / "devmesh.toml"
    config.write_text(
        "[discovery]\nenabled = false\n\n"
        + "".join(f"[services.{s.name}]\ncommand = {_toml_str(s.command)}\n\n" for s in services)
    )
    return Plan(
        argv=[sys.executable, "-m", "devmesh", "up", "-f", str(config)],
        cwd=work,
        env=SOURCE.env(base_env(work)) if SOURCE else base_env(work),
        stdout=work / "manager.out",
        stderr=work / "manager.err",
        line_files=[work / "manager.out"],
    )


def plan_honcho(work: Path, services: Sequence[Service]) -> Plan:
    """A Procfile with one line per service; `honcho start -f Procfile`."""
    procfile = work / "Procfile"
    procfile.write_text("".join(f"{s.name}: {s.command}\n" for s in services))
    return Plan(
        argv=[sys.executable, "-m", "honcho", "start", "-f", str(procfile)],
        cwd=work,
        env=base_env(work),
        stdout=work / "manager.out",
        stderr=work / "manager.err",
        line_files=[work / "manager.out"],
    )


def plan_supervisord(work: Path, services: Sequence[Service]) -> Plan:
    """A supervisord.conf (nodaemon, socket and logs in the temp dir), one program per service."""
    logs = work / "logs"
    logs.mkdir()
    parts = [
        "[unix_http_server]\n"
        f"file = {work}/supervisor.sock\n\n"
        "[supervisord]\n"
        "nodaemon = true\n"
        f"logfile = {work}/supervisord.log\n"
        f"pidfile = {work}/supervisord.pid\n"
        f"childlogdir = {logs}\n\n"
        "[rpcinterface:supervisor]\n"
        "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n\n"
    ]
    for s in services:
        parts.append(
            f"[program:{s.name}]\n"
            f"command = {s.command}\n"
            "autostart = true\n"
            "redirect_stderr = true\n"
            f"stdout_logfile = {logs}/{s.name}.log\n"
            "stdout_logfile_maxbytes = 1GB\n"
            "stdout_logfile_backups = 0\n\n"
        )
    config = work / "supervisord.conf"
    config.write_text("".join(parts))
    return Plan(
        argv=[sys.executable, "-m", "supervisor.supervisord", "-c", str(config)],
        cwd=work,
        env=base_env(work),
        stdout=work / "manager.out",
        stderr=work / "manager.err",
        line_files=[logs / f"{s.name}.log" for s in services],
    )


PLANS: dict[str, Callable[[Path, Sequence[Service]], Plan]] = {
    "devmesh": plan_devmesh,
    "honcho": plan_honcho,
    "supervisord": plan_supervisord,
}


def _toml_str(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


# ---------------------------------------------------------------------------- one run


class Running:
    """One launched manager: its process tree, and stopping all of it by pid."""

    def __init__(self, manager: str, plan: Plan) -> None:
        self.manager = manager
        self.plan = plan
        self._out: IO[bytes] = open(plan.stdout, "wb")  # noqa: SIM115 - closed in stop()
        self._err: IO[bytes] = open(plan.stderr, "wb")  # noqa: SIM115
        self.t0 = time.perf_counter()
        self.popen = subprocess.Popen(
            plan.argv,
            cwd=plan.cwd,
            env=plan.env,
            stdin=subprocess.DEVNULL,
            stdout=self._out,
            stderr=self._err,
            start_new_session=True,
        )
        root = read_stat(self.popen.pid)
        self.root_start = root.start if root is not None else 0
        self.table = ProcTable(self.popen.pid)
        self.seen: dict[int, Proc] = {}
        self.exit_code: int | None = None
        self.stop_seconds = 0.0
        self.stop_killed = False

    def elapsed(self) -> float:
        """Seconds since just before the launch."""
        return time.perf_counter() - self.t0

    def tree(self, *, fresh: bool = False) -> list[Proc]:
        """The manager's descendants; every one is remembered for the clean-up."""
        procs = full_tree(self.popen.pid) if fresh else self.table.refresh()
        for proc in procs:
            self.seen[proc.pid] = proc
        return procs

    def check_alive(self) -> None:
        """RuntimeError if the manager has exited."""
        code = self.popen.poll()
        if code is not None:
            tail = self.plan.stderr.read_bytes()[-600:].decode(errors="replace")
            raise RuntimeError(f"manager exited with code {code}: {tail.strip()}")

    def stop(self) -> None:
        """SIGTERM, SIGKILL after a bounded wait, then SIGKILL every leftover we ever saw."""
        if self.popen.poll() is None:
            self.tree(fresh=True)
        t = time.perf_counter()
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.popen.pid, signal.SIGTERM)
        try:
            self.exit_code = self.popen.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.stop_killed = True
            self.popen.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.exit_code = self.popen.wait(KILL_TIMEOUT)
        self.stop_seconds = time.perf_counter() - t
        self._out.close()
        self._err.close()
        self._kill_leftovers()

    def _kill_leftovers(self) -> None:
        own_pgid = os.getpgid(0)
        groups = {p.pgid for p in self.seen.values()} | {self.popen.pid}
        groups.discard(own_pgid)
        deadline = time.monotonic() + KILL_TIMEOUT
        while time.monotonic() < deadline:
            left: list[Proc] = []
            for name in os.listdir("/proc"):
                if not name.isdigit():
                    continue
                proc = read_stat(int(name))
                if proc is None:
                    continue
                old = self.seen.get(proc.pid)
                ours = old is not None and old.start == proc.start
                # A process of one of our groups started after the manager: a late service.
                late = proc.pgid in groups and proc.start >= self.root_start
                if (ours or late) and proc.pid != os.getpid():
                    left.append(proc)
            if not left:
                return
            for proc in left:
                with contextlib.suppress(OSError):
                    os.kill(proc.pid, signal.SIGKILL)
            time.sleep(0.1)
        print(f"    warning: {len(left)} processes of the run survived SIGKILL", flush=True)

    def problems(self) -> list[str]:
        """Error-looking lines of the manager's own output (stderr, and stdout lines that are
        not service lines)."""
        found: list[str] = []
        pattern = re.compile(rb"Traceback|Error|error:|exception|CRIT|lost", re.IGNORECASE)
        for path in (self.plan.stderr, self.plan.stdout):
            with contextlib.suppress(OSError), open(path, "rb") as f:
                for line in f:
                    if MARKER in line or any(b in line for b in BENIGN):
                        continue
                    if pattern.search(line):
                        found.append(line.decode(errors="replace").rstrip())
                        if len(found) >= 10:
                            return found
        return found


def wait_for_sleeps(run: Running, count: int) -> tuple[float, float]:
    """Seconds from launch until the first and until `count` `sleep` processes descend from
    the manager."""
    last, last_change = -1, time.monotonic()
    first = 0.0
    while True:
        run.check_alive()
        n = sum(1 for p in run.tree() if p.comm == "sleep")
        elapsed = run.elapsed()
        if n and not first:
            first = elapsed
        if n >= count:
            return first, elapsed
        now = time.monotonic()
        if n != last:
            last, last_change = n, now
        if elapsed > START_TIMEOUT or now - last_change > STALL:
            raise RuntimeError(f"only {n} of {count} services running after {elapsed:.1f}s")
        time.sleep(POLL)


def own_pss(run: Running) -> tuple[int, list[tuple[str, int]]]:
    """PSS of the manager's own processes (root + non-service descendants), and each one's."""
    own = [run.popen.pid] + [p.pid for p in run.tree(fresh=True) if p.comm not in SERVICE_COMMS]
    parts: dict[str, int] = {}
    for pid in own:
        role = "manager" if pid == run.popen.pid else role_of(pid, run.manager)
        parts[role] = parts.get(role, 0) + pss([pid])
    return sum(parts.values()), sorted(parts.items(), key=lambda kv: -kv[1])


def role_of(pid: int, manager: str) -> str:
    """What a manager's helper process is, from its command line."""
    try:
        cmdline = " ".join(psutil.Process(pid).cmdline())
    except psutil.Error:
        return "gone"
    if "resource_tracker" in cmdline:
        return "multiprocessing resource tracker"
    if "spawn_main" in cmdline:
        return "spawned child"
    if manager == "devmesh":
        if "devmesh.workers" in cmdline:
            return "worker " + cmdline.split("devmesh.workers", 1)[1].split()[0]
        if "watchdog_main" in cmdline:
            return "watchdog"
        return "other child"
    if manager == "honcho":
        return "per-process children (forked)"
    return "child"


class LineCounter:
    """Counts marker lines in growing files, reading only what was appended."""

    def __init__(self, paths: Sequence[Path]) -> None:
        self.paths = list(paths)
        self._files: dict[Path, IO[bytes]] = {}
        self._rest: dict[Path, bytes] = {}
        self.count = 0

    def poll(self) -> int:
        """The number of complete marker lines written so far."""
        for path in self.paths:
            f = self._files.get(path)
            if f is None:
                try:
                    f = self._files[path] = open(path, "rb")  # noqa: SIM115 - closed in close()
                except FileNotFoundError:
                    continue
            data = self._rest.get(path, b"") + f.read()
            cut = data.rfind(b"\n") + 1
            self.count += data.count(MARKER, 0, cut)
            self._rest[path] = data[cut:]
        return self.count

    def close(self) -> None:
        """Close every file."""
        for f in self._files.values():
            f.close()


@dataclass
class Completeness:
    """What a manager wrote, checked line by line."""

    present: int = 0  # distinct expected lines found
    missing: int = 0
    duplicated: int = 0
    torn: int = 0  # marker lines that are not a whole expected line

    @property
    def ok(self) -> bool:
        """Every line once, none torn."""
        return not (self.missing or self.duplicated or self.torn)

    def describe(self) -> str:
        """`complete`, or what is wrong."""
        if self.ok:
            return "complete"
        return f"{self.missing} missing, {self.duplicated} duplicated, {self.torn} torn"


def verify(paths: Sequence[Path], services: Sequence[str], per_service: int) -> Completeness:
    """Check that every expected line is present exactly once and whole."""
    seen: set[tuple[bytes, int]] = set()
    result = Completeness()
    names = {s.encode() for s in services}
    matched = 0
    for path in paths:
        with contextlib.suppress(FileNotFoundError), open(path, "rb") as f:
            for line in f:
                at = line.find(MARKER)
                if at < 0:
                    continue
                body = line[at:].rstrip(b"\n")
                m = LINE_RE.fullmatch(body)
                if m is None or len(body) != LINE_BYTES - 1 or m.group(1) not in names:
                    result.torn += 1
                    continue
                matched += 1
                seen.add((m.group(1), int(m.group(2))))
    result.present = len(seen)
    result.missing = len(services) * per_service - len(seen)
    result.duplicated = matched - len(seen)
    return result


def wait_for_lines(
    run: Running, counter: LineCounter, total: int
) -> tuple[float | None, float | None]:
    """Seconds from launch until the first and until all `total` marker lines are written
    (None: they never were)."""
    last, last_change = -1, time.monotonic()
    first: float | None = None
    while True:
        n = counter.poll()
        elapsed = run.elapsed()
        if n and first is None:
            first = elapsed
        if n >= total:
            return first, elapsed
        now = time.monotonic()
        if n != last:
            last, last_change = n, now
        if elapsed > LOG_TIMEOUT or now - last_change > STALL or run.popen.poll() is not None:
            return first, None
        time.sleep(POLL)


# ---------------------------------------------------------------------------- results


@dataclass
class Results:
    """Every sample, per metric and manager."""

    samples: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    completeness: dict[str, list[Completeness]] = field(default_factory=dict)
    problems: dict[str, list[str]] = field(default_factory=dict)
    failures: dict[str, list[str]] = field(default_factory=dict)
    stop_killed: dict[str, int] = field(default_factory=dict)

    def add(self, metric: str, manager: str, value: float) -> None:
        """Record one sample."""
        self.samples.setdefault(metric, {}).setdefault(manager, []).append(value)

    def values(self, metric: str, manager: str) -> list[float]:
        """The samples of a metric for a manager (possibly none)."""
        return self.samples.get(metric, {}).get(manager, [])

    def median(self, metric: str, manager: str) -> float | None:
        """The median sample, None without samples."""
        vals = self.values(metric, manager)
        return statistics.median(vals) if vals else None

    def note(self, where: dict[str, list[str]], manager: str, text: str) -> None:
        """Remember a problem or failure once."""
        items = where.setdefault(manager, [])
        if text not in items:
            items.append(text)


def run_start_memory(
    manager: str, services: int, *, memory: bool, results: Results, record_start: bool
) -> None:
    """Launch `manager` with `services` sleeps: start time, then (memory) PSS after settling."""
    work = Path(tempfile.mkdtemp(prefix=f"bench-{manager}-"))
    svcs = [Service(f"s{i:03d}", SLEEP_COMMAND) for i in range(services)]
    run = Running(manager, PLANS[manager](work, svcs))
    try:
        first, seconds = wait_for_sleeps(run, services)
        line = (
            f"    {manager:<12} {services:>4} services: all running after {seconds:6.3f}s "
            f"(first after {first:.3f}s)"
        )
        if record_start:
            results.add("start", manager, seconds)
            results.add("start_first", manager, first)
            results.add("start_each", manager, (seconds - first) / (services - 1))
        if memory:
            time.sleep(SETTLE)
            run.check_alive()
            total, parts = own_pss(run)
            results.add(f"pss{services}", manager, total)
            line += f", own PSS {total / MIB:7.2f} MiB: " + ", ".join(
                f"{role} {size / MIB:.1f}" for role, size in parts
            )
            if services != SMALL_SERVICES:
                for role, size in parts:
                    results.add(f"pss_part:{role}", manager, size)
        print(line, flush=True)
    except RuntimeError as exc:
        print(f"    {manager:<12} {services:>4} services: FAILED: {exc}", flush=True)
        results.note(results.failures, manager, f"{services} services: {exc}")
    finally:
        run.stop()
        for problem in run.problems():
            results.note(results.problems, manager, problem)
        if record_start:
            results.add("stop", manager, run.stop_seconds)
            if run.stop_killed:
                results.stop_killed[manager] = results.stop_killed.get(manager, 0) + 1
        shutil.rmtree(work, ignore_errors=True)


def run_logs(manager: str, lines: int, results: Results) -> None:
    """Launch `manager` with 4 chatty services; time until every line is written, then check."""
    work = Path(tempfile.mkdtemp(prefix=f"bench-{manager}-"))
    producer = work / "producer.py"
    producer.write_text(PRODUCER)
    per = lines // LOG_SERVICES
    names = [f"s{i:03d}" for i in range(LOG_SERVICES)]
    svcs = [Service(n, f"{sys.executable} {producer} {per} {n}") for n in names]
    run = Running(manager, PLANS[manager](work, svcs))
    counter = LineCounter(run.plan.line_files)
    try:
        first, seconds = wait_for_lines(run, counter, per * LOG_SERVICES)
        counter.close()
        if seconds is None:
            time.sleep(1.0)  # let stragglers land before counting what is there
        check = verify(run.plan.line_files, names, per)
        results.completeness.setdefault(manager, []).append(check)
        if seconds is None:
            msg = f"not all lines written within the time limit: {check.describe()}"
            print(f"    {manager:<12} logs: FAILED: {msg}", flush=True)
            results.note(results.failures, manager, f"logs: {msg}")
        else:
            rate = per * LOG_SERVICES / seconds
            results.add("logs", manager, rate)
            results.add("logs_s", manager, seconds)
            assert first is not None
            results.add("logs_first", manager, first)
            if seconds > first:
                results.add("logs_flow", manager, per * LOG_SERVICES / (seconds - first))
            print(
                f"    {manager:<12} logs: {per * LOG_SERVICES} lines in {seconds:6.3f}s = "
                f"{rate:9.0f} lines/s (first line after {first:.3f}s), {check.describe()}",
                flush=True,
            )
    finally:
        counter.close()
        run.stop()
        for problem in run.problems():
            results.note(results.problems, manager, problem)
        shutil.rmtree(work, ignore_errors=True)


# ---------------------------------------------------------------------------- report


def fmt(metric: str, value: float | None) -> str:
    """A value in the metric's unit."""
    if value is None:
        return "n/a"
    if metric in ("start", "stop", "logs_s", "start_first", "logs_first"):
        return f"{value:.2f} s"
    if metric == "start_each":
        return f"{value * 1000:.1f} ms"
    if metric.startswith("pss"):
        return f"{value / MIB:.1f} MiB"
    if metric == "per_service":
        return f"{value / 1024:.0f} KiB"
    return f"{value:,.0f}"


def spread(results: Results, metric: str, manager: str) -> str:
    """`median (min-max)` of a metric."""
    vals = results.values(metric, manager)
    med = results.median(metric, manager)
    if not vals:
        return "n/a"
    if len(vals) == 1:
        return fmt(metric, med)
    lo, hi = fmt(metric, min(vals)), fmt(metric, max(vals))
    unit = lo.split(" ", 1)[1] if " " in lo else ""
    lo = lo.split(" ", 1)[0]
    hi = hi.split(" ", 1)[0]
    return f"{fmt(metric, med)} ({lo}-{hi}{' ' + unit if unit else ''})"


def ratio(results: Results, metric: str, peer: str) -> str:
    """devmesh's median over the peer's."""
    ours, theirs = results.median(metric, "devmesh"), results.median(metric, peer)
    if ours is None or theirs is None or theirs == 0:
        return "n/a"
    return f"{ours / theirs:.2f}x"


def derive(results: Results, services: int) -> None:
    """Per-service memory cost from paired runs at N and 10 services."""
    for manager in MANAGERS:
        big, small = results.values(f"pss{services}", manager), results.values("pss10", manager)
        for b, s in zip(big, small, strict=False):
            results.add("per_service", manager, (b - s) / (services - SMALL_SERVICES))


def goals(results: Results, services: int) -> list[Goal]:
    """The three goals, judged on medians; with the margin and the repeats that passed alone."""
    out: list[Goal] = []

    def judge(
        text: str,
        metric: str,
        peer: str,
        ok: Callable[[float, float], bool],
        margin: Callable[[float, float], float],
        show: Callable[[float, float], str],
        extra: bool = True,
    ) -> None:
        d, p = results.median(metric, "devmesh"), results.median(metric, peer)
        if d is None or p is None:
            out.append(Goal(text, None, "n/a"))
            return
        detail = f"{show(d, p)}; margin {margin(d, p):+.0%}"
        ours, theirs = results.values(metric, "devmesh"), results.values(metric, peer)
        if len(ours) == len(theirs) > 1:
            alone = sum(ok(a, b) for a, b in zip(ours, theirs, strict=True))
            detail += f"; met in {alone} of {len(ours)} repeats on their own"
        out.append(Goal(text, ok(d, p) and extra, detail, margin(d, p)))

    judge(
        "devmesh start time <= supervisord's",
        "start",
        "supervisord",
        lambda d, p: d <= p,
        lambda d, p: p / d - 1,
        lambda d, p: f"{d:.2f} s vs {p:.2f} s",
    )
    judge(
        "devmesh memory <= 1/5 of honcho's",
        f"pss{services}",
        "honcho",
        lambda d, p: d <= p / 5,
        lambda d, p: p / 5 / d - 1,
        lambda d, p: f"{d / MIB:.1f} MiB vs {p / MIB:.1f} MiB / 5 = {p / 5 / MIB:.1f} MiB",
    )
    complete = all(c.ok for c in results.completeness.get("devmesh", []))
    judge(
        "devmesh log fan-in >= 2x supervisord's (and no line lost)",
        "logs",
        "supervisord",
        lambda d, p: d >= 2 * p,
        lambda d, p: d / (2 * p) - 1,
        lambda d, p: (
            f"{d:,.0f} vs 2 x {p:,.0f} = {2 * p:,.0f} lines/s"
            + ("" if complete else "; devmesh lost or tore lines")
        ),
        extra=complete,
    )
    return out


def table(results: Results, args: argparse.Namespace) -> list[str]:
    """The results as markdown table rows."""
    n = args.services
    rows: list[tuple[str, str]] = []
    if args.only in (None, "start"):
        rows += [
            (f"start time, {n} services (s, lower is better)", "start"),
            ("start: first service running after (s)", "start_first"),
            ("start: then per service (ms)", "start_each"),
        ]
    if args.only in (None, "memory"):
        rows += [
            (f"own PSS at {n} services (MiB, lower is better)", f"pss{n}"),
            (f"own PSS at {SMALL_SERVICES} services (MiB)", "pss10"),
            (f"PSS per extra service (KiB), ({n}-{SMALL_SERVICES})", "per_service"),
        ]
    if args.only in (None, "logs"):
        rows += [
            (f"log fan-in, {args.lines:,} lines (lines/s, higher is better)", "logs"),
            ("log fan-in, time to write every line (s)", "logs_s"),
            ("log fan-in: first line written after (s)", "logs_first"),
            ("log fan-in from the first line written (lines/s, for information)", "logs_flow"),
        ]
    if args.only in (None, "start"):
        rows.append((f"stop time after SIGTERM, {n} services (s, for information)", "stop"))
    present = [m for m in MANAGERS if m in args.managers]
    peers = [m for m in present if m != "devmesh"]
    head = ["metric (median, min-max)", *present] + [f"devmesh/{p}" for p in peers]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, metric in rows:
        cells = [label] + [spread(results, metric, m) for m in present]
        if metric == "stop":
            for i, m in enumerate(present):
                if results.stop_killed.get(m):
                    cells[i + 1] += f", SIGKILLed after {STOP_TIMEOUT:g} s in "
                    cells[i + 1] += f"{results.stop_killed[m]} of {len(results.values('stop', m))}"
        if "devmesh" in present:
            cells += [ratio(results, metric, p) for p in peers]
        out.append("| " + " | ".join(cells) + " |")
    if args.only in (None, "logs"):
        cells = ["log lines complete (every run)"]
        for m in present:
            checks = results.completeness.get(m, [])
            bad = [c for c in checks if not c.ok]
            cells.append(
                "n/a"
                if not checks
                else ("yes" if not bad else f"no: {bad[0].describe()} ({len(bad)} runs)")
            )
        if "devmesh" in present:
            cells += [""] * len(peers)
        out.append("| " + " | ".join(cells) + " |")
    return out


def breakdown(results: Results, services: int) -> list[str]:
    """Median PSS of each kind of own process, per manager, as text lines."""
    out: list[str] = []
    for manager in MANAGERS:
        parts = [
            (metric.split(":", 1)[1], statistics.median(vals))
            for metric, by in results.samples.items()
            if metric.startswith("pss_part:")
            for m, vals in by.items()
            if m == manager and vals
        ]
        if parts:
            text = ", ".join(f"{role} {size / MIB:.1f} MiB" for role, size in parts)
            out.append(f"{manager} at {services} services: {text}")
    return out


def reading(results: Results) -> list[str]:
    """What the medians say beyond pass/fail, from the numbers of this run."""
    out: list[str] = []
    med = results.median
    d0, s0 = med("start_first", "devmesh"), med("start_first", "supervisord")
    de, se = med("start_each", "devmesh"), med("start_each", "supervisord")
    he = med("start_each", "honcho")
    if None not in (d0, s0, de, se, he):
        assert d0 is not None and s0 is not None and de is not None
        assert se is not None and he is not None
        out.append(
            f"- Start: supervisord spawns its first program only after {s0:.2f} s (its main "
            "loop polls once, with a 1 s timeout, before the first spawn), devmesh after "
            f"{d0:.2f} s (interpreter, imports, config); after that devmesh needs {de * 1000:.1f} "
            f"ms per service, supervisord {se * 1000:.1f} ms and honcho {he * 1000:.1f} ms "
            "(honcho's forked children spawn in parallel)."
        )
    d0, s0 = med("logs_first", "devmesh"), med("logs_first", "supervisord")
    df, sf = med("logs_flow", "devmesh"), med("logs_flow", "supervisord")
    if None not in (d0, s0, df, sf):
        assert d0 is not None and s0 is not None and df is not None and sf is not None
        out.append(
            f"- Log fan-in: the first line is written after {d0:.2f} s by devmesh and "
            f"{s0:.2f} s by supervisord. From the first line to the last, devmesh moves "
            f"{df:,.0f} lines/s and supervisord {sf:,.0f} ({df / sf:.2f}x; coarse: the "
            f"window is short and polled every {POLL * 1000:.0f} ms). devmesh writes every line "
            "twice (its prefixed stdout and its per-service log file), supervisord once."
        )
    return out


def machine() -> dict[str, str]:
    """What ran the benchmark."""
    cpu = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break

    def version(dist: str) -> str:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return "not installed"

    return {
        "nproc": str(os.cpu_count()),
        "cpu": cpu or platform.processor() or "unknown",
        "kernel": platform.release(),
        "python": platform.python_version(),
        "devmesh": f"{version('devmesh')} ({SOURCE.describe if SOURCE else 'installed'})",
        "honcho": version("honcho"),
        "supervisor": version("supervisor"),
    }


def markdown(
    results: Results, args: argparse.Namespace, info: dict[str, str], load: tuple[str, str]
) -> str:
    """The "## Supervisor" section of docs/benchmarks.md."""
    command = shlex.join(["python3", *sys.argv])
    per = args.lines // LOG_SERVICES
    lines = [
        "## Supervisor",
        "",
        "devmesh against honcho and supervisord, the three run side by side in the same run "
        f"(order rotated every repeat), {args.repeat} repeats, medians with min-max.",
        "",
        "```sh",
        command,
        "```",
        "",
        f"Run on {dt.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}: {info['nproc']} cores "
        f"({info['cpu']}), Linux {info['kernel']}, Python {info['python']}, devmesh "
        f"{info['devmesh']}, honcho {info['honcho']}, supervisor {info['supervisor']}. "
        f"Load average before / after: {load[0]} / {load[1]}.",
        "",
        *table(results, args),
        "",
        *(
            ["Own memory by process (median PSS):", ""]
            + [f"- {line}" for line in breakdown(results, args.services)]
            + [""]
            if breakdown(results, args.services)
            else []
        ),
        "Goals (from the issue, judged on the medians):",
        "",
    ]
    judged = goals(results, args.services)
    for goal in judged:
        lines.append(f"- **{verdict(goal)}**: {goal.text} ({goal.detail})")
    close = [g.text for g in judged if g.margin is not None and abs(g.margin) < CLOSE_CALL]
    lines += [
        "",
        "The margin is how far the median is inside (+) or outside (-) the goal's limit.",
    ]
    if close:
        lines[-1] += (
            f" Within {CLOSE_CALL:.0%} of the limit ({'; '.join(close)}), the verdict is inside "
            "this machine's run-to-run noise and can flip between runs of the benchmark."
        )
    notes = reading(results)
    if notes:
        lines += ["", "Reading the results:", "", *notes]
    failures = [f"{m}: {f}" for m, fs in results.failures.items() for f in fs]
    problems = [f"{m}: `{p}`" for m, ps in results.problems.items() for p in ps[:5]]
    if failures:
        lines += ["", "Runs that failed:", ""] + [f"- {f}" for f in failures]
    if problems:
        lines += ["", "Error-looking lines in the managers' own output:", ""]
        lines += [f"- {p}" for p in problems]
    lines += [
        "",
        "Method. *Start time*: from just before `Popen` of the manager (started as "
        "`python -m devmesh up -f devmesh.toml`, `python -m honcho start -f Procfile`, "
        "`python -m supervisor.supervisord -c supervisord.conf`, no shell wrapper, bytecode "
        "caches compiled beforehand, `PYTHONDONTWRITEBYTECODE`/`PYTHONUNBUFFERED` removed from "
        "their environment) until "
        f"{args.services} `sleep 3600` processes descend from it, polled from `/proc` every "
        f"{POLL * 1000:.0f} ms (a spawned `sleep` counts; supervisord's `startsecs` and "
        "devmesh's `start_secs` promotion to RUNNING are not waited for). *Memory*: PSS "
        f"summed over the manager's own processes {SETTLE:.0f} s after all services run: the "
        "manager and its descendants that are not `sleep`/`sh` (devmesh: supervisor, its "
        "watchdog and its control worker; "
        "honcho: honcho and its multiprocessing child per process; "
        "supervisord: itself); the per-service cost is the difference to a run with "
        f"{SMALL_SERVICES} services. *Log fan-in*: {LOG_SERVICES} services each write "
        f"{per:,} lines of {LINE_BYTES} bytes ({LINES_PER_WRITE} lines per `write(2)`, then "
        "sleep), the same command for the three; the clock stops when every line is in the "
        "manager's output: devmesh and honcho stdout redirected to a file (prefixed lines; "
        "devmesh also writes its per-service log files), supervisord the per-program "
        "`stdout_logfile`s. Every line is then checked for loss, duplication and tearing. "
        "devmesh runs from a copy of the commit named above (`git archive HEAD`; "
        "`--source worktree` copies the working tree instead), whatever `pip install -e` "
        "points at.",
        "",
        "Noise. The machine is a shared, noisy 2-core VM: the benchmark, the manager and its "
        "services compete for the same two cores, and other jobs run beside them (see the load "
        "averages). The min-max ranges show the spread between repeats; ratios are of the "
        "medians. Start times include the interpreter start and imports of each manager. PSS "
        "divides a shared page among every process that maps it, unrelated `python3` processes "
        "on the machine included, so all three managers' PSS moves by a few MiB together with "
        "what else runs.",
        "",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    p.add_argument("--repeat", type=int, default=3, help="repeats (default 3)")
    p.add_argument("--services", type=int, default=200, help="services for start/memory")
    p.add_argument("--lines", type=int, default=200_000, help="log lines in total (4 services)")
    p.add_argument("--only", choices=("start", "memory", "logs"), help="run one benchmark")
    p.add_argument(
        "--managers",
        type=lambda s: [m for m in s.split(",") if m],
        default=list(MANAGERS),
        help="comma-separated subset of devmesh,honcho,supervisord",
    )
    add_output_options(p)
    args = p.parse_args(argv)
    if args.repeat < 1 or args.services <= SMALL_SERVICES or args.lines < LOG_SERVICES:
        p.error(f"need --repeat >= 1, --services > {SMALL_SERVICES}, --lines >= {LOG_SERVICES}")
    unknown = set(args.managers) - set(MANAGERS)
    if unknown:
        p.error(f"unknown managers: {', '.join(sorted(unknown))}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; 0 when every measured goal passed, 1 otherwise."""
    global SOURCE
    args = parse_args(argv)
    with devmesh_under_test(args.source) as SOURCE:
        warm_up(SOURCE)
        return measure(args)


def measure(args: argparse.Namespace) -> int:
    """Every repeat of every benchmark, then the report; 0 when no measured goal failed."""
    info = machine()
    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(
        f"devmesh {info['devmesh']}, honcho {info['honcho']}, supervisor {info['supervisor']}, "
        f"python {info['python']}, {info['nproc']} cores, load {load_before}",
        flush=True,
    )
    results = Results()
    managers = [m for m in MANAGERS if m in args.managers]
    do_start = args.only in (None, "start", "memory")
    do_memory = args.only in (None, "memory")
    do_logs = args.only in (None, "logs")
    t_begin = time.monotonic()
    for r in range(args.repeat):
        order = managers[r % len(managers) :] + managers[: r % len(managers)]
        print(f"repeat {r + 1}/{args.repeat} (order: {', '.join(order)})", flush=True)
        for manager in order:
            if do_start:
                run_start_memory(
                    manager,
                    args.services,
                    memory=do_memory,
                    results=results,
                    record_start=args.only in (None, "start"),
                )
            if do_memory:
                run_start_memory(
                    manager, SMALL_SERVICES, memory=True, results=results, record_start=False
                )
            if do_logs:
                run_logs(manager, args.lines, results)
    derive(results, args.services)
    load_after = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"\ndone in {time.monotonic() - t_begin:.0f}s, load {load_after}\n")
    print("\n".join(table(results, args)))
    print()
    for line in breakdown(results, args.services):
        print(line)
    judged = goals(results, args.services)
    for goal in judged:
        print(f"{verdict(goal):<12} {goal.text}: {goal.detail}")
    for note in reading(results):
        print(note)
    for manager, items in results.failures.items():
        for item in items:
            print(f"failed run: {manager}: {item}")
    for manager, items in results.problems.items():
        for item in items[:10]:
            print(f"{manager} output: {item}")
    if args.markdown is not None:
        write_section(
            args.markdown, "Supervisor", markdown(results, args, info, (load_before, load_after))
        )
        print(f"\nwrote {args.markdown}")
    return 0 if all(g.passed is not False for g in judged) else 1


if __name__ == "__main__":
    sys.exit(main())

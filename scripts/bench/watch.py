#!/usr/bin/env python3
"""Watch benchmark: what an idle watch of a 50,000-file tree costs, devmesh's watch worker side
by side with watchmedo (watchdog) and nodemon (chokidar) watching the same tree.

The tree (`--files`, default 50,000 small `.py` files, 50 per directory, in two levels under
`src/`: about 1,030 directories) is generated once in a temporary directory. Every repeat
(`--repeat`, default 5) starts each tool afresh (the order rotated every repeat), each restarting
the same trivial service (`sleep 3600`) when a `.py` file under `src/` changes:

- devmesh: `python -m devmesh up` with one service, `watch = ["src/**/*.py"]` (discovery and
  the dashboard off, its own `XDG_RUNTIME_DIR`/`XDG_STATE_HOME`); the process measured is its
  watch worker (found with `devmesh status --json`), the only one that watches.
- watchmedo: `python -m watchdog.watchmedo auto-restart --directory src --recursive
  --patterns '**/*.py' --signal SIGTERM -- sleep 3600` (watchdog 5+ matches the whole path:
  `*.py` matches nothing below `src`); its Python process is measured.
- nodemon: `nodemon --verbose --no-colours --watch src --ext py --signal SIGTERM --exec
  'sleep 3600'` (`--nodemon PATH`, else `nodemon` on PATH); its node process is measured.

Measured per tool and repeat:

1. ready: devmesh and nodemon say when their watches are in place (`watching files for app`;
   `watching 50000 files` once chokidar is ready): the time from launch to that line.
   watchmedo does not say, so for it (and for comparison, the others too) the time from
   launch until the measured process used less than 5 ms of CPU in 1 s (after the line, for
   those that print one: nodemon's CPU pauses for a second now and then while it scans).
2. idle CPU: the CPU time of the measured process (all threads, from the scheduler's
   nanosecond account in /proc/PID/task/*/schedstat) over `--idle` seconds (default 30) in
   which nothing changes, once ready; as ms of CPU per minute.
3. memory: RSS and PSS of the measured process at the end of the idle window.
4. one edit: a file deep in the tree is rewritten; the time until the restarted service's new
   `sleep` process exists (polled every 10 ms; it includes each tool's debounce).

Every process is started here in its own session and stopped by pid (SIGTERM, SIGKILL after a
bounded wait), then its process group; every wait is bounded. devmesh runs from a frozen copy
of the last commit (`--source head`, the default) or of the working tree (`--source worktree`).
A peer that is not installed is skipped and the report says so (`pip install -e .[bench]`
brings watchdog; `npm install --prefix DIR nodemon` brings nodemon).

    python3 scripts/bench/watch.py --repeat 5 --markdown docs/benchmarks.md

Options: `--repeat N`, `--files N`, `--idle SECONDS`, `--tools devmesh,watchmedo,nodemon`,
`--nodemon PATH`, `--source head|worktree`, `--markdown PATH` (writes or replaces the
"## Watch" section of that file).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib.util
import json
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import psutil
from common import (  # scripts/bench/common.py
    CALLER_ONLY,
    DevmeshSource,
    add_output_options,
    devmesh_under_test,
    write_section,
)

TOOLS = ("devmesh", "watchmedo", "nodemon")
PER_DIR = 50
QUIET_CPU = 0.005  # seconds of CPU in QUIET_WINDOW: the tool has finished setting up
QUIET_WINDOW = 1.0
READY_TIMEOUT = 180.0
EDIT_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
POLL = 0.01
MIB = 2**20


def make_tree(root: Path, files: int) -> tuple[int, Path]:
    """`files` small .py files under root/src, PER_DIR per directory, in two levels; how many
    directories that makes, and the file the benchmark edits (in the middle of the tree)."""
    leaves = -(-files // PER_DIR)
    width = max(1, int(leaves**0.5 + 0.999))
    made: set[Path] = set()
    edited = root
    for i in range(files):
        leaf = i // PER_DIR
        directory = root / "src" / f"d{leaf // width:02}" / f"d{leaf % width:02}"
        if directory not in made:
            directory.mkdir(parents=True, exist_ok=True)
            made.add(directory)
        (directory / f"f{i % PER_DIR:02}.py").write_text(f"value = {i}\n")
        if i == files // 2:
            edited = directory / f"f{i % PER_DIR:02}.py"
    return len(made) + len({d.parent for d in made}) + 1, edited


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """CPU time of one process (all its threads, user and system), to the nanosecond: the
    scheduler's own account (/proc/PID/task/*/schedstat), not clock ticks of 10 ms."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{tid}/schedstat") as f:
            total += int(f.read().split()[0])
    return total / 1e9


def sleeps(root: int) -> set[int]:
    """The `sleep` processes under `root` (the watched service)."""
    try:
        children = psutil.Process(root).children(recursive=True)
    except psutil.Error:
        return set()
    found = set()
    for child in children:
        with contextlib.suppress(psutil.Error):
            if child.name() == "sleep":
                found.add(child.pid)
    return found


def wait_for(predicate: Callable[[], object], timeout: float, what: str) -> object:
    """Poll until `predicate()` is truthy; RuntimeError after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(POLL)
    raise RuntimeError(f"timed out after {timeout:g}s waiting for {what}")


@dataclass
class Tool:
    """One watcher under test: how to start it and which of its processes watches."""

    name: str
    work: Path  # the project directory holding src/
    source: DevmeshSource
    nodemon: str
    proc: subprocess.Popen[bytes] | None = None
    output: Path | None = None
    env: dict[str, str] = field(default_factory=dict)

    def argv(self) -> list[str]:
        """The command line, run in the project directory."""
        if self.name == "devmesh":
            return [sys.executable, "-m", "devmesh", "up"]
        if self.name == "watchmedo":
            return [
                *(sys.executable, "-m", "watchdog.watchmedo", "auto-restart"),
                *("--directory", "src", "--recursive", "--patterns", "**/*.py"),
                *("--signal", "SIGTERM", "--", "sleep", "3600"),
            ]
        return [
            *(self.nodemon, "--verbose", "--no-colours", "--watch", "src", "--ext", "py"),
            *("--signal", "SIGTERM", "--exec", "sleep 3600"),
        ]

    def start(self, home: Path) -> float:
        """Launch it; the monotonic time of the launch."""
        env = {k: v for k, v in os.environ.items() if k not in CALLER_ONLY}
        env.update(NO_COLOR="1", DEVMESH_DISCOVERY="off")
        if self.name == "devmesh":
            for sub in ("run", "state"):
                (home / sub).mkdir(mode=0o700, exist_ok=True)
            env.update(XDG_RUNTIME_DIR=str(home / "run"), XDG_STATE_HOME=str(home / "state"))
            env = self.source.env(env)
            (self.work / "devmesh.toml").write_text(
                f"[proxy]\nport = {free_port()}\n\n[dashboard]\nenabled = false\n\n"
                "[discovery]\nenabled = false\n\n[services.app]\n"
                'command = "sleep 3600"\nwatch = ["src/**/*.py"]\nstart_secs = 0.2\n'
            )
        self.env = env
        self.output = home / f"{self.name}.out"
        launched = time.monotonic()
        with open(self.output, "wb") as out:
            self.proc = subprocess.Popen(
                self.argv(),
                cwd=self.work,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        return launched

    def text(self) -> str:
        """What it printed."""
        assert self.output is not None
        return self.output.read_text(errors="replace")

    def watcher(self) -> tuple[int, list[int]]:
        """The pid of the process that watches, and (devmesh) its other processes."""
        assert self.proc is not None
        if self.name != "devmesh":
            return self.proc.pid, []
        status = subprocess.run(
            [sys.executable, "-m", "devmesh", "status", "--json"],
            cwd=self.work,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        workers = json.loads(status.stdout)["workers"]
        watch = int(next(w["pid"] for w in workers if w["name"] == "watch"))
        others = [int(w["pid"]) for w in workers if w["name"] != "watch"]
        return watch, [self.proc.pid, *others]

    def says_ready(self) -> bool:
        """Whether it said that its watches are in place (watchmedo never says)."""
        if self.name == "devmesh":
            return "watching files for app" in self.text()
        return self.name == "nodemon" and re.search(r"watching \d+ files", self.text()) is not None

    def stop(self) -> None:
        """SIGTERM, SIGKILL after a bounded wait, then whatever is left of its session."""
        proc = self.proc
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(STOP_TIMEOUT)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # its session's group: the sleep it ran


def wait_quiet(pid: int, launched: float) -> float:
    """Seconds from launch until `pid` used less than QUIET_CPU in QUIET_WINDOW."""
    deadline = time.monotonic() + READY_TIMEOUT
    last, at = cpu_seconds(pid), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(QUIET_WINDOW / 4)
        now = cpu_seconds(pid)
        if now - last >= QUIET_CPU:
            last, at = now, time.monotonic()
        elif time.monotonic() - at >= QUIET_WINDOW:
            return at - launched
    raise RuntimeError(f"pid {pid} did not go quiet within {READY_TIMEOUT:g}s")


def run_tool(tool: Tool, home: Path, idle: float, edited: Path) -> dict[str, float]:
    """One repeat of one tool: ready, idle CPU, memory, edit -> restart."""
    got: dict[str, float] = {}
    try:
        launched = tool.start(home)
        assert tool.proc is not None
        root = tool.proc.pid
        wait_for(lambda: sleeps(root), READY_TIMEOUT, f"{tool.name}'s service")
        if tool.name != "watchmedo":
            wait_for(tool.says_ready, READY_TIMEOUT, f"{tool.name} to watch")
            got["said ready"] = time.monotonic() - launched
        pid, others = tool.watcher()
        got["quiet"] = wait_quiet(pid, launched)
        before, rest = cpu_seconds(pid), sum(map(cpu_seconds, others))
        time.sleep(idle)
        got["idle cpu"] = (cpu_seconds(pid) - before) / idle * 60  # s of CPU per minute
        if others:
            got["rest cpu"] = (sum(map(cpu_seconds, others)) - rest) / idle * 60
        memory = psutil.Process(pid).memory_full_info()
        got["rss"], got["pss"] = memory.rss / MIB, memory.pss / MIB
        before_edit = sleeps(root)  # now: a tool may have restarted it once while starting
        edited.write_text(f"value = {time.time()}\n")
        edited = time.monotonic()
        wait_for(lambda: sleeps(root) - before_edit, EDIT_TIMEOUT, f"{tool.name} to restart")
        got["edit"] = time.monotonic() - edited
    finally:
        tool.stop()
    return got


# ---------------------------------------------------------------------------- report

ROWS = (
    ("idle cpu", "idle CPU of the watching process (ms of CPU per minute, lower is better)"),
    ("rest cpu", "for scale: the rest of devmesh meanwhile (supervisor, other workers; ms/min)"),
    ("pss", "its PSS (MiB, lower is better)"),
    ("rss", "its RSS (MiB)"),
    ("edit", "one edit -> new service process (s, includes the debounce)"),
    ("said ready", "ready: launch -> it says it watches (s)"),
    ("quiet", "ready: launch -> its CPU goes quiet (s)"),
)


def fmt(metric: str, value: float) -> str:
    """A value with its unit."""
    if metric in ("idle cpu", "rest cpu"):
        return f"{value * 1000:.1f} ms/min"
    if metric in ("pss", "rss"):
        return f"{value:.1f} MiB"
    return f"{value:.2f} s"


def cell(values: list[float], metric: str) -> str:
    """Median with min-max."""
    if not values:
        return "n/a"
    low, high = min(values), max(values)
    return f"{fmt(metric, statistics.median(values))} ({fmt(metric, low)} - {fmt(metric, high)})"


def table(results: dict[str, dict[str, list[float]]], tools: Sequence[str]) -> list[str]:
    """The markdown table: one row per metric, one column per tool, then ratios."""
    peers = [t for t in tools if t != "devmesh"]
    head = ["metric (median, min-max)", *tools, *(f"devmesh/{p}" for p in peers)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for metric, label in ROWS:
        cells = [cell(results[t].get(metric, []), metric) for t in tools]
        ratios = []
        for peer in peers:
            mine, theirs = results["devmesh"].get(metric), results[peer].get(metric)
            if mine and theirs and statistics.median(theirs) > 0:
                ratios.append(f"{statistics.median(mine) / statistics.median(theirs):.2f}x")
            else:
                ratios.append("")
        lines.append("| " + " | ".join([label, *cells, *ratios]) + " |")
    return lines


def versions(tools: Sequence[str], nodemon: str) -> str:
    """The peers' versions."""
    out = []
    if "watchmedo" in tools:
        out.append(f"watchdog {metadata.version('watchdog')}")
    if "nodemon" in tools:
        run = subprocess.run([nodemon, "--version"], capture_output=True, text=True, timeout=30)
        node = subprocess.run(["node", "--version"], capture_output=True, text=True, timeout=30)
        out.append(f"nodemon {run.stdout.strip()} (node {node.stdout.strip()})")
    out.append(f"watchfiles {metadata.version('watchfiles')}")
    return ", ".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print (and write) the report."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--files", type=int, default=50_000)
    p.add_argument("--idle", type=float, default=30.0)
    p.add_argument("--tools", default=",".join(TOOLS))
    p.add_argument("--nodemon", default=shutil.which("nodemon") or "")
    add_output_options(p)
    args = p.parse_args(argv)
    tools = [t for t in args.tools.split(",") if t]
    skipped = []
    if "watchmedo" in tools and importlib.util.find_spec("watchdog") is None:
        tools.remove("watchmedo")
        skipped.append("watchmedo (watchdog is not installed: pip install -e .[bench])")
    if "nodemon" in tools and not (args.nodemon and os.access(args.nodemon, os.X_OK)):
        tools.remove("nodemon")
        skipped.append("nodemon (not found: --nodemon PATH)")
    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    results: dict[str, dict[str, list[float]]] = {t: {} for t in tools}
    failures: list[str] = []
    with devmesh_under_test(args.source) as source:
        source.compile()
        work = Path(tempfile.mkdtemp(prefix="bench-watch-"))
        try:
            t0 = time.monotonic()
            dirs, edited = make_tree(work, args.files)
            print(
                f"tree: {args.files:,} files in {dirs:,} directories, made in "
                f"{time.monotonic() - t0:.1f} s",
                flush=True,
            )
            for r in range(args.repeat):
                order = tools[r % len(tools) :] + tools[: r % len(tools)]
                for name in order:
                    home = Path(tempfile.mkdtemp(prefix="bw", dir="/tmp"))
                    tool = Tool(name, work, source, args.nodemon)
                    try:
                        got = run_tool(tool, home, args.idle, edited)
                    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
                        failures.append(f"repeat {r + 1}, {name}: {exc}")
                        print(f"  {name} failed: {exc}\n{tool.text()[-2000:]}", flush=True)
                        continue
                    finally:
                        shutil.rmtree(home, ignore_errors=True)
                    for metric, value in got.items():
                        results[name].setdefault(metric, []).append(value)
                    shown = ", ".join(f"{k} {fmt(k, v)}" for k, v in got.items())
                    print(f"repeat {r + 1}/{args.repeat} {name}: {shown}", flush=True)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        described = source.describe
    load_after = " ".join(f"{x:.2f}" for x in os.getloadavg())
    lines = table(results, tools)
    print("\n".join(lines))
    if args.markdown:
        section = markdown(args, tools, skipped, failures, dirs, described, lines)
        write_section(args.markdown, "Watch", section.format(load=f"{load_before} / {load_after}"))
    return 0


def markdown(
    args: argparse.Namespace,
    tools: Sequence[str],
    skipped: Sequence[str],
    failures: Sequence[str],
    dirs: int,
    described: str,
    lines: Sequence[str],
) -> str:
    """The "## Watch" section of docs/benchmarks.md ({load} left to fill)."""
    cpu = platform.processor() or "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    text = [
        "## Watch",
        "",
        f"An idle watch of a tree of {args.files:,} files ({dirs:,} directories): devmesh's "
        f"watch worker side by side with {', '.join(t for t in tools if t != 'devmesh')}, each "
        f"restarting `sleep 3600` when a `.py` file under `src/` changes; {args.repeat} "
        f"repeats (tools started afresh, order rotated), idle window {args.idle:g} s, medians "
        "with min-max.",
        "",
        "```sh",
        shlex.join(["python3", *sys.argv]),
        "```",
        "",
        f"Run on {dt.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}: {os.cpu_count()} cores "
        f"({cpu}), Linux {platform.release()}, Python {platform.python_version()}, devmesh "
        f"{described}, {versions(tools, args.nodemon)}. Load average before / after: {{load}}.",
        "",
        *lines,
    ]
    if skipped:
        text += ["", f"Not run: {'; '.join(skipped)}."]
    if failures:
        text += ["", "Failed repeats:", "", *(f"- {f}" for f in failures)]
    return "\n".join(text) + "\n"


if __name__ == "__main__":
    sys.exit(main())

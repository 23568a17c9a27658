#!/usr/bin/env python3
"""Health benchmark: how long a backend that turned unhealthy still gets routed requests.

The issue's measure: the time from a backend turning unhealthy to its last routed request,
with active health checks at the default interval and with passive ejection. Goals: passive
ejection within one failed request; active detection within health_interval x
unhealthy_threshold + 100 ms.

The backend (`BACKEND`, run by devmesh as the service `api`) is a small Python HTTP server that
appends `<time.time()> <health|req> <status>` to `served.log` for every request it answers, and
answers 503 to everything (its health check `/health` too) once the file `sick` exists in its
directory. The client (`CLIENT`) sends `GET /` with `Host: api` to a devmesh proxy over one
keep-alive connection (a new one after an error), one request every `PERIOD` (10 ms), for a
bounded time, and prints `going` after its warm-up; the benchmark then creates `sick` and notes
T0 (`time.time()`, one clock for every process of the machine, namespaces included).

1. active (`--intervals`, default 5 s, the default, and 1 s; `unhealthy_threshold` 3, the
   default; `health_timeout` 2 s, the default): one `devmesh up` on loopback in the root
   namespace, `[discovery] enabled = false` and `DEVMESH_DISCOVERY=off` (nothing leaves
   loopback), a free `[proxy] port`, one copy of `api` with `health =
   "http://127.0.0.1:$PORT/health"`. Only one copy exists, so the proxy passes its 503s on
   until the health worker's verdict; after it, the proxy answers with its own 503 page. The
   last request the backend answered after T0 (its log) is the last routed one: last_routed -
   T0 is the measure, goal <= interval x 3 + 100 ms. Also reported: when the third failed
   probe came (the verdict) and how long after it the backend still got a request.
2. passive: a lab of two Linux network namespaces (`tests/lab.py`), a node in each (A in host
   1, B in host 2, `devmesh up` inside `ip netns exec`, each with its own
   `XDG_RUNTIME_DIR`/`XDG_STATE_HOME`, discovery on, a shared `[mesh] namespace`), both
   running `api` with the default health settings. The client runs in host 1 against A's
   proxy, which prefers its own healthy copy, so A's copy is the one routed to; A's copy turns
   sick. A proxy that meets a 5xx from a copy while another copy exists skips that copy for 30 s
   and retries the request on the other one. Measured: how many requests A's copy answered
   after T0 within the first 5 s (goal: at most 1) and until the client stopped (T0 +
   3 intervals + 2 s, after the health verdict), when the last one came, and how many client
   requests failed (anything but a 200 from a copy; goal: 0).

Every repeat (`--repeat`, default 3) first waits until the copy is healthy again (and, in the
lab, until A lists B's copy as running). Medians with min-max. Every process is started here
and stopped by pid (SIGTERM, SIGKILL after a bounded wait); whatever is left in a lab host is
SIGKILLed by pid; the lab (prefix `dmh<pid % 10000>`) and the temporary directories are removed
even on errors. Nothing is sent to a lab address from the root namespace. Every wait is bounded.
devmesh runs from a frozen copy of the last commit (`--source head`, the default) or of the
working tree (`--source worktree`).

Needs root (network namespaces) and iproute2 for the passive case. Run it from the project root:

    python3 scripts/bench/health.py --repeat 3 --markdown docs/benchmarks.md

Options: `--repeat N`, `--intervals 5,1` (active; seconds), `--only active|passive`, `--source
head|worktree`, `--markdown PATH` (writes or replaces the "## Health" section of that file).
The exit code is 1 when a measured goal fails.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import queue
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import (
    CALLER_ONLY,
    ROOT,
    DevmeshSource,
    Goal,
    add_output_options,
    devmesh_under_test,
    lab_missing,  # scripts/bench/common.py
    verdict,
    write_section,
)
from discovery import API, environ, listed, load_api, stop_process, sweep_lab

sys.path.insert(0, str(ROOT / "tests"))
from lab import Lab  # tests/lab.py, through the line above

BACKEND = """
import os, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
BODY = open("name").read().strip().encode()
LOG = open("served.log", "a", buffering=1)
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out as two writes
    def do_GET(self):
        sick = os.path.exists("sick")
        body = b"sick" if sick else BODY
        code = 503 if sick else 200
        kind = "health" if self.path.startswith("/health") else "req"
        LOG.write(f"{time.time():.6f} {kind} {code}\\n")
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
"""
# argv: port seconds warmup period. Prints "going" after `warmup` s of 200s, then at the end one
# JSON line: [[time.time() at the send, status or -1, body's first 40 chars], ...].
CLIENT = """
import http.client, json, sys, time
port, seconds, warmup, period = int(sys.argv[1]), *map(float, sys.argv[2:5])
start = time.monotonic()
deadline = start + seconds
out, conn, going = [], None, False
for _ in range(int(seconds / period) + 10):
    now = time.monotonic()
    if now > deadline:
        break
    if not going and now - start > warmup and out and all(r[1] == 200 for r in out[-20:]):
        going = True
        print("going", flush=True)
    sent = time.time()
    try:
        if conn is None:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("GET", "/", headers={"Host": "api"})
        resp = conn.getresponse()
        body = resp.read().decode(errors="replace").strip()
        out.append([sent, resp.status, body[:40]])
    except (OSError, http.client.HTTPException) as exc:
        out.append([sent, -1, type(exc).__name__])
        if conn is not None:
            conn.close()
        conn = None
    time.sleep(max(0.0, period - (time.monotonic() - now)))
print(json.dumps(out), flush=True)
"""
PERIOD = 0.01  # one client request every 10 ms
WARMUP = 0.5  # the client's requests before T0
THRESHOLD = 3  # unhealthy_threshold, devmesh's default
EJECT_FOR = 30.0  # passive ejection (devmesh.proxy.server Settings.eject_for)
WINDOW = 5.0  # passive: well inside the ejection
SLACK = 0.1  # the goal's "plus 100 ms"
DEFAULT_INTERVAL = 5.0
LAB_PORT = 18080  # the proxy port in every lab namespace
NAMESPACE = "benchhealth"
CONTROL_TIMEOUT = 5.0
START_TIMEOUT = 60.0
HEALTHY_TIMEOUT = 30.0  # the copy healthy again (and, in the lab, listed by A)
STOP_TIMEOUT = 15.0
TAIL = 2.0  # the client keeps going this long after the detection goal

SOURCE: DevmeshSource | None = None  # set by main()


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---------------------------------------------------------------------------- nodes


class Node:
    """One `devmesh up` (optionally inside lab host `host`) running the backend as `api`."""

    def __init__(self, work: Path, name: str, toml: str, lab: Lab | None, host: int) -> None:
        self.name = name
        self.lab, self.host = lab, host
        self.root = work / name
        run, state = work / f"{name}-run", work / f"{name}-state"
        self.root.mkdir()
        run.mkdir(mode=0o700)
        state.mkdir()
        (self.root / "backend.py").write_text(BACKEND)
        (self.root / "name").write_text(f"api of {name}\n")
        (self.root / "devmesh.toml").write_text(toml)
        env = {k: v for k, v in os.environ.items() if k not in CALLER_ONLY}
        env.pop("DEVMESH_LOG", None)
        env.pop("DEVMESH_DISCOVERY", None)
        if lab is None:
            env["DEVMESH_DISCOVERY"] = "off"  # besides `enabled = false`: nothing off loopback
        xdg = {"XDG_RUNTIME_DIR": str(run), "XDG_STATE_HOME": str(state)}
        env.update(xdg, NO_COLOR="1")
        self.env = SOURCE.env(env) if SOURCE else env
        with environ(xdg):  # ProjectPaths reads the XDG variables when it is built
            paths = API["ProjectPaths"].for_root(self.root)
        self.client = API["ControlClient"](paths, self.root, timeout=CONTROL_TIMEOUT)
        self.output = work / f"{name}.out"
        self.proc: subprocess.Popen[bytes] | None = None
        self.last_failed = 0.0  # time.time() of the last request its sick copy answered

    def launch(self) -> None:
        """Start `devmesh up` (does not wait)."""
        argv = [sys.executable, "-m", "devmesh", "up"]
        if self.lab is not None:
            argv = self.lab.exec(self.host, argv)
        with open(self.output, "wb") as out:
            self.proc = subprocess.Popen(
                argv,
                cwd=self.root,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

    def alive(self) -> bool:
        """Whether its `devmesh up` still runs."""
        return self.proc is not None and self.proc.poll() is None

    def tail(self, lines: int = 15) -> str:
        """The last lines it printed."""
        try:
            return "\n".join(self.output.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def health(self) -> str | None:
        """The health status of its `api`, None if it does not answer."""
        try:
            status: dict[str, Any] = self.client.status()
        except API["errors"]:
            return None
        for svc in status.get("services", []):
            if svc["name"] == "api":
                return str((svc.get("health") or {}).get("status"))
        return None

    def lists_peer_api(self) -> bool:
        """Whether it lists a peer with `api` running."""
        try:
            doc: dict[str, Any] = self.client.peers()
        except API["errors"]:
            return False
        return any(svcs.get("api") == "running" for svcs in listed(doc).values())

    def served(self, since: float) -> tuple[list[float], list[float]]:
        """Times of the requests (`req`) its backend answered sick (not 200: a request it
        checked just before the sick file appeared is not one routed to a sick copy), and of the
        failed probes, since `since`."""
        reqs: list[float] = []
        bad_probes: list[float] = []
        with contextlib.suppress(OSError):
            for line in (self.root / "served.log").read_text().splitlines():
                parts = line.split()
                if len(parts) != 3 or float(parts[0]) < since:
                    continue
                if parts[1] == "req":
                    if parts[2] != "200":
                        reqs.append(float(parts[0]))
                elif parts[2] != "200":
                    bad_probes.append(float(parts[0]))
        return reqs, bad_probes

    def stop(self) -> None:
        """SIGTERM, bounded wait, SIGKILL (by pid)."""
        if self.proc is not None:
            stop_process(self.proc)


def wait_ready(node: Node, need_peer: bool) -> None:
    """Until `api` is healthy (and, with `need_peer`, a peer's `api` is listed running)."""
    deadline = time.monotonic() + HEALTHY_TIMEOUT
    for _ in range(int(HEALTHY_TIMEOUT / 0.05) + 1):
        if not node.alive():
            raise RuntimeError(f"node {node.name} exited:\n{node.tail()}")
        if node.health() == "healthy" and (not need_peer or node.lists_peer_api()):
            return
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    raise RuntimeError(f"node {node.name}: api not ready after {HEALTHY_TIMEOUT:g} s")


# ---------------------------------------------------------------------------- the client


class Client:
    """`CLIENT` in the root namespace or in a lab host; its output read by a thread."""

    def __init__(self, argv_prefix: list[str], port: int, seconds: float) -> None:
        argv = [*argv_prefix, sys.executable, "-c", CLIENT, str(port), f"{seconds:g}"]
        argv += [f"{WARMUP:g}", f"{PERIOD:g}"]
        self.seconds = seconds
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
        self.lines: queue.Queue[str] = queue.Queue()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            self.lines.put(raw.decode(errors="replace").strip())

    def wait_going(self) -> None:
        """Until it printed `going`."""
        try:
            line = self.lines.get(timeout=WARMUP + 20)
        except queue.Empty:
            raise RuntimeError("the client did not get going") from None
        if line != "going":
            raise RuntimeError(f"the client ended before going: {line[:300]}")

    def finish(self) -> list[list[Any]]:
        """Wait (bounded) for its end; every request it sent."""
        try:
            self.proc.wait(self.seconds + 20)
        except subprocess.TimeoutExpired:
            stop_process(self.proc)
        self.reader.join(10)
        last = ""
        while not self.lines.empty():
            last = self.lines.get_nowait()
        if not last.startswith("["):
            raise RuntimeError("the client printed no report")
        out: list[list[Any]] = json.loads(last)
        return out

    def stop(self) -> None:
        """Stop it if it still runs."""
        if self.proc.poll() is None:
            stop_process(self.proc)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


# ---------------------------------------------------------------------------- results


@dataclass
class Results:
    """Every sample, per case ("active 5s", "passive") and metric."""

    samples: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    client_other: dict[str, int] = field(default_factory=dict)
    sick_times: list[list[float]] = field(default_factory=list)  # passive: per repeat, - T0

    def add(self, case: str, metric: str, value: float) -> None:
        """Record one sample."""
        self.samples.setdefault(case, {}).setdefault(metric, []).append(value)

    def values(self, case: str, metric: str) -> list[float]:
        """The samples (possibly none)."""
        return self.samples.get(case, {}).get(metric, [])


def active_case(interval: float) -> str:
    """The case name of an active run."""
    return f"active {interval:g} s"


# ---------------------------------------------------------------------------- active


def run_active(interval: float, repeat: int, results: Results) -> None:
    """One `devmesh up` on loopback with one copy; `repeat` times sick -> last routed."""
    case = active_case(interval)
    work = Path(tempfile.mkdtemp(prefix="dmh", dir="/tmp"))  # short: socket paths
    port = free_port()
    setting = (
        "" if interval == DEFAULT_INTERVAL else f'health_interval = "{int(interval * 1000)}ms"\n'
    )
    toml = (
        f"[proxy]\nport = {port}\n\n[discovery]\nenabled = false\n\n"
        '[services.api]\ncommand = "python3 backend.py"\n'
        'health = "http://127.0.0.1:$PORT/health"\n' + setting
    )
    node = Node(work, "L", toml, None, 0)
    try:
        node.launch()
        repeats(case, repeat, results, lambda: measure_active(node, port, interval, case, results))
    finally:
        node.stop()
        shutil.rmtree(work, ignore_errors=True)


def measure_active(node: Node, port: int, interval: float, case: str, results: Results) -> None:
    """Sick at T0 while the client runs: when the backend answered its last request."""
    (node.root / "sick").unlink(missing_ok=True)
    wait_ready(node, need_peer=False)
    seconds = WARMUP + 1.0 + interval * THRESHOLD + SLACK + TAIL
    client = Client([], port, seconds)
    try:
        client.wait_going()
        t0 = time.time()
        (node.root / "sick").write_text("")
        sent = client.finish()
    finally:
        client.stop()
    reqs, bad = node.served(t0)
    if not reqs:
        raise RuntimeError("the backend answered no request after T0")
    last = max(reqs)
    results.add(case, "last", last - t0)
    results.add(case, "after_t0", float(len(reqs)))
    if len(bad) >= THRESHOLD:
        verdict = sorted(bad)[THRESHOLD - 1]
        results.add(case, "first_probe", sorted(bad)[0] - t0)
        results.add(case, "verdict", verdict - t0)
        results.add(case, "after_verdict", last - verdict)
    # The client's view: after T0 it must only see 503s (the backend's, then the proxy's).
    after = [s for s in sent if s[0] >= t0]
    tail = [s for s in after if s[0] > last + 0.05]
    results.add(case, "proxy_503", float(sum(1 for s in tail if s[1] == 503)))
    for s in after:
        if s[1] != 503:
            key = f"{case}: {s[1]} {s[2]}"
            results.client_other[key] = results.client_other.get(key, 0) + 1


# ---------------------------------------------------------------------------- passive


def run_passive(repeat: int, results: Results) -> None:
    """Two lab nodes each with a copy; A's (the one routed to) turns sick mid-load."""
    case = "passive"
    lab = Lab(2, f"dmh{os.getpid() % 10000}")
    work = Path(tempfile.mkdtemp(prefix="dmh", dir="/tmp"))
    toml = (
        f"[proxy]\nport = {LAB_PORT}\n\n[mesh]\nnamespace = {json.dumps(NAMESPACE)}\n\n"
        '[services.api]\ncommand = "python3 backend.py"\n'
        'health = "http://127.0.0.1:$PORT/health"\n'
    )
    nodes: list[Node] = []
    try:
        lab.up()
        nodes = [Node(work, name, toml, lab, i + 1) for i, name in enumerate("AB")]
        for node in nodes:
            node.launch()
        a, b = nodes
        repeats(case, repeat, results, lambda: measure_passive(lab, a, b, case, results))
    finally:
        stoppers = [threading.Thread(target=n.stop, daemon=True) for n in nodes]
        for t in stoppers:
            t.start()
        for t in stoppers:
            t.join(STOP_TIMEOUT + 10)
        left = sweep_lab(lab)
        if left:
            print(f"warning: {left} processes were left in the lab and SIGKILLed")
        lab.down()
        shutil.rmtree(work, ignore_errors=True)


def measure_passive(lab: Lab, a: Node, b: Node, case: str, results: Results) -> None:
    """A's copy sick at T0 while a client in host 1 goes through A's proxy."""
    (a.root / "sick").unlink(missing_ok=True)
    wait_ready(a, need_peer=True)
    wait_ready(b, need_peer=True)  # B serves A's requests only once it knows A (lan_access)
    # The last repeat's ejection of A's copy ended when it left the routes (unhealthy) and
    # came back (healthy): nothing to wait out.
    seconds = WARMUP + 1.0 + DEFAULT_INTERVAL * THRESHOLD + TAIL
    client = Client(lab.exec(a.host, []), LAB_PORT, seconds)
    try:
        client.wait_going()
        t0 = time.time()
        (a.root / "sick").write_text("")
        sent = client.finish()
    finally:
        client.stop()
    before = [s for s in sent if s[0] < t0]
    if not before or sum(1 for s in before if s[2] == "api of A") < len(before) / 2:
        raise RuntimeError("before T0, A's proxy did not route to A's copy")
    reqs, bad = a.served(t0)
    end = max(s[0] for s in sent)
    reqs = [t for t in reqs if t <= end + 1]
    results.add(case, "sick_total", float(len(reqs)))
    results.sick_times.append([t - t0 for t in reqs])
    a.last_failed = max([t0, *reqs])
    print(f"  requests to the sick copy at T0 + {', '.join(f'{t - t0:.3f}' for t in reqs)} s")
    results.add(case, "sick_window", float(sum(1 for t in reqs if t < t0 + WINDOW)))
    results.add(case, "last", (max(reqs) - t0) if reqs else 0.0)
    if len(bad) >= THRESHOLD:
        results.add(case, "verdict", sorted(bad)[THRESHOLD - 1] - t0)
    after = [s for s in sent if s[0] >= t0]
    ok_b = sum(1 for s in after if s[1] == 200 and s[2] == "api of B")
    failed = [s for s in after if not (s[1] == 200 and s[2] in ("api of A", "api of B"))]
    results.add(case, "client_after", float(len(after)))
    results.add(case, "client_b", float(ok_b))
    results.add(case, "client_failed", float(len(failed)))
    for s in failed:
        key = f"{case}: {s[1]} {s[2]}"
        results.client_other[key] = results.client_other.get(key, 0) + 1


# ---------------------------------------------------------------------------- report


def fmt(value: float, unit: str) -> str:
    """A value in its unit."""
    if unit == "ms":
        return f"{round(value * 1000) + 0:,} ms"  # + 0: no "-0"
    if unit == "s":
        return f"{value:.2f} s"
    return f"{value:,.0f}"


def cell(vals: list[float], unit: str) -> str:
    """Median (min-max), or n/a."""
    if not vals:
        return "n/a"
    med = statistics.median(vals)
    lo, hi = min(vals), max(vals)
    strip = {"ms": " ms", "s": " s"}.get(unit, "")
    low = fmt(lo, unit).removesuffix(strip)
    dash = " to " if lo < 0 else "-"  # "-7 to 1 ms", not "-7-1 ms"
    return f"{fmt(med, unit)} ({low}{dash}{fmt(hi, unit)})"


ACTIVE_METRICS: list[tuple[str, str, str]] = [
    ("last", "sick (T0) -> last request routed to it", "s"),
    ("first_probe", "T0 -> first failed probe", "s"),
    ("verdict", "T0 -> third failed probe (the verdict)", "s"),
    ("after_verdict", "third failed probe -> last request routed (< 0: none after it)", "ms"),
    ("after_t0", "requests it answered (503) after T0", "n"),
    ("proxy_503", "then the proxy's own 503 pages, until the client stopped", "n"),
]
PASSIVE_METRICS: list[tuple[str, str, str]] = [
    ("sick_window", "requests the sick copy got in the first 5 s after T0 (ejected for 30 s)", "n"),
    ("sick_total", "requests the sick copy got until the client stopped (T0 + 17 s)", "n"),
    ("last", "sick (T0) -> last request routed to it", "s"),
    ("verdict", "T0 -> A's third failed probe (the verdict)", "s"),
    ("client_failed", "client requests failed after T0", "n"),
    ("client_b", "client requests served by B's copy after T0", "n"),
]


def tables(results: Results, intervals: Sequence[float], only: str | None) -> list[str]:
    """The Markdown tables."""
    lines: list[str] = []
    if only in (None, "active"):
        cases = [active_case(i) for i in intervals]
        heads = " | ".join(f"interval {i:g} s" for i in intervals)
        lines += [f"| active: one copy (median, min-max) | {heads} |"]
        lines += ["|---|" + "---|" * len(intervals)]
        for metric, label, unit in ACTIVE_METRICS:
            row = " | ".join(cell(results.values(c, metric), unit) for c in cases)
            lines.append(f"| {label} | {row} |")
    if only in (None, "passive"):
        if lines:
            lines.append("")
        lines += ["| passive: two copies, interval 5 s (median, min-max) | |", "|---|---|"]
        for metric, label, unit in PASSIVE_METRICS:
            lines.append(f"| {label} | {cell(results.values('passive', metric), unit)} |")
    return lines


def goals(results: Results, intervals: Sequence[float], only: str | None) -> list[Goal]:
    """The issue's goals, judged on the medians (and every repeat for errors)."""
    out: list[Goal] = []
    if only in (None, "active"):
        for i in intervals:
            vals = results.values(active_case(i), "last")
            limit = i * THRESHOLD + SLACK
            text = f"active, interval {i:g} s: last routed request <= {limit:g} s after T0"
            if not vals:
                out.append(Goal(text, None, "not measured"))
                continue
            med = statistics.median(vals)
            met = sum(1 for v in vals if v <= limit)
            out.append(
                Goal(
                    text,
                    med <= limit,
                    f"median {med:.2f} s; met in {met} of {len(vals)} repeats on their own",
                )
            )
    if only in (None, "passive"):
        window = results.values("passive", "sick_window")
        total = results.values("passive", "sick_total")
        failed = results.values("passive", "client_failed")
        text = "passive: the sick copy ejected after at most one failed request (first 5 s)"
        if window:
            out.append(
                Goal(text, max(window) <= 1, f"max {max(window):.0f} over {len(window)} repeats")
            )
            out.append(
                Goal(
                    "passive: at most one request to the sick copy until health took it out",
                    max(total) <= 1,
                    f"max {max(total):.0f} over {len(total)} repeats",
                )
            )
            out.append(
                Goal(
                    "passive: no client-visible error",
                    sum(failed) == 0,
                    f"{sum(failed):.0f} failed requests over {len(failed)} repeats",
                )
            )
        else:
            out.append(Goal(text, None, "not measured"))
    return out


def progress(results: Results, case: str) -> str:
    """The last sample of each metric of a case, one line."""
    metrics = PASSIVE_METRICS if case == "passive" else ACTIVE_METRICS
    parts = []
    for metric, _label, unit in metrics:
        vals = results.values(case, metric)
        if vals:
            parts.append(f"{metric} {fmt(vals[-1], unit)}")
    return ", ".join(parts) or "no samples"


def machine() -> str:
    """What ran the benchmark, one sentence."""
    cpu = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    where = SOURCE.describe if SOURCE else "installed"
    return (
        f"{os.cpu_count()} cores ({cpu or platform.processor() or 'unknown'}), Linux "
        f"{platform.release()}, Python {platform.python_version()}, devmesh {where}"
    )


def markdown(
    results: Results, args: argparse.Namespace, info: str, load: tuple[str, str], took: float
) -> str:
    """The "## Health" section of docs/benchmarks.md."""
    command = shlex.join(["python3", *sys.argv])
    judged = goals(results, args.intervals, args.only)
    lines = [
        "## Health",
        "",
        "The time from a backend turning unhealthy to its last routed request: with active "
        "health checks (one copy; the default `health_interval` of 5 s and 1 s, "
        f"`unhealthy_threshold` {THRESHOLD}, the default) and with passive ejection (two copies "
        f"on two lab nodes), {args.repeat} repeats, medians with min-max. The backend turns "
        "sick (503 to everything, its health check too) at T0 while a client sends one request "
        f"every {PERIOD * 1000:.0f} ms through a devmesh proxy.",
        "",
        "```sh",
        command,
        "```",
        "",
        f"Run on {dt.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}: {info}. Load average "
        f"before / after: {load[0]} / {load[1]}. The run took {took:.0f} s.",
        "",
        *tables(results, args.intervals, args.only),
        "",
        "Goals (from the issue; active judged on the medians, passive on every repeat):",
        "",
        *[f"- **{verdict(g)}**: {g.text} ({g.detail})" for g in judged],
    ]
    notes = reading(results, args.intervals, args.only)
    if notes:
        lines += ["", "Reading the results:", "", *notes]
    if results.client_other:
        lines += ["", "The client's other answers after T0:", ""]
        lines += [f"- `{k}` x {v}" for k, v in list(results.client_other.items())[:10]]
    if results.failures:
        lines += ["", "Repeats that failed:", "", *[f"- {f}" for f in results.failures]]
    lines += [
        "",
        "Method. The backend is a Python `ThreadingHTTPServer` run by devmesh as the service "
        '`api` (`health = "http://127.0.0.1:$PORT/health"`, `health_timeout` 2 s, the '
        "default); it logs `time.time()` of every request it answers, health probes apart, and "
        "answers 503 to everything once a file `sick` exists. The client (inside the benchmark "
        f"script, a subprocess) sends `GET /` with `Host: api` every {PERIOD * 1000:.0f} ms over "
        f"one keep-alive connection; after {WARMUP:g} s of 200s the benchmark creates `sick` "
        "(T0, `time.time()`). The last routed request is the last request the backend logged "
        "after T0. *Active*: one `devmesh up` on loopback in the root namespace, `[discovery] "
        "enabled = false` (and `DEVMESH_DISCOVERY=off`), one copy, so the proxy passes the "
        "backend's 503s on until the verdict, then answers with its own 503 page; the client "
        f"runs until T0 + interval x {THRESHOLD} + {TAIL + SLACK:g} s. *Passive*: a lab of two "
        f"network namespaces (`tests/lab.py`), `devmesh up` in each (proxy port {LAB_PORT}, "
        f'`[mesh] namespace = "{NAMESPACE}"`, discovery on, the default health settings), each '
        "with its own `XDG_RUNTIME_DIR`/`XDG_STATE_HOME`; the client runs in host 1 against "
        "node A's proxy, which routes to its own healthy copy first, and A's copy turns sick; "
        f"the client runs until T0 + {DEFAULT_INTERVAL * THRESHOLD + TAIL:g} s, past A's health "
        "verdict. Before every repeat the copy is healthy again (`devmesh status`) and, in the "
        "lab, A lists B's copy as running. devmesh runs from a frozen copy of the source named "
        "above (`--source`).",
        "",
        "Noise. The machine is a shared 2-core VM; other jobs may run beside the benchmark (see "
        "the load averages). The probes' phase against T0 is random: the first failed probe "
        "comes 0-1 interval after T0, so detection takes 2-3 intervals plus the probe's own time.",
        "",
    ]
    return "\n".join(lines)


def reading(results: Results, intervals: Sequence[float], only: str | None) -> list[str]:
    """What the medians say beyond pass/fail."""

    def _relative(late: float) -> str:
        if late < 0:
            return (
                f"the last request came {-late * 1000:.0f} ms (median) before the third failed "
                "probe reached the backend: none was routed to it after the verdict."
            )
        return (
            f"the last request came {late * 1000:.0f} ms (median) after the third failed probe "
            "reached the backend: the probe's answer, the verdict, the routes' update in the "
            "proxy."
        )

    out: list[str] = []
    if only in (None, "active"):
        for i in intervals:
            case = active_case(i)
            last, late = results.values(case, "last"), results.values(case, "after_verdict")
            if last and late:
                out.append(
                    f"- Active, interval {i:g} s: the copy got its last request "
                    f"{statistics.median(last):.2f} s after T0 = "
                    f"{statistics.median(last) / i:.2f} intervals (the rule: {THRESHOLD} failed "
                    f"probes in a row, the first 0-{i:g} s after T0); "
                    + _relative(statistics.median(late))
                )
    if only in (None, "passive"):
        window, total = (
            results.values("passive", "sick_window"),
            results.values("passive", "sick_total"),
        )
        verdict_at = results.values("passive", "verdict")
        if window and total:
            text = (
                f"- Passive: in the first {WINDOW:g} s the sick copy got "
                f"{statistics.median(window):.0f} request(s) (median; max {max(window):.0f}): "
                "its 503 ejected it and the request was retried on B's copy."
            )
            if max(total) > max(window) and verdict_at:
                text += (
                    f" Ejection lasts {EJECT_FOR:g} s, but with this run's "
                    f"interval the health verdict came {statistics.median(verdict_at):.2f} s "
                    "(median) after T0 (2-3 intervals): when the ejection ran out first, the "
                    "copy was tried again (another failed request, retried on B too, so the "
                    f"client saw nothing): {max(total):.0f} requests at most in one repeat, the "
                    f"last {statistics.median(results.values('passive', 'last')):.2f} s "
                    "(median) after T0. An ejection as long as the detection (or health "
                    "probes sped up while a copy is ejected) would close that gap."
                )
            out.append(text)
    return out


# ---------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    p.add_argument("--repeat", type=int, default=3, help="repeats (default 3)")
    p.add_argument(
        "--intervals",
        type=lambda s: [float(x) for x in s.split(",") if x],
        default=[DEFAULT_INTERVAL, 1.0],
        help="active: comma-separated health intervals in seconds (default 5,1)",
    )
    p.add_argument("--only", choices=("active", "passive"), help="measure one of them")
    add_output_options(p)
    args = p.parse_args(argv)
    if args.repeat < 1 or not args.intervals or min(args.intervals) < 0.1:
        p.error("need --repeat >= 1 and intervals of at least 0.1 s")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; 0 when every measured goal passed, 1 otherwise."""
    global SOURCE
    args = parse_args(argv)
    if args.only in (None, "passive") and lab_missing():
        return 2
    with devmesh_under_test(args.source) as SOURCE:
        SOURCE.compile()
        load_api(SOURCE)
        return measure(args)


def repeats(case: str, repeat: int, results: Results, once: Callable[[], None]) -> None:
    """Run `once` `repeat` times; a repeat that fails is noted, and the next one goes on."""
    for r in range(repeat):
        try:
            once()
        except (RuntimeError, OSError, subprocess.SubprocessError, ValueError) as exc:
            text = str(exc).strip().replace("\n", " | ")[:400]
            results.failures.append(f"{case}, repeat {r + 1}: {text}")
            print(f"  repeat failed: {text}", flush=True)
        print(f"{case}, repeat {r + 1}/{repeat}: {progress(results, case)}", flush=True)


def measure(args: argparse.Namespace) -> int:
    """Every case, then the report; 0 when no measured goal failed."""
    info = machine()
    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"{info}, load {load_before}", flush=True)
    results = Results()
    begin = time.monotonic()
    if args.only in (None, "active"):
        for interval in args.intervals:
            run_active(interval, args.repeat, results)
    if args.only in (None, "passive"):
        run_passive(args.repeat, results)
    took = time.monotonic() - begin
    load_after = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"\ndone in {took:.0f} s, load {load_after}\n")
    print("\n".join(tables(results, args.intervals, args.only)))
    print()
    judged = goals(results, args.intervals, args.only)
    for goal in judged:
        print(f"{verdict(goal):<12} {goal.text}: {goal.detail}")
    for note in reading(results, args.intervals, args.only):
        print(note)
    for key, count in results.client_other.items():
        print(f"client answer after T0: {key} x {count}")
    for item in results.failures:
        print(f"failed repeat: {item}")
    if args.markdown is not None:
        section = markdown(results, args, info, (load_before, load_after), took)
        write_section(args.markdown, "Health", section)
        print(f"\nwrote {args.markdown}")
    return 0 if all(g.passed is not False for g in judged) else 1


if __name__ == "__main__":
    sys.exit(main())

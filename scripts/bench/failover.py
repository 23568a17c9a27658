#!/usr/bin/env python3
"""Failover benchmark: requests through a peer while that peer dies, while two nodes meet again
after a partition, and what holding a peer's small response whole costs.

A lab of Linux network namespaces on one bridge (`tests/lab.py`), three hosts, one devmesh node
each (`devmesh up` in its own project directory, as in scripts/bench/discovery.py, whose node
handling this script reuses; discovery interval 1 s): hosts 1 and 3 run a copy of `shared`,
host 2 runs `web` and is where the clients run, against its own proxy with `Host: shared`, so
every request goes to a peer's proxy. `shared` is a small Python HTTP/1.1 server (keep-alive,
`Content-Length`) that answers GET and POST alike with a file of its site (for `/`, its head
2 ms before its body, as an app that sends its headers before the body is ready does; the
other paths in one write). Unless `--no-cpu-load`,
a busy loop per core runs during the kill and heal measurements (bounded, stopped by pid).

1. kill (`--repeat`, default 10): `--clients` (4) `tests/fixtures/lab_client.py` GET loops in
   host 2 (each one keep-alive connection, a new one after an error, 15 s each); once they all
   flow, the supervisor of whichever copy serves host 2 gets SIGKILL (by pid; its workers and
   service die with it); the clients go on to their end (how long after the kill is reported:
   at least the 3 intervals after which the killed node is dropped). Failed GETs are counted
   (the goal: 0 over every repeat), with their errors. A fresh node then takes the killed one's
   host for the next repeat.
2. heal (`--heals`, default 10): host 2 is cut off (its bridge port down) until it lists no
   peer and hosts 1 and 3 no longer list it, and for a random 0-1 interval more (so that both
   orders in which the two sides can hear each other are sampled); the port goes up and a
   client starts in host 2 at
   once for 10 s. Counted: 403 answers (the goal: 0; the other side's proxy refusing a node it
   has not heard of yet), the time from the heal to the first 200, and how long 403s lasted.
   Before the first 200 the name may be unknown to host 2 (404): that is expected.
3. latency: one keep-alive client in host 2 sends, in alternating blocks of 100, GETs (a
   repeatable request: a peer's answer up to 64 KiB is held whole before its head goes out)
   and bodyless POSTs (not repeatable: streamed as before) for `/1k` and `/60k`, `--rounds` (20)
   rounds; p50 and p99 of each, with no CPU load. The same from host 1 to its own copy (not
   held) for reference.

Every process is started here and stopped by pid; the lab and the temporary directories are
removed even on errors; nothing is sent to a lab address from the root namespace (the clients
run inside lab hosts). devmesh is imported from a frozen copy of the working tree (`--source
worktree`, the default) or of the last commit (`--source head`, for the figures before a
change). Needs root and iproute2. Run it from the project root:

    python3 scripts/bench/failover.py --markdown docs/benchmarks.md

Options: `--repeat N`, `--heals N`, `--rounds N`, `--clients N`, `--only kill|heal|latency`,
`--no-cpu-load`, `--source worktree|head`, `--markdown PATH` (writes or replaces the
"## Failover" section of that file). The exit code is 1 when a goal fails.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import random
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import discovery as d  # scripts/bench/discovery.py: the lab nodes
from common import (
    Goal,
    add_output_options,
    devmesh_under_test,
    lab_missing,  # scripts/bench/common.py
    verdict,
    write_section,
)
from lab import Lab  # tests/lab.py (discovery.py put it on the path)

INTERVAL = 1.0
SERVICE = "shared"
SVC = """
import os, socket, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def setup(self):
        super().setup()
        # As dev servers do: without it, head and body written apart wait on delayed ACKs.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    def do_GET(self):
        name = self.path.strip("/").partition("?")[0] or "index.html"
        try:
            body = open(os.path.join("site", os.path.basename(name)), "rb").read()
        except OSError:
            body, code = b"no such file", 404
        else:
            code = 200
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if name == "index.html":
            time.sleep(0.002)  # the head goes out before the body is ready, as it often does
        self.wfile.write(body)
    do_POST = do_GET
    def log_message(self, *a):
        pass
ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
"""
# Runs in a lab host: alternating blocks of GETs and bodyless POSTs over one keep-alive
# connection; prints {"GET": [seconds...], "POST": [...]} (or the first error).
LATENCY = """
import http.client, json, sys, time
port, host, path, rounds, block = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), 100
conn = http.client.HTTPConnection("127.0.0.1", int(port), timeout=10)
out = {"GET": [], "POST": []}
for r in range(rounds + 1):
    for method in ("GET", "POST") if r % 2 else ("POST", "GET"):
        for _ in range(block):
            t = time.perf_counter()
            conn.request(method, path, headers={"Host": host, "Content-Length": "0"})
            resp = conn.getresponse()
            body = resp.read()
            took = time.perf_counter() - t
            if resp.status != 200:
                print(json.dumps({"error": f"{method} {resp.status} {body[:200]!r}"}))
                sys.exit(1)
            if r:  # round 0 warms up
                out[method].append(took)
print(json.dumps(out))
"""
BUSY = "import time\nend = time.monotonic() + {seconds}\nwhile time.monotonic() < end: pass\n"
BUSY_SECONDS = 900  # each busy loop's own bound; stopped by pid long before
KILL_CLIENT = 15.0  # each GET loop's length: flowing, the kill, 3 intervals and more after
HEAL_CLIENT = 10.0
CUT_TIMEOUT = 20.0


class BenchNode(d.Node):
    """A lab node with `svc.py` serving its site (GET and POST alike) and a 1 s interval."""

    def __init__(self, lab: Lab, host: int, service: str, work: Path) -> None:
        super().__init__(lab, host, [service], work)
        (self.root / "svc.py").write_text(SVC)
        site = self.root / "site"
        (site / "1k").write_bytes(b"k" * 1024)
        (site / "60k").write_bytes(b"s" * 60 * 1024)
        (self.root / "devmesh.toml").write_text(
            f"[proxy]\nport = {d.PROXY_PORT}\n\n[mesh]\nnamespace = {json.dumps(d.NAMESPACE)}\n\n"
            f'[discovery]\ninterval = "{INTERVAL:g}s"\n\n'
            f'[services.{service}]\ncommand = "python3 svc.py"\n'
        )


@contextlib.contextmanager
def cpu_load(on: bool) -> Iterator[None]:
    """A busy loop per core while the block runs (each bounded by itself), stopped by pid."""
    loops = []
    if on:
        argv = [sys.executable, "-c", BUSY.format(seconds=BUSY_SECONDS)]
        loops = [subprocess.Popen(argv) for _ in range(os.cpu_count() or 1)]
    try:
        yield
    finally:
        for proc in loops:
            d.stop_process(proc, signal.SIGKILL)


class Mesh:
    """The three nodes; a killed copy is replaced by a fresh node in a fresh directory."""

    def __init__(self, lab: Lab, work: Path) -> None:
        self.lab = lab
        self.work = work
        self.generation = 0
        self.nodes: dict[int, BenchNode] = {}
        for host in (1, 2, 3):
            self.nodes[host] = self._new(host)
        d.form_mesh([self.nodes[h] for h in (2, 1, 3)])

    def _new(self, host: int) -> BenchNode:
        self.generation += 1
        where = self.work / f"g{self.generation}"
        where.mkdir()
        return BenchNode(self.lab, host, "web" if host == 2 else SERVICE, where)

    def replace(self, host: int) -> None:
        """A fresh node on `host` (its old one is dead), meshed with the others."""
        self.nodes[host] = self._new(host)
        self.nodes[host].launch()
        d.wait_socket(self.nodes[host], d.START_TIMEOUT)
        d.wait_answering([self.nodes[host]], d.START_TIMEOUT)
        d.wait_mesh(list(self.nodes.values()))

    def stop(self) -> None:
        """Every node, in parallel (SIGTERM, bounded, SIGKILL)."""
        stoppers = [threading.Thread(target=n.stop, daemon=True) for n in self.nodes.values()]
        for t in stoppers:
            t.start()
        for t in stoppers:
            t.join(d.STOP_TIMEOUT + d.KILL_TIMEOUT + 5)


def lab_client(
    lab: Lab, host: int, seconds: float, count: int = 10_000_000
) -> subprocess.Popen[str]:
    """`lab_client.py` GETs of `shared` in lab host `host`: `count`, for at most `seconds`."""
    argv = [sys.executable, str(d.CLIENT), "127.0.0.1", str(d.PROXY_PORT), SERVICE, str(count)]
    argv.append(f"{seconds:g}")
    return subprocess.Popen(lab.exec(host, argv), stdout=subprocess.PIPE, text=True)


def report_of(proc: subprocess.Popen[str], seconds: float) -> dict[str, Any]:
    """The client's JSON report (it ends by itself; stopped by pid if it does not)."""
    try:
        out, _ = proc.communicate(timeout=seconds + 30)
    except subprocess.TimeoutExpired:
        proc.kill()  # by pid
        out, _ = proc.communicate(timeout=10)
    lines = [line for line in out.splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError(f"a client printed no report: {out[-300:]!r}")
    report: dict[str, Any] = json.loads(lines[-1])
    return report


def serving(lab: Lab) -> int:
    """Which of hosts 1 and 3 serves `shared` to host 2 now (one GET from inside host 2)."""
    report = report_of(lab_client(lab, 2, 10, count=1), 10)
    for host in (1, 3):
        if f"node {host}" in report["bodies"]:
            return host
    raise RuntimeError(f"nobody served {SERVICE}: {report}")


def measure_kill(mesh: Mesh, args: argparse.Namespace, results: dict[str, Any]) -> None:
    """One repeat: clients flowing, SIGKILL of the serving copy's supervisor, clients end."""
    lab = mesh.lab
    clients = [lab_client(lab, 2, KILL_CLIENT) for _ in range(args.clients)]
    try:
        for proc in clients:
            assert proc.stdout is not None
            line = proc.stdout.readline().strip()
            if line != "going":
                raise RuntimeError(f"a client did not get going: {line[:300]!r}")
        victim = serving(lab)
        node = mesh.nodes[victim]
        assert node.proc is not None
        killed = time.monotonic()
        os.kill(node.proc.pid, signal.SIGKILL)
        node.proc.wait(d.KILL_TIMEOUT)
        others = [mesh.nodes[2]]
        found = d.watch(others, {"gone": d.victim_gone(node)}, 3 * INTERVAL + 10)
        d.last_of(found["gone"], others, "the killed node dropped")
        reports = [report_of(proc, KILL_CLIENT) for proc in clients]  # they end by themselves
        results["kill_tail"].append(time.monotonic() - killed)
    finally:
        for proc in clients:
            if proc.poll() is None:
                proc.kill()  # by pid (after an error above)
                proc.communicate(timeout=10)
    failed, served = 0, 0
    for report in reports:
        served += report["ok"]
        for what, count in report["other"].items():
            failed += count
            results["errors"][what[:200]] += count
    results["kill_failed"].append(failed)
    results["kill_served"].append(served)
    mesh.replace(victim)


def measure_heal(mesh: Mesh, results: dict[str, Any]) -> None:
    """One cut and heal of host 2; a client in it from the heal on."""
    lab = mesh.lab
    b = mesh.nodes[2]
    others = [mesh.nodes[1], mesh.nodes[3]]
    lab.cut(2)
    try:
        found = d.watch(
            [b, *others],
            {"apart": lambda n: (lambda doc: not doc["peers"]) if n is b else d.victim_gone(b)},
            CUT_TIMEOUT,
        )
        d.last_of(found["apart"], [b, *others], "apart")
        # The moment they are apart is locked to the announcements' phase (3 intervals after
        # the last one heard); so is which side hears the other first after the heal. A random
        # wait samples every order instead of the same one every cycle.
        time.sleep(random.uniform(0, INTERVAL))
    finally:
        lab.heal(2)
    report = report_of(lab_client(lab, 2, HEAL_CLIENT), HEAL_CLIENT)
    runs = report["runs"]
    refused = sum(n for status, n, _ in runs if status == 403)
    first_ok = next((t for status, _, t in runs if status == 200), None)
    # How long 403s went on: from the first one to the first answer after the last one.
    spans = [i for i, (status, _, _) in enumerate(runs) if status == 403]
    lasted = 0.0
    if spans:
        end = runs[spans[-1] + 1][2] if spans[-1] + 1 < len(runs) else HEAL_CLIENT
        lasted = end - runs[spans[0]][2]
    results["heal_refused"].append(refused)
    results["heal_first_ok"].append(first_ok if first_ok is not None else float("nan"))
    results["heal_refused_for"].append(lasted)
    other = [(status, n) for status, n, _ in runs if status not in (200, 403, 404)]
    results["heal_other"].append(sum(n for _, n in other))
    for what, n in report["other"].items():
        if not what.startswith(("403 ", "404 ")):
            results["errors"][f"after a heal: {what[:4]}...{what[-300:]}"] += n
    print(f"  statuses after the heal: {runs}", flush=True)


def measure_latency(mesh: Mesh, rounds: int, results: dict[str, Any]) -> None:
    """GET (held) and bodyless POST (streamed) latencies through a peer, and to a local copy."""
    lab = mesh.lab
    for where, host in (("peer", 2), ("local", 1)):
        for path in ("/1k", "/60k"):
            argv = [sys.executable, "-c", LATENCY, str(d.PROXY_PORT), SERVICE, path, str(rounds)]
            out = subprocess.run(
                lab.exec(host, argv), capture_output=True, text=True, timeout=600
            ).stdout
            data = json.loads(out.strip().splitlines()[-1])
            if "error" in data:
                raise RuntimeError(f"latency {where} {path}: {data['error']}")
            for method in ("GET", "POST"):
                results["latency"][(where, path, method)] = data[method]


def pct(values: Sequence[float], q: float) -> float:
    """The q-th percentile (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


def summary(results: dict[str, Any], args: argparse.Namespace) -> tuple[list[str], list[Goal]]:
    """Markdown lines and goals."""
    lines: list[str] = []
    goals: list[Goal] = []
    kills = results["kill_failed"]
    if kills:
        total, served = sum(kills), sum(results["kill_served"])
        tail = results["kill_tail"]
        lines += [
            f"- kill -9 of the serving peer, {len(kills)} repeats, {args.clients} clients: "
            f"{total} failed GETs of {total + served} (per repeat: {kills}); "
            f"served per repeat, median {statistics.median(results['kill_served']):.0f}; the "
            f"clients went on for {min(tail):.1f}-{max(tail):.1f} s after the kill.",
        ]
        goals.append(
            Goal(
                f"0 failed GETs across kill -9 of a peer, {len(kills)} repeats",
                total == 0,
                f"{total} failed",
            )
        )
    heals = results["heal_refused"]
    if heals:
        ok_times = [t for t in results["heal_first_ok"] if t == t]
        nan = float("nan")
        lines += [
            f"- partition heal, {len(heals)} cycles: {sum(heals)} answers 403 in all (per "
            f"cycle: {heals}); 403s went on for up to {max(results['heal_refused_for']):.2f} s "
            f"(median {statistics.median(results['heal_refused_for']):.2f} s); first 200 "
            f"after the heal: median {statistics.median(ok_times or [nan]):.2f} s, "
            f"max {max(ok_times or [nan]):.2f} s; other failures "
            f"(not 200/403/404): {sum(results['heal_other'])}.",
        ]
        goals.append(
            Goal(
                f"no 403 after a partition heals, {len(heals)} cycles",
                sum(heals) == 0 and sum(results["heal_other"]) == 0,
                f"{sum(heals)} refused, {sum(results['heal_other'])} other failures",
            )
        )
    latency = results["latency"]
    if latency:
        lines += [
            "",
            "| latency (ms), one keep-alive client | GET p50 | GET p99 | POST p50 | POST p99 |",
            "|---|---|---|---|---|",
        ]
        for where in ("peer", "local"):
            for path in ("/1k", "/60k"):
                get, post = latency[(where, path, "GET")], latency[(where, path, "POST")]
                held = "GET held" if where == "peer" else "neither held"
                cells = [pct(get, 50), pct(get, 99), pct(post, 50), pct(post, 99)]
                row = " | ".join(f"{c * 1000:.2f}" for c in cells)
                lines.append(f"| {where} `{path}` ({held}) | {row} |")
    return lines, goals


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    p.add_argument("--repeat", type=int, default=10, help="kill -9 repeats (default 10)")
    p.add_argument("--heals", type=int, default=10, help="partition heals (default 10)")
    p.add_argument("--rounds", type=int, default=20, help="latency rounds of 2 x 100 (default 20)")
    p.add_argument("--clients", type=int, default=4, help="GET loops during a kill (default 4)")
    p.add_argument("--only", choices=("kill", "heal", "latency"))
    p.add_argument("--no-cpu-load", dest="cpu_load", action="store_false")
    add_output_options(p, source="worktree")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; 0 when every measured goal passed."""
    args = parse_args(argv)
    if lab_missing():
        return 2
    with devmesh_under_test(args.source) as source:
        source.compile()
        d.SOURCE = source
        d.load_api(source)
        return measure(args, source.describe)


def measure(args: argparse.Namespace, describe: str) -> int:
    """Every measurement, then the report."""
    results: dict[str, Any] = {
        "kill_failed": [],
        "kill_served": [],
        "kill_tail": [],
        "errors": Counter(),
        "heal_refused": [],
        "heal_first_ok": [],
        "heal_refused_for": [],
        "heal_other": [],
        "latency": {},
    }
    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    started = time.monotonic()
    lab = Lab(3, f"dmf{os.getpid() % 10000}")
    work = Path(tempfile.mkdtemp(prefix="dmf", dir="/tmp"))  # short: socket paths
    mesh: Mesh | None = None
    try:
        lab.up()
        mesh = Mesh(lab, work)
        if args.only in (None, "latency"):
            measure_latency(mesh, args.rounds, results)
            print("latency measured", flush=True)
        with cpu_load(args.cpu_load):
            if args.only in (None, "kill"):
                for r in range(args.repeat):
                    measure_kill(mesh, args, results)
                    print(
                        f"kill {r + 1}/{args.repeat}: {results['kill_failed'][-1]} failed, "
                        f"{results['kill_served'][-1]} served",
                        flush=True,
                    )
            if args.only in (None, "heal"):
                for r in range(args.heals):
                    measure_heal(mesh, results)
                    print(
                        f"heal {r + 1}/{args.heals}: {results['heal_refused'][-1]} refused "
                        f"for {results['heal_refused_for'][-1]:.2f} s, first 200 after "
                        f"{results['heal_first_ok'][-1]:.2f} s",
                        flush=True,
                    )
    finally:
        if mesh is not None:
            mesh.stop()
        leftovers = d.sweep_lab(lab)
        lab.down()
        shutil.rmtree(work, ignore_errors=True)
    elapsed = time.monotonic() - started
    load_after = " ".join(f"{x:.2f}" for x in os.getloadavg())
    lines, goals = summary(results, args)
    print("\n".join(lines))
    for what, count in results["errors"].most_common(10):
        print(f"failed GET: {what} x {count}")
    for goal in goals:
        print(f"{verdict(goal):<12} {goal.text}: {goal.detail}")
    if leftovers:
        print(f"warning: {leftovers} processes were left in the lab and SIGKILLed")
    if args.markdown is not None:
        info = d.machine() if d.SOURCE else {}
        section = markdown(args, lines, goals, results, info, describe, (load_before, load_after))
        write_section(args.markdown, "Failover", section + f"\n\nThe run took {elapsed:.0f} s.\n")
        print(f"\nwrote {args.markdown}")
    return 0 if all(g.passed is not False for g in goals) else 1


def markdown(
    args: argparse.Namespace,
    lines: list[str],
    goals: list[Goal],
    results: dict[str, Any],
    info: dict[str, str],
    describe: str,
    load: tuple[str, str],
) -> str:
    """The "## Failover" section of docs/benchmarks.md."""
    errors = [f"- `{k}` x {v}" for k, v in results["errors"].most_common(10)]
    return "\n".join(
        [
            "## Failover",
            "",
            "Requests through a peer while it is killed with -9, after a partition heals, and "
            "what holding a peer's small response whole (up to 64 KiB, repeatable requests) "
            "costs; three lab hosts (network namespaces), one devmesh node each, discovery "
            f"interval {INTERVAL:g} s, the clients in host 2, `shared` served by hosts 1 and 3"
            + (", a busy loop per core during kill and heal" if args.cpu_load else "")
            + ". The method is in `scripts/bench/failover.py`'s docstring.",
            "",
            "```sh",
            shlex.join(["python3", *sys.argv]),
            "```",
            "",
            f"Run on {dt.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}: {info.get('nproc', '?')} "
            f"cores ({info.get('cpu', '?')}), Linux {info.get('kernel', '?')}, Python "
            f"{info.get('python', '?')}, devmesh {describe}. Load average before / after: "
            f"{load[0]} / {load[1]}.",
            "",
            *lines,
            "",
            *[f"- **{verdict(g)}**: {g.text} ({g.detail})" for g in goals],
            *(["", "Failed GETs:", "", *errors] if errors else []),
        ]
    )


if __name__ == "__main__":
    sys.exit(main())

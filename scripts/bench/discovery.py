#!/usr/bin/env python3
"""Discovery benchmark: how fast devmesh nodes on one LAN learn that a node joined, left or died.

The LAN is a lab of Linux network namespaces on one bridge (`tests/lab.py`): host i is its own
namespace with its own loopback, so every node uses the same proxy port (18080) and discovery
port, and every packet stays inside the lab. Each node is a whole `devmesh up` (started as
`ip netns exec <host> python3 -m devmesh up` in its own project directory, with its own
`XDG_RUNTIME_DIR` and `XDG_STATE_HOME`, `NO_COLOR=1`, discovery on, the default interval), with
one `python3 -m http.server` service `svc<i>`; nodes 1 and 2 also run a service `shared`.

What a node knows is read in-process from its control socket (the unix socket is on the shared
filesystem, so it is reachable from the root namespace): `GET /v1/peers` and `GET /v1/status`,
one polling thread per node, every `POLL` (10 ms); a moment "seen" is the time the answer that
first showed it arrived (so it is late by at most one poll period plus one round trip). Every
repeat (`--repeat`, default 5) starts fresh nodes, for each lab size (`--sizes`, default 3 and
10 nodes), and measures, in this order:

1. join: nodes 1..N-1 are started (one after the other) and left until every one lists all the
   others with their services running (then 1 s more); node N is launched. (a) From the moment
   node N's service became `running` (the `changed_at` of its own `status()`) until every other
   node lists it with that service `running`: the goal, <= 1 s. (b) From the launch of its
   `devmesh up` (for information: includes the interpreter start and the service's
   `start_secs`, 1 s).
2. crash: with a client running in host N (`tests/fixtures/lab_client.py` against host N's own
   proxy, `Host: shared`: node N runs no `shared`, so every request goes to node 1 or 2 through
   their proxies), the supervisor of the one that serves it (found with one more GET from host
   N) gets SIGKILL (by pid; no goodbye: its workers die with it); the time until no other node
   lists it. Goal: <= 3 intervals (the expiry rule). The client's failed requests (goal: 0),
   the requests it got served, and how many of them the killed node served are reported. A
   listener in one more lab host, which runs no node and sends nothing, notes when each IPv4
   announcement arrives: so the time from the killed node's last announcement to the kill,
   and how late after 3 intervals of silence the last node dropped it, are reported too.
3. goodbye: SIGTERM (by pid) to the `devmesh up` of the other one of nodes 1 and 2; the time
   until no other node still running lists it. Goal: <= 200 ms. The time until that process
   exited is reported for information.

For comparison (not measured): memberlist's LAN defaults (SWIM: probe every 1 s, 500 ms probe
timeout, suspicion 4 x max(1, log10 N) probe intervals, up to 6 times that when no other
member confirms) declare a failed node dead after about 5-25 s.

Every process is started by this script and stopped by pid (SIGTERM, SIGKILL after a bounded
wait); whatever is still running in a lab host afterwards (`ip netns pids`) is SIGKILLed by
pid; the lab (prefix `dmb<pid % 10000>`) and the temporary directories are removed even on errors.
Nothing is sent to a lab address from the root namespace: the client runs inside a lab host.
Every wait is bounded. devmesh is imported, by the nodes and by this script's control client,
from a frozen copy of the project's last commit (`--source head`, the default) or of its
working tree (`--source worktree`).

Needs root (network namespaces) and iproute2. Run it from the project root:

    python3 scripts/bench/discovery.py --repeat 5 --markdown docs/benchmarks.md

Options: `--repeat N`, `--sizes 3,10`, `--only join|crash|goodbye` (the nodes are still started
the same way), `--source head|worktree`, `--markdown PATH` (writes or replaces the
"## Discovery" section of that file). The exit code is 1 when a measured goal fails.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib
import json
import os
import platform
import queue
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
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

sys.path.insert(0, str(ROOT / "tests"))
from lab import Lab  # tests/lab.py, through the line above

CLIENT = ROOT / "tests" / "fixtures" / "lab_client.py"
PROXY_PORT = 18080  # every node's, each in its own namespace
NAMESPACE = "bench"
SHARED = "shared"
SERVICE = 'command = "python3 -m http.server $PORT --bind 127.0.0.1 --directory site"\n'
PROBLEM = re.compile(r"Traceback|Error|error|silent for|died|killing|exception", re.IGNORECASE)
DISCOVERY_PORT = 35555  # devmesh's default
# Runs in a lab host with no node: prints "<time> <node id> <kind>" for every IPv4 announcement
# it hears (it only listens; broadcasts reach every host of the bridge).
SNIFFER = """
import json, socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.settimeout(0.5)
print("listening", flush=True)
deadline = time.monotonic() + float(sys.argv[2])
while time.monotonic() < deadline:
    try:
        data = s.recv(65535)
    except OSError:
        continue
    at = time.time()
    try:
        obj = json.loads(data)
        print(f"{at:.6f} {obj['id']} {obj['k']}", flush=True)
    except (ValueError, KeyError, TypeError):
        pass
"""
SNIFF_SECONDS = 300.0  # the listener's own bound (it is stopped at the end of the repeat)
POLL = 0.01  # control-socket polling period per node
CONTROL_TIMEOUT = 5.0  # one control request
START_TIMEOUT = 90.0  # every node of a size answering its socket
MESH_TIMEOUT = 30.0  # every node listing every other
SETTLE = 1.0  # after the mesh formed, before the join is measured
JOIN_TIMEOUT = 30.0
GOODBYE_TIMEOUT = 15.0
CLIENT_GOING_TIMEOUT = 30.0
CLIENT_TAIL = 4.0  # the client keeps going this long after the crash should be detected
STOP_TIMEOUT = 15.0
KILL_TIMEOUT = 5.0
LEFTOVER_TIMEOUT = 5.0
JOIN_GOAL = 1.0
GOODBYE_GOAL = 0.2
MISSES = 3  # intervals of silence before a peer is dropped (devmesh.discovery.peers.MISSES)
DEFAULT_INTERVAL = 2.0
CLOSE_CALL = 0.2

SOURCE: DevmeshSource | None = None  # set by main()
API: dict[str, Any] = {}  # ProjectPaths, ControlClient and the client's errors, from the copy


def load_api(source: DevmeshSource) -> None:
    """Import the control client from the frozen copy (the one the nodes run)."""
    sys.path.insert(0, str(source.dir))
    paths = importlib.import_module("devmesh.paths")
    client = importlib.import_module("devmesh.control.client")
    API.update(
        ProjectPaths=paths.ProjectPaths,
        ControlClient=client.ControlClient,
        errors=(client.NoMesh, client.ControlError, OSError, ValueError),
    )


# ---------------------------------------------------------------------------- processes


def stop_process(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    """Signal `proc` (by its pid), wait a bounded time, then SIGKILL it."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, sig)
    try:
        proc.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(KILL_TIMEOUT)


def lab_pids(lab: Lab) -> list[int]:
    """Every process still running in one of the lab's hosts (all of them started here)."""
    pids: list[int] = []
    for i in range(1, lab.n + 1):
        out = subprocess.run(
            ["ip", "netns", "pids", lab.host(i)], capture_output=True, text=True, timeout=10
        ).stdout
        pids += [int(p) for p in out.split() if p.isdigit() and int(p) != os.getpid()]
    return pids


def sweep_lab(lab: Lab) -> int:
    """Wait (bounded) for the lab's hosts to empty; SIGKILL by pid whatever is left. How many
    processes had to be killed."""
    deadline = time.monotonic() + LEFTOVER_TIMEOUT
    left = lab_pids(lab)
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = lab_pids(lab)
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return len(left)


# ---------------------------------------------------------------------------- nodes


@contextlib.contextmanager
def environ(values: dict[str, str]) -> Iterator[None]:
    """`os.environ` with `values` set, for the duration of the block."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class Node:
    """One devmesh node in lab host `host`: its project directory, process and control client."""

    def __init__(self, lab: Lab, host: int, services: Sequence[str], work: Path) -> None:
        self.lab = lab
        self.host = host
        self.services = tuple(services)
        self.root = work / f"node{host}"
        run, state = work / f"r{host}", work / f"s{host}"
        self.root.mkdir()
        run.mkdir(mode=0o700)
        state.mkdir()
        (self.root / "site").mkdir()
        (self.root / "site" / "index.html").write_text(f"node {host}\n")
        (self.root / "devmesh.toml").write_text(
            f"[proxy]\nport = {PROXY_PORT}\n\n[mesh]\nnamespace = {json.dumps(NAMESPACE)}\n\n"
            + "".join(f"[services.{name}]\n{SERVICE}\n" for name in self.services)
        )
        env = {k: v for k, v in os.environ.items() if k not in CALLER_ONLY}
        for var in ("DEVMESH_DISCOVERY", "DEVMESH_LOG"):
            env.pop(var, None)
        xdg = {"XDG_RUNTIME_DIR": str(run), "XDG_STATE_HOME": str(state)}
        env.update(xdg, NO_COLOR="1")
        self.env = SOURCE.env(env) if SOURCE else env
        with environ(xdg):  # ProjectPaths reads the XDG variables when it is built
            paths = API["ProjectPaths"].for_root(self.root)
        self.client = API["ControlClient"](paths, self.root, timeout=CONTROL_TIMEOUT)
        self.output = work / f"node{host}.out"
        self.proc: subprocess.Popen[bytes] | None = None
        self.launched = 0.0  # time.time() right before Popen
        self.node_id = ""

    @property
    def argv(self) -> list[str]:
        """`devmesh up` inside the node's lab host."""
        return self.lab.exec(self.host, [sys.executable, "-m", "devmesh", "up"])

    def launch(self) -> None:
        """Start `devmesh up` (does not wait)."""
        with open(self.output, "wb") as out:
            self.launched = time.time()
            self.proc = subprocess.Popen(
                self.argv,
                cwd=self.root,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

    def peers(self) -> dict[str, Any] | None:
        """`GET /v1/peers`, None if the node does not answer."""
        try:
            data: dict[str, Any] = self.client.peers()
        except API["errors"]:
            return None
        return data

    def status(self) -> dict[str, Any] | None:
        """`GET /v1/status`, None if the node does not answer."""
        try:
            data: dict[str, Any] = self.client.status()
        except API["errors"]:
            return None
        return data

    def tail(self, lines: int = 15) -> str:
        """The last lines the node printed."""
        try:
            text = self.output.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def problems(self) -> list[str]:
        """Error-looking lines of its output, without their time stamps."""
        try:
            text = self.output.read_text(errors="replace")
        except OSError:
            return []
        found = []
        for line in text.splitlines():
            if PROBLEM.search(line):
                line = re.sub(r"^\d\d:\d\d:\d\d ", "", line)
                found.append(re.sub(r"pid \d+", "pid N", line))
        return found

    def alive(self) -> bool:
        """Whether its `devmesh up` still runs."""
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        """SIGTERM, bounded wait, SIGKILL."""
        if self.proc is not None:
            stop_process(self.proc)


def wait_answering(nodes: Sequence[Node], timeout: float) -> None:
    """Until every node's services run (RuntimeError after `timeout` or if one exits)."""
    deadline = time.monotonic() + timeout
    todo = list(nodes)
    for _ in range(int(timeout / 0.05) + 1):
        for node in list(todo):
            if not node.alive():
                raise RuntimeError(f"node {node.host} exited:\n{node.tail()}")
            status = node.status()
            if status is None:
                continue
            states = {s["name"]: s["state"] for s in status["services"]}
            if all(states.get(name) == "running" for name in node.services):
                doc = node.peers()
                if doc is not None:
                    node.node_id = str(doc["node"])
                    todo.remove(node)
        if not todo or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    if todo:
        hosts = ", ".join(str(n.host) for n in todo)
        raise RuntimeError(f"nodes {hosts} not running after {timeout:g} s")


def listed(doc: dict[str, Any]) -> dict[str, dict[str, str]]:
    """node id -> {service: state} of every peer in a peers document."""
    return {p["node"]: {s["name"]: s["state"] for s in p["services"]} for p in doc["peers"]}


def meshed(node: Node, others: Sequence[Node]) -> Callable[[dict[str, Any]], bool]:
    """A predicate: `node` lists exactly `others`, each with all its services running."""
    want = {o.node_id: set(o.services) for o in others if o is not node}

    def check(doc: dict[str, Any]) -> bool:
        seen = listed(doc)
        return seen.keys() == want.keys() and all(
            {n for n, st in seen[k].items() if st == "running"} >= v for k, v in want.items()
        )

    return check


def watch(
    nodes: Sequence[Node],
    conditions: dict[str, Callable[[Node], Callable[[dict[str, Any]], bool]]],
    timeout: float,
) -> dict[str, dict[int, float]]:
    """Poll every node's peers (one thread per node, every POLL) until each condition held
    once; condition -> host -> time.time() of the answer that first showed it. A condition
    that did not hold within `timeout` is missing for that host."""
    found: dict[str, dict[int, float]] = {name: {} for name in conditions}
    lock = threading.Lock()
    deadline = time.monotonic() + timeout

    def run(node: Node) -> None:
        checks = {name: make(node) for name, make in conditions.items()}
        for _ in range(int(timeout / POLL) + 1):
            start = time.monotonic()
            if start > deadline or not checks:
                return
            doc = node.peers()
            at = time.time()
            if doc is not None:
                for name in [n for n, check in checks.items() if check(doc)]:
                    with lock:
                        found[name][node.host] = at
                    del checks[name]
            time.sleep(max(0.0, POLL - (time.monotonic() - start)))

    threads = [threading.Thread(target=run, args=(n,), daemon=True) for n in nodes]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout + CONTROL_TIMEOUT + 5)
    return found


def last_of(found: dict[int, float], nodes: Sequence[Node], what: str) -> float:
    """The time the last of `nodes` showed `what` (RuntimeError if one never did)."""
    missing = [n.host for n in nodes if n.host not in found]
    if missing:
        raise RuntimeError(f"{what}: not seen by nodes {missing}")
    return max(found[n.host] for n in nodes)


def form_mesh(nodes: Sequence[Node]) -> None:
    """Launch `nodes` one after the other (the next once the last answers its socket: ten
    started at once on two cores starve their workers' start), wait until their services run
    and they list each other."""
    for node in nodes:
        node.launch()
        wait_socket(node, START_TIMEOUT)
    wait_answering(nodes, START_TIMEOUT)
    wait_mesh(nodes)


def wait_socket(node: Node, timeout: float) -> None:
    """Until the node answers `status()` (RuntimeError after `timeout` or if it exits)."""
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / 0.05) + 1):
        if not node.alive():
            raise RuntimeError(f"node {node.host} exited:\n{node.tail()}")
        if node.status() is not None:
            return
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    raise RuntimeError(f"node {node.host} does not answer after {timeout:g} s")


def wait_mesh(nodes: Sequence[Node]) -> None:
    """Until every node lists every other with its services running."""
    if len(nodes) < 2:
        return
    found = watch(nodes, {"mesh": lambda n: meshed(n, nodes)}, MESH_TIMEOUT)
    last_of(found["mesh"], nodes, "the mesh")


# ---------------------------------------------------------------------------- the client


class Client:
    """`lab_client.py` inside a lab host, its output read by a thread."""

    def __init__(self, lab: Lab, host: int, seconds: float) -> None:
        argv = [sys.executable, str(CLIENT), "127.0.0.1", str(PROXY_PORT), SHARED, "10000000"]
        argv.append(f"{seconds:g}")
        self.seconds = seconds
        self.proc = subprocess.Popen(
            lab.exec(host, argv), stdout=subprocess.PIPE, stdin=subprocess.DEVNULL
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        self.report: dict[str, Any] | None = None

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            self.lines.put(raw.decode(errors="replace").strip())

    def wait_going(self) -> None:
        """Until it printed `going` (50 requests answered)."""
        deadline = time.monotonic() + CLIENT_GOING_TIMEOUT
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError("the client did not get going")
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            if line == "going":
                return
            if line.startswith("{"):
                raise RuntimeError(f"the client ended before going: {line[:300]}")

    def finish(self) -> dict[str, Any]:
        """Wait (bounded) for its end; its JSON report."""
        try:
            self.proc.wait(self.seconds + 20)
        except subprocess.TimeoutExpired:
            stop_process(self.proc)
        self.reader.join(10)
        last = ""
        while not self.lines.empty():
            line = self.lines.get_nowait()
            if line.startswith("{"):
                last = line
        if not last:
            raise RuntimeError("the client printed no report")
        report: dict[str, Any] = json.loads(last)
        return report

    def stop(self) -> None:
        """Stop it if it still runs."""
        if self.proc.poll() is None:
            stop_process(self.proc)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


class Sniffer:
    """`SNIFFER` in lab host `host` (one without a node): when each node was last heard."""

    def __init__(self, lab: Lab, host: int, seconds: float) -> None:
        argv = [sys.executable, "-c", SNIFFER, str(DISCOVERY_PORT), f"{seconds:g}"]
        self.proc = subprocess.Popen(
            lab.exec(host, argv), stdout=subprocess.PIPE, stdin=subprocess.DEVNULL
        )
        self.heard: list[tuple[float, str, str]] = []
        self.ready = threading.Event()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        if not self.ready.wait(CLIENT_GOING_TIMEOUT):
            self.stop()
            raise RuntimeError("the sniffer did not start")

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            parts = raw.decode(errors="replace").split()
            if parts == ["listening"]:
                self.ready.set()
            elif len(parts) == 3:
                self.heard.append((float(parts[0]), parts[1], parts[2]))

    def last_hello(self, node_id: str, before: float) -> float | None:
        """When `node_id`'s last announcement before `before` arrived."""
        times = [t for t, n, k in list(self.heard) if n == node_id and k == "hello" and t < before]
        return max(times) if times else None

    def stop(self) -> None:
        """Stop it (by pid) and its reader."""
        stop_process(self.proc)
        self.reader.join(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


# ---------------------------------------------------------------------------- one repeat


@dataclass
class Results:
    """Every sample, per lab size and metric."""

    samples: dict[str, dict[int, list[float]]] = field(default_factory=dict)
    failures: dict[int, list[str]] = field(default_factory=dict)
    client_other: dict[int, dict[str, int]] = field(default_factory=dict)
    problems: dict[str, int] = field(default_factory=dict)  # line -> how many node runs
    leftovers: int = 0
    interval: float = DEFAULT_INTERVAL

    def add(self, metric: str, size: int, value: float) -> None:
        """Record one sample."""
        self.samples.setdefault(metric, {}).setdefault(size, []).append(value)

    def values(self, metric: str, size: int) -> list[float]:
        """The samples of a metric at a size (possibly none)."""
        return self.samples.get(metric, {}).get(size, [])

    def median(self, metric: str, size: int) -> float | None:
        """The median sample, None without samples."""
        vals = self.values(metric, size)
        return statistics.median(vals) if vals else None


def run_repeat(lab: Lab, size: int, only: str | None, results: Results) -> None:
    """One repeat at one lab size: fresh nodes, the join, the crash, the goodbye."""
    work = Path(tempfile.mkdtemp(prefix="dmb", dir="/tmp"))  # short: socket paths
    nodes = [
        Node(lab, i, [f"svc{i}", *([SHARED] if i in (1, 2) else [])], work)
        for i in range(1, size + 1)
    ]
    client: Client | None = None
    sniffer: Sniffer | None = None
    try:
        old, new = nodes[:-1], nodes[-1]
        form_mesh(old)
        if only in (None, "crash"):
            sniffer = Sniffer(lab, size + 1, SNIFF_SECONDS)
        doc = old[0].peers()
        if doc is not None:
            results.interval = float(doc["discovery"]["interval"])
        time.sleep(SETTLE)
        measure_join(old, new, size, only in (None, "join"), results)
        victim = nodes[0]
        if only in (None, "crash"):
            seconds = MISSES * results.interval + CLIENT_TAIL
            client = Client(lab, size, seconds)
            client.wait_going()
            # The node the client's requests go to now: the one to kill.
            victim = nodes[serving(lab, size) - 1]
            killed, first, last = crash_time(victim, nodes, results.interval)
            results.add("crash", size, last - killed)
            results.add("crash_spread", size, last - first)
            hello = sniffer.last_hello(victim.node_id, killed) if sniffer else None
            if hello is not None:
                results.add("crash_silent", size, killed - hello)
                results.add("crash_late", size, last - (hello + MISSES * results.interval))
            report = client.finish()
            other = {k: int(v) for k, v in report.get("other", {}).items()}
            results.add("crash_ok", size, float(report.get("ok", 0)))
            results.add("crash_victim", size, float(report.get("bodies", {}).get(body(victim), 0)))
            results.add("crash_errors", size, float(sum(other.values())))
            for k, v in other.items():
                seen = results.client_other.setdefault(size, {})
                seen[k[:200]] = seen.get(k[:200], 0) + v
        if only in (None, "goodbye"):
            leaving = nodes[1] if victim is nodes[0] else nodes[0]
            observers = [n for n in nodes if n.alive() and n is not leaving]
            goodbye, exited = goodbye_time(leaving, observers)
            results.add("goodbye", size, goodbye)
            results.add("goodbye_exit", size, exited)
    finally:
        if client is not None:
            client.stop()
        if sniffer is not None:
            sniffer.stop()
        stoppers = [threading.Thread(target=n.stop, daemon=True) for n in nodes]
        for t in stoppers:
            t.start()
        for t in stoppers:
            t.join(STOP_TIMEOUT + KILL_TIMEOUT + 5)
        results.leftovers += sweep_lab(lab)
        for node in nodes:
            for line in node.problems():
                results.problems[line] = results.problems.get(line, 0) + 1
        shutil.rmtree(work, ignore_errors=True)


def body(node: Node) -> str:
    """What the node's `shared` answers (its site's index.html)."""
    return f"node {node.host}"


def serving(lab: Lab, host: int) -> int:
    """Which of nodes 1 and 2 serves `shared` to host `host` now (one GET from inside it)."""
    argv = [sys.executable, str(CLIENT), "127.0.0.1", str(PROXY_PORT), SHARED, "1", "10"]
    out = subprocess.run(lab.exec(host, argv), capture_output=True, text=True, timeout=30)
    lines = out.stdout.strip().splitlines()
    bodies = json.loads(lines[-1]).get("bodies", {}) if lines else {}
    for i in (1, 2):
        if f"node {i}" in bodies:
            return i
    raise RuntimeError(f"crash: no node served {SHARED} to host {host}: {out.stdout[-300:]}")


def measure_join(old: Sequence[Node], new: Node, size: int, record: bool, results: Results) -> None:
    """Launch `new`; when every node of `old` lists it, and with its service running."""
    service = new.services[0]

    def present(_: Node) -> Callable[[dict[str, Any]], bool]:
        return lambda doc: any(service in svcs for svcs in listed(doc).values())

    def running(_: Node) -> Callable[[dict[str, Any]], bool]:
        return lambda doc: any(svcs.get(service) == "running" for svcs in listed(doc).values())

    box: dict[str, dict[str, dict[int, float]]] = {}
    watcher = threading.Thread(
        target=lambda: box.update(
            found=watch(old, {"present": present, "running": running}, JOIN_TIMEOUT)
        ),
        daemon=True,
    )
    watcher.start()
    time.sleep(0.05)  # the watchers' first answers are in before the launch
    new.launch()
    watcher.join(JOIN_TIMEOUT + CONTROL_TIMEOUT + 10)
    found = box.get("found")
    if found is None:
        raise RuntimeError("join: the watchers did not finish")
    wait_answering([new], START_TIMEOUT)
    status = new.status()
    svc = next((s for s in (status or {}).get("services", []) if s["name"] == service), None)
    if svc is None or svc["state"] != "running":
        raise RuntimeError(f"join: {service} on node {new.host} is not running: {svc}")
    ran = float(svc["changed_at"])
    seen = last_of(found["running"], old, f"{service} running")
    first = last_of(found["present"], old, f"{service} listed")
    if record:
        results.add("join", size, seen - ran)
        results.add("join_launch", size, seen - new.launched)
        results.add("join_listed", size, first - new.launched)
        results.add("join_up", size, ran - new.launched)
    wait_mesh([*old, new])


def crash_time(victim: Node, nodes: Sequence[Node], interval: float) -> tuple[float, float, float]:
    """SIGKILL `victim`'s supervisor; when, and when the first and the last other node stopped
    listing it."""
    rest = [n for n in nodes if n is not victim]
    gone = victim_gone(victim)
    status = victim.status()
    pid = int(status["node"]["pid"]) if status else 0
    if victim.proc is None or pid != victim.proc.pid:
        raise RuntimeError(f"crash: node {victim.host} answers with pid {pid}")
    killed = time.time()
    os.kill(pid, signal.SIGKILL)
    found = watch(rest, {"gone": gone}, MISSES * interval + 10)
    with contextlib.suppress(subprocess.TimeoutExpired):
        victim.proc.wait(KILL_TIMEOUT)
    last = last_of(found["gone"], rest, f"node {victim.host} dropped")
    return killed, min(found["gone"].values()), last


def goodbye_time(leaving: Node, observers: Sequence[Node]) -> tuple[float, float]:
    """SIGTERM `leaving`'s supervisor; seconds until no observer lists it, and until it exited."""
    gone = victim_gone(leaving)
    assert leaving.proc is not None
    proc = leaving.proc
    exited: list[float] = []

    def reap() -> None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(GOODBYE_TIMEOUT + STOP_TIMEOUT)
            exited.append(time.time())

    termed = time.time()
    os.kill(proc.pid, signal.SIGTERM)
    reaper = threading.Thread(target=reap, daemon=True)
    reaper.start()
    found = watch(observers, {"gone": gone}, GOODBYE_TIMEOUT)
    reaper.join(GOODBYE_TIMEOUT + STOP_TIMEOUT + 5)
    seen = last_of(found["gone"], observers, f"node {leaving.host} gone after SIGTERM")
    return seen - termed, (exited[0] - termed) if exited else float("nan")


def victim_gone(victim: Node) -> Callable[[Node], Callable[[dict[str, Any]], bool]]:
    """A condition: the node is not listed."""
    node_id = victim.node_id
    if not node_id:
        raise RuntimeError(f"node {victim.host}: no node id")
    return lambda _: lambda doc: node_id not in listed(doc)


# ---------------------------------------------------------------------------- report

METRICS: list[tuple[str, str, str]] = [
    # (metric, label, unit)
    ("join", "join (a): new node's service running -> listed running by every other node", "ms"),
    ("join_launch", "join (b): `devmesh up` launched -> listed running by every other node", "s"),
    ("join_up", "join: launched -> its own service running (`start_secs` 1 s)", "s"),
    ("join_listed", "join: launched -> listed (any state) by every other node", "s"),
    ("crash", "crash: SIGKILL of a supervisor -> dropped by every other node", "s"),
    ("crash_silent", "crash: the killed node's last announcement, before the kill", "s"),
    ("crash_late", "crash: dropped after 3 intervals of silence + this", "ms"),
    ("crash_spread", "crash: first -> last other node to drop it", "ms"),
    ("crash_errors", "crash: client requests failed (`Host: shared`)", "n"),
    ("crash_ok", "crash: client requests served", "n"),
    ("crash_victim", "crash: of which by the killed node, before the kill", "n"),
    ("goodbye", "goodbye: SIGTERM -> dropped by every other node", "ms"),
    ("goodbye_exit", "goodbye: SIGTERM -> its `devmesh up` exited", "ms"),
]


def fmt(value: float, unit: str) -> str:
    """A value in its unit."""
    if value != value:  # NaN
        return "n/a"
    if unit == "ms":
        return f"{value * 1000:.0f} ms"
    if unit == "s":
        return f"{value:.2f} s"
    return f"{value:,.0f}"


def spread(results: Results, metric: str, size: int, unit: str) -> str:
    """`median (min-max)`."""
    vals = [v for v in results.values(metric, size) if v == v]
    if not vals:
        return "n/a"
    med = fmt(statistics.median(vals), unit)
    if len(vals) == 1:
        return med
    lo, hi = fmt(min(vals), unit), fmt(max(vals), unit)
    if unit == "n":
        return f"{med} ({lo}-{hi})"
    return f"{med} ({lo.rsplit(' ', 1)[0]}-{hi.rsplit(' ', 1)[0]} {unit})"


def table(results: Results, sizes: Sequence[int]) -> list[str]:
    """The results as markdown table rows."""
    head = ["metric (median, min-max)", *[f"{n} nodes" for n in sizes]]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for metric, label, unit in METRICS:
        if any(results.values(metric, n) for n in sizes):
            cells = [label, *[spread(results, metric, n, unit) for n in sizes]]
            out.append("| " + " | ".join(cells) + " |")
    return out


def goals(results: Results, sizes: Sequence[int], only: str | None) -> list[Goal]:
    """The goals per size, judged on the medians (the client's errors: on every repeat)."""
    out: list[Goal] = []
    crash_limit = MISSES * results.interval

    def judge(text: str, metric: str, size: int, limit: float, unit: str) -> None:
        vals = [v for v in results.values(metric, size) if v == v]
        if not vals:
            out.append(Goal(text, None, "not measured"))
            return
        med = statistics.median(vals)
        alone = sum(1 for v in vals if v <= limit)
        out.append(
            Goal(
                text,
                med <= limit,
                f"{fmt(med, unit)} vs {fmt(limit, unit)}; margin {(limit - med) / limit:+.0%}; "
                f"met in {alone} of {len(vals)} repeats on their own",
                (limit - med) / limit,
            )
        )

    for n in sizes:
        if only in (None, "join"):
            judge(
                f"{n} nodes: join (a) <= 1 s, from the service running on the new node",
                "join",
                n,
                JOIN_GOAL,
                "ms",
            )
        if only in (None, "goodbye"):
            judge(f"{n} nodes: goodbye (SIGTERM) <= 200 ms", "goodbye", n, GOODBYE_GOAL, "ms")
        if only in (None, "crash"):
            judge(
                f"{n} nodes: crash (kill -9) <= {MISSES} intervals ({crash_limit:g} s)",
                "crash",
                n,
                crash_limit,
                "s",
            )
            errors = results.values("crash_errors", n)
            if not errors:
                out.append(Goal(f"{n} nodes: no client-visible error", None, "not measured"))
            else:
                total = int(sum(errors))
                out.append(
                    Goal(
                        f"{n} nodes: no client-visible error during the crash",
                        total == 0,
                        f"{total} failed requests over {len(errors)} repeats "
                        f"(max {max(errors):.0f} in one)",
                    )
                )
    return out


def reading(results: Results, sizes: Sequence[int]) -> list[str]:
    """What the medians say beyond pass/fail, from the numbers of this run."""
    out: list[str] = []
    interval = results.interval
    for n in sizes:
        g, e = results.median("goodbye", n), results.median("goodbye_exit", n)
        if g is not None and e is not None and e == e:
            when = "before" if g < e else "after"
            out.append(
                f"- Goodbye, {n} nodes: the others dropped the node {g * 1000:.0f} ms after "
                f"SIGTERM; its `devmesh up` exited after {e * 1000:.0f} ms, so the goodbye "
                f"arrived {when} the process was gone."
            )
        c = results.median("crash", n)
        if c is not None:
            text = (
                f"- Crash, {n} nodes: dropped after {c:.2f} s = {c / interval:.2f} intervals "
                f"of {interval:g} s. No goodbye comes; a peer silent for more than {MISSES} of "
                f"its intervals is dropped (the discovery worker wakes when a peer's time runs "
                "out), counted from its last "
                f"announcement, which came 0-{interval:g} s before the kill: so "
                f"{MISSES - 1:g}-{MISSES:g} intervals after the kill, plus the wake-up. The goal "
                "is the rule's own worst case: a kill just after an announcement can miss it."
            )
            silent, late = results.median("crash_silent", n), results.median("crash_late", n)
            if silent is not None and late is not None:
                misses = sum(1 for v in results.values("crash", n) if v > MISSES * interval)
                text += (
                    f" Here the killed node had last announced {silent:.2f} s (median) before "
                    f"the kill, and the last node dropped it {late * 1000:.0f} ms after "
                    f"{MISSES} intervals of silence (the wake-up, "
                    "the report to the supervisor, the polling); "
                    f"{misses} of {len(results.values('crash', n))} repeats took longer than "
                    f"{MISSES} intervals."
                )
            out.append(text)
    return out


MEMBERLIST = (
    "For comparison (not measured here): hashicorp/memberlist's `DefaultLANConfig` (SWIM) "
    "probes one member per `ProbeInterval` = 1 s with a 500 ms `ProbeTimeout`; a member that "
    "fails its probe is suspected for `SuspicionMult` x max(1, log10 N) x 1 s = 4 s (N <= 10), "
    "up to `SuspicionMaxTimeoutMult` = 6 times that (24 s) unless other members confirm the "
    "suspicion, so a failed node is declared dead after about 5-25 s."
)


def machine() -> dict[str, str]:
    """What ran the benchmark."""
    cpu = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    ip = subprocess.run(["ip", "-V"], capture_output=True, text=True, timeout=10).stdout.strip()
    return {
        "nproc": str(os.cpu_count()),
        "cpu": cpu or platform.processor() or "unknown",
        "kernel": platform.release(),
        "python": platform.python_version(),
        "devmesh": SOURCE.describe if SOURCE else "installed",
        "ip": ip,
    }


def markdown(
    results: Results,
    args: argparse.Namespace,
    info: dict[str, str],
    load: tuple[str, str],
    elapsed: float,
) -> str:
    """The "## Discovery" section of docs/benchmarks.md."""
    command = shlex.join(["python3", *sys.argv])
    sizes = args.sizes
    judged = goals(results, sizes, args.only)
    lines = [
        "## Discovery",
        "",
        "How fast devmesh nodes on one LAN learn that a node joined, left (SIGTERM) or crashed "
        f"(SIGKILL), in a lab of Linux network namespaces on one bridge, with "
        f"{' and '.join(str(n) for n in sizes)} nodes, discovery interval {results.interval:g} "
        f"s (the default), {args.repeat} repeats (fresh nodes each), medians with min-max.",
        "",
        "```sh",
        command,
        "```",
        "",
        f"Run on {dt.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}: {info['nproc']} cores "
        f"({info['cpu']}), Linux {info['kernel']}, Python {info['python']}, devmesh "
        f"{info['devmesh']}, {info['ip']}. Load average before / after: {load[0]} / {load[1]}. "
        f"The run took {elapsed:.0f} s.",
        "",
        *table(results, sizes),
        "",
        "Goals (judged on the medians; join on (a), from the moment the new node's service is "
        "`running`, not from its launch; the client's errors on every repeat):",
        "",
        *[f"- **{verdict(g)}**: {g.text} ({g.detail})" for g in judged],
        "",
        MEMBERLIST,
    ]
    notes = reading(results, sizes)
    if notes:
        lines += ["", "Reading the results:", "", *notes]
    other = [
        f"{n} nodes: `{k}` x {v}"
        for n, errs in results.client_other.items()
        for k, v in errs.items()
    ]
    if other:
        lines += ["", "The client's failed requests:", "", *[f"- {o}" for o in other[:10]]]
    failures = [f"{n} nodes: {f}" for n, fs in results.failures.items() for f in fs]
    if failures:
        lines += ["", "Repeats that failed:", "", *[f"- {f}" for f in failures]]
    if results.problems:
        lines += ["", "Error-looking lines in the nodes' output (in how many node runs):", ""]
        lines += [f"- `{k}` ({v})" for k, v in list(results.problems.items())[:10]]
    lines += [
        "",
        "Method. Host i of the lab is a network namespace (`tests/lab.py`) with one node: "
        f"`ip netns exec <host> python3 -m devmesh up` in its own project directory (proxy "
        f'port {PROXY_PORT} in every namespace, `[mesh] namespace = "{NAMESPACE}"`, '
        "discovery on with its defaults, one `python3 -m http.server` service `svc<i>`, nodes "
        "1 and 2 also `shared`), its own `XDG_RUNTIME_DIR`/`XDG_STATE_HOME`, `NO_COLOR=1`. "
        "What a node knows is read from its control socket in-process (`ControlClient.peers()` "
        f"/ `.status()`), one thread per node polling every {POLL * 1000:.0f} ms; a moment is "
        "the arrival of the first answer that shows it (late by at most a poll period plus a "
        "round trip). *Join*: nodes 1..N-1 run and list each other, then node N is launched; "
        "(a) runs from the `changed_at` of node N's service turning `running` in its own "
        "status, (b) from just before `Popen` of its `devmesh up`, until the last other node "
        "lists it with that service `running`. *Crash*: while `tests/fixtures/lab_client.py` "
        f"runs in host N against its own proxy with `Host: {SHARED}` (node N has no "
        f"`{SHARED}`: every request goes to node 1 or node 2 through their proxies; one "
        "keep-alive connection, a new one after an error), the supervisor of whichever of "
        "nodes 1 and 2 serves it (one more GET from host N tells) gets SIGKILL by pid; the time "
        "until no other node lists it, and the client's failed and served requests over its "
        "whole run (it starts before the kill and ends "
        f"{CLIENT_TAIL:g} s after {MISSES} intervals). A listener in one more lab host (no "
        "node; it only receives) timestamps every IPv4 announcement: the killed node's last "
        "one before the kill gives its silence at the kill and how late after "
        f"{MISSES} intervals of silence it was dropped. *Goodbye*: the other one of nodes 1 and "
        "2 gets SIGTERM by pid; the time until no other running node (N-2 of them) lists it, "
        "and until its `devmesh up` exited. Nodes 1..N-1 are started one after the other (the "
        "next once the last answers on its socket), not all at once. devmesh runs from a "
        "frozen copy of the source named above (`--source`).",
        "",
        "Noise. The machine is a shared 2-core VM: with 10 nodes about 60 devmesh and service "
        "processes share the two cores with the polling threads and, during the crash, the "
        "client and the proxies it goes through; other jobs run beside the benchmark (see the "
        "load averages).",
        "",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    p.add_argument("--repeat", type=int, default=5, help="repeats (default 5)")
    p.add_argument(
        "--sizes",
        type=lambda s: [int(x) for x in s.split(",") if x],
        default=[3, 10],
        help="comma-separated lab sizes (nodes), default 3,10",
    )
    p.add_argument("--only", choices=("join", "crash", "goodbye"), help="measure one of them")
    add_output_options(p)
    args = p.parse_args(argv)
    if args.repeat < 1 or not args.sizes or min(args.sizes) < 3 or max(args.sizes) > 50:
        p.error("need --repeat >= 1 and sizes of 3 to 50 nodes")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; 0 when every measured goal passed, 1 otherwise."""
    global SOURCE
    args = parse_args(argv)
    if lab_missing():
        return 2
    with devmesh_under_test(args.source) as SOURCE:
        SOURCE.compile()
        load_api(SOURCE)
        return measure(args)


def measure(args: argparse.Namespace) -> int:
    """Every repeat at every size, then the report; 0 when no measured goal failed."""
    info = machine()
    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"{info['nproc']} cores, python {info['python']}, load {load_before}", flush=True)
    results = Results()
    t_begin = time.monotonic()
    prefix = f"dmb{os.getpid() % 10000}"
    for size in args.sizes:
        lab = Lab(size + 1, prefix)  # the last host runs no node: the sniffer's
        try:
            lab.up()
            for r in range(args.repeat):
                t0 = time.monotonic()
                before = {m: len(results.values(m, size)) for m, _, _ in METRICS}
                try:
                    run_repeat(lab, size, args.only, results)
                except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
                    text = str(exc).strip().replace("\n", " | ")[:500]
                    results.failures.setdefault(size, []).append(f"repeat {r + 1}: {text}")
                    print(f"  repeat failed: {text}", flush=True)
                took = time.monotonic() - t0
                line = progress(results, size, before)
                print(
                    f"{size} nodes, repeat {r + 1}/{args.repeat}: {line} ({took:.0f} s)", flush=True
                )
        finally:
            results.leftovers += sweep_lab(lab)
            lab.down()
    elapsed = time.monotonic() - t_begin
    load_after = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"\ndone in {elapsed:.0f}s, load {load_after}\n")
    print("\n".join(table(results, args.sizes)))
    print()
    judged = goals(results, args.sizes, args.only)
    for goal in judged:
        print(f"{verdict(goal):<12} {goal.text}: {goal.detail}")
    print()
    for note in reading(results, args.sizes):
        print(note)
    print(MEMBERLIST)
    for size, errs in results.client_other.items():
        for k, v in errs.items():
            print(f"client error, {size} nodes: {k} x {v}")
    for size, items in results.failures.items():
        for item in items:
            print(f"failed repeat, {size} nodes: {item}")
    for line, count in results.problems.items():
        print(f"node output ({count} node runs): {line}")
    if results.leftovers:
        print(f"warning: {results.leftovers} processes were left in the lab and SIGKILLed")
    if args.markdown is not None:
        section = markdown(results, args, info, (load_before, load_after), elapsed)
        write_section(args.markdown, "Discovery", section)
        print(f"\nwrote {args.markdown}")
    return 0 if all(g.passed is not False for g in judged) else 1


def progress(results: Results, size: int, before: dict[str, int]) -> str:
    """The samples a repeat added, one line."""
    parts = []
    for metric, _label, unit in METRICS:
        vals = results.values(metric, size)
        if len(vals) > before.get(metric, 0):
            parts.append(f"{metric} {fmt(vals[-1], unit)}")
    return ", ".join(parts) or "no samples"


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Proxy benchmark: devmesh's reverse proxy against nginx, HAProxy and Caddy, side by side in one
run, in front of the same nginx origin, with "direct" (no proxy) as the reference.

The origin is one nginx (1 worker, on `--client-core`, default 0) serving a fixed 100-byte body
(`/small`), a 100 MiB file (`/large`) and, for the memory test, a sparse 1 GiB file (`/huge`),
on loopback. Each proxy runs pinned to `--proxy-core` (default 1; `taskset -c 1` on the launch,
so every process and thread of it inherits the mask), wrk, curl and the origin on core 0:

- devmesh: `devmesh up -f devmesh.toml` with `[proxy] workers = 1` and the origin as an
  external service (a `port`, no `command`), routed by `Host: origin`;
- nginx: `proxy_pass` to an `upstream` with `keepalive 64`, HTTP/1.1, 1 worker;
- HAProxy: `nbthread 1`, `mode http`, `option http-keep-alive`, `http-reuse always`;
- Caddy: `reverse_proxy`, `GOMAXPROCS=1`, 64 idle upstream connections kept (as nginx);
- relay: `scripts/bench/relay.py`, a bare uvloop + httptools relay with none of devmesh's
  features (one origin connection per client, bytes unchanged): the floor under devmesh's
  proxy on this stack, so the table shows what the features cost;
- direct: the clients straight at the origin.

Every repeat (`--repeat`, default 3) starts each proxy afresh, in an order rotated every repeat,
and measures, for each:

1. small: `wrk -t1 -c50 -d10s --latency` of `/small` after a short unmeasured warm-up: req/s,
   p50 and p99 latency, plus the proxy's CPU time per request (psutil, all its processes), how
   busy each core was (/proc/stat) and how much CPU other jobs of the machine took meanwhile;
   a run they disturbed (`--max-others`, 0.25 cores) is measured again (`--retries`, 2) and the
   least disturbed one kept;
2. large: `curl -o /dev/null` of `/large`, 5 downloads after one warm-up, MB/s (10^6 bytes/s)
   from curl's size and total time; the repeat's sample is their median;
3. rss: `curl --limit-rate 200M -o /dev/null` of the 1 GiB `/huge` (the client slower than the
   origin, so the proxy must push back instead of buffering), the RSS of the proxy's serving
   processes (devmesh: the `proxy-1` worker) sampled with psutil every 20 ms: the peak.

Goals (from the issue, judged on the medians): devmesh req/s >= 0.75x nginx's, devmesh p99
<= 1.5x nginx's, devmesh 100 MiB MB/s >= 1.2x nginx's, devmesh peak RSS during the 1 GiB
transfer < 64 MiB. The exit code is 1 when one fails (or could not be measured).

Every server runs from config files this script writes into a temporary directory, on
loopback ports it chooses (`--port`, default 18080..18085), as its own foreground process; it
is stopped by pid (SIGTERM, then SIGKILL after a bounded wait, then any process of it left).
Every wait and every load is bounded; traffic goes only to 127.0.0.1. devmesh is imported from a
frozen copy of the project's working tree (`--source worktree`, the default) or of its last
commit (`--source head`), whatever `pip install -e` points at.

Needs (Debian packages): `apt-get install nginx-light haproxy caddy wrk curl util-linux`
(util-linux for taskset), and psutil (a devmesh dependency). The packages' own services are not
used (and need not run). For `--profile`, `pip install py-spy`. Run it from the project root:

    python3 scripts/bench/proxy.py --repeat 3 --markdown docs/benchmarks.md

Options: `--repeat N`, `--duration S` (wrk, default 10), `--warmup S`, `--connections N`,
`--downloads N`, `--rss-rate RATE` (curl `--limit-rate`, `0` = unlimited), `--only
small|large|rss`, `--proxies devmesh,relay,nginx,haproxy,caddy,direct`, `--source worktree|head`,
`--port N` (devmesh's; the origin N+1, the others N+2..N+5), `--proxy-core`, `--client-core`,
`--profile DIR` (after the measured repeats, one more devmesh run under py-spy: a flame graph and
the functions where the worker's time goes), `--markdown PATH` (writes or replaces the
"## Proxy" section of that file).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import datetime as dt
import http.client
import os
import platform
import re
import resource
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
from typing import IO

import psutil
from common import (  # scripts/bench/common.py
    CALLER_ONLY,
    ROOT,
    DevmeshSource,
    Goal,
    add_output_options,
    verdict,
    write_section,
)

PROXIES = ("devmesh", "relay", "nginx", "haproxy", "caddy", "direct")
PROXY_NAMES = PROXIES[:-1]
HOST = "origin"  # the Host header of every request: devmesh routes by it, the others ignore it
SMALL_BODY = b"0123456789" * 9 + b"abcdefghi\n"  # 100 bytes
LARGE_BYTES = 100 * 2**20
HUGE_BYTES = 2**30
MIB = 2**20
RSS_LIMIT = 64 * MIB
RSS_POLL = 0.02
READY_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0
KILL_TIMEOUT = 5.0
SETTLE_TIMEOUT = 10.0  # after a start: wait this long at most for the processes to go idle
SETTLE_STEP = 0.25
CURL_TIMEOUT = 120.0
CLOSE_CALL = 0.2  # a goal met or missed by less than this is within the noise
MAX_ERROR_SHARE = 0.01  # a wrk run with more failed requests than this is not a sample
TRACE_HEADER = "X-DevMesh-Trace-ID"
ORIGIN_PROCS: list[psutil.Process] = []  # the origin's processes, set by main()


# ---------------------------------------------------------------------------- devmesh source


# ---------------------------------------------------------------------------- configs


@dataclass(frozen=True)
class Layout:
    """Where everything of one benchmark run lives, and the cores and ports it uses."""

    work: Path
    origin_port: int
    ports: dict[str, int]  # proxy -> listening port (direct: the origin's)
    proxy_core: int | None
    client_core: int | None

    @property
    def www(self) -> Path:
        """The origin's document root."""
        return self.work / "www"


def _user_line() -> str:
    # As root, nginx's workers would run as nobody and could not read the temp directory.
    return "user root root;\n" if os.geteuid() == 0 else ""


def nginx_conf(work: Path, name: str, http: str) -> str:
    """A complete nginx.conf: 1 worker, foreground, everything inside `work/name`."""
    base = work / name
    return (
        f"{_user_line()}"
        "worker_processes 1;\n"
        "daemon off;\n"
        "master_process on;\n"
        f"pid {base}/nginx.pid;\n"
        f"error_log {base}/error.log warn;\n"
        "events { worker_connections 4096; }\n"
        "http {\n"
        "    access_log off;\n"
        "    keepalive_requests 1000000;\n"
        "    keepalive_timeout 75s;\n"
        f"    client_body_temp_path {base}/client-body;\n"
        f"    proxy_temp_path {base}/proxy-temp;\n"
        f"{http}"
        "}\n"
    )


def origin_conf(lay: Layout) -> str:
    """The origin: `/small` is a fixed 100-byte body, everything else a file under www/."""
    body = SMALL_BODY.decode().rstrip("\n")
    http = (
        "    sendfile on;\n"
        "    tcp_nopush on;\n"
        "    default_type application/octet-stream;\n"
        "    server {\n"
        f"        listen 127.0.0.1:{lay.origin_port} default_server;\n"
        f"        root {lay.www};\n"
        f'        location = /small {{ default_type text/plain; return 200 "{body}\\n"; }}\n'
        "    }\n"
    )
    return nginx_conf(lay.work, "origin", http)


def nginx_proxy_conf(lay: Layout) -> str:
    """nginx as the proxy: `proxy_pass` to an upstream with 64 keep-alive connections."""
    http = (
        "    upstream origin {\n"
        f"        server 127.0.0.1:{lay.origin_port};\n"
        "        keepalive 64;\n"
        "        keepalive_requests 1000000;\n"
        "        keepalive_timeout 75s;\n"
        "    }\n"
        "    server {\n"
        f"        listen 127.0.0.1:{lay.ports['nginx']} default_server;\n"
        "        location / {\n"
        "            proxy_pass http://origin;\n"
        "            proxy_http_version 1.1;\n"
        '            proxy_set_header Connection "";\n'
        "            proxy_set_header Host $host;\n"
        "        }\n"
        "    }\n"
    )
    return nginx_conf(lay.work, "nginx", http)


def haproxy_conf(lay: Layout) -> str:
    """HAProxy: one thread, http mode, keep-alive to the server, connections always reused."""
    return (
        "global\n"
        "    nbthread 1\n"
        "    maxconn 4096\n"
        "defaults\n"
        "    mode http\n"
        "    timeout connect 5s\n"
        "    timeout client 75s\n"
        "    timeout server 75s\n"
        "    option http-keep-alive\n"
        "    http-reuse always\n"
        "frontend bench\n"
        f"    bind 127.0.0.1:{lay.ports['haproxy']}\n"
        "    default_backend origin\n"
        "backend origin\n"
        f"    server origin 127.0.0.1:{lay.origin_port}\n"
    )


def caddyfile(lay: Layout) -> str:
    """Caddy: `reverse_proxy`, plain HTTP, no admin endpoint, 64 idle upstream connections."""
    return (
        "{\n"
        "\tadmin off\n"
        "\tauto_https off\n"
        f"\tstorage file_system {lay.work}/caddy/data\n"
        "}\n"
        f":{lay.ports['caddy']} {{\n"
        "\tbind 127.0.0.1\n"
        f"\treverse_proxy 127.0.0.1:{lay.origin_port} {{\n"
        "\t\ttransport http {\n"
        "\t\t\tkeepalive_idle_conns_per_host 64\n"
        "\t\t}\n"
        "\t}\n"
        "}\n"
    )


def devmesh_toml(lay: Layout) -> str:
    """devmesh: one proxy worker, the origin as an external service, no LAN discovery."""
    return (
        "[proxy]\n"
        f"port = {lay.ports['devmesh']}\n"
        "workers = 1\n\n"
        "[discovery]\n"
        "enabled = false\n\n"
        f"[services.{HOST}]\n"
        f"port = {lay.origin_port}\n"
    )


# ---------------------------------------------------------------------------- servers


def pinned(core: int | None, argv: list[str]) -> list[str]:
    """`argv` under `taskset -c core` (unchanged without a core)."""
    return argv if core is None else ["taskset", "-c", str(core), *argv]


@dataclass
class Spec:
    """How to launch one server."""

    name: str
    argv: list[str]
    env: dict[str, str]
    files: dict[Path, str]  # config files to write first
    dirs: list[Path] = field(default_factory=list)


class Server:
    """One launched server, its process tree, and stopping all of it by pid."""

    def __init__(self, spec: Spec, work: Path) -> None:
        self.spec = spec
        for d in spec.dirs:
            d.mkdir(parents=True, exist_ok=True)
        for path, text in spec.files.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        self.log = work / f"{spec.name}.log"
        self._log: IO[bytes] = open(self.log, "wb")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(
            spec.argv,
            env=spec.env,
            cwd=work,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.seen: dict[int, psutil.Process] = {}
        self.killed = False  # SIGTERM was not enough

    def procs(self) -> list[psutil.Process]:
        """The server's processes now (root first); each is remembered for the clean-up."""
        try:
            root = psutil.Process(self.popen.pid)
            found = [root, *root.children(recursive=True)]
        except psutil.Error:
            return []
        for p in found:
            self.seen.setdefault(p.pid, p)
        return found

    def alive(self) -> bool:
        """Whether the root process still runs."""
        return self.popen.poll() is None

    def tail(self) -> str:
        """The end of the server's output."""
        with contextlib.suppress(OSError):
            return self.log.read_bytes()[-800:].decode(errors="replace").strip()
        return ""

    def stop(self) -> None:
        """SIGTERM, SIGKILL after a bounded wait, then SIGKILL whatever of it is left."""
        if self.alive():
            self.procs()
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.killed = True
                self.popen.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.popen.wait(KILL_TIMEOUT)
        deadline = time.monotonic() + KILL_TIMEOUT
        while time.monotonic() < deadline:
            left = [p for p in self.seen.values() if _running(p)]
            if not left:
                break
            for p in left:
                with contextlib.suppress(psutil.Error):
                    p.kill()  # psutil checks the pid still names the same process
            time.sleep(0.1)
        self._log.close()

    def problems(self) -> list[str]:
        """Error-looking lines of the server's output (at most 5)."""
        pattern = re.compile(r'Traceback|Error|\[(ALERT|emerg|crit|alert)\]|"level":"error"')
        found: list[str] = []
        with contextlib.suppress(OSError), open(self.log, errors="replace") as f:
            for line in f:
                if pattern.search(line):
                    found.append(line.strip()[:200])
                    if len(found) >= 5:
                        break
        return found


def _running(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def base_env() -> dict[str, str]:
    """The environment of every server: the caller's, less its Python debugging settings."""
    return {k: v for k, v in os.environ.items() if k not in CALLER_ONLY}


def spec_origin(lay: Layout) -> Spec:
    """The nginx origin, on the client core."""
    conf = lay.work / "origin" / "nginx.conf"
    argv = ["nginx", "-p", str(lay.work / "origin"), "-c", str(conf)]
    argv += ["-e", str(lay.work / "origin" / "error.log")]
    return Spec("origin", pinned(lay.client_core, argv), base_env(), {conf: origin_conf(lay)})


def spec_proxy(proxy: str, lay: Layout, source: DevmeshSource | None) -> Spec:
    """How to run `proxy` on the proxy core."""
    d = lay.work / proxy
    env = base_env()
    if proxy == "nginx":
        conf = d / "nginx.conf"
        argv = ["nginx", "-p", str(d), "-c", str(conf), "-e", str(d / "error.log")]
        return Spec(proxy, pinned(lay.proxy_core, argv), env, {conf: nginx_proxy_conf(lay)})
    if proxy == "haproxy":
        conf = d / "haproxy.cfg"
        argv = ["haproxy", "-db", "-f", str(conf)]
        return Spec(proxy, pinned(lay.proxy_core, argv), env, {conf: haproxy_conf(lay)})
    if proxy == "caddy":
        conf = d / "Caddyfile"
        env.update(
            GOMAXPROCS="1",
            HOME=str(d),
            XDG_DATA_HOME=str(d / "data"),
            XDG_CONFIG_HOME=str(d / "config"),
        )
        argv = ["caddy", "run", "--config", str(conf), "--adapter", "caddyfile"]
        return Spec(proxy, pinned(lay.proxy_core, argv), env, {conf: caddyfile(lay)})
    if proxy == "relay":
        argv = [sys.executable, str(Path(__file__).with_name("relay.py"))]
        argv += [str(lay.ports[proxy]), str(lay.origin_port)]
        return Spec(proxy, pinned(lay.proxy_core, argv), env, {})
    if proxy == "devmesh":
        conf = d / "devmesh.toml"
        env.update(XDG_RUNTIME_DIR=str(d / "run"), XDG_STATE_HOME=str(d / "state"), NO_COLOR="1")
        if source is not None:
            env = source.env(env)
        argv = [sys.executable, "-m", "devmesh", "up", "-f", str(conf)]
        return Spec(
            proxy,
            pinned(lay.proxy_core, argv),
            env,
            {conf: devmesh_toml(lay)},
            dirs=[d / "run", d / "state"],
        )
    raise ValueError(proxy)


def serving_procs(proxy: str, server: Server) -> list[psutil.Process]:
    """The processes that carry the traffic: devmesh's proxy workers, nginx's worker, the
    single HAProxy and Caddy processes."""
    procs = server.procs()
    if proxy == "devmesh":
        out = []
        for p in procs[1:]:
            with contextlib.suppress(psutil.Error):
                cmd = p.cmdline()
                if "devmesh.workers" in cmd:
                    at = cmd.index("devmesh.workers")
                    if at + 1 < len(cmd) and cmd[at + 1].startswith("proxy"):
                        out.append(p)
        return out
    if proxy == "nginx":
        return procs[1:]
    return procs[:1]


def get(port: int, path: str, timeout: float = 2.0) -> tuple[int, bytes, dict[str, str]]:
    """One GET to 127.0.0.1:port with `Host: origin`: status, body, headers."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Host": HOST})
        resp = conn.getresponse()
        return resp.status, resp.read(), {k.lower(): v for k, v in resp.getheaders()}
    finally:
        conn.close()


def port_free(port: int) -> bool:
    """Whether nothing listens on 127.0.0.1:port (and we could bind it)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def wait_ready(server: Server, port: int) -> dict[str, str]:
    """Wait (bounded) until `/small` through `port` answers 200 with the 100-byte body."""
    deadline = time.monotonic() + READY_TIMEOUT
    last = "no answer"
    while time.monotonic() < deadline:
        if not server.alive():
            raise RuntimeError(f"exited with code {server.popen.returncode}: {server.tail()}")
        try:
            status, body, headers = get(port, "/small")
            if status == 200 and body == SMALL_BODY:
                return headers
            last = f"HTTP {status}, {len(body)} bytes"
        except (OSError, http.client.HTTPException) as exc:
            last = str(exc) or type(exc).__name__
        time.sleep(0.1)
    raise RuntimeError(f"not ready after {READY_TIMEOUT:.0f}s ({last}): {server.tail()}")


def settle(server: Server) -> float:
    """Wait (bounded) until the server's processes are idle after their start (devmesh imports
    and starts its workers after the proxy answers); the seconds waited."""
    t0 = time.monotonic()
    quiet = 0
    last = cpu_seconds(server.procs())
    while time.monotonic() - t0 < SETTLE_TIMEOUT and quiet < 2:
        time.sleep(SETTLE_STEP)
        now = cpu_seconds(server.procs())
        quiet = quiet + 1 if now - last < 0.1 * SETTLE_STEP else 0
        last = now
    return time.monotonic() - t0


# ---------------------------------------------------------------------------- measurements


def cpu_seconds(procs: Sequence[psutil.Process]) -> float:
    """User + system CPU seconds of the processes that still exist."""
    total = 0.0
    for p in procs:
        with contextlib.suppress(psutil.Error):
            t = p.cpu_times()
            total += t.user + t.system
    return total


def core_ticks() -> dict[int, tuple[int, int]]:
    """Per core: (busy ticks, all ticks) from /proc/stat (idle and iowait are not busy)."""
    out: dict[int, tuple[int, int]] = {}
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu") and line[3].isdigit():
                name, *vals = line.split()
                ticks = [int(v) for v in vals[:8]]
                idle = ticks[3] + ticks[4]
                out[int(name[3:])] = (sum(ticks) - idle, sum(ticks))
    return out


def kernel_threads_cpu() -> float:
    """CPU seconds of the kernel's own threads (kworkers, ksoftirqd, ...): work our traffic
    causes as much as anyone's, so not counted as other jobs."""
    total = 0.0
    for p in psutil.process_iter(["ppid"]):
        if p.pid == 2 or p.info["ppid"] == 2:
            with contextlib.suppress(psutil.Error):
                t = p.cpu_times()
                total += t.user + t.system
    return total


def busy_share(
    before: dict[int, tuple[int, int]], after: dict[int, tuple[int, int]], core: int
) -> float | None:
    """How busy `core` was between two `core_ticks()`, 0..1."""
    if core not in before or core not in after:
        return None
    busy = after[core][0] - before[core][0]
    total = after[core][1] - before[core][1]
    return busy / total if total > 0 else None


_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def _seconds(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text)
    if m is None:
        raise ValueError(f"not a wrk time: {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


@dataclass
class WrkResult:
    """What one wrk run reports."""

    rps: float
    p50: float  # seconds
    p99: float
    requests: int
    errors: int  # socket errors + non-2xx/3xx responses


def parse_wrk(out: str) -> WrkResult:
    """The numbers of wrk's `--latency` report."""
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    p50 = re.search(r"^\s+50%\s+(\S+)", out, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", out, re.M)
    reqs = re.search(r"(\d+) requests in", out)
    if not (rps and p50 and p99 and reqs):
        raise RuntimeError(f"unreadable wrk output: {out.strip()[-400:]}")
    errors = 0
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if sock:
        errors += sum(int(x) for x in sock.groups())
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non2xx:
        errors += int(non2xx.group(1))
    return WrkResult(
        float(rps.group(1)),
        _seconds(p50.group(1)),
        _seconds(p99.group(1)),
        int(reqs.group(1)),
        errors,
    )


def wrk_argv(lay: Layout, port: int, seconds: float, connections: int) -> list[str]:
    """The wrk command line (on the client core)."""
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--latency"]
    argv += ["-H", f"Host: {HOST}", f"http://127.0.0.1:{port}/small"]
    return pinned(lay.client_core, argv)


def run_wrk(lay: Layout, port: int, seconds: float, connections: int) -> str:
    """Run wrk (bounded) and return its report."""
    done = subprocess.run(
        wrk_argv(lay, port, seconds, connections),
        capture_output=True,
        text=True,
        timeout=seconds + 30,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"wrk exited with {done.returncode}: {done.stderr.strip()[-300:]}")
    return done.stdout


def curl_argv(lay: Layout, port: int, path: str, rate: str | None = None) -> list[str]:
    """The curl download command line (on the client core)."""
    argv = ["curl", "-s", "-o", "/dev/null", "--max-time", f"{CURL_TIMEOUT:g}"]
    if rate:
        argv += ["--limit-rate", rate]
    argv += ["-H", f"Host: {HOST}", "-w", "%{http_code} %{size_download} %{time_total}\\n"]
    argv += [f"http://127.0.0.1:{port}{path}"]
    return pinned(lay.client_core, argv)


def parse_curl(out: str, expect: int) -> float:
    """Seconds of one download from curl's `-w` line (RuntimeError if it was not whole)."""
    try:
        code, size, total = out.split()
    except ValueError:
        raise RuntimeError(f"unreadable curl output: {out!r}") from None
    if code != "200" or int(size) != expect:
        raise RuntimeError(f"download: HTTP {code}, {size} of {expect} bytes")
    return float(total)


# ---------------------------------------------------------------------------- results


@dataclass
class Results:
    """Every sample, per metric and proxy."""

    samples: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    failures: dict[str, list[str]] = field(default_factory=dict)
    notes: dict[str, list[str]] = field(default_factory=dict)
    retried: dict[str, int] = field(default_factory=dict)  # small runs measured again

    def add(self, metric: str, proxy: str, value: float | None) -> None:
        """Record one sample (None: nothing to record)."""
        if value is not None:
            self.samples.setdefault(metric, {}).setdefault(proxy, []).append(value)

    def values(self, metric: str, proxy: str) -> list[float]:
        """The samples of a metric for a proxy (possibly none)."""
        return self.samples.get(metric, {}).get(proxy, [])

    def median(self, metric: str, proxy: str) -> float | None:
        """The median sample, None without samples."""
        vals = self.values(metric, proxy)
        return statistics.median(vals) if vals else None

    def note(self, where: dict[str, list[str]], proxy: str, text: str) -> None:
        """Remember a failure or note once."""
        items = where.setdefault(proxy, [])
        if text not in items:
            items.append(text)


@dataclass
class SmallRun:
    """One measured wrk run and what the machine did meanwhile."""

    wrk: WrkResult
    wall: float
    proxy_cpu: float  # seconds, all the proxy's processes
    others: float  # cores used by processes that are not the benchmark's, on average
    shares: dict[int, float]  # per core: how busy it was, 0..1


def measure_small(
    proxy: str, server: Server | None, lay: Layout, args: argparse.Namespace
) -> SmallRun:
    """One wrk run against the proxy, with the CPU of everything around it."""
    port = lay.ports[proxy]
    procs = server.procs() if server is not None else []
    ours = procs + ORIGIN_PROCS
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)  # wrk, once waited for
    cpu0, all0, self0 = cpu_seconds(procs), cpu_seconds(ours), time.process_time()
    kernel0, ticks0, t0 = kernel_threads_cpu(), core_ticks(), time.monotonic()
    out = run_wrk(lay, port, args.duration, args.connections)
    wall = time.monotonic() - t0
    ticks1, kernel = core_ticks(), kernel_threads_cpu() - kernel0
    kids1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    wrk_cpu = kids1.ru_utime - kids.ru_utime + kids1.ru_stime - kids.ru_stime
    ours_cpu = cpu_seconds(ours) - all0 + wrk_cpu + time.process_time() - self0 + kernel
    # A process's CPU time includes the softirq work done in its context (loopback receive),
    # which /proc/stat counts apart: compare with all busy time.
    shares = {c: v for c in ticks0 if (v := busy_share(ticks0, ticks1, c)) is not None}
    return SmallRun(
        wrk=parse_wrk(out),
        wall=wall,
        proxy_cpu=cpu_seconds(procs) - cpu0,
        others=max(0.0, sum(shares.values()) - ours_cpu / wall),
        shares=shares,
    )


def bench_small(
    proxy: str, server: Server | None, lay: Layout, args: argparse.Namespace, res: Results
) -> None:
    """wrk against the proxy: req/s, latency, the proxy's CPU per request, core load.

    When other jobs on the machine used more than `--max-others` cores during the run, it is
    measured again (at most `--retries` times) and the least disturbed run is kept: the
    benchmark means to compare the proxies, not the moments they happened to run in.
    """
    port = lay.ports[proxy]
    if args.warmup > 0:
        run_wrk(lay, port, args.warmup, args.connections)
    run = measure_small(proxy, server, lay, args)
    for _ in range(args.retries):
        if run.others <= args.max_others:
            break
        print(
            f"    {proxy:<8} small: other jobs used {run.others:.2f} cores "
            f"({run.wrk.rps:,.0f} req/s): measuring again",
            flush=True,
        )
        res.retried[proxy] = res.retried.get(proxy, 0) + 1
        time.sleep(2.0)
        again = measure_small(proxy, server, lay, args)
        run = again if again.others < run.others else run
    w = run.wrk
    line = (
        f"    {proxy:<8} small: {w.rps:9,.0f} req/s, p50 {w.p50 * 1e3:6.2f} ms, "
        f"p99 {w.p99 * 1e3:6.2f} ms"
    )
    if w.errors:
        line += f", {w.errors} failed requests"
    if w.errors > MAX_ERROR_SHARE * max(w.requests, 1):
        print(line + ": FAILED", flush=True)
        res.note(res.failures, proxy, f"small: {w.errors} of {w.requests} requests failed")
        return
    if w.errors:
        res.note(res.notes, proxy, f"small: {w.errors} of {w.requests} requests failed")
    res.add("rps", proxy, w.rps)
    res.add("p50", proxy, w.p50)
    res.add("p99", proxy, w.p99)
    res.add("others", proxy, run.others)
    if server is not None and w.requests:
        res.add("cpu_us", proxy, run.proxy_cpu / w.requests * 1e6)
        res.add("busy", proxy, run.proxy_cpu / run.wall)
        line += f", proxy CPU {run.proxy_cpu / w.requests * 1e6:5.1f} us/req "
        line += f"({run.proxy_cpu / run.wall:4.0%} of a core)"
    for core, metric in ((lay.client_core, "core_client"), (lay.proxy_core, "core_proxy")):
        if core is not None and core in run.shares:
            res.add(metric, proxy, run.shares[core])
            line += f", core {core} {run.shares[core]:.0%}"
    line += f", other jobs {run.others:.2f} cores"
    print(line, flush=True)


def bench_large(
    proxy: str, server: Server | None, lay: Layout, args: argparse.Namespace, res: Results
) -> None:
    """`--downloads` curl downloads of 100 MiB after a warm-up; the median MB/s."""
    argv = curl_argv(lay, lay.ports[proxy], "/large")
    speeds: list[float] = []
    cpus: list[float] = []
    procs = server.procs() if server is not None else []
    for i in range(args.downloads + 1):
        cpu0 = cpu_seconds(procs)
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=CURL_TIMEOUT + 10, check=False
        )
        cpu = cpu_seconds(procs) - cpu0
        seconds = parse_curl(done.stdout, LARGE_BYTES)
        if i:  # the first one warms the caches and the connection pools
            speeds.append(LARGE_BYTES / seconds / 1e6)
            cpus.append(cpu)
    mbps = statistics.median(speeds)
    res.add("mbps", proxy, mbps)
    line = f"    {proxy:<8} large: {mbps:7.0f} MB/s ({min(speeds):.0f}-{max(speeds):.0f})"
    if server is not None:
        res.add("large_cpu", proxy, statistics.median(cpus))
        line += f", proxy CPU {statistics.median(cpus) * 1e3:.0f} ms per download"
    print(line, flush=True)


def bench_rss(
    proxy: str, server: Server, lay: Layout, args: argparse.Namespace, res: Results
) -> None:
    """A 1 GiB download at `--rss-rate`, the proxy's serving processes' RSS sampled every 20 ms."""
    procs = serving_procs(proxy, server)
    if not procs:
        raise RuntimeError("no serving process found")

    def rss() -> int:
        total = 0
        for p in procs:
            with contextlib.suppress(psutil.Error):
                total += p.memory_info().rss
        return total

    base = peak = rss()
    samples, gap = 0, 0.0
    rate = None if args.rss_rate in ("", "0") else args.rss_rate
    curl = subprocess.Popen(
        curl_argv(lay, lay.ports[proxy], "/huge", rate),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    # Sample from the proxy's core: the client's core is busy with curl and the origin, and
    # would delay the sampler's wake-ups; a sample costs the proxy's core a few microseconds.
    if lay.proxy_core is not None:
        os.sched_setaffinity(0, {lay.proxy_core})
    t0 = last = time.monotonic()
    try:
        while curl.poll() is None:
            now = time.monotonic()
            if now - t0 > CURL_TIMEOUT + 10:
                raise RuntimeError("1 GiB download did not finish in time")
            peak = max(peak, rss())
            samples += 1
            gap, last = max(gap, now - last), now
            time.sleep(max(0.0, t0 + samples * RSS_POLL - time.monotonic()))
        out = curl.stdout.read() if curl.stdout is not None else ""
    finally:
        if lay.client_core is not None:
            os.sched_setaffinity(0, {lay.client_core})
        if curl.poll() is None:
            curl.kill()
            curl.wait(KILL_TIMEOUT)
        if curl.stdout is not None:
            curl.stdout.close()
    seconds = parse_curl(out, HUGE_BYTES)
    res.add("rss_peak", proxy, peak)
    res.add("rss_base", proxy, base)
    res.add("rss_mbps", proxy, HUGE_BYTES / seconds / 1e6)
    print(
        f"    {proxy:<8} rss:   peak {peak / MIB:6.1f} MiB (before {base / MIB:.1f} MiB), "
        f"1 GiB in {seconds:.1f}s, {samples} samples (longest gap {gap * 1e3:.0f} ms)",
        flush=True,
    )


def check_pinning(proxy: str, server: Server, lay: Layout, res: Results) -> None:
    """Note any process of the proxy that may run outside the proxy core."""
    if lay.proxy_core is None:
        return
    for p in server.procs():
        with contextlib.suppress(psutil.Error):
            cores = p.cpu_affinity()
            if cores != [lay.proxy_core]:
                res.note(res.notes, proxy, f"pid {p.pid} ({p.name()}) may run on cores {cores}")


def run_proxy(
    proxy: str,
    lay: Layout,
    args: argparse.Namespace,
    res: Results,
    source: DevmeshSource | None,
) -> None:
    """Start `proxy` afresh, run the benchmarks in scope against it, stop it."""
    server: Server | None = None
    try:
        if proxy != "direct":
            server = Server(spec_proxy(proxy, lay, source), lay.work)
            headers = wait_ready(server, lay.ports[proxy])
            settle(server)
            check_pinning(proxy, server, lay, res)
            if proxy == "devmesh" and TRACE_HEADER.lower() not in headers:
                res.note(res.notes, proxy, f"no {TRACE_HEADER} header in the response")
        if args.only in (None, "small"):
            bench_small(proxy, server, lay, args, res)
        if args.only in (None, "large"):
            bench_large(proxy, server, lay, args, res)
        if args.only in (None, "rss") and server is not None:
            bench_rss(proxy, server, lay, args, res)
    except (RuntimeError, subprocess.TimeoutExpired, OSError) as exc:
        print(f"    {proxy:<8} FAILED: {exc}", flush=True)
        lines = [x.strip() for x in str(exc).splitlines() if x.strip()]
        first = lines[0].split(": ", 1)[0] if lines else type(exc).__name__
        res.note(res.failures, proxy, f"{first}: {lines[-1][:300]}" if lines else first)
    finally:
        if server is not None:
            server.stop()
            if server.killed:
                res.note(res.notes, proxy, f"did not stop within {STOP_TIMEOUT:g}s of SIGTERM")
            for line in server.problems():
                res.note(res.notes, proxy, f"in its output: `{line}`")


# ---------------------------------------------------------------------------- profile


def profile_devmesh(
    lay: Layout, args: argparse.Namespace, source: DevmeshSource | None, out_dir: Path
) -> list[str]:
    """One more devmesh run, not measured: py-spy records the proxy worker during a wrk run.
    Writes a flame graph and the collapsed stacks; returns a summary of where the time goes."""
    py_spy = shutil.which("py-spy")
    if py_spy is None:
        return ["py-spy is not installed (pip install py-spy): no profile"]
    out_dir.mkdir(parents=True, exist_ok=True)
    server = Server(spec_proxy("devmesh", lay, source), lay.work)
    try:
        wait_ready(server, lay.ports["devmesh"])
        workers = serving_procs("devmesh", server)
        if not workers:
            return ["no proxy worker found: no profile"]
        pid = str(workers[0].pid)
        run_wrk(lay, lay.ports["devmesh"], max(args.warmup, 1), args.connections)
        raw = out_dir / "devmesh-proxy-small.txt"
        svg = out_dir / "devmesh-proxy-small.svg"
        summary: list[str] = []
        for fmt, path in (("raw", raw), ("flamegraph", svg)):
            record = [py_spy, "record", "--pid", pid, "--rate", "250", "--format", fmt]
            record += ["--duration", f"{args.duration:g}", "--nonblocking", "-o", str(path)]
            rec = subprocess.Popen(
                pinned(lay.client_core, record),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            time.sleep(1.0)
            cpu0 = cpu_seconds(workers)
            out = run_wrk(lay, lay.ports["devmesh"], args.duration - 1, args.connections)
            cpu = cpu_seconds(workers) - cpu0
            try:
                rec.wait(args.duration + 30)
            except subprocess.TimeoutExpired:
                rec.kill()
                rec.wait(KILL_TIMEOUT)
            if fmt == "raw":
                w = parse_wrk(out)
                summary.append(
                    f"under py-spy: {w.rps:,.0f} req/s, worker CPU {cpu / w.requests * 1e6:.1f} "
                    "us per request"
                )
        summary += summarize_stacks(raw, source.dir if source is not None else ROOT)
        print(f"    flame graph: {svg}; collapsed stacks: {raw}", flush=True)
        return summary
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        return [f"profile failed: {exc}"]
    finally:
        server.stop()


def summarize_stacks(path: Path, base: Path | None = None, top: int = 12) -> list[str]:
    """Where the sampled time goes: by kind (from the top frame and its source line), then the
    functions with the most samples on top of the stack (self) and anywhere (total)."""
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    kinds: collections.Counter[str] = collections.Counter()
    samples = 0
    with contextlib.suppress(OSError), open(path) as f:
        for line in f:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not stack or not count.isdigit():
                continue
            n = int(count)
            frames = [
                x for x in stack.split(";") if x and not x.startswith(("process ", "thread "))
            ]
            if not frames:
                continue
            samples += n
            kinds[_kind(frames[-1], base)] += n
            own[_short(frames[-1])] += n
            for fr in {_short(x) for x in frames}:
                total[fr] += n
    if not samples:
        return ["no samples"]
    out = [f"{samples} samples of the worker's main thread while it ran Python or C code, by kind:"]
    out += [f"  {n / samples:6.1%}  {kind}" for kind, n in kinds.most_common()]
    out.append("self time (C code is counted in the Python function that called it):")
    out += [f"  {n / samples:6.1%}  {fr}" for fr, n in own.most_common(top)]
    out.append("total time (the function and what it calls):")
    inner = [(fr, n) for fr, n in total.most_common() if n < 0.95 * samples]  # not the roots
    out += [f"  {n / samples:6.1%}  {fr}" for fr, n in inner[:top]]
    return out


def _kind(frame: str, base: Path | None) -> str:
    """What the code on top of the stack does, from its function and source line (py-spy names
    files relative to their `sys.path` entry: `base`, the devmesh copy, for devmesh's)."""
    m = re.fullmatch(r"(.*) \((.*?):(\d+)\)", frame)
    if m is None:
        return "other"
    func, path, lineno = m.group(1), m.group(2), int(m.group(3))
    if func == "Runner.run":
        return "event loop: uvloop's C code, epoll_wait and read() (no Python frame above)"
    text = ""
    with contextlib.suppress(OSError, IndexError, UnicodeDecodeError):
        file = Path(path)
        if not file.is_absolute() and base is not None:
            file = base / file
        text = file.read_text().splitlines()[lineno - 1]
    if func.endswith(".flush") or ".write(" in text or "writelines(" in text:
        return "socket writes: transport.write/writelines (the kernel's send path)"
    if "feed_data(" in text:
        return "httptools parsing: feed_data (C) and the objects it hands to callbacks"
    return "devmesh's Python code (the proxy's own per-request work)"


def _short(frame: str) -> str:
    # "handle (devmesh/proxy/client.py:211)" -> "handle (proxy/client.py)"
    m = re.fullmatch(r"(.*) \((.*?)(?::\d+)?\)", frame)
    if m is None:
        return frame
    path = m.group(2)
    parts = Path(path).parts
    for anchor in ("devmesh", "uvloop", "asyncio", "httptools"):
        if anchor in parts:
            path = "/".join(parts[parts.index(anchor) :])
            break
    else:
        path = Path(path).name
    return f"{m.group(1)} ({path})"


# ---------------------------------------------------------------------------- report


def fmt(metric: str, value: float | None) -> str:
    """A value in the metric's unit."""
    if value is None:
        return "n/a"
    if metric in ("p50", "p99"):
        return f"{value * 1e3:.2f} ms"
    if metric == "cpu_us":
        return f"{value:.1f} us"
    if metric == "others":
        return f"{value:.2f}"
    if metric in ("busy", "core_client", "core_proxy"):
        return f"{value * 100:.0f} %"
    if metric in ("mbps", "rss_mbps"):
        return f"{value:,.0f} MB/s"
    if metric == "large_cpu":
        return f"{value * 1e3:.0f} ms"
    if metric.startswith("rss"):
        return f"{value / MIB:.1f} MiB"
    return f"{value:,.0f}"


def spread(res: Results, metric: str, proxy: str) -> str:
    """`median (min-max)` of a metric."""
    vals = res.values(metric, proxy)
    if not vals:
        return "n/a"
    med = fmt(metric, statistics.median(vals))
    if len(vals) == 1:
        return med
    lo, hi = fmt(metric, min(vals)), fmt(metric, max(vals))
    unit = lo.split(" ", 1)[1] if " " in lo else ""
    return f"{med} ({lo.split(' ', 1)[0]}-{hi.split(' ', 1)[0]}{' ' + unit if unit else ''})"


def ratio(res: Results, metric: str, peer: str) -> str:
    """devmesh's median over the peer's."""
    ours, theirs = res.median(metric, "devmesh"), res.median(metric, peer)
    if ours is None or theirs is None or theirs == 0:
        return "n/a"
    return f"{ours / theirs:.2f}x"


NO_RATIO = frozenset({"busy", "core_client", "core_proxy", "others", "rss_mbps"})
ROWS = (
    ("small", "rps", "100-byte body: req/s (higher is better)"),
    ("small", "p99", "100-byte body: p99 latency (lower is better)"),
    ("small", "p50", "100-byte body: p50 latency"),
    ("small", "cpu_us", "100-byte body: proxy CPU per request"),
    ("small", "busy", "100-byte body: proxy CPU, share of its core"),
    ("small", "core_client", "100-byte body: core 0 busy (wrk + origin + others)"),
    ("small", "core_proxy", "100-byte body: core 1 busy (proxy + others)"),
    ("small", "others", "100-byte body: other jobs' CPU meanwhile (cores, both)"),
    ("large", "mbps", "100 MiB download: MB/s (higher is better)"),
    ("large", "large_cpu", "100 MiB download: proxy CPU per download"),
    ("rss", "rss_peak", "1 GiB download: peak RSS of the serving process (lower is better)"),
    ("rss", "rss_base", "1 GiB download: RSS before it"),
    ("rss", "rss_mbps", "1 GiB download: MB/s (client rate-limited)"),
)


def table(res: Results, args: argparse.Namespace) -> list[str]:
    """The results as markdown table rows."""
    present = [p for p in PROXIES if p in args.proxies]
    with_ratio = "devmesh" in present and "nginx" in present
    head = ["metric (median, min-max)", *present] + (["devmesh/nginx"] if with_ratio else [])
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for bench, metric, label in ROWS:
        if args.only not in (None, bench) or metric not in res.samples:
            continue
        if metric == "core_client":
            label = label.replace("core 0", f"core {args.client_core}")
        if metric == "core_proxy":
            label = label.replace("core 1", f"core {args.proxy_core}")
        if metric == "rss_mbps":
            label = label.replace("rate-limited", f"--limit-rate {args.rss_rate}")
        cells = [label] + [spread(res, metric, p) for p in present]
        if with_ratio:
            cells.append("" if metric in NO_RATIO else ratio(res, metric, "nginx"))
        out.append("| " + " | ".join(cells) + " |")
    return out


def goals(res: Results, args: argparse.Namespace) -> list[Goal]:
    """The four goals, judged on the medians, with the margin and the repeats met alone."""
    out: list[Goal] = []
    both = "devmesh" in args.proxies and "nginx" in args.proxies

    def judge(
        text: str,
        bench: str,
        metric: str,
        ok: Callable[[float, float], bool],
        margin: Callable[[float, float], float],
        show: Callable[[float, float], str],
        peer: str | None = "nginx",
    ) -> None:
        in_scope = args.only in (None, bench) and (both if peer else "devmesh" in args.proxies)
        if not in_scope:
            out.append(Goal(text, None, "not measured in this run"))
            return
        d = res.median(metric, "devmesh")
        p = res.median(metric, peer) if peer else 0.0
        if d is None or p is None:
            out.append(Goal(text, False, "no measurement: the runs failed"))
            return
        detail = f"{show(d, p)}; margin {margin(d, p):+.0%}"
        ours = res.values(metric, "devmesh")
        theirs = res.values(metric, peer) if peer else [0.0] * len(ours)
        if len(ours) == len(theirs) > 1:
            alone = sum(ok(a, b) for a, b in zip(ours, theirs, strict=True))
            detail += f"; met in {alone} of {len(ours)} repeats on their own"
        out.append(Goal(text, ok(d, p), detail, margin(d, p)))

    judge(
        "devmesh req/s >= 0.75x nginx's (100-byte body)",
        "small",
        "rps",
        lambda d, p: d >= 0.75 * p,
        lambda d, p: d / (0.75 * p) - 1,
        lambda d, p: f"{d:,.0f} vs 0.75 x {p:,.0f} = {0.75 * p:,.0f} req/s",
    )
    judge(
        "devmesh p99 latency <= 1.5x nginx's (100-byte body)",
        "small",
        "p99",
        lambda d, p: d <= 1.5 * p,
        lambda d, p: 1.5 * p / d - 1,
        lambda d, p: f"{d * 1e3:.2f} ms vs 1.5 x {p * 1e3:.2f} = {1.5 * p * 1e3:.2f} ms",
    )
    judge(
        "devmesh 100 MiB download MB/s >= 1.2x nginx's",
        "large",
        "mbps",
        lambda d, p: d >= 1.2 * p,
        lambda d, p: d / (1.2 * p) - 1,
        lambda d, p: f"{d:,.0f} vs 1.2 x {p:,.0f} = {1.2 * p:,.0f} MB/s",
    )
    judge(
        "devmesh peak proxy RSS during a 1 GiB transfer < 64 MiB",
        "rss",
        "rss_peak",
        lambda d, _: d < RSS_LIMIT,
        lambda d, _: RSS_LIMIT / d - 1,
        lambda d, _: f"{d / MIB:.1f} MiB",
        peer=None,
    )
    return out


def reading(res: Results, args: argparse.Namespace) -> list[str]:
    """What the medians say beyond pass/fail, from the numbers of this run."""
    out: list[str] = []
    med = res.median
    direct, client = med("rps", "direct"), med("core_client", "direct")
    if direct is not None:
        text = (
            f"- Ceiling: wrk straight at the origin makes {direct:,.0f} req/s with wrk and the "
            f"origin sharing core {args.client_core}"
        )
        if client is not None:
            text += f" ({client:.0%} busy)"
        text += (
            "; every proxied run has the same two on that core, so a proxy that needs less than "
            "its whole core is held back by the client side, not by itself."
        )
        out.append(text)
    others = [v for p in PROXIES for v in res.values("others", p)]
    if others:
        text = (
            f"- Other jobs on the machine used a median of {statistics.median(others):.2f} cores "
            f"(at most {max(others):.2f}) during the wrk runs kept"
        )
        retried = sum(res.retried.values())
        if retried:
            text += (
                f"; {retried} runs were measured again because other jobs used more than "
                f"{args.max_others:g} cores ("
                + ", ".join(f"{p} {n}" for p, n in res.retried.items())
                + "), and the least disturbed run kept"
            )
        out.append(text + ".")
    costs = [(p, med("cpu_us", p), med("rps", p)) for p in PROXY_NAMES]
    parts = [f"{p} {c:.1f} us ({r:,.0f} req/s)" for p, c, r in costs if c is not None and r]
    if parts:
        out.append(
            "- Proxy CPU per request (user + system time of all the proxy's processes over the "
            "requests wrk counted): " + ", ".join(parts) + "."
        )
    busy = [(p, med("busy", p)) for p in PROXY_NAMES]
    saturated = [p for p, b in busy if b is not None and b > 0.9]
    if saturated:
        out.append(
            f"- Saturated its core (> 90 % of core {args.proxy_core}): {', '.join(saturated)}; "
            "their req/s is the proxy's own limit on one core."
        )
    d_cpu, n_cpu = med("cpu_us", "devmesh"), med("cpu_us", "nginx")
    if d_cpu is not None and n_cpu is not None:
        out.append(
            f"- With both on a saturated core, req/s goes as 1 / CPU per request: 0.75x nginx's "
            f"req/s needs at most {n_cpu / 0.75:.1f} us per request from devmesh "
            f"(nginx {n_cpu:.1f} us / 0.75); it spent {d_cpu:.1f} us."
        )
        r_cpu = med("cpu_us", "relay")
        if r_cpu is not None:
            out.append(
                f"- Floor: the bare relay (same event loop and parser, no features) needs "
                f"{r_cpu:.1f} us per request ({r_cpu / n_cpu:.2f}x nginx's CPU); that leaves "
                f"{n_cpu / 0.75 - r_cpu:.1f} us for everything devmesh does on top (routing, "
                f"header rewriting both ways, trace ids, the pool, ordering, limits) within the "
                f"0.75x goal; they take {d_cpu - r_cpu:.1f} us now."
            )
    d_rps, n_rps = med("rps", "devmesh"), med("rps", "nginx")
    if d_rps and n_rps:
        c = args.connections
        out.append(
            f"- Latency: wrk keeps {c} requests in flight, so the mean latency is {c} / req/s "
            f"(Little's law): {c / d_rps * 1e3:.2f} ms for devmesh, {c / n_rps * 1e3:.2f} ms for "
            "nginx. A proxy that needs more CPU per request queues longer at every percentile; "
            "the p99 goal falls with the req/s goal."
        )
    large = [(p, med("large_cpu", p)) for p in PROXY_NAMES]
    parts = [f"{p} {c * 1e3:.0f} ms" for p, c in large if c is not None]
    if parts:
        out.append("- Proxy CPU per 100 MiB download: " + ", ".join(parts) + ".")
    return out


def tool_versions() -> dict[str, str]:
    """The version line of every tool used."""

    def first(argv: list[str], pattern: str = r".*") -> str:
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return "not installed"
        text = (done.stdout + done.stderr).strip()
        m = re.search(pattern, text)
        return m.group(0).strip() if m else (text.splitlines() or ["unknown"])[0]

    def dist(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "not installed"

    return {
        "nginx": first(["nginx", "-v"], r"nginx/\S+"),
        "haproxy": first(["haproxy", "-v"], r"HAProxy version \S+"),
        "caddy": first(["caddy", "version"], r"v?\d+\.\d+\.\d+\S*"),
        "wrk": first(["wrk", "-v"], r"wrk \S+"),
        "curl": first(["curl", "--version"], r"curl \S+"),
        "taskset": first(["taskset", "--version"], r"util-linux \S+"),
        "python": platform.python_version(),
        "uvloop": dist("uvloop"),
        "httptools": dist("httptools"),
        "psutil": dist("psutil"),
        "devmesh": dist("devmesh"),
    }


def machine(source: DevmeshSource | None) -> dict[str, str]:
    """What ran the benchmark."""
    cpu = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    info = tool_versions()
    info.update(
        nproc=str(os.cpu_count()),
        cpu=cpu or platform.processor() or "unknown",
        kernel=platform.release(),
        source=source.describe if source is not None else "not run",
    )
    return info


def commands(lay: Layout, args: argparse.Namespace) -> list[str]:
    """The exact command lines of the run (ports and cores of this run; paths shortened)."""
    rate = None if args.rss_rate in ("", "0") else args.rss_rate
    lines = [
        "# origin (nginx, 1 worker) and clients on core "
        f"{lay.client_core}, each proxy on core {lay.proxy_core}",
        shlex.join(spec_origin(lay).argv),
    ]
    for proxy in PROXY_NAMES:
        if proxy in args.proxies:
            spec = spec_proxy(proxy, lay, None)
            prefix = {"caddy": "GOMAXPROCS=1 ", "devmesh": "PYTHONPATH=$DEVMESH_COPY "}
            line = shlex.join(spec.argv).replace(shlex.quote(sys.executable), "python3")
            lines.append(prefix.get(proxy, "") + line)
    port = "$PORT"
    lines += [
        f"# per proxy ({port}: {', '.join(f'{p} {lay.ports[p]}' for p in args.proxies)})",
        shlex.join(wrk_argv(lay, 0, args.warmup, args.connections)).replace(":0/", f":{port}/")
        + "  # warm-up",
        shlex.join(wrk_argv(lay, 0, args.duration, args.connections)).replace(":0/", f":{port}/"),
        shlex.join(curl_argv(lay, 0, "/large")).replace(":0/", f":{port}/")
        + f"  # 1 + {args.downloads} times",
        shlex.join(curl_argv(lay, 0, "/huge", rate)).replace(":0/", f":{port}/")
        + "  # RSS sampled every 20 ms",
    ]
    return [line.replace(str(lay.work), "$WORK") for line in lines]


def configs(lay: Layout, args: argparse.Namespace) -> list[str]:
    """Every config file, as markdown blocks (paths shortened)."""
    files = [("origin: nginx.conf", "nginx", origin_conf(lay))]
    makers: dict[str, tuple[str, str, Callable[[Layout], str]]] = {
        "devmesh": ("devmesh: devmesh.toml", "toml", devmesh_toml),
        "nginx": ("nginx: nginx.conf", "nginx", nginx_proxy_conf),
        "haproxy": ("HAProxy: haproxy.cfg", "", haproxy_conf),
        "caddy": ("Caddy: Caddyfile", "", caddyfile),
    }
    for proxy in PROXY_NAMES:
        if proxy in args.proxies and proxy in makers:  # the relay has no config: its source
            title, lang, make = makers[proxy]
            files.append((title, lang, make(lay)))
    out: list[str] = []
    for title, lang, text in files:
        text = text.replace(str(lay.work), "$WORK").expandtabs(4).rstrip("\n")
        out += [f"{title}:", "", f"```{lang}", text, "```", ""]
    return out


def markdown(
    res: Results,
    args: argparse.Namespace,
    lay: Layout,
    info: dict[str, str],
    load: tuple[str, str],
    profile: list[str],
) -> str:
    """The "## Proxy" section of docs/benchmarks.md."""
    present = [p for p in PROXIES if p in args.proxies]
    named = [p if p != "direct" else "direct (no proxy)" for p in present]
    lines = [
        "## Proxy",
        "",
        f"{', '.join(named)} in front of the same nginx origin, side by side in the same run "
        "(each proxy started afresh every repeat, the order rotated every repeat), "
        f"{args.repeat} repeat{'s' if args.repeat > 1 else ''}, medians with min-max.",
        "",
        "```sh",
        shlex.join(["python3", *sys.argv]),
        "```",
        "",
        f"Run on {dt.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}: {info['nproc']} cores "
        f"({info['cpu']}), Linux {info['kernel']}, Python {info['python']}, devmesh "
        f"{info['devmesh']} ({info['source']}), uvloop {info['uvloop']}, httptools "
        f"{info['httptools']}; {info['nginx']}, {info['haproxy']}, Caddy {info['caddy']}, "
        f"{info['wrk']}, {info['curl']}, taskset from {info['taskset']}. Load average "
        f"before / after: {load[0]} / {load[1]}.",
        "",
        *table(res, args),
        "",
        "Goals (from the issue, judged on the medians):",
        "",
    ]
    judged = goals(res, args)
    for goal in judged:
        lines.append(f"- **{verdict(goal)}**: {goal.text} ({goal.detail})")
    close = [g.text for g in judged if g.margin is not None and abs(g.margin) < CLOSE_CALL]
    lines += ["", "The margin is how far the median is inside (+) or outside (-) the limit."]
    if close:
        lines[-1] += (
            f" Within {CLOSE_CALL:.0%} of the limit ({'; '.join(close)}), the verdict is inside "
            "this machine's run-to-run noise and can flip between runs."
        )
    notes = reading(res, args)
    if notes:
        lines += ["", "Reading the results:", "", *notes]
    failures = [f"{p}: {f}" for p, fs in res.failures.items() for f in fs]
    if failures:
        lines += ["", "Runs that failed (no sample recorded):", ""] + [f"- {f}" for f in failures]
    extra = [f"{p}: {n}" for p, ns in res.notes.items() for n in ns]
    if extra:
        lines += ["", "Notes:", ""] + [f"- {n}" for n in extra]
    if profile:
        lines += ["", "Profile of the devmesh proxy worker (py-spy, a separate run):", "", "```"]
        lines += [line.replace(str(ROOT) + "/", "") for line in profile]
        lines += ["```"]
    lines += [
        "",
        "Method. One nginx origin (1 worker) serves the whole run: `/small` a fixed 100-byte "
        "body (`return 200`), `/large` a 100 MiB file, `/huge` a sparse 1 GiB file (made with "
        "`truncate` in the temp dir, deleted afterwards), by sendfile. The origin, wrk and curl "
        f"run on core {lay.client_core}; each proxy runs pinned to core {lay.proxy_core} "
        "(`taskset` on its launch: devmesh's supervisor, watchdog, control and proxy workers, "
        "nginx's master and worker, HAProxy's and Caddy's threads all inherit it). Every "
        "request carries `Host: origin` (devmesh routes by it; the others have one route). "
        f"*Small*: `wrk -t1 -c{args.connections}` for {args.duration:g} s after a {args.warmup:g} "
        "s warm-up; req/s and the p50/p99 of wrk's `--latency`; the proxy's CPU is the user + "
        "system time of all its processes (psutil) over the requests counted; core load from "
        "`/proc/stat`; the other jobs' CPU is the busy time of both cores less the CPU time of "
        "the proxy, the origin, wrk, this script and the kernel's threads (kworkers): a run "
        f"during which other jobs used more than {args.max_others:g} cores is measured again "
        f"(at most {args.retries} times) and the least disturbed run kept. *Large*: "
        f"{args.downloads} `curl -o /dev/null` downloads after one "
        "warm-up, MB/s = 10^6 bytes/s from curl's size and total time (connection set-up "
        "included), the median per repeat. *RSS*: one 1 GiB download with curl "
        f"`--limit-rate {args.rss_rate}` (a client slower than the origin, so the proxy must "
        "stop reading the origin rather than buffer), the RSS of the proxy's serving processes "
        "(devmesh's `proxy-1` worker, nginx's worker, the HAProxy and Caddy processes) sampled "
        "with psutil every 20 ms, the peak. *direct*: the same clients straight at the origin. "
        "devmesh runs with trace ids on (the proxy always sets `X-DevMesh-Trace-ID`); it has no "
        'metrics yet, so "metrics on" is not part of this run. devmesh runs from a frozen copy '
        "of the source named above (`--source`).",
        "",
        "Noise. The machine is a shared, noisy 2-core VM: other jobs run beside the benchmark "
        "(see the load averages), on both cores. The min-max ranges show the spread between "
        "repeats; ratios are of the medians.",
        "",
        "Commands (`$WORK` is the run's temporary directory, `$DEVMESH_COPY` the copy of "
        "devmesh under test):",
        "",
        "```sh",
        *commands(lay, args),
        "```",
        "",
        "<details><summary>Config files</summary>",
        "",
        *configs(lay, args),
        "</details>",
        "",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    p.add_argument("--repeat", type=int, default=3, help="repeats (default 3)")
    p.add_argument("--duration", type=float, default=10.0, help="wrk seconds (default 10)")
    p.add_argument("--warmup", type=float, default=2.0, help="wrk warm-up seconds (default 2)")
    p.add_argument("--connections", type=int, default=50, help="wrk connections (default 50)")
    p.add_argument("--downloads", type=int, default=5, help="100 MiB downloads per repeat")
    p.add_argument(
        "--max-others",
        type=float,
        default=0.25,
        help="cores other jobs may use during a wrk run before it is measured again (0.25)",
    )
    p.add_argument("--retries", type=int, default=2, help="wrk runs measured again at most")
    p.add_argument("--rss-rate", default="200M", help="curl --limit-rate of the 1 GiB download")
    p.add_argument("--only", choices=("small", "large", "rss"), help="run one benchmark")
    p.add_argument(
        "--proxies",
        type=lambda s: [x for x in s.split(",") if x],
        default=list(PROXIES),
        help="comma-separated subset of " + ",".join(PROXIES),
    )
    p.add_argument("--port", type=int, default=18080, help="devmesh's port; origin +1, others +2..")
    p.add_argument("--proxy-core", type=int, default=1, help="core of the proxies (default 1)")
    p.add_argument("--client-core", type=int, default=0, help="core of origin and clients")
    p.add_argument("--profile", type=Path, help="profile devmesh with py-spy into this dir")
    add_output_options(p, source="worktree")
    args = p.parse_args(argv)
    unknown = set(args.proxies) - set(PROXIES)
    if unknown:
        p.error(f"unknown proxies: {', '.join(sorted(unknown))}")
    if args.repeat < 1 or args.duration < 1 or args.downloads < 1 or args.connections < 1:
        p.error("need --repeat, --duration, --downloads and --connections >= 1")
    cores = set(range(os.cpu_count() or 1))
    if (os.cpu_count() or 1) < 2:
        args.proxy_core = args.client_core = None  # nothing to pin apart
    elif args.proxy_core not in cores or args.client_core not in cores:
        p.error(f"cores must be among {sorted(cores)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; 0 when every goal in scope passed, 1 otherwise."""
    args = parse_args(argv)
    missing = [t for t in ("nginx", "wrk", "curl", "taskset") if shutil.which(t) is None]
    missing += [p for p in ("haproxy", "caddy") if p in args.proxies and shutil.which(p) is None]
    if missing:
        print(f"missing: {', '.join(missing)} (see the docstring: apt-get install ...)")
        return 2
    ports = {"devmesh": args.port, "nginx": args.port + 2, "haproxy": args.port + 3}
    ports |= {"caddy": args.port + 4, "relay": args.port + 5, "direct": args.port + 1}
    busy = [str(p) for p in sorted(set(ports.values())) if not port_free(p)]
    if busy:
        print(f"ports in use on 127.0.0.1: {', '.join(busy)} (choose others with --port)")
        return 2
    if args.client_core is not None:
        os.sched_setaffinity(0, {args.client_core})  # keep this script off the proxy's core
    work = Path(tempfile.mkdtemp(prefix="bench-proxy-"))
    os.chmod(work, 0o755)
    lay = Layout(work, args.port + 1, ports, args.proxy_core, args.client_core)
    source = DevmeshSource(args.source) if "devmesh" in args.proxies else None
    if source is not None:
        source.compile()
    origin: Server | None = None
    try:
        lay.www.mkdir()
        with open(lay.www / "large", "wb") as f:
            for _ in range(LARGE_BYTES // MIB):
                f.write(os.urandom(MIB))
        if args.only in (None, "rss"):
            with open(lay.www / "huge", "wb") as f:
                f.truncate(HUGE_BYTES)
            with open(lay.www / "huge", "rb") as f:  # into the page cache, as /large is
                while f.read(16 * MIB):
                    pass
        origin = Server(spec_origin(lay), work)
        wait_ready(origin, lay.origin_port)
        ORIGIN_PROCS[:] = origin.procs()
        return measure(args, lay, source)
    except RuntimeError as exc:
        print(f"origin failed: {exc}")
        return 2
    finally:
        if origin is not None:
            origin.stop()
        if source is not None:
            source.remove()
        shutil.rmtree(work, ignore_errors=True)


def measure(args: argparse.Namespace, lay: Layout, source: DevmeshSource | None) -> int:
    """Every repeat of every proxy, then the report; 0 when no goal in scope failed."""
    info = machine(source)
    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(
        f"devmesh {info['devmesh']} ({info['source']}), {info['nginx']}, {info['haproxy']}, "
        f"caddy {info['caddy']}, {info['wrk']}, {info['nproc']} cores, load {load_before}",
        flush=True,
    )
    res = Results()
    proxies = [p for p in PROXIES if p in args.proxies]
    if args.only == "rss":
        proxies = [p for p in proxies if p != "direct"]
    t_begin = time.monotonic()
    for r in range(args.repeat):
        order = proxies[r % len(proxies) :] + proxies[: r % len(proxies)]
        print(f"repeat {r + 1}/{args.repeat} (order: {', '.join(order)})", flush=True)
        for proxy in order:
            run_proxy(proxy, lay, args, res, source)
    profile: list[str] = []
    if args.profile is not None and "devmesh" in proxies:
        print("profiling devmesh's proxy worker with py-spy", flush=True)
        profile = profile_devmesh(lay, args, source, args.profile)
    load_after = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"\ndone in {time.monotonic() - t_begin:.0f}s, load {load_after}\n")
    print("\n".join(table(res, args)))
    print()
    judged = goals(res, args)
    for goal in judged:
        print(f"{verdict(goal):<12} {goal.text}: {goal.detail}")
    for note in reading(res, args):
        print(note)
    for proxy, items in res.failures.items():
        for item in items:
            print(f"failed run: {proxy}: {item}")
    for proxy, items in res.notes.items():
        for item in items:
            print(f"note: {proxy}: {item}")
    for line in profile:
        print(line)
    if args.markdown is not None:
        section = markdown(res, args, lay, info, (load_before, load_after), profile)
        write_section(args.markdown, "Proxy", section)
        print(f"\nwrote {args.markdown}")
    return 0 if all(g.passed is not False for g in judged) else 1


if __name__ == "__main__":
    sys.exit(main())

"""The dashboard: its page, assets and live WebSocket feed (served by the control worker).

The page is static (`static/`, no build step, nothing from the internet); everything it shows
comes over one WebSocket, `/v1/events`, pushed by the server:

- `{"type": "state", "status": ..., "peers": ..., "routes": ...}`: the node as `devmesh status`,
  `peers` and `status --routes` show it; on connect and on every `StateUpdate` of the parent.
- `{"type": "stats", "time": T, "services": {NAME: {"rps", "eps", "errors", "cpu", "rss"}}}`:
  once a second, requests and 5xx answers per second through the proxy (from the workers'
  metric files), the share of 5xx in percent, and CPU% / resident memory of the service's
  process tree (None when it has no process).
- `{"type": "log", "service": NAME, "reset": bool, "lines": [{"time", "text", "system"}]}`:
  the tail of the service the client subscribed to with `{"subscribe": NAME}` (`reset` on the
  first batch: the last lines of its file), then the lines as they are appended.

Each connection has one task that sends all of it, cancelled when the client goes away; with no
client connected nothing is read or measured.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import logging
import os
import re
import time
from collections import deque
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import BaseRoute, Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.websockets import WebSocket, WebSocketDisconnect

from devmesh.logs.reader import Followed, LineParser, LogRecord
from devmesh.logs.writer import SYSTEM_MARK

if TYPE_CHECKING:
    from devmesh.control.worker import ControlRole

log = logging.getLogger("devmesh.control")

STATIC = Path(__file__).parent / "static"
# Our own files only: no inline script or style, no other origin, and never inside a frame.
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
STATS_EVERY = 1.0  # seconds between two `stats` messages
LOG_EVERY = 0.25  # how often the subscribed log file is looked at
RATE_WINDOW = 3.0  # rates over the last few seconds: the proxy writes its counts once a second
LOG_HISTORY = 100  # lines sent on subscribe
LOG_HISTORY_BYTES = 256 * 1024  # read at most this much of the file's end for them
LOG_BATCH = 500  # at most this many lines in one message (a flood is cut, and says so)
LOG_LINE_CHARS = 4000
# Colour and cursor sequences a service may print: the page shows text.
ANSI = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)|[@-Z\\-_])")


def routes(role: ControlRole) -> list[BaseRoute]:
    """The dashboard's routes: the page, its assets and the event feed."""
    sampler = Sampler(role)

    async def page(request: Request) -> Response:
        return FileResponse(STATIC / "index.html", headers=PAGE_HEADERS)

    async def events(websocket: WebSocket) -> None:
        await Feed(role, sampler, websocket).run()

    return [
        Route("/", page, methods=["GET"]),
        Mount("/static", app=StaticFiles(directory=STATIC), name="static"),
        WebSocketRoute("/v1/events", events),
    ]


# ---- one client ----


class Feed:
    """One WebSocket client: reads its subscriptions; one task pushes everything it is sent."""

    def __init__(self, role: ControlRole, sampler: Sampler, websocket: WebSocket) -> None:
        self.role = role
        self.sampler = sampler
        self.ws = websocket
        self.service: str | None = None  # whose log the client follows
        self.wake = asyncio.Event()  # the client changed its subscription
        self.tail: LogTail | None = None

    async def run(self) -> None:
        """Accept, push until the client leaves, then stop the pusher."""
        await self.ws.accept()
        pusher = asyncio.create_task(self._push())
        try:
            while True:
                message = await self.ws.receive_json()
                if isinstance(message, dict) and "subscribe" in message:
                    wanted = message["subscribe"]
                    self.service = str(wanted) if wanted else None
                    self.wake.set()
        except (WebSocketDisconnect, ValueError, KeyError):
            pass  # gone, or sent something that is not JSON: either way we are done
        finally:
            pusher.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await pusher
            if self.tail is not None:
                self.tail.close()
            with contextlib.suppress(Exception):
                await self.ws.close()

    async def _push(self) -> None:
        try:
            await self._push_forever()
        except asyncio.CancelledError:
            raise
        except Exception:
            # The client would wait for nothing: close, and its page reconnects.
            log.exception("dashboard feed failed")
            with contextlib.suppress(Exception):
                await self.ws.close(1011)

    async def _push_forever(self) -> None:
        changed = self.role.changed
        if self.role.state is not None:
            await self._send_state()
        next_stats = time.monotonic()
        next_log = next_stats
        while True:
            now = time.monotonic()
            if now >= next_stats:
                next_stats = now + STATS_EVERY
                await self.ws.send_json(await self.sampler.sample())
            if self.wake.is_set():
                self.wake.clear()
                await self._subscribe()
                next_log = now + LOG_EVERY
            elif self.tail is not None and now >= next_log:
                next_log = now + LOG_EVERY
                # In a thread: a service that floods its log must not stall the event loop.
                records, skipped = await asyncio.to_thread(self.tail.poll, LOG_BATCH)
                await self._send_log(records, reset=False, skipped=skipped)
            due = min(next_stats, next_log) if self.tail is not None else next_stats
            await wait_any((changed, self.wake), max(0.0, due - time.monotonic()))
            if changed.is_set():
                changed = self.role.changed  # the fresh event for the next update
                await self._send_state()

    async def _send_state(self) -> None:
        doc = self.role.state_document()
        if doc is not None:
            await self.ws.send_json({"type": "state", **doc})

    async def _subscribe(self) -> None:
        if self.tail is not None:
            self.tail.close()
            self.tail = None
        if self.service is None or not valid_name(self.service):
            return
        tail = self.tail = LogTail(Path(self.role.settings["logs"]), self.service)
        await self._send_log(await asyncio.to_thread(tail.history, LOG_HISTORY), reset=True)

    async def _send_log(self, records: list[LogRecord], *, reset: bool, skipped: int = 0) -> None:
        if not records and not reset:
            return
        assert self.tail is not None
        lines = [log_line(r) for r in records]
        if skipped:
            lines.insert(0, {"time": "", "text": f"… {skipped} lines skipped", "system": True})
        await self.ws.send_json(
            {"type": "log", "service": self.tail.service, "reset": reset, "lines": lines}
        )


async def wait_any(events: Iterable[asyncio.Event], timeout: float) -> None:
    """Until one of `events` is set or `timeout` seconds have passed."""
    waiters = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


def valid_name(name: str) -> bool:
    """A service name that cannot point outside the log directory."""
    return bool(name) and "/" not in name and "\0" not in name and not name.startswith(".")


def log_line(record: LogRecord) -> dict[str, Any]:
    """One log line as the page gets it: ISO time (UTC), text without colour codes."""
    text = ANSI.sub("", record.text)[:LOG_LINE_CHARS]
    system = text.startswith(SYSTEM_MARK.decode())
    return {"time": record.time.isoformat(), "text": text, "system": system}


# ---- the log tail ----


class LogTail:
    """The end of one service's log file, then what is appended to it (across rotations)."""

    def __init__(self, log_dir: Path, service: str) -> None:
        self.service = service
        self.file = Followed(service, log_dir / f"{service}.log", LineParser(service))
        self.file.open(at_end=True)

    def history(self, n: int) -> list[LogRecord]:
        """The last `n` lines before the point the tail follows from."""
        f = self.file
        if f.fd < 0 or f.pos == 0:
            return []
        start = max(0, f.pos - LOG_HISTORY_BYTES)
        data = os.pread(f.fd, f.pos - start, start)
        lines = data.split(b"\n")
        if lines and lines[-1] == b"":
            lines.pop()
        if start > 0 and lines:
            lines.pop(0)  # begins mid-line
        return f.parser.parse(lines[-n:], fallback=datetime.now(UTC))

    def poll(self, limit: int) -> tuple[list[LogRecord], int]:
        """The lines appended since the last poll (the last `limit` of them), and how many
        more there were."""
        self.file.poll()
        skipped = max(0, len(self.file.lines) - limit)
        if skipped:
            del self.file.lines[:skipped]  # only the lines that will be sent are parsed
        return self.file.take_records(), skipped

    def close(self) -> None:
        """Close the file."""
        self.file.close()


# ---- rates and resources, shared by every client ----


class Sampler:
    """Requests per second by service from the proxy's metric files, and CPU / memory of each
    service's processes. Computed at most once a second however many clients ask."""

    def __init__(self, role: ControlRole) -> None:
        self.role = role
        self._lock = asyncio.Lock()
        self._last: dict[str, Any] | None = None
        self._last_at = 0.0
        # (monotonic time, {service: (requests, 5xx)}) of the last few seconds.
        self._counts: deque[tuple[float, dict[str, tuple[float, float]]]] = deque()
        self._procs: dict[int, psutil.Process] = {}

    async def sample(self) -> dict[str, Any]:
        """The `stats` message for now (the last one if it is fresh enough)."""
        async with self._lock:
            now = time.monotonic()
            if self._last is None or now - self._last_at >= STATS_EVERY * 0.8:
                self._last = await asyncio.to_thread(self._measure, self._pids())
                self._last_at = now
            return self._last

    def _pids(self) -> dict[str, int | None]:
        state = self.role.state
        services = state.status.get("services", ()) if state is not None else ()
        return {s["name"]: s.get("pid") for s in services}

    def _measure(self, pids: dict[str, int | None]) -> dict[str, Any]:
        now = time.monotonic()
        counts = request_counts(str(self.role.settings["metrics"]))
        history = self._counts
        # Readings from before a pause (no client connected) would average over the pause.
        if history and now - history[-1][0] > RATE_WINDOW:
            history.clear()
        history.append((now, counts))
        while len(history) > 1 and now - history[1][0] >= RATE_WINDOW:
            history.popleft()
        then, before = history[0]
        span = now - then
        services: dict[str, dict[str, Any]] = {}
        for name in sorted(set(pids) | set(counts)):
            if not name:
                continue  # requests that matched no service
            total, errors = counts.get(name, (0.0, 0.0))
            total0, errors0 = before.get(name, (total, errors))
            # A counter only grows; less than before means the files were started again.
            requests = max(0.0, total - total0) / span if span > 0 else 0.0
            failed = max(0.0, errors - errors0) / span if span > 0 else 0.0
            services[name] = {
                "rps": round(requests, 3),
                "eps": round(failed, 3),
                "errors": round(100 * failed / requests, 2) if requests else 0.0,
                "cpu": None,
                "rss": None,
            }
        seen: set[int] = set()
        for name, pid in pids.items():
            if pid:
                cpu, rss = self._usage(pid, seen)
                services[name]["cpu"], services[name]["rss"] = cpu, rss
        for gone in self._procs.keys() - seen:
            del self._procs[gone]
        return {"type": "stats", "time": time.time(), "services": services}

    def _usage(self, pid: int, seen: set[int]) -> tuple[float | None, int | None]:
        """CPU% (of one core) and resident bytes of `pid` and its descendants."""
        root = self._process(pid)
        if root is None:
            return None, None
        try:
            tree = [root, *root.children(recursive=True)]
        except psutil.Error:
            return None, None
        cpu, rss = 0.0, 0
        for proc in tree:
            proc = self._process(proc.pid) or proc
            try:
                with proc.oneshot():
                    cpu += proc.cpu_percent(None)
                    rss += proc.memory_info().rss
            except psutil.Error:
                continue  # ended while we looked
            seen.add(proc.pid)
        return round(cpu, 1), rss

    def _process(self, pid: int) -> psutil.Process | None:
        """The process `pid`, the same object as last time (its CPU times are the baseline)
        unless the pid now names another process."""
        cached = self._procs.get(pid)
        if cached is not None and cached.is_running():
            return cached
        try:
            proc = psutil.Process(pid)
        except psutil.Error:
            return None
        self._procs[pid] = proc
        return proc


def request_counts(directory: str) -> dict[str, tuple[float, float]]:
    """Per service: requests the proxy answered, and how many of them with a 5xx, since start
    (from the counter files of the proxy workers, dead ones included)."""
    from prometheus_client.multiprocess import MultiProcessCollector

    files = glob.glob(os.path.join(directory, "counter_*.db"))
    try:
        metrics = MultiProcessCollector.merge(files, accumulate=True)  # type: ignore[no-untyped-call]
    except (FileNotFoundError, ValueError):
        return {}  # the directory was being emptied (a new run), or a file is half-written
    out: dict[str, tuple[float, float]] = {}
    for metric in metrics:
        if metric.name != "devmesh_requests":
            continue
        for sample in metric.samples:
            if not sample.name.endswith("_total"):
                continue
            service = sample.labels.get("service", "")
            total, errors = out.get(service, (0.0, 0.0))
            failed = sample.labels.get("code", "").startswith("5")
            out[service] = (total + sample.value, errors + (sample.value if failed else 0.0))
    return out

"""The parent's log sink: raw service output to the terminal, rotating files and an in-memory tail.

The supervisor reads each service's pipe in large chunks and hands the bytes to `LogSink.feed`;
once per loop iteration it calls `LogSink.flush`. This is the hot path of `devmesh up`, so no
Python code here runs once per line: a chunk gets one timestamp, its complete lines are found
with one `rfind`, and the prefixes are inserted with `bytes.replace` (ARCHITECTURE §8).
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

# The name on devmesh's own terminal lines, and the narrowest the name column gets.
DEVMESH_NAME = "devmesh"
# honcho's palette (cyan, yellow, green, magenta, red, blue, then their intense forms), as SGR
# codes; a service keeps its colour for the whole run because it is picked by registration order.
PALETTE: tuple[str, ...] = (
    "36",
    "33",
    "32",
    "35",
    "31",
    "34",
    "36;1",
    "33;1",
    "32;1",
    "35;1",
    "31;1",
    "34;1",
)
_SYSTEM_COLOR = "1"  # bold: devmesh's own lines stand out without taking a service's colour
_RESET = "\x1b[0m"

# `YYYY-MM-DDTHH:MM:SS.ffffff` + one space: fixed width, so files sort and parse by position.
TIMESTAMP_WIDTH = 26
# The marker of devmesh's own lines inside a service's file.
SYSTEM_MARK = b"[devmesh] "
# A partial line longer than this is emitted on its own, so a service that never writes a
# newline cannot make the parent buffer without bound.
MAX_PARTIAL = 64 * 1024


def want_color(fd: int) -> bool:
    """Whether to colour output to `fd`: a TTY, `NO_COLOR` unset or empty, and TERM not dumb."""
    try:
        tty = os.isatty(fd)
    except OSError:
        return False
    return tty and not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb"


def color_for(index: int) -> str:
    """The SGR colour code of the `index`-th registered service (the palette wraps around)."""
    return PALETTE[index % len(PALETTE)]


def line_prefix(hms: str, name: str, width: int, color: str | None) -> str:
    """`HH:MM:SS name    | `, with the part before the space coloured when `color` is given.

    The writer and `devmesh logs` both build their prefixes here so that they look the same.
    """
    head = f"{hms} {name.ljust(width)} |"
    if color is None:
        return head + " "
    return f"\x1b[{color}m{head}{_RESET} "


def write_all(fd: int, data: bytes) -> None:
    """Write all of `data` to `fd`, resuming after partial writes, EINTR and EAGAIN."""
    view = memoryview(data)
    while view:
        try:
            written = os.write(fd, view)
        except InterruptedError:
            continue
        except BlockingIOError:
            # Someone made the fd non-blocking (a shared TTY); waiting here is what a blocking
            # write would have done, and the brief allows the parent to block on its terminal.
            select.select([], [fd], [])
            continue
        view = view[written:]


class _Service:
    """Per-service state of a `LogSink`: the unfinished line, the file and the in-memory tail."""

    __slots__ = (
        "color",
        "fd",
        "file_queue",
        "name",
        "path",
        "pending",
        "prefix",
        "prefix_nl",
        "prefix_second",
        "size",
        "tail",
        "tail_count",
        "write_failed",
    )

    def __init__(self, name: str, path: Path, fd: int, color: str | None) -> None:
        self.name = name
        self.path = path
        self.fd = fd
        self.color = color
        self.size = os.fstat(fd).st_size  # a restarted mesh appends, and rotation must count it
        self.pending = b""
        self.file_queue: list[bytes] = []
        # Terminal prefix for the current second and width; -1 forces a rebuild.
        self.prefix_second = -1
        self.prefix = b""
        self.prefix_nl = b""
        # Blocks of complete lines (joined by b"\n", no trailing newline) with their line count;
        # `tail()` splits them only when asked.
        self.tail: deque[tuple[bytes, int]] = deque()
        self.tail_count = 0
        self.write_failed = False


class LogSink:
    """Turns raw service output into prefixed terminal lines, rotating files and an in-memory tail.

    Single-threaded: the supervisor's loop calls every method. Terminal and file output is only
    queued by `feed`/`end`/`system` and written by `flush`, one write per destination.
    """

    def __init__(
        self,
        terminal_fd: int | None,
        *,
        color: bool,
        log_dir: Path,
        max_bytes: int = 10 * 2**20,
        backups: int = 3,
        tail_lines: int = 200,
        clock: Callable[[], int] = time.time_ns,
        echo_services: bool = True,
    ) -> None:
        if max_bytes < 1 or backups < 0 or tail_lines < 1:
            raise ValueError(
                f"LogSink: max_bytes ({max_bytes}) and tail_lines ({tail_lines}) must be "
                f"positive and backups ({backups}) not negative"
            )
        self._terminal_fd = terminal_fd
        # False: only devmesh's own lines reach terminal_fd (a detached supervisor's log file;
        # service output is in the service files already).
        self._echo_services = echo_services
        self._color = color
        self._log_dir = log_dir
        self._max_bytes = max_bytes
        self._backups = backups
        self._tail_lines = tail_lines
        self._clock = clock  # wall clock in ns; tests pass a fake one
        self._services: dict[str, _Service] = {}
        self._width = len(DEVMESH_NAME)
        self._terminal_queue: list[bytes] = []
        self._dirty: dict[str, _Service] = {}  # services with queued file data, in feed order
        self._closed = False
        # Formatted forms of the current wall-clock second, rebuilt when the second changes.
        self._second = -1
        self._hms = ""
        self._utc = b""
        self._system_prefix = b""
        self._system_prefix_nl = b""
        #: devmesh's own lines below this level are not shown (`[log] level`, `--log-level`).
        self.level = logging.INFO
        #: Why terminal output stopped (the terminal went away), or None while it is written.
        self.terminal_error: OSError | None = None
        log_dir.mkdir(parents=True, exist_ok=True, mode=0o700)

    # -- registration -------------------------------------------------------------------------

    def open(self, name: str) -> None:
        """Register a service: its file `log_dir/<name>.log` is opened for appending. Idempotent."""
        if name in self._services:
            return
        self._check_open()
        if not name or name in (".", "..") or "/" in name or "\0" in name:
            raise ValueError(f"LogSink.open: {name!r} cannot be a log file name")
        path = self._log_dir / f"{name}.log"
        color = color_for(len(self._services)) if self._color else None
        self._services[name] = _Service(name, path, _open_append(path), color)
        if len(name) > self._width:
            # Every prefix already built has the old width.
            self._width = len(name)
            self._second = -1
            for svc in self._services.values():
                svc.prefix_second = -1

    # -- the hot path -------------------------------------------------------------------------

    def feed(self, name: str, data: bytes) -> None:
        """Take bytes just read from a service's pipe: complete lines are queued, a partial kept.

        `name` must have been `open`ed (KeyError otherwise).
        """
        svc = self._services[name]
        last = data.rfind(b"\n")
        if last < 0:
            if not data:
                return
            pending = svc.pending + data if svc.pending else data
            if len(pending) <= MAX_PARTIAL:
                svc.pending = pending
                return
            # Too long to keep waiting for its newline: it becomes a line of its own.
            svc.pending = b""
            self._emit(svc, pending)
            return
        block = svc.pending + data[:last] if svc.pending else data[:last]
        rest = data[last + 1 :]
        if len(rest) > MAX_PARTIAL:
            block = b"%s\n%s" % (block, rest)
            rest = b""
        svc.pending = rest
        self._emit(svc, block)

    def end(self, name: str) -> None:
        """The service's pipe reached EOF: its unfinished last line is emitted with a newline."""
        svc = self._services[name]
        if svc.pending:
            pending, svc.pending = svc.pending, b""
            self._emit(svc, pending)

    def lines(self, name: str, block: bytes) -> None:
        """Whole lines devmesh writes among a service's own (the proxy's request lines), in its
        file, its tail and on the terminal; the service is opened if it was not."""
        self.open(name)
        self._emit(self._services[name], block)

    def raw(self, block: bytes) -> None:
        """Whole lines for the terminal just as they are (JSON request lines, for a pipe)."""
        self._check_open()
        if self._terminal_fd is not None:
            self._terminal_queue += (block, b"\n")

    def _emit(self, svc: _Service, block: bytes) -> None:
        """Queue `block` (complete lines joined by b"\\n", final newline left off) everywhere."""
        now = self._clock()
        second = now // 1_000_000_000
        if second != self._second:
            self._tick(second)
        file_prefix = b"%s.%06d " % (self._utc, now // 1000 % 1_000_000)
        file_body = block.replace(b"\n", b"\n" + file_prefix)
        # The prefix inserted once per line tells how many lines there are without a scan.
        lines = (len(file_body) - len(block)) // len(file_prefix) + 1
        svc.file_queue += (file_prefix, file_body, b"\n")
        self._dirty[svc.name] = svc
        if self._terminal_fd is not None and self._echo_services:
            if svc.prefix_second != second:
                svc.prefix = line_prefix(self._hms, svc.name, self._width, svc.color).encode()
                svc.prefix_nl = b"\n" + svc.prefix
                svc.prefix_second = second
            self._terminal_queue += (svc.prefix, block.replace(b"\n", svc.prefix_nl), b"\n")
        self._add_tail(svc, block, lines)

    def _add_tail(self, svc: _Service, block: bytes, lines: int) -> None:
        tail = svc.tail
        tail.append((block, lines))
        svc.tail_count += lines
        # Drop whole old blocks while the rest still holds tail_lines lines.
        while svc.tail_count - tail[0][1] >= self._tail_lines:
            svc.tail_count -= tail.popleft()[1]

    def _tick(self, second: int) -> None:
        self._second = second
        self._hms = time.strftime("%H:%M:%S", time.localtime(second))
        self._utc = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)).encode()
        color = _SYSTEM_COLOR if self._color else None
        self._system_prefix = line_prefix(self._hms, DEVMESH_NAME, self._width, color).encode()
        self._system_prefix_nl = b"\n" + self._system_prefix

    # -- devmesh's own messages ---------------------------------------------------------------

    def rotate_at(self, max_bytes: int, backups: int) -> None:
        """New rotation limits (`[log] max_size` and `backups`, after a reload): the next
        batch written to each file follows them."""
        self._max_bytes, self._backups = max_bytes, backups

    def system(self, text: str, service: str | None = None, level: int = logging.INFO) -> None:
        """Show devmesh's own message as a `devmesh` line; with `service`, also log it in that file.

        A service that was not opened yet is opened, so "waiting for db" can precede its start.
        Below `self.level` (`--log-level`) a line is not shown, but still goes in the file.
        """
        self._check_open()
        if level < self.level and service is None:
            return
        block = text.rstrip("\n").encode("utf-8", "replace")
        now = self._clock()
        second = now // 1_000_000_000
        if second != self._second:
            self._tick(second)
        if self._terminal_fd is not None and level >= self.level:
            self._terminal_queue += (
                self._system_prefix,
                block.replace(b"\n", self._system_prefix_nl),
                b"\n",
            )
        if service is None:
            return
        self.open(service)
        svc = self._services[service]
        file_prefix = b"%s.%06d %s" % (self._utc, now // 1000 % 1_000_000, SYSTEM_MARK)
        file_body = block.replace(b"\n", b"\n" + file_prefix)
        svc.file_queue += (file_prefix, file_body, b"\n")
        self._dirty[svc.name] = svc
        marked = SYSTEM_MARK + block.replace(b"\n", b"\n" + SYSTEM_MARK)
        self._add_tail(svc, marked, block.count(b"\n") + 1)

    # -- output -------------------------------------------------------------------------------

    def flush(self) -> None:
        """Write everything queued: each service's file data, then the terminal in one loop."""
        self._check_open()
        if self._dirty:
            dirty = list(self._dirty.values())
            self._dirty.clear()
            for svc in dirty:
                data = b"".join(svc.file_queue)
                svc.file_queue.clear()
                self._write_file(svc, data)
        if self._terminal_queue:
            data = b"".join(self._terminal_queue)
            self._terminal_queue.clear()
            if self._terminal_fd is not None:
                try:
                    write_all(self._terminal_fd, data)
                except OSError as exc:
                    # The terminal is gone (closed pty, `| head` exited): services keep running
                    # and their files keep filling; there is nobody left to print to.
                    self.terminal_error = exc
                    self._terminal_fd = None

    def _write_file(self, svc: _Service, data: bytes) -> None:
        try:
            if svc.size and svc.size + len(data) > self._max_bytes:
                self._rotate(svc)
            write_all(svc.fd, data)
        except OSError as exc:
            # A full or read-only disk must not stop the mesh; say it once, the terminal still
            # shows the lines, and try again with the next batch.
            if not svc.write_failed:
                svc.write_failed = True
                self.system(f"cannot write {svc.path}: {exc.strerror or exc}; lines are dropped")
            return
        svc.size += len(data)
        svc.write_failed = False

    def _rotate(self, svc: _Service) -> None:
        """`x.log` → `x.log.1` → … → `x.log.<backups>` (the oldest goes), then a new `x.log`."""
        base = str(svc.path)
        for i in range(self._backups - 1, 0, -1):
            with contextlib.suppress(FileNotFoundError):
                os.replace(f"{base}.{i}", f"{base}.{i + 1}")
        # Renamed while still open: if anything below fails, the batch goes to the old file.
        if self._backups:
            os.replace(base, f"{base}.1")
        else:
            os.unlink(base)
        fd = _open_append(svc.path)
        os.close(svc.fd)
        svc.fd = fd
        svc.size = 0

    # -- queries and shutdown -----------------------------------------------------------------

    def tail(self, name: str, n: int = 20) -> list[str]:
        """The last `n` lines of a service from memory (at least `tail_lines` are kept), decoded."""
        if n <= 0:
            return []
        blocks = [block for block, _ in self._services[name].tail]
        lines = b"\n".join(blocks).split(b"\n")[-n:] if blocks else []
        return [line.decode("utf-8", "replace") for line in lines]

    @property
    def services(self) -> list[str]:
        """The registered services, in registration order."""
        return list(self._services)

    def close(self) -> None:
        """Emit every unfinished line, flush, and close the files. Idempotent."""
        if self._closed:
            return
        for name in self._services:
            self.end(name)
        self.flush()
        self._closed = True
        for svc in self._services.values():
            if svc.fd >= 0:
                os.close(svc.fd)
                svc.fd = -1

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError("LogSink is closed")

    def __enter__(self) -> LogSink:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _open_append(path: Path) -> int:
    # O_APPEND: every batch lands at the end even if another devmesh appends to the same file.
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)

"""Reading the per-service log files that `LogSink` writes, for `devmesh logs [-f] [-n N]`.

It works on the files alone, so it needs no running mesh. Each line of a file is
`YYYY-MM-DDTHH:MM:SS.ffffff <text>` in UTC; lines of several services are merged by that time.
"""

from __future__ import annotations

import heapq
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from devmesh.logs.writer import TIMESTAMP_WIDTH, color_for, line_prefix

_READ_SIZE = 1 << 20


@dataclass(frozen=True)
class LogRecord:
    """One line of a service's log: when it was read (UTC), whose it is, and its text."""

    time: datetime
    service: str
    text: str


def services_in(log_dir: Path) -> list[str]:
    """The services that have a log file (current or rotated) in `log_dir`, sorted by name."""
    try:
        entries = os.listdir(log_dir)
    except FileNotFoundError:
        return []
    names = set()
    for entry in entries:
        if entry.endswith(".log"):
            names.add(entry[:-4])
        else:
            base, _, number = entry.rpartition(".")
            if number.isdigit() and base.endswith(".log"):
                names.add(base[:-4])
    names.discard("")
    return sorted(names)


def read_records(log_dir: Path, services: Sequence[str], n: int | None = None) -> list[LogRecord]:
    """All lines of the services' current and rotated files, oldest first, merged by time.

    An empty `services` means every service in `log_dir`. Within one service the file order is
    kept. With `n`, only the last `n` lines overall (only those are parsed).
    """
    if n is not None and n <= 0:
        return []
    per_service = [_read_service(log_dir, name, n) for name in services or services_in(log_dir)]
    merged = list(heapq.merge(*per_service, key=_by_time))
    return merged if n is None else merged[-n:]


def _by_time(record: LogRecord) -> datetime:
    return record.time


def _files_of(log_dir: Path, service: str) -> list[Path]:
    """`x.log.N`, …, `x.log.1`, `x.log` (oldest first), those that exist."""
    prefix = f"{service}.log."
    rotated: list[tuple[int, Path]] = []
    try:
        entries = os.listdir(log_dir)
    except FileNotFoundError:
        return []
    for entry in entries:
        if entry.startswith(prefix) and entry[len(prefix) :].isdigit():
            rotated.append((int(entry[len(prefix) :]), log_dir / entry))
    files = [path for _, path in sorted(rotated, reverse=True)]
    current = log_dir / f"{service}.log"
    if current.exists():
        files.append(current)
    return files


def _read_service(log_dir: Path, service: str, n: int | None) -> list[LogRecord]:
    # Newest file first, so that with `n` the older files are never opened.
    chunks: list[list[bytes]] = []
    count = 0
    fallback: datetime | None = None
    for path in reversed(_files_of(log_dir, service)):
        try:
            data = path.read_bytes()
            mtime = path.stat().st_mtime
        except FileNotFoundError:  # rotated away while we listed: its lines are in the next one
            continue
        if fallback is None:
            fallback = datetime.fromtimestamp(mtime, UTC)
        if not data:
            continue
        lines = data.split(b"\n")
        if lines[-1] == b"":
            lines.pop()
        chunks.append(lines)
        count += len(lines)
        if n is not None and count >= n:
            break
    raw = [line for lines in reversed(chunks) for line in lines]
    if n is not None:
        raw = raw[-n:]
    return LineParser(service).parse(raw, fallback or datetime.now(UTC))


@dataclass
class LineParser:
    """Turns raw file lines of one service into records, remembering the last good time."""

    service: str
    last_time: datetime | None = None
    # The lines of one written chunk share a stamp: parse it once.
    _stamp: bytes = b""
    _stamp_time: datetime | None = None

    def parse(self, lines: Iterable[bytes], fallback: datetime) -> list[LogRecord]:
        """Records for `lines`; a line without a valid stamp gets the previous record's time.

        Undated lines before the first dated one get its time (or `fallback` if none is dated).
        """
        records: list[LogRecord] = []
        undated_head: list[bytes] = []
        service = self.service
        for line in lines:
            when, text = self._split(line)
            if when is None:
                if self.last_time is None:
                    undated_head.append(line)
                    continue
                when = self.last_time
            elif undated_head:
                records += (_record(when, service, raw) for raw in undated_head)
                undated_head = []
            self.last_time = when
            records.append(LogRecord(when, service, text.decode("utf-8", "replace")))
        if undated_head:
            records += (_record(fallback, service, raw) for raw in undated_head)
            self.last_time = fallback
        return records

    def _split(self, line: bytes) -> tuple[datetime | None, bytes]:
        stamp = line[:TIMESTAMP_WIDTH]
        if stamp == self._stamp and self._stamp_time is not None and len(line) > TIMESTAMP_WIDTH:
            return self._stamp_time, line[TIMESTAMP_WIDTH + 1 :]
        if (
            len(line) <= TIMESTAMP_WIDTH
            or line[TIMESTAMP_WIDTH] != 0x20
            or line[10] != 0x54  # "T"
            or line[19] != 0x2E  # "."
        ):
            return None, line
        try:
            when = datetime.fromisoformat(stamp.decode("ascii")).replace(tzinfo=UTC)
        except ValueError:  # includes UnicodeDecodeError
            return None, line
        self._stamp, self._stamp_time = stamp, when
        return when, line[TIMESTAMP_WIDTH + 1 :]


def _record(when: datetime, service: str, raw: bytes) -> LogRecord:
    return LogRecord(when, service, raw.decode("utf-8", "replace"))


# -- follow -----------------------------------------------------------------------------------


@dataclass
class Followed:
    """One followed file: the open descriptor, its identity and the unfinished last line."""

    service: str
    path: Path
    parser: LineParser
    fd: int = -1
    ident: tuple[int, int] = (0, 0)
    pos: int = 0
    partial: bytes = b""
    lines: list[bytes] = field(default_factory=list)

    def open(self, at_end: bool) -> bool:
        """Open the current file, at its end or its start; False if there is none yet."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        st = os.fstat(fd)  # of what we opened, not of whatever the path names a moment later
        self.fd = fd
        self.ident = (st.st_dev, st.st_ino)
        self.pos = os.lseek(fd, 0, os.SEEK_END) if at_end else 0
        return True

    def close(self) -> None:
        """Close the descriptor, if open."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def poll(self) -> None:
        """Collect the complete lines appended since the last poll into `lines`."""
        # A file that appears after follow() began is new from its first byte.
        if self.fd < 0 and not self.open(at_end=False):
            return
        self._drain(self.fd)
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return  # mid-rotation: keep the old file until the new one exists
        if (st.st_dev, st.st_ino) != self.ident:
            # Rotated: whatever was written before the rename is in the old file, so finish it,
            # then any file rotated in between, then the new one from its start.
            self._drain(self.fd)
            self._end_partial()
            for path in self._rotated_since():
                self._read_whole(path)
            self.close()
            if self.open(at_end=False):
                self._drain(self.fd)
        elif st.st_size < self.pos:
            # Truncated in place (copytruncate or a user's `> x.log`): start over.
            self._end_partial()
            self.pos = os.lseek(self.fd, 0, os.SEEK_SET)
            self._drain(self.fd)

    def _drain(self, fd: int) -> None:
        while True:
            data = os.read(fd, _READ_SIZE)
            if not data:
                return
            self.pos += len(data)
            self._take(data)

    def _take(self, data: bytes) -> None:
        data = self.partial + data if self.partial else data
        last = data.rfind(b"\n")
        if last < 0:
            self.partial = data
            return
        self.lines += data[:last].split(b"\n")
        self.partial = data[last + 1 :]

    def _end_partial(self) -> None:
        # The writer only writes whole lines, so an unfinished one at a file's end is torn.
        if self.partial:
            self.lines.append(self.partial)
            self.partial = b""

    def _rotated_since(self) -> list[Path]:
        """Rotated files newer than the one we had open (oldest first), if it is still there."""
        newer: list[Path] = []
        i = 1
        while True:
            path = Path(f"{self.path}.{i}")
            try:
                st = os.stat(path)
            except FileNotFoundError:
                return []  # ours was dropped (or never kept): we cannot tell what is new
            if (st.st_dev, st.st_ino) == self.ident:
                return newer[::-1]
            newer.append(path)
            i += 1

    def _read_whole(self, path: Path) -> None:
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return
        self._take(data)
        self._end_partial()

    def take_records(self) -> list[LogRecord]:
        """The records of the lines collected so far; they are consumed."""
        if not self.lines:
            return []
        lines, self.lines = self.lines, []
        return self.parser.parse(lines, fallback=datetime.now(UTC))


def follow(
    log_dir: Path,
    services: Sequence[str],
    *,
    poll: float = 0.1,
    stop: Callable[[], bool] = lambda: False,
    on_open: Callable[[], None] = lambda: None,
) -> Iterator[LogRecord]:
    """Yield the lines appended to the services' logs after the call, like `tail -F`.

    `on_open` runs once the files are open at their ends and before anything is yielded: the
    place to print the history, so that no line falls between the history and the follow.

    Survives rotation (inode change) and truncation, and picks up files that appear later. An
    empty `services` means every service, including ones whose file appears later. `stop()` is
    checked at every poll; closing the generator also ends it and closes its files.
    """
    every = not services
    followed: dict[str, Followed] = {}

    def add(name: str, at_end: bool) -> None:
        entry = Followed(name, log_dir / f"{name}.log", LineParser(name))
        entry.open(at_end=at_end)
        followed[name] = entry

    for name in services or services_in(log_dir):
        add(name, at_end=True)
    on_open()
    try:
        while not stop():
            if every:
                for name in services_in(log_dir):
                    if name not in followed:
                        add(name, at_end=False)
            for entry in followed.values():
                entry.poll()
            batches = [entry.take_records() for entry in followed.values()]
            records = list(heapq.merge(*batches, key=_by_time))
            if records:
                yield from records
            else:
                time.sleep(poll)
    finally:
        for entry in followed.values():
            entry.close()


def format_record(rec: LogRecord, *, width: int, color: bool, index: int = 0) -> str:
    """The record as the terminal shows it: local `HH:MM:SS`, padded name, ` | `, text."""
    hms = rec.time.astimezone().strftime("%H:%M:%S")
    return line_prefix(hms, rec.service, width, color_for(index) if color else None) + rec.text

"""Tests for devmesh.logs: the parent's LogSink and the log-file reader."""

from __future__ import annotations

import os
import pty
import random
import re
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from devmesh.logs import (
    LogRecord,
    LogSink,
    follow,
    format_record,
    read_records,
    services_in,
    want_color,
)

T0 = 1_700_000_000  # 2023-11-14T22:13:20Z
TERMINAL_LINE = re.compile(rb"^(\d\d:\d\d:\d\d) (\S+) +\| (.*)$", re.DOTALL)
FILE_LINE = re.compile(rb"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}) (.*)$", re.DOTALL)


class FakeClock:
    """A wall clock in ns that moves only when told to."""

    def __init__(self, seconds: int = T0, us: int = 0) -> None:
        self.ns = seconds * 1_000_000_000 + us * 1000

    def __call__(self) -> int:
        return self.ns

    def advance(self, seconds: int) -> None:
        self.ns += seconds * 1_000_000_000


@pytest.fixture
def terminal(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """A plain file standing in for the terminal: (write fd, path to read back)."""
    path = tmp_path / "terminal.out"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    yield fd, path
    os.close(fd)


def hms(seconds: float) -> bytes:
    return time.strftime("%H:%M:%S", time.localtime(seconds)).encode()


def terminal_lines(path: Path) -> list[tuple[str, bytes]]:
    """(service, text) of every uncoloured terminal line; fails on a line without the prefix."""
    data = path.read_bytes()
    assert data == b"" or data.endswith(b"\n")
    out = []
    for line in data.split(b"\n")[:-1]:
        m = TERMINAL_LINE.match(line)
        assert m is not None, line[:100]
        out.append((m.group(2).decode(), m.group(3)))
    return out


def file_lines(path: Path) -> list[bytes]:
    """The texts of a log file, checking every line's timestamp prefix."""
    data = path.read_bytes()
    assert data == b"" or data.endswith(b"\n"), "a file must never end inside a line"
    out = []
    for line in data.split(b"\n")[:-1]:
        m = FILE_LINE.match(line)
        assert m is not None, line[:100]
        out.append(m.group(2))
    return out


# -- LogSink: lines -----------------------------------------------------------------------------


def test_partial_lines_across_feeds_are_never_torn(
    tmp_path: Path, terminal: tuple[int, Path]
) -> None:
    fd, out = terminal
    sink = LogSink(fd, color=False, log_dir=tmp_path / "logs")
    sink.open("web")
    for piece in (b"hel", b"lo\nwor", b"", b"l", b"d\nfoo", b"\n"):
        sink.feed("web", piece)
        sink.flush()
    assert terminal_lines(out) == [("web", b"hello"), ("web", b"world"), ("web", b"foo")]
    sink.feed("web", b"no newline yet")
    sink.flush()
    assert len(terminal_lines(out)) == 3, "a partial line must wait for its newline"
    sink.end("web")
    sink.end("web")  # nothing pending any more: no empty line
    sink.flush()
    assert terminal_lines(out)[3:] == [("web", b"no newline yet")]
    sink.close()
    assert file_lines(tmp_path / "logs" / "web.log") == [
        b"hello",
        b"world",
        b"foo",
        b"no newline yet",
    ]


def test_no_line_lost_torn_or_reordered_at_200k_lines(
    tmp_path: Path, terminal: tuple[int, Path]
) -> None:
    fd, out = terminal
    rng = random.Random(1234)
    names = ["api", "worker", "db", "frontend-dev"]
    per_service = 50_000
    streams = {}
    for name in names:
        lines = [
            b"%s %06d %s" % (name.encode(), i, b"x" * rng.randrange(0, 120))
            for i in range(per_service)
        ]
        streams[name] = b"".join(line + b"\n" for line in lines)
    offsets = dict.fromkeys(names, 0)
    sink = LogSink(fd, color=False, log_dir=tmp_path / "logs", max_bytes=1 << 30)
    for name in names:
        sink.open(name)
    active = list(names)
    while active:
        name = rng.choice(active)
        # Mostly pipe-sized reads, sometimes tiny ones that split lines anywhere.
        size = rng.choice((1, 7, 100, 4096, 65536)) * rng.randrange(1, 4)
        start = offsets[name]
        sink.feed(name, streams[name][start : start + size])
        offsets[name] = start + size
        if offsets[name] >= len(streams[name]):
            active.remove(name)
        if rng.random() < 0.3:
            sink.flush()
    sink.close()

    seen: dict[str, list[bytes]] = {name: [] for name in names}
    for name, text in terminal_lines(out):
        seen[name].append(text)
    for name in names:
        expected = streams[name].split(b"\n")[:-1]
        assert seen[name] == expected, f"terminal lines of {name} differ"
        assert file_lines(tmp_path / "logs" / f"{name}.log") == expected


def test_tail_returns_the_last_lines_from_memory(tmp_path: Path) -> None:
    sink = LogSink(None, color=False, log_dir=tmp_path, tail_lines=50)
    sink.open("a")
    for i in range(0, 10_000, 10):
        sink.feed("a", b"".join(b"line %d\n" % j for j in range(i, i + 10)))
    sink.feed("a", b"partial")
    assert sink.tail("a", 3) == ["line 9997", "line 9998", "line 9999"]
    assert sink.tail("a", 50) == [f"line {j}" for j in range(9950, 10_000)]
    assert sink.tail("a", 0) == []
    assert len(sink.tail("a", 10_000)) < 100, "the tail keeps about tail_lines lines"
    sink.end("a")
    assert sink.tail("a", 1) == ["partial"]
    sink.close()


def test_invalid_utf8_passes_through_and_decodes_with_replacement(
    tmp_path: Path, terminal: tuple[int, Path]
) -> None:
    fd, out = terminal
    sink = LogSink(fd, color=False, log_dir=tmp_path)
    sink.open("bin")
    sink.feed("bin", b"ok \xff\xfe\x80 end\n\xc3")  # the last byte starts a 2-byte sequence
    sink.feed("bin", b"\xa9 split\n")
    sink.close()
    assert terminal_lines(out) == [("bin", b"ok \xff\xfe\x80 end"), ("bin", b"\xc3\xa9 split")]
    assert file_lines(tmp_path / "bin.log") == [b"ok \xff\xfe\x80 end", b"\xc3\xa9 split"]
    assert sink.tail("bin", 2) == ["ok \ufffd\ufffd\ufffd end", "é split"]
    assert [r.text for r in read_records(tmp_path, ["bin"])] == [
        "ok \ufffd\ufffd\ufffd end",
        "é split",
    ]


def test_a_100k_line_without_newline_is_emitted_and_bounded(
    tmp_path: Path, terminal: tuple[int, Path]
) -> None:
    fd, out = terminal
    big = bytes(random.Random(7).choice(b"abcdefgh") for _ in range(100 * 1024))
    sink = LogSink(fd, color=False, log_dir=tmp_path)
    sink.open("one")
    sink.feed("one", big)
    sink.flush()
    assert terminal_lines(out) == [("one", big)], "too long to wait for a newline"

    sink.open("pieces")
    for i in range(0, len(big), 1024):
        sink.feed("pieces", big[i : i + 1024])
    sink.flush()
    first = [text for name, text in terminal_lines(out) if name == "pieces"]
    assert len(first) == 1 and 64 * 1024 < len(first[0]) <= 65 * 1024
    sink.feed("pieces", b"\nnext\n")
    sink.flush()
    texts = [text for name, text in terminal_lines(out) if name == "pieces"]
    assert b"".join(texts[:2]) == big and texts[2:] == [b"next"]
    assert file_lines(tmp_path / "pieces.log") == texts

    sink.open("after")
    sink.feed("after", b"short\n" + big)  # a long unfinished line after a complete one
    sink.flush()
    assert [text for name, text in terminal_lines(out) if name == "after"] == [b"short", big]
    sink.close()


def test_carriage_returns_are_kept(tmp_path: Path, terminal: tuple[int, Path]) -> None:
    fd, out = terminal
    sink = LogSink(fd, color=False, log_dir=tmp_path)
    sink.open("bar")
    sink.feed("bar", b"10%\r50%\r100%\r\n")
    sink.close()
    assert terminal_lines(out) == [("bar", b"10%\r50%\r100%\r")]


# -- LogSink: look ------------------------------------------------------------------------------


def test_prefix_format_without_colour(tmp_path: Path, terminal: tuple[int, Path]) -> None:
    fd, out = terminal
    clock = FakeClock(T0, us=250_000)
    sink = LogSink(fd, color=False, log_dir=tmp_path, clock=clock)
    sink.open("api")
    sink.feed("api", b"one\ntwo\n")
    sink.system("api exited with code 1", service="api")
    clock.advance(1)
    sink.open("long-worker")  # widens the name column from len("devmesh") to 11
    sink.feed("api", b"three\n")
    sink.close()
    t0, t1 = hms(T0), hms(T0 + 1)
    assert out.read_bytes() == (
        t0 + b" api     | one\n"
        + t0 + b" api     | two\n"
        + t0 + b" devmesh | api exited with code 1\n"
        + t1 + b" api         | three\n"
    )  # fmt: skip
    assert (tmp_path / "api.log").read_bytes() == (
        b"2023-11-14T22:13:20.250000 one\n"
        b"2023-11-14T22:13:20.250000 two\n"
        b"2023-11-14T22:13:20.250000 [devmesh] api exited with code 1\n"
        b"2023-11-14T22:13:21.250000 three\n"
    )
    assert sink.tail("api", 2) == ["[devmesh] api exited with code 1", "three"]


def test_colour_per_service_by_registration_order(
    tmp_path: Path, terminal: tuple[int, Path]
) -> None:
    fd, out = terminal
    sink = LogSink(fd, color=True, log_dir=tmp_path, clock=FakeClock())
    for name in ("a", "b"):
        sink.open(name)
        sink.feed(name, b"hi \x1b[31mred\x1b[0m\n")  # the service's own colours are kept
    sink.system("up")
    sink.close()
    t = hms(T0)
    assert out.read_bytes().split(b"\n")[:-1] == [
        b"\x1b[36m" + t + b" a       |\x1b[0m hi \x1b[31mred\x1b[0m",
        b"\x1b[33m" + t + b" b       |\x1b[0m hi \x1b[31mred\x1b[0m",
        b"\x1b[1m" + t + b" devmesh |\x1b[0m up",
    ]
    assert b"\x1b" not in (tmp_path / "a.log").read_bytes().replace(b"\x1b[31m", b"").replace(
        b"\x1b[0m", b""
    ), "files get no prefix colours"


def test_format_record_looks_like_the_terminal(tmp_path: Path, terminal: tuple[int, Path]) -> None:
    fd, out = terminal
    sink = LogSink(fd, color=False, log_dir=tmp_path / "logs", clock=FakeClock(T0, us=500_000))
    sink.open("web")
    sink.feed("web", b"GET / 200\n")
    sink.close()
    [rec] = read_records(tmp_path / "logs", ["web"])
    assert rec == LogRecord(datetime(2023, 11, 14, 22, 13, 20, 500000, UTC), "web", "GET / 200")
    assert (format_record(rec, width=7, color=False) + "\n").encode() == out.read_bytes()
    coloured = format_record(rec, width=3, color=True, index=1)
    assert coloured == f"\x1b[33m{hms(T0).decode()} web |\x1b[0m GET / 200"


def test_want_color(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TERM", "xterm-256color")
    monkeypatch.delenv("NO_COLOR", raising=False)
    r, w = os.pipe()
    master, slave = pty.openpty()
    try:
        assert not want_color(w)
        assert want_color(slave)
        monkeypatch.setenv("NO_COLOR", "")
        assert want_color(slave), "an empty NO_COLOR does not count"
        monkeypatch.setenv("NO_COLOR", "1")
        assert not want_color(slave)
        monkeypatch.delenv("NO_COLOR")
        monkeypatch.setenv("TERM", "dumb")
        assert not want_color(slave)
    finally:
        for fd in (r, w, master, slave):
            os.close(fd)
    assert not want_color(w), "a closed fd is not a terminal"


# -- LogSink: files -----------------------------------------------------------------------------


def test_rotation_keeps_every_line_and_read_records_orders_them(tmp_path: Path) -> None:
    sink = LogSink(None, color=False, log_dir=tmp_path, max_bytes=2000, backups=50)
    sink.open("svc")
    expected = [f"line {i:04d}" for i in range(600)]
    for i in range(0, 600, 7):
        sink.feed("svc", "".join(f"{t}\n" for t in expected[i : i + 7]).encode())
        sink.flush()
    sink.close()
    rotated = sorted(tmp_path.glob("svc.log.*"), key=lambda p: -int(p.suffix[1:]))
    assert len(rotated) > 10
    in_files: list[bytes] = []
    for path in [*rotated, tmp_path / "svc.log"]:
        assert path.stat().st_size <= 2000
        in_files += file_lines(path)  # also checks that no file ends inside a line
    assert in_files == [t.encode() for t in expected]
    assert [r.text for r in read_records(tmp_path, ["svc"])] == expected
    assert services_in(tmp_path) == ["svc"]


def test_rotation_drops_only_the_oldest_beyond_backups(tmp_path: Path) -> None:
    sink = LogSink(None, color=False, log_dir=tmp_path, max_bytes=500, backups=2)
    sink.open("s")
    for i in range(200):
        sink.feed("s", b"%d\n" % i)
        sink.flush()
    sink.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.log", "s.log.1", "s.log.2"]
    texts = [int(r.text) for r in read_records(tmp_path, ["s"])]
    assert texts == list(range(texts[0], 200)) and texts[0] > 0


def test_open_is_idempotent_and_appends_to_an_existing_file(tmp_path: Path) -> None:
    (tmp_path / "s.log").write_bytes(b"2023-11-14T22:00:00.000000 from last run\n" * 10)
    sink = LogSink(None, color=False, log_dir=tmp_path, max_bytes=430, backups=1)
    sink.open("s")
    sink.open("s")
    sink.feed("s", b"new\n")
    sink.close()
    # 410 bytes were there already; the new line (31) would pass 430: the old file was rotated.
    assert (tmp_path / "s.log.1").read_bytes().count(b"from last run") == 10
    assert file_lines(tmp_path / "s.log") == [b"new"]
    with pytest.raises(ValueError, match="cannot be a log file name"):
        LogSink(None, color=False, log_dir=tmp_path).open("../escape")


def test_a_vanished_terminal_does_not_stop_the_files(tmp_path: Path) -> None:
    r, w = os.pipe()
    os.close(r)
    sink = LogSink(w, color=False, log_dir=tmp_path)
    sink.open("s")
    sink.feed("s", b"a\n")
    sink.flush()
    assert isinstance(sink.terminal_error, BrokenPipeError)
    sink.feed("s", b"b\n")
    sink.close()
    os.close(w)
    assert file_lines(tmp_path / "s.log") == [b"a", b"b"]


# -- reader -------------------------------------------------------------------------------------


def write_log(path: Path, *lines: tuple[float, str]) -> None:
    """Append lines in the sink's file format, at the given POSIX times."""
    with path.open("ab") as f:
        for when, text in lines:
            stamp = datetime.fromtimestamp(when, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")
            f.write(f"{stamp} {text}\n".encode())


def test_read_records_merges_services_by_time(tmp_path: Path) -> None:
    write_log(tmp_path / "a.log", (T0 + 1, "a1"), (T0 + 3, "a3"), (T0 + 3, "a3bis"))
    write_log(tmp_path / "a.log.1", (T0 + 0, "a0"))
    write_log(tmp_path / "b.log", (T0 + 2, "b2"), (T0 + 3, "b3"), (T0 + 5, "b5"))
    write_log(tmp_path / "c.log", (T0 + 4, "c4"))
    texts = [r.text for r in read_records(tmp_path, ["a", "b"])]
    assert texts == ["a0", "a1", "b2", "a3", "a3bis", "b3", "b5"]
    # An empty list means all services; ties go to the earlier service in the list.
    assert [r.text for r in read_records(tmp_path, [])] == [
        "a0",
        "a1",
        "b2",
        "a3",
        "a3bis",
        "b3",
        "c4",
        "b5",
    ]
    assert [r.service for r in read_records(tmp_path, ["b", "a"])][3:5] == ["b", "a"]
    assert read_records(tmp_path, ["nope"]) == []
    assert services_in(tmp_path) == ["a", "b", "c"]
    assert services_in(tmp_path / "missing") == []


def test_read_records_last_n(tmp_path: Path) -> None:
    for i in range(5):  # many rotated files: with n, only the newest are needed
        write_log(
            tmp_path / f"a.log.{i + 1}", *[(T0 - 1000 * (i + 1) + j, f"old{i}") for j in range(50)]
        )
    write_log(tmp_path / "a.log", (T0 + 1, "a1"), (T0 + 4, "a4"))
    write_log(tmp_path / "b.log", (T0 + 2, "b2"), (T0 + 3, "b3"))
    assert [r.text for r in read_records(tmp_path, ["a", "b"], n=3)] == ["b2", "b3", "a4"]
    assert [r.text for r in read_records(tmp_path, ["a", "b"], n=1)] == ["a4"]
    assert read_records(tmp_path, ["a"], n=0) == []
    everything = read_records(tmp_path, ["a", "b"])
    assert len(everything) == 254
    assert read_records(tmp_path, ["a", "b"], n=1000) == everything
    assert [r.time for r in everything] == sorted(r.time for r in everything)


def test_lines_without_a_timestamp_do_not_crash(tmp_path: Path) -> None:
    path = tmp_path / "t.log"
    path.write_bytes(
        b"torn head\n"
        b"2023-11-14T22:13:21.000000 good\n"
        b"\xff\xfe garbage\n"
        b"\n"
        b"2023-11-14T22:13:2\n"  # torn in the middle of a stamp
        b"2023-13-45T99:99:99.000000 impossible date\n"
        b"2023-11-14T22:13:25.000000 good again\n"
        b"torn tail without newline"
    )
    records = read_records(tmp_path, ["t"])
    second = datetime(2023, 11, 14, 22, 13, 21, tzinfo=UTC)
    later = datetime(2023, 11, 14, 22, 13, 25, tzinfo=UTC)
    assert [(r.time, r.text) for r in records] == [
        (second, "torn head"),  # no earlier record: the next good time
        (second, "good"),
        (second, "\ufffd\ufffd garbage"),
        (second, ""),
        (second, "2023-11-14T22:13:2"),
        (second, "2023-13-45T99:99:99.000000 impossible date"),
        (later, "good again"),
        (later, "torn tail without newline"),
    ]
    (tmp_path / "u.log").write_bytes(b"no stamp at all\n")
    [only] = read_records(tmp_path, ["u"])
    assert only.text == "no stamp at all" and only.time.tzinfo is UTC


# -- follow -------------------------------------------------------------------------------------


class Follower:
    """Runs follow() in a thread; tests wait on it with bounded waits, never bare sleeps."""

    def __init__(self, log_dir: Path, services: list[str]) -> None:
        self.records: list[LogRecord] = []
        self._cond = threading.Condition()
        self._started = threading.Event()
        self._stop = threading.Event()

        def stop() -> bool:
            self._started.set()  # first called after follow() has opened the existing files
            return self._stop.is_set()

        def run() -> None:
            for rec in follow(log_dir, services, poll=0.005, stop=stop):
                with self._cond:
                    self.records.append(rec)
                    self._cond.notify_all()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        assert self._started.wait(10), "follow() did not start"

    def wait_for(self, count: int) -> list[LogRecord]:
        with self._cond:
            assert self._cond.wait_for(lambda: len(self.records) >= count, timeout=10), (
                f"follow() saw {len(self.records)} of {count} lines"
            )
            return list(self.records)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        assert not self._thread.is_alive()


def test_follow_sees_appended_lines_and_survives_rotation(tmp_path: Path) -> None:
    sink = LogSink(None, color=False, log_dir=tmp_path, max_bytes=1500, backups=5)
    sink.open("a")
    sink.feed("a", b"before follow\n")
    sink.flush()
    follower = Follower(tmp_path, ["a", "late"])
    expected: list[tuple[str, str]] = []
    # Paced: the follower catches up after every batch, and each batch rotates the file.
    for batch in range(6):
        lines = [f"a {batch} {i:03d} {'.' * 20}" for i in range(30)]
        sink.feed("a", "".join(f"{t}\n" for t in lines).encode())
        sink.flush()
        expected += [("a", t) for t in lines]
        follower.wait_for(len(expected))
    # A burst of three rotations before the follower may look: the rotated files still hold them.
    for batch in range(6, 9):
        lines = [f"a {batch} {i:03d} {'.' * 20}" for i in range(30)]
        sink.feed("a", "".join(f"{t}\n" for t in lines).encode())
        sink.flush()
        expected += [("a", t) for t in lines]
    sink.open("late")  # a file that appears after follow() began is read from its start
    sink.feed("late", b"hello from late\n")
    sink.flush()
    expected.append(("late", "hello from late"))
    seen = follower.wait_for(len(expected))
    follower.stop()
    sink.close()
    assert sorted(tmp_path.glob("a.log.*"))
    assert [(r.service, r.text) for r in seen if r.service == "a"] == expected[:-1]
    assert [(r.service, r.text) for r in seen if r.service == "late"] == expected[-1:]
    assert len(seen) == len(expected)


def test_follow_handles_truncation_and_every_service(tmp_path: Path) -> None:
    write_log(tmp_path / "x.log", (T0, "old"))
    follower = Follower(tmp_path, [])
    write_log(tmp_path / "x.log", (T0 + 1, "one"))
    follower.wait_for(1)
    (tmp_path / "x.log").write_bytes(b"")  # truncated in place
    write_log(tmp_path / "x.log", (T0 + 2, "two"))
    write_log(tmp_path / "y.log", (T0 + 3, "new service"))
    seen = follower.wait_for(3)
    follower.stop()
    assert [r.text for r in seen] == ["one", "two", "new service"]

"""The watchdog process itself: run as `python -I -S watchdog_main.py FD NODE_ID`.

It imports nothing but the standard library's core (no site, no devmesh package), so it costs
a few MB. It reads `+g PGID` / `-g PGID` / `+p PID` / `-p PID` lines from fd FD; when that pipe
reaches EOF (the supervisor is gone, however it died) it SIGKILLs every group and pid it was
told about, and every process carrying `DEVMESH_INSTANCE=<NODE_ID>.<n>` (the ones that left
their service's group).
"""

from __future__ import annotations

import os
import signal
import sys

MARK = b"DEVMESH_INSTANCE="


def scan_proc(node_id: str) -> dict[str, list[int]] | None:
    """Processes whose environment marks them as this node's, by mark; None without /proc."""
    needle = MARK + node_id.encode() + b"."
    found: dict[str, list[int]] = {}
    me = os.getpid()
    try:
        entries = os.listdir("/proc")
    except FileNotFoundError:
        return None
    for entry in entries:
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                data = f.read()
        except OSError:
            continue
        start = data.find(needle)
        if start < 0 or (start > 0 and data[start - 1] != 0):
            continue
        end = data.find(b"\0", start)
        value = data[start + len(MARK) : end if end >= 0 else len(data)]
        found.setdefault(value.decode(errors="replace"), []).append(int(entry))
    return found


def _kill(pid: int, group: bool) -> None:
    try:
        if group:
            os.killpg(pid, signal.SIGKILL)
        else:
            os.kill(pid, signal.SIGKILL)
    except OSError:
        pass


def watch(read_fd: int, node_id: str) -> None:
    """Collect registrations until EOF, then kill everything registered or marked."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(sig, signal.SIG_IGN)
    groups: set[int] = set()
    pids: set[int] = set()
    pending = b""
    while True:
        try:
            data = os.read(read_fd, 65536)
        except InterruptedError:
            continue
        except OSError:
            break
        if not data:
            break
        pending += data
        *lines, pending = pending.split(b"\n")
        for line in lines:
            op, _, num = line.partition(b" ")
            target = groups if op in (b"+g", b"-g") else pids
            if op[:1] == b"+":
                target.add(int(num))
            else:
                target.discard(int(num))
    for pgid in groups:
        _kill(pgid, group=True)
    for pid in pids:
        _kill(pid, group=False)
    for marked in (scan_proc(node_id) or {}).values():
        for pid in marked:
            _kill(pid, group=False)


if __name__ == "__main__":
    watch(int(sys.argv[1]), sys.argv[2])

"""The orphan watchdog: one tiny process that kills every service group if the parent dies.

A parent killed with SIGKILL runs no cleanup, and `PR_SET_PDEATHSIG` reaches only its direct
children. So the parent tells the watchdog every process group and worker pid it starts, over a
pipe; when the pipe reaches EOF (the parent is gone, however it died) the watchdog SIGKILLs them
all, and every process carrying this node's DEVMESH_INSTANCE mark (those that left their group).
It is a fresh `python -I -S` running `watchdog_main.py` (a few MB, no devmesh imports) that
inherits only its pipe, so it never keeps a worker's pipe or the terminal open.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

MAIN = Path(__file__).with_name("watchdog_main.py")


class Watchdog:
    """The parent's handle on the watchdog process; started again if it dies."""

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        self.proc: subprocess.Popen[bytes] | None = None
        self._fd = -1
        self.groups: set[int] = set()
        self.pids: set[int] = set()
        self.restarts = 0

    @property
    def pid(self) -> int:
        """The watchdog's pid (0 before it starts)."""
        return self.proc.pid if self.proc is not None else 0

    def start(self) -> None:
        """Start the watchdog and tell it everything already registered."""
        read_fd, write_fd = os.pipe()
        # Ctrl+C goes to the whole foreground group: keep it off the watchdog until it has
        # set SIG_IGN (the mask survives exec).
        old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-I", "-S", str(MAIN), str(read_fd), self.node_id],
                pass_fds=(read_fd,),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)
            os.close(read_fd)
        self._fd = write_fd
        os.set_inheritable(write_fd, False)
        lines = [f"+g {g}" for g in self.groups] + [f"+p {p}" for p in self.pids]
        if lines:
            self._send("\n".join(lines))

    def _send(self, text: str) -> None:
        data = (text + "\n").encode()
        try:
            while data:
                data = data[os.write(self._fd, data) :]
        except OSError:
            pass  # it died; poll() notices and starts a new one with the full set

    def add_group(self, pgid: int) -> None:
        """Kill this process group if the parent dies."""
        self.groups.add(pgid)
        self._send(f"+g {pgid}")

    def remove_group(self, pgid: int) -> None:
        """The group is gone (or its pgid may be reused): forget it."""
        self.groups.discard(pgid)
        self._send(f"-g {pgid}")

    def add_pid(self, pid: int) -> None:
        """Kill this process if the parent dies."""
        self.pids.add(pid)
        self._send(f"+p {pid}")

    def remove_pid(self, pid: int) -> None:
        """Forget a process that has been reaped."""
        self.pids.discard(pid)
        self._send(f"-p {pid}")

    def poll(self) -> bool:
        """Reap the watchdog if it died and start a new one; True if it was restarted."""
        if self.proc is None or self.proc.poll() is None:
            return False
        os.close(self._fd)
        self.restarts += 1
        self.start()
        return True

    def close(self) -> None:
        """Clean stop: everything was stopped already, so just let it exit."""
        if self.proc is not None:
            self.groups.clear()
            self.pids.clear()
            os.close(self._fd)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(5)
            self.proc = None

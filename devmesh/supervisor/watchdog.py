"""The orphan watchdog: one tiny forked process that kills every service group if the parent dies.

A parent killed with SIGKILL runs no cleanup, and `PR_SET_PDEATHSIG` reaches only its direct
children. So the parent tells this process every process group and worker pid it starts, over a
pipe; when the pipe reaches EOF (the parent is gone, however it died) the watchdog SIGKILLs them
all, and every process that carries this node's DEVMESH_INSTANCE mark (those that left their
group). It is forked before it could inherit anything that matters and closes every other fd, so
that it never keeps a worker's pipe open.
"""

from __future__ import annotations

import contextlib
import os
import signal
from typing import NoReturn

from devmesh.supervisor.procs import scan_marked


def _watch(read_fd: int, node_id: str) -> NoReturn:
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
        with contextlib.suppress(OSError):
            os.killpg(pgid, signal.SIGKILL)
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    # Processes that left their service's group (setsid) carry the node's DEVMESH_INSTANCE.
    for found in scan_marked(node_id).values():
        for pid in found:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
    os._exit(0)


class Watchdog:
    """The parent's handle on the watchdog process; re-forked if it dies."""

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        self.pid = 0
        self._fd = -1
        self.groups: set[int] = set()
        self.pids: set[int] = set()
        self.restarts = 0

    def start(self) -> None:
        """Fork the watchdog and tell it everything already registered."""
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: keep only the read end (and stdio)
            try:
                devnull = os.open(os.devnull, os.O_RDWR)
                for std in (0, 1, 2):  # never keep the terminal or a caller's pipe open
                    os.dup2(devnull, std)
                os.closerange(3, read_fd)
                os.closerange(read_fd + 1, 65536)
                _watch(read_fd, self.node_id)
            finally:
                os._exit(1)
        os.close(read_fd)
        self.pid, self._fd = pid, write_fd
        lines = [f"+g {g}" for g in self.groups] + [f"+p {p}" for p in self.pids]
        if lines:
            self._send("\n".join(lines))

    def _send(self, text: str) -> None:
        data = (text + "\n").encode()
        try:
            while data:
                data = data[os.write(self._fd, data) :]
        except OSError:
            pass  # it died; poll() notices and restarts it with the full set

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
        """Reap the watchdog if it died and fork a new one; True if it was restarted."""
        if self.pid == 0:
            return False
        try:
            pid, _ = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:
            pid = self.pid
        if pid == 0:
            return False
        os.close(self._fd)
        self.restarts += 1
        self.start()
        return True

    def close(self) -> None:
        """Clean stop: everything was stopped already, so just let it exit."""
        if self.pid:
            self.groups.clear()
            self.pids.clear()
            os.close(self._fd)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self.pid, 0)
            self.pid = 0

"""Spawning and signalling service processes: own session, parent-death signal, group kill.

Services are plain children (no Python process between devmesh and them): `/bin/sh -c` runs the
command in a new session so that the whole group can be stopped, and `PR_SET_PDEATHSIG` makes
the direct child die with the supervisor; the watchdog takes care of the rest of the group.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import fcntl
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from devmesh.supervisor.watchdog_main import scan_proc

_PR_SET_PDEATHSIG = 1
READ_CHUNK = 256 * 1024  # bytes per read of a service's output pipe
_libc: ctypes.CDLL | None = None
if sys.platform.startswith("linux"):
    _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def set_parent_death_signal(sig: int = signal.SIGKILL) -> None:
    """Ask the kernel to send `sig` to this process when its parent dies (Linux only)."""
    if _libc is not None:
        _libc.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)


def _child_setup(parent_pid: int) -> None:
    # Runs in the forked child before exec: no locks, no logging.
    set_parent_death_signal(signal.SIGKILL)
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


@dataclass
class Spawned:
    """A started service: its process and the read end of its merged stdout/stderr pipe."""

    popen: subprocess.Popen[bytes]
    output_fd: int

    @property
    def pid(self) -> int:
        """The service's main pid (also its process group and session id)."""
        return self.popen.pid


def spawn(command: str, *, cwd: Path, env: Mapping[str, str]) -> Spawned:
    """Start `command` through /bin/sh in its own session, output into a fresh pipe.

    Raises OSError (FileNotFoundError for a missing cwd) when the process cannot start.
    """
    read_fd, write_fd = os.pipe()
    _grow_pipe(write_fd)
    parent = os.getpid()
    try:
        popen = subprocess.Popen(
            ["/bin/sh", "-c", command],
            cwd=cwd,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=write_fd,
            stderr=write_fd,
            start_new_session=True,
            close_fds=True,
            preexec_fn=lambda: _child_setup(parent),
        )
    except BaseException:
        os.close(read_fd)
        raise
    finally:
        os.close(write_fd)
    os.set_blocking(read_fd, False)
    return Spawned(popen=popen, output_fd=read_fd)


_F_SETPIPE_SZ = 1031
PIPE_SIZE = 256 * 1024
# Pipe buffers count against a per-user kernel budget (pipe-user-pages-soft, 64 MiB); past it
# new pipes shrink to one page. So only the first pipes get large buffers.
_pipe_budget = 16 * 1024 * 1024


def _grow_pipe(fd: int) -> None:
    """A bigger pipe buffer: a chatty service blocks less and the parent reads bigger chunks."""
    global _pipe_budget
    if _pipe_budget < PIPE_SIZE or not sys.platform.startswith("linux"):
        return
    try:
        fcntl.fcntl(fd, _F_SETPIPE_SZ, PIPE_SIZE)
    except OSError:
        return
    _pipe_budget -= PIPE_SIZE


def signal_group(pgid: int, sig: int) -> bool:
    """Send `sig` to a whole process group; False if the group is gone."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False
    return True


def pgid_of(pid: int) -> int | None:
    """The process group of `pid`, None if it is gone."""
    try:
        return os.getpgid(pid)
    except OSError:
        return None


def live_groups() -> set[int] | None:
    """Process groups with a member that is not a zombie (None without /proc).

    A zombie still counts for `killpg(pgid, 0)`: a service's child that died after its parent
    was reaped belongs to init until init reaps it, which in a container may take seconds.
    """
    groups: set[int] = set()
    try:
        entries = os.listdir("/proc")
    except FileNotFoundError:
        return None
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # pid (comm) state ppid pgrp ...: comm may hold spaces and parentheses.
        fields = stat[stat.rfind(b")") + 2 :].split(b" ", 3)
        if len(fields) >= 3 and fields[0] != b"Z":
            groups.add(int(fields[2]))
    return groups


def group_alive(pgid: int) -> bool:
    """Whether any process of the group still exists."""
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def pid_alive(pid: int) -> bool:
    """Whether process `pid` exists (a zombie counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[-1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True  # no /proc: it answered the signal


def signal_pid(pid: int, sig: int) -> bool:
    """Send `sig` to one process; False if it is gone."""
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def scan_marked(node_id: str) -> dict[str, list[int]]:
    """Every process whose environment has `DEVMESH_INSTANCE=<node_id>.N`, by that value.

    Services and everything they start inherit the variable, so this finds the processes that
    left their service's process group (setsid, daemonising helpers) after their parent died.
    """
    found = scan_proc(node_id)
    return found if found is not None else _scan_marked_psutil(node_id)


def _scan_marked_psutil(node_id: str) -> dict[str, list[int]]:
    # Without /proc (macOS): slower, but the same answer. psutil is imported where it is used:
    # the workers import this module and need none of it.
    import psutil

    found: dict[str, list[int]] = {}
    prefix = node_id + "."
    for proc in psutil.process_iter():
        try:
            value = proc.environ().get("DEVMESH_INSTANCE", "")
        except psutil.Error:
            continue
        if value.startswith(prefix):
            found.setdefault(value, []).append(proc.pid)
    return found


# ---- checks before anything starts ----

_SHELL_WORDS = frozenset(
    (
        "if then else elif fi case esac for while until do done in function select time ! { } "
        "[[ ]] . : source exec eval export set unset cd test [ echo printf true false trap wait "
        "read shift ulimit umask command builtin type alias exit return break continue readonly "
        "times getopts hash jobs kill local pwd fg bg let"
    ).split()
)


def missing_program(command: str, *, cwd: Path, env: Mapping[str, str]) -> str | None:
    """The program a command runs if it cannot be found (None when found or not knowable)."""
    try:
        words = shlex.split(command, comments=True)
    except ValueError:
        return None  # the shell will report its own syntax error
    for word in words:
        if "=" in word and not word.startswith("=") and word.split("=", 1)[0].isidentifier():
            continue  # FOO=bar cmd
        if word in _SHELL_WORDS or any(c in word for c in "$`*?();&|<>"):
            return None
        if "/" in word:
            path = (cwd / word) if not word.startswith("/") else Path(word)
            return None if os.access(path, os.X_OK) and path.is_file() else word
        return None if shutil.which(word, path=env.get("PATH", os.defpath)) else word
    return None


def port_holder(port: int) -> str | None:
    """If `port` cannot be bound on this machine, a description of who holds it."""
    for family, host in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
        try:
            with socket.socket(family, socket.SOCK_STREAM) as s:
                if family == socket.AF_INET6:
                    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL):
                continue
            return _who_listens(port) or "another process"
    return None


def _who_listens(port: int) -> str | None:
    import psutil

    try:
        conns = psutil.net_connections(kind="inet")
    except (psutil.Error, OSError):
        return None
    for conn in conns:
        if conn.laddr and conn.laddr.port == port and conn.status == psutil.CONN_LISTEN:
            if conn.pid is None:
                return "a process of another user"
            try:
                proc = psutil.Process(conn.pid)
                cmdline = " ".join(proc.cmdline())[:80] or proc.name()
            except psutil.Error:
                return f"pid {conn.pid}"
            return f"pid {conn.pid} ({cmdline})"
    return None


def listening(pids: list[int]) -> list[tuple[str, int]]:
    """The TCP addresses (host, port) that these processes listen on, lowest port first; a
    wildcard address is given as the loopback address of its family."""
    import psutil

    found: set[tuple[str, int]] = set()
    for pid in pids:
        try:
            conns = psutil.Process(pid).net_connections(kind="tcp")
        except (psutil.Error, OSError):
            continue
        for conn in conns:
            if conn.status == psutil.CONN_LISTEN and conn.laddr:
                host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(conn.laddr.ip, conn.laddr.ip)
                found.add((host, conn.laddr.port))
    # 127.0.0.1 before ::1 for the same port: the proxy's usual way in.
    return sorted(found, key=lambda a: (a[1], ":" in a[0]))


def free_ports(count: int) -> list[int]:
    """`count` distinct TCP ports free right now (all held open together, so no repeats)."""
    socks = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for s in socks:
            s.bind(("0.0.0.0", 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()

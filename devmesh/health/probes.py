"""One health probe: an HTTP GET, a TCP connect, or a command; each bounded by its timeout.

A probe never raises: it returns whether the service answered as healthy and what it saw. A
command that outlives its timeout is killed with its whole process group.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import ssl
from dataclasses import dataclass
from urllib.parse import urlsplit


@dataclass(frozen=True)
class Result:
    """What one probe saw."""

    ok: bool
    detail: str  # "HTTP 200", "connected", "exit 0", "timed out after 2s", "refused", ...


def expand(target: str, port: int) -> str:
    """`$PORT` / `${PORT}` in a health target become the service's port."""
    return target.replace("${PORT}", str(port)).replace("$PORT", str(port))


async def probe(kind: str, target: str, timeout: float, cwd: str | None = None) -> Result:
    """Run one probe of `kind` (http, tcp, cmd) against `target` within `timeout` seconds."""
    try:
        if kind == "cmd":
            return await _command(target, timeout, cwd)
        run = _http(target) if kind == "http" else _tcp(target)
        return await asyncio.wait_for(run, timeout)
    except TimeoutError:
        return Result(False, f"timed out after {timeout:g}s")
    except ConnectionRefusedError:
        return Result(False, "connection refused")
    except OSError as exc:
        return Result(False, exc.strerror or str(exc))


async def _tcp(target: str) -> Result:
    host, _, port = target.rpartition(":")
    _, writer = await asyncio.open_connection(host.strip("[]") or "127.0.0.1", int(port))
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return Result(True, "connected")


async def _http(url: str) -> Result:
    parts = urlsplit(url)
    tls = parts.scheme == "https"
    host = parts.hostname or "127.0.0.1"
    port = parts.port or (443 if tls else 80)
    context = None
    if tls:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # a dev server's own certificate
    reader, writer = await asyncio.open_connection(host, port, ssl=context)
    try:
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        writer.write(
            f"GET {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nUser-Agent: devmesh-health\r\n"
            "Connection: close\r\n\r\n".encode("latin-1")
        )
        line = await reader.readline()
    finally:
        writer.close()
    fields = line.split()
    if len(fields) < 2 or not fields[0].startswith(b"HTTP/") or not fields[1].isdigit():
        return Result(False, "not an HTTP answer")
    status = int(fields[1])
    return Result(200 <= status < 400, f"HTTP {status}")


async def _command(command: str, timeout: float, cwd: str | None) -> Result:
    proc = await asyncio.create_subprocess_shell(
        command,
        cwd=cwd,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    try:
        _, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
        return Result(False, f"timed out after {timeout:g}s")
    if proc.returncode == 0:
        return Result(True, "exit 0")
    last = err.decode(errors="replace").strip().splitlines()[-1:] if err else []
    return Result(False, f"exit {proc.returncode}" + (f": {last[0][:200]}" if last else ""))

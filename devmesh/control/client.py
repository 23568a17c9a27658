"""The CLI's side of the control API: HTTP over the project's unix socket."""

from __future__ import annotations

import http.client
import json
import socket
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

from devmesh.paths import ProjectPaths
from devmesh.supervisor.lock import holder


class NoMesh(Exception):
    """No supervisor answers for this project (none runs, or a stale socket was left)."""


class ControlError(Exception):
    """The supervisor answered with an error (unknown service, illegal action, ...)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("devmesh", timeout=timeout)
        self._path = str(path)

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class ControlClient:
    """Requests to one project's running supervisor."""

    def __init__(self, paths: ProjectPaths, root: Path, timeout: float = 35.0) -> None:
        self.paths = paths
        self.root = root
        self.timeout = timeout

    def request(self, method: str, path: str) -> Any:
        """One request; the decoded JSON body, or `ControlError` / `NoMesh`."""
        # A GET is safe to repeat: once, if the control worker was replaced mid-request.
        for attempt in range(2 if method == "GET" else 1):
            conn = _UnixConnection(self.paths.socket, self.timeout)
            try:
                conn.request(method, path)
                response = conn.getresponse()
                body = response.read()
                break
            except (FileNotFoundError, ConnectionRefusedError) as exc:
                raise NoMesh(self._why_not(exc)) from None
            except TimeoutError:
                raise NoMesh(
                    f"devmesh did not answer on {self.paths.socket} within {self.timeout:g}s "
                    "(is it stopped, e.g. with Ctrl+Z?)"
                ) from None
            except (http.client.HTTPException, OSError) as exc:
                if attempt == 0 and method == "GET":
                    continue
                raise NoMesh(f"lost the connection to devmesh ({exc}); try again") from None
            finally:
                conn.close()
        data = json.loads(body) if body else None
        if response.status >= 400:
            message = data.get("error") if isinstance(data, dict) else None
            raise ControlError(response.status, message or f"HTTP {response.status}")
        return data

    def _why_not(self, exc: OSError) -> str:
        pid = holder(self.paths.lock)
        if isinstance(exc, FileNotFoundError):
            if pid:
                return f"devmesh (pid {pid}) is starting or stopping; try again in a moment"
            return f"devmesh is not running for {self.root}; start it with `devmesh up`"
        if pid:
            return f"devmesh (pid {pid}) does not answer on {self.paths.socket}"
        return (
            f"devmesh is not running for {self.root}: {self.paths.socket} is a stale socket "
            "left by a devmesh that died (the next `devmesh up` replaces it)"
        )

    def status(self) -> dict[str, Any]:
        """GET /v1/status."""
        data: dict[str, Any] = self.request("GET", "/v1/status")
        return data

    def peers(self) -> dict[str, Any]:
        """GET /v1/peers."""
        data: dict[str, Any] = self.request("GET", "/v1/peers")
        return data

    def routes(self) -> dict[str, Any]:
        """GET /v1/routes."""
        data: dict[str, Any] = self.request("GET", "/v1/routes")
        return data

    def pin(self, name: str, peer: str | None) -> dict[str, Any]:
        """PUT /v1/routes/NAME?peer=PEER (DELETE with None)."""
        target = f"/v1/routes/{quote(name, safe='')}"
        if peer is None:
            data: dict[str, Any] = self.request("DELETE", target)
        else:
            data = self.request("PUT", f"{target}?peer={quote(peer, safe='')}")
        return data

    def attach(self, name: str, pid: int, port: int | None = None) -> dict[str, Any]:
        """POST attach (`devmesh run`): the service is run by hand by process `pid` (on `port`:
        a service the config does not declare; 0 = a free port)."""
        query = f"pid={pid}" + ("" if port is None else f"&port={port}")
        data: dict[str, Any] = self.request(
            "POST", f"/v1/services/{quote(name, safe='')}/attach?{query}"
        )
        return data

    def release(self, name: str, pid: int) -> None:
        """POST release: `devmesh run` (process `pid`) ends; the service goes back to what the
        config says."""
        self.request("POST", f"/v1/services/{quote(name, safe='')}/release?pid={pid}")

    def action(self, name: str, action: str) -> dict[str, Any]:
        """POST start/stop/restart of one service; the service's snapshot after it."""
        data: dict[str, Any] = self.request("POST", f"/v1/services/{name}/{action}")
        return data

    def shutdown(self) -> int:
        """POST /v1/shutdown; the supervisor's pid."""
        data = self.request("POST", "/v1/shutdown")
        return int(data["pid"])

    def wait_service(
        self, name: str, *, until: set[str], changed_from: int | None = None, timeout: float
    ) -> dict[str, Any]:
        """Poll until the service is in a state of `until` (with a pid other than changed_from).
        One that leaves the mesh (`devmesh run --port` ended, removed from the config) is
        `stopped`."""
        deadline = time.monotonic() + timeout
        gone = {"name": name, "state": "stopped", "pid": None, "reason": "", "exit_code": None}
        while True:
            svc = next((s for s in self.status()["services"] if s["name"] == name), gone)
            done = svc["state"] in until and (changed_from is None or svc["pid"] != changed_from)
            if done or time.monotonic() > deadline:
                result: dict[str, Any] = svc
                return result
            time.sleep(0.05)

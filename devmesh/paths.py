"""Where a project's runtime files live: the control socket, logs, state and the lock.

Keyed by the project directory, outside the project tree (ARCHITECTURE §6). Socket paths are
kept short: a unix socket path longer than ~104 bytes cannot be bound.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

# A unix socket path must fit in sun_path (108 bytes on Linux, 104 on macOS).
MAX_SOCKET_PATH = 100


def runtime_dir() -> Path:
    """`$XDG_RUNTIME_DIR/devmesh` if it is short enough for sockets, else `/tmp/devmesh-$UID`."""
    base = os.environ.get("XDG_RUNTIME_DIR")
    if base and Path(base).is_dir() and len(base) < MAX_SOCKET_PATH - 50:
        return Path(base) / "devmesh"
    return Path(f"/tmp/devmesh-{os.getuid()}")


def state_home() -> Path:
    """`$XDG_STATE_HOME/devmesh`, else `~/.local/state/devmesh`."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "devmesh"


def project_key(root: Path) -> str:
    """A short, stable, readable id of a project directory: `<name>-<hash8>`."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", root.name)[:24] or "project"
    digest = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:8]
    return f"{name}-{digest}"


@dataclass(frozen=True)
class ProjectPaths:
    """All runtime paths of one project."""

    key: str
    socket: Path
    state: Path

    @classmethod
    def for_root(cls, root: Path) -> ProjectPaths:
        """The paths for the project in directory `root`."""
        key = project_key(root)
        return cls(key=key, socket=runtime_dir() / f"{key}.sock", state=state_home() / key)

    @property
    def logs(self) -> Path:
        """One `<service>.log` per service."""
        return self.state / "logs"

    @property
    def lock(self) -> Path:
        """Held (flock) by the running supervisor; a second `devmesh up` finds it taken."""
        return self.state / "lock"

    @property
    def pidfile(self) -> Path:
        """The running supervisor's pid, for messages (the lock is what counts)."""
        return self.state / "devmesh.pid"

    @property
    def metrics(self) -> Path:
        """The workers' metric files (prometheus-client multiprocess mode), wiped at each start:
        in the runtime directory, which is usually in memory."""
        return self.socket.parent / f"{self.key}.metrics"

    @property
    def daemon_log(self) -> Path:
        """The terminal output of a `devmesh up --detach` supervisor."""
        return self.state / "devmesh.log"

    def ensure(self) -> None:
        """Create the directories (the runtime one private to this user)."""
        self.socket.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)

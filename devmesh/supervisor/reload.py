"""Config hot reload: what changed between the running config and a newly saved one.

Pure: the supervisor validates the new file first (an invalid one changes nothing) and then
applies only the differences (ARCHITECTURE §2.1).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

from devmesh.config.model import Config, ServiceConfig

# The node-wide sections of devmesh.toml, as `Config` fields.
NODE_SECTIONS = ("mesh", "proxy", "discovery", "log", "dashboard", "tracing")


@dataclass(frozen=True)
class ConfigDiff:
    """Services added, removed and changed, and whether node-wide settings changed."""

    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()
    sections: tuple[str, ...] = ()  # node-wide sections that changed: "proxy", "discovery", ...
    env_changed: bool = False  # .env: every service with a command restarts

    @property
    def empty(self) -> bool:
        """Nothing to do."""
        return not (self.added or self.removed or self.changed or self.sections or self.env_changed)

    def describe(self) -> str:
        """`added web; changed api; removed old` for the log."""
        parts = [
            f"{what} {', '.join(names)}"
            for what, names in (
                ("added", self.added),
                ("changed", self.changed),
                ("removed", self.removed),
            )
            if names
        ]
        if self.env_changed:
            parts.append(".env changed")
        if self.sections:
            parts.append(", ".join(f"[{s}]" for s in self.sections) + " changed")
        return "; ".join(parts) or "no changes"


def _same(a: ServiceConfig, b: ServiceConfig) -> bool:
    # Moving a service within the file is not a change.
    return dataclasses.replace(a, line=None) == dataclasses.replace(b, line=None)


def diff(old: Config, new: Config) -> ConfigDiff:
    """What applying `new` over `old` means."""
    return ConfigDiff(
        added=tuple(n for n in new.services if n not in old.services),
        removed=tuple(n for n in old.services if n not in new.services),
        changed=tuple(
            n
            for n in new.services
            if n in old.services and not _same(old.services[n], new.services[n])
        ),
        sections=tuple(s for s in NODE_SECTIONS if getattr(old, s) != getattr(new, s)),
        env_changed=dict(old.dotenv) != dict(new.dotenv),
    )


@dataclass
class FileWatch:
    """Notices when any of some files is saved (mtime, size or inode changes)."""

    paths: tuple[Path, ...]
    _seen: tuple[tuple[int, int, int] | None, ...] = ()

    def __post_init__(self) -> None:
        self._seen = self._stat()

    def _stat(self) -> tuple[tuple[int, int, int] | None, ...]:
        out: list[tuple[int, int, int] | None] = []
        for path in self.paths:
            try:
                st = os.stat(path)
            except OSError:
                out.append(None)
                continue
            out.append((st.st_mtime_ns, st.st_size, st.st_ino))
        return tuple(out)

    def changed(self) -> bool:
        """True once per change (the next call is False until the files change again)."""
        now = self._stat()
        if now == self._seen:
            return False
        self._seen = now
        return True

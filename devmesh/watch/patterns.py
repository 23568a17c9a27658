"""What `watch` and `watch_ignore` entries mean. Pure and stdlib-only: the config checks use it
as well as the watch worker.

An entry is relative to the service's `cwd`. A directory (or an entry ending in `/`) means
everything under it. A glob is matched segment by segment: `*`, `?` and `[ab]` within one
segment, `**` any number of segments. Its base is the literal part before the first segment
with a wildcard: that directory is what gets watched (`src/**/*.py` watches `src`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase

_WILDCARDS = frozenset("*?[")


def split_glob(entry: str) -> tuple[str, tuple[str, ...]]:
    """`src/**/*.py` -> ("src", ("**", "*.py")); `templates/` -> ("templates", ()); the base
    keeps a leading `/` (an absolute entry) and is "" for the directory itself."""
    segments = [s for s in entry.split("/") if s not in ("", ".")]
    lead = "/" if entry.startswith("/") else ""
    for i, segment in enumerate(segments):
        if _WILDCARDS.intersection(segment):
            return lead + "/".join(segments[:i]), tuple(segments[i:])
    return lead + "/".join(segments), ()


def match_parts(pattern: Sequence[str], parts: Sequence[str]) -> bool:
    """Whether path segments `parts` match glob segments `pattern` (`**`: any number)."""
    if not pattern:
        return not parts
    head, tail = pattern[0], pattern[1:]
    if head == "**":
        return any(match_parts(tail, parts[i:]) for i in range(len(parts) + 1))
    return bool(parts) and fnmatchcase(parts[0], head) and match_parts(tail, parts[1:])


@dataclass(frozen=True)
class Entry:
    """One `watch` entry resolved: the directory to watch and the glob below it."""

    base: str  # absolute, normalised
    rest: tuple[str, ...]  # glob segments below `base`; ("**",) is everything under it
    recursive: bool  # whether subdirectories of `base` must be watched too


def compile_entry(cwd: str, entry: str) -> Entry:
    """Resolve a `watch` entry against the service's `cwd` (looking at the disk once: is a
    literal path a directory?)."""
    base_rel, rest = split_glob(entry)
    base = os.path.normpath(os.path.join(cwd, base_rel))
    if not rest:
        if entry.endswith("/") or os.path.isdir(base):
            rest = ("**",)
        else:
            # One file: its directory is watched, for that name only, so a save that writes a
            # new file and renames it over the old one (vim, most editors) is still seen.
            base, name = os.path.split(base)
            rest = (name,)
    return Entry(base, rest, recursive=len(rest) > 1 or "**" in rest)


def compile_ignore(pattern: str) -> tuple[str, ...]:
    """A `watch_ignore` pattern as glob segments: with a `/` inside, a path relative to the
    service's cwd; without, a name at any depth (`*.log`, `tmp`, `build/`)."""
    stripped = pattern.strip("/")
    if "/" not in stripped:
        return ("**", stripped)
    return tuple(s for s in stripped.split("/") if s not in ("", "."))


@dataclass(frozen=True)
class DefaultIgnores:
    """What is never watched below an entry's base: directory names (`.git`, `node_modules`)
    and file-name patterns (editor swap and backup files)."""

    dirs: frozenset[str]
    names: re.Pattern[str]

    @classmethod
    def of(cls, dirs: Iterable[str], name_patterns: Iterable[str]) -> DefaultIgnores:
        """Build from directory names and regular expressions searched in a file's name."""
        return cls(frozenset(dirs), re.compile("|".join(f"(?:{p})" for p in name_patterns)))

    def __call__(self, parts: Sequence[str]) -> bool:
        """Whether a path (segments below a base) is ignored."""
        if not parts:
            return False
        return any(p in self.dirs for p in parts) or bool(self.names.search(parts[-1]))


def _ignored_by(pattern: Sequence[str], parts: Sequence[str]) -> bool:
    # A pattern that matches a directory ignores everything under it, as in .gitignore.
    return any(match_parts(pattern, parts[:end]) for end in range(1, len(parts) + 1))


@dataclass(frozen=True)
class ServiceWatch:
    """One service's entries and ignores: which changed paths restart it."""

    service: str
    cwd: str
    entries: tuple[Entry, ...]
    ignores: tuple[tuple[str, ...], ...]

    @classmethod
    def of(
        cls, service: str, cwd: str, watch: Iterable[str], ignore: Iterable[str]
    ) -> ServiceWatch:
        """Compile a service's `watch` and `watch_ignore` entries."""
        cwd = os.path.normpath(cwd)
        return cls(
            service,
            cwd,
            tuple(compile_entry(cwd, e) for e in watch),
            tuple(compile_ignore(p) for p in ignore),
        )

    def match(self, path: str, defaults: DefaultIgnores, *, directory: bool = False) -> str | None:
        """`path` relative to the cwd when a change to it restarts the service (for a
        `directory`: when files under it may), else None."""
        for entry in self.entries:
            below = _below(path, entry.base)
            if below is None:
                continue
            parts = below.split("/") if below else []
            if defaults(parts) or not (directory or match_parts(entry.rest, parts)):
                continue
            relative = os.path.relpath(path, self.cwd)
            segments = relative.split("/")
            if any(_ignored_by(p, segments) for p in self.ignores):
                return None
            return relative
        return None


def _below(path: str, base: str) -> str | None:
    """`path` relative to `base` ("" for base itself), or None when it is not under it."""
    if path == base:
        return ""
    prefix = base if base.endswith("/") else base + "/"
    return path[len(prefix) :] if path.startswith(prefix) else None


def roots(entries: Iterable[Entry]) -> tuple[list[str], list[str]]:
    """The directories to watch recursively and those to watch alone (their files only),
    without one inside another that already covers it."""
    entries = list(entries)
    recursive: list[str] = []
    for base in sorted({e.base for e in entries if e.recursive}):
        if not any(_below(base, r) is not None for r in recursive):
            recursive.append(base)
    flat = {
        e.base
        for e in entries
        if not e.recursive and not any(_below(e.base, r) is not None for r in recursive)
    }
    return recursive, sorted(flat)

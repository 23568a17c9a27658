"""The mesh namespace a node joins: `auto` is the project's current git branch."""

from __future__ import annotations

import subprocess
from pathlib import Path

DEFAULT = "default"


def _git(root: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(root), *args],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else None


def resolve_namespace(setting: str, root: Path) -> str:
    """`setting`, or for "auto" the git branch (detached: the short commit; no git: default)."""
    if setting != "auto":
        return setting
    branch = _git(root, "symbolic-ref", "--quiet", "--short", "HEAD")
    if branch:
        return branch
    commit = _git(root, "rev-parse", "--short", "HEAD")
    return commit or DEFAULT

"""What the benchmarks under scripts/bench/ share: the frozen copy of devmesh they measure."""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the project: its devmesh is the one measured
# Settings of the caller's shell that would make a manager slower than a user would see it:
# without bytecode caches devmesh (run from its source tree) would compile itself at every start.
CALLER_ONLY = ("PYTHONDONTWRITEBYTECODE", "PYTHONUNBUFFERED")


def git_out(argv: list[str]) -> str:
    """The stripped output of a git command, "" if it fails."""
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


class DevmeshSource:
    """A frozen copy of the devmesh package that every devmesh run imports.

    A copy, so that edits made to the project while the benchmark runs change nothing, and
    its bytecode can be compiled without writing into the project. `head` is the last commit
    (`git archive`), `worktree` the files as they are now.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.dir = Path(tempfile.mkdtemp(prefix="bench-devmesh-src-"))
        git = ["git", "-C", str(ROOT)]
        self.commit = git_out([*git, "log", "-1", "--format=%h"]) or "unknown"
        if kind == "head":
            tar = subprocess.run(
                [*git, "archive", "--format=tar", "HEAD", "devmesh"],
                capture_output=True,
                timeout=60,
                check=True,
            ).stdout
            with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
                archive.extractall(self.dir, filter="data")
            self.describe = f"commit {self.commit}"
        else:
            shutil.copytree(
                ROOT / "devmesh", self.dir / "devmesh", ignore=shutil.ignore_patterns("__pycache__")
            )
            changed = git_out([*git, "status", "--porcelain", "--", "devmesh"])
            extra = " with uncommitted changes in devmesh/" if changed else ""
            self.describe = f"working tree of commit {self.commit}{extra}"

    def compile(self) -> None:
        """Compile the copy's bytecode, so no run pays for it."""
        env = {k: v for k, v in os.environ.items() if k not in CALLER_ONLY}
        subprocess.run(
            [sys.executable, "-m", "compileall", "-q", str(self.dir / "devmesh")],
            env=env,
            stdout=subprocess.DEVNULL,
            timeout=300,
            check=False,
        )

    def env(self, env: dict[str, str]) -> dict[str, str]:
        """`env` with the copy first on the path, whatever `pip install -e` points at."""
        path = env.get("PYTHONPATH")
        env["PYTHONPATH"] = f"{self.dir}{os.pathsep}{path}" if path else str(self.dir)
        return env

    def check(self) -> str:
        """Where `python -m devmesh` imports devmesh from (RuntimeError if not the copy)."""
        probe = subprocess.run(
            [sys.executable, "-c", "import devmesh; print(devmesh.__file__)"],
            env=self.env(dict(os.environ)),
            cwd=tempfile.gettempdir(),
            capture_output=True,
            text=True,
            timeout=30,
        )
        where = probe.stdout.strip()
        if not where.startswith(str(self.dir)):
            raise RuntimeError(f"devmesh is imported from {where or probe.stderr.strip()!r}")
        return where

    def remove(self) -> None:
        """Delete the copy."""
        shutil.rmtree(self.dir, ignore_errors=True)


def add_output_options(p: argparse.ArgumentParser, source: str = "head") -> None:
    """`--markdown` and `--source`, the same in every benchmark (`source`: the default)."""
    p.add_argument("--markdown", type=Path, help="write the results section to this file")
    other = "worktree" if source == "head" else "head"
    what = {"head": "a copy of the last commit", "worktree": "a copy of the working tree"}
    p.add_argument(
        "--source",
        choices=(source, other),
        default=source,
        help=f"devmesh to measure: {what[source]} (default) or {what[other]}",
    )


@contextlib.contextmanager
def devmesh_under_test(kind: str) -> Iterator[DevmeshSource]:
    """The copy of devmesh a benchmark measures (`--source`), checked and said, then removed."""
    source = DevmeshSource(kind)
    try:
        print(f"devmesh under test: {source.check()} ({source.describe})", flush=True)
        yield source
    finally:
        source.remove()


def write_section(path: Path, title: str, section: str) -> None:
    """Write `section` (which starts with "## TITLE") into the markdown file `path`, replacing
    the earlier section of that title, or appending it at the end."""
    text = path.read_text() if path.exists() else "# Benchmarks\n\n"
    heading = f"## {title}\n"
    if text.startswith(heading):
        begin = 0
    else:
        at = text.find("\n" + heading)
        begin = at + 1 if at >= 0 else -1
    if begin < 0:
        text = text.rstrip("\n") + "\n\n" + section
    else:
        end = text.find("\n## ", begin + 1)
        text = text[:begin] + section + ("" if end < 0 else text[end:])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text.rstrip("\n") + "\n")


@dataclass
class Goal:
    """One goal of a benchmark and whether it was met."""

    text: str
    passed: bool | None  # None: not measured
    detail: str
    margin: float | None = None  # how far inside (+) or outside (-) the limit, if it says


def verdict(goal: Goal) -> str:
    """PASS / FAIL / not measured."""
    return "not measured" if goal.passed is None else ("PASS" if goal.passed else "FAIL")


def lab_missing() -> bool:
    """True, after saying why on stderr, when the lab's network namespaces cannot be made here
    (tests/lab.py decides: root and iproute2 are needed)."""
    tests = str(ROOT / "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)
    from lab import lab_unavailable  # tests/lab.py

    why = lab_unavailable()
    if why is not None:
        print(f"cannot build the lab: {why}", file=sys.stderr)
    return why is not None

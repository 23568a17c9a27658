"""The watch worker's role: watch the directories that the services' `watch` entries name and
tell the parent when a burst of changes to a service's files is over (`FilesChanged`). The
parent decides what restarts.

The parent starts it only while some service has `watch`. watchfiles' Rust notifier (inotify
through the `notify` crate) does the watching: one notifier per set of directories (watched
recursively, or each directory alone for single files and `*.ext` globs), each waited on by a
thread of its own that hands every batch of changed paths to the event loop. Matching,
ignoring and debouncing run on the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import threading
import time
from collections.abc import Callable

# The Rust notifier itself (documented as watchfiles' "Rust backend"): it says when its watches
# are in place, which `watchfiles.watch()` does not, and returns plain (int, path) pairs.
from watchfiles import DefaultFilter
from watchfiles._rust_notify import RustNotify

from devmesh import messages as m
from devmesh.watch.debounce import Bursts
from devmesh.watch.patterns import DefaultIgnores, ServiceWatch, roots
from devmesh.workers.base import WorkerRuntime

# Never watched below an entry: watchfiles' own list (.git, node_modules, __pycache__, .venv,
# vim's .swp/.swx, `~` backups, emacs' .#lock files...), plus vim's write test `4913`, emacs'
# auto-save `#name#` and Kate's swap files.
DEFAULTS = DefaultIgnores.of(
    DefaultFilter.ignore_dirs,
    (*DefaultFilter.ignore_entity_patterns, r"^4913$", r"^#.*#$", r"\.kate-swp$"),
)
# The notifier hands over a batch after STEP_MS without a new change, and every BATCH_MS at most
# while changes keep coming: well under the debouncer's QUIET (300 ms), which it measures
# between batches, so that a burst is never cut in two by the batching itself.
STEP_MS = 50
BATCH_MS = 100

ADDED = 1  # watchfiles' Change.added
SCAN_LIMIT = 10_000  # files looked at in one new directory

Batch = set[tuple[int, str]]


def files_under(directory: str) -> list[str]:
    """The files in a directory tree (default-ignored directories left out), at most
    SCAN_LIMIT."""
    found: list[str] = []
    for top, dirs, names in os.walk(directory):
        dirs[:] = [d for d in dirs if d not in DEFAULTS.dirs]
        found += (os.path.join(top, n) for n in names)
        if len(found) >= SCAN_LIMIT:
            return found[:SCAN_LIMIT]
    return found


class Notifier:
    """One Rust notifier over some directories, waited on by its own thread until stopped."""

    def __init__(
        self,
        dirs: tuple[str, ...],
        recursive: bool,
        deliver: Callable[[Batch], None],
        ready: Callable[[Notifier], None],
    ) -> None:
        self.dirs = dirs
        self.recursive = recursive
        self.ready = False
        self.error = ""
        self._deliver = deliver
        self._on_ready = ready
        self._stop = threading.Event()
        name = "watch-tree" if recursive else "watch-dirs"
        threading.Thread(target=self._run, name=name, daemon=True).start()

    def stop(self) -> None:
        """Stop watching (the thread sees it within one step)."""
        self._stop.set()

    def _run(self) -> None:
        try:
            # Adding the watches walks the trees: on this thread, so the loop keeps beating.
            notifier = RustNotify(list(self.dirs), False, False, 0, self.recursive, True)
        except Exception as exc:  # a directory gone since the plan, the inotify limit...
            self.error = f"cannot watch {', '.join(self.dirs)}: {exc}"
            self._on_ready(self)
            return
        self._on_ready(self)
        with notifier:
            while not self._stop.is_set():
                # Blocks in Rust (without the GIL) and looks at the stop event every step.
                got = notifier.watch(BATCH_MS, STEP_MS, 0, self._stop)
                if isinstance(got, set):
                    self._deliver(got)


class WatchRole:
    """Watches what the latest `WatchPlan` names; one `FilesChanged` per service and burst."""

    def __init__(self, runtime: WorkerRuntime) -> None:
        self.runtime = runtime
        self.services: tuple[ServiceWatch, ...] = ()
        self.notifiers: dict[tuple[tuple[str, ...], bool], Notifier] = {}
        self.bursts = Bursts()
        self.problems: list[str] = []
        self._reported = True
        self._flush: asyncio.TimerHandle | None = None
        self._stop = asyncio.Event()

    async def serve(self) -> None:
        """Run until stopped."""
        await self._stop.wait()
        for notifier in self.notifiers.values():
            notifier.stop()

    def stop(self) -> None:
        """Stop watching."""
        self._stop.set()

    def handle(self, msg: m.ParentMessage) -> None:
        """A new plan: watch what it names, stop watching the rest."""
        if isinstance(msg, m.WatchPlan):
            self.apply(msg)

    def apply(self, plan: m.WatchPlan) -> None:
        """Compile the plan's entries and keep one notifier per set of directories."""
        loop = asyncio.get_running_loop()
        self.services = tuple(
            ServiceWatch.of(t.service, t.cwd, t.watch, t.ignore) for t in plan.targets
        )
        self.bursts.keep({s.service for s in self.services})
        recursive, flat = roots(e for s in self.services for e in s.entries)
        self.problems = []
        wanted: dict[tuple[tuple[str, ...], bool], None] = {}
        for dirs, deep in ((recursive, True), (flat, False)):
            present = tuple(d for d in dirs if os.path.isdir(d))
            self.problems += [f"{d} does not exist: not watched" for d in dirs if d not in present]
            if present:
                wanted[(present, deep)] = None
        for key in [k for k in self.notifiers if k not in wanted]:
            self.notifiers.pop(key).stop()

        # Called on a notifier's thread; a closed loop means the worker is exiting.
        def deliver(batch: Batch) -> None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self.changed, batch)

        def ready(notifier: Notifier) -> None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._notifier_ready, notifier)

        for key in wanted:
            if key not in self.notifiers:
                self.notifiers[key] = Notifier(*key, deliver, ready)
        self._reported = False
        self._report()

    def _notifier_ready(self, notifier: Notifier) -> None:
        key = (notifier.dirs, notifier.recursive)
        if self.notifiers.get(key) is not notifier:
            return  # replaced by a newer plan meanwhile
        notifier.ready = True
        if notifier.error:
            self.problems.append(notifier.error)
            del self.notifiers[key]  # the next plan tries again
        self._report()

    def _report(self) -> None:
        """Once every notifier of the plan watches: say so to the parent (tests and users wait
        for it: a change before it may be missed)."""
        if self._reported or not all(n.ready for n in self.notifiers.values()):
            return
        self._reported = True
        self.runtime.send(
            m.Watching(
                services=tuple(s.service for s in self.services),
                dirs=sum(len(n.dirs) for n in self.notifiers.values()),
                problems=tuple(self.problems),
            )
        )

    def changed(self, batch: Batch) -> None:
        """A batch of changed paths: which services' files they are; debounce per service."""
        now = time.monotonic()
        files: set[str] = set()
        for change, path in batch:
            if not os.path.isdir(path):
                files.add(path)
            # A directory's own change is not news, the files in it are. But files written into
            # a new directory before the notifier watched it raise no event: look for them.
            elif change == ADDED and any(
                s.match(path, DEFAULTS, directory=True) is not None for s in self.services
            ):
                files.update(files_under(path))
        paths = sorted(files)
        for service in self.services:
            matched = [r for p in paths if (r := service.match(p, DEFAULTS)) is not None]
            if matched:
                self.bursts.add(service.service, matched, now)
        self._schedule()

    def _schedule(self) -> None:
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        at = self.bursts.next_due()
        if at is not None:
            delay = max(0.0, at - time.monotonic())
            self._flush = asyncio.get_running_loop().call_later(delay, self._send)

    def _send(self) -> None:
        self._flush = None
        for due in self.bursts.due(time.monotonic()):
            self.runtime.send(m.FilesChanged(due.service, due.first, due.count))
        self._schedule()


def make_role(
    runtime: WorkerRuntime, configure: m.Configure, sockets: list[socket.socket]
) -> WatchRole:
    """The watch worker's role factory (named in the parent's worker table)."""
    return WatchRole(runtime)

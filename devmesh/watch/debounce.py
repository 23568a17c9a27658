"""Debouncing: one restart per burst of changes, whatever the number of files in it.

Pure (a function of the paths seen and a monotonic clock), so it is tested with a fake clock.
A service's burst is due once no change to its files came for `quiet` seconds, or when it has
lasted `longest` seconds (files rewritten without pause still restart it, that often at most).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass, field

QUIET = 0.3  # a `git checkout` writes its files with shorter pauses than this
LONGEST = 5.0
KEPT = 10_000  # distinct paths counted per burst; past that the count says "at least"


@dataclass
class Burst:
    """The changes to one service's files since the first of a burst."""

    first: str  # the path named in the restart's log line
    started: float
    last: float
    paths: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class Due:
    """A burst that is over: restart `service`, naming `first` and how many files changed."""

    service: str
    first: str
    count: int  # distinct paths (at most KEPT)


class Bursts:
    """The open burst of each service."""

    def __init__(self, quiet: float = QUIET, longest: float = LONGEST) -> None:
        self.quiet = quiet
        self.longest = longest
        self.open: dict[str, Burst] = {}

    def add(self, service: str, paths: Iterable[str], now: float) -> None:
        """Changes to `service`'s files seen at `now` (the first one is named if it opens a
        burst)."""
        burst = self.open.get(service)
        for path in paths:
            if burst is None:
                burst = self.open[service] = Burst(path, now, now)
            if len(burst.paths) < KEPT:
                burst.paths.add(path)
        if burst is not None:
            burst.last = now

    def due(self, now: float) -> list[Due]:
        """The bursts that are over at `now` (and forgets them)."""
        over = [
            name
            for name, b in self.open.items()
            if now - b.last >= self.quiet or now - b.started >= self.longest
        ]
        return [Due(name, (b := self.open.pop(name)).first, len(b.paths)) for name in over]

    def next_due(self) -> float | None:
        """When the next burst may be over (None: no burst is open)."""
        return min(
            (min(b.last + self.quiet, b.started + self.longest) for b in self.open.values()),
            default=None,
        )

    def keep(self, services: Collection[str]) -> None:
        """Forget the bursts of services no longer watched."""
        for name in [n for n in self.open if n not in services]:
            del self.open[name]

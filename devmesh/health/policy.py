"""What probe results mean: thresholds and the start period. Pure: time is passed in.

One `HealthTracker` per run of a service (a restart starts a new one). A service is `unknown`
until its probes decide: `healthy` after `healthy_threshold` successes in a row, `unhealthy`
after `unhealthy_threshold` failures in a row. Failures within `start_period` of the start do not
count (a slow starter is not unhealthy yet), but a success there counts at once (Docker's rule).
A service with no `health` of its own is only checked for readiness (its port): it goes back to
`unknown`, never to `unhealthy`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Health(enum.StrEnum):
    """What the probes say about one run of a service."""

    UNKNOWN = "unknown"  # no verdict yet: starting, or within its start period
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"


@dataclass
class HealthTracker:
    """The verdict for one run of a service, from its probe results."""

    healthy_threshold: int
    unhealthy_threshold: int
    start_period: float
    started_at: float  # monotonic
    # No `health` configured: the probe only says whether its port accepts connections. Such
    # a service is ready or not, never unhealthy (a worker with no port is simply not routed).
    readiness: bool = False
    status: Health = Health.UNKNOWN
    ok_streak: int = 0
    fail_streak: int = 0
    last_ok: bool | None = None
    last_detail: str = ""
    last_latency: float | None = None  # seconds
    last_at: float | None = None  # monotonic
    changed_at: float | None = None  # monotonic, of the last change of `status`

    def record(self, ok: bool, detail: str, latency: float | None, now: float) -> bool:
        """Take one probe result; True if the verdict changed."""
        self.last_ok, self.last_detail, self.last_latency, self.last_at = ok, detail, latency, now
        if ok:
            self.ok_streak += 1
            self.fail_streak = 0
            if self.status is not Health.HEALTHY and self.ok_streak >= self.healthy_threshold:
                return self._become(Health.HEALTHY, now)
            return False
        self.ok_streak = 0
        if now - self.started_at < self.start_period and self.status is Health.UNKNOWN:
            return False  # still starting: this failure is not held against it
        self.fail_streak += 1
        if self.fail_streak < self.unhealthy_threshold:
            return False
        down = Health.UNKNOWN if self.readiness else Health.UNHEALTHY
        if self.status is not down:
            return self._become(down, now)
        return False

    def _become(self, status: Health, now: float) -> bool:
        self.status = status
        self.changed_at = now
        return True

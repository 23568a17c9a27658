"""The health worker's role: run every probe the parent asks for, on its schedule, and report.

One task per run of a service; a probe that hangs holds only its own task (and is cut at its
timeout). Until a run's first success, it is probed every `FAST` seconds at most, so a service
that has just started gets traffic as soon as it answers; then every `interval`. An `eager`
target (run by hand) is probed every `FAST` seconds whenever it does not answer. What the
results mean (thresholds, the start period) is decided by the parent (`health.policy`).
"""

from __future__ import annotations

import asyncio
import socket
import time

from devmesh import messages as m
from devmesh.health.probes import probe
from devmesh.workers.base import WorkerRuntime

FAST = 0.25  # seconds between probes of a run that has not answered yet


class HealthRole:
    """Probes, one task per (service, generation)."""

    def __init__(self, runtime: WorkerRuntime) -> None:
        self.runtime = runtime
        self.tasks: dict[tuple[str, str], asyncio.Task[None]] = {}
        self.targets: dict[tuple[str, str], m.ProbeTarget] = {}
        self._stop = asyncio.Event()

    async def serve(self) -> None:
        """Run until stopped."""
        await self._stop.wait()
        for task in self.tasks.values():
            task.cancel()

    def handle(self, msg: m.ParentMessage) -> None:
        """A new plan: start the probes it adds, stop the ones it drops."""
        if not isinstance(msg, m.HealthPlan):
            return
        wanted = {(t.service, t.generation): t for t in msg.targets}
        # Dropped, or changed (the run turned out to listen on another port): stop it.
        for key in [k for k in self.tasks if wanted.get(k) != self.targets.get(k)]:
            self.tasks.pop(key).cancel()
            del self.targets[key]
        loop = asyncio.get_running_loop()
        for key, target in wanted.items():
            if key not in self.tasks:
                self.tasks[key] = loop.create_task(self._run(target))
                self.targets[key] = target

    def stop(self) -> None:
        """Stop probing."""
        self._stop.set()

    async def _run(self, t: m.ProbeTarget) -> None:
        answered = False
        while True:
            started = time.monotonic()
            result = await probe(t.check, t.target, t.timeout, t.cwd)
            latency = time.monotonic() - started
            self.runtime.send(
                m.HealthResult(t.service, t.generation, result.ok, result.detail, latency)
            )
            answered = result.ok if t.eager else answered or result.ok
            pause = t.interval if answered else min(t.interval, FAST)
            await asyncio.sleep(max(0.0, pause - latency))


def make_role(
    runtime: WorkerRuntime, configure: m.Configure, sockets: list[socket.socket]
) -> HealthRole:
    """The health worker's role factory (named in the parent's worker table)."""
    return HealthRole(runtime)

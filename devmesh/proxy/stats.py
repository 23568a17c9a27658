"""What the proxy counts and logs of every request, kept cheap for the data path.

`RequestStats.record` is a few dict operations per request; once a second the worker hands the
counts to `devmesh.metrics.ProxyMetrics`, which writes them to the shared metric files (an
`observe()` per request there would cost more than the rest of the bookkeeping together).
`RequestLog` formats one line per request when `[log] requests` asks for it, and hands them
out in batches.
"""

from __future__ import annotations

import json
import time
from bisect import bisect_left

from devmesh.metrics import DURATION_BUCKETS

# One cell per bucket, one for +Inf, and the sum of the durations last.
STATS_CELLS = len(DURATION_BUCKETS) + 2


class RequestStats:
    """Request counts and duration histograms since the last `take`: per (service, peer,
    method, code), the count in each duration bucket and the sum of the durations. One dict
    lookup per request; the counts and the (service, peer) histograms are made by `take`."""

    __slots__ = ("cells", "refused", "retries")

    def __init__(self) -> None:
        self.cells: dict[tuple[str, str, bytes, int], list[float]] = {}
        self.retries: dict[str, int] = {}
        self.refused = 0

    def record(self, service: str, peer: str, method: bytes, code: int, seconds: float) -> None:
        """One answered request (`ProxyServer.done` does the same inline)."""
        key = (service, peer, method, code)
        cells = self.cells.get(key)
        if cells is None:
            cells = self.cells[key] = [0.0] * STATS_CELLS
        cells[bisect_left(DURATION_BUCKETS, seconds)] += 1
        cells[-1] += seconds

    @property
    def counts(self) -> dict[tuple[str, str, bytes, int], int]:
        """Requests per (service, peer, method, code)."""
        return {key: int(sum(cells[:-1])) for key, cells in self.cells.items()}

    @property
    def times(self) -> dict[tuple[str, str], list[float]]:
        """Duration histograms per (service, peer): the cells of every method and code added."""
        out: dict[tuple[str, str], list[float]] = {}
        for (service, peer, _, _), cells in self.cells.items():
            total = out.get((service, peer))
            if total is None:
                out[(service, peer)] = list(cells)
            else:
                for i, value in enumerate(cells):
                    total[i] += value
        return out

    def retried(self, service: str) -> None:
        """A request went to another copy after one failed."""
        self.retries[service] = self.retries.get(service, 0) + 1

    def take(self) -> RequestStats:
        """Everything counted so far (and start again from nothing)."""
        taken = RequestStats()
        taken.cells, self.cells = self.cells, taken.cells
        taken.retries, self.retries = self.retries, taken.retries
        taken.refused, self.refused = self.refused, 0
        return taken

    def __bool__(self) -> bool:
        return bool(self.cells or self.refused or self.retries)


class RequestLog:
    """Request lines (`[log] requests`), JSON or text, kept by service until `take`."""

    def __init__(self, json_lines: bool) -> None:
        self.json = json_lines
        self.lines: dict[str, list[str]] = {}
        self.count = 0

    def add(
        self,
        *,
        method: bytes,
        path: bytes,
        status: int,
        service: str,
        peer: str,
        seconds: float,
        size: int,
        trace: bytes,
        host: bytes,
        client: bytes,
    ) -> None:
        """One answered request."""
        now = time.time()
        stamp = (
            f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(now))}.{int(now * 1000) % 1000:03d}Z"
        )
        ms = round(seconds * 1000, 3)
        if self.json:
            line = json.dumps(
                {
                    "time": stamp,
                    "method": method.decode("latin-1"),
                    "path": path.decode("latin-1"),
                    "status": status,
                    "service": service,
                    "peer_id": peer,
                    "duration_ms": ms,
                    "bytes": size,
                    "trace_id": trace.decode("latin-1"),
                    "host": host.decode("latin-1"),
                    "client": client.decode("latin-1"),
                },
                separators=(",", ":"),
            )
        else:
            where = f" via {peer}" if peer else ""
            line = (
                f"{stamp} {method.decode('latin-1')} {path.decode('latin-1')!s} {status} "
                f"{ms:g}ms {size}B {service or '-'}{where} trace={trace.decode('latin-1')}"
            )
        self.lines.setdefault(service, []).append(line)
        self.count += 1

    def take(self) -> dict[str, bytes]:
        """The lines so far, joined per service (no final newline)."""
        taken = {k: "\n".join(v).encode("utf-8", "replace") for k, v in self.lines.items()}
        self.lines.clear()
        self.count = 0
        return taken

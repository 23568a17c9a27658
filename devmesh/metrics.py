"""Every metric devmesh exports, and how `/metrics` is put together.

The workers write their counters and histograms to files in the project's metrics directory
(prometheus-client's multiprocess mode; the parent sets `PROMETHEUS_MULTIPROC_DIR` for its
workers only, never for the services). The control worker reads all of them at each scrape and
adds what the parent's state says: services up, restarts, peers. Names and units follow the
Prometheus conventions (`_total` counters, `_seconds` histograms, base units).

prometheus-client is imported only inside functions: the parent and the CLI do not load it.
"""

from __future__ import annotations

import contextlib
import shutil
from bisect import bisect_left
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prometheus_client import Counter, Histogram
    from prometheus_client.metrics_core import Metric

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# Request durations: from a millisecond (a local dev server) to a slow build or long poll.
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
PROBE_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5)


def prepare_dir(path: Path) -> dict[str, str]:
    """Empty the metrics directory (counts of an earlier run must not add up with ours) and
    return the environment the workers need to write there."""
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(mode=0o700, parents=True)
    return {MULTIPROC_ENV: str(path)}


def worker_died(path: Path, pid: int) -> None:
    """Forget a dead worker's live gauges (its counters keep counting in the totals)."""
    from prometheus_client import multiprocess

    with contextlib.suppress(OSError):
        multiprocess.mark_process_dead(pid, str(path))  # type: ignore[no-untyped-call]


# ---- the workers' metrics ----


def _counter(name: str, doc: str, labels: tuple[str, ...] = ()) -> Counter:
    from prometheus_client import Counter

    return Counter(name, doc, labels, registry=None)


def _histogram(name: str, doc: str, labels: tuple[str, ...], buckets: tuple[float, ...]) -> Any:
    from prometheus_client import Histogram

    return Histogram(name, doc, labels, buckets=buckets, registry=None)


class ProxyMetrics:
    """The proxy worker's metrics, written from the counts it keeps per request (`flush`)."""

    def __init__(self) -> None:
        self.requests = _counter(
            "devmesh_requests_total",
            "Requests answered by the proxy, by service, peer (empty: served here), method, code.",
            ("service", "peer", "method", "code"),
        )
        self.duration: Histogram = _histogram(
            "devmesh_request_duration_seconds",
            "Time from a request's head to the end of its response, by service and peer.",
            ("service", "peer"),
            DURATION_BUCKETS,
        )
        self.refused = _counter(
            "devmesh_proxy_refused_total", "Requests refused by the LAN access policy (403)."
        )
        self.retries = _counter(
            "devmesh_proxy_retries_total",
            "Requests sent again to another copy after one failed, by service.",
            ("service",),
        )
        from prometheus_client import Gauge

        # Summed over the live proxy workers; a dead worker's value goes with it.
        self.connections = Gauge(
            "devmesh_proxy_connections",
            "Open client connections of the proxy, WebSocket and other tunnels included.",
            registry=None,
            multiprocess_mode="livesum",
        )

    def flush(
        self,
        counts: Mapping[tuple[str, str, bytes, int], int],
        times: Mapping[tuple[str, str], list[float]],
        refused: int,
        retries: Mapping[str, int],
    ) -> None:
        """Add one interval's counts (see `devmesh.proxy.stats.RequestStats`)."""
        for (service, peer, method, code), n in counts.items():
            self.requests.labels(service, peer, method.decode("latin-1"), str(code)).inc(n)
        for (service, peer), cells in times.items():
            child = self.duration.labels(service, peer)
            # The histogram child's values, added to in bulk: `observe` once per request would
            # cost the proxy about 2.5 us a request (measured), the counts here nothing.
            # tests/test_metrics_unit.py checks the result against `observe`.
            buckets = child._buckets
            for i, count in enumerate(cells[:-1]):
                if count:
                    buckets[i].inc(count)
            child._sum.inc(cells[-1])
        if refused:
            self.refused.inc(refused)
        for service, n in retries.items():
            self.retries.labels(service).inc(n)


class ProbeStats:
    """Health probe counts and latencies, kept by the parent (which gets every result anyway)
    and shown by the control worker: the health worker imports no prometheus-client."""

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str, str], int] = {}
        self.cells: dict[tuple[str, str], list[float]] = {}

    def record(self, service: str, check: str, ok: bool, seconds: float) -> None:
        """One probe's result."""
        key = (service, check, "ok" if ok else "fail")
        self.counts[key] = self.counts.get(key, 0) + 1
        cells = self.cells.get((service, check))
        if cells is None:
            cells = self.cells[(service, check)] = [0.0] * (len(PROBE_BUCKETS) + 2)
        cells[bisect_left(PROBE_BUCKETS, seconds)] += 1
        cells[-1] += seconds

    def snapshot(self) -> dict[str, Any]:
        """Everything so far, as plain data for a `StateUpdate`."""
        return {
            "counts": [[*key, n] for key, n in self.counts.items()],
            "latency": [[*key, list(cells)] for key, cells in self.cells.items()],
        }


# ---- /metrics ----


class StateCollector:
    """Metrics from the parent's state (the control worker's latest snapshot of it)."""

    def __init__(self, state: Callable[[], Mapping[str, Any] | None]) -> None:
        self.state = state

    def collect(self) -> Iterator[Metric]:
        """Services up here and on peers, restarts, peers, and the build."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        state = self.state()
        if not state:
            return
        status, peers = state.get("status") or {}, state.get("peers") or {}
        info = GaugeMetricFamily("devmesh_build_info", "devmesh's version.", labels=["version"])
        info.add_metric([str(status.get("node", {}).get("version", ""))], 1)
        yield info
        up = GaugeMetricFamily(
            "devmesh_service_up",
            "1 when a copy of the service can be routed to (running and healthy), by source: "
            "local, or the peer's node id.",
            labels=["service", "source"],
        )
        restarts = CounterMetricFamily(
            "devmesh_service_restarts",
            "Restarts of a local service since devmesh started.",
            labels=["service"],
        )
        for svc in status.get("services", ()):
            up.add_metric([svc["name"], "local"], 1 if svc.get("routable") else 0)
            restarts.add_metric([svc["name"]], svc.get("restarts", 0))
        live = peers.get("peers", ())
        for peer in live:
            for svc in peer.get("services", ()):
                up.add_metric([svc["name"], peer["node"]], 1 if svc["state"] == "running" else 0)
        yield up
        yield restarts
        count = GaugeMetricFamily("devmesh_peers", "Peers of this namespace seen on the LAN.")
        count.add_metric([], len(live))
        yield count
        yield from _probes(state.get("probes") or {})
        yield from _discovery(peers.get("stats") or {})


def _probes(probes: Mapping[str, Any]) -> Iterator[Metric]:
    """The parent's `ProbeStats.snapshot()` as Prometheus metrics."""
    from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
    from prometheus_client.utils import floatToGoString

    probes_total = CounterMetricFamily(
        "devmesh_health_probes",
        "Health probes run, by service, check (http, tcp, cmd) and result (ok, fail).",
        labels=["service", "check", "result"],
    )
    for service, check, result, n in probes.get("counts", ()):
        probes_total.add_metric([service, check, result], n)
    yield probes_total
    latency = HistogramMetricFamily(
        "devmesh_health_probe_duration_seconds",
        "How long health probes took, by service and check.",
        labels=["service", "check"],
    )
    for service, check, cells in probes.get("latency", ()):
        running, buckets = 0.0, []
        for bound, n in zip((*PROBE_BUCKETS, float("inf")), cells[:-1], strict=True):
            running += n
            buckets.append((floatToGoString(bound), running))  # type: ignore[no-untyped-call]
        latency.add_metric([service, check], buckets, cells[-1])
    yield latency


def _discovery(stats: Mapping[str, Any]) -> Iterator[Metric]:
    """The discovery worker's counters (in `devmesh peers --json`) as Prometheus metrics;
    none while discovery is off."""
    from prometheus_client.core import CounterMetricFamily

    if not stats:
        return
    for name, key, doc in (
        ("devmesh_discovery_packets_received", "received", "Discovery datagrams received."),
        ("devmesh_discovery_announcements_sent", "sent", "Announcements sent (each part)."),
    ):
        counter = CounterMetricFamily(name, doc)
        counter.add_metric([], stats.get(key, 0))
        yield counter
    rejected = CounterMetricFamily(
        "devmesh_discovery_packets_rejected",
        "Discovery datagrams dropped, by reason (malformed, version, other_namespace, stale, ...).",
        labels=["reason"],
    )
    for reason, n in (stats.get("dropped") or {}).items():
        rejected.add_metric([reason], n)
    yield rejected


def render(state: Callable[[], Mapping[str, Any] | None], directory: str) -> bytes:
    """The whole `/metrics` page: every worker's files, then the state."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry(auto_describe=False)
    MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
    registry.register(StateCollector(state))
    return generate_latest(registry)

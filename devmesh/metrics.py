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
import glob
import os
import shutil
from bisect import bisect_left
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prometheus_client import Counter, Histogram
    from prometheus_client.metrics_core import Metric

    from devmesh.config.model import ServiceConfig

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


REQUESTS = (
    "devmesh_requests",
    "Requests answered by the proxy, by service, peer (empty: served here), method, code.",
)
DURATION = (
    "devmesh_request_duration_seconds",
    "Time from a request's head to the end of its response, by service and peer.",
)
RETRIES = (
    "devmesh_proxy_retries",
    "Requests sent again to another copy after one failed, by service.",
)
REFUSED = ("devmesh_proxy_refused", "Requests refused by the LAN access policy (403).")
# The series of each of this node's services that exist at 0 from the start, as Prometheus's
# instrumentation guidance asks (a series that appears only at its first request makes a panel
# say "no data", and `rate()` misses that first increase). Known at start: the service, served
# here (peer ""), and two answers every service can get: GET 200, the common one, and GET 503,
# which devmesh itself answers while no copy of the service is up (the 5xx the error panel
# counts). Other methods, codes and peers are not known before they happen.
ZERO_REQUESTS = (("GET", "200"), ("GET", "503"))
# Why the discovery worker drops a datagram (devmesh/discovery: BadPacket reasons, and the
# table's own): each counted from 0.
DISCOVERY_DROP_REASONS = ("malformed", "oversized", "version", "other_namespace", "stale")


class ProxyMetrics:
    """The proxy worker's metrics, written from the counts it keeps per request (`flush`)."""

    def __init__(self) -> None:
        self.requests = _counter(
            f"{REQUESTS[0]}_total", REQUESTS[1], ("service", "peer", "method", "code")
        )
        self.duration: Histogram = _histogram(
            DURATION[0], DURATION[1], ("service", "peer"), DURATION_BUCKETS
        )
        self.refused = _counter(f"{REFUSED[0]}_total", REFUSED[1])
        self.retries = _counter(f"{RETRIES[0]}_total", RETRIES[1], ("service",))
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


def probe_checks(services: Mapping[str, ServiceConfig]) -> dict[str, str]:
    """The `check` label of each service's probes: its `health` kind, else "tcp" (its port)."""
    return {name: cfg.health.kind if cfg.health else "tcp" for name, cfg in services.items()}


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

    def snapshot(self, checks: Mapping[str, str] | None = None) -> dict[str, Any]:
        """Everything so far, as plain data for a `StateUpdate`; `checks` (service -> the kind
        of its probe) are counted from 0 even before their first probe."""
        counts = {
            (name, check, result): 0
            for name, check in (checks or {}).items()
            for result in ("ok", "fail")
        }
        cells = {
            (name, check): [0.0] * (len(PROBE_BUCKETS) + 2)
            for name, check in (checks or {}).items()
        }
        counts.update(self.counts)
        cells.update(self.cells)
        return {
            "counts": [[*key, n] for key, n in counts.items()],
            "latency": [[*key, list(c)] for key, c in cells.items()],
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
            buckets.append((_le(bound), running))
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
        (
            "devmesh_discovery_replies_sent",
            "replied",
            "Announcements sent by unicast at once to a peer just heard (a new node or boot).",
        ),
        (
            "devmesh_discovery_replies_limited",
            "replies_limited",
            "Such replies not sent: over the per-peer or per-interval limit.",
        ),
    ):
        counter = CounterMetricFamily(name, doc)
        counter.add_metric([], stats.get(key, 0))
        yield counter
    rejected = CounterMetricFamily(
        "devmesh_discovery_packets_rejected",
        "Discovery datagrams dropped, by reason (malformed, version, other_namespace, stale, ...).",
        labels=["reason"],
    )
    dropped = dict.fromkeys(DISCOVERY_DROP_REASONS, 0) | dict(stats.get("dropped") or {})
    for reason, n in dropped.items():
        rejected.add_metric([reason], n)
    yield rejected


class WorkerCollector:
    """The workers' metric files, with a 0 for each series of `ZERO_REQUESTS` (and retries,
    and the latency histogram) of every service in the state that no worker has written yet
    (a service added by a reload gets its zeros at the next scrape), and for the refused
    requests until the proxy's first report."""

    def __init__(self, directory: str, state: Callable[[], Mapping[str, Any] | None]) -> None:
        from prometheus_client.multiprocess import MultiProcessCollector

        self.files = MultiProcessCollector(None, path=directory)  # type: ignore[no-untyped-call]
        self.directory = directory
        self.state = state

    def _merged(self) -> Iterator[Metric]:
        """prometheus-client's merge of the workers' files, without a file a worker is creating
        at this very moment: empty until its header is written, reading it would fail the
        whole scrape with a 500."""
        files = []
        for path in glob.glob(os.path.join(self.directory, "*.db")):
            with contextlib.suppress(OSError):  # a live gauge's file, removed at its death
                if os.path.getsize(path) > 0:
                    files.append(path)
        merged: Iterator[Metric] = self.files.merge(files, accumulate=True)  # type: ignore[no-untyped-call]
        return merged

    def collect(self) -> Iterator[Metric]:
        """Every family in the files, completed with the zero series."""
        families = {f.name: f for f in self._merged()}
        _zero(families, REFUSED, "counter", [("_total", {})])  # before the first report
        status = (self.state() or {}).get("status") or {}
        for svc in status.get("services", ()):
            name = svc["name"]
            for method, code in ZERO_REQUESTS:
                labels = {"service": name, "peer": "", "method": method, "code": code}
                _zero(families, REQUESTS, "counter", [("_total", labels)])
            _zero(families, RETRIES, "counter", [("_total", {"service": name})])
            here = {"service": name, "peer": ""}
            buckets = [
                ("_bucket", {**here, "le": _le(b)}) for b in (*DURATION_BUCKETS, float("inf"))
            ]
            _zero(families, DURATION, "histogram", [*buckets, ("_count", here), ("_sum", here)])
        yield from families.values()


def _zero(
    families: dict[str, Metric],
    family: tuple[str, str],
    kind: str,
    samples: list[tuple[str, dict[str, str]]],
) -> None:
    """Add `samples` (suffix, labels) at 0 to a family, unless its first one is there already."""
    from prometheus_client.metrics_core import Metric

    name, doc = family
    metric = families.get(name)
    if metric is None:
        metric = families[name] = Metric(name, doc, kind)
    suffix, labels = samples[0]
    if any(s.name == name + suffix and s.labels == labels for s in metric.samples):
        return
    for suffix, labels in samples:
        metric.add_sample(name + suffix, labels, 0.0)


def _le(bound: float) -> str:
    from prometheus_client.utils import floatToGoString

    text: str = floatToGoString(bound)  # type: ignore[no-untyped-call]
    return text


def render(state: Callable[[], Mapping[str, Any] | None], directory: str) -> bytes:
    """The whole `/metrics` page: every worker's files (with the zero series), then the state."""
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry(auto_describe=False)
    registry.register(WorkerCollector(directory, state))
    registry.register(StateCollector(state))
    return generate_latest(registry)

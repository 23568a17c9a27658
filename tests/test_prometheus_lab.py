"""The test Prometheus itself (tests/prometheus.py), and the Grafana dashboard in contrib/grafana/
checked against it: every query of every panel must be PromQL that a real Prometheus accepts."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator

import prometheus_client
import pytest

from tests.conftest import free_port
from tests.prometheus import (
    PrometheusServer,
    dashboard,
    promtool_check_metrics,
    queries,
    require_prometheus,
    resolve,
    value,
)

DS_REF = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
# What devmesh exports; the dashboard must show each (histograms through their buckets).
METRICS = [
    "devmesh_requests_total",
    "devmesh_request_duration_seconds_bucket",
    "devmesh_proxy_refused_total",
    "devmesh_proxy_retries_total",
    "devmesh_peers",
    "devmesh_service_up",
    "devmesh_service_restarts_total",
    "devmesh_health_probes_total",
    "devmesh_health_probe_duration_seconds_bucket",
    "devmesh_discovery_packets_received_total",
    "devmesh_discovery_packets_rejected_total",
    "devmesh_discovery_announcements_sent_total",
    "devmesh_build_info",
]


@pytest.fixture
def ticking() -> Iterator[tuple[str, prometheus_client.CollectorRegistry]]:
    """A prometheus_client endpoint on loopback whose counter goes up 20 times a second."""
    registry = prometheus_client.CollectorRegistry()
    counter = prometheus_client.Counter("lab_ticks", "Ticks of the lab.", registry=registry)
    port = free_port()
    server, thread = prometheus_client.start_http_server(port, "127.0.0.1", registry)
    stop = threading.Event()

    def tick() -> None:
        while not stop.wait(0.05):
            counter.inc()

    ticker = threading.Thread(target=tick, daemon=True)
    ticker.start()
    try:
        yield f"127.0.0.1:{port}", registry
    finally:
        stop.set()
        ticker.join(5)
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_prometheus_scrapes_a_target_and_answers_promql(
    ticking: tuple[str, prometheus_client.CollectorRegistry],
) -> None:
    target, registry = ticking
    with PrometheusServer([target]) as prom:
        rates = prom.wait_for('rate(lab_ticks_total{job="test"}[5s])', lambda r: r and value(r[0]))
        assert 5 < value(rates[0]) < 40, rates  # 20/s, give or take a scheduler
        [scraped] = prom.targets()
        assert scraped["health"] == "up", scraped
        assert scraped["scrapeUrl"] == f"http://{target}/metrics"
        [total] = prom.query("lab_ticks_total")
        assert 0 < value(total) <= (registry.get_sample_value("lab_ticks_total") or 0)


def test_promtool_passes_good_metrics_and_names_the_problem_in_bad_ones() -> None:
    require_prometheus()
    registry = prometheus_client.CollectorRegistry()
    prometheus_client.Counter("lab_requests", "Requests.", ["code"], registry=registry).labels(
        "200"
    ).inc()
    prometheus_client.Histogram("lab_seconds", "Latency.", registry=registry).observe(0.2)
    good = promtool_check_metrics(prometheus_client.generate_latest(registry).decode())
    assert good.returncode == 0, good.stderr

    no_total = promtool_check_metrics(
        "# HELP lab_hits Hits.\n# TYPE lab_hits counter\nlab_hits 1\n"
    )
    assert no_total.returncode != 0
    assert 'lab_hits counter metrics should have "_total" suffix' in no_total.stderr

    garbled = promtool_check_metrics("lab_hits{code=200} 1\n")
    assert garbled.returncode != 0
    assert "parsing error" in garbled.stderr


# ---- the Grafana dashboard


def test_dashboard_has_the_structure_grafana_needs() -> None:
    dash = dashboard()
    assert dash["schemaVersion"] >= 36 and dash["uid"] and dash["title"]
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
    service = variables["service"]
    assert service["datasource"] == DS_REF
    assert service["definition"] == "label_values(devmesh_requests_total, service)"
    assert service["query"]["query"] == service["definition"]
    assert service["includeAll"] and service["allValue"] == ".*"

    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    taken: set[tuple[int, int]] = set()
    for panel in dash["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        cells = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not cells & taken, f"{panel['title']} overlaps another panel"
        taken |= cells
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == DS_REF, panel["title"]
        assert panel["targets"], f"{panel['title']} has no query"
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DS_REF, panel["title"]
            assert target["expr"].strip(), panel["title"]

    exprs = " ".join(expr for _, expr in queries(dash))
    missing = [m for m in METRICS if not re.search(rf"\b{m}\b", exprs)]
    assert not missing, f"no panel shows {missing}"


def test_every_dashboard_query_is_accepted_by_prometheus() -> None:
    dash = dashboard()
    variables = {v["name"] for v in dash["templating"]["list"]}
    with PrometheusServer([]) as prom:
        # The check can fail: a broken query is an error, not an empty result.
        assert prom.api("query", query="sum by (service) (rate(x[1m])")["status"] == "error"
        rejected = []
        for title, expr in queries(dash):
            promql = resolve(expr, variables)
            assert "$" not in promql, promql
            answer = prom.api("query", query=promql)
            if answer["status"] != "success":
                rejected.append(f"{title}: {promql}\n  {answer.get('error')}")
        assert not rejected, "\n".join(rejected)
        # What Grafana asks for `label_values(devmesh_requests_total, service)`.
        series = prom.api("label/service/values", **{"match[]": "devmesh_requests_total"})
        assert series["status"] == "success", series

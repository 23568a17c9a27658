"""`/metrics` of a running mesh: promtool finds nothing to fault, a real Prometheus scrapes it,
and every query of the Grafana dashboard evaluates against what devmesh exports."""

from __future__ import annotations

import contextlib
import http.client
import os
import re
import signal
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from prometheus_client.parser import text_string_to_metric_families

from devmesh.metrics import DISCOVERY_DROP_REASONS, render
from tests.conftest import REPO, Project, http_get, wait_until
from tests.prometheus import (
    PrometheusServer,
    dashboard,
    promtool_check_metrics,
    queries,
    require_prometheus,
    resolve,
    value,
)


def get(port: int, host: str) -> int:
    """The status of one GET / through the proxy with this Host header."""
    return http_get(port, host)[0]


def answers(port: int, host: str) -> bool:
    """True once the proxy serves `host` with a 200."""
    try:
        return get(port, host) == 200
    except OSError:
        return False


def scrape(url: str) -> str:
    """The text of one GET of `/metrics`."""
    with urllib.request.urlopen(url, timeout=5) as response:
        assert response.status == 200
        text: str = response.read().decode()
        return text


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of the sample `name{labels...}` in an exposition (other labels ignored)."""
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and labels.items() <= s.labels.items():
                return float(s.value)
    return None


@pytest.fixture
def api(project: Project) -> Iterator[Project]:
    """A mesh with one HTTP service, `api`, answering through the proxy."""
    require_prometheus()
    project.toml(
        """
        [services.api]
        command = "python3 -m http.server $PORT --bind 127.0.0.1"
        """
    )
    project.up()
    wait_until(lambda: answers(project.proxy_port, "api.localhost"), 15, "api through the proxy")
    yield project


@pytest.fixture
def traffic(api: Project) -> Iterator[None]:
    """GETs to `api` through the proxy, 20 a second, until the test ends (at most 2 minutes)."""
    stop = threading.Event()

    def send() -> None:
        for _ in range(2400):
            if stop.wait(0.05):
                return
            with contextlib.suppress(OSError):  # the rates the test reads show what failed
                get(api.proxy_port, "api.localhost")

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    yield
    stop.set()
    sender.join(10)


def test_metrics_pass_promtool_and_count_requests(api: Project) -> None:
    port = api.proxy_port
    for _ in range(10):
        assert get(port, "api.localhost") == 200
    assert get(port, "nobody.localhost") == 404
    node = api.status()["node"]
    url = node["dashboard"]["metrics"]
    assert url == f"{node['dashboard']['url']}metrics"

    # The proxy hands its counts over once a second, one metric after the other: a scrape in
    # between sees some of them.
    def counted() -> str | None:
        text = scrape(url)
        served = sample(text, "devmesh_requests_total", service="api", code="200", method="GET")
        timed = sample(text, "devmesh_request_duration_seconds_count", service="api", peer="")
        unknown = sample(text, "devmesh_requests_total", service="", code="404")
        # Every answer to api is timed: the 200s, and any 503 while it was not up yet (under
        # load the fixture's wait for it can see a few).
        answered = sum(samples(text, "devmesh_requests_total", service="api"))
        return text if (served or 0) >= 11 and timed == answered and unknown else None

    text = wait_until(counted, 15, "the requests in /metrics")
    # The ten, and the one that found api up (none before it was a 200); each counted once.
    assert sample(text, "devmesh_requests_total", service="api", code="200") == 11
    assert sum(samples(text, "devmesh_request_duration_seconds_count", service="api")) >= 11
    assert sample(text, "devmesh_requests_total", service="", code="404") == 1
    check = promtool_check_metrics(text)
    assert check.returncode == 0, f"promtool check metrics:\n{check.stderr}\n{text}"
    assert sample(text, "devmesh_service_up", service="api", source="local") == 1
    assert sample(text, "devmesh_service_restarts_total", service="api") == 0
    assert sample(text, "devmesh_build_info", version=node["version"]) == 1
    assert sample(text, "devmesh_peers") == 0
    # Health probes (api has no `health`: its port is checked for readiness, "tcp"): counted
    # by the parent from every result, with their latency histogram.
    probed = sample(text, "devmesh_health_probes_total", service="api", check="tcp", result="ok")
    assert probed is not None and probed >= 1
    # Every probe is timed, the ones that failed too (api may not listen yet at the first).
    every = sum(samples(text, "devmesh_health_probes_total", service="api", check="tcp"))
    timed = sample(text, "devmesh_health_probe_duration_seconds_count", service="api", check="tcp")
    assert timed == every
    assert sample(text, "devmesh_health_probe_duration_seconds_bucket", le="+Inf") == every
    # Discovery is off in these tests: no discovery metrics rather than false zeros.
    assert sample(text, "devmesh_discovery_packets_received_total") is None


def test_prometheus_scrapes_devmesh_and_the_dashboard_has_data(api: Project, traffic: None) -> None:
    metrics = urlsplit(api.status()["node"]["dashboard"]["metrics"])
    with PrometheusServer([metrics.netloc], metrics_path=metrics.path) as prom:
        rates = prom.wait_for(
            'sum(rate(devmesh_requests_total{service="api", code="200"}[10s]))',
            lambda r: r and value(r[0]) > 0,
        )
        assert value(rates[0]) < 100, rates  # 20 a second, not counted twice
        [up] = prom.wait_for('devmesh_service_up{service="api", source="local"}')
        assert value(up) == 1
        [target] = prom.targets()
        assert target["health"] == "up", target

        dash = dashboard()
        variables = {v["name"] for v in dash["templating"]["list"]}
        panels: dict[str, list[dict[str, Any]]] = {}
        for title, expr in queries(dash):
            panels.setdefault(title, []).extend(prom.query(resolve(expr, variables)))
        # The panels the traffic and the running service must fill.
        for title in (
            "Request rate per service",
            "Latency per service (p50, p95, p99)",
            "Requests by peer",
            "Services up",
            "Restarts (last hour)",
            "devmesh versions",
        ):
            assert panels[title], f"{title}: no data"
        assert {s["metric"].get("service") for s in panels["Request rate per service"]} >= {"api"}
        assert {s["metric"].get("peer") for s in panels["Requests by peer"]} == {"local"}
        # No 5xx is a ratio of 0, not a missing line. (Requests that named no service, a 404,
        # are a line without a service label.)
        ratio = {
            s["metric"].get("service", ""): value(s)
            for s in panels["Error ratio per service (5xx)"]
        }
        assert ratio["api"] == 0, ratio


def test_counts_outlive_a_killed_proxy_worker_and_start_again_with_devmesh(
    project: Project,
) -> None:
    # Not the `api` fixture: no Prometheus is needed to read the counters.
    project.toml(
        """
        [services.api]
        command = "python3 -m http.server $PORT --bind 127.0.0.1"
        """
    )
    run = project.up()
    wait_until(lambda: answers(project.proxy_port, "api.localhost"), 15, "api through the proxy")
    url = project.status()["node"]["dashboard"]["metrics"]

    def served() -> float:
        return sample(scrape(url), "devmesh_requests_total", service="api", code="200") or 0.0

    for _ in range(4):
        assert get(project.proxy_port, "api.localhost") == 200
    wait_until(lambda: served() == 5, 10, "5 requests counted")  # 4 and the one waited for

    def connections() -> float | None:
        return sample(scrape(url), "devmesh_proxy_connections")

    # A client holding a keep-alive connection open is counted by the live worker.
    held = http.client.HTTPConnection("127.0.0.1", project.proxy_port, timeout=10)
    held.request("GET", "/", headers={"Host": "api.localhost"})
    held.getresponse().read()
    wait_until(lambda: connections() == 1, 10, "the open connection counted")
    worker = next(w for w in project.status()["workers"] if w["name"] == "proxy-1")
    os.kill(worker["pid"], signal.SIGKILL)
    held.close()

    def restarted() -> bool:
        now = next(w for w in project.status()["workers"] if w["name"] == "proxy-1")
        return now["state"] == "running" and now["pid"] != worker["pid"]

    wait_until(restarted, 20, "a new proxy worker")
    wait_until(lambda: answers(project.proxy_port, "api.localhost"), 15, "api served again")
    # The dead worker's counts stay in the total: a counter never goes down while devmesh runs;
    # its gauge went with it (marked dead), or its connection would be counted for ever.
    wait_until(lambda: served() == 7, 10, "the dead worker's 6 and the new worker's 1")
    wait_until(lambda: connections() == 0, 10, "the dead worker's connection no longer counted")
    project.cli("down")
    run.proc.wait(20)
    # A new devmesh starts from nothing: the last run's files were wiped.
    project.up()
    url = project.status()["node"]["dashboard"]["metrics"]
    assert served() == 0


def test_service_up_is_what_the_proxy_routes_to(project: Project) -> None:
    # `slow` runs, but its probe has not said healthy yet (it fails within its start period):
    # the proxy does not route to it, so it is not up; `api` is.
    project.toml(
        """
        [services.api]
        command = "python3 -m http.server $PORT --bind 127.0.0.1"

        [services.slow]
        command = "python3 -m http.server $PORT --bind 127.0.0.1"
        health = "cmd:false"
        start_period = "60s"
        """
    )
    project.up()
    wait_until(lambda: answers(project.proxy_port, "api.localhost"), 15, "api through the proxy")
    project.wait_state("slow", "running")
    url = project.status()["node"]["dashboard"]["metrics"]

    def both() -> str | None:
        text = scrape(url)
        up = sample(text, "devmesh_service_up", service="api", source="local")
        return (
            text
            if up == 1 and sample(text, "devmesh_service_up", service="slow") is not None
            else None
        )

    text = wait_until(both, 10, "both services in /metrics")
    assert sample(text, "devmesh_service_up", service="slow", source="local") == 0
    assert get(project.proxy_port, "slow.localhost") == 503


def samples(text: str, name: str, **labels: str) -> list[float]:
    """Every sample `name{labels...}` in an exposition (other labels ignored)."""
    return [
        float(s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name and labels.items() <= s.labels.items()
    ]


ZERO_TOML = """
[services.api]
command = "python3 -m http.server $PORT --bind 127.0.0.1"

[services.job]
command = "sleep 1000"
health = "cmd:true"
"""


def test_known_series_are_zero_from_the_start_and_for_services_a_reload_adds(
    project: Project,
) -> None:
    """Before any request, each service's requests (GET 200 and 503, served here), retries,
    latency histogram and probe results (ok and fail) are there at 0; a service added by a
    reload gets the same; a first request counts on the zero series, not on a new one."""
    project.toml(ZERO_TOML)
    project.up()
    url = project.status()["node"]["dashboard"]["metrics"]

    def both_up() -> str | None:
        text = scrape(url)
        ups = [
            sample(text, "devmesh_service_up", service=s, source="local") for s in ("api", "job")
        ]
        return text if ups == [1, 1] else None

    text = wait_until(both_up, 20, "api and job up in /metrics")  # no request sent yet
    for service, check in (("api", "tcp"), ("job", "cmd")):
        for code in ("200", "503"):
            got = samples(
                text, "devmesh_requests_total", service=service, peer="", method="GET", code=code
            )
            assert got == [0], (service, code, got)
        assert samples(text, "devmesh_proxy_retries_total", service=service) == [0]
        assert samples(text, "devmesh_request_duration_seconds_count", service=service) == [0]
        buckets = samples(text, "devmesh_request_duration_seconds_bucket", service=service, peer="")
        assert len(buckets) == 15 and not any(buckets)  # 14 bounds and +Inf
        fails = samples(
            text, "devmesh_health_probes_total", service=service, check=check, result="fail"
        )
        # job's `cmd:true` never fails: the zero series itself. api may fail a probe or two
        # while it starts on a loaded machine: its series is there either way.
        assert fails == [0] if service == "job" else len(fails) == 1, (service, fails)
    assert samples(text, "devmesh_proxy_refused_total") == [0]
    check = promtool_check_metrics(text)
    assert check.returncode == 0, f"promtool check metrics:\n{check.stderr}\n{text}"

    project.toml(ZERO_TOML + '\n[services.extra]\ncommand = "sleep 1000"\n')

    def extra_zeros() -> str | None:
        text = scrape(url)
        added = samples(text, "devmesh_requests_total", service="extra", code="200")
        # Its port never answers (sleep): its failed probes may have started counting.
        probes = samples(text, "devmesh_health_probes_total", service="extra", result="ok")
        return text if added == [0] and probes == [0] else None

    text = wait_until(extra_zeros, 20, "the zero series of a service added by a reload")
    assert samples(text, "devmesh_proxy_retries_total", service="extra") == [0]
    assert promtool_check_metrics(text).returncode == 0

    assert get(project.proxy_port, "api.localhost") == 200

    def counted() -> list[float]:
        text = scrape(url)
        got = samples(text, "devmesh_requests_total", service="api", method="GET", code="200")
        return got if got == [1] else []

    wait_until(counted, 10, "the request on the one api GET 200 series")


def test_dashboard_panels_show_zero_not_no_data_before_any_request(project: Project) -> None:
    """Every panel of the Grafana dashboard has a value with no traffic at all (discovery is
    off in these tests: its panel alone is empty); the traffic panels say 0."""
    require_prometheus()
    project.toml(ZERO_TOML)
    project.up()
    project.wait_state("api", "running")
    metrics = urlsplit(project.status()["node"]["dashboard"]["metrics"])
    with PrometheusServer([metrics.netloc], metrics_path=metrics.path) as prom:
        prom.wait_for('devmesh_service_up{service="api", source="local"} == 1')
        dash = dashboard()
        variables = {v["name"] for v in dash["templating"]["list"]}
        for title, expr in queries(dash):
            if title == "Discovery packets":
                continue
            # A rate needs two scrapes: wait for them rather than for a fixed time.
            result = prom.wait_for(resolve(expr, variables), timeout=20)
            assert result, f"{title}: no data"
            if title in (
                "Request rate per service",
                "Error ratio per service (5xx)",
                "Requests by peer",
                "Proxy refused and retried requests",
                "Health probe failures",
            ):
                assert all(value(s) == 0 for s in result), (title, result)
                if "service" in result[0]["metric"]:
                    services = {s["metric"]["service"] for s in result}
                    assert services >= {"api", "job"}, (title, result)


def test_discovery_drop_reasons_count_from_zero_and_are_the_ones_discovery_uses(
    tmp_path: Path,
) -> None:
    """Every reason the discovery worker drops a datagram for is a series at 0 (while
    discovery runs); the list is the one the discovery code counts into."""
    state = {
        "status": {"services": []},
        "peers": {
            "stats": {
                "received": 3,
                "sent": 2,
                "replied": 4,
                "replies_limited": 1,
                "dropped": {"stale": 2},
            }
        },
    }
    text = render(lambda: state, str(tmp_path)).decode()
    assert samples(text, "devmesh_discovery_replies_sent_total") == [4]
    assert samples(text, "devmesh_discovery_replies_limited_total") == [1]
    for reason in DISCOVERY_DROP_REASONS:
        expected = [2] if reason == "stale" else [0]
        assert samples(text, "devmesh_discovery_packets_rejected_total", reason=reason) == expected
    source = "".join(p.read_text() for p in (REPO / "devmesh" / "discovery").glob("*.py"))
    used = set(re.findall(r'BadPacket\("(\w+)"|dropped\["(\w+)"\]', source))
    assert {a or b for a, b in used} == set(DISCOVERY_DROP_REASONS)


def test_a_metric_file_being_created_does_not_fail_the_scrape(tmp_path: Path) -> None:
    """A worker creating its file (empty until its header is written) while /metrics is read:
    the scrape skips that file instead of answering 500 (seen under load in CI)."""
    from devmesh.metrics import render

    (tmp_path / "counter_4242.db").write_bytes(b"")
    page = render(lambda: None, str(tmp_path)).decode()
    assert "devmesh_proxy_refused_total 0.0" in page  # rendered, the empty file skipped

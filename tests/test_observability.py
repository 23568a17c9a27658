"""Request lines, trace ids across the proxy, OTLP spans, log levels and the loopback control port,
through a real `devmesh up` with a real backend service."""

from __future__ import annotations

import http.client
import json
from pathlib import Path
from typing import Any

from devmesh.metrics import DURATION_BUCKETS, ProxyMetrics
from devmesh.proxy.stats import RequestStats
from tests.apps import http_app
from tests.conftest import Project, wait_until
from tests.conftest import http_get as get
from tests.otlp_receiver import OtlpReceiver

# Answers every GET with what it received: path and headers, as JSON.
ECHO = http_app(
    """
    body = json.dumps({"path": self.path, "headers": dict(self.headers.items())}).encode()
    headers["Content-Type"] = "application/json"
    """,
    keep_alive=True,
)


def echo_project(project: Project, extra: str = "") -> None:
    project.write("echo.py", ECHO)
    project.toml(f'{extra}\n[services.web]\ncommand = "python3 echo.py"\n')


def json_lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def test_histogram_written_in_bulk_equals_observe() -> None:
    # ProxyMetrics adds a second's counts to the histogram's own cells at once (not one
    # observe() per request): the exported samples must be the same as observe() gives.
    from prometheus_client import CollectorRegistry, Histogram, generate_latest

    durations = [0.0004, 0.001, 0.0011, 0.02, 0.3, 2.0, 29.0, 31.0, 0.001, 0.0025]
    stats = RequestStats()
    for d in durations:
        stats.record("api", "", b"GET", 200, d)
    metrics = ProxyMetrics()
    taken = stats.take()
    metrics.flush(taken.counts, taken.times, 0, {})
    reference = Histogram(
        "devmesh_request_duration_seconds",
        "reference",
        ["service", "peer"],
        buckets=DURATION_BUCKETS,
        registry=CollectorRegistry(),
    )
    for d in durations:
        reference.labels("api", "").observe(d)

    def samples(metric: Any) -> dict[tuple[str, str], float]:
        return {
            (s.name, s.labels.get("le", "")): s.value
            for family in metric.collect()
            for s in family.samples
            if not s.name.endswith("_created")
        }

    assert samples(metrics.duration) == samples(reference)
    assert not stats  # take() left nothing behind
    assert generate_latest  # the module the control worker renders with imports


def test_json_request_lines_in_a_file_then_text_lines_among_the_service_log(
    project: Project,
) -> None:
    echo_project(project, '[log]\nrequests = "requests.jsonl"\nformat = "json"')
    project.up()
    project.wait_state("web", "running")
    lines_file = project.root / "requests.jsonl"
    port = project.proxy_port
    wait_until(lambda: get(port, "web.localhost")[0] == 200, 20, "web to answer")
    status, body, headers = get(
        port, "web.localhost", "/x?y=1", {"X-DevMesh-Trace-ID": "my-trace-1"}
    )
    assert status == 200 and headers["x-devmesh-trace-id"] == "my-trace-1"
    assert get(port, "nothing.localhost", "/")[0] == 404

    def logged() -> list[dict[str, Any]]:
        lines = json_lines(lines_file)
        return lines if any(r["path"] == "/x?y=1" for r in lines) and len(lines) >= 3 else []

    lines = wait_until(logged, 10, "the request lines in requests.jsonl")
    line = next(r for r in lines if r["path"] == "/x?y=1")
    assert line["method"] == "GET" and line["status"] == 200 and line["service"] == "web"
    assert line["peer_id"] == "" and line["trace_id"] == "my-trace-1"
    assert line["bytes"] == len(body) and 0 < line["duration_ms"] < 10_000
    assert line["time"].endswith("Z") and line["host"] == "web.localhost"
    missing = next(r for r in lines if r["status"] == 404)
    assert missing["service"] == "" and missing["bytes"] > 0

    # Text lines among the service's own output (hot reload restarts the proxy workers).
    echo_project(project, '[log]\nrequests = "service"')
    project.wait_state("web", "running")

    def in_service_log() -> bool:
        get(port, "web.localhost", "/among-its-own")
        out = project.cli("logs", "web").stdout
        return "GET /among-its-own 200" in out

    wait_until(in_service_log, 20, "a request line in `devmesh logs web`", step=0.3)
    before = len(json_lines(lines_file))
    get(port, "web.localhost", "/not-in-the-file")
    assert len(json_lines(lines_file)) == before  # the file target was dropped with the config


def test_traceparent_gives_the_trace_id_and_passes_through(project: Project) -> None:
    echo_project(project)
    project.up()
    project.wait_state("web", "running")
    port = project.proxy_port
    wait_until(lambda: get(port, "web.localhost")[0] == 200, 20, "web to answer")
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    parent = f"00-{trace}-00f067aa0ba902b7-01"
    status, body, headers = get(port, "web.localhost", "/", {"traceparent": parent})
    seen = json.loads(body)["headers"]
    assert status == 200
    assert headers["x-devmesh-trace-id"] == trace  # one id for devmesh's logs and the trace
    assert seen["traceparent"] == parent  # not exporting: passed on untouched
    assert seen["X-DevMesh-Trace-ID"] == trace
    # An invalid traceparent is not the proxy's business: passed on, a fresh id for devmesh.
    status, body, headers = get(port, "web.localhost", "/", {"traceparent": "00-zz-01"})
    assert json.loads(body)["headers"]["traceparent"] == "00-zz-01"
    assert len(headers["x-devmesh-trace-id"]) == 32


def test_proxy_spans_exported_over_otlp(project: Project) -> None:
    with OtlpReceiver() as rx:
        echo_project(project, f'[tracing]\notlp_endpoint = "{rx.endpoint}"')
        project.up()
        project.wait_state("web", "running")
        port = project.proxy_port
        wait_until(lambda: get(port, "web.localhost", "/warm")[0] == 200, 20, "web to answer")
        trace = "4bf92f3577b34da6a3ce929d0e0e4736"
        client_span = "00f067aa0ba902b7"
        _, body, headers = get(
            port, "web.localhost", "/traced?q=1", {"traceparent": f"00-{trace}-{client_span}-01"}
        )
        sent = json.loads(body)["headers"]["traceparent"]
        version, sent_trace, proxy_span, flags = sent.split("-")
        # The backend's parent is the proxy's span, in the client's trace.
        assert (version, sent_trace, flags) == ("00", trace, "01") and proxy_span != client_span
        # Without a traceparent: the devmesh trace id is the trace.
        _, body, headers = get(port, "web.localhost", "/fresh")
        fresh = json.loads(body)["headers"]["traceparent"].split("-")
        assert fresh[1] == headers["x-devmesh-trace-id"]

        # The client's own devmesh id and a W3C trace: the trace goes on, the id is an attribute.
        both = {"X-DevMesh-Trace-ID": "order-42", "traceparent": f"00-{trace}-{client_span}-01"}
        _, body, headers = get(port, "web.localhost", "/both", both)
        assert headers["x-devmesh-trace-id"] == "order-42"
        assert json.loads(body)["headers"]["traceparent"].split("-")[1] == trace

        def spans_for(path: str) -> Any:
            return next((s for s in rx.spans if s.attributes.get("url.path") == path), None)

        wait_until(
            lambda: spans_for("/traced") and spans_for("/fresh") and spans_for("/both"),
            20,
            "the proxy's spans",
        )
        span = spans_for("/traced")
        assert (span.trace_id, span.span_id, span.parent_id) == (trace, proxy_span, client_span)
        assert span.attributes["http.response.status_code"] == 200
        assert span.attributes["devmesh.service"] == "web"
        assert span.attributes["http.request.method"] == "GET"
        other = spans_for("/fresh")
        assert (other.trace_id, other.span_id, other.parent_id) == (fresh[1], fresh[2], "")
        joined = spans_for("/both")
        assert (joined.trace_id, joined.parent_id) == (trace, client_span)
        assert joined.attributes["devmesh.trace_id"] == "order-42"


def test_log_level_from_the_flag_the_environment_and_the_config(project: Project) -> None:
    echo_project(project)
    bad = project.cli("up", "--log-level", "loud")
    assert bad.returncode != 0 and "'loud' is not a log level" in bad.stderr
    assert "Traceback" not in bad.stderr
    project.env["DEVMESH_LOG"] = "chatty"
    bad = project.cli("up")
    assert "DEVMESH_LOG: 'chatty' is not a log level" in bad.stderr
    del project.env["DEVMESH_LOG"]

    quiet = project.up("--log-level", "warning")
    project.wait_state("web", "running")
    project.cli("down")
    quiet.proc.wait(20)
    assert "web started" not in quiet.text()  # info lines hidden on the terminal...
    assert "web started" in project.cli("logs", "web").stdout  # ...not lost from the file

    project.env["DEVMESH_LOG"] = "debug"
    chatty = project.up()
    project.wait_state("web", "running")
    wait_until(lambda: "route table v" in chatty.text(), 10, "debug lines")
    assert "web started" in chatty.text()


def test_dashboard_url_in_status_and_the_loopback_port_refuses_other_sites(
    project: Project,
) -> None:
    echo_project(project)
    run = project.up()
    status = project.status()
    url = status["node"]["dashboard"]["url"]
    assert url.startswith("http://127.0.0.1:") and status["node"]["dashboard"]["metrics"]
    assert f"dashboard {url}" in project.cli("status").stdout
    assert project.cli("dashboard", "--no-open").stdout.strip() == url
    port = int(url.rstrip("/").rsplit(":", 1)[1])

    def call(method: str, path: str, headers: dict[str, str]) -> int:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            conn.request(method, path, headers=headers)
            resp = conn.getresponse()
            resp.read()
            return resp.status
        finally:
            conn.close()

    assert call("GET", "/v1/status", {}) == 200
    # DNS rebinding: a page of evil.example resolved to 127.0.0.1.
    assert call("GET", "/v1/status", {"Host": "evil.example"}) == 403
    # A form or script on another site pressing a button.
    pid = project.service("web")["pid"]
    origin = {"Origin": "http://evil.example"}
    assert call("POST", "/v1/services/web/restart", origin) == 403
    assert project.service("web")["pid"] == pid
    # The dashboard's own page (same origin) may.
    same = {"Origin": f"http://127.0.0.1:{port}"}
    assert call("POST", "/v1/services/web/restart", same) == 200
    wait_until(lambda: project.service("web")["pid"] not in (pid, None), 20, "a new web pid")
    # Its socket is bound at start: a changed port is not applied by a reload, and says so.
    echo_project(project, "[dashboard]\nport = 1")
    wait_until(lambda: "config not applied: [dashboard]" in run.text(), 20, "the reload's warning")
    assert project.status()["node"]["dashboard"]["url"] == url


def test_json_request_lines_on_stdout_for_a_pipe(project: Project) -> None:
    echo_project(project, '[log]\nrequests = "stdout"\nformat = "json"')
    run = project.up()
    project.wait_state("web", "running")
    wait_until(lambda: get(project.proxy_port, "web.localhost")[0] == 200, 20, "web to answer")
    get(project.proxy_port, "web.localhost", "/piped")

    def piped() -> dict[str, Any] | None:
        for line in run.text().splitlines():
            if line.startswith("{") and '"/piped"' in line:
                parsed: dict[str, Any] = json.loads(line)  # a whole JSON line, no prefix
                return parsed
        return None

    line = wait_until(piped, 10, "the request line on devmesh's output")
    assert (line["service"], line["status"], line["method"]) == ("web", 200, "GET")


def assert_refused_then_survives_a_reload(
    project: Project, extra: str, refusal: str, proxy_says: str
) -> None:
    """`devmesh up` with `extra` in devmesh.toml refuses with `refusal` (no traceback); the
    same turned on by a hot reload makes the proxy say `proxy_says` and serve on."""
    echo_project(project, extra)
    refused = project.cli("up")
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
    assert refusal in refused.stderr, refused.stderr
    echo_project(project)
    run = project.up()
    project.wait_state("web", "running")
    port = project.proxy_port
    wait_until(lambda: get(port, "web.localhost")[0] == 200, 20, "web to answer")
    echo_project(project, extra)
    wait_until(lambda: proxy_says in run.text(), 20, "the proxy's error line")
    assert get(port, "web.localhost")[0] == 200
    assert "died" not in run.text()


def test_span_export_without_the_otel_extra_is_a_clear_error(project: Project) -> None:
    # The otel extra is installed for the tests, so its absence is simulated: a plain
    # `opentelemetry` package first on the path hides the real namespace package's modules.
    fake = project.root.parent / "no-otel"
    (fake / "opentelemetry").mkdir(parents=True)
    (fake / "opentelemetry" / "__init__.py").write_text("")
    project.env["PYTHONPATH"] = f"{fake}:{project.env['PYTHONPATH']}"
    assert_refused_then_survives_a_reload(
        project,
        '[tracing]\notlp_endpoint = "http://127.0.0.1:4318"',
        "tracing.otlp_endpoint: OTLP export needs the otel extra; pip install 'devmesh[otel]'",
        "no span export",
    )


def test_a_request_lines_file_that_cannot_be_written(project: Project) -> None:
    assert_refused_then_survives_a_reload(
        project,
        '[log]\nrequests = "no/such/dir/requests.jsonl"',
        "log.requests: cannot write request lines in",
        "no request lines",
    )


def test_dashboard_off(project: Project) -> None:
    echo_project(project, "[dashboard]\nenabled = false")
    run = project.up()
    assert project.status()["node"]["dashboard"] == {"url": None, "metrics": None}
    refused = project.cli("dashboard", "--no-open")
    assert refused.returncode == 1
    assert refused.stderr.strip() == "devmesh: the dashboard is off ([dashboard] enabled = false)"
    assert "dashboard http" not in run.text()

"""W3C traceparent parsing, OTel trace ids for devmesh trace ids, and OTLP/HTTP export of proxy
spans to a real receiver on 127.0.0.1."""

from __future__ import annotations

import re
import subprocess
import sys
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from devmesh.proxy.headers import TraceIds, valid_trace_id
from devmesh.proxy.spans import (
    INSTALL_HINT,
    SpanExport,
    load_span_export,
    otel_trace_id,
    parse_traceparent,
    traceparent,
    traces_url,
)
from tests.conftest import free_port
from tests.otlp_receiver import OtlpReceiver, ReceivedSpan

TRACE = b"4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = b"00f067aa0ba902b7"
VALID = b"00-" + TRACE + b"-" + PARENT + b"-01"

# ---- traceparent ----


def test_parse_valid() -> None:
    assert parse_traceparent(VALID) == (TRACE, PARENT, b"01")
    assert parse_traceparent(VALID[:-2] + b"00") == (TRACE, PARENT, b"00")
    assert parse_traceparent(VALID[:-2] + b"ff") == (TRACE, PARENT, b"ff")


@pytest.mark.parametrize(
    "value",
    [
        VALID.upper(),
        b"00-" + TRACE.upper() + b"-" + PARENT + b"-01",
        b"00-" + TRACE + b"-" + PARENT.upper() + b"-01",
        b"00-" + TRACE + b"-" + PARENT + b"-0A",
        b"0A-" + TRACE + b"-" + PARENT + b"-01",
    ],
)
def test_parse_rejects_uppercase(value: bytes) -> None:
    assert parse_traceparent(value) is None


def test_parse_rejects_zero_ids() -> None:
    assert parse_traceparent(b"00-" + b"0" * 32 + b"-" + PARENT + b"-01") is None
    assert parse_traceparent(b"00-" + TRACE + b"-" + b"0" * 16 + b"-01") is None


@pytest.mark.parametrize(
    "value",
    [
        b"",
        b"00",
        VALID[:-1],  # 54 characters
        VALID + b"0",  # 56: version 00 is exactly 55
        VALID + b"-extra",  # version 00 has no more fields
        b"00-" + TRACE[:-1] + b"-" + PARENT + b"0-01",  # 31-digit trace id, 17-digit parent
        b"00-" + TRACE + b"0-" + PARENT[:-1] + b"-01",  # 33 and 15
        b"00-" + TRACE + b"-" + PARENT + b"-1",
        b"000-" + TRACE[1:] + b"-" + PARENT + b"-01",  # 3-digit version
        b"00_" + TRACE + b"-" + PARENT + b"-01",
        b"00-" + TRACE[:10] + b"-" + TRACE[11:] + b"-" + PARENT + b"-01",  # a dash inside an id
        b"00-" + TRACE[:-1] + b"g-" + PARENT + b"-01",
        b"00-" + TRACE + b"-" + PARENT + b"-0\xff",
        b" " + VALID[1:],
    ],
)
def test_parse_rejects_malformed(value: bytes) -> None:
    assert parse_traceparent(value) is None


def test_parse_rejects_version_ff() -> None:
    assert parse_traceparent(b"ff" + VALID[2:]) is None
    assert parse_traceparent(b"ff" + VALID[2:] + b"-future") is None


def test_parse_future_version() -> None:
    # A version after 00 may carry more fields after a dash; its first four are read as 00's.
    assert parse_traceparent(b"cc" + VALID[2:]) == (TRACE, PARENT, b"01")
    assert parse_traceparent(b"01" + VALID[2:] + b"-what-the-future-holds") == (
        TRACE,
        PARENT,
        b"01",
    )
    assert parse_traceparent(b"cc" + VALID[2:] + b"x") is None  # 56th character is not a dash
    assert parse_traceparent(b"cc" + VALID[2:-1]) is None
    assert parse_traceparent(b"cc-" + TRACE.upper() + b"-" + PARENT + b"-01") is None


def test_traceparent_round_trip() -> None:
    ids = TraceIds()
    trace, span = ids.next(), ids.next()[:16]
    value = traceparent(trace, span)
    assert value == b"00-" + trace + b"-" + span + b"-01"
    assert parse_traceparent(value) == (trace, span, b"01")
    assert traceparent(trace, span, b"00").endswith(b"-00")


# The spec's grammar, written the obvious way, to check the fast parser against.
_GRAMMAR = re.compile(rb"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?\Z", re.S)


def reference_parse(value: bytes) -> tuple[bytes, bytes, bytes] | None:
    match = _GRAMMAR.match(value)
    if match is None:
        return None
    version, trace, parent, flags, rest = match.groups()
    if version == b"ff" or (version == b"00" and rest is not None):
        return None
    if trace == b"0" * 32 or parent == b"0" * 16:
        return None
    return trace, parent, flags


def _hex(size: int) -> st.SearchStrategy[bytes]:
    return st.binary(min_size=size // 2, max_size=size // 2).map(lambda b: b.hex().encode())


@st.composite
def _traceparents(draw: st.DrawFn) -> bytes:
    """Well-formed values of several versions, then often one change: a zero id, a byte
    replaced (uppercase, a dash, a non-hex letter), one inserted or one removed."""
    version = draw(st.sampled_from([b"00", b"01", b"cc", b"fe", b"ff"]))
    suffix = draw(st.sampled_from([b"", b"", b"-", b"-x-y", b"x", b"0"]))
    value = bytearray(
        version + b"-" + draw(_hex(32)) + b"-" + draw(_hex(16)) + b"-" + draw(_hex(2)) + suffix
    )
    change = draw(st.sampled_from(["none", "none", "zeros", "replace", "insert", "delete"]))
    at = draw(st.integers(0, len(value) - 1))
    byte = draw(st.sampled_from(b"0aAF-g \xff"))
    if change == "zeros":
        start, size = draw(st.sampled_from([(3, 32), (36, 16)]))
        value[start : start + size] = b"0" * size
    elif change == "replace":
        value[at] = byte
    elif change == "insert":
        value.insert(at, byte)
    elif change == "delete":
        del value[at]
    return bytes(value)


@given(st.one_of(_traceparents(), st.binary(max_size=80)))
def test_parse_matches_the_grammar(value: bytes) -> None:
    assert parse_traceparent(value) == reference_parse(value)


@given(st.binary(min_size=16, max_size=16), st.binary(min_size=8, max_size=8))
def test_parse_round_trips_every_id(trace: bytes, span: bytes) -> None:
    trace_hex, span_hex = trace.hex().encode(), span.hex().encode()
    expected = None if not any(trace) or not any(span) else (trace_hex, span_hex, b"01")
    assert parse_traceparent(traceparent(trace_hex, span_hex)) == expected


# ---- OTel trace ids ----


def test_otel_trace_id_keeps_generated_ids() -> None:
    ids = TraceIds()
    for _ in range(100):
        trace = ids.next()
        assert otel_trace_id(trace) == trace


@pytest.mark.parametrize(
    "devmesh_trace",
    [b"my-request-1", TRACE.upper(), b"0" * 32, TRACE + b"0", TRACE[:-1], b"x", b"a.b_c-" * 10],
)
def test_otel_trace_id_derived(devmesh_trace: bytes) -> None:
    assert valid_trace_id(devmesh_trace)
    derived = otel_trace_id(devmesh_trace)
    assert derived != devmesh_trace
    assert len(derived) == 32 and int(derived, 16) and derived == derived.lower()
    assert parse_traceparent(traceparent(derived, PARENT)) == (derived, PARENT, b"01")
    assert otel_trace_id(devmesh_trace) == derived


def test_otel_trace_id_is_the_same_on_every_node() -> None:
    # Pinned: a node running another devmesh version (or process) must derive the same id.
    assert otel_trace_id(b"my-request-1") == b"9485cb516a0d537cb836b3360f24fe43"
    code = "from devmesh.proxy.spans import otel_trace_id; print(otel_trace_id(b'my-request-1'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, check=True, text=True)
    assert out.stdout.strip() == "b'9485cb516a0d537cb836b3360f24fe43'"
    assert otel_trace_id(b"my-request-2") != otel_trace_id(b"my-request-1")
    assert otel_trace_id(TRACE.upper()) != otel_trace_id(TRACE)


def test_traces_url() -> None:
    assert traces_url("http://127.0.0.1:4318") == "http://127.0.0.1:4318/v1/traces"
    assert traces_url("http://127.0.0.1:4318/") == "http://127.0.0.1:4318/v1/traces"
    assert traces_url("https://otel.example:443") == "https://otel.example:443/v1/traces"
    assert traces_url("http://c:4318/v1/traces") == "http://c:4318/v1/traces"
    assert traces_url("http://c:4318/custom/traces") == "http://c:4318/custom/traces"
    for bad in ("127.0.0.1:4318", "grpc://127.0.0.1:4317", "http://", ""):
        with pytest.raises(ValueError, match="not an http"):
            traces_url(bad)


# ---- export to a real OTLP/HTTP receiver ----

DERIVED = otel_trace_id(b"my-request-1")
SPAN_A, SPAN_B, SPAN_C = b"1111111111111111", b"2222222222222222", b"00000000000000ab"


def record_three(export: SpanExport, start: int) -> None:
    """A proxied GET with a parent, a 503 from a peer without one, and an unusual method that
    got no response."""
    export.record(
        trace_id=TRACE,
        span_id=SPAN_A,
        parent_id=PARENT,
        name="GET /api/*",
        start_ns=start,
        end_ns=start + 1_500_000,
        method="GET",
        target="/api/users?id=7&x=%20",
        status=200,
        service="api",
        peer="",
        host="api.localhost:8080",
        client="127.0.0.1",
        bytes_out=1234,
        devmesh_trace=TRACE.decode(),
    )
    export.record(
        trace_id=DERIVED,
        span_id=SPAN_B,
        parent_id=b"",
        name="POST",
        start_ns=start + 10,
        end_ns=start + 20,
        method="POST",
        target="/",
        status=503,
        service="billing",
        peer="node-b",
        host="[::1]:8080",
        client="192.168.1.20",
        bytes_out=0,
        devmesh_trace="my-request-1",
    )
    export.record(
        trace_id=TRACE,
        span_id=SPAN_C,
        parent_id=SPAN_A,
        name="HTTP",
        start_ns=start + 30,
        end_ns=start + 40,
        method="PROPFIND",
        target="/dav",
        status=0,
        service="files",
        peer="",
        host="files",
        client="",
        bytes_out=0,
        devmesh_trace=TRACE.decode(),
    )


def by_span_id(spans: list[ReceivedSpan]) -> dict[str, ReceivedSpan]:
    return {s.span_id: s for s in spans}


def test_export_end_to_end() -> None:
    start = time.time_ns()
    with OtlpReceiver() as rx:
        export = SpanExport(rx.endpoint, "node-a", headers={"x-token": "s3cret"})
        record_three(export, start)
        export.close()
        assert export.stats() == {"queued": 0, "exported": 3, "failed": 0, "dropped": 0}
        spans = by_span_id(rx.wait_for(3, timeout=10))
    assert set(spans) == {SPAN_A.decode(), SPAN_B.decode(), SPAN_C.decode()}

    a, b, c = spans[SPAN_A.decode()], spans[SPAN_B.decode()], spans[SPAN_C.decode()]
    for span in (a, b, c):
        assert span.span.kind == Span.SPAN_KIND_SERVER
        assert span.resource["service.name"] == "devmesh"
        assert span.resource["service.instance.id"] == "node-a"
        assert span.scope == "devmesh.proxy"
        assert span.headers["x-token"] == "s3cret"
        assert span.headers["content-type"] == "application/x-protobuf"

    assert (a.trace_id, a.parent_id, a.span.name) == (TRACE.decode(), PARENT.decode(), "GET /api/*")
    assert (a.span.start_time_unix_nano, a.span.end_time_unix_nano) == (start, start + 1_500_000)
    assert a.span.status.code == Status.STATUS_CODE_UNSET
    assert a.attributes == {
        "http.request.method": "GET",
        "url.scheme": "http",
        "url.path": "/api/users",
        "url.query": "id=7&x=%20",
        "http.response.status_code": 200,
        "server.address": "api.localhost",
        "server.port": 8080,
        "client.address": "127.0.0.1",
        "http.response.body.size": 1234,
        "devmesh.service": "api",
        "devmesh.trace_id": TRACE.decode(),
    }

    assert (b.trace_id, b.parent_id, b.span.name) == (DERIVED.decode(), "", "POST")
    assert b.span.status.code == Status.STATUS_CODE_ERROR
    assert b.attributes == {
        "http.request.method": "POST",
        "url.scheme": "http",
        "url.path": "/",
        "http.response.status_code": 503,
        "error.type": "503",
        "server.address": "::1",
        "server.port": 8080,
        "client.address": "192.168.1.20",
        "http.response.body.size": 0,
        "devmesh.service": "billing",
        "devmesh.peer": "node-b",
        "devmesh.trace_id": "my-request-1",
    }

    assert (c.trace_id, c.parent_id, c.span.name) == (TRACE.decode(), SPAN_A.decode(), "HTTP")
    assert c.span.status.code == Status.STATUS_CODE_ERROR
    assert c.attributes == {
        "http.request.method": "_OTHER",
        "http.request.method_original": "PROPFIND",
        "url.scheme": "http",
        "url.path": "/dav",
        "error.type": "_OTHER",
        "server.address": "files",
        "http.response.body.size": 0,
        "devmesh.service": "files",
        "devmesh.trace_id": TRACE.decode(),
    }


def test_export_without_close() -> None:
    # A full batch is sent at once; what is left goes out after `delay`, both without close().
    with OtlpReceiver() as rx, SpanExport(rx.endpoint, "n", batch_size=3, delay=3600) as export:
        record_three(export, time.time_ns())
        assert len(rx.wait_for(3, timeout=10)) == 3
    with OtlpReceiver() as rx, SpanExport(rx.endpoint, "n", batch_size=100, delay=0.05) as export:
        record_three(export, time.time_ns())
        assert len(rx.wait_for(3, timeout=10)) == 3
    assert export.stats()["exported"] == 3


def test_export_service_name_and_full_url() -> None:
    with OtlpReceiver() as rx:
        url = rx.endpoint + "/v1/traces"
        with load_span_export(url, "node-z", service_name="mesh") as export:
            record_three(export, time.time_ns())
        span = rx.wait_for(3, timeout=10)[0]
    assert (span.resource["service.name"], span.resource["service.instance.id"]) == (
        "mesh",
        "node-z",
    )


def test_export_failures_are_counted() -> None:
    with OtlpReceiver() as rx:
        rx.status = 400  # not retried by the exporter
        export = SpanExport(rx.endpoint, "n")
        record_three(export, time.time_ns())
        export.close()
        assert rx.requests >= 1 and rx.rejected == rx.requests
        assert rx.spans == []
    assert export.stats() == {"queued": 0, "exported": 0, "failed": 3, "dropped": 0}


def test_malformed_id_drops_only_that_span() -> None:
    with OtlpReceiver() as rx:
        export = SpanExport(rx.endpoint, "n")
        record_three(export, time.time_ns())
        export.record(
            trace_id=TRACE,
            span_id=b"0" * 16,  # all zeros: not a span id
            parent_id=b"",
            name="x",
            start_ns=1,
            end_ns=2,
            method="GET",
            target="/",
            status=200,
            service="s",
            peer="",
            host="",
            client="",
            bytes_out=0,
            devmesh_trace="t",
        )
        export.close()
        assert len(rx.wait_for(3, timeout=10)) == 3
    assert export.stats() == {"queued": 0, "exported": 3, "failed": 1, "dropped": 0}


def test_full_queue_and_closed_export_drop() -> None:
    with OtlpReceiver() as rx:
        export = SpanExport(rx.endpoint, "n", max_queue=2, batch_size=100, delay=3600)
        record_three(export, time.time_ns())  # the third does not fit
        assert export.stats() == {"queued": 2, "exported": 0, "failed": 0, "dropped": 1}
        export.close()
        record_three(export, time.time_ns())  # closed: all dropped
        export.close()  # a second close does nothing
        assert len(rx.wait_for(2, timeout=10)) == 2
    assert export.stats() == {"queued": 0, "exported": 2, "failed": 0, "dropped": 4}


def test_close_is_bounded_when_the_collector_is_down() -> None:
    # Nothing listens: the exporter retries with backoff for up to its timeout (60 s here);
    # close() gives up after its own timeout and stops the retries.
    export = SpanExport(f"http://127.0.0.1:{free_port()}", "n", timeout=60)
    record_three(export, time.time_ns())
    began = time.monotonic()
    export.close(timeout=0.5)
    assert time.monotonic() - began < 5
    export._thread.join(10)  # the abandoned worker ends with the retry it was in
    assert not export._thread.is_alive()
    stats = export.stats()
    assert stats["exported"] == 0 and stats["failed"] + stats["dropped"] == 3


# ---- without the otel extra ----


def test_missing_extra_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    # The test environment has the extra installed and a test cannot uninstall it; a None entry
    # in sys.modules makes `import` raise ImportError exactly as a missing package does.
    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.otlp.proto.http.trace_exporter", None)
    with pytest.raises(RuntimeError) as raised:
        load_span_export("http://127.0.0.1:4318", "n", None)
    assert str(raised.value).startswith(INSTALL_HINT)
    assert INSTALL_HINT == "OTLP export needs the otel extra: pip install 'devmesh[otel]'"


def test_module_imports_no_opentelemetry() -> None:
    # devmesh works without the extra: importing the module (and parsing) must not need it.
    code = (
        "import sys; import devmesh.proxy.spans as s;"
        "assert s.parse_traceparent(b'00-' + b'1' * 32 + b'-' + b'2' * 16 + b'-01');"
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, check=True, text=True)
    assert out.stdout.strip() == "[]"

"""W3C `traceparent` for the proxy, and optional OTLP export of its spans (`devmesh[otel]`).

The proxy makes one SERVER span per request, with ids it chose itself (it already sent
`traceparent: 00-<trace>-<span>-01` to the backend), so spans are not made by an OTel `Tracer`:
`SpanExport.record` only queues the span's fields, and a background thread turns them into SDK
`ReadableSpan`s and hands them to the OTLP/HTTP exporter in batches. The event loop never
waits for the exporter, and the OpenTelemetry packages are imported only when export is
configured: devmesh works without them.
"""

from __future__ import annotations

import collections
import hashlib
import logging
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import urlsplit, urlunsplit

from devmesh import __version__

if TYPE_CHECKING:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace import ReadableSpan

log = logging.getLogger("devmesh.proxy")

INSTALL_HINT = "OTLP export needs the otel extra: pip install 'devmesh[otel]'"

# ---- W3C Trace Context (level 1) ----

_HEX_DASH = b"0123456789abcdef-"
_HEX = b"0123456789abcdef"
_ZERO_TRACE = b"0" * 32
_ZERO_SPAN = b"0" * 16
_DASH = 45  # b"-"[0]


def parse_traceparent(value: bytes) -> tuple[bytes, bytes, bytes] | None:
    """(trace id, parent span id, flags) of a `traceparent` value, or None if it is invalid.

    Version 00 is exactly `00-<32 hex>-<16 hex>-<2 hex>`, lowercase, ids not all zeros; a later
    version (not ff) may add fields after a dash, and its first four fields are read the same.
    """
    n = len(value)
    if (
        n < 55
        or value[2] != _DASH
        or value[35] != _DASH
        or value[52] != _DASH
        or (n > 55 and (value[55] != _DASH or value.startswith(b"00")))
        or value.count(b"-", 0, 55) != 3
        or value[:55].translate(None, _HEX_DASH)
        or value.startswith(b"ff")
    ):
        return None
    trace_id = value[3:35]
    parent_id = value[36:52]
    if trace_id == _ZERO_TRACE or parent_id == _ZERO_SPAN:
        return None
    return trace_id, parent_id, value[53:55]


def traceparent(trace_id: bytes, span_id: bytes, flags: bytes = b"01") -> bytes:
    """The version 00 `traceparent` value for a span (ids as lowercase hex)."""
    return b"00-" + trace_id + b"-" + span_id + b"-" + flags


def otel_trace_id(devmesh_trace: bytes) -> bytes:
    """The 32 hex digit OTel trace id of a devmesh trace id: the id itself when it is one
    (devmesh generates those), else a hash of it, the same on every node."""
    if (
        len(devmesh_trace) == 32
        and not devmesh_trace.translate(None, _HEX)
        and devmesh_trace != _ZERO_TRACE
    ):
        return devmesh_trace
    return (
        hashlib.blake2b(devmesh_trace, digest_size=16, person=b"devmesh-trace").hexdigest().encode()
    )


def traces_url(endpoint: str) -> str:
    """The OTLP/HTTP traces URL for `endpoint`: `/v1/traces` is added to a bare base URL
    (`http://127.0.0.1:4318`); a URL with a path is used as it is."""
    parts = urlsplit(endpoint.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(
            f"OTLP endpoint {endpoint!r} is not an http(s) URL"
            " (expected something like http://127.0.0.1:4318)"
        )
    if parts.path in ("", "/"):
        parts = parts._replace(path="/v1/traces")
    return urlunsplit(parts)


# ---- span export ----


class _Item(NamedTuple):
    """What `record` queues: the fields of one finished span (a ReadableSpan later)."""

    trace_id: bytes
    span_id: bytes
    parent_id: bytes
    name: str
    start_ns: int
    end_ns: int
    method: str
    target: str
    status: int
    service: str
    peer: str
    host: str
    client: str
    bytes_out: int
    devmesh_trace: str


# Methods OTel's HTTP conventions name; others are reported as `_OTHER` plus the original.
_METHODS = frozenset(
    ("CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "TRACE", "QUERY")
)


class SpanExport:
    """Finished proxy spans, exported in batches over OTLP/HTTP (protobuf) by a background
    thread. `record` is cheap and never blocks; `close` flushes what is queued and stops.

    Counters (read them any time): `exported`, `failed` (spans in batches the collector did
    not take), `dropped` (queue full, recorded after close, or left when close gave up).
    """

    def __init__(
        self,
        endpoint: str,
        node: str,
        service_name: str = "devmesh",
        headers: Mapping[str, str] | None = None,
        timeout: float = 10,
        *,
        max_queue: int = 8192,
        batch_size: int = 512,
        delay: float = 1.0,
    ) -> None:
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
                OTLPSpanExporter,
            )
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import ReadableSpan
            from opentelemetry.sdk.trace.export import SpanExportResult
            from opentelemetry.sdk.util.instrumentation import InstrumentationScope
            from opentelemetry.trace import SpanContext, SpanKind, TraceFlags
            from opentelemetry.trace.status import Status, StatusCode
        except ImportError as exc:
            raise RuntimeError(f"{INSTALL_HINT} ({exc})") from exc
        # What the worker builds spans from, imported once.
        self._readable_span = ReadableSpan
        self._span_context = SpanContext
        self._server = SpanKind.SERVER
        self._sampled = TraceFlags(TraceFlags.SAMPLED)
        self._unset = Status()
        self._error = Status(StatusCode.ERROR)
        self._success = SpanExportResult.SUCCESS
        self.endpoint = traces_url(endpoint)
        self.exporter: OTLPSpanExporter = OTLPSpanExporter(
            endpoint=self.endpoint,
            headers=dict(headers) if headers else None,
            timeout=timeout,
        )
        self.resource = Resource.create({"service.name": service_name, "service.instance.id": node})
        self.scope = InstrumentationScope("devmesh.proxy", __version__)
        self.max_queue = max_queue
        self.batch_size = batch_size
        self.delay = delay
        # Appended by `record` on the event loop, taken by the worker: deque operations are
        # atomic, so neither side locks.
        self.queue: collections.deque[_Item] = collections.deque()
        self.exported = 0
        self.failed = 0
        self.dropped = 0
        self._closing = False
        self._abandon = False
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="devmesh-otlp", daemon=True)
        self._thread.start()

    def __enter__(self) -> SpanExport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- event loop side ----

    def record(
        self,
        *,
        trace_id: bytes,
        span_id: bytes,
        parent_id: bytes,
        name: str,
        start_ns: int,
        end_ns: int,
        method: str,
        target: str,
        status: int,
        service: str,
        peer: str,
        host: str,
        client: str,
        bytes_out: int,
        devmesh_trace: str,
    ) -> None:
        """Queue one finished SERVER span. Ids are lowercase hex (`parent_id` b"" for none),
        times `time.time_ns()`, `target` the path and query, `status` 0 if no response was
        sent, `peer` the node that served it (empty: this one)."""
        queue = self.queue
        queued = len(queue)
        if queued >= self.max_queue or self._closing:
            self.dropped += 1
            return
        queue.append(
            _Item(
                trace_id,
                span_id,
                parent_id,
                name,
                start_ns,
                end_ns,
                method,
                target,
                status,
                service,
                peer,
                host,
                client,
                bytes_out,
                devmesh_trace,
            )
        )
        # A full batch wakes the worker at once; otherwise it sends every `delay` seconds.
        if queued + 1 >= self.batch_size and not self._wake.is_set():
            self._wake.set()

    def close(self, timeout: float = 5.0) -> None:
        """Send what is queued, then stop the worker and the exporter. Blocks for at most
        `timeout` seconds (what is unsent by then is dropped): call it once the proxy has
        stopped serving, not from a callback."""
        if self._closing:
            return
        self._closing = True
        self._wake.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            # Stuck on an unreachable collector: stop the exporter's retries; the daemon
            # thread ends with the current attempt and counts what it leaves as dropped.
            self._abandon = True
            log.warning("OTLP export to %s did not finish within %.1fs", self.endpoint, timeout)
        self.exporter.shutdown()  # type: ignore[no-untyped-call]

    def stats(self) -> dict[str, int]:
        """The counters and the number of spans waiting to be sent."""
        return {
            "queued": len(self.queue),
            "exported": self.exported,
            "failed": self.failed,
            "dropped": self.dropped,
        }

    # ---- worker thread ----

    def _run(self) -> None:
        queue, wake = self.queue, self._wake
        while True:
            wake.wait(self.delay)
            wake.clear()
            # Read before draining: everything recorded before close() is then sent.
            closing = self._closing
            while queue and not self._abandon:
                count = min(len(queue), self.batch_size)
                self._send([queue.popleft() for _ in range(count)])
            if closing or self._abandon:
                break
        if queue:
            self.dropped += len(queue)
            queue.clear()

    def _send(self, items: list[_Item]) -> None:
        spans: list[ReadableSpan] = []
        for item in items:
            try:
                spans.append(self._span(item))
            except ValueError:
                # A malformed id from the caller: drop that span, not the batch.
                self.failed += 1
        if not spans:
            return
        try:
            ok = self.exporter.export(spans) is self._success
        except Exception:
            log.exception("OTLP export to %s failed", self.endpoint)
            ok = False
        if ok:
            self.exported += len(spans)
        else:
            self.failed += len(spans)

    def _span(self, item: _Item) -> ReadableSpan:
        trace_id = _hex_id(item.trace_id, 32)
        context_of, flags = self._span_context, self._sampled
        context = context_of(trace_id, _hex_id(item.span_id, 16), False, flags)
        # The parent came in a traceparent header (from a client or a peer's proxy): remote.
        parent_id = item.parent_id
        parent = context_of(trace_id, _hex_id(parent_id, 16), True, flags) if parent_id else None
        return self._readable_span(
            name=item.name,
            context=context,
            parent=parent,
            resource=self.resource,
            attributes=_attributes(*item[6:]),
            kind=self._server,
            status=self._error if item.status >= 500 or item.status <= 0 else self._unset,
            start_time=item.start_ns,
            end_time=item.end_ns,
            instrumentation_scope=self.scope,
        )


def _hex_id(value: bytes, digits: int) -> int:
    """A span or trace id from its lowercase hex; ValueError unless it is a valid one."""
    if len(value) != digits or value.translate(None, _HEX) or value.count(b"0") == digits:
        raise ValueError(f"not a {digits} hex digit id: {value!r}")
    return int(value, 16)


def _attributes(
    method: str,
    target: str,
    status: int,
    service: str,
    peer: str,
    host: str,
    client: str,
    bytes_out: int,
    devmesh_trace: str,
) -> dict[str, Any]:
    """Span attributes per OTel's HTTP server conventions, plus devmesh's own; an attribute
    with nothing to say (no query, no peer, no status) is left out."""
    path, has_query, query = target.partition("?")
    attrs: dict[str, Any] = {"url.scheme": "http", "url.path": path}
    if method in _METHODS:
        attrs["http.request.method"] = method
    else:
        attrs["http.request.method"] = "_OTHER"
        attrs["http.request.method_original"] = method
    if has_query:
        attrs["url.query"] = query
    if status > 0:
        attrs["http.response.status_code"] = status
        if status >= 500:
            attrs["error.type"] = str(status)
    else:
        attrs["error.type"] = "_OTHER"  # the proxy sent no response
    if host:
        address, port = _split_host(host)
        attrs["server.address"] = address
        if port is not None:
            attrs["server.port"] = port
    if client:
        attrs["client.address"] = client
    attrs["http.response.body.size"] = bytes_out
    attrs["devmesh.service"] = service
    if peer:
        attrs["devmesh.peer"] = peer
    attrs["devmesh.trace_id"] = devmesh_trace
    return attrs


def _split_host(host: str) -> tuple[str, int | None]:
    """(address, port) of a Host header value: `api.localhost:8080`, `[::1]:8080`, `api`."""
    name, colon, port = host.rpartition(":")
    if colon and port.isdigit() and (not name.startswith("[") or name.endswith("]")):
        return name.strip("[]"), int(port)
    return host.strip("[]"), None


def load_span_export(
    endpoint: str,
    node: str,
    headers: Mapping[str, str] | None = None,
    service_name: str = "devmesh",
) -> SpanExport:
    """A `SpanExport` to `endpoint`; RuntimeError with the install command when the `otel`
    extra is missing, ValueError when `endpoint` is not an http(s) URL."""
    return SpanExport(endpoint, node, service_name=service_name, headers=headers)

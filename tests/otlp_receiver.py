"""A real OTLP/HTTP trace receiver for tests: `POST /v1/traces` with a protobuf
`ExportTraceServiceRequest`, served on 127.0.0.1 from a thread, the spans kept in order."""

from __future__ import annotations

import gzip
import threading
import time
import zlib
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

PATH = "/v1/traces"


def value_of(value: AnyValue) -> Any:
    """The Python value of an OTLP `AnyValue` (scalars; arrays as lists)."""
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [value_of(v) for v in value.array_value.values]
    return getattr(value, kind) if kind else None


def attributes(pairs: Any) -> dict[str, Any]:
    """OTLP `KeyValue`s as a dict."""
    out: dict[str, Any] = {}
    pair: KeyValue
    for pair in pairs:
        out[pair.key] = value_of(pair.value)
    return out


@dataclass(frozen=True)
class ReceivedSpan:
    """One span as the receiver got it, with its resource and scope; ids as lowercase hex."""

    span: Span
    resource: dict[str, Any]
    scope: str
    headers: dict[str, str]

    @property
    def trace_id(self) -> str:
        return self.span.trace_id.hex()

    @property
    def span_id(self) -> str:
        return self.span.span_id.hex()

    @property
    def parent_id(self) -> str:
        return self.span.parent_span_id.hex()

    @property
    def attributes(self) -> dict[str, Any]:
        return attributes(self.span.attributes)


class OtlpReceiver:
    """`with OtlpReceiver() as rx:` serves on `rx.endpoint` (`http://127.0.0.1:<port>`) until
    the block ends; `rx.spans` fills as exports arrive, `rx.wait_for(n, timeout)` waits for
    them. Set `status` to answer every export with that HTTP status instead of 200 (the spans
    are then not kept; `rejected` counts those requests)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.spans: list[ReceivedSpan] = []
        self.requests = 0
        self.rejected = 0
        self.status = 200
        self.changed = threading.Condition()
        self.server = ThreadingHTTPServer((host, port), _handler(self))
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self.endpoint = f"http://{host}:{self.port}"
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def __enter__(self) -> OtlpReceiver:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        """Serve from a thread."""
        self.thread.start()

    def stop(self) -> None:
        """Stop serving and close the listening socket."""
        if self.thread.is_alive():
            self.server.shutdown()
            self.thread.join(5)
        self.server.server_close()

    def wait_for(self, n: int, timeout: float = 10) -> list[ReceivedSpan]:
        """The spans once there are at least `n`; AssertionError after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while len(self.spans) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"OTLP receiver: {len(self.spans)} spans after {timeout}s, expected {n}"
                    )
                self.changed.wait(left)
            return list(self.spans)

    def received(self, body: bytes, headers: dict[str, str]) -> int:
        """Take one export request; the HTTP status to answer with."""
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        with self.changed:
            self.requests += 1
            if self.status != 200:
                self.rejected += 1
                self.changed.notify_all()
                return self.status
            for resource_spans in request.resource_spans:
                resource = attributes(resource_spans.resource.attributes)
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        self.spans.append(
                            ReceivedSpan(span, resource, scope_spans.scope.name, headers)
                        )
            self.changed.notify_all()
        return 200


def _handler(receiver: OtlpReceiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # the exporter keeps its connection open

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            if self.path != PATH:
                self._answer(404, b"")
                return
            encoding = self.headers.get("Content-Encoding", "")
            if encoding == "gzip":
                body = gzip.decompress(body)
            elif encoding == "deflate":
                body = zlib.decompress(body)
            headers = {k.lower(): v for k, v in self.headers.items()}
            status = receiver.received(body, headers)
            reply = ExportTraceServiceResponse().SerializeToString() if status == 200 else b""
            self._answer(status, reply)

        def _answer(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # keep test output clean

    return Handler


def main(host: str, port: int) -> None:
    """`python -m tests.otlp_receiver HOST PORT`: a receiver in its own process (inside a lab
    host), printing `ready`, then one JSON line per span received, until it is killed."""
    import json

    receiver = OtlpReceiver(host, port)
    receiver.start()
    print("ready", flush=True)
    printed = 0
    while True:
        spans = receiver.wait_for(printed + 1, timeout=3600)
        for got in spans[printed:]:
            line = {"trace_id": got.trace_id, "span_id": got.span_id, "parent_id": got.parent_id}
            print(json.dumps(line | {"attributes": got.attributes}), flush=True)
        printed = len(spans)


if __name__ == "__main__":
    import sys

    main(sys.argv[1], int(sys.argv[2]))

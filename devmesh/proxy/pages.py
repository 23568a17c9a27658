"""The proxy's own answers: 404 (which services exist), 503 (why this one is down), 502, 4xx.

HTML for browsers, JSON when the client sends `Accept: application/json`. Whole responses as
bytes; none of this is on the fast path.
"""

from __future__ import annotations

import html
import json
from typing import TYPE_CHECKING, Any

from devmesh.proxy.headers import REASONS, STATUS_LINES, TRACE_HEADER, VIA
from devmesh.proxy.router import Router, Target

if TYPE_CHECKING:
    from devmesh.proxy.exchange import Exchange

_STYLE = (
    "body{font:15px/1.45 system-ui,sans-serif;margin:2.5em auto;max-width:52em;padding:0 1em}"
    "pre{background:#f4f4f4;padding:.8em;overflow:auto}code{background:#f4f4f4}"
    "td{padding:.15em 1em .15em 0}"
)


def response(
    status: int,
    body: bytes,
    content_type: bytes = b"text/plain; charset=utf-8",
    *,
    close: bool = False,
    trace: bytes = b"",
    extra: bytes = b"",
    head_only: bool = False,
) -> bytes:
    """A complete response; `extra` is more header lines (each ending in CRLF)."""
    parts = [
        STATUS_LINES.get(status) or b"HTTP/1.1 %d Error\r\n" % status,
        b"Content-Type: ",
        content_type,
        b"\r\nContent-Length: %d\r\nCache-Control: no-store\r\nVia: " % len(body),
        VIA,
        b"\r\n",
        extra,
    ]
    if trace:
        parts += [TRACE_HEADER, b": ", trace, b"\r\n"]
    if close:
        parts.append(b"Connection: close\r\n")
    parts.append(b"\r\n")
    if not head_only:
        parts.append(body)
    return b"".join(parts)


def _html(title: str, inner: str, refresh: bool = False) -> bytes:
    meta = '<meta http-equiv="refresh" content="1">' if refresh else ""
    return (
        f'<!doctype html><html><head><meta charset="utf-8">{meta}<title>{html.escape(title)}'
        f"</title><style>{_STYLE}</style></head><body>{inner}</body></html>\n"
    ).encode()


def _json(data: dict[str, Any]) -> bytes:
    return json.dumps(data, indent=1).encode() + b"\n"


def error(
    status: int,
    message: str,
    *,
    close: bool = True,
    trace: bytes = b"",
    head_only: bool = False,
    extra: bytes = b"",
) -> bytes:
    """A plain-text error (400, 403, 408, 414, 431, ...); `extra`: more header lines."""
    reason = REASONS.get(status, b"Error").decode()
    body = f"{status} {reason}: {message}\n".encode()
    return response(status, body, close=close, trace=trace, head_only=head_only, extra=extra)


def not_found(
    router: Router,
    host: bytes,
    *,
    as_json: bool,
    close: bool,
    trace: bytes,
    head_only: bool = False,
) -> bytes:
    """404: no service by that name; lists the services there are, with their URLs."""
    asked = host.decode("latin-1")
    if as_json:
        services = [
            {"name": t.name, "url": t.url, "state": t.route.state, "routes": list(t.route.routes)}
            for t in router.targets
        ]
        body = _json({"error": "no such service", "host": asked, "services": services})
        ctype = b"application/json"
    else:
        rows = "".join(
            f'<tr><td><a href="{html.escape(t.url)}">{html.escape(t.name)}</a></td>'
            f"<td>{html.escape(t.url)}</td><td>{html.escape(t.route.state)}</td></tr>"
            for t in router.targets
        )
        listing = f"<table>{rows}</table>" if rows else "<p>No services are configured.</p>"
        body = _html(
            "devmesh: no such service",
            f"<h1>No service for <code>{html.escape(asked) or '(no Host)'}</code></h1>"
            f"<p>devmesh serves these services:</p>{listing}",
        )
        ctype = b"text/html; charset=utf-8"
    return response(404, body, ctype, close=close, trace=trace, head_only=head_only)


def unavailable(
    target: Target,
    *,
    as_json: bool,
    close: bool,
    trace: bytes,
    detail: str = "",
    head_only: bool = False,
) -> bytes:
    """503: the service is known but does not accept connections (state, restarts, last lines).

    `Retry-After: 1` while it is starting or backing off, so clients and pages retry soon.
    """
    route = target.route
    reason = route.reason or detail
    extra = b"Retry-After: 1\r\n" if route.starting else b""
    # Every peer that has it, and why none of them serves it (other version, not running).
    peers = [*target.mismatched, *target.idle_peers]
    if as_json:
        body = _json(
            {
                "error": "service unavailable",
                "service": route.name,
                "url": target.url,
                "state": route.state,
                "restarts": route.restarts,
                "reason": reason,
                "peers_considered": peers,
                "last_lines": list(route.last_lines),
            }
        )
        ctype = b"application/json"
    else:
        lines = "\n".join(route.last_lines)
        tail = f"<h2>Last lines of its output</h2><pre>{html.escape(lines)}</pre>" if lines else ""
        why = f"<p>{html.escape(reason)}</p>" if reason else ""
        items = "".join(f"<li>{html.escape(p)}</li>" for p in peers)
        considered = (
            f"<h2>Peers considered</h2><ul>{items}</ul>"
            if peers
            else "<p>No peer of this namespace runs it.</p>"
        )
        body = _html(
            f"devmesh: {route.name} is {route.state}",
            f"<h1>{html.escape(route.name)} is {html.escape(route.state)}</h1>{why}"
            f"<table><tr><td>state</td><td>{html.escape(route.state)}</td></tr>"
            f"<tr><td>restarts</td><td>{route.restarts}</td></tr></table>{considered}{tail}",
            refresh=route.starting,
        )
        ctype = b"text/html; charset=utf-8"
    return response(503, body, ctype, close=close, trace=trace, extra=extra, head_only=head_only)


def bad_gateway(
    target: Target, detail: str, *, as_json: bool, close: bool, trace: bytes, head_only: bool
) -> bytes:
    """502: the service accepted the connection but did not give a proper response."""
    if as_json:
        body = _json({"error": "bad gateway", "service": target.name, "detail": detail})
        ctype = b"application/json"
    else:
        body = _html(
            "devmesh: bad gateway",
            f"<h1>{html.escape(target.name)} did not answer properly</h1>"
            f"<p>{html.escape(detail)}</p>",
        )
        ctype = b"text/html; charset=utf-8"
    return response(502, body, ctype, close=close, trace=trace, head_only=head_only)


def for_exchange(ex: Exchange, router: Router, close: bool) -> bytes:
    """The proxy's own answer to a request it does not pass on (`ex.local` is the status)."""
    status, target = ex.local, ex.target
    trace, head_only, as_json = ex.trace, ex.is_head, ex.as_json
    if status == 404:
        return not_found(
            router, ex.host, as_json=as_json, close=close, trace=trace, head_only=head_only
        )
    if status == 503 and target is not None:
        return unavailable(
            target,
            as_json=as_json,
            close=close,
            trace=trace,
            detail=ex.local_detail,
            head_only=head_only,
        )
    if status == 502 and target is not None:
        return bad_gateway(
            target, ex.local_detail, as_json=as_json, close=close, trace=trace, head_only=head_only
        )
    return error(
        status, ex.local_detail, close=close, trace=trace, head_only=head_only, extra=ex.local_extra
    )

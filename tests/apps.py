"""Tiny HTTP services that tests write into a project for devmesh to run (or start by hand):
one template, and each test says only how its service answers a GET."""

from __future__ import annotations

import textwrap

TEMPLATE = """
import json, os, socket, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
HOST, PORT = "127.0.0.1", int(os.environ.get("PORT", "0"))
{setup}
class H(BaseHTTPRequestHandler):
    protocol_version = "{version}"
    def do_GET(self):
        status, headers = 200, {{}}
{answer}
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        {log}
class Server(ThreadingHTTPServer):
    address_family = socket.AF_INET6 if ":" in HOST else socket.AF_INET
Server((HOST, PORT), H).serve_forever()
"""


def http_app(answer: str, *, setup: str = "", keep_alive: bool = False, log: str = "pass") -> str:
    """The source of a service listening on $PORT of 127.0.0.1 (`setup` may set HOST and PORT
    otherwise). `answer` is the body of `do_GET`: it sets `body` (bytes), and may set `status`
    (200) and `headers` (a dict); `keep_alive` answers in HTTP/1.1; `log` is the statement run
    for each request (none by default)."""
    return TEMPLATE.format(
        setup=textwrap.dedent(setup).strip(),
        version="HTTP/1.1" if keep_alive else "HTTP/1.0",
        answer=textwrap.indent(textwrap.dedent(answer).strip(), " " * 8),
        log=log,
    )

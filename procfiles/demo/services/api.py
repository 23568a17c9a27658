"""Demo API: JSON on $PORT, with /health."""

import json
import os
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

STARTED = time.time()


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = json.dumps(
            {
                "service": os.environ.get("DEVMESH_SERVICE", "api"),
                "greeting": os.environ.get("GREETING", "hello"),
                "path": self.path,
                "uptime": round(time.time() - STARTED, 1),
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt: str, *args: object) -> None:
        print(f"{self.command} {self.path} -> {args[1] if len(args) > 1 else ''}")


port = int(os.environ["PORT"])
print(f"api listening on http://localhost:{port}/")
ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()

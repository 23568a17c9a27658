"""Demo web front end: an HTML page that shows what the api service answers."""

import os
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

API = os.environ.get("DEVMESH_API_URL", "http://localhost:5101")


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        try:
            with urllib.request.urlopen(API + "/", timeout=2) as resp:
                answer = resp.read().decode()
        except OSError as exc:
            answer = f"api unreachable: {exc}"
        body = f"<h1>devmesh demo</h1><p>api at {API} says:</p><pre>{answer}</pre>".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt: str, *args: object) -> None:
        print(f"{self.command} {self.path}")


port = int(os.environ["PORT"])
print(f"web listening on http://localhost:{port}/ (api: {API})")
ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()

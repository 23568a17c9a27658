#!/usr/bin/env python3
"""What one proxied request costs in CPU instructions (callgrind), for changes too small for
wrk's req/s to tell apart on a shared machine.

The standalone proxy (`python -m devmesh.proxy`, uvloop) runs under `valgrind --tool=callgrind`
in front of an origin on loopback (a thread of this script: one keep-alive connection at a time,
a fixed 100-byte body with a Content-Length, head and body in one write). One http.client
connection sends `--warmup` (200) and then N requests, one after the other; the proxy is run
twice, with N = `--requests` (2,000) and with N = 0, and the difference of the instructions the
whole process executed, divided by N, is the cost of a request (start, warm-up and shutdown
cancel out). Two paths:

- local: the origin is this node's own service (what `devmesh up` serves most);
- peer: the origin is a peer's proxy (a peer entry of the route table); GET, whose answer is
  held whole before it goes to the client (a repeatable request to a peer, up to 64 KiB), and
  a bodyless POST, which is not held: the difference is what holding costs.

devmesh is imported from a frozen copy of the working tree (`--source worktree`, the default)
or of the last commit (`--source head`). Traffic stays on 127.0.0.1; every process is stopped
by pid. Needs valgrind. Run it from the project root:

    python3 scripts/bench/proxy_instructions.py
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path

from common import devmesh_under_test  # scripts/bench/common.py

BODY = b"x" * 100
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(BODY), BODY)


class Origin:
    """A keep-alive HTTP/1.1 origin in a thread, on 127.0.0.1: RESPONSE to every request."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        buf = b""
        with conn:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            while True:
                while b"\r\n\r\n" not in buf:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buf += data
                _, buf = buf.split(b"\r\n\r\n", 1)  # bodyless requests only
                conn.sendall(RESPONSE)

    def close(self) -> None:
        """Stop accepting."""
        self.sock.close()


def run(env: dict[str, str], table: dict[str, object], method: str, n: int, warmup: int) -> int:
    """Instructions executed by the proxy process for `warmup` + `n` requests."""
    with tempfile.TemporaryDirectory(prefix="bench-callgrind-") as tmp:
        table_path = Path(tmp) / "routes.json"
        table_path.write_text(json.dumps(table))
        out = Path(tmp) / "callgrind.out"
        argv = [
            "valgrind",
            "--tool=callgrind",
            f"--callgrind-out-file={out}",
            sys.executable,
            "-m",
            "devmesh.proxy",
            "--table",
            str(table_path),
            "--settings",
            json.dumps({"lan_access": "any", "retries": 0}),
        ]
        proxy = subprocess.Popen(
            argv, env=env, cwd=tmp, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        try:
            assert proxy.stdout is not None
            line = proxy.stdout.readline()
            port = json.loads(line)["port"]
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            headers = {"Host": "svc", "Content-Length": "0"}
            for _ in range(warmup + n):
                conn.request(method, "/", headers=headers)
                resp = conn.getresponse()
                if resp.status != 200 or resp.read() != BODY:
                    raise RuntimeError(f"{method}: {resp.status}")
            conn.close()
        finally:
            proxy.send_signal(signal.SIGTERM)  # by pid
            try:
                _, err = proxy.communicate(timeout=120)
            except subprocess.TimeoutExpired:
                proxy.kill()
                _, err = proxy.communicate(timeout=10)
        found = re.search(r"Collected : (\d+)", err)
        if found is None:
            raise RuntimeError(f"no instruction count from callgrind: {err[-500:]}")
        return int(found.group(1))


def main(argv: Sequence[str] | None = None) -> int:
    """Measure both paths; print instructions per request."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument(
        "--source",
        choices=("worktree", "head"),
        default="worktree",
        help="devmesh to measure: a copy of the working tree (default) or of the last commit",
    )
    args = p.parse_args(argv)
    origin = Origin()
    local = {
        "version": 1,
        "proxy_port": 8080,
        "services": [
            {
                "name": "svc",
                "state": "running",
                "upstream": {"host": "127.0.0.1", "port": origin.port},
            }
        ],
    }
    peer = {
        "version": 1,
        "proxy_port": 8080,
        "node": "me",
        "peers": [
            {
                "node": "other",
                "address": "127.0.0.1",
                "proxy_port": origin.port,
                "services": [{"name": "svc", "state": "running"}],
            }
        ],
    }
    try:
        with devmesh_under_test(args.source) as source:
            source.compile()
            env = source.env(
                {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
            )
            env["PYTHONHASHSEED"] = "0"  # the same dict and set layouts in every run
            for name, table, method in (
                ("local GET", local, "GET"),
                ("peer GET (held)", peer, "GET"),
                ("peer POST, bodyless (not held)", peer, "POST"),
            ):
                full = run(env, table, method, args.requests, args.warmup)
                base = run(env, table, method, 0, args.warmup)
                per = (full - base) / args.requests
                print(f"{name}: {per:,.0f} instructions per request", flush=True)
    finally:
        origin.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

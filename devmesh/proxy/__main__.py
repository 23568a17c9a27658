"""Run the proxy alone: `python -m devmesh.proxy --table routes.json [--fd N | --bind HOST:PORT]`.

For tests and benchmarks: the route table is a JSON file (the fields of `RouteTable`), read
again on SIGHUP; the listening port is printed as `{"port": N, "pid": N}` on one line;
SIGTERM stops gracefully. Settings come as JSON with `--settings`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any

from devmesh.proxy.server import ProxyServer, Settings
from devmesh.proxy.table import PeerRoute, PeerService, RouteTable, ServiceRoute, Upstream


def table_from_json(data: dict[str, Any]) -> RouteTable:
    """A `RouteTable` from its JSON form."""
    services = []
    for svc in data.get("services", []):
        svc = dict(svc)
        up = svc.pop("upstream", None)
        for key in ("aliases", "routes", "last_lines"):
            if key in svc:
                svc[key] = tuple(svc[key])
        services.append(ServiceRoute(upstream=Upstream(**up) if up else None, **svc))
    peers = tuple(
        PeerRoute(
            node=p["node"],
            name=p.get("name", p["node"]),
            address=p["address"],
            proxy_port=int(p["proxy_port"]),
            services=tuple(PeerService(**s) for s in p.get("services", [])),
            rtt_ms=p.get("rtt_ms"),
            interval=float(p.get("interval", 1.0)),
        )
        for p in data.get("peers", [])
    )
    return RouteTable(
        version=int(data.get("version", 1)),
        proxy_port=int(data.get("proxy_port", 8080)),
        services=tuple(services),
        peers=peers,
        node=str(data.get("node", "")),
    )


def _listen(args: argparse.Namespace) -> socket.socket:
    if args.fd is not None:
        return socket.socket(fileno=args.fd)
    host, _, port = args.bind.rpartition(":")
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host.strip("[]"), int(port)))
    sock.listen(1024)
    return sock


async def _main(args: argparse.Namespace) -> None:
    path = Path(args.table)
    settings = Settings.from_mapping(json.loads(args.settings))
    server = ProxyServer(settings, table_from_json(json.loads(path.read_text())))
    sock = _listen(args)
    await server.start(sock)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)

    def reload() -> None:
        """SIGHUP: read the table file again and install it."""
        server.set_table(table_from_json(json.loads(path.read_text())))
        print(json.dumps({"reloaded": server.router.table.version}), flush=True)

    loop.add_signal_handler(signal.SIGHUP, reload)
    print(json.dumps({"port": sock.getsockname()[1], "pid": os.getpid()}), flush=True)
    await stop.wait()
    await server.shutdown()


def main(argv: list[str] | None = None) -> None:
    """Parse the command line and serve until SIGTERM."""
    parser = argparse.ArgumentParser(prog="python -m devmesh.proxy")
    parser.add_argument("--table", required=True, help="route table as JSON")
    parser.add_argument("--fd", type=int, help="an inherited listening socket")
    parser.add_argument("--bind", default="127.0.0.1:0", help="HOST:PORT to listen on")
    parser.add_argument("--settings", default="{}", help="settings as JSON")
    parser.add_argument("--no-uvloop", action="store_true", help="plain asyncio (for comparison)")
    args = parser.parse_args(argv)
    if args.no_uvloop:
        asyncio.run(_main(args))
        return
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(_main(args))
    sys.stdout.flush()


if __name__ == "__main__":
    main()

"""The control worker: a starlette app served by uvicorn on the project's unix socket and, for
the dashboard and `/metrics`, on a loopback TCP port.

Every action becomes a `ControlRequest` to the parent, and the parent's `ControlReply` becomes
the HTTP response. What it shows comes from the parent's `StateUpdate`s (on every change) and
the workers' metric files. Both sockets are bound by the parent, so a restarted control worker
serves the same addresses at once.
"""

from __future__ import annotations

import asyncio
import itertools
import socket
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from devmesh import messages as m
from devmesh.control import dashboard
from devmesh.metrics import render
from devmesh.workers.base import WorkerRuntime

REQUEST_TIMEOUT = 30.0
SERVICE_ACTIONS = frozenset({"start", "stop", "restart"})


class ControlRole:
    """Serves the control API and relays each request to the parent."""

    def __init__(
        self, runtime: WorkerRuntime, sockets: list[socket.socket], settings: dict[str, Any]
    ) -> None:
        self.runtime = runtime
        self.sockets = sockets
        self.settings = settings
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[m.ControlReply]] = {}
        # The parent's latest StateUpdate, and an event set (and replaced) on every new one.
        self.state: m.StateUpdate | None = None
        self.changed = asyncio.Event()
        routes: list[BaseRoute] = [
            Route("/metrics", self.metrics, methods=["GET"]),
            Route("/v1/status", self.status, methods=["GET"]),
            Route("/v1/peers", self.peers, methods=["GET"]),
            Route("/v1/routes", self.routes, methods=["GET"]),
            Route("/v1/routes/{name}", self.pin, methods=["PUT", "DELETE"]),
            Route("/v1/services/{name}/{action}", self.service_action, methods=["POST"]),
            Route("/v1/shutdown", self.shutdown, methods=["POST"]),
            *dashboard.routes(self),
        ]
        app = LoopbackOnly(Starlette(routes=routes))
        config = uvicorn.Config(
            app,
            log_config=None,
            access_log=False,
            lifespan="off",
            loop="none",
            timeout_graceful_shutdown=2,
        )
        self.server = uvicorn.Server(config)

    # ---- Role ----

    async def serve(self) -> None:
        """Serve the API on the socket the parent bound until told to stop."""
        await self.server.serve(sockets=self.sockets)

    def handle(self, msg: m.ParentMessage) -> None:
        """Resolve the request waiting for this reply."""
        if isinstance(msg, m.ControlReply):
            future = self._waiting.pop(msg.id, None)
            if future is not None and not future.done():
                future.set_result(msg)
        elif isinstance(msg, m.StateUpdate):
            self.state = msg
            self.changed.set()
            self.changed = asyncio.Event()

    def stop(self) -> None:
        """Stop accepting; uvicorn finishes the requests in flight."""
        self.server.should_exit = True

    # ---- the API ----

    async def ask(self, action: str, **args: Any) -> JSONResponse:
        """Send one request to the parent and turn its reply into a response."""
        request_id = next(self._ids)
        future: asyncio.Future[m.ControlReply] = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = future
        self.runtime.send(m.ControlRequest(id=request_id, action=action, args=args))
        try:
            reply = await asyncio.wait_for(future, REQUEST_TIMEOUT)
        except TimeoutError:
            self._waiting.pop(request_id, None)
            return JSONResponse({"error": "the supervisor did not answer in time"}, 504)
        if not reply.ok:
            return JSONResponse({"error": reply.error}, reply.status)
        return JSONResponse(reply.data, reply.status)

    def state_document(self) -> dict[str, Any] | None:
        """The latest state as one document: status, peers and routes."""
        s = self.state
        if s is None:
            return None
        return {"status": s.status, "peers": s.peers, "routes": s.routes, "probes": s.probes}

    async def metrics(self, request: Request) -> Response:
        """GET /metrics: every worker's metrics and the node's state, for Prometheus."""
        from prometheus_client import CONTENT_TYPE_LATEST

        body = render(self.state_document, self.settings["metrics"])
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    async def status(self, request: Request) -> JSONResponse:
        """GET /v1/status: the node, its services and workers."""
        return await self.ask("status")

    async def peers(self, request: Request) -> JSONResponse:
        """GET /v1/peers: the peers discovery found, and its counters."""
        return await self.ask("peers")

    async def routes(self, request: Request) -> JSONResponse:
        """GET /v1/routes: who serves each name, and why."""
        return await self.ask("routes")

    async def pin(self, request: Request) -> JSONResponse:
        """PUT /v1/routes/{name}?peer=ID pins a service to a peer; DELETE clears the pin."""
        peer = request.query_params.get("peer", "") if request.method == "PUT" else ""
        if request.method == "PUT" and not peer:
            return JSONResponse({"error": "which peer? (?peer=ID)"}, 400)
        return await self.ask("pin", name=request.path_params["name"], peer=peer)

    async def service_action(self, request: Request) -> JSONResponse:
        """POST /v1/services/{name}/{start|stop|restart}."""
        action = request.path_params["action"]
        if action in ("attach", "release"):  # `devmesh run`: ?pid= of that command [&port=N]
            query = request.query_params
            pid, port = query.get("pid", ""), query.get("port")
            if not pid.isdigit() or (port is not None and not port.isdigit()):
                return JSONResponse({"error": f"{action} needs ?pid=N[&port=N]"}, 400)
            args: dict[str, Any] = {"name": request.path_params["name"], "pid": int(pid)}
            if port is not None:
                args["port"] = int(port)
            return await self.ask(action, **args)
        if action not in SERVICE_ACTIONS:
            return JSONResponse({"error": f"unknown action {action!r}"}, 404)
        return await self.ask(action, name=request.path_params["name"])

    async def shutdown(self, request: Request) -> JSONResponse:
        """POST /v1/shutdown: stop every service and the supervisor (`devmesh down`)."""
        return await self.ask("shutdown")


def make_role(
    runtime: WorkerRuntime, configure: m.Configure, sockets: list[socket.socket]
) -> ControlRole:
    """The control worker's role factory (named in the parent's worker table)."""
    return ControlRole(runtime, sockets, configure.settings)


LOCAL_HOSTS = frozenset(("127.0.0.1", "localhost", "[::1]", "::1"))


class LoopbackOnly:
    """Refuses what a web page elsewhere could make a browser send to this loopback port: a Host
    other than the loopback's (DNS rebinding), and a cross-origin request or WebSocket (a form
    or script on another site pressing the stop buttons). Tools without Origin are served."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket") and not self._allowed(scope):
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
                return
            response = JSONResponse({"error": "not from this machine's dashboard"}, 403)
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)

    @staticmethod
    def _allowed(scope: Scope) -> bool:
        headers = dict(scope.get("headers") or ())
        host = headers.get(b"host", b"").decode("latin-1").lower()
        server = scope.get("server")
        if server is None or server[1] is None:
            return True  # the unix socket: this user's own processes only (mode 0600)
        if host.rsplit(":", 1)[0] not in LOCAL_HOSTS:
            return False
        origin = headers.get(b"origin")
        if origin is None:
            return True
        return bool(origin.decode("latin-1").lower().rstrip("/") == f"http://{host}")

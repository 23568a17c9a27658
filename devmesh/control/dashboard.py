"""The dashboard: its page, assets and live WebSocket feed (served by the control worker)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.routing import BaseRoute

if TYPE_CHECKING:
    from devmesh.control.worker import ControlRole


def routes(role: ControlRole) -> list[BaseRoute]:
    """The dashboard's routes."""
    return []

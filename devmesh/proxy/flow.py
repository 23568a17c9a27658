"""Flow control on the client side: reading pauses while any reason to wait holds.

Reasons combine (a bit mask), so the one that ends first does not resume reading while another
still holds: the backend's transport is above its high water mark (`UPSTREAM`), a pipelined
request waits for its turn (`PIPELINE`), bytes wait for a backend connection (`BUFFER`), an
upgrade waits for the backend's answer (`UPGRADE`). The other direction needs no state:
`ClientProtocol.pause_writing` pauses the backend transport directly.
"""

from __future__ import annotations

import asyncio

UPSTREAM = 1
PIPELINE = 2
BUFFER = 4
UPGRADE = 8


class ReadGate:
    """Pauses and resumes reading on one transport for a set of reasons."""

    __slots__ = ("reasons", "transport")

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.reasons = 0

    def block(self, reason: int) -> None:
        """Stop reading (if not stopped already) until `reason` is lifted."""
        if not self.reasons:
            self.transport.pause_reading()
        self.reasons |= reason

    def unblock(self, reason: int) -> None:
        """Lift `reason`; reading resumes when no reason is left."""
        if self.reasons & reason:
            self.reasons &= ~reason
            if not self.reasons:
                self.transport.resume_reading()

    def open(self) -> None:
        """Read whatever the reasons (a lingering close drains the connection)."""
        self.reasons = 0
        self.transport.resume_reading()

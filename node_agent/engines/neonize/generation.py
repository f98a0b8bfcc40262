"""One whatsmeow client (one uuid) and its connect attempts (rule 4)."""

from __future__ import annotations

import asyncio
from typing import Any, Literal


class _Generation:
    """One whatsmeow client (one uuid) and its connect attempts."""

    def __init__(self, uuid: str, client: Any) -> None:
        self.uuid = uuid
        self.client = client
        self.task: asyncio.Task[Any] | None = None
        self.registered = False  # Neonize() ran and we have not called Stop since
        self.phase: Literal["idle", "dialing", "pairing", "online"] = "idle"
        self.abandoned = False
        self.sign = asyncio.Event()
        self.attempt = 0
        self.dial_started = 0.0
        self.qr_index = 0
        self.keepalive_errors = 0
        self.link_up = False  # between Connected and Disconnected events

    @property
    def running(self) -> bool:
        return self.task is not None and not self.task.done()

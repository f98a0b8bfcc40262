"""`zapfleet webhooks`: the dispatcher as its own process, for scale."""

from __future__ import annotations

import asyncio
import signal

from control_plane.services import open_services
from control_plane.settings import ControlPlaneSettings
from control_plane.webhooks.dispatcher import Dispatcher


async def run_dispatcher(settings: ControlPlaneSettings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with open_services(settings) as services:
        dispatcher = Dispatcher(services.js, services.sessions, settings)
        dispatcher.start()
        await stop.wait()
        await dispatcher.stop()

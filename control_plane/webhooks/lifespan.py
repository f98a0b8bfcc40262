"""What the control plane runs beside its HTTP API for events: the webhook dispatcher
(``ZAPFLEET_WEBHOOKS_IN_PROCESS``) and the NATS commands (``ZAPFLEET_NATS_COMMANDS``).
A Litestar lifespan entered after the one that opens the services."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

from litestar import Litestar

from control_plane.commands import serve_commands
from control_plane.services import Services
from control_plane.webhooks.config import WebhookRegistry
from control_plane.webhooks.dispatcher import Dispatcher

log = logging.getLogger(__name__)


@contextlib.asynccontextmanager
async def events_lifespan(app: Litestar) -> AsyncIterator[None]:
    services: Services = app.state.services
    settings = services.settings
    dispatcher = None
    registry = None
    commands = None
    if settings.webhooks_in_process:
        # follows the worker's one zf_sessions mirror (the session index's), not a second
        registry = WebhookRegistry(services.js, settings, sessions=services.index.mirror)
        await registry.start()
        dispatcher = Dispatcher(services.nc, services.js, settings, registry=registry)
        await dispatcher.start()
    app.state.dispatcher = dispatcher
    if settings.nats_commands:
        commands = await serve_commands(services)
    try:
        yield
    finally:
        if commands is not None:
            with contextlib.suppress(Exception):
                await commands.stop()
        if dispatcher is not None:
            await dispatcher.stop()
        if registry is not None:
            await registry.stop()

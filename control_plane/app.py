"""The Litestar application of the control plane."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

from litestar import Litestar
from litestar.config.compression import CompressionConfig
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin, ScalarRenderPlugin

from control_plane.api.events import EventController
from control_plane.api.messages import MessageController
from control_plane.api.monitoring import MonitoringController
from control_plane.api.sessions import SessionController
from control_plane.api.webhooks import WebhookController
from control_plane.problems import EXCEPTION_HANDLERS
from control_plane.services import get_services, open_services
from control_plane.settings import ControlPlaneSettings
from control_plane.webhooks.lifespan import events_lifespan
from zapfleet import __version__

log = logging.getLogger(__name__)


def create_app(settings: ControlPlaneSettings) -> Litestar:
    @contextlib.asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        async with open_services(settings) as services:
            app.state.services = services
            log.info("control plane ready")
            yield

    return Litestar(
        route_handlers=[
            SessionController,
            MessageController,
            MonitoringController,
            WebhookController,
            EventController,
        ],
        dependencies={"services": Provide(get_services, sync_to_thread=False)},
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=[lifespan, events_lifespan],
        request_max_body_size=settings.max_body_bytes,
        compression_config=CompressionConfig(backend="gzip", minimum_size=1024),
        openapi_config=OpenAPIConfig(
            title="zapfleet",
            version=__version__,
            description="Self-hosted WhatsApp gateway: sessions across many machines.",
            path="/schema",
            render_plugins=[ScalarRenderPlugin(), JsonRenderPlugin()],
        ),
        debug=False,
    )

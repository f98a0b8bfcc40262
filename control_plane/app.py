"""The Litestar application of the control plane."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from litestar import Litestar, Router
from litestar.config.compression import CompressionConfig
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin, ScalarRenderPlugin
from litestar.openapi.spec import Components, SecurityScheme

from control_plane.allow_header import fix_allow_header
from control_plane.api.chats import ChatController
from control_plane.api.contacts import ContactsController  # issue 16
from control_plane.api.events import EventController
from control_plane.api.groups import GroupController  # groups (issue 16)
from control_plane.api.media import MediaController, SignedMediaController
from control_plane.api.messages import ContactController, MessageController
from control_plane.api.monitoring import MonitoringController
from control_plane.api.nodes import NodeController
from control_plane.api.nodes_admin import NodeAdminController
from control_plane.api.sessions import SessionController
from control_plane.api.tenants import TenantController
from control_plane.api.webhooks import WebhookController
from control_plane.caches import CacheInvalidator
from control_plane.content_type import require_json_body
from control_plane.evolution.router import evolution_router  # Evolution API v2 (issue 20)
from control_plane.groups import GroupCacheInvalidator
from control_plane.hooks import before_send
from control_plane.openapi_doc import complete as complete_openapi
from control_plane.problems import EXCEPTION_HANDLERS, SMALL_ANSWERS
from control_plane.reconciler import Reconciler
from control_plane.security import SecurityHeadersMiddleware, cors_config
from control_plane.services import get_services, open_services
from control_plane.settings import ControlPlaneSettings
from control_plane.ui import ui_route_handlers
from control_plane.webhooks.lifespan import events_lifespan
from zapfleet import __version__
from zapfleet._gc import settle_after_startup
from zapfleet._logging import register_secret

log = logging.getLogger(__name__)


def create_app(settings: ControlPlaneSettings) -> Litestar:
    # in every worker process: these values are masked in any log line (zapfleet._logging)
    register_secret(settings.admin_key)
    register_secret(settings.webhook_secret)

    @contextlib.asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        async with open_services(settings) as services:
            app.state.services = services
            invalidator = CacheInvalidator(services.js, services.cache)
            invalidator.start()
            # -- groups (issue 16) --
            group_invalidator = GroupCacheInvalidator(services.js, services.cache)
            group_invalidator.start()
            reconciler = Reconciler(services.fleet) if settings.reconciler else None
            if reconciler is not None:
                reconciler.start()
            settle_after_startup()
            log.info("control plane ready")
            try:
                yield
            finally:
                if reconciler is not None:
                    await reconciler.stop()
                await invalidator.stop()
                await group_invalidator.stop()

    # sends may carry inline media: their limit follows ZAPFLEET_MAX_MEDIA_BYTES (base64);
    # every other body (number checks too) has ZAPFLEET_MAX_BODY_BYTES
    media_body_limit = settings.max_media_bytes * 4 // 3 + 64 * 1024
    messages = Router(
        path="/",
        route_handlers=[MessageController],
        request_max_body_size=max(media_body_limit, settings.max_body_bytes),
    )
    handlers: list[Any] = [
        SessionController,
        messages,
        ContactController,
        ChatController,
        GroupController,  # groups (issue 16)
        TenantController,
        NodeController,
        NodeAdminController,
        MonitoringController,
        WebhookController,
        EventController,
        MediaController,
        SignedMediaController,
        ContactsController,  # issue 16
    ]
    if settings.ui_enabled:
        handlers.extend(ui_route_handlers())
    if settings.evolution:  # Evolution API v2 facade (issue 20, docs/evolution.md)
        handlers.append(evolution_router(settings, max(media_body_limit, settings.max_body_bytes)))
    app = Litestar(
        route_handlers=handlers,
        middleware=[SecurityHeadersMiddleware],
        cors_config=cors_config(settings.cors_allow_origins),
        dependencies={"services": Provide(get_services, sync_to_thread=False)},
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=[lifespan, events_lifespan],
        before_send=[before_send, fix_allow_header],
        before_request=require_json_body,  # 415 for bodies that are not JSON
        request_max_body_size=settings.max_body_bytes,
        compression_config=compression(),
        openapi_config=OpenAPIConfig(
            title="zapfleet",
            version=__version__,
            description=API_DESCRIPTION,
            path="/schema",
            render_plugins=[ScalarRenderPlugin(), JsonRenderPlugin()],
            components=Components(
                security_schemes={
                    "bearer": SecurityScheme(
                        type="http", scheme="bearer", description="Authorization: Bearer <key>"
                    ),
                    "apiKey": SecurityScheme(
                        type="apiKey", name="X-API-Key", security_scheme_in="header"
                    ),
                }
            ),
            security=[{"bearer": []}, {"apiKey": []}],
        ),
        logging_config=None,  # our JSON logging (zapfleet._logging) stays in charge
        debug=False,
    )
    complete_openapi(app.openapi_schema, metrics_public=settings.metrics_public)
    return app


API_DESCRIPTION = """Self-hosted WhatsApp gateway: sessions across many machines.

Authenticate with `Authorization: Bearer <key>` or `X-API-Key: <key>`. The admin key
manages tenants, keys and nodes; on session endpoints it acts for the tenant named by
`X-Tenant-Id` (default: `default`). Tenant keys see only their own sessions.
Errors are RFC 9457 `application/problem+json` with a stable `type`
(`urn:zapfleet:problem:<code>`). Every /v1 answer carries `RateLimit-*` headers;
a 429 carries `Retry-After`. Sends accept an `Idempotency-Key`. See docs/api.md."""


def compression() -> CompressionConfig:
    """brotli when the module is installed (it is a dependency), gzip otherwise; both
    only for bodies over 1 KiB and only when the client accepts them. Routes whose
    answers are always small (sends, status) skip the middleware altogether."""
    try:
        import brotli  # type: ignore[import-untyped]  # noqa: F401
    except ImportError:
        return CompressionConfig(backend="gzip", minimum_size=1024, exclude_opt_key=SMALL_ANSWERS)
    return CompressionConfig(
        backend="brotli",
        minimum_size=1024,
        brotli_gzip_fallback=True,
        brotli_quality=4,
        exclude_opt_key=SMALL_ANSWERS,
    )

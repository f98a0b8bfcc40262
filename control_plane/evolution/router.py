"""The facade's one Router: every Evolution controller family, Evolution's error shape."""

from __future__ import annotations

from typing import Any

from litestar import Router

from control_plane.evolution import chat, groups, instances, messages, profile, unsupported, webhook
from control_plane.evolution._common import evolution_error_response
from control_plane.settings import ControlPlaneSettings


def evolution_router(settings: ControlPlaneSettings, body_limit: int) -> Router:
    """The facade's routes under ``settings.evolution_prefix``; ``body_limit`` is the
    sends' (inline media, as /v1's)."""
    handlers: list[Any] = [
        *instances.ROUTES,
        *messages.ROUTES,
        *chat.ROUTES,
        *profile.ROUTES,
        *groups.ROUTES,
        *webhook.ROUTES,  # webhook/set, webhook/find (docs/evolution.md, "Webhooks")
        *unsupported.ROUTES,
    ]
    return Router(
        path=settings.evolution_prefix or "/",
        route_handlers=handlers,
        include_in_schema=False,
        exception_handlers={Exception: evolution_error_response},
        request_max_body_size=body_limit,
    )

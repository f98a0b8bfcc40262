"""Evolution API v2 compatibility facade (issue 20, docs/evolution.md).

Evolution's REST shape — ``apikey`` header, ``/instance/...``, ``/message/...``,
``/chat/...``, ``/group/...``, ``/settings/...`` — mapped onto zapfleet's services
(control_plane/{sessions,messages,media,contacts,groups,numbers}.py): a client written
for Evolution changes only its base URL and key. It is a facade, not a second
implementation: every route calls a service and re-shapes its answer and its errors.

Mounted by control_plane/app.py when ``ZAPFLEET_EVOLUTION`` is on, under
``ZAPFLEET_EVOLUTION_PREFIX`` (default: Evolution's own root paths), outside the OpenAPI
document. One module per Evolution controller family; ``evolution_router`` joins them.
"""

from __future__ import annotations

from typing import Any

from litestar import Router

from control_plane.evolution import chat, groups, instances, messages, profile, unsupported
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
        # -- Evolution webhooks (webhook/set, webhook/find): the lead adds
        # control_plane/evolution/webhook.py's ROUTES here at merge --
        *unsupported.ROUTES,
    ]
    return Router(
        path=settings.evolution_prefix or "/",
        route_handlers=handlers,
        include_in_schema=False,
        exception_handlers={Exception: evolution_error_response},
        request_max_body_size=body_limit,
    )

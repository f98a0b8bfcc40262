"""API keys: ``Authorization: Bearer <key>`` or ``X-API-Key: <key>`` (docs/api.md).

The route dependencies; the verification itself is :mod:`control_plane.keyring`.
"""

from __future__ import annotations

from typing import Any

from litestar import Request

from control_plane.keyring import (
    ADMIN_KEY_ID,
    DEFAULT_TENANT,
    TENANT_HEADER,
    Principal,
    presented_key,
    unauthenticated,
)
from control_plane.problems import ProblemError
from control_plane.services import Services

__all__ = [
    "ADMIN_KEY_ID",
    "DEFAULT_TENANT",
    "Principal",
    "authenticate",
    "presented_key",
    "require_admin",
]


async def authenticate(request: Request[Any, Any, Any], services: Services) -> Principal:
    """Dependency of every /v1 route: who is calling, then its rate limit (one Valkey
    round trip, :mod:`control_plane.ratelimit`)."""
    key = presented_key(request)
    if key is None:
        raise unauthenticated(
            "unauthenticated",
            "missing API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'",
        )
    principal = await services.auth.verify(key, request.headers.get(TENANT_HEADER))
    limiter = services.limiter
    if limiter.enabled and not request.route_handler.opt.get("rate_in_handler"):
        await limiter.check(request, principal.key_id)
    return principal


async def require_admin(request: Request[Any, Any, Any], services: Services) -> Principal:
    principal = await authenticate(request, services)
    if not principal.is_admin:
        raise ProblemError(403, "forbidden", "this operation needs the admin key")
    return principal

"""API keys: ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``.

The admin key comes from settings and is compared in constant time."""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Any

from litestar import Request

from control_plane.problems import ProblemError
from control_plane.services import Services

DEFAULT_TENANT = "default"


@dataclass(frozen=True, slots=True)
class Principal:
    tenant: str
    is_admin: bool


def presented_key(request: Request[Any, Any, Any]) -> str | None:
    header = request.headers.get("authorization")
    if header:
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    key = request.headers.get("x-api-key")
    return key.strip() if key else None


async def principal_for_key(services: Services, key: str) -> Principal | None:
    """Who ``key`` belongs to, or None. Shared by the REST API and the NATS commands."""
    if hmac.compare_digest(key.encode(), services.settings.admin_key.encode()):
        return Principal(tenant=DEFAULT_TENANT, is_admin=True)
    return None


async def authenticate(request: Request[Any, Any, Any], services: Services) -> Principal:
    key = presented_key(request)
    if key is None:
        raise ProblemError(
            401,
            "unauthenticated",
            "missing API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    principal = await principal_for_key(services, key)
    if principal is not None:
        return principal
    raise ProblemError(
        401, "invalid_key", "the API key is not valid", headers={"WWW-Authenticate": "Bearer"}
    )

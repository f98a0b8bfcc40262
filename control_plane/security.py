"""Security headers on every response, and CORS denied unless origins are allowed.

The web UI (``/ui``) is served by the same origin as the API, so it needs no CORS at all:
browsers refuse cross-origin reads of the API unless ``ZAPFLEET_CORS_ALLOW_ORIGINS``
names the origin. Every response carries nosniff, a frame ban and no referrer; the UI
gets a Content-Security-Policy that allows scripts and styles only from this origin (no
inline scripts, no ``eval``) and images from ``blob:`` (QR codes fetched with the key in a
header, never in a URL). The API documentation page (``/schema``) loads its renderer
from a CDN, so it gets no CSP from here.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from litestar.config.cors import CORSConfig
from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send

STARTED = "zapfleet.started"  # scope key read by control_plane/hooks.py

UI_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "connect-src 'self'; font-src 'self'; manifest-src 'self'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'; object-src 'none'"
)
API_CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'"

_COMMON: list[tuple[bytes, bytes]] = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
    (b"permissions-policy", b"camera=(), microphone=(), geolocation=(), payment=()"),
]
_UI = [*_COMMON, (b"content-security-policy", UI_CSP.encode())]
_API = [*_COMMON, (b"content-security-policy", API_CSP.encode())]


def headers_for(path: str) -> list[tuple[bytes, bytes]]:
    if path == "/ui" or path.startswith("/ui/"):
        return _UI
    if path == "/schema" or path.startswith("/schema/"):
        return _COMMON
    return _API


class SecurityHeadersMiddleware:
    """Pure ASGI middleware: appends the security headers to ``http.response.start``
    unless the handler set them itself. Being the outermost layer, it also notes when the
    request arrived (for the duration histogram of control_plane/hooks.py)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await self.app(scope, receive, send)
            return
        scope[STARTED] = time.perf_counter()  # type: ignore[literal-required]
        extra = headers_for(scope["path"])

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers") or [])
                present = {name.lower() for name, _ in headers}
                headers.extend(item for item in extra if item[0] not in present)
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


def cors_config(allow_origins: Sequence[str]) -> CORSConfig | None:
    """None (no CORS headers: browsers deny cross-origin reads) unless origins are listed.
    Credentials are never allowed: the API authenticates with a header, not cookies."""
    origins = [origin.strip().rstrip("/") for origin in allow_origins if origin.strip()]
    if not origins:
        return None
    return CORSConfig(
        allow_origins=origins,
        allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
        allow_headers=[
            "Authorization",
            "X-API-Key",
            "Content-Type",
            "Idempotency-Key",
            "X-Tenant-Id",
        ],
        expose_headers=["Retry-After", "RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset"],
        allow_credentials=False,
        max_age=600,
    )

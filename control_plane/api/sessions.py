"""/v1/sessions: create, list, read, delete, operate and pair sessions.

The controller maps HTTP to the session service (control_plane/sessions.py): routes,
parameters, rate classes, cache headers and QR images. The names other modules imported
from here before the service existed are re-exported (``__all__``) for code written
against the old layout; new code imports them from control_plane/sessions.py.
"""

from __future__ import annotations

import io
from typing import Annotated, Any

import msgspec
import segno
from litestar import Controller, MediaType, Request, Response, delete, get, patch, post
from litestar.di import Provide
from litestar.params import Parameter

from contract.protocol import Op, SessionState
from control_plane import session_listing
from control_plane import sessions as session_service
from control_plane.api.webhooks import ensure_event_patterns, ensure_safe_url, ensure_secret_fits
from control_plane.auth import Principal, authenticate
from control_plane.caches import cache_id
from control_plane.models import (
    CreateSession,
    PairCodeBody,
    PairCodeView,
    QrView,
    SessionList,
    SessionSettings,
    SessionStatus,
    SessionView,
    SettingsPatch,
)
from control_plane.problems import SMALL_ANSWERS
from control_plane.services import Services
from control_plane.sessions import (  # the re-exported names (see the docstring)
    STOPPED_BY,
    call_agent,
    current_qr,
    destroy_device,
    engine_nodes,
    live_assignment,
    live_info,
    load_record,
    not_found,
    not_running,
    place,
    remove_session,
    running,
    running_op,
    settings_of,
    status_of,
    stopped_reason,
    unplace,
    update_record,
    view,
)
from control_plane.webhooks.signing import LEGACY, STANDARD

SESSION_OPS = {"rate": "sessions"}
QUERIES = {"rate": "queries"}
JSON = MediaType.JSON
_qr_decoder = msgspec.json.Decoder(QrView)


class SessionController(Controller):
    path = "/v1/sessions"
    tags = ["sessions"]
    dependencies = {"principal": Provide(authenticate)}

    @post("/", status_code=201, opt=SESSION_OPS, summary="Create a session and place it on a node")
    async def create(
        self, data: CreateSession, services: Services, principal: Principal
    ) -> SessionView:
        if data.webhook_url:
            await ensure_safe_url(services, data.webhook_url)
        ensure_event_patterns(data.webhook_events)
        ensure_secret_fits(data.webhook_scheme or STANDARD, data.webhook_secret)
        return await session_service.create_session(services, principal, data)

    @get(
        "/",
        opt=QUERIES,
        summary="The caller's sessions with their live state",
        description=(
            "Ordered by name. Page with `cursor` (the `next_cursor` of the previous page, "
            "null on the last one): a walk sees every session that exists throughout "
            "exactly once, whatever is created or deleted meanwhile. The live state is "
            "the last one the session's node reported; no node is asked."
        ),
    )
    async def list_sessions(
        self,
        services: Services,
        principal: Principal,
        limit: int = Parameter(default=100, ge=1, le=1000),
        offset: int = Parameter(default=0, ge=0),
        only_state: Annotated[
            SessionState | None, Parameter(query="state", description="only this state")
        ] = None,
        cursor: Annotated[
            str | None,
            Parameter(query="cursor", description="next_cursor of the previous page"),
        ] = None,
        node: Annotated[
            str | None, Parameter(query="node", description="only sessions placed on this node")
        ] = None,
    ) -> SessionList:
        return await session_listing.list_sessions(
            services, principal, limit, offset, only_state, cursor, node
        )

    @get("/{session_id:str}", opt=QUERIES, summary="A session and its live state")
    async def read(self, session_id: str, services: Services, principal: Principal) -> SessionView:
        return await session_service.read_session(services, principal, session_id)

    @delete(
        "/{session_id:str}",
        opt=SESSION_OPS,
        summary="Unlink the device, delete its state everywhere and delete the session",
        description=(
            "A delete always logs the device out and destroys its state (device store "
            "and its backups, sim account, queued messages); the name is free again and "
            "a new session of that name starts unpaired. To keep a paired device while "
            "it does not run, use POST .../stop instead."
        ),
    )
    async def remove(
        self,
        session_id: str,
        services: Services,
        principal: Principal,
        logout: bool = Parameter(
            default=True,
            description="ignored (kept for old clients): a delete always unlinks the device",
        ),
    ) -> None:
        await session_service.delete_session(services, principal, session_id)

    @post("/{session_id:str}/start", status_code=200, opt=SESSION_OPS, summary="Start a session")
    async def start(self, session_id: str, services: Services, principal: Principal) -> SessionView:
        return await session_service.start_session(services, principal, session_id)

    @post(
        "/{session_id:str}/stop",
        status_code=200,
        opt=SESSION_OPS,
        summary="Stop a session (stays paired; start it again any time)",
    )
    async def stop(self, session_id: str, services: Services, principal: Principal) -> SessionView:
        return await session_service.stop_session(services, principal, session_id)

    @post(
        "/{session_id:str}/logout",
        status_code=200,
        opt=SESSION_OPS,
        summary="Unlink the device and stop the session (pair again to use it)",
    )
    async def logout(
        self, session_id: str, services: Services, principal: Principal
    ) -> SessionView:
        return await session_service.logout_session(services, principal, session_id)

    @post(
        "/{session_id:str}/restart",
        status_code=200,
        opt=SESSION_OPS,
        summary="Restart the session's connection on its node",
    )
    async def restart(
        self, session_id: str, services: Services, principal: Principal
    ) -> SessionView:
        return await session_service.running_op(services, principal, session_id, Op.SESSION_RESTART)

    @post(
        "/{session_id:str}/reconnect",
        status_code=200,
        opt=SESSION_OPS,
        summary="Force a reconnect now (skips a pending backoff)",
    )
    async def reconnect(
        self, session_id: str, services: Services, principal: Principal
    ) -> SessionView:
        return await session_service.running_op(
            services, principal, session_id, Op.SESSION_RECONNECT
        )

    @post(
        "/{session_id:str}/reset-breaker",
        status_code=200,
        opt=SESSION_OPS,
        summary="Close an open circuit breaker and reconnect",
    )
    async def reset_breaker(
        self, session_id: str, services: Services, principal: Principal
    ) -> SessionView:
        return await session_service.running_op(
            services, principal, session_id, Op.SESSION_RESET_BREAKER
        )

    @get(
        "/{session_id:str}/status",
        # the rate limit and the cache read share one Valkey round trip (see below)
        opt={**QUERIES, "rate_in_handler": True, SMALL_ANSWERS: True},
        summary="The session's state, from the status cache (header X-Cache: hit|miss)",
    )
    async def status(
        self, request: Request[Any, Any, Any], session_id: str
    ) -> Response[SessionStatus]:
        # a hot read: services and caller by hand, cheaper than dependency injection
        services: Services = request.app.state.services
        principal = await authenticate(request, services)
        limiter = services.limiter
        record = services.index.find(principal.tenant, session_id)
        if limiter.enabled and record is not None and live_assignment(record) is not None:
            # the hot path: count the request and read the cache in one round trip
            cached, gen = await limiter.check(
                request, principal.key_id, services.cache.status_keys(cache_id(record))
            )
            services.cache.count_status(cached is not None)
            generation = gen or b"0"
        else:
            if limiter.enabled:
                await limiter.check(request, principal.key_id)
            record = await load_record(services, principal, session_id)
            if live_assignment(record) is None:
                return Response(status_of(record, None), headers={"X-Cache": "bypass"})
            cached, generation = await services.cache.get_status(cache_id(record))
        if cached is not None:
            return Response(cached, media_type=JSON, headers={"X-Cache": "hit"})  # type: ignore[arg-type]
        body = await session_service.fresh_status(services, record, generation)
        return Response(body, media_type=JSON, headers={"X-Cache": "miss"})  # type: ignore[arg-type]

    @get(
        "/{session_id:str}/qr",
        opt=QUERIES,
        summary="The current QR code as its raw string, while pairing (cached ≤ 30 s)",
    )
    async def qr(
        self, session_id: str, services: Services, principal: Principal
    ) -> Response[QrView]:
        body = await session_service.current_qr(services, principal, session_id)
        return Response(body, media_type=JSON)  # type: ignore[arg-type]

    @get(
        "/{session_id:str}/qr.png",
        opt=QUERIES,
        media_type="image/png",
        summary="The current QR code as a PNG image",
    )
    async def qr_png(
        self,
        session_id: str,
        services: Services,
        principal: Principal,
        scale: int = Parameter(default=8, ge=1, le=32),
    ) -> Response[bytes]:
        qr = _qr_decoder.decode(await session_service.current_qr(services, principal, session_id))
        return Response(
            _render(qr.qr, "png", scale),
            media_type="image/png",
            headers={"Cache-Control": "no-store"},
        )

    @get(
        "/{session_id:str}/qr.svg",
        opt=QUERIES,
        media_type="image/svg+xml",
        summary="The current QR code as an SVG image",
    )
    async def qr_svg(
        self,
        session_id: str,
        services: Services,
        principal: Principal,
        scale: int = Parameter(default=8, ge=1, le=32),
    ) -> Response[bytes]:
        qr = _qr_decoder.decode(await session_service.current_qr(services, principal, session_id))
        return Response(
            _render(qr.qr, "svg", scale),
            media_type="image/svg+xml",
            headers={"Cache-Control": "no-store"},
        )

    @post(
        "/{session_id:str}/pair-code",
        status_code=200,
        opt=SESSION_OPS,
        summary="Pair by phone number: the code to type on the phone",
    )
    async def pair_code(
        self, session_id: str, data: PairCodeBody, services: Services, principal: Principal
    ) -> PairCodeView:
        return await session_service.pair_code(services, principal, session_id, data.phone)

    @get("/{session_id:str}/settings", opt=QUERIES, summary="Pacing, proxy, device, webhook")
    async def get_settings(
        self, session_id: str, services: Services, principal: Principal
    ) -> SessionSettings:
        return await session_service.read_settings(services, principal, session_id)

    @patch(
        "/{session_id:str}/settings",
        opt=SESSION_OPS,
        summary="Change pacing (live), proxy and device name (next start), webhook",
    )
    async def patch_settings(
        self, session_id: str, data: SettingsPatch, services: Services, principal: Principal
    ) -> SessionSettings:
        loaded = await load_record(services, principal, session_id)
        if isinstance(data.webhook_url, str):
            await ensure_safe_url(services, data.webhook_url)
        if isinstance(data.webhook_events, list):
            ensure_event_patterns(data.webhook_events)
        scheme = (
            data.webhook_scheme
            if data.webhook_scheme is not msgspec.UNSET
            else loaded.webhook_scheme or LEGACY
        )
        if data.webhook_secret is not msgspec.UNSET:
            ensure_secret_fits(scheme, data.webhook_secret)
        return await session_service.change_settings(services, loaded, data)


def _render(code: str, kind: str, scale: int) -> bytes:
    buffer = io.BytesIO()
    segno.make(code, error="l").save(buffer, kind=kind, scale=scale, border=4)
    return buffer.getvalue()


# names imported from here before the session service existed (see the docstring)
__all__ = [
    "QUERIES",
    "SESSION_OPS",
    "STOPPED_BY",
    "SessionController",
    "call_agent",
    "current_qr",
    "destroy_device",
    "engine_nodes",
    "live_assignment",
    "live_info",
    "load_record",
    "not_found",
    "not_running",
    "place",
    "remove_session",
    "running",
    "running_op",
    "settings_of",
    "status_of",
    "stopped_reason",
    "unplace",
    "update_record",
    "view",
]

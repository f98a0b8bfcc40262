"""Commands over NATS for clients that live on NATS: ``zf.api.<tenant>.<op>``.

A ``nats.micro`` service ``zapfleet-api`` in every control-plane worker (one queue group,
so each request is served once) answers the same operations as the REST API, with the
same checks, through the same code. Requests carry the API key in a NATS header
(``Authorization: Bearer <key>`` or ``X-API-Key``); a tenant key may only use its own
tenant's subjects, the admin key any. Replies are ``{"kind": "ok", "value": ...}`` or
``{"kind": "err", "code": ..., "status": ..., "message": ...}`` where ``code`` and
``status`` are those of the REST problem document (docs/nats.md).

| op | request | reply value |
|---|---|---|
| ``message_send`` | ``{"session_id", "message": {"type", "to", "text", ...}}`` | MessageAccepted |
| ``session_status`` | ``{"session_id"}`` | SessionView |
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import msgspec
from nats.micro import add_service
from nats.micro.request import Request
from nats.micro.service import Service

from control_plane.api.messages import queue_message
from control_plane.api.sessions import live_info, load_record, view
from control_plane.auth import Principal
from control_plane.models import OutboundMessage, SessionId
from control_plane.problems import ProblemError
from control_plane.services import Services
from node_agent.protocol import api_subject
from zapfleet import __version__

log = logging.getLogger(__name__)
R = TypeVar("R", bound=msgspec.Struct)

SERVICE = "zapfleet-api"
QUEUE_GROUP = "zf-api"


class CommandError(msgspec.Struct, tag="err", tag_field="kind"):
    code: str
    status: int
    message: str


class SendMessageCommand(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    session_id: SessionId
    message: OutboundMessage
    idempotency_key: str | None = None


class SessionStatusCommand(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    session_id: SessionId


_encoder = msgspec.json.Encoder()


async def op_message_send(
    services: Services, principal: Principal, body: SendMessageCommand
) -> bytes:
    accepted, _ = await queue_message(
        services, principal, body.session_id, body.message, body.idempotency_key
    )
    return accepted


async def op_session_status(
    services: Services, principal: Principal, body: SessionStatusCommand
) -> bytes:
    record = await load_record(services, principal, body.session_id)
    return _encoder.encode(view(record, await live_info(services, record)))


def _error(code: str, status: int, message: str) -> bytes:
    return _encoder.encode(CommandError(code=code, status=status, message=message))


def _key(headers: dict[str, str] | None) -> str | None:
    for name, value in (headers or {}).items():
        lowered = name.lower()
        if lowered == "authorization":
            scheme, _, token = value.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
        elif lowered == "x-api-key" and value.strip():
            return value.strip()
    return None


def _endpoint(
    services: Services,
    request_type: type[R],
    handler: Callable[[Services, Principal, R], Awaitable[bytes]],
) -> Callable[[Request], Awaitable[None]]:
    decoder = msgspec.json.Decoder(request_type)

    async def endpoint(request: Request) -> None:
        tenant = request.subject.split(".")[2]
        key = _key(request.headers)
        if key is None:
            await request.respond(
                _error("unauthenticated", 401, "missing API key: send an Authorization header")
            )
            return
        try:
            # the same verification as REST with X-Tenant-Id = the subject's tenant: a tenant
            # key only for its own tenant, the admin key for any existing tenant
            acting = await services.auth.verify(key, tenant)
        except ProblemError as exc:
            await request.respond(_error(exc.code, exc.status_code, exc.detail))
            return
        try:
            body = decoder.decode(request.data or b"{}")
        except msgspec.ValidationError as exc:
            await request.respond(_error("invalid_body", 400, f"invalid request: {exc}"))
            return
        except msgspec.DecodeError as exc:
            await request.respond(_error("malformed_json", 400, f"malformed JSON: {exc}"))
            return
        try:
            reply = b'{"kind":"ok","value":' + await handler(services, acting, body) + b"}"
        except ProblemError as exc:
            reply = _error(exc.code, exc.status_code, exc.detail)
        except Exception as exc:
            log.exception("command failed", extra={"subject": request.subject})
            reply = _error("internal", 500, f"internal error: {type(exc).__name__}")
        await request.respond(reply)

    return endpoint


async def serve_commands(services: Services) -> Service:
    """Register the ``zapfleet-api`` micro service; stop it with ``await service.stop()``."""
    service = await add_service(
        services.nc,
        name=SERVICE,
        version=__version__,
        description="zapfleet commands for NATS-native clients",
    )
    routes: dict[str, tuple[type[Any], Callable[..., Awaitable[bytes]]]] = {
        "message_send": (SendMessageCommand, op_message_send),
        "session_status": (SessionStatusCommand, op_session_status),
    }
    for op, (request_type, handler) in routes.items():
        await service.add_endpoint(
            name=op,
            subject=api_subject("*", op),
            handler=_endpoint(services, request_type, handler),
            queue_group=QUEUE_GROUP,
        )
    return service

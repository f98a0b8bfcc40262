"""/v1/sessions/{id}/messages and /contacts: send, history, number checks.

The controllers map HTTP to the message service (control_plane/messages.py). The names
other modules imported from here before the service existed are re-exported (``__all__``)
for code written against the old layout; new code imports them from the service.
"""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Controller, MediaType, Request, Response, get, post
from litestar.di import Provide
from litestar.params import HeaderParameter, Parameter

from control_plane import messages as message_service
from control_plane.api.sessions import QUERIES
from control_plane.auth import Principal, authenticate
from control_plane.messages import (  # the re-exported names (see the docstring)
    MAX_FILENAME,
    MAX_POLL_OPTIONS,
    _check_media,
    check_conversation,
    check_numbers,
    message_history,
    queue_message,
    safe_filename,
)
from control_plane.models import (
    HistoryView,
    MessageAccepted,
    NumberCheck,
    NumberCheckView,
    OutboundMessage,
)
from control_plane.numbers import normalize_chat_id, normalize_recipient
from control_plane.problems import SMALL_ANSWERS
from control_plane.services import Services
from control_plane.sessions import call_agent, load_record, running

MESSAGES = {"rate": "messages", SMALL_ANSWERS: True}
JSON = MediaType.JSON


IdempotencyKey = Annotated[
    str | None,
    HeaderParameter(
        name="Idempotency-Key",
        required=False,
        description="same key + same body = same answer (24 h); same key + other body = 409",
    ),
]


class MessageController(Controller):
    path = "/v1/sessions/{session_id:str}"
    tags = ["messages"]
    dependencies = {"principal": Provide(authenticate)}

    @post(
        "/messages",
        status_code=202,
        opt=MESSAGES,
        summary="Queue a message (text, media, location, contact, reaction, edit, revoke, poll)",
    )
    async def send(
        self,
        request: Request[Any, Any, Any],
        session_id: str,
        data: OutboundMessage,
        idempotency_key: IdempotencyKey = None,
    ) -> Response[MessageAccepted]:
        # the hottest route resolves its services and caller by hand: Litestar's
        # dependency injection costs more per request than everything below (profiled)
        services: Services = request.app.state.services
        principal = await authenticate(request, services)
        body, replayed = await message_service.queue_message(
            services, principal, session_id, data, idempotency_key
        )
        headers = {"Idempotent-Replayed": "true"} if replayed else None
        return Response(body, status_code=202, media_type=JSON, headers=headers)  # type: ignore[arg-type]

    @get(
        "/messages",
        opt=QUERIES,
        summary=(
            "Messages of the session, newest first, with delivery status (queued, sent, "
            "server, delivered, read, failed); by chat, paged (the unfiltered first page "
            "is cached 60 s)"
        ),
    )
    async def history(
        self,
        session_id: str,
        services: Services,
        principal: Principal,
        limit: int = Parameter(default=50, ge=1, le=1000),
        chat: str | None = Parameter(
            default=None,
            max_length=128,
            description="only this chat: a phone number (E.164) or a chat id",
        ),
        before: str | None = Parameter(
            default=None,
            max_length=128,
            description="cursor: `next_before` of the previous page (older messages)",
        ),
    ) -> Response[HistoryView]:
        body, cached = await message_service.message_history(
            services, principal, session_id, limit=limit, chat=chat, before=before
        )
        return Response(body, media_type=JSON, headers={"X-Cache": "hit" if cached else "miss"})  # type: ignore[arg-type]


class ContactController(Controller):
    """Number checks: a controller of their own, outside the sends' router, so their
    body limit is ZAPFLEET_MAX_BODY_BYTES (1 MiB), not the sends' (inline media)."""

    path = "/v1/sessions/{session_id:str}"
    tags = ["messages"]
    dependencies = {"principal": Provide(authenticate)}

    @post(
        "/contacts/check",
        status_code=200,
        opt=QUERIES,
        summary="Which numbers are on WhatsApp (batch ≤ 500; cached 4 h / 2 h)",
    )
    async def check_numbers(
        self, session_id: str, data: NumberCheck, services: Services, principal: Principal
    ) -> NumberCheckView:
        return await message_service.check_numbers(services, principal, session_id, data.numbers)


# names imported from here before the message service existed (see the docstring)
__all__ = [
    "JSON",
    "MAX_FILENAME",
    "MAX_POLL_OPTIONS",
    "MESSAGES",
    "QUERIES",
    "ContactController",
    "IdempotencyKey",
    "MessageController",
    "_check_media",
    "call_agent",
    "check_conversation",
    "check_numbers",
    "load_record",
    "message_history",
    "normalize_chat_id",
    "normalize_recipient",
    "queue_message",
    "running",
    "safe_filename",
]

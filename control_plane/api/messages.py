"""/v1/sessions/{id}/messages: send messages."""

from __future__ import annotations

import secrets

import phonenumbers
from litestar import Controller, post
from litestar.di import Provide

from control_plane.agents import AgentCallError, AgentUnavailable
from control_plane.api.sessions import load_record
from control_plane.auth import Principal, authenticate
from control_plane.models import MessageAccepted, OutboundMessage, to_content
from control_plane.problems import ProblemError
from control_plane.services import Services
from node_agent.protocol import Op, SendAccepted, SendMessage


def normalize_recipient(raw: str) -> str:
    """E.164 digits without '+', or a 422 problem that says what is wrong."""
    text = raw.strip().removesuffix("@s.whatsapp.net")
    try:
        number = phonenumbers.parse(text if text.startswith("+") else "+" + text, None)
    except phonenumbers.NumberParseException as exc:
        raise ProblemError(422, "invalid_number", f"{raw!r} is not a phone number: {exc}") from None
    if not phonenumbers.is_possible_number(number):
        raise ProblemError(422, "invalid_number", f"{raw!r} is not a possible phone number")
    return f"{number.country_code}{number.national_number}"


async def queue_message(
    services: Services, principal: Principal, session_id: str, data: OutboundMessage
) -> MessageAccepted:
    """Queue one message on the session's node (REST and NATS commands share this)."""
    recipient = normalize_recipient(data.to)
    record = await load_record(services, principal, session_id)
    if record.assignment is None:
        raise ProblemError(409, "not_running", f"session {session_id!r} is not running")
    message_id = "m_" + secrets.token_hex(10)
    request = SendMessage(
        session_id=session_id, message_id=message_id, to=recipient, content=to_content(data)
    )
    try:
        accepted = await services.agents.call(
            record.assignment.node_id, Op.MESSAGE_SEND, request, SendAccepted
        )
    except (AgentCallError, AgentUnavailable) as exc:
        raise exc.to_problem() from None
    return MessageAccepted(
        message_id=accepted.message_id, session_id=session_id, queue_depth=accepted.queue_depth
    )


class MessageController(Controller):
    path = "/v1/sessions/{session_id:str}/messages"
    tags = ["messages"]
    dependencies = {"principal": Provide(authenticate)}

    @post("/", status_code=202, summary="Queue a message (text, media, location, contact, ...)")
    async def send(
        self, session_id: str, data: OutboundMessage, services: Services, principal: Principal
    ) -> MessageAccepted:
        return await queue_message(services, principal, session_id, data)

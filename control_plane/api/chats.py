"""/v1/sessions/{id}/read and /presence: read marks and typing indicators (issue 15).

Not messages: they go to the session's node at once (no queue, no outbox) and answer
what was done. The REST endpoints and the NATS commands ``chat_read`` and
``chat_presence`` share the functions below.
"""

from __future__ import annotations

import msgspec
from litestar import Controller, post
from litestar.di import Provide

from control_plane.api.messages import MESSAGES, normalize_chat_id
from control_plane.api.sessions import call_agent, load_record, running
from control_plane.auth import Principal, authenticate
from control_plane.models import ChatReadView, PresenceBody, PresenceView, ReadChat
from control_plane.services import Services
from node_agent.protocol import ChatPresence, ChatRead, ChatReadDone, Empty, Op

_encode = msgspec.json.encode


async def mark_read(
    services: Services, principal: Principal, session_id: str, data: ReadChat
) -> ChatReadView:
    chat = normalize_chat_id(data.chat)
    record = await load_record(services, principal, session_id)
    assignment = running(record)
    done = await call_agent(
        services,
        assignment.node_id,
        Op.CHAT_READ,
        ChatRead(session_id=record.spec.key, chat=chat, message_ids=data.message_ids or []),
        ChatReadDone,
    )
    return ChatReadView(session_id=session_id, chat=done.chat, marked=done.marked)


async def show_presence(
    services: Services, principal: Principal, session_id: str, data: PresenceBody
) -> PresenceView:
    chat = normalize_chat_id(data.chat)
    record = await load_record(services, principal, session_id)
    assignment = running(record)
    await call_agent(
        services,
        assignment.node_id,
        Op.CHAT_PRESENCE,
        ChatPresence(session_id=record.spec.key, chat=chat, state=data.state),
        Empty,
    )
    return PresenceView(session_id=session_id, chat=chat, state=data.state)


class ChatController(Controller):
    path = "/v1/sessions/{session_id:str}"
    tags = ["chats"]
    dependencies = {"principal": Provide(authenticate)}

    @post(
        "/read",
        status_code=200,
        opt=MESSAGES,
        summary="Mark messages of a chat read (all unread ones without ids)",
    )
    async def read(
        self, session_id: str, data: ReadChat, services: Services, principal: Principal
    ) -> ChatReadView:
        return await mark_read(services, principal, session_id, data)

    @post(
        "/presence",
        status_code=200,
        opt=MESSAGES,
        summary="Show typing or recording in a chat, or stop (paused)",
    )
    async def presence(
        self, session_id: str, data: PresenceBody, services: Services, principal: Principal
    ) -> PresenceView:
        return await show_presence(services, principal, session_id, data)

"""/v1/sessions/{id}/read and /presence: read marks and typing indicators (issue 15).

Not messages: they go to the session's node at once (no queue, no outbox) and answer
what was done. The controller maps HTTP to the message service (control_plane/messages.py),
which the NATS commands ``chat_read`` and ``chat_presence`` call too; ``mark_read`` and
``show_presence`` are re-exported here for code written before the service existed.
"""

from __future__ import annotations

from litestar import Controller, post
from litestar.di import Provide

from control_plane import messages as message_service
from control_plane.api.messages import MESSAGES
from control_plane.auth import Principal, authenticate
from control_plane.messages import mark_read, show_presence
from control_plane.models import ChatReadView, PresenceBody, PresenceView, ReadChat
from control_plane.services import Services


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
        return await message_service.mark_read(services, principal, session_id, data)

    @post(
        "/presence",
        status_code=200,
        opt=MESSAGES,
        summary="Show typing or recording in a chat, or stop (paused)",
    )
    async def presence(
        self, session_id: str, data: PresenceBody, services: Services, principal: Principal
    ) -> PresenceView:
        return await message_service.show_presence(services, principal, session_id, data)


__all__ = ["ChatController", "mark_read", "show_presence"]

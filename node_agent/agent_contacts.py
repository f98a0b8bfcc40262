"""The agent's contacts, profile, privacy and calls operations (issue 16).

A mixin of :class:`~node_agent.agent.Agent` (its RPC routes name these ``op_*``): each
checks its request, then asks the connected session's engine; engine refusals become
``not_on_whatsapp`` / ``not_supported``. A rejected call is answered with the session's
text through the ordinary send path (``op_send``: outbox, queue, pacing).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TYPE_CHECKING, TypeVar

from contract.protocol import (
    PRIVACY_VALUES,
    Blocklist,
    BlockRequest,
    ContactDetails,
    ContactList,
    ContactRequest,
    ErrorCode,
    EventType,
    Privacy,
    PrivacyChange,
    ProfileUpdate,
    ProfileUpdated,
    SendAccepted,
    SendMessage,
    SessionRef,
    TextContent,
)
from node_agent.agent_input import normalize_chat_id
from node_agent.engines._base import CallOffered, NotOnWhatsApp, NotSupported
from node_agent.errors import AgentError
from node_agent.supervisor import SessionSupervisor

T = TypeVar("T")


class ContactsOps:
    if TYPE_CHECKING:
        _restoring: set[asyncio.Task[None]]

        def _connected(self, session_id: str) -> SessionSupervisor: ...

        async def op_send(self, request: SendMessage) -> SendAccepted: ...

    def _on_call_reject(self, supervisor: SessionSupervisor, call: CallOffered) -> None:
        task = asyncio.create_task(self._reject_call(supervisor, call), name="call-reject")
        self._restoring.add(task)
        task.add_done_callback(self._restoring.discard)

    async def _reject_call(self, supervisor: SessionSupervisor, call: CallOffered) -> None:
        """Decline the call, then answer the caller with the session's text through the
        ordinary send path (outbox, queue, pacing): the reply survives an agent crash,
        and a call offer seen twice answers once (the message id comes from the call)."""
        import hashlib

        error: str | None = None
        try:
            await supervisor.engine.reject_call(call.reject_to, call.call_id)
        except Exception as exc:
            error = f"reject failed: {exc}"
        reply_id: str | None = None
        text = supervisor.spec.calls.reply_text
        to = call.caller or call.caller_lid
        if text and to:
            digest = hashlib.sha256(f"{supervisor.key}:{call.call_id}".encode()).hexdigest()
            reply_id = "m_" + digest[:20]
            request = SendMessage(
                session_id=supervisor.key,
                message_id=reply_id,
                to=to,
                content=TextContent(text=text),
            )
            try:
                await self.op_send(request)
            except AgentError as exc:
                error = f"{error + '; ' if error else ''}reply not queued: {exc.message}"
                reply_id = None
        supervisor.events.emit(
            EventType.CALL_REJECTED,
            supervisor.tenant,
            supervisor.session_id,
            {
                "call_id": call.call_id,
                "from": call.caller,
                "from_lid": call.caller_lid,
                "video": call.video,
                "is_group": call.is_group,
                "reply_message_id": reply_id,
                "error": error,
            },
        )

    @staticmethod
    async def _engine_op(awaitable: Awaitable[T]) -> T:
        try:
            return await awaitable
        except NotOnWhatsApp as exc:
            raise AgentError(ErrorCode.NOT_ON_WHATSAPP, str(exc)) from None
        except NotSupported as exc:
            raise AgentError(ErrorCode.NOT_SUPPORTED, str(exc)) from None

    @staticmethod
    def _contact_chat(raw: str) -> str:
        chat = normalize_chat_id(raw)
        if "@" in chat and not chat.endswith("@lid"):
            raise AgentError(
                ErrorCode.INVALID_CHAT_ID, f"{raw!r} is not a contact: use a phone number or a LID"
            )
        return chat

    async def op_contacts_list(self, ref: SessionRef) -> ContactList:
        supervisor = self._connected(ref.session_id)
        return ContactList(contacts=await self._engine_op(supervisor.engine.contacts()))

    async def op_contact_info(self, request: ContactRequest) -> ContactDetails:
        chat = self._contact_chat(request.chat)
        supervisor = self._connected(request.session_id)
        return await self._engine_op(supervisor.engine.contact_info(chat))

    async def op_contact_block(self, request: BlockRequest) -> Blocklist:
        chat = self._contact_chat(request.chat)
        supervisor = self._connected(request.session_id)
        blocked = await self._engine_op(supervisor.engine.block(chat, request.block))
        return Blocklist(blocked=blocked)

    async def op_blocklist(self, ref: SessionRef) -> Blocklist:
        supervisor = self._connected(ref.session_id)
        return Blocklist(blocked=await self._engine_op(supervisor.engine.blocklist()))

    async def op_profile_set(self, request: ProfileUpdate) -> ProfileUpdated:
        from contract.profile import InvalidImage, profile_jpeg

        if request.name is not None and not 1 <= len(request.name) <= 25:
            raise AgentError(ErrorCode.INVALID_REQUEST, "a push name has 1 to 25 characters")
        if request.about is not None and len(request.about) > 139:
            raise AgentError(ErrorCode.INVALID_REQUEST, "an about text has at most 139 characters")
        picture = None
        if request.picture is not None and not request.remove_picture:
            try:
                picture = await asyncio.to_thread(profile_jpeg, request.picture)
            except InvalidImage as exc:
                raise AgentError(ErrorCode.INVALID_IMAGE, str(exc)) from None
        supervisor = self._connected(request.session_id)
        picture_id = await self._engine_op(
            supervisor.engine.set_profile(
                request.name, request.about, picture, request.remove_picture
            )
        )
        return ProfileUpdated(
            name=request.name,
            about=request.about,
            picture_id=picture_id,
            picture_removed=request.remove_picture,
        )

    async def op_privacy_get(self, ref: SessionRef) -> Privacy:
        supervisor = self._connected(ref.session_id)
        return await self._engine_op(supervisor.engine.privacy())

    async def op_privacy_set(self, request: PrivacyChange) -> Privacy:
        if not request.settings:
            raise AgentError(ErrorCode.INVALID_REQUEST, "no privacy setting to change")
        for name, value in request.settings.items():
            allowed = PRIVACY_VALUES.get(name)
            if allowed is None:
                raise AgentError(
                    ErrorCode.INVALID_REQUEST,
                    f"unknown privacy setting {name!r}; the settings are "
                    + ", ".join(sorted(PRIVACY_VALUES)),
                )
            if value not in allowed:
                raise AgentError(
                    ErrorCode.INVALID_PRIVACY_VALUE,
                    f"{name} cannot be {value!r}; it can be " + ", ".join(sorted(allowed)),
                )
        supervisor = self._connected(request.session_id)
        return await self._engine_op(supervisor.engine.set_privacy(request.settings))

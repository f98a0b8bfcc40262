"""The agent's group operations (issue 16).

A mixin of :class:`~node_agent.agent.Agent` (its RPC routes name these ``op_group*``),
with the checks of group requests (group ids, participants, invite links, settings): a
bad value never reaches the engine; an engine ``GroupError`` becomes its own code.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable
from typing import TYPE_CHECKING, TypeVar

from contract.chat_ids import ChatIdError, chat_kind, is_group, normalize_chat
from contract.protocol import (
    INVITE_PREFIX,
    Empty,
    ErrorCode,
    GroupCreate,
    GroupCreated,
    GroupInfo,
    GroupInvite,
    GroupInviteRequest,
    GroupJoined,
    GroupLinkRequest,
    GroupList,
    GroupParticipantsChange,
    GroupPicture,
    GroupPictureSet,
    GroupRef,
    GroupRequests,
    GroupRequestsChange,
    GroupsListRequest,
    GroupUpdate,
    ParticipantsChanged,
)
from node_agent.agent_input import normalize_chat_id
from node_agent.engines._base import GroupError
from node_agent.errors import AgentError
from node_agent.media import MediaError, MediaFetcher
from node_agent.supervisor import SessionSupervisor

T = TypeVar("T")

MAX_GROUP_SUBJECT = 100  # WhatsApp's limit on a group's subject
MAX_GROUP_DESCRIPTION = 2048
MAX_GROUP_PARTICIPANTS = 256  # per request
EPHEMERAL_TIMERS = (0, 86400, 7 * 86400, 90 * 86400)  # what WhatsApp offers
_INVITE_CODE = re.compile(r"^[A-Za-z0-9]{10,40}$")


def group_chat_id(raw: str) -> str:
    """A group chat id (``<digits>@g.us``), or AgentError(INVALID_CHAT_ID)."""
    try:
        chat = normalize_chat(raw)
    except ChatIdError:
        chat = ""
    if not is_group(chat):
        raise AgentError(ErrorCode.INVALID_CHAT_ID, f"{raw!r} is not a group id (<digits>@g.us)")
    return chat


def participant_ids(raw: list[str], *, allow_empty: bool = False) -> list[str]:
    """Participants as phones (E.164 digits) or LIDs, deduplicated in order."""
    if (not raw and not allow_empty) or len(raw) > MAX_GROUP_PARTICIPANTS:
        raise AgentError(
            ErrorCode.INVALID_REQUEST,
            f"name {0 if allow_empty else 1} to {MAX_GROUP_PARTICIPANTS} participants",
        )
    found: list[str] = []
    for item in raw:
        chat = normalize_chat_id(item)
        if chat_kind(chat) not in ("phone", "lid"):
            raise AgentError(ErrorCode.INVALID_NUMBER, f"{item!r} is not a phone number (or a LID)")
        found.append(chat)
    return list(dict.fromkeys(found))


def invite_link_of(raw: str) -> str:
    """An invite link (``https://chat.whatsapp.com/<code>`` or the bare code), or
    AgentError(INVALID_INVITE_LINK)."""
    code = raw.strip().removeprefix(INVITE_PREFIX).removeprefix("chat.whatsapp.com/").strip("/")
    if not _INVITE_CODE.match(code):
        raise AgentError(ErrorCode.INVALID_INVITE_LINK, f"{raw!r} is not a group invite link")
    return INVITE_PREFIX + code


def group_changes(request: GroupUpdate) -> dict[str, object]:
    changes: dict[str, object] = {}
    if request.subject is not None:
        subject = request.subject.strip()
        if not subject or len(subject) > MAX_GROUP_SUBJECT:
            raise AgentError(
                ErrorCode.INVALID_REQUEST, f"a subject has 1 to {MAX_GROUP_SUBJECT} characters"
            )
        changes["subject"] = subject
    if request.description is not None:
        if len(request.description) > MAX_GROUP_DESCRIPTION:
            raise AgentError(
                ErrorCode.INVALID_REQUEST,
                f"a description has at most {MAX_GROUP_DESCRIPTION} characters",
            )
        changes["description"] = request.description or None
    if request.ephemeral_s is not None:
        if request.ephemeral_s not in EPHEMERAL_TIMERS:
            raise AgentError(
                ErrorCode.INVALID_REQUEST,
                f"ephemeral_s is one of {', '.join(map(str, EPHEMERAL_TIMERS))}",
            )
        changes["ephemeral_s"] = request.ephemeral_s
    for name in ("announce", "locked", "approval"):
        value = getattr(request, name)
        if value is not None:
            changes[name] = value
    if not changes:
        raise AgentError(ErrorCode.INVALID_REQUEST, "nothing to change")
    return changes


class GroupsOps:
    if TYPE_CHECKING:
        media: MediaFetcher

        def _connected(self, session_id: str) -> SessionSupervisor: ...

    async def _group_op(self, what: Awaitable[T]) -> T:
        """An engine group call: GroupError -> its own code, anything else engine_error."""
        try:
            return await what
        except GroupError as exc:
            raise AgentError(ErrorCode(exc.code), exc.message) from None
        except AgentError:
            raise
        except Exception as exc:
            raise AgentError(ErrorCode.ENGINE_ERROR, str(exc)) from None

    async def op_groups_list(self, request: GroupsListRequest) -> GroupList:
        supervisor = self._connected(request.session_id)
        return GroupList(groups=await self._group_op(supervisor.engine.list_groups()))

    async def op_group_info(self, request: GroupRef) -> GroupInfo:
        group_id = group_chat_id(request.group_id)
        supervisor = self._connected(request.session_id)
        return await self._group_op(supervisor.engine.group_info(group_id))

    async def op_group_create(self, request: GroupCreate) -> GroupCreated:
        subject = request.subject.strip()
        if not subject or len(subject) > MAX_GROUP_SUBJECT:
            raise AgentError(
                ErrorCode.INVALID_REQUEST, f"a subject has 1 to {MAX_GROUP_SUBJECT} characters"
            )
        participants = participant_ids(request.participants, allow_empty=True)
        supervisor = self._connected(request.session_id)
        return await self._group_op(supervisor.engine.create_group(subject, participants))

    async def op_group_leave(self, request: GroupRef) -> Empty:
        group_id = group_chat_id(request.group_id)
        supervisor = self._connected(request.session_id)
        await self._group_op(supervisor.engine.leave_group(group_id))
        return Empty()

    async def op_group_participants(self, request: GroupParticipantsChange) -> ParticipantsChanged:
        group_id = group_chat_id(request.group_id)
        participants = participant_ids(request.participants)
        supervisor = self._connected(request.session_id)
        results = await self._group_op(
            supervisor.engine.update_participants(group_id, request.action, participants)
        )
        return ParticipantsChanged(group_id=group_id, action=request.action, results=results)

    async def op_group_invite(self, request: GroupInviteRequest) -> GroupInvite:
        group_id = group_chat_id(request.group_id)
        supervisor = self._connected(request.session_id)
        link = await self._group_op(supervisor.engine.invite_link(group_id, request.revoke))
        return GroupInvite(group_id=group_id, link=link)

    async def op_group_join(self, request: GroupLinkRequest) -> GroupJoined:
        link = invite_link_of(request.link)
        supervisor = self._connected(request.session_id)
        joined = await self._group_op(supervisor.engine.join_group(link))
        if joined.status == "joined":
            joined.group = await self._group_op(supervisor.engine.group_info(joined.group_id))
        return joined

    async def op_group_picture(self, request: GroupPicture) -> GroupPictureSet:
        """Fetch or decode the picture, make it the square JPEG WhatsApp shows, set it."""
        from node_agent.pictures import picture_jpeg

        group_id = group_chat_id(request.group_id)
        supervisor = self._connected(request.session_id)
        jpeg = None
        if request.media is not None:
            try:
                payload = await self.media.accept(request.media)
                if payload is None:
                    payload = await self.media.fetch(request.media)
                jpeg = await asyncio.to_thread(picture_jpeg, payload)
            except MediaError as exc:
                raise AgentError(exc.code, exc.message) from None
        picture = await self._group_op(supervisor.engine.set_group_picture(group_id, jpeg))
        return GroupPictureSet(group_id=group_id, picture_id=picture)

    async def op_group_requests(self, request: GroupRef) -> GroupRequests:
        group_id = group_chat_id(request.group_id)
        supervisor = self._connected(request.session_id)
        found = await self._group_op(supervisor.engine.join_requests(group_id))
        return GroupRequests(group_id=group_id, requests=found)

    async def op_group_requests_update(self, request: GroupRequestsChange) -> ParticipantsChanged:
        group_id = group_chat_id(request.group_id)
        participants = participant_ids(request.participants)
        supervisor = self._connected(request.session_id)
        results = await self._group_op(
            supervisor.engine.answer_requests(group_id, request.action, participants)
        )
        return ParticipantsChanged(group_id=group_id, action=request.action, results=results)

    async def op_group_link_info(self, request: GroupLinkRequest) -> GroupInfo:
        link = invite_link_of(request.link)
        supervisor = self._connected(request.session_id)
        return await self._group_op(supervisor.engine.link_info(link))

    async def op_group_update(self, request: GroupUpdate) -> GroupInfo:
        group_id = group_chat_id(request.group_id)
        changes = group_changes(request)
        supervisor = self._connected(request.session_id)
        await self._group_op(supervisor.engine.update_group(group_id, changes))
        return await self._group_op(supervisor.engine.group_info(group_id))

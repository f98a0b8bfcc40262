"""The neonize engine's groups (issue 16).

A mixin of :class:`~node_agent.engines.neonize.NeonizeSession`, like
:mod:`node_agent.engines.neonize.contacts`: every call goes through the session's
``_call`` (shared FFI lock, bounded wait) and only while the socket is online. The
decoders below (group info, participant results, group events, error codes) are pure
functions over neonize's protos, tested offline in tests/test_groups_neonize.py.
"""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING, Any, Literal

from contract.protocol import (
    GroupAction,
    GroupCreated,
    GroupInfo,
    GroupJoined,
    GroupMember,
    GroupRole,
    GroupSettings,
    JoinRequest,
    ParticipantResult,
    ParticipantStatus,
)
from node_agent.engines._base import (
    EngineError,
    GroupError,
    GroupEvent,
)
from node_agent.engines.neonize.protos import _parse_jid, jid_text, lid_of, phone_of

if TYPE_CHECKING:
    from node_agent.engines.neonize.generation import _Generation

log = logging.getLogger(__name__)


class GroupsMixin:
    if TYPE_CHECKING:
        phone: str | None
        _gen: _Generation | None
        _group_cache: dict[str, Any]

        def _online(self) -> _Generation: ...

        async def _call(self, awaitable: Any) -> Any: ...

        def _report(self, event: Any) -> None: ...

    def _own_ids(self, gen: _Generation) -> set[str]:
        """This account as groups may name it: its phone and its LID."""
        me = getattr(gen.client, "me", None)
        own: set[str] = {self.phone} if self.phone else set()
        if me is not None:
            for field in ("JID", "LID"):
                if me.HasField(field):
                    jid = getattr(me, field)
                    own |= {x for x in (phone_of(jid), lid_of(jid)) if x}
        return own

    async def _group_call(self, what: str, awaitable: Any, *, link: bool = False) -> Any:
        try:
            return await self._call(awaitable)
        except TimeoutError:
            raise EngineError(f"{what} timed out") from None
        except Exception as exc:
            code = group_error_code(str(exc), link=link)
            if code is not None:
                raise GroupError(code, f"{what}: {exc}") from None
            raise EngineError(f"{what} failed: {exc}") from None

    async def list_groups(self) -> list[GroupInfo]:
        gen = self._online()
        found = await self._group_call("list groups", gen.client.get_joined_groups())
        own = self._own_ids(gen)
        return [group_info_of(info, own) for info in found]

    async def group_info(self, group_id: str) -> GroupInfo:
        gen = self._online()
        jid = _parse_jid(group_id)
        info = await self._group_call("group info", gen.client.get_group_info(jid))
        self._group_cache[group_id] = info
        view = group_info_of(info, self._own_ids(gen))
        if is_admin_in(view, self._own_ids(gen)):
            with contextlib.suppress(EngineError, GroupError):
                view.invite_link = str(
                    await self._group_call("invite link", gen.client.get_group_invite_link(jid))
                )
        return view

    async def create_group(self, subject: str, participants: list[str]) -> GroupCreated:
        gen = self._online()
        jids = [_parse_jid(p) for p in participants]
        info = await self._group_call("create group", gen.client.create_group(subject, jids))
        results = participant_results(participants, list(info.Participants), "add")
        await self._send_invites(gen, info, participants, list(info.Participants))
        return GroupCreated(group=group_info_of(info, self._own_ids(gen)), results=results)

    async def leave_group(self, group_id: str) -> None:
        gen = self._online()
        await self._group_call("leave group", gen.client.leave_group(_parse_jid(group_id)))
        self._group_cache.pop(group_id, None)

    async def update_participants(
        self, group_id: str, action: GroupAction, participants: list[str]
    ) -> list[ParticipantResult]:
        from neonize.utils.enum import ParticipantChange

        gen = self._online()
        changed = await self._group_call(
            f"{action} participants",
            gen.client.update_group_participants(
                _parse_jid(group_id),
                [_parse_jid(p) for p in participants],
                ParticipantChange(action),
            ),
        )
        self._group_cache.pop(group_id, None)
        returned = list(changed)
        if action == "add":
            info = self._group_cache.get(group_id)
            if info is None:
                with contextlib.suppress(EngineError, GroupError):
                    info = await self._group_call(
                        "group info", gen.client.get_group_info(_parse_jid(group_id))
                    )
            if info is not None:
                await self._send_invites(gen, info, participants, returned)
        return participant_results(participants, returned, action)

    async def _send_invites(
        self, gen: _Generation, info: Any, asked: list[str], returned: list[Any]
    ) -> None:
        """Privacy forbids adding them, but WhatsApp offers an invite (403 with an add
        request code): send it, as the phone app does."""
        for participant in returned:
            if int(participant.Error) != 403 or not participant.AddRequest.Code:
                continue
            to = phone_of(participant.JID) or phone_of(participant.PhoneNumber)
            if to is None:
                continue
            message = build_group_invite(
                jid_text(info.JID),
                info.GroupName.Name,
                participant.AddRequest.Code,
                int(participant.AddRequest.Expiration),
            )
            try:
                await self._call(gen.client.send_message(_parse_jid(to), message))
            except Exception as exc:
                log.warning("group invite not sent", extra={"error": repr(exc)})

    async def invite_link(self, group_id: str, revoke: bool = False) -> str:
        gen = self._online()
        link = await self._group_call(
            "invite link", gen.client.get_group_invite_link(_parse_jid(group_id), revoke)
        )
        return str(link)

    async def join_group(self, link: str) -> GroupJoined:
        gen = self._online()
        code = invite_code(link)
        # the group first: a join that ends in a pending approval names no group
        info = await self._group_call(
            "invite link info", gen.client.get_group_info_from_link(code), link=True
        )
        group_id = jid_text(info.JID)
        try:
            jid = await self._call(gen.client.join_group_with_link(code))
        except TimeoutError:
            raise EngineError("join group timed out") from None
        except Exception as exc:
            if join_pending(str(exc)):
                return GroupJoined(group_id=group_id, status="requested")
            error = group_error_code(str(exc), link=True)
            if error is not None:
                raise GroupError(error, f"join group: {exc}") from None
            raise EngineError(f"join group failed: {exc}") from None
        return GroupJoined(group_id=jid_text(jid) or group_id, status="joined")

    async def set_group_picture(self, group_id: str, jpeg: bytes | None) -> str | None:
        gen = self._online()
        if jpeg is None:
            # neonize 0.5.2 hands whatsmeow bytes, never the nil that removes a picture
            raise GroupError("not_supported", "removing a group picture needs a newer neonize")
        picture = await self._group_call(
            "set group picture", gen.client.set_group_photo(_parse_jid(group_id), jpeg)
        )
        return str(picture) or None

    async def join_requests(self, group_id: str) -> list[JoinRequest]:
        gen = self._online()
        found = await self._group_call(
            "join requests", gen.client.get_group_request_participants(_parse_jid(group_id))
        )
        return [join_request_of(item) for item in found]

    async def answer_requests(
        self, group_id: str, action: Literal["approve", "reject"], participants: list[str]
    ) -> list[ParticipantResult]:
        self._online()
        # whatsmeow has UpdateGroupRequestParticipants, neonize 0.5.2 does not bind it
        raise GroupError(
            "not_supported", "approving or rejecting join requests needs a newer neonize"
        )

    async def link_info(self, link: str) -> GroupInfo:
        gen = self._online()
        info = await self._group_call(
            "invite link info", gen.client.get_group_info_from_link(invite_code(link)), link=True
        )
        return group_info_of(info, set())

    async def update_group(self, group_id: str, changes: dict[str, object]) -> None:
        from datetime import timedelta

        gen = self._online()
        jid = _parse_jid(group_id)
        client = gen.client
        for name, value in changes.items():
            if name == "subject":
                call = client.set_group_name(jid, str(value))
            elif name == "description":
                call = client.set_group_topic(jid, "", "", str(value or ""))
            elif name == "announce":
                call = client.set_group_announce(jid, bool(value))
            elif name == "locked":
                call = client.set_group_locked(jid, bool(value))
            elif name == "ephemeral_s":
                call = client.set_disappearing_timer(jid, timedelta(seconds=int(str(value))))
            else:
                raise EngineError(f"unknown group setting {name}")
            await self._group_call(f"set {name}", call)
        self._group_cache.pop(group_id, None)

    def _on_joined_group(self, event: Any) -> None:
        joined = joined_group_event(event, self._own_ids(self._gen) if self._gen else set())
        self._group_cache.pop(joined.group_id, None)
        self._report(joined)

    def _on_picture(self, event: Any) -> None:
        changed = group_picture_event(event)
        if changed is not None:
            self._group_cache.pop(changed.group_id, None)
            self._report(changed)

    def _on_group_info(self, event: Any) -> None:
        own = self._own_ids(self._gen) if self._gen else set()
        self._group_cache.pop(jid_text(event.JID), None)
        for changed in group_info_events(event, own):
            self._report(changed)


_DONE: dict[str, ParticipantStatus] = {
    "add": "added",
    "remove": "removed",
    "promote": "promoted",
    "demote": "demoted",
}


def member_of(participant: Any) -> GroupMember:
    """Our view of a whatsmeow GroupParticipant: never a LID in ``phone``."""
    jid = participant.JID
    phone = phone_of(jid) or phone_of(participant.PhoneNumber)
    lid = lid_of(jid) or lid_of(participant.LID)
    role: GroupRole = (
        "superadmin" if participant.IsSuperAdmin else "admin" if participant.IsAdmin else "member"
    )
    return GroupMember(id=phone_of(jid) or jid_text(jid), role=role, phone=phone, lid=lid)


def group_info_of(info: Any, own: set[str]) -> GroupInfo:
    """Our GroupInfo of whatsmeow's (``own``: this account's phone and LID)."""
    ephemeral = info.GroupEphemeral
    return GroupInfo(
        id=jid_text(info.JID),
        subject=info.GroupName.Name,
        description=info.GroupTopic.Topic or None,
        owner=phone_of(info.OwnerPN) or phone_of(info.OwnerJID) or jid_text(info.OwnerJID) or None,
        created_at=float(info.GroupCreated) or None,
        participants=[member_of(p) for p in info.Participants if not int(p.Error)],
        settings=GroupSettings(
            announce=bool(info.GroupAnnounce.IsAnnounce),
            locked=bool(info.GroupLocked.isLocked),
            ephemeral_s=int(ephemeral.DisappearingTimer) if ephemeral.IsEphemeral else 0,
        ),
    )


def is_admin_in(group: GroupInfo, own: set[str]) -> bool:
    return any(
        m.role != "member" and own & {m.id, m.phone or "", m.lid or ""} for m in group.participants
    )


def participant_results(
    asked: list[str], returned: list[Any], action: str
) -> list[ParticipantResult]:
    """One result per participant asked for, from whatsmeow's per-participant answer
    (``Error`` 0: done; 403: privacy — an invite is sent when WhatsApp offers one;
    404: not on WhatsApp (add) / not a participant; 408: left recently; 409: already in)."""
    by_id: dict[str, Any] = {}
    for participant in returned:
        for jid in (participant.JID, participant.PhoneNumber, participant.LID):
            key = phone_of(jid) or jid_text(jid)
            if key:
                by_id.setdefault(key, participant)
    results = []
    for wanted in asked:
        participant = by_id.get(wanted)
        if participant is None:
            results.append(ParticipantResult(participant=wanted, status="failed"))
            continue
        code = int(participant.Error)
        status: ParticipantStatus
        if code == 0:
            status = _DONE[action]
        elif code == 403:
            status = "invite_sent" if participant.AddRequest.Code else "privacy_forbids"
        elif code == 404:
            status = "not_on_whatsapp" if action == "add" else "not_a_participant"
        elif code == 408:
            status = "recently_left"
        elif code == 409:
            status = "already_participant"
        else:
            status = "failed"
        results.append(ParticipantResult(participant=wanted, status=status, error=code or None))
    return results


def group_error_code(
    text: str, *, link: bool = False
) -> Literal["group_not_found", "not_group_admin", "invalid_invite_link"] | None:
    """The GroupError code of a whatsmeow error text, None for other failures."""
    lowered = text.lower()
    if link and ("invite link" in lowered or "not valid" in lowered or "revoked" in lowered):
        return "invalid_invite_link"
    if any(
        mark in lowered
        for mark in ("not participating", "does not exist", "item-not-found", "status 404")
    ):
        return "group_not_found"
    if any(
        mark in lowered
        for mark in ("permission", "forbidden", "not-authorized", "status 403", "status 401")
    ):
        return "not_group_admin"
    if link and ("status 406" in lowered or "not-acceptable" in lowered):
        return "invalid_invite_link"
    return None


def join_pending(text: str) -> bool:
    """whatsmeow's error of a join by link that became a request (the group needs an
    admin's approval)."""
    lowered = text.lower()
    return "approval" in lowered or "pending" in lowered


def join_request_of(item: Any) -> JoinRequest:
    """Our JoinRequest of whatsmeow's GroupParticipantRequest."""
    jid = item.Participant
    return JoinRequest(
        participant=phone_of(jid) or jid_text(jid),
        phone=phone_of(jid),
        lid=lid_of(jid),
        requested_at=float(item.TimeAt) or None,
    )


def invite_code(link: str) -> str:
    """The code of an invite link (the link itself or its code)."""
    return link.strip().removeprefix("https://chat.whatsapp.com/").strip("/")


def build_group_invite(group_id: str, subject: str, code: str, expiration: int) -> Any:
    """The GroupInviteMessage WhatsApp offers to send when privacy forbids an add."""
    from neonize.proto.waE2E import WAWebProtobufsE2E_pb2 as e2e

    return e2e.Message(
        groupInviteMessage=e2e.GroupInviteMessage(
            groupJID=group_id,
            inviteCode=code,
            inviteExpiration=expiration,
            groupName=subject,
            caption=f"Invitation to join my WhatsApp group {subject}",
        )
    )


def _who(jid: Any, alt: Any = None) -> str | None:
    """A phone when known, else the JID text (a LID), else None."""
    return phone_of(jid) or phone_of(alt) or jid_text(jid) or None


def joined_group_event(event: Any, own: set[str]) -> GroupEvent:
    """``group.joined`` of whatsmeow's JoinedGroup (we were added, created or joined)."""
    info = group_info_of(event.GroupInfo, own)
    by = _who(event.Sender, event.SenderPN)
    reason = event.Reason or event.Type or None
    return GroupEvent(kind="joined", group_id=info.id, by=by, group=info, reason=reason)


def group_picture_event(event: Any) -> GroupEvent | None:
    """``group.updated`` of whatsmeow's Picture event when it is a group's (None for a
    person's picture)."""
    if event.JID.Server != "g.us":
        return None
    return GroupEvent(
        kind="updated",
        group_id=jid_text(event.JID),
        by=_who(event.Author),
        changes={"picture": "removed" if event.Remove else "set"},
    )


def group_info_events(event: Any, own: set[str]) -> list[GroupEvent]:
    """What whatsmeow's GroupInfo event says, as our group events: ``left`` when this
    account was removed (or the group deleted), ``participants`` per action, and one
    ``updated`` with every setting that changed."""
    group_id = jid_text(event.JID)
    by = _who(event.Sender)
    found: list[GroupEvent] = []

    def ids(jids: Any) -> list[str]:
        return [x for x in (_who(j) for j in jids) if x]

    left = ids(event.Leave)
    if own & set(left) or (event.HasField("Delete") and event.Delete.Deleted):
        reason = "deleted" if event.HasField("Delete") else "left" if by in own else "removed"
        found.append(GroupEvent(kind="left", group_id=group_id, by=by, reason=reason))
    joined = [x for x in ids(event.Join) if x not in own]
    if joined:
        action = "join" if event.JoinReason == "invite" or joined == [by] else "add"
        found.append(
            GroupEvent(
                kind="participants",
                group_id=group_id,
                by=by,
                action=action,
                participants=tuple(joined),
            )
        )
    others_left = [x for x in left if x not in own]
    if others_left:
        action = "leave" if others_left == [by] else "remove"
        found.append(
            GroupEvent(
                kind="participants",
                group_id=group_id,
                by=by,
                action=action,
                participants=tuple(others_left),
            )
        )
    for action, jids in (("promote", event.Promote), ("demote", event.Demote)):
        if len(jids):
            found.append(
                GroupEvent(
                    kind="participants",
                    group_id=group_id,
                    by=by,
                    action=action,
                    participants=tuple(ids(jids)),
                )
            )
    changes: dict[str, object] = {}
    if event.HasField("Name"):
        changes["subject"] = event.Name.Name
    if event.HasField("Topic"):
        changes["description"] = None if event.Topic.TopicDeleted else event.Topic.Topic
    if event.HasField("Announce"):
        changes["announce"] = bool(event.Announce.IsAnnounce)
    if event.HasField("Locked"):
        changes["locked"] = bool(event.Locked.isLocked)
    if event.HasField("Ephemeral"):
        eph = event.Ephemeral
        changes["ephemeral_s"] = int(eph.DisappearingTimer) if eph.IsEphemeral else 0
    if event.NewInviteLink:
        changes["invite_link"] = "revoked"
    if changes:
        found.append(GroupEvent(kind="updated", group_id=group_id, by=by, changes=changes))
    return found

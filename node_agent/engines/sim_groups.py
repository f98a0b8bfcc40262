"""The sim engine's groups (issue 16).

A mixin of :class:`~node_agent.engines.sim.SimSession` (like ``neonize/groups.py`` for
the neonize engine), with the group record of the simulated server (KV ``zf_sim``
``group.<id>``), its notifications and the server's rules for participant changes. The
test helpers (``create_group``, ``set_group_add_privacy``, ``vote``) stay in
:mod:`node_agent.engines.sim`.
"""

from __future__ import annotations

import contextlib
import hashlib
import secrets
import time
from typing import TYPE_CHECKING, Any, Literal

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from nats.js.errors import KeyNotFoundError

from contract.protocol import (
    INVITE_PREFIX,
    GroupAction,
    GroupCreated,
    GroupInfo,
    GroupJoined,
    GroupMember,
    GroupSettings,
    JoinRequest,
    ParticipantResult,
)
from node_agent.engines._base import (
    Emit,
    EngineError,
    GroupError,
    GroupEvent,
)
from node_agent.engines.sim_contacts import lid_of

if TYPE_CHECKING:
    from node_agent.engines.sim import SimEngine

_encode = msgspec.json.encode


class SimGroup(msgspec.Struct, kw_only=True):
    """A group on the simulated network: KV ``zf_sim`` ``group.<digits>``, shared by
    every agent; changed only by compare-and-set on its revision."""

    id: str
    subject: str = ""
    description: str | None = None
    owner: str | None = None
    created_at: float = 0.0
    roles: dict[str, str] = msgspec.field(default_factory=dict)  # phone -> role
    announce: bool = False
    locked: bool = False
    ephemeral_s: int = 0
    invite: str | None = None  # the current invite code (KV ``invite.<code>``)
    approval: bool = False  # joining by link needs an admin's approval
    requests: dict[str, float] = msgspec.field(default_factory=dict)  # phone -> asked at
    picture: str | None = None  # the picture's id; its bytes in zf_sim_media ``pic.<id>``

    @property
    def members(self) -> list[str]:
        return sorted(self.roles)

    def is_admin(self, phone: str | None) -> bool:
        return phone is not None and self.roles.get(phone) in ("admin", "superadmin")


class WireGroup(msgspec.Struct, kw_only=True):
    """A group notification from the simulated server to one account (``zf.sim.group.
    <phone>``): what became of a group, so sessions report it and drop cached metadata."""

    kind: Literal["joined", "left", "participants", "updated"]
    group_id: str
    by: str | None = None
    group: GroupInfo | None = None
    action: str | None = None
    participants: list[str] = msgspec.field(default_factory=list)
    changes: dict[str, Any] | None = None
    reason: str | None = None


def _decode_group(chat: str, data: bytes) -> SimGroup:
    """A group record; records of the first test helper were a plain list of phones."""
    raw = msgspec.json.decode(data)
    if isinstance(raw, list):
        return SimGroup(id=chat, roles={str(m): "member" for m in raw})
    return msgspec.convert(raw, SimGroup)


def _group_key(chat: str) -> str:
    user, _, server = chat.partition("@")
    return f"{'newsletter' if server == 'newsletter' else 'group'}.{user}"


def _new_invite_code() -> str:
    alphabet = "ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789"
    return "".join(secrets.choice(alphabet) for _ in range(22))


def _apply_one(
    group: SimGroup,
    action: GroupAction,
    phone: str | None,
    registered: dict[str, bool],
    privacy: dict[str, str],
) -> Any:
    """The simulated server's answer for one participant of a change (applied)."""
    if phone is None or (action == "add" and not registered.get(phone)):
        return "not_on_whatsapp"
    if action == "add":
        if phone in group.roles:
            return "already_participant"
        if privacy.get(phone) == "none":
            return "privacy_forbids"
        if privacy.get(phone) == "contacts":
            return "invite_sent"
        group.roles[phone] = "member"
        return "added"
    if phone not in group.roles:
        return "not_a_participant"
    if action == "remove":
        del group.roles[phone]
        return "removed"
    if action == "promote":
        if group.roles[phone] == "member":
            group.roles[phone] = "admin"
        return "promoted"
    if group.roles[phone] == "admin":
        group.roles[phone] = "member"
    return "demoted"


class SimGroupsMixin:
    if TYPE_CHECKING:
        engine: SimEngine
        phone: str | None
        emit: Emit
        _online: bool
        _group_cache: dict[str, SimGroup]

        @property
        def nc(self) -> NATS: ...

    def _me(self) -> str:
        if not self._online or self.phone is None or not self.engine.may_act():
            raise EngineError("not connected")
        return self.phone

    def _view(self, group: SimGroup, me: str | None) -> GroupInfo:
        return GroupInfo(
            id=group.id,
            subject=group.subject,
            description=group.description,
            owner=group.owner,
            created_at=group.created_at or None,
            participants=[
                GroupMember(
                    id=phone,
                    role=group.roles[phone],  # type: ignore[arg-type]
                    phone=phone,
                    lid=lid_of(phone),
                )
                for phone in group.members
            ],
            settings=GroupSettings(
                announce=group.announce,
                locked=group.locked,
                ephemeral_s=group.ephemeral_s,
                approval=group.approval,
            ),
            picture_id=group.picture,
            invite_link=INVITE_PREFIX + group.invite
            if group.invite and group.is_admin(me)
            else None,
        )

    async def _member_group(self, group_id: str) -> SimGroup:
        me = self._me()
        group = await self.engine.load_group(group_id)
        if group is None or me not in group.roles:
            raise GroupError("group_not_found", f"this account is not in group {group_id}")
        self._group_cache[group_id] = group
        return group

    async def list_groups(self) -> list[GroupInfo]:
        """One pass over the network's groups (whatsmeow: ``GetJoinedGroups``, one query)."""
        from zapfleet._kv import scan

        me = self._me()
        self.engine.metadata_queries += 1
        found = []
        for entry in await scan(self.engine.kv, "group.*"):
            if entry.value:
                group = _decode_group(entry.key.removeprefix("group.") + "@g.us", entry.value)
                if me in group.roles:
                    found.append(self._view(group, me))
        return sorted(found, key=lambda g: g.id)

    async def group_info(self, group_id: str) -> GroupInfo:
        me = self._me()
        return self._view(await self._member_group(group_id), me)

    async def create_group(self, subject: str, participants: list[str]) -> GroupCreated:
        me = self._me()
        digits = "120363" + f"{secrets.randbelow(10**12):012d}"
        chat = f"{digits}@g.us"
        group = SimGroup(
            id=chat, subject=subject, owner=me, created_at=time.time(), roles={me: "superadmin"}
        )
        await self.engine.kv.create(_group_key(chat), _encode(group))
        results: list[ParticipantResult] = []
        if participants:
            results = await self.update_participants(chat, "add", participants, notify=False)
        created = await self.engine.load_group(chat)
        assert created is not None
        self._group_cache[chat] = created
        view = self._view(created, me)
        await self._notify([me], kind="joined", group_id=chat, by=me, group=view, reason="created")
        others = [p for p in created.members if p != me]
        await self._notify(others, kind="joined", group_id=chat, by=me, group=view, reason="added")
        return GroupCreated(group=view, results=results)

    async def leave_group(self, group_id: str) -> None:
        me = self._me()

        def leave(group: SimGroup) -> SimGroup:
            if me not in group.roles:
                raise GroupError("group_not_found", f"this account is not in group {group_id}")
            del group.roles[me]
            if group.roles and not any(group.is_admin(p) for p in group.roles):
                group.roles[group.members[0]] = "admin"  # a group always keeps an admin
            return group

        _, after = await self.engine.change_group(group_id, leave)
        self._group_cache.pop(group_id, None)
        await self._notify([me], kind="left", group_id=group_id, by=me, reason="left")
        await self._notify(
            after.members,
            kind="participants",
            group_id=group_id,
            by=me,
            action="leave",
            participants=[me],
        )

    async def update_participants(
        self,
        group_id: str,
        action: GroupAction,
        participants: list[str],
        *,
        notify: bool = True,
    ) -> list[ParticipantResult]:
        me = self._me()
        wanted: list[tuple[str, str | None]] = []  # (as asked, phone)
        for asked in participants:
            phone = await self.engine.phone_of_lid(asked) if asked.endswith("@lid") else asked
            wanted.append((asked, phone))
        registered = {p: await self.engine.is_registered(p) for _, p in wanted if p}
        privacy = {p: await self.engine.privacy_of(p) for p in registered if registered[p]}
        results: list[ParticipantResult] = []

        def apply(group: SimGroup) -> SimGroup:
            results.clear()
            if me not in group.roles:
                raise GroupError("group_not_found", f"this account is not in group {group_id}")
            if not group.is_admin(me):
                raise GroupError(
                    "not_group_admin", f"only admins of {group_id} can {action} participants"
                )
            for asked, phone in wanted:
                results.append(
                    ParticipantResult(
                        participant=asked,
                        status=_apply_one(group, action, phone, registered, privacy),
                    )
                )
            return group

        before, after = await self.engine.change_group(group_id, apply)
        self._group_cache[group_id] = after
        done = {"add": "added", "remove": "removed", "promote": "promoted", "demote": "demoted"}
        changed = [
            phone
            for (asked, phone), result in zip(wanted, results, strict=True)
            if phone and result.status == done[action]
        ]
        invited = [
            phone
            for (asked, phone), result in zip(wanted, results, strict=True)
            if phone and result.status == "invite_sent"
        ]
        if invited:
            code = await self._ensure_invite(group_id)
            for phone in invited:
                await self._send_invite(phone, after, code)
        if not notify or not changed:
            return results
        view = self._view(after, None)
        if action == "add":
            await self._notify(
                changed, kind="joined", group_id=group_id, by=me, group=view, reason="added"
            )
            await self._notify(
                before.members,
                kind="participants",
                group_id=group_id,
                by=me,
                action="add",
                participants=changed,
            )
        elif action == "remove":
            await self._notify(changed, kind="left", group_id=group_id, by=me, reason="removed")
            await self._notify(
                after.members,
                kind="participants",
                group_id=group_id,
                by=me,
                action="remove",
                participants=changed,
            )
        else:
            await self._notify(
                after.members,
                kind="participants",
                group_id=group_id,
                by=me,
                action=action,
                participants=changed,
            )
        return results

    async def _ensure_invite(self, group_id: str) -> str:
        def ensure(group: SimGroup) -> SimGroup:
            if not group.invite:
                group.invite = _new_invite_code()
            return group

        _, after = await self.engine.change_group(group_id, ensure)
        assert after.invite is not None
        await self.engine.kv.put(f"invite.{after.invite}", group_id.encode())
        return after.invite

    async def _send_invite(self, phone: str, group: SimGroup, code: str) -> None:
        """The invite WhatsApp offers to send when privacy forbids adding someone."""
        from node_agent.engines.sim_wire import Wire

        me = self._me()
        wire = Wire(
            id="SIMI" + secrets.token_hex(8).upper(),
            sender=me,
            sender_lid=lid_of(me),
            type="group_invite",
            ts=time.time(),
            text=f"Invitation to join my WhatsApp group {group.subject}",
            content={"group_id": group.id, "link": INVITE_PREFIX + code, "subject": group.subject},
        )
        with contextlib.suppress(NoRespondersError, NatsTimeout):
            await self.nc.request(f"zf.sim.inbox.{phone}", _encode(wire), timeout=5)

    async def invite_link(self, group_id: str, revoke: bool = False) -> str:
        me = self._me()
        old: list[str] = []

        def rotate(group: SimGroup) -> SimGroup:
            if me not in group.roles:
                raise GroupError("group_not_found", f"this account is not in group {group_id}")
            if not group.is_admin(me):
                raise GroupError("not_group_admin", f"only admins of {group_id} see its link")
            if group.invite and revoke:
                old.append(group.invite)
            if revoke or not group.invite:
                group.invite = _new_invite_code()
            return group

        _, after = await self.engine.change_group(group_id, rotate)
        assert after.invite is not None
        await self.engine.kv.put(f"invite.{after.invite}", group_id.encode())
        for code in old:
            await self.engine.kv.delete(f"invite.{code}")
        if old:
            await self._notify(
                after.members,
                kind="updated",
                group_id=group_id,
                by=me,
                changes={"invite_link": "revoked"},
            )
        return INVITE_PREFIX + after.invite

    async def _group_of_link(self, link: str) -> SimGroup:
        code = link.removeprefix(INVITE_PREFIX)
        try:
            entry = await self.engine.kv.get(f"invite.{code}")
        except KeyNotFoundError:
            entry = None
        group = None
        if entry is not None and entry.value:
            group = await self.engine.load_group(entry.value.decode())
        if group is None or group.invite != code:
            raise GroupError("invalid_invite_link", "the invite link is unknown or was revoked")
        return group

    async def link_info(self, link: str) -> GroupInfo:
        self._me()
        return self._view(await self._group_of_link(link), None)

    async def join_group(self, link: str) -> GroupJoined:
        me = self._me()
        group = await self._group_of_link(link)
        outcome: list[str] = []

        def join(current: SimGroup) -> SimGroup:
            outcome.clear()
            if me in current.roles:
                outcome.append("member")
            elif current.approval:
                current.requests.setdefault(me, time.time())
                outcome.append("requested")
            else:
                current.roles[me] = "member"
                outcome.append("joined")
            return current

        _, after = await self.engine.change_group(group.id, join)
        self._group_cache[group.id] = after
        if outcome == ["requested"]:
            admins = [p for p in after.members if after.is_admin(p)]
            await self._notify(
                admins,
                kind="participants",
                group_id=group.id,
                by=me,
                action="request",
                participants=[me],
            )
            return GroupJoined(group_id=group.id, status="requested")
        if outcome == ["joined"]:
            await self._notify(
                [me],
                kind="joined",
                group_id=group.id,
                by=me,
                group=self._view(after, me),
                reason="invite",
            )
            others = [p for p in after.members if p != me]
            await self._notify(
                others,
                kind="participants",
                group_id=group.id,
                by=me,
                action="join",
                participants=[me],
            )
        return GroupJoined(group_id=group.id, status="joined")

    async def set_group_picture(self, group_id: str, jpeg: bytes | None) -> str | None:
        me = self._me()
        picture = hashlib.sha256(jpeg).hexdigest()[:16] if jpeg is not None else None
        if jpeg is not None:
            await self.engine.media.put(f"pic.{picture}", jpeg)

        def change(group: SimGroup) -> SimGroup:
            if me not in group.roles:
                raise GroupError("group_not_found", f"this account is not in group {group_id}")
            if group.locked and not group.is_admin(me):
                raise GroupError(
                    "not_group_admin", f"only admins of {group_id} can change its picture"
                )
            group.picture = picture
            return group

        _, after = await self.engine.change_group(group_id, change)
        self._group_cache[group_id] = after
        await self._notify(
            after.members,
            kind="updated",
            group_id=group_id,
            by=me,
            changes={"picture": "set" if picture else "removed"},
        )
        return picture

    async def join_requests(self, group_id: str) -> list[JoinRequest]:
        me = self._me()
        group = await self._member_group(group_id)
        if not group.is_admin(me):
            raise GroupError("not_group_admin", f"only admins of {group_id} see join requests")
        return [
            JoinRequest(participant=phone, phone=phone, lid=lid_of(phone), requested_at=at)
            for phone, at in sorted(group.requests.items(), key=lambda item: item[1])
        ]

    async def answer_requests(
        self, group_id: str, action: Literal["approve", "reject"], participants: list[str]
    ) -> list[ParticipantResult]:
        me = self._me()
        wanted = [
            (asked, await self.engine.phone_of_lid(asked) if asked.endswith("@lid") else asked)
            for asked in participants
        ]
        results: list[ParticipantResult] = []

        def answer(group: SimGroup) -> SimGroup:
            results.clear()
            if me not in group.roles:
                raise GroupError("group_not_found", f"this account is not in group {group_id}")
            if not group.is_admin(me):
                raise GroupError("not_group_admin", f"only admins of {group_id} answer requests")
            for asked, phone in wanted:
                if phone is None or phone not in group.requests:
                    results.append(ParticipantResult(participant=asked, status="not_requested"))
                    continue
                del group.requests[phone]
                if action == "approve":
                    group.roles[phone] = "member"
                results.append(
                    ParticipantResult(
                        participant=asked,
                        status="approved" if action == "approve" else "rejected",
                    )
                )
            return group

        before, after = await self.engine.change_group(group_id, answer)
        self._group_cache[group_id] = after
        done = [
            phone
            for (_, phone), result in zip(wanted, results, strict=True)
            if phone and result.status in ("approved", "rejected")
        ]
        if not done:
            return results
        if action == "approve":
            view = self._view(after, None)
            await self._notify(
                done, kind="joined", group_id=group_id, by=me, group=view, reason="approved"
            )
            await self._notify(
                before.members,
                kind="participants",
                group_id=group_id,
                by=me,
                action="add",
                participants=done,
            )
        else:
            admins = [p for p in after.members if after.is_admin(p)]
            await self._notify(
                admins,
                kind="participants",
                group_id=group_id,
                by=me,
                action="reject",
                participants=done,
            )
        return results

    async def update_group(self, group_id: str, changes: dict[str, object]) -> None:
        me = self._me()
        admin_only = {"announce", "locked", "approval"}

        def update(group: SimGroup) -> SimGroup:
            if me not in group.roles:
                raise GroupError("group_not_found", f"this account is not in group {group_id}")
            if not group.is_admin(me) and (group.locked or admin_only & set(changes)):
                raise GroupError(
                    "not_group_admin",
                    f"only admins of {group_id} can change "
                    + ", ".join(sorted(changes))
                    + (" (the group info is locked)" if group.locked else ""),
                )
            return msgspec.structs.replace(group, **changes)

        _, after = await self.engine.change_group(group_id, update)
        self._group_cache[group_id] = after
        await self._notify(
            after.members, kind="updated", group_id=group_id, by=me, changes=dict(changes)
        )

    async def _notify(self, phones: list[str], **fields: Any) -> None:
        data = _encode(WireGroup(**fields))
        for phone in phones:
            await self.nc.publish(f"zf.sim.group.{phone}", data)

    async def _on_group(self, msg: Msg) -> None:
        if not self.engine.may_act():
            return
        try:
            wire = msgspec.json.decode(msg.data, type=WireGroup)
        except msgspec.DecodeError:
            return
        self._group_cache.pop(wire.group_id, None)
        self.emit(
            GroupEvent(
                kind=wire.kind,
                group_id=wire.group_id,
                by=wire.by,
                group=wire.group,
                action=wire.action,
                participants=tuple(wire.participants),
                changes=wire.changes,
                reason=wire.reason,
            )
        )

"""The neonize engine's groups (issue 16), offline: whatsmeow's GroupInfo, JoinedGroup and
GroupInfo-event protos are constructed and decoded into our structs and events; the
requests the session hands to neonize 0.5.2 (create_group, update_group_participants,
leave_group, get_group_invite_link, join_group_with_link, set_group_*) are checked, each
made under the shared FFI lock, through a stand-in for the Go client (no socket)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from neonize.proto import Neonize_pb2 as nz
from neonize.utils.enum import ParticipantChange

from contract.protocol import GroupMember, SessionSpec
from node_agent.engines._base import GroupError, GroupEvent
from node_agent.engines.neonize import NeonizeConfig, NeonizeEngine, NeonizeSession
from node_agent.engines.neonize.generation import _Generation
from node_agent.engines.neonize.groups import (
    build_group_invite,
    group_error_code,
    group_info_events,
    group_info_of,
    invite_code,
    joined_group_event,
    participant_results,
)
from node_agent.engines.neonize.protos import describe_message

GROUP = "120363012345678901@g.us"
ANN, BOB, CID = "15550001111", "15550002222", "15550003333"
BOB_LID = "99887766554433"


def _jid(user: str, server: str = "s.whatsapp.net") -> Any:
    return nz.JID(User=user, Server=server, RawAgent=0, Device=0, Integrator=0, IsEmpty=False)


def _participant(
    jid: Any, *, admin: bool = False, superadmin: bool = False, error: int = 0, **extra: Any
) -> Any:
    return nz.GroupParticipant(
        JID=jid, IsAdmin=admin or superadmin, IsSuperAdmin=superadmin, Error=error, **extra
    )


def _info() -> Any:
    return nz.GroupInfo(
        JID=_jid("120363012345678901", "g.us"),
        OwnerJID=_jid("11112222333344", "lid"),
        OwnerPN=_jid(ANN),
        GroupName=nz.GroupName(Name="Team"),
        GroupTopic=nz.GroupTopic(Topic="about us", TopicID="T1"),
        GroupLocked=nz.GroupLocked(isLocked=True),
        GroupAnnounce=nz.GroupAnnounce(IsAnnounce=False),
        GroupEphemeral=nz.GroupEphemeral(IsEphemeral=True, DisappearingTimer=604800),
        GroupCreated=1_760_000_000,
        Participants=[
            _participant(_jid(ANN), superadmin=True),
            # a LID-addressed participant whose phone is known
            _participant(_jid(BOB_LID, "lid"), admin=True, PhoneNumber=_jid(BOB)),
            _participant(_jid(CID)),
        ],
    )


def test_group_info_decodes_subject_owner_roles_and_settings() -> None:
    info = group_info_of(_info(), {ANN})
    assert (info.id, info.subject, info.description) == (GROUP, "Team", "about us")
    assert info.owner == ANN  # the phone, never the owner's LID
    assert info.created_at == 1_760_000_000.0
    assert info.participants == [
        GroupMember(id=ANN, role="superadmin", phone=ANN, lid=None),
        GroupMember(id=f"{BOB_LID}@lid", role="admin", phone=BOB, lid=f"{BOB_LID}@lid"),
        GroupMember(id=CID, role="member", phone=CID, lid=None),
    ]
    assert (info.settings.announce, info.settings.locked, info.settings.ephemeral_s) == (
        False,
        True,
        604800,
    )
    assert info.invite_link is None


def test_per_participant_results_from_whatsmeows_error_codes() -> None:
    asked = [ANN, BOB, CID, "15550004444", "15550005555", "15550006666", "15550007777"]
    returned = [
        _participant(_jid(ANN)),
        _participant(_jid(BOB), error=403),
        _participant(
            _jid(CID), error=403, AddRequest=nz.GroupParticipantAddRequest(Code="c", Expiration=9)
        ),
        _participant(_jid("15550004444"), error=404),
        _participant(_jid("15550005555"), error=409),
        _participant(_jid("15550006666"), error=408),
    ]
    results = participant_results(asked, returned, "add")
    assert [(r.participant, r.status, r.error) for r in results] == [
        (ANN, "added", None),
        (BOB, "privacy_forbids", 403),
        (CID, "invite_sent", 403),
        ("15550004444", "not_on_whatsapp", 404),
        ("15550005555", "already_participant", 409),
        ("15550006666", "recently_left", 408),
        ("15550007777", "failed", None),  # not in WhatsApp's answer
    ]
    removed = participant_results(
        [ANN, BOB], [_participant(_jid(ANN)), _participant(_jid(BOB), error=404)], "remove"
    )
    assert [r.status for r in removed] == ["removed", "not_a_participant"]
    # a participant WhatsApp answers by LID is matched by its phone number
    lid = _participant(_jid(BOB_LID, "lid"), PhoneNumber=_jid(BOB))
    assert [r.status for r in participant_results([BOB], [lid], "promote")] == ["promoted"]


def test_joined_group_is_group_joined_with_the_group() -> None:
    event = nz.JoinedGroup(
        Reason="",
        Type="new",
        GroupInfo=_info(),
        Sender=_jid("11112222333344", "lid"),
        SenderPN=_jid(ANN),
    )
    joined = joined_group_event(event, {CID})
    assert (joined.kind, joined.group_id, joined.by, joined.reason) == (
        "joined",
        GROUP,
        ANN,
        "new",
    )
    assert joined.group is not None and joined.group.subject == "Team"


def test_a_group_info_event_becomes_participants_left_and_updated_events() -> None:
    event = nz.GroupInfoEvent(
        JID=_jid("120363012345678901", "g.us"),
        Sender=_jid(ANN),
        Timestamp=1_760_000_000,
        Join=[_jid(BOB)],
        Promote=[_jid(BOB)],
        Demote=[_jid(CID)],
        Name=nz.GroupName(Name="Renamed"),
        Topic=nz.GroupTopic(Topic="", TopicDeleted=True),
        Announce=nz.GroupAnnounce(IsAnnounce=True),
        Ephemeral=nz.GroupEphemeral(IsEphemeral=False),
        NewInviteLink="https://chat.whatsapp.com/new",
    )
    events = group_info_events(event, {CID})
    assert events == [
        GroupEvent(kind="participants", group_id=GROUP, by=ANN, action="add", participants=(BOB,)),
        GroupEvent(
            kind="participants", group_id=GROUP, by=ANN, action="promote", participants=(BOB,)
        ),
        GroupEvent(
            kind="participants", group_id=GROUP, by=ANN, action="demote", participants=(CID,)
        ),
        GroupEvent(
            kind="updated",
            group_id=GROUP,
            by=ANN,
            changes={
                "subject": "Renamed",
                "description": None,
                "announce": True,
                "ephemeral_s": 0,
                "invite_link": "revoked",
            },
        ),
    ]
    # this account removed by an admin: group.left; someone leaving: action leave
    removed = nz.GroupInfoEvent(
        JID=_jid("120363012345678901", "g.us"), Sender=_jid(ANN), Leave=[_jid(CID)]
    )
    assert group_info_events(removed, {CID}) == [
        GroupEvent(kind="left", group_id=GROUP, by=ANN, reason="removed")
    ]
    left = nz.GroupInfoEvent(
        JID=_jid("120363012345678901", "g.us"), Sender=_jid(BOB), Leave=[_jid(BOB)]
    )
    assert group_info_events(left, {CID}) == [
        GroupEvent(kind="participants", group_id=GROUP, by=BOB, action="leave", participants=(BOB,))
    ]
    joined_by_link = nz.GroupInfoEvent(
        JID=_jid("120363012345678901", "g.us"),
        Sender=_jid(BOB),
        Join=[_jid(BOB)],
        JoinReason="invite",
    )
    [join] = group_info_events(joined_by_link, {CID})
    assert (join.action, join.participants) == ("join", (BOB,))


def test_the_invite_sent_when_privacy_forbids_an_add() -> None:
    message = build_group_invite(GROUP, "Team", "AbCd", 1_760_000_000)
    invite = message.groupInviteMessage
    assert (invite.groupJID, invite.inviteCode, invite.inviteExpiration, invite.groupName) == (
        GROUP,
        "AbCd",
        1_760_000_000,
        "Team",
    )
    assert invite.caption == "Invitation to join my WhatsApp group Team"
    # and what the receiver's session makes of it
    assert describe_message(message) == (
        "group_invite",
        "Invitation to join my WhatsApp group Team",
        {
            "group_id": GROUP,
            "subject": "Team",
            "link": "https://chat.whatsapp.com/AbCd",
            "expires_at": 1_760_000_000.0,
        },
    )


def test_whatsmeow_errors_become_group_error_codes() -> None:
    assert group_error_code("you're not participating in that group") == "group_not_found"
    assert group_error_code("info query returned status 404: item-not-found") == ("group_not_found")
    assert group_error_code("info query returned status 403: forbidden") == "not_group_admin"
    assert (
        group_error_code("you don't have the permission to get the group's invite link")
        == "not_group_admin"
    )
    assert group_error_code("that group invite link has been revoked", link=True) == (
        "invalid_invite_link"
    )
    assert group_error_code("websocket not connected") is None
    assert invite_code("https://chat.whatsapp.com/AbCdEf123") == "AbCdEf123"


# -- requests through a stand-in for the Go client -----------------------------------------


class StandInClient:
    def __init__(self, engine: NeonizeEngine) -> None:
        self.engine = engine
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self.me = nz.Device(JID=_jid(ANN))
        self.error: str | None = None
        self.join_error: str | None = None

    def _record(self, name: str, *args: Any) -> None:
        assert self.engine.lock._readers > 0 and not self.engine.lock._writer  # shared lock
        self.calls.append((name, args))
        if self.error is not None:
            raise RuntimeError(self.error)

    async def create_group(self, name: str, participants: list[Any]) -> Any:
        self._record("create_group", name, participants)
        await asyncio.sleep(0)
        info = _info()
        del info.Participants[:]
        info.Participants.extend(
            [
                _participant(_jid(ANN), superadmin=True),
                _participant(
                    _jid(BOB),
                    error=403,
                    AddRequest=nz.GroupParticipantAddRequest(Code="AddCode", Expiration=77),
                ),
            ]
        )
        return info

    async def update_group_participants(self, jid: Any, changes: list[Any], action: Any) -> Any:
        self._record("update_group_participants", jid, changes, action)
        return [_participant(_jid(CID)), _participant(_jid(BOB), error=404)]

    async def get_group_info(self, jid: Any) -> Any:
        self._record("get_group_info", jid)
        return _info()

    async def get_group_invite_link(self, jid: Any, revoke: bool = False) -> str:
        self._record("get_group_invite_link", jid, revoke)
        return "https://chat.whatsapp.com/Link" + ("New" if revoke else "Old")

    async def leave_group(self, jid: Any) -> None:
        self._record("leave_group", jid)

    async def join_group_with_link(self, code: str) -> Any:
        self._record("join_group_with_link", code)
        if self.join_error is not None:
            raise RuntimeError(self.join_error)
        return _jid("120363012345678901", "g.us")

    async def get_group_info_from_link(self, code: str) -> Any:
        self._record("get_group_info_from_link", code)
        return _info()

    async def get_group_request_participants(self, jid: Any) -> list[Any]:
        self._record("get_group_request_participants", jid)
        return [
            nz.GroupParticipantRequest(Participant=_jid(CID), TimeAt=1_760_000_100),
            nz.GroupParticipantRequest(Participant=_jid(BOB_LID, "lid"), TimeAt=0),
        ]

    async def set_group_name(self, jid: Any, name: str) -> None:
        self._record("set_group_name", jid, name)

    async def set_group_photo(self, jid: Any, data: bytes) -> str:
        self._record("set_group_photo", jid, data)
        return "1760000000"

    async def set_group_locked(self, jid: Any, locked: bool) -> None:
        self._record("set_group_locked", jid, locked)

    async def send_message(self, to: Any, message: Any) -> Any:
        self._record("send_message", to, message)
        return nz.SendResponse(ID="3EB0INV")


def online() -> tuple[NeonizeSession, StandInClient]:
    engine = NeonizeEngine(NeonizeConfig())
    session = NeonizeSession(
        engine, SessionSpec(session_id="s", tenant="t", engine="neonize"), lambda _: None
    )
    client = StandInClient(engine)
    gen = _Generation("u1", client)
    gen.registered, gen.link_up, gen.phase = True, True, "online"
    session._gen = gen
    session.phone = ANN
    return session, client


async def test_create_sends_the_invite_whatsapp_offers_and_reports_it() -> None:
    session, client = online()
    created = await session.create_group("Team", [BOB])
    name, (subject, jids) = client.calls[0]
    assert (name, subject, [(j.User, j.Server) for j in jids]) == (
        "create_group",
        "Team",
        [(BOB, "s.whatsapp.net")],
    )
    assert [(r.participant, r.status) for r in created.results] == [(BOB, "invite_sent")]
    sent = [args for name, args in client.calls if name == "send_message"]
    assert len(sent) == 1
    to, message = sent[0]
    assert (to.User, message.groupInviteMessage.inviteCode) == (BOB, "AddCode")
    assert message.groupInviteMessage.inviteExpiration == 77
    assert created.group.id == GROUP
    assert [m.id for m in created.group.participants] == [ANN]  # BOB was not added
    assert not session.engine.lock.busy


async def test_participants_leave_links_and_settings_reach_neonize_as_asked() -> None:
    session, client = online()
    results = await session.update_participants(GROUP, "remove", [CID, BOB])
    name, (jid, changes, action) = client.calls[0]
    assert name == "update_group_participants"
    assert (jid.User, jid.Server) == ("120363012345678901", "g.us")
    assert [c.User for c in changes] == [CID, BOB]
    assert action is ParticipantChange.REMOVE
    assert [r.status for r in results] == ["removed", "not_a_participant"]

    client.calls.clear()
    info = await session.group_info(GROUP)
    assert info.invite_link == "https://chat.whatsapp.com/LinkOld"  # ANN is an admin
    assert await session.invite_link(GROUP, revoke=True) == "https://chat.whatsapp.com/LinkNew"
    joined = await session.join_group("https://chat.whatsapp.com/AbCdEfGhIj")
    assert (joined.group_id, joined.status) == (GROUP, "joined")
    await session.leave_group(GROUP)
    await session.update_group(GROUP, {"subject": "New", "locked": False})
    assert [(n, a[1:]) for n, a in client.calls] == [
        ("get_group_info", ()),
        ("get_group_invite_link", (False,)),
        ("get_group_invite_link", (True,)),
        ("get_group_info_from_link", ()),
        ("join_group_with_link", ()),
        ("leave_group", ()),
        ("set_group_name", ("New",)),
        ("set_group_locked", (False,)),
    ]
    assert client.calls[4][1][0] == "AbCdEfGhIj"  # the code, not the whole link


async def test_join_requests_on_neonize_list_and_a_pending_join() -> None:
    session, client = online()
    requests = await session.join_requests(GROUP)
    assert [(r.participant, r.phone, r.lid, r.requested_at) for r in requests] == [
        (CID, CID, None, 1_760_000_100.0),
        (f"{BOB_LID}@lid", None, f"{BOB_LID}@lid", None),
    ]
    client.join_error = "group join request is pending approval"
    joined = await session.join_group("AbCdEfGhIjKl")
    assert (joined.group_id, joined.status, joined.group) == (GROUP, "requested", None)
    with pytest.raises(GroupError) as unsupported:
        await session.answer_requests(GROUP, "approve", [CID])
    assert unsupported.value.code == "not_supported"


async def test_whatsapp_refusals_are_group_errors_and_a_mention_all_uses_the_cache() -> None:
    session, client = online()
    client.error = "you're not participating in that group"
    with pytest.raises(GroupError) as refused:
        await session.group_info(GROUP)
    assert refused.value.code == "group_not_found"
    client.error = "that group invite link has been revoked"
    with pytest.raises(GroupError) as revoked:
        await session.join_group("AbCdEfGhIjKl")
    assert revoked.value.code == "invalid_invite_link"
    client.error = None
    assert session._gen is not None
    for _ in range(100):  # mention everyone: one metadata query, then the cache
        await session._participants(session._gen, _jid("120363012345678901", "g.us"))
    assert [n for n, _ in client.calls].count("get_group_info") == 2  # 1 failed + 1
    session._on_group_info(nz.GroupInfoEvent(JID=_jid("120363012345678901", "g.us")))
    await session._participants(session._gen, _jid("120363012345678901", "g.us"))
    assert [n for n, _ in client.calls].count("get_group_info") == 3  # dropped by the event


async def test_a_group_picture_reaches_neonize_as_a_square_jpeg() -> None:
    import io

    from PIL import Image

    from node_agent.media import MediaError, MediaPayload
    from node_agent.pictures import picture_jpeg

    def png(width: int, height: int) -> MediaPayload:
        out = io.BytesIO()
        Image.new("RGB", (width, height), (0, 90, 200)).save(out, format="PNG")
        return MediaPayload(data=out.getvalue(), mimetype="image/png")

    for (width, height), side in (((2000, 1000), 640), ((300, 500), 300)):
        jpeg = picture_jpeg(png(width, height))
        with Image.open(io.BytesIO(jpeg)) as image:
            assert (image.format, image.size) == ("JPEG", (side, side))
    with pytest.raises(MediaError) as not_image:
        picture_jpeg(MediaPayload(data=b"GIF89a but not really", mimetype="image/gif"))
    assert not_image.value.code == "undecodable_media"

    session, client = online()
    jpeg = picture_jpeg(png(64, 64))
    assert await session.set_group_picture(GROUP, jpeg) == "1760000000"
    name, (jid, data) = client.calls[-1]
    assert (name, jid.User, data) == ("set_group_photo", "120363012345678901", jpeg)
    with pytest.raises(GroupError) as unsupported:
        await session.set_group_picture(GROUP, None)
    assert unsupported.value.code == "not_supported"


def test_a_group_picture_event_is_group_updated_and_a_persons_is_not() -> None:
    from node_agent.engines.neonize.groups import group_picture_event

    removed = nz.Picture(JID=_jid("120363012345678901", "g.us"), Author=_jid(ANN), Remove=True)
    assert group_picture_event(removed) == GroupEvent(
        kind="updated", group_id=GROUP, by=ANN, changes={"picture": "removed"}
    )
    changed = nz.Picture(JID=_jid("120363012345678901", "g.us"), Author=_jid(BOB))
    assert group_picture_event(changed) == GroupEvent(
        kind="updated", group_id=GROUP, by=BOB, changes={"picture": "set"}
    )
    assert group_picture_event(nz.Picture(JID=_jid(CID), Author=_jid(CID))) is None

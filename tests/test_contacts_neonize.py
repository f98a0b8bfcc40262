"""The neonize engine's contacts, profile, blocking and calls (issue 16), offline: the
whatsmeow events (CallOffer, CallOfferNotice, BlocklistEvent) and lookups (contacts, user
info, privacy) are constructed as protos and decoded; the requests the session makes go
to a stand-in client that records them (and that they run under the shared FFI lock).
No socket, no Go call."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from neonize.proto import Neonize_pb2 as nz
from neonize.utils.enum import BlocklistAction, PrivacySetting, PrivacySettingType

from contract.protocol import PRIVACY_VALUES, Contact, Privacy, SessionSpec
from node_agent.engines._base import (
    BlockChanged,
    CallOffered,
    EngineError,
    NotOnWhatsApp,
    NotSupported,
)
from node_agent.engines.neonize import NeonizeConfig, NeonizeEngine, NeonizeSession
from node_agent.engines.neonize.contacts import (
    block_changes_of,
    blocklist_of,
    call_offer_notice_of,
    call_offer_of,
    contact_details_of,
    contact_of,
    privacy_args,
    privacy_of,
)
from node_agent.engines.neonize.generation import _Generation

PHONE = nz.JID(User="15550001111", Server="s.whatsapp.net")
LID = nz.JID(User="123456789012345", Server="lid")
GROUP = nz.JID(User="120363000000000042", Server="g.us")


def _meta(sender: Any, creator: Any, alt: Any = None, call_id: str = "CALL1") -> Any:
    meta = nz.BasicCallMeta(callCreator=creator, callID=call_id, timestamp=1_760_000_000)
    getattr(meta, "from").CopyFrom(sender)
    if alt is not None:
        meta.callCreatorAlt.CopyFrom(alt)
    return meta


def _node(tag: str, *children: Any, attrs: list[Any] | None = None) -> Any:
    return nz.Node(Tag=tag, Nodes=list(children), Attrs=attrs or [])


# -- decoders -------------------------------------------------------------------------------


def test_a_voice_call_from_a_phone() -> None:
    offer = nz.CallOffer(
        basicCallMeta=_meta(PHONE, PHONE),
        data=_node("call", _node("offer", _node("audio"), _node("audio"))),
    )
    offered = call_offer_of(offer)
    assert offered == CallOffered(
        call_id="CALL1",
        caller="15550001111",
        caller_lid=None,
        video=False,
        is_group=False,
        timestamp=1_760_000_000.0,
        reject_to="15550001111@s.whatsapp.net",
        group=None,
    )


def test_a_video_call_from_a_lid_names_the_phone_from_the_alt_and_rejects_the_lid() -> None:
    offer = nz.CallOffer(
        basicCallMeta=_meta(LID, LID, alt=PHONE, call_id="CALL2"),
        data=_node("call", _node("offer", _node("audio"), _node("video"))),
    )
    offered = call_offer_of(offer)
    assert offered is not None
    assert offered.caller == "15550001111"  # never the LID's digits
    assert offered.caller_lid == "123456789012345@lid"
    assert offered.video is True
    assert offered.reject_to == "123456789012345@lid"  # as delivered (whatsmeow's rule)


def test_a_lid_only_caller_has_no_phone() -> None:
    offered = call_offer_of(nz.CallOffer(basicCallMeta=_meta(LID, LID), data=_node("call")))
    assert offered is not None
    assert (offered.caller, offered.caller_lid) == (None, "123456789012345@lid")


def test_a_group_call_names_its_group() -> None:
    group_attr = nz.NodeAttrs(name="group-jid", jid=GROUP)
    offer = nz.CallOffer(
        basicCallMeta=_meta(PHONE, PHONE),
        data=_node("call", _node("offer", _node("video"), attrs=[group_attr])),
    )
    offered = call_offer_of(offer)
    assert offered is not None
    assert (offered.is_group, offered.group, offered.video) == (
        True,
        "120363000000000042@g.us",
        True,
    )
    notice = nz.CallOfferNotice(
        basicCallMeta=_meta(PHONE, PHONE, call_id="CALL3"), media="video", type="group"
    )
    announced = call_offer_notice_of(notice)
    assert announced is not None
    assert (announced.call_id, announced.is_group, announced.video) == ("CALL3", True, True)
    assert announced.group is None  # the notice did not say which group
    audio = nz.CallOfferNotice(basicCallMeta=_meta(PHONE, PHONE, call_id="C4"), media="audio")
    assert call_offer_notice_of(audio) is not None
    assert call_offer_notice_of(audio).video is False  # type: ignore[union-attr]


def test_an_offer_without_a_call_id_is_ignored() -> None:
    assert call_offer_of(nz.CallOffer(basicCallMeta=_meta(PHONE, PHONE, call_id=""))) is None


def test_block_lists_and_their_changes() -> None:
    blocklist = nz.Blocklist(DHash="h", JIDs=[PHONE, LID, nz.JID(User="", Server="")])
    assert blocklist_of(blocklist) == ["123456789012345@lid", "15550001111"]
    event = nz.BlocklistEvent(
        Action=2,
        Changes=[
            nz.BlocklistChange(JID=PHONE, BlockAction=1),
            nz.BlocklistChange(JID=LID, BlockAction=2),
        ],
    )
    assert block_changes_of(event) == [
        BlockChanged(phone="15550001111", lid=None, blocked=True),
        BlockChanged(phone=None, lid="123456789012345@lid", blocked=False),
    ]


def test_contacts_of_the_store() -> None:
    info = nz.ContactInfo(Found=True, FullName="Bob Work", PushName="bob", BusinessName="")
    assert contact_of(nz.Contact(JID=PHONE, Info=info)) == Contact(
        phone="15550001111", lid=None, name="Bob Work", push_name="bob", business_name=None
    )
    lid_only = contact_of(nz.Contact(JID=LID, Info=nz.ContactInfo(FirstName="Al")))
    assert lid_only == Contact(phone=None, lid="123456789012345@lid", name="Al")
    assert contact_of(nz.Contact(JID=GROUP, Info=info)) is None


def test_contact_details_name_business_about_and_picture() -> None:
    user = nz.UserInfo(Status="Open 9-5", PictureID="777")
    user.VerifiedName.Details.verifiedName = "Bob's Bikes"
    stored = nz.ContactInfo(Found=True, FullName="Bob", PushName="bob")
    picture = nz.ProfilePictureInfo(URL="https://pps.whatsapp.net/v/x.jpg", ID="777")
    details = contact_details_of(user, stored, picture, phone="15550001111", lid=None)
    assert (details.phone, details.name, details.push_name) == ("15550001111", "Bob", "bob")
    assert (details.business, details.business_name) == (True, "Bob's Bikes")
    assert details.about == "Open 9-5"
    assert (details.picture_id, details.picture_url) == ("777", "https://pps.whatsapp.net/v/x.jpg")
    plain = contact_details_of(nz.UserInfo(), None, None, phone=None, lid="1@lid")
    assert (plain.business, plain.about, plain.picture_url, plain.name) == (
        False,
        None,
        None,
        None,
    )


def test_privacy_settings_both_ways() -> None:
    settings = nz.PrivacySettings(
        GroupAdd=3, LastSeen=7, Status=2, Profile=4, ReadReceipts=2, CallAdd=2, Online=5
    )
    assert privacy_of(settings) == Privacy(
        read_receipts="all",
        last_seen="none",
        online="match_last_seen",
        picture="contact_blacklist",
        about="all",
        groups_add="contacts",
    )
    assert privacy_args("last_seen", "contact_blacklist") == (
        PrivacySettingType.LAST_SEEN,
        PrivacySetting.CONTACTS_BLACKLIST,
    )
    assert privacy_args("picture", "none") == (PrivacySettingType.PROFILE, PrivacySetting.NONE)
    # every value the API accepts maps to one of neonize's
    for name, values in PRIVACY_VALUES.items():
        for value in values:
            kind, setting = privacy_args(name, value)
            assert isinstance(kind, PrivacySettingType) and isinstance(setting, PrivacySetting)


# -- requests, through a stand-in client --------------------------------------------------------


class StandInContacts:
    def __init__(self, client: StandInClient) -> None:
        self.client = client

    async def get_all_contacts(self) -> list[Any]:
        self.client.note("get_all_contacts")
        return [nz.Contact(JID=PHONE, Info=nz.ContactInfo(FullName="Bob"))]

    async def get_contact(self, jid: Any) -> Any:
        self.client.note("get_contact", jid.User)
        return nz.ContactInfo(Found=True, FullName="Bob", PushName="bob")


class StandInClient:
    def __init__(self, engine: NeonizeEngine, on_whatsapp: bool = True) -> None:
        self.engine = engine
        self.on_whatsapp = on_whatsapp
        self.calls: list[tuple[Any, ...]] = []
        self.shared: list[bool] = []
        self.contact = StandInContacts(self)
        self.privacy = nz.PrivacySettings(
            GroupAdd=2, LastSeen=3, Status=3, Profile=3, ReadReceipts=2, Online=2
        )

    def note(self, *call: Any) -> None:
        lock = self.engine.lock
        self.shared.append(lock._readers > 0 and not lock._writer)
        self.calls.append(call)

    async def reject_call(self, jid: Any, call_id: str) -> None:
        self.note("reject_call", jid.User, jid.Server, call_id)

    async def update_blocklist(self, jid: Any, action: BlocklistAction) -> Any:
        self.note("update_blocklist", jid.User, jid.Server, action)
        return nz.Blocklist(JIDs=[jid] if action is BlocklistAction.BLOCK else [])

    async def get_blocklist(self) -> Any:
        self.note("get_blocklist")
        return nz.Blocklist(JIDs=[PHONE])

    async def set_profile_name(self, name: str) -> None:
        self.note("set_profile_name", name)

    async def set_status_message(self, text: str) -> None:
        self.note("set_status_message", text)

    async def set_profile_photo(self, data: bytes) -> str:
        self.note("set_profile_photo", len(data))
        return "PIC9"

    async def get_privacy_settings(self) -> Any:
        self.note("get_privacy_settings")
        return self.privacy

    async def set_privacy_setting(self, name: PrivacySettingType, value: PrivacySetting) -> None:
        self.note("set_privacy_setting", name, value)
        if name is PrivacySettingType.LAST_SEEN and value is PrivacySetting.NONE:
            self.privacy.LastSeen = 7

    async def is_on_whatsapp(self, *numbers: str) -> list[Any]:
        self.note("is_on_whatsapp", *numbers)
        return [nz.IsOnWhatsAppResponse(Query=numbers[0], IsIn=self.on_whatsapp)]

    async def get_user_info(self, *jids: Any) -> list[Any]:
        self.note("get_user_info", *(j.User for j in jids))
        return [nz.GetUserInfoSingleReturnFunction(JID=jids[0], UserInfo=nz.UserInfo(Status="hi"))]

    async def get_profile_picture(self, jid: Any) -> Any:
        self.note("get_profile_picture", jid.User)
        raise RuntimeError("GetProfilePictureError: hidden by privacy")

    async def get_lid_from_pn(self, jid: Any) -> Any:
        self.note("get_lid_from_pn", jid.User)
        return LID

    async def get_pn_from_lid(self, jid: Any) -> Any:
        self.note("get_pn_from_lid", jid.User)
        return PHONE


def online_session(on_whatsapp: bool = True) -> tuple[NeonizeSession, StandInClient, list[Any]]:
    engine = NeonizeEngine(NeonizeConfig())
    emitted: list[Any] = []
    session = NeonizeSession(
        engine, SessionSpec(session_id="s", tenant="t", engine="neonize"), emitted.append
    )
    client = StandInClient(engine, on_whatsapp)
    gen = _Generation("u1", client)
    gen.registered, gen.link_up, gen.phase = True, True, "online"
    session._gen = gen
    return session, client, emitted


async def test_calls_are_reported_and_rejected_by_the_jid_they_came_from() -> None:
    session, client, emitted = online_session()
    offer = nz.CallOffer(basicCallMeta=_meta(LID, LID, alt=PHONE, call_id="C9"))
    session._on_call_offer(offer)
    [offered] = emitted
    assert isinstance(offered, CallOffered) and offered.caller == "15550001111"
    await session.reject_call(offered.reject_to, offered.call_id)
    assert client.calls == [("reject_call", "123456789012345", "lid", "C9")]
    assert client.shared == [True]  # under the shared FFI lock
    session._on_blocklist(nz.BlocklistEvent(Changes=[nz.BlocklistChange(JID=PHONE, BlockAction=1)]))
    assert emitted[-1] == BlockChanged(phone="15550001111", lid=None, blocked=True)


async def test_block_unblock_and_the_block_list() -> None:
    session, client, emitted = online_session()
    assert await session.block("15550001111", True) == ["15550001111"]
    assert await session.block("123456789012345@lid", False) == []
    assert await session.blocklist() == ["15550001111"]
    assert client.calls == [
        ("update_blocklist", "15550001111", "s.whatsapp.net", BlocklistAction.BLOCK),
        ("update_blocklist", "123456789012345", "lid", BlocklistAction.UNBLOCK),
        ("get_blocklist",),
    ]
    assert emitted == [
        BlockChanged(phone="15550001111", lid=None, blocked=True),
        BlockChanged(phone=None, lid="123456789012345@lid", blocked=False),
    ]
    assert all(client.shared)


async def test_own_profile_and_privacy_requests() -> None:
    session, client, _ = online_session()
    assert await session.set_profile("Ann", "Busy", b"\xff\xd8jpeg", False) == "PIC9"
    with pytest.raises(NotSupported, match=r"neonize 0\.5\.2"):
        await session.set_profile(None, None, None, True)
    assert client.calls == [
        ("set_profile_name", "Ann"),
        ("set_status_message", "Busy"),
        ("set_profile_photo", 6),
    ]
    client.calls.clear()
    privacy = await session.set_privacy({"last_seen": "none"})
    assert privacy.last_seen == "none" and privacy.picture == "contacts"
    assert client.calls == [
        ("set_privacy_setting", PrivacySettingType.LAST_SEEN, PrivacySetting.NONE),
        ("get_privacy_settings",),
    ]
    assert all(client.shared)


async def test_contacts_and_contact_info() -> None:
    session, client, _ = online_session()
    assert await session.contacts() == [Contact(phone="15550001111", name="Bob")]
    details = await session.contact_info("15550001111")
    assert (details.phone, details.lid, details.name, details.push_name, details.about) == (
        "15550001111",
        "123456789012345@lid",
        "Bob",
        "bob",
        "hi",
    )
    assert details.picture_url is None  # hidden by privacy: no picture, no error
    by_lid = await session.contact_info("123456789012345@lid")
    assert (by_lid.phone, by_lid.lid) == ("15550001111", "123456789012345@lid")
    assert ("is_on_whatsapp", "+15550001111") in client.calls
    assert ("get_pn_from_lid", "123456789012345") in client.calls
    assert all(client.shared)
    nobody, _, _ = online_session(on_whatsapp=False)
    with pytest.raises(NotOnWhatsApp):
        await nobody.contact_info("15550009999")


async def test_nothing_reaches_whatsmeow_while_offline() -> None:
    session, client, _ = online_session()
    assert session._gen is not None
    session._gen.link_up = False
    for attempt in (
        session.block("15550001111", True),
        session.privacy(),
        session.contacts(),
        session.reject_call("15550001111@s.whatsapp.net", "C1"),
    ):
        with pytest.raises(EngineError, match="not connected"):
            await attempt
    assert client.calls == []
    await asyncio.sleep(0)

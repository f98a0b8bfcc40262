"""The neonize engine's contacts, profile, blocking and calls (issue 16).

A mixin of :class:`~node_agent.engines.neonize.NeonizeSession` (kept apart so the
engine's core stays readable): every call goes through the session's ``_call`` (shared
FFI lock, bounded wait) and only while the socket is online (``_online``: whatsmeow's
stores panic before connect and after stop, ../shared/NEONIZE.md). The decoders below
(call offers, block lists, contacts, privacy) are pure functions over neonize's protos,
tested offline in tests/test_contacts_neonize.py.

neonize 0.5.2 calls: ``reject_call``, ``update_blocklist``, ``get_blocklist``,
``set_profile_name``, ``set_status_message``, ``set_profile_photo`` (no removal: see
:meth:`ContactsMixin.set_profile`),
``get_privacy_settings``, ``set_privacy_setting``, ``contact.get_all_contacts``,
``contact.get_contact``, ``get_user_info``, ``get_profile_picture``,
``get_lid_from_pn`` / ``get_pn_from_lid``; events ``CallOfferEv``,
``CallOfferNoticeEv`` (group calls) and ``BlocklistEv`` (changes made on the phone).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from contract.protocol import Contact, ContactDetails, Privacy
from node_agent.engines._base import (
    BlockChanged,
    CallOffered,
    EngineError,
    NotOnWhatsApp,
    NotSupported,
)
from node_agent.engines.neonize.protos import _parse_jid, jid_text, lid_of, phone_of

log = logging.getLogger(__name__)

# our privacy names -> neonize's PrivacySettingType values and PrivacySettings fields
PRIVACY_TYPES: dict[str, tuple[str, str]] = {
    "read_receipts": ("readreceipts", "ReadReceipts"),
    "last_seen": ("last", "LastSeen"),
    "online": ("online", "Online"),
    "picture": ("profile", "Profile"),
    "about": ("status", "Status"),
    "groups_add": ("groupadd", "GroupAdd"),
}
# our values -> neonize's PrivacySetting values (the wire strings of whatsmeow)
PRIVACY_SETTINGS: dict[str, str] = {
    "all": "all",
    "contacts": "contacts",
    "contact_blacklist": "contacts_blacklist",
    "none": "none",
    "match_last_seen": "match_last_seen",
}
# PrivacySettings proto enum numbers -> our values
_PRIVACY_NUMBERS: dict[int, str | None] = {
    1: None,  # UNDEFINED
    2: "all",
    3: "contacts",
    4: "contact_blacklist",
    5: "match_last_seen",
    6: "known",
    7: "none",
}


class ContactsMixin:
    if TYPE_CHECKING:
        _gen: Any

        def _online(self) -> Any: ...

        async def _call(self, awaitable: Any) -> Any: ...

        def _report(self, event: Any) -> None: ...

    # -- calls ---------------------------------------------------------------------------

    def _on_call_offer(self, event: Any) -> None:
        offered = call_offer_of(event)
        if offered is not None:
            self._report(offered)

    def _on_call_offer_notice(self, event: Any) -> None:
        offered = call_offer_notice_of(event)
        if offered is not None:
            self._report(offered)

    async def reject_call(self, caller: str, call_id: str) -> None:
        gen = self._online()
        await self._ffi("reject call", gen.client.reject_call(_parse_jid(caller), call_id))

    async def _ffi(self, what: str, awaitable: Any) -> Any:
        try:
            return await self._call(awaitable)
        except TimeoutError:
            raise EngineError(f"{what} timed out") from None
        except EngineError:
            raise
        except Exception as exc:
            raise EngineError(f"{what} failed: {exc}") from None

    # -- blocking ------------------------------------------------------------------------

    def _on_blocklist(self, event: Any) -> None:
        for change in block_changes_of(event):
            self._report(change)

    async def block(self, chat: str, block: bool) -> list[str]:
        from neonize.utils.enum import BlocklistAction

        gen = self._online()
        jid = _parse_jid(chat)
        action = BlocklistAction.BLOCK if block else BlocklistAction.UNBLOCK
        result = await self._ffi("block list update", gen.client.update_blocklist(jid, action))
        self._report(BlockChanged(phone=phone_of(jid), lid=lid_of(jid), blocked=block))
        return blocklist_of(result)

    async def blocklist(self) -> list[str]:
        gen = self._online()
        return blocklist_of(await self._ffi("block list", gen.client.get_blocklist()))

    # -- own profile ---------------------------------------------------------------------

    async def set_profile(
        self, name: str | None, about: str | None, picture: bytes | None, remove_picture: bool
    ) -> str | None:
        gen = self._online()
        client = gen.client
        if name is not None:
            await self._ffi("push name", client.set_profile_name(name))
        if about is not None:
            await self._ffi("about text", client.set_status_message(about))
        if remove_picture:
            # whatsmeow removes a picture when given nil, but neonize 0.5.2's
            # SetProfilePhoto always hands it a (possibly empty, never nil) byte slice:
            # the removal cannot be expressed, so it is refused rather than guessed at
            raise NotSupported(
                "removing the profile picture is not possible with neonize 0.5.2; "
                "set another picture instead"
            )
        if picture is not None:
            return str(await self._ffi("profile picture", client.set_profile_photo(picture)))
        return None

    async def privacy(self) -> Privacy:
        gen = self._online()
        return privacy_of(await self._ffi("privacy settings", gen.client.get_privacy_settings()))

    async def set_privacy(self, settings: dict[str, str]) -> Privacy:
        gen = self._online()
        for name, value in settings.items():
            kind, setting = privacy_args(name, value)
            await self._ffi(f"privacy {name}", gen.client.set_privacy_setting(kind, setting))
        return await self.privacy()

    # -- contacts ------------------------------------------------------------------------

    async def contacts(self) -> list[Contact]:
        gen = self._online()
        found = await self._ffi("contact list", gen.client.contact.get_all_contacts())
        return [c for c in (contact_of(item) for item in found) if c is not None]

    async def contact_info(self, chat: str) -> ContactDetails:
        gen = self._online()
        client = gen.client
        jid = _parse_jid(chat)
        phone_jid = jid
        if jid.Server == "lid":
            phone_jid = await self._ffi("phone of LID", client.get_pn_from_lid(jid))
        elif not chat.endswith("@lid"):
            found = await self._ffi("number lookup", client.is_on_whatsapp("+" + chat))
            if not any(item.IsIn for item in found):
                raise NotOnWhatsApp(f"{chat} is not on WhatsApp")
        infos = await self._ffi("user info", client.get_user_info(jid))
        if not infos:
            raise NotOnWhatsApp(f"{chat} is not on WhatsApp")
        stored = None
        try:
            stored = await self._call(client.contact.get_contact(jid))
        except Exception as exc:  # not in the store: no saved name
            log.info("contact not in the store", extra={"error": repr(exc)})
        picture = None
        try:
            picture = await self._call(client.get_profile_picture(jid))
        except Exception as exc:  # none, or hidden by the contact's privacy
            log.info("no profile picture", extra={"error": repr(exc)})
        lid = None
        if jid.Server == "lid":
            lid = f"{jid.User}@lid"
        else:
            try:
                lid_jid = await self._call(client.get_lid_from_pn(jid))
                lid = f"{lid_jid.User}@lid" if lid_jid.User else None
            except Exception:
                lid = None
        return contact_details_of(
            infos[0].UserInfo, stored, picture, phone=phone_of(phone_jid), lid=lid
        )


# -- decoders (pure, tested offline) -------------------------------------------------------


def _walk(node: Any) -> Any:
    """Every node of a binary XML tree (neonize's ``Node`` proto), depth first."""
    yield node
    for child in node.Nodes:
        yield from _walk(child)


def _caller(meta: Any) -> tuple[str | None, str | None]:
    """(phone, LID) of a call's creator: never a LID as the phone."""
    jids = [meta.callCreator, meta.callCreatorAlt, getattr(meta, "from")]
    phone = next((p for p in (phone_of(j) for j in jids) if p), None)
    lid = next((x for x in (lid_of(j) for j in jids) if x), None)
    return phone, lid


def _offer(meta: Any, data: Any, *, video: bool, group: str | None) -> CallOffered | None:
    if not meta.callID:
        return None
    phone, lid = _caller(meta)
    sender = getattr(meta, "from")
    return CallOffered(
        call_id=str(meta.callID),
        caller=phone,
        caller_lid=lid,
        video=video,
        is_group=group is not None,
        group=group if group and group.endswith("@g.us") else None,
        timestamp=float(meta.timestamp) if meta.timestamp else time.time(),
        reject_to=jid_text(sender) or jid_text(meta.callCreator),
    )


def call_offer_of(event: Any) -> CallOffered | None:
    """The :class:`CallOffered` of a whatsmeow ``CallOffer``: video when the offer
    carries a ``video`` node, a group call when it names a ``group-jid``."""
    video, group = False, None
    if event.HasField("data"):
        for node in _walk(event.data):
            if node.Tag == "video":
                video = True
            for attr in node.Attrs:
                if attr.name == "group-jid":
                    group = jid_text(attr.jid) if attr.HasField("jid") else attr.text
    return _offer(event.basicCallMeta, event.data, video=video, group=group)


def call_offer_notice_of(event: Any) -> CallOffered | None:
    """A ``CallOfferNotice`` (how WhatsApp announces group calls): ``media`` says audio
    or video, ``type`` "group"."""
    group = None
    if event.HasField("data"):
        for node in _walk(event.data):
            for attr in node.Attrs:
                if attr.name == "group-jid":
                    group = jid_text(attr.jid) if attr.HasField("jid") else attr.text
    if group is None and event.type == "group":
        group = ""
    return _offer(event.basicCallMeta, event.data, video=event.media == "video", group=group)


def blocklist_of(blocklist: Any) -> list[str]:
    """Phones of a ``Blocklist`` proto; a LID where the phone is not known."""
    return sorted({phone_of(j) or jid_text(j) for j in blocklist.JIDs if j.User})


def block_changes_of(event: Any) -> list[BlockChanged]:
    """The changes of a ``BlocklistEvent`` (BlockAction 1 = block, 2 = unblock)."""
    return [
        BlockChanged(
            phone=phone_of(change.JID), lid=lid_of(change.JID), blocked=change.BlockAction == 1
        )
        for change in event.Changes
        if change.JID.User
    ]


def contact_of(item: Any) -> Contact | None:
    """A ``Contact`` proto of the store: phone or LID, saved name, push name, business."""
    jid, info = item.JID, item.Info
    if not jid.User or jid.Server not in ("s.whatsapp.net", "lid"):
        return None  # groups, newsletters, broadcast lists
    return Contact(
        phone=phone_of(jid),
        lid=lid_of(jid),
        name=info.FullName or info.FirstName or None,
        push_name=info.PushName or None,
        business_name=info.BusinessName or None,
    )


def contact_details_of(
    user: Any, stored: Any, picture: Any, *, phone: str | None, lid: str | None
) -> ContactDetails:
    """What ``get_user_info`` (about, verified business name), the contact store (names)
    and ``get_profile_picture`` say of one contact."""
    business_name = None
    if user.HasField("VerifiedName") and user.VerifiedName.HasField("Details"):
        business_name = user.VerifiedName.Details.verifiedName or None
    business = user.HasField("VerifiedName") or bool(stored and stored.BusinessName)
    return ContactDetails(
        phone=phone,
        lid=lid,
        name=(stored.FullName or stored.FirstName or None) if stored is not None else None,
        push_name=(stored.PushName or None) if stored is not None else None,
        business=business,
        business_name=business_name or ((stored.BusinessName or None) if stored else None),
        about=user.Status or None,
        picture_id=(picture.ID or None) if picture is not None else user.PictureID or None,
        picture_url=(picture.URL or None) if picture is not None else None,
    )


def privacy_of(settings: Any) -> Privacy:
    """Our names and values of a ``PrivacySettings`` proto."""
    values = {
        ours: _PRIVACY_NUMBERS.get(int(getattr(settings, field)))
        for ours, (_, field) in PRIVACY_TYPES.items()
    }
    return Privacy(**values)


def privacy_args(name: str, value: str) -> tuple[Any, Any]:
    """neonize's (PrivacySettingType, PrivacySetting) of one of our settings."""
    from neonize.utils.enum import PrivacySetting, PrivacySettingType

    return PrivacySettingType(PRIVACY_TYPES[name][0]), PrivacySetting(PRIVACY_SETTINGS[value])

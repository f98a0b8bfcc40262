"""Contacts, own profile, privacy, blocking and call settings (issue 16): the service
functions behind the REST endpoints (control_plane/api/contacts.py) and the NATS commands
(control_plane/commands.py). Each loads the caller's session (404 for another tenant's),
checks the input (problem+json), then asks the session's node (node_agent/agent.py) —
except the call settings, which are stored in the session's spec like the media settings
and pushed to the running session.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from typing import Annotated, Literal

import msgspec

from contract.profile import MAX_PICTURE_BYTES, InvalidImage, profile_jpeg
from contract.protocol import (
    Blocklist,
    BlockRequest,
    CallSettings,
    ConfigureSession,
    Contact,
    ContactDetails,
    ContactList,
    ContactRequest,
    Op,
    Privacy,
    PrivacyChange,
    ProfileUpdate,
    ProfileUpdated,
    SessionRecord,
    SessionRef,
)
from control_plane.auth import Principal
from control_plane.numbers import normalize_chat_id
from control_plane.problems import ProblemError
from control_plane.services import Services
from control_plane.sessions import (
    call_agent,
    configure_running,
    load_record,
    running,
    update_record,
)

# -- bodies and views (OpenAPI) --------------------------------------------------------------

ReplyText = Annotated[str, msgspec.Meta(min_length=1, max_length=1000)]
PushName = Annotated[str, msgspec.Meta(min_length=1, max_length=25)]
About = Annotated[str, msgspec.Meta(max_length=139)]
# a base64 picture of at most MAX_PICTURE_BYTES (checked again once decoded)
PictureBase64 = Annotated[
    str, msgspec.Meta(min_length=1, max_length=MAX_PICTURE_BYTES * 4 // 3 + 4)
]
PICTURE_BODY_LIMIT = MAX_PICTURE_BYTES * 4 // 3 + 64 * 1024


class CallSettingsBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """What the session does with incoming calls (docs/api.md, "Calls")."""

    reject: bool = False
    reply_text: ReplyText | None = None


class CallSettingsView(msgspec.Struct, kw_only=True):
    session_id: str
    reject: bool
    reply_text: str | None


class ContactsView(msgspec.Struct, kw_only=True):
    session_id: str
    contacts: list[Contact]


class ContactView(ContactDetails, kw_only=True):
    session_id: str


class PictureView(msgspec.Struct, kw_only=True):
    session_id: str
    chat: str
    picture_id: str | None
    picture_url: str | None


class BlocklistView(msgspec.Struct, kw_only=True):
    session_id: str
    blocked: list[str]


class ProfileBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Change the push name and/or the about text; a field left out stays as it is."""

    name: PushName | None = None
    about: About | None = None


class PictureBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A profile picture: any image (JPEG, PNG, WebP, ...) as base64; it is cropped to a
    square and scaled to at most 640x640 JPEG."""

    base64: PictureBase64


class ProfileView(msgspec.Struct, kw_only=True):
    session_id: str
    name: str | None = None
    about: str | None = None
    picture_id: str | None = None
    picture_removed: bool = False


class PrivacyBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Privacy settings to change (a field left out stays as it is); each takes only the
    values WhatsApp accepts for it."""

    read_receipts: Literal["all", "none"] | None = None
    last_seen: Literal["all", "contacts", "contact_blacklist", "none"] | None = None
    online: Literal["all", "match_last_seen"] | None = None
    picture: Literal["all", "contacts", "contact_blacklist", "none"] | None = None
    about: Literal["all", "contacts", "contact_blacklist", "none"] | None = None
    groups_add: Literal["all", "contacts", "contact_blacklist"] | None = None


class PrivacyView(Privacy, kw_only=True):
    session_id: str


# -- calls -----------------------------------------------------------------------------------


def call_settings_view(record: SessionRecord) -> CallSettingsView:
    calls = record.spec.calls
    return CallSettingsView(
        session_id=record.spec.session_id, reject=calls.reject, reply_text=calls.reply_text
    )


async def get_call_settings(
    services: Services, principal: Principal, session_id: str
) -> CallSettingsView:
    return call_settings_view(await load_record(services, principal, session_id))


async def put_call_settings(
    services: Services, principal: Principal, session_id: str, data: CallSettingsBody
) -> CallSettingsView:
    """Store the setting in the session's spec (it follows the session to any node) and
    apply it to the running session now."""
    loaded = await load_record(services, principal, session_id)
    settings = CallSettings(reject=data.reject, reply_text=data.reply_text)

    def change(current: SessionRecord) -> None:
        current.spec.calls = settings

    record = await update_record(services, loaded, change)
    await configure_running(
        services, record, ConfigureSession(session_id=record.spec.key, calls=settings)
    )
    return call_settings_view(record)


# -- contacts and blocking ----------------------------------------------------------------


def contact_chat(raw: str) -> str:
    """A phone (E.164 digits) or a LID; 422 for anything else (groups are no contacts)."""
    chat = normalize_chat_id(raw)
    if "@" in chat and not chat.endswith("@lid"):
        raise ProblemError(
            422, "invalid_chat_id", f"{raw!r} is not a contact: use a phone number or a LID"
        )
    return chat


async def list_contacts(services: Services, principal: Principal, session_id: str) -> ContactsView:
    record = await load_record(services, principal, session_id)
    found = await call_agent(
        services,
        running(record).node_id,
        Op.CONTACTS_LIST,
        SessionRef(session_id=record.spec.key),
        ContactList,
    )
    return ContactsView(session_id=session_id, contacts=found.contacts)


async def contact_info(
    services: Services, principal: Principal, session_id: str, chat: str
) -> ContactView:
    record = await load_record(services, principal, session_id)  # the session first
    target = contact_chat(chat)
    details = await call_agent(
        services,
        running(record).node_id,
        Op.CONTACT_INFO,
        ContactRequest(session_id=record.spec.key, chat=target),
        ContactDetails,
    )
    return ContactView(session_id=session_id, **msgspec.structs.asdict(details))


async def contact_picture(
    services: Services, principal: Principal, session_id: str, chat: str
) -> PictureView:
    info = await contact_info(services, principal, session_id, chat)
    return PictureView(
        session_id=session_id,
        chat=contact_chat(chat),
        picture_id=info.picture_id,
        picture_url=info.picture_url,
    )


async def block_contact(
    services: Services, principal: Principal, session_id: str, chat: str, block: bool
) -> BlocklistView:
    record = await load_record(services, principal, session_id)  # the session first
    target = contact_chat(chat)
    result = await call_agent(
        services,
        running(record).node_id,
        Op.CONTACT_BLOCK,
        BlockRequest(session_id=record.spec.key, chat=target, block=block),
        Blocklist,
    )
    return BlocklistView(session_id=session_id, blocked=result.blocked)


async def blocklist(services: Services, principal: Principal, session_id: str) -> BlocklistView:
    record = await load_record(services, principal, session_id)
    result = await call_agent(
        services,
        running(record).node_id,
        Op.BLOCKLIST_GET,
        SessionRef(session_id=record.spec.key),
        Blocklist,
    )
    return BlocklistView(session_id=session_id, blocked=result.blocked)


# -- own profile and privacy --------------------------------------------------------------


async def picture_jpeg(encoded: str) -> bytes:
    """The profile picture of a base64 body, as the JPEG WhatsApp takes; 422
    ``invalid_image`` for what is not base64 of an image."""
    try:
        data = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise ProblemError(422, "invalid_image", "the picture is not valid base64") from None
    try:
        return await asyncio.to_thread(profile_jpeg, data)
    except InvalidImage as exc:
        raise ProblemError(422, "invalid_image", str(exc)) from None


async def set_profile(
    services: Services,
    principal: Principal,
    session_id: str,
    *,
    name: str | None = None,
    about: str | None = None,
    picture: str | None = None,
    remove_picture: bool = False,
) -> ProfileView:
    record = await load_record(services, principal, session_id)  # the session first
    if name is None and about is None and picture is None and not remove_picture:
        raise ProblemError(
            422, "invalid_request", "nothing to change: give name, about or a picture"
        )
    if picture is not None and remove_picture:
        raise ProblemError(422, "invalid_request", "give a picture or remove it, not both")
    jpeg = await picture_jpeg(picture) if picture is not None else None
    updated = await call_agent(
        services,
        running(record).node_id,
        Op.PROFILE_SET,
        ProfileUpdate(
            session_id=record.spec.key,
            name=name,
            about=about,
            picture=jpeg,
            remove_picture=remove_picture,
        ),
        ProfileUpdated,
    )
    return ProfileView(
        session_id=session_id,
        name=updated.name,
        about=updated.about,
        picture_id=updated.picture_id,
        picture_removed=updated.picture_removed,
    )


async def get_privacy(services: Services, principal: Principal, session_id: str) -> PrivacyView:
    record = await load_record(services, principal, session_id)
    privacy = await call_agent(
        services,
        running(record).node_id,
        Op.PRIVACY_GET,
        SessionRef(session_id=record.spec.key),
        Privacy,
    )
    return PrivacyView(session_id=session_id, **msgspec.structs.asdict(privacy))


async def set_privacy(
    services: Services, principal: Principal, session_id: str, data: PrivacyBody
) -> PrivacyView:
    record = await load_record(services, principal, session_id)  # the session first
    settings = {k: v for k, v in msgspec.structs.asdict(data).items() if v is not None}
    if not settings:
        raise ProblemError(422, "invalid_request", "no privacy setting to change")
    privacy = await call_agent(
        services,
        running(record).node_id,
        Op.PRIVACY_SET,
        PrivacyChange(session_id=record.spec.key, settings=settings),
        Privacy,
    )
    return PrivacyView(session_id=session_id, **msgspec.structs.asdict(privacy))

"""Evolution's send-message controller (``/message/send…/{instance}``) on zapfleet's
message service: every send is ``messages.queue_message`` (queued on the session's node,
paced, outbox-backed), answered the way Evolution answers (a Baileys ``WAMessage`` with
status ``PENDING``). ``key.id`` is zapfleet's message id (docs/evolution.md).
"""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import msgspec
from litestar import Request, post

from control_plane import messages
from control_plane.evolution._common import (
    bad_request,
    chat_of,
    convert,
    for_instance,
    jid,
    read_body,
    sent_answer,
)
from control_plane.keyring import Principal
from control_plane.models import OutboundMessage, PresenceBody
from control_plane.services import Services

MAX_DELAY_MS = 15_000  # Evolution's ``delay`` blocks the request; zapfleet caps it
_SEND = {"rate": "messages"}
_MEDIA_TYPES = ("image", "video", "document", "audio")
_accepted = msgspec.json.Decoder(dict[str, Any])


class Options(msgspec.Struct, kw_only=True, rename="camel"):
    """Evolution v1's ``options`` object (v2 has the same fields at the top level)."""

    delay: int | None = None
    quoted: dict[str, Any] | None = None
    link_preview: bool | None = None
    mentions: dict[str, Any] | None = None


class Common(msgspec.Struct, kw_only=True, rename="camel"):
    number: str
    delay: int | None = None
    quoted: dict[str, Any] | None = None
    link_preview: bool | None = None
    mentions_every_one: bool | None = None
    mentioned: list[str] | None = None
    options: Options | None = None

    def delay_ms(self) -> int:
        value = self.delay if self.delay is not None else (self.options and self.options.delay)
        return max(0, min(int(value or 0), MAX_DELAY_MS))

    def quoted_id(self) -> str | None:
        quoted = self.quoted or (self.options.quoted if self.options else None)
        key = (quoted or {}).get("key") or {}
        found = key.get("id") if isinstance(key, dict) else None
        return str(found) if found else None


class TextBody(Common, kw_only=True, rename="camel"):
    text: str | None = None
    text_message: dict[str, Any] | None = None  # v1: {"textMessage": {"text": ...}}


class MediaBody(Common, kw_only=True, rename="camel"):
    mediatype: str
    mimetype: str | None = None
    caption: str | None = None
    media: str | None = None
    file_name: str | None = None


class AudioBody(Common, kw_only=True, rename="camel"):
    audio: str | None = None


class StickerBody(Common, kw_only=True, rename="camel"):
    sticker: str | None = None


class LocationBody(Common, kw_only=True, rename="camel"):
    latitude: float
    longitude: float
    name: str | None = None
    address: str | None = None


class ContactCard(msgspec.Struct, kw_only=True, rename="camel"):
    full_name: str
    phone_number: str
    wuid: str | None = None
    organization: str | None = None
    email: str | None = None
    url: str | None = None


class ContactBody(Common, kw_only=True, rename="camel"):
    contact: list[ContactCard]


class MessageKey(msgspec.Struct, kw_only=True, rename="camel"):
    id: str
    remote_jid: str
    from_me: bool = False
    participant: str | None = None


class ReactionBody(msgspec.Struct, kw_only=True, rename="camel"):
    key: MessageKey
    reaction: str


class PollBody(Common, kw_only=True, rename="camel"):
    name: str
    values: list[str]
    selectable_count: int = 1


def media_of(value: str | None, upload: Any, mimetype: str | None, filename: str | None) -> Any:
    """zapfleet's Media of an Evolution media field (an http(s) URL, base64 or a data URL)
    or of an uploaded ``file`` (multipart)."""
    media: dict[str, Any] = {"mimetype": mimetype, "filename": filename}
    if isinstance(upload, tuple):
        data, upload_name, upload_type = upload
        media["base64"] = base64.b64encode(data).decode()
        media["filename"] = filename or upload_name
        if not mimetype and upload_type and upload_type != "application/octet-stream":
            media["mimetype"] = upload_type
    elif value and value.startswith(("http://", "https://")):
        media["url"] = value
    elif value:
        if value.startswith("data:") and "," in value:
            header, _, value = value.partition(",")
            media["mimetype"] = mimetype or header[5:].split(";", 1)[0] or None
        media["base64"] = value
    else:
        raise bad_request("the media is missing: give a URL, base64 or a file")
    return {k: v for k, v in media.items() if v is not None}


async def send(
    services: Services,
    principal: Principal,
    instance: str,
    message: dict[str, Any],
    delay_ms: int = 0,
    presence: str = "typing",
) -> str:
    """Queue one zapfleet message (after Evolution's ``delay``: the chat shows typing or
    recording that long) and answer its message id."""
    outbound: OutboundMessage = convert(message, OutboundMessage)  # type: ignore[arg-type]
    if delay_ms:
        await messages.show_presence(
            services,
            principal,
            instance,
            convert({"chat": message["to"], "state": presence}, PresenceBody),
        )
        await asyncio.sleep(delay_ms / 1000)
    body, _ = await messages.queue_message(services, principal, instance, outbound)
    return str(_accepted.decode(body)["message_id"])


def mentions_of(body: Common) -> tuple[list[str] | None, bool]:
    mentioned = body.mentioned
    everyone = bool(body.mentions_every_one)
    if body.options and body.options.mentions:
        mentioned = mentioned or body.options.mentions.get("mentioned")
        everyone = everyone or bool(body.options.mentions.get("everyOne"))
    return ([chat_of(m) for m in mentioned] if mentioned else None), everyone


@post("/message/sendText/{instance:str}", opt=_SEND)
async def send_text(
    request: Request[Any, Any, Any], services: Services, instance: str
) -> dict[str, Any]:
    principal = await for_instance(request, services, instance)
    body = convert(await read_body(request), TextBody)
    text = body.text or (body.text_message or {}).get("text")
    if not text:
        raise bad_request("text is required")
    chat = chat_of(body.number)
    mentioned, everyone = mentions_of(body)
    preview = body.link_preview
    if preview is None and body.options is not None:
        preview = body.options.link_preview
    message_id = await send(
        services,
        principal,
        instance,
        {
            "type": "text",
            "to": chat,
            "text": text,
            "reply_to": body.quoted_id(),
            "mentions": mentioned,
            "mention_all": everyone,
            "link_preview": bool(preview),
        },
        body.delay_ms(),
    )
    extended: dict[str, Any] = {"text": text}
    if mentioned:
        extended["contextInfo"] = {"mentionedJid": [jid(m) for m in mentioned]}
    return sent_answer(chat, message_id, {"extendedTextMessage": extended})


@post("/message/sendMedia/{instance:str}", opt=_SEND)
async def send_media(
    request: Request[Any, Any, Any], services: Services, instance: str
) -> dict[str, Any]:
    principal = await for_instance(request, services, instance)
    fields = await read_body(request)
    upload = fields.pop("file", None)
    body = convert(fields, MediaBody)
    if body.mediatype not in _MEDIA_TYPES:
        raise bad_request(f"mediatype must be one of {', '.join(_MEDIA_TYPES)}")
    chat = chat_of(body.number)
    media = media_of(body.media, upload, body.mimetype, body.file_name)
    message: dict[str, Any] = {"type": body.mediatype, "to": chat, "media": media}
    if body.mediatype != "audio":
        message["caption"] = body.caption
    message_id = await send(services, principal, instance, message, body.delay_ms())
    shown: dict[str, Any] = {"url": media.get("url"), "mimetype": media.get("mimetype")}
    if body.mediatype != "audio":
        shown["caption"] = body.caption
    if body.mediatype == "document":
        shown["fileName"] = media.get("filename")
    return sent_answer(chat, message_id, {f"{body.mediatype}Message": shown})


@post("/message/sendWhatsAppAudio/{instance:str}", opt=_SEND)
async def send_audio(
    request: Request[Any, Any, Any], services: Services, instance: str
) -> dict[str, Any]:
    principal = await for_instance(request, services, instance)
    fields = await read_body(request)
    upload = fields.pop("file", None)
    body = convert(fields, AudioBody)
    chat = chat_of(body.number)
    media = media_of(body.audio, upload, None, None)
    message_id = await send(
        services,
        principal,
        instance,
        {"type": "audio", "to": chat, "media": media, "voice_note": True},
        body.delay_ms(),
        presence="recording",
    )
    shown = {"url": media.get("url"), "mimetype": "audio/ogg; codecs=opus", "ptt": True}
    return sent_answer(chat, message_id, {"audioMessage": shown})


@post("/message/sendSticker/{instance:str}", opt=_SEND)
async def send_sticker(
    request: Request[Any, Any, Any], services: Services, instance: str
) -> dict[str, Any]:
    principal = await for_instance(request, services, instance)
    fields = await read_body(request)
    upload = fields.pop("file", None)
    body = convert(fields, StickerBody)
    chat = chat_of(body.number)
    media = media_of(body.sticker, upload, None, None)
    message_id = await send(
        services,
        principal,
        instance,
        {"type": "sticker", "to": chat, "media": media},
        body.delay_ms(),
    )
    shown = {"url": media.get("url"), "mimetype": "image/webp"}
    return sent_answer(chat, message_id, {"stickerMessage": shown})


@post("/message/sendLocation/{instance:str}", opt=_SEND)
async def send_location(
    request: Request[Any, Any, Any], services: Services, instance: str
) -> dict[str, Any]:
    principal = await for_instance(request, services, instance)
    body = convert(await read_body(request), LocationBody)
    chat = chat_of(body.number)
    message_id = await send(
        services,
        principal,
        instance,
        {
            "type": "location",
            "to": chat,
            "latitude": body.latitude,
            "longitude": body.longitude,
            "name": body.name,
            "address": body.address,
        },
        body.delay_ms(),
    )
    shown = {
        "degreesLatitude": body.latitude,
        "degreesLongitude": body.longitude,
        "name": body.name,
        "address": body.address,
    }
    return sent_answer(chat, message_id, {"locationMessage": shown})


def vcard(card: ContactCard) -> str:
    digits = "".join(c for c in card.phone_number if c.isdigit())
    lines = ["BEGIN:VCARD", "VERSION:3.0", f"FN:{card.full_name}"]
    if card.organization:
        lines.append(f"ORG:{card.organization};")
    if card.email:
        lines.append(f"EMAIL:{card.email}")
    if card.url:
        lines.append(f"URL:{card.url}")
    lines += [f"TEL;type=CELL;type=VOICE;waid={card.wuid or digits}:+{digits}", "END:VCARD"]
    return "\n".join(lines)


@post("/message/sendContact/{instance:str}", opt=_SEND)
async def send_contact(
    request: Request[Any, Any, Any], services: Services, instance: str
) -> dict[str, Any]:
    """zapfleet sends one contact card per message: several cards are several messages
    (``key.id`` is the first one's)."""
    principal = await for_instance(request, services, instance)
    body = convert(await read_body(request), ContactBody)
    if not body.contact:
        raise bad_request("contact must list at least one contact")
    chat = chat_of(body.number)
    ids = [
        await send(
            services,
            principal,
            instance,
            {
                "type": "contact",
                "to": chat,
                "display_name": card.full_name,
                "phone": card.phone_number,
            },
            body.delay_ms() if index == 0 else 0,
        )
        for index, card in enumerate(body.contact)
    ]
    cards = [{"displayName": c.full_name, "vcard": vcard(c)} for c in body.contact]
    if len(cards) == 1:
        return sent_answer(chat, ids[0], {"contactMessage": cards[0]})
    return sent_answer(
        chat,
        ids[0],
        {"contactsArrayMessage": {"displayName": f"{len(cards)} contacts", "contacts": cards}},
    )


@post("/message/sendReaction/{instance:str}", opt=_SEND)
async def send_reaction(
    request: Request[Any, Any, Any], services: Services, instance: str
) -> dict[str, Any]:
    principal = await for_instance(request, services, instance)
    body = convert(await read_body(request), ReactionBody)
    chat = chat_of(body.key.remote_jid)
    message_id = await send(
        services,
        principal,
        instance,
        {"type": "reaction", "to": chat, "message_id": body.key.id, "emoji": body.reaction},
    )
    reacted = {"remoteJid": jid(chat), "fromMe": body.key.from_me, "id": body.key.id}
    return sent_answer(
        chat, message_id, {"reactionMessage": {"key": reacted, "text": body.reaction}}
    )


@post("/message/sendPoll/{instance:str}", opt=_SEND)
async def send_poll(
    request: Request[Any, Any, Any], services: Services, instance: str
) -> dict[str, Any]:
    principal = await for_instance(request, services, instance)
    body = convert(await read_body(request), PollBody)
    chat = chat_of(body.number)
    message_id = await send(
        services,
        principal,
        instance,
        {
            "type": "poll",
            "to": chat,
            "name": body.name,
            "options": body.values,
            "selectable": body.selectable_count,
        },
        body.delay_ms(),
    )
    shown = {
        "name": body.name,
        "options": [{"optionName": v} for v in body.values],
        "selectableOptionsCount": body.selectable_count,
    }
    return sent_answer(chat, message_id, {"pollCreationMessage": shown})


ROUTES = [
    send_text,
    send_media,
    send_audio,
    send_sticker,
    send_location,
    send_contact,
    send_reaction,
    send_poll,
]

"""Evolution's chat controller (``/chat/...``, less the profile routes:
control_plane/evolution/profile.py) on zapfleet's message, contacts and media services.
Messages, chats and contacts are found in zapfleet's history and the engine's contact
store; edits and deletes for everyone are sends (``queue_message``)."""

from __future__ import annotations

import asyncio
import base64
import math
from typing import Any

import msgspec
from litestar import Request, delete, post

from contract.protocol import MessageRecord
from control_plane import contacts, media, messages
from control_plane.evolution._common import (
    bad_request,
    chat_of,
    convert,
    for_instance,
    jid,
    read_body,
    sent_answer,
)
from control_plane.evolution.instances import iso
from control_plane.evolution.messages import MAX_DELAY_MS, MessageKey, send
from control_plane.keyring import Principal
from control_plane.models import HistoryView, PresenceBody, ReadChat
from control_plane.numbers import normalize_recipient
from control_plane.services import Services

HISTORY_SCAN = 1000  # findMessages/findChats/getBase64 look at this many recent messages
_QUERY = {"rate": "queries"}
_history = msgspec.json.Decoder(HistoryView)
# zapfleet's presence of Evolution's chat presence
_PRESENCE = {"composing": "typing", "recording": "recording", "paused": "paused"}
# Baileys' message type of a zapfleet message type
_TYPE = {
    "text": "conversation",
    "image": "imageMessage",
    "video": "videoMessage",
    "audio": "audioMessage",
    "document": "documentMessage",
    "sticker": "stickerMessage",
    "location": "locationMessage",
    "contact": "contactMessage",
    "reaction": "reactionMessage",
    "poll": "pollCreationMessage",
}


class NumbersBody(msgspec.Struct, kw_only=True):
    numbers: list[str]


class ReadBody(msgspec.Struct, kw_only=True, rename="camel"):
    read_messages: list[MessageKey]


class NumberBody(msgspec.Struct, kw_only=True):
    number: str


class UpdateBody(msgspec.Struct, kw_only=True):
    number: str
    key: MessageKey
    text: str


class PresenceRequest(msgspec.Struct, kw_only=True):
    number: str
    presence: str
    delay: int | None = None


class Where(msgspec.Struct, kw_only=True, rename="camel"):
    id: str | None = None
    remote_jid: str | None = None
    key: dict[str, Any] | None = None


class FindBody(msgspec.Struct, kw_only=True):
    where: Where = msgspec.field(default_factory=Where)
    page: int = 1
    offset: int = 50


class MediaRequest(msgspec.Struct, kw_only=True, rename="camel"):
    message: dict[str, Any]
    convert_to_mp4: bool = False


async def recent(
    services: Services, principal: Principal, instance: str, chat: str | None
) -> list[MessageRecord]:
    """The newest messages of the session (of one chat), newest first."""
    body, _ = await messages.message_history(
        services, principal, instance, limit=HISTORY_SCAN, chat=chat
    )
    return _history.decode(body).messages


def baileys_message(record: MessageRecord) -> dict[str, Any]:
    if record.type == "text":
        return {"conversation": record.text or ""}
    shown: dict[str, Any] = {}
    if record.media:
        shown = {k: record.media.get(k) for k in ("mimetype", "caption") if record.media.get(k)}
        if record.media.get("filename"):
            shown["fileName"] = record.media["filename"]
    if record.text:
        shown.setdefault("caption", record.text)
    return {_TYPE.get(record.type, f"{record.type}Message"): shown}


def message_of(record: MessageRecord, instance_id: str | None) -> dict[str, Any]:
    """A history record as Evolution's stored message (Baileys ``WAMessage`` + columns)."""
    return {
        "id": record.message_id,
        "key": {
            "id": record.message_id,
            "fromMe": record.direction == "out",
            "remoteJid": jid(record.peer),
        },
        "pushName": None,
        "messageType": _TYPE.get(record.type, f"{record.type}Message"),
        "message": baileys_message(record),
        "messageTimestamp": int(record.timestamp),
        "instanceId": instance_id,
        "source": "unknown",
        "status": record.status.upper(),
    }


def instance_id(services: Services, principal: Principal, instance: str) -> str | None:
    record = services.index.find(principal.tenant, instance)
    return record.spec.key if record else None


async def _numbers(
    request: Request[Any, Any, Any], services: Services, instance: str
) -> list[dict[str, Any]]:
    principal = await for_instance(request, services, instance)
    body = convert(await read_body(request), NumbersBody)
    if not body.numbers:
        raise bad_request("numbers must list at least one number")
    asked = [(raw, normalize_recipient(raw)) for raw in body.numbers]
    checked = await messages.check_numbers(
        services, principal, instance, [number for _, number in asked]
    )
    known = {status.number: status for status in checked.results}
    answer = []
    for raw, number in asked:
        status = known.get(number)
        exists = bool(status and status.on_whatsapp)
        answer.append(
            {
                "exists": exists,
                "jid": (status.jid if status and status.jid else None) or jid(number),
                "number": raw,
            }
        )
    return answer


@post("/chat/whatsappNumbers/{instance:str}", opt=_QUERY)
async def whatsapp_numbers(
    request: Request[Any, Any, Any], services: Services, instance: str
) -> list[dict[str, Any]]:
    return await _numbers(request, services, instance)


@post("/chat/checkIsWhatsappNumber/{instance:str}", opt=_QUERY)
async def check_is_whatsapp_number(
    request: Request[Any, Any, Any], services: Services, instance: str
) -> list[dict[str, Any]]:
    """Older clients' name of chat/whatsappNumbers."""
    return await _numbers(request, services, instance)


@post("/chat/markMessageAsRead/{instance:str}")
async def mark_message_as_read(
    request: Request[Any, Any, Any], services: Services, instance: str
) -> dict[str, Any]:
    principal = await for_instance(request, services, instance)
    body = convert(await read_body(request), ReadBody)
    by_chat: dict[str, list[str]] = {}
    for key in body.read_messages:
        by_chat.setdefault(chat_of(key.remote_jid), []).append(key.id)
    for chat, ids in by_chat.items():
        await messages.mark_read(
            services, principal, instance, convert({"chat": chat, "message_ids": ids}, ReadChat)
        )
    return {"message": "Read messages", "read": "success"}


@post("/chat/findMessages/{instance:str}", opt=_QUERY)
async def find_messages(
    request: Request[Any, Any, Any], services: Services, instance: str
) -> dict[str, Any]:
    """Over the newest 1000 messages of zapfleet's history (of the chat ``where.key.
    remoteJid`` names), filtered by ``where.key.id`` / ``where.key.fromMe``, paged."""
    principal = await for_instance(request, services, instance)
    body = convert(await read_body(request), FindBody)
    key = body.where.key or {}
    remote = key.get("remoteJid") or body.where.remote_jid
    records = await recent(services, principal, instance, chat_of(remote) if remote else None)
    wanted_id = key.get("id") or body.where.id
    if wanted_id:
        records = [r for r in records if wanted_id in (r.message_id, r.engine_message_id)]
    if isinstance(key.get("fromMe"), bool):
        records = [r for r in records if (r.direction == "out") is key["fromMe"]]
    size = max(1, body.offset)
    page = max(1, body.page)
    shown = records[(page - 1) * size : page * size]
    owner = instance_id(services, principal, instance)
    return {
        "messages": {
            "total": len(records),
            "pages": math.ceil(len(records) / size),
            "currentPage": page,
            "records": [message_of(r, owner) for r in shown],
        }
    }


@post("/chat/findChats/{instance:str}", opt=_QUERY)
async def find_chats(
    request: Request[Any, Any, Any], services: Services, instance: str
) -> list[dict[str, Any]]:
    """The chats of the newest 1000 messages, newest first, with their last message."""
    principal = await for_instance(request, services, instance)
    owner = instance_id(services, principal, instance)
    chats: dict[str, MessageRecord] = {}
    for record in await recent(services, principal, instance, None):
        chats.setdefault(record.peer, record)
    return [
        {
            "id": None,
            "remoteJid": jid(peer),
            "pushName": None,
            "profilePicUrl": None,
            "updatedAt": iso(last.timestamp),
            "unreadCount": 0,
            "lastMessage": message_of(last, owner),
        }
        for peer, last in chats.items()
    ]


@post("/chat/findContacts/{instance:str}", opt=_QUERY)
async def find_contacts(
    request: Request[Any, Any, Any], services: Services, instance: str
) -> list[dict[str, Any]]:
    principal = await for_instance(request, services, instance)
    body = convert(await read_body(request), FindBody)
    wanted = body.where.remote_jid or body.where.id
    found = await contacts.list_contacts(services, principal, instance)
    answer = []
    for contact in found.contacts:
        contact_jid = jid(contact.phone or contact.lid)
        if wanted and wanted not in (contact_jid, contact.phone, contact.lid):
            continue
        answer.append(
            {
                "id": contact_jid,
                "remoteJid": contact_jid,
                "pushName": contact.push_name or contact.name,
                "profilePicUrl": None,
            }
        )
    return answer


@post("/chat/fetchProfilePictureUrl/{instance:str}", opt=_QUERY)
async def fetch_profile_picture_url(
    request: Request[Any, Any, Any], services: Services, instance: str
) -> dict[str, Any]:
    principal = await for_instance(request, services, instance)
    body = convert(await read_body(request), NumberBody)
    chat = chat_of(body.number)
    picture = await contacts.contact_picture(services, principal, instance, chat)
    return {"wuid": jid(chat), "profilePictureUrl": picture.picture_url}


@post("/chat/fetchProfile/{instance:str}", opt=_QUERY)
async def fetch_profile(
    request: Request[Any, Any, Any], services: Services, instance: str
) -> dict[str, Any]:
    principal = await for_instance(request, services, instance)
    body = convert(await read_body(request), NumberBody)
    chat = chat_of(body.number)
    info = await contacts.contact_info(services, principal, instance, chat)
    return {
        "wuid": jid(info.phone or chat),
        "name": info.name or info.push_name,
        "numberExists": True,
        "picture": info.picture_url,
        "status": {"status": info.about, "setAt": None},
        "isBusiness": info.business,
        "description": info.business_name,
    }


@delete("/chat/deleteMessageForEveryone/{instance:str}", status_code=201)
async def delete_message_for_everyone(
    request: Request[Any, Any, Any], services: Services, instance: str
) -> dict[str, Any]:
    principal = await for_instance(request, services, instance)
    key = convert(await read_body(request), MessageKey)
    chat = chat_of(key.remote_jid)
    message_id = await send(
        services, principal, instance, {"type": "revoke", "to": chat, "message_id": key.id}
    )
    revoked = {"remoteJid": jid(chat), "fromMe": key.from_me, "id": key.id}
    return sent_answer(chat, message_id, {"protocolMessage": {"key": revoked, "type": "REVOKE"}})


@post("/chat/updateMessage/{instance:str}")
async def update_message(
    request: Request[Any, Any, Any], services: Services, instance: str
) -> dict[str, Any]:
    principal = await for_instance(request, services, instance)
    body = convert(await read_body(request), UpdateBody)
    chat = chat_of(body.key.remote_jid or body.number)
    message_id = await send(
        services,
        principal,
        instance,
        {"type": "edit", "to": chat, "message_id": body.key.id, "text": body.text},
    )
    edited = {"remoteJid": jid(chat), "fromMe": True, "id": body.key.id}
    return sent_answer(
        chat,
        message_id,
        {
            "protocolMessage": {
                "key": edited,
                "type": "MESSAGE_EDIT",
                "editedMessage": {"conversation": body.text},
            }
        },
    )


@post("/chat/sendPresence/{instance:str}")
async def send_presence(
    request: Request[Any, Any, Any], services: Services, instance: str
) -> dict[str, Any]:
    """composing/recording for ``delay`` ms (capped), then paused, as Evolution does;
    available/unavailable are account presence, which zapfleet does not set."""
    principal = await for_instance(request, services, instance)
    body = convert(await read_body(request), PresenceRequest)
    state = _PRESENCE.get(body.presence)
    if state is None:
        raise bad_request(
            f"presence {body.presence!r}: zapfleet shows composing, recording or paused"
        )
    chat = chat_of(body.number)
    await messages.show_presence(
        services, principal, instance, convert({"chat": chat, "state": state}, PresenceBody)
    )
    delay = max(0, min(body.delay or 0, MAX_DELAY_MS))
    if delay and state != "paused":
        await asyncio.sleep(delay / 1000)
        await messages.show_presence(
            services,
            principal,
            instance,
            convert({"chat": chat, "state": "paused"}, PresenceBody),
        )
    return {"presence": body.presence}


@post("/chat/getBase64FromMediaMessage/{instance:str}", opt=_QUERY)
async def get_base64_from_media_message(
    request: Request[Any, Any, Any], services: Services, instance: str
) -> dict[str, Any]:
    """The file of a received message that zapfleet stored (the session's inbound media
    mode ``store``), found by ``message.key.id`` among the newest 1000 messages."""
    principal = await for_instance(request, services, instance)
    body = convert(await read_body(request), MediaRequest)
    key = body.message.get("key") or {}
    wanted = key.get("id") if isinstance(key, dict) else None
    if not wanted:
        raise bad_request("message.key.id is required")
    remote = key.get("remoteJid")
    found = next(
        (
            r
            for r in await recent(
                services, principal, instance, chat_of(remote) if remote else None
            )
            if wanted in (r.message_id, r.engine_message_id)
        ),
        None,
    )
    if found is None:
        raise bad_request(f"no message {wanted!r} in the instance's recent history")
    media_id = (found.media or {}).get("id")
    if not media_id:
        raise bad_request(
            f"message {wanted!r} has no stored media: set the session's inbound media to "
            "'store' (PUT /v1/sessions/{session}/settings/media)"
        )
    stored = await media.stored_media(services, principal, instance, str(media_id))
    return {
        "mediaType": _TYPE.get(found.type, f"{found.type}Message"),
        "fileName": stored.filename,
        "caption": (found.media or {}).get("caption"),
        "size": {"fileLength": len(stored.data)},
        "mimetype": stored.mimetype,
        "base64": base64.b64encode(stored.data).decode(),
    }


class BlockBody(msgspec.Struct, kw_only=True):
    number: str
    status: str


@post("/chat/updateBlockStatus/{instance:str}")
async def update_block_status(
    request: Request[Any, Any, Any], services: Services, instance: str
) -> dict[str, Any]:
    principal = await for_instance(request, services, instance)
    body = convert(await read_body(request), BlockBody)
    if body.status not in ("block", "unblock"):
        raise bad_request("status must be block or unblock")
    await contacts.block_contact(
        services, principal, instance, chat_of(body.number), body.status == "block"
    )
    return {"accepted": True}


ROUTES = [
    whatsapp_numbers,
    check_is_whatsapp_number,
    mark_message_as_read,
    find_messages,
    find_chats,
    find_contacts,
    fetch_profile_picture_url,
    fetch_profile,
    delete_message_for_everyone,
    update_message,
    send_presence,
    get_base64_from_media_message,
    update_block_status,
]

"""zapfleet events in Evolution API v2's webhook format (docs/evolution-webhooks.md).

A pure mapping: :func:`envelope` turns one zapfleet event (``contract.protocol.Event`` as
a mapping, its ``data`` typed by ``contract/event_data.py``) into the body Evolution API
v2 POSTs to a webhook::

    {"event": "messages.upsert", "instance": <instance name>, "data": {...},
     "destination": <configured url>, "date_time": <ISO 8601>, "sender": <own jid>,
     "server_url": <base url>, "apikey": null}

with Baileys-shaped ``data`` as Evolution's ``whatsapp.baileys.service.ts`` builds it
(``prepareMessage``: ``key``, ``pushName``, ``status``, ``message``, ``contextInfo``,
``messageType``, ``messageTimestamp``, ``instanceId``, ``source``). Evolution's event
names come in three spellings: the configuration name (``MESSAGES_UPSERT``, what
``webhook/set`` takes), the body name (``messages.upsert``) and the URL suffix of
``webhook_by_events`` (``messages-upsert``, Evolution's ``transformedWe``).

Which zapfleet event becomes which Evolution event is :data:`EVOLUTION_EVENT` (each
zapfleet type at most one Evolution event; the filter of a webhook is therefore exact).
zapfleet events with no Evolution counterpart are not sent in Evolution format:
:data:`UNMAPPED` names each with the reason.

Ids: ``key.id`` is zapfleet's ``message_id`` — WhatsApp's id of a received message, our
``m_...`` id of one this session sent (the id the REST facade answers a send with), so
``send.message`` / ``messages.update`` correlate with the send's answer.
"""

from __future__ import annotations

import base64
import io
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import segno

from contract.protocol import EventType, SessionState

# -- names -------------------------------------------------------------------------------

# every event name Evolution's webhook/set accepts (EventController.events, v2.3), plus
# GROUPS_UPDATE: Evolution's own enum name of what the list calls GROUP_UPDATE
EVOLUTION_EVENTS: tuple[str, ...] = (
    "APPLICATION_STARTUP",
    "QRCODE_UPDATED",
    "MESSAGES_SET",
    "MESSAGES_UPSERT",
    "MESSAGES_EDITED",
    "MESSAGES_UPDATE",
    "MESSAGES_DELETE",
    "SEND_MESSAGE",
    "SEND_MESSAGE_UPDATE",
    "CONTACTS_SET",
    "CONTACTS_UPSERT",
    "CONTACTS_UPDATE",
    "PRESENCE_UPDATE",
    "CHATS_SET",
    "CHATS_UPSERT",
    "CHATS_UPDATE",
    "CHATS_DELETE",
    "GROUPS_UPSERT",
    "GROUP_UPDATE",
    "GROUPS_UPDATE",
    "GROUP_PARTICIPANTS_UPDATE",
    "CONNECTION_UPDATE",
    "LABELS_EDIT",
    "LABELS_ASSOCIATION",
    "CALL",
    "TYPEBOT_START",
    "TYPEBOT_CHANGE_STATUS",
    "REMOVE_INSTANCE",
    "LOGOUT_INSTANCE",
    "INSTANCE_CREATE",
    "INSTANCE_DELETE",
    "STATUS_INSTANCE",
    "NEW_JWT_TOKEN",
)

# configuration name -> the ``event`` of the body (Evolution's ``Events`` enum)
BODY_EVENT: dict[str, str] = {
    "QRCODE_UPDATED": "qrcode.updated",
    "CONNECTION_UPDATE": "connection.update",
    "MESSAGES_UPSERT": "messages.upsert",
    "MESSAGES_UPDATE": "messages.update",
    "MESSAGES_DELETE": "messages.delete",
    "MESSAGES_EDITED": "messages.edited",
    "SEND_MESSAGE": "send.message",
    "PRESENCE_UPDATE": "presence.update",
    "CALL": "call",
    "GROUPS_UPSERT": "groups.upsert",
    "GROUP_UPDATE": "groups.update",
    "GROUP_PARTICIPANTS_UPDATE": "group-participants.update",
}

# zapfleet event type -> the Evolution event it is sent as
EVOLUTION_EVENT: dict[EventType, str] = {
    EventType.SESSION_QR: "QRCODE_UPDATED",
    EventType.SESSION_STATUS: "CONNECTION_UPDATE",
    EventType.MESSAGE_RECEIVED: "MESSAGES_UPSERT",
    EventType.MESSAGE_REACTION: "MESSAGES_UPSERT",  # Baileys: a reactionMessage upsert
    EventType.MESSAGE_SENT: "SEND_MESSAGE",
    EventType.MESSAGE_ACK: "MESSAGES_UPDATE",
    EventType.MESSAGE_POLL_VOTE: "MESSAGES_UPDATE",  # Evolution: pollUpdates
    EventType.MESSAGE_REVOKED: "MESSAGES_DELETE",
    EventType.MESSAGE_EDITED: "MESSAGES_EDITED",
    EventType.CHAT_PRESENCE: "PRESENCE_UPDATE",
    EventType.CALL_RECEIVED: "CALL",
    EventType.CALL_REJECTED: "CALL",
    EventType.GROUP_JOINED: "GROUPS_UPSERT",
    EventType.GROUP_UPDATED: "GROUP_UPDATE",
    EventType.GROUP_PARTICIPANTS: "GROUP_PARTICIPANTS_UPDATE",
    EventType.GROUP_LEFT: "GROUP_PARTICIPANTS_UPDATE",  # Baileys: "remove" of our own jid
}

# zapfleet event types that are not sent in Evolution format, and why
UNMAPPED: dict[EventType, str] = {
    EventType.SESSION_PAIRED: "the session.status CONNECTED that follows is connection.update open",
    EventType.SESSION_LOGGED_OUT: "the session.status that follows is connection.update close 401",
    EventType.MESSAGE_QUEUED: "Evolution reports a send once, as send.message (message.sent)",
    EventType.CONTACT_BLOCKED: "Evolution has no webhook event for the block list",
    EventType.NODE_UP: "fleet event: Evolution has no fleet (and a move is invisible to it)",
    EventType.NODE_DOWN: "fleet event: Evolution has no fleet (and a move is invisible to it)",
    EventType.SESSION_MOVED: "fleet event: Evolution has no fleet (and a move is invisible to it)",
}

# an Evolution name -> the zapfleet types sent as it (GROUPS_UPDATE as GROUP_UPDATE)
_TYPES_OF: dict[str, frozenset[str]] = {}
for _type, _name in EVOLUTION_EVENT.items():
    _TYPES_OF[_name] = _TYPES_OF.get(_name, frozenset()) | {_type.value}
_TYPES_OF["GROUPS_UPDATE"] = _TYPES_OF["GROUP_UPDATE"]


def url_suffix(name: str) -> str:
    """The path ``webhook_by_events`` appends: ``messages-upsert``,
    ``group-participants-update`` (Evolution: the body name, dots and dashes to ``-``)."""
    return re.sub(r"[._]", "-", BODY_EVENT.get(name, name.lower()))


def event_types(names: list[str] | None) -> frozenset[str]:
    """The zapfleet event types a webhook with Evolution event ``names`` receives."""
    found: set[str] = set()
    for name in names or ():
        found |= _TYPES_OF.get(name, frozenset())
    return frozenset(found)


class EvolutionFilter:
    """The event filter of an Evolution-format webhook: Evolution names, matched against
    zapfleet event types; an empty list (Evolution: "disabled") lets nothing through."""

    __slots__ = ("_types",)

    def __init__(self, names: list[str] | None) -> None:
        self._types = event_types(names)

    def __call__(self, event_type: str) -> bool:
        return event_type in self._types


# -- the body ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Context:
    """What the mapping needs beyond the event."""

    instance: str  # the instance name: the session's name
    instance_id: str  # Evolution's instance uuid: the session's internal key
    destination: str  # the configured webhook URL (without the by-events suffix)
    server_url: str  # this deployment's public base URL
    sender: str | None = None  # the account's own jid, when known
    apikey: str | None = None  # Evolution sends the instance token only when exposed
    media_url: str | None = None  # signed URL of a stored inbound file
    media_base64: str | None = None  # the file, when the webhook asks for base64


def jid(address: str | None) -> str | None:
    """A chat id of zapfleet (phone digits, ``…@lid``, ``…@g.us``) as a jid."""
    if not address:
        return None
    return address if "@" in address else f"{address}@s.whatsapp.net"


def date_time(ts: float) -> str:
    """Evolution's ``date_time``: ISO 8601 with milliseconds (``Date.toISOString``)."""
    moment = datetime.fromtimestamp(ts, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def source_of(message_id: str) -> str:
    """Baileys' ``getDevice``: which kind of device made a message id."""
    if re.fullmatch(r"3A.{18}", message_id):
        return "ios"
    if re.fullmatch(r"3E.{20}", message_id):
        return "web"
    if re.fullmatch(r".{21}|.{32}", message_id):
        return "android"
    if re.match(r"3F|.{18}$", message_id):
        return "desktop"
    return "unknown"


def qr_data_url(code: str) -> str:
    """The QR code as Evolution sends it: a PNG data URL."""
    buffer = io.BytesIO()
    segno.make(code, error="m").save(buffer, kind="png", scale=4, border=3)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _sha256_b64(hex_digest: str | None) -> str | None:
    """Baileys serializes ``fileSha256`` (bytes) as base64; zapfleet keeps hex."""
    if not hex_digest:
        return None
    try:
        return base64.b64encode(bytes.fromhex(hex_digest)).decode()
    except ValueError:
        return None


def _clean(values: dict[str, Any]) -> dict[str, Any]:
    """Without the fields that are None (JSON.stringify leaves out undefined ones)."""
    return {k: v for k, v in values.items() if v is not None}


_MEDIA_FIELD = {
    "image": "imageMessage",
    "video": "videoMessage",
    "audio": "audioMessage",
    "document": "documentMessage",
    "sticker": "stickerMessage",
}
_STATUS = {"server": "SERVER_ACK", "delivered": "DELIVERY_ACK", "read": "READ", "failed": "ERROR"}
_PRESENCE = {"typing": "composing", "recording": "recording", "paused": "paused"}
_GROUP_ACTION = {"join": "add", "leave": "remove"}
_GROUP_CHANGE = {"description": "desc", "locked": "restrict", "ephemeral_s": "ephemeralDuration"}
# Baileys' DisconnectReason
_LOGGED_OUT = 401
_CONNECTION_CLOSED = 428


def _sender_jid(data: Mapping[str, Any]) -> str | None:
    return jid(data.get("from")) or data.get("from_lid")


def _key(data: Mapping[str, Any], message_id: str, from_me: bool) -> dict[str, Any]:
    key: dict[str, Any] = {"remoteJid": jid(data["chat"]), "fromMe": from_me, "id": message_id}
    if data.get("is_group"):
        key["participant"] = _sender_jid(data)
    return key


def _context_info(content: Mapping[str, Any]) -> dict[str, Any] | None:
    info: dict[str, Any] = {}
    if content.get("reply_to"):
        info["stanzaId"] = content["reply_to"]
    mentions = content.get("mentions")
    if mentions:
        info["mentionedJid"] = [jid(m) for m in mentions]
    return info or None


def _media_message(kind: str, data: Mapping[str, Any], ctx: Context) -> dict[str, Any]:
    content: Mapping[str, Any] = data.get("content") or {}
    media: Mapping[str, Any] = data.get("media") or content.get("media") or {}
    size = media.get("size", content.get("size"))
    part = _clean(
        {
            "url": ctx.media_url,
            "mimetype": media.get("mimetype") or content.get("mimetype"),
            "caption": data.get("text") if kind not in ("audio", "sticker") else None,
            "fileSha256": _sha256_b64(media.get("sha256")),
            "fileLength": str(size) if size is not None else None,
            "seconds": int(media["seconds"]) if media.get("seconds") is not None else None,
            "fileName": media.get("filename") if kind == "document" else None,
            "title": media.get("filename") if kind == "document" else None,
        }
    )
    if kind == "audio":
        part["ptt"] = bool(content.get("ptt", False))
    if kind == "sticker":
        part["isAnimated"] = bool(content.get("animated", False))
    if content.get("view_once"):
        part["viewOnce"] = True
    return part


def _message_content(data: Mapping[str, Any], ctx: Context) -> tuple[str, dict[str, Any]] | None:
    """(messageType, message) of a received message; None when Evolution sends none."""
    kind = data["type"]
    text = data.get("text")
    content: Mapping[str, Any] = data.get("content") or {}
    if kind == "text":
        return "conversation", {"conversation": text or ""}
    if kind in _MEDIA_FIELD:
        field = _MEDIA_FIELD[kind]
        message: dict[str, Any] = {field: _media_message(kind, data, ctx)}
        if ctx.media_url is not None:
            message["mediaUrl"] = ctx.media_url  # as Evolution with S3 storage
        if ctx.media_base64 is not None:
            message["base64"] = ctx.media_base64
        return field, message
    if kind == "location":
        location = _clean(
            {
                "degreesLatitude": content.get("latitude"),
                "degreesLongitude": content.get("longitude"),
                "name": content.get("name"),
                "address": content.get("address"),
            }
        )
        return "locationMessage", {"locationMessage": location}
    if kind == "contact":
        contact = _clean(
            {"displayName": content.get("display_name"), "vcard": content.get("vcard")}
        )
        return "contactMessage", {"contactMessage": contact}
    if kind == "poll":
        options = content.get("options") or []
        poll = {
            "name": text or "",
            "options": [{"optionName": str(o)} for o in options],
            "selectableOptionsCount": int(content.get("selectable") or 0),
        }
        return "pollCreationMessageV3", {"pollCreationMessageV3": poll}
    if kind == "group_invite":
        invite = _clean(
            {
                "groupJid": content.get("group_id"),
                "inviteCode": str(content.get("link") or "").rsplit("/", 1)[-1] or None,
                "groupName": content.get("subject"),
                "caption": text,
            }
        )
        return "groupInviteMessage", {"groupInviteMessage": invite}
    if kind == "undecryptable":
        return None  # Evolution drops what Baileys could not decrypt; the resolved one follows
    if text:
        return "conversation", {"conversation": text}
    return None


def _push_name(data: Mapping[str, Any]) -> str | None:
    content: Mapping[str, Any] = data.get("content") or {}
    if content.get("push_name"):
        return str(content["push_name"])
    # as Evolution's fallback in a group (Baileys gives no push name): the sender's
    # number, or LID; zapfleet does so in one-to-one chats too (clients expect a string)
    sender = _sender_jid(data)
    return sender.split("@", 1)[0] if sender else None


def _received(data: Mapping[str, Any], ctx: Context) -> dict[str, Any] | None:
    mapped = _message_content(data, ctx)
    if mapped is None:
        return None
    message_type, message = mapped
    message_id = str(data["message_id"])
    return {
        "key": _key(data, message_id, False),
        "pushName": _push_name(data),
        "status": "DELIVERY_ACK",  # Evolution: a received message is delivered
        "message": message,
        "contextInfo": _context_info(data.get("content") or {}),
        "messageType": message_type,
        "messageTimestamp": int(data["timestamp"]),
        "instanceId": ctx.instance_id,
        "source": source_of(message_id),
    }


def _reaction(data: Mapping[str, Any], ctx: Context) -> dict[str, Any]:
    event_id = str(data["event_message_id"])
    reacted = {
        "remoteJid": jid(data["chat"]),
        "fromMe": bool(data["from_me"]),
        "id": data["message_id"],
    }
    return {
        "key": _key(data, event_id, False),
        "pushName": _push_name(data),
        "status": "DELIVERY_ACK",
        "message": {
            "reactionMessage": {
                "key": reacted,
                "text": "" if data.get("removed") else data.get("emoji", ""),
                "senderTimestampMs": str(int(float(data["timestamp"]) * 1000)),
            }
        },
        "contextInfo": None,
        "messageType": "reactionMessage",
        "messageTimestamp": int(data["timestamp"]),
        "instanceId": ctx.instance_id,
        "source": source_of(event_id),
    }


def _sent(data: Mapping[str, Any], event_ts: float, ctx: Context) -> dict[str, Any]:
    kind = str(data["type"])
    message_type = "conversation" if kind == "text" else _MEDIA_FIELD.get(kind, f"{kind}Message")
    if kind == "poll":
        message_type = "pollCreationMessageV3"
    return {
        "key": {"remoteJid": jid(data["to"]), "fromMe": True, "id": data["message_id"]},
        "pushName": "Você",  # Evolution's name of the account in its own messages
        "status": "PENDING",  # Baileys: a message just sent (the acks follow)
        "message": {},  # zapfleet's message.sent does not repeat the content
        "contextInfo": None,
        "messageType": message_type,
        "messageTimestamp": int(event_ts),
        "instanceId": ctx.instance_id,
        "source": source_of(str(data.get("engine_message_id") or "")),
    }


def _ack(data: Mapping[str, Any], ctx: Context) -> dict[str, Any]:
    return {
        "messageId": data["message_id"],
        "keyId": data["message_id"],
        "remoteJid": jid(data["peer"]),
        "fromMe": True,
        "participant": None,
        "status": _STATUS[data["status"]],
        "instanceId": ctx.instance_id,
    }


def _poll_vote(data: Mapping[str, Any], ctx: Context) -> dict[str, Any]:
    voter = _sender_jid(data)
    return {
        "messageId": data["message_id"],
        "keyId": data["message_id"],
        "remoteJid": jid(data["chat"]),
        "fromMe": bool(data["from_me"]),
        "participant": voter if data.get("is_group") else None,
        "status": "DELETED",  # sic: Evolution's status of an update without one
        "pollUpdates": [{"name": name, "voters": [voter]} for name in data.get("options", [])],
        "instanceId": ctx.instance_id,
    }


def _revoked(data: Mapping[str, Any]) -> dict[str, Any]:
    return _key(data, str(data["message_id"]), bool(data["from_me"]))


def _edited(data: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "key": _key(data, str(data["message_id"]), bool(data["from_me"])),
        "type": "MESSAGE_EDIT",
        "editedMessage": {"conversation": data.get("text") or ""},
        "timestampMs": str(int(float(data["timestamp"]) * 1000)),
    }


def _connection(data: Mapping[str, Any], ctx: Context) -> dict[str, Any]:
    state = data["state"]
    if state == SessionState.CONNECTED:
        return {
            "instance": ctx.instance,
            "wuid": ctx.sender,
            "profileName": None,
            "profilePictureUrl": None,
            "state": "open",
            "statusReason": 200,
        }
    if state in (SessionState.STARTING, SessionState.PAIRING, SessionState.RECONNECTING):
        return {"instance": ctx.instance, "state": "connecting", "statusReason": 200}
    reason = str(data.get("reason") or "")
    logged_out = state == SessionState.LOGGED_OUT or "logged out" in reason
    return {
        "instance": ctx.instance,
        "state": "close",
        "statusReason": _LOGGED_OUT if logged_out else _CONNECTION_CLOSED,
    }


def _qr(data: Mapping[str, Any], ctx: Context) -> dict[str, Any]:
    code = str(data["qr"])
    return {
        "qrcode": {
            "instance": ctx.instance,
            "pairingCode": None,
            "code": code,
            "base64": qr_data_url(code),
        }
    }


def _presence(data: Mapping[str, Any]) -> dict[str, Any]:
    who = _sender_jid(data) or jid(data["chat"])
    return {
        "id": jid(data["chat"]),
        "presences": {who: {"lastKnownPresence": _PRESENCE[data["state"]]}},
    }


def _call(data: Mapping[str, Any], status: str, ts: float) -> dict[str, Any]:
    caller = _sender_jid(data)
    group = data.get("group")
    return {
        "id": data["call_id"],
        "from": caller,
        "chatId": jid(group) if group else caller,
        "date": date_time(ts),
        "offline": False,
        "status": status,
        "isVideo": bool(data["video"]),
        "isGroup": bool(data["is_group"]),
        "groupJid": jid(group) if group else None,
    }


def _group_metadata(data: Mapping[str, Any]) -> dict[str, Any]:
    group: Mapping[str, Any] | None = data.get("group")
    if not group:
        return _clean({"id": data["group_id"], "author": jid(data.get("by"))})
    settings: Mapping[str, Any] = group.get("settings") or {}
    participants = [
        {"id": jid(p["id"]), "admin": None if p.get("role", "member") == "member" else p["role"]}
        for p in group.get("participants") or []
    ]
    created = group.get("created_at")
    return _clean(
        {
            "id": group["id"],
            "subject": group.get("subject"),
            "owner": jid(group.get("owner")),
            "creation": int(created) if created is not None else None,
            "desc": group.get("description"),
            "restrict": bool(settings.get("locked", False)),
            "announce": bool(settings.get("announce", False)),
            "ephemeralDuration": settings.get("ephemeral_s") or None,
            "size": len(participants),
            "participants": participants,
            "author": jid(data.get("by")),
        }
    )


def _group_update(data: Mapping[str, Any]) -> dict[str, Any]:
    update: dict[str, Any] = {"id": data["group_id"], "author": jid(data.get("by"))}
    for name, value in (data.get("changes") or {}).items():
        update[_GROUP_CHANGE.get(name, name)] = value
    return _clean(update)


def _participants(data: Mapping[str, Any]) -> dict[str, Any]:
    action = data.get("action") or "modify"
    return {
        "id": data["group_id"],
        "author": jid(data.get("by")),
        "participants": [jid(p) for p in data.get("participants") or []],
        "action": _GROUP_ACTION.get(action, action),
    }


def _left(data: Mapping[str, Any], ctx: Context) -> dict[str, Any]:
    return {
        "id": data["group_id"],
        "author": jid(data.get("by")),
        "participants": [ctx.sender] if ctx.sender else [],
        "action": "remove",
    }


def evolution_data(event: Mapping[str, Any], ctx: Context) -> tuple[str, Any] | None:
    """(Evolution configuration name, Baileys-shaped ``data``) of a zapfleet event, or
    None when it is not sent in Evolution format."""
    try:
        kind = EventType(event["type"])
    except ValueError:
        return None
    name = EVOLUTION_EVENT.get(kind)
    if name is None:
        return None
    data: Mapping[str, Any] = event.get("data") or {}
    ts = float(event.get("ts") or time.time())
    mapped: Any
    if kind is EventType.MESSAGE_RECEIVED:
        mapped = _received(data, ctx)
    elif kind is EventType.MESSAGE_REACTION:
        mapped = _reaction(data, ctx)
    elif kind is EventType.MESSAGE_SENT:
        mapped = _sent(data, ts, ctx)
    elif kind is EventType.MESSAGE_ACK:
        mapped = _ack(data, ctx)
    elif kind is EventType.MESSAGE_POLL_VOTE:
        mapped = _poll_vote(data, ctx)
    elif kind is EventType.MESSAGE_REVOKED:
        mapped = _revoked(data)
    elif kind is EventType.MESSAGE_EDITED:
        mapped = _edited(data)
    elif kind is EventType.SESSION_STATUS:
        mapped = _connection(data, ctx)
    elif kind is EventType.SESSION_QR:
        mapped = _qr(data, ctx)
    elif kind is EventType.CHAT_PRESENCE:
        mapped = _presence(data)
    elif kind is EventType.CALL_RECEIVED:
        mapped = _call(data, "offer", ts)
    elif kind is EventType.CALL_REJECTED:
        mapped = _call(data, "reject", ts)
    elif kind is EventType.GROUP_JOINED:
        mapped = [_group_metadata(data)]  # Baileys: groups.upsert carries a list
    elif kind is EventType.GROUP_UPDATED:
        mapped = [_group_update(data)]
    elif kind is EventType.GROUP_PARTICIPANTS:
        mapped = _participants(data)
    else:  # GROUP_LEFT
        mapped = _left(data, ctx)
    if mapped is None:
        return None
    return name, mapped


def envelope(event: Mapping[str, Any], ctx: Context) -> dict[str, Any] | None:
    """The Evolution webhook body of a zapfleet event, or None (not sent in this format)."""
    found = evolution_data(event, ctx)
    if found is None:
        return None
    name, data = found
    return {
        "event": BODY_EVENT[name],
        "instance": ctx.instance,
        "data": data,
        "destination": ctx.destination,
        "date_time": date_time(float(event.get("ts") or time.time())),
        "sender": ctx.sender,
        "server_url": ctx.server_url,
        "apikey": ctx.apikey,
    }


def media_id(event: Mapping[str, Any]) -> str | None:
    """The stored file of a received media message (``data.media.id`` when stored)."""
    if event.get("type") != EventType.MESSAGE_RECEIVED:
        return None
    media = (event.get("data") or {}).get("media")
    if isinstance(media, dict) and media.get("stored") and media.get("id"):
        return str(media["id"])
    return None


__all__ = [
    "BODY_EVENT",
    "EVOLUTION_EVENT",
    "EVOLUTION_EVENTS",
    "UNMAPPED",
    "Context",
    "EvolutionFilter",
    "envelope",
    "event_types",
    "evolution_data",
    "jid",
    "media_id",
    "url_suffix",
]

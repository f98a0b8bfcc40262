"""Pure functions over neonize's protos: JIDs, outbound message builders and inbound decoders.

No FFI call, no session state: the :class:`~node_agent.engines.neonize.NeonizeSession`
uses them to build what it sends and to read what whatsmeow delivers, and tests check
them offline (tests/test_conversations_neonize.py, tests/test_neonize_media.py).
"""

from __future__ import annotations

import io
import time
from collections import OrderedDict
from typing import Any, Literal

from contract.protocol import (
    ImageContent,
    VideoContent,
)
from node_agent.engines._base import (
    Inbound,
    InboundMedia,
    PresenceSeen,
)
from node_agent.link_preview import LinkPreview
from node_agent.media import MediaPayload


def _parse_jid(text: str) -> Any:
    """The JID of a chat id (contract/chat_ids.py): phone digits or ``user@server``."""
    from neonize.utils.jid import build_jid

    user, _, server = text.partition("@")
    return build_jid(user, server or "s.whatsapp.net")


def jid_text(jid: Any) -> str:
    """``user@server`` of a JID proto ("" when empty)."""
    if jid is None or not jid.User:
        return ""
    return f"{jid.User}@{jid.Server}"


def phone_of(jid: Any) -> str | None:
    """The phone number (E.164 digits) of a JID on the phone server, else None: a LID
    is never taken for a phone number."""
    if jid is None or not jid.User or jid.Server != "s.whatsapp.net":
        return None
    return str(jid.User)


def lid_of(jid: Any) -> str | None:
    if jid is None or not jid.User or jid.Server != "lid":
        return None
    return f"{jid.User}@lid"


def inbound_of(event: Any) -> Inbound | None:
    """The :class:`Inbound` of a whatsmeow message event (None for our own messages).

    With LID addressing ``Sender`` is the LID and ``SenderAlt`` the phone (or the other
    way round): the phone goes to ``sender`` only when it is one, the LID to
    ``sender_lid``; a LID-only sender has ``sender`` None until the phone is resolved.
    In a group ``chat`` is the group and ``sender`` the participant."""
    info = event.Info
    source = info.MessageSource
    if source.IsFromMe:
        return None
    kind, text, extra = describe_message(event.Message)
    if event.IsEdit and kind != "edit" and event.HasField("Raw"):
        # whatsmeow unwrapped the edit (Message = the new content): the target is in Raw
        raw_kind, raw_text, raw_extra = describe_message(event.Raw)
        if raw_kind == "edit":
            kind, text, extra = raw_kind, raw_text, raw_extra
    phone = phone_of(source.Sender) or phone_of(source.SenderAlt)
    lid = lid_of(source.Sender) or lid_of(source.SenderAlt)
    content: dict[str, object] = dict(extra)
    if info.Pushname:
        content["push_name"] = str(info.Pushname)
    chat = None
    if source.IsGroup or source.Chat.Server in ("g.us", "newsletter"):
        chat = jid_text(source.Chat)
    return Inbound(
        message_id=str(info.ID),
        sender=phone,
        sender_lid=lid,
        chat=chat,
        type=kind,
        timestamp=float(info.Timestamp) / (1000 if info.Timestamp > 10**11 else 1),
        text=text,
        content=content or None,
        media=inbound_media(event.Message),
    )


def _bounded_put(store: OrderedDict[str, Any], key: str, value: Any, limit: int = 2_000) -> None:
    store[key] = value
    if len(store) > limit:
        store.popitem(last=False)


def undecryptable_of(event: Any) -> Inbound | None:
    """The ``message.received`` of a message WhatsApp could not decrypt yet ("waiting for
    this message"): type ``undecryptable``; whatsmeow asks the sender's phone to send it
    again, and the content arrives later as a message with the same id."""
    info = event.Info
    source = info.MessageSource
    if source.IsFromMe:
        return None
    chat = None
    if source.IsGroup or source.Chat.Server in ("g.us", "newsletter"):
        chat = jid_text(source.Chat)
    return Inbound(
        message_id=str(info.ID),
        sender=phone_of(source.Sender) or phone_of(source.SenderAlt),
        sender_lid=lid_of(source.Sender) or lid_of(source.SenderAlt),
        chat=chat,
        type="undecryptable",
        timestamp=float(info.Timestamp) / (1000 if info.Timestamp > 10**11 else 1),
        content={
            "unavailable": bool(event.IsUnavailable),
            "hidden": int(event.DecryptFailMode) == 2,  # DECRYPT_FAIL_HIDE (SHOW is 1)
        },
    )


def participant_ids(info: Any) -> list[str]:
    """Chat ids of a group's participants as the group addresses them (its JID: a phone,
    or a LID in a LID-addressed group) — what ``mentionedJID`` must name."""
    found = []
    for participant in info.Participants:
        chat = phone_of(participant.JID) or jid_text(participant.JID)
        if chat:
            found.append(chat)
    return found


def chat_presence_args(state: str) -> tuple[Any, Any]:
    """neonize's (ChatPresence, ChatPresenceMedia) of a presence state."""
    from neonize.utils.enum import ChatPresence, ChatPresenceMedia

    if state == "paused":
        return ChatPresence.CHAT_PRESENCE_PAUSED, ChatPresenceMedia.CHAT_PRESENCE_MEDIA_TEXT
    media = (
        ChatPresenceMedia.CHAT_PRESENCE_MEDIA_AUDIO
        if state == "recording"
        else (ChatPresenceMedia.CHAT_PRESENCE_MEDIA_TEXT)
    )
    return ChatPresence.CHAT_PRESENCE_COMPOSING, media


def presence_of(event: Any) -> PresenceSeen | None:
    """The :class:`PresenceSeen` of a whatsmeow ChatPresence event (State 1 composing,
    2 paused; Media 2 audio = recording)."""
    source = event.MessageSource
    if source.IsFromMe:
        return None
    state: Literal["typing", "recording", "paused"]
    if int(event.State) == 2:
        state = "paused"
    else:
        state = "recording" if int(event.Media) == 2 else "typing"
    phone = phone_of(source.Sender) or phone_of(source.SenderAlt)
    lid = lid_of(source.Sender) or lid_of(source.SenderAlt)
    if source.IsGroup:
        chat = jid_text(source.Chat)
    else:
        chat = phone_of(source.Chat) or phone or jid_text(source.Chat)
    return PresenceSeen(chat=chat, sender=phone, sender_lid=lid, state=state)


def mention_jid(chat: str) -> str:
    """The JID text WhatsApp expects in ``mentionedJID`` for a chat id."""
    return chat if "@" in chat else f"{chat}@s.whatsapp.net"


def build_text(
    text: str,
    *,
    reply_to: str | None = None,
    quoted: tuple[str, Any] | None = None,
    mentions: list[str] | None = None,
    preview: LinkPreview | None = None,
) -> Any:
    """A text message; a reply or mentions make it an ``extendedTextMessage`` with a
    ``contextInfo`` (quoted id, its sender, the quoted content, mentioned JIDs); a link
    preview fills its ``matchedText``, ``title`` and ``description``."""
    from neonize.proto.waE2E import WAWebProtobufsE2E_pb2 as e2e

    if reply_to is None and not mentions and preview is None:
        return e2e.Message(conversation=text)
    extended = e2e.ExtendedTextMessage(text=text)
    if preview is not None:
        extended.matchedText = preview.url
        extended.title = preview.title
        if preview.description:
            extended.description = preview.description
    if reply_to is None and not mentions:
        return e2e.Message(extendedTextMessage=extended)
    context = e2e.ContextInfo()
    if reply_to is not None:
        context.stanzaID = reply_to
        if quoted is not None:
            participant, message = quoted
            if participant:
                context.participant = participant
            if message is not None:
                context.quotedMessage.CopyFrom(message)
    if mentions:
        context.mentionedJID.extend(dict.fromkeys(mention_jid(m) for m in mentions))
    extended.contextInfo.CopyFrom(context)
    return e2e.Message(extendedTextMessage=extended)


def build_edit(chat: str, message_id: str, text: str, now_ms: int | None = None) -> Any:
    """whatsmeow's ``BuildEdit``: a MESSAGE_EDIT protocol message inside ``editedMessage``."""
    from neonize.proto.waCommon.WACommon_pb2 import MessageKey
    from neonize.proto.waE2E import WAWebProtobufsE2E_pb2 as e2e

    protocol = e2e.ProtocolMessage(
        key=MessageKey(remoteJID=chat, fromMe=True, ID=message_id),
        type=e2e.ProtocolMessage.MESSAGE_EDIT,
        editedMessage=e2e.Message(conversation=text),
        timestampMS=now_ms if now_ms is not None else int(time.time() * 1000),
    )
    return e2e.Message(
        editedMessage=e2e.FutureProofMessage(message=e2e.Message(protocolMessage=protocol))
    )


def build_revoke(chat: str, message_id: str) -> Any:
    """whatsmeow's ``BuildRevoke`` of our own message: a REVOKE protocol message."""
    from neonize.proto.waCommon.WACommon_pb2 import MessageKey
    from neonize.proto.waE2E import WAWebProtobufsE2E_pb2 as e2e

    return e2e.Message(
        protocolMessage=e2e.ProtocolMessage(
            key=MessageKey(remoteJID=chat, fromMe=True, ID=message_id),
            type=e2e.ProtocolMessage.REVOKE,
        )
    )


def build_poll(name: str, options: list[str], selectable: int, secret: bytes | None = None) -> Any:
    """whatsmeow's ``BuildPollCreation``: the poll, and the 32-byte message secret votes
    are encrypted with (``selectable`` 0 = any number of options)."""
    import secrets as _secrets

    from neonize.proto.waE2E import WAWebProtobufsE2E_pb2 as e2e

    if selectable < 0 or selectable > len(options):
        selectable = 0
    return e2e.Message(
        pollCreationMessage=e2e.PollCreationMessage(
            name=name,
            options=[e2e.PollCreationMessage.Option(optionName=o) for o in options],
            selectableOptionsCount=selectable,
        ),
        messageContextInfo=e2e.MessageContextInfo(
            messageSecret=secret if secret is not None else _secrets.token_bytes(32)
        ),
    )


def poll_option_names(options: list[str], selected: list[bytes]) -> list[str]:
    """The names of the options a decrypted vote selected: WhatsApp sends the SHA-256 of
    each chosen option's name; unknown hashes are left out."""
    import hashlib

    by_hash = {hashlib.sha256(o.encode()).digest(): o for o in options}
    return [by_hash[h] for h in selected if h in by_hash]


def vcard(name: str, phone: str) -> str:
    digits = "".join(c for c in phone if c.isdigit())
    safe = name.replace("\n", " ").replace(";", ",")
    return f"BEGIN:VCARD\nVERSION:3.0\nFN:{safe}\nTEL;type=CELL;waid={digits}:+{digits}\nEND:VCARD"


def describe_message(message: Any) -> tuple[str, str | None, dict[str, object]]:
    """(type, text, extra) of a WhatsApp message proto, for ``message.received``."""
    if message is None:
        return "unknown", None, {}
    if message.HasField("editedMessage") and message.editedMessage.HasField("message"):
        message = message.editedMessage.message  # FutureProofMessage around the edit
    message, wrapped_once = unwrap_view_once(message)
    if message.HasField("protocolMessage"):
        protocol = message.protocolMessage
        target: dict[str, object] = {"message_id": str(protocol.key.ID)}
        if protocol.type == 14:  # MESSAGE_EDIT
            _, text, _ = describe_message(protocol.editedMessage)
            return "edit", text, target
        if protocol.type == 0:  # REVOKE
            return "revoke", None, target
        return "other", None, {}
    if message.conversation:
        return "text", str(message.conversation), {}
    if message.HasField("extendedTextMessage"):
        extended = message.extendedTextMessage
        context = context_of(extended.contextInfo)
        if extended.matchedText:
            context["preview"] = {
                "url": str(extended.matchedText),
                "title": str(extended.title),
                "description": str(extended.description) or None,
            }
        return "text", str(extended.text), context
    for poll_field in ("pollCreationMessage", "pollCreationMessageV2", "pollCreationMessageV3"):
        if message.HasField(poll_field):
            poll = getattr(message, poll_field)
            return (
                "poll",
                str(poll.name),
                {
                    "options": [str(o.optionName) for o in poll.options],
                    "selectable": int(poll.selectableOptionsCount),
                },
            )
    if message.HasField("groupInviteMessage"):  # groups (issue 16)
        invite = message.groupInviteMessage
        return (
            "group_invite",
            str(invite.caption) or str(invite.groupName),
            {
                "group_id": str(invite.groupJID),
                "subject": str(invite.groupName),
                "link": "https://chat.whatsapp.com/" + str(invite.inviteCode),
                "expires_at": float(invite.inviteExpiration) or None,
            },
        )
    if message.HasField("pollUpdateMessage"):
        return (
            "poll_vote",
            None,
            {"message_id": str(message.pollUpdateMessage.pollCreationMessageKey.ID)},
        )
    for field, kind in (
        ("imageMessage", "image"),
        ("videoMessage", "video"),
        ("audioMessage", "audio"),
        ("documentMessage", "document"),
        ("stickerMessage", "sticker"),
    ):
        if message.HasField(field):
            part = getattr(message, field)
            extra: dict[str, object] = {
                "mimetype": str(part.mimetype),
                "size": int(part.fileLength),
            }
            if wrapped_once or getattr(part, "viewOnce", False):
                extra["view_once"] = True
            caption = getattr(part, "caption", "") or None
            return kind, caption, extra
    if message.HasField("locationMessage"):
        loc = message.locationMessage
        return (
            "location",
            None,
            {"latitude": loc.degreesLatitude, "longitude": loc.degreesLongitude},
        )
    if message.HasField("contactMessage"):
        return "contact", None, {"display_name": str(message.contactMessage.displayName)}
    if message.HasField("reactionMessage"):
        reaction = message.reactionMessage
        emoji = str(reaction.text)
        return "reaction", emoji, {"message_id": str(reaction.key.ID), "emoji": emoji}
    return "other", None, {}


_VIEW_ONCE_WRAPPERS = ("viewOnceMessage", "viewOnceMessageV2", "viewOnceMessageV2Extension")


def unwrap_view_once(message: Any) -> tuple[Any, bool]:
    """The message inside a view-once wrapper (older clients send FutureProofMessages
    ``viewOnceMessage``/``V2``/``V2Extension``; current ones set ``viewOnce`` on the media
    part instead), and whether it was wrapped."""
    for wrapper in _VIEW_ONCE_WRAPPERS:
        if message.HasField(wrapper) and getattr(message, wrapper).HasField("message"):
            return getattr(message, wrapper).message, True
    return message, False


def context_of(context: Any) -> dict[str, object]:
    """What a ``contextInfo`` tells a receiver: the quoted message and the mentions."""
    extra: dict[str, object] = {}
    if context.stanzaID:
        extra["reply_to"] = str(context.stanzaID)
    mentions = []
    for jid in context.mentionedJID:
        user, _, server = str(jid).partition("@")
        mentions.append(user if server == "s.whatsapp.net" else str(jid))
    if mentions:
        extra["mentions"] = mentions
    return extra


_MEDIA_FIELDS = (
    "imageMessage",
    "videoMessage",
    "audioMessage",
    "documentMessage",
    "stickerMessage",
)


def inbound_media(message: Any) -> InboundMedia | None:
    """What a received media message says of its file, with the message itself as the
    handle ``download_any`` takes (it finds the media part and decrypts it)."""
    if message is None:
        return None
    message, _ = unwrap_view_once(message)
    for field in _MEDIA_FIELDS:
        if message.HasField(field):
            part = getattr(message, field)
            seconds = getattr(part, "seconds", 0) or None
            return InboundMedia(
                mimetype=str(part.mimetype) or "application/octet-stream",
                size=int(part.fileLength),
                filename=str(getattr(part, "fileName", "")) or None,
                sha256=bytes(part.fileSHA256).hex() or None,
                seconds=float(seconds) if seconds else None,
                handle=message,
            )
    return None


def image_message(fields: dict[str, Any], content: ImageContent, thumbnail: bytes | None) -> Any:
    """An imageMessage of bytes already uploaded; ``viewOnce`` set for view-once media
    (the flag whatsmeow's current clients send, no viewOnceMessage wrapper)."""
    from neonize.proto.waE2E import WAWebProtobufsE2E_pb2 as e2e

    extra: dict[str, Any] = {"viewOnce": True} if content.view_once else {}
    return e2e.Message(
        imageMessage=e2e.ImageMessage(
            **fields, caption=content.caption, JPEGThumbnail=thumbnail, **extra
        )
    )


def video_message(fields: dict[str, Any], content: VideoContent) -> Any:
    """A videoMessage of bytes already uploaded (``viewOnce`` as for images)."""
    from neonize.proto.waE2E import WAWebProtobufsE2E_pb2 as e2e

    extra: dict[str, Any] = {"viewOnce": True} if content.view_once else {}
    return e2e.Message(videoMessage=e2e.VideoMessage(**fields, caption=content.caption, **extra))


def audio_message(
    fields: dict[str, Any], media: MediaPayload, voice_note: bool, *, view_once: bool = False
) -> Any:
    """An audioMessage; a voice note (PTT) carries its duration and waveform, which
    WhatsApp needs to draw it as a voice note (node_agent/media_convert.py made them)."""
    from neonize.proto.waE2E import WAWebProtobufsE2E_pb2 as e2e

    extra: dict[str, Any] = {"viewOnce": True} if view_once else {}
    if media.seconds is not None:
        extra["seconds"] = max(1, round(media.seconds))
    if voice_note and media.waveform:
        extra["waveform"] = media.waveform
    return e2e.Message(audioMessage=e2e.AudioMessage(**fields, PTT=voice_note, **extra))


def sticker_message(fields: dict[str, Any], media: MediaPayload) -> Any:
    """A stickerMessage of WebP bytes already uploaded (as an image, like WhatsApp's)."""
    from neonize.proto.waE2E import WAWebProtobufsE2E_pb2 as e2e

    extra: dict[str, Any] = {}
    if media.width is not None and media.height is not None:
        extra["width"], extra["height"] = media.width, media.height
    return e2e.Message(
        stickerMessage=e2e.StickerMessage(**fields, isAnimated=media.animated, **extra)
    )


def _jpeg_thumbnail(data: bytes) -> bytes | None:
    """A small JPEG preview of an image (run in a thread: decoding is CPU work)."""
    try:
        from PIL import Image

        with Image.open(io.BytesIO(data)) as image:
            image.thumbnail((200, 200))
            out = io.BytesIO()
            image.convert("RGB").save(out, format="JPEG", quality=60)
            return out.getvalue()
    except Exception:
        return None

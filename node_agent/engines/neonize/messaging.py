"""Sends, read marks and chat presence of a neonize session (issue 15): a mixin of
:class:`~node_agent.engines.neonize.session.NeonizeSession`; every call goes through the
session's ``_call`` (shared FFI lock, bounded wait) and only while the socket is online."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Literal

import msgspec

from contract.protocol import (
    AudioContent,
    ContactContent,
    DocumentContent,
    EditContent,
    ImageContent,
    LocationContent,
    MessageContent,
    PollContent,
    ReactionContent,
    RevokeContent,
    StickerContent,
    TextContent,
    VideoContent,
)
from node_agent.engines._base import (
    EngineError,
    Inbound,
    Receipt,
)
from node_agent.engines.neonize.protos import (
    _bounded_put,
    _jpeg_thumbnail,
    _parse_jid,
    audio_message,
    build_edit,
    build_poll,
    build_revoke,
    build_text,
    chat_presence_args,
    image_message,
    jid_text,
    participant_ids,
    poll_option_names,
    presence_of,
    sticker_message,
    vcard,
    video_message,
)
from node_agent.link_preview import PreviewedText
from node_agent.media import MediaPayload

if TYPE_CHECKING:
    from node_agent.engines.neonize.generation import _Generation

log = logging.getLogger(__name__)


class MessagingMixin:
    if TYPE_CHECKING:
        _gen: _Generation | None
        _sent: OrderedDict[str, None]
        _recent: OrderedDict[str, tuple[str, Any]]
        _polls: OrderedDict[str, tuple[str, list[str]]]
        _group_cache: dict[str, Any]

        def _online(self) -> _Generation: ...
        async def _call(self, awaitable: Any) -> Any: ...
        def _report(self, event: Any) -> None: ...

    async def send(
        self,
        to: str,
        content: MessageContent,
        message_id: str,
        media: MediaPayload | None = None,
    ) -> str:
        gen = self._online()
        jid = _parse_jid(to)
        try:
            message = await self._build(gen, jid, content, media)
            response = await self._call(gen.client.send_message(jid, message))
        except EngineError:
            raise
        except TimeoutError:
            raise EngineError("send timed out") from None
        except Exception as exc:
            raise EngineError(f"send failed: {exc}") from None
        engine_id = str(response.ID)
        self._sent[engine_id] = None
        if len(self._sent) > 10_000:
            self._sent.popitem(last=False)
        self._remember_sent(engine_id, content, message)
        # whatsmeow returns after the server accepted the message: that is the server ack
        self._report(Receipt(message_id=engine_id, status="server", peer=to))
        return engine_id

    async def _uploaded(self, gen: _Generation, media: MediaPayload, kind: Any) -> dict[str, Any]:
        """Upload the bytes to WhatsApp's media servers: the fields every media message
        (image, video, audio, document) carries about them."""
        up = await self._call(gen.client.upload(media.data, kind))
        return {
            "URL": up.url,
            "directPath": up.DirectPath,
            "fileEncSHA256": up.FileEncSHA256,
            "fileLength": up.FileLength,
            "fileSHA256": up.FileSHA256,
            "mediaKey": up.MediaKey,
            "mimetype": media.mimetype,
        }

    async def _build(
        self, gen: _Generation, jid: Any, content: MessageContent, media: MediaPayload | None
    ) -> Any:
        from neonize.proto.waCommon.WACommon_pb2 import MessageKey
        from neonize.proto.waE2E import WAWebProtobufsE2E_pb2 as e2e
        from neonize.utils.enum import MediaType

        if isinstance(content, TextContent):
            mentions = list(content.mentions or [])
            if content.mention_all:
                mentions += await self._participants(gen, jid)
            quote = self._recent.get(content.reply_to) if content.reply_to else None
            return build_text(
                content.text,
                reply_to=content.reply_to,
                quoted=quote,
                mentions=mentions,
                preview=content.preview if isinstance(content, PreviewedText) else None,
            )
        if isinstance(content, EditContent):
            return build_edit(jid_text(jid), content.message_id, content.text)
        if isinstance(content, RevokeContent):
            return build_revoke(jid_text(jid), content.message_id)
        if isinstance(content, PollContent):
            return build_poll(content.name, content.options, content.selectable)
        if isinstance(content, LocationContent):
            return e2e.Message(
                locationMessage=e2e.LocationMessage(
                    degreesLatitude=content.latitude,
                    degreesLongitude=content.longitude,
                    name=content.name,
                    address=content.address,
                )
            )
        if isinstance(content, ContactContent):
            return e2e.Message(
                contactMessage=e2e.ContactMessage(
                    displayName=content.display_name,
                    vcard=vcard(content.display_name, content.phone),
                )
            )
        if isinstance(content, ReactionContent):
            from_me = content.message_id in self._sent
            return e2e.Message(
                reactionMessage=e2e.ReactionMessage(
                    key=MessageKey(
                        remoteJID=f"{jid.User}@{jid.Server}",
                        fromMe=from_me,
                        ID=content.message_id,
                    ),
                    text=content.emoji,
                    senderTimestampMS=int(time.time() * 1000),
                )
            )
        if media is None:
            raise EngineError("media content without media bytes")
        if isinstance(content, ImageContent):
            fields = await self._uploaded(gen, media, MediaType.MediaImage)
            thumbnail = await asyncio.to_thread(_jpeg_thumbnail, media.data)
            return image_message(fields, content, thumbnail)
        if isinstance(content, VideoContent):
            fields = await self._uploaded(gen, media, MediaType.MediaVideo)
            return video_message(fields, content)
        if isinstance(content, AudioContent):
            fields = await self._uploaded(gen, media, MediaType.MediaAudio)
            return audio_message(fields, media, content.voice_note, view_once=content.view_once)
        if isinstance(content, StickerContent):
            fields = await self._uploaded(gen, media, MediaType.MediaImage)
            return sticker_message(fields, media)
        if isinstance(content, DocumentContent):
            fields = await self._uploaded(gen, media, MediaType.MediaDocument)
            name = media.filename or "document"
            return e2e.Message(
                documentMessage=e2e.DocumentMessage(
                    **fields, caption=content.caption, fileName=name, title=name
                )
            )
        raise EngineError(f"unsupported content {type(content).__name__}")

    async def mark_read(self, chat: str, message_ids: list[str]) -> None:
        """Read receipts (whatsmeow ``MarkRead``), one call per sender: in a group each
        message's participant, else the chat itself."""
        from neonize.utils.enum import ReceiptType

        gen = self._online()
        chat_jid = _parse_jid(chat)
        by_sender: dict[str, list[str]] = {}
        for message_id in message_ids:
            participant = self._recent.get(message_id, ("", None))[0]
            by_sender.setdefault(participant or jid_text(chat_jid), []).append(message_id)
        for sender, ids in by_sender.items():
            try:
                await self._call(
                    gen.client.mark_read(
                        *ids, chat=chat_jid, sender=_parse_jid(sender), receipt=ReceiptType.READ
                    )
                )
            except TimeoutError:
                raise EngineError("mark read timed out") from None
            except Exception as exc:
                raise EngineError(f"mark read failed: {exc}") from None

    async def send_presence(
        self, chat: str, state: Literal["typing", "recording", "paused"]
    ) -> None:
        """Typing / recording indicators (whatsmeow ``SendChatPresence``)."""
        gen = self._online()
        presence, media = chat_presence_args(state)
        try:
            await self._call(gen.client.send_chat_presence(_parse_jid(chat), presence, media))
        except TimeoutError:
            raise EngineError("chat presence timed out") from None
        except Exception as exc:
            raise EngineError(f"chat presence failed: {exc}") from None

    def _on_chat_presence(self, event: Any) -> None:
        seen = presence_of(event)
        if seen is not None:
            self._report(seen)

    async def _participants(self, gen: _Generation, jid: Any) -> list[str]:
        """Every participant of a group, as chat ids ("mention everyone")."""
        info = self._group_cache.get(jid_text(jid))
        if info is None:
            try:
                info = await self._call(gen.client.get_group_info(jid))
            except Exception as exc:
                raise EngineError(f"group participants unavailable: {exc}") from None
            self._group_cache[jid_text(jid)] = info
        return participant_ids(info)

    def _remember_sent(self, engine_id: str, content: MessageContent, message: Any) -> None:
        me = getattr(self._gen.client, "me", None) if self._gen is not None else None
        own = jid_text(me.JID) if me is not None and me.HasField("JID") else ""
        _bounded_put(self._recent, engine_id, (own, message))
        if isinstance(content, PollContent):
            _bounded_put(self._polls, engine_id, (content.name, list(content.options)))

    async def _poll_vote(self, event: Any, inbound: Inbound) -> Inbound | None:
        """Decrypt a poll vote (whatsmeow: ``decrypt_poll_vote``) and name the options."""
        content = dict(inbound.content or {})
        poll_id = str(content.get("message_id") or "")
        poll = self._polls.get(poll_id)
        gen = self._gen
        if poll is None or gen is None or not gen.link_up:
            log.info("poll vote for a poll this agent does not know", extra={"poll": poll_id})
            return None
        try:
            vote = await self._call(gen.client.decrypt_poll_vote(event))
        except Exception as exc:
            log.warning("poll vote not decryptable", extra={"error": repr(exc)})
            return None
        content["poll"] = poll[0]
        content["options"] = poll_option_names(poll[1], list(vote.selectedOptions))
        return msgspec.structs.replace(inbound, content=content)

    # -- events from Go ------------------------------------------------------------------

"""What a session's engine reports besides its connection: received messages (history,
inbound media stored, edits/revokes/reactions/votes through the ledger), receipts,
presence, group changes, calls and blocks — each turned into its event (issue 14: the
message-log part of :class:`~node_agent.supervisor.SessionSupervisor`, a mixin of it)."""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgspec

from contract.chat_ids import is_group
from contract.protocol import (
    EventType,
    MessageRecord,
    SessionSpec,
)
from node_agent.conversation import Ledger
from node_agent.engines._base import (
    BlockChanged,
    CallOffered,
    EngineSession,
    GroupEvent,
    Inbound,
    InboundMedia,
    PresenceSeen,
    Receipt,
)
from node_agent.events import EventPublisher
from node_agent.history import MessageLog
from node_agent.inbound_media import MediaStore
from node_agent.outbound import remember

if TYPE_CHECKING:
    from node_agent.engines._base import EngineSession

log = logging.getLogger(__name__)


class InboundMixin:
    if TYPE_CHECKING:
        spec: SessionSpec
        events: EventPublisher
        ledger: Ledger
        history: MessageLog
        media_store: MediaStore | None
        on_call_reject: Callable[[Any, CallOffered], None] | None  # with the supervisor
        _engine: EngineSession
        _engine_ids: OrderedDict[str, str]
        _media_tasks: set[asyncio.Task[None]]
        _block_state: OrderedDict[str, bool]

        @property
        def tenant(self) -> str: ...
        @property
        def session_id(self) -> str: ...
        @property
        def key(self) -> str: ...

    def _on_inbound(self, event: Inbound) -> None:
        chat = event.chat or event.sender or event.sender_lid or ""
        special = self.ledger.inbound_event(event, chat)
        if special is not None:  # an edit, revoke, reaction or poll vote
            self.events.emit(special[0], self.tenant, self.session_id, special[1])
            return
        self.ledger.on_received(event.message_id, chat)
        record = self.history.add(
            MessageRecord(
                message_id=event.message_id,
                direction="in",
                peer=chat,
                type=event.type,
                timestamp=event.timestamp,
                status="received",
                text=event.text,
            )
        )
        if event.resolves:  # the content of a message first reported undecryptable
            record.type, record.text = event.type, event.text
        data: dict[str, Any] = {
            "message_id": event.message_id,
            "from": event.sender,
            "from_lid": event.sender_lid,
            "chat": chat,
            "is_group": is_group(chat),
            "type": event.type,
            "text": event.text,
            "content": event.content,
            "timestamp": event.timestamp,
        }
        if event.resolves:
            data["resolves"] = True
        mode = self.spec.media.inbound
        if event.media is None or mode == "off":
            self.events.emit(EventType.MESSAGE_RECEIVED, self.tenant, self.session_id, data)
            return
        data["media"] = _describe(event.media)
        record.media = dict(data["media"])
        if mode == "metadata" or self.media_store is None:
            if mode == "store":  # the agent could not open zf_media (logged at start)
                data["media"].update(stored=False, error="the agent has no media store")
                record.media = dict(data["media"])
            self.events.emit(EventType.MESSAGE_RECEIVED, self.tenant, self.session_id, data)
            return
        # store: the event follows once the file is stored (or could not be)
        task = asyncio.create_task(self._store_inbound(event, data, record))
        self._media_tasks.add(task)
        task.add_done_callback(self._media_tasks.discard)

    async def _store_inbound(
        self, event: Inbound, data: dict[str, Any], record: MessageRecord
    ) -> None:
        """Download the file of a received message into ``zf_media``, then emit its
        ``message.received`` (node_agent/inbound_media.py)."""
        from node_agent.inbound_media import STORED, StoredMedia, new_media_id

        store = self.media_store
        media = event.media
        described: dict[str, Any] = data["media"]
        try:
            assert store is not None and media is not None
            if media.size > store.max_object_bytes:
                STORED.labels("too_large").inc()
                described["stored"] = False
                described["error"] = (
                    f"{media.size} bytes: larger than the {store.max_object_bytes} bytes stored"
                )
                return
            async with store.slots:
                blob = await self._engine.download(media)
                media_id = new_media_id()
                meta = StoredMedia(
                    tenant=self.tenant,
                    session_id=self.session_id,
                    message_id=event.message_id,
                    mimetype=media.mimetype,
                    filename=media.filename,
                )
                digest = await store.put(self.key, media_id, blob, meta)
            STORED.labels("stored").inc()
            described.update(id=media_id, stored=True, size=len(blob), sha256=digest)
            inline = self.spec.media.webhook_inline_max_bytes
            if inline and len(blob) <= inline:
                described["inline"] = True  # the webhook delivery adds the bytes (base64)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            STORED.labels("failed").inc()
            log.info("inbound media not stored", extra={"error": repr(exc)})
            described["stored"] = False
            described["error"] = f"not stored: {exc}"
        finally:
            record.media = dict(described)
            self.events.emit(EventType.MESSAGE_RECEIVED, self.tenant, self.session_id, data)

    def _on_receipt(self, event: Receipt) -> None:
        message_id = self._engine_ids.get(event.message_id, event.message_id)
        self.history.advance(message_id, event.status)
        self.events.emit(
            EventType.MESSAGE_ACK,
            self.tenant,
            self.session_id,
            {
                "message_id": message_id,
                "engine_message_id": event.message_id,
                "status": event.status,
                "peer": event.peer,
            },
        )

    def _on_presence(self, event: PresenceSeen) -> None:
        self.events.emit(
            EventType.CHAT_PRESENCE,
            self.tenant,
            self.session_id,
            {
                "chat": event.chat,
                "from": event.sender,
                "from_lid": event.sender_lid,
                "is_group": is_group(event.chat),
                "state": event.state,
            },
        )

    def _on_group(self, event: GroupEvent) -> None:
        data: dict[str, Any] = {"group_id": event.group_id, "by": event.by}
        if event.kind == "joined":
            event_type = EventType.GROUP_JOINED
            data["reason"] = event.reason
            data["group"] = msgspec.to_builtins(event.group) if event.group else None
        elif event.kind == "left":
            event_type = EventType.GROUP_LEFT
            data["reason"] = event.reason
        elif event.kind == "participants":
            event_type = EventType.GROUP_PARTICIPANTS
            data["action"] = event.action
            data["participants"] = list(event.participants)
        else:
            event_type = EventType.GROUP_UPDATED
            data["changes"] = dict(event.changes or {})
        self.events.emit(event_type, self.tenant, self.session_id, data)

    def _on_call_offered(self, event: CallOffered) -> None:
        settings = self.spec.calls
        self.events.emit(
            EventType.CALL_RECEIVED,
            self.tenant,
            self.session_id,
            {
                "call_id": event.call_id,
                "from": event.caller,
                "from_lid": event.caller_lid,
                "video": event.video,
                "is_group": event.is_group,
                "group": event.group,
                "timestamp": event.timestamp,
                "auto_reject": settings.reject,
            },
        )
        if settings.reject and self.on_call_reject is not None:
            self.on_call_reject(self, event)

    def _on_block_changed(self, event: BlockChanged) -> None:
        who = event.phone or event.lid or ""
        if self._block_state.get(who) is event.blocked:
            return  # already reported (our own change, echoed by WhatsApp)
        remember(self._block_state, who, event.blocked, limit=2_000)
        self.events.emit(
            EventType.CONTACT_BLOCKED,
            self.tenant,
            self.session_id,
            {"phone": event.phone, "lid": event.lid, "blocked": event.blocked},
        )


def _describe(media: InboundMedia) -> dict[str, Any]:
    """The ``media`` of a ``message.received`` event, before any download."""
    described: dict[str, Any] = {"mimetype": media.mimetype, "size": media.size}
    if media.filename:
        described["filename"] = media.filename
    if media.sha256:
        described["sha256"] = media.sha256
    if media.seconds is not None:
        described["seconds"] = media.seconds
    return described

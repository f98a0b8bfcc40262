"""Accepted sends survive their agent process (kill -9, OOM, a crash in neonize's Go glue).

The send queue of a session lives in memory; the outbox is its durable shadow in NATS:

- an accepted message is written to KV ``zf_outbox`` (key ``<session_id>.<digest of the
  message id>``; inline media bytes in the object store ``zf_outbox_media`` under the same
  name) *before* the agent answers "queued";
- it is forgotten once the event that ends it — ``message.sent``, or ``message.ack``
  ``failed`` — is stored in ``ZF_EVENTS`` (so a crash can never lose both the message and
  the news of what became of it);
- a session that starts — its agent restarted, or it moved to another node — queues what
  its outbox still holds first, oldest first.

Delivery is at-least-once: a crash after the engine sent a message but before its event
was stored sends it again after the restart. Entries expire after ``ttl_s`` (7 days).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time

import msgspec
from nats.js.api import KeyValueConfig, ObjectStoreConfig, StorageType
from nats.js.client import JetStreamContext
from nats.js.errors import NotFoundError, ObjectNotFoundError
from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore
from prometheus_client import Counter

from node_agent.media import MediaPayload
from node_agent.protocol import Event, EventType, SendMessage

log = logging.getLogger(__name__)

OUTBOX_BUCKET = "zf_outbox"
OUTBOX_MEDIA_BUCKET = "zf_outbox_media"

RESTORED = Counter(
    "zapfleet_agent_outbox_restored_total", "Accepted messages re-queued from the outbox"
)


class OutboxEntry(msgspec.Struct, kw_only=True):
    request: SendMessage
    queued_at: float
    mimetype: str | None = None  # set when inline media bytes are in the object store
    filename: str | None = None


_decoder = msgspec.json.Decoder(OutboxEntry)


def entry_key(session_id: str, message_id: str) -> str:
    return f"{session_id}.{hashlib.sha256(message_id.encode()).hexdigest()[:32]}"


class Outbox:
    def __init__(self, kv: KeyValue, media: ObjectStore) -> None:
        self.kv = kv
        self.media = media
        self._tasks: set[asyncio.Task[None]] = set()
        self._with_media: set[str] = set()  # keys whose media is in the object store

    @classmethod
    async def open(cls, js: JetStreamContext, ttl_s: float = 7 * 86400.0) -> Outbox:
        kv = await js.create_key_value(
            KeyValueConfig(bucket=OUTBOX_BUCKET, history=1, ttl=ttl_s, storage=StorageType.FILE)
        )
        media = await js.create_object_store(
            OUTBOX_MEDIA_BUCKET, config=ObjectStoreConfig(ttl=ttl_s, storage=StorageType.FILE)
        )
        return cls(kv, media)

    async def put(self, request: SendMessage, media: MediaPayload | None) -> None:
        """Durable before the agent says "queued"; raises when NATS cannot store it."""
        key = entry_key(request.session_id, request.message_id)
        entry = OutboxEntry(request=request, queued_at=time.time())
        if media is not None:
            await self.media.put(key, media.data)
            self._with_media.add(key)
            entry.mimetype, entry.filename = media.mimetype, media.filename
        await self.kv.put(key, msgspec.json.encode(entry))

    async def pending(self, session_id: str) -> list[tuple[SendMessage, MediaPayload | None]]:
        """What a starting session must queue first, oldest first."""
        entries: list[tuple[OutboxEntry, str]] = []
        watcher = await self.kv.watch(f"{session_id}.*", ignore_deletes=True)
        try:
            async for found in watcher:
                if found is None:  # the current values are all delivered
                    break
                if found.value:
                    entries.append((_decoder.decode(found.value), found.key))
        finally:
            with contextlib.suppress(Exception):
                await watcher.stop()  # type: ignore[no-untyped-call]
        entries.sort(key=lambda item: item[0].queued_at)
        restored: list[tuple[SendMessage, MediaPayload | None]] = []
        for entry, key in entries:
            payload = None
            if entry.mimetype is not None:
                try:
                    stored = await self.media.get(key)
                except (ObjectNotFoundError, NotFoundError):
                    log.warning(
                        "outbox media missing", extra={"message_id": entry.request.message_id}
                    )
                    continue
                self._with_media.add(key)
                payload = MediaPayload(
                    data=stored.data or b"", mimetype=entry.mimetype, filename=entry.filename
                )
            restored.append((entry.request, payload))
        RESTORED.inc(len(restored))
        return restored

    async def forget(self, session_id: str, message_id: str) -> None:
        key = entry_key(session_id, message_id)
        await self.kv.purge(key)
        if key in self._with_media:
            with contextlib.suppress(ObjectNotFoundError, NotFoundError):
                await self.media.delete(key)
            self._with_media.discard(key)

    def on_stored(self, event: Event) -> None:
        """EventPublisher hook: an event that ends a message makes its entry obsolete."""
        ended = event.type is EventType.MESSAGE_SENT or (
            event.type is EventType.MESSAGE_ACK and event.data.get("status") == "failed"
        )
        message_id = event.data.get("message_id")
        if not ended or not isinstance(message_id, str):
            return
        task = asyncio.create_task(self._forget_soon(event.session_id, message_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _forget_soon(self, session_id: str, message_id: str) -> None:
        for attempt in range(5):
            try:
                await self.forget(session_id, message_id)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # NATS away: the entry expires by TTL at worst
                log.debug("outbox forget failed", extra={"error": repr(exc)})
                await asyncio.sleep(0.5 * (attempt + 1))

    async def close(self, limit_s: float = 3.0) -> None:
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=limit_s)

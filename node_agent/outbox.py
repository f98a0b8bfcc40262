"""Accepted sends survive their agent process (kill -9, OOM, a crash in neonize's Go glue).

The send queue of a session lives in memory; the outbox is its durable shadow in NATS:

- an accepted message is written to KV ``zf_outbox`` (key ``<session_id>.<digest of the
  message id>``; inline media bytes in the object store ``zf_outbox_media`` under the same
  name) *before* the agent answers "queued";
- it is forgotten once the event that ends it — ``message.sent``, or ``message.ack``
  ``failed`` — is stored in ``ZF_EVENTS`` (so a crash can never lose both the message and
  the news of what became of it). Forgetting is in memory; every ``purge_interval_s`` one
  stream purge per session removes its entries below the oldest one still pending (a
  purge by sequence: no tombstone per message, and one request per session and round
  instead of one per message);
- a session that starts — its agent restarted, or it moved to another node — queues what
  its outbox still holds first, oldest first.

Delivery is at-least-once: a crash after the engine sent a message but before its
``message.sent`` was stored sends it again after the restart. Entries the purge has not
removed yet are no duplicate risk: a restore reads the session's ending events since its
oldest entry and skips what already ended. Entries expire after ``ttl_s`` (7 days).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from datetime import UTC, datetime

import msgspec
from nats.errors import TimeoutError as NatsTimeout
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    KeyValueConfig,
    ObjectStoreConfig,
    StorageType,
)
from nats.js.client import JetStreamContext
from nats.js.errors import NotFoundError, ObjectNotFoundError
from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore
from prometheus_client import Counter

from contract.protocol import EVENTS_STREAM, Event, EventType, SendMessage, event_subject
from node_agent.media import MediaPayload
from zapfleet._kv import scan
from zapfleet.natsjs import key_value, object_store

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
    # what media_convert.py found out of a sticker or voice note (kept for a restore)
    width: int | None = None
    height: int | None = None
    animated: bool = False
    seconds: float | None = None
    waveform: bytes | None = None


_decoder = msgspec.json.Decoder(OutboxEntry)
_event_decoder = msgspec.json.Decoder(Event)
CLOCK_MARGIN_S = 5.0  # entries carry the agent's clock, the stream the server's
FETCH_TIMEOUT_S = 1.0
ENDED_READ_LIMIT_S = 10.0


def _ends_message(event: Event) -> bool:
    return event.type is EventType.MESSAGE_SENT or (
        event.type is EventType.MESSAGE_ACK and event.data.get("status") == "failed"
    )


def entry_key(session_id: str, message_id: str) -> str:
    return f"{session_id}.{hashlib.sha256(message_id.encode()).hexdigest()[:32]}"


class Outbox:
    def __init__(
        self, js: JetStreamContext, kv: KeyValue, media: ObjectStore, purge_interval_s: float = 0.5
    ) -> None:
        self._js = js
        self.kv = kv
        self.media = media
        self.purge_interval_s = purge_interval_s
        self._stream = f"KV_{OUTBOX_BUCKET}"
        # per session, the stream sequence of each entry not yet forgotten, oldest first
        self._pending: dict[str, dict[str, int]] = {}
        self._newest: dict[str, int] = {}  # per session, the newest stored sequence
        self._dirty: set[str] = set()  # sessions with forgotten entries not yet purged
        # per session, forgotten entries the purges have not removed yet (they sit above
        # an older entry still pending): a restart of the session here must skip them
        self._done: dict[str, set[str]] = {}
        self._with_media: set[str] = set()  # keys whose media is in the object store
        self._purger: asyncio.Task[None] | None = None
        self._media_tasks: set[asyncio.Task[None]] = set()

    @classmethod
    async def open(
        cls, js: JetStreamContext, ttl_s: float = 7 * 86400.0, replicas: int = 1
    ) -> Outbox:
        kv = await key_value(
            js,
            KeyValueConfig(bucket=OUTBOX_BUCKET, history=1, ttl=ttl_s, storage=StorageType.FILE),
            replicas,
        )
        media = await object_store(
            js,
            OUTBOX_MEDIA_BUCKET,
            replicas,
            ObjectStoreConfig(ttl=ttl_s, storage=StorageType.FILE),
        )
        outbox = cls(js, kv, media)
        outbox._purger = asyncio.create_task(outbox._purge_loop(), name="outbox-purge")
        return outbox

    async def put(self, request: SendMessage, media: MediaPayload | None) -> None:
        """Durable before the agent says "queued"; raises when NATS cannot store it."""
        key = entry_key(request.session_id, request.message_id)
        entry = OutboxEntry(request=request, queued_at=time.time())
        if media is not None:
            await self.media.put(key, media.data)
            self._with_media.add(key)
            entry.mimetype, entry.filename = media.mimetype, media.filename
            entry.width, entry.height, entry.animated = media.width, media.height, media.animated
            entry.seconds, entry.waveform = media.seconds, media.waveform
        sequence = await self.kv.put(key, msgspec.json.encode(entry))
        self._track(request.session_id, key, sequence)

    def _track(self, session_id: str, key: str, sequence: int) -> None:
        self._pending.setdefault(session_id, {})[key] = sequence
        if sequence > self._newest.get(session_id, 0):
            self._newest[session_id] = sequence

    async def pending(
        self, session_id: str, tenant: str, name: str | None = None
    ) -> list[tuple[SendMessage, MediaPayload | None]]:
        """What a starting session must queue first, oldest first: its entries, less those
        whose end is already in ZF_EVENTS (purges lag by up to ``purge_interval_s``), and
        those this agent forgot itself (``_done``). ``session_id`` is the internal key;
        ``name`` the caller's name its events carry (the key when None)."""
        done = self._done.get(session_id, set())
        entries: list[tuple[OutboxEntry, str]] = []
        for found in await scan(self.kv, f"{session_id}.*"):
            if found.value and found.key not in done:
                entries.append((_decoder.decode(found.value), found.key))
                self._track(session_id, found.key, found.revision or 0)
        entries.sort(key=lambda item: item[0].queued_at)
        if entries:
            try:
                async with asyncio.timeout(ENDED_READ_LIMIT_S):
                    ended = await self._ended(
                        tenant, name or session_id, since=entries[0][0].queued_at
                    )
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # better sent twice than never
                log.warning("outbox: events unreadable, restoring all", extra={"error": repr(exc)})
                ended = set()
            for entry, _ in entries:
                if entry.request.message_id in ended:
                    self.forget(session_id, entry.request.message_id)
            log.info(
                "outbox entries of a starting session",
                extra={"session_id": session_id, "found": len(entries), "ended": len(ended)},
            )
            entries = [item for item in entries if item[0].request.message_id not in ended]
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
                    data=stored.data or b"",
                    mimetype=entry.mimetype,
                    filename=entry.filename,
                    width=entry.width,
                    height=entry.height,
                    animated=entry.animated,
                    seconds=entry.seconds,
                    waveform=entry.waveform,
                )
            restored.append((entry.request, payload))
        RESTORED.inc(len(restored))
        return restored

    async def _ended(self, tenant: str, session_id: str, since: float) -> set[str]:
        """Ids of the session's messages whose ending event (sent, or failed) ZF_EVENTS
        stored since ``since`` (less a margin for clocks): read once per restore, by an
        ephemeral pull consumer (fetches end by themselves; nothing to wait for)."""
        start = datetime.fromtimestamp(since - CLOCK_MARGIN_S, tz=UTC)
        reader = await self._js.pull_subscribe(
            event_subject(tenant, session_id, "message.*"),
            stream=EVENTS_STREAM,
            config=ConsumerConfig(
                deliver_policy=DeliverPolicy.BY_START_TIME,
                opt_start_time=start,
                ack_policy=AckPolicy.NONE,
                inactive_threshold=60.0,  # the server drops it if we cannot
            ),
        )
        ended: set[str] = set()
        try:
            while True:
                try:
                    batch = await reader.fetch(batch=500, timeout=FETCH_TIMEOUT_S)
                except NatsTimeout:
                    break  # nothing (more) since the start
                for msg in batch:
                    event = _event_decoder.decode(msg.data)
                    message_id = event.data.get("message_id")
                    if _ends_message(event) and isinstance(message_id, str):
                        ended.add(message_id)
                if not batch or not batch[-1].metadata.num_pending:
                    break
        finally:
            with contextlib.suppress(Exception):
                await reader.unsubscribe()
        return ended

    def forget(self, session_id: str, message_id: str) -> None:
        """The message is done: its entry goes with the session's next purge."""
        key = entry_key(session_id, message_id)
        pending = self._pending.get(session_id)
        if pending is not None and pending.pop(key, None) is not None:
            self._dirty.add(session_id)
            self._done.setdefault(session_id, set()).add(key)
        if key in self._with_media:
            self._with_media.discard(key)
            task = asyncio.create_task(self._delete_media(key))
            self._media_tasks.add(task)
            task.add_done_callback(self._media_tasks.discard)

    async def _delete_media(self, key: str) -> None:
        with contextlib.suppress(Exception):  # NATS away: the object expires by TTL at worst
            await self.media.delete(key)

    def on_stored(self, event: Event, key: str | None = None) -> None:
        """EventPublisher hook: an event that ends a message makes its entry obsolete.
        ``key``: the internal key of the event's session (its name when None)."""
        message_id = event.data.get("message_id")
        if _ends_message(event) and isinstance(message_id, str):
            self.forget(key or event.session_id, message_id)

    async def destroy(self, session_id: str) -> None:
        """Delete every entry of a session (and its media): the session is deleted."""
        pending = self._pending.pop(session_id, {})
        self._done.pop(session_id, None)
        self._dirty.discard(session_id)
        self._newest.pop(session_id, None)
        keys = set(pending) | {found.key for found in await scan(self.kv, f"{session_id}.*")}
        await self._js.purge_stream(self._stream, subject=f"$KV.{OUTBOX_BUCKET}.{session_id}.*")
        for key in keys:
            self._with_media.discard(key)
            await self._delete_media(key)

    async def _purge_loop(self) -> None:
        while True:
            await asyncio.sleep(self.purge_interval_s)
            await self.purge()

    async def purge(self) -> None:
        """Remove, per session with forgotten entries, every entry stored before the
        oldest one still pending (or all it stored, when none is)."""
        for session_id in list(self._dirty):
            # forgets that happen while this purge waits mark the session again
            self._dirty.discard(session_id)
            pending = self._pending.get(session_id, {})
            # entries are stored in order, so everything below the oldest pending
            # sequence is done; a put still in flight gets a sequence above the newest
            below = min(pending.values()) if pending else self._newest[session_id] + 1
            if below <= 1:  # nothing below it (and seq=0 would purge every entry)
                continue
            try:
                await self._js.purge_stream(
                    self._stream, seq=below, subject=f"$KV.{OUTBOX_BUCKET}.{session_id}.*"
                )
            except asyncio.CancelledError:
                self._dirty.add(session_id)
                raise
            except Exception as exc:  # NATS away: the next round tries again
                self._dirty.add(session_id)
                log.debug("outbox purge failed", extra={"error": repr(exc)})
                return
            # nothing was pending, and no put completed during the purge: everything the
            # session stored is gone from the stream
            if not pending and not self._pending.get(session_id):
                self._pending.pop(session_id, None)
                self._done.pop(session_id, None)

    async def close(self, limit_s: float = 3.0) -> None:
        if self._purger is not None:
            self._purger.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._purger
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.purge(), limit_s)
        if self._media_tasks:
            await asyncio.wait(list(self._media_tasks), timeout=limit_s)

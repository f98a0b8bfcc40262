"""A session's outbound queue: accept a send (bounds, daily cap, idempotent by id), pace
it, send it through the engine with retries, and record its history (issue 14: the
outbound part of :class:`~node_agent.supervisor.SessionSupervisor`, a mixin of it)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prometheus_client import Counter, Gauge, Histogram

from contract.protocol import (
    AudioContent,
    DocumentContent,
    ErrorCode,
    EventType,
    ImageContent,
    MessageContent,
    MessageRecord,
    PollContent,
    SendMessage,
    SessionSpec,
    SessionState,
    StickerContent,
    TextContent,
    VideoContent,
)
from node_agent.conversation import Ledger
from node_agent.engines._base import (
    EngineError,
    EngineSession,
)
from node_agent.errors import AgentError
from node_agent.events import EventPublisher
from node_agent.history import MessageLog
from node_agent.link_preview import with_preview
from node_agent.media import MediaError, MediaFetcher, MediaPayload
from node_agent.pacing import Pacer

if TYPE_CHECKING:
    from node_agent.engines._base import EngineSession

log = logging.getLogger(__name__)

SENDS = Counter("zapfleet_agent_sends_total", "Outbound sends by result", ["result"])
SEND_SECONDS = Histogram(
    "zapfleet_agent_send_seconds",
    "Engine send latency (after pacing)",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
TYPING_SECONDS = Histogram(
    "zapfleet_agent_typing_before_send_seconds",
    "Typing shown before a send (pacing: type before send)",
    buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30),
)
QUEUE_DEPTH = Gauge("zapfleet_agent_send_queue_depth", "Messages waiting in send queues")


def remember(store: OrderedDict[str, Any], key: str, value: Any, limit: int = 10_000) -> None:
    """Put into a bounded map: the oldest entry goes when it is full."""
    store[key] = value
    if len(store) > limit:
        store.popitem(last=False)


@dataclass(slots=True)
class _Outbound:
    request: SendMessage
    queued_at: float
    media: MediaPayload | None = None
    attempts: int = 0

    @property
    def media_bytes(self) -> int:
        return self.media.size if self.media is not None else 0


def media_of(content: MessageContent) -> Any:
    """The :class:`~contract.protocol.Media` of media content, else None."""
    if isinstance(
        content, ImageContent | DocumentContent | AudioContent | VideoContent | StickerContent
    ):
        return content.media
    return None


async def converted(content: MessageContent, payload: MediaPayload) -> MediaPayload:
    """Stickers as WebP, voice notes as OGG/Opus (node_agent/media_convert.py); other
    media unchanged. Raises MediaError (``undecodable_media``) for what cannot be."""
    from node_agent.media_convert import convert_for

    voice_note = isinstance(content, AudioContent) and content.voice_note
    kind = str(type(content).__struct_config__.tag)
    return await convert_for(kind, payload, voice_note)


def content_type(request: SendMessage) -> str:
    tag = type(request.content).__struct_config__.tag
    return str(tag)


class OutboundMixin:
    if TYPE_CHECKING:
        spec: SessionSpec
        state: SessionState
        config: Any
        pacer: Pacer
        events: EventPublisher
        ledger: Ledger
        history: MessageLog
        media: MediaFetcher | None
        _engine: EngineSession
        _queue: deque[_Outbound]
        _queued_media_bytes: int
        _queued_ids: OrderedDict[str, None]
        _engine_ids: OrderedDict[str, str]
        _our_ids: OrderedDict[str, str]
        _wake: asyncio.Event
        _connected: asyncio.Event

        @property
        def tenant(self) -> str: ...
        @property
        def session_id(self) -> str: ...

    def enqueue(self, request: SendMessage, media: MediaPayload | None = None) -> int:
        """Accept one message into the bounded queue; raises AgentError when it cannot.
        ``media`` carries inline media already decoded (see :mod:`node_agent.media`)."""
        if self.state in (SessionState.LOGGED_OUT, SessionState.STOPPED):
            raise AgentError(ErrorCode.NOT_CONNECTED, f"session is {self.state}")
        if request.message_id in self._queued_ids:
            return len(self._queue)
        remaining = self.pacer.remaining_today()
        if remaining is not None and len(self._queue) >= remaining:
            raise AgentError(
                ErrorCode.DAILY_CAP_REACHED,
                f"daily cap of {self.spec.pacing.daily_cap} messages reached "
                f"({self.pacer.sent_today} sent, {len(self._queue)} queued)",
                retry_after_s=round(self.pacer.seconds_until_next_day(), 1),
            )
        size = media.size if media is not None else 0
        if len(self._queue) >= self.spec.pacing.queue_size or (
            size and self._queued_media_bytes + size > self.config.max_queued_media_bytes
        ):
            raise AgentError(
                ErrorCode.QUEUE_FULL,
                f"send queue is full ({len(self._queue)} messages, "
                f"{self._queued_media_bytes} bytes of media)",
                retry_after_s=round(self._retry_after(), 1),
            )
        self._queue.append(_Outbound(request, time.time(), media))
        self._record(request, "queued")
        self._queued_media_bytes += size
        remember(self._queued_ids, request.message_id, None)
        self.ledger.accepted(request)
        QUEUE_DEPTH.inc()
        self._wake.set()
        self.events.emit(
            EventType.MESSAGE_QUEUED,
            self.tenant,
            self.session_id,
            {"message_id": request.message_id, "to": request.to, "type": content_type(request)},
        )
        return len(self._queue)

    def _retry_after(self) -> float:
        """When a full queue will have room: a tenth of it drained at the paced rate."""
        pacing = self.spec.pacing
        rate = pacing.rate_per_s if pacing.enabled else 100.0
        return max(1.0, min(300.0, len(self._queue) / 10 / max(rate, 0.001)))

    def _pick(self) -> tuple[_Outbound | None, float]:
        """The next message allowed to go now, or (None, seconds to wait). Order per
        recipient is kept; a recipient still inside its minimum gap does not hold back
        messages to others queued behind it."""
        token_wait = self.pacer.token_wait()
        if token_wait > 0:
            return None, self.pacer.jittered(token_wait)
        seen: set[str] = set()
        shortest = float("inf")
        for index, item in enumerate(self._queue):
            if index >= self.config.lookahead:
                break
            to = item.request.to
            if to in seen:
                continue
            seen.add(to)
            wait = self.pacer.recipient_wait(to)
            if wait <= 0:
                return item, 0.0
            shortest = min(shortest, wait)
        return None, self.pacer.jittered(shortest)

    async def _send_loop(self) -> None:
        while True:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            await self._connected.wait()
            item, wait = self._pick()
            if item is None:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=wait)
                continue
            try:
                await self._send_one(item)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # never let one message end the sender
                log.exception("send failed unexpectedly")
                self._finish_failed(item, ErrorCode.INTERNAL, f"internal error: {exc!r}")

    def _dequeue(self, item: _Outbound) -> None:
        with contextlib.suppress(ValueError):
            self._queue.remove(item)
            self._queued_media_bytes -= item.media_bytes
            QUEUE_DEPTH.dec()

    async def _send_one(self, item: _Outbound) -> None:
        request = item.request
        content = request.content
        media = item.media
        remote = media_of(content)
        if media is None and remote is not None:
            if self.media is None:
                self._finish_failed(item, ErrorCode.MEDIA_UNAVAILABLE, "no media fetcher")
                return
            try:
                media = await converted(content, await self.media.fetch(remote))
            except MediaError as exc:
                self._finish_failed(item, exc.code, exc.message)
                return
        prepared = self.ledger.for_engine(content)
        if isinstance(prepared, str):
            self._finish_failed(item, ErrorCode.MESSAGE_NOT_FOUND, prepared)
            return
        content = prepared
        if isinstance(content, TextContent) and content.link_preview and self.media is not None:
            content = await with_preview(self.media, content)
        await self._type_before(request.to, content)
        started = time.perf_counter()
        item.attempts += 1
        try:
            engine_id = await self._engine.send(request.to, content, request.message_id, media)
        except EngineError as exc:
            if not self._connected.is_set():
                item.attempts -= 1  # not its fault: it waits for the session to come back
                return
            if item.attempts < self.config.send_attempts:
                SENDS.labels("retried").inc()
                log.info("send failed, will retry", extra={"error": str(exc)})
                await asyncio.sleep(self.config.send_retry_delay_s * item.attempts)
                return
            self._finish_failed(item, ErrorCode.ENGINE_ERROR, str(exc))
            return
        SEND_SECONDS.observe(time.perf_counter() - started)
        self._dequeue(item)
        SENDS.labels("sent").inc()
        self.pacer.record_sent(request.to)
        remember(self._engine_ids, engine_id, request.message_id)
        remember(self._our_ids, request.message_id, engine_id)
        self.ledger.on_sent(request.message_id, engine_id)
        self._record(request, "sent", engine_message_id=engine_id)
        self.events.emit(
            EventType.MESSAGE_SENT,
            self.tenant,
            self.session_id,
            {
                "message_id": request.message_id,
                "engine_message_id": engine_id,
                "to": request.to,
                "type": content_type(request),
                "queued_ms": round((time.time() - item.queued_at) * 1000, 1),
            },
        )

    async def _type_before(self, to: str, content: MessageContent) -> None:
        """Pacing's "type before send": "typing…" in the chat for a time proportional to
        the text, bounded by ``typing_max_s``, then the message. Ban protection users
        ask for; a failed indicator never holds the message back."""
        pacing = self.spec.pacing
        if not pacing.typing_before_send or not isinstance(content, TextContent | PollContent):
            return
        text = content.text if isinstance(content, TextContent) else content.name
        duration = min(pacing.typing_max_s, len(text) * pacing.typing_s_per_char)
        if duration <= 0:
            return
        try:
            await self._engine.send_presence(to, "typing")
        except Exception as exc:
            log.info("typing indicator failed", extra={"error": repr(exc)})
            return
        TYPING_SECONDS.observe(duration)
        await asyncio.sleep(duration)

    def _finish_failed(self, item: _Outbound, code: ErrorCode, error: str) -> None:
        request = item.request
        self._dequeue(item)
        self.ledger.on_failed(request.message_id)
        SENDS.labels("failed").inc()
        self._record(request, "failed", error=error)
        self.events.emit(
            EventType.MESSAGE_ACK,
            self.tenant,
            self.session_id,
            {
                "message_id": request.message_id,
                "status": "failed",
                "peer": request.to,
                "code": code,
                "error": error,
            },
        )

    def _fail_queued(self, reason: str) -> None:
        for item in list(self._queue):
            self._finish_failed(item, ErrorCode.NOT_CONNECTED, reason)

    def _record(
        self,
        request: SendMessage,
        status: str,
        *,
        engine_message_id: str | None = None,
        error: str | None = None,
    ) -> None:
        """The history of an outbound message: created ``queued`` when accepted, then
        moved on in place (node_agent/history.py)."""
        if self.history.get(request.message_id) is None:
            content = request.content
            self.history.add(
                MessageRecord(
                    message_id=request.message_id,
                    direction="out",
                    peer=request.to,
                    type=content_type(request),
                    timestamp=time.time(),
                    status="queued",
                    text=content.text
                    if isinstance(content, TextContent)
                    else getattr(content, "caption", None),
                )
            )
        self.history.advance(
            request.message_id, status, engine_message_id=engine_message_id, error=error
        )

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

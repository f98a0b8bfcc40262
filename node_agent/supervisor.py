"""One supervisor per session: the state machine of DESIGN §3.

The supervisor is the single source of truth for a session's state. Engines report facts
(QR shown, connected, disconnected, ...); the supervisor decides what they mean, emits
``session.status`` on every transition, reconnects with exponential backoff and full
jitter, opens a circuit breaker after repeated failures, and runs a watchdog so that a
"connected" session that shows no sign of life becomes DISCONNECTED instead of a zombie.
It also owns the session's outbound queue and pacing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec
from prometheus_client import Counter, Gauge, Histogram

from contract.chat_ids import is_group
from contract.protocol import (
    AudioContent,
    DocumentContent,
    ErrorCode,
    EventType,
    ImageContent,
    MessageContent,
    MessageRecord,
    PacingSettings,
    PollContent,
    QrCode,
    SendMessage,
    SessionInfo,
    SessionSpec,
    SessionState,
    StickerContent,
    TextContent,
    VideoContent,
)
from node_agent.conversation import Ledger
from node_agent.engines._base import (
    BlockChanged,
    CallOffered,
    Connected,
    Disconnected,
    EngineError,
    EngineEvent,
    EngineSession,
    GroupEvent,
    Inbound,
    InboundMedia,
    LoggedOut,
    Paired,
    PresenceSeen,
    QrShown,
    Receipt,
)
from node_agent.events import EventPublisher
from node_agent.history import MessageLog
from node_agent.inbound_media import MediaStore
from node_agent.link_preview import with_preview
from node_agent.media import MediaError, MediaFetcher, MediaPayload
from node_agent.pacing import Pacer
from zapfleet._logging import bind
from zapfleet.backoff import Backoff

log = logging.getLogger(__name__)

RECONNECTS = Counter("zapfleet_agent_reconnects_total", "Reconnect attempts scheduled")
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

LIVE_STATES = frozenset(
    {
        SessionState.STARTING,
        SessionState.PAIRING,
        SessionState.CONNECTED,
        SessionState.DISCONNECTED,
        SessionState.RECONNECTING,
    }
)


class SupervisorConfig(msgspec.Struct, kw_only=True):
    backoff_base_s: float = 2.0
    backoff_max_s: float = 300.0
    breaker_threshold: int = 5
    breaker_cooldown_s: float = 600.0
    watchdog_interval_s: float = 30.0
    watchdog_timeout_s: float = 10.0
    history_size: int = 1000
    send_attempts: int = 3
    send_retry_delay_s: float = 1.0
    max_queued_media_bytes: int = 64 * 1024 * 1024
    # how far the sender looks past a message whose recipient must still wait
    lookahead: int = 64


class AgentError(Exception):
    """A request that fails with a stable error code (becomes an ``Err`` reply)."""

    def __init__(self, code: ErrorCode, message: str, retry_after_s: float | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.retry_after_s = retry_after_s


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


class SessionSupervisor:
    def __init__(
        self,
        spec: SessionSpec,
        epoch: int,
        node_id: str,
        open_engine_session: Callable[[SessionSpec, Callable[[EngineEvent], None]], EngineSession],
        events: EventPublisher,
        config: SupervisorConfig,
        on_state: Callable[[SessionSupervisor, SessionState, SessionState], None] | None = None,
        media: MediaFetcher | None = None,
    ) -> None:
        self.spec = spec
        self.epoch = epoch
        self.node_id = node_id
        self.events = events
        self.config = config
        self.media = media
        self._on_state = on_state
        self.state = SessionState.STOPPED
        self.reason: str | None = None
        self.since = time.time()
        self.phone: str | None = None
        self.qr: QrCode | None = None
        self.failures = 0
        self.breaker_open_until: float | None = None
        self.pacer = Pacer(spec.pacing)
        self.history = MessageLog(config.history_size)  # node_agent/history.py
        self._queue: deque[_Outbound] = deque()
        self._queued_media_bytes = 0
        self._queued_ids: OrderedDict[str, None] = OrderedDict()
        self._engine_ids: OrderedDict[str, str] = OrderedDict()  # engine id -> our id
        self._our_ids: OrderedDict[str, str] = OrderedDict()  # our id -> engine id
        self.ledger = Ledger()  # conversations: edit/revoke/reply targets (conversation.py)
        self._wake = asyncio.Event()
        self._connected = asyncio.Event()
        self._reconnect_task: asyncio.Task[None] | None = None  # a sleeping retry timer
        # inbound media (node_agent/inbound_media.py): set by the agent when it has a store
        self.media_store: MediaStore | None = None
        self._media_tasks: set[asyncio.Task[None]] = set()
        self._connect_task: asyncio.Task[None] | None = None  # an attempt in flight
        self._engine = open_engine_session(spec, self._on_engine_event)
        self._sender: asyncio.Task[None] | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._ending = False  # stop/logout under way: no event may revive the session
        # issue 16: the agent's auto-reject of calls (it owns the send path), and the
        # last block state reported per contact (an API change and its echo: one event)
        self.on_call_reject: Callable[[SessionSupervisor, CallOffered], None] | None = None
        self._block_state: OrderedDict[str, bool] = OrderedDict()

    # -- identity ----------------------------------------------------------------------

    @property
    def session_id(self) -> str:
        """The caller's name (events show it); unique per tenant only."""
        return self.spec.session_id

    @property
    def key(self) -> str:
        """The internal key the agent's maps, RPCs and stores use (SessionSpec.key)."""
        return self.spec.key

    @property
    def tenant(self) -> str:
        return self.spec.tenant

    def info(self) -> SessionInfo:
        return SessionInfo(
            session_id=self.session_id,
            tenant=self.tenant,
            state=self.state,
            node_id=self.node_id,
            epoch=self.epoch,
            engine=self.spec.engine,
            phone=self.phone,
            reason=self.reason,
            since=self.since,
            reconnect_attempts=self.failures,
            breaker_open_until=self.breaker_open_until,
            queue_depth=len(self._queue),
            key=self.key,
        )

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Begin the session. Returns at once (state STARTING): the engine connects in
        the background, so an RPC never waits for a dial or for the engine's lock."""
        bind(tenant=self.tenant, session_id=self.session_id, node_id=self.node_id)
        self._sender = asyncio.create_task(self._send_loop(), name=f"send:{self.session_id}")
        self._watchdog = asyncio.create_task(self._watch(), name=f"watch:{self.session_id}")
        self._begin_connect(fresh=True)

    async def settle(self, timeout_s: float) -> None:
        """Wait (bounded, never cancelling) for the connect attempt in flight to return,
        so a reply reflects what the engine did at once (a sim session is PAIRING)."""
        task = self._connect_task
        if task is not None and not task.done():
            await asyncio.wait({task}, timeout=timeout_s)

    def _begin_connect(self, *, fresh: bool = False) -> None:
        """One connect attempt in the background (after closing the previous socket
        unless ``fresh``). At most one attempt is in flight."""
        self._cancel_connect()
        self._set_state(SessionState.STARTING)
        self._connect_task = asyncio.create_task(
            self._connect(fresh), name=f"connect:{self.session_id}"
        )

    async def _connect(self, fresh: bool) -> None:
        if not fresh:
            with contextlib.suppress(Exception):
                await self._engine.disconnect()
        try:
            await self._engine.connect()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("connect failed", extra={"error": repr(exc)})
            self._on_failure(f"connect failed: {exc}")

    def _cancel_connect(self) -> asyncio.Task[None] | None:
        task, self._connect_task = self._connect_task, None
        if task is not None and not task.done() and task is not asyncio.current_task():
            task.cancel()
            return task
        return None

    async def _end_connect(self) -> None:
        task = self._cancel_connect()
        if task is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def stop(self, reason: str = "stopped") -> None:
        """Close the socket and end every task. Messages still queued are reported as
        failed (``message.ack`` status ``failed``): accepted work is never lost silently."""
        self._ending = True
        self._cancel_reconnect()
        await self._end_connect()
        self._stop_tasks()
        self._connected.clear()
        with contextlib.suppress(Exception):
            await self._engine.disconnect()
        self._set_state(SessionState.STOPPED, reason)
        self._fail_queued(f"session stopped before sending: {reason}")

    async def logout(self) -> None:
        """Unlink the device. An engine that cannot reach WhatsApp still forgets the
        pairing locally (the phone may then show a stale linked device)."""
        self._ending = True
        self._cancel_reconnect()
        await self._end_connect()
        self._stop_tasks()
        self._connected.clear()
        try:
            await self._engine.logout()
        except Exception as exc:
            log.warning("engine logout failed; pairing forgotten locally", extra={"error": exc})
        self.phone = None
        self.qr = None
        reason = "logged out by request"
        self._set_state(SessionState.LOGGED_OUT, reason)
        self.events.emit(
            EventType.SESSION_LOGGED_OUT, self.tenant, self.session_id, {"reason": reason}
        )
        self._fail_queued("session logged out before sending")

    def _stop_tasks(self) -> None:
        for task in (self._sender, self._watchdog):
            if task is not None and task is not asyncio.current_task():
                task.cancel()

    async def reconnect(self) -> None:
        """Force a reconnect now (API "force reconnect"); returns once it has begun."""
        self._cancel_reconnect()
        self._connected.clear()
        self._begin_connect()

    async def reset_breaker(self) -> None:
        self.failures = 0
        self.breaker_open_until = None
        if self.state in (SessionState.FAILED, SessionState.RECONNECTING):
            await self.reconnect()

    def reconfigure(
        self,
        pacing: PacingSettings | None,
        device_name: str | None = None,
        proxy: str | None = None,
    ) -> None:
        """New pacing applies now; device name and proxy at the next connect."""
        if pacing is not None:
            self.spec.pacing = pacing
            self.pacer.reconfigure(pacing)
            self._wake.set()
        if device_name is not None:
            self.spec.device_name = device_name
        if proxy is not None:
            self.spec.proxy = proxy or None

    # -- state machine -----------------------------------------------------------------

    def _set_state(self, state: SessionState, reason: str | None = None, **extra: object) -> None:
        previous = self.state
        if previous is state and reason == self.reason:
            return
        self.state = state
        self.reason = reason
        self.since = time.time()
        log.info(
            "session state",
            extra={
                "session_id": self.session_id,
                "tenant": self.tenant,
                "state": state,
                "previous": previous,
                "reason": reason,
            },
        )
        self.events.emit(
            EventType.SESSION_STATUS,
            self.tenant,
            self.session_id,
            {
                "state": state,
                "previous": previous,
                "reason": reason,
                "epoch": self.epoch,
                "attempt": self.failures,
                **extra,
            },
        )
        if self._on_state is not None:
            self._on_state(self, previous, state)

    def _on_engine_event(self, event: EngineEvent) -> None:
        try:
            self._handle_engine_event(event)
        except Exception:
            log.exception("engine event handler failed", extra={"event": type(event).__name__})

    def _handle_engine_event(self, event: EngineEvent) -> None:
        ended = self._ending or self.state in (SessionState.STOPPED, SessionState.LOGGED_OUT)
        if ended and not isinstance(event, Receipt | Inbound):
            return
        match event:
            case QrShown(code=code, expires_at=expires_at):
                self.qr = QrCode(code=code, expires_at=expires_at)
                self._set_state(SessionState.PAIRING)
                self.events.emit(
                    EventType.SESSION_QR,
                    self.tenant,
                    self.session_id,
                    {"qr": code, "expires_at": expires_at},
                )
            case Paired(phone=phone):
                self.phone = phone
                self.qr = None
                self.events.emit(
                    EventType.SESSION_PAIRED, self.tenant, self.session_id, {"phone": phone}
                )
            case Connected(phone=phone):
                self._cancel_reconnect()  # the engine may have recovered by itself
                self.phone = phone or self.phone
                self.qr = None
                self.failures = 0
                self.breaker_open_until = None
                self._connected.set()
                self._set_state(SessionState.CONNECTED)
            case Disconnected(reason=reason, fatal=fatal):
                self._connected.clear()
                self.qr = None
                self._on_failure(reason, fatal=fatal)
            case LoggedOut(reason=reason):
                self._connected.clear()
                self._cancel_reconnect()
                self.phone = None
                self.qr = None
                self._set_state(SessionState.LOGGED_OUT, reason)
                self.events.emit(
                    EventType.SESSION_LOGGED_OUT, self.tenant, self.session_id, {"reason": reason}
                )
                self._stop_tasks()
                self._fail_queued("session logged out before sending")
            case Inbound():
                self._on_inbound(event)
            case Receipt():
                self._on_receipt(event)
            case PresenceSeen():
                self._on_presence(event)
            case CallOffered():  # issue 16
                self._on_call_offered(event)
            case BlockChanged():  # issue 16
                self._on_block_changed(event)
            case GroupEvent():
                self._on_group(event)

    def _on_failure(self, reason: str, *, fatal: bool = False) -> None:
        if self._ending:
            return
        self.failures += 1
        self._set_state(SessionState.DISCONNECTED, reason)
        if fatal or self.failures >= self.config.breaker_threshold:
            self.breaker_open_until = time.time() + self.config.breaker_cooldown_s
            why = "a fatal error" if fatal else f"{self.failures} consecutive failures"
            self._set_state(
                SessionState.FAILED,
                f"circuit open after {why}: {reason}",
                retry_in_s=self.config.breaker_cooldown_s,
            )
            self._schedule_reconnect(self.config.breaker_cooldown_s)
            return
        delay = self.backoff_delay(self.failures)
        self._set_state(SessionState.RECONNECTING, reason, retry_in_s=round(delay, 3))
        self._schedule_reconnect(delay)

    def backoff_delay(self, attempt: int) -> float:
        """Exponential backoff with full jitter above the base: base .. min(max, base*2^n)
        (the law of zapfleet.backoff)."""
        base, cap = self.config.backoff_base_s, self.config.backoff_max_s
        return Backoff(base, cap, jitter="full", floor_s=base).delay(attempt)

    def _schedule_reconnect(self, delay: float) -> None:
        self._cancel_reconnect()
        if self._ending:
            return
        RECONNECTS.inc()

        async def later() -> None:
            await asyncio.sleep(delay)
            self._reconnect_task = None
            self._begin_connect()

        self._reconnect_task = asyncio.create_task(later(), name=f"reconnect:{self.session_id}")

    def _cancel_reconnect(self) -> None:
        task, self._reconnect_task = self._reconnect_task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.config.watchdog_interval_s)
            if self.state is not SessionState.CONNECTED:
                continue
            try:
                alive = await asyncio.wait_for(
                    self._engine.ping(), timeout=self.config.watchdog_timeout_s
                )
            except Exception:
                alive = False
            if not alive and self.state is SessionState.CONNECTED:
                self._connected.clear()
                self._on_failure("watchdog: no sign of life from the connection")

    # -- messages ----------------------------------------------------------------------

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
        self._remember(self._queued_ids, request.message_id, None)
        self.ledger.accepted(request)
        QUEUE_DEPTH.inc()
        self._wake.set()
        self.events.emit(
            EventType.MESSAGE_QUEUED,
            self.tenant,
            self.session_id,
            {"message_id": request.message_id, "to": request.to, "type": _content_type(request)},
        )
        return len(self._queue)

    def _retry_after(self) -> float:
        """When a full queue will have room: a tenth of it drained at the paced rate."""
        pacing = self.spec.pacing
        rate = pacing.rate_per_s if pacing.enabled else 100.0
        return max(1.0, min(300.0, len(self._queue) / 10 / max(rate, 0.001)))

    @staticmethod
    def _remember(store: OrderedDict[str, Any], key: str, value: Any, limit: int = 10_000) -> None:
        store[key] = value
        if len(store) > limit:
            store.popitem(last=False)

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
        self._remember(self._engine_ids, engine_id, request.message_id)
        self._remember(self._our_ids, request.message_id, engine_id)
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
                "type": _content_type(request),
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

    # -- groups (issue 16) --

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
                    type=_content_type(request),
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

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    # -- contacts, profile, calls (issue 16) --

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
        self._remember(self._block_state, who, event.blocked, limit=2_000)
        self.events.emit(
            EventType.CONTACT_BLOCKED,
            self.tenant,
            self.session_id,
            {"phone": event.phone, "lid": event.lid, "blocked": event.blocked},
        )

    # -- engine pass-through -------------------------------------------------------------

    @property
    def engine(self) -> EngineSession:
        return self._engine


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


def _content_type(request: SendMessage) -> str:
    tag = type(request.content).__struct_config__.tag
    return str(tag)

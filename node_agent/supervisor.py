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
import random
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec
from prometheus_client import Counter, Gauge, Histogram

from node_agent.engines._base import (
    Connected,
    Disconnected,
    EngineError,
    EngineEvent,
    EngineSession,
    Inbound,
    LoggedOut,
    Paired,
    QrShown,
    Receipt,
)
from node_agent.events import EventPublisher
from node_agent.pacing import Pacer
from node_agent.protocol import (
    ErrorCode,
    EventType,
    MessageRecord,
    PacingSettings,
    QrCode,
    SendMessage,
    SessionInfo,
    SessionSpec,
    SessionState,
    TextContent,
)
from zapfleet._logging import bind

log = logging.getLogger(__name__)

RECONNECTS = Counter("zapfleet_agent_reconnects_total", "Reconnect attempts scheduled")
SENDS = Counter("zapfleet_agent_sends_total", "Outbound sends by result", ["result"])
SEND_SECONDS = Histogram(
    "zapfleet_agent_send_seconds",
    "Engine send latency (after pacing)",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
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
    history_size: int = 200


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
    ) -> None:
        self.spec = spec
        self.epoch = epoch
        self.node_id = node_id
        self.events = events
        self.config = config
        self._on_state = on_state
        self.state = SessionState.STOPPED
        self.reason: str | None = None
        self.since = time.time()
        self.phone: str | None = None
        self.qr: QrCode | None = None
        self.failures = 0
        self.breaker_open_until: float | None = None
        self.pacer = Pacer(spec.pacing)
        self.history: deque[MessageRecord] = deque(maxlen=config.history_size)
        self._queue: deque[_Outbound] = deque()
        self._queued_ids: OrderedDict[str, None] = OrderedDict()
        self._engine_ids: OrderedDict[str, str] = OrderedDict()
        self._queue_signal = asyncio.Event()
        self._connected = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._reconnect_task: asyncio.Task[None] | None = None
        self._engine = open_engine_session(spec, self._on_engine_event)
        self._sender: asyncio.Task[None] | None = None
        self._watchdog: asyncio.Task[None] | None = None

    # -- identity ----------------------------------------------------------------------

    @property
    def session_id(self) -> str:
        return self.spec.session_id

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
        )

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        bind(tenant=self.tenant, session_id=self.session_id, node_id=self.node_id)
        self._sender = asyncio.create_task(self._send_loop(), name=f"send:{self.session_id}")
        self._watchdog = asyncio.create_task(self._watch(), name=f"watch:{self.session_id}")
        await self._connect()

    async def _connect(self) -> None:
        self._set_state(SessionState.STARTING)
        try:
            await self._engine.connect()
        except Exception as exc:
            log.warning("connect failed", extra={"error": repr(exc)})
            self._on_failure(f"connect failed: {exc}")

    async def stop(self, reason: str = "stopped") -> None:
        """Close the socket and end every task; queued messages stay reported as queued."""
        self._cancel_reconnect()
        for task in (self._sender, self._watchdog, *self._tasks):
            if task is not None and task is not asyncio.current_task():
                task.cancel()
        with contextlib.suppress(Exception):
            await self._engine.disconnect()
        self._connected.clear()
        self._set_state(SessionState.STOPPED, reason)

    async def logout(self) -> None:
        self._cancel_reconnect()
        await self._engine.logout()
        self.phone = None
        self._connected.clear()
        self._set_state(SessionState.LOGGED_OUT, "logged out by request")
        self.events.emit(EventType.SESSION_LOGGED_OUT, self.tenant, self.session_id, {})
        await self.stop_tasks()

    async def stop_tasks(self) -> None:
        for task in (self._sender, self._watchdog):
            if task is not None:
                task.cancel()

    async def reconnect(self) -> None:
        """Force a reconnect now (API "force reconnect")."""
        self._cancel_reconnect()
        with contextlib.suppress(Exception):
            await self._engine.disconnect()
        self._connected.clear()
        await self._connect()

    async def reset_breaker(self) -> None:
        self.failures = 0
        self.breaker_open_until = None
        if self.state in (SessionState.FAILED, SessionState.RECONNECTING):
            await self.reconnect()

    def reconfigure(self, pacing: PacingSettings | None) -> None:
        if pacing is not None:
            self.spec.pacing = pacing
            self.pacer.reconfigure(pacing)

    # -- state machine -----------------------------------------------------------------

    def _set_state(self, state: SessionState, reason: str | None = None) -> None:
        previous = self.state
        if previous is state and reason == self.reason:
            return
        self.state = state
        self.reason = reason
        self.since = time.time()
        log.info("session state", extra={"state": state, "previous": previous, "reason": reason})
        self.events.emit(
            EventType.SESSION_STATUS,
            self.tenant,
            self.session_id,
            {"state": state, "previous": previous, "reason": reason, "epoch": self.epoch},
        )
        if self._on_state is not None:
            self._on_state(self, previous, state)

    def _on_engine_event(self, event: EngineEvent) -> None:
        try:
            self._handle_engine_event(event)
        except Exception:
            log.exception("engine event handler failed", extra={"event": type(event).__name__})

    def _handle_engine_event(self, event: EngineEvent) -> None:
        if self.state in (SessionState.STOPPED, SessionState.LOGGED_OUT) and not isinstance(
            event, Receipt | Inbound
        ):
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
                self.phone = phone or self.phone
                self.qr = None
                self.failures = 0
                self.breaker_open_until = None
                self._connected.set()
                self._set_state(SessionState.CONNECTED)
            case Disconnected(reason=reason):
                self._connected.clear()
                self._on_failure(reason)
            case LoggedOut(reason=reason):
                self._connected.clear()
                self._cancel_reconnect()
                self.phone = None
                self._set_state(SessionState.LOGGED_OUT, reason)
                self.events.emit(
                    EventType.SESSION_LOGGED_OUT, self.tenant, self.session_id, {"reason": reason}
                )
            case Inbound():
                self._on_inbound(event)
            case Receipt():
                self._on_receipt(event)

    def _on_failure(self, reason: str) -> None:
        self.failures += 1
        self._set_state(SessionState.DISCONNECTED, reason)
        if self.failures >= self.config.breaker_threshold:
            self.breaker_open_until = time.time() + self.config.breaker_cooldown_s
            self._set_state(
                SessionState.FAILED,
                f"circuit open after {self.failures} consecutive failures: {reason}",
            )
            self._schedule_reconnect(self.config.breaker_cooldown_s)
            return
        self._set_state(SessionState.RECONNECTING, reason)
        self._schedule_reconnect(self.backoff_delay(self.failures))

    def backoff_delay(self, attempt: int) -> float:
        """Exponential backoff with full jitter above the base: base .. min(max, base*2^n)."""
        ceiling = min(self.config.backoff_max_s, self.config.backoff_base_s * 2 ** (attempt - 1))
        return self.config.backoff_base_s + random.uniform(
            0, max(0.0, ceiling - self.config.backoff_base_s)
        )

    def _schedule_reconnect(self, delay: float) -> None:
        self._cancel_reconnect()
        RECONNECTS.inc()

        async def later() -> None:
            await asyncio.sleep(delay)
            self._reconnect_task = None
            with contextlib.suppress(Exception):
                await self._engine.disconnect()
            await self._connect()

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
                alive = await asyncio.wait_for(self._engine.ping(), timeout=10)
            except Exception:
                alive = False
            if not alive and self.state is SessionState.CONNECTED:
                self._connected.clear()
                self._on_failure("watchdog: no sign of life from the connection")

    # -- messages ----------------------------------------------------------------------

    def enqueue(self, request: SendMessage) -> int:
        """Accept one message into the bounded queue; raises AgentError when it cannot."""
        if self.state in (SessionState.LOGGED_OUT, SessionState.STOPPED):
            raise AgentError(ErrorCode.NOT_CONNECTED, f"session is {self.state}")
        if request.message_id in self._queued_ids:
            return len(self._queue)
        if self.pacer.cap_reached():
            raise AgentError(
                ErrorCode.DAILY_CAP_REACHED,
                f"daily cap of {self.spec.pacing.daily_cap} messages reached",
                retry_after_s=round(self.pacer.seconds_until_next_day(), 1),
            )
        if len(self._queue) >= self.spec.pacing.queue_size:
            retry = max(1.0, len(self._queue) / max(self.spec.pacing.rate_per_s, 0.001) / 10)
            raise AgentError(
                ErrorCode.QUEUE_FULL,
                f"send queue is full ({len(self._queue)} messages)",
                retry_after_s=round(retry, 1),
            )
        self._queue.append(_Outbound(request, time.time()))
        self._remember(self._queued_ids, request.message_id, None)
        QUEUE_DEPTH.inc()
        self._queue_signal.set()
        self.events.emit(
            EventType.MESSAGE_QUEUED,
            self.tenant,
            self.session_id,
            {"message_id": request.message_id, "to": request.to, "type": _content_type(request)},
        )
        return len(self._queue)

    @staticmethod
    def _remember(store: OrderedDict[str, Any], key: str, value: Any, limit: int = 10_000) -> None:
        store[key] = value
        if len(store) > limit:
            store.popitem(last=False)

    async def _send_loop(self) -> None:
        while True:
            if not self._queue:
                self._queue_signal.clear()
                await self._queue_signal.wait()
                continue
            await self._connected.wait()
            item = self._queue[0]
            delay = self.pacer.delay_for(item.request.to)
            if delay > 0:
                await asyncio.sleep(delay)
                continue
            await self._send_one(item)

    async def _send_one(self, item: _Outbound) -> None:
        request = item.request
        started = time.perf_counter()
        try:
            engine_id = await self._engine.send(request.to, request.content, request.message_id)
        except EngineError as exc:
            if not self._connected.is_set():
                return  # stays at the head of the queue until the session is back
            self._queue.popleft()
            QUEUE_DEPTH.dec()
            SENDS.labels("failed").inc()
            self._record(request, "failed")
            self.events.emit(
                EventType.MESSAGE_ACK,
                self.tenant,
                self.session_id,
                {"message_id": request.message_id, "status": "failed", "error": str(exc)},
            )
            return
        SEND_SECONDS.observe(time.perf_counter() - started)
        self._queue.popleft()
        QUEUE_DEPTH.dec()
        SENDS.labels("sent").inc()
        self.pacer.record_sent(request.to)
        self._remember(self._engine_ids, engine_id, request.message_id)
        self._record(request, "sent")
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

    def _record(self, request: SendMessage, status: str) -> None:
        content = request.content
        self.history.append(
            MessageRecord(
                message_id=request.message_id,
                direction="out",
                peer=request.to,
                type=_content_type(request),
                timestamp=time.time(),
                status=status,
                text=content.text if isinstance(content, TextContent) else None,
            )
        )

    def _on_inbound(self, event: Inbound) -> None:
        self.history.append(
            MessageRecord(
                message_id=event.message_id,
                direction="in",
                peer=event.sender,
                type=event.type,
                timestamp=event.timestamp,
                status="received",
                text=event.text,
            )
        )
        self.events.emit(
            EventType.MESSAGE_RECEIVED,
            self.tenant,
            self.session_id,
            {
                "message_id": event.message_id,
                "from": event.sender,
                "type": event.type,
                "text": event.text,
                "content": event.content,
                "timestamp": event.timestamp,
            },
        )

    def _on_receipt(self, event: Receipt) -> None:
        message_id = self._engine_ids.get(event.message_id, event.message_id)
        for record in self.history:
            if record.message_id == message_id:
                record.status = event.status
                break
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

    # -- engine pass-through -------------------------------------------------------------

    @property
    def engine(self) -> EngineSession:
        return self._engine


def _content_type(request: SendMessage) -> str:
    tag = type(request.content).__struct_config__.tag
    return str(tag)

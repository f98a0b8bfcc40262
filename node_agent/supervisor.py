"""One supervisor per session: the state machine of DESIGN §3.

The supervisor is the single source of truth for a session's state. Engines report facts
(QR shown, connected, disconnected, ...); the supervisor decides what they mean, emits
``session.status`` on every transition, reconnects with exponential backoff and full
jitter, opens a circuit breaker after repeated failures, and runs a watchdog so that a
"connected" session that shows no sign of life becomes DISCONNECTED instead of a zombie.
It also owns the session's outbound queue and pacing (:mod:`node_agent.outbound`) and
turns what the engine receives into events (:mod:`node_agent.inbound`); both are mixins
of :class:`SessionSupervisor` over the state it keeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable

import msgspec
from prometheus_client import Counter

from contract.protocol import (
    EventType,
    PacingSettings,
    QrCode,
    SessionInfo,
    SessionSpec,
    SessionState,
)
from node_agent.conversation import Ledger
from node_agent.engines._base import (
    BlockChanged,
    CallOffered,
    Connected,
    Disconnected,
    EngineEvent,
    EngineSession,
    GroupEvent,
    Inbound,
    LoggedOut,
    Paired,
    PresenceSeen,
    QrShown,
    Receipt,
)
from node_agent.events import EventPublisher
from node_agent.history import MessageLog
from node_agent.inbound import InboundMixin
from node_agent.inbound_media import MediaStore
from node_agent.media import MediaFetcher
from node_agent.outbound import OutboundMixin, _Outbound
from node_agent.pacing import Pacer
from zapfleet._logging import bind
from zapfleet.backoff import Backoff

log = logging.getLogger(__name__)

RECONNECTS = Counter("zapfleet_agent_reconnects_total", "Reconnect attempts scheduled")

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


class SessionSupervisor(OutboundMixin, InboundMixin):
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

    # -- engine pass-through -------------------------------------------------------------

    @property
    def engine(self) -> EngineSession:
        return self._engine

"""Events to JetStream ``ZF_EVENTS``, never blocking a session.

Sessions call :meth:`EventPublisher.emit`, which only appends to a bounded buffer. One
task drains the buffer in order and publishes each event with ``Nats-Msg-Id`` = event id,
so a retried publish is deduplicated by the stream. Up to ``window`` publishes are in
flight at once (their order on one connection is kept). A failed publish stays at the
head of the buffer and is retried with backoff; when the buffer is full the oldest *status* event
is dropped first (a newer status supersedes it) and the drop is counted — messages and
receipts are never the ones dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from nats.js.client import JetStreamContext
from prometheus_client import Counter

from contract.protocol import Event, EventType, encode, event_subject
from zapfleet.backoff import Backoff, Retrier

log = logging.getLogger(__name__)

EVENTS_PUBLISHED = Counter("zapfleet_agent_events_published_total", "Events stored in ZF_EVENTS")
EVENTS_FAILED = Counter(
    "zapfleet_agent_events_publish_failed_total", "Event publish attempts that failed"
)
EVENTS_DROPPED = Counter(
    "zapfleet_agent_events_dropped_total", "Superseded status events dropped on a full buffer"
)


ACK_TIMEOUT_S = 5.0
# between failed publish windows: 50 ms doubling to 5 s (reset by a stored window)
PUBLISH_RETRY = Backoff(base_s=0.05, max_s=5.0, jitter="full", floor_s=0.05)


def new_event_id() -> str:
    # time-ordered prefix keeps ids sortable by creation; the random tail keeps them unique
    return f"{time.time_ns():x}{secrets.token_hex(6)}"


class EventPublisher:
    def __init__(
        self, js: JetStreamContext, node_id: str, max_buffer: int = 100_000, window: int = 256
    ) -> None:
        self.js = js
        self.node_id = node_id
        self.max_buffer = max_buffer
        self.window = window
        self._inflight = 0
        self._buffer: deque[Event] = deque()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        # called with each event once it is stored in the stream (node_agent/outbox.py)
        self.on_stored: Callable[[Event], None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="event-publisher")

    @property
    def pending(self) -> int:
        return len(self._buffer)

    def emit(
        self, event_type: EventType, tenant: str, session_id: str, data: dict[str, Any]
    ) -> Event:
        event = Event(
            id=new_event_id(),
            type=event_type,
            tenant=tenant,
            session_id=session_id,
            ts=time.time(),
            data=data,
            node_id=self.node_id,
        )
        if len(self._buffer) >= self.max_buffer:
            self._drop_superseded_status()
        self._buffer.append(event)
        self._idle.clear()
        self._wakeup.set()
        return event

    def _drop_superseded_status(self) -> None:
        for index, queued in enumerate(self._buffer):
            if index >= self._inflight and queued.type is EventType.SESSION_STATUS:
                del self._buffer[index]
                EVENTS_DROPPED.inc()
                log.warning("event buffer full: dropped a superseded status event")
                return
        # Nothing droppable: the buffer grows past its soft bound rather than lose data.

    async def _run(self) -> None:
        retry = Retrier(PUBLISH_RETRY)
        while True:
            if not self._buffer:
                self._idle.set()
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            # A window of publishes in flight at once (one connection keeps their order);
            # those that fail stay at the head, in order, and are retried with backoff.
            window = [self._buffer[i] for i in range(min(self.window, len(self._buffer)))]
            self._inflight = len(window)
            try:
                results = await self._publish_window(window)
            finally:
                self._inflight = 0
            failed = [e for e, r in zip(window, results, strict=True) if r is not None]
            if self.on_stored is not None:
                for event, result in zip(window, results, strict=True):
                    if result is None:
                        self.on_stored(event)
            for _ in window:
                self._buffer.popleft()
            self._buffer.extendleft(reversed(failed))
            EVENTS_PUBLISHED.inc(len(window) - len(failed))
            if failed:
                EVENTS_FAILED.inc(len(failed))
                error = next(r for r in results if r is not None)
                if isinstance(error, asyncio.CancelledError):
                    raise error
                log.warning(
                    "event publish failed, retrying",
                    extra={"error": repr(error), "pending": len(self._buffer)},
                )
                await retry.sleep()
                continue
            retry.reset()

    async def _publish_window(self, window: list[Event]) -> list[BaseException | None]:
        """Publish a window of events at once; per event, None once the stream stored
        it, else why not. One reply subscription serves all the acks (nats-py's
        publish_async): no task and no timer per event, which a request each costs."""
        acks: list[asyncio.Future[Any]] = []
        results: list[BaseException | None] = [None] * len(window)
        try:
            for event in window:
                acks.append(
                    await self.js.publish_async(
                        event_subject(event.tenant, event.session_id, event.type),
                        encode(event),
                        headers={"Nats-Msg-Id": event.id},
                    )
                )
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # not even handed to the connection: retried as a whole
            for ack in acks:
                ack.cancel()
            return [exc] * len(window)
        _, late = await asyncio.wait(acks, timeout=ACK_TIMEOUT_S)
        for index, ack in enumerate(acks):
            if ack in late:
                ack.cancel()
                results[index] = TimeoutError(f"no ack from ZF_EVENTS in {ACK_TIMEOUT_S} s")
            elif ack.cancelled():
                results[index] = ConnectionError("the publish was abandoned")
            else:
                results[index] = ack.exception()
        return results

    async def flush(self, limit_s: float = 10.0) -> bool:
        """Wait until every buffered event is stored (used on orderly shutdown)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), limit_s)
        return not self._buffer

    async def close(self, limit_s: float = 10.0) -> None:
        await self.flush(limit_s)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

"""Events to JetStream ``ZF_EVENTS``, never blocking a session.

Sessions call :meth:`EventPublisher.emit`, which only appends to a bounded buffer. One
task drains the buffer in order and publishes each event with ``Nats-Msg-Id`` = event id,
so a retried publish is deduplicated by the stream. A failed publish stays at the head of
the buffer and is retried with backoff; when the buffer is full the oldest *status* event
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
from typing import Any

from nats.js.client import JetStreamContext
from prometheus_client import Counter

from node_agent.protocol import Event, EventType, encode, event_subject

log = logging.getLogger(__name__)

EVENTS_PUBLISHED = Counter("zapfleet_agent_events_published_total", "Events stored in ZF_EVENTS")
EVENTS_FAILED = Counter(
    "zapfleet_agent_events_publish_failed_total", "Event publish attempts that failed"
)
EVENTS_DROPPED = Counter(
    "zapfleet_agent_events_dropped_total", "Superseded status events dropped on a full buffer"
)


def new_event_id() -> str:
    # time-ordered prefix keeps ids sortable by creation; the random tail keeps them unique
    return f"{time.time_ns():x}{secrets.token_hex(6)}"


class EventPublisher:
    def __init__(self, js: JetStreamContext, node_id: str, max_buffer: int = 100_000) -> None:
        self.js = js
        self.node_id = node_id
        self.max_buffer = max_buffer
        self._buffer: deque[Event] = deque()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._idle = asyncio.Event()
        self._idle.set()

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
            if queued.type is EventType.SESSION_STATUS:
                del self._buffer[index]
                EVENTS_DROPPED.inc()
                log.warning("event buffer full: dropped a superseded status event")
                return
        # Nothing droppable: the buffer grows past its soft bound rather than lose data.

    async def _run(self) -> None:
        delay = 0.05
        while True:
            if not self._buffer:
                self._idle.set()
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            event = self._buffer[0]
            try:
                await self.js.publish(
                    event_subject(event.tenant, event.session_id, event.type),
                    encode(event),
                    headers={"Nats-Msg-Id": event.id},
                    timeout=5,
                )
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                EVENTS_FAILED.inc()
                log.warning("event publish failed, retrying", extra={"error": repr(exc)})
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            delay = 0.05
            self._buffer.popleft()
            EVENTS_PUBLISHED.inc()

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

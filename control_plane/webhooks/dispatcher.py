"""Webhook delivery from stream ``ZF_EVENTS`` (DESIGN §8).

A durable pull consumer (``webhooks``) feeds the dispatcher; any number of dispatchers
share it. Each event goes to the session's webhook (or the global one) with bounded
concurrency; a 2xx acks it, anything else NAKs it with exponential delay, and after the
last attempt the event is copied to ``ZF_DLQ`` with the error before it is acked — so an
event is always either delivered, pending retry, or dead-lettered, never lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import httpx
import msgspec
from nats.errors import TimeoutError as NatsTimeout
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.client import JetStreamContext

from control_plane.settings import ControlPlaneSettings
from control_plane.store import SessionStore
from node_agent.protocol import EVENTS_STREAM, EVENTS_SUBJECTS, Event

log = logging.getLogger(__name__)

CONSUMER = "webhooks"
_event_decoder = msgspec.json.Decoder(Event)


class DeadLetter(msgspec.Struct, kw_only=True):
    event: Event
    url: str | None
    attempts: int
    error: str
    ts: float


class Dispatcher:
    def __init__(
        self, js: JetStreamContext, sessions: SessionStore, settings: ControlPlaneSettings
    ) -> None:
        self.js = js
        self.sessions = sessions
        self.settings = settings
        self._stop = asyncio.Event()
        self._slots = asyncio.Semaphore(settings.webhook_concurrency)
        self._http = httpx.AsyncClient(timeout=settings.webhook_timeout_s)
        self._task: asyncio.Task[None] | None = None
        self._inflight: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        self._task = asyncio.create_task(self.run(), name="webhook-dispatcher")

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._inflight:
            # unfinished deliveries are not acked: JetStream redelivers them
            await asyncio.wait(self._inflight, timeout=self.settings.webhook_timeout_s)
        await self._http.aclose()

    async def run(self) -> None:
        config = ConsumerConfig(
            durable_name=CONSUMER,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.NEW,
            ack_wait=self.settings.webhook_timeout_s + 20,
            max_deliver=-1,
            max_ack_pending=self.settings.webhook_concurrency * 40,
        )
        sub = await self.js.pull_subscribe(
            EVENTS_SUBJECTS, durable=CONSUMER, stream=EVENTS_STREAM, config=config
        )
        while not self._stop.is_set():
            try:
                batch = await sub.fetch(self.settings.webhook_concurrency, timeout=1.0)
            except NatsTimeout:
                continue
            except Exception as exc:
                log.warning("webhook fetch failed", extra={"error": repr(exc)})
                await asyncio.sleep(0.5)
                continue
            for msg in batch:
                await self._slots.acquire()
                task = asyncio.create_task(self._handle(msg))
                self._inflight.add(task)
                task.add_done_callback(self._inflight.discard)

    async def _destination(self, event: Event) -> str | None:
        found = await self.sessions.get(event.session_id)
        if found is not None:
            record = found[0]
            if record.webhook_events and event.type not in record.webhook_events:
                return None
            if record.webhook_url:
                return record.webhook_url
        return self.settings.webhook_url

    async def _handle(self, msg: object) -> None:
        from nats.aio.msg import Msg

        assert isinstance(msg, Msg)
        try:
            event = _event_decoder.decode(msg.data)
            url = await self._destination(event)
            if url is None:
                await msg.ack()
                return
            attempt = msg.metadata.num_delivered
            error = await self._post(url, msg.data)
            if error is None:
                await msg.ack()
                return
            if attempt >= self.settings.webhook_max_attempts:
                letter = DeadLetter(
                    event=event, url=url, attempts=attempt, error=error, ts=time.time()
                )
                await self.js.publish(
                    f"zf.dlq.{event.tenant}.{event.session_id}",
                    msgspec.json.encode(letter),
                    headers={"Nats-Msg-Id": f"dlq-{event.id}"},
                )
                await msg.ack()
                return
            await msg.nak(delay=min(60.0, 2.0 ** (attempt - 1)))
        except Exception:
            log.exception("webhook handling failed; the event will be redelivered")
            with contextlib.suppress(Exception):
                await msg.nak(delay=1.0)
        finally:
            self._slots.release()

    async def _post(self, url: str, body: bytes) -> str | None:
        try:
            response = await self._http.post(
                url, content=body, headers={"Content-Type": "application/json"}
            )
        except httpx.HTTPError as exc:
            return f"{type(exc).__name__}: {exc}"
        if 200 <= response.status_code < 300:
            return None
        return f"HTTP {response.status_code}"

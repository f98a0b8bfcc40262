"""Webhook delivery from stream ``ZF_EVENTS`` (DESIGN §8, docs/webhooks.md).

The durable consumer ``webhooks`` feeds any number of dispatchers (in every control-plane
worker and in ``zapfleet webhooks`` processes); JetStream hands each event to one of them.
For each event the dispatcher finds its destinations in memory (:mod:`.config`), signs
the body (:mod:`.signing`) and POSTs it to each URL with bounded concurrency — per
destination (``webhook_concurrency_per_destination``) and per process
(``webhook_concurrency``, handed out round-robin across destinations: :mod:`.fair`).
What is sent — the event with its media links, or in Evolution format — is :mod:`.bodies`.

Outcomes, and why nothing is lost:

- every URL answered 2xx → the event is acked;
- a URL failed (before its last attempt) → the delivery is parked in that URL's backlog
  (:mod:`.backlog`, stored by the stream) and the event is acked: the shared consumer
  never waits for a receiver that is down;
- a URL whose backlog is not empty gets new events straight into the backlog, behind the
  older ones (no overtaking, and no load on a receiver that is failing);
- the backlog is at its bound, the last attempt failed, or the URL is refused by the SSRF
  guard → a dead letter with the reason is stored in ``ZF_DLQ`` (confirmed by the
  stream) *before* the ack;
- the dispatcher dies → nothing was acked; the event is redelivered after ``ack_wait``.

A backlog is worked by its own durable consumer, oldest first, ``webhook_backlog_in_flight``
at a time; a failed entry is put back with the exponential backoff (NAK with delay), so a
destination that keeps failing is paused with backoff and resumes by itself (the circuit
breaker). Delivery is at-least-once: receivers dedupe on the event id.

An event that waited ``webhook_destination_wait_s`` for a slot of its destination (that
destination is slower than its traffic) — or whose destination already holds half of the
buffer — is put back for 1-3 s (NAK, not counted as an attempt: deferrals are tracked
in-process), so one slow receiver cannot hold the buffer that every other destination
needs. A fast destination never waits that long, so its events are never put back.

A session webhook in Evolution API format (:mod:`.config`, docs/evolution-webhooks.md)
goes the same way — backlog, retries, dead letters and redrive keep zapfleet's event —
and its body is rendered at each attempt (:func:`control_plane.evolution.events.envelope`:
the media URL is fresh, ``message.base64`` read from ``zf_media``); an event Evolution
has no counterpart for is acked unsent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import OrderedDict
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, Final

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.client import JetStreamContext

from contract.protocol import (
    EVENTS_STREAM,
    REDRIVE_STREAM,
    Event,
)
from control_plane.settings import ControlPlaneSettings
from control_plane.webhooks import metrics
from control_plane.webhooks.backlog import (
    BACKLOG_STREAM,
    Parked,
    backlog_consumer,
    backlog_depths,
    backlog_key,
    backlog_subject,
    consumer_config,
    ensure_backlog_stream,
    is_backlog_full,
)
from control_plane.webhooks.bodies import Bodies, Head
from control_plane.webhooks.config import Target, Unknown, WebhookRegistry
from control_plane.webhooks.consumer import PullConsumer, cancel_and_wait, ensure_consumer
from control_plane.webhooks.deadletters import DeadLetter, DeadLetterStore, RedriveJob
from control_plane.webhooks.fair import FairSlots
from control_plane.webhooks.http import RequestError, WebhookClient
from control_plane.webhooks.signing import (
    ATTEMPT_HEADER,
    EVENT_ID_HEADER,
    EVENT_TYPE_HEADER,
    signed_headers,
)
from zapfleet import __version__
from zapfleet.backoff import Backoff
from zapfleet.ssrf import AddressPolicy, UnsafeURLError, redact_url

log = logging.getLogger(__name__)

CONSUMER = "webhooks"
REDRIVE_CONSUMER = "webhooks-redrive"
USER_AGENT = f"zapfleet-webhooks/{__version__}"
_MEMORY = 100_000  # in-process notes (partial successes, deferrals) kept at most
ACK_BATCH_S = 0.002
HOG_WAIT_S = 1.0  # a destination holding half the buffer: its longest wait for a slot


@dataclass(frozen=True, slots=True)
class Failure:
    error: str
    permanent: bool
    reason: str


class _Deferred:
    pass


DEFERRED: Final = _Deferred()
Outcome = Failure | _Deferred | None


class _Behind:
    """The URL has a backlog: the delivery joins its end, without an attempt."""


BEHIND: Final = _Behind()
BACKLOG_FULL: Final = Failure("the destination's backlog is full", True, "backlog_full")


@dataclass(slots=True)
class _Destination:
    slots: asyncio.Semaphore
    load: int = 0


_head_decoder = msgspec.json.Decoder(Head)
_event_decoder = msgspec.json.Decoder(Event)
_job_decoder = msgspec.json.Decoder(RedriveJob)
_parked_decoder = msgspec.json.Decoder(Parked)


def _unpack(msg: Msg, redrive: bool) -> tuple[Event | None, bytes, Head, str | None]:
    """(the event if decoded, the body to send, its head, the only URL of a redrive)."""
    if not redrive:
        return None, msg.data, _head_decoder.decode(msg.data), None
    job = _job_decoder.decode(msg.data)
    event = job.event
    return event, msgspec.json.encode(event), _head_of(event), job.url


def _head_of(event: Event) -> Head:
    return Head(event.id, event.type, event.tenant, event.session_id, event.ts)


def ack_position(msg: Msg) -> tuple[str, int, int]:
    """(stream, stream sequence, deliveries so far) of a JetStream message, read from its
    reply subject — ``$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>``
    or the v2 form with domain and account hash — without building nats-py's Metadata."""
    parts = (msg.reply or "").split(".")
    if len(parts) == 9:
        return parts[2], int(parts[5]), int(parts[4])
    if len(parts) >= 11:
        return parts[4], int(parts[7]), int(parts[6])
    meta = msg.metadata
    return meta.stream, meta.sequence.stream, meta.num_delivered


def backoff_delay(attempt: int, base_s: float, max_s: float) -> float:
    """Delay before attempt ``attempt + 1``: base·2^(attempt-1), capped, +0-10 % jitter."""
    return Backoff(base_s, max_s, jitter="proportional", spread=0.1).delay(attempt)


class Dispatcher:
    def __init__(
        self,
        nc: NATS,
        js: JetStreamContext,
        settings: ControlPlaneSettings,
        registry: WebhookRegistry | None = None,
    ) -> None:
        self.nc = nc
        self.js = js
        self.settings = settings
        self.registry = registry or WebhookRegistry(js, settings)
        self._owns_registry = registry is None
        self.dead_letters = DeadLetterStore(nc, js)
        self.policy = AddressPolicy.from_settings(
            settings.allow_private_targets, settings.webhook_allowed_networks
        )
        self._slots = FairSlots(settings.webhook_concurrency)
        self._destinations: dict[str, _Destination] = {}
        self._held: dict[int, tuple[Msg, float]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._partial: OrderedDict[tuple[str, int], set[str]] = OrderedDict()
        self._deferrals: OrderedDict[tuple[str, int], int] = OrderedDict()
        self._consumers: list[PullConsumer] = []
        # backlogs: entries per destination key (last scan, plus what this process parked
        # since), the consumers this process works them with, and which ones fail now
        self._backlogs: dict[str, int] = {}
        self._parked_recently: dict[str, float] = {}
        self._drains: dict[str, PullConsumer] = {}
        self._draining: dict[str, int] = {}  # backlog entries held per key
        self._starting: dict[str, asyncio.Task[None]] = {}
        self._failing: set[str] = set()
        self._http = WebhookClient(
            self.policy,
            user_agent=USER_AGENT,
            connect_timeout_s=min(5.0, settings.webhook_timeout_s),
        )
        self._housekeeping: asyncio.Task[None] | None = None
        self._scanner: asyncio.Task[None] | None = None
        self.bodies = Bodies(js, settings, self.registry)
        self._acks: list[Msg] = []
        self._ack_timer: asyncio.TimerHandle | None = None
        self._stopping = False

    # -- lifecycle ---------------------------------------------------------------------

    def _consumer_config(self, durable: str) -> ConsumerConfig:
        return ConsumerConfig(
            durable_name=durable,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            ack_wait=self.settings.webhook_ack_wait_s,
            max_deliver=-1,
            max_ack_pending=self.settings.webhook_max_ack_pending,
            max_waiting=512,
        )

    async def start(self) -> None:
        if self._owns_registry:
            await self.registry.start()
        await ensure_backlog_stream(
            self.js, self.settings.webhook_max_backlog, self.settings.replicas
        )
        await ensure_consumer(self.js, EVENTS_STREAM, self._consumer_config(CONSUMER))
        await ensure_consumer(self.js, REDRIVE_STREAM, self._consumer_config(REDRIVE_CONSUMER))
        self._consumers = [
            PullConsumer(
                self.nc,
                EVENTS_STREAM,
                CONSUMER,
                on_message=lambda msg: self._accept(msg, redrive=False),
                capacity=self._room,
            ),
            PullConsumer(
                self.nc,
                REDRIVE_STREAM,
                REDRIVE_CONSUMER,
                on_message=lambda msg: self._accept(msg, redrive=True),
                capacity=lambda: min(self._room(), 64),
                batch_max=64,
            ),
        ]
        await self._scan_backlogs()  # backlogs left by earlier runs: before any new event
        for consumer in self._consumers:
            await consumer.start()
        self._housekeeping = asyncio.create_task(self._keep_house(), name="webhook-housekeeping")
        self._scanner = asyncio.create_task(self._scan_loop(), name="webhook-backlog-scan")
        # read when scraped, not kept up to date per event (the last started dispatcher
        # of a process is the one shown)
        metrics.BUFFERED.set_function(lambda: len(self._held))
        metrics.IN_FLIGHT.set_function(self._in_flight)
        metrics.PAUSED.set_function(lambda: len(self._failing))
        log.info(
            "webhook dispatcher started",
            extra={
                "concurrency": self.settings.webhook_concurrency,
                "per_destination": self.settings.webhook_concurrency_per_destination,
                "max_attempts": self.settings.webhook_max_attempts,
            },
        )

    async def stop(self, grace_s: float = 5.0) -> None:
        """Stop pulling, let deliveries in progress finish for ``grace_s``, and hand the
        rest back to JetStream (NAK) so another dispatcher takes them at once."""
        self._stopping = True
        for task in (self._scanner, *self._starting.values()):
            if task is not None:
                await cancel_and_wait(task, task.get_name())
        for consumer in [*self._consumers, *self._drains.values()]:
            await consumer.stop()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=grace_s)
        if self._ack_timer is not None:
            self._ack_timer.cancel()
            self._ack_timer = None
        await self._send_acks()
        for task in list(self._tasks):
            task.cancel()
        for msg, _ in list(self._held.values()):
            with contextlib.suppress(Exception):
                await msg.nak()
        self._held.clear()
        self._drains.clear()
        if self._housekeeping is not None:
            await cancel_and_wait(self._housekeeping, "webhook-housekeeping")
        await self._http.close()
        if self._owns_registry:
            await self.registry.stop()

    def _in_flight(self) -> int:
        return self._slots.in_use

    def stats(self) -> dict[str, Any]:
        return {
            "buffered": len(self._held),
            "in_flight": self._in_flight(),
            "destinations": len(self._destinations),
            "sessions_known": self.registry.sessions_known,
            "backlogs": dict(self._backlogs),
            "failing": len(self._failing),
        }

    # -- intake ------------------------------------------------------------------------

    def _room(self) -> int:
        return max(0, self.settings.webhook_max_buffered - len(self._held))

    def _accept(self, msg: Msg, redrive: bool) -> None:
        self._spawn(msg, self._process(msg, redrive))

    def _accept_parked(self, msg: Msg, key: str) -> None:
        self._draining[key] = self._draining.get(key, 0) + 1

        async def work() -> None:
            try:
                await self._process_parked(msg, key)
            finally:
                self._draining[key] -= 1
                if not self._draining[key]:
                    del self._draining[key]
                drain = self._drains.get(key)
                if drain is not None:
                    drain.wake()

        self._spawn(msg, work())

    def _spawn(self, msg: Msg, work: Coroutine[Any, Any, None]) -> None:
        self._held[id(msg)] = (msg, time.monotonic())
        task = asyncio.create_task(self._handle(msg, work))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _handle(self, msg: Msg, work: Coroutine[Any, Any, None]) -> None:
        try:
            await work
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("webhook handling failed; the event will be redelivered")
            with contextlib.suppress(Exception):
                await msg.nak(delay=self.settings.webhook_backoff_base_s)
        finally:
            self._held.pop(id(msg), None)
            for consumer in self._consumers:
                consumer.wake()

    # -- acks --------------------------------------------------------------------------

    def _ack_soon(self, msg: Msg) -> None:
        """Ack within ACK_BATCH_S, together with the acks of that moment: one socket write
        for many instead of one each (measured: a third of the CPU at 2,000 events/s). An
        ack lost with the process only means a redelivery (at-least-once)."""
        self._acks.append(msg)
        if self._ack_timer is None:
            self._ack_timer = asyncio.get_running_loop().call_later(
                ACK_BATCH_S, self._send_acks_soon
            )

    def _send_acks_soon(self) -> None:
        self._ack_timer = None
        task = asyncio.create_task(self._send_acks())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send_acks(self) -> None:
        acks, self._acks = self._acks, []
        for msg in acks:
            with contextlib.suppress(Exception):
                await msg.ack()

    # -- one event ---------------------------------------------------------------------

    async def _process(self, msg: Msg, redrive: bool) -> None:
        stream, sequence, delivered = ack_position(msg)
        key = (stream, sequence)
        event, body, head, only = _unpack(msg, redrive)
        target = await self._target(head)
        if target is None:
            metrics.SKIPPED.inc()
            self._ack_soon(msg)
            return
        urls = (only,) if only is not None and only in target.urls else target.urls
        raw = body
        rendered = await self.bodies.render(body, head, target)
        if rendered is None:  # an Evolution webhook, and Evolution has no such event
            metrics.SKIPPED.inc()
            self._ack_soon(msg)
            return
        body = rendered
        done = self._partial.pop(key, set())
        pending = [url for url in urls if url not in done]
        attempt = max(1, delivered - self._deferrals.get(key, 0))
        if len(pending) == 1:
            outcomes: list[Outcome | _Behind] = [
                await self._first(pending[0], body, head, target, attempt)
            ]
        else:
            outcomes = list(
                await asyncio.gather(
                    *(self._first(url, body, head, target, attempt) for url in pending)
                )
            )
        park: list[tuple[str, Failure | None]] = []
        dead: list[tuple[str, Failure]] = []
        deferred = False
        last_attempt = attempt >= self.settings.webhook_max_attempts
        for url, outcome in zip(pending, outcomes, strict=True):
            if outcome is None:
                done.add(url)
            elif isinstance(outcome, _Behind):
                park.append((url, None))
            elif isinstance(outcome, Failure):
                (dead if outcome.permanent or last_attempt else park).append((url, outcome))
            else:
                deferred = True
        if park:
            full = event or _event_decoder.decode(raw if target.evolution else body)
            for url, failure in park:
                if not await self._park(full, url, failure, attempt, target.level, key):
                    dead.append((url, BACKLOG_FULL))
                done.add(url)
        if dead:
            full = event or _event_decoder.decode(raw if target.evolution else body)
            await self._bury(full, dead, attempt, target.level)
            done.update(url for url, _ in dead)
        if not deferred:
            self._deferrals.pop(key, None)
            self._ack_soon(msg)
            return
        self._note(self._partial, key, done)
        metrics.DEFERRED.inc()
        self._note(self._deferrals, key, self._deferrals.get(key, 0) + 1)
        await msg.nak(delay=random.uniform(1.0, 3.0))

    async def _first(
        self, url: str, body: bytes, head: Head, target: Target, attempt: int
    ) -> Outcome | _Behind:
        """A delivery from the shared stream: straight into the backlog when its URL has
        one (checked again once it has a slot), else an attempt."""
        key = backlog_key(url)
        if self._behind(key):
            return BEHIND
        outcome = await self._deliver(url, body, head, target, attempt, backlog=key)
        if outcome is None:
            self._failing.discard(key)
        elif isinstance(outcome, Failure) and not outcome.permanent:
            self._failing.add(key)
        return outcome

    async def _park(
        self,
        event: Event,
        url: str,
        failure: Failure | None,
        attempt: int,
        level: str,
        source: tuple[str, int],
    ) -> bool:
        """Store the delivery in its URL's backlog (confirmed by the stream; raises
        otherwise, and the event is redelivered). False when the backlog is full."""
        key = backlog_key(url)
        parked = Parked(
            event=event,
            url=url,
            attempts=0 if failure is None else attempt,
            error="" if failure is None else failure.error,
            parked_at=time.time(),
            level=level,
        )
        self._backlogs[key] = self._backlogs.get(key, 0) + 1
        self._parked_recently[key] = time.monotonic()
        try:
            await self.js.publish(
                backlog_subject(key),
                msgspec.json.encode(parked),
                # one entry per source message and URL, also when this is redelivered
                headers={"Nats-Msg-Id": f"park-{source[0]}-{source[1]}-{key}"},
            )
        except Exception as exc:
            if is_backlog_full(exc):
                metrics.BACKLOG_FULL.inc()
                return False
            raise
        metrics.PARKED.inc()
        if failure is not None:
            metrics.RETRIED.inc()
        self._start_drain(key)
        return True

    async def _process_parked(self, msg: Msg, key: str) -> None:
        """The oldest entry of a backlog: one attempt; a failure puts it back with the
        backoff delay, and nothing behind it moves meanwhile (``max_ack_pending``)."""
        stream, sequence, delivered = ack_position(msg)
        position = (stream, sequence)
        parked = _parked_decoder.decode(msg.data)
        event = parked.event
        head = _head_of(event)
        target = await self._target(head)
        if target is None or parked.url not in target.urls:
            # the URL was removed, or the event filtered out since: nobody wants it here
            metrics.SKIPPED.inc()
            self._ack_soon(msg)
            return
        tries_here = delivered - self._deferrals.get(position, 0)
        if parked.attempts and tries_here <= 1:
            # parked after a failure: its first attempt from the backlog waits out the
            # backoff too (JetStream hands a new entry out at once)
            wait = parked.parked_at + self._first_wait(parked.attempts) - time.time()
            if wait > 0:
                self._note(self._deferrals, position, self._deferrals.get(position, 0) + 1)
                await msg.nak(delay=wait)
                return
        attempt = parked.attempts + max(1, tries_here)
        body = msgspec.json.encode(event)
        if target.evolution:
            rendered = await self.bodies.evolution(body, head, target)
            if rendered is None:
                metrics.SKIPPED.inc()
                self._ack_soon(msg)
                return
            body = rendered
        outcome = await self._deliver(parked.url, body, head, target, attempt)
        if outcome is None:
            self._failing.discard(key)
            self._deferrals.pop(position, None)
            self._ack_soon(msg)
            return
        if isinstance(outcome, Failure):
            if outcome.permanent or attempt >= self.settings.webhook_max_attempts:
                await self._bury(event, [(parked.url, outcome)], attempt, target.level)
                self._deferrals.pop(position, None)
                self._ack_soon(msg)
                return
            self._failing.add(key)
            metrics.RETRIED.inc()
            delay = backoff_delay(
                attempt, self.settings.webhook_backoff_base_s, self.settings.webhook_backoff_max_s
            )
            await msg.nak(delay=delay)
            return
        metrics.DEFERRED.inc()
        self._note(self._deferrals, position, self._deferrals.get(position, 0) + 1)
        await msg.nak(delay=random.uniform(1.0, 3.0))

    def _first_wait(self, attempts: int) -> float:
        """The backoff after ``attempts`` failures, without jitter (a floor, so that a
        redelivery computes the same due time)."""
        return Backoff(
            self.settings.webhook_backoff_base_s, self.settings.webhook_backoff_max_s
        ).ceiling(attempts)

    async def _target(self, head: Head) -> Target | None:
        found = self.registry.lookup(head.tenant, head.session_id, head.type)
        if isinstance(found, Unknown):  # a session the KV watch has not shown yet
            return await self.registry.target(head.tenant, head.session_id, head.type)
        return found

    async def _bury(
        self, event: Event, dead: list[tuple[str, Failure]], attempt: int, level: str
    ) -> None:
        """Store one dead letter per failed URL; each is confirmed by the stream (raises
        otherwise, and the event is retried instead of acked)."""
        for url, failure in dead:
            reason = (
                failure.reason
                if failure.reason in ("backlog_full", "refused")
                else "attempts_exhausted"
            )
            await self.dead_letters.add(
                DeadLetter(
                    event=event,
                    url=url,
                    attempts=attempt if failure is not BACKLOG_FULL else 0,
                    error=failure.error,
                    failed_at=time.time(),
                    level=level,
                    reason=reason,
                )
            )
            metrics.DEAD_LETTERED.inc()
            log.warning(
                "webhook dead-lettered",
                extra={
                    "event_id": event.id,
                    "url": redact_url(url),
                    "attempts": attempt,
                    "error": failure.error,
                    "reason": reason,
                },
            )

    @staticmethod
    def _note(memory: OrderedDict[tuple[str, int], Any], key: tuple[str, int], value: Any) -> None:
        memory[key] = value
        memory.move_to_end(key)
        while len(memory) > _MEMORY:
            memory.popitem(last=False)

    async def _deliver(
        self,
        url: str,
        body: bytes,
        head: Head,
        target: Target,
        attempt: int,
        backlog: str | None = None,
    ) -> Outcome | _Behind:
        """One attempt, within the destination's and the process's concurrency. With
        ``backlog`` (a first attempt), BEHIND when that backlog appeared meanwhile."""
        try:
            origin = self._http.target(url).origin
        except UnsafeURLError as exc:
            metrics.FAILED.labels("refused").inc()
            return Failure(str(exc), True, "refused")
        destination = self._destinations.get(origin)
        if destination is None:
            destination = _Destination(
                asyncio.Semaphore(self.settings.webhook_concurrency_per_destination)
            )
            self._destinations[origin] = destination
        # past half of the buffer, a first attempt waits at most HOG_WAIT_S for a slot: a
        # fast destination frees one sooner, so its events are never put back (putting
        # them back at once made every event of a busy destination go round twice: half
        # the throughput, twice the CPU); a slow one gives its part of the buffer back
        # within a second, for the other destinations' events
        hog = backlog is not None and destination.load >= self.settings.webhook_max_buffered // 2
        destination.load += 1
        try:
            if destination.slots.locked():  # no timer on the fast path
                wait = self.settings.webhook_destination_wait_s
                try:
                    async with asyncio.timeout(min(wait, HOG_WAIT_S) if hog else wait):
                        await destination.slots.acquire()
                except TimeoutError:
                    return DEFERRED
            else:
                await destination.slots.acquire()
            try:
                if backlog is not None and self._behind(backlog):
                    return BEHIND  # it failed while this one waited: join the backlog
                await self._slots.acquire(origin)
                try:
                    return await self._post(url, body, head, target, attempt)
                finally:
                    self._slots.release()
            finally:
                destination.slots.release()
        finally:
            destination.load -= 1
            if destination.load == 0:
                self._destinations.pop(origin, None)

    async def _post(
        self, url: str, body: bytes, head: Head, target: Target, attempt: int
    ) -> Failure | None:
        headers = {
            "Content-Type": "application/json",
            EVENT_ID_HEADER: head.id,
            EVENT_TYPE_HEADER: head.type,
            ATTEMPT_HEADER: str(attempt),
        }
        if target.headers:  # Evolution webhooks: the configured extra headers
            headers.update(target.headers)
        headers.update(signed_headers(target.scheme, target.secrets, head.id, body))
        started = time.perf_counter()
        try:
            status = await self._http.post(url, body, headers, self.settings.webhook_timeout_s)
        except UnsafeURLError as exc:
            metrics.FAILED.labels("refused").inc()
            return Failure(f"{exc} (SSRF guard)", True, "refused")
        except TimeoutError:
            metrics.FAILED.labels("timeout").inc()
            return Failure(f"timeout after {self.settings.webhook_timeout_s} s", False, "timeout")
        except RequestError as exc:
            metrics.FAILED.labels("connection").inc()
            return Failure(str(exc), False, "connection")
        finally:
            metrics.ATTEMPT_SECONDS.observe(time.perf_counter() - started)
        if 200 <= status < 300:
            metrics.DELIVERED.inc()
            metrics.LATENCY.observe(max(0.0, time.time() - head.ts))
            return None
        reason = (
            "http_4xx" if 400 <= status < 500 else "http_5xx" if status >= 500 else "http_other"
        )
        metrics.FAILED.labels(reason).inc()
        return Failure(f"HTTP {status}", False, reason)

    # -- backlogs ----------------------------------------------------------------------

    def _behind(self, key: str) -> bool:
        """New events of this URL join its backlog instead of being tried: while it has a
        backlog and is failing (its last attempt here failed: the circuit is open), or
        always while it has one with ``webhook_backlog_in_flight = 1`` (ordered mode)."""
        if self._backlogs.get(key, 0) <= 0:
            return False
        return key in self._failing or self.settings.webhook_backlog_in_flight == 1

    def _start_drain(self, key: str) -> None:
        if self._stopping or key in self._drains or key in self._starting:
            return
        task = asyncio.create_task(self._open_drain(key), name=f"webhook-backlog-{key}")
        self._starting[key] = task
        task.add_done_callback(lambda _: self._starting.pop(key, None))

    async def _open_drain(self, key: str) -> None:
        in_flight = self.settings.webhook_backlog_in_flight
        try:
            await ensure_consumer(
                self.js,
                BACKLOG_STREAM,
                consumer_config(key, in_flight, self.settings.webhook_ack_wait_s),
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("backlog consumer failed", extra={"backlog": key, "error": repr(exc)})
            return  # the next scan tries again
        drain = PullConsumer(
            self.nc,
            BACKLOG_STREAM,
            backlog_consumer(key),
            on_message=lambda msg: self._accept_parked(msg, key),
            capacity=lambda: max(0, in_flight - self._draining.get(key, 0)),
            batch_max=in_flight,
        )
        if self._stopping:
            return
        await drain.start()
        self._drains[key] = drain

    async def _scan_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.webhook_backlog_scan_s)
            try:
                await self._scan_backlogs()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("backlog scan failed", extra={"error": repr(exc)})

    async def _scan_backlogs(self) -> None:
        """Learn which destinations have a backlog (parked by any dispatcher), work the
        new ones, and let go of the empty ones."""
        depths = await backlog_depths(self.js)
        now = time.monotonic()
        recent = 2 * self.settings.webhook_backlog_scan_s
        for key, since in list(self._parked_recently.items()):
            if now - since > recent:
                del self._parked_recently[key]
            elif key not in depths:
                depths[key] = self._backlogs.get(key, 1)  # parked after the scan read
        self._backlogs = depths
        metrics.BACKLOG.set(sum(depths.values()))
        metrics.BACKLOG_DESTINATIONS.set(len(depths))
        for key in depths:
            self._start_drain(key)
        for key in [k for k in self._drains if k not in depths and k not in self._draining]:
            drain = self._drains.pop(key)
            self._failing.discard(key)
            await drain.stop()

    # -- housekeeping ------------------------------------------------------------------

    async def _keep_house(self) -> None:
        """Keep held events alive (``+WPI``) while they wait for a slot, and sample the
        queue and dead-letter depth for the metrics."""
        ack_wait = self.settings.webhook_ack_wait_s
        interval = min(5.0, ack_wait / 4)
        last_sample = 0.0
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            for ident, (msg, since) in list(self._held.items()):
                if now - since > ack_wait / 2 and ident in self._held:
                    with contextlib.suppress(Exception):
                        await msg.in_progress()
                    self._held[ident] = (msg, now)
            if now - last_sample >= 5.0:
                last_sample = now
                self._http.prune()
                await self.sample_metrics()

    async def sample_metrics(self) -> None:
        """Consumer, backlog and dead-letter gauges (every 5 s in the keep-alive loop)."""
        with contextlib.suppress(Exception):
            info = await self.js.consumer_info(EVENTS_STREAM, CONSUMER, timeout=2)
            metrics.QUEUED.set(info.num_pending + info.num_ack_pending)
            metrics.ACK_PENDING.set(info.num_ack_pending)
            metrics.MAX_ACK_PENDING.set(info.config.max_ack_pending or 0)
        with contextlib.suppress(Exception):
            depths = await backlog_depths(self.js)
            metrics.BACKLOG.set(sum(depths.values()))
            metrics.BACKLOG_DESTINATIONS.set(len(depths))
        with contextlib.suppress(Exception):
            metrics.DLQ_DEPTH.set(await self.dead_letters.depth())

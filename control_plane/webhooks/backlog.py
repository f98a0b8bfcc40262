"""Per-destination backlogs: where a failed delivery waits, so the shared consumer moves on.

A delivery that failed (or whose URL already has a backlog) is stored in the work-queue
stream ``ZF_WEBHOOK_BACKLOG`` at ``zf.webhooks.backlog.<key>``, ``key`` being a hash of the
URL, and the event is acked in ``ZF_EVENTS`` at once. So a receiver that is down holds
nothing of the shared consumer: every other destination keeps its pace.

Each backlog has a durable consumer of its own (``backlog-<key>``) with
``max_ack_pending = webhook_backlog_in_flight`` (20; 1 = ordered mode): only that many of
its oldest entries are tried at once, and one that fails is put back with the
exponential backoff delay. While the destination fails, new events join the backlog
instead of being tried (the dispatcher's circuit breaker), so a destination that keeps
failing gets a few probes per backoff period and resumes by itself when one succeeds.

The stream limits every subject to ``webhook_max_backlog`` messages and refuses more
(``discard_new_per_subject``): the dispatcher then writes a dead letter with the reason
``backlog_full``. Consumers a dispatcher stopped using disappear after
``INACTIVE_S`` (the entries stay in the stream; the next dispatcher creates it again).
"""

from __future__ import annotations

import hashlib

import msgspec
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.client import JetStreamContext
from nats.js.errors import NotFoundError

from contract.protocol import Event
from zapfleet.natsjs import ensure_stream

BACKLOG_STREAM = "ZF_WEBHOOK_BACKLOG"
BACKLOG_PREFIX = "zf.webhooks.backlog."
INACTIVE_S = 600.0


class Parked(msgspec.Struct, kw_only=True):
    """One delivery waiting in its destination's backlog."""

    event: Event
    url: str
    attempts: int  # attempts made before it was parked (0: parked behind the backlog)
    error: str
    parked_at: float
    level: str = "session"


def backlog_key(url: str) -> str:
    """The backlog (and consumer name) of a destination URL."""
    return hashlib.sha256(url.encode()).hexdigest()[:20]


def backlog_subject(key: str) -> str:
    return BACKLOG_PREFIX + key


def backlog_consumer(key: str) -> str:
    return "backlog-" + key


async def ensure_backlog_stream(js: JetStreamContext, max_backlog: int, replicas: int) -> None:
    """Create the stream, or bring its per-destination bound (and replicas) up to date,
    through the one place streams are made (zapfleet.natsjs)."""
    config = StreamConfig(
        name=BACKLOG_STREAM,
        subjects=[BACKLOG_PREFIX + "*"],
        retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType.FILE,
        discard=DiscardPolicy.NEW,
        discard_new_per_subject=True,
        max_msgs_per_subject=max_backlog,
        duplicate_window=120.0,
    )
    await ensure_stream(js, config, replicas)


def consumer_config(key: str, in_flight: int, ack_wait_s: float) -> ConsumerConfig:
    return ConsumerConfig(
        durable_name=backlog_consumer(key),
        filter_subject=backlog_subject(key),
        ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.ALL,
        ack_wait=ack_wait_s,
        max_deliver=-1,
        max_ack_pending=in_flight,
        max_waiting=64,
        inactive_threshold=INACTIVE_S,
    )


async def backlog_depths(js: JetStreamContext) -> dict[str, int]:
    """Entries waiting per destination key (only keys with entries)."""
    try:
        info = await js.stream_info(BACKLOG_STREAM, subjects_filter=BACKLOG_PREFIX + "*")
    except NotFoundError:
        return {}
    subjects = info.state.subjects or {}
    return {
        subject.removeprefix(BACKLOG_PREFIX): count
        for subject, count in subjects.items()
        if count > 0
    }


def is_backlog_full(error: Exception) -> bool:
    """A publish the stream refused because the destination's backlog is at its bound."""
    text = str(error).lower()
    return "maximum messages per subject" in text or "10077" in text

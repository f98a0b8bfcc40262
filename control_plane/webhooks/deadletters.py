"""Dead letters: deliveries that exhausted their attempts, kept in stream ``ZF_DLQ``.

One dead letter per (event, destination URL) at ``zf.dlq.<tenant>.<session>``, carrying
the event, the URL, the number of attempts and the last error. They are listed per
tenant, redriven one by one or all at once, or purged.

A redrive publishes a :class:`RedriveJob` to ``ZF_WEBHOOK_REDRIVE`` (a work queue the
dispatchers consume like ``ZF_EVENTS``, with a fresh attempt budget) *before* it deletes
the dead letter, so a crash in between leaves a duplicate, never a loss.
"""

from __future__ import annotations

import contextlib
import hashlib
import json

import msgspec
from nats.aio.client import Client as NATS
from nats.js.client import JetStreamContext
from nats.js.errors import NotFoundError

from contract.protocol import DLQ_STREAM, Event, dlq_subject, redrive_subject
from control_plane.stream_reader import StoredMessage, read_one, read_page


class DeadLetter(msgspec.Struct, kw_only=True):
    event: Event
    url: str
    attempts: int
    error: str
    failed_at: float
    level: str = "session"
    # attempts_exhausted, refused (SSRF guard), backlog_full (the destination's backlog
    # was at ZAPFLEET_WEBHOOK_MAX_BACKLOG)
    reason: str = "attempts_exhausted"


class RedriveJob(msgspec.Struct, kw_only=True):
    """An event sent back to the dispatcher for one URL (the one that failed)."""

    event: Event
    url: str
    dead_letter_seq: int


_letter_decoder = msgspec.json.Decoder(DeadLetter)


def dead_letter_id(event_id: str, url: str) -> str:
    """``Nats-Msg-Id`` of a dead letter: a repeated publish of the same one is dropped."""
    return f"dlq-{event_id}-{hashlib.sha256(url.encode()).hexdigest()[:16]}"


def tenant_filter(tenant: str | None) -> str:
    return f"zf.dlq.{tenant}.>" if tenant else "zf.dlq.>"


def tenant_of(subject: str) -> str:
    return subject.split(".", 3)[2]


class DeadLetterStore:
    def __init__(self, nc: NATS, js: JetStreamContext) -> None:
        self.nc = nc
        self.js = js

    async def add(self, letter: DeadLetter) -> None:
        """Store a dead letter; returns once the stream has it."""
        await self.js.publish(
            dlq_subject(letter.event.tenant, letter.event.session_id),
            msgspec.json.encode(letter),
            headers={"Nats-Msg-Id": dead_letter_id(letter.event.id, letter.url)},
        )

    async def page(
        self, tenant: str | None, after_seq: int = 0, limit: int = 100
    ) -> tuple[list[tuple[StoredMessage, DeadLetter]], int]:
        """Dead letters after ``after_seq``, oldest first, and how many more there are."""
        page = await read_page(
            self.nc, DLQ_STREAM, tenant_filter(tenant), after_seq=after_seq, limit=limit
        )
        return [(m, _letter_decoder.decode(m.data)) for m in page.messages], page.more

    async def get(self, tenant: str | None, seq: int) -> DeadLetter | None:
        stored = await read_one(self.nc, DLQ_STREAM, seq)
        if stored is None or (tenant is not None and tenant_of(stored.subject) != tenant):
            return None
        return _letter_decoder.decode(stored.data)

    async def redrive(self, tenant: str | None, seq: int) -> DeadLetter | None:
        letter = await self.get(tenant, seq)
        if letter is None:
            return None
        job = RedriveJob(event=letter.event, url=letter.url, dead_letter_seq=seq)
        await self.js.publish(
            redrive_subject(letter.event.tenant),
            msgspec.json.encode(job),
            headers={"Nats-Msg-Id": f"redrive-{seq}"},
        )
        await self._delete(seq)
        return letter

    async def redrive_all(self, tenant: str | None, limit: int = 10_000) -> tuple[int, int]:
        """Redrive up to ``limit`` dead letters; returns (redriven, still in the queue)."""
        redriven = 0
        cursor = 0
        remaining = 0
        while redriven < limit:
            letters, remaining = await self.page(tenant, cursor, min(500, limit - redriven))
            if not letters:
                break
            for stored, _ in letters:
                cursor = stored.seq
                if await self.redrive(tenant, stored.seq) is not None:
                    redriven += 1
            if remaining == 0:
                break
        return redriven, remaining

    async def purge(self, tenant: str | None) -> int:
        reply = await self.nc.request(
            f"$JS.API.STREAM.PURGE.{DLQ_STREAM}",
            json.dumps({"filter": tenant_filter(tenant)}).encode(),
            timeout=10,
        )
        return int(json.loads(reply.data).get("purged", 0))

    async def delete(self, tenant: str | None, seq: int) -> bool:
        if await self.get(tenant, seq) is None:
            return False
        await self._delete(seq)
        return True

    async def _delete(self, seq: int) -> None:
        with contextlib.suppress(NotFoundError):  # a concurrent redrive or purge was first
            await self.js.delete_msg(DLQ_STREAM, seq)

    async def depth(self) -> int:
        info = await self.js.stream_info(DLQ_STREAM)
        return int(info.state.messages)

"""The simulated server's offline queue: messages for a phone with no socket online.

WhatsApp's server keeps a message whose recipient is offline and hands it over when a
socket of that account connects (then the sender sees the second tick). The sim network
did the same in its docstring only: a message sent while the recipient's session was
between two agents (a failover, a restart) was dropped, so an accepted send could be
"sent" and never received (seen in CI: replies queued across a ``kill -9``).

The queue is the JetStream stream ``ZF_SIM_HELD``, one subject per phone
(``zf.sim.offline.<phone>``), at most :data:`HELD_MAX` messages per phone (the oldest
dropped first). Holding a message is one publish (not acknowledged), whatever is
already held: bulk sends to numbers that are never online (``bench api`` sends to a
stopped session) cost the same per message. Connecting costs one direct read when
nothing waits; handing over walks the phone's messages by subject (no consumer) and
purges up to the last one taken, so a message held meanwhile stays for the next
hand-over.
"""

from __future__ import annotations

import asyncio

from nats.aio.client import Client as NATS
from nats.js.api import DiscardPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError

from zapfleet.natsjs import ensure_stream

HELD_STREAM = "ZF_SIM_HELD"
HELD_MAX = 1000
HELD_MAX_AGE_S = 30 * 86400.0  # WhatsApp keeps an undelivered message about 30 days


def _subject(phone: str) -> str:
    return f"zf.sim.offline.{phone}"


def wake_subject(phone: str) -> str:
    """Where the server says "a message is waiting" to a socket that just connected (it
    may have connected between the failed hand-over and the hold)."""
    return f"zf.sim.wake.{phone}"


async def ensure_held_stream(nc: NATS, replicas: int) -> None:
    config = StreamConfig(
        name=HELD_STREAM,
        subjects=["zf.sim.offline.*"],
        storage=StorageType.FILE,
        discard=DiscardPolicy.OLD,
        max_msgs_per_subject=HELD_MAX,
        max_age=HELD_MAX_AGE_S,
    )
    await ensure_stream(nc.jetstream(), config, replicas)


class OfflineQueue:
    def __init__(self, nc: NATS) -> None:
        self._nc = nc
        self._js = nc.jetstream()
        self._taking: dict[str, asyncio.Lock] = {}

    async def hold(self, phone: str, wire: bytes) -> None:
        """Keep ``wire`` for ``phone``, then wake any socket of it that connected meanwhile."""
        # a plain publish: the stream stores it; no ack to wait for (the simulated server's
        # own bookkeeping should not weigh on the sender's agent: bench api holds every send)
        await self._nc.publish(_subject(phone), wire)
        await self._nc.publish(wake_subject(phone))

    async def take(self, phone: str) -> list[bytes]:
        """Everything held for ``phone``, in the order held, removed from the queue. Two
        hand-overs of one phone at once (a wake-up and a connect) take turns: the second
        finds what the first left."""
        async with self._taking.setdefault(phone, asyncio.Lock()):
            return await self._take(phone)

    async def _take(self, phone: str) -> list[bytes]:
        subject = _subject(phone)
        try:
            await self._js.get_last_msg(HELD_STREAM, subject)
        except NotFoundError:
            return []  # the usual case: one read
        found: list[bytes] = []
        seq = 1
        while True:
            try:
                msg = await self._js.get_msg(HELD_STREAM, seq=seq, subject=subject, next=True)
            except NotFoundError:
                break
            if msg.seq is None:
                break
            found.append(msg.data or b"")
            seq = msg.seq + 1
        if found:
            await self._js.purge_stream(HELD_STREAM, seq=seq, subject=subject)
        return found

    async def drop(self, phone: str) -> None:
        """The account logged out: what waited for it is gone, as on WhatsApp."""
        await self._js.purge_stream(HELD_STREAM, subject=_subject(phone))
        self._taking.pop(phone, None)

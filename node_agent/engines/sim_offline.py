"""The simulated server's offline queue: messages for a phone with no socket online.

WhatsApp's server keeps a message whose recipient is offline and hands it over when a
socket of that account connects (then the sender sees the second tick). The sim network
did the same in its docstring only: a message sent while the recipient's session was
between two agents (a failover, a restart) was dropped, so an accepted send could be
"sent" and never received (seen in CI: replies queued across a ``kill -9``).

One KV key per phone, ``held.<phone>`` in ``zf_sim``, holds the wires in arrival order,
one JSON document per line; appends and the hand-over are compare-and-set, so a message
is handed over once even when two drains race (a wake-up and a connect). A phone that
never comes back keeps at most :data:`HELD_MAX` messages, the oldest dropped first.
"""

from __future__ import annotations

from nats.aio.client import Client as NATS
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from zapfleet.backoff import cas_attempts

HELD_MAX = 1000
_ATTEMPTS = 20


def wake_subject(phone: str) -> str:
    """Where the server says "a message is waiting" to a socket that just connected (it
    may have connected between the failed hand-over and the hold)."""
    return f"zf.sim.held.{phone}"


def _key(phone: str) -> str:
    return f"held.{phone}"


class OfflineQueue:
    def __init__(self, nc: NATS, kv: KeyValue) -> None:
        self._nc = nc
        self._kv = kv

    async def hold(self, phone: str, wire: bytes) -> None:
        """Keep ``wire`` (one JSON document, no newline) for ``phone``, then wake any
        socket of it that connected meanwhile."""
        held = False
        async for _ in cas_attempts(_ATTEMPTS):
            try:
                entry = await self._kv.get(_key(phone))
            except KeyNotFoundError:
                try:
                    await self._kv.create(_key(phone), wire)
                except KeyWrongLastSequenceError:
                    continue
                held = True
                break
            kept = entry.value.split(b"\n")[-(HELD_MAX - 1) :] if entry.value else []
            try:
                await self._kv.update(_key(phone), b"\n".join([*kept, wire]), last=entry.revision)
            except KeyWrongLastSequenceError:
                continue
            held = True
            break
        if not held:
            raise RuntimeError(f"could not hold a message for {phone}: too much contention")
        await self._nc.publish(wake_subject(phone))

    async def take(self, phone: str) -> list[bytes]:
        """Everything held for ``phone``, removed: each message is taken once."""
        async for _ in cas_attempts(_ATTEMPTS):
            try:
                entry = await self._kv.get(_key(phone))
            except KeyNotFoundError:
                return []
            if not entry.value:
                return []
            try:
                await self._kv.delete(_key(phone), last=entry.revision)
            except KeyWrongLastSequenceError:
                continue  # a message arrived meanwhile: take it too
            return entry.value.split(b"\n")
        return []  # the next wake-up or connect takes them

    async def drop(self, phone: str) -> None:
        """The account logged out: what waited for it is gone, as on WhatsApp."""
        await self._kv.delete(_key(phone))  # a tombstone even when nothing waited

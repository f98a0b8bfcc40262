"""One law for every wait before trying again (issue 14).

The *ceiling* of attempt ``n`` (counted from 1) doubles from the base up to a cap:
``min(max_s, base_s * 2 ** (n - 1))``. The delay drawn under it depends on the jitter:

- ``"full"`` — uniform between ``floor_s`` and the ceiling. With ``floor_s = 0`` the
  classic full jitter (CAS conflicts: contenders spread out at once); with ``floor_s =
  base_s`` the agent's reconnect law (never sooner than the base, issue 3).
- ``"proportional"`` — the ceiling plus up to ``spread`` of it (webhook retries: the
  schedule stays readable in the receiver's log, 0-10 % apart).
- ``"none"`` — the ceiling itself.

Users:

- :class:`Backoff` alone: a delay for attempt ``n`` (webhook dispatcher, supervisor).
- :class:`Retrier`: the state of one retry loop (attempts so far, reset on success,
  ``await sleep()``) — the agent's event publisher and outbox restore, KV mirrors.
- :func:`cas_attempts`: the attempts of a KV compare-and-set loop, a short full-jitter
  pause between conflicts.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Literal

Jitter = Literal["full", "proportional", "none"]


@dataclass(frozen=True, slots=True)
class Backoff:
    base_s: float
    max_s: float
    jitter: Jitter = "full"
    floor_s: float = 0.0  # "full": the shortest delay
    spread: float = 0.1  # "proportional": at most this share of the ceiling added

    def __post_init__(self) -> None:
        if self.base_s <= 0 or self.max_s < self.base_s:
            raise ValueError(f"backoff needs 0 < base_s <= max_s (got {self.base_s}, {self.max_s})")
        if not 0 <= self.floor_s <= self.base_s:
            raise ValueError("floor_s must lie between 0 and base_s")
        if self.spread < 0:
            raise ValueError("spread must not be negative")

    def ceiling(self, attempt: int) -> float:
        """``min(max_s, base_s * 2 ** (attempt - 1))``; attempts below 1 count as 1."""
        exponent = max(0, attempt - 1)
        if exponent >= 1024:  # 2.0 ** 1024 overflows; far past any cap anyway
            return self.max_s
        return min(self.max_s, self.base_s * 2.0**exponent)

    def delay(self, attempt: int) -> float:
        """The wait before trying again after ``attempt`` failed attempts."""
        ceiling = self.ceiling(attempt)
        if self.jitter == "full":
            return random.uniform(min(self.floor_s, ceiling), ceiling)
        if self.jitter == "proportional":
            return ceiling * random.uniform(1.0, 1.0 + self.spread)
        return ceiling


class Retrier:
    """One retry loop's state: ``await retrier.sleep()`` after each failure (the wait
    grows by the law), ``retrier.reset()`` after a success."""

    __slots__ = ("attempt", "backoff")

    def __init__(self, backoff: Backoff) -> None:
        self.backoff = backoff
        self.attempt = 0  # failures since the last success

    def next_delay(self) -> float:
        self.attempt += 1
        return self.backoff.delay(self.attempt)

    async def sleep(self) -> float:
        """Count a failure and wait; returns the seconds waited."""
        delay = self.next_delay()
        await asyncio.sleep(delay)
        return delay

    def reset(self) -> None:
        self.attempt = 0


# a KV compare-and-set that lost: the other writer is done within a round trip or two
CAS = Backoff(base_s=0.002, max_s=0.05, jitter="full")


async def cas_attempts(attempts: int, backoff: Backoff = CAS) -> AsyncIterator[int]:
    """Attempt numbers 0..attempts-1 of a compare-and-set loop, pausing by ``backoff``
    between them (not before the first). The loop ``continue``s on a conflict and
    returns on success; running out is the caller's to report."""
    for attempt in range(attempts):
        if attempt:
            await asyncio.sleep(backoff.delay(attempt))
        yield attempt

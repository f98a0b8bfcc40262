"""Outbound pacing for one session (DESIGN §6).

WhatsApp bans numbers that send too fast or too regularly. A :class:`Pacer` decides *when*
the next queued message may go: a token bucket (rate and burst), a minimum gap per
recipient, random jitter on every wait, and a daily cap. It never drops anything; the
bounded queue in front of it refuses new work instead (the caller answers 429).

The token bucket is shared by every recipient of the session; the per-recipient gap is
not, so the sender may pass over a message whose recipient must still wait and send a
later one to somebody else (order per recipient is kept; see the supervisor).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable

from contract.protocol import PacingSettings

DAY_S = 86400.0


class Pacer:
    def __init__(
        self,
        settings: PacingSettings,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        self._clock = clock
        self._wall_clock = wall_clock
        self._rng = rng or random.Random()
        self._tokens = float(settings.burst)
        self._refilled_at = clock()
        self._last_sent_to: dict[str, float] = {}
        self._day = self._today()
        self._sent_today = 0

    def reconfigure(self, settings: PacingSettings) -> None:
        self.settings = settings
        self._tokens = min(self._tokens, float(settings.burst))

    def _today(self) -> int:
        return int(self._wall_clock() // DAY_S)

    def _refill(self, now: float) -> None:
        elapsed = now - self._refilled_at
        self._refilled_at = now
        self._tokens = min(
            float(self.settings.burst), self._tokens + elapsed * self.settings.rate_per_s
        )

    @property
    def sent_today(self) -> int:
        if self._today() != self._day:
            return 0
        return self._sent_today

    def seconds_until_next_day(self) -> float:
        return DAY_S - (self._wall_clock() % DAY_S)

    def remaining_today(self) -> int | None:
        """Messages that may still go out today (None = no cap: pacing disabled)."""
        if not self.settings.enabled:
            return None
        return max(0, self.settings.daily_cap - self.sent_today)

    def cap_reached(self) -> bool:
        remaining = self.remaining_today()
        return remaining is not None and remaining <= 0

    # -- waits (without jitter) ----------------------------------------------------------

    def token_wait(self) -> float:
        """Seconds until the bucket holds a token (0 = now); the daily cap counts too."""
        if not self.settings.enabled:
            return 0.0
        if self.cap_reached():
            return self.seconds_until_next_day()
        self._refill(self._clock())
        if self._tokens >= 1.0:
            return 0.0
        return (1.0 - self._tokens) / self.settings.rate_per_s

    def recipient_wait(self, recipient: str) -> float:
        """Seconds until ``recipient`` may receive the next message (0 = now)."""
        if not self.settings.enabled:
            return 0.0
        last = self._last_sent_to.get(recipient)
        if last is None:
            return 0.0
        return max(0.0, last + self.settings.min_gap_per_recipient_s - self._clock())

    def jittered(self, wait: float) -> float:
        """A wait lengthened by up to ``jitter`` (never shortened below the configured pace)."""
        if wait <= 0:
            return 0.0
        return wait * (1.0 + self._rng.uniform(0.0, max(0.0, self.settings.jitter)))

    def delay_for(self, recipient: str) -> float:
        """Seconds to wait before a message to ``recipient`` may go (0 = now), jittered."""
        return self.jittered(max(self.token_wait(), self.recipient_wait(recipient)))

    def record_sent(self, recipient: str) -> None:
        """Account one message that went out now."""
        if self._today() != self._day:
            self._day, self._sent_today = self._today(), 0
        self._sent_today += 1
        if not self.settings.enabled:
            return
        now = self._clock()
        self._refill(now)
        self._tokens = max(0.0, self._tokens - 1.0)
        self._last_sent_to[recipient] = now
        if len(self._last_sent_to) > 10_000:
            horizon = now - self.settings.min_gap_per_recipient_s
            self._last_sent_to = {k: v for k, v in self._last_sent_to.items() if v > horizon}

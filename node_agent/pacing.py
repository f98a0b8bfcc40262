"""Outbound pacing for one session (DESIGN §6).

WhatsApp bans numbers that send too fast or too regularly. A :class:`Pacer` decides *when*
the next queued message may go: a token bucket (rate and burst), a minimum gap per
recipient, random jitter on every wait, and a daily cap. It never drops anything; the
bounded queue in front of it refuses new work instead (the caller answers 429).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable

from node_agent.protocol import PacingSettings

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

    def cap_reached(self) -> bool:
        return self.settings.enabled and self.sent_today >= self.settings.daily_cap

    def delay_for(self, recipient: str) -> float:
        """Seconds to wait before a message to ``recipient`` may go (0 = now)."""
        if not self.settings.enabled:
            return 0.0
        if self.cap_reached():
            return self.seconds_until_next_day()
        now = self._clock()
        self._refill(now)
        wait = 0.0
        if self._tokens < 1.0:
            wait = (1.0 - self._tokens) / self.settings.rate_per_s
        last = self._last_sent_to.get(recipient)
        if last is not None:
            wait = max(wait, last + self.settings.min_gap_per_recipient_s - now)
        if wait <= 0:
            return 0.0
        return wait * (1.0 + self._rng.uniform(0.0, self.settings.jitter))

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

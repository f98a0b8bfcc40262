"""What the API does while Valkey is unreachable (docs/security.md, "Valkey down").

Valkey holds nothing that must survive — caches, rate-limit state, idempotency keys — so
the API keeps serving without it, and says so:

- **read caches**: bypassed, reads go to the node and nothing is written
  (``X-Cache: miss``); when Valkey is back, status, QR and history entries are dropped
  once, since invalidations may have been missed meanwhile;
- **rate limits**: the same limits, enforced per worker process by an in-memory GCRA
  (a client may get up to workers times the limit); after a Valkey restart quotas start
  full;
- **sends with an Idempotency-Key**: 503 ``idempotency_unavailable`` with
  ``Retry-After: 1`` (a reused key could not be checked against its first body); keys
  stored before a Valkey restart are gone, but a retried key maps to the same message id,
  which the agent dedupes;
- **everything else** (sends without a key, session operations, tenants): unaffected;
- ``/monitoring/ready``: 200 ``degraded`` with ``valkey: error ...`` (readiness needs NATS).

After a failure the guard does not touch Valkey for ``probe_interval_s`` (every request
would otherwise pay a connect timeout); the first request after that probes it. Gauge
``zapfleet_api_valkey_up`` and counter ``zapfleet_api_valkey_degraded_total{feature}``
show it, and one warning is logged per outage (one info line when it ends, with its
length).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import valkey.exceptions
from prometheus_client import Counter, Gauge

from control_plane.problems import ProblemError

log = logging.getLogger(__name__)
T = TypeVar("T")

VALKEY_ERRORS: tuple[type[BaseException], ...] = (
    valkey.exceptions.ConnectionError,
    valkey.exceptions.TimeoutError,
    valkey.exceptions.BusyLoadingError,
    ConnectionError,
    TimeoutError,
    OSError,
)

VALKEY_UP = Gauge(
    "zapfleet_api_valkey_up",
    "1 while Valkey answers every worker, 0 while one serves in degraded mode",
    multiprocess_mode="livemin",
)
DEGRADED = Counter(
    "zapfleet_api_valkey_degraded_total",
    "Operations served without Valkey (degraded mode), by feature",
    ["feature"],
)


class ValkeyGuard:
    def __init__(self, probe_interval_s: float = 1.0) -> None:
        self.probe_interval_s = probe_interval_s
        self.down_since: float | None = None
        self._skip_until = 0.0
        self._on_recovery: list[Callable[[], Awaitable[object]]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._gauge = VALKEY_UP
        self._gauge.set(1)

    @property
    def up(self) -> bool:
        return self.down_since is None

    def on_recovery(self, callback: Callable[[], Awaitable[object]]) -> None:
        """Run ``callback`` (once per outage) when Valkey answers again."""
        self._on_recovery.append(callback)

    def usable(self) -> bool:
        return time.monotonic() >= self._skip_until

    def failed(self, feature: str, exc: BaseException) -> None:
        self._skip_until = time.monotonic() + self.probe_interval_s
        DEGRADED.labels(feature).inc()
        if self.down_since is None:
            self.down_since = time.monotonic()
            self._gauge.set(0)
            log.warning(
                "valkey unreachable: serving in degraded mode",
                extra={"feature": feature, "error": repr(exc)},
            )

    def succeeded(self) -> None:
        if self.down_since is None:
            return
        outage_s = time.monotonic() - self.down_since
        self.down_since = None
        self._gauge.set(1)
        log.info("valkey reachable again", extra={"outage_s": round(outage_s, 2)})
        for callback in self._on_recovery:
            task = asyncio.create_task(self._recover(callback), name="valkey-recovery")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _recover(self, callback: Callable[[], Awaitable[object]]) -> None:
        try:
            await callback()
        except VALKEY_ERRORS as exc:
            self.failed("recovery", exc)
        except Exception:
            log.exception("valkey recovery step failed")

    async def call(self, feature: str, operation: Callable[[], Awaitable[T]], fallback: T) -> T:
        """``await operation()``, or ``fallback`` while Valkey is unreachable."""
        if not self.usable():
            DEGRADED.labels(feature).inc()
            return fallback
        try:
            result = await operation()
        except VALKEY_ERRORS as exc:
            self.failed(feature, exc)
            return fallback
        self.succeeded()
        return result

    async def require(self, feature: str, operation: Callable[[], Awaitable[T]]) -> T:
        """``await operation()``, or a 503 problem while Valkey is unreachable."""
        unavailable = ProblemError(
            503,
            f"{feature}_unavailable",
            f"{feature.replace('_', ' ')} needs Valkey, which is unreachable; retry shortly",
            headers={"Retry-After": "1"},
        )
        if not self.usable():
            DEGRADED.labels(feature).inc()
            raise unavailable
        try:
            result = await operation()
        except VALKEY_ERRORS as exc:
            self.failed(feature, exc)
            raise unavailable from None
        self.succeeded()
        return result

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


class LocalGcra:
    """The GCRA of :mod:`control_plane.ratelimit` in process memory, for degraded mode.
    Keys are bounded: past ``max_keys`` the table starts afresh (quotas full again)."""

    def __init__(self, max_keys: int = 100_000) -> None:
        self.max_keys = max_keys
        self._tat: dict[str, float] = {}

    def check(
        self, keys: list[str], limits: list[tuple[int, int]]
    ) -> tuple[bool, int, int, int, int]:
        """Same answer as the Lua script: (allowed, index, remaining, retry_ms, reset_ms)."""
        now = time.monotonic() * 1000
        new_tats: list[float] = []
        deny_index, deny_retry = 0, 0.0
        for index, (key, (limit, period)) in enumerate(zip(keys, limits, strict=True), 1):
            step = period / limit
            tat = max(self._tat.get(key, now), now)
            new_tat = tat + step
            allow_at = new_tat - period
            if allow_at > now and allow_at - now > deny_retry:
                deny_index, deny_retry = index, allow_at - now
            new_tats.append(new_tat)
        if deny_index:
            reset = self._tat.get(keys[deny_index - 1], now) - now
            return False, deny_index, 0, int(deny_retry) + 1, int(reset) + 1
        if len(self._tat) >= self.max_keys:
            self._tat.clear()
        best = (1, -1, 0)
        for index, (key, new_tat, (limit, period)) in enumerate(
            zip(keys, new_tats, limits, strict=True), 1
        ):
            self._tat[key] = new_tat
            remaining = int((period - (new_tat - now)) / (period / limit))
            if best[1] < 0 or remaining < best[1]:
                best = (index, remaining, int(new_tat - now) + 1)
        return True, best[0], best[1], 0, best[2]

"""Read caches in Valkey (DESIGN §7, docs/api.md).

| cache | key (after the prefix) | TTL | invalidated by |
|---|---|---|---|
| status | ``c:status:<session>`` | next status event, ≤ 1 h | ``session.*`` events, operations |
| QR | ``c:qr:<session>`` | 30 s, ≤ the code's expiry | ``session.qr`` / ``session.*`` |
| numbers | ``c:num:<tenant>:<number>`` | 4 h valid, 2 h invalid | TTL only (rarely changes) |
| history | ``c:hist:<session>`` (hash by limit) | 60 s | session operations, TTL |

``<session>`` is :func:`cache_id`: ``<tenant>.<session_id>`` (names are per tenant; a
delete invalidates them before the name can be reused).

Every key is prefixed and has a TTL. A status value is written only if no status event
arrived since the read that produced it: each session has a generation counter that
events bump, and the write is a compare-and-set on it (a Lua script), so a slow agent
reply can never overwrite a newer state with an older one.

Events reach the caches through the JetStream durable consumer ``zf-api-cache`` on
``zf.events.*.*.session.>``, shared by every control-plane worker and replica (each event
is handled once). Hits and misses are counted in ``zapfleet_api_cache_requests_total``.

While Valkey is unreachable every look-up is a miss and nothing is written; when it is
back, status, QR and history entries are dropped once (:mod:`control_plane.valkey_guard`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import msgspec
import valkey.asyncio as valkey
from nats.errors import TimeoutError as NatsTimeout
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.client import JetStreamContext
from prometheus_client import Counter

from contract.protocol import EVENTS_STREAM, SessionRecord, name_key
from control_plane.resp import HotClient, ValkeyPyAdapter
from control_plane.settings import ControlPlaneSettings
from control_plane.valkey_guard import ValkeyGuard

log = logging.getLogger(__name__)

CACHE_REQUESTS = Counter(
    "zapfleet_api_cache_requests_total", "Cache look-ups by cache and result", ["cache", "result"]
)
CACHE_INVALIDATIONS = Counter(
    "zapfleet_api_cache_invalidations_total", "Cache entries invalidated by events", ["reason"]
)
CACHE_NAMES = ("status", "qr", "numbers", "history")
for _name in CACHE_NAMES:  # export zeros from the start, not only after a first look-up
    for _result in ("hit", "miss"):
        CACHE_REQUESTS.labels(_name, _result)
INVALIDATOR = "zf-api-cache"
INVALIDATE_SUBJECT = "zf.events.*.*.session.>"

# KEYS[1] value key, KEYS[2] generation key; ARGV[1] generation read, ARGV[2] value, ARGV[3] ttl ms
_SET_IF_GENERATION = """
local gen = redis.call('GET', KEYS[2]) or '0'
if gen == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0
"""


def cache_id(record: SessionRecord) -> str:
    """What the caches of a session are keyed by: its tenant and name, which its events
    carry too (the invalidator needs no lookup)."""
    return name_key(record.spec.tenant, record.spec.session_id)


def _count(cache: str, hit: bool) -> None:
    CACHE_REQUESTS.labels(cache, "hit" if hit else "miss").inc()


class ApiCache:
    def __init__(
        self,
        client: valkey.Valkey,
        settings: ControlPlaneSettings,
        hot: HotClient | None = None,
        guard: ValkeyGuard | None = None,
    ) -> None:
        self.client = client
        self.hot = hot or ValkeyPyAdapter(client)
        self.guard = guard or ValkeyGuard()
        self.settings = settings
        self.prefix = settings.cache_prefix + "c:"
        self._status_ttl_ms = round(settings.cache_status_ttl_s * 1000)
        # a generation outlives the longest-lived value it guards
        self._generation_ttl_s = round(settings.cache_status_ttl_s * 2)

    def _key(self, cache: str, *parts: str) -> str:
        return self.prefix + cache + ":" + ":".join(parts)

    # -- status ------------------------------------------------------------------------

    def status_keys(self, session_id: str) -> tuple[str, str]:
        """The keys of a session's cached status and of its generation."""
        return self._key("status", session_id), self._key("gen", session_id)

    @staticmethod
    def count_status(hit: bool) -> None:
        _count("status", hit)

    async def get_status(self, session_id: str) -> tuple[bytes | None, bytes]:
        """The cached status (or None) and the generation to pass to :meth:`put_status`."""
        keys = self.status_keys(session_id)
        value, generation = await self.guard.call(
            "cache", lambda: self.hot.execute("MGET", *keys), [None, None]
        )
        _count("status", value is not None)
        return value, generation or b"0"

    async def put_status(self, session_id: str, generation: bytes, value: bytes) -> bool:
        stored = await self.guard.call(
            "cache",
            lambda: self.hot.evalsha(
                _SET_IF_GENERATION,
                list(self.status_keys(session_id)),
                [generation, value, self._status_ttl_ms],
            ),
            0,
        )
        return bool(stored)

    # -- QR ----------------------------------------------------------------------------

    async def get_qr(self, session_id: str) -> bytes | None:
        value: bytes | None = await self.guard.call(
            "cache", lambda: self.client.get(self._key("qr", session_id)), None
        )
        _count("qr", value is not None)
        return value

    async def put_qr(self, session_id: str, value: bytes, ttl_s: float) -> None:
        ttl_ms = round(min(self.settings.cache_qr_ttl_s, ttl_s) * 1000)
        if ttl_ms > 0:
            await self.guard.call(
                "cache",
                lambda: self.client.set(self._key("qr", session_id), value, px=ttl_ms),
                None,
            )

    # -- numbers -----------------------------------------------------------------------

    async def get_numbers(self, tenant: str, numbers: list[str]) -> list[bytes | None]:
        if not numbers:
            return []
        keys = [self._key("num", tenant, n) for n in numbers]
        values: list[bytes | None] = await self.guard.call(
            "cache", lambda: self.client.mget(keys), [None] * len(numbers)
        )
        for value in values:
            _count("numbers", value is not None)
        return values

    async def put_numbers(self, tenant: str, results: list[tuple[str, bool, bytes]]) -> None:
        if not results:
            return
        await self.guard.call("cache", lambda: self._put_numbers(tenant, results), None)

    async def _put_numbers(self, tenant: str, results: list[tuple[str, bool, bytes]]) -> None:
        async with self.client.pipeline(transaction=False) as pipe:
            for number, on_whatsapp, value in results:
                ttl = (
                    self.settings.cache_number_valid_ttl_s
                    if on_whatsapp
                    else self.settings.cache_number_invalid_ttl_s
                )
                pipe.set(self._key("num", tenant, number), value, px=round(ttl * 1000))
            await pipe.execute()

    # -- history -----------------------------------------------------------------------

    async def get_history(self, session_id: str, limit: int) -> bytes | None:
        key = self._key("hist", session_id)
        value: bytes | None = await self.guard.call(
            "cache",
            lambda: self.client.hget(key, str(limit)),  # type: ignore[arg-type,return-value]
            None,
        )
        _count("history", value is not None)
        return value

    async def put_history(self, session_id: str, limit: int, value: bytes) -> None:
        await self.guard.call("cache", lambda: self._put_history(session_id, limit, value), None)

    async def _put_history(self, session_id: str, limit: int, value: bytes) -> None:
        key = self._key("hist", session_id)
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.hset(key, str(limit), value)  # type: ignore[arg-type]
            pipe.expire(key, max(1, round(self.settings.cache_history_ttl_s)), nx=True)
            await pipe.execute()

    # -- invalidation ------------------------------------------------------------------

    async def invalidate_session(self, session_id: str, *, qr: bool = True) -> None:
        """Forget what is cached of a session and bump its status generation (when Valkey
        is unreachable, :meth:`drop_volatile` runs once it is back)."""
        await self.guard.call("cache", lambda: self._invalidate_session(session_id, qr), None)

    async def _invalidate_session(self, session_id: str, qr: bool) -> None:
        gen = self._key("gen", session_id)
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.incr(gen)
            pipe.expire(gen, self._generation_ttl_s)
            pipe.delete(self._key("status", session_id), self._key("hist", session_id))
            if qr:
                pipe.delete(self._key("qr", session_id))
            await pipe.execute()

    async def invalidate_qr(self, session_id: str) -> None:
        await self.guard.call("cache", lambda: self.client.delete(self._key("qr", session_id)), 0)

    async def drop_volatile(self) -> int:
        """Drop status, QR, history and group entries: after an outage of Valkey, some of
        them may have missed their invalidation. Number checks stay (they expire by TTL)."""
        volatile = ("status", "qr", "history", "groups")  # groups: issue 16
        return sum([await self._clear(cache) for cache in volatile])

    async def clear(self, cache: str | None = None) -> int:
        """Delete every cached entry (or those of one cache); returns how many (503 while
        Valkey is unreachable)."""
        return await self.guard.require("cache", lambda: self._clear(cache))

    async def _clear(self, cache: str | None) -> int:
        names = {"numbers": "num", "history": "hist", "groups": "grp"}
        pattern = self.prefix + (names.get(cache, cache) + ":*" if cache else "*")
        deleted = 0
        batch: list[bytes] = []
        async for key in self.client.scan_iter(match=pattern, count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                deleted += await self.client.unlink(*batch)
                batch.clear()
        if batch:
            deleted += await self.client.unlink(*batch)
        return deleted


class _EventHead(msgspec.Struct):
    type: str
    tenant: str
    session_id: str


_head_decoder = msgspec.json.Decoder(_EventHead)


class CacheInvalidator:
    """Consumes ``session.*`` events and invalidates what they make stale."""

    durable = INVALIDATOR  # a subclass for other events has its own (control_plane/groups.py)
    subject = INVALIDATE_SUBJECT

    def __init__(self, js: JetStreamContext, cache: ApiCache) -> None:
        self.js = js
        self.cache = cache
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="cache-invalidator")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    async def _run(self) -> None:
        config = ConsumerConfig(
            durable_name=self.durable,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.NEW,
            filter_subject=self.subject,
            ack_wait=10,
            max_deliver=5,
        )
        sub: Any = None
        while sub is None:
            try:
                sub = await self.js.pull_subscribe(
                    self.subject, durable=self.durable, stream=EVENTS_STREAM, config=config
                )
            except Exception as exc:
                log.warning("cache invalidator cannot subscribe", extra={"error": repr(exc)})
                await asyncio.sleep(1)
        while True:
            try:
                batch = await sub.fetch(100, timeout=1.0)
            except (NatsTimeout, TimeoutError):
                continue
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("cache invalidator fetch failed", extra={"error": repr(exc)})
                await asyncio.sleep(0.5)
                continue
            for msg in batch:
                try:
                    await self.handle(msg.data)
                    await msg.ack()
                except Exception as exc:
                    log.warning("cache invalidation failed", extra={"error": repr(exc)})
                    with contextlib.suppress(Exception):
                        await msg.nak(delay=0.5)

    async def handle(self, data: bytes) -> None:
        head = _head_decoder.decode(data)
        if head.type == "session.qr":
            CACHE_INVALIDATIONS.labels("qr").inc()
            await self.cache.invalidate_qr(name_key(head.tenant, head.session_id))
        else:
            CACHE_INVALIDATIONS.labels("status").inc()
            await self.cache.invalidate_session(name_key(head.tenant, head.session_id))

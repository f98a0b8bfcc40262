"""Follow a KV bucket into memory: the one way every process does it (issue 14).

A :class:`KVMirror` watches a bucket (or a key pattern) and hands every entry to its
followers — the objects that keep what they need of it in memory (the session index,
the key cache, the webhook registry, the fleet view, the agent's fencing, the sim's
phone book). The mirror owns the watch; followers own their data and its rules
(revision order, tombstones, fencing).

What the mirror guarantees:

- **Initial load, then changes.** Each *pass* starts a fresh watch that first delivers
  the current value of every key (``initial=True``), then every change.
- **Readiness.** :attr:`KVMirror.ready` is set once the first load is complete; a
  follower added later has its own event, set when a load that includes it completes
  (adding one to a running mirror starts a new pass, so it sees every key).
- **Restart with backoff.** A pass that fails (NATS away, the stream not back yet) is
  started again after a wait by :data:`RESTART` (``zapfleet.backoff``), reset once a
  load completes.
- **Liveness.** A watch whose consumer vanished (a NATS restart: nats-py's ordered
  consumer then tries to re-create it once, and goes quiet if that fails) does not fail,
  it just delivers nothing. So the mirror checks every :data:`TICK_S` whether the
  connection reconnected since the pass began (no network), and every ``check_s``
  whether the pass's consumer still exists on the server. Either ends the pass and a
  new one reloads the bucket. A follower sees
  ``on_reset`` before the reload's first entry and ``on_loaded(keys, revision)`` after
  its last: keys not delivered by the reload are gone (deleted while nobody watched).
  ``rebuild_s`` additionally reloads on a fixed period, for followers that prefer it.
- **Stop.** :meth:`KVMirror.stop` ends the pass and deletes its consumer on the server at
  once (:func:`zapfleet._kv.close`), instead of leaving it for 5 minutes.

Bound: a change made while NATS is up reaches the followers as fast as the watch
delivers it (milliseconds). After NATS comes back from a restart, a change reaches them
within :data:`TICK_S` (a reconnect), or ``check_s`` (a consumer lost without one), + a
restart backoff (≤ :data:`RESTART`'s cap per try while JetStream recovers) + one reload.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import inspect
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from nats.js.errors import NotFoundError
from nats.js.kv import KeyValue

from zapfleet._kv import close
from zapfleet.backoff import Backoff, Retrier

log = logging.getLogger(__name__)

# restarts of a failed pass: 0.1 s, 0.2 s, ... at most 2 s (never sooner than 0.1 s)
RESTART = Backoff(base_s=0.1, max_s=2.0, jitter="full", floor_s=0.1)
# how often a pass asks the server whether its consumer still exists (one JetStream API
# request); whether the connection reconnected is checked every TICK_S, locally
CHECK_S = 5.0
TICK_S = 0.25
DELETES = ("DEL", "PURGE")


@dataclass(frozen=True, slots=True)
class Change:
    """One entry as the watch delivered it."""

    key: str
    value: bytes | None  # None for a delete or purge
    operation: str | None  # None (a put), "DEL" or "PURGE"
    revision: int
    initial: bool  # part of a (re)load, not a change seen live
    age_s: float = 0.0  # initial values: how old the entry is (server clock), else 0

    @property
    def deleted(self) -> bool:
        return self.operation in DELETES or not self.value


OnChange = Callable[[Change], Awaitable[None] | None]


@dataclass(eq=False)
class Follower:
    on_change: OnChange
    on_reset: Callable[[], None] | None = None
    on_loaded: Callable[[set[str], int], None] | None = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)


class _Stale(Exception):
    """The pass's watch is dead or due for a rebuild."""


class KVMirror:
    """Follows ``kv`` (keys matching ``keys``) for its followers; see the module doc."""

    def __init__(
        self,
        kv: KeyValue,
        name: str,
        *,
        keys: str = ">",
        check_s: float = CHECK_S,
        rebuild_s: float | None = None,
        restart: Backoff = RESTART,
    ) -> None:
        self.kv = kv
        self.name = name
        self.keys = keys
        self.check_s = check_s
        self.rebuild_s = rebuild_s
        self._retrier = Retrier(restart)
        self._followers: list[Follower] = []
        self._task: asyncio.Task[None] | None = None
        self._restart_now = asyncio.Event()
        self.ready = asyncio.Event()
        self.passes = 0  # watches started so far
        self.reloads = 0  # passes that ended because the watch was dead or due

    # -- followers ---------------------------------------------------------------------

    def follow(
        self,
        on_change: OnChange,
        *,
        on_reset: Callable[[], None] | None = None,
        on_loaded: Callable[[set[str], int], None] | None = None,
    ) -> asyncio.Event:
        """Add a follower; returns its readiness event. On a running mirror a new pass
        starts, so the follower gets every key's current value too."""
        follower = Follower(on_change, on_reset, on_loaded)
        self._followers.append(follower)
        if self._task is not None:
            self._restart_now.set()
        return follower.ready

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self, wait_s: float | None = None) -> bool:
        """Start following; with ``wait_s``, wait that long at most for the first load.
        Returns whether it is loaded."""
        self.launch()
        if wait_s is None:
            return self.ready.is_set()
        return await self.wait_ready(wait_s)

    def launch(self) -> None:
        """Start following without waiting (from synchronous code)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"kv-mirror-{self.name}")

    async def wait_ready(self, timeout_s: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.ready.wait(), timeout_s)
        return self.ready.is_set()

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    # -- the passes --------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            self._restart_now.clear()
            try:
                await self._pass()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                errors = exc.exceptions if isinstance(exc, ExceptionGroup) else (exc,)
                failed = [e for e in errors if not isinstance(e, _Stale)]
                if not failed:
                    self.reloads += 1
                    continue
                delay = self._retrier.next_delay()
                log.warning(
                    "KV mirror watch failed; restarting",
                    extra={"bucket": self.name, "error": repr(failed[0]), "retry_in_s": delay},
                )
                await asyncio.sleep(delay)

    async def _pass(self) -> None:
        nc = self.kv._js._nc
        reconnects = nc.stats["reconnects"]
        self.passes += 1
        watcher: Any = await self.kv.watch(self.keys)
        try:
            # how many entries make up the current values (see zapfleet._kv.scan: nats-py's
            # "all delivered" marker can come before entries still on the wire)
            info = await watcher._sub.consumer_info()
            expected = info.delivered.consumer_seq + info.num_pending
            async with asyncio.TaskGroup() as group:
                group.create_task(self._read(watcher, expected))
                group.create_task(self._check(watcher, reconnects))
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(close(watcher), 2.0)

    async def _read(self, watcher: Any, expected: int) -> None:
        followers = list(self._followers)
        for follower in followers:
            if follower.on_reset is not None:
                follower.on_reset()
        seen: set[str] = set()
        top = 0
        count = 0
        loading = True
        if expected == 0:  # an empty bucket (or key range): loaded as it is
            loading = False
            self._loaded(followers, seen, top)
        async for entry in watcher:
            if entry is None:  # nats-py's marker: the count above decides instead
                continue
            count += 1
            revision = entry.revision or 0
            age = 0.0
            if loading:
                seen.add(entry.key)
                top = max(top, revision)
                created: object = entry.created
                if isinstance(created, datetime.datetime):
                    age = max(0.0, time.time() - created.timestamp())
            change = Change(
                entry.key,
                None if entry.operation in DELETES else entry.value,
                entry.operation,
                revision,
                loading,
                age,
            )
            for follower in followers:
                await self._deliver(follower, change)
            if loading and (not entry.delta or count >= expected):
                loading = False
                self._loaded(followers, seen, top)
        raise _Stale  # the watcher was stopped under us

    async def _deliver(self, follower: Follower, change: Change) -> None:
        """A follower that fails on one entry (an undecodable value) does not stop the
        mirror: the entry is skipped for it."""
        try:
            result = follower.on_change(change)
            if inspect.isawaitable(result):
                await result
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning(
                "KV mirror follower failed on an entry; skipped",
                extra={"bucket": self.name, "kv_key": change.key, "error": repr(exc)},
            )

    def _loaded(self, followers: list[Follower], seen: set[str], top: int) -> None:
        for follower in followers:
            if follower.on_loaded is not None:
                follower.on_loaded(seen, top)
            follower.ready.set()
        self.ready.set()
        self._retrier.reset()

    async def _check(self, watcher: Any, reconnects: int) -> None:
        """Ends the pass (raises _Stale) once its watch cannot be trusted."""
        nc = self.kv._js._nc
        started = time.monotonic()
        tick = min(TICK_S, self.check_s)
        last_probe = time.monotonic()
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._restart_now.wait(), tick)
            if self._restart_now.is_set():
                raise _Stale("a follower was added")
            now = time.monotonic()
            if self.rebuild_s is not None and now - started >= self.rebuild_s:
                raise _Stale("periodic rebuild")
            if nc.stats["reconnects"] != reconnects and nc.is_connected:
                raise _Stale("reconnected: the consumer may be gone")
            if now - last_probe >= self.check_s and nc.is_connected:
                last_probe = now
                if await self._consumer_gone(watcher):
                    raise _Stale("consumer gone")

    async def _consumer_gone(self, watcher: Any) -> bool:
        sub = watcher._sub  # nats-py 2.16 (pinned): see zapfleet._kv.close
        stream, consumer = getattr(sub, "_stream", None), getattr(sub, "_consumer", None)
        if not stream or not consumer:
            return False
        try:
            await sub._js.consumer_info(stream, consumer, timeout=self.check_s)
        except NotFoundError:
            return True
        except Exception:  # NATS busy or away: the reconnect check covers that
            return False
        return False

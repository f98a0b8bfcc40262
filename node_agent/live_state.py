"""The last known live state of this node's sessions, in KV ``zf_session_state``.

The control plane lists sessions without asking any agent (docs/api.md, "Listing
sessions"): it follows this bucket in memory. The agent writes a session's
:class:`~contract.protocol.SessionInfo` (by internal key) whenever its state changes.
Writes never block a session: :meth:`StatePublisher.note` only marks the session dirty;
one task writes the newest info of each dirty session (many in flight at once), so a
burst of changes of one session costs one write. A failed write stays dirty and is
retried with backoff. Bound: a state change is in the bucket within one write round
trip while NATS is up; the control plane also learns every state an RPC answer shows.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from nats.js.kv import KeyValue

from contract.protocol import SessionInfo, encode
from zapfleet.backoff import Backoff, Retrier

log = logging.getLogger(__name__)

WINDOW = 256  # writes in flight at once
RETRY = Backoff(base_s=0.05, max_s=5.0, jitter="full", floor_s=0.05)


class StatePublisher:
    def __init__(self, kv: KeyValue, window: int = WINDOW) -> None:
        self.kv = kv
        self.window = window
        # per dirty session, what to write: its info, or None to delete its key
        self._dirty: dict[str, Callable[[], SessionInfo] | None] = {}
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()  # nothing dirty, nothing in flight
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self.written = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="session-state")

    def note(self, key: str, info: Callable[[], SessionInfo]) -> None:
        """The session ``key`` changed; ``info`` gives its current state when written."""
        self._dirty[key] = info
        self._idle.clear()
        self._wake.set()

    def forget(self, key: str, ran_here: bool) -> None:
        """The session is destroyed: its key goes (if this node ran it, or still has a
        write of it pending, which must not bring it back after the control plane's
        purge)."""
        if ran_here or key in self._dirty:
            self._dirty[key] = None
            self._idle.clear()
            self._wake.set()

    async def _write(self, key: str, info: Callable[[], SessionInfo] | None) -> None:
        if info is None:
            await self.kv.purge(key)
        else:
            await self.kv.put(key, encode(info()))

    async def _run(self) -> None:
        retry = Retrier(RETRY)
        while True:
            if not self._dirty:
                self._idle.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = [self._dirty.popitem() for _ in range(min(self.window, len(self._dirty)))]
            results = await asyncio.gather(
                *(self._write(key, info) for key, info in batch),
                return_exceptions=True,
            )
            failed = [(k, i) for (k, i), r in zip(batch, results, strict=True) if _failed(r)]
            self.written += len(batch) - len(failed)
            if failed:
                for key, info in failed:
                    self._dirty.setdefault(key, info)  # a newer note wins
                log.warning("session state write failed", extra={"pending": len(self._dirty)})
                await retry.sleep()
                continue
            retry.reset()

    async def close(self, limit_s: float = 2.0) -> None:
        """Write what is pending (for at most ``limit_s``), then stop."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), limit_s)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task


def _failed(result: object) -> bool:
    return isinstance(result, BaseException)

"""The node lease and the fencing of sessions on the agent side (DESIGN §4).

An agent may run a session only while (a) its node lease is alive and (b) KV
``zf_sessions`` assigns the session to this node at the epoch the agent runs it with.

- :class:`Lease` — the lease is renewed by every heartbeat stored in KV ``zf_nodes``. The
  renewal time is taken *before* the heartbeat is sent, so the agent's idea of its lease
  never outlives the control plane's (which counts from when it saw the heartbeat).
  :meth:`Lease.valid` is a monotonic-clock comparison, cheap enough for engines to call
  before every network action: after a freeze (SIGSTOP, a stalled VM) a session must not
  act before the agent had a chance to fence it.
- :class:`AssignmentWatch` — follows ``zf_sessions`` (a :class:`zapfleet._mirror.KVMirror`,
  so a watch that died with a NATS restart is replaced) and reports sessions whose record no
  longer assigns them to this node at their epoch (moved elsewhere, newer epoch, deleted),
  so the agent stops them even if it never lost its lease. Only a revision *newer* than
  the one the agent checked when it started the session counts: a watch lags behind
  direct reads, so the record as it was before the placement (no assignment yet) can
  arrive after the start, and must not stop it (issue 21).
- :func:`claim` — before (re)starting a session on its own (resume after a restart or
  after a fence), the agent takes a new epoch with a revision compare-and-set. A
  reconciler moving the session at the same moment does the same CAS on the same
  revision: exactly one of them wins, so the session never starts on two nodes.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

import msgspec
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from contract.protocol import SESSIONS_BUCKET, Assignment, SessionRecord
from zapfleet._kv import scan
from zapfleet._mirror import Change, KVMirror
from zapfleet.backoff import cas_attempts

log = logging.getLogger(__name__)

_record = msgspec.json.Decoder(SessionRecord)
_DELETES = ("DEL", "PURGE")


class Lease:
    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self._renewed_at = time.monotonic()

    @staticmethod
    def now() -> float:
        return time.monotonic()

    def renewed(self, sent_at: float) -> None:
        """A heartbeat sent at ``sent_at`` (monotonic) was stored."""
        self._renewed_at = max(self._renewed_at, sent_at)

    def silent_s(self) -> float:
        return time.monotonic() - self._renewed_at

    def valid(self) -> bool:
        return self.silent_s() <= self.ttl_s


def superseded(record: SessionRecord | None, node_id: str, epoch: int) -> str | None:
    """Why a session running here at ``epoch`` must stop, or None if it may go on."""
    if record is None:
        return "session deleted"
    # desired "stopped" alone is not a reason: the API stops (or logs out) the session on
    # its node itself, and must not find it already gone (a logout would not happen)
    assignment = record.assignment
    if assignment is None:
        return "session unassigned"
    if assignment.node_id != node_id:
        return f"session moved to {assignment.node_id}@{assignment.epoch}"
    if assignment.epoch > epoch:
        return f"superseded by epoch {assignment.epoch}"
    return None


class AssignmentWatch:
    """Calls ``on_superseded(session_id, reason)`` for every change of ``zf_sessions`` that
    takes a session away from this node. ``running(session_id)`` gives the epoch the
    agent runs a session with and the KV revision of the assignment it checked at start
    (None if it does not run it); entries at or below that revision are history."""

    def __init__(
        self,
        kv: KeyValue,
        node_id: str,
        running: Callable[[str], tuple[int, int] | None],
        on_superseded: Callable[[str, str], Awaitable[None]],
    ) -> None:
        self.kv = kv
        self.node_id = node_id
        self.running = running
        self.on_superseded = on_superseded
        self.mirror = KVMirror(kv, SESSIONS_BUCKET)
        self.mirror.follow(self._changed)

    def start(self) -> None:
        self.mirror.launch()

    async def stop(self) -> None:
        await self.mirror.stop()

    async def _changed(self, change: Change) -> None:
        # a reload delivers every key again, deletes included: observe() keeps only
        # what is newer than the revision each session was started on
        await self.observe(change.key, change.value, change.operation, change.revision)

    async def observe(
        self, key: str, value: bytes | None, operation: str | None, revision: int
    ) -> None:
        """One entry of ``zf_sessions`` as the watch delivers it, in whatever order."""
        running = self.running(key)
        if running is None:
            return
        epoch, started_at_revision = running
        if revision <= started_at_revision:
            return  # an older view than the one the session was started on
        record = None
        if operation not in _DELETES and value:
            try:
                record = _record.decode(value)
            except msgspec.DecodeError:
                return
        reason = superseded(record, self.node_id, epoch)
        if reason is not None:
            await self.on_superseded(key, reason)


async def assigned_to(kv: KeyValue, node_id: str) -> list[str]:
    """Ids of the sessions ``zf_sessions`` wants running on ``node_id``: one pass over the
    bucket's current values (a watch), not one read per key."""
    found: list[str] = []
    for entry in await scan(kv):
        if not entry.value:
            continue
        with contextlib.suppress(msgspec.DecodeError):
            record = _record.decode(entry.value)
            assignment = record.assignment
            if record.desired == "running" and assignment and assignment.node_id == node_id:
                found.append(entry.key)
    return found


async def claim(kv: KeyValue, session_id: str, node_id: str) -> SessionRecord | None:
    """Take a new epoch for a session KV assigns to this node, by revision CAS. Returns
    the claimed record, or None when the session is not (any more) ours to run."""
    async for _ in cas_attempts(5):
        try:
            entry = await kv.get(session_id)
        except KeyNotFoundError:
            return None
        if not entry.value:
            return None
        record = _record.decode(entry.value)
        current = record.assignment
        if record.desired != "running" or current is None or current.node_id != node_id:
            return None
        record.assignment = Assignment(node_id=node_id, epoch=current.epoch + 1)
        record.updated_at = time.time()
        try:
            await kv.update(session_id, msgspec.json.encode(record), last=entry.revision)
        except KeyWrongLastSequenceError:
            continue  # changed under us: read again and decide again
        return record
    return None

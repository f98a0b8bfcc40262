"""Desired state in NATS KV: session records (``zf_sessions``) and node heartbeats
(``zf_nodes``). Writes use revision compare-and-set so any number of control-plane
replicas can act at once without a lock."""

from __future__ import annotations

import time
from collections.abc import Callable

import msgspec
from nats.js.errors import (
    InvalidKeyError,
    KeyNotFoundError,
    KeyWrongLastSequenceError,
)
from nats.js.kv import KeyValue

from node_agent.protocol import NodeInfo, SessionRecord
from zapfleet._kv import scan

_encode = msgspec.json.encode
_record_decoder = msgspec.json.Decoder(SessionRecord)
_node_decoder = msgspec.json.Decoder(NodeInfo)


class ConflictError(Exception):
    """A compare-and-set lost the race too many times."""


class SessionStore:
    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv

    async def get(self, session_id: str) -> tuple[SessionRecord, int] | None:
        try:
            entry = await self.kv.get(session_id)
        except (KeyNotFoundError, InvalidKeyError):  # no KV key can have this name
            return None
        if not entry.value:
            return None
        return _record_decoder.decode(entry.value), entry.revision or 0

    async def create(self, record: SessionRecord) -> int:
        """Create a new record; raises KeyWrongLastSequenceError if the id exists."""
        record.created_at = record.updated_at = time.time()
        return await self.kv.create(record.spec.session_id, _encode(record))

    async def update(
        self, session_id: str, change: Callable[[SessionRecord], None], attempts: int = 10
    ) -> SessionRecord:
        """Read-modify-write with revision CAS, retried on conflict."""
        record, _ = await self.update_with_revision(session_id, change, attempts)
        return record

    async def update_with_revision(
        self, session_id: str, change: Callable[[SessionRecord], None], attempts: int = 10
    ) -> tuple[SessionRecord, int]:
        """:meth:`update`, also returning the revision written."""
        for _ in range(attempts):
            current = await self.get(session_id)
            if current is None:
                raise KeyNotFoundError
            record, revision = current
            change(record)
            record.updated_at = time.time()
            try:
                written = await self.kv.update(session_id, _encode(record), last=revision)
            except KeyWrongLastSequenceError:
                continue
            return record, written
        raise ConflictError(f"session {session_id}: too many concurrent updates")

    async def delete(self, session_id: str) -> None:
        await self.kv.delete(session_id)

    async def list(self) -> list[SessionRecord]:
        """Every record, in one pass over the bucket (not one read per key)."""
        return [_record_decoder.decode(e.value) for e in await scan(self.kv) if e.value]


class NodeDirectory:
    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv

    async def list(self) -> list[NodeInfo]:
        return [_node_decoder.decode(e.value) for e in await scan(self.kv) if e.value]

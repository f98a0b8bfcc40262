"""Desired state in NATS KV: session records (``zf_sessions``) and node heartbeats
(``zf_nodes``). Writes use revision compare-and-set so any number of control-plane
replicas can act at once without a lock."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable

import msgspec
from nats.js.errors import (
    APIError,
    InvalidKeyError,
    KeyNotFoundError,
    KeyWrongLastSequenceError,
)
from nats.js.kv import KeyValue

from contract.protocol import NodeInfo, SessionRecord, name_key, name_target, name_value
from zapfleet._kv import scan
from zapfleet.backoff import cas_attempts

_encode = msgspec.json.encode
_record_decoder = msgspec.json.Decoder(SessionRecord)
_node_decoder = msgspec.json.Decoder(NodeInfo)


class ConflictError(Exception):
    """A compare-and-set lost the race too many times."""


CLAIM_GRACE_S = 60.0  # a create writes its record right after it claims the name


class SessionExists(Exception):
    """The tenant already has a session of that name."""


class SessionStore:
    """Records in KV ``zf_sessions`` under their internal key (``SessionSpec.key``), and
    the per-tenant names in KV ``zf_session_names`` (``<tenant>.<name>`` -> key), which
    make a name unique per tenant (KV create) while two tenants may use the same one.
    Every method taking a ``session_id`` takes the internal key."""

    def __init__(self, kv: KeyValue, names: KeyValue | None = None) -> None:
        self.kv = kv
        self.names = names

    async def resolve(self, tenant: str, name: str) -> str | None:
        """The internal key of the tenant's session ``name``, None when it has none."""
        if self.names is None:
            return name
        try:
            entry = await self.names.get(name_key(tenant, name))
        except (KeyNotFoundError, InvalidKeyError):
            entry = None
        if entry is not None and entry.value:
            return name_target(entry.value)[0]
        return name if await self._legacy(tenant, name) else None

    async def _legacy(self, tenant: str, name: str) -> bool:
        """Whether a record older than uids (key = its name) is the tenant's ``name``:
        written before the upgrade and not migrated yet, or by a control plane that is
        not upgraded yet."""
        found = await self.get(name)
        if found is None:
            return False
        spec = found[0].spec
        return spec.uid is None and (spec.tenant, spec.session_id) == (tenant, name)

    async def claim_name(self, record: SessionRecord) -> None:
        """Take the record's name for its tenant; SessionExists if a session has it. A
        name whose record is gone (a delete or create that died half-way) is taken over."""
        if self.names is None:
            return
        spec = record.spec
        name = name_key(spec.tenant, spec.session_id)
        if await self._legacy(spec.tenant, spec.session_id):
            with contextlib.suppress(KeyWrongLastSequenceError):  # migrate it now
                await self.names.create(name, name_value(spec.session_id, 0.0))
            raise SessionExists(spec.session_id)
        async for _ in cas_attempts(10):
            try:
                await self.names.create(name, name_value(spec.key, time.time()))
                return
            except KeyWrongLastSequenceError:
                pass
            try:
                entry = await self.names.get(name)
            except KeyNotFoundError:
                continue
            holder, claimed_at = name_target(entry.value)
            # a holder without its record is a create that has yet to write it (the name
            # is claimed first), or a create or delete that died half-way: taken over
            # only once no create can still be under way
            fresh = time.time() - claimed_at < CLAIM_GRACE_S
            if holder and (fresh or await self._owns(holder, spec.tenant, spec.session_id)):
                raise SessionExists(spec.session_id)
            try:
                await self.names.update(
                    name, name_value(spec.key, time.time()), last=entry.revision
                )
                return
            except KeyWrongLastSequenceError:
                continue
        raise ConflictError(f"session {spec.session_id}: too many concurrent creates")

    async def _owns(self, key: str, tenant: str, name: str) -> bool:
        found = await self.get(key)
        return found is not None and (found[0].spec.tenant, found[0].spec.session_id) == (
            tenant,
            name,
        )

    async def release_name(self, record: SessionRecord) -> None:
        """Free the record's name, unless another record holds it now."""
        if self.names is None:
            return
        name = name_key(record.spec.tenant, record.spec.session_id)
        try:
            entry = await self.names.get(name)
        except KeyNotFoundError:
            return
        if name_target(entry.value)[0] != record.spec.key:
            return
        with contextlib.suppress(APIError):  # changed meanwhile: someone else's now
            await self.names.delete(name, last=entry.revision)

    async def migrate_names(self) -> int:
        """Give every record written before uids existed its name entry (key = its
        name); idempotent, run by every control plane at start. Returns how many."""
        if self.names is None:
            return 0
        added = 0
        for record in await self.list():
            if record.spec.uid is not None:
                continue
            with contextlib.suppress(KeyWrongLastSequenceError):
                await self.names.create(
                    name_key(record.spec.tenant, record.spec.session_id),
                    name_value(record.spec.key, 0.0),
                )
                added += 1
        return added

    async def get(self, session_id: str) -> tuple[SessionRecord, int] | None:
        try:
            entry = await self.kv.get(session_id)
        except (KeyNotFoundError, InvalidKeyError):  # no KV key can have this name
            return None
        if not entry.value:
            return None
        return _record_decoder.decode(entry.value), entry.revision or 0

    async def create(self, record: SessionRecord) -> int:
        """Create a new record under its internal key; raises KeyWrongLastSequenceError
        if the key exists (call :meth:`claim_name` first)."""
        record.created_at = record.updated_at = time.time()
        return await self.kv.create(record.spec.key, _encode(record))

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
        async for _ in cas_attempts(attempts):
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

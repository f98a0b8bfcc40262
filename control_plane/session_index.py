"""An in-process mirror of KV ``zf_sessions``, kept fresh by a KV watch.

The send hot path must not read KV on every request to learn where a session runs: this
index answers from memory. It is a cache of NATS state, not state of the control plane
(any replica rebuilds it at start from the bucket), and it is never the authority for a
write — writes still go through :class:`control_plane.store.SessionStore` with revision
CAS. Entries carry their KV revision, so an older value never replaces a newer one, and a
deletion leaves a tombstone so a slow read cannot bring a deleted session back.
A session not in the index (created on another replica a moment ago) is read from KV.

The index follows a :class:`zapfleet._mirror.KVMirror` of ``zf_sessions`` — the one
mirror of that bucket in the process (the webhook registry follows the same one). After
a reload (the watch died with a NATS restart), a record the reload no longer holds was
deleted meanwhile and is forgotten.

Records are keyed by their internal key (``SessionSpec.key``); callers name sessions per
tenant, so :meth:`SessionIndex.lookup` resolves ``(tenant, name)`` — from memory, or
through KV ``zf_session_names`` — and never finds another tenant's session.
"""

from __future__ import annotations

import asyncio
import bisect
import logging

import msgspec
from nats.js.kv import KeyValue

from contract.protocol import SESSIONS_BUCKET, SessionRecord
from control_plane.store import SessionStore
from zapfleet._mirror import Change, KVMirror

log = logging.getLogger(__name__)

_decoder = msgspec.json.Decoder(SessionRecord)
_MAX_TOMBSTONES = 100_000


class SessionIndex:
    def __init__(self, store: SessionStore, mirror: KVMirror | None = None) -> None:
        self.store = store
        self._records: dict[str, tuple[SessionRecord, int]] = {}
        self._tombstones: dict[str, int] = {}
        self._names: dict[tuple[str, str], str] = {}  # (tenant, name) -> internal key
        # per tenant, its session names in order: lists page through it (bisect), O(page)
        self._sorted: dict[str, list[str]] = {}
        # the process's mirror of zf_sessions (shared); its own one when none is given
        self.mirror = mirror or KVMirror(store.kv, SESSIONS_BUCKET)
        self._owns_mirror = mirror is None
        self._synced = self.mirror.follow(self._apply, on_loaded=self._reloaded)

    @property
    def kv(self) -> KeyValue:
        return self.store.kv

    async def start(self, sync_timeout_s: float = 10.0) -> None:
        await self.mirror.start()
        try:
            await asyncio.wait_for(self._synced.wait(), sync_timeout_s)
        except TimeoutError:
            log.warning("session index not synced at start; it fills in as the watch delivers")

    async def stop(self) -> None:
        if self._owns_mirror:
            await self.mirror.stop()

    def _apply(self, change: Change) -> None:
        if change.deleted:
            self.forget(change.key, change.revision)
            return
        assert change.value is not None
        try:
            self.note(_decoder.decode(change.value), change.revision)
        except msgspec.DecodeError:
            log.warning("undecodable session record", extra={"session_id": change.key})

    def _reloaded(self, keys: set[str], revision: int) -> None:
        """A (re)load delivered ``keys`` up to ``revision``: a record it did not deliver,
        and not written since, is gone."""
        gone = [
            key for key, (_, rev) in self._records.items() if key not in keys and rev <= revision
        ]
        for key in gone:
            self.forget(key, revision)

    def note(self, record: SessionRecord, revision: int) -> None:
        """Remember a record read or written at ``revision`` unless something newer is known."""
        session_id = record.spec.key
        current = self._records.get(session_id)
        if current is not None and current[1] >= revision:
            return
        if self._tombstones.get(session_id, -1) >= revision:
            return
        self._records[session_id] = (record, revision)
        name = (record.spec.tenant, record.spec.session_id)
        if name not in self._names:
            names = self._sorted.setdefault(name[0], [])
            at = bisect.bisect_left(names, name[1])
            if at == len(names) or names[at] != name[1]:
                names.insert(at, name[1])
        self._names[name] = session_id

    def forget(self, session_id: str, revision: int) -> None:
        """``session_id``: the internal key."""
        current = self._records.get(session_id)
        if current is not None and current[1] > revision:
            return
        self._records.pop(session_id, None)
        if current is not None:
            name = (current[0].spec.tenant, current[0].spec.session_id)
            if self._names.get(name) == session_id:
                del self._names[name]
                names = self._sorted.get(name[0], [])
                at = bisect.bisect_left(names, name[1])
                if at < len(names) and names[at] == name[1]:
                    del names[at]
                if not names:
                    self._sorted.pop(name[0], None)
        if len(self._tombstones) >= _MAX_TOMBSTONES:
            self._tombstones.clear()
        self._tombstones[session_id] = max(revision, self._tombstones.get(session_id, 0))

    def get(self, session_id: str) -> SessionRecord | None:
        """By internal key."""
        found = self._records.get(session_id)
        return found[0] if found is not None else None

    def find(self, tenant: str, name: str) -> SessionRecord | None:
        """The tenant's session ``name``, from memory only."""
        key = self._names.get((tenant, name))
        return self.get(key) if key is not None else None

    async def lookup(self, tenant: str, name: str) -> SessionRecord | None:
        """The tenant's session ``name``: from memory; on a miss, from KV (and
        remembered). Another tenant's session of that name is never found."""
        found = self.find(tenant, name)
        if found is not None:
            return found
        key = await self.store.resolve(tenant, name)
        if key is None:
            return None
        read = await self.store.get(key)
        if read is None or (read[0].spec.tenant, read[0].spec.session_id) != (tenant, name):
            return None
        self.note(*read)
        record = self.get(key)
        if record is None or record.spec.tenant != tenant:
            return None
        return record

    def snapshot(self) -> list[SessionRecord] | None:
        """Every record, from memory, once the mirror has loaded the bucket and follows
        it (the reconciler's audit reads this instead of scanning KV); None before."""
        if not self._synced.is_set() or not self.mirror.running:
            return None
        return [record for record, _ in self._records.values()]

    def names(self, tenant: str) -> list[str]:
        """The tenant's session names in order (the index's own list: do not change it)."""
        return self._sorted.get(tenant, [])

    def records(self, tenant: str | None = None) -> list[SessionRecord]:
        return [
            record
            for record, _ in self._records.values()
            if tenant is None or record.spec.tenant == tenant
        ]

    def __len__(self) -> int:
        return len(self._records)

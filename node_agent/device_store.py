"""Portable neonize device stores: SQLite files shipped through the NATS Object Store.

A neonize session keeps its keys and pairing in a *device store*. With a PostgreSQL URL
(``ZAPFLEET_DEVICE_STORE_URL``) every agent reads the same store and a session can move
between nodes as it is. With the default (one SQLite file per session under the agent's
data dir) the file must travel with the session:

- on an orderly stop (drain, rebalance, agent shutdown) the agent backs the file up into
  the Object Store bucket ``zf_device_store`` (object name = session id);
- every ``ZAPFLEET_DEVICE_BACKUP_INTERVAL_S`` it backs up the files of its connected
  sessions, so a crashed node loses at most one period of device-store changes;
- before starting a session it restores the backup when the backup is newer than the
  local file (or there is no local file), so a moved session starts from the last state
  its previous node saved, without a new QR code.

Backups use SQLite's online backup API (consistent even while the engine writes) and run
in a worker thread; an upload is skipped when the content did not change since the last
one. Object names and files are keyed by the session's internal key (``SessionSpec.key``,
its uid): unique across tenants, and never reused after a delete.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import sqlite3
import tempfile
import time
from pathlib import Path

import msgspec
from nats.js.api import ObjectMeta
from nats.js.client import JetStreamContext
from nats.js.errors import ObjectNotFoundError
from nats.js.object_store import ObjectStore

from contract.protocol import DEVICE_STORE_BUCKET
from zapfleet.natsjs import object_store

log = logging.getLogger(__name__)


class BackupMeta(msgspec.Struct, kw_only=True):
    """Stored as the object's description."""

    backup_at: float
    sha256: str


def device_path(data_dir: str | Path, session_id: str) -> Path:
    """Where the SQLite device store of a session lives on an agent."""
    return Path(data_dir) / "neonize" / f"{session_id}.db"


def _snapshot(source: Path) -> bytes:
    """A consistent copy of a live SQLite database, as bytes (runs in a thread)."""
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / "snapshot.db"
        src = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
        dst = sqlite3.connect(target)
        try:
            src.backup(dst)
        finally:
            dst.close()
            src.close()
        return target.read_bytes()


def _install(path: Path, data: bytes, mtime: float) -> None:
    """Atomically replace the local file with restored bytes (runs in a thread)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for suffix in ("-wal", "-shm", "-journal"):  # stale companions of the old file
        with contextlib.suppress(FileNotFoundError):
            (path.parent / (path.name + suffix)).unlink()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".restore")
    with os.fdopen(fd, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    os.utime(tmp, (mtime, mtime))
    os.replace(tmp, path)


class DeviceStore:
    def __init__(self, store: ObjectStore, data_dir: str | Path) -> None:
        self.store = store
        self.data_dir = Path(data_dir)
        self._uploaded: dict[str, str] = {}  # session id -> sha256 of the last upload

    @classmethod
    async def open(
        cls, js: JetStreamContext, data_dir: str | Path, replicas: int = 1
    ) -> DeviceStore:
        store = await object_store(js, DEVICE_STORE_BUCKET, replicas)
        return cls(store, data_dir)

    def path(self, session_id: str) -> Path:
        return device_path(self.data_dir, session_id)

    async def backup(self, session_id: str) -> bool:
        """Upload the session's device store; False when there is none or it failed."""
        path = self.path(session_id)
        if not path.exists():
            return False
        try:
            data = await asyncio.to_thread(_snapshot, path)
            digest = hashlib.sha256(data).hexdigest()
            if self._uploaded.get(session_id) == digest:
                return True
            meta = BackupMeta(backup_at=time.time(), sha256=digest)
            await self.store.put(
                session_id,
                data,
                meta=ObjectMeta(name=session_id, description=msgspec.json.encode(meta).decode()),
            )
        except Exception as exc:
            log.warning(
                "device store backup failed", extra={"session_id": session_id, "error": repr(exc)}
            )
            return False
        self._uploaded[session_id] = digest
        log.info("device store backed up", extra={"session_id": session_id, "bytes": len(data)})
        return True

    async def restore(self, session_id: str) -> bool:
        """Install the backup if it is newer than the local file; True if installed."""
        try:
            info = await self.store.get_info(session_id)
        except ObjectNotFoundError:
            return False
        try:
            meta = msgspec.json.decode(info.description or "", type=BackupMeta)
        except msgspec.DecodeError:
            return False
        path = self.path(session_id)
        if path.exists() and path.stat().st_mtime >= meta.backup_at:
            return False  # this node's own file is at least as recent
        result = await self.store.get(session_id)
        await asyncio.to_thread(_install, path, result.data or b"", meta.backup_at)
        self._uploaded[session_id] = meta.sha256
        log.info("device store restored", extra={"session_id": session_id})
        return True

    async def forget(self, session_id: str) -> None:
        """Delete the backup (after a logout the pairing is gone for good)."""
        with contextlib.suppress(ObjectNotFoundError):
            await self.store.delete(session_id)
        self._uploaded.pop(session_id, None)

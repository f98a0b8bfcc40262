"""Received media: downloaded by the agent, kept in the NATS Object Store ``zf_media``.

A session's setting (:class:`contract.protocol.MediaSettings`) decides what happens to
the file of a received image, video, audio, document or sticker:

- ``off``: ``message.received`` says nothing of the file;
- ``metadata`` (default): the event describes it (``media``: mimetype, size, file name,
  sha256, seconds) — nothing is downloaded;
- ``store``: the agent downloads it through the engine (sim: the simulated media servers;
  neonize: ``download_any``, under the FFI lock's shared side) and stores it as object
  ``<session key>/<media id>``, then emits the event with ``media.id`` (and
  ``media.stored``). The API serves it with the tenant's key, and webhook deliveries carry
  a short-lived signed URL (control_plane/media_links.py).

Bounds: the bucket has a total size (``ZAPFLEET_MEDIA_STORE_MAX_BYTES``; a full bucket
refuses new files, which are then described with ``stored: false``) and an age
(``ZAPFLEET_MEDIA_STORE_TTL_S``); a file larger than ``ZAPFLEET_MEDIA_INBOUND_MAX_BYTES``
is described, not downloaded; at most ``ZAPFLEET_MEDIA_DOWNLOADS`` downloads run at once
per agent. Media never goes through Valkey. A deleted session's files are deleted
(``session_destroy``)."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets

import msgspec
from nats.js import JetStreamContext
from nats.js.api import ObjectMeta, ObjectStoreConfig, StorageType
from nats.js.errors import NotFoundError, ObjectNotFoundError
from nats.js.object_store import ObjectStore
from prometheus_client import Counter

from contract.protocol import MEDIA_BUCKET, media_object
from zapfleet.natsjs import object_store

log = logging.getLogger(__name__)

STORED = Counter(
    "zapfleet_agent_inbound_media_total",
    "Received media by outcome (stored, too_large, failed)",
    ["outcome"],
)


class StoredMedia(msgspec.Struct, kw_only=True):
    """What is kept beside the bytes (the object's description, JSON)."""

    tenant: str
    session_id: str  # the caller's name when it was received
    message_id: str
    mimetype: str
    filename: str | None = None
    size: int = 0
    sha256: str = ""


def new_media_id() -> str:
    return "md_" + secrets.token_hex(12)


class MediaStore:
    def __init__(self, store: ObjectStore, *, max_object_bytes: int, downloads: int) -> None:
        self.store = store
        self.max_object_bytes = max_object_bytes
        self.slots = asyncio.Semaphore(max(1, downloads))

    @classmethod
    async def open(
        cls,
        js: JetStreamContext,
        *,
        max_bytes: int,
        ttl_s: float,
        max_object_bytes: int,
        downloads: int,
        replicas: int = 1,
    ) -> MediaStore:
        """The bucket as it exists (another agent's bounds win), or created with these."""
        config = ObjectStoreConfig(ttl=ttl_s, max_bytes=max_bytes, storage=StorageType.FILE)
        store = await object_store(js, MEDIA_BUCKET, replicas, config)
        return cls(store, max_object_bytes=max_object_bytes, downloads=downloads)

    async def put(self, key: str, media_id: str, data: bytes, meta: StoredMedia) -> str:
        """Store one file; returns its sha256 (hex)."""
        digest = hashlib.sha256(data).hexdigest()
        meta.size, meta.sha256 = len(data), digest
        description = msgspec.json.encode(meta).decode()
        await self.store.put(
            media_object(key, media_id),
            data,
            meta=ObjectMeta(name=media_object(key, media_id), description=description),
        )
        return digest

    async def destroy(self, key: str) -> int:
        """Delete every file of a session (it is deleted); returns how many."""
        prefix = media_object(key, "")
        try:
            infos = await self.store.list(ignore_deletes=True)
        except (NotFoundError, ObjectNotFoundError):
            return 0  # an empty bucket has nothing to list
        count = 0
        for info in infos:
            if info.name.startswith(prefix):
                try:
                    await self.store.delete(info.name)
                    count += 1
                except (NotFoundError, ObjectNotFoundError):
                    pass
        return count


__all__ = ["MediaStore", "StoredMedia", "new_media_id"]

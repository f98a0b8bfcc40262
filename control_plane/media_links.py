"""Inbound media for API clients and webhook receivers (node_agent/inbound_media.py).

Files live in the NATS Object Store ``zf_media`` as ``<session key>/<media id>``; the API
serves them with the tenant's key (``GET /v1/sessions/{id}/media/{media_id}``) and, for
webhook receivers that hold no key, through **signed URLs**:
``<ZAPFLEET_PUBLIC_URL>/v1/media/<token>``, where the token is
``<base64url(key/media_id/expires)>.<base64url(HMAC-SHA256)>``. The HMAC secret is
``ZAPFLEET_MEDIA_URL_SECRET``, or one derived from the admin key (so every control plane
of a deployment agrees without another setting). A URL works until ``expires``
(``ZAPFLEET_MEDIA_URL_TTL_S``, 1 h by default) and only for that one file; a deleted
session's files are gone, so its URLs answer 404.

The webhook dispatcher adds the URL to ``message.received`` at *delivery* time (a retry an
hour later gets a fresh one), and the bytes (``media.base64``) when the session allows
inline media of that size (``media.inline`` set by the agent). Events in ``ZF_EVENTS``
never carry the bytes or a URL.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from dataclasses import dataclass
from typing import Any

import msgspec
from nats.js import JetStreamContext
from nats.js.errors import BucketNotFoundError, NotFoundError, ObjectNotFoundError
from nats.js.object_store import ObjectStore

from contract.protocol import MEDIA_BUCKET, media_object
from control_plane.settings import ControlPlaneSettings


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def media_secret(settings: ControlPlaneSettings) -> bytes:
    if settings.media_url_secret:
        return settings.media_url_secret.encode()
    return hmac.new(settings.admin_key.encode(), b"zapfleet media urls", hashlib.sha256).digest()


@dataclass(frozen=True, slots=True)
class MediaRef:
    key: str  # the session's internal key
    media_id: str
    expires: int


def sign(secret: bytes, key: str, media_id: str, expires: int) -> str:
    payload = f"{key}/{media_id}/{expires}".encode()
    mac = hmac.new(secret, payload, hashlib.sha256).digest()
    return f"{_b64(payload)}.{_b64(mac)}"


def verify(secret: bytes, token: str, now: float | None = None) -> MediaRef | None:
    """The file a token names, or None when it is forged, malformed or expired."""
    payload_text, _, mac_text = token.partition(".")
    try:
        payload, mac = _unb64(payload_text), _unb64(mac_text)
    except (binascii.Error, ValueError):
        return None
    expected = hmac.new(secret, payload, hashlib.sha256).digest()
    if not hmac.compare_digest(mac, expected):
        return None
    try:
        key, media_id, expires_text = payload.decode().split("/")
        expires = int(expires_text)
    except ValueError:
        return None
    if expires < (time.time() if now is None else now):
        return None
    return MediaRef(key, media_id, expires)


def signed_url(settings: ControlPlaneSettings, key: str, media_id: str) -> tuple[str, int]:
    expires = int(time.time() + settings.media_url_ttl_s)
    token = sign(media_secret(settings), key, media_id, expires)
    return f"{settings.public_base_url()}/v1/media/{token}", expires


class StoredFile(msgspec.Struct, kw_only=True):
    data: bytes
    mimetype: str
    filename: str | None = None
    tenant: str = ""


_meta = msgspec.json.Decoder(dict[str, Any])


class MediaReader:
    """Reads ``zf_media`` (opened on first use: the agents create the bucket)."""

    def __init__(self, js: JetStreamContext) -> None:
        self.js = js
        self._store: ObjectStore | None = None

    async def store(self) -> ObjectStore | None:
        if self._store is None:
            try:
                self._store = await self.js.object_store(MEDIA_BUCKET)
            except (BucketNotFoundError, NotFoundError):
                return None
        return self._store

    async def get(self, key: str, media_id: str) -> StoredFile | None:
        store = await self.store()
        if store is None:
            return None
        try:
            found = await store.get(media_object(key, media_id))
        except (ObjectNotFoundError, NotFoundError):
            return None
        info = found.info
        meta: dict[str, Any] = {}
        if info.description:
            try:
                meta = _meta.decode(info.description)
            except msgspec.DecodeError:
                meta = {}
        return StoredFile(
            data=found.data or b"",
            mimetype=str(meta.get("mimetype") or "application/octet-stream"),
            filename=meta.get("filename"),
            tenant=str(meta.get("tenant") or ""),
        )


_event = msgspec.json.Decoder(dict[str, Any])
_encode = msgspec.json.encode


async def with_media_links(
    body: bytes, key: str | None, settings: ControlPlaneSettings, reader: MediaReader
) -> bytes:
    """A ``message.received`` webhook body with its stored media's signed URL (and its
    bytes when ``inline``); any other body unchanged. ``key``: the session's internal key."""
    if b'"stored":true' not in body or key is None:
        return body
    event = _event.decode(body)
    media = (event.get("data") or {}).get("media")
    if not isinstance(media, dict) or not media.get("id"):
        return body
    media_id = str(media["id"])
    media["url"], media["url_expires_at"] = signed_url(settings, key, media_id)
    if media.pop("inline", False):
        found = await reader.get(key, media_id)
        if found is not None:
            media["base64"] = base64.b64encode(found.data).decode()
    return _encode(event)


__all__ = ["MediaReader", "MediaRef", "sign", "signed_url", "verify", "with_media_links"]

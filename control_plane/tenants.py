"""Tenants and their API keys in the KV bucket ``zf_tenants`` (DESIGN §2, §7).

Layout of the bucket:

- ``tenant.<tenant_id>`` → :class:`TenantRecord`
- ``key.<key_id>``       → :class:`ApiKeyRecord`

An API key reads ``zf_<key_id>_<secret>``. ``key_id`` (16 hex digits) is public and names
the record; ``secret`` (32 random bytes, URL-safe base64) is shown once, at creation, and
only ``HMAC-SHA256(salt, secret)`` with a random per-key salt is stored. Keys carry 256
bits of entropy, so a fast keyed hash is enough (a slow password hash guards low-entropy
secrets against guessing; these cannot be guessed), and verification stays cheap.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from typing import Annotated

import msgspec
from nats.js.errors import InvalidKeyError, KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from zapfleet._kv import scan

KEY_PREFIX = "zf_"
_KEY_ID_HEX = 16
TENANT_ID_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"
_TENANT_ID = re.compile(TENANT_ID_PATTERN)

TenantId = Annotated[
    str,
    msgspec.Meta(
        pattern=TENANT_ID_PATTERN,
        description="lower-case letters, digits, '_' and '-'; at most 63 characters",
        examples=["acme"],
    ),
]


class TenantRecord(msgspec.Struct, kw_only=True):
    tenant_id: str
    name: str
    created_at: float
    disabled: bool = False


class ApiKeyRecord(msgspec.Struct, kw_only=True):
    key_id: str
    tenant: str
    salt: str
    hash: str
    label: str | None = None
    created_at: float = 0.0
    revoked_at: float | None = None
    expires_at: float | None = None

    def usable(self, now: float) -> bool:
        if self.revoked_at is not None:
            return False
        return self.expires_at is None or now < self.expires_at


def tenant_kv_key(tenant_id: str) -> str:
    return f"tenant.{tenant_id}"


def key_kv_key(key_id: str) -> str:
    return f"key.{key_id}"


def valid_tenant_id(tenant_id: str) -> bool:
    return _TENANT_ID.match(tenant_id) is not None


def split_key(presented: str) -> tuple[str, str] | None:
    """``(key_id, secret)`` of a key in zapfleet's format, or None."""
    if not presented.startswith(KEY_PREFIX):
        return None
    key_id = presented[len(KEY_PREFIX) : len(KEY_PREFIX) + _KEY_ID_HEX]
    separator = presented[len(KEY_PREFIX) + _KEY_ID_HEX : len(KEY_PREFIX) + _KEY_ID_HEX + 1]
    secret = presented[len(KEY_PREFIX) + _KEY_ID_HEX + 1 :]
    if separator != "_" or len(key_id) != _KEY_ID_HEX or not secret:
        return None
    try:
        int(key_id, 16)
    except ValueError:
        return None
    return key_id, secret


def hash_secret(salt: bytes, secret: str) -> str:
    return hmac.new(salt, secret.encode(), hashlib.sha256).hexdigest()


def verify_secret(record: ApiKeyRecord, secret: str) -> bool:
    expected = bytes.fromhex(record.hash)
    actual = hmac.new(bytes.fromhex(record.salt), secret.encode(), hashlib.sha256).digest()
    return hmac.compare_digest(expected, actual)


def new_key(tenant: str, label: str | None) -> tuple[str, ApiKeyRecord]:
    """A fresh key (the only time its secret exists in clear) and its stored record."""
    key_id = secrets.token_hex(_KEY_ID_HEX // 2)
    secret = secrets.token_urlsafe(32)
    salt = secrets.token_bytes(16)
    record = ApiKeyRecord(
        key_id=key_id,
        tenant=tenant,
        salt=salt.hex(),
        hash=hash_secret(salt, secret),
        label=label,
        created_at=time.time(),
    )
    return f"{KEY_PREFIX}{key_id}_{secret}", record


_encode = msgspec.json.encode
_tenant_decoder = msgspec.json.Decoder(TenantRecord)
_key_decoder = msgspec.json.Decoder(ApiKeyRecord)


class TenantExists(Exception):
    pass


class TenantStore:
    """CRUD on ``zf_tenants``; writes use revision compare-and-set."""

    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv

    async def get_tenant(self, tenant_id: str) -> TenantRecord | None:
        try:
            entry = await self.kv.get(tenant_kv_key(tenant_id))
        except (KeyNotFoundError, InvalidKeyError):  # no KV key can have this name
            return None
        return _tenant_decoder.decode(entry.value) if entry.value else None

    async def create_tenant(self, record: TenantRecord) -> None:
        try:
            await self.kv.create(tenant_kv_key(record.tenant_id), _encode(record))
        except KeyWrongLastSequenceError:
            raise TenantExists(record.tenant_id) from None

    async def delete_tenant(self, tenant_id: str) -> None:
        await self.kv.delete(tenant_kv_key(tenant_id))

    async def _values(self, prefix: str) -> list[bytes]:
        """Current values of every key under ``<prefix>.``, in one pass (a KV watch)."""
        return [entry.value for entry in await scan(self.kv, f"{prefix}.>") if entry.value]

    async def list_tenants(self) -> list[TenantRecord]:
        tenants = [_tenant_decoder.decode(v) for v in await self._values("tenant")]
        return sorted(tenants, key=lambda t: t.tenant_id)

    async def get_key(self, key_id: str) -> ApiKeyRecord | None:
        try:
            entry = await self.kv.get(key_kv_key(key_id))
        except (KeyNotFoundError, InvalidKeyError):  # no KV key can have this name
            return None
        return _key_decoder.decode(entry.value) if entry.value else None

    async def put_key(self, record: ApiKeyRecord) -> None:
        await self.kv.put(key_kv_key(record.key_id), _encode(record))

    async def list_keys(self, tenant_id: str | None = None) -> list[ApiKeyRecord]:
        keys = [_key_decoder.decode(v) for v in await self._values("key")]
        if tenant_id is not None:
            keys = [k for k in keys if k.tenant == tenant_id]
        return sorted(keys, key=lambda k: k.created_at)

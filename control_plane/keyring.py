"""Who is calling: API keys verified against ``zf_tenants`` (docs/api.md).

Two kinds of principal:

- the **admin key** (``ZAPFLEET_ADMIN_KEY``, compared in constant time) manages tenants,
  keys, nodes and monitoring; on session endpoints it acts for the tenant named by the
  ``X-Tenant-Id`` header, or for the built-in tenant ``default`` without it;
- a **tenant key** (``zf_<key_id>_<secret>``, see :mod:`control_plane.tenants`) sees only
  its tenant's sessions; another tenant's session answers 404.

Verifying a tenant key costs two KV reads and an HMAC, so a verified key is remembered
in-process, indexed by its SHA-256, for ``ZAPFLEET_AUTH_CACHE_TTL_S``. Every replica
watches ``zf_tenants``: a revoked key, a rotated key or a disabled tenant is dropped from
the cache as soon as the watch delivers the change (milliseconds), and in any case when
the entry's TTL ends, because an expired entry is verified again against KV. The watch is
a :class:`zapfleet._mirror.KVMirror`: when it has to reload (it died with a NATS restart)
the whole cache is dropped, since a change may have been missed meanwhile.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from dataclasses import dataclass
from typing import Any

from litestar import Request

from contract.protocol import TENANTS_BUCKET
from control_plane.problems import ProblemError
from control_plane.tenants import TenantStore, split_key, valid_tenant_id, verify_secret
from zapfleet._mirror import Change, KVMirror

log = logging.getLogger(__name__)

DEFAULT_TENANT = "default"
ADMIN_KEY_ID = "admin"
TENANT_HEADER = "x-tenant-id"
_MAX_CACHED = 100_000
_NEGATIVE_TTL_S = 2.0


@dataclass(frozen=True, slots=True)
class Principal:
    tenant: str
    is_admin: bool
    key_id: str = ADMIN_KEY_ID
    expires_at: float | None = None


def presented_key(request: Request[Any, Any, Any]) -> str | None:
    header = request.headers.get("authorization")
    if header:
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    key = request.headers.get("x-api-key")
    return key.strip() if key else None


def unauthenticated(code: str, detail: str) -> ProblemError:
    return ProblemError(401, code, detail, headers={"WWW-Authenticate": "Bearer"})


class Authenticator:
    """Verifies keys; caches verified ones for a short TTL; a KV watch evicts changes."""

    def __init__(self, tenants: TenantStore, admin_key: str, ttl_s: float) -> None:
        self.tenants = tenants
        # compared as SHA-256 digests, in constant time: neither content nor length leaks
        self._admin_digest = hashlib.sha256(admin_key.encode()).digest()
        self.ttl_s = ttl_s
        # sha256(key) -> (principal, verified at, monotonic)
        self._verified: dict[bytes, tuple[Principal, float]] = {}
        self._unknown: dict[str, float] = {}  # key ids not in KV, monotonic time seen
        self._tenants_ok: dict[str, float] = {}  # tenants the admin may act for
        self.mirror = KVMirror(tenants.kv, TENANTS_BUCKET)
        self.mirror.follow(self._changed, on_reset=self.clear)

    async def start(self) -> None:
        await self.mirror.start()  # nothing is cached yet: no need to wait for the load

    async def stop(self) -> None:
        await self.mirror.stop()

    def _changed(self, change: Change) -> None:
        if change.initial:
            return  # a (re)load: the cache was cleared before it
        kind, _, ident = change.key.partition(".")
        if kind == "key":
            self.forget(key_id=ident)
        elif kind == "tenant":
            self.forget(tenant=ident)

    def forget(self, *, key_id: str | None = None, tenant: str | None = None) -> None:
        """Drop cached verifications of a key or of every key of a tenant."""
        if key_id is not None:
            self._unknown.pop(key_id, None)
        if tenant is not None:
            self._tenants_ok.pop(tenant, None)
        stale = [
            digest
            for digest, (principal, _) in self._verified.items()
            if principal.key_id == key_id or principal.tenant == tenant
        ]
        for digest in stale:
            self._verified.pop(digest, None)

    def clear(self) -> None:
        self._verified.clear()
        self._unknown.clear()
        self._tenants_ok.clear()

    async def verify(self, key: str, acting_tenant: str | None) -> Principal:
        digest = hashlib.sha256(key.encode()).digest()
        if hmac.compare_digest(digest, self._admin_digest):
            return await self._admin(acting_tenant)
        now = time.monotonic()
        cached = self._verified.get(digest)
        if cached is not None and now - cached[1] < self.ttl_s:
            principal = cached[0]
        else:
            principal = await self._verify_in_kv(key)
            if len(self._verified) >= _MAX_CACHED:
                self._verified.clear()
            self._verified[digest] = (principal, now)
        if principal.expires_at is not None and time.time() >= principal.expires_at:
            self._verified.pop(digest, None)
            raise unauthenticated("invalid_key", "the API key has expired")
        if acting_tenant is not None and acting_tenant != principal.tenant:
            raise ProblemError(
                403, "forbidden", "only the admin key may act for another tenant (X-Tenant-Id)"
            )
        return principal

    async def _admin(self, acting_tenant: str | None) -> Principal:
        if acting_tenant is None or acting_tenant == DEFAULT_TENANT:
            return Principal(tenant=DEFAULT_TENANT, is_admin=True)
        if not valid_tenant_id(acting_tenant):
            raise ProblemError(
                400, "invalid_tenant", f"X-Tenant-Id {acting_tenant!r} is not a tenant id"
            )
        seen = self._tenants_ok.get(acting_tenant)
        if seen is None or time.monotonic() - seen >= self.ttl_s:
            if await self.tenants.get_tenant(acting_tenant) is None:
                raise ProblemError(
                    404, "tenant_not_found", f"no tenant {acting_tenant!r} (X-Tenant-Id)"
                )
            self._tenants_ok[acting_tenant] = time.monotonic()
        return Principal(tenant=acting_tenant, is_admin=True)

    async def _verify_in_kv(self, key: str) -> Principal:
        parts = split_key(key)
        invalid = unauthenticated("invalid_key", "the API key is not valid")
        if parts is None:
            raise invalid
        key_id, secret = parts
        seen = self._unknown.get(key_id)
        if seen is not None and time.monotonic() - seen < _NEGATIVE_TTL_S:
            raise invalid
        record = await self.tenants.get_key(key_id)
        if record is None:
            if len(self._unknown) >= _MAX_CACHED:
                self._unknown.clear()
            self._unknown[key_id] = time.monotonic()
            raise invalid
        if not verify_secret(record, secret):
            raise invalid
        if not record.usable(time.time()):
            raise unauthenticated("revoked_key", "the API key was revoked")
        tenant = await self.tenants.get_tenant(record.tenant)
        if tenant is None or tenant.disabled:
            raise unauthenticated("tenant_disabled", "the key's tenant is disabled or deleted")
        return Principal(
            tenant=record.tenant, is_admin=False, key_id=key_id, expires_at=record.expires_at
        )

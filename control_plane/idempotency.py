"""``Idempotency-Key`` on sends (docs/api.md).

The first request with a key reserves it in Valkey (``SET NX GET``, one round trip) with
the SHA-256 of its canonical body; when it succeeds, its answer is stored under the key
for ``ZAPFLEET_IDEMPOTENCY_TTL_S``. Then:

- same key + same body → the stored answer again, with ``Idempotent-Replayed: true``;
- same key + another body → 409 ``idempotency_conflict``;
- same key while the first request is still running → 409 ``idempotency_in_progress``
  with ``Retry-After: 1``.

A request that fails releases its key, so the client may retry it. The message id is
derived from (tenant, session, key), so even a retry after a lost answer cannot queue a
message twice: the agent dedupes on the message id.

While Valkey is unreachable, sends with a key answer 503 ``idempotency_unavailable``
(:mod:`control_plane.valkey_guard`): without the stored digest a reused key with another
body could not be refused.
"""

from __future__ import annotations

import hashlib
from typing import Literal

import msgspec

from control_plane.problems import ProblemError
from control_plane.resp import HotClient
from control_plane.settings import ControlPlaneSettings
from control_plane.valkey_guard import ValkeyGuard

HEADER = "idempotency-key"
MAX_KEY_LENGTH = 255


class _Entry(msgspec.Struct, kw_only=True, omit_defaults=True):
    state: Literal["pending", "done"]
    body: str
    status: int = 0
    response: msgspec.Raw = msgspec.Raw(b"null")


_decoder = msgspec.json.Decoder(_Entry)
_encode = msgspec.json.encode


class Replay(msgspec.Struct, kw_only=True):
    status: int
    body: bytes


def validate_key(raw: str) -> str:
    if not 1 <= len(raw) <= MAX_KEY_LENGTH or not raw.isascii() or not raw.isprintable():
        raise ProblemError(
            400,
            "invalid_idempotency_key",
            f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} printable ASCII characters",
        )
    return raw


def body_digest(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


class Idempotency:
    def __init__(
        self, client: HotClient, settings: ControlPlaneSettings, guard: ValkeyGuard | None = None
    ) -> None:
        self.guard = guard or ValkeyGuard()
        self.client = client
        self.prefix = settings.cache_prefix + "idem:"
        self.ttl_ms = round(settings.idempotency_ttl_s * 1000)
        # a reservation whose request died (process killed mid-request) frees itself
        self.pending_ttl_ms = round(max(30.0, settings.rpc_timeout_s * 6) * 1000)

    def storage_key(self, tenant: str, session_id: str, key: str) -> str:
        digest = hashlib.sha256(f"{tenant}\0{session_id}\0{key}".encode()).hexdigest()
        return f"{self.prefix}{digest[:40]}"

    @staticmethod
    def message_id(storage_key: str) -> str:
        return "m_" + storage_key.rsplit(":", 1)[1][:20]

    async def reserve(self, storage_key: str, digest: str) -> Replay | None:
        """Reserve the key; None if this request is the first, else the stored answer
        (or a 409 problem)."""
        pending = _encode(_Entry(state="pending", body=digest))
        previous = await self.guard.require(
            "idempotency",
            lambda: self.client.execute(
                "SET", storage_key, pending, "NX", "PX", self.pending_ttl_ms, "GET"
            ),
        )
        if previous is None:
            return None
        entry = _decoder.decode(previous)
        if entry.body != digest:
            raise ProblemError(
                409,
                "idempotency_conflict",
                "this Idempotency-Key was used with a different request body",
            )
        if entry.state == "pending":
            raise ProblemError(
                409,
                "idempotency_in_progress",
                "a request with this Idempotency-Key is still being processed",
                headers={"Retry-After": "1"},
            )
        return Replay(status=entry.status, body=bytes(entry.response))

    async def complete(self, storage_key: str, digest: str, status: int, response: bytes) -> None:
        done = _Entry(state="done", body=digest, status=status, response=msgspec.Raw(response))
        # the message is queued whatever happens here: a lost write only makes the key
        # reusable once the reservation expires (a retry then maps to the same message id)
        await self.guard.call(
            "idempotency",
            lambda: self.client.execute("SET", storage_key, _encode(done), "PX", self.ttl_ms),
            None,
        )

    async def release(self, storage_key: str) -> None:
        await self.guard.call("idempotency", lambda: self.client.execute("DEL", storage_key), 0)

"""Webhook signatures (docs/webhooks.md): two schemes, chosen per webhook.

**standard** (the default, https://www.standardwebhooks.com): headers ``webhook-id``
(the event id), ``webhook-timestamp`` (unix seconds) and ``webhook-signature``
(``v1,<base64 HMAC-SHA256(key, "<id>.<timestamp>.<body>")>``, several separated by
spaces while a secret rotates), where ``key`` is the base64 decoding of the secret after
its ``whsec_`` prefix — so the off-the-shelf ``standardwebhooks`` libraries verify it.

**zapfleet-v1** (the scheme before, kept for existing receivers): HMAC-SHA256 over
``<timestamp>.<body>`` with the whole secret string as the key. Each delivery carries

    Zapfleet-Timestamp: 1718000000            (unix seconds, when this attempt was sent)
    Zapfleet-Signature: v1=<hex digest>       (HMAC-SHA256(secret, b"1718000000." + body))

A receiver recomputes the digest over the raw body it received, compares in constant
time, and rejects timestamps older than its tolerance (5 minutes is usual) so a captured
request cannot be replayed later; the event id (``Zapfleet-Event-Id``, also ``id`` in the
body) lets it drop the duplicates that at-least-once delivery may bring.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import time
from collections.abc import Sequence
from typing import Literal

TIMESTAMP_HEADER = "Zapfleet-Timestamp"
SIGNATURE_HEADER = "Zapfleet-Signature"
EVENT_ID_HEADER = "Zapfleet-Event-Id"
EVENT_TYPE_HEADER = "Zapfleet-Event-Type"
ATTEMPT_HEADER = "Zapfleet-Delivery-Attempt"
SCHEME = "v1"
DEFAULT_TOLERANCE_S = 300

WEBHOOK_ID_HEADER = "webhook-id"
WEBHOOK_TIMESTAMP_HEADER = "webhook-timestamp"
WEBHOOK_SIGNATURE_HEADER = "webhook-signature"
STANDARD = "standard"
LEGACY = "zapfleet-v1"
Scheme = Literal["standard", "zapfleet-v1"]
SECRET_PREFIX = "whsec_"


def new_secret() -> str:
    """``whsec_`` + 32 random bytes in standard base64: valid for both schemes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def standard_key(secret: str) -> bytes | None:
    """The HMAC key of ``secret`` under the standard scheme: the standard base64 (with
    padding) after ``whsec_``; None when it is not that (e.g. a secret of the old scheme,
    URL-safe base64 without padding, or a passphrase)."""
    text = secret.removeprefix(SECRET_PREFIX)
    try:
        key = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None
    return key or None


def standard_signature(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """``v1,<base64 HMAC-SHA256>`` of ``<msg_id>.<timestamp>.<body>``. A secret that is
    not standard base64 signs with its UTF-8 bytes (only reachable through a settings
    secret or a session secret stored before the standard scheme; the API refuses such
    secrets for standard webhooks)."""
    key = standard_key(secret) or secret.encode()
    message = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, message, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signed_headers(
    scheme: str,
    keys: Sequence[str],
    msg_id: str,
    body: bytes,
    timestamp: int | None = None,
) -> dict[str, str]:
    """The identification and signature headers of one delivery under ``scheme``, signed
    with every secret in ``keys`` (the current one first; two while a secret rotates).
    Without secrets the standard scheme still sends ``webhook-id`` and the timestamp."""
    ts = int(time.time()) if timestamp is None else timestamp
    if scheme == LEGACY:
        if not keys:
            return {}
        values = ",".join(f"{SCHEME}={signature(key, ts, body)}" for key in keys)
        return {TIMESTAMP_HEADER: str(ts), SIGNATURE_HEADER: values}
    headers = {WEBHOOK_ID_HEADER: msg_id, WEBHOOK_TIMESTAMP_HEADER: str(ts)}
    if keys:
        headers[WEBHOOK_SIGNATURE_HEADER] = " ".join(
            standard_signature(key, msg_id, ts, body) for key in keys
        )
    return headers


def verify_standard(
    secret: str,
    body: bytes,
    headers: dict[str, str],
    tolerance_s: float = DEFAULT_TOLERANCE_S,
    now: float | None = None,
) -> bool:
    """The receiver's check of the standard scheme (any matching ``v1,`` value)."""
    lowered = {name.lower(): value for name, value in headers.items()}
    msg_id = lowered.get(WEBHOOK_ID_HEADER, "")
    try:
        ts = int(lowered.get(WEBHOOK_TIMESTAMP_HEADER, ""))
    except ValueError:
        return False
    current = time.time() if now is None else now
    if not msg_id or abs(current - ts) > tolerance_s:
        return False
    expected = standard_signature(secret, msg_id, ts, body).encode()
    # bytes: compare_digest refuses str with non-ASCII characters (TypeError), and the
    # header is whatever the sender put there
    return any(
        hmac.compare_digest(part.encode(), expected)
        for part in lowered.get(WEBHOOK_SIGNATURE_HEADER, "").split(" ")
        if part
    )


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """The hex HMAC-SHA256 of ``<timestamp>.<body>`` with ``secret``."""
    message = str(timestamp).encode() + b"." + body
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def sign(secret: str, body: bytes, timestamp: int | None = None) -> dict[str, str]:
    """The two signature headers of one delivery."""
    ts = int(time.time()) if timestamp is None else timestamp
    return {
        TIMESTAMP_HEADER: str(ts),
        SIGNATURE_HEADER: f"{SCHEME}={signature(secret, ts, body)}",
    }


def verify(
    secret: str,
    body: bytes,
    timestamp_header: str,
    signature_header: str,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
    now: float | None = None,
) -> bool:
    """What a receiver does (and what the tests check): the signature matches the body
    and the timestamp is recent. Accepts several ``v1=`` values (secret rotation)."""
    try:
        ts = int(timestamp_header)
    except ValueError:
        return False
    current = time.time() if now is None else now
    if abs(current - ts) > tolerance_s:
        return False
    expected = signature(secret, ts, body).encode()
    for part in signature_header.split(","):
        scheme, _, value = part.strip().partition("=")
        # bytes: compare_digest refuses str with non-ASCII characters (TypeError), and
        # the header is whatever the sender put there
        if scheme == SCHEME and hmac.compare_digest(value.encode(), expected):
            return True
    return False

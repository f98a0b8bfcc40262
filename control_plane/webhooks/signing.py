"""Webhook signatures: HMAC-SHA256 over ``<timestamp>.<body>`` (docs/webhooks.md).

Each delivery carries

    Zapfleet-Timestamp: 1718000000            (unix seconds, when this attempt was sent)
    Zapfleet-Signature: v1=<hex digest>       (HMAC-SHA256(secret, b"1718000000." + body))

A receiver recomputes the digest over the raw body it received, compares in constant
time, and rejects timestamps older than its tolerance (5 minutes is usual) so a captured
request cannot be replayed later; the event id (``Zapfleet-Event-Id``, also ``id`` in the
body) lets it drop the duplicates that at-least-once delivery may bring.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time

TIMESTAMP_HEADER = "Zapfleet-Timestamp"
SIGNATURE_HEADER = "Zapfleet-Signature"
EVENT_ID_HEADER = "Zapfleet-Event-Id"
EVENT_TYPE_HEADER = "Zapfleet-Event-Type"
ATTEMPT_HEADER = "Zapfleet-Delivery-Attempt"
SCHEME = "v1"
DEFAULT_TOLERANCE_S = 300


def new_secret() -> str:
    return "whsec_" + secrets.token_urlsafe(32)


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

"""Both signature schemes, checked against what receivers run: the ``standardwebhooks``
package from PyPI for the standard scheme, the old ``verify()`` for ``zapfleet-v1``."""

from __future__ import annotations

import base64
import secrets
import time

import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from control_plane.webhooks.signing import (
    LEGACY,
    STANDARD,
    new_secret,
    sign,
    signed_headers,
    standard_key,
    verify,
    verify_standard,
)

BODY = b'{"id":"ev1","type":"message.received","tenant":"acme","session_id":"s1","ts":1.0}'


def test_generated_secrets_load_in_the_library_and_hold_32_random_bytes() -> None:
    made = {new_secret() for _ in range(20)}
    assert len(made) == 20
    for secret in made:
        assert secret.startswith("whsec_")
        key = standard_key(secret)
        assert key is not None and len(key) == 32
        Webhook(secret)  # loads


def test_standard_signatures_verify_with_the_standardwebhooks_package() -> None:
    secret = new_secret()
    headers = signed_headers(STANDARD, [secret], "ev1", BODY)
    assert set(headers) == {"webhook-id", "webhook-timestamp", "webhook-signature"}
    assert headers["webhook-id"] == "ev1"
    assert headers["webhook-signature"].startswith("v1,")
    assert Webhook(secret).verify(BODY, headers)["id"] == "ev1"
    assert verify_standard(secret, BODY, headers)
    for forged in (
        {**headers, "webhook-id": "ev2"},
        {**headers, "webhook-timestamp": str(int(headers["webhook-timestamp"]) + 1)},
    ):
        with pytest.raises(WebhookVerificationError):
            Webhook(secret).verify(BODY, forged)
        assert not verify_standard(secret, BODY, forged)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(BODY.replace(b"acme", b"evil"), headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(BODY, headers)
    old = signed_headers(STANDARD, [secret], "ev1", BODY, int(time.time()) - 600)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(BODY, old)  # the library's 5-minute tolerance
    assert not verify_standard(secret, BODY, old)


def test_during_a_rotation_both_secrets_verify_and_no_third() -> None:
    new, previous = new_secret(), new_secret()
    headers = signed_headers(STANDARD, [new, previous], "ev1", BODY)
    assert len(headers["webhook-signature"].split(" ")) == 2
    assert Webhook(new).verify(BODY, headers)
    assert Webhook(previous).verify(BODY, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(BODY, headers)

    legacy = signed_headers(LEGACY, [new, previous], "ev1", BODY)
    stamp, signature = legacy["Zapfleet-Timestamp"], legacy["Zapfleet-Signature"]
    assert signature.count("v1=") == 2
    assert verify(new, BODY, stamp, signature) and verify(previous, BODY, stamp, signature)
    assert not verify(new_secret(), BODY, stamp, signature)


def test_the_old_scheme_is_byte_for_byte_what_it_was() -> None:
    secret = "whsec_" + secrets.token_urlsafe(32)  # an old generated secret
    now = int(time.time())
    assert signed_headers(LEGACY, [secret], "ev1", BODY, now) == sign(secret, BODY, now)
    assert signed_headers(LEGACY, [], "ev1", BODY, now) == {}
    # such a secret is no standard secret (URL-safe alphabet, no padding): the API makes a
    # new one when a config switches to the standard scheme
    unpadded = "whsec_" + base64.urlsafe_b64encode(b"\xfb" * 32).decode().rstrip("=")
    assert standard_key(unpadded) is None


def test_without_a_secret_the_standard_scheme_still_identifies_the_delivery() -> None:
    headers = signed_headers(STANDARD, [], "ev1", BODY, 1_700_000_000)
    assert headers == {"webhook-id": "ev1", "webhook-timestamp": "1700000000"}


# -- the zapfleet-v1 scheme's verify(): forged, empty and truncated signatures (issue 22) --

LEGACY_SECRET = "whsec_docs_0123456789abcdef"


def legacy_cases() -> list[tuple[str, dict[str, str], bytes, bool]]:
    now = int(time.time())
    good = sign(LEGACY_SECRET, BODY, now)
    value = good["Zapfleet-Signature"].removeprefix("v1=")
    forged = BODY.replace(b"acme", b"evil")

    def signed(signature: str) -> dict[str, str]:
        return {"Zapfleet-Timestamp": str(now), "Zapfleet-Signature": signature}

    return [
        ("genuine", good, BODY, True),
        ("tampered body", good, forged, False),
        # a prefix of the digest is not the digest: the empty one would verify anything
        ("empty signature on a forged body", signed("v1="), forged, False),
        ("empty signature", signed("v1="), BODY, False),
        ("truncated signature", signed("v1=" + value[:32]), BODY, False),
        ("one character short", signed("v1=" + value[:-1]), BODY, False),
        ("extended signature", signed("v1=" + value + "00"), BODY, False),
        ("another scheme", signed("v0=" + value), BODY, False),
        # headers are text an attacker chooses: refused, not an exception (a 500)
        ("non-ASCII signature", signed("v1=" + "\u00e9" * 64), BODY, False),
        ("wrong secret", sign("another-secret-0123456789", BODY, now), BODY, False),
        ("replayed after 10 min", sign(LEGACY_SECRET, BODY, now - 600), BODY, False),
        ("no signature", {"Zapfleet-Timestamp": str(now)}, BODY, False),
        (
            "rotated: second value matches",
            {**good, "Zapfleet-Signature": "v1=" + "0" * 64 + "," + good["Zapfleet-Signature"]},
            BODY,
            True,
        ),
    ]


def test_verify_of_the_zapfleet_v1_scheme_accepts_real_signatures_only() -> None:
    """Guarantee: ``signing.verify()`` refuses forged, empty and truncated signatures (a
    prefix check would let ``v1=`` verify any body) and non-ASCII ones without raising."""
    for name, headers, body, expected in legacy_cases():
        ok = verify(
            LEGACY_SECRET,
            body,
            headers["Zapfleet-Timestamp"],
            headers.get("Zapfleet-Signature", ""),
        )
        assert ok is expected, name


def test_verify_standard_refuses_a_non_ascii_signature_without_raising() -> None:
    secret = "whsec_" + base64.b64encode(bytes(range(32))).decode()
    now = int(time.time())
    headers = {
        "webhook-id": "ev1",
        "webhook-timestamp": str(now),
        "webhook-signature": "v1," + "\u00e9" * 44,
    }
    assert verify_standard(secret, BODY, headers) is False

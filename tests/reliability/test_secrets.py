"""Secrets: never in a log line, never stored in clear, compared in constant time.

The end-to-end test drives a fleet that logs at DEBUG (the catalog fleet) with valid,
invalid and malformed keys in both headers, then reads every log file of the fleet; the
formatter tests pin down each masking rule on its own.
"""

from __future__ import annotations

import ast
import json
import logging
import re
import sys
from pathlib import Path

import httpx
import msgspec

from contract.protocol import TENANTS_BUCKET
from control_plane.tenants import split_key
from tests.conftest import ADMIN_KEY
from tests.reliability.conftest import Catalog
from zapfleet._kv import scan
from zapfleet._logging import JsonFormatter, register_secret

ROOT = Path(__file__).resolve().parents[2]


def secret_of(key: str) -> str:
    """The secret part of a key, by the server's own rule: it may itself contain "_" (a
    suffix after the last "_" can be one letter, found in any log by chance)."""
    parts = split_key(key)
    return parts[1] if parts is not None else key


def formatted(message: str, *args: object, exc: bool = False, **extra: object) -> str:
    record = logging.LogRecord("test", logging.WARNING, __file__, 1, message, args, None)
    if exc:
        try:
            raise RuntimeError(message % args if args else message)
        except RuntimeError:
            record.exc_info = sys.exc_info()
    record.__dict__.update(extra)
    return JsonFormatter().format(record)


TENANT_KEY = "zf_0123456789abcdef_S3cr3tS3cr3tS3cr3tS3cr3tS3cr3tS3cr3tS3cr"


def test_header_fields_are_masked_at_any_depth() -> None:
    line = json.loads(
        formatted(
            "request",
            headers={"Authorization": "Bearer hunter2hunter2", "X-API-Key": TENANT_KEY},
            request={"headers": {"x-api-key": TENANT_KEY}, "path": "/v1/sessions"},
            api_key="plain",
        )
    )
    assert line["headers"] == {"Authorization": "***", "X-API-Key": "***"}
    assert line["request"] == {"headers": {"x-api-key": "***"}, "path": "/v1/sessions"}
    assert line["api_key"] == "***"


def test_secrets_inside_messages_values_and_tracebacks_are_masked() -> None:
    text = formatted(
        "got Authorization: Bearer %s and X-API-Key=%s",
        "tok3ntok3ntok3n",
        TENANT_KEY,
        exc=True,
        detail=f"proxy http://user:p4ssw0rd@proxy:3128 and key {TENANT_KEY}",
        errors=[f"bad key {TENANT_KEY}"],
    )
    for secret in ("tok3ntok3ntok3n", "S3cr3tS3cr3t", "p4ssw0rd"):
        assert secret not in text, text
    line = json.loads(text)
    assert "zf_0123456789abcdef_***" in line["detail"]  # the key id stays: it is public
    assert "http://user:***@proxy:3128" in line["detail"]


def test_registered_secrets_are_masked_wherever_they_appear() -> None:
    register_secret("an-admin-key-without-any-shape")
    text = formatted(
        "admin key an-admin-key-without-any-shape used", note="x an-admin-key-without-any-shape"
    )
    assert "an-admin-key-without-any-shape" not in text


async def test_no_key_reaches_any_log_of_a_fleet_logging_at_debug(catalog: Catalog) -> None:
    fake = "zf_fedcba9876543210_NotARealSecretButShapedLikeOne0123456789ab"
    garbage = "garbage-key-0123456789-not-a-zapfleet-key"
    presented = [
        {"Authorization": f"Bearer {catalog.acme.key}"},
        {"X-API-Key": catalog.globex.key},
        {"Authorization": f"Bearer {ADMIN_KEY}"},
        {"X-API-Key": ADMIN_KEY, "X-Tenant-Id": "acme"},
        {"Authorization": f"Bearer {fake}"},
        {"X-API-Key": fake},
        {"X-API-Key": garbage},
        {"Authorization": f"Basic {garbage}"},
        {"Authorization": f"Bearer {catalog.acme.key}", "X-Tenant-Id": "globex"},  # 403
    ]
    async with httpx.AsyncClient(base_url=catalog.fleet.base_url, timeout=15) as client:
        for headers in presented:
            for method, path in (
                ("GET", "/v1/sessions"),
                ("GET", f"/v1/sessions/{catalog.acme.session_id}/status"),
                ("POST", "/v1/tenants"),
                ("GET", "/monitoring/metrics"),
            ):
                response = await client.request(method, path, headers=headers, json={})
                assert response.status_code < 500, response.text
        async with catalog.client() as admin:
            rotated = await admin.post(
                f"/v1/tenants/acme/keys/{catalog.acme.key.split('_')[1]}/rotate",
                json={"grace_s": 60},
            )
        assert rotated.status_code == 201, rotated.text
        new_key = rotated.json()["key"]
        assert (await client.get("/v1/sessions", headers={"X-API-Key": new_key})).status_code == 200
    secrets = [ADMIN_KEY, garbage] + [
        secret_of(key) for key in (catalog.acme.key, catalog.globex.key, fake, new_key)
    ]
    logs = sorted(catalog.fleet.log_dir.glob("*.log"))
    assert any("control plane ready" in p.read_text(errors="replace") for p in logs)
    for path in logs:
        text = path.read_text(errors="replace")
        for secret in secrets:
            assert secret not in text, f"a key is in {path.name}"


async def test_keys_are_stored_only_as_salted_hmacs(catalog: Catalog) -> None:
    nc = await catalog.fleet.nats_client()
    try:
        kv = await nc.jetstream().key_value(TENANTS_BUCKET)
        entries = await scan(kv)  # kv.keys() may end early under load
        names = [entry.key for entry in entries]
        stored = [entry.value or b"" for entry in entries]
    finally:
        await nc.close()
    blob = b"\n".join(stored)
    for key in (catalog.acme.key, catalog.globex.key):
        assert secret_of(key).encode() not in blob
    records = [
        msgspec.json.decode(v) for v, n in zip(stored, names, strict=True) if n.startswith("key.")
    ]
    assert records
    for record in records:
        assert re.fullmatch(r"[0-9a-f]{32}", record["salt"])  # 16 random bytes per key
        assert re.fullmatch(r"[0-9a-f]{64}", record["hash"])  # HMAC-SHA256(salt, secret)


# names whose values are secrets or secret-derived; comparing them with == leaks timing
_SECRET_NAME = re.compile(r"(secret|signature|password|admin_key|api_key|token|hmac|^mac$)", re.I)
_DIGEST_NAME = re.compile(r"digest", re.I)
# digests compared with == on purpose, because nothing secret is behind them
NOT_SECRET = {
    ("control_plane/idempotency.py", "entry.body != digest"),  # hash of a request body
    ("node_agent/device_store.py", "self._uploaded.get(session_id) == digest"),  # file hash
}


def test_secrets_are_compared_in_constant_time_only() -> None:
    """No ``==``/``!=`` on a secret or a digest in the product code: hmac.compare_digest
    (the admin key is compared as SHA-256 digests, tenant keys as HMACs)."""
    found = []
    for package in ("control_plane", "node_agent", "zapfleet"):
        for path in sorted((ROOT / package).rglob("*.py")):
            tree = ast.parse(path.read_text())
            for node in ast.walk(tree):
                if not isinstance(node, ast.Compare):
                    continue
                if not any(isinstance(op, ast.Eq | ast.NotEq) for op in node.ops):
                    continue
                names = [
                    sub.id if isinstance(sub, ast.Name) else sub.attr
                    for part in (node.left, *node.comparators)
                    for sub in ast.walk(part)
                    if isinstance(sub, ast.Name | ast.Attribute)
                ]
                if any(_SECRET_NAME.search(n) or _DIGEST_NAME.search(n) for n in names):
                    where = (str(path.relative_to(ROOT)), ast.unparse(node))
                    if where not in NOT_SECRET:
                        found.append(f"{where[0]}:{node.lineno}: {where[1]}")
    assert not found, "compare these with hmac.compare_digest:\n" + "\n".join(found)
    keyring = (ROOT / "control_plane" / "keyring.py").read_text()
    assert "hmac.compare_digest(digest, self._admin_digest)" in keyring

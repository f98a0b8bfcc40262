"""Tenants and API keys: the admin key manages them; tenant keys see only their own
sessions; keys are shown once, stored as salted hashes, revocable and rotatable."""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import AsyncIterator

import httpx
import pytest
from nats.aio.client import Client as NATS

from contract.protocol import TENANTS_BUCKET
from control_plane import tenants
from control_plane.tenants import hash_secret, new_key, split_key, verify_secret
from tests.conftest import Stack
from tests.helpers import assert_problem, new_tenant, unique


@pytest.fixture
async def admin(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=stack.base_url, headers=stack.headers) as client:
        yield client


def keyed(stack: Stack, key: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=stack.base_url, headers={"Authorization": f"Bearer {key}"})


async def test_a_key_is_shown_once_and_stored_only_as_a_salted_hash(
    admin: httpx.AsyncClient, nc: NATS
) -> None:
    tenant_id, key = await new_tenant(admin)
    assert key.startswith("zf_")
    listed = (await admin.get(f"/v1/tenants/{tenant_id}/keys")).json()["keys"]
    assert len(listed) == 1
    assert "key" not in listed[0] and key not in str(listed)

    kv = await nc.jetstream().key_value(TENANTS_BUCKET)
    stored = (await kv.get(f"key.{listed[0]['key_id']}")).value or b""
    parts = split_key(key)
    assert parts is not None
    secret = parts[1]
    assert secret.encode() not in stored and key.encode() not in stored
    assert b'"salt"' in stored and b'"hash"' in stored


def test_each_key_gets_its_own_random_salt() -> None:
    """Guarantee: a random salt per key, so equal secrets never give equal stored hashes
    and one precomputed table cannot serve for every key."""
    created = [new_key("acme", None) for _ in range(20)]
    salts = [record.salt for _, record in created]
    assert len(set(salts)) == len(salts), "two keys share a salt"
    assert all(len(bytes.fromhex(salt)) == 16 for salt in salts)
    for key, record in created:
        secret = split_key(key)
        assert secret is not None
        assert record.hash == hash_secret(bytes.fromhex(record.salt), secret[1])
    # the same secret stored under two keys' salts: two unrelated hashes
    first, second = (bytes.fromhex(record.salt) for _, record in created[:2])
    assert hash_secret(first, "one secret") != hash_secret(second, "one secret")


def test_a_presented_secret_is_compared_with_the_stored_hash_in_constant_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Guarantee: tenant keys are compared in constant time (hmac.compare_digest on the
    digests, never ``==``, whose time tells an attacker how many bytes matched)."""
    key, record = new_key("acme", None)
    parts = split_key(key)
    assert parts is not None
    compared: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(tenants.hmac, "compare_digest", spy)
    assert verify_secret(record, parts[1])
    assert not verify_secret(record, parts[1][:-1] + ("A" if parts[1][-1] != "A" else "B"))
    assert len(compared) == 2, "the decision was not made by hmac.compare_digest"
    stored = bytes.fromhex(record.hash)
    for pair in compared:
        assert stored in pair and all(len(side) == len(stored) for side in pair)


async def test_a_tenant_sees_only_its_own_sessions(stack: Stack, admin: httpx.AsyncClient) -> None:
    _, key_a = await new_tenant(admin, "a")
    _, key_b = await new_tenant(admin, "b")
    session_id = unique("own")
    async with keyed(stack, key_a) as a, keyed(stack, key_b) as b:
        created = await a.post("/v1/sessions", json={"session_id": session_id, "start": False})
        assert created.status_code == 201, created.text
        assert (await a.get(f"/v1/sessions/{session_id}")).status_code == 200
        assert [s["session_id"] for s in (await a.get("/v1/sessions")).json()["sessions"]] == [
            session_id
        ]
        # to tenant B the session does not exist, whatever it tries
        assert (await b.get("/v1/sessions")).json()["sessions"] == []
        for response in (
            await b.get(f"/v1/sessions/{session_id}"),
            await b.get(f"/v1/sessions/{session_id}/status"),
            await b.post(f"/v1/sessions/{session_id}/start"),
            await b.patch(f"/v1/sessions/{session_id}/settings", json={"device_name": "x"}),
            await b.post(
                f"/v1/sessions/{session_id}/messages",
                json={"type": "text", "to": "+15550100009", "text": "x"},
            ),
            await b.delete(f"/v1/sessions/{session_id}"),
        ):
            assert_problem(response, 404, "session_not_found")
        # a tenant key cannot borrow another tenant with X-Tenant-Id
        borrowed = await b.get("/v1/sessions", headers={"X-Tenant-Id": "default"})
        assert_problem(borrowed, 403, "forbidden")
        assert (await a.delete(f"/v1/sessions/{session_id}")).status_code == 204


async def test_the_admin_acts_for_the_tenant_named_by_x_tenant_id(
    stack: Stack, admin: httpx.AsyncClient
) -> None:
    tenant_id, key = await new_tenant(admin)
    session_id = unique("adm")
    created = await admin.post(
        "/v1/sessions",
        json={"session_id": session_id, "start": False},
        headers={"X-Tenant-Id": tenant_id},
    )
    assert created.status_code == 201 and created.json()["tenant"] == tenant_id
    async with keyed(stack, key) as tenant:
        assert (await tenant.get(f"/v1/sessions/{session_id}")).status_code == 200
    # without the header the admin is tenant "default", which does not own it
    assert_problem(await admin.get(f"/v1/sessions/{session_id}"), 404, "session_not_found")
    unknown = await admin.get("/v1/sessions", headers={"X-Tenant-Id": "no-such-tenant"})
    assert_problem(unknown, 404, "tenant_not_found")
    deleted = await admin.delete(f"/v1/sessions/{session_id}", headers={"X-Tenant-Id": tenant_id})
    assert deleted.status_code == 204


async def test_tenant_keys_cannot_manage_tenants_nodes_or_the_cache(
    stack: Stack, admin: httpx.AsyncClient
) -> None:
    _, key = await new_tenant(admin)
    async with keyed(stack, key) as tenant:
        for response in (
            await tenant.get("/v1/tenants"),
            await tenant.post("/v1/tenants", json={"tenant_id": unique("x")}),
            await tenant.get("/v1/nodes"),
            await tenant.post("/monitoring/cache/clear"),
            await tenant.post("/monitoring/gc"),
            await tenant.get("/monitoring/metrics"),
        ):
            assert_problem(response, 403, "forbidden")


async def test_missing_malformed_unknown_and_revoked_keys_are_401(
    stack: Stack, admin: httpx.AsyncClient
) -> None:
    tenant_id, key = await new_tenant(admin)
    async with httpx.AsyncClient(base_url=stack.base_url) as anonymous:
        assert_problem(await anonymous.get("/v1/sessions"), 401, "unauthenticated")
        for bad in ("nope", "zf_zzzzzzzzzzzzzzzz_abc", key[:-2] + "xx", "zf_0123456789abcdef_x"):
            response = await anonymous.get("/v1/sessions", headers={"X-API-Key": bad})
            assert_problem(response, 401, "invalid_key")
            assert response.headers["www-authenticate"] == "Bearer"

    async with keyed(stack, key) as tenant:
        assert (await tenant.get("/v1/sessions")).status_code == 200  # verified and cached
        key_id = key.split("_")[1]
        revoked = await admin.delete(f"/v1/tenants/{tenant_id}/keys/{key_id}")
        assert revoked.status_code == 204
        # the KV watch evicts the cached verification on every replica within moments
        response = await tenant.get("/v1/sessions")
        for _ in range(50):
            if response.status_code == 401:
                break
            await asyncio.sleep(0.05)
            response = await tenant.get("/v1/sessions")
        assert_problem(response, 401, "revoked_key")


async def test_rotation_issues_a_new_key_and_retires_the_old_one_after_its_grace(
    stack: Stack, admin: httpx.AsyncClient
) -> None:
    tenant_id, old = await new_tenant(admin)
    old_id = old.split("_")[1]
    rotated = await admin.post(
        f"/v1/tenants/{tenant_id}/keys/{old_id}/rotate", json={"grace_s": 1.0}
    )
    assert rotated.status_code == 201, rotated.text
    new = rotated.json()
    assert new["replaces"] == old_id and new["key"] != old
    async with keyed(stack, old) as old_client, keyed(stack, new["key"]) as new_client:
        assert (await new_client.get("/v1/sessions")).status_code == 200
        assert (await old_client.get("/v1/sessions")).status_code == 200  # still in its grace
        await asyncio.sleep(1.1)
        assert_problem(await old_client.get("/v1/sessions"), 401, "invalid_key")
        assert (await new_client.get("/v1/sessions")).status_code == 200
    immediate = await admin.post(f"/v1/tenants/{tenant_id}/keys/{new['key_id']}/rotate", json={})
    assert immediate.status_code == 201
    async with keyed(stack, new["key"]) as retired:
        response = await retired.get("/v1/sessions")
        for _ in range(50):
            if response.status_code == 401:
                break
            await asyncio.sleep(0.05)
            response = await retired.get("/v1/sessions")
        assert_problem(response, 401, "revoked_key")


async def test_tenant_crud_and_its_errors(admin: httpx.AsyncClient) -> None:
    tenant_id = unique("crud")
    created = await admin.post("/v1/tenants", json={"tenant_id": tenant_id, "name": "Acme"})
    assert created.status_code == 201
    assert created.json()["name"] == "Acme"
    assert_problem(
        await admin.post("/v1/tenants", json={"tenant_id": tenant_id}), 409, "tenant_exists"
    )
    assert_problem(
        await admin.post("/v1/tenants", json={"tenant_id": "Not Valid!"}), 400, "invalid_body"
    )
    listed = [t["tenant_id"] for t in (await admin.get("/v1/tenants")).json()["tenants"]]
    assert tenant_id in listed
    assert (await admin.get(f"/v1/tenants/{tenant_id}")).json()["sessions"] == 0

    session = await admin.post(
        "/v1/sessions",
        json={"session_id": unique("keep"), "start": False},
        headers={"X-Tenant-Id": tenant_id},
    )
    assert session.status_code == 201
    assert_problem(await admin.delete(f"/v1/tenants/{tenant_id}"), 409, "tenant_has_sessions")
    await admin.delete(
        f"/v1/sessions/{session.json()['session_id']}", headers={"X-Tenant-Id": tenant_id}
    )
    assert (await admin.delete(f"/v1/tenants/{tenant_id}")).status_code == 204
    assert_problem(await admin.get(f"/v1/tenants/{tenant_id}"), 404, "tenant_not_found")
    assert_problem(
        await admin.post(f"/v1/tenants/{tenant_id}/keys", json={}), 404, "tenant_not_found"
    )

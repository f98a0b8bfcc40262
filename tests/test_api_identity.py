"""A session's identity is (tenant, name); its device state belongs to an internal id
minted at create (issue 13). On the sim engine, end to end through the API:

- a name deleted by one tenant and reused by another never brings the old WhatsApp link
  back (the exact reproduction of the issue), and the delete leaves nothing behind;
- two tenants may each have ``s1``; every session endpoint answers another tenant's
  session exactly like a session that does not exist;
- a create whose placement fails stores nothing;
- records written before internal ids (key = name, no uid) keep working.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any

import httpx
import pytest
from nats.aio.client import Client as NATS
from nats.js.errors import NotFoundError

from contract.protocol import (
    SESSION_NAMES_BUCKET,
    SESSIONS_BUCKET,
    SessionRecord,
    SessionSpec,
    encode,
    name_key,
)
from node_agent.engines.sim import SIM_BUCKET, seed_account
from node_agent.outbox import OUTBOX_BUCKET
from tests.conftest import Stack
from tests.helpers import assert_problem, new_tenant, pair_session, unique, wait_state
from zapfleet._kv import scan
from zapfleet.cli import session_key

PHONE = "15550007777"


async def _client(stack: Stack, exits: AsyncExitStack) -> tuple[str, httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=stack.base_url, headers=stack.headers) as admin:
        tenant, key = await new_tenant(admin, "iso")
    client = httpx.AsyncClient(base_url=stack.base_url, headers={"X-API-Key": key}, timeout=15)
    await exits.enter_async_context(client)
    return tenant, client


@pytest.fixture
async def tenants(stack: Stack) -> AsyncIterator[list[tuple[str, httpx.AsyncClient]]]:
    """Two fresh tenants, each with its own API key."""
    async with AsyncExitStack() as exits:
        yield [await _client(stack, exits), await _client(stack, exits)]


async def keys(nc: NATS, bucket: str) -> set[str]:
    try:
        kv = await nc.jetstream().key_value(bucket)
    except NotFoundError:
        return set()
    return {entry.key for entry in await scan(kv)}  # kv.keys() may end early under load


async def assert_nothing_left(nc: NATS, tenant: str, name: str, key: str, phone: str) -> None:
    """No record, no name, no sim account or number, no queued message of the session."""
    assert key not in await keys(nc, SESSIONS_BUCKET)
    assert name_key(tenant, name) not in await keys(nc, SESSION_NAMES_BUCKET)
    sim = await keys(nc, SIM_BUCKET)
    assert f"acct.{key}" not in sim
    assert f"num.{phone}" not in sim
    assert not [k for k in await keys(nc, OUTBOX_BUCKET) if k.startswith(key + ".")]


async def test_a_deleted_sessions_link_never_passes_to_whoever_reuses_its_name(
    tenants: list[tuple[str, httpx.AsyncClient]], nc: NATS
) -> None:
    (tenant_a, a), (tenant_b, b) = tenants
    assert (await a.post("/v1/sessions", json={"session_id": "s1"})).status_code == 201
    paired = await pair_session(a, nc, "s1", PHONE)
    assert paired["phone"] == PHONE
    key_a = await session_key(nc, tenant_a, "s1")
    assert key_a != "s1"  # device state is keyed by the internal id, not the name
    assert f"acct.{key_a}" in await keys(nc, SIM_BUCKET)

    assert (await a.delete("/v1/sessions/s1")).status_code == 204
    await assert_nothing_left(nc, tenant_a, "s1", key_a, PHONE)
    assert_problem(await a.get("/v1/sessions/s1"), 404, "session_not_found")

    created = await b.post("/v1/sessions", json={"session_id": "s1"})
    assert created.status_code == 201, created.text
    assert await session_key(nc, tenant_b, "s1") != key_a
    # a fresh session: it shows a QR code to pair (with A's link it would be CONNECTED)
    fresh = await wait_state(b, "s1", "PAIRING")
    assert fresh["phone"] is None and fresh["tenant"] == tenant_b
    assert (await b.get("/v1/sessions/s1/qr")).status_code == 200
    # the same holds for A itself: its own new s1 starts unpaired
    assert (await a.post("/v1/sessions", json={"session_id": "s1"})).status_code == 201
    assert (await wait_state(a, "s1", "PAIRING"))["phone"] is None
    for client in (a, b):
        assert (await client.delete("/v1/sessions/s1")).status_code == 204


# a 1x1 PNG (issue 16: profile pictures)
PNG_1PX = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4z8AAAAMBAQDJ/pLvAAAAAElFTkSuQmCC"
)


def _request(method: str, path: str) -> dict[str, Any]:
    """A valid request for every session endpoint, so that only the session decides."""
    bodies: dict[tuple[str, str], dict[str, Any]] = {
        ("post", "pair-code"): {"phone": "+1 555 000 1111"},
        ("post", "messages"): {"type": "text", "to": "15550001111", "text": "hi"},
        ("post", "contacts/check"): {"numbers": ["15550001111"]},
        ("patch", "settings"): {"device_name": "x"},
        ("post", "read"): {"chat": "15550001111"},
        ("post", "presence"): {"chat": "15550001111", "state": "typing"},
        ("put", "settings/media"): {"inbound": "store"},
        # issue 16: contacts, profile, privacy, calls
        ("patch", "profile"): {"name": "x"},
        ("put", "profile/picture"): {"base64": PNG_1PX},
        ("patch", "privacy"): {"online": "all"},
        ("put", "settings/calls"): {"reject": True, "reply_text": "busy"},
        # groups (issue 16)
        ("post", "groups"): {"subject": "team", "participants": ["15550001111"]},
        ("post", "groups/join"): {"link": "https://chat.whatsapp.com/AbCdEfGhIjKlMnOp"},
        ("post", "groups/link-info"): {"link": "https://chat.whatsapp.com/AbCdEfGhIjKlMnOp"},
        ("patch", "groups/{group_id}"): {"subject": "renamed"},
        ("put", "groups/{group_id}/picture"): {"media": {"url": "https://example.com/p.png"}},
        ("post", "groups/{group_id}/requests"): {
            "action": "approve",
            "participants": ["15550001111"],
        },
        ("post", "groups/{group_id}/participants"): {
            "action": "add",
            "participants": ["15550001111"],
        },
    }
    tail = path.split("{session_id}", 1)[1].lstrip("/")
    body = bodies.get((method, tail))
    if (
        body is None
        and method in ("post", "patch", "put")
        and tail
        not in (
            "start",
            "stop",
            "logout",
            "restart",
            "reconnect",
            "reset-breaker",
            "contacts/{chat}/block",  # issue 16
            "contacts/{chat}/unblock",
            "groups/{group_id}/leave",
            "groups/{group_id}/invite/revoke",
        )
    ):
        raise AssertionError(f"no test request for {method.upper()} {path}: add one")
    return {"json": body} if body is not None else {}


async def test_two_tenants_each_have_s1_and_every_endpoint_hides_the_other_ones(
    tenants: list[tuple[str, httpx.AsyncClient]], nc: NATS
) -> None:
    (tenant_a, a), (tenant_b, b) = tenants
    for client in (a, b):
        created = await client.post("/v1/sessions", json={"session_id": "s1"})
        assert created.status_code == 201, created.text  # never 409 across tenants
    await pair_session(a, nc, "s1", "15550007778")
    assert (await a.get("/v1/sessions/s1")).json()["tenant"] == tenant_a
    mine = await wait_state(b, "s1", "PAIRING")
    assert (mine["tenant"], mine["phone"]) == (tenant_b, None)
    assert [s["tenant"] for s in (await b.get("/v1/sessions")).json()["sessions"]] == [tenant_b]

    secret = unique("only-a")
    assert (await a.post("/v1/sessions", json={"session_id": secret})).status_code == 201
    await wait_state(a, secret, "PAIRING")
    nobody = "n" + secret[1:]  # same length, never created
    document = (await a.get("/schema/openapi.json")).json()
    probed = 0
    for path, operations in document["paths"].items():
        if "{session_id}" not in path:
            continue
        for method in operations:
            if method not in ("get", "post", "patch", "put", "delete"):
                continue
            request = _request(method, path)
            other = await b.request(method, path.replace("{session_id}", secret), **request)
            missing = await b.request(method, path.replace("{session_id}", nobody), **request)
            where = f"{method.upper()} {path}"
            assert other.status_code == missing.status_code == 404, (where, other.text)
            assert other.text.replace(secret, nobody) == missing.text, where
            probed += 1
    assert probed >= 17
    # nothing B did touched A's session
    assert (await a.get(f"/v1/sessions/{secret}")).json()["state"] == "PAIRING"
    assert (await a.get("/v1/sessions/s1")).json()["state"] == "CONNECTED"
    for client, name in ((a, "s1"), (a, secret), (b, "s1")):
        assert (await client.delete(f"/v1/sessions/{name}")).status_code == 204


async def test_a_create_that_cannot_be_placed_stores_nothing(
    tenants: list[tuple[str, httpx.AsyncClient]], nc: NATS
) -> None:
    (tenant, api), _ = tenants
    body = {"session_id": "nowhere", "engine": "neonize"}  # no node runs neonize here
    for _ in range(2):  # and a retry is refused for the same reason, never 409
        failed = await api.post("/v1/sessions", json=body)
        assert_problem(failed, 503, "no_capacity")
        assert_problem(await api.get("/v1/sessions/nowhere"), 404, "session_not_found")
    assert (await api.get("/v1/sessions")).json()["total"] == 0
    assert name_key(tenant, "nowhere") not in await keys(nc, SESSION_NAMES_BUCKET)
    # the name is free: the same create on an engine that runs works
    created = await api.post("/v1/sessions", json={"session_id": "nowhere", "engine": "sim"})
    assert created.status_code == 201, created.text
    assert (await api.delete("/v1/sessions/nowhere")).status_code == 204


async def test_a_record_written_before_internal_ids_keeps_its_device(
    tenants: list[tuple[str, httpx.AsyncClient]], nc: NATS
) -> None:
    """Migration: a record without ``uid`` (as stored before the upgrade, key = name)
    is found by its name, runs on its old device state, and is deleted cleanly."""
    (tenant, api), (_, other) = tenants
    name, phone = unique("legacy"), "15550007779"
    await seed_account(nc, name, phone)  # the old layout: the account keyed by the name
    now = time.time()
    record = SessionRecord(
        spec=SessionSpec(session_id=name, tenant=tenant, engine="sim"),
        desired="stopped",
        created_at=now,
        updated_at=now,
    )
    kv = await nc.jetstream().key_value(SESSIONS_BUCKET)
    await kv.create(name, encode(record))

    found = await api.get(f"/v1/sessions/{name}")
    assert found.status_code == 200, found.text
    assert_problem(await api.post("/v1/sessions", json={"session_id": name}), 409, "session_exists")
    assert (await other.post("/v1/sessions", json={"session_id": name})).status_code == 201
    assert (await api.post(f"/v1/sessions/{name}/start")).status_code == 200
    connected = await wait_state(api, name, "CONNECTED")
    assert connected["phone"] == phone  # its old device state, under its old key
    assert (await wait_state(other, name, "PAIRING"))["phone"] is None

    assert (await api.delete(f"/v1/sessions/{name}")).status_code == 204
    await assert_nothing_left(nc, tenant, name, name, phone)
    assert (await other.delete(f"/v1/sessions/{name}")).status_code == 204

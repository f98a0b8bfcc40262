"""Sends of every message type, idempotency, history and number checks with their caches."""

from __future__ import annotations

import base64
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import msgspec
import pytest
from nats.aio.client import Client as NATS

from control_plane.idempotency import Idempotency, body_digest
from control_plane.models import OutboundMessage
from control_plane.resp import FastValkey
from control_plane.settings import ControlPlaneSettings
from tests.conftest import Stack
from tests.helpers import assert_problem, new_tenant, pair_session, unique
from tests.test_media_out import png, wav
from zapfleet.cli import session_key

PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 64).decode()


@pytest.fixture(scope="module")
def phones() -> tuple[str, str]:
    import secrets

    tail = secrets.randbelow(9000) + 1000
    return f"1555030{tail}", f"1555031{tail}"


@pytest.fixture
async def pair(
    stack: Stack, nc: NATS, phones: tuple[str, str]
) -> AsyncIterator[tuple[httpx.AsyncClient, str, str]]:
    """A tenant with two connected sim sessions; yields (client, sender id, receiver id)."""
    async with httpx.AsyncClient(base_url=stack.base_url, headers=stack.headers) as admin:
        _, key = await new_tenant(admin, "msg")
    async with httpx.AsyncClient(
        base_url=stack.base_url, headers={"X-API-Key": key}, timeout=10
    ) as api:
        sender, receiver = unique("snd"), unique("rcv")
        for session_id, phone in ((sender, phones[0]), (receiver, phones[1])):
            assert (await api.post("/v1/sessions", json={"session_id": session_id})).is_success
            await pair_session(api, nc, session_id, phone)
        yield api, sender, receiver
        for session_id in (sender, receiver):
            await api.delete(f"/v1/sessions/{session_id}", params={"logout": "true"})


async def metric(stack: Stack, name: str, **labels: str) -> float:
    async with httpx.AsyncClient(base_url=stack.base_url) as client:
        text = (await client.get("/metrics")).text
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    match = re.search(rf"^{name}\{{{wanted}\}} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


async def test_every_message_type_is_accepted(
    pair: tuple[httpx.AsyncClient, str, str], phones: tuple[str, str]
) -> None:
    api, sender, _ = pair
    to = "+" + phones[1]
    media = {
        "base64": base64.b64encode(png()).decode(),
        "mimetype": "image/png",
        "filename": "x.png",
    }
    voice = {"base64": base64.b64encode(wav(0.5)).decode(), "mimetype": "audio/wav"}
    bodies: list[dict[str, Any]] = [
        {"type": "text", "text": "hello"},
        {"type": "image", "media": media, "caption": "a picture"},
        {"type": "image", "media": {"url": "https://example.com/a.png"}},
        {"type": "document", "media": {**media, "filename": "doc.pdf"}, "caption": "doc"},
        {"type": "audio", "media": voice, "voice_note": True},
        {"type": "sticker", "media": media},
        {"type": "video", "media": media, "caption": "clip"},
        {"type": "location", "latitude": 52.52, "longitude": 13.4, "name": "Berlin"},
        {"type": "contact", "display_name": "Ann", "phone": "+15550309999"},
        {"type": "reaction", "message_id": "m_1", "emoji": "👍"},
    ]
    ids = set()
    for body in bodies:
        response = await api.post(f"/v1/sessions/{sender}/messages", json={**body, "to": to})
        assert response.status_code == 202, (body["type"], response.text)
        accepted = response.json()
        assert accepted["status"] == "queued" and accepted["session_id"] == sender
        ids.add(accepted["message_id"])
    assert len(ids) == len(bodies)


async def test_bad_messages_are_rejected_before_reaching_the_agent(
    pair: tuple[httpx.AsyncClient, str, str],
) -> None:
    api, sender, _ = pair
    url = f"/v1/sessions/{sender}/messages"
    assert_problem(
        await api.post(url, json={"type": "text", "to": "not a number", "text": "x"}),
        422,
        "invalid_number",
    )
    assert_problem(await api.post(url, json={"type": "sticker", "to": "+15550300001"}), 400,
                   "invalid_body")  # fmt: skip
    assert_problem(await api.post(url, json={"type": "text", "to": 15550300001, "text": "x"}),
                   400, "invalid_body")  # fmt: skip
    both = {"url": "https://example.com/a.png", "base64": PNG}
    assert_problem(
        await api.post(url, json={"type": "image", "to": "+15550300001", "media": both}),
        422,
        "invalid_media",
    )
    malformed = await api.post(
        url, content=b'{"type": "text", "to"', headers={"Content-Type": "application/json"}
    )
    assert_problem(malformed, 400, "malformed_json")


async def test_an_idempotency_key_replays_the_answer_and_refuses_another_body(
    pair: tuple[httpx.AsyncClient, str, str], phones: tuple[str, str]
) -> None:
    api, sender, receiver = pair
    url = f"/v1/sessions/{sender}/messages"
    body = {"type": "text", "to": "+" + phones[1], "text": "once"}
    key = {"Idempotency-Key": unique("idem")}
    first = await api.post(url, json=body, headers=key)
    second = await api.post(url, json=body, headers=key)
    assert first.status_code == second.status_code == 202
    assert first.json() == second.json()
    assert second.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers

    other = await api.post(url, json={**body, "text": "twice?"}, headers=key)
    assert_problem(other, 409, "idempotency_conflict")
    # the same key on another session is another request: queued, not a replay
    elsewhere = await api.post(f"/v1/sessions/{receiver}/messages", json=body, headers=key)
    assert elsewhere.status_code == 202, elsewhere.text
    assert "idempotent-replayed" not in elsewhere.headers
    assert elsewhere.json()["session_id"] == receiver
    assert elsewhere.json()["message_id"] != first.json()["message_id"]
    # and another key on the same session is another request too
    fresh = await api.post(url, json=body, headers={"Idempotency-Key": unique("idem")})
    assert fresh.status_code == 202 and "idempotent-replayed" not in fresh.headers
    assert fresh.json()["message_id"] != first.json()["message_id"]
    too_long = await api.post(url, json=body, headers={"Idempotency-Key": "x" * 300})
    assert_problem(too_long, 400, "invalid_idempotency_key")


async def test_a_duplicate_while_the_first_request_is_in_flight_is_told_to_retry(
    stack: Stack, nc: NATS, pair: tuple[httpx.AsyncClient, str, str], phones: tuple[str, str]
) -> None:
    """Guarantee: a duplicate that arrives while the request with the same key is still
    running gets 409 ``idempotency_in_progress`` with ``Retry-After: 1`` — neither a
    second send nor an empty "answer". The first request is held in flight here the
    way a running one holds it: by its reservation of the key in Valkey."""
    api, sender, _ = pair
    tenant = (await api.get(f"/v1/sessions/{sender}")).json()["tenant"]
    body = {"type": "text", "to": "+" + phones[1], "text": "in flight"}
    key = unique("idem")
    valkey = FastValkey(stack.valkey_url)
    store = Idempotency(valkey, ControlPlaneSettings())  # the stack's defaults: same prefix
    # reservations are per session's internal key (a reused name is another session)
    storage_key = store.storage_key(tenant, await session_key(nc, tenant, sender), key)
    digest = body_digest(msgspec.json.encode(msgspec.convert(body, OutboundMessage)))
    try:
        assert await store.reserve(storage_key, digest) is None  # the first request
        duplicate = await api.post(
            f"/v1/sessions/{sender}/messages", json=body, headers={"Idempotency-Key": key}
        )
        assert duplicate.status_code == 409, f"{duplicate.status_code}: {duplicate.text}"
        assert_problem(duplicate, 409, "idempotency_in_progress")
        assert duplicate.headers["retry-after"] == "1"

        await store.release(storage_key)  # the first request failed: the key is free
        retried = await api.post(
            f"/v1/sessions/{sender}/messages", json=body, headers={"Idempotency-Key": key}
        )
        assert retried.status_code == 202, retried.text
        assert retried.json()["message_id"] == Idempotency.message_id(storage_key)
    finally:
        await valkey.close()


async def test_a_send_that_fails_frees_its_key_for_a_retry(
    pair: tuple[httpx.AsyncClient, str, str],
) -> None:
    """Guarantee: a send the agent refuses (here: media it may not fetch) releases its
    Idempotency-Key at once, so the client's retry is served again — not answered 409
    ``idempotency_in_progress`` until the reservation expires."""
    api, sender, _ = pair
    url = f"/v1/sessions/{sender}/messages"
    # loopback: the agent's SSRF guard refuses the fetch, after the key was reserved
    body = {"type": "image", "to": "+15550300001", "media": {"url": "http://127.0.0.1:9/a.png"}}
    key = {"Idempotency-Key": unique("idem")}
    first = await api.post(url, json=body, headers=key)
    assert_problem(first, 422, "media_unavailable")
    for _ in range(2):
        retry = await api.post(url, json=body, headers=key)
        assert_problem(retry, 422, "media_unavailable")
    # a corrected request under the same key is a request of its own
    fixed = {**body, "media": {"base64": PNG, "mimetype": "image/png"}}
    accepted = await api.post(url, json=fixed, headers=key)
    assert accepted.status_code == 202 and "idempotent-replayed" not in accepted.headers


async def test_history_is_cached_for_a_minute(
    stack: Stack, pair: tuple[httpx.AsyncClient, str, str], phones: tuple[str, str]
) -> None:
    api, sender, _ = pair
    sent = await api.post(
        f"/v1/sessions/{sender}/messages",
        json={"type": "text", "to": "+" + phones[1], "text": "for the record"},
    )
    message_id = sent.json()["message_id"]
    for _ in range(100):  # the agent records a message once it has left the queue
        first = await api.get(f"/v1/sessions/{sender}/messages", params={"limit": 5})
        if any(m["message_id"] == message_id for m in first.json()["messages"]):
            break
        await api.post("/monitoring/cache/clear", headers=stack.headers)  # admin only
    assert first.headers["x-cache"] == "miss"
    record = next(m for m in first.json()["messages"] if m["message_id"] == message_id)
    assert record["direction"] == "out" and record["text"] == "for the record"
    second = await api.get(f"/v1/sessions/{sender}/messages", params={"limit": 5})
    assert second.headers["x-cache"] == "hit" and second.json() == first.json()


async def test_number_checks_are_batched_and_cached(
    stack: Stack, pair: tuple[httpx.AsyncClient, str, str], phones: tuple[str, str]
) -> None:
    api, sender, _ = pair
    url = f"/v1/sessions/{sender}/contacts/check"
    unknown = "+1555039" + phones[0][-4:]
    numbers = ["+" + phones[1], unknown, phones[1]]  # duplicates are checked once
    hits_before = await metric(stack, "zapfleet_api_cache_requests_total", cache="numbers",
                               result="hit")  # fmt: skip
    first = await api.post(url, json={"numbers": numbers})
    assert first.status_code == 200, first.text
    results = {r["number"]: r["on_whatsapp"] for r in first.json()["results"]}
    assert results == {phones[1]: True, unknown.lstrip("+"): False}
    second = await api.post(url, json={"numbers": numbers})
    assert second.json() == first.json()
    hits_after = await metric(stack, "zapfleet_api_cache_requests_total", cache="numbers",
                              result="hit")  # fmt: skip
    assert hits_after - hits_before == 2

    assert_problem(await api.post(url, json={"numbers": []}), 400, "invalid_body")
    assert_problem(await api.post(url, json={"numbers": ["+1 23"]}), 422, "invalid_number")
    too_many = {"numbers": [f"+1555040{i:04d}" for i in range(501)]}
    assert_problem(await api.post(url, json=too_many), 400, "invalid_body")

"""The thinnest complete path: HTTP → control plane → NATS → agent (sim) → JetStream →
webhook, on real nats-server, valkey-server and processes."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import msgspec
import pytest
from nats.aio.client import Client as NATS
from nats.js.api import DeliverPolicy

from contract.protocol import EVENTS_STREAM, Event
from tests.conftest import Stack, WebhookReceiver
from tests.helpers import pair_session


@pytest.fixture
async def api(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=stack.base_url, headers=stack.headers) as client:
        yield client


async def test_a_message_travels_from_api_to_stream_to_webhook_and_to_the_other_session(
    api: httpx.AsyncClient, nc: NATS, webhook_receiver: WebhookReceiver
) -> None:
    created = []
    for session_id in ("alice", "bob"):
        response = await api.post(
            "/v1/sessions",
            json={"session_id": session_id, "engine": "sim", "webhook_url": webhook_receiver.url},
        )
        assert response.status_code == 201, response.text
        created.append(response.json())
    assert all(s["node_id"] == "test-agent-1" and s["epoch"] == 1 for s in created)

    alice = await pair_session(api, nc, "alice", "15550100001")
    bob = await pair_session(api, nc, "bob", "15550100002")
    assert (alice["phone"], bob["phone"]) == ("15550100001", "15550100002")

    sent = await api.post(
        "/v1/sessions/alice/messages",
        json={"type": "text", "to": "+1 555 010 0002", "text": "hello bob"},
    )
    assert sent.status_code == 202, sent.text
    message_id = sent.json()["message_id"]

    # the event is durable in the stream ...
    js = nc.jetstream()
    sub = await js.subscribe(
        "zf.events.default.alice.message.sent",
        stream=EVENTS_STREAM,
        ordered_consumer=True,
        deliver_policy=DeliverPolicy.ALL,
    )
    stored = msgspec.json.decode((await sub.next_msg(timeout=10)).data, type=Event)
    assert stored.data["message_id"] == message_id
    assert stored.data["to"] == "15550100002"
    await sub.unsubscribe()

    # ... and reaches the webhook of the sender ...
    hook_sent = webhook_receiver.wait_for(
        lambda e: e["type"] == "message.sent" and e["data"]["message_id"] == message_id
    )
    assert hook_sent["session_id"] == "alice"
    assert hook_sent["id"] == stored.id

    # ... and the receiving session's inbound message reaches the webhook too.
    received = webhook_receiver.wait_for(
        lambda e: e["type"] == "message.received" and e["session_id"] == "bob"
    )
    assert received["data"]["text"] == "hello bob"
    assert received["data"]["from"] == "15550100001"


async def test_malformed_json_is_a_problem_document(api: httpx.AsyncClient) -> None:
    response = await api.post(
        "/v1/sessions", content=b'{"engine": "sim",', headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400
    assert response.headers["content-type"].startswith("application/problem+json")
    problem = response.json()
    assert problem["status"] == 400
    assert problem["type"].startswith("urn:zapfleet:problem:")
    assert "malformed" in problem["detail"].lower()


async def test_missing_fields_in_a_message_are_a_problem_document(api: httpx.AsyncClient) -> None:
    response = await api.post("/v1/sessions/alice/messages", json={"type": "text", "text": "x"})
    assert response.status_code == 400
    assert response.headers["content-type"].startswith("application/problem+json")
    assert "to" in response.json()["detail"]


async def test_unknown_session_is_404_problem(api: httpx.AsyncClient) -> None:
    for response in (
        await api.get("/v1/sessions/nobody"),
        await api.get("/v1/sessions/nobody/qr"),
        await api.post(
            "/v1/sessions/nobody/messages", json={"type": "text", "to": "+15550100009", "text": "x"}
        ),
    ):
        assert response.status_code == 404, response.text
        assert response.headers["content-type"].startswith("application/problem+json")
        assert response.json()["type"] == "urn:zapfleet:problem:session_not_found"


async def test_unknown_fields_and_wrong_types_are_rejected(api: httpx.AsyncClient) -> None:
    wrong_type = await api.post("/v1/sessions", json={"engine": 5})
    unknown = await api.post("/v1/sessions", json={"engine": "sim", "colour": "blue"})
    for response in (wrong_type, unknown):
        assert response.status_code == 400
        assert response.headers["content-type"].startswith("application/problem+json")


async def test_an_invalid_recipient_number_is_422(api: httpx.AsyncClient) -> None:
    response = await api.post(
        "/v1/sessions/alice/messages", json={"type": "text", "to": "+1 23", "text": "x"}
    )
    assert response.status_code == 422
    assert response.json()["type"] == "urn:zapfleet:problem:invalid_number"


async def test_requests_without_a_key_are_401(stack: Stack) -> None:
    async with httpx.AsyncClient(base_url=stack.base_url) as client:
        missing = await client.get("/v1/sessions/alice")
        wrong = await client.get("/v1/sessions/alice", headers={"X-API-Key": "nope"})
    assert missing.status_code == wrong.status_code == 401
    assert missing.headers["content-type"].startswith("application/problem+json")


async def test_openapi_schema_and_health_are_served(stack: Stack) -> None:
    async with httpx.AsyncClient(base_url=stack.base_url) as client:
        health = await client.get("/monitoring/health")
        schema = await client.get("/schema/openapi.json")
        docs = await client.get("/schema")
    assert health.json()["status"] == "ok"
    assert schema.json()["openapi"].startswith("3.1")
    assert "/v1/sessions" in schema.json()["paths"]
    assert docs.status_code == 200 and "<html" in docs.text.lower()

"""The events surface of the control plane as a client sees it, on real processes: webhook
configuration and its SSRF guard, dead letters over REST, event replay, NATS commands."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import httpx
import msgspec
import nats
import pytest
from nats.aio.client import Client as NATS

from control_plane.webhooks.signing import verify
from node_agent.protocol import EventType
from tests.conftest import ADMIN_KEY, WebhookReceiver
from tests.helpers import pair_session
from tests.webhooks.conftest import ApiStack, publish_events


@pytest.fixture
async def api(api_stack: ApiStack) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=api_stack.base_url, headers=api_stack.headers, timeout=10
    ) as client:
        yield client


@pytest.fixture
async def stack_nc(api_stack: ApiStack) -> AsyncIterator[NATS]:
    client = await nats.connect(api_stack.nats_url)
    yield client
    await client.close()


async def wait_all(receiver: WebhookReceiver, ids: list[str], timeout_s: float = 15) -> None:
    await asyncio.to_thread(receiver.wait_for_ids, set(ids), timeout_s)


def assert_problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    problem: dict[str, Any] = response.json()
    assert problem["type"] == f"urn:zapfleet:problem:{code}"
    return problem


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("http://10.0.0.7/hook", "private"),
        ("http://169.254.169.254/latest/meta-data", "link-local"),
        ("http://127.0.0.2:9/hook", "loopback"),
        ("http://[::1]:9/hook", "loopback"),
        ("http://224.0.0.1/hook", "multicast"),
        ("http://[::ffff:192.168.1.1]/hook", "private"),
        ("ftp://example.org/hook", "http or https"),
    ],
)
async def test_an_unsafe_webhook_url_is_refused_with_a_clear_problem(
    api: httpx.AsyncClient, url: str, words: str
) -> None:
    response = await api.put("/v1/webhooks/config", json={"urls": [url]})
    problem = assert_problem(response, 422, "unsafe_webhook_url")
    assert words in problem["detail"]
    session = await api.post(
        "/v1/sessions", json={"session_id": "ssrf", "engine": "sim", "webhook_url": url}
    )
    assert_problem(session, 422, "unsafe_webhook_url")


async def test_an_unknown_event_type_in_a_filter_is_refused(api: httpx.AsyncClient) -> None:
    response = await api.put(
        "/v1/webhooks/config", json={"urls": ["http://127.0.0.1:9/x"], "events": ["message.oops"]}
    )
    problem = assert_problem(response, 422, "invalid_event_type")
    assert "message.received" in problem["detail"]


async def test_tenant_webhook_config_applies_at_once_and_its_secret_is_shown_once(
    api: httpx.AsyncClient, stack_nc: NATS, webhook_receiver: WebhookReceiver
) -> None:
    put = await api.put(
        "/v1/webhooks/config",
        params={"tenant": "cfg"},
        json={"urls": [webhook_receiver.url], "events": ["message.*"]},
    )
    assert put.status_code == 200, put.text
    secret = put.json()["secret"]
    assert secret.startswith("whsec_") and put.json()["has_secret"] is True
    read = await api.get("/v1/webhooks/config", params={"tenant": "cfg"})
    assert read.json()["urls"] == [webhook_receiver.url]
    assert "secret" not in read.json() and read.json()["has_secret"] is True

    await asyncio.sleep(0.3)  # the dispatcher's KV watch
    wanted = await publish_events(stack_nc, 5, tenant="cfg")
    unwanted = await publish_events(stack_nc, 2, tenant="cfg", event_type=EventType.SESSION_STATUS)
    await wait_all(webhook_receiver, wanted)
    for headers, body in webhook_receiver.requests:
        assert verify(secret, body, headers["Zapfleet-Timestamp"], headers["Zapfleet-Signature"])

    # keep the secret, widen the filter: the next events use the new config
    again = await api.put(
        "/v1/webhooks/config", params={"tenant": "cfg"}, json={"urls": [webhook_receiver.url]}
    )
    assert again.status_code == 200 and "secret" not in again.json()
    await asyncio.sleep(0.3)
    status = await publish_events(stack_nc, 2, tenant="cfg", event_type=EventType.SESSION_STATUS)
    await wait_all(webhook_receiver, status)
    assert not webhook_receiver.ids() & set(unwanted)
    assert (await api.delete("/v1/webhooks/config", params={"tenant": "cfg"})).status_code == 204
    assert_problem(
        await api.get("/v1/webhooks/config", params={"tenant": "cfg"}),
        404,
        "webhook_not_configured",
    )


async def test_dead_letters_are_listed_redriven_and_purged_per_tenant(
    api: httpx.AsyncClient, stack_nc: NATS, webhook_receiver: WebhookReceiver
) -> None:
    webhook_receiver.status = 500
    tenant = {"tenant": "dlq"}
    put = await api.put("/v1/webhooks/config", params=tenant, json={"urls": [webhook_receiver.url]})
    assert put.status_code == 200
    await asyncio.sleep(0.3)
    ids = await publish_events(stack_nc, 4, tenant="dlq")
    deadline = time.monotonic() + 15
    while True:
        listed = (await api.get("/v1/webhooks/dead-letters", params=tenant)).json()
        if len(listed["dead_letters"]) == 4:
            break
        assert time.monotonic() < deadline, listed
        await asyncio.sleep(0.1)
    letters = listed["dead_letters"]
    assert {letter["event"]["id"] for letter in letters} == set(ids)
    assert all(letter["attempts"] == 2 and letter["error"] == "HTTP 500" for letter in letters)
    assert listed["remaining"] == 0 and listed["next_after"] is None
    mine = (await api.get("/v1/webhooks/dead-letters")).json()["dead_letters"]
    assert not {letter["event"]["id"] for letter in mine} & set(ids)
    paged = (await api.get("/v1/webhooks/dead-letters", params={**tenant, "limit": 3})).json()
    assert len(paged["dead_letters"]) == 3 and paged["remaining"] == 1
    assert paged["next_after"] == paged["dead_letters"][-1]["seq"]

    webhook_receiver.status = 200
    first = letters[0]
    one = await api.post(f"/v1/webhooks/dead-letters/{first['seq']}/redrive", params=tenant)
    assert one.status_code == 202 and one.json()["redriven"] == 1
    await wait_all(webhook_receiver, [first["event"]["id"]])
    assert_problem(
        await api.post(f"/v1/webhooks/dead-letters/{first['seq']}/redrive", params=tenant),
        404,
        "dead_letter_not_found",
    )
    second = letters[1]
    assert (
        await api.delete(f"/v1/webhooks/dead-letters/{second['seq']}", params=tenant)
    ).status_code == 204
    rest = await api.post("/v1/webhooks/dead-letters/redrive", params=tenant)
    assert rest.json() == {"redriven": 2, "remaining": 0}
    await wait_all(webhook_receiver, [letter["event"]["id"] for letter in letters[2:]])
    assert second["event"]["id"] not in webhook_receiver.ids()

    webhook_receiver.status = 500
    more = await publish_events(stack_nc, 2, tenant="dlq")
    deadline = time.monotonic() + 15
    while (
        len((await api.get("/v1/webhooks/dead-letters", params=tenant)).json()["dead_letters"]) < 2
    ):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)
    purge = await api.delete("/v1/webhooks/dead-letters", params=tenant)
    assert purge.json() == {"purged": 2}
    assert (await api.get("/v1/webhooks/dead-letters", params=tenant)).json()["dead_letters"] == []
    assert not webhook_receiver.ids() & set(more)


async def test_events_are_replayed_by_sequence_or_time_filtered_and_tenant_scoped(
    api: httpx.AsyncClient, stack_nc: NATS
) -> None:
    started = datetime.now(UTC)
    await asyncio.sleep(0.01)
    a = await publish_events(stack_nc, 12, tenant="replay", session_id="a")
    b = await publish_events(
        stack_nc, 5, tenant="replay", session_id="b", event_type=EventType.SESSION_STATUS
    )
    await publish_events(stack_nc, 3, tenant="elsewhere", session_id="a")
    params = {"tenant": "replay", "limit": 5}

    seen: list[str] = []
    cursor: int | None = None
    while True:
        page = await api.get("/v1/events", params={**params, "since": cursor or 0})
        assert page.status_code == 200, page.text
        body = page.json()
        seen += [event["id"] for event in body["events"]]
        cursor = body["next"]
        if body["remaining"] == 0:
            break
    assert seen == a + b  # every event of the tenant, in order, once
    assert (await api.get("/v1/events", params={**params, "since": cursor})).json()["events"] == []

    only_b = await api.get("/v1/events", params={**params, "session": "b", "limit": 100})
    assert [e["id"] for e in only_b.json()["events"]] == b
    statuses = await api.get("/v1/events", params={**params, "type": "session.*", "limit": 100})
    assert [e["id"] for e in statuses.json()["events"]] == b
    by_time = await api.get(
        "/v1/events", params={**params, "since": started.isoformat(), "limit": 100}
    )
    assert [e["id"] for e in by_time.json()["events"]] == a + b
    future = datetime.now(UTC).replace(year=datetime.now(UTC).year + 1)
    assert (await api.get("/v1/events", params={**params, "since": future.isoformat()})).json()[
        "events"
    ] == []
    first = by_time.json()["events"][0]
    assert first["tenant"] == "replay" and first["type"] == "message.received"
    assert first["data"] == {"n": 0, "text": "message 0"} and first["seq"] > 0

    assert_problem(await api.get("/v1/events", params={"since": "yesterday"}), 422, "invalid_since")
    assert_problem(await api.get("/v1/events", params={"type": "nope"}), 422, "invalid_event_type")
    wildcard = await api.get("/v1/events", params={"session": "a.>"})
    assert wildcard.status_code == 400  # no subject wildcards through the session filter


async def test_a_tenant_key_cannot_reach_another_tenant(api_stack: ApiStack) -> None:
    async with httpx.AsyncClient(base_url=api_stack.base_url) as anonymous:
        response = await anonymous.get("/v1/events")
        assert_problem(response, 401, "unauthenticated")
        response = await anonymous.get("/v1/webhooks/dead-letters", headers={"X-API-Key": "no"})
        assert_problem(response, 401, "invalid_key")


async def test_the_global_webhook_is_admin_only_and_overrides_settings_live(
    api: httpx.AsyncClient, stack_nc: NATS, webhook_receiver: WebhookReceiver
) -> None:
    assert_problem(await api.get("/v1/webhooks/global"), 404, "webhook_not_configured")
    put = await api.put(
        "/v1/webhooks/global",
        json={"urls": [webhook_receiver.url], "secret": "global-secret-0123456789"},
    )
    assert put.status_code == 200 and put.json()["source"] == "kv"
    try:
        await asyncio.sleep(0.3)
        ids = await publish_events(stack_nc, 3, tenant="no-config-of-its-own")
        await wait_all(webhook_receiver, ids)
        headers, body = webhook_receiver.requests[0]
        assert verify(
            "global-secret-0123456789",
            body,
            headers["Zapfleet-Timestamp"],
            headers["Zapfleet-Signature"],
        )
    finally:
        assert (await api.delete("/v1/webhooks/global")).status_code == 204


async def test_nats_commands_send_a_message_and_read_a_session_status(
    api: httpx.AsyncClient, stack_nc: NATS
) -> None:
    created = await api.post("/v1/sessions", json={"session_id": "cmd", "engine": "sim"})
    assert created.status_code == 201, created.text
    await pair_session(api, stack_nc, "cmd", "15550200001")
    auth = {"Authorization": f"Bearer {ADMIN_KEY}"}

    async def command(subject: str, body: object, headers: dict[str, str] | None) -> Any:
        reply = await stack_nc.request(
            subject, msgspec.json.encode(body), timeout=5, headers=headers
        )
        return msgspec.json.decode(reply.data)

    status = await command("zf.api.default.session_status", {"session_id": "cmd"}, auth)
    assert status["kind"] == "ok", status
    assert status["value"]["state"] == "CONNECTED"
    assert status["value"]["phone"] == "15550200001"

    sent = await command(
        "zf.api.default.message_send",
        {"session_id": "cmd", "message": {"type": "text", "to": "+15550200002", "text": "hi"}},
        auth,
    )
    assert sent["kind"] == "ok", sent
    assert sent["value"]["message_id"].startswith("m_")
    history = await api.get("/v1/events", params={"session": "cmd", "type": "message.queued"})
    queued = [e["data"]["message_id"] for e in history.json()["events"]]
    assert sent["value"]["message_id"] in queued

    missing_key = await command("zf.api.default.session_status", {"session_id": "cmd"}, None)
    assert missing_key == {
        "kind": "err",
        "code": "unauthenticated",
        "status": 401,
        "message": missing_key["message"],
    }
    wrong_key = await command(
        "zf.api.default.session_status", {"session_id": "cmd"}, {"X-API-Key": "wrong"}
    )
    assert wrong_key["code"] == "invalid_key"
    other_tenant = await command("zf.api.other.session_status", {"session_id": "cmd"}, auth)
    assert other_tenant["code"] == "session_not_found" and other_tenant["status"] == 404
    bad_number = await command(
        "zf.api.default.message_send",
        {"session_id": "cmd", "message": {"type": "text", "to": "+1 23", "text": "x"}},
        auth,
    )
    assert bad_number["code"] == "invalid_number" and bad_number["status"] == 422
    bad_body = await command("zf.api.default.message_send", {"session_id": "cmd"}, auth)
    assert bad_body["code"] == "invalid_body" and bad_body["status"] == 400


async def test_webhook_metrics_are_exported(api: httpx.AsyncClient) -> None:
    text = (await api.get("/metrics")).text
    for name in (
        "zapfleet_webhook_queued",
        "zapfleet_webhook_in_flight",
        "zapfleet_webhook_delivered_total",
        "zapfleet_webhook_failed_total",
        "zapfleet_webhook_retried_total",
        "zapfleet_webhook_dlq_depth",
        "zapfleet_webhook_delivery_latency_seconds_bucket",
    ):
        assert name in text

"""The events surface of the control plane as a client sees it, on real processes: webhook
configuration and its SSRF guard, dead letters over REST, event replay, NATS commands."""

from __future__ import annotations

import asyncio
import secrets
import sys
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import msgspec
import nats
import pytest
from nats.aio.client import Client as NATS
from standardwebhooks import Webhook

from contract.protocol import WEBHOOKS_BUCKET, EventType
from control_plane.webhooks.config import WebhookConfig, WebhookStore
from control_plane.webhooks.signing import new_secret, verify
from tests.conftest import ADMIN_KEY, WebhookReceiver
from tests.helpers import pair_session
from tests.webhooks.conftest import ApiStack, publish_events

EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "examples"


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


async def as_tenant(api: httpx.AsyncClient, tenant: str) -> dict[str, str]:
    """Create the tenant (once) and return the header with which the admin acts for it."""
    created = await api.post("/v1/tenants", json={"tenant_id": tenant})
    assert created.status_code in (201, 409), created.text
    return {"X-Tenant-Id": tenant}


async def tenant_key(api: httpx.AsyncClient, tenant: str) -> str:
    await as_tenant(api, tenant)
    issued = await api.post(f"/v1/tenants/{tenant}/keys", json={})
    assert issued.status_code == 201, issued.text
    key: str = issued.json()["key"]
    return key


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
    if url.startswith("http"):
        assert_problem(session, 422, "unsafe_webhook_url")
    else:  # the session body's URL pattern already refuses other schemes
        assert_problem(session, 400, "invalid_body")


async def test_an_unknown_event_type_in_a_filter_is_refused(api: httpx.AsyncClient) -> None:
    response = await api.put(
        "/v1/webhooks/config", json={"urls": ["http://127.0.0.1:9/x"], "events": ["message.oops"]}
    )
    problem = assert_problem(response, 422, "invalid_event_type")
    assert "message.received" in problem["detail"]


async def test_tenant_webhook_config_applies_at_once_and_its_secret_is_shown_once(
    api: httpx.AsyncClient, stack_nc: NATS, webhook_receiver: WebhookReceiver
) -> None:
    cfg = await as_tenant(api, "cfg")
    put = await api.put(
        "/v1/webhooks/config",
        headers=cfg,
        json={"urls": [webhook_receiver.url], "events": ["message.*"]},
    )
    assert put.status_code == 200, put.text
    secret = put.json()["secret"]
    assert secret.startswith("whsec_") and put.json()["has_secret"] is True
    read = await api.get("/v1/webhooks/config", headers=cfg)
    assert read.json()["urls"] == [webhook_receiver.url]
    assert "secret" not in read.json() and read.json()["has_secret"] is True

    await asyncio.sleep(0.3)  # the dispatcher's KV watch
    wanted = await publish_events(stack_nc, 5, tenant="cfg")
    unwanted = await publish_events(stack_nc, 2, tenant="cfg", event_type=EventType.SESSION_STATUS)
    await wait_all(webhook_receiver, wanted)
    assert put.json()["scheme"] == "standard"  # a new config: Standard Webhooks
    for headers, body in webhook_receiver.requests:
        assert Webhook(secret).verify(body, headers)["id"] == headers["webhook-id"]

    # keep the secret, widen the filter: the next events use the new config
    again = await api.put("/v1/webhooks/config", headers=cfg, json={"urls": [webhook_receiver.url]})
    assert again.status_code == 200 and "secret" not in again.json()
    await asyncio.sleep(0.3)
    status = await publish_events(stack_nc, 2, tenant="cfg", event_type=EventType.SESSION_STATUS)
    await wait_all(webhook_receiver, status)
    assert not webhook_receiver.ids() & set(unwanted)
    overview = (await api.get("/v1/webhooks", headers=cfg)).json()["webhooks"]
    assert {"scope": "tenant:cfg", "url": webhook_receiver.url} in [
        {"scope": w["scope"], "url": w["url"]} for w in overview
    ]
    assert (await api.delete("/v1/webhooks/config", headers=cfg)).status_code == 204
    assert_problem(
        await api.get("/v1/webhooks/config", headers=cfg),
        404,
        "webhook_not_configured",
    )


async def test_dead_letters_are_listed_redriven_and_purged_per_tenant(
    api: httpx.AsyncClient, stack_nc: NATS, webhook_receiver: WebhookReceiver
) -> None:
    webhook_receiver.status = 500
    tenant = await as_tenant(api, "dlq")
    put = await api.put(
        "/v1/webhooks/config", headers=tenant, json={"urls": [webhook_receiver.url]}
    )
    assert put.status_code == 200
    await asyncio.sleep(0.3)
    ids = await publish_events(stack_nc, 4, tenant="dlq")
    deadline = time.monotonic() + 15
    while True:
        listed = (await api.get("/v1/webhooks/dead-letters", headers=tenant)).json()
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
    paged = (await api.get("/v1/webhooks/dead-letters", params={"limit": 3}, headers=tenant)).json()
    assert len(paged["dead_letters"]) == 3 and paged["remaining"] == 1
    assert paged["next_after"] == paged["dead_letters"][-1]["seq"]

    webhook_receiver.status = 200
    first = letters[0]
    one = await api.post(f"/v1/webhooks/dead-letters/{first['seq']}/redrive", headers=tenant)
    assert one.status_code == 202 and one.json()["redriven"] == 1
    await wait_all(webhook_receiver, [first["event"]["id"]])
    assert_problem(
        await api.post(f"/v1/webhooks/dead-letters/{first['seq']}/redrive", headers=tenant),
        404,
        "dead_letter_not_found",
    )
    second = letters[1]
    assert (
        await api.delete(f"/v1/webhooks/dead-letters/{second['seq']}", headers=tenant)
    ).status_code == 204
    rest = await api.post("/v1/webhooks/dead-letters/redrive", headers=tenant)
    assert rest.json() == {"redriven": 2, "remaining": 0}
    await wait_all(webhook_receiver, [letter["event"]["id"] for letter in letters[2:]])
    assert second["event"]["id"] not in webhook_receiver.ids()

    webhook_receiver.status = 500
    more = await publish_events(stack_nc, 2, tenant="dlq")
    deadline = time.monotonic() + 15
    while (
        len((await api.get("/v1/webhooks/dead-letters", headers=tenant)).json()["dead_letters"]) < 2
    ):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)
    purge = await api.delete("/v1/webhooks/dead-letters", headers=tenant)
    assert purge.json() == {"purged": 2}
    assert (await api.get("/v1/webhooks/dead-letters", headers=tenant)).json()["dead_letters"] == []
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
    replay = await as_tenant(api, "replay")
    params = {"limit": 5}

    seen: list[str] = []
    cursor: int | None = None
    while True:
        page = await api.get("/v1/events", params={**params, "since": cursor or 0}, headers=replay)
        assert page.status_code == 200, page.text
        body = page.json()
        seen += [event["id"] for event in body["events"]]
        cursor = body["next"]
        if body["remaining"] == 0:
            break
    assert seen == a + b  # every event of the tenant, in order, once
    after = await api.get("/v1/events", params={**params, "since": cursor}, headers=replay)
    assert after.json()["events"] == []

    only_b = await api.get("/v1/events", params={"session": "b", "limit": 100}, headers=replay)
    assert [e["id"] for e in only_b.json()["events"]] == b
    statuses = await api.get(
        "/v1/events", params={"type": "session.*", "limit": 100}, headers=replay
    )
    assert [e["id"] for e in statuses.json()["events"]] == b
    by_time = await api.get(
        "/v1/events", params={"since": started.isoformat(), "limit": 100}, headers=replay
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


async def test_a_tenant_key_sees_only_its_own_tenant(
    api: httpx.AsyncClient, api_stack: ApiStack, stack_nc: NATS
) -> None:
    key = await tenant_key(api, "own")
    await as_tenant(api, "foreign")
    mine = await publish_events(stack_nc, 2, tenant="own")
    await publish_events(stack_nc, 2, tenant="foreign")
    async with httpx.AsyncClient(base_url=api_stack.base_url, headers={"X-API-Key": key}) as client:
        events = (await client.get("/v1/events", params={"limit": 100})).json()["events"]
        assert [e["id"] for e in events] == mine
        assert_problem(
            await client.get("/v1/events", headers={"X-Tenant-Id": "foreign"}), 403, "forbidden"
        )
        assert_problem(
            await client.get("/v1/webhooks/dead-letters", params={"all_tenants": "true"}),
            403,
            "forbidden",
        )
        assert_problem(await client.get("/v1/webhooks/global"), 403, "forbidden")
        put = await client.put("/v1/webhooks/config", json={"urls": ["http://127.0.0.1:9/own"]})
        assert put.status_code == 200 and put.json()["scope"] == "tenant:own"
    async with httpx.AsyncClient(base_url=api_stack.base_url) as anonymous:
        assert_problem(await anonymous.get("/v1/events"), 401, "unauthenticated")
        response = await anonymous.get("/v1/webhooks/dead-letters", headers={"X-API-Key": "no"})
        assert_problem(response, 401, "invalid_key")


async def test_the_global_webhook_is_admin_only_and_overrides_settings_live(
    api: httpx.AsyncClient, stack_nc: NATS, webhook_receiver: WebhookReceiver
) -> None:
    assert_problem(await api.get("/v1/webhooks/global"), 404, "webhook_not_configured")
    put = await api.put(
        "/v1/webhooks/global",
        json={
            "urls": [webhook_receiver.url],
            "secret": "global-secret-0123456789",  # free-form: the old scheme only
            "scheme": "zapfleet-v1",
        },
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
    unknown_tenant = await command("zf.api.nobody.session_status", {"session_id": "cmd"}, auth)
    assert unknown_tenant["code"] == "tenant_not_found" and unknown_tenant["status"] == 404
    key = await tenant_key(api, "cmd-tenant")
    foreign = await command(
        "zf.api.default.session_status", {"session_id": "cmd"}, {"X-API-Key": key}
    )
    assert foreign["code"] == "forbidden" and foreign["status"] == 403
    own = await command(
        "zf.api.cmd-tenant.session_status", {"session_id": "cmd"}, {"X-API-Key": key}
    )
    assert own["code"] == "session_not_found" and own["status"] == 404
    bad_number = await command(
        "zf.api.default.message_send",
        {"session_id": "cmd", "message": {"type": "text", "to": "+1 23", "text": "x"}},
        auth,
    )
    assert bad_number["code"] == "invalid_number" and bad_number["status"] == 422
    bad_body = await command("zf.api.default.message_send", {"session_id": "cmd"}, auth)
    assert bad_body["code"] == "invalid_body" and bad_body["status"] == 400

    # the example client of docs/nats.md does the same from the command line
    example = EXAMPLES / "nats_command.py"
    common = ["--url", stack_nc.connected_url.geturl(), "--tenant", "default", "--key", ADMIN_KEY]
    for args, expected in (
        (["status", "cmd"], '"state": "CONNECTED"'),
        (["send", "cmd", "+15550200003", "from the docs"], '"status": "queued"'),
    ):
        process = await asyncio.create_subprocess_exec(
            sys.executable, str(example), *common, *args, stdout=asyncio.subprocess.PIPE
        )
        stdout, _ = await asyncio.wait_for(process.communicate(), 30)
        assert process.returncode == 0 and expected in stdout.decode(), stdout.decode()


async def test_an_unknown_nats_command_gets_a_clear_error_not_silence(stack_nc: NATS) -> None:
    auth = {"Authorization": f"Bearer {ADMIN_KEY}"}
    for subject in ("zf.api.default.no_such_op", "zf.api.default.message_send.extra"):
        reply = await stack_nc.request(subject, b"{}", timeout=5, headers=auth)
        answer = msgspec.json.decode(reply.data)
        assert answer["kind"] == "err" and answer["code"] == "unknown_operation", answer
        assert answer["status"] == 404
        assert "message_send" in answer["message"] and "session_status" in answer["message"]
        assert reply.headers is not None and reply.headers["Nats-Service-Error-Code"] == "404"
    # without a key too: nothing about the tenant is looked at
    reply = await stack_nc.request("zf.api.nobody.frobnicate", b"", timeout=5)
    assert msgspec.json.decode(reply.data)["code"] == "unknown_operation"


async def test_error_replies_count_as_errors_in_the_service_stats(stack_nc: NATS) -> None:
    async def stats() -> dict[str, Any]:
        reply = await stack_nc.request("$SRV.STATS.zapfleet-api", b"", timeout=5)
        endpoints = msgspec.json.decode(reply.data)["endpoints"]
        return {e["name"]: e for e in endpoints}

    before = (await stats())["session_status"]
    auth = {"Authorization": f"Bearer {ADMIN_KEY}"}
    for headers in (None, auth):  # 401 unauthenticated, 404 session_not_found
        reply = await stack_nc.request(
            "zf.api.default.session_status",
            msgspec.json.encode({"session_id": "no-such-session"}),
            timeout=5,
            headers=headers,
        )
        assert msgspec.json.decode(reply.data)["kind"] == "err"
        assert reply.headers is not None and "Nats-Service-Error" in reply.headers
    after = (await stats())["session_status"]
    assert after["num_requests"] - before["num_requests"] == 2
    assert after["num_errors"] - before["num_errors"] == 2
    assert after["last_error"].startswith("session_not_found: ")


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


async def test_a_config_from_before_schemes_keeps_the_old_one_until_switched_then_rotates(
    api: httpx.AsyncClient, stack_nc: NATS, webhook_receiver: WebhookReceiver
) -> None:
    """Upgrade path: a stored config without a scheme signs as before; a PUT without
    ``scheme`` keeps it; switching to standard makes a library-loadable secret and, for
    the grace period, signs with the replaced one too; a later rotation likewise."""
    tenant = await as_tenant(api, "upgraded")
    old_secret = "whsec_" + secrets.token_urlsafe(32)  # what the old API generated
    store = WebhookStore(await stack_nc.jetstream().key_value(WEBHOOKS_BUCKET))
    await store.put_tenant(
        "upgraded", WebhookConfig(urls=[webhook_receiver.url], secret=old_secret)
    )
    try:
        assert (await api.get("/v1/webhooks/config", headers=tenant)).json()["scheme"] == (
            "zapfleet-v1"
        )
        kept = await api.put(
            "/v1/webhooks/config", headers=tenant, json={"urls": [webhook_receiver.url]}
        )
        assert kept.status_code == 200 and kept.json()["scheme"] == "zapfleet-v1"
        assert "secret" not in kept.json()  # the old secret stays
        await asyncio.sleep(0.3)
        (first,) = await publish_events(stack_nc, 1, tenant="upgraded")
        await wait_all(webhook_receiver, [first])
        headers, body = webhook_receiver.requests[-1]
        assert "webhook-signature" not in {name.lower() for name in headers}
        assert verify(
            old_secret, body, headers["Zapfleet-Timestamp"], headers["Zapfleet-Signature"]
        )

        bad = await api.put(
            "/v1/webhooks/config",
            headers=tenant,
            json={"urls": [webhook_receiver.url], "scheme": "standard", "secret": "x" * 20},
        )
        assert_problem(bad, 422, "invalid_webhook_secret")
        switched = await api.put(
            "/v1/webhooks/config",
            headers=tenant,
            json={"urls": [webhook_receiver.url], "scheme": "standard"},
        )
        assert switched.status_code == 200, switched.text
        standard_secret = switched.json()["secret"]  # a new one: the old is no base64
        assert switched.json()["scheme"] == "standard" and standard_secret != old_secret
        assert switched.json()["previous_secret_until"] > time.time() + 3600
        await asyncio.sleep(0.3)
        (second,) = await publish_events(stack_nc, 1, tenant="upgraded")
        await wait_all(webhook_receiver, [second])
        headers, body = webhook_receiver.requests[-1]
        assert Webhook(standard_secret).verify(body, headers)["id"] == second
        assert len(headers["webhook-signature"].split(" ")) == 2  # with the replaced one

        rotated_secret = new_secret()
        rotated = await api.put(
            "/v1/webhooks/config",
            headers=tenant,
            json={"urls": [webhook_receiver.url], "secret": rotated_secret},
        )
        assert rotated.status_code == 200 and rotated.json()["scheme"] == "standard"
        await asyncio.sleep(0.3)
        (third,) = await publish_events(stack_nc, 1, tenant="upgraded")
        await wait_all(webhook_receiver, [third])
        headers, body = webhook_receiver.requests[-1]
        # receivers on either secret verify it during the grace period
        assert Webhook(rotated_secret).verify(body, headers)["id"] == third
        assert Webhook(standard_secret).verify(body, headers)["id"] == third
        overview = (await api.get("/v1/webhooks", headers=tenant)).json()["webhooks"]
        (entry,) = [w for w in overview if w["scope"] == "tenant:upgraded"]
        assert entry["scheme"] == "standard" and entry["backlog"] == 0
    finally:
        await api.delete("/v1/webhooks/config", headers=tenant)


async def test_sessions_get_the_standard_scheme_unless_they_ask_for_the_old_one(
    api: httpx.AsyncClient,
) -> None:
    url = "http://127.0.0.1:9/hook"
    refused = await api.post(
        "/v1/sessions",
        json={"session_id": "sch-bad", "engine": "sim", "start": False, "webhook_url": url,
              "webhook_secret": "a free-form secret"},
    )  # fmt: skip
    assert_problem(refused, 422, "invalid_webhook_secret")
    made = await api.post(
        "/v1/sessions",
        json={"session_id": "sch-new", "engine": "sim", "start": False, "webhook_url": url,
              "webhook_secret": new_secret()},
    )  # fmt: skip
    assert made.status_code == 201, made.text
    settings = (await api.get("/v1/sessions/sch-new/settings")).json()
    assert settings["webhook_scheme"] == "standard"
    legacy = await api.patch(
        "/v1/sessions/sch-new/settings",
        json={"webhook_scheme": "zapfleet-v1", "webhook_secret": "a free-form secret"},
    )
    assert legacy.status_code == 200, legacy.text
    assert legacy.json()["webhook_scheme"] == "zapfleet-v1"
    assert (await api.delete("/v1/sessions/sch-new")).status_code in (200, 202, 204)

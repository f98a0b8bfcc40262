"""Monitoring: health, readiness, Prometheus text, JSON metrics, per-session metrics,
cache clear and GC (admin only), nodes list, compression and the OpenAPI document."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator

import httpx
import pytest
from nats.aio.client import Client as NATS

from tests.conftest import Stack
from tests.helpers import assert_problem, new_tenant, pair_session, unique


@pytest.fixture
async def admin(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=stack.base_url, headers=stack.headers) as client:
        yield client


async def test_health_ready_and_prometheus_need_no_key(stack: Stack) -> None:
    async with httpx.AsyncClient(base_url=stack.base_url) as client:
        assert (await client.get("/monitoring/health")).json() == {"status": "ok", "checks": {}}
        ready = (await client.get("/monitoring/ready")).json()
        assert ready == {"status": "ok", "checks": {"nats": "ok", "valkey": "ok"}}
        await client.get("/v1/sessions")  # a 401, counted like any request
        prometheus = await client.get("/metrics")
        text = prometheus.text
    content_type = prometheus.headers["content-type"]
    assert content_type.startswith("text/plain; version=") and content_type.count("charset") == 1
    assert content_type.endswith("; charset=utf-8"), content_type
    assert 'zapfleet_api_requests_total{route="/v1/sessions",status="4xx"}' in text
    assert "zapfleet_api_cache_requests_total" in text
    # and timed: the request lands in one bucket of the route's duration histogram
    count = re.search(
        r'zapfleet_api_request_duration_seconds_count\{route="/v1/sessions"\} (\S+)', text
    )
    assert count is not None and float(count.group(1)) >= 1, text[:2000]


async def test_json_metrics_cover_system_cache_webhooks_and_instances(
    admin: httpx.AsyncClient,
) -> None:
    response = await admin.get("/monitoring/metrics")
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) >= {"system", "cache", "webhooks", "instances", "rate_limited"}
    assert body["system"]["rss_bytes"] > 0 and body["system"]["http_workers"] == 1
    assert set(body["cache"]["hits"]) == {"status", "qr", "numbers", "history"}
    assert body["instances"]["nodes"] >= 1 and body["instances"]["capacity"] > 0
    assert body["webhooks"]["pending"] is not None  # the in-process dispatcher's consumer


async def test_instance_metrics_list_the_callers_sessions_live(
    stack: Stack, admin: httpx.AsyncClient, nc: NATS
) -> None:
    _, key = await new_tenant(admin, "inst")
    session_id = unique("inst")
    async with httpx.AsyncClient(base_url=stack.base_url, headers={"X-API-Key": key}) as api:
        await api.post("/v1/sessions", json={"session_id": session_id})
        await pair_session(api, nc, session_id, "1555060" + session_id[-4:].zfill(4)[:4])
        body = (await api.get("/monitoring/instances/metrics")).json()
        assert [i["session_id"] for i in body["instances"]] == [session_id]
        assert body["instances"][0]["state"] == "CONNECTED"
        assert body["by_state"] == {"CONNECTED": 1} and body["unreachable_nodes"] == []
        await api.delete(f"/v1/sessions/{session_id}", params={"logout": "true"})


async def test_cache_clear_forces_a_miss_and_gc_runs(
    admin: httpx.AsyncClient,
) -> None:
    session_id = unique("clr")
    await admin.post("/v1/sessions", json={"session_id": session_id})
    for _ in range(200):  # until the session settles in PAIRING and its status is cached
        status = await admin.get(f"/v1/sessions/{session_id}/status")
        if status.json()["state"] == "PAIRING" and status.headers["x-cache"] == "hit":
            break
        await asyncio.sleep(0.05)
    assert status.headers["x-cache"] == "hit"
    cleared = await admin.post("/monitoring/cache/clear", params={"cache": "status"})
    assert cleared.status_code == 200 and cleared.json()["deleted"] >= 1
    assert (await admin.get(f"/v1/sessions/{session_id}/status")).headers["x-cache"] == "miss"
    assert_problem(
        await admin.post("/monitoring/cache/clear", params={"cache": "bogus"}),
        400,
        "invalid_parameter",
    )
    gc = await admin.post("/monitoring/gc")
    assert gc.status_code == 200 and gc.json()["collected"] >= 0
    await admin.delete(f"/v1/sessions/{session_id}")


async def test_nodes_are_listed_for_the_admin(stack: Stack, admin: httpx.AsyncClient) -> None:
    nodes = (await admin.get("/v1/nodes")).json()["nodes"]
    node = next(n for n in nodes if n["node_id"] == stack.node_id)
    assert node["engine"] == "sim" and node["capacity"] > 0


async def test_large_answers_are_compressed(stack: Stack) -> None:
    async with httpx.AsyncClient(base_url=stack.base_url) as client:
        for encoding in ("br", "gzip"):
            response = await client.get(
                "/schema/openapi.json", headers={"Accept-Encoding": encoding}
            )
            assert response.headers["content-encoding"] == encoding
            assert response.json()["openapi"].startswith("3.1")
        small = await client.get("/monitoring/health", headers={"Accept-Encoding": "gzip"})
        assert "content-encoding" not in small.headers


async def test_the_openapi_document_describes_every_endpoint(stack: Stack) -> None:
    async with httpx.AsyncClient(base_url=stack.base_url) as client:
        schema = (await client.get("/schema/openapi.json")).json()
    paths = schema["paths"]
    for path in (
        "/v1/sessions",
        "/v1/sessions/{session_id}",
        "/v1/sessions/{session_id}/start",
        "/v1/sessions/{session_id}/stop",
        "/v1/sessions/{session_id}/restart",
        "/v1/sessions/{session_id}/logout",
        "/v1/sessions/{session_id}/reconnect",
        "/v1/sessions/{session_id}/reset-breaker",
        "/v1/sessions/{session_id}/qr",
        "/v1/sessions/{session_id}/qr.png",
        "/v1/sessions/{session_id}/qr.svg",
        "/v1/sessions/{session_id}/pair-code",
        "/v1/sessions/{session_id}/status",
        "/v1/sessions/{session_id}/settings",
        "/v1/sessions/{session_id}/messages",
        "/v1/sessions/{session_id}/contacts/check",
        "/v1/tenants",
        "/v1/tenants/{tenant_id}/keys",
        "/v1/tenants/{tenant_id}/keys/{key_id}/rotate",
        "/v1/nodes",
        "/monitoring/metrics",
        "/monitoring/instances/metrics",
        "/monitoring/cache/clear",
        "/monitoring/gc",
    ):
        assert path in paths, path
    send = paths["/v1/sessions/{session_id}/messages"]["post"]
    assert any(p["name"] == "Idempotency-Key" for p in send["parameters"])
    assert "bearer" in schema["components"]["securitySchemes"]

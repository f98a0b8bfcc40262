"""Session endpoints end to end on the sim engine: lifecycle operations, QR in three
formats, pairing by code, cached status with event-driven invalidation, settings."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from nats.aio.client import Client as NATS

from node_agent.engines.sim import link
from tests.conftest import Stack
from tests.helpers import assert_problem, new_tenant, pair_session, unique


@pytest.fixture
async def api(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    """A fresh tenant's client: sessions of other tests are invisible to it."""
    async with httpx.AsyncClient(base_url=stack.base_url, headers=stack.headers) as admin:
        _, key = await new_tenant(admin, "sess")
    async with httpx.AsyncClient(
        base_url=stack.base_url, headers={"X-API-Key": key}, timeout=10
    ) as client:
        yield client


async def status_until(
    api: httpx.AsyncClient, session_id: str, state: str, timeout_s: float = 10
) -> httpx.Response:
    deadline = time.monotonic() + timeout_s
    while True:
        response = await api.get(f"/v1/sessions/{session_id}/status")
        assert response.status_code == 200, response.text
        if response.json()["state"] == state:
            return response
        if time.monotonic() > deadline:
            raise AssertionError(f"status never became {state}: {response.json()}")
        await asyncio.sleep(0.05)


async def until_hit(api: httpx.AsyncClient, session_id: str) -> httpx.Response:
    for _ in range(50):
        response = await api.get(f"/v1/sessions/{session_id}/status")
        if response.headers["x-cache"] == "hit":
            return response
        await asyncio.sleep(0.05)
    raise AssertionError(f"the status of {session_id} is never served from the cache")


async def test_create_without_start_then_start_stop_and_start_again(
    api: httpx.AsyncClient,
) -> None:
    session_id = unique("life")
    created = await api.post("/v1/sessions", json={"session_id": session_id, "start": False})
    assert created.status_code == 201
    assert (created.json()["state"], created.json()["desired"]) == ("STOPPED", "stopped")
    assert_problem(await api.get(f"/v1/sessions/{session_id}/qr"), 409, "not_running")
    assert_problem(await api.post(f"/v1/sessions/{session_id}/restart"), 409, "not_running")

    started = await api.post(f"/v1/sessions/{session_id}/start")
    assert started.status_code == 200, started.text
    assert started.json()["desired"] == "running" and started.json()["epoch"] == 1
    again = await api.post(f"/v1/sessions/{session_id}/start")
    assert again.json()["epoch"] == 1  # already running: nothing moves

    stopped = await api.post(f"/v1/sessions/{session_id}/stop")
    assert stopped.status_code == 200
    assert (stopped.json()["state"], stopped.json()["desired"]) == ("STOPPED", "stopped")
    assert (await api.get(f"/v1/sessions/{session_id}/status")).json()["state"] == "STOPPED"

    restarted = await api.post(f"/v1/sessions/{session_id}/start")
    assert restarted.json()["epoch"] == 2  # a new placement, fenced by a new epoch
    assert (await api.delete(f"/v1/sessions/{session_id}")).status_code == 204
    assert_problem(await api.get(f"/v1/sessions/{session_id}"), 404, "session_not_found")
    assert_problem(await api.delete(f"/v1/sessions/{session_id}"), 404, "session_not_found")


async def test_qr_as_json_png_and_svg_and_pairing_flips_the_cached_status(
    api: httpx.AsyncClient, nc: NATS
) -> None:
    session_id = unique("qr")
    assert (await api.post("/v1/sessions", json={"session_id": session_id})).status_code == 201
    await status_until(api, session_id, "PAIRING")
    # a stable state is served from the cache (a late event may still invalidate once)
    hit = await until_hit(api, session_id)
    assert hit.json()["state"] == "PAIRING"

    qr = await api.get(f"/v1/sessions/{session_id}/qr")
    assert qr.status_code == 200
    body: dict[str, Any] = qr.json()
    assert body["qr"].startswith("SIM1,") and body["expires_at"] > time.time()
    png = await api.get(f"/v1/sessions/{session_id}/qr.png")
    assert png.headers["content-type"] == "image/png"
    assert png.content.startswith(b"\x89PNG\r\n\x1a\n")
    svg = await api.get(f"/v1/sessions/{session_id}/qr.svg", params={"scale": 4})
    assert svg.headers["content-type"].startswith("image/svg+xml")
    assert b"<svg" in svg.content

    assert (await link(nc, body["qr"], "15550200001")).ok
    # the session.status event invalidates the cached PAIRING: the next read is a miss
    connected = await status_until(api, session_id, "CONNECTED")
    assert connected.headers["x-cache"] == "miss"
    assert connected.json()["phone"] == "15550200001"
    assert (await until_hit(api, session_id)).json()["state"] == "CONNECTED"
    assert_problem(await api.get(f"/v1/sessions/{session_id}/qr"), 409, "not_pairing")
    await api.delete(f"/v1/sessions/{session_id}")


async def test_pairing_by_phone_code(api: httpx.AsyncClient, nc: NATS) -> None:
    session_id = unique("code")
    await api.post("/v1/sessions", json={"session_id": session_id})
    await status_until(api, session_id, "PAIRING")
    invalid = await api.post(f"/v1/sessions/{session_id}/pair-code", json={"phone": "+1 23"})
    assert_problem(invalid, 422, "invalid_number")
    response = await api.post(
        f"/v1/sessions/{session_id}/pair-code", json={"phone": "+1 555 020 0002"}
    )
    assert response.status_code == 200, response.text
    code = response.json()["code"]
    assert len(code) == 9 and code[4] == "-"
    assert (await link(nc, code, "15550200002")).ok
    await status_until(api, session_id, "CONNECTED")
    await api.delete(f"/v1/sessions/{session_id}")


async def test_connection_operations_and_logout(api: httpx.AsyncClient, nc: NATS) -> None:
    session_id = unique("ops")
    await api.post("/v1/sessions", json={"session_id": session_id})
    await pair_session(api, nc, session_id, "15550200003")
    for op in ("restart", "reconnect", "reset-breaker"):
        response = await api.post(f"/v1/sessions/{session_id}/{op}")
        assert response.status_code == 200, (op, response.text)
        assert response.json()["session_id"] == session_id
    await status_until(api, session_id, "CONNECTED")

    listed = (await api.get("/v1/sessions", params={"state": "CONNECTED"})).json()
    assert [s["session_id"] for s in listed["sessions"]] == [session_id]
    assert (await api.get("/v1/sessions", params={"state": "PAIRING"})).json()["total"] == 0

    logged_out = await api.post(f"/v1/sessions/{session_id}/logout")
    assert logged_out.status_code == 200
    assert logged_out.json()["state"] == "LOGGED_OUT"
    assert logged_out.json()["desired"] == "stopped"
    # later reads still say why it is not running (it used to be STOPPED, reason null)
    why = "logged out by request: pair again to use it"
    status = (await api.get(f"/v1/sessions/{session_id}/status")).json()
    assert (status["state"], status["reason"]) == ("STOPPED", why)
    session = (await api.get(f"/v1/sessions/{session_id}")).json()
    assert (session["state"], session["reason"]) == ("STOPPED", why)
    events = await api.get(
        "/v1/events", params={"since": "0", "session": session_id, "type": "session.logged_out"}
    )
    assert [e["data"] for e in events.json()["events"]] == [{"reason": "logged out by request"}]
    # starting again asks for a new pairing: the device was unlinked
    await api.post(f"/v1/sessions/{session_id}/start")
    await status_until(api, session_id, "PAIRING")
    assert (await api.get(f"/v1/sessions/{session_id}")).json()["reason"] != why
    stopped = await api.post(f"/v1/sessions/{session_id}/stop")
    assert stopped.status_code == 200, stopped.text
    session = (await api.get(f"/v1/sessions/{session_id}")).json()
    assert (session["state"], session["reason"]) == ("STOPPED", "stopped by request")
    await api.delete(f"/v1/sessions/{session_id}", params={"logout": "true"})


async def test_settings_are_read_and_patched(api: httpx.AsyncClient) -> None:
    session_id = unique("set")
    await api.post("/v1/sessions", json={"session_id": session_id})
    settings = (await api.get(f"/v1/sessions/{session_id}/settings")).json()
    assert settings["device_name"] == "zapfleet" and settings["pacing"]["enabled"] is True
    patched = await api.patch(
        f"/v1/sessions/{session_id}/settings",
        json={
            "pacing": {"enabled": True, "rate_per_s": 3.0, "burst": 2},
            "proxy": "socks5://10.0.0.1:1080",
            "device_name": "front desk",
            "webhook_url": "https://hooks.example.com/zf",
            "webhook_events": ["message.received"],
        },
    )
    assert patched.status_code == 200, patched.text
    body = patched.json()
    assert body["pacing"]["rate_per_s"] == 3.0 and body["pacing"]["burst"] == 2
    assert body["proxy"] == "socks5://10.0.0.1:1080" and body["device_name"] == "front desk"
    assert body["webhook_events"] == ["message.received"]
    cleared = await api.patch(f"/v1/sessions/{session_id}/settings", json={"proxy": None})
    assert cleared.json()["proxy"] is None
    assert cleared.json()["device_name"] == "front desk"  # absent fields stay
    assert (await api.get(f"/v1/sessions/{session_id}")).json()["webhook_url"] == (
        "https://hooks.example.com/zf"
    )
    for bad in (
        {"proxy": "not a url"},
        {"webhook_url": "ftp://x"},
        {"pacing": {"rate_per_s": "fast"}},
        {"colour": "blue"},
    ):
        response = await api.patch(f"/v1/sessions/{session_id}/settings", json=bad)
        assert_problem(response, 400, "invalid_body")
    await api.delete(f"/v1/sessions/{session_id}")


async def test_creating_an_existing_session_is_409_and_bad_ids_are_400(
    api: httpx.AsyncClient,
) -> None:
    session_id = unique("dup")
    await api.post("/v1/sessions", json={"session_id": session_id, "start": False})
    again = await api.post("/v1/sessions", json={"session_id": session_id})
    assert_problem(again, 409, "session_exists")
    bad = await api.post("/v1/sessions", json={"session_id": "has.dots"})
    assert_problem(bad, 400, "invalid_body")
    await api.delete(f"/v1/sessions/{session_id}")

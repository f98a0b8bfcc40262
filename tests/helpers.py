"""Small helpers the specification-style tests share."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import msgspec
from nats.aio.client import Client as NATS

from node_agent.engines.sim import link


async def wait_state(
    client: httpx.AsyncClient, session_id: str, state: str, timeout_s: float = 15
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        response = await client.get(f"/v1/sessions/{session_id}")
        body = response.json()
        if body.get("state") == state:
            return body
        await asyncio.sleep(0.05)
    raise AssertionError(f"session {session_id} never reached {state}; last: {body}")


async def pair_session(
    client: httpx.AsyncClient, nc: NATS, session_id: str, phone: str
) -> dict[str, Any]:
    """Show the QR through the API, scan it as ``phone`` with the sim, wait for CONNECTED."""
    await wait_state(client, session_id, "PAIRING")
    qr = await client.get(f"/v1/sessions/{session_id}/qr")
    assert qr.status_code == 200, qr.text
    code = qr.json()["qr"]
    result = await link(nc, code, phone)
    assert result.ok, result.error
    return await wait_state(client, session_id, "CONNECTED")


def decode(data: bytes) -> Any:
    return msgspec.json.decode(data)


def unique(prefix: str) -> str:
    """A fresh id, so tests sharing the session-scoped stack never collide."""
    import secrets

    return f"{prefix}-{secrets.token_hex(4)}"


async def new_tenant(admin: httpx.AsyncClient, prefix: str = "t") -> tuple[str, str]:
    """Create a tenant and one API key with the admin client; returns (tenant_id, key)."""
    tenant_id = unique(prefix)
    created = await admin.post("/v1/tenants", json={"tenant_id": tenant_id})
    assert created.status_code == 201, created.text
    key = await admin.post(f"/v1/tenants/{tenant_id}/keys", json={"label": "tests"})
    assert key.status_code == 201, key.text
    return tenant_id, key.json()["key"]


def assert_problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    problem: dict[str, Any] = response.json()
    assert problem["type"] == f"urn:zapfleet:problem:{code}", problem
    assert problem["status"] == status
    return problem

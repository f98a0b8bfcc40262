"""Rate limits (GCRA in Valkey), client IPs behind proxies, body and media size limits.

These run against a control plane of their own with tight limits, so the rest of the
suite (which shares the generous default stack) is never throttled."""

from __future__ import annotations

import asyncio
import base64
import re
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import valkey.asyncio as valkey

from control_plane.api.contacts import PICTURE_BODY_LIMIT
from tests.conftest import ADMIN_KEY, ARTIFACTS, spawn, stop_process, wait_until_ready
from tests.helpers import assert_problem, new_tenant
from zapfleet.devservers import free_port, wait_for_port


@dataclass
class Tight:
    base_url: str


@pytest.fixture(scope="module")
def tight(nats_url: str, valkey_url: str) -> Iterator[Tight]:
    port = free_port()
    process = spawn(
        "control-plane-tight",
        ["control-plane"],
        {
            "ZAPFLEET_NATS_URL": nats_url,
            "ZAPFLEET_VALKEY_URL": valkey_url,
            "ZAPFLEET_ADMIN_KEY": ADMIN_KEY,
            "ZAPFLEET_HTTP_PORT": str(port),
            "ZAPFLEET_DEFAULT_ENGINE": "sim",
            "ZAPFLEET_WEBHOOKS_IN_PROCESS": "false",
            "ZAPFLEET_CACHE_PREFIX": "zft:",
            "ZAPFLEET_RATE_MESSAGES": "3/60",
            "ZAPFLEET_RATE_QUERIES": "5/60",
            "ZAPFLEET_RATE_SESSIONS": "1000/60",
            "ZAPFLEET_RATE_GLOBAL": "6/60",
            "ZAPFLEET_TRUSTED_PROXIES": "127.0.0.1/32",
            "ZAPFLEET_MAX_BODY_BYTES": "4096",
            "ZAPFLEET_MAX_MEDIA_BYTES": "1000",
        },
        ARTIFACTS / "logs",
    )
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_for_port(port, 60, None)
        wait_until_ready(f"{base_url}/monitoring/ready", process)
        yield Tight(base_url)
    finally:
        stop_process(process)


def fresh_admin(tight: Tight) -> httpx.AsyncClient:
    """The admin key from a client address of its own (127.0.0.1 is a trusted proxy
    here), so its buckets are full whatever earlier tests did."""
    import secrets

    address = f"192.0.2.{secrets.randbelow(250) + 1}"
    return httpx.AsyncClient(
        base_url=tight.base_url,
        headers={"X-API-Key": ADMIN_KEY, "X-Forwarded-For": address},
    )


@pytest.fixture
async def tenant_client(tight: Tight) -> AsyncIterator[httpx.AsyncClient]:
    """A fresh key: its buckets start full."""
    async with fresh_admin(tight) as admin:
        _, key = await new_tenant(admin, "rl")
    async with httpx.AsyncClient(base_url=tight.base_url, headers={"X-API-Key": key}) as client:
        yield client


async def test_a_class_limit_counts_down_in_headers_then_answers_429(
    tenant_client: httpx.AsyncClient,
) -> None:
    remaining = []
    for _ in range(5):
        response = await tenant_client.get("/v1/sessions")
        assert response.status_code == 200
        assert response.headers["ratelimit-limit"] == "5"
        assert response.headers["ratelimit-policy"] == '5;w=60;name="queries"'
        remaining.append(int(response.headers["ratelimit-remaining"]))
        assert 0 < int(response.headers["ratelimit-reset"]) <= 60
    assert remaining == [4, 3, 2, 1, 0]
    refused = await tenant_client.get("/v1/sessions")
    problem = assert_problem(refused, 429, "rate_limited")
    assert "queries" in problem["detail"]
    assert refused.headers["ratelimit-remaining"] == "0"
    assert 1 <= int(refused.headers["retry-after"]) <= 12  # one request every 60/5 s


async def test_the_global_limit_applies_on_top_of_every_class(
    tenant_client: httpx.AsyncClient,
) -> None:
    send = {"type": "text", "to": "+15550500001", "text": "x"}
    for _ in range(3):  # messages: 3 per minute (unknown session: 404, still counted)
        response = await tenant_client.post("/v1/sessions/nobody/messages", json=send)
        assert_problem(response, 404, "session_not_found")
    assert_problem(
        await tenant_client.post("/v1/sessions/nobody/messages", json=send), 429, "rate_limited"
    )
    for _ in range(3):  # queries still have room, but global (6) has only 3 left
        assert (await tenant_client.get("/v1/sessions")).status_code == 200
    refused = await tenant_client.get("/v1/sessions")
    assert_problem(refused, 429, "rate_limited")
    assert 'name="global"' in refused.headers["ratelimit-policy"]


async def test_forwarded_clients_of_a_trusted_proxy_have_their_own_buckets(
    tenant_client: httpx.AsyncClient,
) -> None:
    # 127.0.0.1 is a trusted proxy here: X-Forwarded-For names the client
    first = {"X-Forwarded-For": "203.0.113.7"}
    second = {"X-Forwarded-For": "198.51.100.1, 203.0.113.8"}  # right-most untrusted hop
    for _ in range(5):
        assert (await tenant_client.get("/v1/sessions", headers=first)).status_code == 200
    assert (await tenant_client.get("/v1/sessions", headers=first)).status_code == 429
    other = await tenant_client.get("/v1/sessions", headers=second)
    assert other.status_code == 200 and other.headers["ratelimit-remaining"] == "4"


def client_ip(trusted: list[str], peer: str, forwarded: str | None) -> str:
    from litestar import Request

    from control_plane.ratelimit import RateLimiter
    from control_plane.settings import ControlPlaneSettings

    limiter = RateLimiter(
        valkey.Valkey(), ControlPlaneSettings(admin_key="k" * 16, trusted_proxies=trusted)
    )
    headers = [(b"x-forwarded-for", forwarded.encode())] if forwarded else []
    scope = {"type": "http", "client": (peer, 5000), "headers": headers, "method": "GET"}
    return limiter.client_ip(Request(scope))  # type: ignore[arg-type]


def test_forwarded_for_is_believed_only_from_trusted_proxies() -> None:
    assert client_ip([], "198.51.100.9", "203.0.113.1") == "198.51.100.9"
    assert client_ip(["10.0.0.0/8"], "198.51.100.9", "203.0.113.1") == "198.51.100.9"
    assert client_ip(["10.0.0.0/8"], "10.1.2.3", "203.0.113.1") == "203.0.113.1"
    # a client may prepend anything: only the hops our proxies appended count
    assert client_ip(["10.0.0.0/8"], "10.1.2.3", "1.2.3.4, 203.0.113.1, 10.9.9.9") == (
        "203.0.113.1"
    )
    assert client_ip(["10.0.0.0/8"], "10.1.2.3", "10.2.2.2") == "10.1.2.3"
    assert client_ip(["10.0.0.0/8"], "10.1.2.3", None) == "10.1.2.3"


async def test_oversize_bodies_and_media_are_413(tight: Tight) -> None:
    async with fresh_admin(tight) as admin:
        big = await admin.post("/v1/sessions", json={"session_id": "x", "device_name": "y" * 5000})
        assert_problem(big, 413, "request_entity_too_large")
        # sends may be larger than other bodies (inline media), but the media has its limit
        media = {"base64": base64.b64encode(b"\0" * 1001).decode()}
        too_large = await admin.post(
            "/v1/sessions/any/messages",
            json={"type": "image", "to": "+15550500002", "media": media},
        )
        assert_problem(too_large, 413, "media_too_large")
        small = {"base64": base64.b64encode(b"\0" * 1000).decode()}
        fits = await admin.post(
            "/v1/sessions/any/messages",
            json={"type": "image", "to": "+15550500002", "media": small, "caption": "y" * 3000},
        )
        assert_problem(fits, 404, "session_not_found")


def json_operations(schema: dict[str, Any]) -> list[tuple[str, str]]:
    """(method, path with every parameter filled) of each operation with a JSON body."""
    found = []
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            if "application/json" in operation.get("requestBody", {}).get("content", {}):
                found.append((method.upper(), re.sub(r"\{[^}]+\}", "any", path)))
    return found


async def test_every_json_endpoint_refuses_a_body_over_the_limit_with_413(tight: Tight) -> None:
    """ZAPFLEET_MAX_BODY_BYTES (here 4 KiB) holds on every endpoint that takes JSON, number
    checks included (they used to share the sends' limit, which follows the media limit);
    only sends take more. Refused before the body is read: no key is even looked at."""
    async with fresh_admin(tight) as admin:
        schema = (await admin.get("/schema/openapi.json")).json()
        operations = json_operations(schema)
        assert ("POST", "/v1/sessions/any/contacts/check") in operations
        assert len(operations) >= 10, operations
        numbers = {"numbers": ["+1555" + str(n).zfill(7) for n in range(400)]}  # ~5.6 KB
        oversize = {"session_id": "x", "device_name": "y" * 5000}
        for method, path in operations:
            body = numbers if path.endswith("/contacts/check") else oversize
            if path.endswith("/messages"):
                continue  # its limit follows the media limit (the test above)
            if path.endswith("/profile/picture"):
                continue  # a picture has its own, larger limit (below)
            response = await admin.request(method, path, json=body)
            assert_problem(response, 413, "request_entity_too_large")
        # a profile picture (base64) may be larger; a body announced over its limit is
        # refused from its Content-Length, before it is read
        # (a raw request: HTTP clients will not announce more than they send)
        url = admin.base_url
        reader, writer = await asyncio.open_connection(url.host, url.port)
        auth = "".join(f"{k}: {v}\r\n" for k, v in admin.headers.items() if k.startswith("x-"))
        writer.write(
            (
                f"PUT /v1/sessions/any/profile/picture HTTP/1.1\r\nHost: {url.host}\r\n"
                f"Content-Type: application/json\r\n{auth}"
                f"Content-Length: {PICTURE_BODY_LIMIT + 1}\r\nConnection: close\r\n\r\n"
            ).encode()
        )
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(-1), 10)
        writer.close()
        assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
        assert b"request_entity_too_large" in answer
        # the same number check within the limit reaches the handler
        fits = await admin.post(
            "/v1/sessions/any/contacts/check", json={"numbers": ["+15550500002"]}
        )
        assert_problem(fits, 404, "session_not_found")


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
     "application/xml", "text/json"],
)  # fmt: skip
async def test_every_json_endpoint_answers_415_to_a_body_that_is_not_json(
    tight: Tight, content_type: str
) -> None:
    async with fresh_admin(tight) as admin:
        operations = json_operations((await admin.get("/schema/openapi.json")).json())
        for method, path in operations:
            response = await admin.request(
                method, path, content=b'{"type":"text","to":"+15550500002","text":"hi"}',
                headers={"Content-Type": content_type},
            )  # fmt: skip
            problem = assert_problem(response, 415, "unsupported_media_type")
            assert "application/json" in problem["detail"], problem


async def test_json_content_types_with_parameters_or_a_suffix_are_read(tight: Tight) -> None:
    for content_type in (
        "application/json",
        "application/json; charset=utf-8",
        "Application/JSON",
        "application/merge-patch+json",
    ):
        async with fresh_admin(tight) as admin:  # sends are limited to 3 a minute here
            response = await admin.post(
                "/v1/sessions/nobody/messages",
                content=b'{"type":"text","to":"+15550500002","text":"hi"}',
                headers={"Content-Type": content_type},
            )
            assert_problem(response, 404, "session_not_found")

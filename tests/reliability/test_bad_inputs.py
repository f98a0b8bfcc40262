"""The bad-input catalog of docs/security.md, one test per row.

Every row sends what an attacker or a broken client would, to a real fleet (DEBUG logs,
64 KiB body limit, 4 KiB media limit, two tenants with a connected session each), and
checks the exact answer: status and problem type, never a 5xx, and that nothing behind
the API (agent, stream) saw what it should not.
"""

from __future__ import annotations

import base64
import socket
from typing import Any

import httpx
import pytest

from tests.helpers import assert_problem
from tests.reliability.conftest import MAX_BODY, MAX_MEDIA, Catalog
from tests.reliability.drills import stream_events
from tests.reliability.harness import until

JSON = {"Content-Type": "application/json"}


def messages(tenant_session: str) -> str:
    return f"/v1/sessions/{tenant_session}/messages"


async def still_healthy(catalog: Catalog) -> None:
    async with catalog.client() as admin:
        assert (await admin.get("/monitoring/ready")).status_code == 200


# -- malformed and oversize JSON --------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [b'{"session_id": "x",', b'{"a": 1}}', b"\xff\xfe{}", b"", b"{'single': 'quotes'}"],
    ids=["truncated", "trailing", "not-utf8", "empty", "single-quotes"],
)
async def test_malformed_json_is_400(catalog: Catalog, body: bytes) -> None:
    async with catalog.client(catalog.acme) as api:
        response = await api.post("/v1/sessions", content=body, headers=JSON)
    problem = assert_problem(response, 400, response.json()["type"].rsplit(":", 1)[-1])
    assert problem["type"] in (
        "urn:zapfleet:problem:malformed_json",
        "urn:zapfleet:problem:invalid_body",
    )


@pytest.mark.parametrize("body", [b"[]", b'"text"', b"null", b"42", b"true"])
async def test_json_that_is_not_an_object_is_400_invalid_body(
    catalog: Catalog, body: bytes
) -> None:
    async with catalog.client(catalog.acme) as api:
        response = await api.post(messages(catalog.acme.session_id), content=body, headers=JSON)
    assert_problem(response, 400, "invalid_body")


async def test_deeply_nested_json_is_400_and_the_server_lives_on(catalog: Catalog) -> None:
    depth = (MAX_BODY - 100) // 2
    body = b"[" * depth + b"]" * depth
    async with catalog.client(catalog.acme) as api:
        response = await api.post("/v1/sessions", content=body, headers=JSON)
    assert response.status_code == 400, response.text
    await still_healthy(catalog)


async def test_oversize_json_is_413_before_it_is_read(catalog: Catalog) -> None:
    """The declared length alone is enough: 413 comes before a byte of the body is sent."""
    for method, path in (
        ("POST", "/v1/sessions"),
        ("POST", "/v1/tenants"),
        ("PATCH", f"/v1/sessions/{catalog.acme.session_id}/settings"),
    ):
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: x\r\nX-API-Key: {catalog.acme.key}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {MAX_BODY + 1}\r\n\r\n"
        )
        answer = raw_request(catalog.fleet.http_port, head.encode())
        assert answer.startswith(b"HTTP/1.1 413"), (path, answer[:200])


async def test_a_body_that_is_not_json_is_refused(catalog: Catalog) -> None:
    async with catalog.client(catalog.acme) as api:
        response = await api.post(
            "/v1/sessions", content=b"session_id=x", headers={"Content-Type": "text/plain"}
        )
    assert_problem(response, 415, "unsupported_media_type")


# -- unicode edge cases ------------------------------------------------------------------

UNICODE_TEXTS = [
    "👨\u200d👩\u200d👧\u200d👦 family",  # ZWJ sequence
    "مرحبا بالعالم",  # right-to-left
    "e\u0301 combining",  # combining mark
    "\u202eevil.exe",  # bidi override
    "nul\u0000inside",  # NUL
    "\U0001d54f astral plane",  # 4-byte UTF-8
    "\ufeffbom first",  # byte-order mark
    "Ω" * 4000,  # long, 2-byte characters
]


async def test_unicode_text_is_delivered_exactly(catalog: Catalog) -> None:
    acme, globex = catalog.acme, catalog.globex
    async with catalog.client(acme) as api:
        for text in UNICODE_TEXTS:
            body = {"type": "text", "to": "+" + globex.phone, "text": text}
            response = await api.post(messages(acme.session_id), json=body)
            assert response.status_code == 202, response.text
    nc = await catalog.fleet.nats_client()
    received: list[str] = []

    async def all_received() -> bool:
        events = await stream_events(
            nc, f"zf.events.globex.{globex.session_id}.message.received", idle_s=0.3
        )
        received[:] = [e.data.get("text") or "" for e in events]
        return all(t in received for t in UNICODE_TEXTS)

    try:
        await until(all_received, 20, "every unicode text received by the other session")
    finally:
        await nc.close()


@pytest.mark.parametrize(
    "raw",
    [b'"\\ud800 lone high surrogate"', b'"\\udc00 lone low"', b'"\xed\xa0\x80 encoded surrogate"'],
    ids=["escaped-high", "escaped-low", "utf8-encoded"],
)
async def test_surrogates_are_refused_or_replaced_never_500(catalog: Catalog, raw: bytes) -> None:
    body = b'{"type": "text", "to": "+15550700002", "text": ' + raw + b"}"
    async with catalog.client(catalog.acme) as api:
        response = await api.post(messages(catalog.acme.session_id), content=body, headers=JSON)
    assert response.status_code in (202, 400), response.text


async def test_non_ascii_ids_are_refused_or_not_found(catalog: Catalog) -> None:
    async with catalog.client(catalog.acme) as api:
        created = await api.post("/v1/sessions", json={"session_id": "sëssion"})
        read = await api.get("/v1/sessions/%F0%9F%98%80")
    async with catalog.client() as admin:
        tenant = await admin.post("/v1/tenants", json={"tenant_id": "ÄCME"})
        acting = await admin.get("/v1/sessions", headers={"X-Tenant-Id": "acmé".encode()})
    assert_problem(created, 400, "invalid_body")
    assert_problem(read, 404, "session_not_found")
    assert_problem(tenant, 400, "invalid_body")
    assert acting.status_code == 400, acting.text


# -- invalid numbers ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "number", ["+1 23", "abc", "+0000000000", "+99999999999999999", "+1555\u00000000", "+1-555-"]
)
async def test_invalid_phone_numbers_are_422_invalid_number(catalog: Catalog, number: str) -> None:
    async with catalog.client(catalog.acme) as api:
        response = await api.post(
            messages(catalog.acme.session_id), json={"type": "text", "to": number, "text": "x"}
        )
        checked = await api.post(
            f"/v1/sessions/{catalog.acme.session_id}/contacts/check", json={"numbers": [number]}
        )
    assert_problem(response, 422, "invalid_number")
    assert_problem(checked, 422, "invalid_number")


@pytest.mark.parametrize(
    "body",
    [
        {"type": "location", "latitude": 91, "longitude": 0},
        {"type": "location", "latitude": 0, "longitude": -180.5},
        {"type": "text", "text": 5},
        {"type": "contact", "display_name": "x", "phone": 15550700002},
    ],
    ids=["latitude", "longitude", "number-as-text", "phone-as-number"],
)
async def test_out_of_range_and_mistyped_values_in_a_send_are_400(
    catalog: Catalog, body: dict[str, Any]
) -> None:
    async with catalog.client(catalog.acme) as api:
        response = await api.post(
            messages(catalog.acme.session_id), json={**body, "to": "+15550700002"}
        )
    assert_problem(response, 400, "invalid_body")


@pytest.mark.parametrize(
    "pacing",
    [{"rate_per_s": -1}, {"rate_per_s": 0}, {"queue_size": 10**12}, {"burst": 0}, {"jitter": 5}],
    ids=["negative-rate", "zero-rate", "huge-queue", "zero-burst", "jitter"],
)
async def test_pacing_outside_its_bounds_is_400(catalog: Catalog, pacing: dict[str, Any]) -> None:
    async with catalog.client(catalog.acme) as api:
        response = await api.patch(
            f"/v1/sessions/{catalog.acme.session_id}/settings", json={"pacing": pacing}
        )
    assert_problem(response, 400, "invalid_body")


@pytest.mark.parametrize(
    "path",
    [
        "/v1/sessions?limit=-1",
        "/v1/sessions?limit=100000000000000000000000000000",
        "/v1/sessions?offset=x",
    ],
)
async def test_query_numbers_outside_their_bounds_are_400(catalog: Catalog, path: str) -> None:
    async with catalog.client(catalog.acme) as api:
        response = await api.get(path)
    assert_problem(response, 400, "invalid_parameter")


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity", b"1e999999"])
async def test_non_json_number_literals_are_400(catalog: Catalog, literal: bytes) -> None:
    body = (
        b'{"type": "location", "to": "+15550700002", "latitude": ' + literal + b', "longitude": 0}'
    )
    async with catalog.client(catalog.acme) as api:
        response = await api.post(messages(catalog.acme.session_id), content=body, headers=JSON)
    assert response.status_code == 400, response.text


# -- path traversal -------------------------------------------------------------------------


async def test_path_traversal_in_media_file_names_is_cut_to_the_base_name(catalog: Catalog) -> None:
    acme, globex = catalog.acme, catalog.globex
    media = base64.b64encode(b"%PDF-1.4 zapfleet").decode()
    names = {
        "../../etc/passwd": "passwd",
        "..\\..\\boot.ini": "boot.ini",
        "a\u0000b\u202e.pdf": "ab.pdf",
    }
    async with catalog.client(acme) as api:
        for name in names:
            body = {
                "type": "document",
                "to": "+" + globex.phone,
                "media": {"base64": media, "mimetype": "application/pdf", "filename": name},
            }
            response = await api.post(messages(acme.session_id), json=body)
            assert response.status_code == 202, response.text
    nc = await catalog.fleet.nats_client()
    seen: list[Any] = []

    async def delivered() -> bool:
        events = await stream_events(
            nc, f"zf.events.globex.{globex.session_id}.message.received", idle_s=0.3
        )
        seen[:] = [
            ((e.data.get("content") or {}).get("media") or {}).get("filename")
            for e in events
            if e.data.get("type") == "document"
        ]
        return set(names.values()) <= set(seen)

    try:
        await until(delivered, 20, f"documents delivered with safe names (saw {seen})")
    finally:
        await nc.close()
    assert not any(name and ("/" in name or "\\" in name) for name in seen)


@pytest.mark.parametrize("session_id", ["../x", "..", "a/b", "x\\y", ".hidden", "a" * 65])
async def test_ids_that_could_be_paths_are_refused(catalog: Catalog, session_id: str) -> None:
    async with catalog.client(catalog.acme) as api:
        response = await api.post("/v1/sessions", json={"session_id": session_id})
    assert_problem(response, 400, "invalid_body")


@pytest.mark.parametrize(
    "path",
    [
        "/v1/sessions/..%2F..%2Fetc%2Fpasswd",
        "/v1/sessions/%2e%2e",
        "/v1/sessions/a%00b",
        "/v1/sessions/*",
    ],
)
async def test_traversal_in_path_ids_is_404(catalog: Catalog, path: str) -> None:
    async with catalog.client(catalog.acme) as api:
        response = await api.get(path)
    assert response.status_code == 404, response.text


# -- huge base64 -----------------------------------------------------------------------------


async def test_inline_media_over_the_limit_is_413_media_too_large(catalog: Catalog) -> None:
    over = base64.b64encode(b"\0" * (MAX_MEDIA + 1)).decode()
    async with catalog.client(catalog.acme) as api:
        response = await api.post(
            messages(catalog.acme.session_id),
            json={"type": "image", "to": "+15550700002", "media": {"base64": over}},
        )
    assert_problem(response, 413, "media_too_large")


@pytest.mark.parametrize(
    "body",
    [
        {"type": "sticker"},
        {"type": "audio", "voice_note": True},
    ],
    ids=["sticker", "voice-note"],
)
@pytest.mark.parametrize(
    "data",
    [b"\x00garbage" * 40, b"\x89PNG\r\n\x1a\n" + b"\x00" * 100],
    ids=["random", "truncated-png"],
)
async def test_media_that_cannot_be_converted_is_422_undecodable_media(
    catalog: Catalog, body: dict[str, Any], data: bytes
) -> None:
    media = {"base64": base64.b64encode(data).decode(), "mimetype": "image/png"}
    async with catalog.client(catalog.acme) as api:
        before = (await api.get(f"/v1/sessions/{catalog.acme.session_id}")).json()["queue_depth"]
        response = await api.post(
            messages(catalog.acme.session_id), json={**body, "to": "+15550700002", "media": media}
        )
        assert_problem(response, 422, "undecodable_media")
        after = (await api.get(f"/v1/sessions/{catalog.acme.session_id}")).json()["queue_depth"]
    assert after == before  # nothing queued


async def test_received_media_ids_and_signed_urls_that_name_nothing_are_refused(
    catalog: Catalog,
) -> None:
    session = catalog.acme.session_id
    async with catalog.client(catalog.acme) as api:
        for media_id in ("md_" + "0" * 24, "md_ZZ", "x" * 300, "%2e%2e"):
            assert_problem(
                await api.get(f"/v1/sessions/{session}/media/{media_id}"), 404, "media_not_found"
            )
        # a slash in the id matches no route at all
        traversal = await api.get(f"/v1/sessions/{session}/media/..%2F..%2Fetc")
        assert traversal.status_code == 404, traversal.text
        # another tenant's session: 404 for the session, whatever the id
        assert_problem(
            await api.get(f"/v1/sessions/{catalog.globex.session_id}/media/md_{'0' * 24}"),
            404,
            "session_not_found",
        )
    async with catalog.client() as anonymous:
        for token in ("x", "a.b", "%00.%00", "A" * 4000 + "." + "B" * 43):
            assert_problem(await anonymous.get(f"/v1/media/{token}"), 403, "invalid_media_url")


async def test_media_settings_and_history_filters_outside_their_bounds(catalog: Catalog) -> None:
    session = catalog.acme.session_id
    async with catalog.client(catalog.acme) as api:
        for body in ({"inbound": "all"}, {"webhook_inline_max_bytes": -1}, {"x": 1}):
            response = await api.put(f"/v1/sessions/{session}/settings/media", json=body)
            assert_problem(response, 400, "invalid_body")
        bad_chat = await api.get(messages(session), params={"chat": "+1 23"})
        assert_problem(bad_chat, 422, "invalid_number")
        long_chat = await api.get(messages(session), params={"chat": "1" * 200})
        assert long_chat.status_code == 400, long_chat.text


@pytest.mark.parametrize("size", [200 * 1024, 8 * 1024 * 1024], ids=["200KiB", "8MiB"])
async def test_base64_far_over_the_body_limit_is_refused_without_decoding(
    catalog: Catalog, size: int
) -> None:
    """413 — or, once the server has answered 413 before the client finished sending,
    a connection the server closed: either way nothing was buffered or decoded."""
    huge = "A" * size
    async with catalog.client(catalog.acme) as api:
        try:
            response = await api.post(
                messages(catalog.acme.session_id),
                json={"type": "image", "to": "+15550700002", "media": {"base64": huge}},
            )
        except httpx.TransportError:
            pass
        else:
            assert response.status_code == 413, response.text
    await still_healthy(catalog)


# -- header injection ---------------------------------------------------------------------------


async def test_crlf_in_reflected_values_never_reaches_a_header(catalog: Catalog) -> None:
    async with catalog.client(catalog.acme) as api:
        response = await api.get("/v1/sessions/x%0d%0aSet-Cookie:%20a=b%0d%0a")
    assert response.status_code == 404
    assert "set-cookie" not in response.headers
    assert all("\n" not in v and "\r" not in v for v in response.headers.values())


def raw_request(port: int, head: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head)
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            chunks.append(chunk)
            if b"\r\n\r\n" in b"".join(chunks):
                break
    return b"".join(chunks)


@pytest.mark.parametrize(
    "header",
    [
        b"X-API-Key: a\r\n b\r\n",  # obsolete line folding
        b"X-API-Key: a\nX-Tenant-Id: acme\r\n",  # bare LF
        b"X-API-Key: a\x00b\r\n",  # NUL in a value
        b"X-API-Key : a\r\n",  # space before the colon
    ],
    ids=["obs-fold", "bare-lf", "nul", "space-before-colon"],
)
async def test_malformed_header_lines_are_refused_not_interpreted(
    catalog: Catalog, header: bytes
) -> None:
    head = b"GET /v1/sessions HTTP/1.1\r\nHost: x\r\n" + header + b"Connection: close\r\n\r\n"
    answer = raw_request(catalog.fleet.http_port, head)
    status = int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/") else 0
    assert status in (0, 400, 401), answer[:200]
    await still_healthy(catalog)


@pytest.mark.parametrize("key", ["a\tb", "ключ", "x" * 256, ""])
async def test_idempotency_keys_outside_printable_ascii_are_400(catalog: Catalog, key: str) -> None:
    async with catalog.client(catalog.acme) as api:
        response = await api.post(
            messages(catalog.acme.session_id),
            json={"type": "text", "to": "+15550700002", "text": "x"},
            headers={"Idempotency-Key": key.encode()},
        )
    assert_problem(response, 400, "invalid_idempotency_key")


@pytest.mark.parametrize(
    "field,value",
    [
        ("webhook_url", "http://example.com/\r\nX-Injected: 1"),
        ("webhook_url", "http://example.com/ space"),
        ("proxy", "http://proxy:3128\r\nHost: evil"),
    ],
)
async def test_urls_with_whitespace_are_400(catalog: Catalog, field: str, value: str) -> None:
    async with catalog.client(catalog.acme) as api:
        response = await api.patch(
            f"/v1/sessions/{catalog.acme.session_id}/settings", json={field: value}
        )
    assert_problem(response, 400, "invalid_body")


# -- cross-tenant ids -------------------------------------------------------------------------


async def test_another_tenants_session_is_404_for_every_operation(catalog: Catalog) -> None:
    target = catalog.acme.session_id
    calls = [
        ("GET", f"/v1/sessions/{target}", None),
        ("GET", f"/v1/sessions/{target}/status", None),
        ("GET", f"/v1/sessions/{target}/qr", None),
        ("GET", f"/v1/sessions/{target}/qr.png", None),
        ("GET", f"/v1/sessions/{target}/settings", None),
        ("GET", f"/v1/sessions/{target}/messages", None),
        ("PATCH", f"/v1/sessions/{target}/settings", {"device_name": "pwned"}),
        (
            "POST",
            f"/v1/sessions/{target}/messages",
            {"type": "text", "to": "+15550700002", "text": "x"},
        ),
        ("POST", f"/v1/sessions/{target}/contacts/check", {"numbers": ["+15550700002"]}),
        ("POST", f"/v1/sessions/{target}/pair-code", {"phone": "+15550700002"}),
        ("POST", f"/v1/sessions/{target}/restart", None),
        ("POST", f"/v1/sessions/{target}/stop", None),
        ("POST", f"/v1/sessions/{target}/logout", None),
        ("DELETE", f"/v1/sessions/{target}", None),
    ]
    async with catalog.client(catalog.globex) as api:
        for method, path, body in calls:
            response = await api.request(method, path, json=body)
            assert_problem(response, 404, "session_not_found")
        listed = (await api.get("/v1/sessions")).json()
        instances = (await api.get("/monitoring/instances/metrics")).json()
    assert [s["session_id"] for s in listed["sessions"]] == [catalog.globex.session_id]
    assert {i["session_id"] for i in instances["instances"]} <= {catalog.globex.session_id}
    async with catalog.client(catalog.acme) as api:
        mine = (await api.get(f"/v1/sessions/{target}")).json()
    assert mine["state"] == "CONNECTED" and mine["tenant"] == "acme"


async def test_a_tenant_key_cannot_reach_another_tenant(catalog: Catalog) -> None:
    async with catalog.client(catalog.globex) as api:
        acting = await api.get("/v1/sessions", headers={"X-Tenant-Id": "acme"})
        keys = await api.get("/v1/tenants/acme/keys")
        new_key = await api.post("/v1/tenants/acme/keys", json={})
        tenant = await api.get("/v1/tenants/acme")
    assert_problem(acting, 403, "forbidden")
    for response in (keys, new_key, tenant):
        assert_problem(response, 403, "forbidden")


async def test_a_session_id_another_tenant_uses_is_a_new_session_here_and_theirs_is_untouched(
    catalog: Catalog,
) -> None:
    """Session ids are per tenant (issue 13): another tenant's id is free here (no 409
    that would reveal it exists), and creating, reading and deleting ours leaves theirs
    as it was."""
    async with catalog.client(catalog.acme) as api:
        before = (await api.get(f"/v1/sessions/{catalog.acme.session_id}")).json()
    async with catalog.client(catalog.globex) as api:
        response = await api.post(
            "/v1/sessions", json={"session_id": catalog.acme.session_id, "start": False}
        )
        assert response.status_code == 201, response.text
        assert response.json()["tenant"] == "globex"
        assert (await api.delete(f"/v1/sessions/{catalog.acme.session_id}")).status_code == 204
    async with catalog.client(catalog.acme) as api:
        after = (await api.get(f"/v1/sessions/{catalog.acme.session_id}")).json()
    assert after["tenant"] == "acme"
    assert (after["state"], after["phone"], after["created_at"]) == (
        before["state"],
        before["phone"],
        before["created_at"],
    )


# -- idempotency key reuse ------------------------------------------------------------------------


async def test_idempotency_key_reuse_with_another_body_is_409(catalog: Catalog) -> None:
    acme, globex = catalog.acme, catalog.globex
    first = {"type": "text", "to": "+" + globex.phone, "text": "pay 10"}
    other = {**first, "text": "pay 1000"}
    key = {"Idempotency-Key": "invoice-42"}
    async with catalog.client(acme) as api:
        accepted = await api.post(messages(acme.session_id), json=first, headers=key)
        replayed = await api.post(messages(acme.session_id), json=first, headers=key)
        conflict = await api.post(messages(acme.session_id), json=other, headers=key)
    async with catalog.client(globex) as api:
        elsewhere = await api.post(
            messages(globex.session_id), json={**first, "to": "+" + acme.phone}, headers=key
        )
    assert accepted.status_code == 202, accepted.text
    assert replayed.status_code == 202 and replayed.headers["idempotent-replayed"] == "true"
    assert replayed.json()["message_id"] == accepted.json()["message_id"]
    assert_problem(conflict, 409, "idempotency_conflict")
    assert elsewhere.status_code == 202
    assert elsewhere.json()["message_id"] != accepted.json()["message_id"]


# -- SSRF through media URLs ----------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:4222/",  # loopback: NATS itself
        "http://localhost/secret.png",  # a name that resolves to loopback
        "http://169.254.169.254/latest/meta-data/",  # cloud metadata (link-local)
        "http://[::1]/x.png",  # IPv6 loopback
        "http://[::ffff:127.0.0.1]/x.png",  # IPv4-mapped IPv6
        "http://10.0.0.1/x.png",  # private
        "http://0.0.0.0/x.png",  # unspecified
    ],
    ids=["loopback", "localhost", "metadata", "ipv6-loopback", "mapped", "private", "unspecified"],
)
async def test_media_urls_to_internal_addresses_are_refused_before_any_request(
    catalog: Catalog, url: str
) -> None:
    """Fetching media by URL is guarded like webhooks: the host is resolved and every
    address must be public, checked when the message is accepted (and again for each
    redirect when fetched). Nothing is queued, so nothing is ever fetched."""
    async with catalog.client(catalog.acme) as api:
        response = await api.post(
            messages(catalog.acme.session_id),
            json={"type": "image", "to": "+15550700002", "media": {"url": url}},
        )
    assert_problem(response, 422, "media_unavailable")


@pytest.mark.parametrize(
    "url", ["file:///etc/passwd", "gopher://127.0.0.1:6379/_INFO", "ftp://x/y"]
)
async def test_media_urls_of_other_schemes_are_refused(catalog: Catalog, url: str) -> None:
    async with catalog.client(catalog.acme) as api:
        response = await api.post(
            messages(catalog.acme.session_id),
            json={"type": "image", "to": "+15550700002", "media": {"url": url}},
        )
    assert response.status_code == 422, response.text

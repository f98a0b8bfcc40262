"""Received media (issue 15): per-session setting off / metadata / store; stored files in
the Object Store ``zf_media`` keyed by the session's internal key, served with the
tenant's key and through signed URLs (webhooks, REST ``/link``, NATS ``media_link``),
inline base64 in webhooks under the session's limit, deleted with the session. Sim
accounts send each other real bytes (the simulated media servers)."""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import httpx
import msgspec
from nats.aio.client import Client as NATS
from nats.js.errors import ObjectNotFoundError

from contract.protocol import MEDIA_BUCKET, media_object
from tests.conftest import Stack, WebhookReceiver
from tests.helpers import assert_problem, new_tenant
from tests.test_media_out import b64, pair, png, wait_event

__all__ = ["pair"]  # the fixture, shared with tests/test_media_out.py


async def send_image(
    api: httpx.AsyncClient, sender: str, receiver: str, to: str, image: bytes
) -> dict[str, Any]:
    """Send ``image`` from sender to receiver; the receiver's message.received."""
    sent = await api.post(
        f"/v1/sessions/{sender}/messages",
        json={
            "type": "image",
            "to": "+" + to,
            "caption": "look",
            "media": {"base64": b64(image), "mimetype": "image/png", "filename": "pic.png"},
        },
    )
    assert sent.status_code == 202, sent.text
    message_id = sent.json()["message_id"]
    out = await wait_event(
        api, sender, "message.sent", lambda e: e["data"]["message_id"] == message_id
    )
    engine_id = out["data"]["engine_message_id"]
    return await wait_event(
        api, receiver, "message.received", lambda e: e["data"]["message_id"] == engine_id
    )


async def test_stored_media_is_served_by_key_and_by_signed_url_and_inline_in_webhooks(
    stack: Stack,
    nc: NATS,
    webhook_receiver: WebhookReceiver,
    pair: tuple[httpx.AsyncClient, str, str, str],
) -> None:
    api, sender, receiver, to = pair
    assert (await api.get(f"/v1/sessions/{receiver}/settings/media")).json() == {
        "session_id": receiver,
        "inbound": "metadata",
        "webhook_inline_max_bytes": 0,
    }
    changed = await api.put(
        f"/v1/sessions/{receiver}/settings/media",
        json={"inbound": "store", "webhook_inline_max_bytes": 1024 * 1024},
    )
    assert changed.status_code == 200, changed.text
    assert changed.json()["inbound"] == "store"
    hooked = await api.patch(
        f"/v1/sessions/{receiver}/settings", json={"webhook_url": webhook_receiver.url}
    )
    assert hooked.status_code == 200, hooked.text

    image = png(64, 48)
    received = await send_image(api, sender, receiver, to, image)
    data = received["data"]
    assert data["type"] == "image" and data["text"] == "look"
    media = data["media"]
    assert media["stored"] is True
    assert media["id"].startswith("md_")
    assert media["mimetype"] == "image/png"
    assert media["filename"] == "pic.png"
    assert media["size"] == len(image)
    assert media["sha256"] == hashlib.sha256(image).hexdigest()
    assert media["inline"] is True  # in the stream a marker only: no bytes, no URL
    assert "base64" not in media and "url" not in media

    # with the tenant's key
    fetched = await api.get(f"/v1/sessions/{receiver}/media/{media['id']}")
    assert fetched.status_code == 200
    assert fetched.content == image
    assert fetched.headers["content-type"] == "image/png"
    assert 'filename="pic.png"' in fetched.headers["content-disposition"]
    # in the object store under the session's internal key, never its name
    key = (await api.get(f"/v1/sessions/{receiver}")).json().get("key")
    store = await nc.jetstream().object_store(MEDIA_BUCKET)
    names = [info.name for info in await store.list(ignore_deletes=True)]
    stored_name = next(n for n in names if n.endswith("/" + media["id"]))
    assert not stored_name.startswith(receiver + "/")
    if key:
        assert stored_name == media_object(key, media["id"])

    url = await webhook_has_url_and_bytes(stack, webhook_receiver, received, image)
    await links_work(stack, nc, api, receiver, media["id"], image)

    # deleting the session deletes its files: the signed URL answers 404
    deleted = await api.delete(f"/v1/sessions/{receiver}", params={"logout": "true"})
    assert deleted.status_code in (200, 202, 204), deleted.text
    try:
        await store.get_info(stored_name)
        raise AssertionError("the media of a deleted session is still stored")
    except ObjectNotFoundError:
        pass
    async with httpx.AsyncClient() as anonymous:
        assert_problem(await anonymous.get(url), 404, "media_not_found")


async def webhook_has_url_and_bytes(
    stack: Stack, webhook_receiver: WebhookReceiver, received: dict[str, Any], image: bytes
) -> str:
    """The webhook of a stored file carries a signed URL and the bytes; returns the URL."""
    media = received["data"]["media"]
    # the webhook carries a signed URL and the bytes
    hook = webhook_receiver.wait_for(
        lambda e: (
            e["type"] == "message.received" and e["data"].get("media", {}).get("id") == media["id"]
        )
    )
    assert base64.b64decode(hook["data"]["media"]["base64"]) == image
    url = hook["data"]["media"]["url"]
    assert url.startswith(stack.base_url + "/v1/media/")
    assert hook["data"]["media"]["url_expires_at"] > received["ts"]
    assert "inline" not in hook["data"]["media"]
    async with httpx.AsyncClient() as anonymous:
        by_url = await anonymous.get(url)
        assert by_url.status_code == 200 and by_url.content == image
        token = url.rsplit("/", 1)[1]
        forged = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
        assert_problem(
            await anonymous.get(f"{stack.base_url}/v1/media/{forged}"), 403, "invalid_media_url"
        )
        assert_problem(
            await anonymous.get(f"{stack.base_url}/v1/media/garbage"), 403, "invalid_media_url"
        )

    return str(url)


async def links_work(
    stack: Stack, nc: NATS, api: httpx.AsyncClient, receiver: str, media_id: str, image: bytes
) -> None:
    """REST /link and the NATS command media_link hand out working URLs; unknown ids and
    other tenants see nothing."""
    media = {"id": media_id}
    link = await api.get(f"/v1/sessions/{receiver}/media/{media['id']}/link")
    assert link.status_code == 200, link.text
    assert link.json()["media_id"] == media["id"]
    tenant = (await api.get(f"/v1/sessions/{receiver}")).json()["tenant"]
    reply = await nc.request(
        f"zf.api.{tenant}.media_link",
        msgspec.json.encode({"session_id": receiver, "media_id": media["id"]}),
        timeout=10,
        headers={"X-API-Key": api.headers["X-API-Key"]},
    )
    answer = msgspec.json.decode(reply.data)
    assert answer["kind"] == "ok", answer
    assert set(answer["value"]) == {"media_id", "url", "expires_at"}
    missing = await nc.request(
        f"zf.api.{tenant}.media_link",
        msgspec.json.encode({"session_id": receiver, "media_id": "md_" + "0" * 24}),
        timeout=10,
        headers={"X-API-Key": api.headers["X-API-Key"]},
    )
    gone = msgspec.json.decode(missing.data)
    assert (gone["code"], gone["status"]) == ("media_not_found", 404)
    async with httpx.AsyncClient() as anonymous:
        for signed in (link.json()["url"], answer["value"]["url"]):
            assert (await anonymous.get(signed)).content == image

    # unknown ids and other tenants see nothing
    assert_problem(
        await api.get(f"/v1/sessions/{receiver}/media/md_{'0' * 24}"), 404, "media_not_found"
    )
    assert_problem(
        await api.get(f"/v1/sessions/{receiver}/media/not-an-id"), 404, "media_not_found"
    )
    async with httpx.AsyncClient(base_url=stack.base_url, headers=stack.headers) as admin:
        _, other_key = await new_tenant(admin, "other")
    async with httpx.AsyncClient(
        base_url=stack.base_url, headers={"X-API-Key": other_key}
    ) as other:
        assert_problem(
            await other.get(f"/v1/sessions/{receiver}/media/{media['id']}"),
            404,
            "session_not_found",
        )


async def test_metadata_mode_describes_and_off_mode_omits_the_file(
    nc: NATS, pair: tuple[httpx.AsyncClient, str, str, str]
) -> None:
    api, sender, receiver, to = pair
    image = png(40, 40)
    received = await send_image(api, sender, receiver, to, image)  # default: metadata
    assert received["data"]["media"] == {
        "mimetype": "image/png",
        "size": len(image),
        "filename": "pic.png",
        "sha256": hashlib.sha256(image).hexdigest(),
    }
    off = await api.put(f"/v1/sessions/{receiver}/settings/media", json={"inbound": "off"})
    assert off.status_code == 200
    received = await send_image(api, sender, receiver, to, image)
    assert "media" not in received["data"]
    assert received["data"]["type"] == "image"
    bad = await api.put(f"/v1/sessions/{receiver}/settings/media", json={"inbound": "all"})
    assert_problem(bad, 400, "invalid_body")
    too_big = await api.put(
        f"/v1/sessions/{receiver}/settings/media",
        json={"inbound": "store", "webhook_inline_max_bytes": 10**9},
    )
    assert_problem(too_big, 400, "invalid_body")


def test_a_signed_token_names_one_file_until_it_expires() -> None:
    from control_plane.media_links import sign, verify

    secret = b"s" * 32
    token = sign(secret, "u123", "md_" + "a" * 24, expires=2_000)
    ref = verify(secret, token, now=1_999)
    assert ref is not None and (ref.key, ref.media_id, ref.expires) == (
        "u123",
        "md_" + "a" * 24,
        2_000,
    )
    assert verify(secret, token, now=2_001) is None  # expired
    assert verify(b"x" * 32, token, now=1_000) is None  # another deployment's secret
    _payload, mac = token.split(".")
    other = sign(secret, "u123", "md_" + "b" * 24, expires=2_000).split(".")[0]
    assert verify(secret, f"{other}.{mac}", now=1_000) is None  # a MAC binds its own file
    assert verify(secret, "no-dot", now=1_000) is None
    assert verify(secret, "!!.!!", now=1_000) is None

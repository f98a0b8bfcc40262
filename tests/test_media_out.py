"""Stickers and voice notes (issue 15): converted by the agent into what WhatsApp shows as
stickers (WebP 512x512) and voice notes (OGG/Opus with duration and waveform), sent over
REST and NATS commands on the sim engine; the receiver's event checked field by field.
Undecodable input is a 422 problem before anything is queued."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import subprocess
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import msgspec
import pytest
from nats.aio.client import Client as NATS

from node_agent.media import MediaPayload
from node_agent.media_convert import ffmpeg_path, sticker_webp, voice_note_ogg
from tests.conftest import Stack
from tests.helpers import assert_problem, new_tenant, pair_session, unique


def png(width: int = 300, height: int = 200) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (width, height), (20, 140, 220)).save(out, format="PNG")
    return out.getvalue()


def wav(seconds: float = 1.5) -> bytes:
    """A tone, loud in its second half: the waveform must show it."""
    done = subprocess.run(
        [ffmpeg_path(), "-hide_banner", "-loglevel", "error", "-f", "lavfi", "-i",
         f"sine=frequency=440:duration={seconds}", "-af",
         f"volume='if(lt(t,{seconds / 2}),0.05,1)':eval=frame", "-f", "wav", "pipe:1"],
        capture_output=True, check=True,
    )  # fmt: skip
    return done.stdout


@pytest.fixture
async def pair(stack: Stack, nc: NATS) -> AsyncIterator[tuple[httpx.AsyncClient, str, str, str]]:
    """A tenant with two connected sim sessions: (client, sender, receiver, receiver phone)."""
    import secrets

    tail = secrets.randbelow(9000) + 1000
    phones = (f"1555070{tail}", f"1555071{tail}")
    async with httpx.AsyncClient(base_url=stack.base_url, headers=stack.headers) as admin:
        tenant, key = await new_tenant(admin, "media")
    async with httpx.AsyncClient(
        base_url=stack.base_url, headers={"X-API-Key": key, "X-Tenant": tenant}, timeout=20
    ) as api:
        sender, receiver = unique("snd"), unique("rcv")
        for session_id, phone in ((sender, phones[0]), (receiver, phones[1])):
            created = await api.post(
                "/v1/sessions", json={"session_id": session_id, "engine": "sim"}
            )
            assert created.is_success, created.text
            await pair_session(api, nc, session_id, phone)
        yield api, sender, receiver, phones[1]
        for session_id in (sender, receiver):
            await api.delete(f"/v1/sessions/{session_id}", params={"logout": "true"})


async def wait_event(
    api: httpx.AsyncClient, session_id: str, event_type: str, match: Any, timeout_s: float = 20
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        page = await api.get("/v1/events", params={"session": session_id, "type": event_type})
        assert page.status_code == 200, page.text
        for event in page.json()["events"]:
            if match(event):
                return dict(event)
        if time.monotonic() > deadline:
            raise AssertionError(f"no {event_type} of {session_id}: {page.json()['events']}")
        await asyncio.sleep(0.1)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


async def test_a_png_sticker_arrives_as_a_webp_sticker(
    pair: tuple[httpx.AsyncClient, str, str, str],
) -> None:
    api, sender, receiver, to = pair
    sent = await api.post(
        f"/v1/sessions/{sender}/messages",
        json={
            "type": "sticker",
            "to": "+" + to,
            "media": {"base64": b64(png()), "filename": "s.png"},
        },
    )
    assert sent.status_code == 202, sent.text
    message_id = sent.json()["message_id"]
    out = await wait_event(
        api, sender, "message.sent", lambda e: e["data"]["message_id"] == message_id
    )
    assert out["data"]["type"] == "sticker" and out["data"]["to"] == to
    engine_id = out["data"]["engine_message_id"]
    received = await wait_event(
        api, receiver, "message.received", lambda e: e["data"]["message_id"] == engine_id
    )
    data = received["data"]
    assert data["type"] == "sticker"
    assert data["text"] is None
    media = data["content"]["media"]
    assert media["mimetype"] == "image/webp"
    assert media["filename"] == "s.webp"
    assert (media["width"], media["height"]) == (512, 512)
    assert 0 < media["size"] <= 100 * 1024
    assert len(media["sha256"]) == 64


async def test_view_once_media_arrives_marked_view_once_and_plain_media_does_not(
    pair: tuple[httpx.AsyncClient, str, str, str],
) -> None:
    """``view_once`` on an image (and video, audio) reaches the receiver as
    ``content.view_once``; media sent without it says nothing of it."""
    api, sender, receiver, to = pair
    received: dict[bool, dict[str, Any]] = {}
    for view_once in (True, False):
        body: dict[str, Any] = {
            "type": "image",
            "to": to,
            "caption": f"once={view_once}",
            "media": {"base64": b64(png(40, 30)), "filename": "p.png"},
        }
        if view_once:
            body["view_once"] = True
        sent = await api.post(f"/v1/sessions/{sender}/messages", json=body)
        assert sent.status_code == 202, sent.text
        message_id: str = sent.json()["message_id"]
        out = await wait_event(
            api, sender, "message.sent", lambda e, m=message_id: e["data"]["message_id"] == m
        )
        engine_id: str = out["data"]["engine_message_id"]
        event = await wait_event(
            api, receiver, "message.received", lambda e, m=engine_id: e["data"]["message_id"] == m
        )
        received[view_once] = event["data"]
    assert received[True]["type"] == "image" and received[True]["text"] == "once=True"
    assert received[True]["content"]["view_once"] is True
    assert "view_once" not in received[False]["content"]


async def test_a_voice_note_is_sent_as_ogg_opus_with_duration_and_waveform(
    stack: Stack, nc: NATS, pair: tuple[httpx.AsyncClient, str, str, str]
) -> None:
    """Over the NATS command ``message_send``: the same checks and conversion as REST."""
    api, sender, receiver, to = pair
    key = api.headers["X-API-Key"]
    tenant = api.headers["X-Tenant"]
    command = {
        "session_id": sender,
        "message": {
            "type": "audio",
            "to": "+" + to,
            "voice_note": True,
            "media": {"base64": b64(wav()), "mimetype": "audio/wav", "filename": "memo.wav"},
        },
    }
    reply = await nc.request(
        f"zf.api.{tenant}.message_send",
        msgspec.json.encode(command),
        timeout=20,
        headers={"X-API-Key": key},
    )
    answer = msgspec.json.decode(reply.data)
    assert answer["kind"] == "ok", answer
    message_id = answer["value"]["message_id"]
    out = await wait_event(
        api, sender, "message.sent", lambda e: e["data"]["message_id"] == message_id
    )
    engine_id = out["data"]["engine_message_id"]
    received = await wait_event(
        api, receiver, "message.received", lambda e: e["data"]["message_id"] == engine_id
    )
    data = received["data"]
    assert data["type"] == "audio"
    assert data["content"]["voice_note"] is True
    media = data["content"]["media"]
    assert media["mimetype"] == "audio/ogg; codecs=opus"
    assert media["filename"] == "memo.ogg"
    assert abs(media["seconds"] - 1.5) < 0.1
    bars = media["waveform"]
    assert len(bars) == 64 and max(bars) == 100
    assert sum(bars[:28]) * 5 < sum(bars[36:])  # quiet first half, loud second half

    # undecodable audio: refused over NATS with the REST problem's code and status
    command["message"]["media"] = {"base64": b64(b"not audio at all" * 20), "mimetype": "audio/wav"}
    reply = await nc.request(
        f"zf.api.{tenant}.message_send",
        msgspec.json.encode(command),
        timeout=20,
        headers={"X-API-Key": key},
    )
    bad = msgspec.json.decode(reply.data)
    assert (bad["kind"], bad["code"], bad["status"]) == ("err", "undecodable_media", 422), bad


async def test_media_that_cannot_be_converted_is_a_422_before_it_is_queued(
    pair: tuple[httpx.AsyncClient, str, str, str],
) -> None:
    api, sender, _, to = pair
    url = f"/v1/sessions/{sender}/messages"
    depth = (await api.get(f"/v1/sessions/{sender}")).json().get("queue_depth", 0)
    garbage = {"base64": b64(b"\x00garbage" * 50), "mimetype": "image/png"}
    problem = assert_problem(
        await api.post(url, json={"type": "sticker", "to": "+" + to, "media": garbage}),
        422,
        "undecodable_media",
    )
    assert "sticker" in problem["detail"]
    problem = assert_problem(
        await api.post(
            url, json={"type": "audio", "to": "+" + to, "voice_note": True, "media": garbage}
        ),
        422,
        "undecodable_media",
    )
    assert "voice note" in problem["detail"]
    assert (await api.get(f"/v1/sessions/{sender}")).json().get("queue_depth", 0) == depth
    # audio that is no voice note, video and documents are sent as they are
    for body in (
        {"type": "audio", "media": {"base64": b64(wav(0.5)), "mimetype": "audio/wav"}},
        {
            "type": "document",
            "media": {**garbage, "mimetype": "application/pdf", "filename": "a.pdf"},
        },
        {"type": "video", "media": {**garbage, "mimetype": "video/mp4"}},
    ):
        accepted = await api.post(url, json={**body, "to": "+" + to})
        assert accepted.status_code == 202, (body["type"], accepted.text)


def test_conversions_keep_what_fits_and_convert_the_rest() -> None:
    from PIL import Image

    sticker = sticker_webp(MediaPayload(data=png(1024, 256), mimetype="image/png"))
    with Image.open(io.BytesIO(sticker.data)) as image:
        assert (image.format, image.size, image.mode) == ("WEBP", (512, 512), "RGBA")
        assert image.getpixel((0, 0))[3] == 0  # letterboxed with transparency
    # a WebP that already fits is not re-encoded
    again = sticker_webp(MediaPayload(data=sticker.data, mimetype="image/webp"))
    assert hashlib.sha256(again.data).digest() == hashlib.sha256(sticker.data).digest()
    note = voice_note_ogg(MediaPayload(data=wav(2.0), mimetype="audio/wav"))
    assert note.data[:4] == b"OggS" and b"OpusHead" in note.data[:200]
    assert note.seconds is not None and abs(note.seconds - 2.0) < 0.1
    assert note.waveform is not None and len(note.waveform) == 64

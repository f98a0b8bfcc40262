"""Contacts, own profile, privacy, blocking and calls (issue 16) end to end on the sim
engine, through the real control plane and agent processes: each operation once through
REST and once through the NATS commands (``zf.api.<tenant>.<op>``), with what the other
side sees checked field by field."""

from __future__ import annotations

import asyncio
import base64
import io
from collections.abc import AsyncIterator
from typing import Any

import httpx
import msgspec
import pytest_asyncio
from nats.aio.msg import Msg

from contract.protocol import Event
from node_agent.engines.sim import (
    call,
    call_end_subject,
    create_group,
    link,
    make_business,
    qr_session_id,
    save_contact,
)
from tests.agent_support import EventLog, phone
from tests.conftest import Stack
from tests.helpers import assert_problem, new_tenant, unique, wait_state
from tests.test_conversations import Account, Chat, _pair, _received


def _png(color: tuple[int, int, int] = (200, 30, 30), size: tuple[int, int] = (900, 700)) -> str:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, format="PNG")
    return base64.b64encode(out.getvalue()).decode()


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def chat(stack: Stack, nats_url: str) -> AsyncIterator[Chat]:
    import nats

    nc = await nats.connect(nats_url)
    async with httpx.AsyncClient(base_url=stack.base_url, headers=stack.headers) as admin:
        tenant, key = await new_tenant(admin, "cont")
    log = EventLog()
    await log.start(nc, tenant)
    async with httpx.AsyncClient(
        base_url=stack.base_url, headers={"X-API-Key": key}, timeout=15
    ) as api:
        a, b, c = [await _pair(api, nc, unique(n), phone()) for n in ("ann", "bob", "cid")]
        yield Chat(api=api, nc=nc, tenant=tenant, key=key, log=log, a=a, b=b, c=c)
        for account in (a, b, c):
            await api.delete(f"/v1/sessions/{account.name}")
    await log.stop()
    await nc.close()


async def _ok(chat: Chat, op: str, body: dict[str, Any]) -> Any:
    answer = await chat.command(op, body)
    assert answer["kind"] == "ok", answer
    return answer["value"]


async def _err(chat: Chat, op: str, body: dict[str, Any], status: int, code: str) -> None:
    answer = await chat.command(op, body)
    assert (answer["kind"], answer["code"], answer["status"]) == ("err", code, status), answer


async def _call_event(chat: Chat, receiver: Account, type_: str, call_id: str) -> Event:
    return await chat.seen_by(receiver, type_, lambda e: e.data["call_id"] == call_id)


# -- calls ------------------------------------------------------------------------------------


async def test_calls_are_reported_with_caller_media_and_group(chat: Chat) -> None:
    """Voice, video, group and LID-addressed calls: ``from`` is always the phone (the
    LID separately); a session that takes calls rejects nothing."""
    a, b = chat.a, chat.b
    settings = await chat.api.get(f"/v1/sessions/{a.name}/settings/calls")
    assert settings.status_code == 200, settings.text
    assert settings.json() == {"session_id": a.name, "reject": False, "reply_text": None}
    call_id, rung = await call(chat.nc, b.phone, a.phone)
    assert rung
    seen = await _call_event(chat, a, "call.received", call_id)
    assert seen.data["from"] == b.phone
    assert seen.data["from_lid"] == b.lid
    assert seen.data["video"] is False
    assert seen.data["is_group"] is False and seen.data["group"] is None
    assert seen.data["auto_reject"] is False
    assert seen.data["timestamp"] > 0
    video_id, _ = await call(chat.nc, b.phone, a.phone, video=True, lid_only=True)
    video = await _call_event(chat, a, "call.received", video_id)
    assert (video.data["from"], video.data["from_lid"], video.data["video"]) == (
        b.phone,
        b.lid,
        True,
    )
    group = "120363000000000777@g.us"
    group_id, _ = await call(chat.nc, b.phone, a.phone, group=group)
    in_group = await _call_event(chat, a, "call.received", group_id)
    assert in_group.data["is_group"] is True and in_group.data["group"] == group
    await asyncio.sleep(0.3)
    assert not [e for e in chat.log.of(a.name, "call.rejected") if e.data["call_id"] == call_id]


async def test_calls_rejected_automatically_with_a_text_reply(chat: Chat) -> None:
    """The REST setting: calls are declined at once (the caller's phone learns it) and
    the caller gets the text through the ordinary send path (message.sent, delivered)."""
    a, c = chat.a, chat.c
    url = f"/v1/sessions/{a.name}/settings/calls"
    body = {"reject": True, "reply_text": "No calls please, write to me"}
    put = await chat.api.put(url, json=body)
    assert put.status_code == 200, put.text
    assert put.json() == {"session_id": a.name, **body}
    assert (await chat.api.get(url)).json()["reject"] is True
    ended: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def on_end(msg: Msg) -> None:
        await ended.put(msgspec.json.decode(msg.data))

    sub = await chat.nc.subscribe(call_end_subject(c.phone), cb=on_end)
    try:
        call_id, _ = await call(chat.nc, c.phone, a.phone, video=True)
        received = await _call_event(chat, a, "call.received", call_id)
        assert received.data["auto_reject"] is True and received.data["video"] is True
        rejected = await _call_event(chat, a, "call.rejected", call_id)
        assert rejected.data["from"] == c.phone
        assert rejected.data["from_lid"] == c.lid
        assert rejected.data["video"] is True
        assert rejected.data["error"] is None
        reply_id = rejected.data["reply_message_id"]
        assert reply_id.startswith("m_")
        end = await asyncio.wait_for(ended.get(), 10)
        assert end == {"call_id": call_id, "by": a.phone, "reason": "rejected"}
        text = await _received(chat, a, c, reply_id)
        assert text.data["text"] == body["reply_text"]
        assert text.data["from"] == a.phone and text.data["chat"] == a.phone
    finally:
        await sub.unsubscribe()
        await chat.api.put(url, json={"reject": False})


async def test_call_settings_by_nats_command(chat: Chat) -> None:
    b = chat.b
    got = await _ok(chat, "call_settings_get", {"session_id": b.name})
    assert got == {"session_id": b.name, "reject": False, "reply_text": None}
    put = await _ok(chat, "call_settings_set", {"session_id": b.name, "reject": True})
    assert put == {"session_id": b.name, "reject": True, "reply_text": None}
    try:
        call_id, _ = await call(chat.nc, chat.c.phone, b.phone)
        rejected = await _call_event(chat, b, "call.rejected", call_id)
        assert rejected.data["from"] == chat.c.phone
        assert rejected.data["reply_message_id"] is None  # no text set: no reply
        await _err(
            chat,
            "call_settings_set",
            {"session_id": b.name, "reject": True, "reply_text": ""},
            400,
            "invalid_body",
        )
    finally:
        await _ok(chat, "call_settings_set", {"session_id": b.name, "reject": False})


async def test_call_settings_bad_input(chat: Chat) -> None:
    url = f"/v1/sessions/{chat.a.name}/settings/calls"
    for body in (
        {"reject": "yes"},
        {"reject": True, "reply_text": ""},
        {"reject": True, "reply_text": "x" * 1001},
        {"reject": True, "ring": 3},
    ):
        assert_problem(await chat.api.put(url, json=body), 400, "invalid_body")
    assert_problem(await chat.api.get("/v1/sessions/nope/settings/calls"), 404, "session_not_found")


# -- blocking ---------------------------------------------------------------------------------


async def test_block_and_unblock_and_what_the_blocked_sender_sees(chat: Chat) -> None:
    a, b = chat.a, chat.b
    blocked = await chat.api.post(f"/v1/sessions/{a.name}/contacts/+{b.phone}/block")
    assert blocked.status_code == 200, blocked.text
    assert blocked.json() == {"session_id": a.name, "blocked": [b.phone]}
    event = await chat.seen_by(a, "contact.blocked", lambda e: e.data["phone"] == b.phone)
    assert event.data == {"phone": b.phone, "lid": b.lid, "blocked": True}
    listed = await chat.api.get(f"/v1/sessions/{a.name}/blocklist")
    assert listed.json() == {"session_id": a.name, "blocked": [b.phone]}
    # the sim enforces it: the blocked sender's message is accepted by the server, never
    # delivered (one tick), and its calls do not ring
    hidden = await chat.send(b, {"type": "text", "to": a.phone, "text": "are you there?"})
    hidden_engine_id = (await chat.sent(b, hidden)).data["engine_message_id"]
    _, rung = await call(chat.nc, b.phone, a.phone)
    assert rung is False
    # in a group the blocked contact is still heard, as on WhatsApp
    group = await create_group(chat.nc, [a.phone, b.phone])
    in_group = await chat.send(b, {"type": "text", "to": group, "text": "group hello"})
    assert (await _received(chat, b, a, in_group)).data["chat"] == group
    unblocked = await chat.api.post(f"/v1/sessions/{a.name}/contacts/{b.lid}/unblock")
    assert unblocked.json() == {"session_id": a.name, "blocked": []}
    event = await chat.seen_by(
        a, "contact.blocked", lambda e: e.data["phone"] == b.phone and not e.data["blocked"]
    )
    assert event.data == {"phone": b.phone, "lid": b.lid, "blocked": False}
    after = await chat.send(b, {"type": "text", "to": a.phone, "text": "now?"})
    seen = await _received(chat, b, a, after)
    assert seen.data["text"] == "now?"
    assert not [
        e
        for e in chat.log.of(a.name, "message.received")
        if e.data["message_id"] == hidden_engine_id
    ]
    acks = [
        e.data["status"]
        for e in chat.log.of(b.name, "message.ack")
        if e.data["message_id"] == hidden
    ]
    assert "server" in acks and "delivered" not in acks


async def test_block_by_nats_command(chat: Chat) -> None:
    c, b = chat.c, chat.b
    result = await _ok(chat, "contact_block", {"session_id": c.name, "chat": b.phone})
    assert result == {"session_id": c.name, "blocked": [b.phone]}
    event = await chat.seen_by(c, "contact.blocked", lambda e: e.data["phone"] == b.phone)
    assert (event.data["lid"], event.data["blocked"]) == (b.lid, True)
    assert (await _ok(chat, "blocklist_get", {"session_id": c.name}))["blocked"] == [b.phone]
    again = await _ok(
        chat, "contact_block", {"session_id": c.name, "chat": b.phone, "block": False}
    )
    assert again["blocked"] == []
    await _err(
        chat,
        "contact_block",
        {"session_id": c.name, "chat": "1203630000000001@g.us"},
        422,
        "invalid_chat_id",
    )


async def test_block_bad_input(chat: Chat) -> None:
    base = f"/v1/sessions/{chat.a.name}/contacts"
    assert_problem(await chat.api.post(f"{base}/abc/block"), 422, "invalid_number")
    assert_problem(
        await chat.api.post(f"{base}/120363000000000001@g.us/block"), 422, "invalid_chat_id"
    )
    assert_problem(await chat.api.post(f"{base}/15550000001/block"), 404, "not_on_whatsapp")
    # "check" (the number check's path) is no contact: never taken for one, never a 500
    probe = await chat.api.get(f"{base}/check")
    assert probe.status_code in (405, 422), probe.text


# -- own profile ------------------------------------------------------------------------------


async def test_profile_name_about_and_picture_as_others_see_them(chat: Chat) -> None:
    a, b = chat.a, chat.b
    patched = await chat.api.patch(
        f"/v1/sessions/{a.name}/profile", json={"name": "Ann A.", "about": "Busy building"}
    )
    assert patched.status_code == 200, patched.text
    assert patched.json() == {
        "session_id": a.name,
        "name": "Ann A.",
        "about": "Busy building",
        "picture_id": None,
        "picture_removed": False,
    }
    put = await chat.api.put(f"/v1/sessions/{a.name}/profile/picture", json={"base64": _png()})
    assert put.status_code == 200, put.text
    picture_id = put.json()["picture_id"]
    assert picture_id
    seen = await chat.api.get(f"/v1/sessions/{b.name}/contacts/{a.phone}")
    assert seen.status_code == 200, seen.text
    info = seen.json()
    assert info["session_id"] == b.name
    assert (info["phone"], info["lid"]) == (a.phone, a.lid)
    assert (info["push_name"], info["about"]) == ("Ann A.", "Busy building")
    assert info["picture_id"] == picture_id and picture_id in info["picture_url"]
    assert info["business"] is False
    picture = await chat.api.get(f"/v1/sessions/{b.name}/contacts/{a.phone}/picture")
    assert picture.json() == {
        "session_id": b.name,
        "chat": a.phone,
        "picture_id": picture_id,
        "picture_url": info["picture_url"],
    }
    removed = await chat.api.delete(f"/v1/sessions/{a.name}/profile/picture")
    assert removed.status_code == 200, removed.text
    assert removed.json()["picture_removed"] is True
    after = (await chat.api.get(f"/v1/sessions/{b.name}/contacts/{a.lid}")).json()
    assert after["picture_url"] is None and after["picture_id"] is None
    assert after["push_name"] == "Ann A."


async def test_profile_by_nats_command(chat: Chat) -> None:
    c = chat.c
    updated = await _ok(
        chat,
        "profile_set",
        {"session_id": c.name, "name": "Cid", "picture_base64": _png((0, 90, 200), (64, 64))},
    )
    assert updated["name"] == "Cid" and updated["picture_id"]
    info = await _ok(chat, "contact_info", {"session_id": chat.a.name, "chat": c.phone})
    assert (info["phone"], info["push_name"], info["picture_id"]) == (
        c.phone,
        "Cid",
        updated["picture_id"],
    )
    await _err(
        chat,
        "profile_set",
        {"session_id": c.name, "picture_base64": base64.b64encode(b"not a picture").decode()},
        422,
        "invalid_image",
    )


async def test_profile_bad_input(chat: Chat) -> None:
    base = f"/v1/sessions/{chat.a.name}/profile"
    not_an_image = base64.b64encode(b"GIF89a but not really").decode()
    assert_problem(
        await chat.api.put(f"{base}/picture", json={"base64": not_an_image}), 422, "invalid_image"
    )
    assert_problem(
        await chat.api.put(f"{base}/picture", json={"base64": "@@not base64@@"}),
        422,
        "invalid_image",
    )
    assert_problem(await chat.api.patch(base, json={"name": "x" * 26}), 400, "invalid_body")
    assert_problem(await chat.api.patch(base, json={"about": "x" * 140}), 400, "invalid_body")
    assert_problem(await chat.api.patch(base, json={}), 422, "invalid_request")


# -- privacy ----------------------------------------------------------------------------------


async def test_privacy_settings_get_and_set(chat: Chat) -> None:
    url = f"/v1/sessions/{chat.b.name}/privacy"
    before = await chat.api.get(url)
    assert before.status_code == 200, before.text
    assert before.json() == {
        "session_id": chat.b.name,
        "read_receipts": "all",
        "last_seen": "contacts",
        "online": "all",
        "picture": "contacts",
        "about": "contacts",
        "groups_add": "all",
    }
    changed = await chat.api.patch(
        url, json={"last_seen": "none", "online": "match_last_seen", "read_receipts": "none"}
    )
    assert changed.status_code == 200, changed.text
    after = (await chat.api.get(url)).json()
    assert (after["last_seen"], after["online"], after["read_receipts"]) == (
        "none",
        "match_last_seen",
        "none",
    )
    assert after["groups_add"] == "all"  # untouched
    for body in ({"groups_add": "none"}, {"online": "contacts"}, {"hidden": "all"}):
        assert_problem(await chat.api.patch(url, json=body), 400, "invalid_body")
    assert_problem(await chat.api.patch(url, json={}), 422, "invalid_request")


async def test_privacy_by_nats_command(chat: Chat) -> None:
    c = chat.c
    changed = await _ok(chat, "privacy_set", {"session_id": c.name, "picture": "none"})
    assert changed["picture"] == "none" and changed["session_id"] == c.name
    got = await _ok(chat, "privacy_get", {"session_id": c.name})
    assert got["picture"] == "none"
    await _err(
        chat, "privacy_set", {"session_id": c.name, "groups_add": "none"}, 400, "invalid_body"
    )


# -- contacts ---------------------------------------------------------------------------------


async def test_contacts_list_info_and_business_flag(chat: Chat) -> None:
    a, b, c = chat.a, chat.b, chat.c
    await save_contact(chat.nc, a.phone, b.phone, "Bobby (work)")
    await make_business(chat.nc, c.phone, "Cid Ltd")
    listed = await chat.api.get(f"/v1/sessions/{a.name}/contacts")
    assert listed.status_code == 200, listed.text
    by_phone = {item["phone"]: item for item in listed.json()["contacts"]}
    assert by_phone[b.phone]["name"] == "Bobby (work)"
    assert by_phone[b.phone]["lid"] == b.lid
    info = (await chat.api.get(f"/v1/sessions/{a.name}/contacts/{c.phone}")).json()
    assert info["business"] is True and info["business_name"] == "Cid Ltd"
    saved = (await chat.api.get(f"/v1/sessions/{a.name}/contacts/{b.phone}")).json()
    assert saved["name"] == "Bobby (work)" and saved["business"] is False
    base = f"/v1/sessions/{a.name}/contacts"
    assert_problem(await chat.api.get(f"{base}/15550000002"), 404, "not_on_whatsapp")
    assert_problem(await chat.api.get(f"{base}/120363000000000001@g.us"), 422, "invalid_chat_id")
    assert_problem(await chat.api.get(f"{base}/12@lid@x"), 422, "invalid_chat_id")


async def test_contacts_by_nats_command(chat: Chat) -> None:
    a, b = chat.a, chat.b
    await save_contact(chat.nc, b.phone, a.phone, "Annie")
    listed = await _ok(chat, "contacts_list", {"session_id": b.name})
    assert {"phone": a.phone, "name": "Annie"}.items() <= next(
        item for item in listed["contacts"] if item["phone"] == a.phone
    ).items()
    info = await _ok(chat, "contact_info", {"session_id": b.name, "chat": a.lid})
    assert (info["phone"], info["lid"], info["name"]) == (a.phone, a.lid, "Annie")
    await _err(
        chat, "contact_info", {"session_id": b.name, "chat": "15550000003"}, 404, "not_on_whatsapp"
    )


async def test_call_settings_of_a_stopped_session_apply_when_it_starts(chat: Chat) -> None:
    """The setting lives in the session's spec: set while the session runs nowhere, it
    reaches the agent with the start. Operations that need the session answer 409."""
    name, number = unique("dan"), phone()
    created = await chat.api.post(
        "/v1/sessions", json={"session_id": name, "start": False, "pacing": {"enabled": False}}
    )
    assert created.status_code == 201, created.text
    try:
        body = {"reject": True, "reply_text": "Set while stopped"}
        put = await chat.api.put(f"/v1/sessions/{name}/settings/calls", json=body)
        assert put.status_code == 200 and put.json()["reject"] is True, put.text
        for method, path in (
            ("get", "contacts"),
            ("get", "blocklist"),
            ("get", "privacy"),
            ("post", f"contacts/{chat.a.phone}/block"),
        ):
            response = await chat.api.request(method, f"/v1/sessions/{name}/{path}")
            assert_problem(response, 409, "not_running")
        assert (await chat.api.post(f"/v1/sessions/{name}/start")).status_code == 200
        await wait_state(chat.api, name, "PAIRING")
        code = (await chat.api.get(f"/v1/sessions/{name}/qr")).json()["qr"]
        assert (await link(chat.nc, code, number)).ok
        await wait_state(chat.api, name, "CONNECTED")
        dan = Account(name=name, key=qr_session_id(code), phone=number)
        call_id, _ = await call(chat.nc, chat.b.phone, dan.phone)
        rejected = await _call_event(chat, dan, "call.rejected", call_id)
        text = await _received(chat, dan, chat.b, rejected.data["reply_message_id"])
        assert text.data["text"] == "Set while stopped"
    finally:
        await chat.api.delete(f"/v1/sessions/{name}")

"""Conversations (issue 15, non-media half) end to end on the sim engine, through the real
control plane and agent processes: chat ids (groups, LIDs), and what a receiver sees of
each capability, checked field by field — once through REST and once through the NATS
commands (``zf.api.<tenant>.<op>``)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import msgspec
import pytest_asyncio
from nats.aio.client import Client as NATS

from contract.protocol import Event
from node_agent.engines.sim import (
    Faults,
    create_group,
    inject_faults,
    lid_of,
    link,
    qr_session_id,
    vote,
)
from tests.agent_support import EventLog, phone
from tests.conftest import Stack
from tests.helpers import assert_problem, new_tenant, unique, wait_state

NO_PACING = {"enabled": False}


@dataclass
class Account:
    name: str  # the session's name in the API
    key: str  # its internal key (sim faults are addressed by it)
    phone: str

    @property
    def lid(self) -> str:
        return lid_of(self.phone)


@dataclass
class Chat:
    api: httpx.AsyncClient
    nc: NATS
    tenant: str
    key: str  # the tenant's API key
    log: EventLog
    a: Account
    b: Account
    c: Account

    async def send(self, sender: Account, body: dict[str, Any]) -> str:
        response = await self.api.post(f"/v1/sessions/{sender.name}/messages", json=body)
        assert response.status_code == 202, response.text
        return str(response.json()["message_id"])

    async def command(self, op: str, body: dict[str, Any]) -> dict[str, Any]:
        reply = await self.nc.request(
            f"zf.api.{self.tenant}.{op}",
            msgspec.json.encode(body),
            timeout=10,
            headers={"X-API-Key": self.key},
        )
        answer: dict[str, Any] = msgspec.json.decode(reply.data)
        return answer

    async def sent(self, sender: Account, message_id: str) -> Event:
        """The ``message.sent`` of one of our messages (its engine id is what the
        receiver's events refer to)."""
        return await self.log.wait_for(
            lambda e: (
                e.session_id == sender.name
                and e.type in ("message.sent", "message.ack")
                and e.data.get("message_id") == message_id
                and (e.type == "message.sent" or e.data.get("status") == "failed")
            )
        )

    async def seen_by(
        self, receiver: Account, type_: str, predicate: Callable[[Event], bool]
    ) -> Event:
        return await self.log.wait_for(
            lambda e: e.session_id == receiver.name and e.type == type_ and predicate(e)
        )


async def _pair(api: httpx.AsyncClient, nc: NATS, name: str, number: str) -> Account:
    created = await api.post("/v1/sessions", json={"session_id": name, "pacing": NO_PACING})
    assert created.status_code == 201, created.text
    await wait_state(api, name, "PAIRING")
    code = (await api.get(f"/v1/sessions/{name}/qr")).json()["qr"]
    assert (await link(nc, code, number)).ok
    await wait_state(api, name, "CONNECTED")
    return Account(name=name, key=qr_session_id(code), phone=number)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def chat(stack: Stack, nats_url: str) -> AsyncIterator[Chat]:
    import nats

    nc = await nats.connect(nats_url)
    async with httpx.AsyncClient(base_url=stack.base_url, headers=stack.headers) as admin:
        tenant, key = await new_tenant(admin, "conv")
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


# -- 1. chat ids ---------------------------------------------------------------------------


async def test_lid_addressing_never_puts_a_lid_in_a_phone_field(chat: Chat) -> None:
    """A sender that addresses by LID hides its phone; the receiver resolves it (sim:
    like ``get_pn_from_lid``): ``from`` is the phone, ``from_lid`` the LID. A send to a
    LID chat id reaches its account."""
    await inject_faults(chat.nc, chat.a.key, Faults(lid_addressing=True))
    try:
        sent = await chat.send(chat.a, {"type": "text", "to": chat.b.lid, "text": "via lid"})
        engine_id = (await chat.sent(chat.a, sent)).data["engine_message_id"]
        seen = await chat.seen_by(
            chat.b, "message.received", lambda e: e.data["message_id"] == engine_id
        )
    finally:
        await inject_faults(chat.nc, chat.a.key, Faults())
    assert seen.data["from"] == chat.a.phone
    assert seen.data["from_lid"] == chat.a.lid
    assert seen.data["chat"] == chat.a.phone
    assert seen.data["is_group"] is False
    assert seen.data["type"] == "text" and seen.data["text"] == "via lid"
    queued = await chat.log.wait_for(
        lambda e: e.type == "message.queued" and e.data["message_id"] == sent
    )
    assert queued.data["to"] == chat.b.lid


async def test_a_group_message_names_the_group_as_chat_and_the_participant_as_from(
    chat: Chat,
) -> None:
    group = await create_group(chat.nc, [chat.a.phone, chat.b.phone, chat.c.phone])
    sent = await chat.send(chat.a, {"type": "text", "to": group, "text": "hello group"})
    engine_id = (await chat.sent(chat.a, sent)).data["engine_message_id"]
    for receiver in (chat.b, chat.c):
        seen = await chat.seen_by(
            receiver, "message.received", lambda e: e.data["message_id"] == engine_id
        )
        assert seen.data["chat"] == group
        assert seen.data["is_group"] is True
        assert seen.data["from"] == chat.a.phone
        assert seen.data["from_lid"] == chat.a.lid
        assert seen.data["text"] == "hello group"
    # one delivery receipt per participant
    acks = await chat.log.wait_count(
        lambda e: (
            e.session_id == chat.a.name
            and e.type == "message.ack"
            and e.data["message_id"] == sent
            and e.data["status"] == "delivered"
        ),
        2,
    )
    assert {e.data["peer"] for e in acks} == {chat.b.phone, chat.c.phone}


async def test_a_group_send_by_nats_command(chat: Chat) -> None:
    group = await create_group(chat.nc, [chat.a.phone, chat.b.phone])
    answer = await chat.command(
        "message_send",
        {"session_id": chat.b.name, "message": {"type": "text", "to": group, "text": "cmd"}},
    )
    assert answer["kind"] == "ok", answer
    engine_id = (await chat.sent(chat.b, answer["value"]["message_id"])).data["engine_message_id"]
    seen = await chat.seen_by(
        chat.a, "message.received", lambda e: e.data["message_id"] == engine_id
    )
    assert (seen.data["chat"], seen.data["from"], seen.data["is_group"]) == (
        group,
        chat.b.phone,
        True,
    )
    bad = await chat.command(
        "message_send",
        {"session_id": chat.b.name, "message": {"type": "text", "to": "1@g.us", "text": "x"}},
    )
    assert (bad["kind"], bad["code"], bad["status"]) == ("err", "invalid_chat_id", 422)


async def test_malformed_chat_ids_are_422_before_anything_is_queued(chat: Chat) -> None:
    url = f"/v1/sessions/{chat.a.name}/messages"
    for to, code in (
        ("12@g.us", "invalid_chat_id"),
        ("abc@lid", "invalid_chat_id"),
        ("123456@example.com", "invalid_chat_id"),
        ("x@newsletter", "invalid_chat_id"),
        ("not a number", "invalid_number"),
        ("+1 23@s.whatsapp.net", "invalid_number"),
    ):
        body = {"type": "text", "to": to, "text": "x"}
        assert_problem(await chat.api.post(url, json=body), 422, code)
    # a group that does not exist is a well-formed id: queued, then failed by the network
    sent = await chat.send(chat.a, {"type": "text", "to": "120363000000000001@g.us", "text": "?"})
    failed = await chat.sent(chat.a, sent)
    assert failed.type == "message.ack" and "does not exist" in failed.data["error"]


# -- 2. outbound: replies, mentions, edits, revokes, reactions ------------------------------


async def _received(chat: Chat, sender: Account, receiver: Account, message_id: str) -> Event:
    """What ``receiver`` saw of our message ``message_id`` (sent by ``sender``)."""
    engine_id = (await chat.sent(sender, message_id)).data["engine_message_id"]
    return await chat.seen_by(
        receiver, "message.received", lambda e: e.data["message_id"] == engine_id
    )


async def test_a_reply_quotes_and_mentions_reach_the_receiver(chat: Chat) -> None:
    a, b = chat.a, chat.b
    first = await chat.send(b, {"type": "text", "to": a.phone, "text": "question?"})
    incoming = await _received(chat, b, a, first)
    # reply to the received message (by its id), mentioning the asker
    reply = await chat.send(
        a,
        {
            "type": "text",
            "to": b.phone,
            "text": f"@{b.phone} answer",
            "reply_to": incoming.data["message_id"],
            "mentions": ["+" + b.phone],
        },
    )
    seen = await _received(chat, a, b, reply)
    assert seen.data["type"] == "text" and seen.data["text"] == f"@{b.phone} answer"
    assert seen.data["content"]["reply_to"] == (await chat.sent(b, first)).data["engine_message_id"]
    assert seen.data["content"]["mentions"] == [b.phone]
    assert seen.data["from"] == a.phone and seen.data["chat"] == a.phone
    # reply to one of our own messages by our m_ id: the receiver sees WhatsApp's id
    again = await chat.send(a, {"type": "text", "to": b.phone, "text": "and", "reply_to": reply})
    seen_again = await _received(chat, a, b, again)
    assert seen_again.data["content"]["reply_to"] == seen.data["message_id"]


async def test_mention_everyone_in_a_group(chat: Chat) -> None:
    group = await create_group(chat.nc, [chat.a.phone, chat.b.phone, chat.c.phone])
    sent = await chat.send(
        chat.a, {"type": "text", "to": group, "text": "@all standup", "mention_all": True}
    )
    seen = await _received(chat, chat.a, chat.c, sent)
    assert seen.data["chat"] == group and seen.data["from"] == chat.a.phone
    assert seen.data["content"]["mentions"] == sorted([chat.b.phone, chat.c.phone])


async def test_conversation_limits_are_422_up_front(chat: Chat) -> None:
    url = f"/v1/sessions/{chat.a.name}/messages"
    to = chat.b.phone
    location = await chat.send(
        chat.a, {"type": "location", "to": to, "latitude": 1, "longitude": 2}
    )
    await chat.sent(chat.a, location)
    for body, code in (
        ({"type": "text", "to": to, "text": "x", "mention_all": True}, "invalid_mentions"),
        ({"type": "text", "to": to, "text": "x", "mentions": ["1@g.us"]}, "invalid_chat_id"),
        ({"type": "text", "to": to, "text": "x", "reply_to": "m_nope"}, "message_not_found"),
        ({"type": "edit", "to": to, "message_id": "m_nope", "text": "y"}, "message_not_found"),
        ({"type": "edit", "to": to, "message_id": location, "text": "y"}, "message_not_editable"),
        (
            {"type": "edit", "to": chat.c.phone, "message_id": location, "text": "y"},
            "message_not_found",
        ),
        ({"type": "revoke", "to": to, "message_id": "m_nope"}, "message_not_found"),
    ):
        assert_problem(await chat.api.post(url, json=body), 422, code)
    assert_problem(
        await chat.api.post(
            url, json={"type": "edit", "to": to, "message_id": location, "text": ""}
        ),
        400,
        "invalid_body",
    )


async def test_edit_revoke_and_reactions_as_the_receiver_sees_them(chat: Chat) -> None:
    a, b = chat.a, chat.b
    sent = await chat.send(a, {"type": "text", "to": b.phone, "text": "typo"})
    original = await _received(chat, a, b, sent)
    engine_id = original.data["message_id"]

    await chat.send(a, {"type": "edit", "to": b.phone, "message_id": sent, "text": "fixed"})
    edited = await chat.seen_by(b, "message.edited", lambda e: e.data["message_id"] == engine_id)
    assert edited.data["text"] == "fixed"
    assert (edited.data["from"], edited.data["chat"], edited.data["from_me"]) == (
        a.phone,
        a.phone,
        False,
    )
    assert edited.data["event_message_id"] != engine_id

    # the receiver reacts, then takes the reaction back: the sender sees both, by its id
    await chat.send(b, {"type": "reaction", "to": a.phone, "message_id": engine_id, "emoji": "👍"})
    added = await chat.seen_by(a, "message.reaction", lambda e: e.data["message_id"] == sent)
    assert (added.data["emoji"], added.data["removed"], added.data["from_me"]) == (
        "👍",
        False,
        True,
    )
    assert added.data["engine_message_id"] == engine_id and added.data["from"] == b.phone
    await chat.send(b, {"type": "reaction", "to": a.phone, "message_id": engine_id, "emoji": ""})
    removed = await chat.seen_by(
        a, "message.reaction", lambda e: e.data["message_id"] == sent and e.data["removed"]
    )
    assert removed.data["emoji"] == ""

    await chat.send(a, {"type": "revoke", "to": b.phone, "message_id": sent})
    revoked = await chat.seen_by(b, "message.revoked", lambda e: e.data["message_id"] == engine_id)
    assert (revoked.data["from"], revoked.data["chat"], revoked.data["is_group"]) == (
        a.phone,
        a.phone,
        False,
    )


async def test_edit_revoke_reply_and_reaction_removal_by_nats_command(chat: Chat) -> None:
    a, b = chat.a, chat.b

    async def send(sender: Account, message: dict[str, Any]) -> str:
        answer = await chat.command("message_send", {"session_id": sender.name, "message": message})
        assert answer["kind"] == "ok", answer
        return str(answer["value"]["message_id"])

    sent = await send(a, {"type": "text", "to": b.phone, "text": "v1"})
    engine_id = (await _received(chat, a, b, sent)).data["message_id"]
    reply = await send(b, {"type": "text", "to": a.phone, "text": "re", "reply_to": engine_id})
    quoted = await _received(chat, b, a, reply)
    assert quoted.data["content"]["reply_to"] == engine_id
    await send(a, {"type": "edit", "to": b.phone, "message_id": sent, "text": "v2"})
    edited = await chat.seen_by(b, "message.edited", lambda e: e.data["message_id"] == engine_id)
    assert edited.data["text"] == "v2" and edited.data["from"] == a.phone
    await send(b, {"type": "reaction", "to": a.phone, "message_id": engine_id, "emoji": ""})
    removed = await chat.seen_by(a, "message.reaction", lambda e: e.data["message_id"] == sent)
    assert removed.data["removed"] is True and removed.data["from"] == b.phone
    await send(a, {"type": "revoke", "to": b.phone, "message_id": sent})
    revoked = await chat.seen_by(b, "message.revoked", lambda e: e.data["message_id"] == engine_id)
    assert revoked.data["from"] == a.phone
    refused = await chat.command(
        "message_send",
        {"session_id": a.name, "message": {"type": "revoke", "to": b.phone, "message_id": "m_x"}},
    )
    assert (refused["code"], refused["status"]) == ("message_not_found", 422)


# -- 3. polls ------------------------------------------------------------------------------


async def test_a_poll_and_its_votes_by_name(chat: Chat) -> None:
    group = await create_group(chat.nc, [chat.a.phone, chat.b.phone, chat.c.phone])
    options = ["Red", "Green", "Blue"]
    sent = await chat.send(
        chat.a,
        {"type": "poll", "to": group, "name": "Colour?", "options": options, "selectable": 0},
    )
    poll = await _received(chat, chat.a, chat.b, sent)
    assert (poll.data["type"], poll.data["text"], poll.data["chat"]) == ("poll", "Colour?", group)
    assert poll.data["content"]["options"] == options
    assert poll.data["content"]["selectable"] == 0
    engine_id = poll.data["message_id"]

    await vote(chat.nc, chat.b.phone, chat.a.phone, engine_id, ["Blue", "Red"], chat=group)
    seen = await chat.seen_by(chat.a, "message.poll_vote", lambda e: e.data["message_id"] == sent)
    assert seen.data["options"] == ["Blue", "Red"]
    assert seen.data["poll"] == "Colour?"
    assert (seen.data["from"], seen.data["from_lid"]) == (chat.b.phone, chat.b.lid)
    assert (seen.data["chat"], seen.data["is_group"], seen.data["from_me"]) == (group, True, True)
    assert seen.data["engine_message_id"] == engine_id
    # a changed vote replaces the choice; an empty one withdraws it
    await vote(chat.nc, chat.c.phone, chat.a.phone, engine_id, [], chat=group)
    withdrawn = await chat.seen_by(
        chat.a, "message.poll_vote", lambda e: e.data["from"] == chat.c.phone
    )
    assert withdrawn.data["options"] == []


async def test_a_single_choice_poll_by_nats_command(chat: Chat) -> None:
    answer = await chat.command(
        "message_send",
        {
            "session_id": chat.b.name,
            "message": {"type": "poll", "to": chat.a.phone, "name": "Yes?", "options": ["y", "n"]},
        },
    )
    assert answer["kind"] == "ok", answer
    sent = answer["value"]["message_id"]
    poll = await _received(chat, chat.b, chat.a, sent)
    assert poll.data["content"]["selectable"] == 1 and poll.data["content"]["options"] == ["y", "n"]
    await vote(chat.nc, chat.a.phone, chat.b.phone, poll.data["message_id"], ["n"])
    seen = await chat.seen_by(chat.b, "message.poll_vote", lambda e: e.data["message_id"] == sent)
    assert (seen.data["options"], seen.data["from"], seen.data["chat"]) == (
        ["n"],
        chat.a.phone,
        chat.a.phone,
    )
    duplicate = await chat.command(
        "message_send",
        {
            "session_id": chat.b.name,
            "message": {"type": "poll", "to": chat.a.phone, "name": "?", "options": ["y", "y "]},
        },
    )
    assert (duplicate["code"], duplicate["status"]) == ("invalid_poll", 422)


async def test_polls_outside_whatsapps_limits_are_refused(chat: Chat) -> None:
    url = f"/v1/sessions/{chat.a.name}/messages"
    poll = {"type": "poll", "to": chat.b.phone, "name": "Q"}
    for options, extra, status, code in (
        (["only"], {}, 400, "invalid_body"),
        ([f"o{i}" for i in range(13)], {}, 400, "invalid_body"),
        (["a", "b", "a"], {}, 422, "invalid_poll"),
        (["a", "  "], {}, 422, "invalid_poll"),
        (["a", "b"], {"selectable": 3}, 422, "invalid_poll"),
        (["a", "b"], {"selectable": -1}, 400, "invalid_body"),
        (["a", "x" * 101], {}, 400, "invalid_body"),
    ):
        response = await chat.api.post(url, json={**poll, "options": options, **extra})
        assert_problem(response, status, code)
    twelve = await chat.api.post(url, json={**poll, "options": [f"o{i}" for i in range(12)]})
    assert twelve.status_code == 202, twelve.text


# -- 4. presence: read marks, typing, type before send ---------------------------------------


async def test_mark_a_chat_read_and_typing_indicators(chat: Chat) -> None:
    a, b = chat.a, chat.b
    await inject_faults(chat.nc, b.key, Faults(auto_read=False))  # b reads only when told
    try:
        sent = [
            await chat.send(a, {"type": "text", "to": b.phone, "text": f"n{i}"}) for i in (1, 2)
        ]
        engine_ids = [(await _received(chat, a, b, m)).data["message_id"] for m in sent]
        read = await chat.api.post(f"/v1/sessions/{b.name}/read", json={"chat": "+" + a.phone})
        assert read.status_code == 200, read.text
        answer = read.json()
        assert (answer["session_id"], answer["chat"]) == (b.name, a.phone)
        # every message of the chat this session has not marked read, oldest first: the
        # two new ones last (earlier tests of the module leave others from a to b)
        assert answer["marked"][-2:] == engine_ids
        from_a = {
            e.data["message_id"]
            for e in chat.log.of(b.name, "message.received")
            if e.data["chat"] == a.phone
        }
        assert set(answer["marked"]) <= from_a
        for message_id in sent:
            ack = await chat.log.wait_for(
                lambda e, m=message_id: (
                    e.session_id == a.name
                    and e.type == "message.ack"
                    and e.data["message_id"] == m
                    and e.data["status"] == "read"
                )
            )
            assert ack.data["peer"] == b.phone
        again = await chat.api.post(f"/v1/sessions/{b.name}/read", json={"chat": a.phone})
        assert again.json()["marked"] == []
    finally:
        await inject_faults(chat.nc, b.key, Faults())

    typing = await chat.api.post(
        f"/v1/sessions/{a.name}/presence", json={"chat": b.phone, "state": "typing"}
    )
    assert typing.json() == {"session_id": a.name, "chat": b.phone, "state": "typing"}
    seen = await chat.seen_by(b, "chat.presence", lambda e: e.data["from"] == a.phone)
    assert seen.data == {
        "chat": a.phone,
        "from": a.phone,
        "from_lid": a.lid,
        "is_group": False,
        "state": "typing",
    }
    group = await create_group(chat.nc, [a.phone, b.phone, chat.c.phone])
    await chat.api.post(
        f"/v1/sessions/{a.name}/presence", json={"chat": group, "state": "recording"}
    )
    in_group = await chat.seen_by(chat.c, "chat.presence", lambda e: e.data["chat"] == group)
    assert (in_group.data["from"], in_group.data["state"], in_group.data["is_group"]) == (
        a.phone,
        "recording",
        True,
    )
    url = f"/v1/sessions/{a.name}/presence"
    assert_problem(
        await chat.api.post(url, json={"chat": b.phone, "state": "dancing"}), 400, "invalid_body"
    )
    assert_problem(
        await chat.api.post(url, json={"chat": "1@g.us", "state": "typing"}), 422, "invalid_chat_id"
    )
    too_many = {"chat": b.phone, "message_ids": [f"x{i}" for i in range(1001)]}
    assert_problem(
        await chat.api.post(f"/v1/sessions/{a.name}/read", json=too_many), 400, "invalid_body"
    )


async def test_read_and_presence_by_nats_command(chat: Chat) -> None:
    a, c = chat.a, chat.c
    await inject_faults(chat.nc, c.key, Faults(auto_read=False))
    try:
        sent = await chat.send(a, {"type": "text", "to": c.phone, "text": "cmd read"})
        engine_id = (await _received(chat, a, c, sent)).data["message_id"]
        read = await chat.command(
            "chat_read", {"session_id": c.name, "chat": a.phone, "message_ids": [engine_id]}
        )
        assert read == {
            "kind": "ok",
            "value": {"session_id": c.name, "chat": a.phone, "marked": [engine_id]},
        }
        ack = await chat.log.wait_for(
            lambda e: (
                e.session_id == a.name
                and e.type == "message.ack"
                and e.data["message_id"] == sent
                and e.data["status"] == "read"
            )
        )
        assert ack.data["peer"] == c.phone
    finally:
        await inject_faults(chat.nc, c.key, Faults())
    shown = await chat.command(
        "chat_presence", {"session_id": c.name, "chat": a.phone, "state": "paused"}
    )
    assert shown["kind"] == "ok", shown
    seen = await chat.seen_by(
        a, "chat.presence", lambda e: e.data["from"] == c.phone and e.data["state"] == "paused"
    )
    assert (seen.data["chat"], seen.data["from_lid"]) == (c.phone, c.lid)
    bad = await chat.command("chat_presence", {"session_id": c.name, "chat": a.phone, "state": "x"})
    assert (bad["code"], bad["status"]) == ("invalid_body", 400)


async def test_type_before_send_shows_typing_first_for_a_bounded_time(chat: Chat) -> None:
    a, b = chat.a, chat.b
    settings = f"/v1/sessions/{a.name}/settings"
    pacing = {
        **NO_PACING,
        "typing_before_send": True,
        "typing_s_per_char": 0.01,
        "typing_max_s": 0.3,
    }
    assert (await chat.api.patch(settings, json={"pacing": pacing})).status_code == 200
    try:
        # 1000 characters at 0.01 s would be 10 s of typing: bounded to 0.3 s
        started = time.time()
        sent = await chat.send(a, {"type": "text", "to": b.phone, "text": "x" * 1000})
        received = await _received(chat, a, b, sent)
        typing = await chat.seen_by(
            b, "chat.presence", lambda e: e.data["from"] == a.phone and e.ts >= started
        )
        assert typing.data["state"] == "typing"
        assert chat.log.events.index(typing) < chat.log.events.index(received)
        assert received.ts - typing.ts >= 0.3 * 0.95  # it waited the bound (clock slack)
        sent_event = await chat.sent(a, sent)
        assert sent_event.data["queued_ms"] >= 0.3 * 0.95 * 1000
    finally:
        await chat.api.patch(settings, json={"pacing": NO_PACING})
    bad = {"pacing": {**pacing, "typing_max_s": 31}}
    assert_problem(await chat.api.patch(settings, json=bad), 400, "invalid_body")


# -- 5. undecryptable, then resolved ---------------------------------------------------------


async def _undecryptable_then_resolved(chat: Chat, sender: Account, message_id: str) -> None:
    receiver = chat.b
    engine_id = (await chat.sent(sender, message_id)).data["engine_message_id"]
    first = await chat.seen_by(
        receiver, "message.received", lambda e: e.data["message_id"] == engine_id
    )
    assert first.data["type"] == "undecryptable"
    assert (first.data["text"], first.data["from"], first.data["chat"]) == (
        None,
        sender.phone,
        sender.phone,
    )
    assert first.data["content"] == {"unavailable": False, "hidden": False}
    assert "resolves" not in first.data
    resolved = await chat.seen_by(
        receiver,
        "message.received",
        lambda e: e.data["message_id"] == engine_id and e.data.get("resolves") is True,
    )
    assert (resolved.data["type"], resolved.data["text"]) == ("text", "secret")
    assert (resolved.data["from"], resolved.data["from_lid"]) == (sender.phone, sender.lid)
    history = await chat.api.get(f"/v1/sessions/{receiver.name}/messages", params={"limit": 1000})
    records = [m for m in history.json()["messages"] if m["message_id"] == engine_id]
    assert [(r["type"], r["text"]) for r in records] in ([("text", "secret")], [])


async def test_an_undecryptable_message_is_reported_then_resolved(chat: Chat) -> None:
    await inject_faults(chat.nc, chat.b.key, Faults(undecryptable_next=1))
    try:
        sent = await chat.send(chat.a, {"type": "text", "to": chat.b.phone, "text": "secret"})
        await _undecryptable_then_resolved(chat, chat.a, sent)
    finally:
        await inject_faults(chat.nc, chat.b.key, Faults())


async def test_an_undecryptable_message_sent_by_nats_command(chat: Chat) -> None:
    await inject_faults(chat.nc, chat.b.key, Faults(undecryptable_next=1))
    try:
        answer = await chat.command(
            "message_send",
            {
                "session_id": chat.c.name,
                "message": {"type": "text", "to": chat.b.phone, "text": "secret"},
            },
        )
        assert answer["kind"] == "ok", answer
        await _undecryptable_then_resolved(chat, chat.c, answer["value"]["message_id"])
    finally:
        await inject_faults(chat.nc, chat.b.key, Faults())


# -- link previews -------------------------------------------------------------------------


async def test_a_link_preview_the_agent_may_not_fetch_costs_the_card_not_the_message(
    chat: Chat,
) -> None:
    """The stack's agent runs the production SSRF policy: a preview of a loopback page is
    refused, and the text goes without a card (tests/test_link_preview.py builds cards
    from a real page)."""
    text = "see http://127.0.0.1:9/internal"
    sent = await chat.send(
        chat.a, {"type": "text", "to": chat.b.phone, "text": text, "link_preview": True}
    )
    seen = await _received(chat, chat.a, chat.b, sent)
    assert seen.data["text"] == text
    assert seen.data["content"]["link_preview"] is True
    assert "preview" not in seen.data["content"]
    answer = await chat.command(
        "message_send",
        {
            "session_id": chat.c.name,
            "message": {"type": "text", "to": chat.b.phone, "text": text, "link_preview": True},
        },
    )
    assert answer["kind"] == "ok", answer
    by_command = await _received(chat, chat.c, chat.b, answer["value"]["message_id"])
    assert by_command.data["text"] == text and "preview" not in by_command.data["content"]


async def test_mentions_and_lid_chat_ids_by_nats_command(chat: Chat) -> None:
    group = await create_group(chat.nc, [chat.a.phone, chat.b.phone, chat.c.phone])
    for message, receiver, expected in (
        (
            {"type": "text", "to": group, "text": "@all", "mention_all": True},
            chat.b,
            sorted([chat.b.phone, chat.c.phone]),
        ),
        (
            {"type": "text", "to": chat.b.lid, "text": "@b", "mentions": [chat.b.lid]},
            chat.b,
            [chat.b.lid],
        ),
    ):
        answer = await chat.command("message_send", {"session_id": chat.a.name, "message": message})
        assert answer["kind"] == "ok", answer
        seen = await _received(chat, chat.a, receiver, answer["value"]["message_id"])
        assert seen.data["content"]["mentions"] == expected
        assert seen.data["from"] == chat.a.phone
        assert seen.data["chat"] == (group if message["to"] == group else chat.a.phone)
    refused = await chat.command(
        "message_send",
        {
            "session_id": chat.a.name,
            "message": {"type": "text", "to": chat.b.phone, "text": "x", "mention_all": True},
        },
    )
    assert (refused["code"], refused["status"]) == ("invalid_mentions", 422)

"""Message history (issue 15): by chat, paged, one record per message with its delivery
status — accepted-and-still-queued messages included — over REST and the NATS command
``messages_list``, on the sim engine."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import msgspec
from nats.aio.client import Client as NATS

from contract.protocol import MessageRecord
from node_agent.history import MessageLog
from tests.helpers import assert_problem
from tests.test_media_out import pair, wait_event

__all__ = ["pair"]


async def page(api: httpx.AsyncClient, session_id: str, **params: Any) -> dict[str, Any]:
    response = await api.get(f"/v1/sessions/{session_id}/messages", params=params)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def wait_status(
    api: httpx.AsyncClient, session_id: str, chat: str, message_id: str, status: str
) -> dict[str, Any]:
    deadline = time.monotonic() + 20
    while True:
        for record in (await page(api, session_id, chat=chat, limit=100))["messages"]:
            if record["message_id"] == message_id and record["status"] == status:
                return dict(record)
        assert time.monotonic() < deadline, f"{message_id} never became {status}"
        await asyncio.sleep(0.1)


async def test_history_by_chat_shows_queued_sent_read_and_failed_messages_paged(
    nc: NATS, pair: tuple[httpx.AsyncClient, str, str, str]
) -> None:
    api, sender, receiver, to = pair
    # one message per recipient per hour: the second and third stay queued
    paced = await api.patch(
        f"/v1/sessions/{sender}/settings", json={"pacing": {"min_gap_per_recipient_s": 3600}}
    )
    assert paced.status_code == 200, paced.text
    ids = []
    for text in ("first", "second", "third"):
        sent = await api.post(
            f"/v1/sessions/{sender}/messages", json={"type": "text", "to": "+" + to, "text": text}
        )
        assert sent.status_code == 202, sent.text
        ids.append(sent.json()["message_id"])
    stranger = "15550799999"  # not on the simulated WhatsApp: the send fails
    failing = await api.post(
        f"/v1/sessions/{sender}/messages", json={"type": "text", "to": "+" + stranger, "text": "?"}
    )
    failed_id = failing.json()["message_id"]

    first = await wait_status(api, sender, to, ids[0], "read")
    assert first["direction"] == "out" and first["peer"] == to and first["text"] == "first"
    assert first["type"] == "text" and first["engine_message_id"].startswith("SIM")
    chat = await page(api, sender, chat="+" + to)
    assert [m["message_id"] for m in chat["messages"]] == ids[::-1]  # newest first
    assert [m["status"] for m in chat["messages"]] == ["queued", "queued", "read"]
    assert chat["next_before"] is None
    assert all(m["peer"] == to for m in chat["messages"])

    failed = await wait_status(api, sender, stranger, failed_id, "failed")
    assert "not on WhatsApp" in failed["error"]

    # paged: one at a time, by cursor
    one = await page(api, sender, chat=to, limit=1)
    assert [m["message_id"] for m in one["messages"]] == [ids[2]]
    assert one["next_before"] == ids[2]
    two = await page(api, sender, chat=to, limit=1, before=one["next_before"])
    assert [m["message_id"] for m in two["messages"]] == [ids[1]]
    three = await page(api, sender, chat=to, limit=1, before=two["next_before"])
    assert [m["message_id"] for m in three["messages"]] == [ids[0]]
    assert three["next_before"] is None

    # the receiver's side: received, by the sender's number
    sender_phone = (await api.get(f"/v1/sessions/{sender}")).json()["phone"]
    engine_id = first["engine_message_id"]
    await wait_event(
        api, receiver, "message.received", lambda e: e["data"]["message_id"] == engine_id
    )
    inbox = await page(api, receiver, chat=sender_phone)
    assert [
        (m["message_id"], m["direction"], m["status"], m["text"]) for m in inbox["messages"]
    ] == [(engine_id, "in", "received", "first")]

    # the NATS command answers the same page
    tenant = (await api.get(f"/v1/sessions/{sender}")).json()["tenant"]
    reply = await nc.request(
        f"zf.api.{tenant}.messages_list",
        msgspec.json.encode({"session_id": sender, "chat": "+" + to, "limit": 2}),
        timeout=10,
        headers={"X-API-Key": api.headers["X-API-Key"]},
    )
    answer = msgspec.json.decode(reply.data)
    assert answer["kind"] == "ok", answer
    assert [m["message_id"] for m in answer["value"]["messages"]] == [ids[2], ids[1]]
    assert [m["status"] for m in answer["value"]["messages"]] == ["queued", "queued"]
    assert answer["value"]["next_before"] == ids[1]
    bad = await nc.request(
        f"zf.api.{tenant}.messages_list",
        msgspec.json.encode({"session_id": sender, "chat": "not a chat"}),
        timeout=10,
        headers={"X-API-Key": api.headers["X-API-Key"]},
    )
    refused = msgspec.json.decode(bad.data)
    assert (refused["code"], refused["status"]) == ("invalid_number", 422)
    assert_problem(
        await api.get(f"/v1/sessions/{sender}/messages", params={"chat": "not a chat"}),
        422,
        "invalid_number",
    )


def test_the_log_keeps_the_furthest_status_and_queued_messages_longest() -> None:
    log = MessageLog(3)

    def record(message_id: str, status: str = "queued") -> MessageRecord:
        return MessageRecord(
            message_id=message_id,
            direction="out",
            peer="1",
            type="text",
            timestamp=0,
            status=status,
        )

    log.add(record("a"))
    log.add(record("b"))
    log.advance("b", "sent")
    log.advance("b", "read")
    log.advance("b", "delivered")  # late receipt: read stays
    assert log.get("b") is not None and log.get("b").status == "read"  # type: ignore[union-attr]
    log.add(record("c"))
    log.add(record("d"))  # over the bound: b (moved on) goes, a (still queued) stays
    assert [r.message_id for r in log.page(limit=10)[0]] == ["d", "c", "a"]
    log.advance("a", "failed", error="boom")
    assert log.get("a").status == "failed" and log.get("a").error == "boom"  # type: ignore[union-attr]
    assert log.page(before="zzz")[0] == []

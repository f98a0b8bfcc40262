"""The outbox (node_agent/outbox.py), on a real nats-server: an accepted send is stored
before the agent answers, forgotten once its end is known, and purged from the stream by
sequence — never an entry that is still pending. Sends served side by side keep the
order in which they arrived."""

from __future__ import annotations

import asyncio
import base64
import time
from pathlib import Path

import pytest
from nats.aio.client import Client as NATS

from contract.protocol import (
    Event,
    EventType,
    ImageContent,
    Media,
    MessageContent,
    Op,
    SendAccepted,
    SendMessage,
    TextContent,
    encode,
    event_subject,
)
from node_agent.events import new_event_id
from node_agent.outbox import OUTBOX_BUCKET, Outbox
from tests.agent_support import (
    AgentClient,
    EventLog,
    phone,
    running_agent,
    sim_settings,
    unique,
)
from zapfleet.natsjs import ensure_jetstream

STREAM = f"KV_{OUTBOX_BUCKET}"


async def stored_entries(nc: NATS, session_id: str) -> int:
    """Messages the outbox stream still holds for one session."""
    info = await nc.jetstream().stream_info(
        STREAM, subjects_filter=f"$KV.{OUTBOX_BUCKET}.{session_id}.*"
    )
    return sum((info.state.subjects or {}).values())


PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"x" * 200_000).decode()


def send(session_id: str, to: str, text: str, *, image: bool = False) -> SendMessage:
    content: MessageContent = TextContent(text=text)
    if image:  # stored in the object store first: slower to accept than a text
        content = ImageContent(media=Media(base64=PNG), caption=text)
    return SendMessage(session_id=session_id, message_id=unique("m"), to=to, content=content)


@pytest.fixture(autouse=True)
async def event_stream(nc: NATS) -> None:
    await ensure_jetstream(nc.jetstream(), events_max_age_s=3600, node_ttl_s=10)


async def test_a_purge_removes_what_is_done_below_the_oldest_pending_entry(nc: NATS) -> None:
    outbox = await Outbox.open(nc.jetstream())
    session = unique("s")
    first, second, third = (send(session, "15550100001", f"n{i}") for i in range(3))
    try:
        for message in (first, second, third):
            await outbox.put(message, None)
        assert await stored_entries(nc, session) == 3

        # the two newer ones are done, the oldest is not: nothing can be purged yet,
        # and a restart of the session here queues only the one still pending
        outbox.forget(session, second.message_id)
        outbox.forget(session, third.message_id)
        await outbox.purge()
        assert await stored_entries(nc, session) == 3
        pending = await outbox.pending(session, "t")
        assert [m.message_id for m, _ in pending] == [first.message_id]

        outbox.forget(session, first.message_id)
        await outbox.purge()
        assert await stored_entries(nc, session) == 0
        assert await outbox.pending(session, "t") == []
    finally:
        await outbox.close()


async def test_a_purge_never_removes_an_entry_still_pending_above_a_done_one(nc: NATS) -> None:
    """Guarantee: the purge cut-off is the *oldest* pending entry. With done and pending
    entries interleaved (sent, pending, sent, pending), only what lies below the oldest
    pending one may go; the two pending messages must survive for a restart."""
    outbox = await Outbox.open(nc.jetstream())
    session = unique("s")
    messages = [send(session, "15550100004", f"n{i}") for i in range(4)]
    try:
        for message in messages:
            await outbox.put(message, None)
        outbox.forget(session, messages[0].message_id)
        outbox.forget(session, messages[2].message_id)
        await outbox.purge()
        # the first is gone; the third waits above the second, which is still pending
        left = await stored_entries(nc, session)
        assert left == 3, f"{left} of 4 entries left after the purge: a pending one went"
    finally:
        await outbox.close()

    restarted = await Outbox.open(nc.jetstream())  # the agent died: KV alone is left
    try:
        pending = await restarted.pending(session, "t")
        assert [m.message_id for m, _ in pending] == [
            messages[1].message_id,
            messages[2].message_id,  # forgotten by the dead agent only: sent again
            messages[3].message_id,
        ]
    finally:
        await restarted.close()


async def test_a_new_outbox_restores_what_another_agent_left(nc: NATS) -> None:
    """The agent that accepted the messages died; the next one starts from KV alone."""
    session = unique("s")
    first = await Outbox.open(nc.jetstream())
    messages = [send(session, "15550100002", f"n{i}") for i in range(3)]
    for message in messages:
        await first.put(message, None)
    await first.close()

    second = await Outbox.open(nc.jetstream())
    try:
        pending = await second.pending(session, "t")
        assert [m.message_id for m, _ in pending] == [m.message_id for m in messages]
        for message in messages:
            second.forget(session, message.message_id)
        await second.purge()
        assert await stored_entries(nc, session) == 0
    finally:
        await second.close()


async def test_a_restore_skips_messages_whose_end_is_already_stored(nc: NATS) -> None:
    """The agent died after a message was sent (its ``message.sent`` stored) but before
    the purge removed its entry: the next agent must not send it again."""
    js = nc.jetstream()
    session = unique("s")
    first = await Outbox.open(js)
    messages = [send(session, "15550100003", f"n{i}") for i in range(3)]
    for message in messages:
        await first.put(message, None)
    for message, event_type, data in (
        (messages[0], EventType.MESSAGE_SENT, {}),
        (messages[1], EventType.MESSAGE_ACK, {"status": "server"}),  # not an end
        (messages[2], EventType.MESSAGE_ACK, {"status": "failed"}),
    ):
        event = Event(
            id=new_event_id(),
            type=event_type,
            tenant="t",
            session_id=session,
            ts=time.time(),
            data={"message_id": message.message_id, **data},
            node_id="dead-node",
        )
        await js.publish(event_subject("t", session, event_type), encode(event))

    second = await Outbox.open(js)
    try:
        pending = await second.pending(session, "t")
        assert [m.message_id for m, _ in pending] == [messages[1].message_id]
    finally:
        await second.close()
        await first.close()


async def test_sends_served_side_by_side_are_sent_in_arrival_order_and_leave_the_outbox(
    nats_url: str, nc: NATS, tmp_path: Path
) -> None:
    events = EventLog()
    await events.start(nc, "t")
    settings = sim_settings(nats_url, tmp_path)
    try:
        async with running_agent(settings):
            agent = AgentClient(nc, settings.node_id)
            alice, bob = unique("alice"), unique("bob")
            bob_phone = phone()
            for session_id, number in ((alice, phone()), (bob, bob_phone)):
                await agent.start(session_id)
                await agent.pair(session_id, number)

            # requests published back to back on one connection arrive in this order
            messages = [send(alice, bob_phone, f"n{i}", image=i % 5 == 0) for i in range(60)]
            accepted = await asyncio.gather(
                *(agent.call(Op.MESSAGE_SEND, m, SendAccepted) for m in messages)
            )
            assert [a.message_id for a in accepted] == [m.message_id for m in messages]

            sent = await events.wait_count(
                lambda e: e.session_id == alice and e.type == "message.sent", 60, timeout_s=20
            )
            assert [e.data["message_id"] for e in sent] == [m.message_id for m in messages]

            # the purge runs every 0.5 s: a few rounds are enough
            left = [await stored_entries(nc, alice)]
            for _ in range(50):
                if left[-1] == 0:
                    break
                await asyncio.sleep(0.1)
                left.append(await stored_entries(nc, alice))
            assert left[-1] == 0, f"entries left in the outbox over 5 s: {left}"
    finally:
        await events.stop()

"""Evolution-format session webhooks on the durable path (docs/evolution-webhooks.md):
a real nats-server, real ``zapfleet webhooks`` processes and a real HTTP receiver. The
dispatcher keeps zapfleet's event in the stream, backlogs and dead letters and renders
Evolution's body at each attempt, so a kill, a receiver outage and a redrive lose nothing
and change nothing in what arrives."""

from __future__ import annotations

import asyncio
import signal
import time
from typing import Any

import msgspec
from evolutionapi.typing.webhook import WebhookProcessor
from nats.aio.client import Client as NATS

from contract.protocol import (
    SESSIONS_BUCKET,
    Event,
    EventType,
    SessionRecord,
    SessionSpec,
    encode,
    event_subject,
)
from control_plane.webhooks.deadletters import DeadLetterStore
from node_agent.events import new_event_id
from tests.conftest import WebhookReceiver
from tests.webhooks.conftest import InProcess, settings_for, spawn_dispatcher, stop_process

PHONE = "15550009999"


async def evolution_session(nc: NATS, url: str, name: str = "evo", **extra: Any) -> SessionRecord:
    """A session whose webhook is in Evolution format, written as webhook/set does."""
    record = SessionRecord(
        spec=SessionSpec(session_id=name, tenant="acme"),
        webhook_url=url,
        webhook_events=["MESSAGES_UPSERT", "SEND_MESSAGE"],
        webhook_format="evolution",
        webhook_by_events=True,
        **extra,
    )
    kv = await nc.jetstream().key_value(SESSIONS_BUCKET)
    await kv.put(record.spec.key, msgspec.json.encode(record))
    return record


async def publish(nc: NATS, count: int, session_id: str = "evo", first: int = 0) -> list[str]:
    """``count`` inbound texts as an agent publishes them, each followed by an event
    Evolution has no counterpart for (message.queued); returns the texts' event ids."""
    js = nc.jetstream()
    ids = []
    for n in range(first, first + count):
        received = Event(
            id=new_event_id(),
            type=EventType.MESSAGE_RECEIVED,
            tenant="acme",
            session_id=session_id,
            ts=time.time(),
            data={
                "message_id": f"3EB0{n:016X}",
                "from": PHONE,
                "from_lid": None,
                "chat": PHONE,
                "is_group": False,
                "type": "text",
                "text": f"message {n}",
                "content": {},
                "timestamp": float(int(time.time())),
            },
        )
        queued = Event(
            id=new_event_id(),
            type=EventType.MESSAGE_QUEUED,
            tenant="acme",
            session_id=session_id,
            ts=time.time(),
            data={"message_id": f"m_{n:020x}", "to": PHONE, "type": "text"},
        )
        for event in (received, queued):
            await js.publish(
                event_subject("acme", session_id, event.type),
                encode(event),
                headers={"Nats-Msg-Id": event.id},
            )
        ids.append(received.id)
    return ids


def delivered(receiver: WebhookReceiver) -> dict[str, tuple[str, dict[str, Any]]]:
    """Event id (Zapfleet-Event-Id) -> (path, body) of every delivery so far."""
    return {
        headers["Zapfleet-Event-Id"]: (path, event)
        for (headers, _), path, event in zip(
            receiver.requests, receiver.paths, receiver.events, strict=True
        )
    }


async def wait_delivered(receiver: WebhookReceiver, ids: list[str], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not set(ids) <= set(delivered(receiver)):
        missing = len(set(ids) - set(delivered(receiver)))
        assert time.monotonic() < deadline, f"{missing} of {len(ids)} never arrived"
        await asyncio.sleep(0.05)


def assert_evolution_text(path: str, body: dict[str, Any]) -> int:
    """A messages.upsert of ``publish``, at its by-events path; returns its number."""
    assert path == "/hook/messages-upsert", path
    assert body["event"] == "messages.upsert"
    assert body["instance"] == "evo"
    assert body["destination"].endswith("/hook")
    data = body["data"]
    assert data["key"]["remoteJid"] == f"{PHONE}@s.whatsapp.net"
    assert data["key"]["fromMe"] is False
    assert data["messageType"] == "conversation"
    handled: list[Any] = []
    processor = WebhookProcessor()  # the evolutionapi package parses it
    processor.register_handler("messages.upsert", handled.append)
    assert processor.process_webhook(msgspec.json.encode(body))
    text = handled[0]["message"]["conversation"]
    assert handled[0]["key"]["id"] == f"3EB0{int(text.split()[1]):016X}"
    return int(text.split()[1])


async def test_an_evolution_webhook_loses_nothing_across_a_killed_dispatcher_and_an_outage(
    js_client: NATS, fresh_nats: str, webhook_receiver: WebhookReceiver
) -> None:
    await evolution_session(js_client, webhook_receiver.url)
    webhook_receiver.delay_s = 0.01
    settings = settings_for(fresh_nats, webhook_ack_wait_s=2.0)
    ids = await publish(js_client, 300)
    process = spawn_dispatcher("webhooks-evolution", settings)
    try:
        deadline = time.monotonic() + 30
        while len(delivered(webhook_receiver)) < 50:
            assert process.poll() is None, "the dispatcher exited"
            assert time.monotonic() < deadline, "the dispatcher delivered nothing"
            await asyncio.sleep(0.02)
        process.send_signal(signal.SIGKILL)  # mid-flight
        process.wait(5)
        assert len(delivered(webhook_receiver)) < 300, "the kill came too late"
        webhook_receiver.go_down()
        process = spawn_dispatcher("webhooks-evolution-restarted", settings)
        ids += await publish(js_client, 100, first=300)  # while the receiver is down
        await asyncio.sleep(1.0)
        webhook_receiver.come_up()
        await wait_delivered(webhook_receiver, ids, 60)
    finally:
        stop_process(process)
    arrived = delivered(webhook_receiver)
    assert set(arrived) == set(ids)  # every text; never a message.queued (no counterpart)
    numbers = {assert_evolution_text(path, body) for path, body in arrived.values()}
    assert numbers == set(range(400))


async def test_a_dead_letter_of_an_evolution_webhook_is_redriven_in_evolution_format(
    js_client: NATS, fresh_nats: str, webhook_receiver: WebhookReceiver
) -> None:
    await evolution_session(js_client, webhook_receiver.url)
    webhook_receiver.status = 500
    dispatcher = InProcess(js_client, settings_for(fresh_nats, webhook_max_attempts=2))
    await dispatcher.start()
    letters = DeadLetterStore(js_client, js_client.jetstream())
    try:
        ids = await publish(js_client, 3)
        deadline = time.monotonic() + 15
        while len((await letters.page("acme"))[0]) < 3:
            assert time.monotonic() < deadline, "no dead letters"
            await asyncio.sleep(0.1)
        page, _ = await letters.page("acme")
        # the dead letter keeps zapfleet's event, and names the URL it was sent to
        assert {letter.event.id for _, letter in page} == set(ids)
        assert {letter.event.type for _, letter in page} == {"message.received"}
        assert {letter.url for _, letter in page} == {webhook_receiver.url + "/messages-upsert"}
        webhook_receiver.status = 200
        assert await letters.redrive_all("acme") == (3, 0)
        await wait_delivered(webhook_receiver, ids, 15)
    finally:
        await dispatcher.stop()
    arrived = delivered(webhook_receiver)
    assert {assert_evolution_text(path, body) for path, body in arrived.values()} == {0, 1, 2}


async def test_a_disabled_or_unsubscribed_evolution_webhook_sends_nothing(
    js_client: NATS, fresh_nats: str, webhook_receiver: WebhookReceiver
) -> None:
    """Evolution's ``enabled: false`` and an event list without MESSAGES_UPSERT: nothing
    of those events is sent, and changes apply live (a later enable receives)."""
    record = await evolution_session(js_client, webhook_receiver.url, webhook_enabled=False)
    dispatcher = InProcess(js_client, settings_for(fresh_nats))
    await dispatcher.start()
    try:
        silent = await publish(js_client, 3)
        record.webhook_enabled = True
        record.webhook_events = ["SEND_MESSAGE"]
        kv = await js_client.jetstream().key_value(SESSIONS_BUCKET)
        await kv.put(record.spec.key, msgspec.json.encode(record))
        await asyncio.sleep(0.3)
        unsubscribed = await publish(js_client, 3, first=3)
        record.webhook_events = ["MESSAGES_UPSERT"]
        await kv.put(record.spec.key, msgspec.json.encode(record))
        await asyncio.sleep(0.3)
        wanted = await publish(js_client, 2, first=6)
        await wait_delivered(webhook_receiver, wanted, 15)
        await asyncio.sleep(0.5)
    finally:
        await dispatcher.stop()
    arrived = delivered(webhook_receiver)
    assert set(arrived) == set(wanted)
    assert not set(arrived) & set(silent + unsubscribed)

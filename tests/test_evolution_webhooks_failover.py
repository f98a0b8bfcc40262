"""Evolution-format webhooks across a failover (issue 20, "Done means"): the agent of a
session that is sending is killed with -9 in the middle of its paced sends; the session
moves, the new agent sends the rest from the outbox, and the Evolution receivers get a
``send.message`` for every accepted message and a ``messages.upsert`` for every text —
0 events lost. Runs on the failover cluster of tests/test_failover.py (its own
nats-server, three sim agents, two control planes) with a ``zapfleet webhooks``
dispatcher process. The sessions' webhooks are written to their records as
``webhook/set`` writes them (these control planes refuse loopback webhook URLs; the route
itself is tested in tests/test_evolution_webhooks.py)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import msgspec
from evolutionapi.typing.webhook import WebhookProcessor
from nats.aio.client import Client as NATS

from contract.protocol import SESSIONS_BUCKET, SessionRecord
from tests.conftest import WebhookReceiver
from tests.test_failover import (  # noqa: F401  (fixtures)
    FAILOVER_BOUND_S,
    Cluster,
    api,
    cluster,
    cnc,
    create_connected,
    phone,
    views,
    wait_all,
)
from tests.webhooks.conftest import settings_for, spawn_dispatcher, stop_process
from zapfleet.cli import session_key

PACED = {"rate_per_s": 3.0, "burst": 1, "min_gap_per_recipient_s": 0, "jitter": 0}
COUNT = 24


async def evolution_webhook(nc: NATS, name: str, url: str, events: list[str]) -> None:
    """What ``webhook/set`` stores (control_plane/evolution/webhook.py ``set_webhook``)."""
    kv = await nc.jetstream().key_value(SESSIONS_BUCKET)
    key = await session_key(nc, "default", name)
    while True:
        entry = await kv.get(key)
        record = msgspec.json.decode(entry.value or b"", type=SessionRecord)
        record.webhook_url = url
        record.webhook_events = events
        record.webhook_format = "evolution"
        record.webhook_by_events = True
        try:
            await kv.update(key, msgspec.json.encode(record), last=entry.revision)
            return
        except Exception:  # changed meanwhile (an assignment): read it again
            await asyncio.sleep(0.05)


def bodies(receiver: WebhookReceiver, path: str) -> list[dict[str, Any]]:
    return [
        b for p, b in zip(list(receiver.paths), list(receiver.events), strict=False) if p == path
    ]


async def test_evolution_webhooks_lose_nothing_when_the_sending_agent_is_killed(  # noqa: PLR0915 - one flow, step by step
    cluster: Cluster,  # noqa: F811  (the fixtures of tests/test_failover.py)
    api: httpx.AsyncClient,  # noqa: F811
    cnc: NATS,  # noqa: F811
) -> None:
    cluster.ensure_agents()
    (sender,) = await create_connected(api, cnc, "evofo-s", 1, first_phone=980)
    sender_node = (await views(api, [sender]))[sender]["node_id"]
    # the receiver on another node: only the sender's agent dies
    assert (await api.post(f"/v1/nodes/{sender_node}/cordon")).status_code == 200
    try:
        (receiver,) = await create_connected(api, cnc, "evofo-r", 1, first_phone=981)
    finally:
        assert (await api.post(f"/v1/nodes/{sender_node}/uncordon")).status_code == 200
    assert (await views(api, [receiver]))[receiver]["node_id"] != sender_node
    outgoing, incoming = WebhookReceiver(), WebhookReceiver()
    dispatcher = spawn_dispatcher("webhooks-evolution-failover", settings_for(cluster.nats_url))
    try:
        await evolution_webhook(cnc, sender, outgoing.url, ["SEND_MESSAGE", "MESSAGES_UPDATE"])
        await evolution_webhook(cnc, receiver, incoming.url, ["MESSAGES_UPSERT"])
        settings = f"/v1/sessions/{sender}/settings"
        assert (await api.patch(settings, json={"pacing": PACED})).status_code == 200
        accepted: dict[str, str] = {}  # message_id -> text
        for n in range(COUNT):
            text = f"evo {n}"
            sent = await api.post(
                f"/v1/sessions/{sender}/messages",
                json={"type": "text", "to": "+" + phone(981), "text": text},
            )
            assert sent.status_code == 202, sent.text
            accepted[sent.json()["message_id"]] = text
        # some went out, the rest wait in the paced queue: kill -9 the sender's agent
        deadline = time.monotonic() + 30
        while len(bodies(outgoing, "/hook/send-message")) < 3:
            assert time.monotonic() < deadline, "nothing was sent"
            await asyncio.sleep(0.05)
        cluster.agents[sender_node].kill()
        at_kill = {b["data"]["key"]["id"] for b in bodies(outgoing, "/hook/send-message")}
        assert len(at_kill) < COUNT, "the kill came too late to be mid-flight"
        await wait_all(
            api,
            [sender],
            lambda b: b["state"] == "CONNECTED" and b["node_id"] != sender_node,
            timeout_s=FAILOVER_BOUND_S + 10,
        )
        deadline = time.monotonic() + 60
        while True:
            sent_ids = {b["data"]["key"]["id"] for b in bodies(outgoing, "/hook/send-message")}
            texts = {
                b["data"]["message"]["conversation"]
                for b in bodies(incoming, "/hook/messages-upsert")
            }
            if sent_ids >= set(accepted) and texts >= set(accepted.values()):
                break
            assert time.monotonic() < deadline, (
                f"lost: {len(set(accepted) - sent_ids)} send.message, "
                f"{len(set(accepted.values()) - texts)} messages.upsert"
            )
            await asyncio.sleep(0.1)
    finally:
        stop_process(dispatcher)
        outgoing.close()
        incoming.close()
        for session_id in (sender, receiver):
            await api.delete(f"/v1/sessions/{session_id}")
        cluster.ensure_agents()
    assert sent_ids == set(accepted)  # nothing else, nothing lost
    for body in bodies(outgoing, "/hook/send-message"):
        assert body["event"] == "send.message" and body["instance"] == sender
        assert body["data"]["key"]["fromMe"] is True
        assert body["sender"] == f"{phone(980)}@s.whatsapp.net"
    receipts = bodies(outgoing, "/hook/messages-update")
    assert {b["data"]["keyId"] for b in receipts} <= set(accepted)
    handled: list[Any] = []
    processor = WebhookProcessor()
    processor.register_handler("messages.upsert", handled.append)
    for body in bodies(incoming, "/hook/messages-upsert"):
        assert processor.process_webhook(body)
        assert body["data"]["key"]["remoteJid"] == f"{phone(980)}@s.whatsapp.net"
    assert {m["message"]["conversation"] for m in handled} == set(accepted.values())

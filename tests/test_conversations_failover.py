"""Polls (and every conversation kind) keep the outbox guarantee of text sends (issue 15):
an agent killed with -9 while polls wait in its paced queue loses none of them — the
session moves, the next agent restores them from the outbox and sends each once, and
votes on them are named by the agent that sent them. Runs on the failover cluster of
tests/test_failover.py (its own nats-server, three sim agents, two control planes)."""

from __future__ import annotations

import asyncio

import httpx
import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from node_agent.engines.sim import vote
from node_agent.protocol import Event
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

SLOW = {"rate_per_s": 0.001, "burst": 1, "min_gap_per_recipient_s": 0, "jitter": 0}


async def test_queued_polls_survive_a_kill_9_of_their_agent(
    cluster: Cluster,  # noqa: F811  (the fixtures of tests/test_failover.py)
    api: httpx.AsyncClient,  # noqa: F811
    cnc: NATS,  # noqa: F811
) -> None:
    cluster.ensure_agents()
    sender, receiver = await create_connected(api, cnc, "cvpoll", 2, first_phone=970)
    sender_phone, receiver_phone = phone(970), phone(971)
    received: list[Event] = []
    votes: list[Event] = []

    async def on_event(msg: Msg) -> None:
        event = msgspec.json.decode(msg.data, type=Event)
        if event.session_id == receiver and event.type == "message.received":
            received.append(event)
        if event.session_id == sender and event.type == "message.poll_vote":
            votes.append(event)

    sub = await cnc.subscribe("zf.events.default.*.message.*", cb=on_event)
    try:
        settings = f"/v1/sessions/{sender}/settings"
        assert (await api.patch(settings, json={"pacing": SLOW})).status_code == 200
        url = f"/v1/sessions/{sender}/messages"
        warmup = await api.post(url, json={"type": "text", "to": receiver_phone, "text": "w"})
        assert warmup.status_code == 202  # takes the only token: the polls must wait
        names = [f"Q{i}?" for i in range(3)]
        for name in names:
            body = {"type": "poll", "to": receiver_phone, "name": name, "options": ["a", "b"]}
            accepted = await api.post(url, json=body, headers={"Idempotency-Key": name})
            assert accepted.status_code == 202, accepted.text
        before = (await views(api, [sender]))[sender]
        assert before["queue_depth"] == 3, before

        cluster.agents[before["node_id"]].kill()  # kill -9 with the polls queued
        await wait_all(
            api,
            [sender, receiver],
            lambda b: b["state"] == "CONNECTED" and b["node_id"] != before["node_id"],
            timeout_s=FAILOVER_BOUND_S + 10,
        )
        assert (await api.patch(settings, json={"pacing": {"enabled": False}})).status_code == 200
        for _ in range(300):
            polls = [e for e in received if e.data["type"] == "poll"]
            if len(polls) >= 3:
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)  # a duplicate would arrive right behind
        polls = [e for e in received if e.data["type"] == "poll"]
        assert sorted(e.data["text"] for e in polls) == names  # each once, none lost
        assert all(e.data["from"] == sender_phone for e in polls)
        assert all(e.data["content"]["options"] == ["a", "b"] for e in polls)

        # the agent that sent them knows their options: a vote is named
        await vote(cnc, receiver_phone, sender_phone, polls[0].data["message_id"], ["b"])
        for _ in range(100):
            if votes:
                break
            await asyncio.sleep(0.1)
        assert votes and votes[0].data["options"] == ["b"]
        assert votes[0].data["poll"] == polls[0].data["text"]
        assert votes[0].data["from"] == receiver_phone
    finally:
        await sub.unsubscribe()
        for session_id in (sender, receiver):
            await api.delete(f"/v1/sessions/{session_id}")
        cluster.ensure_agents()

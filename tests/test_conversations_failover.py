"""Polls (and every conversation kind) keep the outbox guarantee of text sends (issue 15):
an agent killed with -9 while polls and an edit wait in its paced queue loses none of
them — the session moves, the next agent restores them from the outbox and sends each
once (the edit of a message the dead agent sent included: its target was resolved to
WhatsApp's id when accepted), and votes on them are named by the agent that sent them.
Runs on the failover cluster of tests/test_failover.py (its own nats-server, three sim
agents, two control planes)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import httpx
import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from contract.protocol import Event
from node_agent.engines.sim import vote
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


async def _until(predicate: Callable[[], bool], timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    for _ in range(int(timeout_s * 10)):
        if predicate() or time.monotonic() > deadline:
            return
        await asyncio.sleep(0.1)


async def _queue_edit_and_polls(
    client: httpx.AsyncClient, sender: str, to: str, names: list[str]
) -> None:
    """A text that leaves at once (it takes the only token), then an edit of it and
    polls, which wait behind the slow pacing."""
    url = f"/v1/sessions/{sender}/messages"
    warmup = await client.post(url, json={"type": "text", "to": to, "text": "w"})
    assert warmup.status_code == 202
    for _ in range(100):
        if (await views(client, [sender]))[sender]["queue_depth"] == 0:
            break
        await asyncio.sleep(0.1)
    edit = {"type": "edit", "to": to, "message_id": warmup.json()["message_id"], "text": "w2"}
    assert (await client.post(url, json=edit)).status_code == 202
    for name in names:
        body = {"type": "poll", "to": to, "name": name, "options": ["a", "b"]}
        accepted = await client.post(url, json=body, headers={"Idempotency-Key": name})
        assert accepted.status_code == 202, accepted.text


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
    edited: list[Event] = []

    async def on_event(msg: Msg) -> None:
        event = msgspec.json.decode(msg.data, type=Event)
        if event.session_id == receiver and event.type == "message.received":
            received.append(event)
        if event.session_id == sender and event.type == "message.poll_vote":
            votes.append(event)
        if event.session_id == receiver and event.type == "message.edited":
            edited.append(event)

    sub = await cnc.subscribe("zf.events.default.*.message.*", cb=on_event)
    try:
        settings = f"/v1/sessions/{sender}/settings"
        assert (await api.patch(settings, json={"pacing": SLOW})).status_code == 200
        names = [f"Q{i}?" for i in range(3)]
        await _queue_edit_and_polls(api, sender, receiver_phone, names)
        before = (await views(api, [sender]))[sender]
        assert before["queue_depth"] == 4, before  # the edit and the polls wait

        cluster.agents[before["node_id"]].kill()  # kill -9 with the polls queued
        await wait_all(
            api,
            [sender, receiver],
            lambda b: b["state"] == "CONNECTED" and b["node_id"] != before["node_id"],
            timeout_s=FAILOVER_BOUND_S + 10,
        )
        assert (await api.patch(settings, json={"pacing": {"enabled": False}})).status_code == 200
        await _until(lambda: sum(e.data["type"] == "poll" for e in received) >= 3)
        await asyncio.sleep(0.5)  # a duplicate would arrive right behind
        polls = [e for e in received if e.data["type"] == "poll"]
        assert sorted(e.data["text"] for e in polls) == names  # each once, none lost
        assert all(e.data["from"] == sender_phone for e in polls)
        assert all(e.data["content"]["options"] == ["a", "b"] for e in polls)

        # the edit of a message the dead agent sent went out from the new one
        warm = next(e for e in received if e.data.get("text") == "w")
        await _until(lambda: bool(edited))
        assert [(e.data["message_id"], e.data["text"]) for e in edited] == [
            (warm.data["message_id"], "w2")
        ]

        # the agent that sent them knows their options: a vote is named
        await vote(cnc, receiver_phone, sender_phone, polls[0].data["message_id"], ["b"])
        await _until(lambda: bool(votes))
        assert votes and votes[0].data["options"] == ["b"]
        assert votes[0].data["poll"] == polls[0].data["text"]
        assert votes[0].data["from"] == receiver_phone
    finally:
        await sub.unsubscribe()
        for session_id in (sender, receiver):
            await api.delete(f"/v1/sessions/{session_id}")
        cluster.ensure_agents()

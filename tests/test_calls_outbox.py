"""Call auto-replies keep the outbox guarantee of sends (issue 16): the text a session
answers a rejected call with is an ordinary send — accepted into the outbox, queued,
paced — so an agent killed with -9 while replies still wait in the queue loses none of
them: its successor re-queues them from the outbox and sends them."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from nats.aio.client import Client as NATS

from contract.protocol import (
    CallSettings,
    ConfigureSession,
    Op,
    PacingSettings,
    SendAccepted,
    SendMessage,
    SessionInfo,
    TextContent,
)
from node_agent.engines.sim import call
from tests.agent_support import AgentClient, EventLog, phone, unique
from tests.conftest import ARTIFACTS, agent_env, spawn, stop_process
from tests.test_media_outbox import wait_agent


async def test_queued_call_replies_survive_a_kill_9_of_their_agent(
    nats_url: str, nc: NATS, tmp_path: Path
) -> None:
    node_id = unique("call-kill")
    env = agent_env(nats_url, node_id, tmp_path, ZAPFLEET_SIM_READ_AFTER_S="0.05")
    log_dir = ARTIFACTS / "logs"
    events = EventLog()
    await events.start(nc, "t")
    process = spawn(f"{node_id}-1", ["agent"], env, log_dir)
    try:
        agent = AgentClient(nc, node_id)
        await wait_agent(agent)
        alice, bob = unique("alice"), unique("bob")
        alice_phone, bob_phone = phone(), phone()
        # one message every 4 s: after the first, the replies wait in the queue
        slow = PacingSettings(rate_per_s=0.25, burst=1, min_gap_per_recipient_s=0, jitter=0)
        reply = CallSettings(reject=True, reply_text="I cannot take calls, please write")
        await agent.start(alice, pacing=slow)
        await agent.pair(alice, alice_phone)
        configure = ConfigureSession(session_id=alice, calls=reply)
        await agent.call(Op.SESSION_CONFIGURE, configure, SessionInfo)
        await agent.start(bob)
        await agent.pair(bob, bob_phone)
        first = SendMessage(
            session_id=alice, message_id=unique("m"), to=bob_phone, content=TextContent(text="hi")
        )
        await agent.call(Op.MESSAGE_SEND, first, SendAccepted)  # takes the only token
        call_ids = [(await call(nc, bob_phone, alice_phone))[0] for _ in range(3)]
        rejected = await events.wait_count(
            lambda e: e.type == "call.rejected" and e.data["call_id"] in call_ids, 3
        )
        replies = {e.data["reply_message_id"] for e in rejected}
        assert len(replies) == 3 and None not in replies
        assert all(e.data["error"] is None and e.data["from"] == bob_phone for e in rejected)
        queued = {
            e.data["message_id"]
            for e in events.events
            if e.type == "message.queued" and e.data["to"] == bob_phone
        }
        assert replies <= queued  # the ordinary send path: queued like any send
        sent_before = {e.data["message_id"] for e in events.events if e.type == "message.sent"}
        os.kill(process.pid, signal.SIGKILL)  # no goodbye: the queue dies with it
        process.wait(10)
        pending = replies - sent_before
        assert len(pending) >= 2, f"the kill came too late to prove anything: {sent_before}"

        process = spawn(f"{node_id}-2", ["agent"], env, log_dir)  # same node, new process
        sent = await events.wait_count(
            lambda e: e.type == "message.sent" and e.data["message_id"] in pending,
            len(pending),
            timeout_s=60,
        )
        engine_ids = {e.data["engine_message_id"] for e in sent}
        received = await events.wait_count(
            lambda e: (
                e.session_id == bob
                and e.type == "message.received"
                and e.data["message_id"] in engine_ids
            ),
            len(pending),
            timeout_s=30,
        )
        for event in received:
            assert event.data["text"] == "I cannot take calls, please write"
            assert event.data["from"] == alice_phone
    finally:
        await events.stop()
        stop_process(process)

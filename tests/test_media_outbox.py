"""Stickers and voice notes keep the outbox guarantee of text sends (issue 15): an agent
killed with -9 while converted media sends are still queued loses none of them — its
successor (same node, new process) re-queues them from the outbox and sends them, still
converted: a voice note keeps its duration and waveform across the restart."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

from nats.aio.client import Client as NATS

from contract.protocol import (
    AudioContent,
    Empty,
    Media,
    NodeInfo,
    Op,
    PacingSettings,
    SendAccepted,
    SendMessage,
    StickerContent,
)
from tests.agent_support import AgentClient, EventLog, phone, unique
from tests.conftest import ARTIFACTS, agent_env, spawn, stop_process
from tests.test_media_out import b64, png, wav


async def wait_agent(client: AgentClient, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            await client.call(Op.NODE_INFO, Empty(), NodeInfo)
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


async def test_queued_stickers_and_voice_notes_survive_a_kill_9_of_their_agent(
    nats_url: str, nc: NATS, tmp_path: Path
) -> None:
    node_id = unique("media-kill")
    env = agent_env(nats_url, node_id, tmp_path, ZAPFLEET_SIM_READ_AFTER_S="0.05")
    log_dir = ARTIFACTS / "logs"
    events = EventLog()
    await events.start(nc, "t")
    process = spawn(f"{node_id}-1", ["agent"], env, log_dir)
    try:
        agent = AgentClient(nc, node_id)
        await wait_agent(agent)
        alice, bob, bob_phone = unique("alice"), unique("bob"), phone()
        # one message every 4 s: after the first, the others wait in the queue
        slow = PacingSettings(rate_per_s=0.25, burst=1, min_gap_per_recipient_s=0, jitter=0)
        await agent.start(alice, pacing=slow)
        await agent.pair(alice, phone())
        await agent.start(bob)
        await agent.pair(bob, bob_phone)

        contents = [
            StickerContent(media=Media(base64=b64(png(300, 300)))),
            AudioContent(media=Media(base64=b64(wav(1.0)), mimetype="audio/wav"), voice_note=True),
            StickerContent(media=Media(base64=b64(png(100, 700)))),
            AudioContent(media=Media(base64=b64(wav(2.0)), mimetype="audio/wav"), voice_note=True),
        ]
        ids = []
        for content in contents:
            message = SendMessage(
                session_id=alice, message_id=unique("m"), to=bob_phone, content=content
            )
            accepted = await agent.call(Op.MESSAGE_SEND, message, SendAccepted)
            ids.append(accepted.message_id)
        sent_before = {
            e.data["message_id"]
            for e in events.events
            if e.type == "message.sent" and e.session_id == alice
        }
        os.kill(process.pid, signal.SIGKILL)  # no goodbye: the queue dies with it
        process.wait(10)
        pending = [i for i in ids if i not in sent_before]
        assert len(pending) >= 2, f"the kill came too late to prove anything: {sent_before}"

        process = spawn(f"{node_id}-2", ["agent"], env, log_dir)  # same node, new process
        sent = await events.wait_count(
            lambda e: e.type == "message.sent" and e.data["message_id"] in pending,
            len(pending),
            timeout_s=60,
        )
        assert {e.data["message_id"] for e in sent} == set(pending)
        engine_ids = {e.data["engine_message_id"]: e.data["message_id"] for e in sent}
        received = await events.wait_count(
            lambda e: (
                e.session_id == bob
                and e.type == "message.received"
                and e.data["message_id"] in engine_ids
            ),
            len(pending),
            timeout_s=30,
        )
        kinds = {ids.index(engine_ids[e.data["message_id"]]): e.data for e in received}
        for index, data in kinds.items():
            media = data["content"]["media"]
            if index % 2 == 0:
                assert data["type"] == "sticker" and media["mimetype"] == "image/webp"
                assert (media["width"], media["height"]) == (512, 512)
            else:
                assert data["type"] == "audio" and data["content"]["voice_note"] is True
                assert media["mimetype"] == "audio/ogg; codecs=opus"
                assert abs(media["seconds"] - (1.0 if index == 1 else 2.0)) < 0.1
                assert len(media["waveform"]) == 64
    finally:
        await events.stop()
        stop_process(process)

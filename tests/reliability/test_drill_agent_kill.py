"""Drill: an agent is killed with SIGKILL while its sessions have accepted messages
waiting in their paced send queues, and comes back as systemd would bring it back.

Then: the agent resumes its sessions from KV (claimed again, no new QR), re-queues what was
accepted but not sent (node_agent/outbox.py), and every accepted message is sent — at
least once; a message whose send raced the kill may go twice (reported).
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable

from tests.reliability.conftest import FleetFactory
from tests.reliability.drills import Traffic, sent_message_ids, wait_all_sent
from tests.reliability.harness import NO_PACING, until

MESSAGES = 24
RESTART_AFTER_S = 1.0  # systemd's RestartSec of zapfleet-agent@.service
SLOW = {  # three a second: most messages are still queued when the agent dies
    "enabled": True,
    "rate_per_s": 3.0,
    "burst": 1,
    "min_gap_per_recipient_s": 0.0,
    "jitter": 0.0,
}


async def test_agent_kill_9_resumes_its_sessions_and_sends_every_accepted_message(
    new_fleet: FleetFactory, report: Callable[..., None]
) -> None:
    fleet = new_fleet("agent-kill")
    await fleet.start()
    nc = await fleet.nats_client()
    traffic = Traffic()
    async with fleet.admin() as api:
        alice = await fleet.connected_session(api, nc, "alice", "15550600001", pacing=SLOW)
        await fleet.connected_session(api, nc, "bob", "15550600002", pacing=NO_PACING)
        calls = await asyncio.gather(
            *(
                traffic.call(
                    api,
                    "send",
                    "POST",
                    "/v1/sessions/alice/messages",
                    json={"type": "text", "to": "+15550600002", "text": f"k{n}"},
                )
                for n in range(MESSAGES)
            )
        )
        assert all(call.status == 202 for call in calls), traffic.outcomes()
        accepted = traffic.accepted_ids()
        sent_before = 0

        async def some_sent() -> bool:
            nonlocal sent_before
            sent_before = len(await sent_message_ids(nc, "default", "alice", idle_s=0.1))
            return sent_before >= 2

        await until(some_sent, 30, "the first messages sent")
        killed_at = time.monotonic()
        fleet.kill_agent("a1", signal.SIGKILL)
        await asyncio.sleep(RESTART_AFTER_S)
        fleet.start_agent("a1")
        await fleet.wait_agent_ready("a1")
        ready_s = time.monotonic() - killed_at
        resumed = await fleet.wait_state(api, "alice", "CONNECTED", timeout_s=30)
        connected_s = time.monotonic() - killed_at

    assert sent_before < MESSAGES, "nothing was left in the queue to lose"
    # resumed on its node, claimed anew (epoch + 1, docs/failover.md), without a new QR
    assert resumed["node_id"] == alice["node_id"] and resumed["epoch"] == alice["epoch"] + 1
    assert resumed["phone"] == alice["phone"]
    _, counts = await wait_all_sent(nc, "default", "alice", accepted, timeout_s=60)
    await nc.close()
    all_sent_s = time.monotonic() - killed_at
    duplicates = sum(counts[m] - 1 for m in accepted)
    requeued = fleet.agent_log("a1").read_text().count("re-queued accepted messages")
    assert duplicates <= 1, counts  # at most the one whose send raced the kill
    assert requeued >= 1
    report(
        "agent_kill_9",
        messages=MESSAGES,
        sent_before_kill=sent_before,
        requeued_after_restart=MESSAGES - sent_before,
        lost=0,
        duplicates=duplicates,
        restart_after_s=RESTART_AFTER_S,
        agent_ready_s=round(ready_s, 2),
        session_connected_s=round(connected_s, 2),
        all_sent_s=round(all_sent_s, 2),
    )

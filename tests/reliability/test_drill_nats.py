"""Drill: nats-server is killed (-9) during a stream of sends and restarted (same port,
same JetStream store), as systemd would.

The client is an ordinary careful one: each message carries an Idempotency-Key and is
retried (same key, same body) until accepted. Then: every accepted message is sent —
one ``message.sent`` event per message id in the stream, no loss, no duplicate — and
every part (control plane, agent, sessions) is back on its own.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from tests.reliability.conftest import FleetFactory
from tests.reliability.drills import Traffic, wait_all_sent
from tests.reliability.harness import NO_PACING, until

OUTAGE_S = 3.0  # below the node lease (10 s): the agent keeps its sessions
MESSAGES = 160
SENDERS = 4  # concurrent clients, each with its own messages


async def test_nats_restart_during_sends_loses_nothing_and_recovers_alone(
    new_fleet: FleetFactory, report: Callable[..., None]
) -> None:
    fleet = new_fleet("nats-drill")
    await fleet.start()
    nc = await fleet.nats_client()
    traffic = Traffic()
    accepted_at: dict[int, float] = {}
    async with fleet.admin(timeout=5) as api:
        await fleet.connected_session(api, nc, "alice", "15550800001", pacing=NO_PACING)
        await fleet.connected_session(api, nc, "bob", "15550800002", pacing=NO_PACING)

        async def sender(first: int) -> None:
            for n in range(first, MESSAGES, SENDERS):
                body = {"type": "text", "to": "+15550800002", "text": f"n{n}"}
                while True:  # a careful client: same key, same body, until accepted
                    call = await traffic.call(
                        api,
                        "send",
                        "POST",
                        "/v1/sessions/alice/messages",
                        json=body,
                        headers={"Idempotency-Key": f"nats-drill-{n}"},
                    )
                    if call.status == 202:
                        accepted_at[n] = call.at
                        break
                    assert call.status in (0, 409, 429, 503), call
                    await asyncio.sleep(0.1)
                await asyncio.sleep(0.02)

        task = asyncio.gather(*(sender(k) for k in range(SENDERS)))
        await until(lambda: len(accepted_at) >= 30, 30, "30 messages accepted before the outage")
        down_at = time.monotonic()
        await asyncio.to_thread(fleet.kill_nats)
        await asyncio.sleep(OUTAGE_S)
        await asyncio.to_thread(fleet.start_nats)
        up_at = time.monotonic()
        accepting_s = await until(
            lambda: any(at > up_at for at in accepted_at.values()), 60, "sends accepted again"
        )
        await asyncio.wait_for(task, 120)

        async def connected_again() -> bool:
            response = await api.get("/v1/sessions/alice")
            return response.status_code == 200 and response.json()["state"] == "CONNECTED"

        await until(connected_again, 60, "alice CONNECTED again")
        ready = (await api.get("/monitoring/ready")).json()

    accepted = traffic.accepted_ids()
    assert len(accepted) == MESSAGES  # one id per message, whatever the retries
    wait_s, counts = await wait_all_sent(nc, "default", "alice", accepted, timeout_s=60)
    duplicates = {m: c for m, c in counts.items() if c > 1}
    await nc.close()
    assert not duplicates, duplicates
    assert ready["status"] == "ok", ready
    refused = traffic.outcomes("send")
    report(
        "nats_restart",
        outage_s=round(up_at - down_at, 2),
        messages=MESSAGES,
        accepted=len(accepted),
        lost=0,
        duplicates=0,
        answers=refused,
        slowest_answer_s=round(max(c.took for c in traffic.calls), 2),
        accepting_again_s=round(accepting_s, 2),
        all_sent_within_s=round(wait_s, 2),
    )

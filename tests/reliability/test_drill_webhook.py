"""Drill: a session's webhook receiver is down (connection refused) while the session
sends and receives messages, then comes back.

Every event the session produced — before, during and after the outage — reaches the
receiver by the dispatcher's retries alone: no dead letter, no redrive, no human. The
outage lasts two minutes, as the issue asks (``ZAPFLEET_DRILL_WEBHOOK_DOWN_S`` changes
it). The attempts stay at their default (10); backoff is capped at 30 s instead of 60 s,
so the retries still span 151 s (more than the outage) and the return is noticed within
half a minute.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable

from tests.conftest import WebhookReceiver
from tests.reliability.conftest import FleetFactory
from tests.reliability.drills import stream_events
from tests.reliability.harness import NO_PACING, until

DOWN_S = float(os.environ.get("ZAPFLEET_DRILL_WEBHOOK_DOWN_S", "120"))


async def test_webhook_receiver_down_then_back_gets_every_event(
    new_fleet: FleetFactory, report: Callable[..., None]
) -> None:
    receiver = WebhookReceiver()
    url = receiver.url
    fleet = new_fleet("webhook-drill", ZAPFLEET_WEBHOOK_BACKOFF_MAX_S="30")
    await fleet.start()
    nc = await fleet.nats_client()
    spec = {"pacing": NO_PACING, "webhook_url": url}
    try:
        async with fleet.admin() as api:
            await fleet.connected_session(api, nc, "alice", "15550500001", **spec)
            await fleet.connected_session(api, nc, "bob", "15550500002", **spec)

            async def send(n: int) -> None:
                response = await api.post(
                    "/v1/sessions/alice/messages",
                    json={"type": "text", "to": "+15550500002", "text": f"w{n}"},
                )
                assert response.status_code == 202, response.text

            # the dispatcher's consumer starts with the control plane and takes events
            # from its creation on: the drill counts what happens once deliveries flow
            await send(0)
            await until(lambda: len(receiver.events) > 0, 30, "first webhook delivered")
            since = time.time()
            for n in range(1, 5):
                await send(n)
            before = list(receiver.events)
            # down: new connections refused and requests on kept-alive ones dropped
            receiver.go_down()
            down_at = time.monotonic()
            sent = 5
            while time.monotonic() - down_at < DOWN_S:
                await send(sent)
                sent += 1
                await asyncio.sleep(max(0.2, DOWN_S / 40))
            receiver.come_up()  # back, same address
            up_at = time.monotonic()
            for n in range(sent, sent + 5):
                await send(n)

            wanted = {
                e.id
                for e in await stream_events(nc, "zf.events.default.*.>", idle_s=0.5)
                if e.session_id in ("alice", "bob") and e.ts >= since
            }
            delivered: set[str] = {str(e.get("id")) for e in before}

            def all_delivered() -> bool:
                delivered.update(str(e.get("id")) for e in receiver.events)
                return wanted <= delivered

            await until(all_delivered, 60, "every event delivered after the outage")
            recovery_s = time.monotonic() - up_at
            dead = await api.get("/v1/webhooks/dead-letters")
            assert dead.status_code == 200, dead.text
            dead_letters = len(dead.json()["dead_letters"])
    finally:
        receiver.close()
        await nc.close()
    per_event: dict[str, int] = {}
    for event in receiver.events:  # every delivery, before the outage too
        per_event[str(event.get("id"))] = per_event.get(str(event.get("id")), 0) + 1
    report(
        "webhook_receiver_down",
        down_s=round(up_at - down_at, 1),
        events=len(wanted),
        delivered=len(wanted & delivered),
        lost=len(wanted - delivered),
        dead_letters=dead_letters,
        delivered_twice=sum(1 for c in per_event.values() if c > 1),
        recovery_s=round(recovery_s, 2),
    )
    assert dead_letters == 0, f"{dead_letters} events were dead-lettered"

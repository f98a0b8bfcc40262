"""Drill: valkey-server is killed (-9) in the middle of API traffic and comes back empty.

The chosen behaviour (control_plane/valkey_guard.py, docs/security.md): the API keeps
serving; caches are bypassed, rate limits move into each worker's memory, sends with an
Idempotency-Key answer 503 + Retry-After until Valkey is back; nothing accepted is lost,
and the API recovers on its own when Valkey returns.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import httpx

from tests.conftest import ADMIN_KEY, spawn, stop_process
from tests.reliability.conftest import FleetFactory
from tests.reliability.drills import Traffic, sent_message_ids, wait_all_sent
from tests.reliability.harness import NO_PACING, until
from zapfleet.devservers import free_port

OUTAGE_S = 3.0
BEFORE_S = 1.5


async def test_valkey_restart_during_api_traffic_loses_nothing_and_recovers_alone(  # noqa: PLR0915
    new_fleet: FleetFactory, report: Callable[..., None]
) -> None:
    fleet = new_fleet("valkey-drill")
    await fleet.start()
    nc = await fleet.nats_client()
    traffic = Traffic()
    async with fleet.admin() as api:
        await fleet.connected_session(api, nc, "alice", "15550900001", pacing=NO_PACING)
        await fleet.connected_session(api, nc, "bob", "15550900002", pacing=NO_PACING)
        # an idempotent send before the outage, to be retried after it
        before = await traffic.call(
            api,
            "idem",
            "POST",
            "/v1/sessions/alice/messages",
            json={"type": "text", "to": "+15550900002", "text": "once"},
            headers={"Idempotency-Key": "drill-once"},
        )
        assert before.status == 202

        stop = asyncio.Event()
        counter = 0

        async def load() -> None:
            nonlocal counter
            while not stop.is_set():
                counter += 1
                text = {"type": "text", "to": "+15550900002", "text": f"m{counter}"}
                await traffic.call(api, "send", "POST", "/v1/sessions/alice/messages", json=text)
                await traffic.call(
                    api,
                    "idem",
                    "POST",
                    "/v1/sessions/alice/messages",
                    json={**text, "text": f"i{counter}"},
                    headers={"Idempotency-Key": f"drill-{counter}"},
                )
                await traffic.call(api, "status", "GET", "/v1/sessions/bob/status")
                await traffic.call(api, "read", "GET", "/v1/sessions/alice")
                await asyncio.sleep(0.02)

        loader = asyncio.create_task(load())
        await asyncio.sleep(BEFORE_S)
        down_at = time.monotonic()
        await asyncio.to_thread(fleet.kill_valkey)
        await asyncio.sleep(OUTAGE_S / 2)
        ready_during = (await api.get("/monitoring/ready")).json()
        await asyncio.sleep(OUTAGE_S / 2)
        await asyncio.to_thread(fleet.start_valkey)
        up_at = time.monotonic()

        def idempotent_again() -> bool:
            return any(c.status == 202 for c in traffic.of("idem", since=up_at))

        def cache_hits_again() -> bool:
            return any(c.headers.get("x-cache") == "hit" for c in traffic.of("status", up_at))

        recovery_s = await until(idempotent_again, 15, "idempotent sends accepted again")
        cache_s = await until(cache_hits_again, 15, "status served from the cache again")
        await asyncio.sleep(0.5)
        stop.set()
        await loader

        # the key used before the outage: Valkey lost it, the message id is the same,
        # the agent dedupes — it is sent once
        retried = await traffic.call(
            api,
            "retry",
            "POST",
            "/v1/sessions/alice/messages",
            json={"type": "text", "to": "+15550900002", "text": "once"},
            headers={"Idempotency-Key": "drill-once"},
        )
        ready_after = (await api.get("/monitoring/ready")).json()

    assert retried.status == 202 and retried.message_id == before.message_id
    # nothing but the documented 503 during the outage; sends without a key never failed
    # calls answered while Valkey was down or just back (a call may start before the kill)
    during = [c for c in traffic.calls if down_at <= c.at + c.took and c.at < up_at + 2]
    assert traffic.outcomes("send") == {"202": len(traffic.of("send"))}, traffic.outcomes()
    assert traffic.outcomes("read") == {"200": len(traffic.of("read"))}
    assert traffic.outcomes("status") == {"200": len(traffic.of("status"))}
    for call in traffic.calls:
        if call.status >= 500 or call.status == 0:
            assert (call.status, call.problem) == (503, "idempotency_unavailable"), call
            assert call.headers.get("retry-after") == "1"
            assert call in during
    refused = [c for c in traffic.of("idem") if c.status == 503]
    assert refused, "the outage was not seen by the API"
    # rate limits were enforced all along (locally during the outage)
    assert all("ratelimit-limit" in c.headers for c in traffic.of("send"))
    assert ready_during["status"] == "degraded" and ready_during["checks"]["nats"] == "ok"
    assert ready_after == {"status": "ok", "checks": {"nats": "ok", "valkey": "ok"}}

    # nothing accepted is lost: every 202 is in the stream as sent, exactly once
    accepted = traffic.accepted_ids()
    wait_s, counts = await wait_all_sent(nc, "default", "alice", accepted, timeout_s=30)
    assert all(counts[m] == 1 for m in accepted), {m: counts[m] for m in accepted if counts[m] > 1}
    assert (await sent_message_ids(nc, "default", "alice"))[before.message_id or ""] == 1
    await nc.close()

    log = fleet.control_plane_log.read_text()
    assert log.count("valkey unreachable: serving in degraded mode") >= 1
    assert "valkey reachable again" in log
    report(
        "valkey_restart",
        outage_s=round(up_at - down_at, 2),
        requests=len(traffic.calls),
        requests_during_outage=len(during),
        outcomes=traffic.outcomes(since=down_at),
        accepted=len(accepted),
        lost=0,
        recovery_s=round(recovery_s, 2),
        cache_hits_again_s=round(cache_s, 2),
        all_sent_within_s=round(wait_s, 2),
    )


async def test_rate_limits_hold_while_valkey_is_down(new_fleet: FleetFactory) -> None:
    """A tight limit refuses the request past its quota with Valkey up and with it down
    (in-process GCRA), and Valkey's quotas apply again when it is back."""
    fleet = new_fleet("valkey-limits")
    fleet.start_nats()
    fleet.start_valkey()
    port = free_port()
    process = spawn(
        "control-plane-tight",
        ["control-plane"],
        {
            "ZAPFLEET_NATS_URL": fleet.nats_url,
            "ZAPFLEET_VALKEY_URL": fleet.valkey_url,
            "ZAPFLEET_ADMIN_KEY": ADMIN_KEY,
            "ZAPFLEET_HTTP_PORT": str(port),
            "ZAPFLEET_RATE_QUERIES": "5/60",
        },
        fleet.log_dir,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(base_url=base, headers=fleet.admin_headers, timeout=10) as api:

            async def up() -> bool:
                try:
                    return (await api.get("/monitoring/ready")).status_code == 200
                except httpx.HTTPError:
                    return False

            await until(up, 60, "tight control plane ready", interval_s=0.2)

            async def quota() -> list[int]:
                return [(await api.get("/v1/nodes")).status_code for _ in range(6)]

            with_valkey = await quota()
            fleet.kill_valkey()
            without_valkey = await quota()
            last: Any = await api.get("/v1/nodes")
            fleet.start_valkey()
            await asyncio.sleep(1.2)  # past the probe interval
            back = await quota()
    finally:
        stop_process(process)
    assert with_valkey == [200] * 5 + [429]
    assert without_valkey == [200] * 5 + [429]
    assert last.status_code == 429 and int(last.headers["retry-after"]) >= 1
    assert back == [200] * 5 + [429]  # Valkey restarted empty: a fresh quota

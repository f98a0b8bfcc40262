"""The sim's keepalive is one loop per engine (issue 17), and still does what a keepalive
per socket did (node_agent/engines/sim_presence.py):

- every online socket's probe goes out every ``keepalive_s``, counted on the wire with a
  real subscription on ``zf.sim.presence.<phone>``;
- nothing goes out while the agent's lease is gone (``may_act`` false), and the loop
  ends with the last socket;
- a socket that was frozen (no lease: it neither answered the other socket's probe nor
  probed) while another socket of its account went online is caught by the first
  keepalive round after it wakes up: the violation is counted and the older socket
  kicked.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import nats
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from contract.protocol import SessionSpec
from node_agent.engines._base import Disconnected, EngineEvent
from node_agent.engines.sim import SIM_BUCKET, SimConfig, SimEngine, SimSession, seed_account
from node_agent.engines.sim_presence import presence_subject, violations
from tests.agent_support import phone, unique

KEEPALIVE_S = 0.2


async def _online(engine: SimEngine, count: int) -> tuple[list[str], list[SimSession]]:
    """``count`` linked sessions connected on ``engine``; their phones and sessions."""
    phones: list[str] = []
    sessions: list[SimSession] = []
    for _ in range(count):
        key, number = unique("ka"), phone()
        await seed_account(engine.nc, key, number)
        session = engine.open_session(
            SessionSpec(session_id=key, tenant="default", engine="sim"), lambda _: None
        )
        await session.connect()
        phones.append(number)
        sessions.append(session)
    deadline = time.monotonic() + 10
    while not all([await s.ping() for s in sessions]):
        assert time.monotonic() < deadline, "sessions never went online"
        await asyncio.sleep(0.05)
    return phones, sessions


async def test_one_loop_probes_every_online_socket_each_period_and_none_without_the_lease(
    nats_url: str, nc: NATS
) -> None:
    engine = SimEngine(nc, SimConfig(keepalive_s=KEEPALIVE_S, connect_latency_s=0))
    await engine.start()
    lease = {"valid": True}
    engine.set_lease_guard(lambda: lease["valid"])
    phones, sessions = await _online(engine, 5)
    seen: Counter[str] = Counter()

    async def count(msg: Msg) -> None:
        seen[msg.subject.removeprefix("zf.sim.presence.")] += 1

    watcher = await nats.connect(nats_url)
    try:
        subs = [await watcher.subscribe(presence_subject(p), cb=count) for p in phones]
        await watcher.flush()
        await asyncio.sleep(KEEPALIVE_S * 5 + 0.1)
        # every socket, about once a period (5 periods; generous for a loaded machine)
        assert set(seen) == set(phones), seen
        assert all(2 <= n <= 7 for n in seen.values()), seen

        lease["valid"] = False  # fenced: not a word to the network
        await asyncio.sleep(KEEPALIVE_S * 1.5)
        seen.clear()
        await asyncio.sleep(KEEPALIVE_S * 4)
        assert not seen, seen

        lease["valid"] = True
        for session in sessions:
            await session.disconnect()
        await asyncio.sleep(KEEPALIVE_S * 2)
        assert engine.keepalive._task is None, "the loop outlived the last socket"
        seen.clear()
        await asyncio.sleep(KEEPALIVE_S * 3)
        assert not seen, seen
        for sub in subs:
            await sub.unsubscribe()
    finally:
        await watcher.close()
        await engine.close()


async def test_a_socket_frozen_while_its_account_went_online_elsewhere_is_caught_by_keepalive(
    nats_url: str, nc: NATS
) -> None:
    other = await nats.connect(nats_url)
    config = SimConfig(keepalive_s=KEEPALIVE_S, connect_latency_s=0)
    frozen_engine, live_engine = SimEngine(nc, config), SimEngine(other, config)
    try:
        await frozen_engine.start()
        await live_engine.start()
        frozen_lease = {"valid": True}
        frozen_engine.set_lease_guard(lambda: frozen_lease["valid"])
        key, number = unique("frozen"), phone()
        await seed_account(nc, key, number)
        spec = SessionSpec(session_id=key, tenant="default", engine="sim")
        frozen_events: list[EngineEvent] = []
        frozen = frozen_engine.open_session(spec, frozen_events.append)
        live = live_engine.open_session(spec, lambda _: None)
        kv = await nc.jetstream().key_value(SIM_BUCKET)
        before = await violations(kv)

        await frozen.connect()
        deadline = time.monotonic() + 10
        while not await frozen.ping():
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        frozen_lease["valid"] = False  # frozen: it neither answers nor probes
        await live.connect()  # its probe before going online finds nobody
        while not await live.ping():
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        await asyncio.sleep(KEEPALIVE_S * 3)
        assert await violations(kv) == before, "a frozen socket answered"

        frozen_lease["valid"] = True  # it wakes up without having been fenced (a bug)
        while await violations(kv) == before:
            assert time.monotonic() < deadline + 10, "no keepalive saw the two sockets"
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.2)
        # counted (by one side's round, or by both if their rounds cross), older one kicked
        assert await violations(kv) >= before + 1
        assert await live.ping() and not await frozen.ping()  # the older one was kicked
        assert any(
            isinstance(e, Disconnected) and "stream replaced" in e.reason for e in frozen_events
        )
        await live.disconnect()
        await frozen.disconnect()
    finally:
        await frozen_engine.close()
        await live_engine.close()
        await other.close()

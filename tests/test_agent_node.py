"""The node as a whole: heartbeats on ``zf.nodes.<id>.heartbeat`` and in KV ``zf_nodes``,
the micro service it announces, and the backoff law of its supervisors."""

from __future__ import annotations

import asyncio
import itertools
import random
import statistics
import time
from pathlib import Path

import msgspec
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.errors import KeyNotFoundError

from contract.protocol import NODES_BUCKET, SERVICE_NAME, NodeInfo, SessionSpec
from node_agent.supervisor import SessionSupervisor, SupervisorConfig
from tests.agent_support import AgentClient, phone, running_agent, sim_settings, unique
from zapfleet import __version__


async def test_heartbeats_tell_placement_what_it_needs_and_vanish_with_the_node(
    nats_url: str, nc: NATS, tmp_path: Path
) -> None:
    settings = sim_settings(
        nats_url, tmp_path, heartbeat_interval_s=0.2, max_sessions=40, labels={"region": "eu"}
    )
    beats: list[NodeInfo] = []

    async def on_beat(msg: Msg) -> None:
        beats.append(msgspec.json.decode(msg.data, type=NodeInfo))

    sub = await nc.subscribe(f"zf.nodes.{settings.node_id}.heartbeat", cb=on_beat)
    async with running_agent(settings):
        kv = await nc.jetstream().key_value(NODES_BUCKET)
        client = AgentClient(nc, settings.node_id)
        session = unique("beat")
        await client.start(session)
        await client.pair(session, phone())
        await asyncio.sleep(0.7)
        assert len(beats) >= 3
        latest = msgspec.json.decode((await kv.get(settings.node_id)).value or b"", type=NodeInfo)
        for info in (beats[-1], latest):
            assert info.node_id == settings.node_id
            assert info.version == __version__
            assert (info.capacity, info.sessions) == (40, 1)
            assert info.by_state == {"CONNECTED": 1}
            assert info.labels == {"region": "eu"}
            assert info.memory_limit_bytes > info.rss_bytes > 0
            assert info.open_fds > 0 and info.loop_lag_ms >= 0
            assert not info.draining
            assert info.ts == pytest.approx(time.time(), abs=2)
        intervals = [b.ts - a.ts for a, b in itertools.pairwise(beats)]
        assert statistics.median(intervals) == pytest.approx(0.2, abs=0.1)

        # the micro service is discoverable like any nats.micro service
        reply = await nc.request(f"$SRV.INFO.{SERVICE_NAME}", b"", timeout=2)
        assert SERVICE_NAME.encode() in reply.data
    await sub.unsubscribe()
    with pytest.raises(KeyNotFoundError):
        await kv.get(settings.node_id)  # an orderly stop deregisters at once


def test_backoff_is_full_jitter_above_the_base_under_a_doubling_ceiling() -> None:
    config = SupervisorConfig(backoff_base_s=2.0, backoff_max_s=300.0)

    class _Events:
        def emit(self, *args: object) -> None:
            return None

    supervisor = SessionSupervisor(
        SessionSpec(session_id="s", tenant="t", engine="sim"),
        1,
        "n",
        lambda spec, emit: None,  # type: ignore[arg-type,return-value]
        _Events(),  # type: ignore[arg-type]
        config,
    )
    random.seed(3)
    ceilings = []
    means = []
    for attempt in range(1, 11):
        delays = [supervisor.backoff_delay(attempt) for _ in range(3000)]
        ceiling = min(300.0, 2.0 * 2 ** (attempt - 1))
        assert min(delays) >= 2.0
        assert max(delays) <= ceiling
        assert max(delays) >= 2.0 + 0.95 * (ceiling - 2.0)  # the whole range is used
        ceilings.append(ceiling)
        means.append(statistics.mean(delays))
    assert ceilings[:5] == [2, 4, 8, 16, 32] and ceilings[-1] == 300
    assert means == sorted(means)  # on average every failure waits longer

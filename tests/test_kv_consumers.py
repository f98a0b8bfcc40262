"""Reading KV leaves nothing behind on the NATS server (issue 17).

nats-py reads a bucket through an ephemeral consumer that, once stopped, stays on the
server for its 5-minute inactivity threshold. Counted here on a real nats-server: every
one-pass read (``zapfleet._kv.scan``, the session and node listings, the outbox restore
of each started session, the agent's resume list) deletes its consumer when it is done,
so the consumer count of a bucket does not grow with the number of reads or sessions.
"""

from __future__ import annotations

from pathlib import Path

from nats.aio.client import Client as NATS
from nats.js.api import KeyValueConfig

from contract.protocol import SESSIONS_BUCKET
from control_plane.store import SessionStore
from node_agent.lease import assigned_to
from node_agent.outbox import OUTBOX_BUCKET
from tests.agent_support import AgentClient, running_agent, sim_settings, unique
from zapfleet._kv import scan


async def _consumers(nc: NATS, bucket: str) -> int:
    info = await nc.jetstream().stream_info(f"KV_{bucket}")
    return info.state.consumer_count


async def test_a_scan_returns_the_current_values_and_deletes_its_consumer(nc: NATS) -> None:
    bucket = unique("scan").replace("-", "_")
    kv = await nc.jetstream().create_key_value(KeyValueConfig(bucket=bucket, history=3))
    for i in range(10):
        await kv.put(f"k.{i}", b"old")
        await kv.put(f"k.{i}", f"v{i}".encode())
    await kv.delete("k.3")
    await kv.put("other", b"x")

    for _ in range(30):
        found = {e.key: e.value for e in await scan(kv, "k.*")}
        assert found == {f"k.{i}": f"v{i}".encode() for i in range(10) if i != 3}
    assert await scan(kv, "nothing.*") == []
    assert await _consumers(nc, bucket) == 0


async def test_listings_and_resume_lists_leave_no_consumer(
    nats_url: str, nc: NATS, tmp_path: Path
) -> None:
    async with running_agent(sim_settings(nats_url, tmp_path)):  # the buckets exist
        kv = await nc.jetstream().key_value(SESSIONS_BUCKET)
        client = AgentClient(nc, "nowhere")
        for _ in range(5):
            await client.assign(unique("listed"), node_id="nowhere")
        before = await _consumers(nc, SESSIONS_BUCKET)
        store = SessionStore(kv)
        for _ in range(20):
            assert len(await store.list()) >= 5
            assert len(await assigned_to(kv, "nowhere")) >= 5
        assert await _consumers(nc, SESSIONS_BUCKET) == before


async def test_starting_sessions_leaves_no_outbox_consumer_per_session(
    nats_url: str, nc: NATS, tmp_path: Path
) -> None:
    """Each start restores the session's outbox; before issue 17 each restore left one
    consumer on ``KV_zf_outbox`` for 5 minutes: a failover of 500 sessions left 500."""
    settings = sim_settings(nats_url, tmp_path)
    async with running_agent(settings):
        client = AgentClient(nc, settings.node_id)
        before = await _consumers(nc, OUTBOX_BUCKET)
        ids = [unique("restored") for _ in range(25)]
        for session_id in ids:
            await client.start(session_id)
        for session_id in ids:
            await client.wait_state(session_id, "PAIRING")
        assert await _consumers(nc, OUTBOX_BUCKET) <= before + 1

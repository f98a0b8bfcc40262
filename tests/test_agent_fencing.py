"""Fencing on the agent: KV ``zf_sessions`` says which node runs a session at which epoch,
and the agent's assignment watch stops a session the moment a *newer* record takes it
away — but never because an *older* view of the record arrives late (issue 21).

A KV watch lags behind the direct read the agent makes when it starts a session, so the
record as it was before the placement (no assignment yet) can reach the watch after the
start. These tests deliver real KV entries to the agent's watch out of order.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from nats.aio.client import Client as NATS
from nats.js.kv import KeyValue

from contract.protocol import (
    SESSIONS_BUCKET,
    Assignment,
    Op,
    PacingSettings,
    SessionInfo,
    SessionRecord,
    SessionSpec,
    StartSession,
    encode,
)
from node_agent.agent import Agent
from tests.agent_support import AgentClient, phone, running_agent, sim_settings, unique


async def _deliver(agent: Agent, kv: KeyValue, session_id: str, revision: int) -> None:
    """Hand the watch the entry of ``session_id`` at ``revision``, as a late watch would."""
    entry = await kv.get(session_id, revision=revision)
    assert agent._assignments is not None
    await agent._assignments.observe(session_id, entry.value, entry.operation, revision)


async def _started_with_history(
    client: AgentClient, kv: KeyValue, session_id: str
) -> tuple[int, int]:
    """Write the record as a placement does (unassigned first, then assigned here) and
    start the session. Returns the two revisions."""
    spec = SessionSpec(
        session_id=session_id,
        tenant=client.tenant,
        engine="sim",
        pacing=PacingSettings(enabled=False),
    )
    unassigned = await kv.put(session_id, encode(SessionRecord(spec=spec)))
    assigned = await kv.put(
        session_id,
        encode(SessionRecord(spec=spec, assignment=Assignment(node_id=client.node_id, epoch=1))),
    )
    await client.call(Op.SESSION_START, StartSession(spec=spec, epoch=1), SessionInfo)
    return unassigned, assigned


async def test_an_older_view_of_the_assignment_arriving_late_never_stops_the_session(
    nats_url: str, nc: NATS, tmp_path: Path
) -> None:
    """The exact sequence of issue 21: STARTING, then "session unassigned" 20 ms later."""
    settings = sim_settings(nats_url, tmp_path)
    async with running_agent(settings) as agent:
        client = AgentClient(nc, settings.node_id)
        kv = await nc.jetstream().key_value(SESSIONS_BUCKET)
        session_id = unique("late")
        unassigned, assigned = await _started_with_history(client, kv, session_id)
        await client.pair(session_id, phone())

        await _deliver(agent, kv, session_id, unassigned)  # no assignment in it
        await _deliver(agent, kv, session_id, assigned)  # the one the start was checked on
        await asyncio.sleep(0.2)
        assert (await client.status(session_id)).state == "CONNECTED"
        assert session_id in agent.sessions


async def test_a_newer_record_still_stops_the_session_at_once(
    nats_url: str, nc: NATS, tmp_path: Path
) -> None:
    """Fencing stays as strict as before: moved elsewhere, a newer epoch here, deleted."""
    settings = sim_settings(nats_url, tmp_path)
    async with running_agent(settings) as agent:
        client = AgentClient(nc, settings.node_id)
        kv = await nc.jetstream().key_value(SESSIONS_BUCKET)
        moved, bumped, deleted = unique("moved"), unique("bumped"), unique("deleted")
        for session_id in (moved, bumped, deleted):
            await client.start(session_id)
            await client.wait_state(session_id, "PAIRING")

        spec = agent.sessions[moved].spec
        rev = await kv.put(
            moved, encode(SessionRecord(spec=spec, assignment=Assignment(node_id="x", epoch=2)))
        )
        await _deliver(agent, kv, moved, rev)
        assert moved not in agent.sessions

        spec = agent.sessions[bumped].spec
        here = Assignment(node_id=settings.node_id, epoch=2)
        rev = await kv.put(bumped, encode(SessionRecord(spec=spec, assignment=here)))
        await _deliver(agent, kv, bumped, rev)
        assert bumped not in agent.sessions

        await kv.delete(deleted)
        rev = (await nc.jetstream().stream_info(f"KV_{SESSIONS_BUCKET}")).state.last_seq
        assert agent._assignments is not None
        await agent._assignments.observe(deleted, None, "DEL", rev)
        assert deleted not in agent.sessions

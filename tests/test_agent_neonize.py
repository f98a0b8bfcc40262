"""The neonize engine offline, in real agent processes: every dial goes to a proxy port
where nothing listens, so it fails at once whether or not this machine can reach
WhatsApp. The state machine, stop/logout, the Prometheus endpoint, 150 clients in one
process, and SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import msgspec
import nats
import pytest
import pytest_asyncio
from nats.aio.client import Client as NATS
from nats.js.errors import ObjectNotFoundError

from contract.protocol import (
    DEVICE_STORE_BUCKET,
    SESSION_STATE_BUCKET,
    SESSIONS_BUCKET,
    Assignment,
    DestroySession,
    Empty,
    ErrorCode,
    NodeInfo,
    Op,
    PacingSettings,
    SessionInfo,
    SessionRecord,
    SessionRef,
    SessionSpec,
    StartSession,
    encode,
    new_uid,
)
from node_agent.device_store import device_path
from tests.agent_support import AgentClient, EventLog, unique
from tests.conftest import ARTIFACTS, agent_env, spawn, stop_process
from zapfleet.devservers import free_port


@dataclass
class NeonizeAgent:
    process: subprocess.Popen[bytes]
    node_id: str
    data_dir: Path
    metrics_port: int
    proxy: str  # a port where nothing listens: every dial is refused at once


def _spawn_agent(nats_url: str, root: Path, name: str, **env: str) -> NeonizeAgent:
    node_id = unique(name)
    metrics_port = free_port()
    environment = agent_env(
        nats_url,
        node_id,
        root,
        ZAPFLEET_ENGINE="neonize",
        ZAPFLEET_METRICS_PORT=str(metrics_port),
        ZAPFLEET_HEARTBEAT_INTERVAL_S="0.5",
        ZAPFLEET_START_STAGGER_S="0.01",
        **env,
    )
    process = spawn(name, ["agent"], environment, ARTIFACTS / "logs")
    return NeonizeAgent(process, node_id, root, metrics_port, f"http://127.0.0.1:{free_port()}")


async def _wait_ready(client: AgentClient, agent: NeonizeAgent, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if agent.process.poll() is not None:
            raise AssertionError(f"agent exited with {agent.process.returncode}")
        try:
            await client.call(Op.NODE_INFO, Empty(), NodeInfo)
            return
        except Exception:
            await asyncio.sleep(0.2)
    raise AssertionError("the neonize agent did not answer in time")


@pytest.fixture(scope="module")
def neonize_agent(
    nats_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[NeonizeAgent]:
    agent = _spawn_agent(
        nats_url,
        tmp_path_factory.mktemp("neonize"),
        "neonize-agent",
        ZAPFLEET_BACKOFF_BASE_S="0.1",
        ZAPFLEET_BACKOFF_MAX_S="1.6",
        ZAPFLEET_BREAKER_THRESHOLD="5",
        ZAPFLEET_BREAKER_COOLDOWN_S="120",
    )
    yield agent
    stop_process(agent.process)


@pytest_asyncio.fixture(loop_scope="session")
async def neonize(neonize_agent: NeonizeAgent, nc: NATS) -> AgentClient:
    client = AgentClient(nc, neonize_agent.node_id, timeout_s=15)
    await _wait_ready(client, neonize_agent)
    return client


@pytest.fixture
async def events(nc: NATS) -> AsyncIterator[EventLog]:
    log = EventLog()
    await log.start(nc, "t")
    yield log
    await log.stop()


async def test_a_failing_dial_backs_off_with_growing_ceilings_until_the_breaker_opens(
    neonize: AgentClient, neonize_agent: NeonizeAgent, events: EventLog
) -> None:
    session = unique("offline")
    started = await neonize.start(session, engine="neonize", proxy=neonize_agent.proxy)
    assert started.engine == "neonize"
    failed = await neonize.wait_state(session, "FAILED", timeout_s=30)
    assert failed.reconnect_attempts == 5
    assert failed.breaker_open_until is not None
    assert failed.breaker_open_until == pytest.approx(time.time() + 120, abs=10)
    assert "connection refused" in (failed.reason or "")

    # the RPC can see FAILED before its event has reached this subscriber: wait for it
    await events.wait_for(
        lambda e: (
            e.session_id == session
            and e.type == "session.status"
            and e.data.get("state") == "FAILED"
        )
    )
    statuses = events.of(session, "session.status")
    assert [e.data["state"] for e in statuses][:4] == [
        "STARTING",
        "DISCONNECTED",
        "RECONNECTING",
        "STARTING",
    ]
    retries = [e for e in statuses if e.data["state"] == "RECONNECTING"]
    assert [e.data["attempt"] for e in retries] == [1, 2, 3, 4]
    for event in retries:
        # full jitter above the base, under a ceiling that doubles with every attempt
        ceiling = min(1.6, 0.1 * 2 ** (event.data["attempt"] - 1))
        assert 0.1 <= event.data["retry_in_s"] <= ceiling + 1e-6
        assert "dial failed" in event.data["reason"]
        following = next(e for e in statuses if e.ts > event.ts and e.data["state"] == "STARTING")
        assert following.ts - event.ts >= event.data["retry_in_s"] - 0.02
    assert statuses[-1].data["state"] == "FAILED"

    reset = await neonize.call(
        Op.SESSION_RESET_BREAKER, SessionRef(session_id=session), SessionInfo
    )
    assert reset.breaker_open_until is None
    again = await events.wait_for(
        lambda e: (
            e.session_id == session
            and e.ts > statuses[-1].ts
            and e.data.get("state") == "RECONNECTING"
        )
    )
    assert again.data["attempt"] == 1  # the count starts over after a reset


async def test_stop_and_logout_are_clean(
    neonize: AgentClient, neonize_agent: NeonizeAgent, events: EventLog
) -> None:
    kept, dropped = unique("stopped"), unique("logged-out")
    for session in (kept, dropped):
        await neonize.start(session, engine="neonize", proxy=neonize_agent.proxy)
        await events.wait_for(
            lambda e, s=session: e.session_id == s and e.data.get("state") == "RECONNECTING"
        )
    stopped = await neonize.call(Op.SESSION_STOP, SessionRef(session_id=kept), SessionInfo)
    assert stopped.state == "STOPPED"
    logged_out = await neonize.call(Op.SESSION_LOGOUT, SessionRef(session_id=dropped), SessionInfo)
    assert logged_out.state == "LOGGED_OUT"
    await events.wait_for(lambda e: e.session_id == dropped and e.type == "session.logged_out")
    quiet_since = time.time()
    await asyncio.sleep(1.0)  # longer than any backoff here: nothing may come back to life
    assert not [e for e in events.events if e.ts > quiet_since and e.session_id in (kept, dropped)]
    for session in (kept, dropped):
        await neonize.expect_error(
            Op.SESSION_STATUS, SessionRef(session_id=session), ErrorCode.SESSION_NOT_FOUND
        )
    assert device_path(neonize_agent.data_dir, kept).exists()  # a stop keeps the pairing
    assert not device_path(neonize_agent.data_dir, dropped).exists()  # a logout forgets it
    assert neonize_agent.process.poll() is None


async def test_one_name_in_two_tenants_is_two_device_stores_and_destroy_removes_one(
    neonize: AgentClient, neonize_agent: NeonizeAgent, nc: NATS
) -> None:
    """Device stores are keyed by the internal id: two tenants' sessions of the same name
    run side by side on one node with a file and a backup each; ``session_destroy``
    deletes one session's file and backup and leaves the other alone (issue 13)."""
    name = unique("same")
    specs = [
        SessionSpec(
            session_id=name,
            tenant=tenant,
            uid=new_uid(),
            engine="neonize",
            proxy=neonize_agent.proxy,
            pacing=PacingSettings(enabled=False),
        )
        for tenant in ("tenant-a", "tenant-b")
    ]
    kv = await nc.jetstream().key_value(SESSIONS_BUCKET)
    for spec in specs:
        record = SessionRecord(
            spec=spec,
            assignment=Assignment(node_id=neonize.node_id, epoch=1),
            created_at=time.time(),
        )
        await kv.put(spec.key, encode(record))
        await neonize.call(Op.SESSION_START, StartSession(spec=spec, epoch=1), SessionInfo)
    for spec in specs:
        info = await neonize.call(Op.SESSION_STATUS, SessionRef(session_id=spec.key), SessionInfo)
        assert (info.tenant, info.session_id, info.key) == (spec.tenant, name, spec.key)
        stopped = await neonize.call(Op.SESSION_STOP, SessionRef(session_id=spec.key), SessionInfo)
        assert stopped.state == "STOPPED"
    store = await nc.jetstream().object_store(DEVICE_STORE_BUCKET)
    for spec in specs:
        assert device_path(neonize_agent.data_dir, spec.key).exists()
        assert (await store.get_info(spec.key)).name == spec.key  # backed up at the stop
    assert not device_path(neonize_agent.data_dir, name).exists()  # never by the name

    gone, kept = specs
    await neonize.call(Op.SESSION_DESTROY, DestroySession(spec=gone), Empty)
    await neonize.call(Op.SESSION_DESTROY, DestroySession(spec=gone), Empty)  # idempotent
    assert not device_path(neonize_agent.data_dir, gone.key).exists()
    with pytest.raises(ObjectNotFoundError):
        await store.get_info(gone.key)
    assert device_path(neonize_agent.data_dir, kept.key).exists()
    assert (await store.get_info(kept.key)).name == kept.key
    await neonize.call(Op.SESSION_DESTROY, DestroySession(spec=kept), Empty)
    assert not device_path(neonize_agent.data_dir, kept.key).exists()
    for spec in specs:
        await kv.delete(spec.key)


async def test_the_prometheus_endpoint_exports_what_operators_watch(
    neonize: AgentClient, neonize_agent: NeonizeAgent
) -> None:
    await neonize.start(unique("metrics"), engine="neonize", proxy=neonize_agent.proxy)
    await asyncio.sleep(1.2)  # a heartbeat refreshes the gauges
    async with httpx.AsyncClient() as http:
        response = await http.get(f"http://127.0.0.1:{neonize_agent.metrics_port}/metrics")
    assert response.status_code == 200
    body = response.text
    for name in (
        'zapfleet_agent_sessions{state="RECONNECTING"}',
        "zapfleet_agent_capacity 150.0",
        "zapfleet_agent_reconnects_total",
        "zapfleet_agent_sends_total",
        "zapfleet_agent_send_seconds_bucket",
        "zapfleet_agent_send_queue_depth",
        "zapfleet_agent_events_published_total",
        "zapfleet_agent_events_publish_failed_total",
        "zapfleet_agent_loop_lag_seconds",
        "zapfleet_agent_open_fds",
        "zapfleet_agent_rss_bytes",
        "zapfleet_agent_neonize_pinned_threads",
    ):
        assert name in body, name
    reconnects = next(
        line for line in body.splitlines() if line.startswith("zapfleet_agent_reconnects_total")
    )
    assert float(reconnects.split()[-1]) >= 1


@pytest.mark.slow
async def test_150_offline_clients_in_one_process_neither_crash_nor_stall_the_loop(
    nats_url: str, tmp_path: Path
) -> None:
    agent = _spawn_agent(
        nats_url,
        tmp_path,
        "neonize-150",
        ZAPFLEET_BACKOFF_BASE_S="1",
        ZAPFLEET_BACKOFF_MAX_S="4",
        ZAPFLEET_BREAKER_THRESHOLD="1000",
    )
    nc = await nats.connect(nats_url)
    events = EventLog()
    await events.start(nc, "t")
    try:
        client = AgentClient(nc, agent.node_id, timeout_s=30)
        spawned = time.monotonic()
        await _wait_ready(client, agent)
        ready_s = time.monotonic() - spawned
        sessions = [unique("n") for _ in range(150)]
        started = time.monotonic()
        for batch in range(0, 150, 15):
            await asyncio.gather(
                *(
                    client.start(s, engine="neonize", proxy=agent.proxy)
                    for s in sessions[batch : batch + 15]
                )
            )
        start_s = time.monotonic() - started
        started = time.monotonic()
        # every client dials, fails and keeps retrying while we watch the loop
        await events.wait_count(
            lambda e: e.data.get("state") == "RECONNECTING" and e.data.get("attempt") == 1,
            150,
            timeout_s=60,
        )
        cycle_s = time.monotonic() - started
        lags: list[float] = []
        rpc_ms: list[float] = []
        for _ in range(8):
            t0 = time.perf_counter()
            info = await client.call(Op.NODE_INFO, Empty(), NodeInfo)
            rpc_ms.append((time.perf_counter() - t0) * 1000)
            lags.append(info.loop_lag_ms)  # the worst lag of the last 5 s
            await asyncio.sleep(0.5)
        assert agent.process.poll() is None, "the agent process died"
        assert info.sessions == 150
        assert set(info.by_state) <= {"STARTING", "DISCONNECTED", "RECONNECTING"}
        # a stall is seconds (a cancelled dial blocks the loop ~57 s); scheduling noise on
        # a busy 2-core machine is tens of ms
        assert max(lags) < 500, f"event-loop lag reached {max(lags)} ms"
        assert sorted(rpc_ms)[len(rpc_ms) // 2] < 250, f"RPC latencies {rpc_ms}"
        print(
            f"\nneonize agent ready in {ready_s:.1f} s; 150 clients started in {start_s:.1f} s,"
            f" all failed once {cycle_s:.1f} s later; loop lag {max(lags):.1f} ms"
            f" (worst since start {info.loop_lag_max_ms:.1f} ms),"
            f" RSS {info.rss_bytes / 1e6:.0f} MB, fds {info.open_fds}"
        )

        # SIGTERM: every session is stopped, in order, and the process exits cleanly
        mark = time.time()
        os.kill(agent.process.pid, signal.SIGTERM)
        code = await asyncio.to_thread(agent.process.wait, 30)
        assert code == 0
        print(f"SIGTERM to exit: {time.time() - mark:.1f} s")
        stopped = await events.wait_count(
            lambda e: e.ts >= mark and e.data.get("state") == "STOPPED", 150, timeout_s=10
        )
        assert {e.session_id for e in stopped} == set(sessions)
        assert all(e.data["reason"] == "agent shutting down" for e in stopped)
    finally:
        await events.stop()
        await nc.close()
        stop_process(agent.process)


async def test_state_changes_reach_the_session_state_bucket(
    neonize: AgentClient, neonize_agent: NeonizeAgent, nc: NATS
) -> None:
    """Lists are served from zf_session_state (docs/api.md): the neonize engine's states
    reach it like the sim's, the last one and its breaker included."""
    session = unique("kv-state")
    started = await neonize.start(session, engine="neonize", proxy=neonize_agent.proxy)
    failed = await neonize.wait_state(session, "FAILED", timeout_s=30)
    states = await nc.jetstream().key_value(SESSION_STATE_BUCKET)
    written: dict[str, object] = {}
    for _ in range(100):  # written right after the change, off the session's path
        entry = await states.get(started.ref)
        written = msgspec.json.decode(entry.value or b"{}")
        if written.get("state") == "FAILED":
            break
        await asyncio.sleep(0.05)
    assert written["state"] == "FAILED"
    assert written["node_id"] == neonize_agent.node_id and written["epoch"] == 1
    assert written["breaker_open_until"] == failed.breaker_open_until
    await neonize.call(Op.SESSION_LOGOUT, SessionRef(session_id=session), SessionInfo)
    for _ in range(100):
        entry = await states.get(started.ref)
        written = msgspec.json.decode(entry.value or b"{}")
        if written.get("state") == "LOGGED_OUT":
            break
        await asyncio.sleep(0.05)
    assert written["state"] == "LOGGED_OUT"

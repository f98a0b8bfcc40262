"""``GET /v1/sessions`` from memory (issue 17): cursor pages stable under creates and
deletes, filters by state and node, and no agent asked (counted on the agents' RPC
subjects with a real NATS subscription)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from contract.protocol import SESSION_STATE_BUCKET
from tests.conftest import ADMIN_KEY, ARTIFACTS, Stack, spawn, stop_process, wait_until_ready
from tests.helpers import assert_problem, decode, new_tenant, unique
from zapfleet._kv import scan
from zapfleet.devservers import free_port, wait_for_port


@pytest.fixture
async def api(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    """A fresh tenant's client: sessions of other tests are invisible to it."""
    async with httpx.AsyncClient(base_url=stack.base_url, headers=stack.headers) as admin:
        _, key = await new_tenant(admin, "list")
    async with httpx.AsyncClient(
        base_url=stack.base_url, headers={"X-API-Key": key}, timeout=20
    ) as client:
        yield client


async def create(api: httpx.AsyncClient, session_id: str, start: bool = False) -> None:
    response = await api.post("/v1/sessions", json={"session_id": session_id, "start": start})
    assert response.status_code == 201, response.text


async def walk(api: httpx.AsyncClient, limit: int, **params: str) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        query: dict[str, str | int] = {"limit": limit, **params}
        if cursor is not None:
            query["cursor"] = cursor
        page = (await api.get("/v1/sessions", params=query)).json()
        seen.extend(page["sessions"])
        cursor = page["next_cursor"]
        if cursor is None:
            return seen


async def test_cursor_walk_sees_every_lasting_session_once_under_creates_and_deletes(
    api: httpx.AsyncClient,
) -> None:
    lasting = [f"keep-{i:03d}" for i in range(40)]
    doomed = [f"gone-{i:03d}" for i in range(20)]
    for name in lasting + doomed:
        await create(api, name)
    created: list[str] = []
    seen: list[str] = []
    cursor: str | None = None
    turn = 0
    while True:
        query: dict[str, str | int] = {"limit": 7}
        if cursor is not None:
            query["cursor"] = cursor
        page = (await api.get("/v1/sessions", params=query)).json()
        assert len(page["sessions"]) <= 7
        seen.extend(s["session_id"] for s in page["sessions"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
        # between two pages: sessions appear before and after the cursor, others go
        for name in (f"aaa-{turn}", f"keep-{turn:03d}x", f"zzz-{turn}"):
            await create(api, name)
            created.append(name)
        if turn < len(doomed):
            assert (await api.delete(f"/v1/sessions/{doomed[turn]}")).status_code == 204
        turn += 1
    assert turn >= 5  # the walk really interleaved with the churn
    assert len(seen) == len(set(seen)), "a session was listed twice"
    assert set(lasting) <= set(seen), set(lasting) - set(seen)
    assert set(seen) <= set(lasting) | set(doomed) | set(created)
    assert seen == sorted(seen)  # by name
    # unpaged, offset-compatible: the same order; total counts them all
    everything = (await api.get("/v1/sessions", params={"limit": 1000})).json()
    names = [s["session_id"] for s in everything["sessions"]]
    assert everything["total"] == len(names) and everything["next_cursor"] is None
    second = (await api.get("/v1/sessions", params={"limit": 5, "offset": 5})).json()
    assert [s["session_id"] for s in second["sessions"]] == names[5:10]


async def test_listing_and_filters_ask_no_agent(
    api: httpx.AsyncClient, nc: NATS, stack: Stack
) -> None:
    running = [unique("run") for _ in range(3)]
    idle = unique("idle")
    for name in running:
        await create(api, name, start=True)
    await create(api, idle)
    requests: list[str] = []
    asked = asyncio.Event()

    async def count(msg: Msg) -> None:
        requests.append(msg.subject)
        asked.set()

    # every agent RPC is a request on zf.agent.<node>.<op> (contract/protocol.py)
    subscription = await nc.subscribe("zf.agent.>", cb=count)
    await nc.flush()
    try:
        # a read of one session asks its node: the subscription does see agent requests
        assert (await api.get(f"/v1/sessions/{running[0]}")).status_code == 200
        await asyncio.wait_for(asked.wait(), 5)
        assert requests and requests[0].endswith(".session_status"), requests

        # the sim shows a QR: each started session becomes PAIRING, learnt without asking
        deadline = time.monotonic() + 20
        while True:
            pairing = (await api.get("/v1/sessions", params={"state": "PAIRING"})).json()
            if pairing["total"] == len(running) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        requests.clear()
        assert sorted(s["session_id"] for s in pairing["sessions"]) == sorted(running)
        assert all(s["node_id"] == stack.node_id for s in pairing["sessions"])

        full = await walk(api, 2)
        assert sorted(s["session_id"] for s in full) == sorted([*running, idle])
        states = {s["session_id"]: s["state"] for s in full}
        assert states[idle] == "STOPPED" and {states[n] for n in running} == {"PAIRING"}
        stopped = (await api.get("/v1/sessions", params={"state": "STOPPED"})).json()
        assert [s["session_id"] for s in stopped["sessions"]] == [idle]
        assert (await api.get("/v1/sessions", params={"state": "CONNECTED"})).json()["total"] == 0
        on_node = await walk(api, 1, node=stack.node_id)
        assert sorted(s["session_id"] for s in on_node) == sorted(running)
        elsewhere = (await api.get("/v1/sessions", params={"node": "no-such-node"})).json()
        assert (elsewhere["total"], elsewhere["sessions"]) == (0, [])
        both = await walk(api, 1, node=stack.node_id, state="PAIRING")
        assert len(both) == len(running)
        await nc.flush()
        await asyncio.sleep(0.2)  # a request in flight would have arrived by now
        assert requests == [], f"listing asked agents: {requests}"
    finally:
        await subscription.unsubscribe()
    for name in [*running, idle]:
        assert (await api.delete(f"/v1/sessions/{name}")).status_code == 204
    assert (await api.get("/v1/sessions")).json()["total"] == 0


async def test_bad_cursor_is_a_problem(api: httpx.AsyncClient) -> None:
    assert_problem(
        await api.get("/v1/sessions", params={"cursor": "%%%not-base64"}), 400, "invalid_cursor"
    )


async def test_the_agent_writes_live_states_and_a_delete_removes_them(
    api: httpx.AsyncClient, nc: NATS
) -> None:
    names = [unique("kv") for _ in range(2)]
    for name in names:
        await create(api, name, start=True)
    tenant = (await api.get(f"/v1/sessions/{names[0]}")).json()["tenant"]
    states_kv = await nc.jetstream().key_value(SESSION_STATE_BUCKET)

    async def kept() -> dict[str, str]:
        infos = [decode(e.value) for e in await scan(states_kv) if e.value]
        return {i["session_id"]: i["state"] for i in infos if i["tenant"] == tenant}

    written: dict[str, str] = {}
    for _ in range(200):  # the sim shows a QR at once; the write follows
        written = await kept()
        if set(written.values()) == {"PAIRING"} and len(written) == len(names):
            break
        await asyncio.sleep(0.05)
    assert written == dict.fromkeys(names, "PAIRING")
    for name in names:
        assert (await api.delete(f"/v1/sessions/{name}")).status_code == 204
    left: dict[str, str] = {}
    for _ in range(100):  # the control plane's purge, and the agent's of a pending write
        left = await kept()
        if not left:
            break
        await asyncio.sleep(0.1)
    assert left == {}


async def test_a_starting_control_plane_learns_states_the_bucket_lacks(
    api: httpx.AsyncClient, nc: NATS, stack: Stack
) -> None:
    """An agent older than zf_session_state (a rolling upgrade), or a lost write: the
    control plane asks each live node once at start (LiveStates.seed), never per page."""
    name = unique("seed")
    await create(api, name, start=True)
    states_kv = await nc.jetstream().key_value(SESSION_STATE_BUCKET)
    tenant = (await api.get(f"/v1/sessions/{name}")).json()["tenant"]
    key = ""
    for _ in range(200):
        entries = [e for e in await scan(states_kv) if e.value]
        key = next((e.key for e in entries if decode(e.value)["tenant"] == tenant), "")
        if key:
            break
        await asyncio.sleep(0.05)
    assert key
    await states_kv.purge(key)  # as if its agent never wrote it

    async def state_on(client: httpx.AsyncClient) -> str:
        listed = (await client.get("/v1/sessions")).json()["sessions"]
        return str(listed[0]["state"])

    state = ""
    for _ in range(100):  # this control plane drops the purged state (its mirror)
        state = await state_on(api)
        if state == "STOPPED":
            break
        await asyncio.sleep(0.05)
    assert state == "STOPPED"

    port = free_port()
    process = spawn(
        "control-plane-seed",
        ["control-plane"],
        {
            "ZAPFLEET_NATS_URL": stack.nats_url,
            "ZAPFLEET_VALKEY_URL": stack.valkey_url,
            "ZAPFLEET_ADMIN_KEY": ADMIN_KEY,
            "ZAPFLEET_HTTP_PORT": str(port),
            "ZAPFLEET_DEFAULT_ENGINE": "sim",
            "ZAPFLEET_WEBHOOKS_IN_PROCESS": "false",
            "ZAPFLEET_RECONCILER": "false",
            "ZAPFLEET_CACHE_PREFIX": "zfseed:",
        },
        ARTIFACTS / "logs",
    )
    try:
        base_url = f"http://127.0.0.1:{port}"
        await asyncio.to_thread(wait_for_port, port, 60, None)
        await asyncio.to_thread(wait_until_ready, f"{base_url}/monitoring/ready", process)
        async with httpx.AsyncClient(
            base_url=base_url, headers=dict(api.headers), timeout=20
        ) as second:
            for _ in range(200):  # the seed runs in the background after start
                state = await state_on(second)
                if state == "PAIRING":
                    break
                await asyncio.sleep(0.05)
            assert state == "PAIRING"
    finally:
        stop_process(process)
    assert (await api.delete(f"/v1/sessions/{name}")).status_code == 204

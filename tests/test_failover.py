"""Placement, leases and failover across three agent processes (DESIGN §4).

Real nats-server (its own, so no other test's agents take part), real Valkey, three sim
agents and two control planes as processes. Leases are short for speed: heartbeat
0.5 s, lease 2 s, reconciler margin 1 s, reconcile interval 0.2 s. docs/failover.md
gives the bound these tests assert: a dead node's sessions are CONNECTED elsewhere
within lease + margin + reconcile interval + time to start them.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import msgspec
import nats
import pytest
from nats.aio.client import Client as NATS
from nats.js.api import DeliverPolicy

from contract.protocol import (
    EVENTS_STREAM,
    SESSIONS_BUCKET,
    Assignment,
    Empty,
    Err,
    Event,
    Ok,
    Op,
    SessionList,
    SessionRecord,
    SessionRef,
    SessionSpec,
    agent_subject,
    encode,
)
from control_plane.reconciler import RESTART_GRACE_S, Leadership
from node_agent.device_store import DeviceStore
from node_agent.engines.sim import SIM_BUCKET, SimConfig, SimEngine, seed_account
from node_agent.engines.sim_presence import violations
from tests.conftest import ADMIN_KEY, ARTIFACTS, agent_env, spawn, stop_process
from zapfleet._kv import scan
from zapfleet.cli import session_key
from zapfleet.devservers import ChildProcess, free_port, start_nats, wait_for_port

HEARTBEAT_S = 0.5
LEASE_S = 2.0
MARGIN_S = 1.0
RECONCILE_S = 0.2
AUDIT_S = 5.0
CAPACITY = 150
NODES = ("fo-a", "fo-b", "fo-c")
# docs/failover.md: lease + margin + one reconcile tick, plus starting the sessions
# (generous here: two loaded cores shared with the rest of the suite)
FAILOVER_BOUND_S = LEASE_S + MARGIN_S + RECONCILE_S + 3.0
LOG_DIR = ARTIFACTS / "logs" / "failover"


@dataclass
class Cluster:
    nats_url: str
    valkey_url: str
    root: Path
    agents: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    apis: list[str] = field(default_factory=list)
    control_planes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    incarnation: int = 0

    def spawn_agent(self, node_id: str) -> None:
        self.incarnation += 1
        env = agent_env(
            self.nats_url,
            node_id,
            self.root / node_id,
            ZAPFLEET_HEARTBEAT_INTERVAL_S=str(HEARTBEAT_S),
            ZAPFLEET_LEASE_TTL_S=str(LEASE_S),
            ZAPFLEET_SIM_KEEPALIVE_S="0.5",
            ZAPFLEET_MAX_SESSIONS=str(CAPACITY),
            ZAPFLEET_SIM_READ_AFTER_S="0.2",
        )
        name = f"{node_id}-{self.incarnation}"
        self.agents[node_id] = spawn(name, ["agent"], env, LOG_DIR)

    def spawn_control_plane(self) -> None:
        port = free_port()
        env = {
            "ZAPFLEET_NATS_URL": self.nats_url,
            # a Valkey database of its own, and no rate limits: the burst below would use
            # up the budget other tests' control planes share (same key, same IP)
            "ZAPFLEET_VALKEY_URL": self.valkey_url.rsplit("/", 1)[0] + "/5",
            "ZAPFLEET_RATE_LIMITS_ENABLED": "false",
            "ZAPFLEET_ADMIN_KEY": ADMIN_KEY,
            "ZAPFLEET_HTTP_PORT": str(port),
            "ZAPFLEET_DEFAULT_ENGINE": "sim",
            "ZAPFLEET_WEBHOOKS_IN_PROCESS": "false",
            "ZAPFLEET_LEASE_TTL_S": str(LEASE_S),
            "ZAPFLEET_LEASE_MARGIN_S": str(MARGIN_S),
            "ZAPFLEET_RECONCILE_INTERVAL_S": str(RECONCILE_S),
            "ZAPFLEET_LEADER_LEASE_S": "1",
            "ZAPFLEET_AUDIT_INTERVAL_S": str(AUDIT_S),
            "ZAPFLEET_RPC_TIMEOUT_S": "2",
        }
        name = f"control-plane-{len(self.control_planes) + 1}"
        process = spawn(name, ["control-plane"], env, LOG_DIR)
        self.control_planes.append(process)
        self.apis.append(f"http://127.0.0.1:{port}")
        wait_for_port(port, 60, process)

    def placement(self) -> dict[str, dict[str, Any]]:
        """GET /v1/nodes: each node with its placement state."""
        response = httpx.get(
            f"{self.apis[0]}/v1/nodes", headers={"X-API-Key": ADMIN_KEY}, timeout=5
        )
        response.raise_for_status()
        return {n["node_id"]: n for n in response.json()["nodes"]}

    def wait_nodes_up(self, nodes: tuple[str, ...] = NODES, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        view: dict[str, dict[str, Any]] = {}
        while time.monotonic() < deadline:
            for node_id, process in self.agents.items():
                if process.poll() is not None and node_id in nodes:
                    raise RuntimeError(f"agent {node_id} exited; see {LOG_DIR}")
            try:
                view = self.placement()
            except httpx.HTTPError:
                view = {}
            if all(view.get(n, {}).get("state") == "up" for n in nodes):
                return
            time.sleep(0.1)
        raise RuntimeError(f"nodes not up after {timeout_s} s: {view}")

    def ensure_agents(self) -> None:
        """Every agent running and up, none cordoned or draining."""
        for node_id in NODES:
            process = self.agents.get(node_id)
            if process is None or process.poll() is not None:
                self.spawn_agent(node_id)
            elif process.poll() is None:
                os.kill(process.pid, signal.SIGCONT)
        self.wait_nodes_up()
        for node_id in NODES:
            httpx.post(
                f"{self.apis[0]}/v1/nodes/{node_id}/uncordon",
                headers={"X-API-Key": ADMIN_KEY},
                timeout=10,
            ).raise_for_status()


@pytest.fixture(scope="module")
def cluster(valkey_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("failover")
    server: ChildProcess = start_nats(root / "nats", log_path=root / "nats.log")
    cluster = Cluster(f"nats://127.0.0.1:{server.port}", valkey_url, root)
    try:
        cluster.spawn_control_plane()
        cluster.spawn_control_plane()
        for node_id in NODES:
            cluster.spawn_agent(node_id)
        cluster.wait_nodes_up()
        yield cluster
    finally:
        for process in [*cluster.control_planes, *cluster.agents.values()]:
            if process.poll() is None:
                os.kill(process.pid, signal.SIGCONT)
            stop_process(process)
        server.stop()


@pytest.fixture
async def cnc(cluster: Cluster) -> AsyncIterator[NATS]:
    client = await nats.connect(cluster.nats_url)
    yield client
    await client.close()


@pytest.fixture
async def api(cluster: Cluster) -> AsyncIterator[httpx.AsyncClient]:
    headers = {"X-API-Key": ADMIN_KEY}
    async with httpx.AsyncClient(base_url=cluster.apis[0], headers=headers, timeout=30) as c:
        yield c


# -- helpers -----------------------------------------------------------------------------


def phone(n: int) -> str:
    return f"1555{n:07d}"


async def sim_violations(nc: NATS) -> int:
    return await violations(await nc.jetstream().key_value(SIM_BUCKET))


async def create_connected(
    api: httpx.AsyncClient, nc: NATS, prefix: str, count: int, first_phone: int
) -> list[str]:
    """``count`` sessions already linked to sim phones: each connects as soon as it starts.
    The sim account is keyed by the session's internal id, minted at create: created
    stopped, linked, then started."""
    ids = [f"{prefix}{i:03d}" for i in range(count)]
    limit = asyncio.Semaphore(16)

    async def create(i: int, session_id: str) -> None:
        async with limit:
            response = await api.post(
                "/v1/sessions", json={"session_id": session_id, "start": False}
            )
            assert response.status_code == 201, response.text
            key = await session_key(nc, "default", session_id)
            await seed_account(nc, key, phone(first_phone + i))
            response = await api.post(f"/v1/sessions/{session_id}/start")
            assert response.status_code == 200, response.text

    await asyncio.gather(*(create(i, s) for i, s in enumerate(ids)))
    await wait_all(api, ids, lambda b: b["state"] == "CONNECTED", timeout_s=30)
    return ids


async def views(api: httpx.AsyncClient, ids: list[str]) -> dict[str, dict[str, Any]]:
    limit = asyncio.Semaphore(32)

    async def one(session_id: str) -> dict[str, Any]:
        async with limit:
            response = await api.get(f"/v1/sessions/{session_id}")
        return dict(response.json())

    bodies = await asyncio.gather(*(one(s) for s in ids))
    return dict(zip(ids, bodies, strict=True))


async def wait_all(
    api: httpx.AsyncClient, ids: list[str], predicate: Any, timeout_s: float
) -> dict[str, dict[str, Any]]:
    deadline = time.monotonic() + timeout_s
    current: dict[str, dict[str, Any]] = {}
    while time.monotonic() < deadline:
        current = await views(api, ids)
        if all(predicate(body) for body in current.values()):
            return current
        await asyncio.sleep(0.1)
    pending = {s: (b.get("state"), b.get("node_id")) for s, b in current.items()}
    raise AssertionError(f"not all sessions got there in {timeout_s} s: {pending}")


async def agent_sessions(nc: NATS, node_id: str) -> SessionList:
    reply = await nc.request(agent_subject(node_id, Op.SESSIONS_LIST), encode(Empty()), timeout=5)
    decoded = msgspec.json.decode(reply.data, type=Ok[SessionList] | Err)
    assert isinstance(decoded, Ok), decoded
    return decoded.value


async def events_since(nc: NATS, subject: str, since: float) -> list[Event]:
    js = nc.jetstream()
    sub = await js.subscribe(
        subject, stream=EVENTS_STREAM, ordered_consumer=True, deliver_policy=DeliverPolicy.ALL
    )
    found: list[Event] = []
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=0.5)
            except nats.errors.TimeoutError:
                break
            event = msgspec.json.decode(msg.data, type=Event)
            if event.ts >= since:
                found.append(event)
    finally:
        await sub.unsubscribe()
    return found


def busiest(by_node: dict[str, list[str]]) -> str:
    return max(by_node, key=lambda n: len(by_node[n]))


def group_by_node(bodies: dict[str, dict[str, Any]]) -> dict[str, list[str]]:
    grouped: dict[str, list[str]] = {n: [] for n in NODES}
    for session_id, body in bodies.items():
        grouped.setdefault(body["node_id"], []).append(session_id)
    return grouped


# -- failover ----------------------------------------------------------------------------


async def test_kill_9_of_an_agent_moves_all_its_sessions_to_the_survivors_in_time(
    cluster: Cluster, api: httpx.AsyncClient, cnc: NATS
) -> None:
    cluster.ensure_agents()
    ids = await create_connected(api, cnc, "kill", 30, first_phone=100)
    before = await views(api, ids)
    by_node = group_by_node(before)
    counts = [len(by_node[n]) for n in NODES]
    assert min(counts) >= 5 and max(counts) - min(counts) <= 6, f"not spread out: {by_node}"
    victim = busiest(by_node)
    moved = by_node[victim]
    violations_before = await sim_violations(cnc)

    killed_at = time.time()
    started = time.monotonic()
    cluster.agents[victim].kill()  # SIGKILL: no goodbye, no lease handover
    after = await wait_all(
        api,
        moved,
        lambda b: b["state"] == "CONNECTED" and b["node_id"] != victim,
        timeout_s=FAILOVER_BOUND_S + 10,
    )
    elapsed = time.monotonic() - started
    assert elapsed <= FAILOVER_BOUND_S, f"failover took {elapsed:.2f} s"

    for session_id in moved:
        assert after[session_id]["epoch"] == before[session_id]["epoch"] + 1
        assert after[session_id]["phone"] == before[session_id]["phone"], "no re-pairing"
    untouched = await views(api, [s for s in ids if s not in moved])
    assert all(b["epoch"] == before[s]["epoch"] for s, b in untouched.items())
    assert await sim_violations(cnc) == violations_before

    down = await events_since(cnc, f"zf.events._system.{victim}.node.down", killed_at)
    assert len(down) == 1 and down[0].data["node_id"] == victim
    moved_events = await events_since(cnc, "zf.events.default.*.session.moved", killed_at)
    assert sorted(e.session_id for e in moved_events) == sorted(moved)
    assert all(e.data["from_node"] == victim for e in moved_events)

    # the agent comes back (systemd would restart it): it runs none of the moved sessions
    cluster.spawn_agent(victim)
    cluster.wait_nodes_up()
    await asyncio.sleep(4 * HEARTBEAT_S)
    assert (await agent_sessions(cnc, victim)).sessions == []
    assert cluster.placement()[victim]["slots_used"] == 0


async def test_an_agent_stopped_in_order_hands_its_sessions_over_without_waiting(
    cluster: Cluster, api: httpx.AsyncClient, cnc: NATS
) -> None:
    cluster.ensure_agents()
    ids = await create_connected(api, cnc, "sigterm", 12, first_phone=700)
    victim = busiest(group_by_node(await views(api, ids)))
    leaving = [s for s, b in (await views(api, ids)).items() if b["node_id"] == victim]
    process = cluster.agents[victim]
    process.terminate()  # SIGTERM: stops its sessions, then deletes its heartbeat
    await asyncio.to_thread(process.wait, 15)
    started = time.monotonic()
    await wait_all(
        api,
        leaving,
        lambda b: b["state"] == "CONNECTED" and b["node_id"] != victim,
        timeout_s=FAILOVER_BOUND_S,
    )
    elapsed = time.monotonic() - started
    # a silent node would need lease + margin; a node that said goodbye needs neither
    assert elapsed < LEASE_S + MARGIN_S, f"took {elapsed:.2f} s"
    assert cluster.placement()[victim]["state"] == "left"


async def test_a_frozen_agent_fences_itself_and_no_account_ever_has_two_sockets(
    cluster: Cluster, api: httpx.AsyncClient, cnc: NATS
) -> None:
    cluster.ensure_agents()
    ids = await create_connected(api, cnc, "frozen", 30, first_phone=200)
    before = await views(api, ids)
    victim = busiest(group_by_node(before))
    stale = [s for s, b in before.items() if b["node_id"] == victim]
    violations_before = await sim_violations(cnc)

    process = cluster.agents[victim]
    os.kill(process.pid, signal.SIGSTOP)  # its sockets stay open on the NATS server
    try:
        await wait_all(
            api,
            stale,
            lambda b: b["state"] == "CONNECTED" and b["node_id"] != victim,
            timeout_s=FAILOVER_BOUND_S + 10,
        )
        await asyncio.sleep(1.0)  # the moved sockets live on while the old ones are frozen
    finally:
        os.kill(process.pid, signal.SIGCONT)

    # it wakes up past its lease: it must stop the stale sessions, not fight for them
    await asyncio.sleep(6 * HEARTBEAT_S + 1.0)  # > several keepalives of every socket
    assert process.poll() is None
    left = await agent_sessions(cnc, victim)
    assert [s.session_id for s in left.sessions if s.session_id in stale] == []
    after = await views(api, stale)
    assert all(b["state"] == "CONNECTED" and b["node_id"] != victim for b in after.values())
    assert await sim_violations(cnc) == violations_before, "two live sockets for one account"
    cluster.wait_nodes_up()


class TcpProxy:
    """A TCP relay between one agent and nats-server that the test can cut: a real
    network partition of that agent alone (its process keeps running)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.cut = False
        self._writers: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        if self.cut:
            client_w.close()
            return
        server_r, server_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        self._writers |= {client_w, server_w}

        async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                writer.close()

        await asyncio.gather(pipe(client_r, server_w), pipe(server_r, client_w))
        self._writers -= {client_w, server_w}

    def partition(self) -> None:
        self.cut = True
        for writer in list(self._writers):
            writer.close()

    async def stop(self) -> None:
        self.partition()
        if self._server is not None:
            self._server.close()


async def test_an_agent_cut_off_from_nats_stops_its_sessions_by_itself(
    cluster: Cluster, api: httpx.AsyncClient, cnc: NATS
) -> None:
    cluster.ensure_agents()
    proxy = TcpProxy(int(cluster.nats_url.rsplit(":", 1)[1]))
    await proxy.start()
    cut_off = "fo-d"
    env = agent_env(
        f"nats://127.0.0.1:{proxy.port}",
        cut_off,
        cluster.root / cut_off,
        ZAPFLEET_HEARTBEAT_INTERVAL_S=str(HEARTBEAT_S),
        ZAPFLEET_LEASE_TTL_S=str(LEASE_S),
        ZAPFLEET_SIM_KEEPALIVE_S="0.5",
        ZAPFLEET_LABELS="zone=d",
    )
    agent = spawn(f"{cut_off}-partition", ["agent"], env, LOG_DIR)
    try:
        await asyncio.to_thread(cluster.wait_nodes_up, (*NODES, cut_off))
        # labels steer placement: zone=d exists only on fo-d, zone=mars nowhere
        mars = await api.post(
            "/v1/sessions", json={"session_id": "on-mars", "node_labels": {"zone": "mars"}}
        )
        assert mars.status_code == 503, mars.text
        for node_id in NODES:
            await api.post(f"/v1/nodes/{node_id}/cordon")
        ids = await create_connected(api, cnc, "cut", 9, first_phone=600)
        for node_id in NODES:
            await api.post(f"/v1/nodes/{node_id}/uncordon")
        assert {b["node_id"] for b in (await views(api, ids)).values()} == {cut_off}
        before = await sim_violations(cnc)

        proxy.partition()
        after = await wait_all(
            api,
            ids,
            lambda b: b["state"] == "CONNECTED" and b["node_id"] in NODES,
            timeout_s=FAILOVER_BOUND_S + 10,
        )
        log = (LOG_DIR / f"{cut_off}-partition.log").read_text()
        assert "lease lost: stopping every session" in log, "the agent did not fence itself"
        assert agent.poll() is None, "a partition must not kill the agent"
        assert all(b["epoch"] == 2 for b in after.values())

        proxy.cut = False  # the network heals: the agent comes back with no stale session
        await asyncio.to_thread(cluster.wait_nodes_up, (*NODES, cut_off))
        await asyncio.sleep(4 * HEARTBEAT_S)
        assert (await agent_sessions(cnc, cut_off)).sessions == []
        assert await sim_violations(cnc) == before
    finally:
        stop_process(agent)  # an orderly stop: the node leaves placement at once
        await proxy.stop()


async def test_drain_moves_every_session_without_re_pairing_and_keeps_the_node_out(
    cluster: Cluster, api: httpx.AsyncClient, cnc: NATS
) -> None:
    cluster.ensure_agents()
    ids = await create_connected(api, cnc, "drain", 24, first_phone=300)
    before = await views(api, ids)
    node = busiest(group_by_node(before))
    on_node = [s for s, b in before.items() if b["node_id"] == node]
    drained_at = time.time()
    violations_before = await sim_violations(cnc)

    response = await api.post(f"/v1/nodes/{node}/drain")
    assert response.status_code == 200, response.text
    report = response.json()
    assert report["failed"] == 0
    assert report["moved"] >= len(on_node)

    after = await wait_all(
        api, ids, lambda b: b["state"] == "CONNECTED" and b["node_id"] != node, timeout_s=15
    )
    for session_id in on_node:
        assert after[session_id]["phone"] == before[session_id]["phone"]
        assert after[session_id]["epoch"] == before[session_id]["epoch"] + 1
    qr = await events_since(cnc, "zf.events.default.*.session.qr", drained_at)
    assert [e.session_id for e in qr if e.session_id in ids] == [], "nobody had to pair again"
    assert await sim_violations(cnc) == violations_before
    view = cluster.placement()[node]
    assert view["draining"] and view["slots_used"] == 0
    assert [s for s in (await agent_sessions(cnc, node)).sessions if s.state != "STOPPED"] == []

    # a drained node gets no new sessions until it is uncordoned
    extra = await create_connected(api, cnc, "afterdrain", 6, first_phone=350)
    assert all(b["node_id"] != node for b in (await views(api, extra)).values())
    assert (await api.post(f"/v1/nodes/{node}/uncordon")).json()["draining"] is False


async def test_a_moved_session_keeps_its_device_by_internal_id_and_a_reused_name_does_not(
    cluster: Cluster, api: httpx.AsyncClient, cnc: NATS
) -> None:
    """Device state follows the session's internal id from node to node (drain, then
    failover of a killed node); after the delete, the same name in another tenant
    starts unpaired and nothing of the old session is left (issue 13)."""
    cluster.ensure_agents()
    [name] = await create_connected(api, cnc, "identity", 1, first_phone=960)
    key = await session_key(cnc, "default", name)
    first = (await views(api, [name]))[name]

    drained = await api.post(f"/v1/nodes/{first['node_id']}/drain")
    assert drained.status_code == 200 and drained.json()["moved"] == 1, drained.text
    second = (
        await wait_all(
            api,
            [name],
            lambda b: b["state"] == "CONNECTED" and b["node_id"] != first["node_id"],
            timeout_s=15,
        )
    )[name]
    assert second["phone"] == first["phone"]
    assert (await api.post(f"/v1/nodes/{first['node_id']}/uncordon")).status_code == 200

    cluster.agents[second["node_id"]].kill()  # kill -9: failover after its lease
    third = (
        await wait_all(
            api,
            [name],
            lambda b: b["state"] == "CONNECTED" and b["node_id"] != second["node_id"],
            timeout_s=FAILOVER_BOUND_S + 10,
        )
    )[name]
    assert third["phone"] == first["phone"]

    assert (await api.delete(f"/v1/sessions/{name}")).status_code == 204
    # zapfleet._kv.scan, not kv.keys(): nats-py's "no more keys" marker can come before
    # the entries under load (NoKeysError from a bucket full of accounts)
    sim = {e.key for e in await scan(await cnc.jetstream().key_value(SIM_BUCKET))}
    assert f"acct.{key}" not in sim and f"num.{first['phone']}" not in sim
    tenant = f"other-{os.getpid()}"
    assert (await api.post("/v1/tenants", json={"tenant_id": tenant})).status_code in (201, 409)
    other = {"X-Tenant-Id": tenant}
    created = await api.post("/v1/sessions", json={"session_id": name}, headers=other)
    assert created.status_code == 201, created.text
    deadline = time.monotonic() + 15
    state, body = None, {}
    while time.monotonic() < deadline:  # with the old link it would become CONNECTED
        body = (await api.get(f"/v1/sessions/{name}", headers=other)).json()
        state = body.get("state")
        if state in ("PAIRING", "CONNECTED"):
            break
        await asyncio.sleep(0.05)
    assert (state, body["phone"]) == ("PAIRING", None)
    assert (await api.delete(f"/v1/sessions/{name}", headers=other)).status_code == 204
    cluster.ensure_agents()


async def test_a_cordoned_node_keeps_its_sessions_but_gets_no_new_ones(
    cluster: Cluster, api: httpx.AsyncClient, cnc: NATS
) -> None:
    cluster.ensure_agents()
    node = NODES[0]
    response = await api.post(f"/v1/nodes/{node}/cordon")
    assert response.status_code == 200 and response.json()["cordoned"] is True
    try:
        ids = await create_connected(api, cnc, "cordon", 8, first_phone=400)
        assert all(b["node_id"] != node for b in (await views(api, ids)).values())
    finally:
        await api.post(f"/v1/nodes/{node}/uncordon")
    unknown = await api.post("/v1/nodes/no-such-node/cordon")
    assert unknown.status_code == 404
    assert unknown.headers["content-type"].startswith("application/problem+json")


async def test_rebalance_evens_out_sessions_between_nodes(
    cluster: Cluster, api: httpx.AsyncClient, cnc: NATS
) -> None:
    cluster.ensure_agents()
    node = NODES[2]
    await api.post(f"/v1/nodes/{node}/drain")
    await api.post(f"/v1/nodes/{node}/uncordon")
    slots = {n: v["slots_used"] for n, v in cluster.placement().items() if n in NODES}
    assert slots[node] == 0 < min(slots[n] for n in NODES if n != node)

    response = await api.post("/v1/nodes/rebalance")
    assert response.status_code == 200, response.text
    assert response.json()["moved"] > 0 and response.json()["failed"] == 0
    slots = {n: v["slots_used"] for n, v in cluster.placement().items() if n in NODES}
    assert max(slots.values()) - min(slots.values()) <= 1, slots
    lists = {n: (await agent_sessions(cnc, n)).sessions for n in NODES}
    assert {n: len(lists[n]) for n in NODES} == slots
    bodies = await views(api, [s.session_id for n in NODES for s in lists[n]])
    for node_id in NODES:  # every run matches KV: this node, this epoch
        for info in lists[node_id]:
            body = bodies[info.session_id]
            assert (body["node_id"], body["epoch"]) == (node_id, info.epoch), info


def test_the_cli_lists_and_cordons_nodes(cluster: Cluster) -> None:
    env = {**os.environ, "ZAPFLEET_API_URL": cluster.apis[1], "ZAPFLEET_API_KEY": ADMIN_KEY}

    def cli(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "zapfleet", "nodes", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return done.stdout

    listing = cli("ls")
    assert listing.splitlines()[0].split()[:3] == ["NODE", "STATUS", "ENGINE"]
    assert all(n in listing for n in NODES)
    assert cli("cordon", NODES[1]).strip() == f"{NODES[1]}: cordoned"
    assert "cordoned" in next(line for line in cli("ls").splitlines() if NODES[1] in line)
    assert cli("uncordon", NODES[1]).strip() == f"{NODES[1]}: eligible"


async def test_the_audit_starts_a_session_its_live_node_does_not_run(
    cluster: Cluster, api: httpx.AsyncClient, cnc: NATS
) -> None:
    """A control plane wrote the assignment, then died before its start RPC."""
    cluster.ensure_agents()
    node = NODES[1]
    await seed_account(cnc, "orphan", phone(500))
    long_ago = time.time() - 120  # settled: no placement of it is in flight
    record = SessionRecord(
        spec=SessionSpec(session_id="orphan", tenant="default", engine="sim"),
        assignment=Assignment(node_id=node, epoch=1),
        created_at=long_ago,
        updated_at=long_ago,
    )
    kv = await cnc.jetstream().key_value(SESSIONS_BUCKET)
    await kv.create("orphan", encode(record))
    body = (await wait_all(api, ["orphan"], lambda b: b["state"] == "CONNECTED", 20))["orphan"]
    assert (body["node_id"], body["epoch"]) == (node, 1)
    assert cluster.placement()[node]["slots_used"] >= 1


async def test_a_session_its_live_node_stopped_on_its_own_is_running_again_within_the_bound(
    cluster: Cluster, api: httpx.AsyncClient, cnc: NATS
) -> None:
    """Desired running, node alive, session not running (e.g. an agent that once stopped
    it on a stale view of its assignment, issue 21): the audit starts it again within
    ZAPFLEET_AUDIT_INTERVAL_S + RESTART_GRACE_S (docs/failover.md), not 30 s later."""
    cluster.ensure_agents()
    [session_id] = await create_connected(api, cnc, "selfstopped", 1, first_phone=520)
    body = (await views(api, [session_id]))[session_id]
    node, epoch = body["node_id"], body["epoch"]
    key = await session_key(cnc, "default", session_id)  # agents know sessions by key
    reply = await cnc.request(
        agent_subject(node, Op.SESSION_STOP),
        encode(SessionRef(session_id=key, epoch=epoch)),
        timeout=5,
    )
    assert isinstance(msgspec.json.decode(reply.data, type=Ok[Any] | Err), Ok)
    stopped_at = time.monotonic()
    assert key not in {s.key for s in (await agent_sessions(cnc, node)).sessions}
    bound = AUDIT_S + RESTART_GRACE_S + 5.0  # + starting it on two loaded cores
    body = (await wait_all(api, [session_id], lambda b: b["state"] == "CONNECTED", bound))[
        session_id
    ]
    assert (body["node_id"], body["epoch"]) == (node, epoch)
    assert time.monotonic() - stopped_at <= bound


# -- concurrency -------------------------------------------------------------------------


async def test_two_control_planes_placing_500_sessions_at_once_never_overfill_a_node(
    cluster: Cluster, cnc: NATS
) -> None:
    cluster.ensure_agents()
    free = sum(CAPACITY - v["slots_used"] for n, v in cluster.placement().items() if n in NODES)
    assert 0 < free < 500, "the test must run out of capacity to prove anything"
    ids = [f"burst{i:03d}" for i in range(500)]
    headers = {"X-API-Key": ADMIN_KEY}
    limit = asyncio.Semaphore(48)
    async with (
        httpx.AsyncClient(base_url=cluster.apis[0], headers=headers, timeout=60) as one,
        httpx.AsyncClient(base_url=cluster.apis[1], headers=headers, timeout=60) as two,
    ):

        async def create(client: httpx.AsyncClient, session_id: str) -> int:
            async with limit:
                response = await client.post("/v1/sessions", json={"session_id": session_id})
            return response.status_code

        # every id is sent to both control planes at the same moment
        codes = await asyncio.gather(
            *(create(c, s) for s in ids for c in (one, two)),
        )
        pairs = [sorted(codes[i : i + 2]) for i in range(0, len(codes), 2)]
        # a create that cannot be placed stores nothing (503): the other control plane
        # saw the name taken while it tried (409), or failed to place it as well
        allowed = ([201, 409], [409, 503], [503, 503])
        assert all(p in allowed for p in pairs), set(map(tuple, pairs))

        # a 503 says "retry later"; on a loaded machine a node may look silent for a moment,
        # so the refused ones are created once more, through both control planes again
        refused = [s for s, p in zip(ids, pairs, strict=True) if p != [201, 409]]
        retried = await asyncio.gather(*(create(c, s) for s in refused for c in (one, two)))
    assert set(retried) <= {201, 409, 503}, set(retried)  # 409: the other one has it
    placed = sum(1 for p in pairs if p == [201, 409])
    placed += sum(1 for i in range(0, len(retried), 2) if 201 in retried[i : i + 2])
    assert placed == free, f"{placed} placed, {free} slots were free"

    await asyncio.sleep(0.5)  # the control plane's view follows its KV watch
    lists = {n: (await agent_sessions(cnc, n)).sessions for n in NODES}
    assert all(len(s) <= CAPACITY for s in lists.values()), {n: len(s) for n, s in lists.items()}
    running = [s.session_id for sessions in lists.values() for s in sessions]
    assert len(running) == len(set(running)), "a session runs on two nodes"
    assert sum(1 for s in running if s.startswith("burst")) == placed
    view = cluster.placement()
    assert all(view[n]["slots_used"] == len(lists[n]) for n in NODES)


# -- building blocks, in-process on the cluster's NATS -----------------------------------


async def test_two_sockets_for_one_account_are_counted_and_the_older_is_kicked(
    cluster: Cluster, cnc: NATS
) -> None:
    other = await nats.connect(cluster.nats_url)
    try:
        config = SimConfig(keepalive_s=0.2, connect_latency_s=0)
        first_engine, second_engine = SimEngine(cnc, config), SimEngine(other, config)
        await first_engine.start()
        await second_engine.start()
        spec = SessionSpec(session_id="twin", tenant="default", engine="sim")
        await seed_account(cnc, "twin", phone(900))
        first_events: list[object] = []
        first = first_engine.open_session(spec, first_events.append)
        second = second_engine.open_session(spec, lambda _: None)
        before = await sim_violations(cnc)
        await first.connect()
        await asyncio.sleep(0.3)
        assert await first.ping()
        await second.connect()  # a fencing bug would do this: the same account twice
        await asyncio.sleep(0.3)
        assert await sim_violations(cnc) == before + 1
        assert await second.ping() and not await first.ping()
        assert any("stream replaced" in str(e) for e in first_events)
        await second.disconnect()
        await first.disconnect()
    finally:
        await other.close()


async def test_one_reconciler_candidate_leads_and_another_takes_over_when_it_goes(
    cnc: NATS,
) -> None:
    js = cnc.jetstream()
    first = Leadership(js, 1, "first", key="test-leader")
    second = Leadership(js, 1, "second", key="test-leader")
    assert await first.hold()
    assert not await second.hold()
    assert await first.current() == "first"
    # the first stops renewing (dead or cut off): its key expires, the second takes over
    started = time.monotonic()
    while not await second.hold():
        assert time.monotonic() - started < 5, "leadership never moved"
        await asyncio.sleep(0.1)
    assert await second.current() == "second"
    first.renewed_at = 0.0  # force a renewal attempt: its revision is no longer current
    assert not await first.hold()
    await second.resign()
    assert await first.hold()
    await first.resign()


async def test_a_sqlite_device_store_travels_through_the_object_store(
    cnc: NATS, tmp_path: Path
) -> None:
    js = cnc.jetstream()
    node_a = await DeviceStore.open(js, tmp_path / "a")
    node_b = await DeviceStore.open(js, tmp_path / "b")
    source = node_a.path("device-1")
    source.parent.mkdir(parents=True)
    live = sqlite3.connect(source)  # the engine keeps it open while we back it up
    live.execute("create table keys (k text)")
    live.execute("insert into keys values ('identity')")
    live.commit()

    def rows(store: DeviceStore) -> list[tuple[str]]:
        with sqlite3.connect(store.path("device-1")) as db:
            return db.execute("select k from keys order by k").fetchall()

    assert await node_a.backup("device-1")
    assert not node_b.path("device-1").exists()
    assert await node_b.restore("device-1")
    assert rows(node_b) == [("identity",)]
    assert not await node_b.restore("device-1"), "a local copy as new as the backup stays"

    live.execute("insert into keys values ('prekey')")
    live.commit()
    assert await node_a.backup("device-1")
    assert await node_b.restore("device-1"), "a newer backup replaces an older local copy"
    assert rows(node_b) == [("identity",), ("prekey",)]

    await node_a.forget("device-1")
    assert not await node_a.restore("device-1")
    live.close()

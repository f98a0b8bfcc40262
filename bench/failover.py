"""`just bench failover`: a full agent is killed; how fast are its sessions back elsewhere?

Real processes with default lease settings (heartbeat 2 s, lease 8 s, margin 2 s): NATS,
Valkey, one control plane, one sim agent that takes 150 sessions (already linked
accounts, so each connects at once), then two empty agents. The full agent gets SIGKILL;
the clock runs until all 150 sessions are CONNECTED on the survivors.

Output (docs/benchmarks/failover.json + failover.png, a timeline):
- ``sessions``           sessions of the killed agent
- ``failover_s``         kill → all of them CONNECTED elsewhere (target ≤ 15 s)
- ``duplicate_sockets``  sim violations: moments with two live sockets for one account (= 0)
- ``placements_per_s``   HTTP session creations placed and started per second
- baselines measured in the same run: ``detection_floor_s`` (lease + margin: no failover
  can be faster without a shorter lease) and ``raw_kv_cas_per_s`` (bare KV revision CAS
  writes, the primitive every placement uses at least twice), with their ratios.
"""

from __future__ import annotations

import asyncio
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import msgspec
import nats
from nats.aio.client import Client as NATS
from nats.js.api import KeyValueConfig

from bench._processes import spawn_zapfleet
from bench._report import figure, write_json
from contract.protocol import Empty, Err, Ok, Op, SessionList, agent_subject, encode
from node_agent.engines.sim import SIM_BUCKET, seed_account
from node_agent.engines.sim_presence import violations
from zapfleet.cli import session_key
from zapfleet.devservers import free_port, start_nats, start_valkey, wait_for_port

SESSIONS = 150
LEASE_S = 8.0  # the defaults of node_agent/settings.py and control_plane/settings.py
MARGIN_S = 2.0
ADMIN_KEY = "bench-admin-key-0123456789abcdef"
TIMEOUT_S = 60.0


async def agent_list(nc: NATS, node_id: str) -> SessionList:
    reply = await nc.request(agent_subject(node_id, Op.SESSIONS_LIST), encode(Empty()), timeout=5)
    decoded = msgspec.json.decode(reply.data, type=Ok[SessionList] | Err)
    if isinstance(decoded, Err):
        raise RuntimeError(decoded.message)
    return decoded.value


async def connected_on(nc: NATS, nodes: list[str], ids: set[str]) -> int:
    total = 0
    for node_id in nodes:
        try:
            listing = await agent_list(nc, node_id)
        except Exception:
            continue
        total += sum(1 for s in listing.sessions if s.session_id in ids and s.state == "CONNECTED")
    return total


async def wait_for(predicate: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await predicate():
            return
        await asyncio.sleep(0.1)
    raise RuntimeError(f"timed out waiting for {what}")


async def create_linked(api: httpx.AsyncClient, nc: NATS, ids: list[str], first: int = 0) -> None:
    """Create every session stopped and link it to a sim phone (the account is keyed by
    the internal id the create mints, so it is linked after the create). Phones are
    numbered from ``first``: two sessions on one phone would kick each other."""
    limit = asyncio.Semaphore(32)

    async def create(i: int, session_id: str) -> None:
        async with limit:
            body = {"session_id": session_id, "start": False}
            response = await api.post("/v1/sessions", json=body)
            if response.status_code != 201:
                raise RuntimeError(response.text)
            key = await session_key(nc, "default", session_id)
            await seed_account(nc, key, f"1556{first + i:07d}")

    await asyncio.gather(*(create(i, s) for i, s in enumerate(ids)))


async def place_all(api: httpx.AsyncClient, ids: list[str]) -> float:
    """Start (place + start) every session through the API; placements per second."""
    limit = asyncio.Semaphore(32)

    async def start(session_id: str) -> None:
        async with limit:
            response = await api.post(f"/v1/sessions/{session_id}/start")
        if response.status_code != 200:
            raise RuntimeError(response.text)

    started = time.perf_counter()
    await asyncio.gather(*(start(s) for s in ids))
    return len(ids) / (time.perf_counter() - started)


async def status(api: httpx.AsyncClient, node_id: str) -> str | None:
    """The node's state in GET /v1/nodes (up, silent, down, left)."""
    try:
        response = await api.get("/v1/nodes")
    except httpx.HTTPError:
        return None
    if response.status_code != 200:
        return None
    nodes = response.json()["nodes"]
    return next((str(n["state"]) for n in nodes if n["node_id"] == node_id), None)


async def watch_failover(
    nc: NATS, api: httpx.AsyncClient, survivors: list[str], wanted: set[str]
) -> tuple[list[tuple[float, int]], dict[str, float]]:
    """Right after the kill: sample sessions CONNECTED on the survivors until all are."""
    killed = time.monotonic()
    timeline: list[tuple[float, int]] = [(0.0, 0)]
    marks: dict[str, float] = {}
    while time.monotonic() - killed < TIMEOUT_S:
        count = await connected_on(nc, survivors, wanted)
        now = round(time.monotonic() - killed, 2)
        timeline.append((now, count))
        seen = await status(api, "victim")
        if seen in ("silent", "down") and seen not in marks:
            marks[seen] = now
        if count == len(wanted):
            return timeline, marks
        await asyncio.sleep(0.1)
    raise RuntimeError(f"only {timeline[-1][1]} of {len(wanted)} back after {TIMEOUT_S} s")


async def raw_kv_cas(nc: NATS, seconds: float = 2.0) -> float:
    kv = await nc.jetstream().create_key_value(KeyValueConfig(bucket="bench_cas", history=1))
    revision = await kv.put("k", b"0")
    done = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        revision = await kv.update("k", str(done).encode(), last=revision)
        done += 1
    await nc.jetstream().delete_key_value("bench_cas")
    return done / seconds


async def run(root: Path) -> dict[str, Any]:
    logs = root / "logs"
    logs.mkdir()
    nats_server = start_nats(root / "nats", log_path=logs / "nats.log")
    valkey_server = start_valkey(root / "valkey", log_path=logs / "valkey.log")
    nats_url = f"nats://127.0.0.1:{nats_server.port}"
    http_port = free_port()
    processes: list[subprocess.Popen[bytes]] = []

    def agent(node_id: str) -> subprocess.Popen[bytes]:
        env = {
            "ZAPFLEET_NATS_URL": nats_url,
            "ZAPFLEET_NODE_ID": node_id,
            "ZAPFLEET_ENGINE": "sim",
            "ZAPFLEET_DATA_DIR": str(root / node_id),
            "ZAPFLEET_METRICS_PORT": "0",
            "ZAPFLEET_MAX_SESSIONS": str(SESSIONS),
        }
        process = spawn_zapfleet(["agent"], env, logs / f"{node_id}.log")
        processes.append(process)
        return process

    nc = await nats.connect(nats_url)
    try:
        processes.append(
            spawn_zapfleet(
                ["control-plane"],
                {
                    "ZAPFLEET_NATS_URL": nats_url,
                    "ZAPFLEET_VALKEY_URL": f"valkey://127.0.0.1:{valkey_server.port}/0",
                    "ZAPFLEET_ADMIN_KEY": ADMIN_KEY,
                    "ZAPFLEET_HTTP_PORT": str(http_port),
                    "ZAPFLEET_DEFAULT_ENGINE": "sim",
                    "ZAPFLEET_WEBHOOKS_IN_PROCESS": "false",
                    "ZAPFLEET_RATE_LIMITS_ENABLED": "false",  # 150 creates in a burst
                },
                logs / "control-plane.log",
            )
        )
        wait_for_port(http_port, 60, processes[-1])
        victim = agent("victim")
        api = httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{http_port}",
            headers={"X-API-Key": ADMIN_KEY},
            timeout=30,
        )

        async def up(node_id: str) -> bool:
            return await status(api, node_id) == "up"

        await wait_for(lambda: up("victim"), 60, "the first agent")
        ids = [f"bench{i:03d}" for i in range(SESSIONS)]
        await create_linked(api, nc, ids)
        sim_kv = await nc.jetstream().key_value(SIM_BUCKET)
        violations_before = await violations(sim_kv)
        placements_per_s = await place_all(api, ids)
        wanted = set(ids)

        async def all_on_victim() -> bool:
            return await connected_on(nc, ["victim"], wanted) == SESSIONS

        await wait_for(all_on_victim, 60, "150 sessions CONNECTED on the first agent")
        agent("survivor-1")
        agent("survivor-2")
        await wait_for(lambda: up("survivor-1"), 60, "survivor-1")
        await wait_for(lambda: up("survivor-2"), 60, "survivor-2")
        survivors = ["survivor-1", "survivor-2"]

        victim.kill()
        timeline, marks = await watch_failover(nc, api, survivors, wanted)
        failover_s = timeline[-1][0]
        await asyncio.sleep(2)  # a few keepalives of every socket
        duplicate_sockets, kv_cas = (
            await violations(sim_kv) - violations_before,
            await raw_kv_cas(nc),
        )
        await api.aclose()
    finally:
        await nc.close()
        for process in reversed(processes):
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(15)
                except subprocess.TimeoutExpired:
                    process.kill()
        valkey_server.stop()
        nats_server.stop()

    floor = LEASE_S + MARGIN_S
    return {
        "sessions": SESSIONS,
        "failover_s": round(failover_s, 2),
        "duplicate_sockets": duplicate_sockets,
        "placements_per_s": round(placements_per_s, 1),
        "lease_expired_seen_s": marks.get("silent"),
        "node_down_detected_s": marks.get("down"),
        "detection_floor_s": floor,
        "failover_vs_floor": round(failover_s / floor, 2),
        "raw_kv_cas_per_s": round(kv_cas, 1),
        "placements_vs_raw_kv_cas": round(placements_per_s / kv_cas, 3),
        "settings": {"heartbeat_s": 2.0, "lease_ttl_s": LEASE_S, "lease_margin_s": MARGIN_S},
        "target": {"failover_s_max": 15.0, "duplicate_sockets": 0},
        "timeline": [[round(t, 2), c] for t, c in timeline],
        "note": "2 shared cores; other engineers' tests may run at the same time",
    }


def plot(results: dict[str, Any]) -> None:
    plt, path = figure("failover")
    times = [t for t, _ in results["timeline"]]
    counts = [c for _, c in results["timeline"]]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.step(times, counts, where="post", label="sessions CONNECTED on survivors")
    ax.axvline(0, color="black", linestyle=":", label="SIGKILL")
    ax.axvline(results["detection_floor_s"], color="grey", linestyle="--", label="lease + margin")
    if results["lease_expired_seen_s"] is not None:
        ax.axvline(results["lease_expired_seen_s"], color="purple", linestyle=":", label="silent")
    if results["node_down_detected_s"] is not None:
        ax.axvline(results["node_down_detected_s"], color="red", linestyle="-.", label="node down")
    ax.axhline(results["sessions"], color="green", linewidth=0.5)
    ax.axvline(15, color="orange", linewidth=0.8, label="target 15 s")
    ax.set_xlabel("seconds since the agent was killed")
    ax.set_ylabel("sessions")
    ax.set_title(
        f"Failover of {results['sessions']} sessions: {results['failover_s']} s, "
        f"duplicate sockets {results['duplicate_sockets']}"
    )
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="zapfleet-bench-failover-") as tmp:
        results = asyncio.run(run(Path(tmp)))
    write_json("failover", results)
    plot(results)
    print(
        f"failover {results['failover_s']} s = {results['failover_vs_floor']} x the lease floor "
        f"({results['detection_floor_s']} s); placements {results['placements_per_s']}/s = "
        f"{results['placements_vs_raw_kv_cas']} x raw KV CAS ({results['raw_kv_cas_per_s']}/s)"
    )


if __name__ == "__main__":
    main()

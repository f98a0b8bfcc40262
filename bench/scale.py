"""`just bench scale`: do the control plane's costs grow with the fleet, or faster? (issue 17)

Real processes: NATS (with its monitoring port), Valkey, one control plane, sim agents.
Two points in one run: a small fleet (``SMALL_SESSIONS`` on 2 agents) and a large one
(``ZAPFLEET_BENCH_SCALE_SESSIONS``, default 2,000, on ``ZAPFLEET_BENCH_SCALE_AGENTS``,
default 16; the issue's 5,000 on 40 agents by setting them). Sessions are created linked
to sim phones, so each connects and keeps its socket alive like a real one.

At each point, the same measurements:
- ``placements_per_s``: 32 concurrent starts (placement + start RPC);
- idle CPU over ``IDLE_S`` seconds with the fleet doing nothing, in percent of a core:
  control plane, NATS, all agents (sum and per agent);
- ``GET /v1/sessions`` first page (limit 50) p50/p99 over 100 requests, and a full
  listing walk with limit 1000;
- NATS consumers on the server (``/jsz``) and NATS/control-plane RSS per session.

Ratios large/small say whether a cost grows with the fleet (ratio ~1 for per-operation
costs, ~S_large/S_small for totals); docs/benchmarks/scale.json + scale.png.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import nats
import psutil
from nats.aio.client import Client as NATS

from bench._processes import cpu_seconds, spawn, spawn_zapfleet
from bench._report import figure, write_json
from bench.failover import ADMIN_KEY, create_linked, place_all, status, wait_for
from zapfleet.devservers import free_port, nats_server_binary, start_valkey, wait_for_port

SMALL_SESSIONS = 150
SMALL_AGENTS = 2
LARGE_SESSIONS = int(os.environ.get("ZAPFLEET_BENCH_SCALE_SESSIONS", "2000"))
LARGE_AGENTS = int(os.environ.get("ZAPFLEET_BENCH_SCALE_AGENTS", "16"))
IDLE_S = float(os.environ.get("ZAPFLEET_BENCH_SCALE_IDLE_S", "10"))
# a scale.json of an earlier run (e.g. the code before a change) to keep and plot beside
BEFORE = os.environ.get("ZAPFLEET_BENCH_SCALE_BEFORE")


class Fleet:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.logs = root / "logs"
        self.logs.mkdir()
        self.nats_port, self.monitor_port, self.http_port = free_port(), free_port(), free_port()
        self.nats_url = f"nats://127.0.0.1:{self.nats_port}"
        args = [nats_server_binary(), "--addr", "127.0.0.1", "--port", str(self.nats_port)]
        args += ["--http_port", str(self.monitor_port), "--jetstream"]
        args += ["--store_dir", str(root / "nats")]
        self.nats = spawn(args, {}, self.logs / "nats.log")
        wait_for_port(self.nats_port, 15, self.nats)
        self.valkey = start_valkey(root / "valkey", log_path=self.logs / "valkey.log")
        self.control_plane = spawn_zapfleet(
            ["control-plane"],
            {
                "ZAPFLEET_NATS_URL": self.nats_url,
                "ZAPFLEET_VALKEY_URL": f"valkey://127.0.0.1:{self.valkey.port}/0",
                "ZAPFLEET_ADMIN_KEY": ADMIN_KEY,
                "ZAPFLEET_HTTP_PORT": str(self.http_port),
                "ZAPFLEET_DEFAULT_ENGINE": "sim",
                "ZAPFLEET_WEBHOOKS_IN_PROCESS": "false",
                "ZAPFLEET_RATE_LIMITS_ENABLED": "false",
            },
            self.logs / "control-plane.log",
        )
        wait_for_port(self.http_port, 60, self.control_plane)
        self.agents: dict[str, subprocess.Popen[bytes]] = {}

    def add_agent(self, node_id: str, capacity: int) -> None:
        self.agents[node_id] = spawn_zapfleet(
            ["agent"],
            {
                "ZAPFLEET_NATS_URL": self.nats_url,
                "ZAPFLEET_NODE_ID": node_id,
                "ZAPFLEET_ENGINE": "sim",
                "ZAPFLEET_DATA_DIR": str(self.root / node_id),
                "ZAPFLEET_METRICS_PORT": "0",
                "ZAPFLEET_MAX_SESSIONS": str(capacity),
                "ZAPFLEET_LOG_LEVEL": "WARNING",
            },
            self.logs / f"{node_id}.log",
        )

    def stop(self) -> None:
        for process in [self.control_plane, *self.agents.values(), self.nats]:
            if process.poll() is None:
                process.terminate()
        for process in [self.control_plane, *self.agents.values(), self.nats]:
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
        self.valkey.stop()

    def jsz(self) -> dict[str, Any]:
        response = httpx.get(f"http://127.0.0.1:{self.monitor_port}/jsz", timeout=5)
        response.raise_for_status()
        body: dict[str, Any] = response.json()
        return body


async def connected(api: httpx.AsyncClient) -> int:
    """Sessions CONNECTED, from the nodes view (no listing walk: that is measured)."""
    response = await api.get("/v1/nodes")
    return sum(n.get("by_state", {}).get("CONNECTED", 0) for n in response.json()["nodes"])


async def listing(api: httpx.AsyncClient) -> dict[str, float]:
    samples = []
    for _ in range(100):
        started = time.perf_counter()
        response = await api.get("/v1/sessions", params={"limit": 50})
        samples.append((time.perf_counter() - started) * 1000)
        response.raise_for_status()
    started = time.perf_counter()
    offset = 0
    cursor: str | None = None
    while True:  # the whole listing, 1000 a page: by cursor (offset before cursors existed)
        params: dict[str, str | int] = {"limit": 1000}
        if cursor is not None:
            params["cursor"] = cursor
        else:
            params["offset"] = offset
        body = (await api.get("/v1/sessions", params=params)).json()
        offset += len(body["sessions"])
        cursor = body.get("next_cursor")
        if cursor is None and len(body["sessions"]) < 1000:
            break
        if cursor is None and "next_cursor" in body:
            break
    quantiles = statistics.quantiles(samples, n=100)
    return {
        "list_first_page_p50_ms": round(statistics.median(samples), 2),
        "list_first_page_p99_ms": round(quantiles[98], 2),
        "list_walk_s": round(time.perf_counter() - started, 3),
    }


def idle_cpu(fleet: Fleet) -> dict[str, float]:
    processes = {"control_plane": [fleet.control_plane], "nats": [fleet.nats]}
    processes["agents"] = list(fleet.agents.values())
    before = {k: sum(cpu_seconds(p) for p in ps) for k, ps in processes.items()}
    time.sleep(IDLE_S)
    after = {k: sum(cpu_seconds(p) for p in ps) for k, ps in processes.items()}
    result = {f"idle_cpu_{k}_pct": round(100 * (after[k] - before[k]) / IDLE_S, 2) for k in before}
    result["idle_cpu_per_agent_pct"] = round(result["idle_cpu_agents_pct"] / len(fleet.agents), 3)
    return result


def rss_mb(process: subprocess.Popen[bytes]) -> float:
    parent = psutil.Process(process.pid)
    return sum(p.memory_info().rss for p in [parent, *parent.children(recursive=True)]) / 2**20


async def point(fleet: Fleet, api: httpx.AsyncClient, nc: NATS, sessions: int) -> dict[str, Any]:
    """Grow the fleet to ``sessions`` (agents already added) and measure."""
    have = await connected(api)
    ids = [f"scale{i:05d}" for i in range(have, sessions)]
    await create_linked(api, nc, ids, first=have)
    placements_per_s = await place_all(api, ids)

    async def all_connected() -> bool:
        return await connected(api) >= sessions

    await wait_for(all_connected, 600, f"{sessions} sessions CONNECTED")
    await asyncio.sleep(3)  # settle: the last events and heartbeats
    result: dict[str, Any] = {"sessions": sessions, "agents": len(fleet.agents)}
    result["placements_per_s"] = round(placements_per_s, 1)
    before = _audits(fleet)
    result.update(await asyncio.to_thread(idle_cpu, fleet))
    result.update(await listing(api))
    # an audit at this size: the idle wait and the listing take one audit period or so
    await wait_for(lambda: _audited(fleet, before), 60, "a reconciler audit")
    result["reconcile_audit_s"] = _last_audit(fleet)
    jsz = fleet.jsz()
    result["nats_consumers"] = jsz.get("consumers")
    result["nats_rss_mb_per_1k_sessions"] = round(1000 * rss_mb(fleet.nats) / sessions, 1)
    cp_rss = rss_mb(fleet.control_plane)
    result["control_plane_rss_mb_per_1k_sessions"] = round(1000 * cp_rss / sessions, 1)
    print(result, flush=True)
    return result


async def run(root: Path) -> dict[str, Any]:
    fleet = Fleet(root)
    nc = await nats.connect(fleet.nats_url)
    api = httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{fleet.http_port}",
        headers={"X-API-Key": ADMIN_KEY},
        timeout=60,
    )
    try:
        per_agent = max(150, -(-LARGE_SESSIONS // LARGE_AGENTS) + 10)
        for i in range(SMALL_AGENTS):
            fleet.add_agent(f"scale-{i:02d}", per_agent)
        for node_id in list(fleet.agents):
            await wait_for(lambda n=node_id: _up(api, n), 120, node_id)
        small = await point(fleet, api, nc, SMALL_SESSIONS)
        for i in range(SMALL_AGENTS, LARGE_AGENTS):
            fleet.add_agent(f"scale-{i:02d}", per_agent)
        for node_id in list(fleet.agents):
            await wait_for(lambda n=node_id: _up(api, n), 180, node_id)
        large = await point(fleet, api, nc, LARGE_SESSIONS)
    finally:
        await api.aclose()
        await nc.close()
        fleet.stop()
    ratios = {
        "placement_ratio": round(large["placements_per_s"] / small["placements_per_s"], 3),
        "list_p99_ratio": round(
            large["list_first_page_p99_ms"] / small["list_first_page_p99_ms"], 2
        ),
        "idle_cpu_control_plane_ratio_per_session": _per_session(large, small, "control_plane"),
        "idle_cpu_nats_ratio_per_session": _per_session(large, small, "nats"),
        "sessions_ratio": round(large["sessions"] / small["sessions"], 2),
    }
    return {
        "small": small,
        "large": large,
        "ratios": ratios,
        "targets": {
            "placement_ratio_min": 0.8,
            "list_first_page_p99_ms_max": 25,
            "idle_cpu_control_plane_pct_max": 2,
            "idle_cpu_nats_pct_max": 5,
            "idle_cpu_per_agent_pct_max": 0.5,
        },
        "note": "2 shared cores; the large point is sized for this machine (env to change it)",
    }


def _audits(fleet: Fleet) -> int:
    text = (fleet.logs / "control-plane.log").read_text(errors="replace")
    return text.count('"audit done"')


async def _audited(fleet: Fleet, before: int) -> bool:
    return _audits(fleet) > before


def _last_audit(fleet: Fleet) -> float | None:
    """The last reconciler audit the control plane logged ("audit done"), in seconds."""
    seconds = None
    for line in (fleet.logs / "control-plane.log").read_text(errors="replace").splitlines():
        if '"audit done"' in line:
            with contextlib.suppress(ValueError, KeyError):
                seconds = float(json.loads(line)["seconds"])
    return seconds


async def _up(api: httpx.AsyncClient, node_id: str) -> bool:
    return await status(api, node_id) == "up"


def _per_session(large: dict[str, Any], small: dict[str, Any], name: str) -> float | None:
    """Idle CPU per session, large / small: 1.0 means it grows linearly with the fleet."""
    key = f"idle_cpu_{name}_pct"
    if not small[key]:
        return None
    return round((large[key] / large["sessions"]) / (small[key] / small["sessions"]), 2)


def plot(results: dict[str, Any]) -> None:
    plt, path = figure("scale")
    small, large = results["small"], results["large"]
    metrics = [
        ("placements_per_s", "placements/s"),
        ("list_first_page_p99_ms", "list p99 ms"),
        ("idle_cpu_control_plane_pct", "CP idle %"),
        ("idle_cpu_nats_pct", "NATS idle %"),
        ("idle_cpu_per_agent_pct", "agent idle %"),
        ("reconcile_audit_s", "audit s"),
        ("nats_consumers", "consumers"),
    ]
    runs = [("", small, large)]
    if "before" in results:
        before = results["before"]
        runs.insert(0, ("before ", before["small"], before["large"]))
    fig, axes = plt.subplots(1, len(metrics), figsize=(16, 3.8))
    for ax, (key, label) in zip(axes, metrics, strict=True):
        names, values, colors = [], [], []
        for prefix, low, high in runs:
            for at, color in ((low, "grey"), (high, "C1" if prefix else "C0")):
                names.append(f"{prefix}{at['sessions']}")
                values.append(at.get(key) or 0)
                colors.append(color)
        ax.bar(names, values, color=colors)
        ax.set_title(label, fontsize=9)
        ax.tick_params(axis="x", labelsize=7, rotation=30)
    fig.suptitle("zapfleet at two fleet sizes (sessions), one run")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="zapfleet-bench-scale-") as tmp:
        results = asyncio.run(run(Path(tmp)))
    if BEFORE:
        before = json.loads(Path(BEFORE).read_text())
        results["before"] = {k: before[k] for k in ("small", "large", "ratios") if k in before}
    write_json("scale", results)
    plot(results)


if __name__ == "__main__":
    main()

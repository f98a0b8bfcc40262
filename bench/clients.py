"""`just bench clients`: the two hand-written network clients against the best libraries,
measured in one run on this machine (issue 14: "a hand-written client needs a measured
reason").

**Valkey** (a real ``valkey-server``): ``control_plane/resp.py`` (``FastValkey``, one
pipelined connection per process) against valkey-py's asyncio client with the
``libvalkey`` C parser (its default when installed; a connection pool, one connection per
concurrent command), valkey-py with its pure-Python parser, and valkey-glide (Rust core,
one multiplexed connection). The workloads are what the control plane's hot path sends:

- ``send``: one ``POST /messages`` = the GCRA rate-limit script (``EVALSHA``, two keys,
  control_plane/ratelimit.py) + the idempotency reservation (``SET NX PX GET``) + its
  completion (``SET PX``), one after the other (control_plane/idempotency.py);
- ``status``: one cached ``GET /status`` = the rate-limit script reading the cached value
  and its generation in the same round trip (``EVALSHA``, four keys).

**HTTP** (a real local server: granian, one worker, bench/_webhook_receiver.py answering
204): ``control_plane/webhooks/http.py`` (``WebhookClient``) against httpcore with the
SSRF-checking network backend ``zapfleet.ssrf.PinnedBackend`` (resolve, check, dial the
checked address — what the media fetcher uses, and what a swap would use), aiohttp with
an SSRF-checking resolver over ``zapfleet.ssrf.dial_addresses``, and httpx (no SSRF hook:
the cost of the client alone). Webhook-style signed JSON POSTs (~300 bytes), keep-alive, at most 25
connections; one at a time (``post_c1``: the cost of a request) and 25 concurrent
(``post_c25``: a busy dispatcher).

Each client runs the same fixed number of requests per round, clients interleaved round
by round (so load from other work on the machine hits all of them alike); the median
round counts. Two figures per client: requests per second and **CPU µs per request** of
this process (``time.process_time``: all threads, so glide's Rust threads are counted).
The server's CPU is not included. The ratios are library / ours: above 1 means the
library needs more CPU (or is slower) than ours.

The libraries measured only here are not project dependencies: install them first
(``.venv/bin/uv pip install libvalkey valkey-glide aiohttp``); a missing one is left out
and said so. Note that installing ``libvalkey`` makes valkey-py use it everywhere.

Output: docs/benchmarks/clients.json + clients.png.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import socket
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpcore
import httpx

from bench._processes import ROOT, spawn, stop
from bench._report import figure, write_json
from control_plane.ratelimit import _GCRA
from control_plane.resp import FastValkey
from control_plane.webhooks.http import WebhookClient
from zapfleet.devservers import free_port, start_valkey, wait_for_port
from zapfleet.ssrf import AddressPolicy, PinnedBackend, UnsafeURLError, dial_addresses

ROUNDS = int(os.environ.get("ZF_BENCH_ROUNDS", "5"))
VALKEY_REQUESTS = {1: 2_000, 64: 10_000}  # per round, by concurrency
HTTP_REQUESTS = {1: 1_000, 25: 3_000}  # per round, by concurrency
HTTP_CONCURRENCY = 25  # connections at most (the dispatcher's per-destination default is 20)
KEEP_IF_BEST_LIBRARY_CPU_RATIO_AT_LEAST = 1.5  # "wins clearly": the library costs 1.5x
POLICY = AddressPolicy.from_settings(False, ["127.0.0.1/32"])


# -- Valkey -----------------------------------------------------------------------------


class ValkeyPy:
    """valkey-py used as the hot path would use it: ``execute_command`` and ``EVALSHA``."""

    def __init__(self, port: int, pure_python: bool) -> None:
        import valkey.asyncio as avalkey

        options: dict[str, Any] = {}
        if pure_python:
            from valkey._parsers import _AsyncRESP2Parser

            options["parser_class"] = _AsyncRESP2Parser
        pool = avalkey.ConnectionPool(host="127.0.0.1", port=port, **options)
        self.client = avalkey.Valkey(connection_pool=pool)

    async def execute(self, *args: Any) -> Any:
        return await self.client.execute_command(*args)

    async def evalsha(self, script: str, keys: list[str], args: list[Any]) -> Any:
        sha = hashlib.sha1(script.encode()).hexdigest()
        return await self.client.evalsha(sha, len(keys), *keys, *args)

    async def close(self) -> None:
        await self.client.aclose()


class Glide:
    def __init__(self, client: Any) -> None:
        from glide import Script

        self.client = client
        self.scripts: dict[str, Any] = {}
        self.script_type = Script

    @classmethod
    async def create(cls, port: int) -> Glide:
        from glide import GlideClient, GlideClientConfiguration, NodeAddress

        config = GlideClientConfiguration([NodeAddress("127.0.0.1", port)], request_timeout=5000)
        return cls(await GlideClient.create(config))

    async def execute(self, *args: Any) -> Any:
        return await self.client.custom_command([str(a) if isinstance(a, int) else a for a in args])

    async def evalsha(self, script: str, keys: list[str], args: list[Any]) -> Any:
        compiled = self.scripts.get(script)
        if compiled is None:
            compiled = self.scripts[script] = self.script_type(script)
        text = [str(a) if isinstance(a, int) else a for a in args]
        return await self.client.invoke_script(compiled, keys=keys, args=text)

    async def close(self) -> None:
        await self.client.close()


def _valkey_workloads() -> dict[str, Callable[[Any, int], Awaitable[None]]]:
    rate_args = [2, 1_000_000, 60_000, 1_000_000, 60_000]  # never limited: same work each time
    entry = b'{"state":"pending","body":"' + b"d" * 64 + b'"}'
    done = b'{"state":"done","body":"' + b"d" * 64 + b'","status":202,"response":{}}' + b" " * 200

    async def send(client: Any, n: int) -> None:
        key = f"k{n % 50}"
        reply = await client.evalsha(_GCRA, [f"rl:messages:{key}", f"rl:global:{key}"], rate_args)
        assert int(reply[0]) == 1
        idem = f"idem:{n}"
        await client.execute("SET", idem, entry, "NX", "PX", 60_000, "GET")
        await client.execute("SET", idem, done, "PX", 60_000)

    async def status(client: Any, n: int) -> None:
        key = f"k{n % 50}"
        keys = [f"rl:queries:{key}", f"rl:global:{key}", "c:status:s1", "c:gen:s1"]
        reply = await client.evalsha(_GCRA, keys, rate_args)
        assert reply[5] == b"x" * 180

    return {"send": send, "status": status}


async def _drive(
    request: Callable[[int], Awaitable[None]], total: int, concurrency: int
) -> tuple[float, float]:
    """(requests/s, CPU µs per request) of ``total`` requests, ``concurrency`` at a time."""
    counter = iter(range(total))

    async def worker() -> None:
        for n in counter:
            await request(n)

    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return total / wall, 1e6 * cpu / total


async def valkey_part(port: int) -> dict[str, Any]:
    ours = FastValkey(f"valkey://127.0.0.1:{port}")
    await ours.execute("SET", "c:status:s1", b"x" * 180)
    await ours.execute("SET", "c:gen:s1", b"3")
    await ours.execute("SCRIPT", "LOAD", _GCRA)
    clients: dict[str, Any] = {"ours (resp.py)": ours}
    libvalkey = ValkeyPy(port, pure_python=False)
    import valkey.utils

    if valkey.utils.LIBVALKEY_AVAILABLE:
        clients["valkey-py + libvalkey"] = libvalkey
    clients["valkey-py (pure Python parser)"] = ValkeyPy(port, pure_python=True)
    try:
        clients["valkey-glide"] = await Glide.create(port)
    except ImportError:
        print("  valkey-glide not installed: left out", flush=True)
    workloads = _valkey_workloads()
    runs: dict[str, dict[str, list[tuple[float, float]]]] = {}
    for client in clients.values():  # warm up: connections, scripts, caches
        for workload in workloads.values():
            await _drive(lambda n, c=client, w=workload: w(c, n), 500, 64)
    for round_number in range(ROUNDS):
        for workload_name, workload in workloads.items():
            for concurrency, total in VALKEY_REQUESTS.items():
                label = f"{workload_name}_c{concurrency}"
                for name, client in clients.items():
                    figures = await _drive(
                        lambda n, c=client, w=workload: w(c, n), total, concurrency
                    )
                    runs.setdefault(label, {}).setdefault(name, []).append(figures)
        print(f"  valkey round {round_number + 1}/{ROUNDS} done", flush=True)
    for client in clients.values():
        await client.close()
    return _summarise(runs, "ours (resp.py)")


# -- HTTP -------------------------------------------------------------------------------


def _ssrf_resolver(policy: AddressPolicy) -> Any:
    import aiohttp

    class SsrfResolver(aiohttp.abc.AbstractResolver):
        async def resolve(
            self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
        ) -> list[aiohttp.abc.ResolveResult]:
            try:
                allowed = await dial_addresses(host, port, policy)
            except UnsafeURLError as exc:
                raise OSError(str(exc)) from None
            return [
                {"hostname": host, "host": str(a), "port": port, "family": socket.AF_INET6
                 if a.version == 6 else socket.AF_INET, "proto": 0, "flags": 0}
                for a in allowed
            ]  # fmt: skip

        async def close(self) -> None:
            return None

    return SsrfResolver()


async def http_part(url: str) -> dict[str, Any]:
    body = (
        b'{"id":"ev_0123456789abcdef","type":"message.received","tenant":"bench",'
        b'"session_id":"s1","ts":%.3f,"data":{"message_id":"m1","from":"15550001111",'
        b'"type":"text","text":"' + b"hello " * 20 + b'"}}'
    )
    headers = {
        "Content-Type": "application/json",
        "Webhook-Id": "ev_0123456789abcdef",
        "Webhook-Timestamp": "1764756000",
        "Webhook-Signature": "v1," + "A" * 44,
    }

    def payload() -> bytes:
        return body % time.time()

    ours = WebhookClient(POLICY, user_agent="zapfleet-bench")
    pool = httpcore.AsyncConnectionPool(
        max_connections=HTTP_CONCURRENCY, keepalive_expiry=15, network_backend=PinnedBackend(POLICY)
    )
    pool_headers = [(k.encode(), v.encode()) for k, v in headers.items()]
    plain = httpx.AsyncClient(
        limits=httpx.Limits(max_connections=HTTP_CONCURRENCY, keepalive_expiry=15),
        headers={"User-Agent": "zapfleet-bench"},
    )

    async def with_ours(_: int) -> None:
        assert await ours.post(url, payload(), headers) == 204

    async def with_httpcore(_: int) -> None:
        response = await pool.request("POST", url, headers=pool_headers, content=payload())
        assert response.status == 204

    async def with_httpx(_: int) -> None:
        response = await plain.post(url, content=payload(), headers=headers)
        assert response.status_code == 204

    requests: dict[str, Callable[[int], Awaitable[None]]] = {
        "ours (webhooks/http.py)": with_ours,
        "httpcore + SSRF backend": with_httpcore,
    }
    session: Any = None
    try:
        import aiohttp

        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(
                limit=HTTP_CONCURRENCY, resolver=_ssrf_resolver(POLICY), keepalive_timeout=15
            ),
            headers={"User-Agent": "zapfleet-bench"},
        )

        async def with_aiohttp(_: int) -> None:
            async with session.post(url, data=payload(), headers=headers) as response:
                await response.read()
                assert response.status == 204

        requests["aiohttp + SSRF resolver"] = with_aiohttp
    except ImportError:
        print("  aiohttp not installed: left out", flush=True)
    requests["httpx (no SSRF hook)"] = with_httpx

    runs: dict[str, dict[str, list[tuple[float, float]]]] = {}
    for request in requests.values():
        await _drive(request, 500, HTTP_CONCURRENCY)
    for round_number in range(ROUNDS):
        for concurrency, total in HTTP_REQUESTS.items():
            for name, request in requests.items():
                figures = await _drive(request, total, concurrency)
                runs.setdefault(f"post_c{concurrency}", {}).setdefault(name, []).append(figures)
        print(f"  http round {round_number + 1}/{ROUNDS} done", flush=True)
    await ours.close()
    await pool.aclose()
    await plain.aclose()
    if session is not None:
        await session.close()
    return _summarise(runs, "ours (webhooks/http.py)")


# -- summary ----------------------------------------------------------------------------


def _summarise(runs: dict[str, dict[str, list[tuple[float, float]]]], ours: str) -> dict[str, Any]:
    """Per workload and client: median requests/s and CPU µs per request; ratios library /
    ours (CPU: > 1 = the library costs more; throughput: < 1 = the library is slower)."""
    summary: dict[str, Any] = {}
    for label, by_client in runs.items():
        medians = {
            name: {
                "requests_per_s": round(statistics.median(r for r, _ in figures)),
                "cpu_us_per_request": round(statistics.median(c for _, c in figures), 1),
            }
            for name, figures in by_client.items()
        }
        base = medians[ours]
        for name, figures in medians.items():
            if name != ours:
                figures["cpu_ratio_vs_ours"] = round(
                    figures["cpu_us_per_request"] / base["cpu_us_per_request"], 2
                )
                figures["throughput_ratio_vs_ours"] = round(
                    figures["requests_per_s"] / base["requests_per_s"], 2
                )
        summary[label] = medians
    return summary


def decide(part: dict[str, Any], ours: str) -> dict[str, Any]:
    """Keep ours only if, in every workload, the cheapest library needs at least
    KEEP_IF_BEST_LIBRARY_CPU_RATIO_AT_LEAST times our CPU per request."""
    worst: tuple[float, str, str] | None = None
    for label, medians in part.items():
        best = min((m["cpu_ratio_vs_ours"], name) for name, m in medians.items() if name != ours)
        if worst is None or best[0] < worst[0]:
            worst = (best[0], best[1], label)
    assert worst is not None
    keep = worst[0] >= KEEP_IF_BEST_LIBRARY_CPU_RATIO_AT_LEAST
    return {
        "keep_hand_written": keep,
        "closest_library": worst[1],
        "closest_cpu_ratio": worst[0],
        "closest_in": worst[2],
    }


async def run(workdir: Path) -> dict[str, Any]:
    valkey = start_valkey(workdir / "valkey", log_path=workdir / "valkey.log")
    port = free_port()
    receiver = spawn(
        [sys.executable, "-m", "granian", "--interface", "asginl", "--workers", "1",
         "--loop", "uvloop", "--port", str(port), "--no-access-log", "--log-level", "warning",
         "--backlog", "2048", "bench._webhook_receiver:app"],
        {}, workdir / "receiver.log",
    )  # fmt: skip
    try:
        print("valkey: resp.py vs valkey-py (+libvalkey) vs valkey-glide ...", flush=True)
        resp = await valkey_part(valkey.port)
        wait_for_port(port, 30, receiver)
        print("http: webhooks/http.py vs httpcore vs aiohttp vs httpx ...", flush=True)
        http = await http_part(f"http://127.0.0.1:{port}/hook")
    finally:
        stop(receiver)
        valkey.stop()
    return {
        "valkey": resp,
        "http": http,
        "decision": {
            "rule": (
                "keep a hand-written client only if, in every workload, the cheapest library "
                f"needs at least {KEEP_IF_BEST_LIBRARY_CPU_RATIO_AT_LEAST}x its CPU per request"
            ),
            "resp": decide(resp, "ours (resp.py)"),
            "http": decide(http, "ours (webhooks/http.py)"),
        },
        "setup": (
            f"this process on uvloop against 1 valkey-server and 1 granian worker on the same "
            f"2-core machine (shared with other work, see machine.load_avg_1m); {ROUNDS} rounds, "
            "clients interleaved, medians; Valkey: "
            f"{VALKEY_REQUESTS} requests per round by concurrency; HTTP: {HTTP_REQUESTS} POSTs "
            f"per round by concurrency, at most {HTTP_CONCURRENCY} keep-alive connections"
        ),
        "versions": _versions(),
    }


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for package in (
        "valkey",
        "libvalkey",
        "valkey-glide",
        "httpcore",
        "httpx",
        "aiohttp",
        "httptools",
    ):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = "not installed"
    return found


def plot(results: dict[str, Any]) -> None:
    plt, path = figure("clients")
    panels = [(f"Valkey: {label}", m) for label, m in results["valkey"].items()]
    panels += [(f"HTTP: {label}", m) for label, m in results["http"].items()]
    rows = 2
    columns = -(-len(panels) // rows)
    fig, grid = plt.subplots(rows, columns, figsize=(4.2 * columns, 4.2 * rows))
    axes = list(grid.flat)
    for axis in axes[len(panels) :]:
        axis.set_visible(False)
    for axis, (title, medians) in zip(axes, panels, strict=False):
        names = list(medians)
        values = [medians[n]["cpu_us_per_request"] for n in names]
        colors = ["#2f6fde" if n.startswith("ours") else "#9aa5b1" for n in names]
        axis.bar(range(len(names)), values, color=colors)
        axis.set_xticks(range(len(names)))
        axis.set_xticklabels([n.replace(" (", "\n(").replace(" + ", "\n+ ") for n in names],
                             fontsize=7, rotation=30, ha="right")  # fmt: skip
        axis.set_title(title, fontsize=9)
        axis.set_ylabel("client CPU µs per request (lower is better)", fontsize=8)
    load = results.get("machine", {}).get("load_avg_1m", round(os.getloadavg()[0], 1))
    fig.suptitle(f"Hand-written clients (blue) vs libraries (load avg {load}, 2 cores)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


def main() -> None:
    workdir = ROOT / "test-artifacts" / "bench-clients"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    load_at_start = round(os.getloadavg()[0], 2)
    import uvloop

    results = uvloop.run(run(workdir))
    results["load_avg_1m_at_start"] = load_at_start
    plot(results)
    write_json("clients", results)
    for part in ("resp", "http"):
        verdict = results["decision"][part]
        print(
            f"{part}: keep hand-written = {verdict['keep_hand_written']} (closest: "
            f"{verdict['closest_library']}, {verdict['closest_cpu_ratio']}x our CPU in "
            f"{verdict['closest_in']})"
        )


if __name__ == "__main__":
    main()

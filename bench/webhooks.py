"""`just bench webhooks`: webhook delivery throughput, loss under errors, latency.

Real processes: a nats-server, standalone dispatchers (`zapfleet webhooks`, default
concurrency 25 / 20 per destination) and a receiver (bench/_webhook_receiver.py on
granian, one worker). The bench process publishes events to ZF_EVENTS as agents do
(`Nats-Msg-Id` = event id) and reads what the receiver got.

Phases:
1. baseline: the dispatcher's own HTTP client (25 concurrent, keep-alive) POSTs straight
   to the receiver, no NATS: the ceiling of this machine for this receiver;
2. throughput: 20,000 events stored first, then the dispatchers start; deliveries/s from
   the first to the last delivery — with one process (and its CPU time per delivery),
   then with two sharing the consumer (one per core: ``deliveries_per_s``);
3. 30 % errors: the receiver answers 503 to 30 % of calls (at random); 10,000 events;
   retries back off from 0.05 s (capped at 0.5 s: the bench measures the dispatcher, not
   the backoff policy) for up to 20 attempts, so that "lost" means lost, not "retrying";
4. latency: 500 events/s for 10 s; p50/p99 from event creation to its arrival;
5. isolation: one tenant at 50 events/s beside another at 200/s, p99 with both receivers
   up, then while the other's refuses connections (its deliveries wait in its backlog).

Output: docs/benchmarks/webhooks.json (+ webhooks.png) with ``deliveries_per_s``,
``deliveries_per_s_30pct_errors``, ``lost_events`` (events of phases 2-4 never delivered),
``p99_delivery_ms_at_500_per_s``, ``isolated_p99_ms_during_outage`` and
``isolated_p99_ratio`` (during the outage / without it), the baseline and the ratio.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import msgspec
import nats
from nats.aio.client import Client as NATS

from bench._processes import ROOT, cpu_seconds, spawn, stop
from bench._report import figure, write_json
from contract.protocol import (
    WEBHOOKS_BUCKET,
    Event,
    EventType,
    encode,
    event_subject,
)
from control_plane.webhooks.config import WebhookConfig
from control_plane.webhooks.http import WebhookClient
from node_agent.events import new_event_id
from zapfleet.devservers import free_port, start_nats, wait_for_port
from zapfleet.natsjs import ensure_jetstream
from zapfleet.ssrf import AddressPolicy

ADMIN_KEY = "bench-admin-key-0123456789abcdef"
TENANT = "bench"
THROUGHPUT_EVENTS = int(os.environ.get("ZF_BENCH_EVENTS", "20000"))
ERROR_EVENTS = THROUGHPUT_EVENTS // 2
LATENCY_RATE = 500
LATENCY_SECONDS = 10
BASELINE_REQUESTS = 10_000
CONCURRENCY = 25
DISPATCHERS = int(os.environ.get("ZF_BENCH_DISPATCHERS", "2"))  # one per core
NOISY = "noisy"  # the tenant whose receiver goes down in the isolation phase
ISOLATION_SECONDS = 10


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


class Receiver:
    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"
        self.url = f"{self.base}/hook"
        self.http = httpx.AsyncClient(timeout=30)

    async def reset(self, fail_ratio: float = 0.0) -> None:
        response = await self.http.post(f"{self.base}/config", json={"fail_ratio": fail_ratio})
        assert response.status_code == 204

    async def stats(self, dump: bool = False) -> dict[str, Any]:
        response = await self.http.get(f"{self.base}/{'dump' if dump else 'stats'}")
        stats: dict[str, Any] = msgspec.json.decode(response.content)
        return stats

    async def wait_for(self, count: int, timeout_s: float) -> dict[str, Any]:
        """Poll the counts until ``count`` distinct events arrived; then the records."""
        deadline = time.monotonic() + timeout_s
        while True:
            stats = await self.stats()
            if stats["unique"] >= count or time.monotonic() > deadline:
                return await self.stats(dump=True)
            await asyncio.sleep(0.25)


async def publish(
    nc: NATS, count: int, pace_per_s: float | None = None, tenant: str = TENANT
) -> list[str]:
    """Store ``count`` events; paced at ``pace_per_s`` (each stamped when sent) or as fast
    as the stream acknowledges them."""
    js = nc.jetstream()
    ids: list[str] = []
    pending: list[asyncio.Future[Any]] = []
    started = time.perf_counter()
    for n in range(count):
        if pace_per_s is not None:
            due = started + n / pace_per_s
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
        event = Event(
            id=new_event_id(),
            type=EventType.MESSAGE_RECEIVED,
            tenant=tenant,
            session_id=f"s{n % 50}",
            ts=time.time(),
            data={"message_id": f"m{n}", "from": "15550001111", "type": "text", "text": "hi"},
        )
        future = await js.publish_async(
            event_subject(tenant, event.session_id, event.type),
            encode(event),
            headers={"Nats-Msg-Id": event.id},
        )
        pending.append(future)
        ids.append(event.id)
        if len(pending) >= 2000:
            await asyncio.gather(*pending)
            pending.clear()
    await asyncio.gather(*pending)
    return ids


async def baseline(receiver: Receiver) -> float:
    body = encode(
        Event(id="baseline", type=EventType.MESSAGE_RECEIVED, tenant=TENANT, session_id="s",
              ts=time.time(), data={"text": "hi"})
    )  # fmt: skip
    slots = asyncio.Semaphore(CONCURRENCY)
    client = WebhookClient(AddressPolicy.from_settings(False, ["127.0.0.1/32"]), user_agent="bench")
    headers = {"Content-Type": "application/json"}

    async def one() -> None:
        async with slots:
            assert await client.post(receiver.url, body, headers) == 204

    started = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(BASELINE_REQUESTS)))
    elapsed = time.perf_counter() - started
    await client.close()
    return BASELINE_REQUESTS / elapsed


def dispatcher_env(nats_url: str, **extra: str) -> dict[str, str]:
    return {
        "ZAPFLEET_NATS_URL": nats_url,
        "ZAPFLEET_ADMIN_KEY": ADMIN_KEY,
        "ZAPFLEET_WEBHOOK_ALLOWED_NETWORKS": "127.0.0.1/32",
        "ZAPFLEET_LOG_LEVEL": "WARNING",
        **extra,
    }


class Bench:
    def __init__(self, workdir: Path, nats_url: str, nc: NATS, receiver: Receiver) -> None:
        self.workdir = workdir
        self.nats_url = nats_url
        self.nc = nc
        self.receiver = receiver
        self.processes: list[subprocess.Popen[bytes]] = []
        self.others: list[subprocess.Popen[bytes]] = []  # receiver, nats-server

    def dispatchers(self, name: str, count: int = 1, **env: str) -> list[subprocess.Popen[bytes]]:
        started = [
            spawn(
                [sys.executable, "-m", "zapfleet", "webhooks"],
                dispatcher_env(self.nats_url, **env),
                self.workdir / f"{name}-{n}.log",
            )
            for n in range(count)
        ]
        self.processes += started
        return started

    async def throughput(self, count: int) -> dict[str, Any]:
        """A backlog of stored events, then ``count`` dispatcher processes start; with one,
        the latency at 500 events/s is measured after."""
        await self.receiver.reset()
        ids = await publish(self.nc, THROUGHPUT_EVENTS)
        dispatchers = self.dispatchers(f"dispatcher-x{count}", count)
        started = await self.receiver.wait_for(1, 60)  # first delivery: setup is done
        cpu_before = sum(cpu_seconds(d) for d in dispatchers)
        others_before = [cpu_seconds(p) for p in self.others]
        stats = await self.receiver.wait_for(THROUGHPUT_EVENTS, 120)
        cpu_used = sum(cpu_seconds(d) for d in dispatchers) - cpu_before
        others = [
            1e6 * (cpu_seconds(p) - before) / max(1, stats["unique"] - started["unique"])
            for p, before in zip(self.others, others_before, strict=True)
        ]
        receiver_us, nats_us = others
        print(f"  CPU per delivery: receiver {receiver_us:.0f} µs, nats {nats_us:.0f} µs")
        cpu_us = 1e6 * cpu_used / max(1, stats["unique"] - started["unique"])
        rate = stats["unique"] / max(1e-9, stats["last"] - stats["first"])
        lost = len(set(ids) - set(stats["ids"]))
        print(
            f"throughput with {count} dispatcher(s): {rate:.0f}/s, lost {lost}, "
            f"CPU {cpu_us:.0f} µs/delivery",
            flush=True,
        )
        if count > 1:
            for dispatcher in dispatchers:
                stop(dispatcher)
            return {"deliveries_per_s": round(rate), "_lost": lost}

        # latency at 500/s with the same dispatcher, on an idle stream
        await self.receiver.reset()
        ids = await publish(self.nc, LATENCY_RATE * LATENCY_SECONDS, pace_per_s=LATENCY_RATE)
        stats = await self.receiver.wait_for(len(ids), 60)
        lost += len(set(ids) - set(stats["ids"]))
        latencies_ms = [1000 * v for v in stats["latencies"]]
        p50, p99 = percentile(latencies_ms, 0.5), percentile(latencies_ms, 0.99)
        print(f"latency at {LATENCY_RATE}/s: p50 {p50:.1f} ms, p99 {p99:.1f} ms", flush=True)
        for dispatcher in dispatchers:
            stop(dispatcher)
        return {
            "deliveries_per_s_one_process": round(rate),
            "receiver_cpu_us_per_delivery": round(receiver_us),
            "nats_server_cpu_us_per_delivery": round(nats_us),
            "p99_delivery_ms_at_500_per_s": round(p99, 1),
            "p50_delivery_ms_at_500_per_s": round(p50, 1),
            "dispatcher_cpu_us_per_delivery": round(cpu_us),
            "deliveries_per_dispatcher_cpu_s": round(1e6 / max(cpu_us, 1e-9)),
            "_lost": lost,
            "_latencies_ms": latencies_ms,
        }

    async def with_errors(self) -> dict[str, Any]:
        """30 % of calls fail: fast retries and a deep attempt budget."""
        await self.receiver.reset(fail_ratio=0.3)
        ids = await publish(self.nc, ERROR_EVENTS)
        self.dispatchers(
            "dispatcher-errors",
            DISPATCHERS,
            ZAPFLEET_WEBHOOK_BACKOFF_BASE_S="0.05",
            ZAPFLEET_WEBHOOK_BACKOFF_MAX_S="0.5",
            ZAPFLEET_WEBHOOK_MAX_ATTEMPTS="20",
        )
        stats = await self.receiver.wait_for(ERROR_EVENTS, 180)
        lost = len(set(ids) - set(stats["ids"]))
        rate = stats["unique"] / max(1e-9, stats["last"] - stats["first"])
        failed_share = stats["failed"] / max(1, stats["calls"])
        print(
            f"30 % errors: {rate:.0f}/s, {stats['calls']} calls ({failed_share:.0%} failed), "
            f"lost {lost}",
            flush=True,
        )
        return {
            "deliveries_per_s_30pct_errors": round(rate),
            "error_phase_calls": stats["calls"],
            "error_phase_failed_share": round(failed_share, 3),
            "_lost": lost,
        }

    async def isolation(self) -> dict[str, Any]:
        """Tenant ``bench`` at 50 events/s and tenant ``noisy`` at 200/s for 10 s, on one
        dispatcher: first both receivers answer (both tenants' deliveries go to the same
        receiver, so the p99 is over both), then ``noisy``'s URL refuses connections (a
        port nothing listens on) and the p99 is over ``bench``'s deliveries alone."""
        kv = await self.nc.jetstream().key_value(WEBHOOKS_BUCKET)

        async def point(url: str) -> None:
            config = WebhookConfig(urls=[url], secret="bench-secret-0123456789abcdef")
            await kv.put(f"tenant.{NOISY}", msgspec.json.encode(config))

        await point(self.receiver.url)
        dispatchers = self.dispatchers("dispatcher-isolation", 1)
        results = []
        for url in (self.receiver.url, f"http://127.0.0.1:{free_port()}/down"):
            await point(url)
            await asyncio.sleep(1.0)  # the dispatcher's KV watch
            await self.receiver.reset()
            quiet, noisy = await asyncio.gather(
                publish(self.nc, 50 * ISOLATION_SECONDS, 50),
                publish(self.nc, 200 * ISOLATION_SECONDS, 200, tenant=NOISY),
            )
            down = url != self.receiver.url
            wanted = quiet if down else quiet + noisy
            stats = await self.receiver.wait_for(len(wanted), 60)
            results.append(percentile([1000 * v for v in stats["latencies"]], 0.99))
        for dispatcher in dispatchers:
            stop(dispatcher)
        before, during = results
        print(
            f"isolation: p99 {before:.1f} ms without outage, {during:.1f} ms while the "
            "other tenant's receiver refuses connections",
            flush=True,
        )
        return {
            "isolated_p99_ms_no_outage": round(before, 1),
            "isolated_p99_ms_during_outage": round(during, 1),
            "isolated_p99_ratio": round(during / max(before, 1e-9), 2),
        }


async def run(workdir: Path) -> dict[str, Any]:
    server = start_nats(workdir / "nats", log_path=workdir / "nats.log")
    nats_url = f"nats://127.0.0.1:{server.port}"
    port = free_port()
    receiver_process = spawn(
        [sys.executable, "-m", "granian", "--interface", "asginl", "--workers", "1",
         "--loop", "uvloop", "--port", str(port), "--no-access-log", "--log-level", "warning",
         "--backlog", "2048", "bench._webhook_receiver:app"],
        {}, workdir / "receiver.log",
    )  # fmt: skip
    nc = await nats.connect(nats_url)
    receiver = Receiver(port)
    bench = Bench(workdir, nats_url, nc, receiver)
    bench.processes.append(receiver_process)
    bench.others = [receiver_process, server.process]
    try:
        wait_for_port(port, 30, receiver_process)
        js = nc.jetstream()
        await ensure_jetstream(js, events_max_age_s=3600, node_ttl_s=10)
        kv = await js.key_value(WEBHOOKS_BUCKET)
        config = WebhookConfig(urls=[receiver.url], secret="bench-secret-0123456789abcdef")
        await kv.put(f"tenant.{TENANT}", msgspec.json.encode(config))

        print("baseline: the same HTTP client straight to the receiver ...", flush=True)
        await receiver.reset()
        raw_per_s = await baseline(receiver)
        print(f"  {raw_per_s:.0f} POST/s", flush=True)
        one = await bench.throughput(1)
        several = await bench.throughput(DISPATCHERS)
        errors = await bench.with_errors()
        for process in bench.processes[1:]:
            stop(process)  # the error phase's dispatchers
        isolated = await bench.isolation()
        dlq = await js.stream_info("ZF_DLQ")
        return {
            "deliveries_per_s": several["deliveries_per_s"],
            "deliveries_per_s_30pct_errors": errors["deliveries_per_s_30pct_errors"],
            "lost_events": one.pop("_lost") + several.pop("_lost") + errors.pop("_lost"),
            **one,
            **errors,
            **isolated,
            "baseline_raw_post_per_s": round(raw_per_s),
            "ratio_vs_raw_post": round(several["deliveries_per_s"] / raw_per_s, 3),
            "dead_letters": dlq.state.messages,
            "events": {
                "throughput": THROUGHPUT_EVENTS,
                "with_errors": ERROR_EVENTS,
                "latency": LATENCY_RATE * LATENCY_SECONDS,
            },
            "dispatchers": DISPATCHERS,
            "setup": (
                f"1 nats-server, `zapfleet webhooks` processes sharing the consumer "
                f"({DISPATCHERS} for deliveries_per_s and the error phase, 1 for "
                "deliveries_per_s_one_process and the latency; concurrency 25, 20 per "
                "destination each), 1 receiver (granian, 1 worker) and the publisher, all on "
                "this 2-core machine, shared with other work (see machine.load_avg_1m); "
                "signed deliveries (HMAC-SHA256)"
            ),
        }
    finally:
        await receiver.http.aclose()
        await nc.close()
        for process in reversed(bench.processes):
            stop(process)
        server.stop()


def plot(results: dict[str, Any]) -> None:
    plt, path = figure("webhooks")
    fig, (bars, cdf) = plt.subplots(1, 2, figsize=(11, 4.2))
    several = results["dispatchers"]
    labels = [
        "raw POST\n(no NATS)",
        "1 dispatcher",
        f"{several} dispatchers",
        f"{several} dispatchers,\n30 % errors",
    ]
    values = [
        results["baseline_raw_post_per_s"],
        results["deliveries_per_s_one_process"],
        results["deliveries_per_s"],
        results["deliveries_per_s_30pct_errors"],
    ]
    bars.bar(labels, values, color=["#9aa5b1", "#7fa8ee", "#2f6fde", "#e0803a"])
    bars.axhline(2000, color="black", linestyle="--", linewidth=1, label="target 2,000/s")
    bars.set_ylabel("deliveries per second")
    bars.set_title(f"Throughput (load avg {os.getloadavg()[0]:.1f} on 2 cores)")
    bars.legend()
    latencies = sorted(results["_latencies_ms"])
    shares = [(i + 1) / len(latencies) for i in range(len(latencies))]
    cdf.plot(latencies, shares, color="#2f6fde")
    cdf.axvline(100, color="black", linestyle="--", linewidth=1, label="target p99 100 ms")
    cdf.axhline(0.99, color="#999999", linestyle=":", linewidth=1)
    cdf.set_xscale("log")
    cdf.set_xlabel("event created → delivered (ms)")
    cdf.set_ylabel("share of events")
    cdf.set_title(
        f"Latency at {LATENCY_RATE} events/s (p99 {results['p99_delivery_ms_at_500_per_s']} ms)"
    )
    cdf.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


def main() -> None:
    workdir = ROOT / "test-artifacts" / "bench-webhooks"  # logs stay for a look afterwards
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    load_at_start = round(os.getloadavg()[0], 2)
    results = asyncio.run(run(workdir))
    results["load_avg_1m_at_start"] = load_at_start
    plot(results)
    results.pop("_latencies_ms")
    write_json("webhooks", results)
    print(
        f"dispatcher vs raw POST baseline: {results['ratio_vs_raw_post']:.2f} "
        f"({results['deliveries_per_s']} vs {results['baseline_raw_post_per_s']} /s)"
    )


if __name__ == "__main__":
    main()

"""Health, readiness, Prometheus and JSON metrics, cache and GC controls."""

from __future__ import annotations

import asyncio
import gc
import os
import platform
import time
from typing import Any

import psutil
from litestar import Controller, MediaType, Request, Response, get, post
from litestar.di import Provide
from litestar.params import Parameter
from prometheus_client import CONTENT_TYPE_LATEST

from contract.protocol import DLQ_STREAM, EVENTS_STREAM, Empty, Op, SessionList
from control_plane import metrics
from control_plane.agents import AgentCallError, AgentUnavailable
from control_plane.auth import Principal, authenticate, require_admin
from control_plane.caches import CACHE_NAMES
from control_plane.models import (
    CacheCleared,
    CacheMetrics,
    GcResult,
    Health,
    InstanceMetrics,
    InstancesMetrics,
    InstanceTotals,
    MonitoringMetrics,
    SystemMetrics,
    WebhookMetrics,
)
from control_plane.services import Services
from control_plane.sessions import live_assignment
from control_plane.webhooks.backlog import backlog_depths
from zapfleet import __version__

_STARTED = time.time()
_PROCESS = psutil.Process()
WEBHOOK_CONSUMER = "webhooks"

# Litestar adds "; charset=utf-8" to every text/* type: without it here, the header
# would say charset twice
PROMETHEUS_TEXT = "; ".join(
    part for part in CONTENT_TYPE_LATEST.split("; ") if not part.startswith("charset=")
)


async def _cache_metrics(services: Services) -> CacheMetrics:
    totals = metrics.counter_values("zapfleet_api_cache_requests")
    hits = {name: int(totals.get((name, "hit"), 0)) for name in CACHE_NAMES}
    misses = {name: int(totals.get((name, "miss"), 0)) for name in CACHE_NAMES}
    ratio = {name: round(hits[name] / max(1, hits[name] + misses[name]), 4) for name in CACHE_NAMES}
    invalidations = {
        labels[0]: int(value)
        for labels, value in metrics.counter_values("zapfleet_api_cache_invalidations").items()
    }
    keys = 0
    used: int | None = None
    try:
        async for _ in services.valkey.scan_iter(match=services.cache.prefix + "*", count=1000):
            keys += 1
            if keys >= 100_000:
                break
        info = await services.valkey.info("memory")
        used = int(info.get("used_memory", 0))
    except Exception:
        pass
    return CacheMetrics(
        hits=hits,
        misses=misses,
        hit_ratio=ratio,
        invalidations=invalidations,
        keys=keys,
        valkey_used_memory_bytes=used,
    )


async def _webhook_metrics(services: Services) -> WebhookMetrics:
    result = WebhookMetrics()
    try:
        consumer = await services.js.consumer_info(EVENTS_STREAM, WEBHOOK_CONSUMER)
        result.pending = consumer.num_pending
        result.in_flight = consumer.num_ack_pending
        result.redelivered = consumer.num_redelivered
    except Exception:
        pass
    try:
        depths = await backlog_depths(services.js)
        result.backlog = sum(depths.values())
        result.backlog_destinations = len(depths)
    except Exception:
        pass
    try:
        dlq = await services.js.stream_info(DLQ_STREAM)
        result.dead_letters = dlq.state.messages
    except Exception:
        pass
    return result


async def _instance_totals(services: Services) -> InstanceTotals:
    nodes = await services.nodes.list()
    by_state: dict[str, int] = {}
    for node in nodes:
        for state, count in node.by_state.items():
            by_state[state] = by_state.get(state, 0) + count
    records = services.index.records()
    return InstanceTotals(
        sessions=len(records),
        desired_running=sum(1 for r in records if r.desired == "running"),
        by_state=by_state,
        nodes=len(nodes),
        capacity=sum(n.capacity for n in nodes),
    )


class MonitoringController(Controller):
    path = "/"
    tags = ["monitoring"]

    @get("/monitoring/health", summary="Liveness: the process serves requests")
    async def health(self) -> Health:
        return Health(status="ok")

    @get(
        "/monitoring/ready",
        summary="Readiness: NATS reachable (503 if not); Valkey down is 200 'degraded'",
    )
    async def ready(self, services: Services) -> Response[Health]:
        checks = {"nats": "ok" if services.nc.is_connected else "disconnected"}
        try:
            await services.valkey.ping()
            checks["valkey"] = "ok"
        except Exception as exc:
            checks["valkey"] = f"error: {type(exc).__name__}"
        healthy = all(v == "ok" for v in checks.values())
        # NATS is what serving needs; without Valkey the API serves in degraded mode
        # (control_plane/valkey_guard.py), so it stays in the load balancer
        ready = checks["nats"] == "ok"
        return Response(
            Health(status="ok" if healthy else "degraded", checks=checks),
            status_code=200 if ready else 503,
        )

    @get(
        "/metrics",
        media_type=MediaType.TEXT,
        summary="Prometheus metrics (all granian workers added up)",
    )
    async def prometheus(
        self, request: Request[Any, Any, Any], services: Services
    ) -> Response[bytes]:
        if not services.settings.metrics_public:
            await require_admin(request, services)
        return Response(metrics.exposition(), media_type=PROMETHEUS_TEXT)

    @get(
        "/monitoring/metrics",
        dependencies={"principal": Provide(require_admin)},
        opt={"rate": "queries"},
        summary="JSON metrics: system, cache, webhooks, instances (admin)",
    )
    async def json_metrics(self, services: Services, principal: Principal) -> MonitoringMetrics:
        cache, webhooks, instances = await asyncio.gather(
            _cache_metrics(services), _webhook_metrics(services), _instance_totals(services)
        )
        memory = _PROCESS.memory_info()
        system = SystemMetrics(
            version=__version__,
            pid=os.getpid(),
            uptime_s=round(time.time() - _STARTED, 1),
            cpu_percent=_PROCESS.cpu_percent(),
            rss_bytes=memory.rss,
            cpu_count=os.cpu_count() or 1,
            load_average=[round(x, 2) for x in os.getloadavg()],
            python=platform.python_version(),
            http_workers=services.settings.http_workers,
        )
        limited = {
            labels[0]: int(v)
            for labels, v in metrics.counter_values("zapfleet_api_rate_limited").items()
        }
        return MonitoringMetrics(
            system=system,
            cache=cache,
            webhooks=webhooks,
            instances=instances,
            rate_limited=limited,
            ts=time.time(),
        )

    @get(
        "/monitoring/instances/metrics",
        dependencies={"principal": Provide(authenticate)},
        opt={"rate": "queries"},
        summary="Per-session metrics of the caller's sessions, live from their nodes",
    )
    async def instances(self, services: Services, principal: Principal) -> InstancesMetrics:
        records = services.index.records(principal.tenant)
        placed = [(r, a) for r in records if (a := live_assignment(r)) is not None]
        wanted = {r.spec.key: a.epoch for r, a in placed}  # by internal key
        nodes = {a.node_id for _, a in placed}
        found: list[InstanceMetrics] = []
        unreachable: list[str] = []

        async def from_node(node_id: str) -> None:
            try:
                listed = await services.agents.call(node_id, Op.SESSIONS_LIST, Empty(), SessionList)
            except (AgentCallError, AgentUnavailable):
                unreachable.append(node_id)
                return
            for info in listed.sessions:
                if wanted.get(info.ref) != info.epoch or info.tenant != principal.tenant:
                    continue
                found.append(
                    InstanceMetrics(
                        session_id=info.session_id,
                        tenant=info.tenant,
                        state=info.state,
                        node_id=info.node_id,
                        epoch=info.epoch,
                        phone=info.phone,
                        since=info.since,
                        queue_depth=info.queue_depth,
                        reconnect_attempts=info.reconnect_attempts,
                        breaker_open_until=info.breaker_open_until,
                    )
                )

        await asyncio.gather(*(from_node(n) for n in sorted(nodes)))
        found.sort(key=lambda i: i.session_id)
        by_state: dict[str, int] = {}
        for item in found:
            by_state[item.state] = by_state.get(item.state, 0) + 1
        return InstancesMetrics(
            instances=found,
            by_state=by_state,
            unreachable_nodes=sorted(unreachable),
            ts=time.time(),
        )

    @post(
        "/monitoring/cache/clear",
        status_code=200,
        dependencies={"principal": Provide(require_admin)},
        opt={"rate": "sessions"},
        summary="Drop cached entries (all, or one cache) (admin)",
    )
    async def clear_cache(
        self,
        services: Services,
        principal: Principal,
        cache: str | None = Parameter(
            default=None,
            pattern=r"^(status|qr|numbers|history|groups)$",
            description="one cache only",
        ),
    ) -> CacheCleared:
        deleted = await services.cache.clear(cache)
        return CacheCleared(deleted=deleted, cache=cache)

    @post(
        "/monitoring/gc",
        status_code=200,
        dependencies={"principal": Provide(require_admin)},
        opt={"rate": "sessions"},
        summary="Run a full garbage collection in the worker that serves this (admin)",
    )
    async def collect_garbage(self, services: Services, principal: Principal) -> GcResult:
        before = _PROCESS.memory_info().rss
        collected = gc.collect()
        return GcResult(
            collected=collected,
            pid=os.getpid(),
            rss_bytes_before=before,
            rss_bytes_after=_PROCESS.memory_info().rss,
        )

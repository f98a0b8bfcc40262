"""Prometheus metrics of the control plane, correct with several granian workers.

``zapfleet control-plane`` points ``PROMETHEUS_MULTIPROC_DIR`` at a fresh directory before
granian forks its workers (prometheus_client's multiprocess mode): each worker writes its
samples to memory-mapped files there, and ``/metrics`` — whichever worker serves it —
adds up the files of all workers. Without the variable (e.g. granian started by hand with
one worker) the ordinary in-process registry is served.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.metrics_core import Metric

ENV = "PROMETHEUS_MULTIPROC_DIR"

REQUESTS = Counter(
    "zapfleet_api_requests_total", "HTTP requests by route and status class", ["route", "status"]
)
# time from the request reaching the app to its response headers, per route template; the
# buckets bracket what `just bench api` measures (p50 ~10 ms, p99 ~25-100 ms under load)
REQUEST_SECONDS = Histogram(
    "zapfleet_api_request_duration_seconds",
    "Seconds from request to response headers, by route",
    ["route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)


def _registry() -> CollectorRegistry:
    if os.environ.get(ENV):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return registry
    return REGISTRY


def exposition() -> bytes:
    return generate_latest(_registry())


def collect(prefix: str) -> Iterable[Metric]:
    for metric in _registry().collect():
        if metric.name.startswith(prefix):
            yield metric


def counter_values(name: str) -> dict[tuple[str, ...], float]:
    """Current totals of one counter, by label values (all workers added up)."""
    totals: dict[tuple[str, ...], float] = {}
    for metric in collect(name):
        for sample in metric.samples:
            if sample.name != name + "_total":
                continue
            labels = tuple(sample.labels.values())
            totals[labels] = totals.get(labels, 0.0) + sample.value
    return totals

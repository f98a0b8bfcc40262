"""Garbage-collector settings for the long-running processes (control plane workers,
node agents).

Everything alive once a process is ready (the app, its routes, decoders, the NATS and
Valkey clients, prometheus registries) lives until exit, yet every full collection would
walk it again. Freezing it moves those objects out of the collector's generations, which
shortens the pauses that show up as request latency spikes; a larger first-generation
threshold makes the young collections, each paid for by some request, less frequent.
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 10_000  # CPython's default is 700 allocations


def settle_after_startup() -> None:
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)

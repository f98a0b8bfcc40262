"""Choosing a node for a session (DESIGN §4).

The rules live here; :mod:`control_plane.fleet` applies them to the live view of the
fleet and makes them hold under concurrency (slots taken by KV revision CAS)."""

from __future__ import annotations

from collections.abc import Mapping

from contract.protocol import NodeInfo, SessionState

BUSY_STATES = (SessionState.PAIRING, SessionState.RECONNECTING)
MEMORY_THRESHOLD = 0.85


def labels_match(node: NodeInfo, labels: Mapping[str, str] | None) -> bool:
    return not labels or all(node.labels.get(k) == v for k, v in labels.items())


def memory_ok(node: NodeInfo) -> bool:
    limit = node.memory_limit_bytes
    return not (limit and node.rss_bytes > MEMORY_THRESHOLD * limit)

"""Choosing a node for a session (DESIGN §4).

The rules live here; :mod:`control_plane.fleet` applies them to the live view of the
fleet and makes them hold under concurrency (slots taken by KV revision CAS)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from node_agent.protocol import EngineName, NodeInfo, SessionState

BUSY_STATES = (SessionState.PAIRING, SessionState.RECONNECTING)
MEMORY_THRESHOLD = 0.85


def labels_match(node: NodeInfo, labels: Mapping[str, str] | None) -> bool:
    return not labels or all(node.labels.get(k) == v for k, v in labels.items())


def memory_ok(node: NodeInfo) -> bool:
    limit = node.memory_limit_bytes
    return not (limit and node.rss_bytes > MEMORY_THRESHOLD * limit)


def eligible(node: NodeInfo, engine: EngineName, labels: dict[str, str] | None = None) -> bool:
    if node.draining or node.engine != engine or node.sessions >= node.capacity:
        return False
    return labels_match(node, labels) and memory_ok(node)


def choose_node(
    nodes: Iterable[NodeInfo], engine: EngineName, labels: dict[str, str] | None = None
) -> NodeInfo | None:
    """The eligible node with the most free capacity; ties go to the node with the fewest
    sessions busy pairing or reconnecting (they cost the most CPU and memory churn)."""
    candidates = [n for n in nodes if eligible(n, engine, labels)]
    if not candidates:
        return None
    return max(
        candidates,
        key=lambda n: (
            n.capacity - n.sessions,
            -sum(n.by_state.get(s, 0) for s in BUSY_STATES),
            n.node_id,
        ),
    )

"""Choosing a node for a session (DESIGN §4)."""

from __future__ import annotations

from collections.abc import Iterable

from node_agent.protocol import EngineName, NodeInfo, SessionState

_BUSY_STATES = (SessionState.PAIRING, SessionState.RECONNECTING)


def eligible(node: NodeInfo, engine: EngineName, labels: dict[str, str] | None = None) -> bool:
    if node.draining or node.engine != engine or node.sessions >= node.capacity:
        return False
    if labels and any(node.labels.get(k) != v for k, v in labels.items()):
        return False
    return not (node.memory_limit_bytes and node.rss_bytes > 0.85 * node.memory_limit_bytes)


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
            -sum(n.by_state.get(s, 0) for s in _BUSY_STATES),
            n.node_id,
        ),
    )

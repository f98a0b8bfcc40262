"""What a control-plane process knows of the fleet: the nodes' heartbeats and placement
records, mirrored from KV, and whether each node is alive (issue 14: the liveness view of
:class:`~control_plane.fleet.Fleet`).

- ``zf_nodes`` — heartbeats, written by the agents. Each control-plane process watches
  it and notes, on its own monotonic clock, when it last *saw* each node. A node is
  *alive* while it was seen within its lease + ``ZAPFLEET_LEASE_MARGIN_S``.
- ``zf_placement`` — one record per node, written by control planes only
  (:mod:`control_plane.slots`): the sessions placed there (its *slots*), and the operator
  flags ``cordoned`` / ``draining`` and the reconciler's ``down`` mark.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import msgspec
from nats.js.api import KeyValueConfig
from nats.js.client import JetStreamContext
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from contract.protocol import (
    NODES_BUCKET,
    PLACEMENT_BUCKET,
    NodeInfo,
    SessionRecord,
)
from control_plane.placement import BUSY_STATES, labels_match, memory_ok
from control_plane.settings import ControlPlaneSettings
from zapfleet._mirror import Change, KVMirror
from zapfleet.natsjs import key_value

_DELETES = ("DEL", "PURGE")


class NodePlacement(msgspec.Struct, kw_only=True):
    """KV ``zf_placement`` / ``<node_id>``: what control planes decided about a node."""

    node_id: str
    sessions: dict[str, float] = msgspec.field(default_factory=dict)  # id -> reserved at
    cordoned: bool = False
    draining: bool = False
    down: bool = False
    changed_at: float = 0.0

    @property
    def excluded(self) -> bool:
        return self.cordoned or self.draining or self.down


_placement = msgspec.json.Decoder(NodePlacement)
_node = msgspec.json.Decoder(NodeInfo)


@dataclass(slots=True)
class NodeState:
    node_id: str
    info: NodeInfo | None = None
    # monotonic: from when silence counts for failover (a heartbeat seen, or the moment
    # this process began to look: never earlier, see refresh_seen)
    seen_at: float = 0.0
    # monotonic: when the last heartbeat was written, as far as known (placement only)
    heard_at: float = -1e9
    heartbeat_revision: int = 0
    left: bool = False  # the agent deleted its heartbeat: an orderly stop
    placement: NodePlacement | None = None
    placement_revision: int = 0


@dataclass
class FleetView:
    settings: ControlPlaneSettings
    js: JetStreamContext
    nodes: dict[str, NodeState] = field(default_factory=dict)
    started_at: float = field(default_factory=time.monotonic)
    _nodes_kv: KeyValue | None = None
    _placement_kv: KeyValue | None = None
    _mirrors: list[KVMirror] = field(default_factory=list)

    async def start(self) -> None:
        self._nodes_kv = await self.js.key_value(NODES_BUCKET)
        config = KeyValueConfig(bucket=PLACEMENT_BUCKET, history=1)
        self._placement_kv = await key_value(self.js, config, self.settings.replicas)
        self.started_at = time.monotonic()
        self._mirrors = [
            KVMirror(self._nodes_kv, NODES_BUCKET),
            KVMirror(self._placement_kv, PLACEMENT_BUCKET),
        ]
        ready = [
            self._mirrors[0].follow(self._heartbeat_change),
            self._mirrors[1].follow(self._placement_change),
        ]
        for mirror in self._mirrors:
            await mirror.start()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*(r.wait() for r in ready)), 10)

    async def stop(self) -> None:
        for mirror in self._mirrors:
            await mirror.stop()

    @property
    def placement_kv(self) -> KeyValue:
        assert self._placement_kv is not None, "FleetView.start() was not awaited"
        return self._placement_kv

    @property
    def nodes_kv(self) -> KeyValue:
        assert self._nodes_kv is not None, "FleetView.start() was not awaited"
        return self._nodes_kv

    def _heartbeat_change(self, change: Change) -> None:
        self._on_heartbeat(
            change.key, change.value, change.operation, change.revision, change.age_s
        )

    def _placement_change(self, change: Change) -> None:
        self.on_placement(change.key, change.value, change.operation, change.revision)

    def state(self, node_id: str) -> NodeState:
        """The node's state, known (and silent) from now on if it was not."""
        state = self.nodes.get(node_id)
        if state is None:
            state = self.nodes[node_id] = NodeState(node_id=node_id, seen_at=time.monotonic())
        return state

    def _on_heartbeat(
        self, key: str, value: bytes | None, op: str | None, rev: int, age_s: float = 0.0
    ) -> None:
        state = self.state(key)
        if op in _DELETES:
            state.left = True
            return
        if not value or rev <= state.heartbeat_revision:
            return
        try:
            state.info = _node.decode(value)
        except msgspec.DecodeError:
            return
        state.heartbeat_revision = rev
        state.seen_at = time.monotonic()
        state.heard_at = state.seen_at - age_s
        state.left = False

    def on_placement(
        self, key: str, value: bytes | None, op: str | None, rev: int, _age_s: float = 0.0
    ) -> None:
        if op in _DELETES and not self.alive(key):
            self.nodes.pop(key, None)  # forgotten (see forget())
            return
        state = self.state(key)
        if rev <= state.placement_revision:
            return
        state.placement_revision = rev
        if op in _DELETES or not value:
            state.placement = None
            return
        with contextlib.suppress(msgspec.DecodeError):
            state.placement = _placement.decode(value)

    def refresh_seen(self) -> None:
        """Count every node's silence from now (after this process was cut off itself,
        e.g. when it becomes the active reconciler). Failover waits longer; placement
        (heard_at) does not take a silent node for a live one."""
        now = time.monotonic()
        for state in self.nodes.values():
            state.seen_at = max(state.seen_at, now)

    # -- liveness ----------------------------------------------------------------------

    def lease_s(self, state: NodeState) -> float:
        if state.info is not None and state.info.lease_ttl_s > 0:
            return state.info.lease_ttl_s
        return self.settings.lease_ttl_s

    def silent_s(self, state: NodeState) -> float:
        return time.monotonic() - state.seen_at

    def alive(self, node_id: str) -> bool:
        """Seen within its lease + margin; past that it has fenced itself for sure."""
        state = self.nodes.get(node_id)
        if state is None:
            return False
        if state.left:
            return False
        return self.silent_s(state) <= self.lease_s(state) + self.settings.lease_margin_s

    def fresh(self, state: NodeState) -> bool:
        """Fit for new sessions: a heartbeat within its lease and not leaving."""
        return (
            state.info is not None
            and not state.left
            and not state.info.draining
            and time.monotonic() - state.heard_at <= self.lease_s(state)
        )

    async def confirm_down(self, node_id: str) -> bool:
        """Before acting on silence, read the heartbeat key itself: a stalled watch must
        never make a live node look dead."""
        state = self.state(node_id)
        try:
            entry = await self.nodes_kv.get(node_id)
        except KeyNotFoundError:
            return not self.alive(node_id)
        if (entry.revision or 0) > state.heartbeat_revision:
            self._on_heartbeat(node_id, entry.value, entry.operation, entry.revision or 0)
        return not self.alive(node_id)

    # -- placement records -------------------------------------------------------------

    def placement_of(self, node_id: str) -> NodePlacement:
        state = self.nodes.get(node_id)
        if state is None or state.placement is None:
            return NodePlacement(node_id=node_id)
        return state.placement

    async def read_placement(self, node_id: str) -> tuple[NodePlacement, int]:
        try:
            entry = await self.placement_kv.get(node_id)
        except KeyNotFoundError:
            return NodePlacement(node_id=node_id), 0
        rev = entry.revision or 0
        self.on_placement(node_id, entry.value, entry.operation, rev)
        if not entry.value:
            return NodePlacement(node_id=node_id), rev
        return _placement.decode(entry.value), rev

    def capacity(self, state: NodeState) -> int:
        return state.info.capacity if state.info is not None else 0

    def candidates(
        self,
        record: SessionRecord,
        exclude: Iterable[str] = (),
        extra: dict[str, int] | None = None,
    ) -> list[NodeState]:
        """Eligible nodes for a session, best first: most free slots, then fewest
        sessions pairing or reconnecting. ``extra`` counts slots already promised."""
        excluded = set(exclude)
        extra = extra or {}
        scored: list[tuple[int, int, float, NodeState]] = []
        for state in self.nodes.values():
            info = state.info
            if state.node_id in excluded or info is None or not self.fresh(state):
                continue
            placement = self.placement_of(state.node_id)
            if placement.excluded or info.engine != record.spec.engine:
                continue
            if not labels_match(info, record.node_labels) or not memory_ok(info):
                continue
            free = info.capacity - len(placement.sessions) - extra.get(state.node_id, 0)
            if free <= 0:
                continue
            busy = sum(info.by_state.get(s, 0) for s in BUSY_STATES)
            scored.append((free, -busy, random.random(), state))
        scored.sort(key=lambda item: item[:3], reverse=True)
        return [item[3] for item in scored]

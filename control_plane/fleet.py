"""The fleet as the control plane sees it, and every way a session gets (re)placed.

Two KV buckets describe the fleet:

- ``zf_nodes`` — heartbeats, written by the agents. Each control-plane process watches
  it and notes, on its own monotonic clock, when it last *saw* each node. A node is
  *alive* while it was seen within its lease + ``ZAPFLEET_LEASE_MARGIN_S``.
- ``zf_placement`` — one record per node, written by control planes only: the sessions
  placed there (its *slots*), and the operator flags ``cordoned`` / ``draining`` and the
  reconciler's ``down`` mark. Every write is a revision compare-and-set, so capacity
  holds even when several control planes place at once: a slot is taken by the CAS
  that adds a session id to a record with fewer ids than the node's capacity. Heartbeat
  counts lag; slots do not.

A placement = reserve a slot (CAS on ``zf_placement``) → bump the epoch and assign
(CAS on ``zf_sessions``, with a precondition on the assignment it replaces) → release
the old slot → ``session_start`` RPC on the node. Moves of a live session (drain,
rebalance) stop it on its node first, so a socket never exists twice; failover of a
dead node relies on the agent's self-fencing (its lease ended before the node was
declared down).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Literal

import msgspec
from nats.aio.client import Client as NATS
from nats.js.api import KeyValueConfig
from nats.js.client import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from contract.protocol import (
    NODES_BUCKET,
    PLACEMENT_BUCKET,
    Assignment,
    ErrorCode,
    Event,
    EventType,
    NodeInfo,
    Op,
    SessionInfo,
    SessionRecord,
    SessionRef,
    StartSession,
    encode,
    event_subject,
)
from control_plane.agents import AgentCallError, AgentClient, AgentUnavailable
from control_plane.placement import BUSY_STATES, labels_match, memory_ok
from control_plane.settings import ControlPlaneSettings
from control_plane.store import SessionStore
from zapfleet._mirror import Change, KVMirror
from zapfleet.backoff import cas_attempts
from zapfleet.natsjs import key_value

log = logging.getLogger(__name__)

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


def placed_on(record: SessionRecord | None) -> str | None:
    """The node a record wants its session running on (None: gone, stopped, unassigned)."""
    if record is None or record.desired != "running" or record.assignment is None:
        return None
    return record.assignment.node_id


class PlacementConflict(Exception):
    """Another placement of the same session won the race."""


class PlacementContention(Exception):
    """A node's placement record kept changing under every attempt to update it."""


class NoCapacity(Exception):
    """No eligible node has a free slot."""


class MoveResult(msgspec.Struct, kw_only=True):
    session_id: str  # the tenant's name for it
    tenant: str = ""
    result: Literal["moved", "skipped", "failed"]
    to_node: str | None = None
    epoch: int | None = None
    detail: str | None = None


@dataclass(slots=True)
class _Stale(Exception):
    """The session record no longer matches what the move was decided on."""

    detail: str = ""


@dataclass
class Fleet:
    settings: ControlPlaneSettings
    nc: NATS
    js: JetStreamContext
    sessions: SessionStore
    agents: AgentClient
    nodes: dict[str, NodeState] = field(default_factory=dict)
    started_at: float = field(default_factory=time.monotonic)
    # told of every session record this fleet writes (the API's in-process session index)
    on_written: Callable[[SessionRecord, int], None] | None = None
    # every record from memory (the session index), None while it is not synced: the
    # reconciler's audit reads it instead of scanning KV zf_sessions each period
    known_records: Callable[[], list[SessionRecord] | None] | None = None
    _nodes_kv: KeyValue | None = None
    _placement_kv: KeyValue | None = None
    _mirrors: list[KVMirror] = field(default_factory=list)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)  # slot batches
    _queued: dict[str, list[tuple[str, asyncio.Future[bool]]]] = field(default_factory=dict)
    _queued_count: dict[str, int] = field(default_factory=dict)
    _flushing: set[str] = field(default_factory=set)

    # -- wiring ------------------------------------------------------------------------

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
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    @property
    def placement_kv(self) -> KeyValue:
        assert self._placement_kv is not None, "Fleet.start() was not awaited"
        return self._placement_kv

    @property
    def nodes_kv(self) -> KeyValue:
        assert self._nodes_kv is not None, "Fleet.start() was not awaited"
        return self._nodes_kv

    def _heartbeat_change(self, change: Change) -> None:
        self._on_heartbeat(
            change.key, change.value, change.operation, change.revision, change.age_s
        )

    def _placement_change(self, change: Change) -> None:
        self._on_placement(change.key, change.value, change.operation, change.revision)

    def _state(self, node_id: str) -> NodeState:
        state = self.nodes.get(node_id)
        if state is None:
            state = self.nodes[node_id] = NodeState(node_id=node_id, seen_at=time.monotonic())
        return state

    def _on_heartbeat(
        self, key: str, value: bytes | None, op: str | None, rev: int, age_s: float = 0.0
    ) -> None:
        state = self._state(key)
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

    def _on_placement(
        self, key: str, value: bytes | None, op: str | None, rev: int, _age_s: float = 0.0
    ) -> None:
        if op in _DELETES and not self.alive(key):
            self.nodes.pop(key, None)  # forgotten (see forget())
            return
        state = self._state(key)
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
        state = self._state(node_id)
        try:
            entry = await self.nodes_kv.get(node_id)
        except KeyNotFoundError:
            return not self.alive(node_id)
        if (entry.revision or 0) > state.heartbeat_revision:
            self._on_heartbeat(node_id, entry.value, entry.operation, entry.revision or 0)
        return not self.alive(node_id)

    # -- slots -------------------------------------------------------------------------

    def placement_of(self, node_id: str) -> NodePlacement:
        state = self.nodes.get(node_id)
        if state is None or state.placement is None:
            return NodePlacement(node_id=node_id)
        return state.placement

    async def _read_placement(self, node_id: str) -> tuple[NodePlacement, int]:
        try:
            entry = await self.placement_kv.get(node_id)
        except KeyNotFoundError:
            return NodePlacement(node_id=node_id), 0
        rev = entry.revision or 0
        self._on_placement(node_id, entry.value, entry.operation, rev)
        if not entry.value:
            return NodePlacement(node_id=node_id), rev
        return _placement.decode(entry.value), rev

    async def update_placement(
        self, node_id: str, change: Callable[[NodePlacement], bool], attempts: int = 50
    ) -> NodePlacement | None:
        """Read-modify-write of a node's placement record by revision CAS. ``change``
        returns False to write nothing (then None is returned)."""
        state = self._state(node_id)
        cached = state.placement
        record = _placement.decode(encode(cached)) if cached is not None else None
        revision = state.placement_revision if cached is not None else 0
        async for attempt in cas_attempts(attempts):
            if record is None or attempt > 0:
                record, revision = await self._read_placement(node_id)
            if not change(record):
                return None
            record.changed_at = time.time()
            body = encode(record)
            try:
                if revision:
                    new_rev = await self.placement_kv.update(node_id, body, last=revision)
                else:
                    new_rev = await self.placement_kv.create(node_id, body)
            except KeyWrongLastSequenceError:
                if attempt + 1 == attempts:
                    await self._read_placement(node_id)  # the caller chooses again on fresh data
                continue
            self._on_placement(node_id, body, None, new_rev)
            return record
        raise PlacementContention(f"placement of node {node_id}: too many concurrent updates")

    def _capacity(self, state: NodeState) -> int:
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

    async def reserve_on(
        self, node_id: str, session_ids: list[str], attempts: int = 50
    ) -> list[str]:
        """Take slots on one node for as many of ``session_ids`` as fit; returns those
        (none either when the node is full or excluded, or after ``attempts`` lost CAS)."""
        state = self._state(node_id)
        taken: list[str] = []

        def change(record: NodePlacement) -> bool:
            taken.clear()
            if record.excluded:
                return False
            room = self._capacity(state) - len(record.sessions)
            now = time.time()
            for session_id in session_ids:
                if session_id in record.sessions:
                    taken.append(session_id)
                elif room > 0:
                    record.sessions[session_id] = now
                    taken.append(session_id)
                    room -= 1
            return bool(taken)

        try:
            if await self.update_placement(node_id, change, attempts) is None:
                return []
        except PlacementContention:
            return []
        return taken

    async def reserve(
        self, records: list[SessionRecord], exclude: Iterable[str] = ()
    ) -> dict[str, str]:
        """Slots for many sessions at once (one CAS per target node); session id -> node.
        Sessions left out found no capacity."""
        excluded = set(exclude)
        pending = {r.spec.key: r for r in records}
        placed: dict[str, str] = {}
        for _ in range(20):
            if not pending:
                break
            plan: dict[str, list[str]] = {}
            promised: dict[str, int] = {}
            for session_id, record in pending.items():
                best = self.candidates(record, excluded, promised)
                if not best:
                    continue
                node_id = best[0].node_id
                plan.setdefault(node_id, []).append(session_id)
                promised[node_id] = promised.get(node_id, 0) + 1
            if not plan:
                break
            results = await asyncio.gather(
                *(self.reserve_on(node_id, ids) for node_id, ids in plan.items())
            )
            for (node_id, _ids), taken in zip(plan.items(), results, strict=True):
                for session_id in taken:
                    placed[session_id] = node_id
                    pending.pop(session_id, None)
        return placed

    async def release(self, node_id: str, session_ids: Iterable[str]) -> None:
        ids = set(session_ids)

        def change(record: NodePlacement) -> bool:
            present = ids & record.sessions.keys()
            for session_id in present:
                del record.sessions[session_id]
            return bool(present)

        await self.update_placement(node_id, change)

    async def _reserve_queued(self, node_id: str, session_id: str) -> bool:
        """Take one slot, batched: the placements of this process that want the same node
        at the same moment share one CAS instead of racing each other for the record."""
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._queued.setdefault(node_id, []).append((session_id, future))
        self._queued_count[node_id] = self._queued_count.get(node_id, 0) + 1
        if node_id not in self._flushing:
            self._flushing.add(node_id)
            task = asyncio.create_task(self._flush_queued(node_id))
            self._tasks.append(task)
            task.add_done_callback(self._tasks.remove)
        return await future

    async def _flush_queued(self, node_id: str) -> None:
        try:
            while batch := self._queued.pop(node_id, []):
                try:
                    taken = set(await self.reserve_on(node_id, [s for s, _ in batch]))
                except Exception as exc:
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                finally:
                    self._queued_count[node_id] -= len(batch)
                for session_id, future in batch:
                    if not future.done():
                        future.set_result(session_id in taken)
        finally:
            self._flushing.discard(node_id)

    async def abandon(self, node_id: str, session_id: str) -> None:
        """Give back a slot taken for a placement that did not happen — unless the session
        is assigned there after all (slots are shared: two concurrent movers of the same
        session may have reserved the same one, and the winner needs it)."""
        if placed_on(await self.record(session_id)) != node_id:
            await self.release(node_id, [session_id])

    async def record(self, session_id: str) -> SessionRecord | None:
        found = await self.sessions.get(session_id)
        return found[0] if found is not None else None

    async def forget(self, node_id: str) -> None:
        """Drop a node that is gone for good (down, no sessions) from every view."""
        state = self.nodes.get(node_id)
        if state is None or self.alive(node_id) or self.placement_of(node_id).sessions:
            return
        with contextlib.suppress(KeyNotFoundError, KeyWrongLastSequenceError):
            await self.placement_kv.delete(node_id, last=state.placement_revision or None)
        self.nodes.pop(node_id, None)

    async def set_flags(self, node_id: str, **flags: bool) -> tuple[NodePlacement, bool]:
        """Set operator/reconciler flags; also returns whether this call changed them
        (with CAS, exactly one of several concurrent callers sees True)."""

        def change(record: NodePlacement) -> bool:
            if all(getattr(record, k) == v for k, v in flags.items()):
                return False
            for key, value in flags.items():
                setattr(record, key, value)
            return True

        updated = await self.update_placement(node_id, change)
        if updated is None:
            return self.placement_of(node_id), False
        return updated, True

    # -- assignment --------------------------------------------------------------------

    async def assign(
        self,
        session_id: str,
        node_id: str,
        expected: Assignment | None,
        *,
        require_running: bool = True,
    ) -> SessionRecord | None:
        """Bump the epoch and assign to ``node_id`` by CAS, only if the record still has
        the ``expected`` assignment (and, for moves, is still meant to run). None when it
        changed: someone else acted."""

        def change(record: SessionRecord) -> None:
            if record.assignment != expected:
                raise _Stale(f"assignment is now {record.assignment}")
            if require_running and record.desired != "running":
                raise _Stale("session is stopped")
            epoch = record.assignment.epoch + 1 if record.assignment else 1
            record.assignment = Assignment(node_id=node_id, epoch=epoch)
            record.desired = "running"

        try:
            record, revision = await self.sessions.update_with_revision(session_id, change)
        except (_Stale, KeyNotFoundError):
            return None
        if self.on_written is not None:
            self.on_written(record, revision)
        return record

    async def start_on(self, record: SessionRecord) -> SessionInfo:
        assert record.assignment is not None
        return await self.agents.call(
            record.assignment.node_id,
            Op.SESSION_START,
            StartSession(spec=record.spec, epoch=record.assignment.epoch),
            SessionInfo,
        )

    async def stop_on(self, node_id: str, session_id: str, epoch: int) -> None:
        """Stop a session on its node; "not there" counts as stopped."""
        try:
            await self.agents.call(
                node_id,
                Op.SESSION_STOP,
                SessionRef(session_id=session_id, epoch=epoch),
                SessionInfo,
            )
        except AgentCallError as exc:
            if exc.code not in (ErrorCode.SESSION_NOT_FOUND, ErrorCode.STALE_EPOCH):
                raise

    async def emit(
        self, event_type: EventType, tenant: str, key: str, event_id: str, **data: object
    ) -> None:
        """Publish a fleet event to ZF_EVENTS; the id is deterministic so that two
        control planes reporting the same fact store it once (Nats-Msg-Id)."""
        node_id = data.get("node_id")
        event = Event(
            id=event_id,
            type=event_type,
            tenant=tenant,
            session_id=key,
            ts=time.time(),
            data=dict(data),
            node_id=node_id if isinstance(node_id, str) else None,
        )
        try:
            await self.js.publish(
                event_subject(tenant, key, event_type),
                encode(event),
                headers={"Nats-Msg-Id": event_id},
                timeout=5,
            )
        except Exception as exc:
            log.warning("fleet event not published", extra={"event": event_id, "error": repr(exc)})

    async def emit_moved(self, record: SessionRecord, from_node: str, reason: str) -> None:
        assert record.assignment is not None
        await self.emit(
            EventType.SESSION_MOVED,
            record.spec.tenant,
            record.spec.session_id,
            f"moved.{record.spec.key}.{record.assignment.epoch}",
            from_node=from_node,
            to_node=record.assignment.node_id,
            node_id=record.assignment.node_id,
            epoch=record.assignment.epoch,
            reason=reason,
        )

    # -- placing one session (API) -----------------------------------------------------

    async def place(self, session_id: str) -> SessionInfo:
        """Assign a session to the best node (epoch + 1) and start it there. A session
        already placed on a live, eligible node restarts there."""
        record = await self.record(session_id)
        if record is None:
            raise KeyNotFoundError
        old = record.assignment
        target: str | None = None
        if old is not None and self.alive(old.node_id):
            here = self.placement_of(old.node_id)
            if session_id in here.sessions and not here.excluded:
                target = old.node_id
        for _ in range(20):
            if target is not None:
                break
            # slots promised to placements still queued count as taken: concurrent
            # placements spread out instead of all choosing the same emptiest node
            best = self.candidates(record, extra=self._queued_count)
            if not best:
                raise NoCapacity(
                    f"no eligible node runs the {record.spec.engine} engine with free capacity"
                )
            if await self._reserve_queued(best[0].node_id, session_id):
                target = best[0].node_id
        if target is None:
            raise NoCapacity("could not take a slot: too much contention")
        assert target is not None
        if old is not None and old.node_id != target and self.alive(old.node_id):
            # never two sockets: the old run ends before the new one starts
            with contextlib.suppress(AgentUnavailable):
                await self.stop_on(old.node_id, session_id, old.epoch)
        # precondition: still the assignment read above, so of two control planes placing
        # the same session at once exactly one wins (the other gets PlacementConflict)
        placed = await self.assign(session_id, target, old, require_running=False)
        if placed is None:
            await self.abandon(target, session_id)
            if await self.record(session_id) is None:
                raise KeyNotFoundError
            raise PlacementConflict(f"session {session_id} was placed by someone else meanwhile")
        if old is not None and old.node_id != target:
            await self.release(old.node_id, [session_id])
        return await self.start_on(placed)

    # -- moving sessions ---------------------------------------------------------------

    async def _sessions_on(self, node_id: str) -> list[tuple[SessionRecord, Assignment]]:
        """Records assigned to ``node_id`` among its slots; slots of sessions that are
        not (any more) running there are released."""
        ids = list(self.placement_of(node_id).sessions)
        found = await asyncio.gather(*(self.record(i) for i in ids))
        mine: list[tuple[SessionRecord, Assignment]] = []
        stale: list[str] = []
        for session_id, record in zip(ids, found, strict=True):
            if record is None or record.assignment is None or placed_on(record) != node_id:
                stale.append(session_id)
                continue
            mine.append((record, record.assignment))
        if stale:
            await self.release(node_id, stale)
        return mine

    async def move_many(
        self,
        node_id: str,
        items: list[tuple[SessionRecord, Assignment]],
        *,
        graceful: bool,
        reason: str,
        targets: dict[str, str] | None = None,
    ) -> list[MoveResult]:
        """Move sessions off ``node_id``. Graceful: stop each on its node first (drain,
        rebalance). Otherwise the node is down and fenced (failover)."""
        if targets is None:
            targets = await self.reserve([r for r, _ in items], exclude={node_id})
        semaphore = asyncio.Semaphore(self.settings.move_concurrency)

        async def one(record: SessionRecord, assignment: Assignment) -> MoveResult:
            target = targets.get(record.spec.key)
            if target is None:
                return MoveResult(
                    session_id=record.spec.session_id,
                    tenant=record.spec.tenant,
                    result="failed",
                    detail="no capacity",
                )
            async with semaphore:
                return await self._move_one(record, assignment, target, graceful, reason)

        results = await asyncio.gather(*(one(r, a) for r, a in items))
        moved = [
            r.spec.key for (r, _), res in zip(items, results, strict=True) if res.result == "moved"
        ]
        if moved:
            await self.release(node_id, moved)
        return list(results)

    async def _move_one(
        self,
        record: SessionRecord,
        assignment: Assignment,
        target: str,
        graceful: bool,
        reason: str,
    ) -> MoveResult:
        session_id = record.spec.key
        name, tenant = record.spec.session_id, record.spec.tenant
        source = assignment.node_id
        if graceful:
            try:
                await self.stop_on(source, session_id, assignment.epoch)
            except (AgentCallError, AgentUnavailable) as exc:
                await self.abandon(target, session_id)
                return MoveResult(session_id=name, tenant=tenant, result="failed", detail=str(exc))
        elif self.alive(source):
            await self.abandon(target, session_id)
            return MoveResult(
                session_id=name, tenant=tenant, result="failed", detail="node is back"
            )
        placed = await self.assign(session_id, target, assignment)
        if placed is None or placed.assignment is None:
            await self.abandon(target, session_id)
            return MoveResult(
                session_id=name, tenant=tenant, result="skipped", detail="changed meanwhile"
            )
        await self.emit_moved(placed, source, reason)
        try:
            await self.start_on(placed)
        except (AgentCallError, AgentUnavailable) as exc:
            log.warning(
                "moved session did not start", extra={"session_id": session_id, "error": str(exc)}
            )
        return MoveResult(
            session_id=name,
            tenant=tenant,
            result="moved",
            to_node=target,
            epoch=placed.assignment.epoch,
        )

    async def failover(self, node_id: str) -> list[MoveResult]:
        items = await self._sessions_on(node_id)
        if not items:
            return []
        return await self.move_many(node_id, items, graceful=False, reason="node_down")

    async def drain(self, node_id: str) -> list[MoveResult]:
        await self.set_flags(node_id, draining=True)
        items = await self._sessions_on(node_id)
        if not items:
            return []
        return await self.move_many(node_id, items, graceful=True, reason="drain")

    async def rebalance(self) -> list[MoveResult]:
        """Even out sessions between eligible live nodes of the same engine (at most one
        session of difference), moving each one gracefully."""
        results: list[MoveResult] = []
        engines = {s.info.engine for s in self.nodes.values() if s.info is not None}
        for engine in sorted(engines):
            pool = [
                s
                for s in self.nodes.values()
                if s.info is not None
                and s.info.engine == engine
                and self.fresh(s)
                and not self.placement_of(s.node_id).excluded
            ]
            if len(pool) < 2:
                continue
            counts = {s.node_id: len(self.placement_of(s.node_id).sessions) for s in pool}
            capacity = {s.node_id: self._capacity(s) for s in pool}
            queues = {n: list(self.placement_of(n).sessions) for n in counts}
            plan: dict[str, list[tuple[str, str]]] = {}  # source -> [(session, target)]
            while True:
                source = max(counts, key=lambda n: counts[n])
                target = min(counts, key=lambda n: counts[n])
                if counts[source] - counts[target] <= 1 or counts[target] >= capacity[target]:
                    break
                if not queues[source]:
                    break
                plan.setdefault(source, []).append((queues[source].pop(), target))
                counts[source] -= 1
                counts[target] += 1
            for source, moves in plan.items():
                wanted = dict(moves)
                items = [(r, a) for r, a in await self._sessions_on(source) if r.spec.key in wanted]
                targets: dict[str, str] = {}
                by_target: dict[str, list[str]] = {}
                for session_id, target in wanted.items():
                    by_target.setdefault(target, []).append(session_id)
                for target, ids in by_target.items():
                    for session_id in await self.reserve_on(target, ids):
                        targets[session_id] = target
                results += await self.move_many(
                    source, items, graceful=True, reason="rebalance", targets=targets
                )
        return results

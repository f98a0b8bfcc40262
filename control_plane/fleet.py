"""Every way a session gets (re)placed: placing one (API), moving many (failover, drain,
rebalance). Three parts (issue 14): :class:`~control_plane.fleet_view.FleetView` — what
this process knows of the nodes (heartbeats, placement records, liveness);
:class:`~control_plane.slots.Slots` — taking and giving back slots on ``zf_placement``
by revision CAS; :class:`Fleet` (here) — placements and moves over both.

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
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import msgspec
from nats.aio.client import Client as NATS
from nats.js.client import JetStreamContext
from nats.js.errors import KeyNotFoundError

from contract.protocol import (
    Assignment,
    ErrorCode,
    Event,
    EventType,
    Op,
    SessionInfo,
    SessionRecord,
    SessionRef,
    StartSession,
    encode,
    event_subject,
)
from control_plane.agents import AgentCallError, AgentClient, AgentUnavailable
from control_plane.fleet_view import FleetView
from control_plane.settings import ControlPlaneSettings
from control_plane.slots import Slots
from control_plane.store import SessionStore

log = logging.getLogger(__name__)

_DELETES = ("DEL", "PURGE")


def placed_on(record: SessionRecord | None) -> str | None:
    """The node a record wants its session running on (None: gone, stopped, unassigned)."""
    if record is None or record.desired != "running" or record.assignment is None:
        return None
    return record.assignment.node_id


class PlacementConflict(Exception):
    """Another placement of the same session won the race."""


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
    """Placing and moving sessions over the fleet's :class:`FleetView` (what is known of
    the nodes) and :class:`Slots` (the placement records' writes)."""

    settings: ControlPlaneSettings
    nc: NATS
    js: JetStreamContext
    sessions: SessionStore
    agents: AgentClient
    # told of every session record this fleet writes (the API's in-process session index)
    on_written: Callable[[SessionRecord, int], None] | None = None
    # every record from memory (the session index), None while it is not synced: the
    # reconciler's audit reads it instead of scanning KV zf_sessions each period
    known_records: Callable[[], list[SessionRecord] | None] | None = None
    view: FleetView = field(init=False)
    slots: Slots = field(init=False)

    def __post_init__(self) -> None:
        self.view = FleetView(settings=self.settings, js=self.js)
        self.slots = Slots(view=self.view)

    async def start(self) -> None:
        await self.view.start()

    async def stop(self) -> None:
        await self.view.stop()
        await self.slots.stop()

    async def record(self, session_id: str) -> SessionRecord | None:
        found = await self.sessions.get(session_id)
        return found[0] if found is not None else None

    async def abandon(self, node_id: str, session_id: str) -> None:
        """Give back a slot taken for a placement that did not happen — unless the session
        is assigned there after all (slots are shared: two concurrent movers of the same
        session may have reserved the same one, and the winner needs it)."""
        if placed_on(await self.record(session_id)) != node_id:
            await self.slots.release(node_id, [session_id])

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
        if old is not None and self.view.alive(old.node_id):
            here = self.view.placement_of(old.node_id)
            if session_id in here.sessions and not here.excluded:
                target = old.node_id
        for _ in range(20):
            if target is not None:
                break
            # slots promised to placements still queued count as taken: concurrent
            # placements spread out instead of all choosing the same emptiest node
            best = self.view.candidates(record, extra=self.slots.queued)
            if not best:
                raise NoCapacity(
                    f"no eligible node runs the {record.spec.engine} engine with free capacity"
                )
            if await self.slots.take(best[0].node_id, session_id):
                target = best[0].node_id
        if target is None:
            raise NoCapacity("could not take a slot: too much contention")
        assert target is not None
        if old is not None and old.node_id != target and self.view.alive(old.node_id):
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
            await self.slots.release(old.node_id, [session_id])
        return await self.start_on(placed)

    # -- moving sessions ---------------------------------------------------------------

    async def _sessions_on(self, node_id: str) -> list[tuple[SessionRecord, Assignment]]:
        """Records assigned to ``node_id`` among its slots; slots of sessions that are
        not (any more) running there are released."""
        ids = list(self.view.placement_of(node_id).sessions)
        found = await asyncio.gather(*(self.record(i) for i in ids))
        mine: list[tuple[SessionRecord, Assignment]] = []
        stale: list[str] = []
        for session_id, record in zip(ids, found, strict=True):
            if record is None or record.assignment is None or placed_on(record) != node_id:
                stale.append(session_id)
                continue
            mine.append((record, record.assignment))
        if stale:
            await self.slots.release(node_id, stale)
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
            targets = await self.slots.reserve([r for r, _ in items], exclude={node_id})
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
            await self.slots.release(node_id, moved)
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
        elif self.view.alive(source):
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
        await self.slots.set_flags(node_id, draining=True)
        items = await self._sessions_on(node_id)
        if not items:
            return []
        return await self.move_many(node_id, items, graceful=True, reason="drain")

    async def rebalance(self) -> list[MoveResult]:
        """Even out sessions between eligible live nodes of the same engine (at most one
        session of difference), moving each one gracefully."""
        results: list[MoveResult] = []
        engines = {s.info.engine for s in self.view.nodes.values() if s.info is not None}
        for engine in sorted(engines):
            pool = [
                s
                for s in self.view.nodes.values()
                if s.info is not None
                and s.info.engine == engine
                and self.view.fresh(s)
                and not self.view.placement_of(s.node_id).excluded
            ]
            if len(pool) < 2:
                continue
            counts = {s.node_id: len(self.view.placement_of(s.node_id).sessions) for s in pool}
            capacity = {s.node_id: self.view.capacity(s) for s in pool}
            queues = {n: list(self.view.placement_of(n).sessions) for n in counts}
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
                    for session_id in await self.slots.reserve_on(target, ids):
                        targets[session_id] = target
                results += await self.move_many(
                    source, items, graceful=True, reason="rebalance", targets=targets
                )
        return results

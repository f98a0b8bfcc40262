"""Slots: the writes of ``zf_placement`` (issue 14: the placement-slot part of
:class:`~control_plane.fleet.Fleet`).

Every write is a revision compare-and-set, so capacity holds even when several control
planes place at once: a slot is taken by the CAS that adds a session id to a record with
fewer ids than the node's capacity. Heartbeat counts lag; slots do not. Placements of one
process that want the same node at the same moment share one CAS (:meth:`Slots.take`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

from contract.protocol import SessionRecord, encode
from control_plane.fleet_view import FleetView, NodePlacement, _placement
from zapfleet.backoff import cas_attempts


class PlacementContention(Exception):
    """A node's placement record kept changing under every attempt to update it."""


@dataclass
class Slots:
    view: FleetView
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)  # slot batches
    _queued: dict[str, list[tuple[str, asyncio.Future[bool]]]] = field(default_factory=dict)
    # slots promised to placements still queued, per node
    queued: dict[str, int] = field(default_factory=dict)
    _flushing: set[str] = field(default_factory=set)

    async def stop(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def update_placement(
        self, node_id: str, change: Callable[[NodePlacement], bool], attempts: int = 50
    ) -> NodePlacement | None:
        """Read-modify-write of a node's placement record by revision CAS. ``change``
        returns False to write nothing (then None is returned)."""
        state = self.view.state(node_id)
        cached = state.placement
        record = _placement.decode(encode(cached)) if cached is not None else None
        revision = state.placement_revision if cached is not None else 0
        async for attempt in cas_attempts(attempts):
            if record is None or attempt > 0:
                record, revision = await self.view.read_placement(node_id)
            if not change(record):
                return None
            record.changed_at = time.time()
            body = encode(record)
            try:
                if revision:
                    new_rev = await self.view.placement_kv.update(node_id, body, last=revision)
                else:
                    new_rev = await self.view.placement_kv.create(node_id, body)
            except KeyWrongLastSequenceError:
                if attempt + 1 == attempts:
                    await self.view.read_placement(
                        node_id
                    )  # the caller chooses again on fresh data
                continue
            self.view.on_placement(node_id, body, None, new_rev)
            return record
        raise PlacementContention(f"placement of node {node_id}: too many concurrent updates")

    async def reserve_on(
        self, node_id: str, session_ids: list[str], attempts: int = 50
    ) -> list[str]:
        """Take slots on one node for as many of ``session_ids`` as fit; returns those
        (none either when the node is full or excluded, or after ``attempts`` lost CAS)."""
        state = self.view.state(node_id)
        taken: list[str] = []

        def change(record: NodePlacement) -> bool:
            taken.clear()
            if record.excluded:
                return False
            room = self.view.capacity(state) - len(record.sessions)
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
                best = self.view.candidates(record, excluded, promised)
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

    async def take(self, node_id: str, session_id: str) -> bool:
        """Take one slot, batched: the placements of this process that want the same node
        at the same moment share one CAS instead of racing each other for the record."""
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._queued.setdefault(node_id, []).append((session_id, future))
        self.queued[node_id] = self.queued.get(node_id, 0) + 1
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
                    self.queued[node_id] -= len(batch)
                for session_id, future in batch:
                    if not future.done():
                        future.set_result(session_id in taken)
        finally:
            self._flushing.discard(node_id)

    async def forget(self, node_id: str) -> None:
        """Drop a node that is gone for good (down, no sessions) from every view."""
        state = self.view.nodes.get(node_id)
        if state is None or self.view.alive(node_id) or self.view.placement_of(node_id).sessions:
            return
        with contextlib.suppress(KeyNotFoundError, KeyWrongLastSequenceError):
            await self.view.placement_kv.delete(node_id, last=state.placement_revision or None)
        self.view.nodes.pop(node_id, None)

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
            return self.view.placement_of(node_id), False
        return updated, True

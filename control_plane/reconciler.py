"""The reconciler: notices dead nodes and moves their sessions (DESIGN §4).

Every control-plane process runs a candidate; one is active at a time. The active one
holds the key ``reconciler`` in KV ``zf_leases``, written with a per-message TTL of
``ZAPFLEET_LEADER_LEASE_S`` and renewed by revision CAS every third of it. If the holder
dies or is cut off, the key expires and another candidate creates it. Two active
reconcilers would still be safe (every move is a CAS with a precondition on the
assignment), only wasteful.

Each tick (``ZAPFLEET_RECONCILE_INTERVAL_S``), the active reconciler:

- marks a node **down** once it has been silent for its lease + ``ZAPFLEET_LEASE_MARGIN_S``
  (silence counted on this process's monotonic clock from the last heartbeat it saw; the
  agent counts its lease from *before* it sent that heartbeat, so by then it has fenced
  itself), confirmed by reading the heartbeat key; publishes ``node.down``;
- re-places the sessions of down nodes on survivors with a bumped epoch
  (``session.moved`` for each);
- marks a node **up** again when it heartbeats (``node.up``), and finishes drains left
  unfinished;
- every ``ZAPFLEET_AUDIT_INTERVAL_S``, audits slots against assignments (a control
  plane may die between two steps of a placement) and starts sessions a live node
  should run but does not know (a start that failed after the assignment was written).
  The records come from the session index in memory (``Fleet.known_records``), not a
  scan of KV per period; every repair reads its record from KV again first.

On becoming active, and after a pause of its own loop longer than a lease, it counts
every node's silence from that moment: a reconciler that was itself cut off must not
take everyone else for dead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import socket
import time

import msgspec
from nats.errors import Error as NatsError
from nats.js.api import KeyValueConfig
from nats.js.client import JetStreamContext
from nats.js.errors import APIError, KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from contract.protocol import (
    LEASES_BUCKET,
    SYSTEM_TENANT,
    Empty,
    EventType,
    Op,
    SessionList,
    SessionRecord,
)
from control_plane.agents import AgentCallError, AgentUnavailable
from control_plane.fleet import Fleet, placed_on
from control_plane.fleet_view import NodePlacement
from zapfleet.natsjs import key_value

log = logging.getLogger(__name__)

LEADER_KEY = "reconciler"
AUDIT_GRACE_S = 30.0  # a slot or record younger than this may be a placement in flight
# A record unchanged for this long whose live node does not run it is started again. Short,
# because a start at the current epoch is idempotent on the agent (lifecycle ops are served
# one at a time) and a move stops the old run before it writes the new assignment: a start
# racing a placement in flight is a no-op. Bound on "desired running, node alive, not
# running": ZAPFLEET_AUDIT_INTERVAL_S + RESTART_GRACE_S (20 s by default; docs/failover.md).
RESTART_GRACE_S = 5.0
DRAIN_STALL_S = 10.0  # a draining node whose record did not change for this long
FORGET_AFTER_S = 24 * 3600.0  # a down node without sessions leaves the node list


class Holder(msgspec.Struct, kw_only=True):
    holder: str
    since: float


class Leadership:
    """A lease on one KV key with a per-message TTL."""

    def __init__(
        self,
        js: JetStreamContext,
        ttl_s: int,
        holder: str | None = None,
        key: str = LEADER_KEY,
        replicas: int = 1,
    ) -> None:
        self.js = js
        self.replicas = replicas
        self.key = key
        self.ttl_s = max(1, int(ttl_s))
        self.holder = holder or f"{socket.gethostname()}-{secrets.token_hex(4)}"
        self.revision = 0
        self.renewed_at = 0.0
        self.since = 0.0
        self._kv: KeyValue | None = None

    async def _bucket(self) -> KeyValue:
        if self._kv is None:
            config = KeyValueConfig(bucket=LEASES_BUCKET, history=1)
            self._kv = await key_value(self.js, config, self.replicas)
        return self._kv

    @property
    def leading(self) -> bool:
        # act only well inside the lease: the key may expire a little early
        return bool(self.revision) and time.monotonic() - self.renewed_at < self.ttl_s * 0.8

    async def hold(self) -> bool:
        """Acquire or renew as needed; True while this candidate is the active one."""
        kv = await self._bucket()
        if self.leading and time.monotonic() - self.renewed_at < self.ttl_s / 3:
            return True
        sent_at = time.monotonic()
        body = msgspec.json.encode(Holder(holder=self.holder, since=self.since or time.time()))
        try:
            if self.revision:
                ack = await self.js.publish(
                    f"$KV.{LEASES_BUCKET}.{self.key}",
                    body,
                    headers={"Nats-Expected-Last-Subject-Sequence": str(self.revision)},
                    msg_ttl=self.ttl_s,
                    timeout=self.ttl_s / 3,
                )
                self.revision = ack.seq
            else:
                self.revision = await kv.create(self.key, body, msg_ttl=self.ttl_s)
                self.since = time.time()
                log.info("reconciler leadership acquired", extra={"holder": self.holder})
        except (KeyWrongLastSequenceError, APIError, NatsError, TimeoutError) as exc:
            if self.revision:
                log.warning("reconciler leadership lost", extra={"error": repr(exc)})
            self.revision = 0
            return False
        self.renewed_at = sent_at
        return True

    async def resign(self) -> None:
        if not self.revision:
            return
        kv = await self._bucket()
        with contextlib.suppress(Exception):
            await kv.delete(self.key, last=self.revision)
        self.revision = 0

    async def current(self) -> str | None:
        kv = await self._bucket()
        try:
            entry = await kv.get(self.key)
        except KeyNotFoundError:
            return None
        if not entry.value:
            return None
        return msgspec.json.decode(entry.value, type=Holder).holder


class Reconciler:
    def __init__(self, fleet: Fleet, holder: str | None = None) -> None:
        self.fleet = fleet
        self.settings = fleet.settings
        self.leadership = Leadership(
            fleet.js, self.settings.leader_lease_s, holder, replicas=self.settings.replicas
        )
        self.active = False
        self._task: asyncio.Task[None] | None = None
        self._jobs: dict[str, asyncio.Task[None]] = {}
        self._last_tick = time.monotonic()
        self._next_audit = 0.0
        self.last_audit_s = 0.0  # how long the last audit took (logged: "audit done")

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="reconciler")

    async def stop(self) -> None:
        for task in (self._task, *self._jobs.values()):
            if task is not None:
                task.cancel()
        for task in (self._task, *self._jobs.values()):
            if task is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        await self.leadership.resign()

    async def _run(self) -> None:
        while True:
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("reconciler tick failed")
            await asyncio.sleep(self.settings.reconcile_interval_s)

    async def tick(self) -> None:
        now = time.monotonic()
        paused = now - self._last_tick > self.settings.lease_ttl_s
        self._last_tick = now
        if not self.fleet.nc.is_connected or not await self.leadership.hold():
            if self.active:
                log.warning("reconciler standing by")
            self.active = False
            return
        if not self.active or paused:
            # silence is counted from now: we may have been the ones cut off
            self.fleet.view.refresh_seen()
            self._next_audit = now + self.settings.audit_interval_s
            self.active = True
            log.info("reconciler active", extra={"holder": self.leadership.holder})
        await self.check_nodes()
        if now >= self._next_audit:
            self._next_audit = now + self.settings.audit_interval_s
            self._spawn("audit", self.audit())

    def _spawn(self, key: str, coro: object) -> None:
        """One background job per key (a failover per node, the audit)."""
        running = self._jobs.get(key)
        if running is not None and not running.done():
            coro.close()  # type: ignore[attr-defined]
            return
        self._jobs[key] = asyncio.create_task(coro)  # type: ignore[arg-type]

    async def check_nodes(self) -> None:
        fleet = self.fleet
        for state in list(fleet.view.nodes.values()):
            node_id = state.node_id
            placement = fleet.view.placement_of(node_id)
            if fleet.view.alive(node_id):
                await self._node_alive(node_id, placement, state.placement is None)
                continue
            if placement.down and not placement.sessions:
                if fleet.view.silent_s(state) > FORGET_AFTER_S:
                    await fleet.slots.forget(node_id)
                continue
            if not await fleet.view.confirm_down(node_id):
                continue
            if not placement.down:
                _, changed = await fleet.slots.set_flags(node_id, down=True)
                if changed:
                    silent = round(fleet.view.silent_s(state), 2)
                    log.error("node down", extra={"node": node_id, "silent_s": silent})
                    await fleet.emit(
                        EventType.NODE_DOWN,
                        SYSTEM_TENANT,
                        node_id,
                        f"node.down.{node_id}.{time.time_ns()}",
                        node_id=node_id,
                        silent_s=silent,
                        left=state.left,
                        sessions=len(placement.sessions),
                    )
            if fleet.view.placement_of(node_id).sessions:
                self._spawn(f"failover:{node_id}", self._failover(node_id))

    async def _node_alive(self, node_id: str, placement: NodePlacement, new: bool) -> None:
        fleet = self.fleet
        changed = False
        if new:
            changed = await fleet.slots.update_placement(node_id, lambda _: True) is not None
        elif placement.down:
            _, changed = await fleet.slots.set_flags(node_id, down=False)
        if changed:
            log.info("node up", extra={"node": node_id})
            await fleet.emit(
                EventType.NODE_UP,
                SYSTEM_TENANT,
                node_id,
                f"node.up.{node_id}.{time.time_ns()}",
                node_id=node_id,
            )
        stalled = time.time() - placement.changed_at > DRAIN_STALL_S
        if placement.draining and placement.sessions and stalled:
            # a drain whose caller gave up (or died): finish it
            self._spawn(f"drain:{node_id}", self._drain(node_id))

    async def _failover(self, node_id: str) -> None:
        started = time.monotonic()
        results = await self.fleet.failover(node_id)
        moved = sum(1 for r in results if r.result == "moved")
        log.warning(
            "failover done",
            extra={
                "node": node_id,
                "moved": moved,
                "failed": sum(1 for r in results if r.result == "failed"),
                "seconds": round(time.monotonic() - started, 3),
            },
        )
        if moved < len(results):
            await asyncio.sleep(1)  # capacity may come back: the next tick tries again

    async def _drain(self, node_id: str) -> None:
        await self.fleet.drain(node_id)
        await asyncio.sleep(2)

    async def audit(self) -> None:
        started = time.monotonic()
        sessions = await self._audit()
        self.last_audit_s = time.monotonic() - started
        log.info("audit done", extra={"seconds": round(self.last_audit_s, 4), "sessions": sessions})

    async def _audit(self) -> int:
        """Slots against assignments: add the missing, drop the stale. Only what did not
        change for a grace period is touched (a placement may be between its steps), and
        the list of records is a snapshot, so each repair is checked again first."""
        fleet = self.fleet
        now = time.time()
        assigned: dict[str, set[str]] = {}
        settled: set[str] = set()
        restartable: set[str] = set()
        records = await self._records()
        for record in records:
            session_id = record.spec.key
            if now - record.updated_at > AUDIT_GRACE_S:
                settled.add(session_id)
            if now - record.updated_at > RESTART_GRACE_S:
                restartable.add(session_id)
            node_id = placed_on(record)
            if node_id is not None:
                assigned.setdefault(node_id, set()).add(session_id)
        for node_id in set(assigned) - set(fleet.view.nodes):
            fleet.view.state(node_id)  # known from now on: silent until it heartbeats
        for node_id in list(fleet.view.nodes):
            wanted = assigned.get(node_id, set())
            slots = fleet.view.placement_of(node_id).sessions
            missing = {s for s in wanted - slots.keys() if s in settled}
            stale = {s for s, at in slots.items() if s not in wanted and now - at > AUDIT_GRACE_S}
            if not missing and not stale:
                continue
            # read again: the snapshot may be older than a move that happened meanwhile
            fresh = await asyncio.gather(*(fleet.record(s) for s in missing | stale))
            here = {r.spec.key for r in fresh if r is not None and placed_on(r) == node_id}
            add, drop = missing & here, stale - here

            def change(record: NodePlacement, add: set[str] = add, drop: set[str] = drop) -> bool:
                added = add - record.sessions.keys()
                dropped = drop & record.sessions.keys()
                for session_id in added:
                    record.sessions[session_id] = now
                for session_id in dropped:
                    del record.sessions[session_id]
                return bool(added or dropped)

            if await fleet.slots.update_placement(node_id, change) is not None:
                log.info("audit repaired slots", extra={"node": node_id})
        # one listing per live node, all nodes at once (each repairs only its own sessions)
        await asyncio.gather(
            *(
                self._restart_missing(node_id, ids & restartable)
                for node_id, ids in assigned.items()
                if fleet.view.alive(node_id)
            )
        )
        return len(records)

    async def _records(self) -> list[SessionRecord]:
        """Every session record: from the session index in memory (a KV mirror of
        ``zf_sessions``), or one scan of the bucket while that is not synced. Each repair
        below reads its record again from KV before it acts."""
        known = self.fleet.known_records
        records = known() if known is not None else None
        if records is None:
            return await self.fleet.sessions.list()
        return records

    async def _restart_missing(self, node_id: str, ids: set[str]) -> None:
        """Sessions a live node should run but does not know (a start RPC that failed or
        timed out): start them at their current epoch. Any state the node reports, even
        FAILED or LOGGED_OUT, counts as known: only the node's absence of it is repaired."""
        if not ids:
            return
        fleet = self.fleet
        try:
            listing = await fleet.agents.call(node_id, Op.SESSIONS_LIST, Empty(), SessionList)
        except (AgentCallError, AgentUnavailable):
            return
        known = {s.ref for s in listing.sessions}
        for session_id in sorted(ids - known):
            record = await fleet.record(session_id)
            if record is None or placed_on(record) != node_id:
                continue
            try:
                await fleet.start_on(record)
            except (AgentCallError, AgentUnavailable) as exc:
                log.warning(
                    "audit could not start a session",
                    extra={"session_id": session_id, "node": node_id, "error": str(exc)},
                )
                continue
            log.warning(
                "audit started a session its node did not run", extra={"session_id": session_id}
            )

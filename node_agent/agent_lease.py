"""The agent's node side: its heartbeat (KV ``zf_nodes`` and ``zf.nodes.<id>.heartbeat``,
with the node's metrics), its lease — fenced the moment it ends: every session stopped,
so an account never has two live sockets — and resuming what KV assigns here after a
restart or a fence; the periodic device-store backups.

A mixin of :class:`~node_agent.agent.Agent`, like :mod:`node_agent.agent_messages`
(issue 14); the lease itself and the assignment watch are :mod:`node_agent.lease`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING

from nats.aio.client import Client as NATS
from nats.js.kv import KeyValue
from prometheus_client import Gauge

from contract.protocol import (
    NodeInfo,
    SessionInfo,
    SessionState,
    StartSession,
    encode,
    heartbeat_subject,
)
from node_agent import _system
from node_agent.device_store import DeviceStore
from node_agent.engines._base import Engine
from node_agent.lease import Lease, assigned_to, claim
from node_agent.settings import AgentSettings
from node_agent.supervisor import LIVE_STATES, SessionSupervisor
from zapfleet import __version__
from zapfleet.backoff import Backoff, Retrier

log = logging.getLogger(__name__)

log = logging.getLogger(__name__)

# listing the sessions to resume after a fence or a restart: 0.5 s doubling to 5 s, for
# about a minute (a NATS cluster electing leaders times out for seconds)
RESUME_RETRY = Backoff(base_s=0.5, max_s=5.0, jitter="full", floor_s=0.5)
RESUME_ATTEMPTS = 15

SESSIONS = Gauge("zapfleet_agent_sessions", "Sessions by state", ["state"])
CAPACITY = Gauge("zapfleet_agent_capacity", "Maximum sessions of this agent")
LOOP_LAG = Gauge("zapfleet_agent_loop_lag_seconds", "Event-loop lag")
OPEN_FDS = Gauge("zapfleet_agent_open_fds", "Open file descriptors")
RSS = Gauge("zapfleet_agent_rss_bytes", "Resident memory")


class LeaseOps:
    if TYPE_CHECKING:
        settings: AgentSettings
        node_id: str
        sessions: dict[str, SessionSupervisor]
        lease: Lease
        lag: _system.LoopLagMonitor
        draining: bool
        started_at: float
        _fenced: bool
        _tasks: list[asyncio.Task[None]]
        _assigned_at: dict[str, int]
        _nodes_kv: KeyValue | None
        _sessions_kv: KeyValue | None
        _device_store: DeviceStore | None

        @property
        def nc(self) -> NATS: ...
        @property
        def engine(self) -> Engine: ...
        def _live_count(self) -> int: ...
        async def op_start(self, request: StartSession) -> SessionInfo: ...

    def node_info(self) -> NodeInfo:
        by_state: dict[str, int] = {}
        for supervisor in self.sessions.values():
            by_state[supervisor.state] = by_state.get(supervisor.state, 0) + 1
        return NodeInfo(
            node_id=self.node_id,
            version=__version__,
            engine=self.engine.name,
            capacity=self.settings.max_sessions,
            sessions=self._live_count(),
            by_state=by_state,
            rss_bytes=_system.rss_bytes(),
            memory_limit_bytes=_system.memory_limit_bytes(),
            open_fds=_system.open_fds(),
            loop_lag_ms=round(self.lag.recent_ms, 2),
            loop_lag_max_ms=round(self.lag.max_ms, 2),
            draining=self.draining,
            labels=self.settings.labels,
            started_at=self.started_at,
            ts=time.time(),
            lease_ttl_s=self.settings.lease_ttl_s,
        )

    def _export_metrics(self, info: NodeInfo) -> None:
        for state in SessionState:
            SESSIONS.labels(state.value).set(info.by_state.get(state, 0))
        LOOP_LAG.set(info.loop_lag_ms / 1000)
        OPEN_FDS.set(info.open_fds)
        RSS.set(info.rss_bytes)

    async def _heartbeat_once(self) -> None:
        assert self._nodes_kv is not None
        # after a freeze the lease may be gone: fence before renewing, never after
        await self._enforce_lease()
        info = self.node_info()
        self._export_metrics(info)
        body = encode(info)
        sent_at = self.lease.now()  # the lease counts from before the write, not after
        await self._nodes_kv.put(self.node_id, body)
        self.lease.renewed(sent_at)
        await self.nc.publish(heartbeat_subject(self.node_id), body)
        if self._fenced:
            self._fenced = False
            log.warning("lease renewed after a fence: resuming what KV still assigns here")
            self._tasks.append(asyncio.create_task(self._resume_assigned(), name="resume"))

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.heartbeat_interval_s)
            try:
                await self._heartbeat_once()
            except Exception as exc:
                log.warning("heartbeat failed", extra={"error": repr(exc)})

    async def _lease_loop(self) -> None:
        """Check the lease often, so a fence happens when the lease ends, not a heartbeat
        period later (engines also check it before each network action)."""
        interval = min(0.25, self.settings.heartbeat_interval_s / 4)
        while True:
            await asyncio.sleep(interval)
            await self._enforce_lease()

    async def _enforce_lease(self) -> None:
        """Cut off past the lease TTL, the control plane may have moved our sessions:
        stop them all so there are never two live sockets for one account."""
        if self.lease.valid() or self._fenced:
            return
        self._fenced = True
        silent = self.lease.silent_s()
        log.error("lease lost: stopping every session", extra={"silent_s": round(silent, 1)})
        for supervisor in list(self.sessions.values()):
            with contextlib.suppress(Exception):
                await supervisor.stop("lease lost: node was cut off from NATS")
        self.sessions.clear()
        self._assigned_at.clear()

    def _running_assignment(self, session_id: str) -> tuple[int, int] | None:
        """(epoch, KV revision of the assignment it was started on) of a live session."""
        supervisor = self.sessions.get(session_id)
        if supervisor is None or supervisor.state not in LIVE_STATES:
            return None
        return supervisor.epoch, self._assigned_at.get(session_id, 0)

    async def _stop_superseded(self, session_id: str, reason: str) -> None:
        supervisor = self.sessions.pop(session_id, None)
        self._assigned_at.pop(session_id, None)
        if supervisor is None:
            return
        log.warning("stopping a superseded session", extra={"session_id": session_id})
        await supervisor.stop(reason)

    async def _resume_assigned(self) -> None:
        """Start the sessions KV assigns to this node (after a crash, a restart or a
        fence). Each one is claimed first (new epoch by revision CAS), so a reconciler
        moving it at the same moment and this agent never both run it. Starts return at
        once; the neonize engine staggers the dials behind its lock."""
        assert self._sessions_kv is not None
        retry = Retrier(RESUME_RETRY)
        while True:
            try:
                keys = await assigned_to(self._sessions_kv, self.node_id)
                break
            except Exception as exc:
                # NATS trouble (a cluster electing leaders answers timeouts for seconds):
                # try again while the lease holds; the reconciler's audit is the backstop
                if retry.attempt >= RESUME_ATTEMPTS or not self.lease.valid():
                    log.warning(
                        "could not list the sessions to resume; the audit will start them",
                        extra={"error": repr(exc), "attempts": retry.attempt + 1},
                    )
                    return
                delay = await retry.sleep()
                log.info(
                    "listing the sessions to resume failed; retrying",
                    extra={"error": repr(exc), "retry_in_s": round(delay, 2)},
                )
        for key in keys:
            if key in self.sessions or not self.lease.valid():
                continue
            try:
                claimed = await claim(self._sessions_kv, key, self.node_id)
                if claimed is None or claimed.assignment is None:
                    continue
                await self.op_start(StartSession(spec=claimed.spec, epoch=claimed.assignment.epoch))
            except Exception as exc:  # one session, or NATS for a moment: never the agent
                log.warning(
                    "could not resume session", extra={"session_id": key, "error": repr(exc)}
                )

    async def _device_backup_loop(self) -> None:
        """Periodic backup of the SQLite device stores of connected sessions."""
        while True:
            await asyncio.sleep(self.settings.device_backup_interval_s)
            if self._device_store is None:
                return
            for session_id, supervisor in list(self.sessions.items()):
                if supervisor.state is SessionState.CONNECTED:
                    await self._device_store.backup(session_id)

"""The last known live state of every session, in memory, without asking agents.

Agents write each session's :class:`SessionInfo` to KV ``zf_session_state`` on every
state change (node_agent/live_state.py); this view follows that bucket through one
:class:`zapfleet._mirror.KVMirror`, and also learns every ``SessionInfo`` an agent's RPC
answer shows (a status read, a start), so a state the API has just seen is listed at
once. Of two infos of one session the newer wins: higher epoch, then later ``since``
(the agent's time of the last state change).

An info is only shown for the run the session record names (same node and epoch) and
while that node is alive (control_plane/fleet.py): a dead node's sessions list as
``STOPPED`` until they are moved, as when the old listing could not reach the node.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import msgspec
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from contract.protocol import SESSION_STATE_BUCKET, Empty, Op, SessionInfo, SessionList
from control_plane.agents import AgentCallError, AgentUnavailable
from control_plane.fleet import Fleet
from zapfleet._mirror import Change, KVMirror

log = logging.getLogger(__name__)

_decoder = msgspec.json.Decoder(SessionInfo)


def _order(info: SessionInfo) -> tuple[int, float]:
    return info.epoch, info.since


class LiveStates:
    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv
        self._infos: dict[str, SessionInfo] = {}  # by internal key
        self.mirror = KVMirror(kv, SESSION_STATE_BUCKET)
        self._synced = self.mirror.follow(self._apply, on_loaded=self._reloaded)

    async def start(self, sync_timeout_s: float = 10.0) -> None:
        await self.mirror.start()
        if not await self.mirror.wait_ready(sync_timeout_s):
            log.warning("live session states not synced at start; they fill in")

    async def stop(self) -> None:
        await self.mirror.stop()

    def _apply(self, change: Change) -> None:
        if change.deleted:
            self._infos.pop(change.key, None)
            return
        assert change.value is not None
        self.note(_decoder.decode(change.value), key=change.key)

    def _reloaded(self, keys: set[str], _revision: int) -> None:
        for key in [k for k in self._infos if k not in keys]:
            del self._infos[key]

    def note(self, info: SessionInfo, key: str | None = None) -> None:
        """Remember ``info`` unless a newer one of that session is known."""
        key = key or info.ref
        current = self._infos.get(key)
        if current is None or _order(info) >= _order(current):
            self._infos[key] = info

    async def seed(self, fleet: Fleet) -> int:
        """Once, at start: one ``sessions_list`` per live node, so sessions of agents
        older than ``zf_session_state`` (a rolling upgrade), or whose last write was
        lost, list with their state too. Newer infos from the bucket win as always.
        Returns how many infos were learnt."""

        async def one(node_id: str) -> list[SessionInfo]:
            try:
                listed = await fleet.agents.call(node_id, Op.SESSIONS_LIST, Empty(), SessionList)
            except (AgentCallError, AgentUnavailable):
                return []
            return listed.sessions

        alive = [node_id for node_id in list(fleet.view.nodes) if fleet.view.alive(node_id)]
        found = await asyncio.gather(*(one(node_id) for node_id in alive))
        count = 0
        for infos in found:
            for info in infos:
                self.note(info)
                count += 1
        return count

    def get(self, key: str) -> SessionInfo | None:
        return self._infos.get(key)

    async def forget(self, key: str) -> None:
        """A deleted session: its last state goes too."""
        self._infos.pop(key, None)
        with contextlib.suppress(KeyNotFoundError, Exception):
            await self.kv.purge(key)

    def __len__(self) -> int:
        return len(self._infos)

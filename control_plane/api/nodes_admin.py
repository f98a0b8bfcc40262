"""Node administration (admin key only): placement view, cordon, drain, rebalance.

(``GET /v1/nodes`` lists the nodes with these flags: control_plane/api/nodes.py.)

- ``POST /v1/nodes/{node_id}/cordon``    no new sessions on the node; running ones stay
- ``POST /v1/nodes/{node_id}/uncordon``  eligible again (also ends a drain)
- ``POST /v1/nodes/{node_id}/undrain``   end a drain, keep a cordon
- ``POST /v1/nodes/{node_id}/drain``     cordon and move every session off, without
  re-pairing (each stops on the node first, then starts elsewhere with epoch + 1)
- ``POST /v1/nodes/rebalance``           even out sessions between eligible nodes
"""

from __future__ import annotations

import time
from typing import Literal

import msgspec
from litestar import Controller, post
from litestar.di import Provide

from control_plane.auth import Principal, require_admin
from control_plane.fleet import Fleet, MoveResult
from control_plane.models import NodeStatus
from control_plane.problems import ProblemError
from control_plane.services import Services


class MoveReport(msgspec.Struct, kw_only=True):
    moved: int
    skipped: int
    failed: int
    results: list[MoveResult]


def node_status(fleet: Fleet, node_id: str) -> NodeStatus | None:
    state = fleet.view.nodes[node_id]
    if state.info is None:
        return None  # known from assignments only: no heartbeat seen yet
    placement = fleet.view.placement_of(node_id)
    status: Literal["up", "silent", "down", "left"] = "up"
    if state.left:
        status = "left"
    elif placement.down:
        status = "down"
    elif not fleet.view.fresh(state) and not state.info.draining:
        status = "silent"
    fields = msgspec.structs.asdict(state.info)
    fields["draining"] = state.info.draining or placement.draining
    return NodeStatus(
        **fields,
        state=status,
        cordoned=placement.cordoned,
        slots_used=len(placement.sessions),
        silent_s=round(time.monotonic() - state.heard_at, 2),
    )


def node_statuses(fleet: Fleet) -> list[NodeStatus]:
    found = (node_status(fleet, n) for n in sorted(fleet.view.nodes))
    return [n for n in found if n is not None]


def report(results: list[MoveResult]) -> MoveReport:
    return MoveReport(
        moved=sum(1 for r in results if r.result == "moved"),
        skipped=sum(1 for r in results if r.result == "skipped"),
        failed=sum(1 for r in results if r.result == "failed"),
        results=results,
    )


class NodeAdminController(Controller):
    path = "/v1/nodes"
    tags = ["nodes (admin)"]
    dependencies = {"principal": Provide(require_admin)}

    @staticmethod
    def _status(fleet: Fleet, node_id: str) -> NodeStatus:
        status = node_status(fleet, node_id) if node_id in fleet.view.nodes else None
        if status is None:
            raise ProblemError(404, "node_not_found", f"no node {node_id!r}")
        return status

    @post("/{node_id:str}/cordon", status_code=200, summary="No new sessions on the node")
    async def cordon(self, node_id: str, services: Services, principal: Principal) -> NodeStatus:
        self._status(services.fleet, node_id)
        await services.fleet.slots.set_flags(node_id, cordoned=True)
        return self._status(services.fleet, node_id)

    @post("/{node_id:str}/uncordon", status_code=200, summary="Eligible again (ends a drain)")
    async def uncordon(self, node_id: str, services: Services, principal: Principal) -> NodeStatus:
        self._status(services.fleet, node_id)
        await services.fleet.slots.set_flags(node_id, cordoned=False, draining=False)
        return self._status(services.fleet, node_id)

    @post("/{node_id:str}/undrain", status_code=200, summary="End a drain (a cordon stays)")
    async def undrain(self, node_id: str, services: Services, principal: Principal) -> NodeStatus:
        self._status(services.fleet, node_id)
        await services.fleet.slots.set_flags(node_id, draining=False)
        return self._status(services.fleet, node_id)

    @post(
        "/{node_id:str}/drain",
        status_code=200,
        summary="Move every session off the node without re-pairing; no new placements",
    )
    async def drain(self, node_id: str, services: Services, principal: Principal) -> MoveReport:
        self._status(services.fleet, node_id)
        return report(await services.fleet.drain(node_id))

    @post("/rebalance", status_code=200, summary="Even out sessions between eligible nodes")
    async def rebalance(self, services: Services, principal: Principal) -> MoveReport:
        return report(await services.fleet.rebalance())

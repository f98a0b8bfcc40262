"""Node administration (admin key only): placement view, cordon, drain, rebalance.

- ``GET  /v1/placement``                 every node as placement sees it
- ``POST /v1/nodes/{node_id}/cordon``    no new sessions on the node; running ones stay
- ``POST /v1/nodes/{node_id}/uncordon``  eligible again (also ends a drain)
- ``POST /v1/nodes/{node_id}/drain``     cordon and move every session off, without
  re-pairing (each stops on the node first, then starts elsewhere with epoch + 1)
- ``POST /v1/nodes/rebalance``           even out sessions between eligible nodes
"""

from __future__ import annotations

from typing import Literal

import msgspec
from litestar import Controller, get, post
from litestar.di import Provide

from control_plane.auth import Principal, authenticate
from control_plane.fleet import Fleet, MoveResult
from control_plane.problems import ProblemError
from control_plane.services import Services


class NodeView(msgspec.Struct, kw_only=True):
    node_id: str
    status: Literal["up", "down", "left", "silent"]
    cordoned: bool
    draining: bool
    slots_used: int
    capacity: int
    sessions: int
    by_state: dict[str, int]
    engine: str | None = None
    labels: dict[str, str] = msgspec.field(default_factory=dict)
    version: str | None = None
    silent_s: float
    lease_ttl_s: float


class MoveReport(msgspec.Struct, kw_only=True):
    moved: int
    skipped: int
    failed: int
    results: list[MoveResult]


def _require_admin(principal: Principal) -> None:
    if not principal.is_admin:
        raise ProblemError(403, "forbidden", "node administration needs the admin key")


def node_view(fleet: Fleet, node_id: str) -> NodeView:
    state = fleet.nodes[node_id]
    placement = fleet.placement_of(node_id)
    info = state.info
    status: Literal["up", "down", "left", "silent"] = "up"
    if state.left:
        status = "left"
    elif placement.down:
        status = "down"
    elif not fleet.fresh(state) and not (info is not None and info.draining):
        status = "silent"
    return NodeView(
        node_id=node_id,
        status=status,
        cordoned=placement.cordoned,
        draining=placement.draining or bool(info and info.draining),
        slots_used=len(placement.sessions),
        capacity=info.capacity if info else 0,
        sessions=info.sessions if info else 0,
        by_state=dict(info.by_state) if info else {},
        engine=info.engine if info else None,
        labels=dict(info.labels) if info else {},
        version=info.version if info else None,
        silent_s=round(fleet.silent_s(state), 2),
        lease_ttl_s=fleet.lease_s(state),
    )


def report(results: list[MoveResult]) -> MoveReport:
    return MoveReport(
        moved=sum(1 for r in results if r.result == "moved"),
        skipped=sum(1 for r in results if r.result == "skipped"),
        failed=sum(1 for r in results if r.result == "failed"),
        results=results,
    )


class NodeAdminController(Controller):
    path = "/v1"
    tags = ["nodes"]
    dependencies = {"principal": Provide(authenticate)}

    @staticmethod
    def _known(fleet: Fleet, node_id: str) -> None:
        if node_id not in fleet.nodes:
            raise ProblemError(404, "node_not_found", f"no node {node_id!r}")

    @get("/placement", summary="Every node as placement sees it (admin)")
    async def placement(self, services: Services, principal: Principal) -> list[NodeView]:
        _require_admin(principal)
        return [node_view(services.fleet, n) for n in sorted(services.fleet.nodes)]

    @post("/nodes/{node_id:str}/cordon", status_code=200, summary="No new sessions (admin)")
    async def cordon(self, node_id: str, services: Services, principal: Principal) -> NodeView:
        _require_admin(principal)
        self._known(services.fleet, node_id)
        await services.fleet.set_flags(node_id, cordoned=True)
        return node_view(services.fleet, node_id)

    @post("/nodes/{node_id:str}/uncordon", status_code=200, summary="Eligible again (admin)")
    async def uncordon(self, node_id: str, services: Services, principal: Principal) -> NodeView:
        _require_admin(principal)
        self._known(services.fleet, node_id)
        await services.fleet.set_flags(node_id, cordoned=False, draining=False)
        return node_view(services.fleet, node_id)

    @post(
        "/nodes/{node_id:str}/drain",
        status_code=200,
        summary="Move every session off a node without re-pairing (admin)",
    )
    async def drain(self, node_id: str, services: Services, principal: Principal) -> MoveReport:
        _require_admin(principal)
        self._known(services.fleet, node_id)
        return report(await services.fleet.drain(node_id))

    @post("/nodes/rebalance", status_code=200, summary="Even out sessions between nodes (admin)")
    async def rebalance(self, services: Services, principal: Principal) -> MoveReport:
        _require_admin(principal)
        return report(await services.fleet.rebalance())

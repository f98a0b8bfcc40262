"""/v1/nodes: the node agents and their heartbeats (admin key only)."""

from __future__ import annotations

from litestar import Controller, get
from litestar.di import Provide

from control_plane.auth import Principal, require_admin
from control_plane.models import NodeList
from control_plane.services import Services


class NodeController(Controller):
    path = "/v1/nodes"
    tags = ["nodes (admin)"]
    dependencies = {"principal": Provide(require_admin)}

    @get("/", opt={"rate": "queries"}, summary="Every live node agent (from its heartbeat)")
    async def list_nodes(self, services: Services, principal: Principal) -> NodeList:
        nodes = sorted(await services.nodes.list(), key=lambda n: n.node_id)
        return NodeList(nodes=nodes)

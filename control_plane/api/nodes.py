"""/v1/nodes: the node agents and their heartbeats (admin key only)."""

from __future__ import annotations

from litestar import Controller, get
from litestar.di import Provide

from control_plane.api.nodes_admin import node_statuses
from control_plane.auth import Principal, require_admin
from control_plane.models import NodeList
from control_plane.services import Services


class NodeController(Controller):
    path = "/v1/nodes"
    tags = ["nodes (admin)"]
    dependencies = {"principal": Provide(require_admin)}

    @get("/", opt={"rate": "queries"}, summary="Every node agent: heartbeat and placement state")
    async def list_nodes(self, services: Services, principal: Principal) -> NodeList:
        return NodeList(nodes=node_statuses(services.fleet))

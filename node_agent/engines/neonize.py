"""The neonize (whatsmeow) engine — production default. Full implementation: issue 3."""

from __future__ import annotations

from typing import Literal

from node_agent.engines._base import Emit, EngineSession
from node_agent.protocol import SessionSpec
from node_agent.settings import AgentSettings


class NeonizeEngine:
    name: Literal["neonize"] = "neonize"

    def __init__(self, settings: AgentSettings) -> None:
        self.settings = settings

    async def start(self) -> None:
        raise NotImplementedError(
            "the neonize engine is being built (issue 3); use ZAPFLEET_ENGINE=sim"
        )

    def open_session(self, spec: SessionSpec, emit: Emit) -> EngineSession:
        raise NotImplementedError

    async def close(self) -> None:
        return None

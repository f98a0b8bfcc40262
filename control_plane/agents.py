"""Typed NATS request-reply client for the node agents' RPC surface."""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec
from nats.aio.client import Client as NATS
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from contract.protocol import Err, ErrorCode, Ok, Op, agent_subject, encode
from control_plane.problems import AGENT_ERROR_STATUS, ProblemError

T = TypeVar("T")


class AgentCallError(Exception):
    def __init__(self, code: ErrorCode, message: str, retry_after_s: float | None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.retry_after_s = retry_after_s

    def to_problem(self) -> ProblemError:
        headers = None
        if self.retry_after_s is not None:
            headers = {"Retry-After": str(max(1, round(self.retry_after_s)))}
        return ProblemError(
            AGENT_ERROR_STATUS.get(self.code, 502), self.code.value, self.message, headers=headers
        )


class AgentUnavailable(Exception):
    """The node did not answer (down, partitioned or overloaded)."""

    def to_problem(self) -> ProblemError:
        return ProblemError(503, "node_unavailable", str(self), headers={"Retry-After": "2"})


class AgentClient:
    def __init__(self, nc: NATS, timeout_s: float) -> None:
        self.nc = nc
        self.timeout_s = timeout_s
        self._decoders: dict[Any, msgspec.json.Decoder[Any]] = {}

    def _decoder(self, reply_type: type[T]) -> msgspec.json.Decoder[Ok[T] | Err]:
        decoder = self._decoders.get(reply_type)
        if decoder is None:
            decoder = msgspec.json.Decoder(Ok[reply_type] | Err)  # type: ignore[valid-type]
            self._decoders[reply_type] = decoder
        return decoder

    async def call(
        self,
        node_id: str,
        op: Op,
        request: msgspec.Struct,
        reply_type: type[T],
        timeout_s: float | None = None,
    ) -> T:
        try:
            msg = await self.nc.request(
                agent_subject(node_id, op), encode(request), timeout=timeout_s or self.timeout_s
            )
        except NoRespondersError:
            raise AgentUnavailable(f"node {node_id} is not reachable") from None
        except NatsTimeout:
            raise AgentUnavailable(f"node {node_id} did not answer in time") from None
        reply = self._decoder(reply_type).decode(msg.data)
        if isinstance(reply, Err):
            raise AgentCallError(reply.code, reply.message, reply.retry_after_s)
        return reply.value

"""Helpers for the node-agent specifications: a real Agent on the real nats-server (in this
process or as a child process), its RPC surface, and the events it publishes."""

from __future__ import annotations

import asyncio
import contextlib
import random
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import nats
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from contract.event_data import check as check_event_data
from contract.protocol import (
    SESSIONS_BUCKET,
    Assignment,
    Err,
    ErrorCode,
    Event,
    Ok,
    Op,
    PacingSettings,
    QrCode,
    SessionInfo,
    SessionRecord,
    SessionRef,
    SessionSpec,
    StartSession,
    agent_subject,
    encode,
)
from node_agent.agent import Agent
from node_agent.engines.sim import link
from node_agent.settings import AgentSettings

T = TypeVar("T")


class RpcError(Exception):
    def __init__(self, err: Err) -> None:
        super().__init__(f"{err.code}: {err.message}")
        self.code = err.code
        self.message = err.message
        self.retry_after_s = err.retry_after_s


def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


def phone() -> str:
    """A fresh, possible North-American number (digits only, E.164 without '+')."""
    return f"1555{random.randint(1000000, 9999999)}"


class EventLog:
    """Every event the agents publish for one tenant, as they are published."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        # events whose data break the published contract (contract/event_data.py):
        # stop() fails the test that saw one
        self.invalid: list[str] = []
        self._changed = asyncio.Condition()
        self._sub: Any = None

    async def start(self, nc: NATS, tenant: str) -> None:
        async def on_msg(msg: Msg) -> None:
            event = msgspec.json.decode(msg.data, type=Event)
            problem = check_event_data(event.type, event.data)
            if problem is not None:
                self.invalid.append(problem)
            async with self._changed:
                self.events.append(event)
                self._changed.notify_all()

        self._sub = await nc.subscribe(f"zf.events.{tenant}.>", cb=on_msg)

    async def stop(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
        assert not self.invalid, "events outside their published schema:\n" + "\n".join(
            self.invalid
        )

    def of(self, session_id: str, type_: str | None = None) -> list[Event]:
        return [
            e
            for e in self.events
            if e.session_id == session_id and (type_ is None or e.type == type_)
        ]

    def states(self, session_id: str) -> list[str]:
        return [str(e.data["state"]) for e in self.of(session_id, "session.status")]

    async def wait_for(self, predicate: Callable[[Event], bool], timeout_s: float = 10) -> Event:
        deadline = time.monotonic() + timeout_s
        async with self._changed:
            while True:
                for event in self.events:
                    if predicate(event):
                        return event
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    seen = [(e.type, e.session_id, e.data.get("state")) for e in self.events]
                    raise AssertionError(f"no matching event within {timeout_s} s; saw {seen}")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), remaining)

    async def wait_count(
        self, predicate: Callable[[Event], bool], count: int, timeout_s: float = 10
    ) -> list[Event]:
        deadline = time.monotonic() + timeout_s
        async with self._changed:
            while True:
                found = [e for e in self.events if predicate(e)]
                if len(found) >= count:
                    return found
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(
                        f"only {len(found)} of {count} matching events within {timeout_s} s"
                    )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), remaining)


@dataclass
class AgentClient:
    """Talks to one agent the way the control plane does: KV assignment + NATS RPC."""

    nc: NATS
    node_id: str
    tenant: str = "t"
    timeout_s: float = 10.0
    _decoders: dict[Any, Any] = field(default_factory=dict)

    async def raw(self, op: Op | str, body: bytes) -> Ok[Any] | Err:
        msg = await self.nc.request(agent_subject(self.node_id, op), body, timeout=self.timeout_s)
        return msgspec.json.decode(msg.data, type=Ok[Any] | Err)

    async def call(self, op: Op, request: msgspec.Struct, reply_type: type[T]) -> T:
        decoder = self._decoders.get(reply_type)
        if decoder is None:
            decoder = msgspec.json.Decoder(Ok[reply_type] | Err)  # type: ignore[valid-type]
            self._decoders[reply_type] = decoder
        msg = await self.nc.request(
            agent_subject(self.node_id, op), encode(request), timeout=self.timeout_s
        )
        reply = decoder.decode(msg.data)
        if isinstance(reply, Err):
            raise RpcError(reply)
        value: T = reply.value
        return value

    async def expect_error(self, op: Op, request: msgspec.Struct, code: ErrorCode) -> RpcError:
        try:
            await self.call(op, request, dict)
        except RpcError as exc:
            assert exc.code == code, f"expected {code}, got {exc.code}: {exc.message}"
            return exc
        raise AssertionError(f"{op} succeeded; expected {code}")

    async def assign(
        self,
        session_id: str,
        epoch: int = 1,
        *,
        node_id: str | None = None,
        engine: str = "sim",
        pacing: PacingSettings | None = None,
        proxy: str | None = None,
    ) -> SessionSpec:
        spec = SessionSpec(
            session_id=session_id,
            tenant=self.tenant,
            engine=engine,  # type: ignore[arg-type]
            proxy=proxy,
            pacing=pacing or PacingSettings(enabled=False),
        )
        kv = await self.nc.jetstream().key_value(SESSIONS_BUCKET)
        record = SessionRecord(
            spec=spec,
            assignment=Assignment(node_id=node_id or self.node_id, epoch=epoch),
            created_at=time.time(),
        )
        await kv.put(session_id, encode(record))
        return spec

    async def start(self, session_id: str, epoch: int = 1, **spec: Any) -> SessionInfo:
        started = await self.assign(session_id, epoch, **spec)
        return await self.call(
            Op.SESSION_START, StartSession(spec=started, epoch=epoch), SessionInfo
        )

    async def status(self, session_id: str) -> SessionInfo:
        return await self.call(Op.SESSION_STATUS, SessionRef(session_id=session_id), SessionInfo)

    async def wait_state(self, session_id: str, *states: str, timeout_s: float = 10) -> SessionInfo:
        deadline = time.monotonic() + timeout_s
        info = await self.status(session_id)
        while info.state not in states:
            if time.monotonic() > deadline:
                raise AssertionError(f"{session_id} never reached {states}; last {info}")
            await asyncio.sleep(0.02)
            info = await self.status(session_id)
        return info

    async def pair(self, session_id: str, number: str, timeout_s: float = 10) -> SessionInfo:
        """Show the QR through RPC, scan it with the sim phone, wait for CONNECTED."""
        await self.wait_state(session_id, "PAIRING", timeout_s=timeout_s)
        qr = await self.call(Op.SESSION_QR, SessionRef(session_id=session_id), QrCode)
        result = await link(self.nc, qr.code, number)
        assert result.ok, result.error
        return await self.wait_state(session_id, "CONNECTED", timeout_s=timeout_s)


def sim_settings(nats_url: str, data_dir: Path, **overrides: Any) -> AgentSettings:
    values: dict[str, Any] = {
        "node_id": unique("node"),
        "nats_url": nats_url,
        "engine": "sim",
        "data_dir": str(data_dir),
        "metrics_port": 0,
        "heartbeat_interval_s": 0.5,
        "lease_ttl_s": 10.0,
        "backoff_base_s": 0.05,
        "backoff_max_s": 0.4,
        "sim_read_after_s": 0.05,
        "allow_private_targets": True,
    }
    values.update(overrides)
    return msgspec.convert(values, AgentSettings)


@contextlib.asynccontextmanager
async def running_agent(settings: AgentSettings) -> AsyncIterator[Agent]:
    agent = Agent(settings)
    await agent.start()
    try:
        yield agent
    finally:
        await agent.drain_and_stop()


@contextlib.asynccontextmanager
async def connected(nats_url: str) -> AsyncIterator[NATS]:
    client = await nats.connect(nats_url)
    try:
        yield client
    finally:
        await client.close()

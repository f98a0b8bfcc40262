"""What the chaos drills share: a recorded stream of API calls, and the stream's view of
which accepted messages were really sent."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx
import msgspec
from nats.aio.client import Client as NATS
from nats.errors import TimeoutError as NatsTimeout
from nats.js.api import DeliverPolicy

from contract.protocol import EVENTS_STREAM, Event


@dataclass
class Call:
    at: float  # monotonic
    kind: str
    status: int  # 0: no answer (connection error or timeout)
    problem: str | None = None
    message_id: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    took: float = 0.0  # seconds until the answer


@dataclass
class Traffic:
    """Every call a drill made, with what came back."""

    calls: list[Call] = field(default_factory=list)

    async def call(
        self, client: httpx.AsyncClient, kind: str, method: str, url: str, **kwargs: Any
    ) -> Call:
        at = time.monotonic()
        try:
            response = await client.request(method, url, **kwargs)
        except httpx.HTTPError:
            record = Call(at, kind, 0)
        else:
            body: dict[str, Any] = {}
            if response.headers.get("content-type", "").startswith(
                ("application/json", "application/problem+json")
            ):
                with contextlib.suppress(ValueError):
                    body = response.json()
            problem = body.get("type", "").rsplit(":", 1)[-1] if response.is_error else None
            record = Call(
                at,
                kind,
                response.status_code,
                problem=problem,
                message_id=body.get("message_id") if response.status_code == 202 else None,
                headers=dict(response.headers),
            )
        record.took = time.monotonic() - at
        self.calls.append(record)
        return record

    def of(self, kind: str, since: float = 0.0, until: float = float("inf")) -> list[Call]:
        return [c for c in self.calls if c.kind == kind and since <= c.at < until]

    def outcomes(self, kind: str | None = None, since: float = 0.0) -> dict[str, int]:
        counts: Counter[str] = Counter()
        for call in self.calls:
            if (kind is None or call.kind == kind) and call.at >= since:
                counts[f"{call.status}{':' + call.problem if call.problem else ''}"] += 1
        return dict(sorted(counts.items()))

    def accepted_ids(self) -> set[str]:
        return {c.message_id for c in self.calls if c.message_id}


async def stream_events(
    nc: NATS, subject: str, *, idle_s: float = 0.5, limit_s: float = 15.0
) -> list[Event]:
    """Every event stored in ZF_EVENTS under ``subject`` (wildcards allowed), oldest
    first, read until the stream has nothing more for ``idle_s``."""
    js = nc.jetstream()
    sub = await js.subscribe(
        subject, stream=EVENTS_STREAM, ordered_consumer=True, deliver_policy=DeliverPolicy.ALL
    )
    events: list[Event] = []
    deadline = time.monotonic() + limit_s
    try:
        while time.monotonic() < deadline:
            try:
                msg = await sub.next_msg(timeout=idle_s)
            except (TimeoutError, NatsTimeout):
                break
            events.append(msgspec.json.decode(msg.data, type=Event))
    finally:
        await sub.unsubscribe()
    return events


async def sent_message_ids(
    nc: NATS, tenant: str, session_id: str, idle_s: float = 0.5
) -> Counter[str]:
    """How many ``message.sent`` events the stream holds per message id of a session."""
    events = await stream_events(nc, f"zf.events.{tenant}.{session_id}.message.sent", idle_s=idle_s)
    return Counter(str(e.data.get("message_id")) for e in events)


async def wait_all_sent(
    nc: NATS, tenant: str, session_id: str, wanted: set[str], timeout_s: float
) -> tuple[float, Counter[str]]:
    """Wait until every id in ``wanted`` has a ``message.sent`` event; returns (seconds
    waited, counts). Raises with the missing ids otherwise."""
    started = time.monotonic()
    counts: Counter[str] = Counter()
    while True:
        counts = await sent_message_ids(nc, tenant, session_id)
        missing = wanted - set(counts)
        if not missing:
            return time.monotonic() - started, counts
        if time.monotonic() - started > timeout_s:
            raise AssertionError(
                f"{len(missing)} of {len(wanted)} accepted messages never sent, "
                f"e.g. {sorted(missing)[:5]}"
            )
        await asyncio.sleep(0.5)

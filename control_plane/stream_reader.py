"""Paged reads of a JetStream stream by subject filter, without consumers.

One batched direct get (``$JS.API.DIRECT.GET.<stream>`` with ``next_by_subj`` and
``batch``; the stream has ``allow_direct``) returns up to a page of messages from a
sequence or a time in one round trip, followed by an end-of-batch marker that says how
many more match. It leaves no state on the server, so any control-plane replica can
serve any page, and the last sequence of a page is the cursor of the next.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass
from datetime import datetime

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg


@dataclass(frozen=True, slots=True)
class StoredMessage:
    seq: int
    subject: str
    data: bytes
    time: str


@dataclass(frozen=True, slots=True)
class Page:
    messages: list[StoredMessage]
    more: int
    """How many more messages match after this page."""


class StreamReadError(Exception):
    pass


async def read_page(
    nc: NATS,
    stream: str,
    subject_filter: str,
    *,
    after_seq: int = 0,
    start_time: datetime | None = None,
    limit: int = 100,
    timeout_s: float = 5.0,
) -> Page:
    """Messages matching ``subject_filter`` with sequence > ``after_seq`` (or stored at or
    after ``start_time``), at most ``limit``, oldest first."""
    request: dict[str, object] = {"next_by_subj": subject_filter, "batch": limit}
    if start_time is not None:
        request["start_time"] = start_time.isoformat().replace("+00:00", "Z")
    else:
        request["seq"] = after_seq + 1
    inbox = nc.new_inbox()
    queue: asyncio.Queue[Msg] = asyncio.Queue()

    async def collect(msg: Msg) -> None:
        queue.put_nowait(msg)

    sub = await nc.subscribe(inbox, cb=collect)
    messages: list[StoredMessage] = []
    try:
        await nc.publish(f"$JS.API.DIRECT.GET.{stream}", json.dumps(request).encode(), reply=inbox)
        while True:
            try:
                async with asyncio.timeout(timeout_s):
                    msg = await queue.get()
            except TimeoutError:
                raise StreamReadError(f"stream {stream} did not answer in time") from None
            headers = msg.headers or {}
            status = headers.get("Status")
            if status == "404":
                return Page(messages, 0)
            if status == "204":
                return Page(messages, int(headers.get("Nats-Num-Pending", "0")))
            if status is not None:
                raise StreamReadError(f"stream {stream}: {status} {headers.get('Description')}")
            messages.append(
                StoredMessage(
                    seq=int(headers["Nats-Sequence"]),
                    subject=headers.get("Nats-Subject", ""),
                    data=msg.data,
                    time=headers.get("Nats-Time-Stamp", ""),
                )
            )
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()


async def read_one(nc: NATS, stream: str, seq: int, timeout_s: float = 5.0) -> StoredMessage | None:
    """The message at ``seq``, or None when there is none (deleted, purged, never was)."""
    try:
        reply = await nc.request(
            f"$JS.API.DIRECT.GET.{stream}", json.dumps({"seq": seq}).encode(), timeout=timeout_s
        )
    except TimeoutError:
        raise StreamReadError(f"stream {stream} did not answer in time") from None
    headers = reply.headers or {}
    status = headers.get("Status")
    if status == "404":
        return None
    if status is not None:
        raise StreamReadError(f"stream {stream}: {status} {headers.get('Description')}")
    return StoredMessage(
        seq=int(headers["Nats-Sequence"]),
        subject=headers.get("Nats-Subject", ""),
        data=reply.data,
        time=headers.get("Nats-Time-Stamp", ""),
    )

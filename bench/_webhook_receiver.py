"""The webhook receiver of ``bench/webhooks.py``: a bare ASGI app on granian (one worker).

``POST /hook`` records the event id and its latency (arrival - event ``ts``) and answers
204, or 503 for a configured share of calls; ``POST /config`` sets ``fail_ratio`` and
clears the records; ``GET /stats`` returns the counts, ``GET /dump`` the records too."""

from __future__ import annotations

import random
import time
from typing import Any

import msgspec


class _Head(msgspec.Struct):
    id: str
    ts: float


class _Config(msgspec.Struct):
    fail_ratio: float = 0.0


_head = msgspec.json.Decoder(_Head)
_config = msgspec.json.Decoder(_Config)
_state: dict[str, Any] = {}
_random = random.Random(7)


def _reset(fail_ratio: float) -> None:
    _state.update(
        fail_ratio=fail_ratio, ids=set(), latencies=[], calls=0, failed=0, first=None, last=None
    )


_reset(0.0)


async def _body(receive: Any) -> bytes:
    chunks = []
    more = True
    while more:
        message = await receive()
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    return b"".join(chunks)


async def _answer(send: Any, status: int, body: bytes = b"") -> None:
    headers = [(b"content-length", str(len(body)).encode())]
    if body:
        headers.append((b"content-type", b"application/json"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    body = await _body(receive)
    path = scope["path"]
    if path == "/hook":
        _state["calls"] += 1
        if _state["fail_ratio"] and _random.random() < _state["fail_ratio"]:
            _state["failed"] += 1
            await _answer(send, 503)
            return
        now = time.time()
        head = _head.decode(body)
        _state["ids"].add(head.id)
        _state["latencies"].append(now - head.ts)
        _state["first"] = _state["first"] or now
        _state["last"] = now
        await _answer(send, 204)
    elif path == "/config":
        _reset(_config.decode(body).fail_ratio)
        await _answer(send, 204)
    elif path in ("/stats", "/dump"):
        stats = {
            "received": len(_state["latencies"]),
            "unique": len(_state["ids"]),
            "calls": _state["calls"],
            "failed": _state["failed"],
            "first": _state["first"],
            "last": _state["last"],
        }
        if path == "/dump":  # once, at the end: polling it would load the machine
            stats.update(ids=sorted(_state["ids"]), latencies=_state["latencies"])
        await _answer(send, 200, msgspec.json.encode(stats))
    else:
        await _answer(send, 404)

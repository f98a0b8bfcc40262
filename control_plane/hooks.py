"""ASGI ``before_send`` hook of the app: rate-limit headers, request counts and durations
(from the start time :class:`control_plane.security.SecurityHeadersMiddleware`, the
outermost middleware, puts in the scope)."""

from __future__ import annotations

import time
from typing import Any

from litestar.types import Message, Scope

from control_plane.metrics import REQUEST_SECONDS, REQUESTS
from control_plane.ratelimit import add_rate_headers
from control_plane.security import STARTED

_STATUS_CLASS = {1: "1xx", 2: "2xx", 3: "3xx", 4: "4xx", 5: "5xx"}
_children: dict[tuple[str, int], Any] = {}  # (route, status) -> counter child: no label lookup
_timers: dict[str, Any] = {}  # route -> histogram child


async def before_send(message: Message, scope: Scope) -> None:
    if message["type"] != "http.response.start":
        return
    await add_rate_headers(message, scope)
    route = scope.get("path_template") or "unmatched"
    key = (route, message["status"])
    child = _children.get(key)
    if child is None:
        status = _STATUS_CLASS.get(message["status"] // 100, "other")
        child = _children[key] = REQUESTS.labels(route, status)
    child.inc()
    started: float | None = scope.get(STARTED)  # type: ignore[assignment]
    if started is not None:
        timer = _timers.get(route)
        if timer is None:
            timer = _timers[route] = REQUEST_SECONDS.labels(route)
        timer.observe(time.perf_counter() - started)

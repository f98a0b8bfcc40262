"""``Allow`` on automatic OPTIONS answers lists every method of the path.

Litestar builds a path's OPTIONS handler when the first handler of the path registers;
when a controller registers a second method on the same path the route is rebuilt, but
the OPTIONS handler keeps answering with the first route's methods (``Allow: GET,
OPTIONS`` for a path that also takes PATCH). This ``before_send`` hook rewrites the header
from the application's routes.
"""

from __future__ import annotations

import re
from typing import Any

from litestar.types import Message, Scope

_methods: dict[int, dict[str, bytes]] = {}
_TYPED_PARAM = re.compile(r"\{(\w+):[\w.]+\}")


def _allow_of(app: Any) -> dict[str, bytes]:
    table = _methods.get(id(app))
    if table is None:
        table = {}
        for route in app.routes:
            methods = getattr(route, "methods", None)
            if methods:
                allow = ", ".join(sorted({*methods, "OPTIONS"})).encode()
                # the scope's template names parameters without their types
                for path in (route.path, _TYPED_PARAM.sub(r"{\1}", route.path)):
                    table[path] = allow
        _methods[id(app)] = table
    return table


async def fix_allow_header(message: Message, scope: Scope) -> None:
    if message["type"] != "http.response.start" or scope.get("method") != "OPTIONS":
        return
    template = scope.get("path_template")
    app = scope.get("app")
    if not template or app is None:
        return
    allow = _allow_of(app).get(template)
    if allow is None:
        return
    headers = [(k, v) for k, v in message.get("headers", ()) if k.lower() != b"allow"]
    headers.append((b"allow", allow))
    message["headers"] = headers

"""415 for request bodies that are not JSON, on every endpoint that reads a JSON body.

Litestar decodes a handler's ``data`` as JSON whatever ``Content-Type`` says, so a
``text/plain`` send used to be accepted. This app-wide ``before_request`` hook runs
before the body is read: on handlers that take a body (a ``data`` parameter), a
``Content-Type`` other than ``application/json`` or ``application/*+json`` (parameters
such as ``charset`` aside) is answered ``415 unsupported_media_type``. A request without
``Content-Type`` is read as JSON (the one type these endpoints take).
"""

from __future__ import annotations

from typing import Any

from litestar import Request

from control_plane.problems import ProblemError

_TAKES_BODY: dict[int, bool] = {}  # id(route handler) -> has a data parameter


def is_json(content_type: str) -> bool:
    media_type = content_type.split(";", 1)[0].strip().lower()
    return media_type == "application/json" or (
        media_type.startswith("application/") and media_type.endswith("+json")
    )


async def require_json_body(request: Request[Any, Any, Any]) -> None:
    handler = request.scope["route_handler"]
    takes_body = _TAKES_BODY.get(id(handler))
    if takes_body is None:
        takes_body = "data" in handler.parsed_fn_signature.parameters
        _TAKES_BODY[id(handler)] = takes_body
    if not takes_body:
        return
    content_type = request.headers.get("content-type")
    if content_type is None or is_json(content_type):
        return
    raise ProblemError(
        415,
        "unsupported_media_type",
        f"this endpoint takes a JSON body (Content-Type: application/json), not {content_type!r}",
    )

"""Listing a tenant's sessions (``GET /v1/sessions``, the console, the Evolution facade):
from memory — the session index and the live states agents write — never asking an
agent; pages by a cursor that carries the last name seen (issue 17)."""

from __future__ import annotations

import base64
import bisect

from contract.protocol import (
    SessionInfo,
    SessionRecord,
    SessionState,
)
from control_plane.auth import Principal
from control_plane.models import (
    SessionList,
    SessionView,
)
from control_plane.problems import ProblemError
from control_plane.services import Services
from control_plane.sessions import live_assignment, view


def _cursor(name: str) -> str:
    return base64.urlsafe_b64encode(name.encode()).decode().rstrip("=")


def _after(cursor: str) -> str:
    """The session name a cursor carries; 400 when it is not one of ours."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        return base64.b64decode(padded, altchars=b"-_", validate=True).decode()
    except (ValueError, UnicodeDecodeError):
        raise ProblemError(
            400, "invalid_cursor", "cursor is not a next_cursor of this API"
        ) from None


def listed_info(services: Services, record: SessionRecord) -> SessionInfo | None:
    """The session's last known live state (control_plane/live_state.py) if it belongs to
    the run its record names and that node is alive; asks no agent."""
    assignment = live_assignment(record)
    if assignment is None:
        return None
    info = services.live.get(record.spec.key)
    if info is None or info.epoch != assignment.epoch or info.node_id != assignment.node_id:
        return None
    if not services.fleet.view.alive(assignment.node_id):
        return None
    return info


async def list_sessions(
    services: Services,
    principal: Principal,
    limit: int,
    offset: int,
    only_state: SessionState | None,
    cursor: str | None = None,
    node: str | None = None,
) -> SessionList:
    """The caller's sessions by name, with their last known live state, from memory: the
    session index (control_plane/session_index.py) and the live states agents write on
    every change (control_plane/live_state.py). No agent is asked. A page costs
    O(limit) (plus the entries a filter skips); ``cursor`` (a ``next_cursor``) carries
    the last name seen, so a walk sees every session that exists throughout exactly
    once, whatever is created or deleted meanwhile. ``offset`` still works (after the
    cursor, if both). ``total`` counts the matching sessions (a filter counts them in
    memory)."""
    tenant = principal.tenant
    index = services.index
    names = index.names(tenant)
    filtered = only_state is not None or node is not None
    start = bisect.bisect_right(names, _after(cursor)) if cursor is not None else 0
    skip = offset
    if not filtered:
        start, skip = start + offset, 0

    def matching(name: str) -> tuple[SessionRecord, SessionInfo | None] | None:
        record = index.find(tenant, name)
        if record is None:
            return None
        if node is not None and (record.assignment is None or record.assignment.node_id != node):
            return None
        info = listed_info(services, record)
        if only_state is not None and (info.state if info else SessionState.STOPPED) != only_state:
            return None
        return record, info

    views: list[SessionView] = []
    at = start
    while at < len(names) and len(views) < limit:
        found = matching(names[at])
        at += 1
        if found is None:
            continue
        if skip:
            skip -= 1
            continue
        views.append(view(*found))
    more = at < len(names) and len(views) == limit
    total = sum(1 for name in names if matching(name) is not None) if filtered else len(names)
    return SessionList(
        sessions=views, total=total, next_cursor=_cursor(names[at - 1]) if more else None
    )

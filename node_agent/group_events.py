"""The typed ``data`` of the group events (issue 16): ``group.joined``, ``group.left``,
``group.participants``, ``group.updated`` — what the session supervisor emits for an
engine's :class:`~node_agent.engines._base.GroupEvent` (docs/events.md).

Kept in a module of their own so that they join the other event types' data structs
(``node_agent/event_data.py`` where that exists: one line per type in its ``DATA_OF``)
without touching them; :func:`check` holds a group event to them.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec
from msgspec import UNSET, UnsetType

from node_agent.protocol import EventType, GroupInfo

_CONFIG: dict[str, Any] = {"kw_only": True, "forbid_unknown_fields": True}


class GroupJoinedData(msgspec.Struct, **_CONFIG):
    """This account is in a group now: it created it, was added, joined by link or had
    its join request approved (``reason``: created, added, invite, approved; on neonize
    WhatsApp's own reason)."""

    group_id: str
    by: str | None  # who did it: a phone, or a LID when the phone is hidden
    reason: str | None
    group: GroupInfo | None


class GroupLeftData(msgspec.Struct, **_CONFIG):
    """This account is no longer in a group (``reason``: left, removed, deleted)."""

    group_id: str
    by: str | None
    reason: str | None


class GroupParticipantsData(msgspec.Struct, **_CONFIG):
    """Participants changed: ``request`` and ``reject`` (join requests) reach admins only."""

    group_id: str
    by: str | None
    action: Literal["add", "remove", "promote", "demote", "join", "leave", "request", "reject"]
    participants: list[str]


class GroupChanges(msgspec.Struct, **_CONFIG):
    """What changed, by name; a field is present only when it changed
    (``description`` None: removed)."""

    subject: str | UnsetType = UNSET
    description: str | UnsetType | None = UNSET
    announce: bool | UnsetType = UNSET
    locked: bool | UnsetType = UNSET
    ephemeral_s: int | UnsetType = UNSET
    approval: bool | UnsetType = UNSET
    picture: Literal["set", "removed"] | UnsetType = UNSET
    invite_link: Literal["revoked"] | UnsetType = UNSET


class GroupUpdatedData(msgspec.Struct, **_CONFIG):
    group_id: str
    by: str | None
    changes: GroupChanges


GROUP_DATA_OF: dict[EventType, type[msgspec.Struct]] = {
    EventType.GROUP_JOINED: GroupJoinedData,
    EventType.GROUP_LEFT: GroupLeftData,
    EventType.GROUP_PARTICIPANTS: GroupParticipantsData,
    EventType.GROUP_UPDATED: GroupUpdatedData,
}


def check(event_type: str, data: dict[str, Any]) -> str | None:
    """Why ``data`` is not a valid payload of the group event ``event_type`` (None when
    it is)."""
    try:
        kind = GROUP_DATA_OF[EventType(event_type)]
    except (ValueError, KeyError):
        return f"not a group event type: {event_type!r}"
    try:
        msgspec.convert(data, kind, strict=True)
    except msgspec.ValidationError as exc:
        return f"{event_type}: {exc}"
    return None


__all__ = ["GROUP_DATA_OF", "check"]

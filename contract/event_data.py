"""The typed ``data`` of every event type: the contract receivers code against.

Events are built where they happen (the session supervisor, the conversation ledger, the
fleet, the reconciler) as plain mappings, which is what travels in ``ZF_EVENTS``. These
structs say what each mapping holds: the OpenAPI document publishes them in its
``webhooks`` section (one entry per event type, ``control_plane/openapi_doc.py``), and the
test suite holds every event it sees to them (``tests/agent_support.EventLog`` decodes each
one strictly: an unknown field, a missing one or a wrong type fails the test that saw it),
as well as every example in docs/events.md (``tests/test_event_schemas.py``).

A new event type, or a new field, is added here first; a field is optional (has a
default) exactly when some events of the type leave it out.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from contract.protocol import EventType, GroupInfo, SessionState

_CONFIG: dict[str, Any] = {"kw_only": True, "forbid_unknown_fields": True}


class SessionStatusData(msgspec.Struct, **_CONFIG):
    """A transition of the session state machine."""

    state: SessionState
    previous: SessionState | None
    reason: str | None
    epoch: int
    attempt: int  # consecutive failed connection attempts (0 once connected)
    retry_in_s: float | None = None  # RECONNECTING and FAILED: seconds to the next try


class SessionQrData(msgspec.Struct, **_CONFIG):
    qr: str
    expires_at: float


class SessionPairedData(msgspec.Struct, **_CONFIG):
    phone: str


class SessionLoggedOutData(msgspec.Struct, **_CONFIG):
    reason: str


class ReceivedMedia(msgspec.Struct, **_CONFIG):
    """The file of a received media message (docs/api.md, "Inbound media")."""

    mimetype: str
    size: int
    filename: str | None = None
    sha256: str | None = None
    seconds: float | None = None
    id: str | None = None  # store mode, stored
    stored: bool | None = None  # store mode
    error: str | None = None  # store mode, not stored
    inline: bool | None = None  # webhook deliveries add base64
    url: str | None = None  # webhook deliveries of stored files
    url_expires_at: float | None = None
    base64: str | None = None  # webhook deliveries of inline files


class _FromSomeone(msgspec.Struct, **_CONFIG):
    """Who: a phone (E.164 digits, never a LID) when known, the LID separately; the chat
    to answer in."""

    from_: str | None = msgspec.field(name="from")
    from_lid: str | None
    chat: str
    is_group: bool


class MessageReceivedData(_FromSomeone, **_CONFIG):
    message_id: str
    type: str  # text, image, document, audio, video, sticker, location, contact, poll, ...
    text: str | None
    content: dict[str, Any] | None
    timestamp: float
    resolves: bool = False  # the content of a message first reported undecryptable
    media: ReceivedMedia | None = None


class _AboutAMessage(_FromSomeone, **_CONFIG):
    """An edit, revoke, reaction or vote concerning ``message_id`` (our ``m_`` id when
    ``from_me``); ``event_message_id`` is the id of the edit/revoke/reaction itself."""

    message_id: str
    engine_message_id: str
    from_me: bool
    event_message_id: str
    timestamp: float


class MessageEditedData(_AboutAMessage, **_CONFIG):
    text: str | None


class MessageRevokedData(_AboutAMessage, **_CONFIG):
    pass


class MessageReactionData(_AboutAMessage, **_CONFIG):
    emoji: str
    removed: bool


class MessagePollVoteData(_AboutAMessage, **_CONFIG):
    poll: str | None
    options: list[str]


class ChatPresenceData(_FromSomeone, **_CONFIG):
    state: Literal["typing", "recording", "paused"]


class MessageQueuedData(msgspec.Struct, **_CONFIG):
    message_id: str
    to: str
    type: str


class MessageSentData(msgspec.Struct, **_CONFIG):
    message_id: str
    engine_message_id: str
    to: str
    type: str
    queued_ms: float


class MessageAckData(msgspec.Struct, **_CONFIG):
    message_id: str
    status: Literal["server", "delivered", "read", "failed"]
    peer: str
    engine_message_id: str | None = None  # all but failed
    code: str | None = None  # failed
    error: str | None = None  # failed


class SessionMovedData(msgspec.Struct, **_CONFIG):
    from_node: str
    to_node: str
    node_id: str
    epoch: int
    reason: str


class NodeDownData(msgspec.Struct, **_CONFIG):
    node_id: str
    silent_s: float
    left: bool
    sessions: int


class NodeUpData(msgspec.Struct, **_CONFIG):
    node_id: str


class _Call(msgspec.Struct, **_CONFIG):
    """A call: the caller's phone (never a LID) and LID, either null when unknown."""

    call_id: str
    from_: str | None = msgspec.field(name="from")
    from_lid: str | None
    video: bool
    is_group: bool


class CallReceivedData(_Call, **_CONFIG):
    group: str | None  # a group call's chat id, when WhatsApp names it
    timestamp: float
    auto_reject: bool  # the session's call settings decline it; call.rejected follows


class CallRejectedData(_Call, **_CONFIG):
    reply_message_id: str | None  # the text answer queued to the caller
    error: str | None


class ContactBlockedData(msgspec.Struct, **_CONFIG):
    phone: str | None
    lid: str | None
    blocked: bool


class _Group(msgspec.Struct, **_CONFIG):
    """A group this account is (or was) in; ``by`` who did it (a phone, or a LID when the
    phone is unknown), null when unknown."""

    group_id: str
    by: str | None


class GroupJoinedData(_Group, **_CONFIG):
    reason: str | None
    group: GroupInfo | None


class GroupLeftData(_Group, **_CONFIG):
    reason: str | None


class GroupParticipantsData(_Group, **_CONFIG):
    action: str | None  # add, remove, promote, demote, join (by link), leave
    participants: list[str]


class GroupUpdatedData(_Group, **_CONFIG):
    changes: dict[str, Any]  # what changed, by name (subject, description, picture, ...)


DATA_OF: dict[EventType, type[msgspec.Struct]] = {
    EventType.SESSION_STATUS: SessionStatusData,
    EventType.SESSION_QR: SessionQrData,
    EventType.SESSION_PAIRED: SessionPairedData,
    EventType.SESSION_LOGGED_OUT: SessionLoggedOutData,
    EventType.MESSAGE_RECEIVED: MessageReceivedData,
    EventType.MESSAGE_QUEUED: MessageQueuedData,
    EventType.MESSAGE_SENT: MessageSentData,
    EventType.MESSAGE_ACK: MessageAckData,
    EventType.MESSAGE_EDITED: MessageEditedData,
    EventType.MESSAGE_REVOKED: MessageRevokedData,
    EventType.MESSAGE_REACTION: MessageReactionData,
    EventType.MESSAGE_POLL_VOTE: MessagePollVoteData,
    EventType.CHAT_PRESENCE: ChatPresenceData,
    EventType.NODE_UP: NodeUpData,
    EventType.NODE_DOWN: NodeDownData,
    EventType.SESSION_MOVED: SessionMovedData,
    EventType.CALL_RECEIVED: CallReceivedData,
    EventType.CALL_REJECTED: CallRejectedData,
    EventType.CONTACT_BLOCKED: ContactBlockedData,
    EventType.GROUP_JOINED: GroupJoinedData,
    EventType.GROUP_LEFT: GroupLeftData,
    EventType.GROUP_PARTICIPANTS: GroupParticipantsData,
    EventType.GROUP_UPDATED: GroupUpdatedData,
}


def check(event_type: str, data: dict[str, Any]) -> str | None:
    """Why ``data`` is not a valid payload of ``event_type`` (None when it is)."""
    try:
        kind = DATA_OF[EventType(event_type)]
    except (ValueError, KeyError):
        return f"unknown event type {event_type!r}"
    try:
        msgspec.convert(data, kind, strict=True)
    except msgspec.ValidationError as exc:
        return f"{event_type}: {exc}"
    return None


__all__ = ["DATA_OF", "check"]

"""The wire contract between the control plane and node agents.

Everything that crosses NATS between the two is one of these msgspec Structs, encoded as
JSON. The agent owns this module; the control plane imports it. Names of subjects, KV
buckets and streams are part of the public API (DESIGN §2) and live here too.

Every RPC reply is ``Ok[T]`` or ``Err``; they are tagged (``"kind"``) so a client decodes a
reply with ``msgspec.json.decode(data, type=Ok[T] | Err)`` in one pass.
"""

from __future__ import annotations

import enum
import secrets
from typing import Any, Generic, Literal, TypeVar

import msgspec

T = TypeVar("T")

# -- names (public API) ------------------------------------------------------------------

SERVICE_NAME = "zapfleet-agent"
NODES_BUCKET = "zf_nodes"
SESSIONS_BUCKET = "zf_sessions"
TENANTS_BUCKET = "zf_tenants"
EVENTS_STREAM = "ZF_EVENTS"
EVENTS_SUBJECTS = "zf.events.>"
DLQ_STREAM = "ZF_DLQ"
DLQ_SUBJECTS = "zf.dlq.>"
WEBHOOKS_BUCKET = "zf_webhooks"
REDRIVE_STREAM = "ZF_WEBHOOK_REDRIVE"
REDRIVE_SUBJECTS = "zf.webhooks.redrive.>"
PLACEMENT_BUCKET = "zf_placement"
LEASES_BUCKET = "zf_leases"
DEVICE_STORE_BUCKET = "zf_device_store"
SESSION_NAMES_BUCKET = "zf_session_names"  # "<tenant>.<session_id>" -> internal key
# last known live state of each session (SessionInfo JSON by internal key), written by the
# agent that runs it on every state change: lists are served from it (docs/api.md)
SESSION_STATE_BUCKET = "zf_session_state"
MEDIA_BUCKET = "zf_media"  # inbound media: object "<session key>/<media id>"
SYSTEM_TENANT = "_system"  # tenant segment of node events: zf.events._system.<node_id>.node.*


def agent_subject(node_id: str, op: str) -> str:
    """Subject of one RPC operation on one node agent: ``zf.agent.<node_id>.<op>``."""
    return f"zf.agent.{node_id}.{op}"


def heartbeat_subject(node_id: str) -> str:
    return f"zf.nodes.{node_id}.heartbeat"


def event_subject(tenant: str, session_id: str, event_type: str) -> str:
    return f"zf.events.{tenant}.{session_id}.{event_type}"


def dlq_subject(tenant: str, session_id: str) -> str:
    """Dead letters of one session's webhook deliveries, in stream ``ZF_DLQ``."""
    return f"zf.dlq.{tenant}.{session_id}"


def redrive_subject(tenant: str) -> str:
    """Dead letters sent back to the dispatcher, in stream ``ZF_WEBHOOK_REDRIVE``."""
    return f"zf.webhooks.redrive.{tenant}"


def name_key(tenant: str, session_id: str) -> str:
    """Key of a session's name in KV ``zf_session_names``: unique per tenant."""
    return f"{tenant}.{session_id}"


def name_value(key: str, claimed_at: float) -> bytes:
    """Value of a ``zf_session_names`` entry: the internal key and when it was claimed."""
    return f"{key} {claimed_at:.3f}".encode()


def name_target(value: bytes | None) -> tuple[str, float]:
    """(internal key, claimed at) of a ``zf_session_names`` value ("" when empty)."""
    key, _, at = (value or b"").decode().partition(" ")
    try:
        return key, float(at or 0)
    except ValueError:
        return key, 0.0


def media_object(key: str, media_id: str) -> str:
    """Name of one inbound file in Object Store ``zf_media``: the session's internal key,
    so a session's files are found (and deleted) by its key alone."""
    return f"{key}/{media_id}"


def api_subject(tenant: str, op: str) -> str:
    """Commands for NATS-native clients: ``zf.api.<tenant>.<op>`` (request-reply)."""
    return f"zf.api.{tenant}.{op}"


class Op(enum.StrEnum):
    """RPC operations served by every agent under ``zf.agent.<node_id>.<op>``."""

    SESSION_START = "session_start"
    SESSION_STOP = "session_stop"
    SESSION_LOGOUT = "session_logout"
    SESSION_RESTART = "session_restart"
    SESSION_RECONNECT = "session_reconnect"
    SESSION_RESET_BREAKER = "session_reset_breaker"
    SESSION_STATUS = "session_status"
    SESSION_QR = "session_qr"
    SESSION_PAIR_CODE = "session_pair_code"
    SESSION_CONFIGURE = "session_configure"
    SESSION_DESTROY = "session_destroy"
    SESSIONS_LIST = "sessions_list"
    MESSAGE_SEND = "message_send"
    CONTACTS_CHECK = "contacts_check"
    HISTORY_LIST = "history_list"
    CHAT_READ = "chat_read"
    CHAT_PRESENCE = "chat_presence"
    NODE_INFO = "node_info"


# -- reply envelope ----------------------------------------------------------------------


class ErrorCode(enum.StrEnum):
    """Stable error codes of agent replies. The control plane maps each to an HTTP status."""

    INVALID_REQUEST = "invalid_request"
    SESSION_NOT_FOUND = "session_not_found"
    SESSION_EXISTS = "session_exists"
    STALE_EPOCH = "stale_epoch"
    CAPACITY_FULL = "capacity_full"
    MEMORY_PRESSURE = "memory_pressure"
    DRAINING = "draining"
    NOT_CONNECTED = "not_connected"
    NOT_PAIRING = "not_pairing"
    INVALID_NUMBER = "invalid_number"
    INVALID_CHAT_ID = "invalid_chat_id"
    MESSAGE_NOT_FOUND = "message_not_found"  # edit/revoke/reply target unknown to the session
    MESSAGE_NOT_EDITABLE = "message_not_editable"
    EDIT_WINDOW_CLOSED = "edit_window_closed"
    REVOKE_WINDOW_CLOSED = "revoke_window_closed"
    UNSUPPORTED_MESSAGE = "unsupported_message"
    MEDIA_TOO_LARGE = "media_too_large"
    MEDIA_UNAVAILABLE = "media_unavailable"
    QUEUE_FULL = "queue_full"
    DAILY_CAP_REACHED = "daily_cap_reached"
    ENGINE_ERROR = "engine_error"
    INTERNAL = "internal"
    LEASE_EXPIRED = "lease_expired"
    STORAGE_UNAVAILABLE = "storage_unavailable"  # JetStream could not store the message
    UNDECODABLE_MEDIA = "undecodable_media"  # a sticker or voice note that cannot be converted
    MEDIA_NOT_FOUND = "media_not_found"  # inbound media not stored (mode, retention, size)


class Ok(msgspec.Struct, Generic[T], tag="ok", tag_field="kind"):
    value: T


class Err(msgspec.Struct, tag="err", tag_field="kind"):
    code: ErrorCode
    message: str
    retry_after_s: float | None = None


class Empty(msgspec.Struct):
    """A reply that carries nothing but success."""


# -- sessions ----------------------------------------------------------------------------


class SessionState(enum.StrEnum):
    STARTING = "STARTING"
    PAIRING = "PAIRING"
    CONNECTED = "CONNECTED"
    DISCONNECTED = "DISCONNECTED"
    RECONNECTING = "RECONNECTING"
    FAILED = "FAILED"
    LOGGED_OUT = "LOGGED_OUT"
    STOPPED = "STOPPED"


EngineName = Literal["neonize", "sim"]


class PacingSettings(msgspec.Struct, kw_only=True):
    """Outbound pacing of one session (DESIGN §6). ``enabled=False`` only for benchmarks."""

    enabled: bool = True
    rate_per_s: float = 1.0
    burst: int = 5
    min_gap_per_recipient_s: float = 5.0
    jitter: float = 0.3
    daily_cap: int = 1000
    queue_size: int = 500
    # "type before send" (issue 15): show "typing…" in the chat before each text goes,
    # for typing_s_per_char per character, at most typing_max_s
    typing_before_send: bool = False
    typing_s_per_char: float = 0.05
    typing_max_s: float = 5.0


InboundMediaMode = Literal["off", "metadata", "store"]


class MediaSettings(msgspec.Struct, kw_only=True):
    """What a session does with received media (docs/api.md, "Inbound media").

    ``inbound``: ``off`` (events say nothing of the file), ``metadata`` (type, size,
    mimetype, sha256 in ``message.received``), ``store`` (downloaded by the agent into
    Object Store ``zf_media``; the event carries its ``id``).
    ``webhook_inline_max_bytes``: stored files up to this size are also sent inline
    (base64) in webhook deliveries; 0 = never."""

    inbound: InboundMediaMode = "metadata"
    webhook_inline_max_bytes: int = 0


class SessionSpec(msgspec.Struct, kw_only=True):
    """What a session should be; stored by the control plane, run by an agent.

    ``session_id`` is the caller's name for the session, unique per tenant only; events
    and API answers show it. ``uid`` is the immutable internal id minted at create: no
    two sessions ever share it, across tenants and across a delete and a re-create of
    the same name. Everything below the API is keyed by :attr:`key`."""

    session_id: str
    tenant: str
    uid: str | None = None  # None in records written before uids existed
    engine: EngineName = "neonize"
    device_name: str = "zapfleet"
    proxy: str | None = None
    pacing: PacingSettings = msgspec.field(default_factory=PacingSettings)
    media: MediaSettings = msgspec.field(default_factory=MediaSettings)

    @property
    def key(self) -> str:
        """The internal key: KV ``zf_sessions`` key, the ``session_id`` of agent RPCs,
        device stores, sim accounts, outbox and caches. A record without a ``uid``
        (written before uids existed) keeps its name as key, so old stores keep working."""
        return self.uid or self.session_id


def new_uid() -> str:
    """A fresh internal session id (``u`` + 32 hex digits: 128 random bits)."""
    return "u" + secrets.token_hex(16)


class StartSession(msgspec.Struct, kw_only=True):
    spec: SessionSpec
    epoch: int


class SessionRef(msgspec.Struct, kw_only=True):
    session_id: str  # in every agent RPC: the internal key (SessionSpec.key)
    epoch: int | None = None


class ConfigureSession(msgspec.Struct, kw_only=True):
    session_id: str
    pacing: PacingSettings | None = None
    media: MediaSettings | None = None
    device_name: str | None = None
    proxy: str | None = None


class PairCodeRequest(msgspec.Struct, kw_only=True):
    session_id: str
    phone: str


class PairCode(msgspec.Struct, kw_only=True):
    code: str


class QrCode(msgspec.Struct, kw_only=True):
    code: str
    expires_at: float


class SessionInfo(msgspec.Struct, kw_only=True):
    session_id: str  # the caller's name
    tenant: str
    state: SessionState
    node_id: str
    epoch: int
    engine: EngineName
    phone: str | None = None
    reason: str | None = None
    since: float = 0.0
    reconnect_attempts: int = 0
    breaker_open_until: float | None = None
    queue_depth: int = 0
    key: str = ""  # the internal key (SessionSpec.key); "" from agents older than uids

    @property
    def ref(self) -> str:
        return self.key or self.session_id


class DestroySession(msgspec.Struct, kw_only=True):
    """Unlink the session's device and delete every trace of it on the fleet: device
    store (file, Object Store backup, PostgreSQL jid), sim account, outbox, inbound
    media (Object Store ``zf_media``)."""

    spec: SessionSpec


class SessionList(msgspec.Struct, kw_only=True):
    sessions: list[SessionInfo]


# -- messages ----------------------------------------------------------------------------


class Media(msgspec.Struct, kw_only=True):
    """Media by URL or inline base64 (exactly one of the two)."""

    url: str | None = None
    base64: str | None = None
    mimetype: str | None = None
    filename: str | None = None


class TextContent(msgspec.Struct, tag="text", kw_only=True):
    """Text. ``reply_to`` quotes a message of the chat (our ``m_`` id or the id of a
    received message); ``mentions`` are chat ids (phones or LIDs) mentioned in the text;
    ``mention_all`` mentions every participant of a group; ``link_preview`` attaches a
    preview card of the first http(s) URL (node_agent/link_preview.py)."""

    text: str
    reply_to: str | None = None
    mentions: list[str] | None = None
    mention_all: bool = False
    link_preview: bool = False  # the agent attaches a preview of the first URL


class ImageContent(msgspec.Struct, tag="image", kw_only=True):
    media: Media
    caption: str | None = None
    view_once: bool = False  # the receiver can open it once (WhatsApp's "view once")


class DocumentContent(msgspec.Struct, tag="document", kw_only=True):
    media: Media
    caption: str | None = None


class AudioContent(msgspec.Struct, tag="audio", kw_only=True):
    media: Media
    voice_note: bool = False
    view_once: bool = False  # WhatsApp plays a view-once voice note once


class StickerContent(msgspec.Struct, tag="sticker", kw_only=True):
    """A sticker: WebP ≤ 512x512, converted from PNG/JPEG/… by the agent when needed."""

    media: Media


class VideoContent(msgspec.Struct, tag="video", kw_only=True):
    media: Media
    caption: str | None = None
    view_once: bool = False


class LocationContent(msgspec.Struct, tag="location", kw_only=True):
    latitude: float
    longitude: float
    name: str | None = None
    address: str | None = None


class ContactContent(msgspec.Struct, tag="contact", kw_only=True):
    display_name: str
    phone: str


class ReactionContent(msgspec.Struct, tag="reaction", kw_only=True):
    """A reaction to a message; an empty ``emoji`` removes this account's reaction."""

    message_id: str
    emoji: str


# -- conversations (issue 15): edits, revokes, polls go through the same send path --------


class EditContent(msgspec.Struct, tag="edit", kw_only=True):
    """Replace the text of a text message this session sent (WhatsApp's edit window)."""

    message_id: str
    text: str


class RevokeContent(msgspec.Struct, tag="revoke", kw_only=True):
    """Delete a message this session sent, for everyone (WhatsApp's revoke window)."""

    message_id: str


class PollContent(msgspec.Struct, tag="poll", kw_only=True):
    """A poll: 2-12 unique options; ``selectable`` options per vote (1 = single choice,
    0 = any number)."""

    name: str
    options: list[str]
    selectable: int = 1


MessageContent = (
    TextContent
    | ImageContent
    | DocumentContent
    | AudioContent
    | VideoContent
    | LocationContent
    | ContactContent
    | ReactionContent
    | EditContent
    | RevokeContent
    | PollContent
    | StickerContent
)


class SendMessage(msgspec.Struct, kw_only=True):
    """Queue one outbound message. ``message_id`` is assigned by the caller and is the
    dedupe key: sending the same id twice queues it once."""

    session_id: str
    message_id: str
    to: str
    content: MessageContent


class SendAccepted(msgspec.Struct, kw_only=True):
    message_id: str
    status: Literal["queued"] = "queued"
    queue_depth: int = 0


class CheckNumbers(msgspec.Struct, kw_only=True):
    session_id: str
    numbers: list[str]


class NumberStatus(msgspec.Struct, kw_only=True):
    number: str
    on_whatsapp: bool
    jid: str | None = None


class NumberStatuses(msgspec.Struct, kw_only=True):
    results: list[NumberStatus]


# -- chats: read marks and presence (issue 15) --------------------------------------------

ChatPresenceState = Literal["typing", "recording", "paused"]


class ChatRead(msgspec.Struct, kw_only=True):
    """Mark messages of a chat read (blue ticks for their senders). No ids: every message
    received in the chat that this session has not marked read yet."""

    session_id: str
    chat: str
    message_ids: list[str] = msgspec.field(default_factory=list)


class ChatReadDone(msgspec.Struct, kw_only=True):
    chat: str
    marked: list[str]


class ChatPresence(msgspec.Struct, kw_only=True):
    """Show "typing…" / "recording audio…" in a chat, or stop (``paused``)."""

    session_id: str
    chat: str
    state: ChatPresenceState


class HistoryRequest(msgspec.Struct, kw_only=True):
    session_id: str
    limit: int = 50
    chat: str | None = None  # only this chat (a phone, E.164 digits, or a chat id)
    before: str | None = None  # cursor: the last message_id of the previous page


class MessageRecord(msgspec.Struct, kw_only=True):
    message_id: str
    direction: Literal["in", "out"]
    peer: str
    type: str
    timestamp: float
    status: str
    text: str | None = None
    media: dict[str, Any] | None = None  # received media: as in message.received
    engine_message_id: str | None = None  # WhatsApp's id, once sent
    error: str | None = None  # why it failed


class History(msgspec.Struct, kw_only=True):
    messages: list[MessageRecord]
    next_before: str | None = None  # cursor of the next (older) page; None: no more


# -- nodes -------------------------------------------------------------------------------


class NodeInfo(msgspec.Struct, kw_only=True):
    """Heartbeat body and ``node_info`` reply: what placement needs to know of a node."""

    node_id: str
    version: str
    engine: EngineName
    capacity: int
    sessions: int
    by_state: dict[str, int]
    rss_bytes: int
    memory_limit_bytes: int
    open_fds: int
    loop_lag_ms: float
    draining: bool
    labels: dict[str, str] = msgspec.field(default_factory=dict)
    started_at: float = 0.0
    ts: float = 0.0
    lease_ttl_s: float = 0.0  # the node's own lease; the reconciler waits this + its margin
    loop_lag_max_ms: float = 0.0


# -- events ------------------------------------------------------------------------------


class EventType(enum.StrEnum):
    SESSION_STATUS = "session.status"
    SESSION_QR = "session.qr"
    SESSION_PAIRED = "session.paired"
    SESSION_LOGGED_OUT = "session.logged_out"
    MESSAGE_RECEIVED = "message.received"
    MESSAGE_QUEUED = "message.queued"
    MESSAGE_SENT = "message.sent"
    MESSAGE_ACK = "message.ack"
    MESSAGE_EDITED = "message.edited"
    MESSAGE_REVOKED = "message.revoked"
    MESSAGE_REACTION = "message.reaction"
    MESSAGE_POLL_VOTE = "message.poll_vote"
    CHAT_PRESENCE = "chat.presence"
    NODE_UP = "node.up"
    NODE_DOWN = "node.down"
    SESSION_MOVED = "session.moved"


class Event(msgspec.Struct, kw_only=True):
    """One event in stream ``ZF_EVENTS``; ``id`` is also its ``Nats-Msg-Id``."""

    id: str
    type: EventType
    tenant: str
    session_id: str
    ts: float
    data: dict[str, Any] = msgspec.field(default_factory=dict)
    node_id: str | None = None


# -- codec helpers -----------------------------------------------------------------------

_encoder = msgspec.json.Encoder()


def encode(value: object) -> bytes:
    return _encoder.encode(value)


def ok(value: object) -> bytes:
    return _encoder.encode(Ok(value))


def err(code: ErrorCode, message: str, retry_after_s: float | None = None) -> bytes:
    return _encoder.encode(Err(code=code, message=message, retry_after_s=retry_after_s))


# -- desired state (KV ``zf_sessions``) --------------------------------------------------


class Assignment(msgspec.Struct, kw_only=True):
    """Where a session runs. ``epoch`` is the fencing token: an agent runs the session only
    while the KV record carries its node id with the epoch it was started with."""

    node_id: str
    epoch: int


class SessionRecord(msgspec.Struct, kw_only=True):
    spec: SessionSpec
    desired: Literal["running", "stopped"] = "running"
    assignment: Assignment | None = None
    webhook_url: str | None = None
    webhook_events: list[str] | None = None
    webhook_secret: str | None = None
    node_labels: dict[str, str] | None = None  # placement constraint, e.g. {"region": "eu"}
    # signature scheme of the session's webhook; None: a record from before signature
    # schemes, which keeps the old one (control_plane/webhooks/signing.py)
    webhook_scheme: str | None = None
    created_at: float = 0.0
    updated_at: float = 0.0
    # why it was stopped (stop, logout): shown while it runs nowhere (desired "stopped")
    stopped_reason: str | None = None


# -- JetStream layout ---------------------------------------------------------------------


async def ensure_jetstream(
    js: Any,
    *,
    events_max_age_s: float,
    node_ttl_s: float,
    events_max_bytes: int = -1,
    events_dedupe_window_s: float = 120.0,
    replicas: int = 1,
) -> None:
    """Create the streams and buckets of DESIGN §2 if missing, or bring their settings up
    to date. Idempotent; both processes call it at start so either may come up first.
    ``replicas``: ``ZAPFLEET_NATS_REPLICAS`` (zapfleet/natsjs.py: raised, never lowered).

    ``ZF_EVENTS`` keeps events by age and by size (oldest dropped first) and deduplicates
    on ``Nats-Msg-Id`` within the window; direct gets serve the paged replay of
    ``GET /v1/events`` without creating consumers."""
    from nats.js.api import KeyValueConfig, RetentionPolicy, StorageType, StreamConfig

    from zapfleet.natsjs import ensure_stream, key_value

    streams = (
        StreamConfig(
            name=EVENTS_STREAM,
            subjects=[EVENTS_SUBJECTS],
            max_age=events_max_age_s,
            max_bytes=events_max_bytes,
            duplicate_window=events_dedupe_window_s,
            storage=StorageType.FILE,
            allow_direct=True,
        ),
        StreamConfig(
            name=DLQ_STREAM,
            subjects=[DLQ_SUBJECTS],
            max_age=30 * 86400.0,
            duplicate_window=120.0,
            storage=StorageType.FILE,
            allow_direct=True,
        ),
        StreamConfig(
            name=REDRIVE_STREAM,
            subjects=[REDRIVE_SUBJECTS],
            retention=RetentionPolicy.WORK_QUEUE,
            max_age=30 * 86400.0,
            duplicate_window=120.0,
            storage=StorageType.FILE,
        ),
    )
    for config in streams:
        await ensure_stream(js, config, replicas)
    buckets = (
        KeyValueConfig(bucket=NODES_BUCKET, ttl=node_ttl_s, history=1),
        KeyValueConfig(bucket=SESSIONS_BUCKET, history=5),
        KeyValueConfig(bucket=TENANTS_BUCKET, history=5),
        KeyValueConfig(bucket=WEBHOOKS_BUCKET, history=5),
        KeyValueConfig(bucket=SESSION_NAMES_BUCKET, history=1),
        KeyValueConfig(bucket=SESSION_STATE_BUCKET, history=1),
    )
    for bucket in buckets:
        # one that exists with another config (e.g. agents and control plane configured
        # with different TTLs) is used as it is rather than fail at start
        await key_value(js, bucket, replicas)

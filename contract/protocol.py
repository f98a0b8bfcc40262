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
    # -- contacts, profile, calls (issue 16) --
    CONTACTS_LIST = "contacts_list"
    CONTACT_INFO = "contact_info"
    CONTACT_BLOCK = "contact_block"
    BLOCKLIST_GET = "blocklist_get"
    PROFILE_SET = "profile_set"
    PRIVACY_GET = "privacy_get"
    PRIVACY_SET = "privacy_set"
    # -- groups (issue 16) --
    GROUPS_LIST = "groups_list"
    GROUP_INFO = "group_info"
    GROUP_CREATE = "group_create"
    GROUP_LEAVE = "group_leave"
    GROUP_PARTICIPANTS = "group_participants"
    GROUP_INVITE = "group_invite"
    GROUP_JOIN = "group_join"
    GROUP_LINK_INFO = "group_link_info"
    GROUP_UPDATE = "group_update"
    GROUP_REQUESTS = "group_requests"
    GROUP_REQUESTS_UPDATE = "group_requests_update"
    GROUP_PICTURE = "group_picture"


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
    # -- contacts, profile, calls (issue 16) --
    NOT_ON_WHATSAPP = "not_on_whatsapp"  # a contact lookup of a number nobody uses
    INVALID_IMAGE = "invalid_image"  # a profile picture that is not an image
    INVALID_PRIVACY_VALUE = "invalid_privacy_value"  # a value WhatsApp refuses for a setting
    # -- groups (issue 16) --
    GROUP_NOT_FOUND = "group_not_found"  # no such group, or this account is not in it
    NOT_GROUP_ADMIN = "not_group_admin"  # the change needs admin rights in the group
    INVALID_INVITE_LINK = "invalid_invite_link"  # malformed, unknown or revoked link
    NOT_SUPPORTED = "not_supported"  # the session's engine cannot do this


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
    calls: CallSettings = msgspec.field(default_factory=lambda: CallSettings())  # noqa: PLW0108 (issue 16)

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
    calls: CallSettings | None = None  # issue 16
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


# -- contacts, profile, calls (issue 16) --------------------------------------------------


class CallSettings(msgspec.Struct, kw_only=True):
    """What a session does with incoming calls (docs/api.md, "Calls"). ``reject``: decline
    every call at once; ``reply_text``: then answer the caller with this text (queued like
    any send: pacing, outbox)."""

    reject: bool = False
    reply_text: str | None = None


class ContactRequest(msgspec.Struct, kw_only=True):
    """One contact of a session: ``chat`` is a phone (E.164 digits) or a LID."""

    session_id: str
    chat: str


class Contact(msgspec.Struct, kw_only=True):
    """A contact from the engine's store (the address book the phone synced)."""

    phone: str | None = None  # never a LID
    lid: str | None = None
    name: str | None = None  # the name the phone's owner saved
    push_name: str | None = None  # the name the contact chose
    business_name: str | None = None


class ContactList(msgspec.Struct, kw_only=True):
    contacts: list[Contact]


class ContactDetails(msgspec.Struct, kw_only=True):
    phone: str | None = None
    lid: str | None = None
    name: str | None = None
    push_name: str | None = None
    business: bool = False
    business_name: str | None = None
    about: str | None = None
    picture_id: str | None = None
    picture_url: str | None = None


class BlockRequest(msgspec.Struct, kw_only=True):
    session_id: str
    chat: str  # a phone or a LID
    block: bool = True


class Blocklist(msgspec.Struct, kw_only=True):
    blocked: list[str]  # phones (E.164 digits); a LID where the phone is unknown


class ProfileUpdate(msgspec.Struct, kw_only=True):
    """Change this account's own profile; None leaves a field as it is. ``picture`` is a
    JPEG already normalised (contract/profile.py); ``remove_picture`` removes it."""

    session_id: str
    name: str | None = None
    about: str | None = None
    picture: bytes | None = None
    remove_picture: bool = False


class ProfileUpdated(msgspec.Struct, kw_only=True):
    name: str | None = None
    about: str | None = None
    picture_id: str | None = None  # the new picture's id; None when removed or unchanged
    picture_removed: bool = False


PrivacyName = Literal["read_receipts", "last_seen", "online", "picture", "about", "groups_add"]
PrivacyValue = Literal["all", "contacts", "contact_blacklist", "none", "match_last_seen"]
# what WhatsApp accepts for each setting (docs/api.md, "Privacy")
PRIVACY_VALUES: dict[str, frozenset[str]] = {
    "read_receipts": frozenset({"all", "none"}),
    "last_seen": frozenset({"all", "contacts", "contact_blacklist", "none"}),
    "online": frozenset({"all", "match_last_seen"}),
    "picture": frozenset({"all", "contacts", "contact_blacklist", "none"}),
    "about": frozenset({"all", "contacts", "contact_blacklist", "none"}),
    "groups_add": frozenset({"all", "contacts", "contact_blacklist"}),
}


class Privacy(msgspec.Struct, kw_only=True):
    read_receipts: str | None = None
    last_seen: str | None = None
    online: str | None = None
    picture: str | None = None
    about: str | None = None
    groups_add: str | None = None


class PrivacyChange(msgspec.Struct, kw_only=True):
    session_id: str
    settings: dict[str, str]  # PrivacyName -> PrivacyValue


# -- groups (issue 16) --------------------------------------------------------------------

GroupRole = Literal["superadmin", "admin", "member"]
GroupAction = Literal["add", "remove", "promote", "demote"]
# what became of one participant of a participants change (docs/api.md, "Groups")
ParticipantStatus = Literal[
    "added",
    "removed",
    "promoted",
    "demoted",
    "not_on_whatsapp",
    "privacy_forbids",
    "invite_sent",
    "not_a_participant",
    "already_participant",
    "recently_left",
    "approved",
    "rejected",
    "not_requested",
    "failed",
]


class GroupMember(msgspec.Struct, kw_only=True):
    """A participant: ``id`` as the group addresses it (a phone, or a LID in a
    LID-addressed group), its ``phone`` when known (never a LID) and its ``lid``."""

    id: str
    role: GroupRole = "member"
    phone: str | None = None
    lid: str | None = None


class GroupSettings(msgspec.Struct, kw_only=True):
    """``announce``: only admins send; ``locked``: only admins edit the group info;
    ``ephemeral_s``: disappearing messages timer (0 = off); ``approval``: joining by link
    needs an admin's approval (join requests)."""

    announce: bool = False
    locked: bool = False
    ephemeral_s: int = 0
    approval: bool = False


class GroupInfo(msgspec.Struct, kw_only=True):
    """A group as this account sees it. ``invite_link`` only when this account is an
    admin and the engine knows it (``group_invite`` fetches it)."""

    id: str  # <digits>@g.us
    subject: str
    description: str | None = None
    owner: str | None = None  # the creator's phone (or LID when the phone is hidden)
    created_at: float | None = None
    participants: list[GroupMember] = msgspec.field(default_factory=list)
    settings: GroupSettings = msgspec.field(default_factory=GroupSettings)
    invite_link: str | None = None
    picture_id: str | None = None  # the current picture's id (None: none, or unknown)


class GroupList(msgspec.Struct, kw_only=True):
    groups: list[GroupInfo]


class GroupsListRequest(msgspec.Struct, kw_only=True):
    session_id: str


class GroupRef(msgspec.Struct, kw_only=True):
    session_id: str
    group_id: str


class GroupCreate(msgspec.Struct, kw_only=True):
    session_id: str
    subject: str
    participants: list[str] = msgspec.field(default_factory=list)


class ParticipantResult(msgspec.Struct, kw_only=True, omit_defaults=True):
    participant: str  # the phone (or chat id) as asked
    status: ParticipantStatus
    error: int | None = None  # WhatsApp's code when it refused


class GroupCreated(msgspec.Struct, kw_only=True):
    group: GroupInfo
    results: list[ParticipantResult] = msgspec.field(default_factory=list)


class GroupParticipantsChange(msgspec.Struct, kw_only=True):
    session_id: str
    group_id: str
    action: GroupAction
    participants: list[str]


class ParticipantsChanged(msgspec.Struct, kw_only=True):
    group_id: str
    action: GroupAction | Literal["approve", "reject"]
    results: list[ParticipantResult]


class GroupInviteRequest(msgspec.Struct, kw_only=True):
    session_id: str
    group_id: str
    revoke: bool = False


class GroupInvite(msgspec.Struct, kw_only=True):
    group_id: str
    link: str


class GroupLinkRequest(msgspec.Struct, kw_only=True):
    """Join by an invite link, or read the group behind one (``link_info``)."""

    session_id: str
    link: str


class GroupUpdate(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Settings to change; None: unchanged."""

    session_id: str
    group_id: str
    subject: str | None = None
    description: str | None = None
    announce: bool | None = None
    locked: bool | None = None
    ephemeral_s: int | None = None
    approval: bool | None = None


class GroupPicture(msgspec.Struct, kw_only=True):
    """Set the group's picture (any image; sent as a square JPEG ≤ 640x640), or remove
    it (``media`` None)."""

    session_id: str
    group_id: str
    media: Media | None = None


class GroupPictureSet(msgspec.Struct, kw_only=True):
    group_id: str
    picture_id: str | None


class GroupJoined(msgspec.Struct, kw_only=True):
    """A join by link: ``joined``, or ``requested`` (the group needs an admin's approval;
    ``group`` is then None)."""

    group_id: str
    status: Literal["joined", "requested"]
    group: GroupInfo | None = None


class JoinRequest(msgspec.Struct, kw_only=True):
    participant: str  # a phone, or a LID when the phone is hidden
    phone: str | None = None
    lid: str | None = None
    requested_at: float | None = None


class GroupRequests(msgspec.Struct, kw_only=True):
    group_id: str
    requests: list[JoinRequest]


class GroupRequestsChange(msgspec.Struct, kw_only=True):
    session_id: str
    group_id: str
    action: Literal["approve", "reject"]
    participants: list[str]


INVITE_PREFIX = "https://chat.whatsapp.com/"


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
    # -- contacts, profile, calls (issue 16) --
    CALL_RECEIVED = "call.received"
    CALL_REJECTED = "call.rejected"
    CONTACT_BLOCKED = "contact.blocked"
    NODE_UP = "node.up"
    NODE_DOWN = "node.down"
    SESSION_MOVED = "session.moved"
    # -- groups (issue 16) --
    GROUP_JOINED = "group.joined"
    GROUP_LEFT = "group.left"
    GROUP_PARTICIPANTS = "group.participants"
    GROUP_UPDATED = "group.updated"


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
    # Evolution API v2 compatibility (control_plane/evolution/, docs/evolution-webhooks.md):
    # "evolution" sends the session's webhook in Evolution's envelope, and webhook_events
    # then holds Evolution event names (MESSAGES_UPSERT, ...); None: zapfleet's own format
    webhook_format: Literal["zapfleet", "evolution"] | None = None
    webhook_by_events: bool = False  # evolution: POST to <url>/<event-name> (messages-upsert)
    webhook_base64: bool = False  # evolution: inbound media carry message.base64
    webhook_headers: dict[str, str] | None = None  # evolution: extra request headers
    # evolution: false keeps the config (webhook/find shows it) but the session has no
    # webhook of its own: the tenant's or the global one applies, as Evolution's global one
    webhook_enabled: bool = True

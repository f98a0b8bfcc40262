"""Request and response bodies of the REST API (msgspec Structs, documented in OpenAPI)."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from contract import protocol as p

SessionId = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
PhoneNumber = Annotated[
    str,
    msgspec.Meta(
        min_length=3,
        max_length=40,
        description="E.164 number, with or without '+', or a WhatsApp JID",
        examples=["+15550001111"],
    ),
]

ChatId = Annotated[
    str,
    msgspec.Meta(
        min_length=3,
        max_length=80,
        description="a chat: an E.164 number (with or without '+'), a group '<id>@g.us', "
        "a LID '<id>@lid' or a newsletter '<id>@newsletter'",
        examples=["+15550001111", "120363012345678901@g.us"],
    ),
]


WebhookUrl = Annotated[
    str,
    msgspec.Meta(
        pattern=r"^https?://[^\s/?#]+[^\s]*$",
        max_length=2048,
        description="http(s) URL that receives this session's events",
    ),
]
EventFilter = Annotated[
    list[Annotated[str, msgspec.Meta(pattern=r"^([a-z_]+\.([a-z_]+|\*)|\*)$", max_length=64)]],
    msgspec.Meta(
        max_length=32,
        description="event types ('message.received') or families ('message.*') to deliver; "
        "null or absent = all",
    ),
]
WebhookSecret = Annotated[
    str,
    msgspec.Meta(
        min_length=16,
        max_length=256,
        description="HMAC secret that signs this session's webhooks (else the tenant's)",
    ),
]
WebhookScheme = Annotated[
    Literal["standard", "zapfleet-v1"],
    msgspec.Meta(
        description="signature scheme of this session's webhook: 'standard' (Standard "
        "Webhooks, the default for new sessions) or 'zapfleet-v1' (the old one)"
    ),
]
ProxyUrl = Annotated[
    str,
    msgspec.Meta(
        pattern=r"^(https?|socks5h?)://[^\s]+$",
        max_length=2048,
        description="proxy URL for the WhatsApp connection",
    ),
]
DeviceName = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]


class Pacing(p.PacingSettings, kw_only=True, forbid_unknown_fields=True):
    """:class:`contract.protocol.PacingSettings` with the bounds the API accepts."""

    enabled: bool = True
    rate_per_s: Annotated[float, msgspec.Meta(gt=0, le=1000)] = 1.0
    burst: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 5
    min_gap_per_recipient_s: Annotated[float, msgspec.Meta(ge=0, le=86_400)] = 5.0
    jitter: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.3
    daily_cap: Annotated[int, msgspec.Meta(ge=0, le=10_000_000)] = 1000
    queue_size: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 500
    typing_before_send: bool = False
    typing_s_per_char: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.05
    typing_max_s: Annotated[float, msgspec.Meta(ge=0, le=30)] = 5.0


class CreateSession(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    session_id: SessionId | None = None
    engine: p.EngineName | None = None
    device_name: DeviceName = "zapfleet"
    proxy: ProxyUrl | None = None
    pacing: Pacing | None = None
    webhook_url: WebhookUrl | None = None
    webhook_events: EventFilter | None = None
    start: bool = True
    node_labels: dict[str, str] | None = None  # place only on nodes with these labels
    webhook_secret: WebhookSecret | None = None
    webhook_scheme: WebhookScheme | None = None


class SessionView(msgspec.Struct, kw_only=True):
    session_id: str
    tenant: str
    engine: p.EngineName
    state: p.SessionState
    desired: Literal["running", "stopped"]
    node_id: str | None = None
    epoch: int | None = None
    phone: str | None = None
    reason: str | None = None
    since: float | None = None
    queue_depth: int = 0
    webhook_url: str | None = None
    created_at: float = 0.0


class QrView(msgspec.Struct, kw_only=True):
    session_id: str
    qr: str
    expires_at: float


# Outbound messages: the protocol's content types plus the recipient, flat and tagged by
# "type" ({"type": "text", "to": "+1555...", "text": "hi"}).


MessageRef = Annotated[
    str,
    msgspec.Meta(
        min_length=1,
        max_length=128,
        description="a message of this session: our message_id (m_...) or the message_id "
        "of a received message",
    ),
]


class TextMessage(p.TextContent, kw_only=True, forbid_unknown_fields=True):
    to: ChatId
    reply_to: MessageRef | None = None
    mentions: Annotated[list[ChatId], msgspec.Meta(max_length=1024)] | None = None


class ImageMessage(p.ImageContent, kw_only=True, forbid_unknown_fields=True):
    to: ChatId


class DocumentMessage(p.DocumentContent, kw_only=True, forbid_unknown_fields=True):
    to: ChatId


class AudioMessage(p.AudioContent, kw_only=True, forbid_unknown_fields=True):
    to: ChatId


class VideoMessage(p.VideoContent, kw_only=True, forbid_unknown_fields=True):
    to: ChatId


class LocationMessage(p.LocationContent, kw_only=True, forbid_unknown_fields=True):
    to: ChatId
    latitude: Annotated[float, msgspec.Meta(ge=-90, le=90)]
    longitude: Annotated[float, msgspec.Meta(ge=-180, le=180)]


class ContactMessage(p.ContactContent, kw_only=True, forbid_unknown_fields=True):
    to: ChatId


class ReactionMessage(p.ReactionContent, kw_only=True, forbid_unknown_fields=True):
    to: ChatId
    message_id: MessageRef
    emoji: Annotated[str, msgspec.Meta(max_length=32, description="'' removes the reaction")]


# -- conversations (issue 15) ---------------------------------------------------------------

PollOption = Annotated[str, msgspec.Meta(min_length=1, max_length=100)]


class EditMessage(p.EditContent, kw_only=True, forbid_unknown_fields=True):
    """New text for a text message this session sent, inside WhatsApp's edit window."""

    to: ChatId
    message_id: MessageRef
    text: Annotated[str, msgspec.Meta(min_length=1, max_length=65536)]


class RevokeMessage(p.RevokeContent, kw_only=True, forbid_unknown_fields=True):
    """Delete a message this session sent, for everyone, inside WhatsApp's window."""

    to: ChatId
    message_id: MessageRef


class PollMessage(p.PollContent, kw_only=True, forbid_unknown_fields=True):
    """A poll: 2-12 unique options; ``selectable`` = options a voter may pick (1 single
    choice, 0 any number)."""

    to: ChatId
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=255)]
    options: Annotated[list[PollOption], msgspec.Meta(min_length=2, max_length=12)]
    selectable: Annotated[int, msgspec.Meta(ge=0, le=12)] = 1


class StickerMessage(p.StickerContent, kw_only=True, forbid_unknown_fields=True):
    to: ChatId


OutboundMessage = (
    TextMessage
    | ImageMessage
    | DocumentMessage
    | AudioMessage
    | VideoMessage
    | LocationMessage
    | ContactMessage
    | ReactionMessage
    | EditMessage
    | RevokeMessage
    | PollMessage
    | StickerMessage
)

_CONTENT_OF: dict[type[msgspec.Struct], type[msgspec.Struct]] = {
    TextMessage: p.TextContent,
    ImageMessage: p.ImageContent,
    DocumentMessage: p.DocumentContent,
    AudioMessage: p.AudioContent,
    VideoMessage: p.VideoContent,
    LocationMessage: p.LocationContent,
    ContactMessage: p.ContactContent,
    ReactionMessage: p.ReactionContent,
    EditMessage: p.EditContent,
    RevokeMessage: p.RevokeContent,
    PollMessage: p.PollContent,
    StickerMessage: p.StickerContent,
}


def to_content(message: OutboundMessage) -> p.MessageContent:
    """Strip the recipient: the protocol carries it beside the content."""
    content_type = _CONTENT_OF[type(message)]
    fields = {f: getattr(message, f) for f in content_type.__struct_fields__}
    return content_type(**fields)  # type: ignore[return-value]


class MessageAccepted(msgspec.Struct, kw_only=True):
    message_id: str
    session_id: str
    status: Literal["queued"] = "queued"
    queue_depth: int = 0


class Health(msgspec.Struct, kw_only=True):
    status: Literal["ok", "degraded"]
    checks: dict[str, str] = msgspec.field(default_factory=dict)


# -- sessions: lists, status, settings, pairing ------------------------------------------


class SessionList(msgspec.Struct, kw_only=True):
    sessions: list[SessionView]
    total: int
    # pass as ``cursor`` for the next page; null on the last one (docs/api.md)
    next_cursor: str | None = None


class SessionStatus(msgspec.Struct, kw_only=True):
    """The live state of a session; served from the status cache (``X-Cache``)."""

    session_id: str
    state: p.SessionState
    desired: Literal["running", "stopped"]
    node_id: str | None = None
    epoch: int | None = None
    phone: str | None = None
    reason: str | None = None
    since: float | None = None
    reconnect_attempts: int = 0
    breaker_open_until: float | None = None


class SessionSettings(msgspec.Struct, kw_only=True):
    session_id: str
    device_name: str
    proxy: str | None
    pacing: p.PacingSettings
    webhook_url: str | None
    webhook_events: list[str] | None
    webhook_scheme: str = "zapfleet-v1"


class SettingsPatch(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Fields to change; absent fields stay as they are, ``null`` clears an optional one.
    Pacing applies at once on the running session; proxy and device name at the next
    start (``POST /restart`` does not reconnect with a new proxy; ``stop`` + ``start`` does).
    Webhook settings apply to the next event delivered."""

    device_name: DeviceName | msgspec.UnsetType = msgspec.UNSET
    proxy: ProxyUrl | msgspec.UnsetType | None = msgspec.UNSET
    pacing: Pacing | msgspec.UnsetType = msgspec.UNSET
    webhook_url: WebhookUrl | msgspec.UnsetType | None = msgspec.UNSET
    webhook_events: EventFilter | msgspec.UnsetType | None = msgspec.UNSET
    webhook_secret: WebhookSecret | msgspec.UnsetType | None = msgspec.UNSET
    webhook_scheme: WebhookScheme | msgspec.UnsetType = msgspec.UNSET


class PairCodeBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    phone: PhoneNumber


class PairCodeView(msgspec.Struct, kw_only=True):
    session_id: str
    code: str


# -- chats: read marks and presence (issue 15) -------------------------------------------------


class ReadChat(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Mark messages of ``chat`` read; without ``message_ids`` every message received in
    it that this session has not marked read yet."""

    chat: ChatId
    message_ids: Annotated[list[MessageRef], msgspec.Meta(max_length=1000)] | None = None


class ChatReadView(msgspec.Struct, kw_only=True):
    session_id: str
    chat: str
    marked: list[str]


class PresenceBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Show ``typing`` or ``recording`` (audio) in ``chat``, or stop (``paused``)."""

    chat: ChatId
    state: p.ChatPresenceState


class PresenceView(msgspec.Struct, kw_only=True):
    session_id: str
    chat: str
    state: p.ChatPresenceState


# -- messages: history, number checks ------------------------------------------------------


class HistoryView(msgspec.Struct, kw_only=True):
    session_id: str
    messages: list[p.MessageRecord]
    next_before: str | None = None  # pass as ?before= for the next (older) page


class NumberCheck(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    numbers: Annotated[list[PhoneNumber], msgspec.Meta(min_length=1, max_length=500)]


class NumberCheckView(msgspec.Struct, kw_only=True):
    session_id: str
    results: list[p.NumberStatus]


# -- tenants and keys ---------------------------------------------------------------------


class CreateTenant(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    tenant_id: Annotated[
        str, msgspec.Meta(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$", examples=["acme"])
    ]
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=200)] | None = None


class TenantView(msgspec.Struct, kw_only=True):
    tenant_id: str
    name: str
    created_at: float
    disabled: bool
    sessions: int = 0
    keys: int = 0


class TenantList(msgspec.Struct, kw_only=True):
    tenants: list[TenantView]


class CreateKey(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    label: Annotated[str, msgspec.Meta(max_length=200)] | None = None


class RotateKey(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    grace_s: Annotated[float, msgspec.Meta(ge=0, le=30 * 86400)] = 0.0
    label: Annotated[str, msgspec.Meta(max_length=200)] | None = None


class KeyView(msgspec.Struct, kw_only=True):
    key_id: str
    tenant: str
    label: str | None
    created_at: float
    revoked_at: float | None = None
    expires_at: float | None = None


class NewKey(msgspec.Struct, kw_only=True):
    """The key in clear: shown this once, stored only as a salted hash."""

    key: str
    key_id: str
    tenant: str
    label: str | None
    created_at: float
    replaces: str | None = None


class KeyList(msgspec.Struct, kw_only=True):
    keys: list[KeyView]


class NodeStatus(p.NodeInfo, kw_only=True):
    """A node's last heartbeat as the control plane sees it, with placement's view:
    ``state`` up (fresh heartbeat), silent (past its lease), down (declared down by the
    reconciler, sessions moved) or left (stopped in order); ``cordoned`` and ``draining``
    (operator flags, docs/failover.md); ``slots_used`` (sessions placed there)."""

    state: Literal["up", "silent", "down", "left"] = "up"
    cordoned: bool = False
    slots_used: int = 0
    silent_s: float = 0.0


class NodeList(msgspec.Struct, kw_only=True):
    nodes: list[NodeStatus]


# -- monitoring ------------------------------------------------------------------------------


class CacheCleared(msgspec.Struct, kw_only=True):
    deleted: int
    cache: str | None = None


class GcResult(msgspec.Struct, kw_only=True):
    collected: int
    pid: int
    rss_bytes_before: int
    rss_bytes_after: int


class InstanceMetrics(msgspec.Struct, kw_only=True):
    session_id: str
    tenant: str
    state: p.SessionState
    node_id: str
    epoch: int
    phone: str | None = None
    since: float = 0.0
    queue_depth: int = 0
    reconnect_attempts: int = 0
    breaker_open_until: float | None = None


class InstancesMetrics(msgspec.Struct, kw_only=True):
    instances: list[InstanceMetrics]
    by_state: dict[str, int]
    unreachable_nodes: list[str]
    ts: float


class SystemMetrics(msgspec.Struct, kw_only=True):
    version: str
    pid: int
    uptime_s: float
    cpu_percent: float
    rss_bytes: int
    cpu_count: int
    load_average: list[float]
    python: str
    http_workers: int


class CacheMetrics(msgspec.Struct, kw_only=True):
    hits: dict[str, int]
    misses: dict[str, int]
    hit_ratio: dict[str, float]
    invalidations: dict[str, int]
    keys: int
    valkey_used_memory_bytes: int | None = None


class WebhookMetrics(msgspec.Struct, kw_only=True):
    pending: int | None = None
    in_flight: int | None = None
    redelivered: int | None = None
    dead_letters: int | None = None
    backlog: int | None = None  # deliveries waiting in destinations' backlogs
    backlog_destinations: int | None = None  # URLs with a backlog (failing or recovering)


class InstanceTotals(msgspec.Struct, kw_only=True):
    sessions: int
    desired_running: int
    by_state: dict[str, int]
    nodes: int
    capacity: int


class MonitoringMetrics(msgspec.Struct, kw_only=True):
    system: SystemMetrics
    cache: CacheMetrics
    webhooks: WebhookMetrics
    instances: InstanceTotals
    rate_limited: dict[str, int]
    ts: float


# -- groups (issue 16) ---------------------------------------------------------------------

GroupSubject = Annotated[str, msgspec.Meta(min_length=1, max_length=100)]
GroupParticipants = Annotated[
    list[ChatId],
    msgspec.Meta(
        max_length=256,
        description="participants: E.164 numbers (with or without '+') or LIDs '<id>@lid'",
    ),
]
InviteLink = Annotated[
    str,
    msgspec.Meta(
        min_length=10,
        max_length=128,
        description="an invite link 'https://chat.whatsapp.com/<code>' or its code",
        examples=["https://chat.whatsapp.com/AbCdEfGhIjKlMnOpQrStUv"],
    ),
]


class CreateGroupBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A new group owned by the session's account; ``participants`` are added one by one
    (each gets its own result)."""

    subject: GroupSubject
    participants: GroupParticipants = msgspec.field(default_factory=list)


class ParticipantsBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    action: p.GroupAction
    participants: Annotated[list[ChatId], msgspec.Meta(min_length=1, max_length=256)]


class GroupSettingsBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Settings to change (absent: unchanged). ``description`` "" removes it;
    ``ephemeral_s``: disappearing messages, 0 (off), 86400, 604800 or 7776000."""

    subject: GroupSubject | None = None
    description: Annotated[str, msgspec.Meta(max_length=2048)] | None = None
    announce: bool | None = None
    locked: bool | None = None
    ephemeral_s: Literal[0, 86400, 604800, 7776000] | None = None
    approval: bool | None = None


class GroupPictureBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The group's new picture: any image (by URL or base64), sent as a square JPEG."""

    media: p.Media


class GroupPictureView(msgspec.Struct, kw_only=True):
    session_id: str
    group_id: str
    picture_id: str | None  # None: removed


class RequestsBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    action: Literal["approve", "reject"]
    participants: Annotated[list[ChatId], msgspec.Meta(min_length=1, max_length=256)]


class GroupJoinView(msgspec.Struct, kw_only=True):
    """``joined`` (``group`` set) or ``requested``: the group needs an admin's approval."""

    session_id: str
    group_id: str
    status: Literal["joined", "requested"]
    group: p.GroupInfo | None = None


class RequestsView(msgspec.Struct, kw_only=True):
    session_id: str
    group_id: str
    requests: list[p.JoinRequest]


class InviteLinkBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    link: InviteLink


class GroupListView(msgspec.Struct, kw_only=True):
    session_id: str
    groups: list[p.GroupInfo]


class GroupCreatedView(msgspec.Struct, kw_only=True):
    session_id: str
    group: p.GroupInfo
    results: list[p.ParticipantResult]


class ParticipantsView(msgspec.Struct, kw_only=True):
    session_id: str
    group_id: str
    action: p.GroupAction | Literal["approve", "reject"]
    results: list[p.ParticipantResult]


class GroupLeftView(msgspec.Struct, kw_only=True):
    session_id: str
    group_id: str
    left: bool = True


class InviteView(msgspec.Struct, kw_only=True):
    session_id: str
    group_id: str
    link: str

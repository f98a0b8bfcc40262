"""Request and response bodies of the REST API (msgspec Structs, documented in OpenAPI)."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from node_agent import protocol as p

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


class CreateSession(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    session_id: SessionId | None = None
    engine: p.EngineName | None = None
    device_name: Annotated[str, msgspec.Meta(min_length=1, max_length=64)] = "zapfleet"
    proxy: str | None = None
    pacing: p.PacingSettings | None = None
    webhook_url: str | None = None
    webhook_events: list[str] | None = None
    webhook_secret: Annotated[str, msgspec.Meta(min_length=16, max_length=256)] | None = None


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


class TextMessage(p.TextContent, kw_only=True, forbid_unknown_fields=True):
    to: PhoneNumber


class ImageMessage(p.ImageContent, kw_only=True, forbid_unknown_fields=True):
    to: PhoneNumber


class DocumentMessage(p.DocumentContent, kw_only=True, forbid_unknown_fields=True):
    to: PhoneNumber


class AudioMessage(p.AudioContent, kw_only=True, forbid_unknown_fields=True):
    to: PhoneNumber


class VideoMessage(p.VideoContent, kw_only=True, forbid_unknown_fields=True):
    to: PhoneNumber


class LocationMessage(p.LocationContent, kw_only=True, forbid_unknown_fields=True):
    to: PhoneNumber


class ContactMessage(p.ContactContent, kw_only=True, forbid_unknown_fields=True):
    to: PhoneNumber


class ReactionMessage(p.ReactionContent, kw_only=True, forbid_unknown_fields=True):
    to: PhoneNumber


OutboundMessage = (
    TextMessage
    | ImageMessage
    | DocumentMessage
    | AudioMessage
    | VideoMessage
    | LocationMessage
    | ContactMessage
    | ReactionMessage
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

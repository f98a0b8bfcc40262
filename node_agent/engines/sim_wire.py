"""What travels on the simulated network as JSON: messages, receipts, presence, a
phone's scan (link) and the account it creates."""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from node_agent.engines._base import InboundMedia

_encode = msgspec.json.encode
QR_PREFIX = "SIM1"  # a sim QR code: SIM1,<session key>,<nonce>


class Wire(msgspec.Struct, kw_only=True):
    """A message on the simulated network."""

    id: str
    sender: str | None  # the sender's phone; None when the sender addresses by LID
    type: str
    ts: float
    text: str | None = None
    content: dict[str, Any] | None = None
    sender_lid: str | None = None
    chat: str | None = None  # a group or newsletter; None in a one-to-one chat


class WireReceipt(msgspec.Struct, kw_only=True):
    id: str
    status: Literal["delivered", "read"]
    peer: str


class WirePresence(msgspec.Struct, kw_only=True):
    """Typing / recording / paused in a chat, from one account to another."""

    sender: str | None
    sender_lid: str | None
    state: Literal["typing", "recording", "paused"]
    chat: str | None = None


def _wire_media(wire: Wire) -> InboundMedia | None:
    """The media description a simulated message carries, if any."""
    described = (wire.content or {}).get("media")
    if not isinstance(described, dict) or "ref" not in described:
        return None
    seconds = described.get("seconds")
    return InboundMedia(
        mimetype=str(described.get("mimetype") or "application/octet-stream"),
        size=int(described.get("size") or 0),
        filename=described.get("filename"),
        sha256=described.get("sha256"),
        seconds=float(seconds) if seconds is not None else None,
        handle=str(described["ref"]),
    )


class LinkRequest(msgspec.Struct, kw_only=True):
    code: str
    phone: str


class LinkReply(msgspec.Struct, kw_only=True):
    ok: bool
    error: str | None = None


class Account(msgspec.Struct, kw_only=True):
    phone: str
    paired_at: float

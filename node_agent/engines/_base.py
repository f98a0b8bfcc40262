"""The one narrow interface every WhatsApp engine implements.

An engine opens :class:`EngineSession` objects; a session reports what happens to it
through the ``emit`` callback it was opened with, as :data:`EngineEvent` values. The
supervisor owns the state machine and reconnects; engines only report facts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, Protocol

import msgspec

from contract.protocol import (  # issue 16
    Contact,
    ContactDetails,
    GroupAction,
    GroupCreated,
    GroupInfo,
    GroupJoined,
    JoinRequest,
    MessageContent,
    NumberStatus,
    ParticipantResult,
    Privacy,
    SessionSpec,
)
from node_agent.media import MediaPayload


class QrShown(msgspec.Struct, frozen=True):
    code: str
    expires_at: float


class Paired(msgspec.Struct, frozen=True):
    phone: str


class Connected(msgspec.Struct, frozen=True):
    phone: str | None = None


class Disconnected(msgspec.Struct, frozen=True):
    """The socket is gone. ``fatal``: reconnecting now would not help or would do harm
    (stream replaced by another device, temporary ban, client outdated) — the supervisor
    opens the circuit breaker at once instead of retrying."""

    reason: str
    fatal: bool = False


class LoggedOut(msgspec.Struct, frozen=True):
    reason: str


class InboundMedia(msgspec.Struct, frozen=True):
    """What an inbound media message says about its file. ``handle`` is the engine's own
    way to fetch the bytes (:meth:`EngineSession.download`): the sim's object name, the
    neonize message proto. It never leaves the agent."""

    mimetype: str
    size: int
    filename: str | None = None
    sha256: str | None = None
    seconds: float | None = None
    handle: Any = None


class Inbound(msgspec.Struct, frozen=True):
    """An inbound message (or an edit, revoke, reaction, poll vote: ``type``).

    ``sender`` is the sender's phone (E.164 digits) when known — never a LID;
    ``sender_lid`` its LID (``<id>@lid``) when known. ``chat`` is the chat it was sent
    in when that is not the sender's own chat: a group (``<id>@g.us``) or a newsletter;
    None for a one-to-one chat. ``resolves``: the message was first reported
    undecryptable (type ``undecryptable``) and this is its content after the retry."""

    message_id: str
    sender: str | None
    type: str
    timestamp: float
    text: str | None = None
    content: dict[str, object] | None = None
    sender_lid: str | None = None
    chat: str | None = None
    resolves: bool = False
    media: InboundMedia | None = None


AckStatus = Literal["server", "delivered", "read", "failed"]


class Receipt(msgspec.Struct, frozen=True):
    message_id: str
    status: AckStatus
    peer: str | None = None


class PresenceSeen(msgspec.Struct, frozen=True):
    """Someone is typing or recording in a chat with this account (or stopped)."""

    chat: str
    sender: str | None
    state: Literal["typing", "recording", "paused"]
    sender_lid: str | None = None


# -- contacts, profile, calls (issue 16) --


class CallOffered(msgspec.Struct, frozen=True):
    """Someone calls this account. ``caller`` is the phone (never a LID), ``caller_lid``
    the LID when known; ``reject_to`` is the caller exactly as the engine must name it to
    reject the call; ``group``: the group of a group call (None: not known / one-to-one)."""

    call_id: str
    caller: str | None
    caller_lid: str | None
    video: bool
    is_group: bool
    timestamp: float
    reject_to: str
    group: str | None = None


class BlockChanged(msgspec.Struct, frozen=True):
    """A contact was blocked or unblocked (by the API or on the phone)."""

    phone: str | None
    lid: str | None
    blocked: bool


# -- groups (issue 16) --


class GroupEvent(msgspec.Struct, frozen=True):
    """Something happened to a group this account is (or was) in. ``kind``: ``joined``
    (``group`` is set), ``left``, ``participants`` (``action``, ``participants``),
    ``updated`` (``changes``: what changed, by name). ``by``: who did it (a phone, or a
    LID when the phone is unknown), None when unknown."""

    kind: Literal["joined", "left", "participants", "updated"]
    group_id: str
    by: str | None = None
    group: GroupInfo | None = None
    action: str | None = None  # add, remove, promote, demote, join (by link), leave
    participants: tuple[str, ...] = ()
    changes: dict[str, object] | None = None
    reason: str | None = None


class GroupError(Exception):
    """A group operation refused for a reason the caller must hear: ``code`` is
    ``group_not_found``, ``not_group_admin`` or ``invalid_invite_link``."""

    def __init__(
        self,
        code: Literal["group_not_found", "not_group_admin", "invalid_invite_link", "not_supported"],
        message: str,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


EngineEvent = (
    QrShown
    | Paired
    | Connected
    | Disconnected
    | LoggedOut
    | Inbound
    | Receipt
    | PresenceSeen
    | CallOffered
    | BlockChanged
    | GroupEvent
)
Emit = Callable[[EngineEvent], None]


class EngineError(Exception):
    """An engine operation failed in a way the caller should report, not crash on."""


class NotOnWhatsApp(EngineError):  # issue 16
    """A contact operation on a number (or LID) nobody uses on WhatsApp."""


class NotSupported(EngineError):  # issue 16
    """The engine cannot do this operation (a limitation of its library)."""


class EngineSession(Protocol):
    async def connect(self) -> None:
        """Begin connecting. Returns quickly; the outcome arrives as events
        (QrShown/Connected on success, Disconnected on failure)."""

    async def disconnect(self) -> None:
        """Close the socket, keep the pairing."""

    async def logout(self) -> None:
        """Unlink the device and forget the pairing."""

    async def send(
        self,
        to: str,
        content: MessageContent,
        message_id: str,
        media: MediaPayload | None = None,
    ) -> str:
        """Send now (pacing happened before). ``media`` holds the bytes of media content
        (already fetched and size-checked). Returns the engine's message id."""

    async def check_numbers(self, numbers: list[str]) -> list[NumberStatus]: ...

    async def download(self, media: InboundMedia) -> bytes:
        """The bytes of inbound media (decrypted); EngineError when they cannot be had."""

    async def pair_phone(self, phone: str) -> str:
        """Ask for a phone pairing code (the 8 characters the user types on the phone)."""

    async def ping(self) -> bool:
        """Cheap liveness probe used by the watchdog."""

    async def mark_read(self, chat: str, message_ids: list[str]) -> None:
        """Send read receipts for received messages of ``chat`` (issue 15)."""

    async def send_presence(
        self, chat: str, state: Literal["typing", "recording", "paused"]
    ) -> None:
        """Show typing / recording in ``chat``, or stop showing it (``paused``)."""

    # -- contacts, profile, calls (issue 16) --

    async def reject_call(self, caller: str, call_id: str) -> None:
        """Decline a call (``caller``: :attr:`CallOffered.reject_to`)."""

    async def block(self, chat: str, block: bool) -> list[str]:
        """Block (or unblock) a phone or LID; returns the block list after the change."""

    async def blocklist(self) -> list[str]:
        """Blocked contacts: phones, or a LID where the phone is unknown."""

    async def set_profile(
        self, name: str | None, about: str | None, picture: bytes | None, remove_picture: bool
    ) -> str | None:
        """Change this account's push name, about text, picture (JPEG) or remove it;
        returns the new picture's id when one was set."""

    async def privacy(self) -> Privacy:
        """This account's privacy settings."""

    async def set_privacy(self, settings: dict[str, str]) -> Privacy:
        """Change privacy settings (names and values already checked); returns all."""

    async def contacts(self) -> list[Contact]:
        """The contacts in the engine's store."""

    async def contact_info(self, chat: str) -> ContactDetails:
        """Name, business flag, about text and picture of a phone or LID; EngineError
        ``not on WhatsApp`` when nobody uses that number."""

    # -- groups (issue 16) --
    # Each raises GroupError for a group the account is not in (group_not_found), a change
    # that needs admin rights (not_group_admin), a bad invite link (invalid_invite_link).

    async def list_groups(self) -> list[GroupInfo]:
        """Every group this account is in."""

    async def group_info(self, group_id: str) -> GroupInfo: ...

    async def create_group(self, subject: str, participants: list[str]) -> GroupCreated:
        """A new group with this account as its owner (superadmin)."""

    async def leave_group(self, group_id: str) -> None: ...

    async def update_participants(
        self, group_id: str, action: GroupAction, participants: list[str]
    ) -> list[ParticipantResult]:
        """One result per participant (in the order given), never all-or-nothing."""

    async def invite_link(self, group_id: str, revoke: bool = False) -> str:
        """The group's invite link (a new one after ``revoke``); admins only."""

    async def join_group(self, link: str) -> GroupJoined:
        """Join by invite link (a full link or its code): joined, or a join request sent
        when the group needs an admin's approval."""

    async def link_info(self, link: str) -> GroupInfo:
        """The group behind an invite link, without joining."""

    async def update_group(self, group_id: str, changes: dict[str, object]) -> None:
        """Change ``subject``, ``description``, ``announce``, ``locked``, ``ephemeral_s``,
        ``approval``."""

    async def set_group_picture(self, group_id: str, jpeg: bytes | None) -> str | None:
        """Set the picture (a prepared JPEG) or remove it (None); returns its id."""

    async def join_requests(self, group_id: str) -> list[JoinRequest]:
        """Pending join requests of a group that needs approval (admins)."""

    async def answer_requests(
        self, group_id: str, action: Literal["approve", "reject"], participants: list[str]
    ) -> list[ParticipantResult]:
        """Approve or reject join requests: ``approved``, ``rejected``, ``not_requested``."""


class Engine(Protocol):
    @property
    def name(self) -> Literal["neonize", "sim"]: ...

    async def start(self) -> None: ...

    def open_session(self, spec: SessionSpec, emit: Emit) -> EngineSession: ...

    async def forget(self, spec: SessionSpec) -> None:
        """Delete the device state of a deleted session (keyed by ``spec.key``)."""

    async def close(self) -> None: ...

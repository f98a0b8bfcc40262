"""What a session remembers of its conversations, and the checks built on it (issue 15).

Edits, revokes, replies and reactions refer to earlier messages. The supervisor keeps a
bounded :class:`Ledger` of the messages it accepted (our ``m_`` id, chat, type, when it
was accepted and sent, WhatsApp's id) and of those it received (WhatsApp's id, chat), so

- an edit or a revoke is checked **when it is accepted** (the API answers 422 at once):
  the target must be a message this session sent to that chat, an edit only of text and
  inside WhatsApp's edit window, a revoke inside the revoke window;
- our ids are turned into WhatsApp's ids just before the engine sends;
- inbound edits, revokes, reactions and poll votes become events of their own.

The ledger lives in the agent's memory: a message sent before the session last started
on this node (agent restart, failover) is unknown to it, so it cannot be edited or
revoked by its ``m_`` id there (docs/api.md).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import msgspec

from contract.chat_ids import is_group
from contract.protocol import (
    EditContent,
    ErrorCode,
    EventType,
    MessageContent,
    ReactionContent,
    RevokeContent,
    SendMessage,
    TextContent,
)
from node_agent.engines._base import Inbound
from node_agent.errors import AgentError

EDIT_WINDOW_S = 15 * 60.0  # WhatsApp: a message can be edited for 15 minutes
REVOKE_WINDOW_S = 2 * 86400.0  # WhatsApp: "delete for everyone" for about two days
LEDGER_SIZE = 10_000

INBOUND_EVENTS: dict[str, EventType] = {
    "edit": EventType.MESSAGE_EDITED,
    "revoke": EventType.MESSAGE_REVOKED,
    "reaction": EventType.MESSAGE_REACTION,
    "poll_vote": EventType.MESSAGE_POLL_VOTE,
}


@dataclass(slots=True)
class Sent:
    to: str
    type: str
    accepted_at: float
    sent_at: float | None = None
    engine_id: str | None = None
    failed: bool = False


class Ledger:
    def __init__(self, size: int = LEDGER_SIZE) -> None:
        self.size = size
        self.sent: OrderedDict[str, Sent] = OrderedDict()  # our id -> what we sent
        self.by_engine: OrderedDict[str, str] = OrderedDict()  # engine id -> our id
        self.received: OrderedDict[str, str] = OrderedDict()  # engine id -> chat
        self.read: OrderedDict[str, None] = OrderedDict()  # received ids marked read

    def _put(self, store: OrderedDict[str, Any], key: str, value: Any) -> None:
        store[key] = value
        store.move_to_end(key)
        if len(store) > self.size:
            store.popitem(last=False)

    def accepted(self, request: SendMessage) -> None:
        if request.message_id not in self.sent:
            tag = str(type(request.content).__struct_config__.tag)
            self._put(self.sent, request.message_id, Sent(request.to, tag, time.time()))

    def on_sent(self, message_id: str, engine_id: str) -> None:
        entry = self.sent.get(message_id)
        if entry is not None:
            entry.sent_at = time.time()
            entry.engine_id = engine_id
        self._put(self.by_engine, engine_id, message_id)

    def on_failed(self, message_id: str) -> None:
        entry = self.sent.get(message_id)
        if entry is not None:
            entry.failed = True

    def on_received(self, engine_id: str, chat: str) -> None:
        self._put(self.received, engine_id, chat)

    def unread(self, chat: str) -> list[str]:
        """Messages received in ``chat`` not marked read yet, oldest first."""
        return [m for m, c in self.received.items() if c == chat and m not in self.read]

    def marked_read(self, message_ids: list[str]) -> None:
        for message_id in message_ids:
            self._put(self.read, message_id, None)

    def ours(self, message_id: str) -> tuple[str, Sent] | None:
        """(our id, entry) of a message we sent, by our id or by WhatsApp's."""
        entry = self.sent.get(message_id)
        if entry is not None:
            return message_id, entry
        ours = self.by_engine.get(message_id)
        if ours is not None and ours in self.sent:
            return ours, self.sent[ours]
        return None

    def known(self, message_id: str) -> bool:
        return self.ours(message_id) is not None or message_id in self.received

    def engine_id(self, message_id: str) -> str:
        """WhatsApp's id of a message given by our id (unchanged when it is not ours)."""
        entry = self.sent.get(message_id)
        if entry is not None and entry.engine_id is not None:
            return entry.engine_id
        return message_id

    # -- checks when a send is accepted --------------------------------------------------

    def check(self, request: SendMessage, now: float | None = None) -> None:
        """AgentError when WhatsApp would refuse this content (its target, its window)."""
        content = request.content
        now = time.time() if now is None else now
        if isinstance(content, EditContent | RevokeContent):
            found = self.ours(content.message_id)
            verb = "edited" if isinstance(content, EditContent) else "revoked"
            if found is None:
                raise AgentError(
                    ErrorCode.MESSAGE_NOT_FOUND,
                    f"{content.message_id!r} is not a message this session sent (since it "
                    f"last started on its node): only our own messages can be {verb}",
                )
            _, sent = found
            if sent.failed:
                raise AgentError(
                    ErrorCode.MESSAGE_NOT_FOUND, f"{content.message_id!r} was never sent"
                )
            if sent.to != request.to:
                raise AgentError(
                    ErrorCode.MESSAGE_NOT_FOUND,
                    f"{content.message_id!r} was sent to {sent.to!r}, not to {request.to!r}",
                )
            since = sent.sent_at or sent.accepted_at
            if isinstance(content, EditContent):
                if sent.type != "text":
                    raise AgentError(
                        ErrorCode.MESSAGE_NOT_EDITABLE,
                        f"only text messages can be edited; {content.message_id!r} is "
                        f"{sent.type!r}",
                    )
                if now - since > EDIT_WINDOW_S:
                    raise AgentError(
                        ErrorCode.EDIT_WINDOW_CLOSED,
                        f"{content.message_id!r} was sent {now - since:.0f} s ago; WhatsApp "
                        f"allows edits for {EDIT_WINDOW_S:.0f} s",
                    )
            elif now - since > REVOKE_WINDOW_S:
                raise AgentError(
                    ErrorCode.REVOKE_WINDOW_CLOSED,
                    f"{content.message_id!r} was sent {now - since:.0f} s ago; WhatsApp "
                    f"allows deleting for everyone for {REVOKE_WINDOW_S:.0f} s",
                )
        elif (
            isinstance(content, TextContent)
            and content.reply_to is not None
            and not self.known(content.reply_to)
        ):
            raise AgentError(
                ErrorCode.MESSAGE_NOT_FOUND,
                f"cannot quote {content.reply_to!r}: not a message of this session",
            )

    # -- just before the engine sends ----------------------------------------------------

    def resolved(self, content: MessageContent) -> MessageContent:
        """When a send is accepted: our ids already sent turned into WhatsApp's, so the
        outbox keeps what another agent needs after a failover (its ledger is empty)."""
        if isinstance(content, EditContent | RevokeContent | ReactionContent):
            engine_id = self.engine_id(content.message_id)
            if engine_id != content.message_id:
                return msgspec.structs.replace(content, message_id=engine_id)
        elif isinstance(content, TextContent) and content.reply_to is not None:
            engine_id = self.engine_id(content.reply_to)
            if engine_id != content.reply_to:
                return msgspec.structs.replace(content, reply_to=engine_id)
        return content

    def for_engine(self, content: MessageContent) -> MessageContent | str:
        """The content with our ids turned into WhatsApp's, or why it cannot go. An id
        this ledger does not know was resolved when accepted (by this agent or the one
        before a failover) and goes as it is."""
        if isinstance(content, EditContent | RevokeContent):
            found = self.ours(content.message_id)
            if found is not None and (found[1].failed or found[1].engine_id is None):
                return f"{content.message_id!r} was not sent"
            engine_id = found[1].engine_id if found is not None else content.message_id
            assert engine_id is not None
            return msgspec.structs.replace(content, message_id=engine_id)
        if isinstance(content, ReactionContent):
            return ReactionContent(
                message_id=self.engine_id(content.message_id), emoji=content.emoji
            )
        if isinstance(content, TextContent) and content.reply_to is not None:
            return msgspec.structs.replace(content, reply_to=self.engine_id(content.reply_to))
        return content

    # -- inbound -------------------------------------------------------------------------

    def inbound_event(self, event: Inbound, chat: str) -> tuple[EventType, dict[str, Any]] | None:
        """The event of an inbound edit, revoke, reaction or poll vote (None for a
        message: that is ``message.received``)."""
        event_type = INBOUND_EVENTS.get(event.type)
        if event_type is None:
            return None
        content = event.content or {}
        target = str(content.get("message_id") or "")
        ours = self.by_engine.get(target)
        data: dict[str, Any] = {
            "message_id": ours or target,
            "engine_message_id": target,
            "from_me": ours is not None,
            "event_message_id": event.message_id,
            "from": event.sender,
            "from_lid": event.sender_lid,
            "chat": chat,
            "is_group": is_group(chat),
            "timestamp": event.timestamp,
        }
        if event.type == "edit":
            data["text"] = event.text if event.text is not None else content.get("text")
        elif event.type == "reaction":
            emoji = str(content.get("emoji") or event.text or "")
            data["emoji"] = emoji
            data["removed"] = emoji == ""
        elif event.type == "poll_vote":
            data["poll"] = content.get("poll")
            data["options"] = list(content.get("options") or [])  # type: ignore[call-overload]
        return event_type, data


__all__ = ["EDIT_WINDOW_S", "REVOKE_WINDOW_S", "Ledger"]

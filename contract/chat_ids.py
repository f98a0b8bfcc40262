"""Chat ids: the one rule for who a message goes to (issue 15).

A chat id is one of

- a phone number: E.164 digits without ``+`` (``15550001111``); accepted with ``+``,
  spaces, dashes or the ``@s.whatsapp.net`` suffix, stored as digits (as before);
- a group: ``<digits>@g.us`` (or the legacy ``<creator digits>-<digits>@g.us``);
- a LID (WhatsApp's hidden user id): ``<digits>@lid``;
- a newsletter (channel): ``<digits>@newsletter``.

The control plane and the agents both use :func:`normalize_chat`, so a malformed id is
refused before anything is queued, with ``invalid_number`` (it looked like a phone number)
or ``invalid_chat_id`` (it named a server, or a malformed id on one).
"""

from __future__ import annotations

import functools
import re
from typing import Literal

import phonenumbers

ChatKind = Literal["phone", "group", "lid", "newsletter"]

PHONE_SERVER = "s.whatsapp.net"
_SERVERS: dict[str, tuple[ChatKind, re.Pattern[str]]] = {
    "g.us": ("group", re.compile(r"^(\d{5,20}|\d{5,20}-\d{5,20})$")),
    "lid": ("lid", re.compile(r"^\d{1,20}$")),
    "newsletter": ("newsletter", re.compile(r"^\d{5,20}$")),
}
MAX_CHAT_ID = 64


class ChatIdError(ValueError):
    """A chat id that is not one: ``code`` is ``invalid_number`` or ``invalid_chat_id``."""

    def __init__(self, code: Literal["invalid_number", "invalid_chat_id"], message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@functools.lru_cache(maxsize=65_536)  # bulk sends repeat recipients; parsing is costly
def normalize_phone(raw: str) -> str:
    """E.164 digits without '+', or ChatIdError(invalid_number)."""
    text = raw.strip().removesuffix("@" + PHONE_SERVER).removesuffix("@c.us")
    candidate = text if text.startswith("+") else "+" + text
    try:
        parsed = phonenumbers.parse(candidate, None)
    except phonenumbers.NumberParseException as exc:
        raise ChatIdError("invalid_number", f"{raw!r} is not a phone number: {exc}") from None
    if not phonenumbers.is_possible_number(parsed):
        raise ChatIdError("invalid_number", f"{raw!r} is not a possible phone number")
    return f"{parsed.country_code}{parsed.national_number}"


@functools.lru_cache(maxsize=65_536)
def normalize_chat(raw: str) -> str:
    """The canonical chat id of ``raw`` (digits for a phone, ``user@server`` otherwise),
    or :class:`ChatIdError` saying what is wrong."""
    text = raw.strip()
    if "@" not in text:
        return normalize_phone(text)
    user, _, server = text.partition("@")
    server = server.lower()
    if server in (PHONE_SERVER, "c.us"):
        return normalize_phone(user)
    known = _SERVERS.get(server)
    if known is None:
        raise ChatIdError(
            "invalid_chat_id",
            f"{raw!r} is not a chat id: use a phone number, <id>@g.us (group), "
            "<id>@lid or <id>@newsletter",
        )
    kind, pattern = known
    if len(text) > MAX_CHAT_ID or not pattern.match(user):
        raise ChatIdError("invalid_chat_id", f"{raw!r} is not a valid {kind} id")
    return f"{user}@{server}"


def chat_kind(chat: str) -> ChatKind:
    """The kind of a normalized chat id."""
    if "@" not in chat:
        return "phone"
    return _SERVERS[chat.partition("@")[2]][0]


def is_group(chat: str) -> bool:
    return chat.endswith("@g.us")


def is_lid(value: str | None) -> bool:
    return bool(value) and str(value).endswith("@lid")


__all__ = [
    "ChatIdError",
    "ChatKind",
    "chat_kind",
    "is_group",
    "is_lid",
    "normalize_chat",
    "normalize_phone",
]

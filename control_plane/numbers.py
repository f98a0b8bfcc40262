"""Phone numbers and chat ids as the API accepts them: the 422 problems for sends, number
checks, history filters, read marks, presence and pairing by phone.

The rule itself is contract/chat_ids.py (the agents apply the same one); this module
only maps its ``ChatIdError`` to RFC 9457 problems and remembers valid answers. It sits
below both services (control_plane/sessions.py and control_plane/messages.py), so neither
imports the other for it.
"""

from __future__ import annotations

from contract.chat_ids import ChatIdError, normalize_chat, normalize_phone
from control_plane.problems import ProblemError

_recipients: dict[str, str] = {}
_chats: dict[str, str] = {}
_MAX_REMEMBERED = 50_000


def normalize_recipient(raw: str) -> str:
    """E.164 digits without '+', or a 422 problem that says what is wrong. Valid numbers
    are remembered (parsing is the most expensive step of a send)."""
    known = _recipients.get(raw)
    if known is not None:
        return known
    try:
        normalized = normalize_phone(raw)
    except ChatIdError as exc:
        raise ProblemError(422, exc.code, exc.message) from None
    if len(_recipients) >= _MAX_REMEMBERED:
        _recipients.clear()
    _recipients[raw] = normalized
    return normalized


def normalize_chat_id(raw: str) -> str:
    """A chat id (phone, group, LID, newsletter: contract/chat_ids.py), or a 422
    problem: ``invalid_number`` for a malformed phone, ``invalid_chat_id`` otherwise."""
    known = _chats.get(raw)
    if known is not None:
        return known
    try:
        normalized = normalize_chat(raw)
    except ChatIdError as exc:
        raise ProblemError(422, exc.code, exc.message) from None
    if len(_chats) >= _MAX_REMEMBERED:
        _chats.clear()
    _chats[raw] = normalized
    return normalized

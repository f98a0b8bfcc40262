"""Request values the agent's operations check: phone numbers and chat ids.

A bad value is an :class:`~node_agent.supervisor.AgentError` with the contract's code
(``invalid_number``, ``invalid_chat_id``), answered as such by the RPC surface.
"""

from __future__ import annotations

from contract.chat_ids import ChatIdError, normalize_chat, normalize_phone
from contract.protocol import ErrorCode
from node_agent.errors import AgentError


def normalize_number(raw: str) -> str:
    """E.164 digits without '+', or AgentError(INVALID_NUMBER)."""
    try:
        return normalize_phone(raw)
    except ChatIdError as exc:
        raise AgentError(ErrorCode.INVALID_NUMBER, exc.message) from None


def normalize_chat_id(raw: str) -> str:
    """A chat id (contract/chat_ids.py), or AgentError(INVALID_NUMBER/INVALID_CHAT_ID)."""
    try:
        return normalize_chat(raw)
    except ChatIdError as exc:
        raise AgentError(ErrorCode(exc.code), exc.message) from None

"""The message service: sends, history, number checks, read marks and presence, whoever
asks: REST (control_plane/api/messages.py, control_plane/api/chats.py) and the NATS
commands (control_plane/commands.py). Controllers map HTTP (routes, rate classes, the
Idempotency-Key header, cache headers) to these functions; nothing here imports a
controller. Errors are ``ProblemError`` (RFC 9457), the same for every caller.

Read marks and presence are not messages: they go to the session's node at once (no
queue, no outbox) and answer what was done.
"""

from __future__ import annotations

import asyncio
import re
import secrets

import msgspec

from contract.chat_ids import chat_kind, is_group
from contract.protocol import (
    ChatPresence,
    ChatRead,
    ChatReadDone,
    CheckNumbers,
    Empty,
    History,
    HistoryRequest,
    Media,
    MessageContent,
    NumberStatus,
    NumberStatuses,
    Op,
    PollContent,
    SendAccepted,
    SendMessage,
    TextContent,
)
from control_plane import idempotency
from control_plane.agents import AgentCallError, AgentUnavailable
from control_plane.auth import Principal
from control_plane.caches import cache_id
from control_plane.models import (
    ChatReadView,
    HistoryView,
    MessageAccepted,
    NumberCheckView,
    OutboundMessage,
    PresenceBody,
    PresenceView,
    ReadChat,
    to_content,
)
from control_plane.numbers import normalize_chat_id, normalize_recipient
from control_plane.problems import ProblemError
from control_plane.services import Services
from control_plane.sessions import agent_problem, call_agent, load_record, running

MAX_POLL_OPTIONS = 12
_encode = msgspec.json.encode
_status_decoder = msgspec.json.Decoder(NumberStatus)


_UNSAFE_IN_NAMES = re.compile(r"[\x00-\x1f\x7f\u202a-\u202e\u2066-\u2069]")
MAX_FILENAME = 255


def safe_filename(name: str | None) -> str | None:
    """The last path component of a media file name, without control or bidi-override
    characters, at most 255 characters; None if nothing is left. A file name is only
    metadata shown to the recipient, but engines and operators may use it as a path."""
    if name is None:
        return None
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    base = _UNSAFE_IN_NAMES.sub("", base).strip()
    if base in ("", ".", ".."):
        return None
    return base[:MAX_FILENAME]


def _check_media(content: MessageContent, max_bytes: int) -> None:
    media: Media | None = getattr(content, "media", None)
    if media is None:
        return
    media.filename = safe_filename(media.filename)
    if (media.url is None) == (media.base64 is None):
        raise ProblemError(422, "invalid_media", "media needs exactly one of 'url' and 'base64'")
    if media.url is not None and not media.url.startswith(("http://", "https://")):
        raise ProblemError(422, "invalid_media", "media.url must be an http(s) URL")
    if media.base64 is not None:
        size = len(media.base64) * 3 // 4 - media.base64[-2:].count("=")
        if size > max_bytes:
            raise ProblemError(
                413,
                "media_too_large",
                f"inline media of {size} bytes exceeds the limit of {max_bytes} bytes",
            )


def check_conversation(content: MessageContent, recipient: str) -> None:
    """The limits of conversation content WhatsApp would refuse later (issue 15): mentions
    are people (phones or LIDs) and ``mention_all`` needs a group; a poll has unique
    options and no more selectable than it has. Shared by REST and NATS commands."""
    if isinstance(content, TextContent):
        if content.mentions:
            mentioned = []
            for raw in content.mentions:
                chat = normalize_chat_id(raw)
                if chat_kind(chat) not in ("phone", "lid"):
                    raise ProblemError(
                        422, "invalid_mentions", f"{raw!r}: only people can be mentioned"
                    )
                mentioned.append(chat)
            content.mentions = list(dict.fromkeys(mentioned))
        if content.mention_all and not is_group(recipient):
            raise ProblemError(
                422,
                "invalid_mentions",
                f"mention_all mentions a group's participants: {recipient!r} is not a group",
            )
    elif isinstance(content, PollContent):
        names = [option.strip() for option in content.options]
        if any(not name for name in names):
            raise ProblemError(422, "invalid_poll", "poll options must not be blank")
        if len(set(names)) != len(names):
            raise ProblemError(422, "invalid_poll", "poll options must be unique")
        if not 2 <= len(names) <= MAX_POLL_OPTIONS:
            raise ProblemError(422, "invalid_poll", "a poll has 2 to 12 options")
        if content.selectable > len(names):
            raise ProblemError(
                422,
                "invalid_poll",
                f"selectable ({content.selectable}) exceeds the {len(names)} options",
            )
        content.options = names


async def queue_message(
    services: Services,
    principal: Principal,
    session_id: str,
    data: OutboundMessage,
    idempotency_key: str | None = None,
) -> tuple[bytes, bool]:
    """Queue one message on the session's node: the JSON of its MessageAccepted, and
    whether it is the replay of an earlier request with the same Idempotency-Key. The
    REST endpoint and the NATS command ``message_send`` share it."""
    recipient = normalize_chat_id(data.to)
    content = to_content(data)
    _check_media(content, services.settings.max_media_bytes)
    check_conversation(content, recipient)
    record = await load_record(services, principal, session_id)
    assignment = running(record)
    key = record.spec.key
    store = services.idempotency
    reserved: tuple[str, str] | None = None
    if idempotency_key is not None:
        storage_key = store.storage_key(
            principal.tenant, key, idempotency.validate_key(idempotency_key)
        )
        digest = idempotency.body_digest(_encode(data))
        replay = await store.reserve(storage_key, digest)
        if replay is not None:
            return replay.body, True
        reserved = (storage_key, digest)
        message_id = store.message_id(storage_key)
    else:
        message_id = "m_" + secrets.token_hex(10)
    send = SendMessage(session_id=key, message_id=message_id, to=recipient, content=content)
    try:
        accepted = await services.agents.call(
            assignment.node_id, Op.MESSAGE_SEND, send, SendAccepted
        )
    except (AgentCallError, AgentUnavailable) as exc:
        if reserved is not None:
            await store.release(reserved[0])
        raise agent_problem(exc) from None
    except BaseException:
        if reserved is not None:
            await asyncio.shield(store.release(reserved[0]))
        raise
    body = _encode(
        MessageAccepted(
            message_id=accepted.message_id,
            session_id=session_id,
            queue_depth=accepted.queue_depth,
        )
    )
    if reserved is not None:
        await store.complete(reserved[0], reserved[1], 202, body)
    return body, False


async def message_history(
    services: Services,
    principal: Principal,
    session_id: str,
    *,
    limit: int = 50,
    chat: str | None = None,
    before: str | None = None,
) -> tuple[bytes, bool]:
    """The JSON of a HistoryView page, and whether it came from the cache. REST ``GET
    …/messages`` and the NATS command ``messages_list`` share it."""
    if chat is not None and "@" not in chat:
        chat = normalize_recipient(chat)
    record = await load_record(services, principal, session_id)
    plain = chat is None and before is None  # only the first unfiltered page is cached
    if plain:
        cached = await services.cache.get_history(cache_id(record), limit)
        if cached is not None:
            return cached, True
    assignment = running(record)
    history = await call_agent(
        services,
        assignment.node_id,
        Op.HISTORY_LIST,
        HistoryRequest(session_id=record.spec.key, limit=limit, chat=chat, before=before),
        History,
    )
    body = _encode(
        HistoryView(
            session_id=session_id, messages=history.messages, next_before=history.next_before
        )
    )
    if plain:
        await services.cache.put_history(cache_id(record), limit, body)
    return body, False


async def check_numbers(
    services: Services, principal: Principal, session_id: str, raw_numbers: list[str]
) -> NumberCheckView:
    """Which numbers are on WhatsApp: cached answers first (per tenant), the rest from
    the session's node."""
    numbers = list(dict.fromkeys(normalize_recipient(n) for n in raw_numbers))
    record = await load_record(services, principal, session_id)
    cached = await services.cache.get_numbers(principal.tenant, numbers)
    known: dict[str, NumberStatus] = {}
    for number, value in zip(numbers, cached, strict=True):
        if value is not None:
            known[number] = _status_decoder.decode(value)
    missing = [n for n in numbers if n not in known]
    if missing:
        assignment = running(record)
        checked = await call_agent(
            services,
            assignment.node_id,
            Op.CONTACTS_CHECK,
            CheckNumbers(session_id=record.spec.key, numbers=missing),
            NumberStatuses,
        )
        fresh = []
        for status in checked.results:
            known[status.number] = status
            fresh.append((status.number, status.on_whatsapp, _encode(status)))
        await services.cache.put_numbers(principal.tenant, fresh)
    results = [known[n] for n in numbers if n in known]
    return NumberCheckView(session_id=session_id, results=results)


async def mark_read(
    services: Services, principal: Principal, session_id: str, data: ReadChat
) -> ChatReadView:
    chat = normalize_chat_id(data.chat)
    record = await load_record(services, principal, session_id)
    assignment = running(record)
    done = await call_agent(
        services,
        assignment.node_id,
        Op.CHAT_READ,
        ChatRead(session_id=record.spec.key, chat=chat, message_ids=data.message_ids or []),
        ChatReadDone,
    )
    return ChatReadView(session_id=session_id, chat=done.chat, marked=done.marked)


async def show_presence(
    services: Services, principal: Principal, session_id: str, data: PresenceBody
) -> PresenceView:
    chat = normalize_chat_id(data.chat)
    record = await load_record(services, principal, session_id)
    assignment = running(record)
    await call_agent(
        services,
        assignment.node_id,
        Op.CHAT_PRESENCE,
        ChatPresence(session_id=record.spec.key, chat=chat, state=data.state),
        Empty,
    )
    return PresenceView(session_id=session_id, chat=chat, state=data.state)

"""The agent's messaging operations: sends (media, outbox, ordered acceptance), the
outbox restore at a start, number checks, history, read marks and chat presence.

A mixin of :class:`~node_agent.agent.Agent` (its RPC routes name these ``op_*``), like
:mod:`node_agent.agent_contacts` and :mod:`node_agent.agent_groups` (issue 14).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from contract.protocol import (
    ChatPresence,
    ChatRead,
    ChatReadDone,
    CheckNumbers,
    Empty,
    ErrorCode,
    Event,
    History,
    HistoryRequest,
    NumberStatuses,
    SendAccepted,
    SendMessage,
    SessionRef,
    SessionState,
)
from node_agent.agent_input import normalize_chat_id, normalize_number
from node_agent.errors import AgentError
from node_agent.media import MediaError, MediaFetcher, MediaPayload
from node_agent.outbound import converted, media_of
from node_agent.outbox import Outbox
from node_agent.settings import AgentSettings
from node_agent.supervisor import SessionSupervisor
from zapfleet.backoff import Backoff, Retrier

log = logging.getLogger(__name__)

log = logging.getLogger(__name__)

RESTORE_ATTEMPT_S = 20.0  # one outbox read at a start; past it, tried again
# between outbox reads that failed: 1 s doubling to 30 s, jittered so the sessions of a
# node that all failed at once (NATS away) do not retry in step
OUTBOX_RETRY = Backoff(base_s=1.0, max_s=30.0, jitter="full", floor_s=1.0)
MAX_READ_IDS = 1000  # message ids one chat_read call may mark


class MessagingOps:
    if TYPE_CHECKING:
        settings: AgentSettings
        sessions: dict[str, SessionSupervisor]
        media: MediaFetcher
        _outbox: Outbox | None
        _accept_tail: dict[str, asyncio.Future[None]]
        _keys: dict[tuple[str, str], str]

        def _get(self, ref: SessionRef) -> SessionSupervisor: ...

    async def op_send(self, request: SendMessage) -> SendAccepted:
        supervisor = self._get(SessionRef(session_id=request.session_id))
        request.to = normalize_chat_id(request.to)
        if not request.message_id:
            raise AgentError(ErrorCode.INVALID_REQUEST, "message_id is required")
        if request.message_id not in supervisor.ledger.sent:  # a retried RPC is no new send
            supervisor.ledger.check(request)  # edit/revoke/reply targets and windows
            request.content = supervisor.ledger.resolved(request.content)
        # sends are served concurrently (Agent._rpc): their media and outbox writes
        # overlap, but each enqueues only after the one that arrived before it, so a
        # session sends in the order its messages were accepted
        session_id = request.session_id
        previous = self._accept_tail.get(session_id)
        accepted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._accept_tail[session_id] = accepted
        try:
            payload = await self._store_send(request)
            if previous is not None:
                await asyncio.shield(previous)
            try:
                depth = supervisor.enqueue(request, payload)
            except AgentError:
                if self._outbox is not None:
                    self._outbox.forget(session_id, request.message_id)
                raise
        finally:
            accepted.set_result(None)
            if self._accept_tail.get(session_id) is accepted:
                del self._accept_tail[session_id]
        return SendAccepted(message_id=request.message_id, queue_depth=depth)

    def _on_event_stored(self, event: Event) -> None:
        if self._outbox is not None:
            key = self._keys.get((event.tenant, event.session_id), event.session_id)
            self._outbox.on_stored(event, key)

    async def _store_send(self, request: SendMessage) -> MediaPayload | None:
        """Fetch or decode the media, then write the send to the outbox: durable before
        the agent says "queued" (node_agent/outbox.py)."""
        media = media_of(request.content)
        payload = None
        if media is not None:
            try:
                payload = await self.media.accept(media)
                if payload is not None:  # inline: converted now, so bad input is a 422
                    payload = await converted(request.content, payload)
            except MediaError as exc:
                raise AgentError(exc.code, exc.message) from None
            if payload is not None:
                media.base64 = None  # the queue keeps the decoded bytes, not the text
        if self._outbox is not None:
            try:
                await self._outbox.put(request, payload)
            except Exception as exc:
                raise AgentError(
                    ErrorCode.STORAGE_UNAVAILABLE,
                    f"the message could not be stored durably: {exc!r}",
                    retry_after_s=1.0,
                ) from None
        return payload

    async def _restore_outbox(self, supervisor: SessionSupervisor) -> None:
        """Queue first what was accepted for this session but never sent (the agent that
        accepted it died, or the session moved here). A read that fails or stalls (NATS
        away for a moment) is tried again until it works or the session is gone: the
        messages must not wait for the next restart."""
        if self._outbox is None:
            return
        retry = Retrier(OUTBOX_RETRY)
        while self.sessions.get(supervisor.key) is supervisor:
            try:
                async with asyncio.timeout(RESTORE_ATTEMPT_S):
                    pending = await self._outbox.pending(
                        supervisor.key, supervisor.tenant, supervisor.session_id
                    )
                break
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                delay = retry.next_delay()
                log.warning(
                    "outbox unreadable; retrying",
                    extra={"error": repr(exc), "retry_in_s": round(delay, 3)},
                )
                await asyncio.sleep(delay)
        else:
            return  # stopped or replaced meanwhile: its successor restores
        for request, payload in pending:
            try:
                supervisor.enqueue(request, payload)
            except AgentError as exc:
                log.warning(
                    "could not re-queue an accepted message",
                    extra={"message_id": request.message_id, "error": exc.message},
                )
        if pending:
            log.info("re-queued accepted messages from the outbox", extra={"count": len(pending)})

    async def op_check(self, request: CheckNumbers) -> NumberStatuses:
        supervisor = self._get(SessionRef(session_id=request.session_id))
        if not request.numbers or len(request.numbers) > self.settings.max_check_numbers:
            raise AgentError(
                ErrorCode.INVALID_REQUEST,
                f"check 1 to {self.settings.max_check_numbers} numbers per request",
            )
        numbers = [normalize_number(n) for n in request.numbers]
        if supervisor.state is not SessionState.CONNECTED:
            raise AgentError(ErrorCode.NOT_CONNECTED, f"session is {supervisor.state}")
        try:
            results = await supervisor.engine.check_numbers(numbers)
        except Exception as exc:
            raise AgentError(ErrorCode.ENGINE_ERROR, str(exc)) from None
        return NumberStatuses(results=results)

    async def op_history(self, request: HistoryRequest) -> History:
        supervisor = self._get(SessionRef(session_id=request.session_id))
        limit = max(1, min(request.limit, 1000))
        chat = normalize_number(request.chat) if request.chat and "@" not in request.chat else None
        messages, next_before = supervisor.history.page(
            chat=chat or request.chat, before=request.before, limit=limit
        )
        return History(messages=messages, next_before=next_before)

    # -- chats: read marks and presence (issue 15) ---------------------------------------

    def _connected(self, session_id: str) -> SessionSupervisor:
        supervisor = self._get(SessionRef(session_id=session_id))
        if supervisor.state is not SessionState.CONNECTED:
            raise AgentError(ErrorCode.NOT_CONNECTED, f"session is {supervisor.state}")
        return supervisor

    async def op_chat_read(self, request: ChatRead) -> ChatReadDone:
        """Read receipts now (not queued: they are not messages). No ids: every message
        received in the chat that was not marked read yet."""
        chat = normalize_chat_id(request.chat)
        if len(request.message_ids) > MAX_READ_IDS:
            raise AgentError(
                ErrorCode.INVALID_REQUEST, f"mark at most {MAX_READ_IDS} messages per call"
            )
        supervisor = self._connected(request.session_id)
        ids = list(dict.fromkeys(request.message_ids)) or supervisor.ledger.unread(chat)
        if ids:
            try:
                await supervisor.engine.mark_read(chat, ids)
            except Exception as exc:
                raise AgentError(ErrorCode.ENGINE_ERROR, str(exc)) from None
            supervisor.ledger.marked_read(ids)
        return ChatReadDone(chat=chat, marked=ids)

    async def op_chat_presence(self, request: ChatPresence) -> Empty:
        request.chat = normalize_chat_id(request.chat)
        supervisor = self._connected(request.session_id)
        try:
            await supervisor.engine.send_presence(request.chat, request.state)
        except Exception as exc:
            raise AgentError(ErrorCode.ENGINE_ERROR, str(exc)) from None
        return Empty()

"""The recent messages of one session, by chat, with each message's delivery status.

One record per message, created when it is *accepted* (``queued``) or received, and
updated in place as it moves on: ``queued`` → ``sent`` (handed to WhatsApp) →
``server`` → ``delivered`` → ``read``, or ``failed``. Receipts may arrive out of order
(read before delivered): a record keeps the furthest status. Bounded
(``ZAPFLEET_HISTORY_SIZE`` per session, oldest dropped first; a message still queued is
never dropped before a sent one). Paged newest first by an opaque cursor (``before``:
the last ``message_id`` of the previous page).

It lives in the agent's memory: after an agent restart or a move, a session's history
starts again from the messages still queued (re-queued from the outbox) — the durable
record of every message is the event stream (``GET /v1/events``).
"""

from __future__ import annotations

from collections import OrderedDict

from contract.protocol import MessageRecord

# receipts may arrive out of order (read before delivered): history keeps the furthest
ACK_RANK = {"queued": 0, "failed": 0, "sent": 1, "server": 2, "delivered": 3, "read": 4}


class MessageLog:
    def __init__(self, size: int) -> None:
        self.size = max(1, size)
        self._records: OrderedDict[str, MessageRecord] = OrderedDict()

    def __len__(self) -> int:
        return len(self._records)

    def add(self, record: MessageRecord) -> MessageRecord:
        """A new message (queued outbound, or received); an id seen before is updated."""
        known = self._records.get(record.message_id)
        if known is not None:
            return known
        self._records[record.message_id] = record
        while len(self._records) > self.size:
            oldest = next(iter(self._records))
            # a queued message is not dropped while one that has moved on could be
            victim = next((k for k, r in self._records.items() if r.status != "queued"), oldest)
            del self._records[victim]
        return record

    def get(self, message_id: str) -> MessageRecord | None:
        return self._records.get(message_id)

    def advance(
        self,
        message_id: str,
        status: str,
        *,
        engine_message_id: str | None = None,
        error: str | None = None,
    ) -> MessageRecord | None:
        """Move an outbound message on (never back); ``failed`` ends it whatever it was."""
        record = self._records.get(message_id)
        if record is None or record.direction != "out":
            return record
        if status == "failed" or ACK_RANK.get(status, 0) >= ACK_RANK.get(record.status, 0):
            record.status = status
        if engine_message_id is not None:
            record.engine_message_id = engine_message_id
        if error is not None:
            record.error = error
        return record

    def page(
        self, *, chat: str | None = None, before: str | None = None, limit: int = 50
    ) -> tuple[list[MessageRecord], str | None]:
        """Newest first: up to ``limit`` records (of ``chat`` only, when given) older than
        ``before``; and the cursor of the next page (None: no more)."""
        records = list(self._records.values())
        if before is not None:
            ids = list(self._records)
            try:
                records = records[: ids.index(before)]
            except ValueError:
                records = []  # an unknown (or dropped) cursor: nothing older is known
        if chat is not None:
            records = [r for r in records if r.peer == chat]
        chosen = records[-limit:][::-1]
        more = len(records) > limit
        return chosen, (chosen[-1].message_id if more and chosen else None)


__all__ = ["ACK_RANK", "MessageLog"]

"""The windows WhatsApp gives edits and revokes are checked when the send is accepted
(node_agent/conversation.py): a closed window is refused up front, never a silent
failure later. The windows are minutes and days, so the check is driven with its clock.
And the new kinds survive in the outbox (real nats-server) like every send."""

from __future__ import annotations

import pytest
from nats.aio.client import Client as NATS

from contract.protocol import (
    EditContent,
    ErrorCode,
    MessageContent,
    PollContent,
    ReactionContent,
    RevokeContent,
    SendMessage,
    TextContent,
)
from node_agent.conversation import EDIT_WINDOW_S, REVOKE_WINDOW_S, Ledger
from node_agent.errors import AgentError
from node_agent.outbox import Outbox
from tests.agent_support import unique
from zapfleet.natsjs import ensure_jetstream


def _ledger_with_one_sent_text() -> tuple[Ledger, float]:
    ledger = Ledger()
    ledger.accepted(
        SendMessage(
            session_id="k", message_id="m_1", to="15550001111", content=TextContent(text="x")
        )
    )
    ledger.on_sent("m_1", "3EB0ONE")
    sent_at = ledger.sent["m_1"].sent_at
    assert sent_at is not None
    return ledger, sent_at


def _edit(target: str = "m_1") -> SendMessage:
    return SendMessage(
        session_id="k",
        message_id="m_e",
        to="15550001111",
        content=EditContent(message_id=target, text="y"),
    )


def _revoke(target: str = "m_1") -> SendMessage:
    return SendMessage(
        session_id="k", message_id="m_r", to="15550001111", content=RevokeContent(message_id=target)
    )


def test_an_edit_inside_the_window_passes_and_one_past_it_is_refused() -> None:
    ledger, sent_at = _ledger_with_one_sent_text()
    ledger.check(_edit(), now=sent_at + EDIT_WINDOW_S - 1)
    ledger.check(_edit("3EB0ONE"), now=sent_at + 1)  # by WhatsApp's id too
    with pytest.raises(AgentError) as refused:
        ledger.check(_edit(), now=sent_at + EDIT_WINDOW_S + 1)
    assert refused.value.code is ErrorCode.EDIT_WINDOW_CLOSED
    assert "900 s" in refused.value.message


def test_a_revoke_inside_the_window_passes_and_one_past_it_is_refused() -> None:
    ledger, sent_at = _ledger_with_one_sent_text()
    ledger.check(_revoke(), now=sent_at + REVOKE_WINDOW_S - 1)
    with pytest.raises(AgentError) as refused:
        ledger.check(_revoke(), now=sent_at + REVOKE_WINDOW_S + 1)
    assert refused.value.code is ErrorCode.REVOKE_WINDOW_CLOSED


def test_a_failed_message_cannot_be_edited_and_the_engine_gets_whatsapps_ids() -> None:
    ledger, _ = _ledger_with_one_sent_text()
    prepared = ledger.for_engine(EditContent(message_id="m_1", text="y"))
    assert prepared == EditContent(message_id="3EB0ONE", text="y")
    ledger.on_failed("m_1")
    with pytest.raises(AgentError) as refused:
        ledger.check(_edit())
    assert refused.value.code is ErrorCode.MESSAGE_NOT_FOUND


async def test_the_outbox_keeps_every_new_kind_for_the_next_agent(nc: NATS) -> None:
    """Polls, edits, revokes, replies and mentions are ordinary sends: an agent that dies
    with them accepted leaves them in the outbox, and the next one restores them intact."""
    await ensure_jetstream(nc.jetstream(), events_max_age_s=3600, node_ttl_s=10)
    session = unique("s")
    contents: list[MessageContent] = [
        PollContent(name="Lunch?", options=["Pizza", "Sushi"], selectable=0),
        EditContent(message_id="m_1", text="fixed"),
        RevokeContent(message_id="m_1"),
        TextContent(text="@1555 re", reply_to="3EB0Q", mentions=["15550001111"]),
        TextContent(text="@all", mention_all=True),
        ReactionContent(message_id="3EB0Q", emoji=""),
    ]
    messages = [
        SendMessage(
            session_id=session, message_id=unique("m"), to="120363000000000001@g.us", content=c
        )
        for c in contents
    ]
    first = await Outbox.open(nc.jetstream())
    for message in messages:
        await first.put(message, None)
    await first.close()
    second = await Outbox.open(nc.jetstream())
    try:
        pending = await second.pending(session, "t")
        assert [m for m, _ in pending] == messages
    finally:
        for message in messages:
            second.forget(session, message.message_id)
        await second.close()


def test_ids_already_sent_are_resolved_when_accepted_for_the_agent_after_a_failover() -> None:
    ledger, _ = _ledger_with_one_sent_text()
    assert ledger.resolved(EditContent(message_id="m_1", text="y")) == EditContent(
        message_id="3EB0ONE", text="y"
    )
    assert ledger.resolved(TextContent(text="re", reply_to="m_1")).reply_to == "3EB0ONE"
    assert ledger.resolved(ReactionContent(message_id="m_1", emoji="")).message_id == "3EB0ONE"
    # another agent's ledger knows nothing: the resolved id goes as it is
    assert Ledger().for_engine(RevokeContent(message_id="3EB0ONE")) == RevokeContent(
        message_id="3EB0ONE"
    )

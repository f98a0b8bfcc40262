"""Outbound pacing (DESIGN §6): a token bucket, a minimum gap per recipient, jitter that
only lengthens waits, a daily cap and a bounded queue that answers "busy, retry after N s"
— and nothing accepted is ever dropped."""

from __future__ import annotations

import itertools
import random
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from nats.aio.client import Client as NATS

from contract.protocol import (
    ConfigureSession,
    ErrorCode,
    Op,
    PacingSettings,
    SendAccepted,
    SendMessage,
    SessionInfo,
    TextContent,
)
from node_agent.pacing import DAY_S, Pacer
from tests.agent_support import AgentClient, EventLog, phone, running_agent, sim_settings, unique


class Clock:
    def __init__(self, start: float = 1_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


def pacer(clock: Clock, **settings: float) -> Pacer:
    return Pacer(
        PacingSettings(**settings),  # type: ignore[arg-type]
        clock=clock,
        wall_clock=lambda: DAY_S * 20_000 + clock.now,
        rng=random.Random(7),
    )


def test_the_defaults_are_the_documented_ones() -> None:
    defaults = PacingSettings()
    assert (defaults.rate_per_s, defaults.burst, defaults.min_gap_per_recipient_s) == (1, 5, 5)
    assert (defaults.jitter, defaults.daily_cap, defaults.enabled) == (0.3, 1000, True)


def test_a_burst_goes_at_once_then_the_rate_holds() -> None:
    clock = Clock()
    p = pacer(clock, rate_per_s=2.0, burst=3, jitter=0.0, min_gap_per_recipient_s=0.0)
    for i in range(3):
        assert p.delay_for(f"r{i}") == 0
        p.record_sent(f"r{i}")
    assert p.delay_for("r9") == pytest.approx(0.5)
    clock.now += 0.5
    assert p.delay_for("r9") == 0


def test_one_recipient_waits_its_minimum_gap_others_do_not() -> None:
    clock = Clock()
    p = pacer(clock, rate_per_s=100.0, burst=100, jitter=0.0, min_gap_per_recipient_s=5.0)
    p.record_sent("ana")
    assert p.recipient_wait("ana") == pytest.approx(5.0)
    assert p.delay_for("ana") == pytest.approx(5.0)
    assert p.delay_for("bob") == 0
    clock.now += 4.0
    assert p.delay_for("ana") == pytest.approx(1.0)


def test_jitter_only_lengthens_waits_and_by_at_most_its_share() -> None:
    clock = Clock()
    p = pacer(clock, rate_per_s=1.0, burst=1, jitter=0.3, min_gap_per_recipient_s=0.0)
    p.record_sent("x")
    waits = [p.delay_for("y") for _ in range(500)]
    assert min(waits) >= 1.0
    assert max(waits) <= 1.3
    assert max(waits) - min(waits) > 0.2  # it does vary


def test_the_daily_cap_stops_sending_until_the_next_day() -> None:
    clock = Clock()
    p = pacer(clock, daily_cap=2, rate_per_s=100.0, burst=100, jitter=0.0)
    p.record_sent("a")
    p.record_sent("b")
    assert p.cap_reached() and p.remaining_today() == 0
    assert p.token_wait() == pytest.approx(DAY_S - clock.now)
    clock.now = DAY_S + 1.0  # the next day (UTC)
    assert not p.cap_reached() and p.remaining_today() == 2


def test_disabled_pacing_never_waits() -> None:
    clock = Clock()
    p = pacer(clock, enabled=False, rate_per_s=0.001, burst=1, daily_cap=1)  # type: ignore[arg-type]
    for _ in range(10):
        assert p.delay_for("same") == 0
        p.record_sent("same")
    assert p.remaining_today() is None


# -- the same rules, end to end through an agent ---------------------------------------------


@pytest.fixture
async def events(nc: NATS) -> AsyncIterator[EventLog]:
    log = EventLog()
    await log.start(nc, "t")
    yield log
    await log.stop()


def send(session_id: str, to: str, body: str) -> SendMessage:
    return SendMessage(
        session_id=session_id, message_id=unique("m"), to=to, content=TextContent(text=body)
    )


async def test_an_agent_paces_sends_by_rate_and_per_recipient_gap(
    nats_url: str, nc: NATS, tmp_path: Path, events: EventLog
) -> None:
    settings = sim_settings(nats_url, tmp_path)
    async with running_agent(settings):
        client = AgentClient(nc, settings.node_id)
        sender, ana, bob = unique("sender"), unique("ana"), unique("bob")
        ana_phone, bob_phone = phone(), phone()
        pacing = PacingSettings(
            rate_per_s=10.0, burst=2, min_gap_per_recipient_s=0.6, jitter=0.0, daily_cap=100
        )
        await client.start(sender, pacing=pacing)
        await client.start(ana)
        await client.start(bob)
        await client.pair(sender, phone())
        await client.pair(ana, ana_phone)
        await client.pair(bob, bob_phone)

        order = [ana_phone, ana_phone, ana_phone, bob_phone, bob_phone]
        messages = [send(sender, to, f"n{i}") for i, to in enumerate(order)]
        for message in messages:
            await client.call(Op.MESSAGE_SEND, message, SendAccepted)
        sent = await events.wait_count(
            lambda e: e.session_id == sender and e.type == "message.sent", 5, timeout_s=10
        )
        at = {e.data["message_id"]: e.ts for e in sent}
        ana_times = sorted(at[m.message_id] for m in messages[:3])
        bob_times = sorted(at[m.message_id] for m in messages[3:])
        # per recipient: at least the minimum gap between two messages
        for times in (ana_times, bob_times):
            assert all(b - a >= 0.59 for a, b in itertools.pairwise(times))
        # bob's first message did not wait behind ana's gaps (order per recipient only)
        assert bob_times[0] < ana_times[1]
        # per session: the bucket refills at 10/s after a burst of 2
        every = sorted(at.values())
        assert every[2] - every[0] >= 0.09
        # and per recipient the order is the order of acceptance
        ana_sent = sorted(messages[:3], key=lambda m: at[m.message_id])
        assert [m.content.text for m in ana_sent] == ["n0", "n1", "n2"]  # type: ignore[union-attr]


async def test_a_full_queue_answers_retry_after_and_keeps_what_it_accepted(
    nats_url: str, nc: NATS, tmp_path: Path, events: EventLog
) -> None:
    settings = sim_settings(nats_url, tmp_path)
    async with running_agent(settings):
        client = AgentClient(nc, settings.node_id)
        session, peer = unique("busy"), unique("peer")
        peer_phone = phone()
        await client.start(peer)
        await client.pair(peer, peer_phone)
        pacing = PacingSettings(
            rate_per_s=50.0, burst=10, queue_size=2, daily_cap=10, min_gap_per_recipient_s=0.1
        )
        await client.start(session, pacing=pacing)
        await client.wait_state(session, "PAIRING")
        # not connected yet: accepted messages wait in the queue
        first = send(session, peer_phone, "one")
        second = send(session, peer_phone, "two")
        for message in (first, second):
            await client.call(Op.MESSAGE_SEND, message, SendAccepted)
        busy = await client.expect_error(
            Op.MESSAGE_SEND, send(session, peer_phone, "three"), ErrorCode.QUEUE_FULL
        )
        assert busy.retry_after_s is not None and busy.retry_after_s >= 1
        status = await client.status(session)
        assert status.queue_depth == 2

        await client.pair(session, phone())
        received = await events.wait_count(
            lambda e: e.session_id == peer and e.type == "message.received", 2
        )
        assert [e.data["text"] for e in received] == ["one", "two"]


async def test_the_daily_cap_refuses_with_retry_after_and_can_be_raised_per_session(
    nats_url: str, nc: NATS, tmp_path: Path, events: EventLog
) -> None:
    settings = sim_settings(nats_url, tmp_path)
    async with running_agent(settings):
        client = AgentClient(nc, settings.node_id)
        session = unique("capped")
        me = phone()
        pacing = PacingSettings(
            rate_per_s=100.0, burst=10, min_gap_per_recipient_s=0, daily_cap=3, jitter=0
        )
        await client.start(session, pacing=pacing)
        await client.pair(session, me)
        for i in range(3):
            await client.call(Op.MESSAGE_SEND, send(session, me, f"m{i}"), SendAccepted)
        capped = await client.expect_error(
            Op.MESSAGE_SEND, send(session, me, "over"), ErrorCode.DAILY_CAP_REACHED
        )
        assert capped.retry_after_s is not None and 0 < capped.retry_after_s <= DAY_S
        await events.wait_count(lambda e: e.session_id == session and e.type == "message.sent", 3)

        raised = PacingSettings(
            rate_per_s=100.0, burst=10, min_gap_per_recipient_s=0, daily_cap=4, jitter=0
        )
        await client.call(
            Op.SESSION_CONFIGURE,
            ConfigureSession(session_id=session, pacing=raised),
            SessionInfo,
        )
        await client.call(Op.MESSAGE_SEND, send(session, me, "fourth"), SendAccepted)
        await client.expect_error(
            Op.MESSAGE_SEND, send(session, me, "fifth"), ErrorCode.DAILY_CAP_REACHED
        )
        await client.expect_error(
            Op.SESSION_CONFIGURE,
            ConfigureSession(session_id=session, pacing=PacingSettings(rate_per_s=0)),
            ErrorCode.INVALID_REQUEST,
        )

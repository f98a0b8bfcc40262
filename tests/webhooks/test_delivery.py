"""Webhook delivery on a real nats-server to a real HTTP receiver: every event arrives,
signed, whatever the receiver or the dispatcher does in between."""

from __future__ import annotations

import asyncio
import itertools
import signal
import time
from collections import Counter

import msgspec
from nats.aio.client import Client as NATS
from prometheus_client import REGISTRY

from contract.protocol import (
    SESSIONS_BUCKET,
    WEBHOOKS_BUCKET,
    EventType,
    SessionRecord,
    SessionSpec,
)
from control_plane.webhooks.config import WebhookConfig, WebhookStore
from control_plane.webhooks.deadletters import DeadLetterStore
from control_plane.webhooks.dispatcher import backoff_delay
from control_plane.webhooks.signing import verify
from tests.conftest import WebhookReceiver
from tests.webhooks.conftest import (
    InProcess,
    publish_events,
    settings_for,
    spawn_dispatcher,
    stop_process,
)

SECRET = "whsec_test_secret_0123456789"


async def configure_tenant(nc: NATS, tenant: str, **config: object) -> None:
    store = WebhookStore(await nc.jetstream().key_value(WEBHOOKS_BUCKET))
    await store.put_tenant(tenant, msgspec.convert(config, WebhookConfig))


async def wait_all(receiver: WebhookReceiver, ids: list[str], timeout_s: float) -> None:
    await asyncio.to_thread(receiver.wait_for_ids, set(ids), timeout_s)


async def test_every_event_is_delivered_signed_with_its_id_and_type(
    js_client: NATS, fresh_nats: str, webhook_receiver: WebhookReceiver
) -> None:
    await configure_tenant(js_client, "acme", urls=[webhook_receiver.url], secret=SECRET)
    dispatcher = InProcess(js_client, settings_for(fresh_nats))
    await dispatcher.start()
    try:
        ids = await publish_events(js_client, 50)
        await wait_all(webhook_receiver, ids, 15)
    finally:
        await dispatcher.stop()
    assert len(webhook_receiver.requests) == 50
    for headers, body in webhook_receiver.requests:
        timestamp, signature = headers["Zapfleet-Timestamp"], headers["Zapfleet-Signature"]
        assert verify(SECRET, body, timestamp, signature)
        assert not verify(SECRET, body.replace(b"message", b"massage"), timestamp, signature)
        assert not verify("another-secret", body, timestamp, signature)
        assert not verify(SECRET, body, timestamp, signature, now=int(timestamp) + 301)
        assert headers["Zapfleet-Event-Id"] in ids
        assert headers["Zapfleet-Event-Type"] == "message.received"
        assert headers["Zapfleet-Delivery-Attempt"] == "1"


async def test_a_receiver_that_is_down_for_a_while_gets_every_event_once_it_is_back(
    js_client: NATS, fresh_nats: str, webhook_receiver: WebhookReceiver
) -> None:
    await configure_tenant(js_client, "acme", urls=[webhook_receiver.url])
    dispatcher = InProcess(js_client, settings_for(fresh_nats))
    running = await dispatcher.start()
    try:
        first = await publish_events(js_client, 20)
        await wait_all(webhook_receiver, first, 10)
        webhook_receiver.go_down()
        during = await publish_events(js_client, 200)
        await asyncio.sleep(3)  # several retry rounds hit a closed port
        assert not webhook_receiver.ids() & set(during)
        # the waiting deliveries are in the destination's backlog, not in the shared
        # consumer: nothing is handed out and unfinished there
        await running.sample_metrics()
        assert REGISTRY.get_sample_value("zapfleet_webhook_ack_pending") == 0
        assert REGISTRY.get_sample_value("zapfleet_webhook_backlog") == 200
        assert REGISTRY.get_sample_value("zapfleet_webhook_backlog_destinations") == 1
        webhook_receiver.come_up()
        after = await publish_events(js_client, 20)
        await wait_all(webhook_receiver, first + during + after, 20)
    finally:
        await dispatcher.stop()


async def test_a_receiver_failing_30_percent_of_calls_still_gets_every_event(
    js_client: NATS, fresh_nats: str, webhook_receiver: WebhookReceiver
) -> None:
    await configure_tenant(js_client, "acme", urls=[webhook_receiver.url])
    webhook_receiver.fail_ratio = 0.3
    dispatcher = InProcess(js_client, settings_for(fresh_nats))
    await dispatcher.start()
    try:
        ids = await publish_events(js_client, 500)
        await wait_all(webhook_receiver, ids, 30)
    finally:
        await dispatcher.stop()
    assert webhook_receiver.calls > 600  # the failures really happened and were retried
    attempts = Counter(h["Zapfleet-Delivery-Attempt"] for h, _ in webhook_receiver.requests)
    assert attempts["1"] < 450 and attempts["2"] > 50


async def test_a_dispatcher_killed_mid_flight_loses_nothing_after_restart(
    js_client: NATS, fresh_nats: str, webhook_receiver: WebhookReceiver
) -> None:
    await configure_tenant(js_client, "acme", urls=[webhook_receiver.url])
    webhook_receiver.delay_s = 0.02
    settings = settings_for(fresh_nats, webhook_ack_wait_s=2.0)
    ids = await publish_events(js_client, 1000)
    process = spawn_dispatcher("webhooks-killed", settings)
    try:
        deadline = time.monotonic() + 30
        while len(webhook_receiver.ids()) < 150:
            assert process.poll() is None, "the dispatcher exited"
            assert time.monotonic() < deadline, "the dispatcher delivered nothing"
            await asyncio.sleep(0.02)
        process.send_signal(signal.SIGKILL)
        process.wait(5)
        delivered_before_restart = len(webhook_receiver.ids())
        assert delivered_before_restart < 1000, "the kill came too late to be mid-flight"
        process = spawn_dispatcher("webhooks-restarted", settings)
        await wait_all(webhook_receiver, ids, 40)
    finally:
        stop_process(process)


async def test_several_dispatchers_share_the_work_and_each_event_arrives(
    js_client: NATS, fresh_nats: str, webhook_receiver: WebhookReceiver
) -> None:
    await configure_tenant(js_client, "acme", urls=[webhook_receiver.url])
    webhook_receiver.delay_s = 0.005
    settings = settings_for(fresh_nats)
    first, second = InProcess(js_client, settings), InProcess(js_client, settings)
    await first.start()
    await second.start()
    try:
        ids = await publish_events(js_client, 300)
        await wait_all(webhook_receiver, ids, 20)
    finally:
        await first.stop()
        await second.stop()
    counts = Counter(e["id"] for e in webhook_receiver.events)
    assert set(counts) == set(ids)
    assert sum(counts.values()) - len(ids) <= 5  # shared, not each dispatcher sending all


async def test_a_busy_healthy_receiver_gets_a_burst_past_half_the_buffer_without_deferrals(
    js_client: NATS, fresh_nats: str, webhook_receiver: WebhookReceiver
) -> None:
    """A burst to one fast destination fills more than half of the buffer. Its events wait
    a moment for a slot and go: none is put back. Putting them back at once (what the
    dispatcher did) sent every event of a busy destination round twice — found by
    ``./dev bench before_after``: half the throughput, twice the CPU per delivery."""
    await configure_tenant(js_client, "burst", urls=[webhook_receiver.url])
    settings = settings_for(
        fresh_nats, webhook_max_buffered=40, webhook_concurrency_per_destination=4
    )

    def deferred() -> float:
        return REGISTRY.get_sample_value("zapfleet_webhook_deferred_total") or 0.0

    before = deferred()
    ids = await publish_events(js_client, 400, tenant="burst")  # waiting: pulled at once
    dispatcher = InProcess(js_client, settings)
    await dispatcher.start()
    try:
        await wait_all(webhook_receiver, ids, 30)
    finally:
        await dispatcher.stop()
    assert deferred() == before
    counts = Counter(e["id"] for e in webhook_receiver.events)
    assert set(counts) == set(ids) and max(counts.values()) == 1


async def test_after_max_attempts_the_event_is_a_dead_letter_and_a_redrive_delivers_it(
    js_client: NATS, fresh_nats: str, webhook_receiver: WebhookReceiver
) -> None:
    await configure_tenant(js_client, "acme", urls=[webhook_receiver.url])
    webhook_receiver.status = 500
    dispatcher = InProcess(js_client, settings_for(fresh_nats, webhook_max_attempts=3))
    await dispatcher.start()
    letters = DeadLetterStore(js_client, js_client.jetstream())
    try:
        ids = await publish_events(js_client, 3)
        deadline = time.monotonic() + 15
        while (await letters.page("acme"))[0].__len__() < 3:
            assert time.monotonic() < deadline, "no dead letters"
            await asyncio.sleep(0.1)
        page, more = await letters.page("acme")
        assert more == 0
        assert {letter.event.id for _, letter in page} == set(ids)
        assert all(letter.attempts == 3 and letter.error == "HTTP 500" for _, letter in page)
        assert webhook_receiver.calls == 9  # exactly max attempts each, no more
        assert (await letters.page("other-tenant"))[0] == []

        webhook_receiver.status = 200
        first_seq, first = page[0]
        assert await letters.redrive("other-tenant", first_seq.seq) is None  # not theirs
        assert await letters.redrive("acme", first_seq.seq) is not None
        await wait_all(webhook_receiver, [first.event.id], 10)
        assert await letters.redrive_all("acme") == (2, 0)
        await wait_all(webhook_receiver, ids, 10)
        assert (await letters.page("acme"))[0] == []
        assert await letters.depth() == 0
    finally:
        await dispatcher.stop()


def test_the_backoff_doubles_from_the_base_up_to_its_ceiling_plus_a_little_jitter() -> None:
    for attempt, law in ((1, 0.1), (2, 0.2), (3, 0.4), (4, 0.8), (5, 1.0), (9, 1.0)):
        delays = [backoff_delay(attempt, 0.1, 1.0) for _ in range(200)]
        assert all(law <= d <= law * 1.1 for d in delays), (attempt, min(delays), max(delays))
        assert len(set(delays)) > 1  # jittered: retries of many events do not line up


async def test_a_failing_receiver_is_retried_with_exponential_backoff(
    js_client: NATS, fresh_nats: str, webhook_receiver: WebhookReceiver
) -> None:
    """Guarantee: retries back off exponentially — the gap before attempt n+1 is at
    least base·2^(n-1), so a receiver in trouble is not hammered at a constant rate.
    (Lower bounds only: a slow machine makes gaps longer, never shorter.)"""
    await configure_tenant(js_client, "acme", urls=[webhook_receiver.url])
    webhook_receiver.status = 500
    base = 0.1
    dispatcher = InProcess(
        js_client,
        settings_for(
            fresh_nats,
            webhook_max_attempts=5,
            webhook_backoff_base_s=base,
            webhook_backoff_max_s=60.0,
        ),
    )
    await dispatcher.start()
    try:
        await publish_events(js_client, 1)
        deadline = time.monotonic() + 20
        while webhook_receiver.calls < 5:
            assert time.monotonic() < deadline, f"{webhook_receiver.calls} attempts in 20 s"
            await asyncio.sleep(0.05)
    finally:
        await dispatcher.stop()
    times = webhook_receiver.call_times
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    assert len(gaps) == 4
    floors = [base * 2**n for n in range(4)]  # 0.1, 0.2, 0.4, 0.8
    assert all(gap >= floor for gap, floor in zip(gaps, floors, strict=True)), (
        f"gaps between attempts {[round(g, 3) for g in gaps]} s, at least {floors} s expected"
    )


async def test_an_ssrf_target_goes_straight_to_the_dead_letters_without_a_request(
    js_client: NATS, fresh_nats: str, webhook_receiver: WebhookReceiver
) -> None:
    # 127.0.0.2 is loopback but not in the allowed 127.0.0.1/32
    forbidden = webhook_receiver.url.replace("127.0.0.1", "127.0.0.2")
    await configure_tenant(js_client, "acme", urls=[forbidden, webhook_receiver.url])
    dispatcher = InProcess(js_client, settings_for(fresh_nats))
    await dispatcher.start()
    letters = DeadLetterStore(js_client, js_client.jetstream())
    try:
        ids = await publish_events(js_client, 2)
        await wait_all(webhook_receiver, ids, 10)
        deadline = time.monotonic() + 10
        while len((await letters.page("acme"))[0]) < 2:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
    finally:
        await dispatcher.stop()
    page, _ = await letters.page("acme")
    assert all(letter.attempts == 1 for _, letter in page)
    assert all("loopback" in letter.error and "SSRF" in letter.error for _, letter in page)
    assert webhook_receiver.calls == 2  # only the allowed URL was called


async def test_session_webhook_overrides_the_tenant_and_filters_by_type_and_changes_apply_live(
    js_client: NATS, fresh_nats: str, webhook_receiver: WebhookReceiver
) -> None:
    tenant_receiver = WebhookReceiver()
    try:
        await configure_tenant(js_client, "acme", urls=[tenant_receiver.url], secret=SECRET)
        sessions = await js_client.jetstream().key_value(SESSIONS_BUCKET)
        record = SessionRecord(
            spec=SessionSpec(session_id="vip", tenant="acme"),
            webhook_url=webhook_receiver.url,
            webhook_events=["message.*"],
        )
        await sessions.put("vip", msgspec.json.encode(record))
        dispatcher = InProcess(js_client, settings_for(fresh_nats))
        await dispatcher.start()
        try:
            vip = await publish_events(js_client, 3, session_id="vip")
            status = await publish_events(
                js_client, 2, session_id="vip", event_type=EventType.SESSION_STATUS
            )
            other = await publish_events(js_client, 3, session_id="plain")
            await wait_all(webhook_receiver, vip, 10)
            await wait_all(tenant_receiver, other, 10)
            # the session's webhook has no secret of its own: the tenant's signs it
            headers, body = webhook_receiver.requests[0]
            assert verify(
                SECRET, body, headers["Zapfleet-Timestamp"], headers["Zapfleet-Signature"]
            )

            # a config change applies to the next event, without a restart
            record.webhook_url = None
            await sessions.put("vip", msgspec.json.encode(record))
            await asyncio.sleep(0.3)
            moved = await publish_events(js_client, 2, session_id="vip")
            await wait_all(tenant_receiver, moved, 10)
            await configure_tenant(js_client, "acme", urls=[tenant_receiver.url], enabled=False)
            await asyncio.sleep(0.3)
            silenced = await publish_events(js_client, 2, session_id="plain")
            marker = await publish_events(js_client, 1, tenant="zeta")  # nobody wants it
            await asyncio.sleep(1.0)
        finally:
            await dispatcher.stop()
        assert not webhook_receiver.ids() & set(status + other + moved)
        assert not tenant_receiver.ids() & set(vip + silenced + marker)
    finally:
        tenant_receiver.close()


async def test_concurrency_is_bounded_per_destination_and_globally(
    js_client: NATS, fresh_nats: str, webhook_receiver: WebhookReceiver
) -> None:
    second = WebhookReceiver()
    try:
        await configure_tenant(js_client, "acme", urls=[webhook_receiver.url])
        await configure_tenant(js_client, "beta", urls=[second.url])
        webhook_receiver.delay_s = second.delay_s = 0.05
        settings = settings_for(
            fresh_nats, webhook_concurrency=5, webhook_concurrency_per_destination=3
        )
        dispatcher = InProcess(js_client, settings)
        await dispatcher.start()
        try:
            ids_a = await publish_events(js_client, 40, tenant="acme")
            ids_b = await publish_events(js_client, 40, tenant="beta")
            await wait_all(webhook_receiver, ids_a, 15)
            await asyncio.to_thread(second.wait_for_ids, set(ids_b), 15)
        finally:
            await dispatcher.stop()
        assert webhook_receiver.max_active == 3 and second.max_active <= 3
        assert webhook_receiver.max_active + second.max_active >= 4  # both ran at once ...
        # ... within the global bound of 5 (checked through the sum of the two peaks)
        assert webhook_receiver.max_active + second.max_active <= 6
    finally:
        second.close()


async def test_past_its_bound_a_backlog_sends_events_to_the_dead_letters_with_the_reason(
    js_client: NATS, fresh_nats: str, webhook_receiver: WebhookReceiver
) -> None:
    await configure_tenant(js_client, "acme", urls=[webhook_receiver.url])
    webhook_receiver.go_down()
    dispatcher = InProcess(js_client, settings_for(fresh_nats, webhook_max_backlog=5))
    running = await dispatcher.start()
    letters = DeadLetterStore(js_client, js_client.jetstream())
    try:
        ids = await publish_events(js_client, 20)
        deadline = time.monotonic() + 15
        while len((await letters.page("acme"))[0]) < 15:
            assert time.monotonic() < deadline, "no dead letters past the bound"
            await asyncio.sleep(0.1)
        page, _ = await letters.page("acme")
        assert len(page) == 15 and all(letter.reason == "backlog_full" for _, letter in page)
        await running.sample_metrics()
        assert REGISTRY.get_sample_value("zapfleet_webhook_backlog") == 5  # 5 + 15: all 20
        webhook_receiver.come_up()
        parked = set(ids) - {letter.event.id for _, letter in page}
        await wait_all(webhook_receiver, sorted(parked), 15)
        assert await letters.redrive_all("acme") == (15, 0)
        await wait_all(webhook_receiver, ids, 15)
    finally:
        await dispatcher.stop()

"""Events to JetStream ``ZF_EVENTS``: stored with ``Nats-Msg-Id`` (so a retry is
deduplicated), published from a buffer that never blocks the emitter, retried when a
publish fails, and in order. Runs on its own nats-server: it deletes the stream."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import msgspec
import nats
import pytest
import pytest_asyncio
from nats.aio.client import Client as NATS
from nats.js.api import DeliverPolicy

from contract.protocol import EVENTS_STREAM, Event, EventType, encode
from node_agent.events import EVENTS_FAILED, EventPublisher
from zapfleet.devservers import ChildProcess, start_nats
from zapfleet.natsjs import ensure_jetstream


@pytest.fixture(scope="module")
def own_nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChildProcess]:
    root = tmp_path_factory.mktemp("events-nats")
    server = start_nats(root / "data", log_path=root / "nats.log")
    yield server
    server.stop()


@pytest_asyncio.fixture(loop_scope="session")
async def js_client(own_nats: ChildProcess) -> AsyncIterator[NATS]:
    client = await nats.connect(f"nats://127.0.0.1:{own_nats.port}")
    await ensure_jetstream(client.jetstream(), events_max_age_s=3600, node_ttl_s=10)
    yield client
    await client.close()


async def stored(nc: NATS, subject: str) -> list[Event]:
    js = nc.jetstream()
    info = await js.stream_info(EVENTS_STREAM)
    sub = await js.subscribe(
        subject, stream=EVENTS_STREAM, ordered_consumer=True, deliver_policy=DeliverPolicy.ALL
    )
    found: list[Event] = []
    try:
        while True:
            msg = await sub.next_msg(timeout=1)
            found.append(msgspec.json.decode(msg.data, type=Event))
    except nats.errors.TimeoutError:
        pass
    finally:
        await sub.unsubscribe()
    assert info.state.messages >= len(found)
    return found


async def test_each_event_is_stored_once_under_its_own_id(js_client: NATS) -> None:
    publisher = EventPublisher(js_client.jetstream(), "node-e1")
    publisher.start()
    event = publisher.emit(EventType.MESSAGE_SENT, "tenant1", "s1", {"message_id": "m1"})
    assert await publisher.flush(5)
    # a retried publish of the same event (same Nats-Msg-Id) is deduplicated by the stream
    ack = await js_client.jetstream().publish(
        "zf.events.tenant1.s1.message.sent", encode(event), headers={"Nats-Msg-Id": event.id}
    )
    assert ack.duplicate
    events = await stored(js_client, "zf.events.tenant1.s1.>")
    assert [e.id for e in events] == [event.id]
    assert events[0].node_id == "node-e1" and events[0].data == {"message_id": "m1"}
    await publisher.close()


async def test_publishes_that_fail_are_retried_in_order_without_blocking_the_emitter(
    js_client: NATS,
) -> None:
    js = js_client.jetstream()
    await js.delete_stream(EVENTS_STREAM)  # every publish now fails (no stream answers)
    publisher = EventPublisher(js, "node-e2", window=8)
    publisher.start()
    failed_before = EVENTS_FAILED._value.get()
    started = time.perf_counter()
    emitted = [
        publisher.emit(EventType.SESSION_STATUS, "tenant2", "s2", {"n": i}) for i in range(200)
    ]
    assert time.perf_counter() - started < 0.1  # emit only appends to the buffer
    await asyncio.sleep(1.0)
    assert publisher.pending == 200
    assert EVENTS_FAILED._value.get() > failed_before

    await ensure_jetstream(js, events_max_age_s=3600, node_ttl_s=10)
    assert await publisher.flush(15), f"{publisher.pending} events still pending"
    events = await stored(js_client, "zf.events.tenant2.s2.>")
    assert [e.data["n"] for e in events] == list(range(200))
    assert [e.id for e in events] == [e.id for e in emitted]
    await publisher.close()


async def test_a_full_buffer_gives_up_superseded_status_events_first(js_client: NATS) -> None:
    publisher = EventPublisher(js_client.jetstream(), "node-e3", max_buffer=3)
    # not started: nothing drains, so the buffer fills
    publisher.emit(EventType.SESSION_STATUS, "tenant3", "s3", {"state": "STARTING"})
    publisher.emit(EventType.MESSAGE_SENT, "tenant3", "s3", {"message_id": "a"})
    publisher.emit(EventType.SESSION_STATUS, "tenant3", "s3", {"state": "CONNECTED"})
    publisher.emit(EventType.MESSAGE_RECEIVED, "tenant3", "s3", {"message_id": "b"})
    publisher.emit(EventType.MESSAGE_ACK, "tenant3", "s3", {"message_id": "a"})
    kinds = [(e.type, e.data.get("state")) for e in publisher._buffer]
    assert kinds == [
        (EventType.MESSAGE_SENT, None),
        (EventType.MESSAGE_RECEIVED, None),
        (EventType.MESSAGE_ACK, None),
    ]
    # nothing droppable is left: messages and receipts are kept beyond the soft bound
    publisher.emit(EventType.MESSAGE_ACK, "tenant3", "s3", {"message_id": "c"})
    assert publisher.pending == 4


def test_event_ids_sort_by_creation_time(tmp_path: Path) -> None:
    from node_agent.events import new_event_id

    ids = [new_event_id() for _ in range(1000)]
    assert len(set(ids)) == 1000
    assert ids == sorted(ids)

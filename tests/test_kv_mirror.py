"""The one way a process follows a KV bucket into memory (zapfleet/_mirror.py), on a real
nats-server: initial load then changes, readiness, a follower added late, a follower that
fails on an entry, a watch whose consumer vanished (replaced, not left quiet), a NATS
restart, and a stop that leaves no consumer behind."""

from __future__ import annotations

import asyncio
from pathlib import Path

import nats
from nats.aio.client import Client as NATS
from nats.js.api import KeyValueConfig
from nats.js.kv import KeyValue

from contract.protocol import SessionRecord, SessionSpec, encode
from control_plane.session_index import SessionIndex
from control_plane.store import SessionStore
from tests.agent_support import unique
from tests.reliability.harness import until
from zapfleet._mirror import Change, KVMirror
from zapfleet.devservers import start_nats


class Book:
    """A follower: the bucket's current values, and what it was told."""

    def __init__(self) -> None:
        self.values: dict[str, bytes] = {}
        self.resets = 0
        self.initial = 0

    def change(self, change: Change) -> None:
        self.initial += change.initial
        if change.deleted:
            self.values.pop(change.key, None)
        else:
            assert change.value is not None
            self.values[change.key] = change.value

    def reset(self) -> None:
        self.resets += 1

    def loaded(self, keys: set[str], _revision: int) -> None:
        for key in [k for k in self.values if k not in keys]:
            del self.values[key]


async def _bucket(nc: NATS) -> KeyValue:
    name = unique("mirror").replace("-", "_")
    return await nc.jetstream().create_key_value(KeyValueConfig(bucket=name, history=2))


async def _consumers(kv: KeyValue, nc: NATS) -> int:
    info = await nc.jetstream().stream_info(f"KV_{kv._name}")
    return info.state.consumer_count


def _follow(mirror: KVMirror, book: Book) -> asyncio.Event:
    return mirror.follow(book.change, on_reset=book.reset, on_loaded=book.loaded)


async def test_loads_then_follows_and_a_late_follower_gets_everything(nc: NATS) -> None:
    kv = await _bucket(nc)
    await kv.put("a", b"1")
    await kv.put("b", b"2")
    await kv.delete("b")
    first, late = Book(), Book()
    mirror = KVMirror(kv, "test")
    _follow(mirror, first)
    try:
        assert await mirror.start(wait_s=10)
        assert first.values == {"a": b"1"}
        await kv.put("c", b"3")
        await until(lambda: first.values.get("c") == b"3", 10, "a live change")
        assert first.initial == 2  # "a" and the delete of "b"; "c" came live

        ready = _follow(mirror, late)
        await asyncio.wait_for(ready.wait(), 10)
        assert late.values == {"a": b"1", "c": b"3"}
        assert first.values == late.values
    finally:
        await mirror.stop()
    assert await _consumers(kv, nc) == 0  # stop deleted the consumer at once


async def test_a_follower_failing_on_an_entry_does_not_stop_the_mirror(nc: NATS) -> None:
    kv = await _bucket(nc)
    book = Book()

    def picky(change: Change) -> None:
        if change.value == b"bad":
            raise ValueError("undecodable")
        book.change(change)

    mirror = KVMirror(kv, "test")
    mirror.follow(picky)
    try:
        await mirror.start(wait_s=10)
        await kv.put("x", b"bad")
        await kv.put("y", b"good")
        await until(lambda: book.values.get("y") == b"good", 10, "the entry after a bad one")
        assert mirror.passes == 1
    finally:
        await mirror.stop()


async def test_a_watch_whose_consumer_vanished_is_replaced_and_catches_up(nc: NATS) -> None:
    """What a NATS restart does to an ephemeral consumer, done by hand: the consumer is
    deleted on the server. The watch would go quiet; the mirror's liveness check notices,
    reloads, and a key deleted meanwhile is gone from memory."""
    kv = await _bucket(nc)
    await kv.put("a", b"1")
    await kv.put("b", b"2")
    book = Book()
    mirror = KVMirror(kv, "test", check_s=0.5)
    _follow(mirror, book)
    try:
        await mirror.start(wait_s=10)
        js = nc.jetstream()
        stream = f"KV_{kv._name}"
        names = [c.name for c in await js._jsm.consumers_info(stream)]
        assert len(names) == 1
        await js.delete_consumer(stream, names[0])
        await kv.purge("b")  # no delete marker kept: only a reload can tell
        await kv.put("c", b"3")
        await until(lambda: book.values == {"a": b"1", "c": b"3"}, 10, "caught up")
        assert mirror.reloads >= 1
        assert book.resets >= 2  # the first load and the reload
    finally:
        await mirror.stop()


async def test_after_a_nats_restart_changes_arrive_again(tmp_path: Path) -> None:
    server = start_nats(tmp_path / "nats", log_path=tmp_path / "nats.log")
    client = await nats.connect(
        f"nats://127.0.0.1:{server.port}", max_reconnect_attempts=-1, reconnect_time_wait=0.1
    )
    try:
        kv = await _bucket(client)
        await kv.put("a", b"1")
        book = Book()
        mirror = KVMirror(kv, "test")
        _follow(mirror, book)
        await mirror.start(wait_s=10)
        server.kill()
        await asyncio.sleep(0.5)
        server = start_nats(tmp_path / "nats", port=server.port, log_path=tmp_path / "n2.log")
        await until(lambda: client.is_connected, 20, "reconnected")
        await until(lambda: mirror.passes >= 2, 20, "a new pass after the reconnect")

        async def put_after_restart() -> bool:
            try:
                await kv.put("b", b"2")
            except Exception:
                return False  # JetStream still recovering
            return True

        await until(put_after_restart, 20, "a put after the restart", interval_s=0.2)
        await until(lambda: book.values.get("b") == b"2", 10, "a change after the restart")
        await mirror.stop()
    finally:
        await client.close()
        server.stop()


async def test_the_session_index_forgets_a_record_purged_while_its_watch_was_dead(
    nc: NATS,
) -> None:
    """The index's rules ride on the mirror: after a reload, a record the reload did not
    deliver (purged while nobody watched: no delete marker) is forgotten; the others
    stay, and a record written meanwhile arrives."""
    kv = await _bucket(nc)
    store = SessionStore(kv)

    def record(name: str) -> SessionRecord:
        return SessionRecord(spec=SessionSpec(session_id=name, tenant="t", engine="sim"))

    for name in ("kept", "purged"):
        await kv.put(name, encode(record(name)))
    index = SessionIndex(store, KVMirror(kv, "test", check_s=0.5))
    try:
        await index.start()
        assert {r.spec.session_id for r in index.records()} == {"kept", "purged"}
        js = nc.jetstream()
        stream = f"KV_{kv._name}"
        (consumer,) = [c.name for c in await js._jsm.consumers_info(stream)]
        await js.delete_consumer(stream, consumer)
        await kv.purge("purged")
        await kv.put("late", encode(record("late")))
        await until(lambda: index.get("purged") is None, 10, "the purged record forgotten")
        await until(lambda: index.get("late") is not None, 10, "the new record")
        assert index.get("kept") is not None
        assert index.find("t", "purged") is None
        assert index.mirror.reloads >= 1
    finally:
        await index.stop()

"""The node agent with the sim engine, on a real nats-server: pairing (QR and phone code),
messages between sessions on different agents, receipts, number checks, media, faults,
the watchdog, the circuit breaker and resuming after a restart."""

from __future__ import annotations

import base64
import hashlib
import struct
import threading
import time
import zlib
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client as NATS

from contract.protocol import (
    CheckNumbers,
    Empty,
    ErrorCode,
    History,
    HistoryRequest,
    ImageContent,
    Media,
    NodeInfo,
    NumberStatuses,
    Op,
    PairCode,
    PairCodeRequest,
    QrCode,
    SendAccepted,
    SendMessage,
    SessionInfo,
    SessionList,
    SessionRef,
    TextContent,
)
from node_agent.engines.sim import Faults, inject_faults, link
from tests.agent_support import (
    AgentClient,
    EventLog,
    connected,
    phone,
    running_agent,
    sim_settings,
    unique,
)
from zapfleet.devservers import free_port


@pytest.fixture
async def events(nc: NATS) -> AsyncIterator[EventLog]:
    log = EventLog()
    await log.start(nc, "t")
    yield log
    await log.stop()


def tiny_png() -> bytes:
    """A valid 1x1 PNG (so libmagic recognises it)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00\x00\x00\x00"))
        + chunk(b"IEND", b"")
    )


def text(session_id: str, to: str, body: str, message_id: str | None = None) -> SendMessage:
    return SendMessage(
        session_id=session_id,
        message_id=message_id or unique("m"),
        to=to,
        content=TextContent(text=body),
    )


async def test_qr_codes_rotate_like_whatsapp_and_a_scan_connects_the_session(
    nats_url: str, nc: NATS, tmp_path: Path, events: EventLog
) -> None:
    settings = sim_settings(nats_url, tmp_path, sim_qr_first_s=0.8, sim_qr_next_s=0.3)
    async with running_agent(settings):
        client = AgentClient(nc, settings.node_id)
        session = unique("qr")
        started = await client.start(session)
        assert started.state in ("STARTING", "PAIRING")

        first = await events.wait_for(lambda e: e.session_id == session and e.type == "session.qr")
        qrs = await events.wait_count(
            lambda e: e.session_id == session and e.type == "session.qr", 3, timeout_s=5
        )
        # the first code lives longer than the next ones, and each code is new
        first_life = first.data["expires_at"] - first.ts
        next_life = qrs[1].data["expires_at"] - qrs[1].ts
        assert first_life == pytest.approx(0.8, abs=0.1)
        assert next_life == pytest.approx(0.3, abs=0.1)
        assert len({e.data["qr"] for e in qrs}) == 3
        assert qrs[1].ts - first.ts == pytest.approx(0.8, abs=0.25)

        # an expired code is refused; the current one (via RPC) links the phone
        stale = await link(nc, first.data["qr"], phone())
        assert not stale.ok and "expired" in (stale.error or "")
        number = phone()
        info = await client.pair(session, number)
        assert info.phone == number
        assert info.reconnect_attempts == 0

        paired = await events.wait_for(
            lambda e: e.session_id == session and e.type == "session.paired"
        )
        assert paired.data["phone"] == number
        states = events.states(session)
        assert states[0] == "STARTING" and "PAIRING" in states and states[-1] == "CONNECTED"
        with pytest.raises(Exception, match="not_pairing"):
            await client.call(Op.SESSION_QR, SessionRef(session_id=session), QrCode)


async def test_a_phone_code_pairs_only_the_phone_it_was_issued_for(
    nats_url: str, nc: NATS, tmp_path: Path
) -> None:
    settings = sim_settings(nats_url, tmp_path)
    async with running_agent(settings):
        client = AgentClient(nc, settings.node_id)
        session = unique("code")
        await client.start(session)
        await client.wait_state(session, "PAIRING")
        number = phone()
        reply = await client.call(
            Op.SESSION_PAIR_CODE, PairCodeRequest(session_id=session, phone="+" + number), PairCode
        )
        assert len(reply.code) == 9 and reply.code[4] == "-"

        wrong = await link(nc, reply.code, phone(), session_id=session)
        assert not wrong.ok and "another phone" in (wrong.error or "")
        right = await link(nc, reply.code, number, session_id=session)
        assert right.ok, right.error
        info = await client.wait_state(session, "CONNECTED")
        assert info.phone == number


async def test_messages_travel_between_sessions_on_two_agents_with_every_receipt(
    nats_url: str, nc: NATS, tmp_path: Path, events: EventLog
) -> None:
    settings_a = sim_settings(nats_url, tmp_path / "a")
    settings_b = sim_settings(nats_url, tmp_path / "b")
    async with running_agent(settings_a), running_agent(settings_b):
        agent_a = AgentClient(nc, settings_a.node_id)
        agent_b = AgentClient(nc, settings_b.node_id)
        alice, bob = unique("alice"), unique("bob")
        alice_phone, bob_phone = phone(), phone()
        await agent_a.start(alice)
        await agent_b.start(bob)
        await agent_a.pair(alice, alice_phone)
        await agent_b.pair(bob, bob_phone)

        message = text(alice, f"+{bob_phone}", "hello bob")
        accepted = await agent_a.call(Op.MESSAGE_SEND, message, SendAccepted)
        assert accepted.message_id == message.message_id

        def of_message(status: str) -> Any:
            return lambda e: (
                e.type == "message.ack"
                and e.data.get("message_id") == message.message_id
                and e.data["status"] == status
            )

        for status in ("server", "delivered", "read"):
            await events.wait_for(of_message(status))
        received = await events.wait_for(
            lambda e: e.session_id == bob and e.type == "message.received"
        )
        assert received.data["text"] == "hello bob"
        assert received.data["from"] == alice_phone

        # queued -> sent -> acks, in that order, for the sender
        kinds = [
            (e.type, e.data.get("status"))
            for e in events.of(alice)
            if e.data.get("message_id") == message.message_id
        ]
        assert kinds == [
            ("message.queued", None),
            ("message.sent", None),
            ("message.ack", "server"),
            ("message.ack", "delivered"),
            ("message.ack", "read"),
        ]

        sent = await agent_a.call(Op.HISTORY_LIST, HistoryRequest(session_id=alice), History)
        got = await agent_b.call(Op.HISTORY_LIST, HistoryRequest(session_id=bob), History)
        assert sent.messages[0].message_id == message.message_id
        assert sent.messages[0].status == "read"
        assert (got.messages[0].direction, got.messages[0].text) == ("in", "hello bob")


async def test_a_message_for_an_offline_recipient_waits_on_the_server_until_it_connects(
    nats_url: str, nc: NATS, tmp_path: Path, events: EventLog
) -> None:
    """WhatsApp keeps what it cannot hand over: a recipient whose agent is down (a
    restart, a failover) gets its messages when it connects again, once each and in
    order, and only then the sender sees the second tick. (The sim dropped them once:
    a reply sent across a ``kill -9`` was "sent" and never received.)"""
    settings_a = sim_settings(nats_url, tmp_path / "a")
    settings_b = sim_settings(nats_url, tmp_path / "b")
    agent_a = AgentClient(nc, settings_a.node_id)
    agent_b = AgentClient(nc, settings_b.node_id)
    alice, bob = unique("alice"), unique("bob")
    alice_phone, bob_phone = phone(), phone()
    async with running_agent(settings_a):
        await agent_a.start(alice)
        await agent_a.pair(alice, alice_phone)
        async with running_agent(settings_b):
            await agent_b.start(bob)
            await agent_b.pair(bob, bob_phone)
        # bob's agent is gone; its session stays assigned there
        sends = [text(alice, bob_phone, f"while you were away {n}") for n in range(3)]
        for message in sends:
            await agent_a.call(Op.MESSAGE_SEND, message, SendAccepted)
        ids = {m.message_id for m in sends}
        await events.wait_count(
            lambda e: (
                e.type == "message.ack"
                and e.data["message_id"] in ids
                and e.data["status"] == "server"
            ),
            3,
        )
        assert not [e for e in events.of(bob) if e.type == "message.received"]
        assert not [
            e
            for e in events.of(alice)
            if e.type == "message.ack" and e.data["status"] == "delivered"
        ]
        async with running_agent(settings_b):
            await agent_b.wait_state(bob, "CONNECTED")
            received = await events.wait_count(
                lambda e: e.session_id == bob and e.type == "message.received", 3
            )
            assert [e.data["text"] for e in received] == [
                f"while you were away {n}" for n in range(3)
            ]
            delivered = await events.wait_count(
                lambda e: (
                    e.type == "message.ack"
                    and e.data["message_id"] in ids
                    and e.data["status"] == "delivered"
                ),
                3,
            )
            assert {e.data["message_id"] for e in delivered} == ids
            # handed over once: a further message arrives live, and nothing twice
            live = text(alice, bob_phone, "and now live")
            await agent_a.call(Op.MESSAGE_SEND, live, SendAccepted)
            await events.wait_for(
                lambda e: (
                    e.session_id == bob
                    and e.type == "message.received"
                    and e.data["text"] == "and now live"
                )
            )
            texts = [e.data["text"] for e in events.of(bob) if e.type == "message.received"]
            assert len(texts) == len(set(texts)) == 4


async def test_is_on_whatsapp_reports_registered_sim_numbers(
    nats_url: str, nc: NATS, tmp_path: Path
) -> None:
    settings = sim_settings(nats_url, tmp_path)
    async with running_agent(settings):
        client = AgentClient(nc, settings.node_id)
        a, b = unique("a"), unique("b")
        a_phone, b_phone, nobody = phone(), phone(), phone()
        await client.start(a)
        await client.start(b)
        await client.pair(a, a_phone)
        await client.pair(b, b_phone)
        reply = await client.call(
            Op.CONTACTS_CHECK,
            CheckNumbers(session_id=a, numbers=[f"+{b_phone}", nobody]),
            NumberStatuses,
        )
        assert [(r.number, r.on_whatsapp) for r in reply.results] == [
            (b_phone, True),
            (nobody, False),
        ]
        assert reply.results[0].jid == f"{b_phone}@s.whatsapp.net"


class _MediaServer:
    def __init__(self, body: bytes, content_type: str = "image/png") -> None:
        self.hits = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.hits += 1
                if self.path == "/redirect":
                    self.send_response(302)
                    self.send_header("Location", "/file.png")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return None

        self.httpd = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def media_server() -> Iterator[_MediaServer]:
    server = _MediaServer(b"\x89PNG\r\n\x1a\n" + b"x" * 3000)
    yield server
    server.close()


async def test_media_by_base64_and_by_url_reaches_the_recipient(
    nats_url: str, nc: NATS, tmp_path: Path, events: EventLog, media_server: _MediaServer
) -> None:
    settings = sim_settings(nats_url, tmp_path)
    async with running_agent(settings):
        client = AgentClient(nc, settings.node_id)
        alice, bob = unique("alice"), unique("bob")
        bob_phone = phone()
        await client.start(alice)
        await client.start(bob)
        await client.pair(alice, phone())
        await client.pair(bob, bob_phone)
        png = tiny_png()
        inline = SendMessage(
            session_id=alice,
            message_id=unique("m"),
            to=bob_phone,
            content=ImageContent(
                media=Media(base64=base64.b64encode(png).decode()), caption="inline"
            ),
        )
        by_url = SendMessage(
            session_id=alice,
            message_id=unique("m"),
            to=bob_phone,
            content=ImageContent(media=Media(url=media_server.url + "/redirect"), caption="url"),
        )
        for message in (inline, by_url):
            await client.call(Op.MESSAGE_SEND, message, SendAccepted)
        received = await events.wait_count(
            lambda e: e.session_id == bob and e.type == "message.received", 2
        )
        media = {e.data["content"]["caption"]: e.data["content"]["media"] for e in received}
        assert media["inline"]["size"] == len(png)
        assert media["inline"]["sha256"] == hashlib.sha256(png).hexdigest()
        assert media["inline"]["mimetype"] == "image/png"
        assert media["url"]["size"] == 3008
        assert media["url"]["filename"] == "file.png"
        assert media_server.hits == 2  # the redirect, then the file


async def test_an_injected_disconnect_is_followed_by_a_reconnect(
    nats_url: str, nc: NATS, tmp_path: Path, events: EventLog
) -> None:
    settings = sim_settings(nats_url, tmp_path)
    async with running_agent(settings):
        client = AgentClient(nc, settings.node_id)
        session = unique("flaky")
        await client.start(session)
        await client.pair(session, phone())
        mark = len(events.states(session))
        await inject_faults(nc, session, Faults(disconnect=True))
        await events.wait_for(
            lambda e: (
                e.session_id == session
                and e.data.get("state") == "CONNECTED"
                and e.data.get("previous") == "STARTING"
            )
        )
        assert events.states(session)[mark:] == [
            "DISCONNECTED",
            "RECONNECTING",
            "STARTING",
            "CONNECTED",
        ]
        reconnecting = events.of(session, "session.status")[mark + 1]
        assert reconnecting.data["reason"] == "connection reset (injected)"
        assert 0.05 <= reconnecting.data["retry_in_s"] <= 0.4
        info = await client.status(session)
        assert (info.state, info.reconnect_attempts) == ("CONNECTED", 0)


async def test_the_watchdog_turns_a_silent_dead_connection_into_a_reconnect(
    nats_url: str, nc: NATS, tmp_path: Path, events: EventLog
) -> None:
    settings = sim_settings(nats_url, tmp_path, watchdog_interval_s=0.2)
    async with running_agent(settings):
        client = AgentClient(nc, settings.node_id)
        session = unique("zombie")
        await client.start(session)
        await client.pair(session, phone())
        await inject_faults(nc, session, Faults(zombie=True))
        dead = await events.wait_for(
            lambda e: e.session_id == session and e.data.get("state") == "DISCONNECTED"
        )
        assert "watchdog" in dead.data["reason"]
        await client.wait_state(session, "CONNECTED")


async def test_repeated_connect_failures_open_the_breaker_and_a_reset_closes_it(
    nats_url: str, nc: NATS, tmp_path: Path, events: EventLog
) -> None:
    settings = sim_settings(
        nats_url, tmp_path, breaker_threshold=3, breaker_cooldown_s=60, backoff_max_s=0.2
    )
    async with running_agent(settings):
        client = AgentClient(nc, settings.node_id)
        session = unique("breaker")
        await client.start(session)
        await client.pair(session, phone())
        await inject_faults(nc, session, Faults(disconnect=True, fail_connects=2))
        failed = await client.wait_state(session, "FAILED")
        assert failed.reconnect_attempts == 3
        assert failed.breaker_open_until is not None
        assert failed.breaker_open_until > time.time() + 50
        assert "circuit open after 3 consecutive failures" in (failed.reason or "")
        attempts = [
            e.data["attempt"]
            for e in events.of(session, "session.status")
            if e.data["state"] == "RECONNECTING"
        ]
        assert attempts == [1, 2]

        reset = await client.call(
            Op.SESSION_RESET_BREAKER, SessionRef(session_id=session), SessionInfo
        )
        assert reset.breaker_open_until is None
        info = await client.wait_state(session, "CONNECTED")
        assert info.reconnect_attempts == 0


async def test_injected_send_failures_end_in_a_failed_ack_after_the_retries(
    nats_url: str, nc: NATS, tmp_path: Path, events: EventLog
) -> None:
    settings = sim_settings(nats_url, tmp_path, send_attempts=2, send_retry_delay_s=0.05)
    async with running_agent(settings):
        client = AgentClient(nc, settings.node_id)
        alice, bob = unique("alice"), unique("bob")
        bob_phone = phone()
        await client.start(alice)
        await client.start(bob)
        await client.pair(alice, phone())
        await client.pair(bob, bob_phone)
        await inject_faults(nc, alice, Faults(send_failure_rate=1.0))
        message = text(alice, bob_phone, "doomed")
        await client.call(Op.MESSAGE_SEND, message, SendAccepted)
        failed = await events.wait_for(
            lambda e: e.type == "message.ack" and e.data["message_id"] == message.message_id
        )
        assert failed.data["status"] == "failed"
        assert failed.data["peer"] == message.to  # like every other message.ack
        assert failed.data["code"] == "engine_error"
        assert "injected" in failed.data["error"]

        await inject_faults(nc, alice, Faults(latency_ms=300))
        slow = text(alice, bob_phone, "slow")
        await client.call(Op.MESSAGE_SEND, slow, SendAccepted)
        sent = await events.wait_for(
            lambda e: e.type == "message.sent" and e.data["message_id"] == slow.message_id
        )
        assert sent.data["queued_ms"] >= 300


async def test_status_list_and_node_info_tell_the_truth(
    nats_url: str, nc: NATS, tmp_path: Path
) -> None:
    settings = sim_settings(nats_url, tmp_path, max_sessions=7)
    async with running_agent(settings):
        client = AgentClient(nc, settings.node_id)
        up, waiting = unique("up"), unique("waiting")
        await client.start(up)
        await client.start(waiting)
        await client.pair(up, phone())
        await client.wait_state(waiting, "PAIRING")
        listed = await client.call(Op.SESSIONS_LIST, Empty(), SessionList)
        assert {s.session_id: s.state for s in listed.sessions} == {
            up: "CONNECTED",
            waiting: "PAIRING",
        }
        node = await client.call(Op.NODE_INFO, Empty(), NodeInfo)
        assert node.node_id == settings.node_id
        assert (node.capacity, node.sessions) == (7, 2)
        assert node.by_state == {"CONNECTED": 1, "PAIRING": 1}
        assert node.rss_bytes > 10_000_000 and node.open_fds > 0
        assert node.engine == "sim" and not node.draining

        stopped = await client.call(Op.SESSION_STOP, SessionRef(session_id=waiting), SessionInfo)
        assert stopped.state == "STOPPED"
        node = await client.call(Op.NODE_INFO, Empty(), NodeInfo)
        assert node.sessions == 1


async def test_a_restarted_agent_resumes_its_sessions_without_pairing_again(
    nats_url: str, nc: NATS, tmp_path: Path, events: EventLog
) -> None:
    settings = sim_settings(nats_url, tmp_path)
    client = AgentClient(nc, settings.node_id)
    session, elsewhere = unique("resumed"), unique("elsewhere")
    number = phone()
    async with running_agent(settings):
        await client.start(session)
        await client.pair(session, number)
    # stopped with the agent; KV still assigns it here. Another session is assigned to
    # another node: it must not start here.
    await client.assign(elsewhere, 1, node_id="some-other-node")
    async with running_agent(settings):
        info = await client.wait_state(session, "CONNECTED")
        # resumed under a fresh epoch claimed by revision CAS (never racing a reconciler)
        assert info.phone == number and info.epoch == 2
        await client.expect_error(
            Op.SESSION_STATUS, SessionRef(session_id=elsewhere), ErrorCode.SESSION_NOT_FOUND
        )
    resumed = [s for s in events.states(session) if s in ("PAIRING", "CONNECTED", "STOPPED")]
    assert resumed == ["PAIRING", "CONNECTED", "STOPPED", "CONNECTED", "STOPPED"]


async def test_a_duplicate_message_id_is_queued_once(
    nats_url: str, nc: NATS, tmp_path: Path, events: EventLog
) -> None:
    settings = sim_settings(nats_url, tmp_path)
    async with running_agent(settings), connected(nats_url) as other:
        client = AgentClient(other, settings.node_id)
        session = unique("dedupe")
        await client.start(session)
        number = phone()
        await client.pair(session, number)
        message = text(session, number, "to myself, once", message_id=unique("m"))
        await client.call(Op.MESSAGE_SEND, message, SendAccepted)
        await client.call(Op.MESSAGE_SEND, message, SendAccepted)
        await events.wait_for(
            lambda e: e.type == "message.ack" and e.data["message_id"] == message.message_id
        )
        queued = [
            e
            for e in events.of(session, "message.queued")
            if e.data["message_id"] == message.message_id
        ]
        assert len(queued) == 1


async def test_the_cli_pairs_with_a_phone_code_and_injects_faults(
    nats_url: str, nc: NATS, tmp_path: Path, events: EventLog
) -> None:
    import asyncio
    import sys

    async def cli(*args: str) -> str:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "zapfleet", "sim", *args, "--nats-url", nats_url,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        out, _ = await process.communicate()
        assert process.returncode == 0, out.decode()
        return out.decode()

    settings = sim_settings(nats_url, tmp_path)
    async with running_agent(settings):
        client = AgentClient(nc, settings.node_id)
        session = unique("cli")
        number = phone()
        await client.start(session)
        await client.wait_state(session, "PAIRING")
        code = await client.call(
            Op.SESSION_PAIR_CODE, PairCodeRequest(session_id=session, phone=number), PairCode
        )
        assert "linked" in await cli("link", session, code.code, "--phone", number)
        await client.wait_state(session, "CONNECTED")
        assert "faults set" in await cli("fault", session, "--disconnect")
        await events.wait_for(
            lambda e: e.session_id == session and e.data.get("state") == "DISCONNECTED"
        )
        await client.wait_state(session, "CONNECTED")

"""Bad input and refusals: every one is an ``Err`` with a stable code and a message that
says what is wrong — never a timeout, never an internal error."""

from __future__ import annotations

import base64
import threading
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import msgspec
import pytest
import pytest_asyncio
from nats.aio.client import Client as NATS

from contract.protocol import (
    CheckNumbers,
    ContactContent,
    DocumentContent,
    Err,
    ErrorCode,
    HistoryRequest,
    Media,
    Op,
    PairCodeRequest,
    SendMessage,
    SessionRef,
    SessionSpec,
    StartSession,
    TextContent,
)
from node_agent.agent import Agent
from node_agent.media import MediaError, MediaFetcher
from tests.agent_support import (
    AgentClient,
    EventLog,
    phone,
    running_agent,
    sim_settings,
    unique,
)
from zapfleet.devservers import free_port

MAX_MEDIA = 4096


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def agent(nats_url: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Agent]:
    settings = sim_settings(
        nats_url, tmp_path_factory.mktemp("errors"), max_media_bytes=MAX_MEDIA, send_attempts=1
    )
    async with running_agent(settings) as running:
        yield running


@pytest.fixture
def client(agent: Agent, nc: NATS) -> AgentClient:
    return AgentClient(nc, agent.node_id)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def connected_session(agent: Agent, nats_url: str) -> AsyncIterator[str]:
    import nats

    nc = await nats.connect(nats_url)
    client = AgentClient(nc, agent.node_id)
    session = unique("ok")
    await client.start(session)
    await client.pair(session, phone())
    yield session
    await nc.close()


async def test_every_operation_on_an_unknown_session_is_session_not_found(
    client: AgentClient,
) -> None:
    ref = SessionRef(session_id="nobody-here")
    for op in (
        Op.SESSION_STOP,
        Op.SESSION_LOGOUT,
        Op.SESSION_RESTART,
        Op.SESSION_RECONNECT,
        Op.SESSION_RESET_BREAKER,
        Op.SESSION_STATUS,
        Op.SESSION_QR,
    ):
        error = await client.expect_error(op, ref, ErrorCode.SESSION_NOT_FOUND)
        assert "nobody-here" in error.message
    await client.expect_error(
        Op.MESSAGE_SEND,
        SendMessage(
            session_id="nobody-here",
            message_id="m1",
            to="15550001111",
            content=TextContent(text="x"),
        ),
        ErrorCode.SESSION_NOT_FOUND,
    )
    await client.expect_error(
        Op.HISTORY_LIST, HistoryRequest(session_id="nobody-here"), ErrorCode.SESSION_NOT_FOUND
    )


async def test_a_start_is_refused_unless_kv_assigns_the_session_here_at_that_epoch(
    client: AgentClient,
) -> None:
    session = unique("fenced")
    spec = await client.assign(session, epoch=2)
    stale = await client.expect_error(
        Op.SESSION_START, StartSession(spec=spec, epoch=1), ErrorCode.STALE_EPOCH
    )
    assert "epoch 1" in stale.message and "@2" in stale.message
    await client.assign(session, epoch=3, node_id="another-node")
    await client.expect_error(
        Op.SESSION_START, StartSession(spec=spec, epoch=3), ErrorCode.STALE_EPOCH
    )
    never_assigned = SessionSpec(session_id=unique("ghost"), tenant="t", engine="sim")
    await client.expect_error(
        Op.SESSION_START, StartSession(spec=never_assigned, epoch=1), ErrorCode.STALE_EPOCH
    )


async def test_an_operation_naming_another_epoch_than_the_running_one_is_stale(
    client: AgentClient, connected_session: str
) -> None:
    error = await client.expect_error(
        Op.SESSION_STOP, SessionRef(session_id=connected_session, epoch=7), ErrorCode.STALE_EPOCH
    )
    assert "running epoch 1" in error.message
    # a start for an older epoch than the running one is refused; the same one is a no-op
    spec = await client.assign(connected_session, epoch=1)
    older = await client.expect_error(
        Op.SESSION_START, StartSession(spec=spec, epoch=0), ErrorCode.STALE_EPOCH
    )
    assert "older than the running epoch 1" in older.message
    again = await client.call(Op.SESSION_START, StartSession(spec=spec, epoch=1), dict)
    assert again["state"] == "CONNECTED"


async def test_invalid_phone_numbers_are_refused_wherever_they_appear(
    client: AgentClient, connected_session: str
) -> None:
    for bad in ("+1 23", "hello", "", "+999 1234 5678 9012 3456"):
        await client.expect_error(
            Op.MESSAGE_SEND,
            SendMessage(
                session_id=connected_session, message_id="m", to=bad, content=TextContent(text="x")
            ),
            ErrorCode.INVALID_NUMBER,
        )
    await client.expect_error(
        Op.CONTACTS_CHECK,
        CheckNumbers(session_id=connected_session, numbers=["15550001111", "12"]),
        ErrorCode.INVALID_NUMBER,
    )
    await client.expect_error(
        Op.SESSION_PAIR_CODE,
        PairCodeRequest(session_id=connected_session, phone="0"),
        ErrorCode.INVALID_NUMBER,
    )


async def test_oversize_inline_media_is_refused_at_once(
    client: AgentClient, connected_session: str
) -> None:
    big = base64.b64encode(b"%PDF" + b"0" * MAX_MEDIA).decode()
    error = await client.expect_error(
        Op.MESSAGE_SEND,
        SendMessage(
            session_id=connected_session,
            message_id=unique("m"),
            to=phone(),
            content=DocumentContent(media=Media(base64=big, filename="big.pdf")),
        ),
        ErrorCode.MEDIA_TOO_LARGE,
    )
    assert str(MAX_MEDIA) in error.message


async def test_malformed_media_is_an_invalid_request(
    client: AgentClient, connected_session: str
) -> None:
    for media in (
        Media(base64="not base64 at all!"),
        Media(),
        Media(url="https://example.com/a.pdf", base64="AAAA"),
        Media(url="ftp://example.com/a.pdf"),
    ):
        await client.expect_error(
            Op.MESSAGE_SEND,
            SendMessage(
                session_id=connected_session,
                message_id=unique("m"),
                to=phone(),
                content=DocumentContent(media=media),
            ),
            ErrorCode.INVALID_REQUEST,
        )


class _BigFile:
    def __init__(self, size: int) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "application/pdf")
                self.end_headers()  # no Content-Length: the limit must hold while streaming
                self.wfile.write(b"%PDF" + b"0" * size)

            def log_message(self, format: str, *args: Any) -> None:
                return None

        self.httpd = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/big.pdf"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture
def big_file() -> Iterator[_BigFile]:
    server = _BigFile(MAX_MEDIA * 4)
    yield server
    server.httpd.shutdown()
    server.httpd.server_close()


async def test_oversize_media_behind_a_url_fails_the_message_with_media_too_large(
    client: AgentClient, connected_session: str, nc: NATS, big_file: _BigFile
) -> None:
    events = EventLog()
    await events.start(nc, "t")
    message = SendMessage(
        session_id=connected_session,
        message_id=unique("m"),
        to=phone(),
        content=DocumentContent(media=Media(url=big_file.url)),
    )
    await client.call(Op.MESSAGE_SEND, message, dict)
    failed = await events.wait_for(
        lambda e: e.type == "message.ack" and e.data["message_id"] == message.message_id
    )
    await events.stop()
    assert (failed.data["status"], failed.data["code"]) == ("failed", "media_too_large")


async def test_an_unknown_message_type_is_unsupported_and_a_broken_body_invalid(
    client: AgentClient, connected_session: str
) -> None:
    body = {
        "session_id": connected_session,
        "message_id": "m-hologram",
        "to": "15550001111",
        "content": {"type": "hologram", "media": {"url": "https://example.com/h.bin"}},
    }
    reply = await client.raw(Op.MESSAGE_SEND, msgspec.json.encode(body))
    assert isinstance(reply, Err) and reply.code == ErrorCode.UNSUPPORTED_MESSAGE
    assert "hologram" in reply.message
    reply = await client.raw(Op.MESSAGE_SEND, b'{"session_id": "x", ')
    assert isinstance(reply, Err) and reply.code == ErrorCode.INVALID_REQUEST
    missing = {"session_id": connected_session, "to": "15550001111"}
    reply = await client.raw(Op.MESSAGE_SEND, msgspec.json.encode(missing))
    assert isinstance(reply, Err) and reply.code == ErrorCode.INVALID_REQUEST
    assert "message_id" in reply.message or "content" in reply.message


async def test_state_dependent_operations_say_what_the_state_is(
    client: AgentClient, connected_session: str
) -> None:
    not_pairing = await client.expect_error(
        Op.SESSION_QR, SessionRef(session_id=connected_session), ErrorCode.NOT_PAIRING
    )
    assert "CONNECTED" in not_pairing.message
    await client.expect_error(
        Op.SESSION_PAIR_CODE,
        PairCodeRequest(session_id=connected_session, phone="15550001111"),
        ErrorCode.NOT_PAIRING,
    )
    waiting = unique("waiting")
    await client.start(waiting)
    await client.wait_state(waiting, "PAIRING")
    await client.expect_error(
        Op.CONTACTS_CHECK,
        CheckNumbers(session_id=waiting, numbers=["15550001111"]),
        ErrorCode.NOT_CONNECTED,
    )
    await client.expect_error(
        Op.CONTACTS_CHECK,
        CheckNumbers(session_id=connected_session, numbers=[]),
        ErrorCode.INVALID_REQUEST,
    )
    await client.call(Op.SESSION_LOGOUT, SessionRef(session_id=waiting), dict)


async def test_a_session_for_another_engine_is_refused(client: AgentClient) -> None:
    session = unique("neo")
    spec = await client.assign(session, engine="neonize")
    error = await client.expect_error(
        Op.SESSION_START, StartSession(spec=spec, epoch=1), ErrorCode.INVALID_REQUEST
    )
    assert "sim engine" in error.message


async def test_admission_refuses_beyond_capacity_and_under_memory_pressure(
    nats_url: str, nc: NATS, tmp_path: Path
) -> None:
    settings = sim_settings(nats_url, tmp_path, max_sessions=2)
    async with running_agent(settings):
        client = AgentClient(nc, settings.node_id)
        await client.start(unique("one"))
        await client.start(unique("two"))
        full = await client.expect_error(
            Op.SESSION_START,
            StartSession(spec=await client.assign(unique("three")), epoch=1),
            ErrorCode.CAPACITY_FULL,
        )
        assert "2 sessions" in full.message
    tiny = sim_settings(nats_url, tmp_path, memory_threshold=0.0001)
    async with running_agent(tiny):
        client = AgentClient(nc, tiny.node_id)
        pressure = await client.expect_error(
            Op.SESSION_START,
            StartSession(spec=await client.assign(unique("heavy")), epoch=1),
            ErrorCode.MEMORY_PRESSURE,
        )
        assert "memory limit" in pressure.message


async def test_the_default_url_guard_refuses_loopback_and_private_hosts() -> None:
    fetcher = MediaFetcher(max_bytes=1000)
    for url in (
        "http://127.0.0.1:9/x.png",
        "http://localhost/x.png",
        "http://10.1.2.3/x.png",
        "http://[::1]/x.png",
        "http://169.254.169.254/latest/meta-data",
    ):
        with pytest.raises(MediaError) as caught:
            await fetcher.accept(Media(url=url))
        assert caught.value.code == ErrorCode.MEDIA_UNAVAILABLE, url
    await fetcher.close()


async def test_contact_cards_and_locations_need_no_media(
    client: AgentClient, connected_session: str
) -> None:
    message = SendMessage(
        session_id=connected_session,
        message_id=unique("m"),
        to=phone(),
        content=ContactContent(display_name="Ana", phone="+15550001111"),
    )
    accepted = await client.call(Op.MESSAGE_SEND, message, dict)
    assert accepted["message_id"] == message.message_id

"""The webhook HTTP/1.1 client (control_plane/webhooks/http.py) against real local
servers that answer with exact bytes: TLS (name as SNI, certificate checked against it,
connections kept), chunked bodies, 1xx answers before the final one, and the retry of a
request whose kept-alive connection the server closed while idle.

The servers are real TCP (and TLS) listeners on loopback in this event loop; each one
writes what its script says, so a test can put a byte boundary or a close exactly where
the protocol makes it hard."""

from __future__ import annotations

import asyncio
import ipaddress
import ssl
from collections.abc import Awaitable, Callable

import pytest
import trustme

from control_plane.webhooks.http import MAX_BODY, RequestError, WebhookClient
from zapfleet.ssrf import AddressPolicy, IPAddress

TESTS = AddressPolicy.from_settings(False, ["127.0.0.1/32"])
NAME = "hooks.invalid"  # never resolves (RFC 6761): only the test resolver reaches it


async def loopback(host: str, port: int) -> list[IPAddress]:
    return [ipaddress.ip_address("127.0.0.1")]


# a script answers one request on one connection: it gets the request and the writer,
# and returns False to stop serving that connection (closing it)
Script = Callable[[bytes, asyncio.StreamWriter], Awaitable[bool]]


class Server:
    """A scripted HTTP/1.1 server: ``scripts[n]`` answers the n-th request it reads
    (over all connections); connections, requests and TLS server names are recorded."""

    def __init__(self, scripts: list[Script], tls: ssl.SSLContext | None = None) -> None:
        self.scripts = scripts
        self.tls = tls
        self.requests: list[bytes] = []
        self.connections = 0
        self.server_names: list[str | None] = []
        self.server: asyncio.Server | None = None
        self.port = 0
        self.handlers: set[asyncio.Task[None]] = set()
        if tls is not None:
            tls.sni_callback = lambda _, name, __: self.server_names.append(name)

    async def __aenter__(self) -> Server:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.tls)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self.server is not None
        self.server.close()
        for handler in self.handlers:
            handler.cancel()
        await asyncio.gather(*self.handlers)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self.handlers.add(task)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                request = head + await reader.readexactly(length)
                self.requests.append(request)
                script = self.scripts[len(self.requests) - 1]
                if not await script(request, writer):
                    return
        except asyncio.CancelledError:
            return  # the test is over
        finally:
            writer.close()


def answer(*parts: bytes, pause_s: float = 0.02) -> Script:
    """Write ``parts`` one by one (each its own segment), keep the connection."""

    async def script(_: bytes, writer: asyncio.StreamWriter) -> bool:
        for part in parts:
            writer.write(part)
            await writer.drain()
            if len(parts) > 1:
                await asyncio.sleep(pause_s)
        return True

    return script


def close_without_answer() -> Script:
    async def script(_: bytes, __: asyncio.StreamWriter) -> bool:
        return False

    return script


NO_CONTENT = b"HTTP/1.1 204 No Content\r\n\r\n"


async def post(client: WebhookClient, url: str) -> int:
    return await client.post(url, b'{"n":1}', {"Content-Type": "application/json"}, timeout_s=5)


# -- TLS ------------------------------------------------------------------------------


def tls_pair(name: str) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server context with a certificate for ``name``, client context trusting its CA)."""
    authority = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert(name).configure_cert(server)
    client = ssl.create_default_context()
    authority.configure_trust(client)
    return server, client


async def test_https_sends_the_name_as_sni_checks_the_certificate_and_keeps_the_connection() -> (
    None
):
    server_tls, client_tls = tls_pair(NAME)
    async with Server([answer(NO_CONTENT)] * 3, tls=server_tls) as server:
        client = WebhookClient(TESTS, user_agent="t", resolver=loopback, tls=client_tls)
        url = f"https://{NAME}:{server.port}/hook"
        try:
            assert [await post(client, url) for _ in range(3)] == [204] * 3
        finally:
            await client.close()
    assert server.server_names == [NAME]  # one handshake: the connection was kept
    assert server.connections == 1
    assert all(f"Host: {NAME}:{server.port}\r\n".encode() in r for r in server.requests)


async def test_https_refuses_a_certificate_for_another_name() -> None:
    server_tls, _ = tls_pair("elsewhere.invalid")
    _, client_tls = tls_pair(NAME)  # trusts another CA, and the name differs anyway
    other_server_tls, other_client_tls = tls_pair("elsewhere.invalid")
    for served, trusted in ((server_tls, client_tls), (other_server_tls, other_client_tls)):
        async with Server([answer(NO_CONTENT)], tls=served) as server:
            client = WebhookClient(TESTS, user_agent="t", resolver=loopback, tls=trusted)
            try:
                with pytest.raises(RequestError, match="cannot connect"):
                    await post(client, f"https://{NAME}:{server.port}/hook")
            finally:
                await client.close()
        assert server.requests == []  # nothing was sent over an unverified connection


# -- chunked bodies --------------------------------------------------------------------


async def test_a_chunked_answer_split_anywhere_is_read_and_the_connection_kept() -> None:
    chunked = answer(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/plain\r\n\r\n",
        b"5\r\nhel",
        b"lo\r\n",
        b"6\r\n world\r\n0\r",
        b"\n\r\n",
    )
    async with Server([chunked, chunked, answer(NO_CONTENT)]) as server:
        client = WebhookClient(TESTS, user_agent="t", resolver=loopback)
        url = f"http://{NAME}:{server.port}/hook"
        try:
            assert [await post(client, url) for _ in range(3)] == [200, 200, 204]
        finally:
            await client.close()
    assert server.connections == 1


async def test_a_chunked_answer_with_trailers_ends_cleanly() -> None:
    trailers = answer(
        b"HTTP/1.1 202 Accepted\r\nTransfer-Encoding: chunked\r\nTrailer: X-Done\r\n\r\n"
        b"2\r\nok\r\n0\r\nX-Done: yes\r\n\r\n"
    )
    async with Server([trailers, answer(NO_CONTENT)]) as server:
        client = WebhookClient(TESTS, user_agent="t", resolver=loopback)
        url = f"http://{NAME}:{server.port}/hook"
        try:
            assert [await post(client, url) for _ in range(2)] == [202, 204]
        finally:
            await client.close()
    assert server.connections == 1


async def test_a_chunked_body_over_the_limit_gives_the_status_and_a_fresh_connection() -> None:
    """A body is read and discarded; past MAX_BODY the connection is closed rather than
    drained, and the next request opens a new one."""
    chunk = b"x" * 65536
    big = answer(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        + (b"%x\r\n%s\r\n" % (len(chunk), chunk)) * (MAX_BODY // len(chunk) + 2)
        + b"0\r\n\r\n"
    )
    async with Server([big, answer(NO_CONTENT)]) as server:
        client = WebhookClient(TESTS, user_agent="t", resolver=loopback)
        url = f"http://{NAME}:{server.port}/hook"
        try:
            assert await post(client, url) == 200
            assert await post(client, url) == 204
        finally:
            await client.close()
    assert server.connections == 2


async def test_a_body_that_never_ends_times_out_and_its_connection_is_closed() -> None:
    """The status comes with the end of the answer: a receiver that sends its headers
    and then trickles (or stalls) its body runs into the request timeout, and that
    connection is closed — it never goes back to the pool half-read."""

    async def stall(_: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
        await writer.drain()
        await asyncio.sleep(3600)
        return True

    async with Server([stall, answer(NO_CONTENT)]) as server:
        client = WebhookClient(TESTS, user_agent="t", resolver=loopback)
        url = f"http://{NAME}:{server.port}/hook"
        try:
            with pytest.raises(TimeoutError):
                await client.post(url, b"{}", {}, timeout_s=0.3)
            assert await post(client, url) == 204
        finally:
            await client.close()
    assert server.connections == 2


# -- 1xx answers -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "interim",
    [
        [b"HTTP/1.1 100 Continue\r\n\r\n"],
        [b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"],
        [b"HTTP/1.1 100 Continue\r\n\r\n", b"HTTP/1.1 102 Processing\r\n\r\n"],
    ],
    ids=["100", "103", "100+102"],
)
@pytest.mark.parametrize("together", [False, True], ids=["apart", "one-segment"])
async def test_interim_answers_are_skipped_and_the_final_status_counts(
    interim: list[bytes], together: bool
) -> None:
    final = b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok"
    parts = [b"".join([*interim, final])] if together else [*interim, final]
    async with Server([answer(*parts), answer(NO_CONTENT)]) as server:
        client = WebhookClient(TESTS, user_agent="t", resolver=loopback)
        url = f"http://{NAME}:{server.port}/hook"
        try:
            assert await post(client, url) == 201
            assert await post(client, url) == 204  # the connection is still in step
        finally:
            await client.close()
    assert server.connections == 1


# -- a kept-alive connection closed by the server -----------------------------------------


async def test_a_request_on_a_connection_the_server_closed_while_idle_is_sent_again() -> None:
    """The race of keep-alive: the server gives up on an idle connection just as a
    request goes out on it. Nothing came back, so the request is sent once more, on a
    new connection, and its answer counts."""
    scripts = [answer(NO_CONTENT), close_without_answer(), answer(NO_CONTENT)]
    async with Server(scripts) as server:
        client = WebhookClient(TESTS, user_agent="t", resolver=loopback)
        url = f"http://{NAME}:{server.port}/hook"
        try:
            assert await post(client, url) == 204
            assert await post(client, url) == 204
        finally:
            await client.close()
    assert server.connections == 2
    assert len(server.requests) == 3  # the second request was sent twice
    assert server.requests[1] == server.requests[2]


async def test_a_connection_closed_while_idle_and_noticed_is_not_used() -> None:
    """The server closed the idle connection and the client saw it: the next request
    goes straight to a new connection, without a failed attempt."""

    async def then_close(_: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(NO_CONTENT)
        await writer.drain()
        return False  # closes the connection right after a keep-alive answer

    async with Server([then_close, answer(NO_CONTENT)]) as server:
        client = WebhookClient(TESTS, user_agent="t", resolver=loopback)
        url = f"http://{NAME}:{server.port}/hook"
        try:
            assert await post(client, url) == 204
            for _ in range(100):  # until the client has seen the close
                if not any(c.closed is False for p in client._pools.values() for c in p):
                    break
                await asyncio.sleep(0.01)
            assert await post(client, url) == 204
        finally:
            await client.close()
    assert server.connections == 2
    assert len(server.requests) == 2  # no request was lost on the closed connection


async def test_a_request_whose_answer_was_cut_off_is_not_sent_again() -> None:
    """Part of an answer came back: the server has the request, so sending it again
    could deliver it twice — the error goes to the dispatcher (which retries with
    backoff, as for any failed delivery)."""

    async def cut_off(_: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Len")
        await writer.drain()
        return False

    async with Server([answer(NO_CONTENT), cut_off]) as server:
        client = WebhookClient(TESTS, user_agent="t", resolver=loopback)
        url = f"http://{NAME}:{server.port}/hook"
        try:
            assert await post(client, url) == 204
            with pytest.raises(RequestError, match="closed"):
                await post(client, url)
        finally:
            await client.close()
    assert len(server.requests) == 2

"""Media by URL (node_agent/media.py) against a real HTTP server: the fetch connects to
an address the SSRF policy allows, resolved once for that connection — never to what
the name resolves to otherwise (DNS rebinding) — while the server still sees the name,
and every redirect hop is checked and pinned again. The pinning is the webhook client's
(zapfleet.ssrf.dial_addresses, through zapfleet.ssrf.PinnedBackend)."""

from __future__ import annotations

import ipaddress
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import trustme

from contract.protocol import ErrorCode, Media
from node_agent.media import MediaError, MediaFetcher, UrlGuard, default_url_guard
from zapfleet.ssrf import AddressPolicy, IPAddress, Resolver

PNG = b"\x89PNG\r\n\x1a\n" + b"p" * 500
# .invalid never resolves (RFC 6761): only a pinned connection can reach the server
NAME = "media.invalid"
TESTS = AddressPolicy.from_settings(False, ["127.0.0.1/32"])


class Server:
    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.hosts: list[str] = []
        self.server_names: list[str | None] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.hosts.append(self.headers.get("Host", ""))
                if self.path == "/moved":
                    self.send_response(302)
                    self.send_header("Location", "/pic.png")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(PNG)))
                self.end_headers()
                self.wfile.write(PNG)

            def log_message(self, format: str, *args: object) -> None:
                return None

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if tls is not None:

            def note_sni(_: ssl.SSLObject, name: str, __: ssl.SSLContext) -> None:
                self.server_names.append(name)

            tls.sni_callback = note_sni
            self.http.socket = tls.wrap_socket(self.http.socket, server_side=True)
        self.port = int(self.http.server_address[1])
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.http.shutdown()
        self.http.server_close()


@pytest.fixture
def server() -> Iterator[Server]:
    running = Server()
    yield running
    running.close()


def checked(asked: list[str]) -> UrlGuard:
    """A guard that lets every URL through and records it."""

    async def guard(url: str) -> None:
        asked.append(url)

    return guard


def answering(answers: list[str]) -> Resolver:
    """A resolver giving every name ``answers`` (as they are at lookup time: a test may
    change them, as a rebinding DNS server would)."""

    async def resolver(host: str, port: int) -> list[IPAddress]:
        return [ipaddress.ip_address(a) for a in answers]

    return resolver


def fetcher_for(asked: list[str], answers: list[str], **options: object) -> MediaFetcher:
    return MediaFetcher(
        max_bytes=10_000,
        guard=checked(asked),
        policy=TESTS,
        resolver=answering(answers),
        **options,  # type: ignore[arg-type]
    )


async def test_the_fetch_connects_to_the_checked_address_and_keeps_the_name(
    server: Server,
) -> None:
    asked: list[str] = []
    fetcher = fetcher_for(asked, ["127.0.0.1"])
    try:
        url = f"http://{NAME}:{server.port}/pic.png"
        payload = await fetcher.fetch(Media(url=url))
    finally:
        await fetcher.close()
    assert payload.data == PNG
    assert payload.mimetype == "image/png"
    assert asked == [url]
    assert server.hosts == [f"{NAME}:{server.port}"]


async def test_each_redirect_hop_is_checked_and_pinned_again(server: Server) -> None:
    asked: list[str] = []
    fetcher = fetcher_for(asked, ["127.0.0.1"])
    try:
        payload = await fetcher.fetch(Media(url=f"http://{NAME}:{server.port}/moved"))
    finally:
        await fetcher.close()
    assert payload.data == PNG
    assert asked == [
        f"http://{NAME}:{server.port}/moved",
        f"http://{NAME}:{server.port}/pic.png",
    ]
    assert server.hosts == [f"{NAME}:{server.port}"] * 2


async def test_over_tls_the_name_is_the_sni_and_the_certificate_is_checked_against_it() -> None:
    """The connection goes to 127.0.0.1, yet TLS asks for the name and accepts only a
    certificate for that name: pinning does not weaken certificate checks."""
    authority = trustme.CA()
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert(NAME).configure_cert(server_tls)
    client_tls = ssl.create_default_context()
    authority.configure_trust(client_tls)
    server = Server(tls=server_tls)
    asked: list[str] = []
    fetcher = fetcher_for(asked, ["127.0.0.1"], verify=client_tls)
    try:
        payload = await fetcher.fetch(Media(url=f"https://{NAME}:{server.port}/pic.png"))
        assert payload.data == PNG
        assert server.server_names == [NAME]
        assert server.hosts == [f"{NAME}:{server.port}"]

        # a certificate for another name is refused, though the address is the same
        other = trustme.CA()
        wrong_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        other.issue_cert("elsewhere.invalid").configure_cert(wrong_tls)
        other.configure_trust(client_tls)
        impostor = Server(tls=wrong_tls)
        try:
            with pytest.raises(MediaError) as refused:
                await fetcher.fetch(Media(url=f"https://{NAME}:{impostor.port}/pic.png"))
            assert refused.value.code == ErrorCode.MEDIA_UNAVAILABLE
            assert impostor.hosts == []
        finally:
            impostor.close()
    finally:
        await fetcher.close()
        server.close()


async def test_a_name_rebound_after_the_check_is_refused_at_connect_time(server: Server) -> None:
    """The guard saw an allowed address; when the connection resolves the name, it
    answers another one (127.0.0.2: loopback outside the allowed /32). The connection
    refuses it before dialling (the message is the policy's, not a refused connection),
    and the server sees no request."""
    answers = ["127.0.0.2"]
    fetcher = fetcher_for([], answers)
    try:
        with pytest.raises(MediaError) as refused:
            await fetcher.fetch(Media(url=f"http://{NAME}:{server.port}/pic.png"))
        assert refused.value.code == ErrorCode.MEDIA_UNAVAILABLE
        assert "loopback address (127.0.0.2)" in refused.value.message
        assert server.hosts == []
        answers[:] = ["127.0.0.2", "127.0.0.1"]  # one allowed address: that one is dialled
        payload = await fetcher.fetch(Media(url=f"http://{NAME}:{server.port}/pic.png"))
        assert payload.data == PNG
    finally:
        await fetcher.close()
    assert server.hosts == [f"{NAME}:{server.port}"]


async def test_the_default_guard_accepts_public_addresses_only() -> None:
    guard = default_url_guard(allow_private=False)
    await guard("http://93.184.216.34/pic.png")
    await guard("https://[2606:2800:220:1:248:1893:25c8:1946]/x")
    with pytest.raises(MediaError) as refused:
        await guard("http://127.0.0.1/pic.png")
    assert refused.value.code == ErrorCode.MEDIA_UNAVAILABLE
    with pytest.raises(MediaError) as wrong:
        await guard("ftp://93.184.216.34/pic.png")
    assert wrong.value.code == ErrorCode.INVALID_REQUEST
    # development setting (ZAPFLEET_ALLOW_PRIVATE_TARGETS): loopback and private hosts;
    # link-local and unspecified never
    development = default_url_guard(allow_private=True)
    await development("http://127.0.0.1/x")
    await development("http://10.1.2.3/x")
    for url in ("http://169.254.169.254/latest/meta-data/", "http://0.0.0.0:8080/", "http://[::]/"):
        with pytest.raises(MediaError) as never:
            await development(url)
        assert never.value.code == ErrorCode.MEDIA_UNAVAILABLE, url
        assert "no setting allows them" in never.value.message

"""Link previews (node_agent/link_preview.py): the page is fetched through the media
fetcher's SSRF policy and size limit by a real HTTP server here; what the card shows is
parsed from it; a page that cannot be used costs the preview, never the message."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from contract.protocol import TextContent
from node_agent.link_preview import PreviewedText, first_url, parse_page, with_preview
from node_agent.media import MediaFetcher

PAGES: dict[str, tuple[int, str, bytes]] = {
    "/og": (
        200,
        "text/html; charset=utf-8",
        b'<html><head><meta property="og:title" content="Zap &amp; Fleet">'
        b"<meta content='Gateways, done right' property='og:description'>"
        b"<title>ignored</title></head></html>",
    ),
    "/plain": (200, "text/html", b"<title>\n  Just a   title </title>"),
    "/none": (200, "text/html", b"<p>no title here</p>"),
    "/image": (200, "image/png", b"\x89PNG\r\n\x1a\n"),
    "/big": (200, "text/html", b"<title>big</title>" + b" " * (600 * 1024)),
}


@pytest.fixture(scope="module")
def site() -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            status, kind, body = PAGES.get(self.path, (404, "text/plain", b"missing"))
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_the_first_url_of_a_text() -> None:
    assert (
        first_url("see https://example.com/a?b=1, then http://x.y") == "https://example.com/a?b=1"
    )
    assert first_url("(https://example.com/p).") == "https://example.com/p"
    assert first_url("no link, ftp://x") is None


def test_open_graph_first_then_the_title() -> None:
    page = '<meta name="description" content="d"><title>T</title>'
    preview = parse_page(page, "https://e.com")
    assert preview is not None
    assert (preview.url, preview.title, preview.description) == ("https://e.com", "T", "d")
    assert parse_page("<p>x</p>", "https://e.com") is None


async def test_a_preview_is_built_from_the_page(site: str) -> None:
    fetcher = MediaFetcher(max_bytes=10**7, allow_private=True)
    try:
        text = TextContent(text=f"look {site}/og now", link_preview=True, reply_to="3EB0")
        previewed = await with_preview(fetcher, text)
        assert isinstance(previewed, PreviewedText) and previewed.preview is not None
        assert previewed.preview.url == f"{site}/og"
        assert previewed.preview.title == "Zap & Fleet"
        assert previewed.preview.description == "Gateways, done right"
        assert (previewed.text, previewed.reply_to) == (text.text, "3EB0")
        plain = await with_preview(fetcher, TextContent(text=f"{site}/plain"))
        assert isinstance(plain, PreviewedText) and plain.preview is not None
        assert (plain.preview.title, plain.preview.description) == ("Just a title", None)
        for path in ("/none", "/image", "/missing", "/big"):  # no card, same message
            unchanged = TextContent(text=f"{site}{path}")
            assert await with_preview(fetcher, unchanged) is unchanged
    finally:
        await fetcher.close()


async def test_the_ssrf_policy_applies_to_previews(site: str) -> None:
    fetcher = MediaFetcher(max_bytes=10**7, allow_private=False)  # production default
    try:
        text = TextContent(text=f"{site}/og")
        assert await with_preview(fetcher, text) is text
    finally:
        await fetcher.close()

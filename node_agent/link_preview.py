"""Link previews of outbound text (issue 15).

WhatsApp shows a card (title, description) under a text with a link when the *sender*
attaches it: the receiving phone never fetches the page. With ``link_preview: true`` the
agent fetches the first http(s) URL of the text just before sending — through the media
fetcher's SSRF policy (docs/security.md), at most 512 KiB, 5 s — reads its Open Graph
title and description (else ``<title>``) and sends them with the text. A page that cannot
be fetched or has no title costs the preview, never the message.
"""

from __future__ import annotations

import html
import logging
import re

import msgspec

from contract.protocol import Media, TextContent
from node_agent.media import MediaError, MediaFetcher

log = logging.getLogger(__name__)

PREVIEW_MAX_BYTES = 512 * 1024
PREVIEW_TIMEOUT_S = 5.0
MAX_TITLE = 200
MAX_DESCRIPTION = 400

_URL = re.compile(r"https?://[^\s<>\"']+", re.IGNORECASE)
_META = re.compile(r"<meta\b[^>]*>", re.IGNORECASE)
_ATTR = re.compile(r"""([a-zA-Z:_-]+)\s*=\s*("([^"]*)"|'([^']*)')""")
_TITLE = re.compile(r"<title[^>]*>(.*?)</title>", re.IGNORECASE | re.DOTALL)


class LinkPreview(msgspec.Struct, kw_only=True):
    url: str
    title: str
    description: str | None = None


class PreviewedText(TextContent, kw_only=True):
    """A text with the preview the agent built for it (never on the wire of the API)."""

    preview: LinkPreview | None = None


def first_url(text: str) -> str | None:
    match = _URL.search(text)
    return match.group(0).rstrip(".,;:!?)") if match else None


def _clean(value: str, limit: int) -> str:
    return " ".join(html.unescape(value).split())[:limit]


def parse_page(page: str, url: str) -> LinkPreview | None:
    """Title and description of an HTML page: Open Graph first, then ``<title>`` and
    ``<meta name="description">``. None without a title."""
    meta: dict[str, str] = {}
    for tag in _META.findall(page):
        attrs = {m.group(1).lower(): m.group(3) or m.group(4) or "" for m in _ATTR.finditer(tag)}
        name = (attrs.get("property") or attrs.get("name") or "").lower()
        if name and "content" in attrs:
            meta.setdefault(name, attrs["content"])
    title = meta.get("og:title") or ""
    if not title:
        found = _TITLE.search(page)
        title = found.group(1) if found else ""
    title = _clean(title, MAX_TITLE)
    if not title:
        return None
    description = meta.get("og:description") or meta.get("description") or ""
    return LinkPreview(
        url=url, title=title, description=_clean(description, MAX_DESCRIPTION) or None
    )


_fetchers: dict[int, MediaFetcher] = {}


def _fetcher_for(media: MediaFetcher) -> MediaFetcher:
    """A small fetcher with the same SSRF guard and TLS settings as the media one."""
    fetcher = _fetchers.get(id(media))
    if fetcher is None:
        fetcher = MediaFetcher(
            max_bytes=PREVIEW_MAX_BYTES,
            timeout_s=PREVIEW_TIMEOUT_S,
            guard=media.guard,
            policy=media.policy,  # the connect-time check too (pinned dial)
            verify=media.verify,
        )
        _fetchers[id(media)] = fetcher
    return fetcher


async def close_fetchers() -> None:
    """Close the preview fetchers' connections (agent shutdown)."""
    fetchers = list(_fetchers.values())
    _fetchers.clear()
    for fetcher in fetchers:
        await fetcher.close()


async def with_preview(media: MediaFetcher, content: TextContent) -> TextContent:
    """``content`` with its link preview attached, or unchanged when there is none."""
    url = first_url(content.text)
    if url is None:
        return content
    try:
        page = await _fetcher_for(media).fetch(Media(url=url))
    except MediaError as exc:
        log.info("no link preview", extra={"url": url, "error": exc.message})
        return content
    except Exception as exc:
        log.info("no link preview", extra={"url": url, "error": repr(exc)})
        return content
    if not page.mimetype.startswith(("text/html", "application/xhtml")):
        return content
    preview = parse_page(page.data.decode("utf-8", errors="replace"), url)
    if preview is None:
        return content
    fields = {f: getattr(content, f) for f in TextContent.__struct_fields__}
    return PreviewedText(**fields, preview=preview)


__all__ = [
    "LinkPreview",
    "PreviewedText",
    "close_fetchers",
    "first_url",
    "parse_page",
    "with_preview",
]

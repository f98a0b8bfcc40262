"""Media for outbound messages: inline base64 or a URL, always size-limited.

Base64 is checked and decoded when the message is accepted, so an oversize or malformed
payload is refused at once (``MEDIA_TOO_LARGE`` / ``INVALID_REQUEST``) and the queue holds
bytes, not text. A URL is checked when accepted (scheme, and the URL guard) and fetched
just before sending, streamed with a byte limit; a fetch that fails turns the message
into a ``failed`` ack carrying the error code.

The URL guard is pluggable. The default is the SSRF policy webhooks use
(:mod:`zapfleet.ssrf`): it refuses loopback, private, link-local and other non-global
addresses unless ``allow_private`` is set, resolving the host and checking every address,
before the request and before each redirect (a clear error for the user). The connection
itself is pinned the way webhook connections are, by the one mechanism of
:mod:`zapfleet.ssrf`: the fetcher's httpx client dials through
:class:`~zapfleet.ssrf.PinnedBackend`, which resolves the name once, keeps the addresses
the policy allows and connects to one of them (Host header, TLS SNI and the certificate
check keep the name) — so a DNS server that answers differently a moment later
(rebinding) cannot redirect the fetch inside the network.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import ssl
from collections.abc import Awaitable, Callable
from urllib.parse import urljoin, urlsplit

import httpcore
import httpx
import msgspec

from contract.protocol import ErrorCode, Media
from zapfleet.ssrf import (
    ALLOW_PRIVATE_SETTING,
    AddressPolicy,
    PinnedBackend,
    Resolver,
    UnsafeURLError,
    check_url,
    resolve,
    split_url,
)

INLINE_DECODE_IN_THREAD_BYTES = 256 * 1024
MAX_REDIRECTS = 3


class MediaError(Exception):
    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class UnresolvableHost(MediaError):
    """The URL's host does not resolve (now): refused when fetching, not when accepting —
    DNS may well answer by the time the message is sent."""


class MediaPayload(msgspec.Struct, kw_only=True):
    """Media bytes ready for an engine."""

    data: bytes
    mimetype: str
    filename: str | None = None
    # set by node_agent/media_convert.py for stickers and voice notes
    width: int | None = None
    height: int | None = None
    animated: bool = False
    seconds: float | None = None
    waveform: bytes | None = None

    @property
    def size(self) -> int:
        return len(self.data)

    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


# checks a URL before each request and redirect: MediaError when refused (the connection
# is pinned separately, by zapfleet.ssrf.PinnedBackend)
UrlGuard = Callable[[str], Awaitable[None]]


def sniff_mimetype(data: bytes) -> str:
    """The MIME type of ``data`` by its magic bytes (libmagic when present)."""
    try:
        import magic

        return str(magic.from_buffer(data[:8192], mime=True))
    except Exception:  # libmagic missing or unreadable data
        return "application/octet-stream"


def default_url_guard(allow_private: bool, resolver: Resolver = resolve) -> UrlGuard:
    """The SSRF policy webhooks use too (zapfleet/ssrf.py): http(s) only, and only hosts
    whose every address is public, unless ZAPFLEET_ALLOW_PRIVATE_TARGETS (development:
    loopback and private too; link-local and unspecified never)."""
    policy = AddressPolicy(allow_private=allow_private)

    async def guard(url: str) -> None:
        try:
            _, host, _ = split_url(url, "media URL")
        except UnsafeURLError as exc:  # not even an http(s) URL: the request is wrong
            raise MediaError(ErrorCode.INVALID_REQUEST, str(exc)) from None
        try:
            addresses = await check_url(
                url,
                policy,
                what="media URL",
                allow_setting=ALLOW_PRIVATE_SETTING,
                resolver=resolver,
            )
        except UnsafeURLError as exc:
            raise MediaError(ErrorCode.MEDIA_UNAVAILABLE, str(exc)) from None
        if not addresses:
            raise UnresolvableHost(ErrorCode.MEDIA_UNAVAILABLE, f"cannot resolve {host}")

    return guard


class MediaFetcher:
    def __init__(
        self,
        *,
        max_bytes: int,
        timeout_s: float = 30.0,
        allow_private: bool = False,
        guard: UrlGuard | None = None,
        verify: ssl.SSLContext | bool = True,
        policy: AddressPolicy | None = None,
        resolver: Resolver = resolve,
    ) -> None:
        self.max_bytes = max_bytes
        self.verify = verify  # certificate checks (an SSLContext with an extra CA in tests)
        self.timeout_s = timeout_s
        self.guard = guard or default_url_guard(allow_private, resolver)
        # what connections may dial (zapfleet.ssrf.PinnedBackend), checked at connect time
        self.policy = policy or AddressPolicy(allow_private=allow_private)
        self.resolver = resolver
        self._client: httpx.AsyncClient | None = None

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            transport = httpx.AsyncHTTPTransport(verify=self.verify)
            # httpx has no public hook for a network backend: its pool is replaced by one
            # built the same way (httpx's limits) that dials through the pinned backend;
            # no proxy either (one from the environment would dial the name)
            transport._pool = httpcore.AsyncConnectionPool(
                ssl_context=httpx.create_ssl_context(verify=self.verify),
                max_connections=100,
                max_keepalive_connections=20,
                keepalive_expiry=5.0,
                network_backend=PinnedBackend(self.policy, self.resolver),
            )
            self._client = httpx.AsyncClient(
                transport=transport,
                follow_redirects=False,
                timeout=httpx.Timeout(self.timeout_s, connect=min(10.0, self.timeout_s)),
                headers={"User-Agent": "zapfleet-agent media fetcher"},
            )
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def _too_large(self, size: int) -> MediaError:
        return MediaError(
            ErrorCode.MEDIA_TOO_LARGE,
            f"media is {size} bytes, the limit is {self.max_bytes} bytes",
        )

    async def accept(self, media: Media) -> MediaPayload | None:
        """Check media when a message is accepted. Inline media is decoded now and
        returned; URL media is checked (not fetched) and ``None`` is returned."""
        if (media.url is None) == (media.base64 is None):
            raise MediaError(
                ErrorCode.INVALID_REQUEST, "media needs exactly one of 'url' or 'base64'"
            )
        if media.url is not None:
            with contextlib.suppress(UnresolvableHost):
                await self.guard(media.url)
            return None
        text = media.base64 or ""
        if "," in text[:200] and text.startswith("data:"):
            text = text.split(",", 1)[1]  # a data: URL is accepted too
        estimate = len(text) * 3 // 4
        if estimate - 3 > self.max_bytes:
            raise self._too_large(estimate)
        if len(text) > INLINE_DECODE_IN_THREAD_BYTES:
            data = await asyncio.to_thread(_decode_base64, text)
        else:
            data = _decode_base64(text)
        if len(data) > self.max_bytes:
            raise self._too_large(len(data))
        if not data:
            raise MediaError(ErrorCode.INVALID_REQUEST, "media is empty")
        mimetype = media.mimetype
        if not mimetype:
            mimetype = await asyncio.to_thread(sniff_mimetype, data)
        return MediaPayload(data=data, mimetype=mimetype, filename=media.filename)

    async def fetch(self, media: Media) -> MediaPayload:
        """Download URL media (guarded, redirect by redirect, size-limited)."""
        if media.url is None:
            raise MediaError(ErrorCode.INVALID_REQUEST, "media has no URL")
        url = media.url
        for _ in range(MAX_REDIRECTS + 1):
            await self.guard(url)
            try:
                async with self._http().stream("GET", url) as response:
                    if response.is_redirect and "location" in response.headers:
                        url = urljoin(url, response.headers["location"])
                        continue
                    if response.status_code != 200:
                        raise MediaError(
                            ErrorCode.MEDIA_UNAVAILABLE,
                            f"media URL answered HTTP {response.status_code}",
                        )
                    declared = response.headers.get("content-length")
                    if declared and declared.isdigit() and int(declared) > self.max_bytes:
                        raise self._too_large(int(declared))
                    chunks: list[bytes] = []
                    size = 0
                    async for chunk in response.aiter_bytes():
                        size += len(chunk)
                        if size > self.max_bytes:
                            raise self._too_large(size)
                        chunks.append(chunk)
                    header_type = response.headers.get("content-type", "").split(";")[0].strip()
            except UnsafeURLError as exc:  # refused at connect time (zapfleet.ssrf)
                raise MediaError(ErrorCode.MEDIA_UNAVAILABLE, str(exc)) from None
            except httpx.HTTPError as exc:
                raise MediaError(
                    ErrorCode.MEDIA_UNAVAILABLE, f"media download failed: {exc!r}"
                ) from None
            data = b"".join(chunks)
            if not data:
                raise MediaError(ErrorCode.MEDIA_UNAVAILABLE, "media URL returned no content")
            mimetype = media.mimetype or ""
            if mimetype in ("", "application/octet-stream"):
                generic = header_type in ("", "application/octet-stream")
                mimetype = await asyncio.to_thread(sniff_mimetype, data) if generic else header_type
            filename = media.filename or urlsplit(url).path.rsplit("/", 1)[-1] or None
            return MediaPayload(data=data, mimetype=mimetype, filename=filename)
        raise MediaError(ErrorCode.MEDIA_UNAVAILABLE, f"more than {MAX_REDIRECTS} redirects")


def _decode_base64(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        try:  # tolerate line breaks and URL-safe alphabets, but nothing else
            cleaned = "".join(text.split())
            return base64.b64decode(cleaned.replace("-", "+").replace("_", "/"), validate=True)
        except (binascii.Error, ValueError):
            raise MediaError(
                ErrorCode.INVALID_REQUEST, "media.base64 is not valid base64"
            ) from None

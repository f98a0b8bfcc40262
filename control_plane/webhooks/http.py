"""A lean HTTP/1.1 client for webhook POSTs: keep-alive pools per destination, httptools
(llhttp, C) to parse responses, the SSRF guard on every connection.

Why not a general client: a delivery needs one thing — the status code — and general
clients spend 200-250 µs of CPU per request on features a webhook never uses (cookies,
redirects, proxies, decompression, multipart, tracing). This one costs ~50 µs, which is
what makes thousands of deliveries per second possible on one core (measured against
httpcore, aiohttp and httpx in one run: `just bench clients`, docs/webhooks.md).

What it does:

- ``http`` and ``https`` (certificates verified, SNI), user info in the URL becomes a
  ``Authorization: Basic`` header;
- the host is resolved (cached 30 s) and only addresses the :class:`AddressPolicy`
  allows are dialled, so the SSRF check and the connection use the same addresses;
- keep-alive: a connection whose response ended cleanly (``Content-Length``, chunked, no
  ``Connection: close``) goes back to its destination's pool; idle ones are dropped after
  ``idle_s``; a response body is read and discarded (more than 1 MiB closes the
  connection), and the status is reported once the answer is complete, so the request
  timeout covers the body too; 1xx answers (100, 103) before the final one are skipped;
- a request that fails on a reused connection before any answer (the server closed it
  while idle) is retried once on a new connection.

Protocol tests against scripted real servers: tests/webhooks/test_http_client.py.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ssl
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import cast
from urllib.parse import unquote, urlsplit

import httptools

from zapfleet.ssrf import (
    AddressPolicy,
    Resolver,
    UnsafeURLError,
    dial_addresses,
    ip_literal,
    resolve,
    split_url,
)

MAX_BODY = 1024 * 1024
DNS_TTL_S = 30.0


class RequestError(Exception):
    """The request got no usable answer (refused, reset, closed, malformed)."""


@dataclass(frozen=True, slots=True)
class Target:
    origin: str
    host: str
    port: int
    tls: bool
    head: bytes  # "POST <path> HTTP/1.1\r\nHost: ...\r\n" and the fixed headers


def _clean(value: str, what: str) -> str:
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in value):
        raise UnsafeURLError(f"the {what} of a webhook URL may not contain spaces or controls")
    return value


def parse_target(url: str, user_agent: str) -> Target:
    scheme, host, port = split_url(url)
    parts = urlsplit(url)
    tls = scheme == "https"
    path = _clean(parts.path or "/", "path") + (
        "?" + _clean(parts.query, "query") if parts.query else ""
    )
    shown_host = f"[{host}]" if ":" in host else host
    host_header = shown_host if port == (443 if tls else 80) else f"{shown_host}:{port}"
    lines = [f"POST {path} HTTP/1.1", f"Host: {_clean(host_header, 'host')}"]
    lines.append(f"User-Agent: {user_agent}")
    if parts.username is not None:
        credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        lines.append("Authorization: Basic " + base64.b64encode(credentials.encode()).decode())
    head = ("\r\n".join(lines) + "\r\n").encode("latin-1", "strict")
    return Target(f"{scheme}://{shown_host}:{port}", host, port, tls, head)


class _Connection(asyncio.Protocol):
    """One keep-alive connection; answers one request at a time."""

    def __init__(self, pool: deque[_Connection]) -> None:
        self._pool = pool
        self._parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.answered = False  # any byte of an answer arrived for the current request
        self.idle_since = time.monotonic()
        self._status: asyncio.Future[int] | None = None
        self._interim = False
        self._final: int | None = None  # status of the final answer being read
        self._body = 0

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self.answered = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(RequestError(f"malformed response: {exc}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._final is not None:  # a body read until the close: the answer is whole
            self._finish()
        self._fail(RequestError("connection closed by the receiver" + (f": {exc}" if exc else "")))

    # httptools callbacks
    def on_message_begin(self) -> None:
        self._body = 0
        self._final = None

    def on_headers_complete(self) -> None:
        status = int(self._parser.get_status_code())
        self._interim = 100 <= status < 200
        if not self._interim:
            self._final = status  # reported once the body is read (or given up)

    def on_body(self, body: bytes) -> None:
        self._body += len(body)
        if self._body > MAX_BODY:
            self._finish()
            self.close()

    def on_message_complete(self) -> None:
        if self._interim:
            return  # 100 Continue, 103 Early Hints: the real answer follows
        self._finish()
        self._final = None  # reported: a close from now on is not this answer's end
        if self._parser.should_keep_alive() and not self.closed:
            self.idle_since = time.monotonic()
            self._status = None
            self._pool.append(self)
        else:
            self.close()

    def _finish(self) -> None:
        """The answer is complete (or its body too long to read): report the status. Not
        before the body is read: a connection must be back in its pool, or closed, when
        its request ends — a receiver trickling a body would otherwise hold a connection
        that no timeout and no pool sees (and every delivery meanwhile opens another)."""
        if self._final is not None and self._status is not None and not self._status.done():
            self._status.set_result(self._final)

    # use
    def request(self, data: bytes, timeout_s: float) -> asyncio.Future[int]:
        """Send one request; the future gets the status, or TimeoutError after
        ``timeout_s`` (one timer, cheaper than an asyncio.timeout block per request)."""
        assert self.transport is not None
        self.answered = False
        loop = asyncio.get_running_loop()
        status = self._status = loop.create_future()
        timer = loop.call_later(timeout_s, self._expire, status)
        status.add_done_callback(lambda _: timer.cancel())
        self.transport.write(data)
        return status

    def _expire(self, status: asyncio.Future[int]) -> None:
        if not status.done():
            status.set_exception(TimeoutError())

    def _fail(self, error: Exception) -> None:
        if self._status is not None and not self._status.done():
            self._status.set_exception(error)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class WebhookClient:
    def __init__(
        self,
        policy: AddressPolicy,
        *,
        user_agent: str,
        connect_timeout_s: float = 5.0,
        idle_s: float = 15.0,
        resolver: Resolver = resolve,
        tls: ssl.SSLContext | None = None,  # certificate checks: the system's CAs if None
    ) -> None:
        self.policy = policy
        self.resolver = resolver
        self.user_agent = user_agent
        self.connect_timeout_s = connect_timeout_s
        self.idle_s = idle_s
        self._targets: dict[str, Target | UnsafeURLError] = {}
        self._pools: dict[str, deque[_Connection]] = {}
        self._dns: dict[tuple[str, int], tuple[float, list[str]]] = {}
        self._tls: ssl.SSLContext | None = tls

    def target(self, url: str) -> Target:
        """The parsed destination of ``url`` (cached); UnsafeURLError when it may never be
        called (not http(s), controls in it, or an IP literal the policy refuses)."""
        known = self._targets.get(url)
        if known is None:
            try:
                known = parse_target(url, self.user_agent)
                literal = ip_literal(known.host)
                reason = self.policy.refusal(literal) if literal is not None else None
                if reason is not None:
                    raise UnsafeURLError(
                        f"{known.origin} is a {reason} address: refused (SSRF guard)"
                    )
            except UnsafeURLError as exc:
                known = exc
            if len(self._targets) > 10_000:
                self._targets.clear()
            self._targets[url] = known
        if isinstance(known, UnsafeURLError):
            raise known
        return known

    async def post(
        self, url: str, body: bytes, headers: Mapping[str, str], timeout_s: float = 10.0
    ) -> int:
        """POST ``body``; the response status. Raises UnsafeURLError (never retry),
        RequestError, or TimeoutError when connecting took longer than the connect
        timeout or the answer longer than ``timeout_s``."""
        target = self.target(url)
        text = "".join([f"{name}: {value}\r\n" for name, value in headers.items()])
        if text.count("\n") != len(headers) or text.count("\r") != len(headers):
            raise RequestError("a header holds a line break")
        data = b"%s%sContent-Length: %d\r\n\r\n%s" % (
            target.head,
            text.encode("latin-1"),
            len(body),
            body,
        )
        pool = self._pools.get(target.origin)
        if pool is None:
            pool = self._pools[target.origin] = deque()
        while pool:
            connection = pool.pop()
            if connection.closed or time.monotonic() - connection.idle_since > self.idle_s:
                connection.close()
                continue
            try:
                return await self._exchange(connection, data, timeout_s)
            except RequestError:
                if connection.answered:
                    raise
                # the receiver closed this idle connection before reading: once more, fresh
                break
        started = time.monotonic()
        connection = await self._connect(target, pool)
        remaining = timeout_s - (time.monotonic() - started)
        return await self._exchange(connection, data, max(0.001, remaining))

    @staticmethod
    async def _exchange(connection: _Connection, data: bytes, timeout_s: float) -> int:
        try:
            return await connection.request(data, timeout_s)
        except BaseException:  # failed, timed out or cancelled: the connection is spent
            connection.close()
            raise

    async def _addresses(self, target: Target) -> list[str]:
        if ip_literal(target.host) is not None:
            return [target.host.strip("[]")]
        key = (target.host, target.port)
        cached = self._dns.get(key)
        now = time.monotonic()
        if cached is not None and now - cached[0] < DNS_TTL_S:
            return cached[1]
        resolved = await dial_addresses(target.host, target.port, self.policy, self.resolver)
        if not resolved:
            raise RequestError(f"cannot resolve {target.host!r}")
        allowed = [str(a) for a in resolved]
        if len(self._dns) > 10_000:
            self._dns.clear()
        self._dns[key] = (now, allowed)
        return allowed

    async def _connect(self, target: Target, pool: deque[_Connection]) -> _Connection:
        loop = asyncio.get_running_loop()
        tls: ssl.SSLContext | None = None
        if target.tls:
            if self._tls is None:
                self._tls = ssl.create_default_context()
            tls = self._tls
        last: Exception | None = None
        for address in await self._addresses(target):
            try:
                async with asyncio.timeout(self.connect_timeout_s):
                    _, protocol = await loop.create_connection(
                        lambda: _Connection(pool),
                        address,
                        target.port,
                        ssl=tls,
                        server_hostname=target.host if tls else None,
                    )
            except (OSError, TimeoutError, ssl.SSLError) as exc:
                last = exc
                continue
            return protocol
        raise RequestError(f"cannot connect to {target.origin}: {last}")

    def prune(self) -> None:
        """Close connections idle for longer than ``idle_s``."""
        now = time.monotonic()
        for origin, pool in list(self._pools.items()):
            for connection in [c for c in pool if now - c.idle_since > self.idle_s or c.closed]:
                pool.remove(connection)
                connection.close()
            if not pool:
                del self._pools[origin]

    async def close(self) -> None:
        for pool in self._pools.values():
            for connection in pool:
                connection.close()
        self._pools.clear()
        with contextlib.suppress(Exception):
            await asyncio.sleep(0)

"""A lean pipelined Valkey client for the request hot path.

Profiling the send and status paths showed the general-purpose client (valkey-py) spending
more CPU per command than the rest of the request: a pooled connection per concurrent
command, a lock, a write syscall and a buffered reader per call. The hot path needs three
commands (``EVALSHA``, ``SET``, ``GET``/``MGET``), so this client keeps **one** connection
per worker and pipelines every concurrent command over it: commands issued in the same
event-loop tick go out in one write, replies come back in order (RESP guarantees it) and
resolve their futures first-in first-out. Measured against valkey-py (with libvalkey) and
valkey-glide in one run (`just bench clients`, docs/api.md "Performance notes"): the
cheapest of them needs 2-8x its CPU per request.

Failure handling: a lost connection fails every pending command with
``ConnectionError`` and the next command reconnects; a command pending longer than
``timeout_s`` closes the connection (so a hung server cannot hang requests forever).
Everything else in the control plane keeps using valkey-py.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections import deque
from typing import Any, cast
from urllib.parse import unquote, urlparse


class ReplyError(Exception):
    """An error reply from the server (``-ERR ...``)."""


class _Incomplete(Exception):
    pass


_INCOMPLETE = _Incomplete()


def encode_command(args: tuple[Any, ...]) -> bytes:
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, bytes):
            data = arg
        elif isinstance(arg, str):
            data = arg.encode()
        elif isinstance(arg, int | float):
            data = repr(arg).encode()
        else:
            raise TypeError(f"cannot send {type(arg).__name__} to Valkey")
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


def parse(buffer: bytearray | bytes, pos: int) -> tuple[Any, int]:
    """One RESP2 reply from ``buffer[pos:]``: (value, next position); raises _Incomplete."""
    end = buffer.find(b"\r\n", pos)
    if end < 0:
        raise _INCOMPLETE
    kind = buffer[pos]
    line = bytes(buffer[pos + 1 : end])
    nxt = end + 2
    if kind == 43:  # + simple string
        return line, nxt
    if kind == 58:  # : integer
        return int(line), nxt
    if kind == 36:  # $ bulk string
        length = int(line)
        if length < 0:
            return None, nxt
        if len(buffer) < nxt + length + 2:
            raise _INCOMPLETE
        return bytes(buffer[nxt : nxt + length]), nxt + length + 2
    if kind == 42:  # * array
        count = int(line)
        if count < 0:
            return None, nxt
        items = []
        for _ in range(count):
            item, nxt = parse(buffer, nxt)
            items.append(item)
        return items, nxt
    if kind == 45:  # - error
        return ReplyError(line.decode(errors="replace")), nxt
    raise ConnectionError(f"unexpected RESP byte {kind!r}")


class _Protocol(asyncio.Protocol):
    def __init__(self, client: FastValkey) -> None:
        self.client = client
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses; they behave alike
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        pos = 0
        pending = self.client._pending
        try:
            while pos < len(buffer):
                value, pos = parse(buffer, pos)
                future = pending.popleft()[0] if pending else None
                if future is not None and not future.done():
                    if isinstance(value, ReplyError):
                        future.set_exception(value)
                    else:
                        future.set_result(value)
        except _Incomplete:
            pass
        except Exception as exc:  # a protocol error: start over on a new connection
            self.client._fail(ConnectionError(f"Valkey protocol error: {exc}"), self)
            return
        del buffer[:pos]

    def connection_lost(self, exc: Exception | None) -> None:
        self.client._fail(ConnectionError(f"Valkey connection lost: {exc or 'closed'}"), self)


class HotClient:
    """What the hot path needs of a Valkey client."""

    async def execute(self, *args: Any) -> Any:
        raise NotImplementedError

    async def evalsha(self, script: str, keys: list[str], args: list[Any]) -> Any:
        raise NotImplementedError

    async def close(self) -> None:
        return None


class FastValkey(HotClient):
    """``await client.execute("GET", key)``; ``await client.evalsha(script, keys, args)``."""

    def __init__(self, url: str, timeout_s: float = 5.0) -> None:
        parsed = urlparse(url)
        if parsed.scheme not in ("valkey", "redis"):
            raise ValueError(f"FastValkey supports valkey:// and redis:// URLs, not {url!r}")
        self.host = parsed.hostname or "127.0.0.1"
        self.port = parsed.port or 6379
        self.db = int(parsed.path.lstrip("/") or 0)
        self.username = unquote(parsed.username) if parsed.username else None
        self.password = unquote(parsed.password) if parsed.password else None
        self.timeout_s = timeout_s
        self._protocol: _Protocol | None = None
        self._pending: deque[tuple[asyncio.Future[Any], float]] = deque()
        self._outgoing: list[bytes] = []
        self._flush_scheduled = False
        self._connecting: asyncio.Lock | None = None
        self._watchdog: asyncio.Task[None] | None = None

    @staticmethod
    def supports(url: str) -> bool:
        return urlparse(url).scheme in ("valkey", "redis")

    async def _connect(self) -> _Protocol:
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._protocol is not None:
                return self._protocol
            loop = asyncio.get_running_loop()
            _, protocol = await asyncio.wait_for(
                loop.create_connection(lambda: _Protocol(self), self.host, self.port),
                self.timeout_s,
            )
            self._protocol = protocol
            hello: list[tuple[Any, ...]] = []
            if self.password is not None:
                auth = (self.username, self.password) if self.username else (self.password,)
                hello.append(("AUTH", *auth))
            if self.db:
                hello.append(("SELECT", self.db))
            for command in hello:
                await self.execute(*command)
            if self._watchdog is None:
                self._watchdog = asyncio.create_task(self._watch(), name="fastvalkey-watchdog")
            return protocol

    def _fail(self, exc: Exception, origin: _Protocol | None = None) -> None:
        if origin is not None and self._protocol is not origin:
            return  # an old connection's late news: the current one is fine
        protocol, self._protocol = self._protocol, None
        pending, self._pending = self._pending, deque()
        self._outgoing.clear()
        for future, _ in pending:
            if not future.done():
                future.set_exception(exc)
        if protocol is not None and protocol.transport is not None:
            protocol.transport.abort()

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(max(0.2, self.timeout_s / 5))
            if self._pending and time.monotonic() - self._pending[0][1] > self.timeout_s:
                self._fail(TimeoutError(f"Valkey did not answer within {self.timeout_s} s"))

    def _flush(self) -> None:
        self._flush_scheduled = False
        protocol = self._protocol
        if not self._outgoing:
            return
        data = b"".join(self._outgoing)
        self._outgoing.clear()
        if protocol is None or protocol.transport is None:
            self._fail(ConnectionError("Valkey connection lost"))
            return
        protocol.transport.write(data)

    async def execute(self, *args: Any) -> Any:
        protocol = self._protocol or await self._connect()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._pending.append((future, time.monotonic()))
        self._outgoing.append(encode_command(args))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        del protocol
        return await future

    async def evalsha(self, script: str, keys: list[str], args: list[Any]) -> Any:
        sha = hashlib.sha1(script.encode()).hexdigest()
        try:
            return await self.execute("EVALSHA", sha, len(keys), *keys, *args)
        except ReplyError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
        await self.execute("SCRIPT", "LOAD", script)
        return await self.execute("EVALSHA", sha, len(keys), *keys, *args)

    async def close(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watchdog
            self._watchdog = None
        self._fail(ConnectionError("client closed"))


class ValkeyPyAdapter(HotClient):
    """The same two calls over valkey-py, for URLs FastValkey does not handle (TLS, unix
    sockets)."""

    def __init__(self, client: Any) -> None:
        self.client = client

    async def execute(self, *args: Any) -> Any:
        return await self.client.execute_command(*args)

    async def evalsha(self, script: str, keys: list[str], args: list[Any]) -> Any:
        return await self.client.eval(script, len(keys), *keys, *args)

    async def close(self) -> None:
        return None


def hot_client(url: str, fallback: Any) -> HotClient:
    return FastValkey(url) if FastValkey.supports(url) else ValkeyPyAdapter(fallback)

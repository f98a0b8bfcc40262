"""One live socket per account in the simulated network — enforced and counted.

WhatsApp allows one socket per linked device: when a second one connects, the server
replaces the first ("stream replaced"). zapfleet's invariant is stronger — its fencing
must make sure the second one never appears (DESIGN §4) — so the sim makes a violation
visible instead of silently healing it:

- every online sim socket subscribes to ``zf.sim.presence.<phone>`` and answers probes
  from *other* sockets of the same account (never while its agent's lease is gone);
- a socket probes before it goes online, and again every ``keepalive_s`` while online
  (a frozen process that wakes up with a stale socket is caught by its next keepalive);
  the keepalive is one loop per engine (:class:`Keepalive`, issue 17), not one per socket:
  every ``keepalive_s`` it publishes each online socket's probe with a reply subject
  under one inbox of the engine, and an answer goes to the socket named in it — no task,
  timer or reply future per socket (those were 3/4 of an idle agent's CPU at 125 sockets);
- an answer means two live sockets for one account: the violation is counted in KV
  ``zf_sim`` (key ``violations``, read by tests and benchmarks) and, like WhatsApp, the
  older socket is kicked (``zf.sim.kick.<socket_id>``).

A socket whose process is frozen cannot answer; it is not live until it wakes up, and
then its own keepalive probes (unless its agent fenced it first, which is the point).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from zapfleet.backoff import cas_attempts

log = logging.getLogger(__name__)

VIOLATIONS_KEY = "violations"


class Probe(msgspec.Struct, kw_only=True):
    socket_id: str
    session_id: str
    online_since: float


_encode = msgspec.json.encode
_probe = msgspec.json.Decoder(Probe)


def presence_subject(phone: str) -> str:
    return f"zf.sim.presence.{phone}"


def kick_subject(socket_id: str) -> str:
    return f"zf.sim.kick.{socket_id}"


async def violations(kv: KeyValue) -> int:
    """How many times two live sockets of one account were seen (since the bucket began)."""
    try:
        entry = await kv.get(VIOLATIONS_KEY)
    except KeyNotFoundError:
        return 0
    return int(entry.value or b"0")


async def count_violation(kv: KeyValue) -> int:
    async for _ in cas_attempts(50):
        try:
            entry = await kv.get(VIOLATIONS_KEY)
        except KeyNotFoundError:
            try:
                await kv.create(VIOLATIONS_KEY, b"1")
            except KeyWrongLastSequenceError:
                continue
            return 1
        count = int(entry.value or b"0") + 1
        try:
            await kv.update(VIOLATIONS_KEY, str(count).encode(), last=entry.revision)
        except KeyWrongLastSequenceError:
            continue
        return count
    raise RuntimeError("could not count a sim violation: too much contention")


class Presence:
    """The presence of one sim socket while it is online."""

    def __init__(
        self,
        nc: NATS,
        kv: KeyValue,
        session_id: str,
        *,
        may_act: Callable[[], bool],
        on_kicked: Callable[[], Awaitable[None]],
        keepalive: Keepalive,
        probe_timeout_s: float,
    ) -> None:
        self.nc = nc
        self.kv = kv
        self.session_id = session_id
        self.may_act = may_act
        self.on_kicked = on_kicked
        self.keepalive = keepalive
        self.probe_timeout_s = probe_timeout_s
        self.socket_id = ""
        self.phone: str | None = None
        self.online_since = 0.0
        self._subs: list[Subscription] = []

    @property
    def active(self) -> bool:
        return self.phone is not None

    async def claim(self, phone: str) -> None:
        """Before going online as ``phone``: probe for another live socket, then hold the
        presence subscription and start the keepalive."""
        await self.release()
        self.socket_id = secrets.token_hex(8)
        self.online_since = time.time()
        await self._probe(phone)
        self.phone = phone
        self._subs = [
            await self.nc.subscribe(presence_subject(phone), cb=self._on_probe),
            await self.nc.subscribe(kick_subject(self.socket_id), cb=self._on_kick),
        ]
        self.keepalive.add(self)

    async def release(self) -> None:
        self.phone = None
        self.keepalive.remove(self)
        subs, self._subs = self._subs, []
        for sub in subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    def probe_body(self) -> bytes:
        return _encode(
            Probe(
                socket_id=self.socket_id,
                session_id=self.session_id,
                online_since=self.online_since,
            )
        )

    async def _probe(self, phone: str) -> None:
        try:
            reply = await self.nc.request(
                presence_subject(phone), self.probe_body(), timeout=self.probe_timeout_s
            )
        except (NoRespondersError, NatsTimeout):
            return
        await self.answered(phone, reply.data)

    async def answered(self, phone: str, data: bytes) -> None:
        """Another live socket of ``phone`` answered a probe of this one."""
        try:
            other = _probe.decode(data)
        except msgspec.DecodeError:
            return
        total = await count_violation(self.kv)
        log.error(
            "sim: two live sockets for one account",
            extra={
                "phone": phone,
                "session_id": self.session_id,
                "other_session_id": other.session_id,
                "violations": total,
            },
        )
        # like WhatsApp: the newer connection replaces the older one
        older = other.socket_id if other.online_since <= self.online_since else self.socket_id
        if older == self.socket_id:
            await self.on_kicked()
        else:
            await self.nc.publish(kick_subject(older), b"")

    async def _on_probe(self, msg: Msg) -> None:
        if not self.active or not self.may_act():
            return  # offline, or fenced: a socket without a lease does not answer
        try:
            probe = _probe.decode(msg.data)
        except msgspec.DecodeError:
            return
        if probe.socket_id == self.socket_id or not msg.reply:
            return
        await msg.respond(self.probe_body())

    async def _on_kick(self, _: Msg) -> None:
        if self.active:
            await self.on_kicked()


class Keepalive:
    """The keepalive of all online sockets of one engine (one agent): every ``period_s``
    (0 = none) each socket's probe goes out as one publish whose reply subject is
    ``<inbox>.<socket_id>`` under one subscription of the engine; an answer — another
    live socket of the account — is handed to the socket it names. Nothing while the
    agent's lease is gone (``may_act``): a fenced socket must not touch the network. The
    loop runs while there are sockets, so an engine nobody closes leaves nothing behind.
    """

    def __init__(self, nc: NATS, period_s: float, may_act: Callable[[], bool]) -> None:
        self.nc = nc
        self.period_s = period_s
        self.may_act = may_act
        self._sockets: dict[str, Presence] = {}
        self._task: asyncio.Task[None] | None = None

    def add(self, presence: Presence) -> None:
        self._sockets[presence.socket_id] = presence
        if self.period_s > 0 and self._task is None:
            self._task = asyncio.create_task(self._run(), name="sim-keepalive")

    def remove(self, presence: Presence) -> None:
        if self._sockets.get(presence.socket_id) is presence:
            del self._sockets[presence.socket_id]

    async def close(self) -> None:
        """Stop the loop now (the engine closes; its sockets are gone or going)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _run(self) -> None:
        inbox = self.nc.new_inbox()
        sub: Subscription | None = None
        try:
            while True:
                await asyncio.sleep(self.period_s)
                if not self._sockets:
                    self._task = None  # before any await: an add() from now starts anew
                    return
                if not self.may_act():
                    continue  # the agent fences these sockets: not a word to the network
                with contextlib.suppress(Exception):
                    if sub is None:
                        sub = await self.nc.subscribe(f"{inbox}.*", cb=self._on_answer)
                    for socket_id, presence in list(self._sockets.items()):
                        phone = presence.phone
                        if phone is not None:
                            reply = f"{inbox}.{socket_id}"
                            await self.nc.publish(
                                presence_subject(phone), presence.probe_body(), reply=reply
                            )
        finally:
            if self._task is asyncio.current_task():
                self._task = None
            if sub is not None:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()

    async def _on_answer(self, msg: Msg) -> None:
        presence = self._sockets.get(msg.subject.rpartition(".")[2])
        phone = presence.phone if presence is not None else None
        if presence is None or phone is None or not self.may_act():
            return
        await presence.answered(phone, msg.data)

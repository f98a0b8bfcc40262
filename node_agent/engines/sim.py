"""A simulated WhatsApp network over NATS.

WhatsApp's servers are out of reach in tests, demos and load tests, so this engine plays
both the phone and the server. Accounts live in the KV bucket ``zf_sim`` (so a session is
portable between agents, like a shared device store), and sessions on different agents
reach each other through NATS subjects:

- ``zf.sim.link.<session key>``  a phone scans a QR code (or types a pairing code)
- ``zf.sim.pair.<phone>``        a phone types the pairing code issued for its number
- ``zf.sim.inbox.<phone>``       a message for the socket logged in as ``phone``
- ``zf.sim.receipt.<phone>``     delivery/read receipts for messages ``phone`` sent
- ``zf.sim.fault.<session key>`` inject latency, send failures or a disconnect

Everything is keyed by the session's internal key (``SessionSpec.key``: its ``uid``, or
its name for records older than uids), never by the caller's name alone.

QR codes rotate like WhatsApp's: the first lives ``qr_first_s`` (60 s), the next ones
``qr_next_s`` (20 s); after ``qr_max_codes`` the pairing attempt times out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
import time
from collections.abc import Callable
from typing import Any, Literal

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from nats.js.api import ObjectStoreConfig
from nats.js.errors import KeyNotFoundError, ObjectNotFoundError
from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore

from node_agent.engines._base import (
    Connected,
    Disconnected,
    Emit,
    EngineError,
    Inbound,
    InboundMedia,
    LoggedOut,
    Paired,
    QrShown,
    Receipt,
)
from node_agent.engines.sim_presence import Presence
from node_agent.media import MediaPayload
from node_agent.protocol import (
    MessageContent,
    NumberStatus,
    SessionSpec,
    TextContent,
)
from zapfleet._kv import close

log = logging.getLogger(__name__)

DIRECTORY_REFRESH_S = 30.0

SIM_BUCKET = "zf_sim"
SIM_MEDIA_BUCKET = "zf_sim_media"  # the simulated media servers (WhatsApp's CDN)
QR_PREFIX = "SIM1"


class SimConfig(msgspec.Struct, kw_only=True):
    qr_first_s: float = 60.0
    qr_next_s: float = 20.0
    qr_max_codes: int = 6
    connect_latency_s: float = 0.01
    read_after_s: float | None = 0.5
    keepalive_s: float = 5.0  # presence probe period (sim_presence.py)
    probe_timeout_s: float = 0.25
    media_ttl_s: float = 86400.0  # how long the simulated media servers keep a file


class Faults(msgspec.Struct, kw_only=True):
    """Injected faults: ``latency_ms`` on connects and sends, a ``send_failure_rate``,
    ``disconnect`` (drop the socket now, reported), ``zombie`` (drop it silently: the
    session still looks connected — the watchdog must notice) and ``fail_connects``
    (refuse the next N connects)."""

    latency_ms: float = 0.0
    send_failure_rate: float = 0.0
    disconnect: bool = False
    zombie: bool = False
    fail_connects: int = 0


class LinkRequest(msgspec.Struct, kw_only=True):
    code: str
    phone: str


class LinkReply(msgspec.Struct, kw_only=True):
    ok: bool
    error: str | None = None


class Wire(msgspec.Struct, kw_only=True):
    """A message on the simulated network."""

    id: str
    sender: str
    type: str
    ts: float
    text: str | None = None
    content: dict[str, Any] | None = None


class WireReceipt(msgspec.Struct, kw_only=True):
    id: str
    status: Literal["delivered", "read"]
    peer: str


class Account(msgspec.Struct, kw_only=True):
    phone: str
    paired_at: float


_encode = msgspec.json.encode


def qr_session_id(code: str) -> str:
    """The session a sim QR code belongs to (what a phone reads from the picture)."""
    parts = code.split(",")
    if len(parts) != 3 or parts[0] != QR_PREFIX:
        raise ValueError("not a zapfleet sim QR code")
    return parts[1]


async def link(nc: NATS, code: str, phone: str, *, session_id: str | None = None) -> LinkReply:
    """Act as a phone: scan ``code`` (a QR string or a phone pairing code) as ``phone``.
    A pairing code reaches the session that asked for a code for ``phone`` (like
    WhatsApp, which routes it by number); ``session_id`` (its internal key) is optional."""
    if session_id is not None:
        subject = f"zf.sim.link.{session_id}"
    elif code.startswith(QR_PREFIX + ","):
        subject = f"zf.sim.link.{qr_session_id(code)}"
    else:
        subject = f"zf.sim.pair.{phone}"
    try:
        msg = await nc.request(subject, _encode(LinkRequest(code=code, phone=phone)), timeout=5)
    except (NoRespondersError, NatsTimeout):
        return LinkReply(ok=False, error="session is not waiting for a scan")
    return msgspec.json.decode(msg.data, type=LinkReply)


async def inject_faults(nc: NATS, session_id: str, faults: Faults) -> None:
    await nc.request(f"zf.sim.fault.{session_id}", _encode(faults), timeout=5)


async def seed_account(nc: NATS, session_id: str, phone: str) -> None:
    """Link ``session_id`` to ``phone`` without a scan (tests, demos and benchmarks):
    the session connects straight away when it starts, on any agent."""
    from nats.js.api import KeyValueConfig

    kv = await nc.jetstream().create_key_value(KeyValueConfig(bucket=SIM_BUCKET, history=1))
    await kv.put(f"acct.{session_id}", _encode(Account(phone=phone, paired_at=time.time())))
    await kv.put(f"num.{phone}", session_id.encode())


class SimEngine:
    name: Literal["sim"] = "sim"

    def __init__(self, nc: NATS, config: SimConfig | None = None) -> None:
        self.nc = nc
        self.config = config or SimConfig()
        self._kv: KeyValue | None = None
        self._media: ObjectStore | None = None
        self.may_act: Callable[[], bool] = lambda: True
        # the network's phone book, kept current by a KV watch: a send to a known number
        # needs no lookup (measured: the lookup was 3.4 % of the agent's CPU per send)
        self._registered: set[str] = set()
        self._directory: asyncio.Task[None] | None = None

    def set_lease_guard(self, may_act: Callable[[], bool]) -> None:
        """The agent's lease check: a socket does nothing on the network without it."""
        self.may_act = may_act

    @property
    def media(self) -> ObjectStore:
        if self._media is None:
            raise RuntimeError("SimEngine.start() was not awaited")
        return self._media

    @property
    def kv(self) -> KeyValue:
        if self._kv is None:
            raise RuntimeError("SimEngine.start() was not awaited")
        return self._kv

    async def start(self) -> None:
        js = self.nc.jetstream()
        from nats.js.api import KeyValueConfig

        self._kv = await js.create_key_value(KeyValueConfig(bucket=SIM_BUCKET, history=1))
        self._media = await js.create_object_store(
            SIM_MEDIA_BUCKET, config=ObjectStoreConfig(ttl=self.config.media_ttl_s)
        )
        self._directory = asyncio.create_task(self._follow_directory(), name="sim-directory")

    async def _follow_directory(self) -> None:
        """Mirror the registered numbers (``num.*``) into memory. A number missing here
        is still looked up in KV, so a watch that lags or dies only costs speed. A watch
        whose consumer vanished (a NATS restart) would go quiet, not fail, and keep
        numbers that were logged out since: it is rebuilt every DIRECTORY_REFRESH_S."""
        while True:
            watcher = None
            failed = False
            try:
                async with asyncio.timeout(DIRECTORY_REFRESH_S):
                    watcher = await self.kv.watch("num.*")
                    async for entry in watcher:
                        if entry is None:
                            continue  # the initial values are all in
                        phone = entry.key.removeprefix("num.")
                        if entry.value and entry.operation is None:
                            self._registered.add(phone)
                        else:
                            self._registered.discard(phone)
            except TimeoutError:
                pass  # the periodic rebuild
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failed = True
                log.debug("sim directory watch restarts", extra={"error": repr(exc)})
            finally:
                self._registered.clear()
                if watcher is not None:
                    with contextlib.suppress(Exception):
                        await close(watcher)
            if failed:
                await asyncio.sleep(1.0)

    def open_session(self, spec: SessionSpec, emit: Emit) -> SimSession:
        return SimSession(self, spec, emit)

    async def close(self) -> None:
        if self._directory is not None:
            self._directory.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._directory

    async def forget(self, spec: SessionSpec) -> None:
        """Unlink the session's account (its number becomes free): the session is
        deleted. Nothing to do for a session that was never paired."""
        account = await self.account(spec.key)
        if account is None:
            return
        with contextlib.suppress(KeyNotFoundError):
            owner = await self.kv.get(f"num.{account.phone}")
            if owner.value and owner.value.decode() == spec.key:
                await self.kv.delete(f"num.{account.phone}")
        await self.kv.delete(f"acct.{spec.key}")

    async def account(self, session_id: str) -> Account | None:
        try:
            entry = await self.kv.get(f"acct.{session_id}")
        except KeyNotFoundError:
            return None
        if not entry.value:
            return None
        return msgspec.json.decode(entry.value, type=Account)

    async def is_registered(self, phone: str) -> bool:
        if phone in self._registered:
            return True
        try:
            entry = await self.kv.get(f"num.{phone}")
        except KeyNotFoundError:
            return False
        return bool(entry.value)


class SimSession:
    def __init__(self, engine: SimEngine, spec: SessionSpec, emit: Emit) -> None:
        self.engine = engine
        self.spec = spec
        self.emit = emit
        self.phone: str | None = None
        self.faults = Faults()
        self._subs: list[Subscription] = []
        self._link_sub: Subscription | None = None
        self._pair_sub: Subscription | None = None  # zf.sim.pair.<phone> of a pairing code
        self._fault_sub: Subscription | None = None
        self._qr_task: asyncio.Task[None] | None = None
        self._current_codes: set[str] = set()
        self._pair_phone: str | None = None
        self._online = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._presence = Presence(
            engine.nc,
            engine.kv,
            spec.key,
            may_act=engine.may_act,
            on_kicked=self._kicked,
            keepalive_s=engine.config.keepalive_s,
            probe_timeout_s=engine.config.probe_timeout_s,
        )

    @property
    def nc(self) -> NATS:
        return self.engine.nc

    # -- lifecycle ---------------------------------------------------------------------

    async def connect(self) -> None:
        await self._ensure_fault_sub()
        if self.faults.fail_connects > 0:
            self.faults.fail_connects -= 1
            self._spawn(self._refuse_connect())
            return
        account = await self.engine.account(self.spec.key)
        if account is None:
            await self._start_pairing()
            return
        self._spawn(self._go_online(account.phone))

    async def _refuse_connect(self) -> None:
        await asyncio.sleep(self.engine.config.connect_latency_s)
        self.emit(Disconnected(reason="connection refused (injected)"))

    async def disconnect(self) -> None:
        await self._go_offline()
        if self._fault_sub is not None:
            await self._fault_sub.unsubscribe()
            self._fault_sub = None

    async def logout(self) -> None:
        phone = self.phone
        await self.disconnect()
        account = await self.engine.account(self.spec.key)
        if account is not None:
            await self.engine.kv.delete(f"acct.{self.spec.key}")
            phone = phone or account.phone
        if phone:
            await self.engine.kv.delete(f"num.{phone}")
        self.phone = None

    async def ping(self) -> bool:
        return self._online and self.nc.is_connected

    # -- pairing -----------------------------------------------------------------------

    async def _start_pairing(self) -> None:
        self._link_sub = await self.nc.subscribe(f"zf.sim.link.{self.spec.key}", cb=self._on_link)
        self._qr_task = asyncio.create_task(self._rotate_qr())

    async def _rotate_qr(self) -> None:
        config = self.engine.config
        for index in range(config.qr_max_codes):
            lifetime = config.qr_first_s if index == 0 else config.qr_next_s
            code = f"{QR_PREFIX},{self.spec.key},{secrets.token_urlsafe(24)}"
            self._current_codes = {code} | ({self._pair_code} if self._pair_code else set())
            self._qr = code
            self.emit(QrShown(code=code, expires_at=time.time() + lifetime))
            await asyncio.sleep(lifetime)
        self._current_codes = set()
        await self._stop_pairing()
        self.emit(Disconnected(reason="pairing timed out: no QR code was scanned"))

    _qr: str | None = None
    _pair_code: str | None = None

    async def pair_phone(self, phone: str) -> str:
        if self._link_sub is None:
            raise EngineError("the session is not pairing")
        alphabet = "ABCDEFGHJKLMNPQRSTVWXYZ23456789"
        raw = "".join(secrets.choice(alphabet) for _ in range(8))
        code = f"{raw[:4]}-{raw[4:]}"
        self._pair_code = code
        self._pair_phone = phone
        self._current_codes.add(code)
        if self._pair_sub is not None:
            with contextlib.suppress(Exception):
                await self._pair_sub.unsubscribe()
        self._pair_sub = await self.nc.subscribe(f"zf.sim.pair.{phone}", cb=self._on_link)
        return code

    async def _on_link(self, msg: Msg) -> None:
        try:
            request = msgspec.json.decode(msg.data, type=LinkRequest)
        except msgspec.DecodeError:
            await msg.respond(_encode(LinkReply(ok=False, error="malformed link request")))
            return
        if request.code not in self._current_codes:
            await msg.respond(_encode(LinkReply(ok=False, error="code expired or unknown")))
            return
        if request.code == self._pair_code and request.phone != self._pair_phone:
            await msg.respond(
                _encode(LinkReply(ok=False, error="code was issued for another phone"))
            )
            return
        if await self.engine.is_registered(request.phone):
            owner = await self.engine.kv.get(f"num.{request.phone}")
            if owner.value and owner.value.decode() != self.spec.key:
                await msg.respond(_encode(LinkReply(ok=False, error="phone already linked")))
                return
        account = Account(phone=request.phone, paired_at=time.time())
        await self.engine.kv.put(f"acct.{self.spec.key}", _encode(account))
        await self.engine.kv.put(f"num.{request.phone}", self.spec.key.encode())
        await msg.respond(_encode(LinkReply(ok=True)))
        self.emit(Paired(phone=request.phone))
        # not inline: unsubscribing the link subscription cancels the task of this callback
        self._spawn(self._finish_link(request.phone))

    async def _finish_link(self, phone: str) -> None:
        await self._stop_pairing()
        await self._go_online(phone)

    async def _stop_pairing(self) -> None:
        task, self._qr_task = self._qr_task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
        if self._link_sub is not None:
            with contextlib.suppress(Exception):
                await self._link_sub.unsubscribe()
            self._link_sub = None
        if self._pair_sub is not None:
            with contextlib.suppress(Exception):
                await self._pair_sub.unsubscribe()
            self._pair_sub = None
        self._current_codes = set()
        self._pair_code = None

    # -- online ------------------------------------------------------------------------

    async def _go_online(self, phone: str) -> None:
        await asyncio.sleep(self.engine.config.connect_latency_s + self.faults.latency_ms / 1000)
        if not self.nc.is_connected or not self.engine.may_act():
            self.emit(Disconnected(reason="network unreachable"))
            return
        await self._presence.claim(phone)
        self.phone = phone
        self._subs.append(await self.nc.subscribe(f"zf.sim.inbox.{phone}", cb=self._on_inbox))
        self._subs.append(await self.nc.subscribe(f"zf.sim.receipt.{phone}", cb=self._on_receipt))
        self._online = True
        self.emit(Connected(phone=phone))

    async def _go_offline(self) -> None:
        self._online = False
        await self._presence.release()
        await self._stop_pairing()
        subs, self._subs = self._subs, []
        for sub in subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _kicked(self) -> None:
        await self._go_offline()
        self.emit(Disconnected(reason="stream replaced: another socket connected as this account"))

    async def _on_inbox(self, msg: Msg) -> None:
        if not self.engine.may_act():
            return  # a socket whose agent lost its lease takes nothing
        try:
            wire = msgspec.json.decode(msg.data, type=Wire)
        except msgspec.DecodeError:
            return
        await msg.respond(b'{"ok":true}')
        self.emit(
            Inbound(
                message_id=wire.id,
                sender=wire.sender,
                type=wire.type,
                timestamp=wire.ts,
                text=wire.text,
                content=wire.content,
                media=_wire_media(wire),
            )
        )
        read_after = self.engine.config.read_after_s
        if read_after is not None and self.phone is not None:
            self._spawn(self._send_read_receipt(wire, read_after))

    async def _send_read_receipt(self, wire: Wire, delay: float) -> None:
        await asyncio.sleep(delay)
        if self.phone is None:
            return
        receipt = WireReceipt(id=wire.id, status="read", peer=self.phone)
        await self.nc.publish(f"zf.sim.receipt.{wire.sender}", _encode(receipt))

    async def _on_receipt(self, msg: Msg) -> None:
        try:
            receipt = msgspec.json.decode(msg.data, type=WireReceipt)
        except msgspec.DecodeError:
            return
        self.emit(Receipt(message_id=receipt.id, status=receipt.status, peer=receipt.peer))

    # -- faults ------------------------------------------------------------------------

    async def _ensure_fault_sub(self) -> None:
        if self._fault_sub is None:
            self._fault_sub = await self.nc.subscribe(
                f"zf.sim.fault.{self.spec.key}", cb=self._on_fault
            )

    async def _on_fault(self, msg: Msg) -> None:
        try:
            self.faults = msgspec.json.decode(msg.data, type=Faults)
        except msgspec.DecodeError:
            await msg.respond(b'{"ok":false}')
            return
        await msg.respond(b'{"ok":true}')
        if self.faults.disconnect and self._online:
            self.faults.disconnect = False
            await self._go_offline()
            self.emit(Disconnected(reason="connection reset (injected)"))
        if self.faults.zombie and self._online:
            self.faults.zombie = False
            await self._go_offline()  # and say nothing: only the watchdog can tell

    # -- messaging ---------------------------------------------------------------------

    async def send(
        self,
        to: str,
        content: MessageContent,
        message_id: str,
        media: MediaPayload | None = None,
    ) -> str:
        if not self._online or self.phone is None or not self.engine.may_act():
            raise EngineError("not connected")
        if self.faults.latency_ms:
            await asyncio.sleep(self.faults.latency_ms / 1000)
        if self.faults.send_failure_rate and random.random() < self.faults.send_failure_rate:
            raise EngineError("send failed (injected)")
        try:
            registered = await self.engine.is_registered(to)
        except Exception as exc:
            # the simulated network (NATS) is unreachable: the socket is gone, like a real
            # one losing its connection; the message waits in the queue for the reconnect
            self._online = False
            self.emit(Disconnected(reason=f"network unreachable: {exc!r}"))
            raise EngineError("network unreachable") from None
        if not registered:
            raise EngineError(f"{to} is not on WhatsApp")
        engine_id = "SIM" + secrets.token_hex(8).upper()
        body: dict[str, Any] = msgspec.to_builtins(content)
        if media is not None:
            # like WhatsApp: the bytes go to the media servers, the message carries a
            # description and where to fetch them
            ref = f"{engine_id}.bin"
            await self.engine.media.put(ref, media.data)
            body["media"] = {
                "size": media.size,
                "sha256": media.sha256(),
                "mimetype": media.mimetype,
                "filename": media.filename,
                "ref": ref,
            }
            if media.seconds is not None:
                body["media"]["seconds"] = media.seconds
            if media.waveform is not None:
                body["media"]["waveform"] = list(media.waveform)
            if media.width is not None:
                body["media"]["width"], body["media"]["height"] = media.width, media.height
        wire = Wire(
            id=engine_id,
            sender=self.phone,
            type=type(content).__struct_config__.tag,  # type: ignore[arg-type]
            ts=time.time(),
            # a caption is the text of media, as WhatsApp (and the neonize engine) show it
            text=content.text
            if isinstance(content, TextContent)
            else getattr(content, "caption", None),
            content=body,
        )
        self._spawn(self._deliver(to, wire))
        return engine_id

    async def _deliver(self, to: str, wire: Wire) -> None:
        """The server side: accept (server ack), then hand to the recipient's socket."""
        self.emit(Receipt(message_id=wire.id, status="server", peer=to))
        try:
            await self.nc.request(f"zf.sim.inbox.{to}", _encode(wire), timeout=5)
        except (NoRespondersError, NatsTimeout):
            return  # recipient offline: like WhatsApp, the server keeps it (server ack only)
        self.emit(Receipt(message_id=wire.id, status="delivered", peer=to))

    async def download(self, media: InboundMedia) -> bytes:
        if not isinstance(media.handle, str):
            raise EngineError("no media to download")
        try:
            found = await self.engine.media.get(media.handle)
        except ObjectNotFoundError:
            raise EngineError("media expired on the (simulated) media servers") from None
        return found.data or b""

    async def check_numbers(self, numbers: list[str]) -> list[NumberStatus]:
        results = []
        for number in numbers:
            exists = await self.engine.is_registered(number)
            jid = f"{number}@s.whatsapp.net" if exists else None
            results.append(NumberStatus(number=number, on_whatsapp=exists, jid=jid))
        return results

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # the network went away under a background step (delivery, receipt): the
            # simulated server drops it, like a real one losing a connection
            log.info("sim background step failed", extra={"error": repr(task.exception())})


def _wire_media(wire: Wire) -> InboundMedia | None:
    """The media description a simulated message carries, if any."""
    described = (wire.content or {}).get("media")
    if not isinstance(described, dict) or "ref" not in described:
        return None
    seconds = described.get("seconds")
    return InboundMedia(
        mimetype=str(described.get("mimetype") or "application/octet-stream"),
        size=int(described.get("size") or 0),
        filename=described.get("filename"),
        sha256=described.get("sha256"),
        seconds=float(seconds) if seconds is not None else None,
        handle=str(described["ref"]),
    )


__all__ = ["Faults", "LoggedOut", "SimConfig", "SimEngine", "SimSession", "inject_faults", "link"]

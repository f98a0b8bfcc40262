"""A simulated WhatsApp network over NATS.

WhatsApp's servers are out of reach in tests, demos and load tests, so this engine plays
both the phone and the server. Accounts live in the KV bucket ``zf_sim`` (so a session is
portable between agents, like a shared device store), and sessions on different agents
reach each other through NATS subjects:

- ``zf.sim.link.<session key>``  a phone scans a QR code (or types a pairing code)
- ``zf.sim.pair.<phone>``        a phone types the pairing code issued for its number
- ``zf.sim.inbox.<phone>``       a message for the socket logged in as ``phone``; with
                                 no socket online the server keeps it (``held.<phone>``,
                                 sim_offline.py) and hands it over on the next connect
- ``zf.sim.receipt.<phone>``     delivery/read receipts for messages ``phone`` sent
- ``zf.sim.fault.<session key>`` inject latency, send failures or a disconnect
- ``zf.sim.call.<phone>``        a call offer for ``phone``; ``zf.sim.callend.<phone>``
                                 tells the caller its call was rejected (issue 16)

Everything is keyed by the session's internal key (``SessionSpec.key``: its ``uid``, or
its name for records older than uids), never by the caller's name alone.

QR codes rotate like WhatsApp's: the first lives ``qr_first_s`` (60 s), the next ones
``qr_next_s`` (20 s); after ``qr_max_codes`` the pairing attempt times out.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Literal

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from nats.js.api import ObjectStoreConfig
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore

from contract.protocol import (
    SessionSpec,
)
from node_agent.engines._base import (
    Connected,
    Disconnected,
    Emit,
    EngineError,
    GroupError,
    LoggedOut,
)
from node_agent.engines.sim_contacts import (
    SimContactsMixin,
    SimProfile,
    WireCall,
    call_end_subject,
    lid_of,
)
from node_agent.engines.sim_groups import (
    SimGroup,
    SimGroupsMixin,
    _decode_group,
    _group_key,
)
from node_agent.engines.sim_messages import SimMessagesMixin
from node_agent.engines.sim_offline import OfflineQueue, ensure_held_stream, wake_subject
from node_agent.engines.sim_pairing import SimPairingMixin
from node_agent.engines.sim_presence import Keepalive, Presence
from node_agent.engines.sim_wire import QR_PREFIX, Account, LinkReply, LinkRequest, Wire, _encode
from zapfleet._mirror import Change, KVMirror

log = logging.getLogger(__name__)

SIM_BUCKET = "zf_sim"
SIM_MEDIA_BUCKET = "zf_sim_media"  # the simulated media servers (WhatsApp's CDN)


class SimConfig(msgspec.Struct, kw_only=True):
    qr_first_s: float = 60.0
    qr_next_s: float = 20.0
    qr_max_codes: int = 6
    connect_latency_s: float = 0.01
    read_after_s: float | None = 0.5
    keepalive_s: float = 5.0  # presence probe period (sim_presence.py)
    probe_timeout_s: float = 0.25
    replicas: int = 1  # of the zf_sim bucket (ZAPFLEET_NATS_REPLICAS)
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
    # not faults but network behaviours of this account (issue 15): send with LID
    # addressing (the phone is hidden; receivers resolve it like ``get_pn_from_lid``)
    lid_addressing: bool = False
    auto_read: bool = True  # read received messages by itself after read_after_s
    # the next N messages received cannot be decrypted at first ("waiting for this
    # message"); the retry brings their content resolve_after_ms later
    undecryptable_next: int = 0
    resolve_after_ms: float = 200.0


async def set_group_add_privacy(
    nc: NATS, phone: str, who: Literal["all", "contacts", "none"]
) -> None:
    """Act as the phone: who may add it to groups. ``contacts``: others get an invite
    sent instead (``invite_sent``); ``none``: refused (``privacy_forbids``)."""
    kv = await _network(nc)
    await kv.put(f"privacy.{phone}", who.encode())


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


async def _network(nc: NATS) -> KeyValue:
    """The sim network's bucket, for helpers acting from outside an engine; an existing
    bucket is used as it is (replicas: never lowered)."""
    from nats.js.api import KeyValueConfig

    from zapfleet.natsjs import key_value

    return await key_value(nc.jetstream(), KeyValueConfig(bucket=SIM_BUCKET, history=1), 1)


async def seed_account(nc: NATS, session_id: str, phone: str) -> None:
    """Link ``session_id`` to ``phone`` without a scan (tests, demos and benchmarks):
    the session connects straight away when it starts, on any agent."""
    kv = await _network(nc)
    await kv.put(f"acct.{session_id}", _encode(Account(phone=phone, paired_at=time.time())))
    await kv.put(f"num.{phone}", session_id.encode())


async def create_group(
    nc: NATS,
    members: list[str],
    *,
    kind: Literal["group", "newsletter"] = "group",
    subject: str = "sim group",
) -> str:
    """A sim group (or newsletter) whose participants are ``members`` (phones; the
    first one is its owner, a superadmin); returns its chat id. A test helper: sessions
    create groups with :meth:`SimSession.create_group` (issue 16)."""
    kv = await _network(nc)
    digits = "120363" + f"{secrets.randbelow(10**12):012d}"
    chat = f"{digits}@{'g.us' if kind == 'group' else 'newsletter'}"
    roles = {m: "member" for m in sorted(set(members))}
    if members:
        roles[members[0]] = "superadmin"
    record = SimGroup(id=chat, subject=subject, owner=members[0] if members else None, roles=roles)
    record.created_at = time.time()
    await kv.put(_group_key(chat), _encode(record))
    return chat


async def vote(
    nc: NATS,
    voter: str,
    poll_sender: str,
    poll_id: str,
    options: list[str],
    *,
    chat: str | None = None,
) -> None:
    """Act as the phone ``voter``: vote ``options`` (names) on the poll ``poll_id`` that
    ``poll_sender`` sent (in ``chat`` when it is a group). The vote carries SHA-256 hashes
    of the names, as WhatsApp's do."""
    wire = Wire(
        id="SIMV" + secrets.token_hex(8).upper(),
        sender=voter,
        sender_lid=lid_of(voter),
        chat=chat,
        type="poll_vote",
        ts=time.time(),
        content={
            "message_id": poll_id,
            "selected": [hashlib.sha256(o.encode()).hexdigest() for o in options],
        },
    )
    await nc.request(f"zf.sim.inbox.{poll_sender}", _encode(wire), timeout=5)


async def call(
    nc: NATS,
    caller: str,
    callee: str,
    *,
    video: bool = False,
    group: str | None = None,
    lid_only: bool = False,
) -> tuple[str, bool]:
    """Act as the phone ``caller``: call ``callee`` (a phone). Returns (call id, rung):
    ``rung`` is False when the callee's socket refused it (it blocked the caller) or is
    offline. A rejection arrives on :func:`call_end_subject` of the caller."""
    wire = WireCall(
        call_id="SIMC" + secrets.token_hex(8).upper(),
        caller=None if lid_only else caller,
        caller_lid=lid_of(caller),
        video=video,
        group=group,
        ts=time.time(),
    )
    try:
        reply = await nc.request(f"zf.sim.call.{callee}", _encode(wire), timeout=5)
    except (NoRespondersError, NatsTimeout):
        return wire.call_id, False
    return wire.call_id, bool(msgspec.json.decode(reply.data).get("ok"))


async def save_contact(nc: NATS, owner: str, phone: str, name: str) -> None:
    """Act as the phone ``owner`` saving ``phone`` as ``name`` in its address book (what
    the engine's contact store syncs from the phone)."""
    kv = await _network(nc)
    key = f"book.{owner}"
    try:
        entry = await kv.get(key)
        book = msgspec.json.decode(entry.value or b"{}", type=dict[str, str])
    except KeyNotFoundError:
        book = {}
    book[phone] = name
    await kv.put(key, _encode(book))


async def make_business(nc: NATS, phone: str, business_name: str) -> None:
    """Turn the sim account ``phone`` into a business account named ``business_name``."""
    kv = await _network(nc)
    try:
        entry = await kv.get(f"profile.{phone}")
        profile = msgspec.json.decode(entry.value or b"{}", type=SimProfile)
    except KeyNotFoundError:
        profile = SimProfile()
    profile.business_name = business_name
    await kv.put(f"profile.{phone}", _encode(profile))


class SimEngine:
    name: Literal["sim"] = "sim"

    def __init__(self, nc: NATS, config: SimConfig | None = None) -> None:
        self.nc = nc
        self.config = config or SimConfig()
        self._kv: KeyValue | None = None
        self._offline: OfflineQueue | None = None
        self._media: ObjectStore | None = None
        self.may_act: Callable[[], bool] = lambda: True
        # the network's phone book, kept current by a KV watch: a send to a known number
        # needs no lookup (measured: the lookup was 3.4 % of the agent's CPU per send)
        self._registered: set[str] = set()
        self._directory: KVMirror | None = None
        self.metadata_queries = 0  # group metadata reads (issue 16): sends must not cost one
        # one keepalive loop for all online sockets of this engine (sim_presence.py)
        self.keepalive = Keepalive(nc, self.config.keepalive_s, self.may_act)

    def set_lease_guard(self, may_act: Callable[[], bool]) -> None:
        """The agent's lease check: a socket does nothing on the network without it."""
        self.may_act = may_act
        self.keepalive.may_act = may_act

    @property
    def media(self) -> ObjectStore:
        if self._media is None:
            raise RuntimeError("SimEngine.start() was not awaited")
        return self._media

    @property
    def offline(self) -> OfflineQueue:
        if self._offline is None:
            self._offline = OfflineQueue(self.nc)
        return self._offline

    @property
    def kv(self) -> KeyValue:
        if self._kv is None:
            raise RuntimeError("SimEngine.start() was not awaited")
        return self._kv

    async def start(self) -> None:
        js = self.nc.jetstream()
        from nats.js.api import KeyValueConfig

        from zapfleet.natsjs import key_value, object_store

        self._kv = await key_value(
            js, KeyValueConfig(bucket=SIM_BUCKET, history=1), self.config.replicas
        )
        await ensure_held_stream(self.nc, self.config.replicas)
        self._media = await object_store(
            js,
            SIM_MEDIA_BUCKET,
            self.config.replicas,
            ObjectStoreConfig(ttl=self.config.media_ttl_s),
        )
        # the phone book: a number missing here is still looked up in KV, so a mirror
        # that lags or reloads only costs speed; a reload starts from an empty book, so
        # numbers logged out while the watch was dead (a NATS restart) are not kept
        self._directory = KVMirror(self._kv, SIM_BUCKET, keys="num.*")
        self._directory.follow(self._directory_change, on_reset=self._registered.clear)
        self._directory.launch()

    def _directory_change(self, change: Change) -> None:
        phone = change.key.removeprefix("num.")
        if change.value and change.operation is None:
            self._registered.add(phone)
        else:
            self._registered.discard(phone)

    def open_session(self, spec: SessionSpec, emit: Emit) -> SimSession:
        return SimSession(self, spec, emit)

    async def close(self) -> None:
        await self.keepalive.close()
        if self._directory is not None:
            await self._directory.stop()

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
                await self.offline.drop(account.phone)
        await self.kv.delete(f"acct.{spec.key}")

    async def account(self, session_id: str) -> Account | None:
        try:
            entry = await self.kv.get(f"acct.{session_id}")
        except KeyNotFoundError:
            return None
        if not entry.value:
            return None
        return msgspec.json.decode(entry.value, type=Account)

    async def phone_of_lid(self, lid: str) -> str | None:
        """The phone behind a LID (whatsmeow: ``get_pn_from_lid``), None when unknown."""
        try:
            entry = await self.kv.get(f"lid.{lid.partition('@')[0]}")
        except KeyNotFoundError:
            return None
        return entry.value.decode() if entry.value else None

    async def group_members(self, chat: str) -> list[str] | None:
        group = await self.load_group(chat)
        return group.members if group is not None else None

    # -- groups (issue 16) --

    async def load_group(self, chat: str) -> SimGroup | None:
        """One metadata query to the (simulated) server: counted in
        ``metadata_queries`` (WhatsApp rate-limits them; sends use a cache)."""
        self.metadata_queries += 1
        try:
            entry = await self.kv.get(_group_key(chat))
        except KeyNotFoundError:
            return None
        return _decode_group(chat, entry.value) if entry.value else None

    async def change_group(
        self, chat: str, change: Callable[[SimGroup], SimGroup]
    ) -> tuple[SimGroup, SimGroup]:
        """(before, after) of a compare-and-set change of a group record; ``change``
        gets a copy and may raise GroupError."""
        key = _group_key(chat)
        for _ in range(50):
            self.metadata_queries += 1
            try:
                entry = await self.kv.get(key)
            except KeyNotFoundError:
                entry = None
            if entry is None or not entry.value:
                raise GroupError("group_not_found", f"group {chat} does not exist")
            before = _decode_group(chat, entry.value)
            after = change(msgspec.structs.replace(before, roles=dict(before.roles)))
            try:
                await self.kv.update(key, _encode(after), last=entry.revision)
            except KeyWrongLastSequenceError:
                continue  # changed meanwhile by another account: apply to the new one
            return before, after
        raise EngineError(f"group {chat} keeps changing; try again")

    async def privacy_of(self, phone: str) -> str:
        try:
            entry = await self.kv.get(f"privacy.{phone}")
        except KeyNotFoundError:
            return "all"
        return entry.value.decode() if entry.value else "all"

    async def is_registered(self, phone: str) -> bool:
        if phone in self._registered:
            return True
        try:
            entry = await self.kv.get(f"num.{phone}")
        except KeyNotFoundError:
            return False
        return bool(entry.value)


# issue 16: contacts/profile/calls in sim_contacts.py, groups in sim_groups.py
class SimSession(SimMessagesMixin, SimPairingMixin, SimContactsMixin, SimGroupsMixin):
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
        self._online_lock = asyncio.Lock()  # going online and disconnecting take turns
        self._generation = 0  # connects and disconnects so far: a stale online step stops
        self._tasks: set[asyncio.Task[None]] = set()
        self._polls: dict[str, tuple[str, list[str]]] = {}  # polls we sent: id -> options
        self._received: OrderedDict[str, str] = OrderedDict()  # received id -> sender phone
        self._blocked: set[str] = set()  # phones this account blocked (issue 16)
        self._chatted: OrderedDict[str, None] = OrderedDict()  # chat partners (contacts)
        # group metadata of sends, dropped by group notifications (issue 16)
        self._group_cache: dict[str, SimGroup] = {}
        self._presence = Presence(
            engine.nc,
            engine.kv,
            spec.key,
            may_act=engine.may_act,
            on_kicked=self._kicked,
            keepalive=engine.keepalive,
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
        self._generation += 1
        generation = self._generation
        account = await self.engine.account(self.spec.key)
        if account is None:
            await self._start_pairing()
            return
        self._spawn(self._go_online(account.phone, generation))

    async def _refuse_connect(self) -> None:
        await asyncio.sleep(self.engine.config.connect_latency_s)
        self.emit(Disconnected(reason="connection refused (injected)"))

    async def disconnect(self) -> None:
        # an online step under way for an earlier connect must not bring this socket back
        # (a zombie: a second live socket once the session runs again, seen in the NATS
        # cluster drill after a fence): it is waited for, then taken offline
        self._generation += 1
        async with self._online_lock:
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
            await self.engine.offline.drop(phone)
        self.phone = None

    async def ping(self) -> bool:
        return self._online and self.nc.is_connected

    # -- online ------------------------------------------------------------------------

    async def _go_online(self, phone: str, generation: int) -> None:
        await asyncio.sleep(self.engine.config.connect_latency_s + self.faults.latency_ms / 1000)
        async with self._online_lock:
            if generation != self._generation:
                return  # disconnected (or connecting again) meanwhile
            if not await self._online_as(phone):
                return
        await self._take_held()

    async def _online_as(self, phone: str) -> bool:
        if not self.nc.is_connected or not self.engine.may_act():
            self.emit(Disconnected(reason="network unreachable"))
            return False
        await self._presence.claim(phone)
        await self.engine.kv.put(f"lid.{lid_of(phone).partition('@')[0]}", phone.encode())
        self.phone = phone
        self._subs.append(await self.nc.subscribe(f"zf.sim.inbox.{phone}", cb=self._on_inbox))
        self._subs.append(await self.nc.subscribe(f"zf.sim.receipt.{phone}", cb=self._on_receipt))
        self._subs.append(await self.nc.subscribe(f"zf.sim.typing.{phone}", cb=self._on_typing))
        self._blocked = set(await self._load_blocklist(phone))  # issue 16
        self._subs.append(await self.nc.subscribe(f"zf.sim.call.{phone}", cb=self._on_call))
        self._subs.append(await self.nc.subscribe(f"zf.sim.group.{phone}", cb=self._on_group))
        self._group_cache.clear()  # notifications missed while offline
        self._subs.append(await self.nc.subscribe(wake_subject(phone), cb=self._on_wake))
        self._online = True
        self.emit(Connected(phone=phone))
        return True

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


__all__ = [
    "Faults",
    "LoggedOut",
    "SimConfig",
    "SimEngine",
    "SimSession",
    "call",
    "call_end_subject",
    "create_group",
    "inject_faults",
    "lid_of",
    "link",
    "make_business",
    "save_contact",
    "set_group_add_privacy",
    "vote",
]

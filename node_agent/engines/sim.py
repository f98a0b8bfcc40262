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
import random
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
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError, ObjectNotFoundError
from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore

from contract.chat_ids import chat_kind
from contract.protocol import (
    EditContent,
    MessageContent,
    NumberStatus,
    PollContent,
    SessionSpec,
    TextContent,
)
from node_agent.engines._base import (
    Connected,
    Disconnected,
    Emit,
    EngineError,
    GroupError,
    Inbound,
    InboundMedia,
    LoggedOut,
    Paired,
    PresenceSeen,
    QrShown,
    Receipt,
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
from node_agent.engines.sim_presence import Keepalive, Presence
from node_agent.media import MediaPayload
from zapfleet._mirror import Change, KVMirror

log = logging.getLogger(__name__)

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


class LinkRequest(msgspec.Struct, kw_only=True):
    code: str
    phone: str


class LinkReply(msgspec.Struct, kw_only=True):
    ok: bool
    error: str | None = None


class Wire(msgspec.Struct, kw_only=True):
    """A message on the simulated network."""

    id: str
    sender: str | None  # the sender's phone; None when the sender addresses by LID
    type: str
    ts: float
    text: str | None = None
    content: dict[str, Any] | None = None
    sender_lid: str | None = None
    chat: str | None = None  # a group or newsletter; None in a one-to-one chat


class WireReceipt(msgspec.Struct, kw_only=True):
    id: str
    status: Literal["delivered", "read"]
    peer: str


class WirePresence(msgspec.Struct, kw_only=True):
    """Typing / recording / paused in a chat, from one account to another."""

    sender: str | None
    sender_lid: str | None
    state: Literal["typing", "recording", "paused"]
    chat: str | None = None


class Account(msgspec.Struct, kw_only=True):
    phone: str
    paired_at: float


async def set_group_add_privacy(
    nc: NATS, phone: str, who: Literal["all", "contacts", "none"]
) -> None:
    """Act as the phone: who may add it to groups. ``contacts``: others get an invite
    sent instead (``invite_sent``); ``none``: refused (``privacy_forbids``)."""
    kv = await _network(nc)
    await kv.put(f"privacy.{phone}", who.encode())


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
class SimSession(SimContactsMixin, SimGroupsMixin):
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
        await self.engine.kv.put(f"lid.{lid_of(phone).partition('@')[0]}", phone.encode())
        self.phone = phone
        self._subs.append(await self.nc.subscribe(f"zf.sim.inbox.{phone}", cb=self._on_inbox))
        self._subs.append(await self.nc.subscribe(f"zf.sim.receipt.{phone}", cb=self._on_receipt))
        self._subs.append(await self.nc.subscribe(f"zf.sim.typing.{phone}", cb=self._on_typing))
        self._blocked = set(await self._load_blocklist(phone))  # issue 16
        self._subs.append(await self.nc.subscribe(f"zf.sim.call.{phone}", cb=self._on_call))
        self._subs.append(await self.nc.subscribe(f"zf.sim.group.{phone}", cb=self._on_group))
        self._group_cache.clear()  # notifications missed while offline
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
        sender = wire.sender
        if sender is None and wire.sender_lid:
            sender = await self.engine.phone_of_lid(wire.sender_lid)  # get_pn_from_lid
        # issue 16: a blocked contact's own chat stays silent (groups go on, as on WhatsApp)
        if sender is not None and wire.chat is None and sender in self._blocked:
            await msg.respond(b'{"ok":false,"blocked":true}')
            return
        await msg.respond(b'{"ok":true}')
        if self.faults.undecryptable_next > 0:
            self.faults.undecryptable_next -= 1
            self.emit(
                Inbound(
                    message_id=wire.id,
                    sender=sender,
                    sender_lid=wire.sender_lid,
                    chat=wire.chat,
                    type="undecryptable",
                    timestamp=wire.ts,
                    content={"unavailable": False, "hidden": False},
                )
            )
            self._spawn(self._resolve_later(wire, sender, self.faults.resolve_after_ms / 1000))
        else:
            self._on_wire(wire, sender)
        if sender is not None:
            self._received[wire.id] = sender
            if wire.chat is None:
                self._note_chat(sender)  # issue 16: a contact of the store
            if len(self._received) > 10_000:
                self._received.popitem(last=False)
        read_after = self.engine.config.read_after_s
        if not self.faults.auto_read:
            read_after = None
        if read_after is not None and self.phone is not None and sender is not None:
            self._spawn(self._send_read_receipt(wire, sender, read_after))

    async def _resolve_later(self, wire: Wire, sender: str | None, delay: float) -> None:
        """The sender's phone answered the retry receipt: the content arrives."""
        await asyncio.sleep(delay)
        if self._online:
            self._on_wire(wire, sender, resolves=True)

    def _on_wire(self, wire: Wire, sender: str | None, *, resolves: bool = False) -> None:
        """What the socket makes of a message it received."""
        content = wire.content
        if wire.type == "poll_vote" and content is not None:
            # like WhatsApp: the vote names options by SHA-256; only the poll's sender
            # knows the names (it keeps them, as whatsmeow's decrypt_poll_vote needs)
            poll = self._polls.get(str(content.get("message_id")))
            if poll is None:
                return
            by_hash = {hashlib.sha256(o.encode()).hexdigest(): o for o in poll[1]}
            chosen = [by_hash[h] for h in content.get("selected", []) if h in by_hash]
            content = {"message_id": content["message_id"], "poll": poll[0], "options": chosen}
        self.emit(
            Inbound(
                message_id=wire.id,
                sender=sender,
                sender_lid=wire.sender_lid,
                chat=wire.chat,
                type=wire.type,
                timestamp=wire.ts,
                text=wire.text,
                content=content,
                resolves=resolves,
                media=_wire_media(wire),
            )
        )

    async def _send_read_receipt(self, wire: Wire, sender: str, delay: float) -> None:
        await asyncio.sleep(delay)
        if self.phone is None:
            return
        receipt = WireReceipt(id=wire.id, status="read", peer=self.phone)
        await self.nc.publish(f"zf.sim.receipt.{sender}", _encode(receipt))

    # -- chats: read marks and presence (issue 15) ---------------------------------------

    async def mark_read(self, chat: str, message_ids: list[str]) -> None:
        if not self._online or self.phone is None or not self.engine.may_act():
            raise EngineError("not connected")
        for message_id in message_ids:
            sender = self._received.get(message_id)
            if sender is None:
                continue  # not received here: WhatsApp ignores such a receipt too
            receipt = WireReceipt(id=message_id, status="read", peer=self.phone)
            await self.nc.publish(f"zf.sim.receipt.{sender}", _encode(receipt))

    async def send_presence(
        self, chat: str, state: Literal["typing", "recording", "paused"]
    ) -> None:
        if not self._online or self.phone is None or not self.engine.may_act():
            raise EngineError("not connected")
        recipients = await self._recipients(chat)
        presence = WirePresence(
            sender=None if self.faults.lid_addressing else self.phone,
            sender_lid=lid_of(self.phone),
            state=state,
            chat=chat if chat_kind(chat) in ("group", "newsletter") else None,
        )
        for phone in recipients:
            await self.nc.publish(f"zf.sim.typing.{phone}", _encode(presence))

    async def _on_typing(self, msg: Msg) -> None:
        if not self.engine.may_act():
            return
        try:
            presence = msgspec.json.decode(msg.data, type=WirePresence)
        except msgspec.DecodeError:
            return
        sender = presence.sender
        if sender is None and presence.sender_lid:
            sender = await self.engine.phone_of_lid(presence.sender_lid)
        self.emit(
            PresenceSeen(
                chat=presence.chat or sender or presence.sender_lid or "",
                sender=sender,
                sender_lid=presence.sender_lid,
                state=presence.state,
            )
        )

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
            recipients = await self._recipients(to)
        except EngineError:
            raise
        except Exception as exc:
            # the simulated network (NATS) is unreachable: the socket is gone, like a real
            # one losing its connection; the message waits in the queue for the reconnect
            self._online = False
            self.emit(Disconnected(reason=f"network unreachable: {exc!r}"))
            raise EngineError("network unreachable") from None
        engine_id = "SIM" + secrets.token_hex(8).upper()
        body: dict[str, Any] = msgspec.to_builtins(content)
        if not body.get("view_once"):
            body.pop("view_once", None)  # as WhatsApp: only view-once media say so
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
        kind = chat_kind(to)
        if kind in ("phone", "lid"):
            self._note_chat(recipients[0])  # issue 16: a contact of the store
        if isinstance(content, TextContent) and content.mention_all:
            body["mentions"] = sorted(set(body.get("mentions") or []) | set(recipients))
        if isinstance(content, PollContent):
            self._polls[engine_id] = (content.name, list(content.options))
        wire = Wire(
            id=engine_id,
            sender=None if self.faults.lid_addressing else self.phone,
            sender_lid=lid_of(self.phone),
            chat=to if kind in ("group", "newsletter") else None,
            type=type(content).__struct_config__.tag,  # type: ignore[arg-type]
            ts=time.time(),
            # a caption is the text of media, as WhatsApp (and the neonize engine) show it
            text=content.text
            if isinstance(content, TextContent | EditContent)
            else getattr(content, "caption", None),
            content=body,
        )
        if isinstance(content, PollContent):
            wire.text = content.name
        self._spawn(self._deliver(to, recipients, wire))
        return engine_id

    async def _recipients(self, to: str) -> list[str]:
        """The phones a message to chat ``to`` reaches (EngineError when none can)."""
        kind = chat_kind(to)
        if kind == "phone":
            if not await self.engine.is_registered(to):
                raise EngineError(f"{to} is not on WhatsApp")
            return [to]
        if kind == "lid":
            phone = await self.engine.phone_of_lid(to)
            if phone is None or not await self.engine.is_registered(phone):
                raise EngineError(f"{to} is not on WhatsApp")
            return [phone]
        group = await self._cached_group(to)
        if group is None:
            raise EngineError(f"{kind} {to} does not exist")
        if self.phone not in group.roles:
            raise EngineError(f"this account is not a participant of {to}")
        if group.announce and not group.is_admin(self.phone):
            raise EngineError(f"only admins can send to {to} (announcement group)")
        return [m for m in group.members if m != self.phone]

    async def _cached_group(self, chat: str) -> SimGroup | None:
        """Group metadata for sends: one query, then the cache until a notification of
        a change (like whatsmeow's group cache)."""
        group = self._group_cache.get(chat)
        if group is None:
            group = await self.engine.load_group(chat)
            if group is not None:
                self._group_cache[chat] = group
        return group

    async def _deliver(self, to: str, recipients: list[str], wire: Wire) -> None:
        """The server side: accept (server ack), then hand to each recipient's socket
        (one delivery receipt per participant in a group)."""
        self.emit(Receipt(message_id=wire.id, status="server", peer=to))
        data = _encode(wire)
        for phone in recipients:
            try:
                reply = await self.nc.request(f"zf.sim.inbox.{phone}", data, timeout=5)
            except (NoRespondersError, NatsTimeout):
                continue  # recipient offline: like WhatsApp, the server keeps it
            if reply.data != b'{"ok":true}':
                continue  # the recipient blocked us: one tick only, like WhatsApp
            self.emit(Receipt(message_id=wire.id, status="delivered", peer=phone))

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

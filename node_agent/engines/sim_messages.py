"""Messages on the simulated network (a mixin of :class:`~node_agent.engines.sim.SimSession`,
like :mod:`node_agent.engines.sim_groups`): what a socket receives (the inbox, the server's
offline queue, undecryptable-then-resolved, read receipts), what it sends (recipients,
the media servers, the server's delivery), read marks and chat presence."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import secrets
import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Literal

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from nats.js.errors import ObjectNotFoundError

from contract.chat_ids import chat_kind
from contract.protocol import (
    EditContent,
    MessageContent,
    NumberStatus,
    PollContent,
    TextContent,
)
from node_agent.engines._base import (
    Disconnected,
    Emit,
    EngineError,
    Inbound,
    InboundMedia,
    PresenceSeen,
    Receipt,
)
from node_agent.engines.sim_contacts import (
    lid_of,
)
from node_agent.engines.sim_groups import (
    SimGroup,
)
from node_agent.engines.sim_wire import Wire, WirePresence, WireReceipt, _encode, _wire_media
from node_agent.media import MediaPayload

if TYPE_CHECKING:
    from node_agent.engines.sim import Faults, SimEngine

log = logging.getLogger(__name__)


class SimMessagesMixin:
    if TYPE_CHECKING:
        engine: SimEngine
        emit: Emit
        phone: str | None
        faults: Faults
        _online: bool
        _polls: dict[str, tuple[str, list[str]]]
        _received: OrderedDict[str, str]
        _blocked: set[str]
        _group_cache: dict[str, SimGroup]

        @property
        def nc(self) -> NATS: ...
        def _spawn(self, coro: Any) -> None: ...
        def _note_chat(self, phone: str | None) -> None: ...

    async def _on_inbox(self, msg: Msg) -> None:
        if not self.engine.may_act():
            return  # a socket whose agent lost its lease takes nothing
        try:
            wire = msgspec.json.decode(msg.data, type=Wire)
        except msgspec.DecodeError:
            return
        sender = await self._sender_of(wire)
        if self._blocks(wire, sender):
            await msg.respond(b'{"ok":false,"blocked":true}')
            return
        await msg.respond(b'{"ok":true}')
        self._take(wire, sender)

    async def _on_wake(self, _msg: Msg) -> None:
        await self._take_held()

    async def _take_held(self) -> None:
        """Messages the server kept while no socket of this account was online: handed
        over once, in the order sent, each acknowledged to its sender (second tick)."""
        phone = self.phone
        if phone is None or not self._online or not self.engine.may_act():
            return
        for data in await self.engine.offline.take(phone):
            try:
                wire = msgspec.json.decode(data, type=Wire)
            except msgspec.DecodeError:
                continue
            if wire.id in self._received:
                continue  # handed over live already (a timed-out hand-over was kept too)
            sender = await self._sender_of(wire)
            if self._blocks(wire, sender):
                continue
            self._take(wire, sender)
            if sender is not None:
                receipt = WireReceipt(id=wire.id, status="delivered", peer=phone)
                await self.nc.publish(f"zf.sim.receipt.{sender}", _encode(receipt))

    async def _sender_of(self, wire: Wire) -> str | None:
        if wire.sender is None and wire.sender_lid:
            return await self.engine.phone_of_lid(wire.sender_lid)  # get_pn_from_lid
        return wire.sender

    def _blocks(self, wire: Wire, sender: str | None) -> bool:
        """issue 16: a blocked contact's own chat stays silent (groups go on, as on
        WhatsApp)."""
        return sender is not None and wire.chat is None and sender in self._blocked

    def _take(self, wire: Wire, sender: str | None) -> None:
        """A message reached this socket."""
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
                # recipient offline (or not answering): like WhatsApp, the server keeps
                # it; the hand-over on connect sends the delivery receipt
                await self.engine.offline.hold(phone, data)
                continue
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

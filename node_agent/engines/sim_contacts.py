"""The sim engine's contacts, profile, blocking and calls (issue 16).

A mixin of :class:`~node_agent.engines.sim.SimSession` (like ``neonize/contacts.py`` for
the neonize engine), with the wire records of calls and profiles on the simulated
network. The test helpers that play the other phone (``call``, ``save_contact``,
``make_business``) stay in :mod:`node_agent.engines.sim`.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Literal

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.errors import KeyNotFoundError

from contract.chat_ids import chat_kind
from contract.protocol import (
    Contact,
    ContactDetails,
    Privacy,
)
from node_agent.engines._base import (
    BlockChanged,
    CallOffered,
    Emit,
    EngineError,
    NotOnWhatsApp,
)

if TYPE_CHECKING:
    from node_agent.engines.sim import SimEngine

_encode = msgspec.json.encode


def lid_of(phone: str) -> str:
    """The sim's LID of an account: stable digits derived from its phone number."""
    digest = hashlib.sha256(phone.encode()).hexdigest()
    return f"{int(digest[:13], 16) % 10**15:015d}@lid"


class WireCall(msgspec.Struct, kw_only=True):
    """A call offer on the simulated network."""

    call_id: str
    caller: str | None  # None when the caller addresses by LID
    caller_lid: str
    video: bool = False
    group: str | None = None
    ts: float = 0.0


class WireCallEnd(msgspec.Struct, kw_only=True):
    call_id: str
    by: str  # the phone that ended it
    reason: Literal["rejected"] = "rejected"


class SimProfile(msgspec.Struct, kw_only=True):
    """An account's public profile on the simulated network (KV ``profile.<phone>``)."""

    name: str | None = None
    about: str | None = None
    picture_id: str | None = None
    business_name: str | None = None  # set: a business account


def call_end_subject(phone: str) -> str:
    """Where the sim tells a caller that its call ended (rejected)."""
    return f"zf.sim.callend.{phone}"


class SimContactsMixin:
    if TYPE_CHECKING:
        engine: SimEngine
        phone: str | None
        emit: Emit
        _online: bool
        _blocked: set[str]
        _chatted: OrderedDict[str, None]

        @property
        def nc(self) -> NATS: ...

    def _require_online(self) -> str:
        if not self._online or self.phone is None or not self.engine.may_act():
            raise EngineError("not connected")
        return self.phone

    async def _on_call(self, msg: Msg) -> None:
        if not self.engine.may_act():
            return
        try:
            wire = msgspec.json.decode(msg.data, type=WireCall)
        except msgspec.DecodeError:
            return
        caller = wire.caller or await self.engine.phone_of_lid(wire.caller_lid)
        if caller is not None and caller in self._blocked:
            await msg.respond(b'{"ok":false,"blocked":true}')
            return
        await msg.respond(b'{"ok":true}')
        self.emit(
            CallOffered(
                call_id=wire.call_id,
                caller=caller,
                caller_lid=wire.caller_lid,
                video=wire.video,
                is_group=wire.group is not None,
                group=wire.group,
                timestamp=wire.ts or time.time(),
                reject_to=caller or wire.caller_lid,
            )
        )

    async def reject_call(self, caller: str, call_id: str) -> None:
        phone = self._require_online()
        if "@" in caller:
            caller = await self.engine.phone_of_lid(caller) or caller
        end = WireCallEnd(call_id=call_id, by=phone)
        await self.nc.publish(call_end_subject(caller), _encode(end))

    async def _load_blocklist(self, phone: str) -> list[str]:
        try:
            entry = await self.engine.kv.get(f"block.{phone}")
        except KeyNotFoundError:
            return []
        return msgspec.json.decode(entry.value or b"[]", type=list[str])

    async def _phone_of(self, chat: str) -> str:
        """The phone of a phone or LID chat id on the network; NotOnWhatsApp otherwise."""
        phone: str | None = chat
        if chat_kind(chat) == "lid":
            phone = await self.engine.phone_of_lid(chat)
        if phone is None or not await self.engine.is_registered(phone):
            raise NotOnWhatsApp(f"{chat} is not on WhatsApp")
        return phone

    async def block(self, chat: str, block: bool) -> list[str]:
        phone = self._require_online()
        target = await self._phone_of(chat)
        blocked = set(await self._load_blocklist(phone))
        was = target in blocked
        (blocked.add if block else blocked.discard)(target)
        await self.engine.kv.put(f"block.{phone}", _encode(sorted(blocked)))
        self._blocked = blocked
        if was != block:
            self.emit(BlockChanged(phone=target, lid=lid_of(target), blocked=block))
        return sorted(blocked)

    async def blocklist(self) -> list[str]:
        return await self._load_blocklist(self._require_online())

    async def _profile(self, phone: str) -> SimProfile:
        try:
            entry = await self.engine.kv.get(f"profile.{phone}")
        except KeyNotFoundError:
            return SimProfile()
        return msgspec.json.decode(entry.value or b"{}", type=SimProfile)

    async def set_profile(
        self, name: str | None, about: str | None, picture: bytes | None, remove_picture: bool
    ) -> str | None:
        phone = self._require_online()
        profile = await self._profile(phone)
        if name is not None:
            profile.name = name
        if about is not None:
            profile.about = about
        picture_id = None
        if remove_picture:
            profile.picture_id = None
        elif picture is not None:
            picture_id = str(int(time.time() * 1000))
            await self.engine.media.put(f"pic.{phone}.{picture_id}", picture)
            profile.picture_id = picture_id
        await self.engine.kv.put(f"profile.{phone}", _encode(profile))
        return picture_id

    async def privacy(self) -> Privacy:
        phone = self._require_online()
        defaults = Privacy(
            read_receipts="all",
            last_seen="contacts",
            online="all",
            picture="contacts",
            about="contacts",
            groups_add="all",
        )
        try:
            entry = await self.engine.kv.get(f"privacy.{phone}")
        except KeyNotFoundError:
            return defaults
        stored = msgspec.json.decode(entry.value or b"{}", type=dict[str, str])
        return msgspec.structs.replace(defaults, **stored)

    async def set_privacy(self, settings: dict[str, str]) -> Privacy:
        phone = self._require_online()
        current = msgspec.to_builtins(await self.privacy())
        current.update(settings)
        await self.engine.kv.put(f"privacy.{phone}", _encode(current))
        return msgspec.convert(current, Privacy)

    def _note_chat(self, phone: str | None) -> None:
        if phone:
            self._chatted[phone] = None
            if len(self._chatted) > 10_000:
                self._chatted.popitem(last=False)

    async def contacts(self) -> list[Contact]:
        phone = self._require_online()
        try:
            entry = await self.engine.kv.get(f"book.{phone}")
            book = msgspec.json.decode(entry.value or b"{}", type=dict[str, str])
        except KeyNotFoundError:
            book = {}
        phones = sorted(set(book) | set(self._chatted))
        found = []
        for other in phones:
            profile = await self._profile(other)
            found.append(
                Contact(
                    phone=other,
                    lid=lid_of(other),
                    name=book.get(other),
                    push_name=profile.name,
                    business_name=profile.business_name,
                )
            )
        return found

    async def contact_info(self, chat: str) -> ContactDetails:
        phone = self._require_online()
        target = await self._phone_of(chat)
        profile = await self._profile(target)
        try:
            entry = await self.engine.kv.get(f"book.{phone}")
            saved = msgspec.json.decode(entry.value or b"{}", type=dict[str, str]).get(target)
        except KeyNotFoundError:
            saved = None
        url = None
        if profile.picture_id:
            url = f"https://sim.zapfleet.invalid/pp/{target}/{profile.picture_id}.jpg"
        return ContactDetails(
            phone=target,
            lid=lid_of(target),
            name=saved,
            push_name=profile.name,
            business=profile.business_name is not None,
            business_name=profile.business_name,
            about=profile.about,
            picture_id=profile.picture_id,
            picture_url=url,
        )

"""A neonize session: its lifecycle (connect, stop, logout, liveness) over generations of
whatsmeow clients, and the events Go sends it (rules 3, 5 and 7 of the package
docstring)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import msgspec

from contract.protocol import (
    NumberStatus,
    SessionSpec,
)
from node_agent.engines._base import (
    Connected,
    Disconnected,
    Emit,
    EngineError,
    InboundMedia,
    LoggedOut,
    Paired,
    QrShown,
    Receipt,
)
from node_agent.engines.neonize.contacts import ContactsMixin  # issue 16
from node_agent.engines.neonize.generation import _Generation
from node_agent.engines.neonize.groups import GroupsMixin  # issue 16
from node_agent.engines.neonize.messaging import MessagingMixin
from node_agent.engines.neonize.protos import (
    _bounded_put,
    _parse_jid,
    inbound_of,
    jid_text,
    phone_of,
    undecryptable_of,
)

if TYPE_CHECKING:
    from node_agent.engines.neonize.engine import NeonizeEngine

log = logging.getLogger(__name__)

QR_FIRST_S = 60.0  # whatsmeow: the first code lives 60 s, the next five 20 s each
QR_NEXT_S = 20.0


def _mask(value: str) -> str:
    """Proxy URLs may carry credentials: log only scheme and host."""
    from urllib.parse import urlsplit

    parts = urlsplit(value)
    return f"{parts.scheme}://{parts.hostname}:{parts.port}" if parts.hostname else "(set)"


# sends in messaging.py, contacts/profile/calls in contacts.py, groups in groups.py
class NeonizeSession(MessagingMixin, ContactsMixin, GroupsMixin):
    def __init__(self, engine: NeonizeEngine, spec: SessionSpec, emit: Emit) -> None:
        self.engine = engine
        self.spec = spec
        self.emit = emit
        self.phone: str | None = None
        self._generations = 0
        self._gen: _Generation | None = None
        self._active = False  # between connect() and disconnect()
        self._guard: asyncio.Task[None] | None = None
        self._sent: OrderedDict[str, None] = OrderedDict()  # our engine ids (reactions)
        # conversations (issue 15): messages a reply may quote (engine id -> participant
        # JID, message proto) and the options of polls we sent (engine id -> name, options)
        self._recent: OrderedDict[str, tuple[str, Any]] = OrderedDict()
        self._polls: OrderedDict[str, tuple[str, list[str]]] = OrderedDict()
        # ids reported undecryptable: their content, once the retry works, "resolves" them
        self._undecryptable: OrderedDict[str, None] = OrderedDict()
        # -- groups (issue 16) --: GroupInfo protos of groups we sent to, dropped by group
        # events (whatsmeow caches participants for its own sends the same way)
        self._group_cache: dict[str, Any] = {}

    def rebind(self, spec: SessionSpec, emit: Emit) -> None:
        self.spec = spec
        self.emit = emit

    @property
    def session_id(self) -> str:
        """The internal key (SessionSpec.key): device store, jid and client uuids use it."""
        return self.spec.key

    def _report(self, event: Any) -> None:
        try:
            self.emit(event)
        except Exception:
            log.exception("reporting an engine event failed")

    # -- generations ---------------------------------------------------------------------

    async def _usable_generation(self) -> _Generation:
        gen = self._gen
        if gen is not None and gen.task is not None and not gen.task.done():
            # a stopped online client ends its pump quickly; give it a moment
            await asyncio.wait({gen.task}, timeout=1.0)
        if gen is not None and gen.running:
            self._abandon(gen, "its previous connect has not returned")
            gen = None
        if gen is None or gen.abandoned:
            suffix = f"~{self._generations}" if self._generations else ""
            uuid = f"{self.session_id}{suffix}"
            self._generations += 1
            gen = _Generation(uuid, self.engine.new_client(uuid, self.spec.device_name))
            self._install_handlers(gen)
            self._gen = gen
        return gen

    def _abandon(self, gen: _Generation, why: str) -> None:
        """Give up a client whose Go call cannot be stopped without blocking. It stays
        referenced; once its call returns it is stopped under the lock."""
        if gen.abandoned:
            return
        gen.abandoned = True
        if self._gen is gen:
            self._gen = None
        log.warning(
            "neonize client abandoned", extra={"uuid": gen.uuid, "why": why, "phase": gen.phase}
        )
        if gen.running:
            self.engine.note_pinned(gen, True)

    # -- lifecycle ---------------------------------------------------------------------

    async def connect(self) -> None:
        from neonize._binder import ProxySettings
        from neonize.proto.waCompanionReg.WAWebProtobufsCompanionReg_pb2 import DeviceProps

        engine = self.engine
        if not engine.may_act():
            raise EngineError("the node lease is gone: no dial until the agent renews it")
        gen = await self._usable_generation()
        self._active = True
        gen.attempt += 1
        gen.sign = asyncio.Event()
        gen.phase = "dialing"
        gen.qr_index = 0
        gen.keepalive_errors = 0
        gen.link_up = False
        proxy = ProxySettings(proxy_address=self.spec.proxy) if self.spec.proxy else None
        jid = await engine.stored_jid(self.session_id)
        client = gen.client
        client.device_props = DeviceProps(os=self.spec.device_name, platformType=DeviceProps.CHROME)
        if engine.config.device_store_url is not None:
            # one database for many accounts: load this session's device, or a new one
            client.jid = _parse_jid(jid) if jid else None
            client.new_device = jid is None
        log.info(
            "neonize connect",
            extra={
                "uuid": gen.uuid,
                "proxy": _mask(self.spec.proxy) if self.spec.proxy else None,
            },
        )
        async with engine.lock.exclusive():
            if gen.registered and not gen.running:
                # the previous dial failed: clear its entries in the glue before reusing
                # the uuid (Stop is quick when no dial is in flight)
                await asyncio.wait_for(client.stop(), engine.config.stop_timeout_s)
                gen.registered = False
            gen.dial_started = time.monotonic()
            task = await client.connect(proxy)
            gen.task = task
            gen.registered = True
            attempt = gen.attempt
            task.add_done_callback(lambda t: self._on_task_done(gen, attempt, t))
            sign = asyncio.create_task(gen.sign.wait())
            try:
                await asyncio.wait({task, sign}, timeout=engine.config.start_hold_s)
            finally:
                sign.cancel()  # our own waiter; the connect task is never cancelled
            await asyncio.sleep(engine.config.start_stagger_s)
        if self._guard is not None:
            self._guard.cancel()
        self._guard = asyncio.create_task(self._guard_dial(gen, attempt))

    async def _guard_dial(self, gen: _Generation, attempt: int) -> None:
        """A dial that shows no sign within ``dial_timeout_s`` is stuck (a silent proxy
        can hold it forever): report it and abandon the client, never cancel it."""
        timeout = self.engine.config.dial_timeout_s
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(gen.sign.wait(), timeout)
            return
        if gen is not self._gen or gen.attempt != attempt or not gen.running:
            return
        self._abandon(gen, f"no answer to the dial within {timeout:g} s")
        self._report(Disconnected(reason=f"dial timed out after {timeout:g} s (abandoned)"))

    def _on_task_done(self, gen: _Generation, attempt: int, task: asyncio.Task[Any]) -> None:
        """The Go call returned: a failed dial, or the pump ended after a stop."""
        gen.sign.set()
        if gen.abandoned:
            self.engine.note_pinned(gen, False)
            if gen.registered:
                self.engine.spawn(self._stop_generation(gen))
            return
        if task.cancelled():
            error: BaseException | None = asyncio.CancelledError()
        else:
            error = task.exception()
        current = gen is self._gen and gen.attempt == attempt and self._active
        was_online = gen.phase in ("online", "pairing")
        gen.phase = "idle"
        if not current:
            return
        if error is not None:
            reason = f"dial failed: {error}" if not was_online else f"connection ended: {error}"
        else:
            reason = "connection ended"
        self._report(Disconnected(reason=reason))

    async def disconnect(self) -> None:
        self._active = False
        if self._guard is not None:
            self._guard.cancel()
            self._guard = None
        gen = self._gen
        if gen is None:
            return
        gen.link_up = False
        if gen.phase == "dialing" and gen.running:
            # Stop would wait for the dial (whatsmeow holds its socket lock while dialing)
            self._abandon(gen, "stopped while dialing")
        elif gen.phase == "pairing" and gen.running:
            # Stopping now would crash the process when the QR codes run out (the Go
            # thread then looks its client up again and dereferences nil). Close the
            # socket only; the client is stopped once its pairing attempt has ended.
            with contextlib.suppress(Exception):
                await self._call(gen.client.disconnect())
            self._abandon(gen, "stopped while pairing")
        elif gen.registered:
            await self._stop_generation(gen)
        gen.phase = "idle"

    async def _stop_generation(self, gen: _Generation) -> None:
        """``Stop(uuid)`` under the exclusive lock, bounded: a Stop that does not return
        releases the lock anyway (a stalled agent is worse) and pins its thread."""
        async with self.engine.lock.exclusive():
            if not gen.registered:
                return
            gen.registered = False
            stop = asyncio.ensure_future(gen.client.stop())
            done, _ = await asyncio.wait({stop}, timeout=self.engine.config.stop_timeout_s)
        if not done:
            log.error("neonize Stop did not return in time", extra={"uuid": gen.uuid})
            self.engine.note_pinned(gen, True)
        elif stop.exception() is not None:
            log.warning("neonize Stop failed", extra={"error": repr(stop.exception())})

    async def logout(self) -> None:
        gen = self._gen
        error: str | None = None
        if gen is not None and gen.link_up and gen.registered:
            try:
                await self._call(gen.client.logout())
            except Exception as exc:
                error = str(exc)
        await self.disconnect()
        await self._forget_device()
        self.phone = None
        if error is not None:
            raise EngineError(f"logout did not reach WhatsApp ({error}); pairing forgotten here")

    async def _forget_device(self) -> None:
        await self.engine.remember_jid(self.session_id, None)
        if self.engine.config.device_store_url is None:
            base = self.engine.store_name(self.session_id)
            for suffix in ("", "-wal", "-shm", "-journal"):
                with contextlib.suppress(FileNotFoundError):
                    await asyncio.to_thread(Path(base + suffix).unlink)

    async def ping(self) -> bool:
        gen = self._gen
        if gen is None or not gen.link_up or not gen.registered:
            return False
        if gen.keepalive_errors >= self.engine.config.keepalive_dead_after:
            return False
        return bool(await self._call(gen.client.is_connected))

    # -- calls ---------------------------------------------------------------------------

    async def _call(self, awaitable: Any) -> Any:
        """One FFI call: shared lock, bounded wait (the thread is abandoned on timeout,
        which is harmless for every call but connect)."""
        async with self.engine.lock.shared():
            return await asyncio.wait_for(awaitable, self.engine.config.call_timeout_s)

    def _online(self) -> _Generation:
        gen = self._gen
        if gen is None or not gen.link_up or not gen.registered or not self.engine.may_act():
            raise EngineError("not connected")
        return gen

    async def pair_phone(self, phone: str) -> str:
        from neonize.utils.enum import ClientName

        gen = self._gen
        if gen is None or gen.phase != "pairing" or not gen.registered:
            raise EngineError("the session is not pairing (no socket waiting for a code)")
        try:
            code = await self._call(gen.client.PairPhone(phone, True, ClientName.LINUX))
        except TimeoutError:
            raise EngineError("pairing code request timed out") from None
        except Exception as exc:
            raise EngineError(f"pairing code request failed: {exc}") from None
        text = str(code)
        return f"{text[:4]}-{text[4:]}" if len(text) == 8 else text

    async def check_numbers(self, numbers: list[str]) -> list[NumberStatus]:
        gen = self._online()
        try:
            found = await self._call(gen.client.is_on_whatsapp(*("+" + n for n in numbers)))
        except TimeoutError:
            raise EngineError("number lookup timed out") from None
        except Exception as exc:
            raise EngineError(f"number lookup failed: {exc}") from None
        by_number: dict[str, Any] = {}
        for item in found:
            by_number[str(item.Query).lstrip("+")] = item
        results = []
        for number in numbers:
            item = by_number.get(number)
            on = bool(item is not None and item.IsIn)
            jid = f"{item.JID.User}@{item.JID.Server}" if on and item is not None else None
            results.append(NumberStatus(number=number, on_whatsapp=on, jid=jid))
        return results

    async def download(self, media: InboundMedia) -> bytes:
        """Fetch and decrypt inbound media: ``download_any`` on the message proto, a
        read of the Go maps like a send (shared FFI lock, bounded wait)."""
        gen = self._online()
        if media.handle is None:
            raise EngineError("no media to download")
        try:
            data = await self._call(gen.client.download_any(media.handle))
        except TimeoutError:
            raise EngineError("media download timed out") from None
        except Exception as exc:
            raise EngineError(f"media download failed: {exc}") from None
        return bytes(data or b"")

    def _install_handlers(self, gen: _Generation) -> None:
        from neonize.aioze import events as ev

        client = gen.client

        def handler(
            event_type: Any, fn: Callable[[Any], Any]
        ) -> Callable[[Any, Any], Coroutine[Any, Any, None]]:
            async def wrapped(_: Any, event: Any) -> None:
                try:
                    if gen.abandoned or gen is not self._gen:
                        if event_type is ev.ConnectedEv and gen.registered:
                            # an abandoned dial came through after all: never two sockets
                            self.engine.spawn(self._stop_generation(gen))
                        return
                    result = fn(event)
                    if asyncio.iscoroutine(result):
                        await result
                except Exception:
                    log.exception("neonize event handler failed", extra={"event": event_type})

            client.event(event_type)(wrapped)
            return wrapped

        handler(ev.ConnectedEv, lambda e: self._on_connected(gen))
        handler(ev.DisconnectedEv, lambda e: self._on_lost(gen, "connection lost"))
        handler(ev.PairStatusEv, lambda e: self._on_pair_status(gen, e))
        handler(ev.LoggedOutEv, lambda e: self._on_logged_out(gen, e))
        handler(ev.ConnectFailureEv, lambda e: self._on_connect_failure(gen, e))
        handler(
            ev.StreamReplacedEv,
            lambda e: self._on_lost(
                gen, "stream replaced: the account connected somewhere else", fatal=True
            ),
        )
        handler(
            ev.TemporaryBanEv,
            lambda e: self._on_lost(
                gen, f"temporary ban (code {e.Code}, expires {e.Expire})", fatal=True
            ),
        )
        handler(
            ev.ClientOutdatedEv,
            lambda e: self._on_lost(gen, "client outdated: upgrade neonize", fatal=True),
        )
        handler(ev.KeepAliveTimeoutEv, lambda e: self._on_keepalive(gen, int(e.ErrorCount)))
        handler(ev.KeepAliveRestoredEv, lambda e: self._on_keepalive(gen, 0))
        handler(ev.MessageEv, self._on_message)
        handler(ev.ReceiptEv, self._on_receipt)
        handler(ev.ChatPresenceEv, self._on_chat_presence)
        # -- groups (issue 16) --
        handler(ev.JoinedGroupEv, self._on_joined_group)
        handler(ev.GroupInfoEv, self._on_group_info)
        handler(ev.PictureEv, self._on_picture)
        # not re-exported by neonize.aioze.events, but registered like the others
        from neonize.proto.Neonize_pb2 import UndecryptableMessage

        handler(UndecryptableMessage, self._on_undecryptable)
        # -- contacts, profile, calls (issue 16) --
        handler(ev.CallOfferEv, self._on_call_offer)
        handler(ev.CallOfferNoticeEv, self._on_call_offer_notice)
        handler(ev.BlocklistEv, self._on_blocklist)
        handler(ev.StreamErrorEv, lambda e: log.warning("stream error", extra={"code": e.Code}))

        async def on_qr(_: Any, data: bytes) -> None:
            try:
                if gen.abandoned or gen is not self._gen or not self._active:
                    return
                lifetime = QR_FIRST_S if gen.qr_index == 0 else QR_NEXT_S
                gen.qr_index += 1
                gen.phase = "pairing"
                gen.sign.set()
                code = data.decode(errors="replace") if isinstance(data, bytes) else str(data)
                self._report(QrShown(code=code, expires_at=time.time() + lifetime))
            except Exception:
                log.exception("neonize QR handler failed")

        client.event.qr(on_qr)
        client.on_login_status = lambda status: self._on_login_status(gen, status)

    def _on_login_status(self, gen: _Generation, status: str) -> None:
        """Called on the Go thread when a pairing attempt ends ("success", "timeout", an
        error). That thread goes on to read the glue's maps: block it until the loop holds
        the exclusive lock for it, then let it through."""
        loop = self.engine._loop
        if loop is None:
            return
        future = asyncio.run_coroutine_threadsafe(self._pairing_ended(gen, status), loop)
        with contextlib.suppress(Exception):
            future.result(timeout=self.engine.config.stop_timeout_s)

    async def _pairing_ended(self, gen: _Generation, status: str) -> None:
        gen.sign.set()
        held = asyncio.Event()

        async def hold() -> None:
            async with self.engine.lock.exclusive():
                held.set()
                await asyncio.sleep(self.engine.config.start_hold_s)

        self.engine.spawn(hold())
        await held.wait()
        if status == "success":
            return
        # The Go thread now waits forever for a device id that will never come (it holds
        # its client, so a Stop after the hold is safe): count it, use a new client next.
        self.engine.note_pinned(gen, True)
        if gen.registered:
            self.engine.spawn(self._stop_generation(gen))
        current = gen is self._gen and not gen.abandoned
        self._abandon(gen, f"pairing ended: {status}")
        if not current or not self._active:
            return
        reasons = {
            "timeout": "pairing timed out: no QR code was scanned",
            "err-client-outdated": "client outdated: upgrade neonize",
            "err-scanned-without-multidevice": "QR scanned without multi-device support",
        }
        reason = reasons.get(status, f"pairing ended: {status}")
        self._report(Disconnected(reason=reason, fatal=status == "err-client-outdated"))

    def _on_connected(self, gen: _Generation) -> None:
        gen.sign.set()
        gen.phase = "online"
        gen.link_up = True
        gen.keepalive_errors = 0
        me = getattr(gen.client, "me", None)
        phone = None
        if me is not None and me.HasField("JID") and me.JID.User:
            phone = str(me.JID.User)
        self.phone = phone or self.phone
        if self.phone and self.engine.config.device_store_url is not None and me is not None:
            self.engine.spawn(
                self.engine.remember_jid(self.session_id, f"{me.JID.User}@{me.JID.Server}")
            )
        self._report(Connected(phone=self.phone))

    def _on_lost(self, gen: _Generation, reason: str, *, fatal: bool = False) -> None:
        gen.sign.set()
        gen.link_up = False  # the pump lives on; whatsmeow may reconnect by itself
        self._report(Disconnected(reason=reason, fatal=fatal))
        if fatal and gen.registered:
            # do not fight another socket of the same account: stop this one now
            self.engine.spawn(self._stop_generation(gen))

    def _on_pair_status(self, gen: _Generation, event: Any) -> None:
        if int(event.Status) == 2:  # SUCCESS
            phone = str(event.ID.User)
            self.phone = phone
            self.engine.spawn(
                self.engine.remember_jid(self.session_id, f"{event.ID.User}@{event.ID.Server}")
            )
            self._report(Paired(phone=phone))
        else:
            log.warning("pairing failed", extra={"error": str(event.Error)})

    def _on_logged_out(self, gen: _Generation, event: Any) -> None:
        gen.sign.set()
        self.phone = None
        self._report(LoggedOut(reason=f"logged out by WhatsApp (reason {event.Reason})"))
        self.engine.spawn(self._after_logout(gen))

    async def _after_logout(self, gen: _Generation) -> None:
        self._active = False
        if gen.registered:
            await self._stop_generation(gen)
        await self._forget_device()

    def _on_connect_failure(self, gen: _Generation, event: Any) -> None:
        reason = int(event.Reason)
        if reason in (2, 4, 5):  # LOGGED_OUT, MAIN_DEVICE_GONE, UNKNOWN_LOGOUT: LoggedOut follows
            return
        fatal = reason in (3, 6, 7)  # TEMP_BANNED, CLIENT_OUTDATED, BAD_USER_AGENT
        self._on_lost(gen, f"connect failure {reason}: {event.Message}", fatal=fatal)

    def _on_keepalive(self, gen: _Generation, errors: int) -> None:
        gen.keepalive_errors = errors

    async def _on_undecryptable(self, event: Any) -> None:
        inbound = undecryptable_of(event)
        if inbound is None:
            return
        _bounded_put(self._undecryptable, inbound.message_id, None)
        if inbound.sender is None and inbound.sender_lid:
            inbound = msgspec.structs.replace(
                inbound, sender=await self._phone_of_lid(inbound.sender_lid)
            )
        self._report(inbound)

    async def _on_message(self, event: Any) -> None:
        inbound = inbound_of(event)
        if inbound is None:
            return
        if inbound.message_id in self._undecryptable:  # the retry worked
            del self._undecryptable[inbound.message_id]
            inbound = msgspec.structs.replace(inbound, resolves=True)
        if inbound.type == "poll_vote":
            voted = await self._poll_vote(event, inbound)
            if voted is None:
                return
            inbound = voted
        else:
            participant = jid_text(event.Info.MessageSource.Sender)
            _bounded_put(self._recent, inbound.message_id, (participant, event.Message))
        if inbound.sender is None and inbound.sender_lid:
            inbound = msgspec.structs.replace(
                inbound, sender=await self._phone_of_lid(inbound.sender_lid)
            )
        self._report(inbound)

    async def _phone_of_lid(self, lid: str) -> str | None:
        """whatsmeow's LID → phone mapping (``get_pn_from_lid``); None when unknown."""
        gen = self._gen
        if gen is None or not gen.link_up:
            return None
        try:
            jid = await self._call(gen.client.get_pn_from_lid(_parse_jid(lid)))
        except Exception as exc:
            log.info("no phone known for a LID", extra={"error": repr(exc)})
            return None
        return phone_of(jid)

    def _on_receipt(self, event: Any) -> None:
        status = _RECEIPTS.get(int(event.Type))
        if status is None:
            return
        source = event.MessageSource
        # in a group the receipt comes from one participant; never a LID as a phone
        who = source.Sender if source.IsGroup else source.Chat
        peer = phone_of(who) or phone_of(source.SenderAlt) or jid_text(who) or None
        for message_id in event.MessageIDs:
            self._report(Receipt(message_id=str(message_id), status=status, peer=peer))


_RECEIPTS: dict[int, Literal["delivered", "read", "failed"]] = {
    1: "delivered",  # DELIVERED
    4: "read",  # READ
    6: "read",  # PLAYED
    8: "failed",  # SERVER_ERROR
}

"""The neonize (whatsmeow) engine — production default.

neonize wraps whatsmeow (Go) through ctypes. Its glue has hazards that can kill or hang
the whole process (see ``NEONIZE.md`` of the team); this module is where every rule we
follow against them lives:

1. **One process-wide lock.** The Go glue keeps its clients in unsynchronised global maps.
   Calls that create or stop a client write those maps and take the :class:`FfiLock`
   exclusively; every other call (send, lookups, pairing code, liveness) reads them and
   takes it shared (Go allows concurrent map reads). A start holds the lock until the dial
   shows its first sign (QR, connected, failure) or ``start_hold_s`` passed, then waits
   ``start_stagger_s``: starts are serialised and staggered. When a pairing attempt ends,
   the Go thread reads the maps once more; its status callback blocks that thread until we
   hold the lock for it.
2. **A dedicated executor** sized ``max_sessions + spare``: each live session pins one
   thread (the Go event pump runs in ``to_thread``). Threads pinned forever by the glue (a
   dial that never returns; a pairing attempt that ended without a scan, whose Go thread
   then waits for a device id that never comes) are counted, and the executor is replaced
   by a larger one before they can starve it.
3. **Every handler wrapped**: neonize swallows exceptions of handlers silently; ours log.
4. **One referenced client per uuid**: a client object is created once per uuid and kept
   for the life of the engine, with its GC finalizer detached (it would call ``Stop(uuid)``
   outside our lock). A session gets a new uuid (``<id>~<n>``) only when its previous
   client is stuck in a dial that cannot be stopped without blocking.
5. **Bounded dials, never cancelled on the loop**: cancelling neonize's connect task runs a
   synchronous ``Stop`` on the loop (~57 s). We wait with a timeout instead and *abandon*
   a stuck dial: its client is kept referenced and stopped later, once the dial ends.
6. **Go log level set** before the first connect (``neonize.utils.log``), so DEBUG lines do
   not cross the FFI; neonize's ``logging.basicConfig`` handler is removed again.
7. **Own QR handler** (no terminal QR printer), own login-status handler.
8. **Device store**: a SQLite file per session under ``data_dir/neonize/`` (the path
   ``node_agent.device_store`` backs up, so a moved session needs no new pairing), or a
   PostgreSQL URL shared by all agents (then the paired JID of each session is kept in
   KV bucket ``zf_device_jids`` so another node loads the same device without re-pairing).
9. **Proxy and device name per session** (``SessionSpec.proxy`` / ``device_name``).
   Device properties are process-global in whatsmeow: the last writer wins at pairing.
10. **Stop in order**: the agent stops sessions one by one on SIGTERM; ``close()`` does not
    wait for pinned threads (the CLI exits the process without joining them).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

import msgspec
from nats.aio.client import Client as NATS
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue
from prometheus_client import Gauge

from contract.protocol import (
    AudioContent,
    ContactContent,
    DocumentContent,
    EditContent,
    ImageContent,
    LocationContent,
    MessageContent,
    NumberStatus,
    PollContent,
    ReactionContent,
    RevokeContent,
    SessionSpec,
    StickerContent,
    TextContent,
    VideoContent,
)
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
from node_agent.engines.neonize_contacts import ContactsMixin  # issue 16
from node_agent.engines.neonize_groups import GroupsMixin  # issue 16
from node_agent.engines.neonize_protos import (
    _bounded_put,
    _jpeg_thumbnail,
    _parse_jid,
    audio_message,
    build_edit,
    build_poll,
    build_revoke,
    build_text,
    chat_presence_args,
    image_message,
    inbound_of,
    jid_text,
    participant_ids,
    phone_of,
    poll_option_names,
    presence_of,
    sticker_message,
    undecryptable_of,
    vcard,
    video_message,
)
from node_agent.link_preview import PreviewedText
from node_agent.media import MediaPayload

log = logging.getLogger(__name__)

DEVICES_BUCKET = "zf_device_jids"
QR_FIRST_S = 60.0  # whatsmeow: the first code lives 60 s, the next five 20 s each
QR_NEXT_S = 20.0

PINNED_THREADS = Gauge(
    "zapfleet_agent_neonize_pinned_threads",
    "Executor threads held forever by the neonize glue (stuck dials, ended pairings)",
)
ABANDONED_DIALS = Gauge(
    "zapfleet_agent_neonize_abandoned_clients", "neonize clients abandoned in a stuck dial"
)


class NeonizeConfig(msgspec.Struct, kw_only=True):
    data_dir: str = "./.zapfleet/agent"
    device_store_url: str | None = None
    max_sessions: int = 150
    executor_spare: int = 32
    dial_timeout_s: float = 30.0
    start_hold_s: float = 0.5
    start_stagger_s: float = 0.05
    stop_timeout_s: float = 10.0
    call_timeout_s: float = 30.0
    go_log_level: str = "WARNING"
    keepalive_dead_after: int = 2
    replicas: int = 1  # of the zf_devices bucket (ZAPFLEET_NATS_REPLICAS)


class FfiLock:
    """A writer-preferring readers-writer lock for calls into the Go glue.

    ``exclusive()`` for calls that create or stop clients (they write the glue's global
    maps), ``shared()`` for every other call (they only read them). A waiting writer
    blocks new readers, so a start is never starved by a stream of sends."""

    def __init__(self) -> None:
        self._cond = asyncio.Condition()
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0

    @property
    def busy(self) -> bool:
        return self._writer or self._readers > 0

    @contextlib.asynccontextmanager
    async def shared(self) -> AsyncIterator[None]:
        async with self._cond:
            await self._cond.wait_for(lambda: not self._writer and not self._writers_waiting)
            self._readers += 1
        try:
            yield
        finally:
            async with self._cond:
                self._readers -= 1
                self._cond.notify_all()

    @contextlib.asynccontextmanager
    async def exclusive(self) -> AsyncIterator[None]:
        async with self._cond:
            self._writers_waiting += 1
            try:
                await self._cond.wait_for(lambda: not self._writer and self._readers == 0)
            finally:
                self._writers_waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            async with self._cond:
                self._writer = False
                self._cond.notify_all()


def _client_class() -> type[Any]:
    """``NewAClient`` with our own login-status hook (neonize's is a private no-op)."""
    from neonize.aioze.client import NewAClient

    class ZfClient(NewAClient):  # type: ignore[misc]
        on_login_status: Callable[[str], None] | None = None

        # NewAClient passes ``self.__onLoginStatus`` (name-mangled) to Go at connect.
        def _NewAClient__onLoginStatus(self, uuid: int, status: int) -> None:
            hook = self.on_login_status
            if hook is None:
                return
            try:
                hook(ctypes.string_at(status).decode(errors="replace") if status else "")
            except Exception:
                log.exception("neonize login-status hook failed")

    return ZfClient


def _mask(value: str) -> str:
    """Proxy URLs may carry credentials: log only scheme and host."""
    from urllib.parse import urlsplit

    parts = urlsplit(value)
    return f"{parts.scheme}://{parts.hostname}:{parts.port}" if parts.hostname else "(set)"


class NeonizeEngine:
    name: Literal["neonize"] = "neonize"

    def __init__(self, config: NeonizeConfig, nc: NATS | None = None) -> None:
        self.config = config
        self.nc = nc
        self.lock = FfiLock()
        self.sessions: dict[str, NeonizeSession] = {}
        self.pinned: set[_Generation] = set()
        self._devices: KeyValue | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._executor_size = 0
        self._client_cls: type[Any] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.may_act: Callable[[], bool] = lambda: True

    def set_lease_guard(self, may_act: Callable[[], bool]) -> None:
        """The agent's lease check: without a lease no dial and no send (docs/failover.md)."""
        self.may_act = may_act

    async def start(self) -> None:
        root = logging.getLogger()
        handlers = list(root.handlers)
        level = root.level
        import neonize.aioze.client  # noqa: F401  (heavy: ~54 MB, ~0.25 s, calls basicConfig)

        for handler in list(root.handlers):  # undo neonize's logging.basicConfig
            if handler not in handlers:
                root.removeHandler(handler)
        root.setLevel(level)
        go_level = logging.getLevelName(self.config.go_log_level.upper())
        logging.getLogger("neonize.utils.log").setLevel(go_level)
        logging.getLogger("whatsmeow").setLevel(go_level)
        logging.getLogger("Whatsmeow").setLevel(go_level)
        self._client_cls = _client_class()
        self._loop = asyncio.get_running_loop()
        self._resize_executor()
        if self.config.device_store_url is None:
            from node_agent.device_store import device_path

            folder = device_path(self.config.data_dir, "x").parent
            await asyncio.to_thread(folder.mkdir, parents=True, exist_ok=True)
        if self.nc is not None and self.config.device_store_url is not None:
            from nats.js.api import KeyValueConfig

            from zapfleet.natsjs import key_value

            self._devices = await key_value(
                self.nc.jetstream(),
                KeyValueConfig(bucket=DEVICES_BUCKET, history=1),
                self.config.replicas,
            )

    def _resize_executor(self) -> None:
        """The loop's default executor (``asyncio.to_thread`` in neonize) sized for one
        thread per session plus spare, plus every thread the glue pinned forever."""
        wanted = self.config.max_sessions + self.config.executor_spare + len(self.pinned)
        if self._executor is not None and wanted <= self._executor_size:
            return
        assert self._loop is not None
        old = self._executor
        self._executor = ThreadPoolExecutor(max_workers=wanted, thread_name_prefix="zf-neonize")
        self._executor_size = wanted
        self._loop.set_default_executor(self._executor)
        if old is not None:
            old.shutdown(wait=False)  # its pinned threads stay; new calls go to the new one
            log.warning("neonize executor grown", extra={"threads": wanted})

    def note_pinned(self, generation: _Generation, pinned: bool) -> None:
        if pinned:
            self.pinned.add(generation)
        else:
            self.pinned.discard(generation)
        PINNED_THREADS.set(len(self.pinned))
        ABANDONED_DIALS.set(sum(1 for g in self.pinned if g.abandoned))
        if pinned and len(self.pinned) > self.config.executor_spare // 2:
            self._resize_executor()

    def new_client(self, uuid: str, device_name: str) -> Any:
        from neonize.proto.waCompanionReg.WAWebProtobufsCompanionReg_pb2 import DeviceProps

        assert self._client_cls is not None, "NeonizeEngine.start() was not awaited"
        props = DeviceProps(os=device_name, platformType=DeviceProps.CHROME)
        client = self._client_cls(self.store_name(uuid), props=props, uuid=uuid)
        # The finalizer would call Stop(uuid) from the GC, outside our lock: we always stop
        # clients ourselves, and keep every client referenced for the engine's lifetime.
        client._stop_finalizer.detach()
        return client

    def store_name(self, uuid: str) -> str:
        if self.config.device_store_url is not None:
            return self.config.device_store_url
        from node_agent.device_store import device_path

        session_id = uuid.split("~", 1)[0]
        return str(device_path(self.config.data_dir, session_id).resolve())

    def open_session(self, spec: SessionSpec, emit: Emit) -> NeonizeSession:
        existing = self.sessions.get(spec.key)
        if existing is not None:
            # same session again (restart, epoch bump): keep its clients, new reporter
            existing.rebind(spec, emit)
            return existing
        session = NeonizeSession(self, spec, emit)
        self.sessions[spec.key] = session
        return session

    async def close(self) -> None:
        for session in list(self.sessions.values()):
            with contextlib.suppress(Exception):
                await session.disconnect()
        for task in list(self._tasks):
            task.cancel()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)

    async def forget(self, spec: SessionSpec) -> None:
        """Delete the session's device state here (the session is deleted): its local
        SQLite store, or its jid in the shared store's KV. A live client logs out."""
        session = self.sessions.pop(spec.key, None)
        if session is not None:
            with contextlib.suppress(Exception):
                await session.logout()
            return
        await NeonizeSession(self, spec, lambda _: None)._forget_device()

    # -- shared device store (PostgreSQL mode) -------------------------------------------

    async def stored_jid(self, session_id: str) -> str | None:
        if self._devices is None or self.config.device_store_url is None:
            return None
        try:
            entry = await self._devices.get(session_id)
        except KeyNotFoundError:
            return None
        return entry.value.decode() if entry.value else None

    async def remember_jid(self, session_id: str, jid: str | None) -> None:
        if self._devices is None:
            return
        try:
            if jid:
                await self._devices.put(session_id, jid.encode())
            else:
                await self._devices.delete(session_id)
        except Exception as exc:
            log.warning("could not record the device of a session", extra={"error": repr(exc)})

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


class _Generation:
    """One whatsmeow client (one uuid) and its connect attempts."""

    def __init__(self, uuid: str, client: Any) -> None:
        self.uuid = uuid
        self.client = client
        self.task: asyncio.Task[Any] | None = None
        self.registered = False  # Neonize() ran and we have not called Stop since
        self.phase: Literal["idle", "dialing", "pairing", "online"] = "idle"
        self.abandoned = False
        self.sign = asyncio.Event()
        self.attempt = 0
        self.dial_started = 0.0
        self.qr_index = 0
        self.keepalive_errors = 0
        self.link_up = False  # between Connected and Disconnected events

    @property
    def running(self) -> bool:
        return self.task is not None and not self.task.done()


# issue 16: contacts/profile/calls in neonize_contacts.py, groups in neonize_groups.py,
# message builders and decoders in neonize_protos.py
class NeonizeSession(ContactsMixin, GroupsMixin):
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

    async def send(
        self,
        to: str,
        content: MessageContent,
        message_id: str,
        media: MediaPayload | None = None,
    ) -> str:
        gen = self._online()
        jid = _parse_jid(to)
        try:
            message = await self._build(gen, jid, content, media)
            response = await self._call(gen.client.send_message(jid, message))
        except EngineError:
            raise
        except TimeoutError:
            raise EngineError("send timed out") from None
        except Exception as exc:
            raise EngineError(f"send failed: {exc}") from None
        engine_id = str(response.ID)
        self._sent[engine_id] = None
        if len(self._sent) > 10_000:
            self._sent.popitem(last=False)
        self._remember_sent(engine_id, content, message)
        # whatsmeow returns after the server accepted the message: that is the server ack
        self._report(Receipt(message_id=engine_id, status="server", peer=to))
        return engine_id

    async def _uploaded(self, gen: _Generation, media: MediaPayload, kind: Any) -> dict[str, Any]:
        """Upload the bytes to WhatsApp's media servers: the fields every media message
        (image, video, audio, document) carries about them."""
        up = await self._call(gen.client.upload(media.data, kind))
        return {
            "URL": up.url,
            "directPath": up.DirectPath,
            "fileEncSHA256": up.FileEncSHA256,
            "fileLength": up.FileLength,
            "fileSHA256": up.FileSHA256,
            "mediaKey": up.MediaKey,
            "mimetype": media.mimetype,
        }

    async def _build(
        self, gen: _Generation, jid: Any, content: MessageContent, media: MediaPayload | None
    ) -> Any:
        from neonize.proto.waCommon.WACommon_pb2 import MessageKey
        from neonize.proto.waE2E import WAWebProtobufsE2E_pb2 as e2e
        from neonize.utils.enum import MediaType

        if isinstance(content, TextContent):
            mentions = list(content.mentions or [])
            if content.mention_all:
                mentions += await self._participants(gen, jid)
            quote = self._recent.get(content.reply_to) if content.reply_to else None
            return build_text(
                content.text,
                reply_to=content.reply_to,
                quoted=quote,
                mentions=mentions,
                preview=content.preview if isinstance(content, PreviewedText) else None,
            )
        if isinstance(content, EditContent):
            return build_edit(jid_text(jid), content.message_id, content.text)
        if isinstance(content, RevokeContent):
            return build_revoke(jid_text(jid), content.message_id)
        if isinstance(content, PollContent):
            return build_poll(content.name, content.options, content.selectable)
        if isinstance(content, LocationContent):
            return e2e.Message(
                locationMessage=e2e.LocationMessage(
                    degreesLatitude=content.latitude,
                    degreesLongitude=content.longitude,
                    name=content.name,
                    address=content.address,
                )
            )
        if isinstance(content, ContactContent):
            return e2e.Message(
                contactMessage=e2e.ContactMessage(
                    displayName=content.display_name,
                    vcard=vcard(content.display_name, content.phone),
                )
            )
        if isinstance(content, ReactionContent):
            from_me = content.message_id in self._sent
            return e2e.Message(
                reactionMessage=e2e.ReactionMessage(
                    key=MessageKey(
                        remoteJID=f"{jid.User}@{jid.Server}",
                        fromMe=from_me,
                        ID=content.message_id,
                    ),
                    text=content.emoji,
                    senderTimestampMS=int(time.time() * 1000),
                )
            )
        if media is None:
            raise EngineError("media content without media bytes")
        if isinstance(content, ImageContent):
            fields = await self._uploaded(gen, media, MediaType.MediaImage)
            thumbnail = await asyncio.to_thread(_jpeg_thumbnail, media.data)
            return image_message(fields, content, thumbnail)
        if isinstance(content, VideoContent):
            fields = await self._uploaded(gen, media, MediaType.MediaVideo)
            return video_message(fields, content)
        if isinstance(content, AudioContent):
            fields = await self._uploaded(gen, media, MediaType.MediaAudio)
            return audio_message(fields, media, content.voice_note, view_once=content.view_once)
        if isinstance(content, StickerContent):
            fields = await self._uploaded(gen, media, MediaType.MediaImage)
            return sticker_message(fields, media)
        if isinstance(content, DocumentContent):
            fields = await self._uploaded(gen, media, MediaType.MediaDocument)
            name = media.filename or "document"
            return e2e.Message(
                documentMessage=e2e.DocumentMessage(
                    **fields, caption=content.caption, fileName=name, title=name
                )
            )
        raise EngineError(f"unsupported content {type(content).__name__}")

    async def mark_read(self, chat: str, message_ids: list[str]) -> None:
        """Read receipts (whatsmeow ``MarkRead``), one call per sender: in a group each
        message's participant, else the chat itself."""
        from neonize.utils.enum import ReceiptType

        gen = self._online()
        chat_jid = _parse_jid(chat)
        by_sender: dict[str, list[str]] = {}
        for message_id in message_ids:
            participant = self._recent.get(message_id, ("", None))[0]
            by_sender.setdefault(participant or jid_text(chat_jid), []).append(message_id)
        for sender, ids in by_sender.items():
            try:
                await self._call(
                    gen.client.mark_read(
                        *ids, chat=chat_jid, sender=_parse_jid(sender), receipt=ReceiptType.READ
                    )
                )
            except TimeoutError:
                raise EngineError("mark read timed out") from None
            except Exception as exc:
                raise EngineError(f"mark read failed: {exc}") from None

    async def send_presence(
        self, chat: str, state: Literal["typing", "recording", "paused"]
    ) -> None:
        """Typing / recording indicators (whatsmeow ``SendChatPresence``)."""
        gen = self._online()
        presence, media = chat_presence_args(state)
        try:
            await self._call(gen.client.send_chat_presence(_parse_jid(chat), presence, media))
        except TimeoutError:
            raise EngineError("chat presence timed out") from None
        except Exception as exc:
            raise EngineError(f"chat presence failed: {exc}") from None

    def _on_chat_presence(self, event: Any) -> None:
        seen = presence_of(event)
        if seen is not None:
            self._report(seen)

    async def _participants(self, gen: _Generation, jid: Any) -> list[str]:
        """Every participant of a group, as chat ids ("mention everyone")."""
        info = self._group_cache.get(jid_text(jid))
        if info is None:
            try:
                info = await self._call(gen.client.get_group_info(jid))
            except Exception as exc:
                raise EngineError(f"group participants unavailable: {exc}") from None
            self._group_cache[jid_text(jid)] = info
        return participant_ids(info)

    def _remember_sent(self, engine_id: str, content: MessageContent, message: Any) -> None:
        me = getattr(self._gen.client, "me", None) if self._gen is not None else None
        own = jid_text(me.JID) if me is not None and me.HasField("JID") else ""
        _bounded_put(self._recent, engine_id, (own, message))
        if isinstance(content, PollContent):
            _bounded_put(self._polls, engine_id, (content.name, list(content.options)))

    async def _poll_vote(self, event: Any, inbound: Inbound) -> Inbound | None:
        """Decrypt a poll vote (whatsmeow: ``decrypt_poll_vote``) and name the options."""
        content = dict(inbound.content or {})
        poll_id = str(content.get("message_id") or "")
        poll = self._polls.get(poll_id)
        gen = self._gen
        if poll is None or gen is None or not gen.link_up:
            log.info("poll vote for a poll this agent does not know", extra={"poll": poll_id})
            return None
        try:
            vote = await self._call(gen.client.decrypt_poll_vote(event))
        except Exception as exc:
            log.warning("poll vote not decryptable", extra={"error": repr(exc)})
            return None
        content["poll"] = poll[0]
        content["options"] = poll_option_names(poll[1], list(vote.selectedOptions))
        return msgspec.structs.replace(inbound, content=content)

    # -- events from Go ------------------------------------------------------------------

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


__all__ = ["DEVICES_BUCKET", "FfiLock", "NeonizeConfig", "NeonizeEngine", "NeonizeSession"]

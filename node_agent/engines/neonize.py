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
import io
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
    GroupAction,
    GroupCreated,
    GroupInfo,
    GroupJoined,
    GroupMember,
    GroupRole,
    GroupSettings,
    ImageContent,
    JoinRequest,
    LocationContent,
    MessageContent,
    NumberStatus,
    ParticipantResult,
    ParticipantStatus,
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
    GroupError,
    GroupEvent,
    Inbound,
    InboundMedia,
    LoggedOut,
    Paired,
    PresenceSeen,
    QrShown,
    Receipt,
)
from node_agent.engines.neonize_contacts import ContactsMixin  # issue 16
from node_agent.link_preview import LinkPreview, PreviewedText
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


class NeonizeSession(ContactsMixin):  # issue 16: node_agent/engines/neonize_contacts.py
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

    # -- groups (issue 16) ---------------------------------------------------------------

    def _own_ids(self, gen: _Generation) -> set[str]:
        """This account as groups may name it: its phone and its LID."""
        me = getattr(gen.client, "me", None)
        own: set[str] = {self.phone} if self.phone else set()
        if me is not None:
            for field in ("JID", "LID"):
                if me.HasField(field):
                    jid = getattr(me, field)
                    own |= {x for x in (phone_of(jid), lid_of(jid)) if x}
        return own

    async def _group_call(self, what: str, awaitable: Any, *, link: bool = False) -> Any:
        try:
            return await self._call(awaitable)
        except TimeoutError:
            raise EngineError(f"{what} timed out") from None
        except Exception as exc:
            code = group_error_code(str(exc), link=link)
            if code is not None:
                raise GroupError(code, f"{what}: {exc}") from None
            raise EngineError(f"{what} failed: {exc}") from None

    async def list_groups(self) -> list[GroupInfo]:
        gen = self._online()
        found = await self._group_call("list groups", gen.client.get_joined_groups())
        own = self._own_ids(gen)
        return [group_info_of(info, own) for info in found]

    async def group_info(self, group_id: str) -> GroupInfo:
        gen = self._online()
        jid = _parse_jid(group_id)
        info = await self._group_call("group info", gen.client.get_group_info(jid))
        self._group_cache[group_id] = info
        view = group_info_of(info, self._own_ids(gen))
        if is_admin_in(view, self._own_ids(gen)):
            with contextlib.suppress(EngineError, GroupError):
                view.invite_link = str(
                    await self._group_call("invite link", gen.client.get_group_invite_link(jid))
                )
        return view

    async def create_group(self, subject: str, participants: list[str]) -> GroupCreated:
        gen = self._online()
        jids = [_parse_jid(p) for p in participants]
        info = await self._group_call("create group", gen.client.create_group(subject, jids))
        results = participant_results(participants, list(info.Participants), "add")
        await self._send_invites(gen, info, participants, list(info.Participants))
        return GroupCreated(group=group_info_of(info, self._own_ids(gen)), results=results)

    async def leave_group(self, group_id: str) -> None:
        gen = self._online()
        await self._group_call("leave group", gen.client.leave_group(_parse_jid(group_id)))
        self._group_cache.pop(group_id, None)

    async def update_participants(
        self, group_id: str, action: GroupAction, participants: list[str]
    ) -> list[ParticipantResult]:
        from neonize.utils.enum import ParticipantChange

        gen = self._online()
        changed = await self._group_call(
            f"{action} participants",
            gen.client.update_group_participants(
                _parse_jid(group_id),
                [_parse_jid(p) for p in participants],
                ParticipantChange(action),
            ),
        )
        self._group_cache.pop(group_id, None)
        returned = list(changed)
        if action == "add":
            info = self._group_cache.get(group_id)
            if info is None:
                with contextlib.suppress(EngineError, GroupError):
                    info = await self._group_call(
                        "group info", gen.client.get_group_info(_parse_jid(group_id))
                    )
            if info is not None:
                await self._send_invites(gen, info, participants, returned)
        return participant_results(participants, returned, action)

    async def _send_invites(
        self, gen: _Generation, info: Any, asked: list[str], returned: list[Any]
    ) -> None:
        """Privacy forbids adding them, but WhatsApp offers an invite (403 with an add
        request code): send it, as the phone app does."""
        for participant in returned:
            if int(participant.Error) != 403 or not participant.AddRequest.Code:
                continue
            to = phone_of(participant.JID) or phone_of(participant.PhoneNumber)
            if to is None:
                continue
            message = build_group_invite(
                jid_text(info.JID),
                info.GroupName.Name,
                participant.AddRequest.Code,
                int(participant.AddRequest.Expiration),
            )
            try:
                await self._call(gen.client.send_message(_parse_jid(to), message))
            except Exception as exc:
                log.warning("group invite not sent", extra={"error": repr(exc)})

    async def invite_link(self, group_id: str, revoke: bool = False) -> str:
        gen = self._online()
        link = await self._group_call(
            "invite link", gen.client.get_group_invite_link(_parse_jid(group_id), revoke)
        )
        return str(link)

    async def join_group(self, link: str) -> GroupJoined:
        gen = self._online()
        code = invite_code(link)
        # the group first: a join that ends in a pending approval names no group
        info = await self._group_call(
            "invite link info", gen.client.get_group_info_from_link(code), link=True
        )
        group_id = jid_text(info.JID)
        try:
            jid = await self._call(gen.client.join_group_with_link(code))
        except TimeoutError:
            raise EngineError("join group timed out") from None
        except Exception as exc:
            if join_pending(str(exc)):
                return GroupJoined(group_id=group_id, status="requested")
            error = group_error_code(str(exc), link=True)
            if error is not None:
                raise GroupError(error, f"join group: {exc}") from None
            raise EngineError(f"join group failed: {exc}") from None
        return GroupJoined(group_id=jid_text(jid) or group_id, status="joined")

    async def set_group_picture(self, group_id: str, jpeg: bytes | None) -> str | None:
        gen = self._online()
        if jpeg is None:
            # neonize 0.5.2 hands whatsmeow bytes, never the nil that removes a picture
            raise GroupError("not_supported", "removing a group picture needs a newer neonize")
        picture = await self._group_call(
            "set group picture", gen.client.set_group_photo(_parse_jid(group_id), jpeg)
        )
        return str(picture) or None

    async def join_requests(self, group_id: str) -> list[JoinRequest]:
        gen = self._online()
        found = await self._group_call(
            "join requests", gen.client.get_group_request_participants(_parse_jid(group_id))
        )
        return [join_request_of(item) for item in found]

    async def answer_requests(
        self, group_id: str, action: Literal["approve", "reject"], participants: list[str]
    ) -> list[ParticipantResult]:
        self._online()
        # whatsmeow has UpdateGroupRequestParticipants, neonize 0.5.2 does not bind it
        raise GroupError(
            "not_supported", "approving or rejecting join requests needs a newer neonize"
        )

    async def link_info(self, link: str) -> GroupInfo:
        gen = self._online()
        info = await self._group_call(
            "invite link info", gen.client.get_group_info_from_link(invite_code(link)), link=True
        )
        return group_info_of(info, set())

    async def update_group(self, group_id: str, changes: dict[str, object]) -> None:
        from datetime import timedelta

        gen = self._online()
        jid = _parse_jid(group_id)
        client = gen.client
        for name, value in changes.items():
            if name == "subject":
                call = client.set_group_name(jid, str(value))
            elif name == "description":
                call = client.set_group_topic(jid, "", "", str(value or ""))
            elif name == "announce":
                call = client.set_group_announce(jid, bool(value))
            elif name == "locked":
                call = client.set_group_locked(jid, bool(value))
            elif name == "ephemeral_s":
                call = client.set_disappearing_timer(jid, timedelta(seconds=int(str(value))))
            else:
                raise EngineError(f"unknown group setting {name}")
            await self._group_call(f"set {name}", call)
        self._group_cache.pop(group_id, None)

    def _on_joined_group(self, event: Any) -> None:
        joined = joined_group_event(event, self._own_ids(self._gen) if self._gen else set())
        self._group_cache.pop(joined.group_id, None)
        self._report(joined)

    def _on_picture(self, event: Any) -> None:
        changed = group_picture_event(event)
        if changed is not None:
            self._group_cache.pop(changed.group_id, None)
            self._report(changed)

    def _on_group_info(self, event: Any) -> None:
        own = self._own_ids(self._gen) if self._gen else set()
        self._group_cache.pop(jid_text(event.JID), None)
        for changed in group_info_events(event, own):
            self._report(changed)

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


def _parse_jid(text: str) -> Any:
    """The JID of a chat id (contract/chat_ids.py): phone digits or ``user@server``."""
    from neonize.utils.jid import build_jid

    user, _, server = text.partition("@")
    return build_jid(user, server or "s.whatsapp.net")


def jid_text(jid: Any) -> str:
    """``user@server`` of a JID proto ("" when empty)."""
    if jid is None or not jid.User:
        return ""
    return f"{jid.User}@{jid.Server}"


def phone_of(jid: Any) -> str | None:
    """The phone number (E.164 digits) of a JID on the phone server, else None: a LID
    is never taken for a phone number."""
    if jid is None or not jid.User or jid.Server != "s.whatsapp.net":
        return None
    return str(jid.User)


def lid_of(jid: Any) -> str | None:
    if jid is None or not jid.User or jid.Server != "lid":
        return None
    return f"{jid.User}@lid"


def inbound_of(event: Any) -> Inbound | None:
    """The :class:`Inbound` of a whatsmeow message event (None for our own messages).

    With LID addressing ``Sender`` is the LID and ``SenderAlt`` the phone (or the other
    way round): the phone goes to ``sender`` only when it is one, the LID to
    ``sender_lid``; a LID-only sender has ``sender`` None until the phone is resolved.
    In a group ``chat`` is the group and ``sender`` the participant."""
    info = event.Info
    source = info.MessageSource
    if source.IsFromMe:
        return None
    kind, text, extra = describe_message(event.Message)
    if event.IsEdit and kind != "edit" and event.HasField("Raw"):
        # whatsmeow unwrapped the edit (Message = the new content): the target is in Raw
        raw_kind, raw_text, raw_extra = describe_message(event.Raw)
        if raw_kind == "edit":
            kind, text, extra = raw_kind, raw_text, raw_extra
    phone = phone_of(source.Sender) or phone_of(source.SenderAlt)
    lid = lid_of(source.Sender) or lid_of(source.SenderAlt)
    content: dict[str, object] = dict(extra)
    if info.Pushname:
        content["push_name"] = str(info.Pushname)
    chat = None
    if source.IsGroup or source.Chat.Server in ("g.us", "newsletter"):
        chat = jid_text(source.Chat)
    return Inbound(
        message_id=str(info.ID),
        sender=phone,
        sender_lid=lid,
        chat=chat,
        type=kind,
        timestamp=float(info.Timestamp) / (1000 if info.Timestamp > 10**11 else 1),
        text=text,
        content=content or None,
        media=inbound_media(event.Message),
    )


def _bounded_put(store: OrderedDict[str, Any], key: str, value: Any, limit: int = 2_000) -> None:
    store[key] = value
    if len(store) > limit:
        store.popitem(last=False)


def undecryptable_of(event: Any) -> Inbound | None:
    """The ``message.received`` of a message WhatsApp could not decrypt yet ("waiting for
    this message"): type ``undecryptable``; whatsmeow asks the sender's phone to send it
    again, and the content arrives later as a message with the same id."""
    info = event.Info
    source = info.MessageSource
    if source.IsFromMe:
        return None
    chat = None
    if source.IsGroup or source.Chat.Server in ("g.us", "newsletter"):
        chat = jid_text(source.Chat)
    return Inbound(
        message_id=str(info.ID),
        sender=phone_of(source.Sender) or phone_of(source.SenderAlt),
        sender_lid=lid_of(source.Sender) or lid_of(source.SenderAlt),
        chat=chat,
        type="undecryptable",
        timestamp=float(info.Timestamp) / (1000 if info.Timestamp > 10**11 else 1),
        content={
            "unavailable": bool(event.IsUnavailable),
            "hidden": int(event.DecryptFailMode) == 2,  # DECRYPT_FAIL_HIDE (SHOW is 1)
        },
    )


def participant_ids(info: Any) -> list[str]:
    """Chat ids of a group's participants as the group addresses them (its JID: a phone,
    or a LID in a LID-addressed group) — what ``mentionedJID`` must name."""
    found = []
    for participant in info.Participants:
        chat = phone_of(participant.JID) or jid_text(participant.JID)
        if chat:
            found.append(chat)
    return found


def chat_presence_args(state: str) -> tuple[Any, Any]:
    """neonize's (ChatPresence, ChatPresenceMedia) of a presence state."""
    from neonize.utils.enum import ChatPresence, ChatPresenceMedia

    if state == "paused":
        return ChatPresence.CHAT_PRESENCE_PAUSED, ChatPresenceMedia.CHAT_PRESENCE_MEDIA_TEXT
    media = (
        ChatPresenceMedia.CHAT_PRESENCE_MEDIA_AUDIO
        if state == "recording"
        else (ChatPresenceMedia.CHAT_PRESENCE_MEDIA_TEXT)
    )
    return ChatPresence.CHAT_PRESENCE_COMPOSING, media


def presence_of(event: Any) -> PresenceSeen | None:
    """The :class:`PresenceSeen` of a whatsmeow ChatPresence event (State 1 composing,
    2 paused; Media 2 audio = recording)."""
    source = event.MessageSource
    if source.IsFromMe:
        return None
    state: Literal["typing", "recording", "paused"]
    if int(event.State) == 2:
        state = "paused"
    else:
        state = "recording" if int(event.Media) == 2 else "typing"
    phone = phone_of(source.Sender) or phone_of(source.SenderAlt)
    lid = lid_of(source.Sender) or lid_of(source.SenderAlt)
    if source.IsGroup:
        chat = jid_text(source.Chat)
    else:
        chat = phone_of(source.Chat) or phone or jid_text(source.Chat)
    return PresenceSeen(chat=chat, sender=phone, sender_lid=lid, state=state)


def mention_jid(chat: str) -> str:
    """The JID text WhatsApp expects in ``mentionedJID`` for a chat id."""
    return chat if "@" in chat else f"{chat}@s.whatsapp.net"


def build_text(
    text: str,
    *,
    reply_to: str | None = None,
    quoted: tuple[str, Any] | None = None,
    mentions: list[str] | None = None,
    preview: LinkPreview | None = None,
) -> Any:
    """A text message; a reply or mentions make it an ``extendedTextMessage`` with a
    ``contextInfo`` (quoted id, its sender, the quoted content, mentioned JIDs); a link
    preview fills its ``matchedText``, ``title`` and ``description``."""
    from neonize.proto.waE2E import WAWebProtobufsE2E_pb2 as e2e

    if reply_to is None and not mentions and preview is None:
        return e2e.Message(conversation=text)
    extended = e2e.ExtendedTextMessage(text=text)
    if preview is not None:
        extended.matchedText = preview.url
        extended.title = preview.title
        if preview.description:
            extended.description = preview.description
    if reply_to is None and not mentions:
        return e2e.Message(extendedTextMessage=extended)
    context = e2e.ContextInfo()
    if reply_to is not None:
        context.stanzaID = reply_to
        if quoted is not None:
            participant, message = quoted
            if participant:
                context.participant = participant
            if message is not None:
                context.quotedMessage.CopyFrom(message)
    if mentions:
        context.mentionedJID.extend(dict.fromkeys(mention_jid(m) for m in mentions))
    extended.contextInfo.CopyFrom(context)
    return e2e.Message(extendedTextMessage=extended)


def build_edit(chat: str, message_id: str, text: str, now_ms: int | None = None) -> Any:
    """whatsmeow's ``BuildEdit``: a MESSAGE_EDIT protocol message inside ``editedMessage``."""
    from neonize.proto.waCommon.WACommon_pb2 import MessageKey
    from neonize.proto.waE2E import WAWebProtobufsE2E_pb2 as e2e

    protocol = e2e.ProtocolMessage(
        key=MessageKey(remoteJID=chat, fromMe=True, ID=message_id),
        type=e2e.ProtocolMessage.MESSAGE_EDIT,
        editedMessage=e2e.Message(conversation=text),
        timestampMS=now_ms if now_ms is not None else int(time.time() * 1000),
    )
    return e2e.Message(
        editedMessage=e2e.FutureProofMessage(message=e2e.Message(protocolMessage=protocol))
    )


def build_revoke(chat: str, message_id: str) -> Any:
    """whatsmeow's ``BuildRevoke`` of our own message: a REVOKE protocol message."""
    from neonize.proto.waCommon.WACommon_pb2 import MessageKey
    from neonize.proto.waE2E import WAWebProtobufsE2E_pb2 as e2e

    return e2e.Message(
        protocolMessage=e2e.ProtocolMessage(
            key=MessageKey(remoteJID=chat, fromMe=True, ID=message_id),
            type=e2e.ProtocolMessage.REVOKE,
        )
    )


def build_poll(name: str, options: list[str], selectable: int, secret: bytes | None = None) -> Any:
    """whatsmeow's ``BuildPollCreation``: the poll, and the 32-byte message secret votes
    are encrypted with (``selectable`` 0 = any number of options)."""
    import secrets as _secrets

    from neonize.proto.waE2E import WAWebProtobufsE2E_pb2 as e2e

    if selectable < 0 or selectable > len(options):
        selectable = 0
    return e2e.Message(
        pollCreationMessage=e2e.PollCreationMessage(
            name=name,
            options=[e2e.PollCreationMessage.Option(optionName=o) for o in options],
            selectableOptionsCount=selectable,
        ),
        messageContextInfo=e2e.MessageContextInfo(
            messageSecret=secret if secret is not None else _secrets.token_bytes(32)
        ),
    )


def poll_option_names(options: list[str], selected: list[bytes]) -> list[str]:
    """The names of the options a decrypted vote selected: WhatsApp sends the SHA-256 of
    each chosen option's name; unknown hashes are left out."""
    import hashlib

    by_hash = {hashlib.sha256(o.encode()).digest(): o for o in options}
    return [by_hash[h] for h in selected if h in by_hash]


def vcard(name: str, phone: str) -> str:
    digits = "".join(c for c in phone if c.isdigit())
    safe = name.replace("\n", " ").replace(";", ",")
    return f"BEGIN:VCARD\nVERSION:3.0\nFN:{safe}\nTEL;type=CELL;waid={digits}:+{digits}\nEND:VCARD"


def describe_message(message: Any) -> tuple[str, str | None, dict[str, object]]:
    """(type, text, extra) of a WhatsApp message proto, for ``message.received``."""
    if message is None:
        return "unknown", None, {}
    if message.HasField("editedMessage") and message.editedMessage.HasField("message"):
        message = message.editedMessage.message  # FutureProofMessage around the edit
    message, wrapped_once = unwrap_view_once(message)
    if message.HasField("protocolMessage"):
        protocol = message.protocolMessage
        target: dict[str, object] = {"message_id": str(protocol.key.ID)}
        if protocol.type == 14:  # MESSAGE_EDIT
            _, text, _ = describe_message(protocol.editedMessage)
            return "edit", text, target
        if protocol.type == 0:  # REVOKE
            return "revoke", None, target
        return "other", None, {}
    if message.conversation:
        return "text", str(message.conversation), {}
    if message.HasField("extendedTextMessage"):
        extended = message.extendedTextMessage
        context = context_of(extended.contextInfo)
        if extended.matchedText:
            context["preview"] = {
                "url": str(extended.matchedText),
                "title": str(extended.title),
                "description": str(extended.description) or None,
            }
        return "text", str(extended.text), context
    for poll_field in ("pollCreationMessage", "pollCreationMessageV2", "pollCreationMessageV3"):
        if message.HasField(poll_field):
            poll = getattr(message, poll_field)
            return (
                "poll",
                str(poll.name),
                {
                    "options": [str(o.optionName) for o in poll.options],
                    "selectable": int(poll.selectableOptionsCount),
                },
            )
    if message.HasField("groupInviteMessage"):  # groups (issue 16)
        invite = message.groupInviteMessage
        return (
            "group_invite",
            str(invite.caption) or str(invite.groupName),
            {
                "group_id": str(invite.groupJID),
                "subject": str(invite.groupName),
                "link": "https://chat.whatsapp.com/" + str(invite.inviteCode),
                "expires_at": float(invite.inviteExpiration) or None,
            },
        )
    if message.HasField("pollUpdateMessage"):
        return (
            "poll_vote",
            None,
            {"message_id": str(message.pollUpdateMessage.pollCreationMessageKey.ID)},
        )
    for field, kind in (
        ("imageMessage", "image"),
        ("videoMessage", "video"),
        ("audioMessage", "audio"),
        ("documentMessage", "document"),
        ("stickerMessage", "sticker"),
    ):
        if message.HasField(field):
            part = getattr(message, field)
            extra: dict[str, object] = {
                "mimetype": str(part.mimetype),
                "size": int(part.fileLength),
            }
            if wrapped_once or getattr(part, "viewOnce", False):
                extra["view_once"] = True
            caption = getattr(part, "caption", "") or None
            return kind, caption, extra
    if message.HasField("locationMessage"):
        loc = message.locationMessage
        return (
            "location",
            None,
            {"latitude": loc.degreesLatitude, "longitude": loc.degreesLongitude},
        )
    if message.HasField("contactMessage"):
        return "contact", None, {"display_name": str(message.contactMessage.displayName)}
    if message.HasField("reactionMessage"):
        reaction = message.reactionMessage
        emoji = str(reaction.text)
        return "reaction", emoji, {"message_id": str(reaction.key.ID), "emoji": emoji}
    return "other", None, {}


_VIEW_ONCE_WRAPPERS = ("viewOnceMessage", "viewOnceMessageV2", "viewOnceMessageV2Extension")


def unwrap_view_once(message: Any) -> tuple[Any, bool]:
    """The message inside a view-once wrapper (older clients send FutureProofMessages
    ``viewOnceMessage``/``V2``/``V2Extension``; current ones set ``viewOnce`` on the media
    part instead), and whether it was wrapped."""
    for wrapper in _VIEW_ONCE_WRAPPERS:
        if message.HasField(wrapper) and getattr(message, wrapper).HasField("message"):
            return getattr(message, wrapper).message, True
    return message, False


def context_of(context: Any) -> dict[str, object]:
    """What a ``contextInfo`` tells a receiver: the quoted message and the mentions."""
    extra: dict[str, object] = {}
    if context.stanzaID:
        extra["reply_to"] = str(context.stanzaID)
    mentions = []
    for jid in context.mentionedJID:
        user, _, server = str(jid).partition("@")
        mentions.append(user if server == "s.whatsapp.net" else str(jid))
    if mentions:
        extra["mentions"] = mentions
    return extra


_MEDIA_FIELDS = (
    "imageMessage",
    "videoMessage",
    "audioMessage",
    "documentMessage",
    "stickerMessage",
)


def inbound_media(message: Any) -> InboundMedia | None:
    """What a received media message says of its file, with the message itself as the
    handle ``download_any`` takes (it finds the media part and decrypts it)."""
    if message is None:
        return None
    message, _ = unwrap_view_once(message)
    for field in _MEDIA_FIELDS:
        if message.HasField(field):
            part = getattr(message, field)
            seconds = getattr(part, "seconds", 0) or None
            return InboundMedia(
                mimetype=str(part.mimetype) or "application/octet-stream",
                size=int(part.fileLength),
                filename=str(getattr(part, "fileName", "")) or None,
                sha256=bytes(part.fileSHA256).hex() or None,
                seconds=float(seconds) if seconds else None,
                handle=message,
            )
    return None


def image_message(fields: dict[str, Any], content: ImageContent, thumbnail: bytes | None) -> Any:
    """An imageMessage of bytes already uploaded; ``viewOnce`` set for view-once media
    (the flag whatsmeow's current clients send, no viewOnceMessage wrapper)."""
    from neonize.proto.waE2E import WAWebProtobufsE2E_pb2 as e2e

    extra: dict[str, Any] = {"viewOnce": True} if content.view_once else {}
    return e2e.Message(
        imageMessage=e2e.ImageMessage(
            **fields, caption=content.caption, JPEGThumbnail=thumbnail, **extra
        )
    )


def video_message(fields: dict[str, Any], content: VideoContent) -> Any:
    """A videoMessage of bytes already uploaded (``viewOnce`` as for images)."""
    from neonize.proto.waE2E import WAWebProtobufsE2E_pb2 as e2e

    extra: dict[str, Any] = {"viewOnce": True} if content.view_once else {}
    return e2e.Message(videoMessage=e2e.VideoMessage(**fields, caption=content.caption, **extra))


def audio_message(
    fields: dict[str, Any], media: MediaPayload, voice_note: bool, *, view_once: bool = False
) -> Any:
    """An audioMessage; a voice note (PTT) carries its duration and waveform, which
    WhatsApp needs to draw it as a voice note (node_agent/media_convert.py made them)."""
    from neonize.proto.waE2E import WAWebProtobufsE2E_pb2 as e2e

    extra: dict[str, Any] = {"viewOnce": True} if view_once else {}
    if media.seconds is not None:
        extra["seconds"] = max(1, round(media.seconds))
    if voice_note and media.waveform:
        extra["waveform"] = media.waveform
    return e2e.Message(audioMessage=e2e.AudioMessage(**fields, PTT=voice_note, **extra))


def sticker_message(fields: dict[str, Any], media: MediaPayload) -> Any:
    """A stickerMessage of WebP bytes already uploaded (as an image, like WhatsApp's)."""
    from neonize.proto.waE2E import WAWebProtobufsE2E_pb2 as e2e

    extra: dict[str, Any] = {}
    if media.width is not None and media.height is not None:
        extra["width"], extra["height"] = media.width, media.height
    return e2e.Message(
        stickerMessage=e2e.StickerMessage(**fields, isAnimated=media.animated, **extra)
    )


def _jpeg_thumbnail(data: bytes) -> bytes | None:
    """A small JPEG preview of an image (run in a thread: decoding is CPU work)."""
    try:
        from PIL import Image

        with Image.open(io.BytesIO(data)) as image:
            image.thumbnail((200, 200))
            out = io.BytesIO()
            image.convert("RGB").save(out, format="JPEG", quality=60)
            return out.getvalue()
    except Exception:
        return None


__all__ = ["DEVICES_BUCKET", "FfiLock", "NeonizeConfig", "NeonizeEngine", "NeonizeSession"]


# -- groups (issue 16) --------------------------------------------------------------------

_DONE: dict[str, ParticipantStatus] = {
    "add": "added",
    "remove": "removed",
    "promote": "promoted",
    "demote": "demoted",
}


def member_of(participant: Any) -> GroupMember:
    """Our view of a whatsmeow GroupParticipant: never a LID in ``phone``."""
    jid = participant.JID
    phone = phone_of(jid) or phone_of(participant.PhoneNumber)
    lid = lid_of(jid) or lid_of(participant.LID)
    role: GroupRole = (
        "superadmin" if participant.IsSuperAdmin else "admin" if participant.IsAdmin else "member"
    )
    return GroupMember(id=phone_of(jid) or jid_text(jid), role=role, phone=phone, lid=lid)


def group_info_of(info: Any, own: set[str]) -> GroupInfo:
    """Our GroupInfo of whatsmeow's (``own``: this account's phone and LID)."""
    ephemeral = info.GroupEphemeral
    return GroupInfo(
        id=jid_text(info.JID),
        subject=info.GroupName.Name,
        description=info.GroupTopic.Topic or None,
        owner=phone_of(info.OwnerPN) or phone_of(info.OwnerJID) or jid_text(info.OwnerJID) or None,
        created_at=float(info.GroupCreated) or None,
        participants=[member_of(p) for p in info.Participants if not int(p.Error)],
        settings=GroupSettings(
            announce=bool(info.GroupAnnounce.IsAnnounce),
            locked=bool(info.GroupLocked.isLocked),
            ephemeral_s=int(ephemeral.DisappearingTimer) if ephemeral.IsEphemeral else 0,
        ),
    )


def is_admin_in(group: GroupInfo, own: set[str]) -> bool:
    return any(
        m.role != "member" and own & {m.id, m.phone or "", m.lid or ""} for m in group.participants
    )


def participant_results(
    asked: list[str], returned: list[Any], action: str
) -> list[ParticipantResult]:
    """One result per participant asked for, from whatsmeow's per-participant answer
    (``Error`` 0: done; 403: privacy — an invite is sent when WhatsApp offers one;
    404: not on WhatsApp (add) / not a participant; 408: left recently; 409: already in)."""
    by_id: dict[str, Any] = {}
    for participant in returned:
        for jid in (participant.JID, participant.PhoneNumber, participant.LID):
            key = phone_of(jid) or jid_text(jid)
            if key:
                by_id.setdefault(key, participant)
    results = []
    for wanted in asked:
        participant = by_id.get(wanted)
        if participant is None:
            results.append(ParticipantResult(participant=wanted, status="failed"))
            continue
        code = int(participant.Error)
        status: ParticipantStatus
        if code == 0:
            status = _DONE[action]
        elif code == 403:
            status = "invite_sent" if participant.AddRequest.Code else "privacy_forbids"
        elif code == 404:
            status = "not_on_whatsapp" if action == "add" else "not_a_participant"
        elif code == 408:
            status = "recently_left"
        elif code == 409:
            status = "already_participant"
        else:
            status = "failed"
        results.append(ParticipantResult(participant=wanted, status=status, error=code or None))
    return results


def group_error_code(
    text: str, *, link: bool = False
) -> Literal["group_not_found", "not_group_admin", "invalid_invite_link"] | None:
    """The GroupError code of a whatsmeow error text, None for other failures."""
    lowered = text.lower()
    if link and ("invite link" in lowered or "not valid" in lowered or "revoked" in lowered):
        return "invalid_invite_link"
    if any(
        mark in lowered
        for mark in ("not participating", "does not exist", "item-not-found", "status 404")
    ):
        return "group_not_found"
    if any(
        mark in lowered
        for mark in ("permission", "forbidden", "not-authorized", "status 403", "status 401")
    ):
        return "not_group_admin"
    if link and ("status 406" in lowered or "not-acceptable" in lowered):
        return "invalid_invite_link"
    return None


def join_pending(text: str) -> bool:
    """whatsmeow's error of a join by link that became a request (the group needs an
    admin's approval)."""
    lowered = text.lower()
    return "approval" in lowered or "pending" in lowered


def join_request_of(item: Any) -> JoinRequest:
    """Our JoinRequest of whatsmeow's GroupParticipantRequest."""
    jid = item.Participant
    return JoinRequest(
        participant=phone_of(jid) or jid_text(jid),
        phone=phone_of(jid),
        lid=lid_of(jid),
        requested_at=float(item.TimeAt) or None,
    )


def invite_code(link: str) -> str:
    """The code of an invite link (the link itself or its code)."""
    return link.strip().removeprefix("https://chat.whatsapp.com/").strip("/")


def build_group_invite(group_id: str, subject: str, code: str, expiration: int) -> Any:
    """The GroupInviteMessage WhatsApp offers to send when privacy forbids an add."""
    from neonize.proto.waE2E import WAWebProtobufsE2E_pb2 as e2e

    return e2e.Message(
        groupInviteMessage=e2e.GroupInviteMessage(
            groupJID=group_id,
            inviteCode=code,
            inviteExpiration=expiration,
            groupName=subject,
            caption=f"Invitation to join my WhatsApp group {subject}",
        )
    )


def _who(jid: Any, alt: Any = None) -> str | None:
    """A phone when known, else the JID text (a LID), else None."""
    return phone_of(jid) or phone_of(alt) or jid_text(jid) or None


def joined_group_event(event: Any, own: set[str]) -> GroupEvent:
    """``group.joined`` of whatsmeow's JoinedGroup (we were added, created or joined)."""
    info = group_info_of(event.GroupInfo, own)
    by = _who(event.Sender, event.SenderPN)
    reason = event.Reason or event.Type or None
    return GroupEvent(kind="joined", group_id=info.id, by=by, group=info, reason=reason)


def group_picture_event(event: Any) -> GroupEvent | None:
    """``group.updated`` of whatsmeow's Picture event when it is a group's (None for a
    person's picture)."""
    if event.JID.Server != "g.us":
        return None
    return GroupEvent(
        kind="updated",
        group_id=jid_text(event.JID),
        by=_who(event.Author),
        changes={"picture": "removed" if event.Remove else "set"},
    )


def group_info_events(event: Any, own: set[str]) -> list[GroupEvent]:
    """What whatsmeow's GroupInfo event says, as our group events: ``left`` when this
    account was removed (or the group deleted), ``participants`` per action, and one
    ``updated`` with every setting that changed."""
    group_id = jid_text(event.JID)
    by = _who(event.Sender)
    found: list[GroupEvent] = []

    def ids(jids: Any) -> list[str]:
        return [x for x in (_who(j) for j in jids) if x]

    left = ids(event.Leave)
    if own & set(left) or (event.HasField("Delete") and event.Delete.Deleted):
        reason = "deleted" if event.HasField("Delete") else "left" if by in own else "removed"
        found.append(GroupEvent(kind="left", group_id=group_id, by=by, reason=reason))
    joined = [x for x in ids(event.Join) if x not in own]
    if joined:
        action = "join" if event.JoinReason == "invite" or joined == [by] else "add"
        found.append(
            GroupEvent(
                kind="participants",
                group_id=group_id,
                by=by,
                action=action,
                participants=tuple(joined),
            )
        )
    others_left = [x for x in left if x not in own]
    if others_left:
        action = "leave" if others_left == [by] else "remove"
        found.append(
            GroupEvent(
                kind="participants",
                group_id=group_id,
                by=by,
                action=action,
                participants=tuple(others_left),
            )
        )
    for action, jids in (("promote", event.Promote), ("demote", event.Demote)):
        if len(jids):
            found.append(
                GroupEvent(
                    kind="participants",
                    group_id=group_id,
                    by=by,
                    action=action,
                    participants=tuple(ids(jids)),
                )
            )
    changes: dict[str, object] = {}
    if event.HasField("Name"):
        changes["subject"] = event.Name.Name
    if event.HasField("Topic"):
        changes["description"] = None if event.Topic.TopicDeleted else event.Topic.Topic
    if event.HasField("Announce"):
        changes["announce"] = bool(event.Announce.IsAnnounce)
    if event.HasField("Locked"):
        changes["locked"] = bool(event.Locked.isLocked)
    if event.HasField("Ephemeral"):
        eph = event.Ephemeral
        changes["ephemeral_s"] = int(eph.DisappearingTimer) if eph.IsEphemeral else 0
    if event.NewInviteLink:
        changes["invite_link"] = "revoked"
    if changes:
        found.append(GroupEvent(kind="updated", group_id=group_id, by=by, changes=changes))
    return found

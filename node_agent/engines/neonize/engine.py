"""The neonize engine: one per agent process — its configuration, the FFI lock, the
executor that pinned Go threads run on, the whatsmeow clients and the device jids
(rules 1, 2, 4, 6 and 8 of the package docstring)."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
from collections.abc import AsyncIterator, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

import msgspec
from nats.aio.client import Client as NATS
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue
from prometheus_client import Gauge

from contract.protocol import (
    SessionSpec,
)
from node_agent.engines._base import (
    Emit,
)
from node_agent.engines.neonize.generation import _Generation
from node_agent.engines.neonize.session import NeonizeSession

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

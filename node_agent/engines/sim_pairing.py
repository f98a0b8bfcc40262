"""Pairing on the simulated network (a mixin of :class:`~node_agent.engines.sim.SimSession`):
rotating QR codes like WhatsApp's, a phone's scan or typed pairing code
(``zf.sim.link.<session key>``, ``zf.sim.pair.<phone>``), and the account it links."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from typing import TYPE_CHECKING, Any

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from contract.protocol import (
    SessionSpec,
)
from node_agent.engines._base import (
    Disconnected,
    Emit,
    EngineError,
    Paired,
    QrShown,
)
from node_agent.engines.sim_wire import QR_PREFIX, Account, LinkReply, LinkRequest, _encode

if TYPE_CHECKING:
    from node_agent.engines.sim import SimEngine

log = logging.getLogger(__name__)


class SimPairingMixin:
    if TYPE_CHECKING:
        engine: SimEngine
        spec: SessionSpec
        emit: Emit
        _link_sub: Subscription | None
        _pair_sub: Subscription | None
        _qr_task: asyncio.Task[None] | None
        _current_codes: set[str]
        _pair_phone: str | None

        @property
        def nc(self) -> NATS: ...
        def _spawn(self, coro: Any) -> None: ...
        async def _go_online(self, phone: str, generation: int) -> None: ...

        _generation: int

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
        await self._go_online(phone, self._generation)

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

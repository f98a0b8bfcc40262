"""A continuous pull from a durable JetStream consumer, with credit-based flow control.

``fetch()`` of nats-py returns a batch only when it is full or its timeout ends, which
adds up to a timeout of latency to every event when traffic is light. Here pull requests
stay open instead (``expires`` of a few seconds, idle heartbeats) and each message is
handed over the moment it arrives; a new request goes out whenever the owner has room,
so at most ``capacity()`` messages are ever requested and not yet handled.

Several processes may pull from the same durable consumer: JetStream gives each
message to one of them, and redelivers it if that one does not finish it in time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import ConsumerConfig
from nats.js.client import JetStreamContext
from nats.js.errors import BadRequestError, NotFoundError

log = logging.getLogger(__name__)

_HEARTBEAT = "100"
_END_STATUSES = frozenset({"404", "408", "409"})


_UPDATABLE = ("ack_wait", "max_ack_pending", "max_deliver", "max_waiting")


async def ensure_consumer(js: JetStreamContext, stream: str, config: ConsumerConfig) -> None:
    """Create the durable consumer, or bring the settings that may change (ack wait,
    limits) of an existing one up to date; its start position is never changed."""
    assert config.durable_name is not None
    try:
        current = await js.consumer_info(stream, config.durable_name)
    except NotFoundError:
        try:
            await js.add_consumer(stream, config)
            return
        except BadRequestError:  # another process created it a moment ago
            current = await js.consumer_info(stream, config.durable_name)
    existing = current.config
    if all(getattr(existing, f) == getattr(config, f) for f in _UPDATABLE):
        return
    for name in _UPDATABLE:
        setattr(existing, name, getattr(config, name))
    await js.add_consumer(stream, existing)


STOP_WAIT_S = 5.0  # how long a stop waits for a cancelled task before it goes on


async def cancel_and_wait(task: asyncio.Task[Any], what: str) -> None:
    """Cancel ``task`` and wait for it, at most STOP_WAIT_S: a stop never hangs on a task
    that does not end (a CI run once waited 300 s in a dispatcher's stop); such a task is
    logged and left behind."""
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=STOP_WAIT_S)
    if not done:
        log.warning("a task did not end when cancelled", extra={"task": what})
        return
    with contextlib.suppress(asyncio.CancelledError, Exception):
        task.result()


class PullConsumer:
    def __init__(
        self,
        nc: NATS,
        stream: str,
        durable: str,
        on_message: Callable[[Msg], None],
        capacity: Callable[[], int],
        batch_max: int = 256,
        expires_s: float = 5.0,
        heartbeat_s: float = 1.0,
    ) -> None:
        self.nc = nc
        self.stream = stream
        self.durable = durable
        self._on_message = on_message
        self._capacity = capacity
        self.batch_max = batch_max
        self.expires_s = expires_s
        self.heartbeat_s = heartbeat_s
        self._outstanding = 0
        self._requests: deque[list[float]] = deque()  # [remaining, deadline]
        self._wakeup = asyncio.Event()
        self._last_activity = time.monotonic()
        self._sub: Subscription | None = None
        self._task: asyncio.Task[None] | None = None
        self._inbox = ""

    async def start(self) -> None:
        self._inbox = self.nc.new_inbox()
        self._sub = await self.nc.subscribe(self._inbox, cb=self._receive)
        self._task = asyncio.create_task(self._pull_loop(), name=f"pull:{self.durable}")

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task, f"pull:{self.durable}")
            self._task = None
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()

    def wake(self) -> None:
        """Tell the puller that room was freed (it wakes only when enough was)."""
        if not self._wakeup.is_set() and self._wanted():
            self._wakeup.set()

    def _wanted(self) -> int:
        """How many messages to ask for now: 0 until a quarter of a batch is free."""
        capacity = self._capacity()
        room = capacity - self._outstanding
        threshold = max(1, min(self.batch_max, capacity) // 4)
        return min(room, self.batch_max) if room >= threshold else 0

    @property
    def outstanding(self) -> int:
        return self._outstanding

    def _forget(self, count: int) -> None:
        while count > 0 and self._requests:
            head = self._requests[0]
            used = min(count, int(head[0]))
            head[0] -= used
            count -= used
            self._outstanding -= used
            if head[0] <= 0:
                self._requests.popleft()

    def _reset(self) -> None:
        self._requests.clear()
        self._outstanding = 0

    async def _pull_loop(self) -> None:
        subject = f"$JS.API.CONSUMER.MSG.NEXT.{self.stream}.{self.durable}"
        expires_ns = int(self.expires_s * 1e9)
        heartbeat_ns = int(self.heartbeat_s * 1e9)
        while True:
            now = time.monotonic()
            # Requests the server forgot (reconnect, leader change) are written off.
            while self._requests and self._requests[0][1] + 2 * self.heartbeat_s < now:
                stale = self._requests.popleft()
                self._outstanding -= int(stale[0])
            if self._outstanding > 0 and now - self._last_activity > 3 * self.heartbeat_s:
                self._reset()
            batch = self._wanted()
            if batch and self.nc.is_connected:
                request = {"batch": batch, "expires": expires_ns, "idle_heartbeat": heartbeat_ns}
                try:
                    await self.nc.publish(subject, json.dumps(request).encode(), reply=self._inbox)
                except Exception as exc:
                    log.warning("pull request failed", extra={"error": repr(exc)})
                else:
                    if not self._requests:
                        self._last_activity = now
                    self._requests.append([float(batch), now + self.expires_s])
                    self._outstanding += batch
                    continue
            self._wakeup.clear()
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation
            # that races with the wakeup, and stop() would wait for ever
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.heartbeat_s):
                    await self._wakeup.wait()

    async def _receive(self, msg: Msg) -> None:
        self._last_activity = time.monotonic()
        headers = msg.headers
        if headers and not msg.data:
            status = headers.get("Status")
            if status == _HEARTBEAT:
                return
            if status in _END_STATUSES:
                # the request ended (expired, no messages, or limits): its unused credit
                pending = headers.get("Nats-Pending-Messages")
                self._forget(int(pending) if pending else 0)
                if status == "409" and "Consumer Deleted" in headers.get("Description", ""):
                    log.warning("consumer deleted", extra={"consumer": self.durable})
                self._wakeup.set()
                return
            if status is not None:
                return
        self._forget(1)
        try:
            self._on_message(msg)
        except Exception:
            log.exception("message handler failed; the message will be redelivered")

"""Slots shared fairly between webhook destinations (the dispatcher's process-wide
``webhook_concurrency``)."""

from __future__ import annotations

import asyncio
from collections import OrderedDict, deque


class FairSlots:
    """``limit`` slots shared by destinations, handed out round-robin: when a slot frees
    up, the next destination in turn that waits gets it (one waiter each turn), so a
    destination with a thousand waiting deliveries does not starve one with a single."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.free = limit
        self._waiting: OrderedDict[str, deque[asyncio.Future[None]]] = OrderedDict()

    @property
    def in_use(self) -> int:
        return self.limit - self.free

    async def acquire(self, key: str) -> None:
        if self.free > 0 and not self._waiting:
            self.free -= 1
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(key, deque()).append(future)
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release()  # granted while being cancelled: pass it on
            else:
                queue = self._waiting.get(key)
                if queue is not None and future in queue:
                    queue.remove(future)
                    if not queue:
                        del self._waiting[key]
            raise

    def release(self) -> None:
        while self._waiting:
            key, queue = next(iter(self._waiting.items()))
            future = queue.popleft()
            if queue:
                self._waiting.move_to_end(key)  # its next waiter comes after the others
            else:
                del self._waiting[key]
            if not future.done():
                future.set_result(None)
                return
        self.free += 1

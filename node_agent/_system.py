"""Process facts the agent reports: RSS, open fds, memory limit, event-loop lag."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import psutil

_process = psutil.Process()


def rss_bytes() -> int:
    return int(_process.memory_info().rss)


def open_fds() -> int:
    return int(_process.num_fds())


def memory_limit_bytes() -> int:
    """The cgroup v2 memory limit when one is set (systemd MemoryMax), else machine RAM."""
    total = int(psutil.virtual_memory().total)
    try:
        cgroup = Path("/proc/self/cgroup").read_text().strip().split("::", 1)[-1]
        raw = Path("/sys/fs/cgroup", cgroup.lstrip("/"), "memory.max").read_text().strip()
    except (OSError, IndexError):
        return total
    return total if raw == "max" else min(total, int(raw))


class LoopLagMonitor:
    """Measures how late the event loop wakes a sleeper: the latency every task suffers."""

    def __init__(self, interval_s: float = 0.5) -> None:
        self.interval_s = interval_s
        self.last_ms = 0.0
        self.max_ms = 0.0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="loop-lag")

    async def _run(self) -> None:
        while True:
            started = time.perf_counter()
            await asyncio.sleep(self.interval_s)
            lag = max(0.0, (time.perf_counter() - started - self.interval_s) * 1000)
            self.last_ms = lag
            self.max_ms = max(self.max_ms, lag)

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

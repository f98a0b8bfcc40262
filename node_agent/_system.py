"""Process facts the agent reports: RSS, open fds, memory limit, event-loop lag."""

from __future__ import annotations

import asyncio
import time
from collections import deque
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
    """Measures how late the event loop wakes a sleeper: the latency every task suffers.

    ``recent_ms`` is the worst lag of the last ``window_s`` seconds (what heartbeats
    report), ``max_ms`` the worst since start, ``last_ms`` the latest sample."""

    def __init__(self, interval_s: float = 0.25, window_s: float = 5.0) -> None:
        self.interval_s = interval_s
        self.window_s = window_s
        self.last_ms = 0.0
        self.max_ms = 0.0
        self._samples: deque[tuple[float, float]] = deque()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="loop-lag")

    async def _run(self) -> None:
        while True:
            started = time.perf_counter()
            await asyncio.sleep(self.interval_s)
            now = time.perf_counter()
            lag = max(0.0, (now - started - self.interval_s) * 1000)
            self.last_ms = lag
            self.max_ms = max(self.max_ms, lag)
            self._samples.append((now, lag))
            while self._samples and self._samples[0][0] < now - self.window_s:
                self._samples.popleft()

    @property
    def recent_ms(self) -> float:
        return max((lag for _, lag in self._samples), default=self.last_ms)

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

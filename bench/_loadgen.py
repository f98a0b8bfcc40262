"""A small HTTP/1.1 keep-alive load generator: the fallback of `bench api` where wrk is
not available. Closed loop (each connection sends its next request when the previous
answer arrived, after an optional delay), like wrk; latency excludes the delay."""

from __future__ import annotations

import asyncio
import time
from urllib.parse import urlparse


async def _connection(
    host: str,
    port: int,
    requests: list[bytes],
    offset: int,
    stop_at: float,
    delay_s: float,
    latencies: list[float],
    errors: list[int],
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    index = offset
    try:
        while time.monotonic() < stop_at:
            request = requests[index % len(requests)]
            index += 1
            started = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            if length:
                await reader.readexactly(length)
            latencies.append(time.perf_counter() - started)
            if not 200 <= status < 300:
                errors[0] += 1
            if delay_s:
                await asyncio.sleep(delay_s)
    finally:
        writer.close()


def run(
    url: str,
    method: str,
    paths: list[str],
    headers: dict[str, str],
    body: str,
    concurrency: int,
    duration_s: float,
    delay_ms: float = 0.0,
) -> tuple[float, float, float, int]:
    """(requests/s, p50 ms, p99 ms, errors)."""
    parsed = urlparse(url)
    payload = body.encode()
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    requests = [
        (
            f"{method} {path} HTTP/1.1\r\nHost: {parsed.netloc}\r\n{head}"
            f"Content-Length: {len(payload)}\r\n\r\n"
        ).encode()
        + payload
        for path in paths
    ]
    latencies: list[float] = []
    errors = [0]

    async def main() -> float:
        started = time.monotonic()
        stop_at = started + duration_s
        await asyncio.gather(
            *(
                _connection(
                    parsed.hostname or "127.0.0.1",
                    parsed.port or 80,
                    requests,
                    i,
                    stop_at,
                    delay_ms / 1000,
                    latencies,
                    errors,
                )
                for i in range(concurrency)
            )
        )
        return time.monotonic() - started

    try:
        import uvloop

        elapsed = uvloop.run(main())
    except ImportError:
        elapsed = asyncio.run(main())
    latencies.sort()
    if not latencies:
        return 0.0, float("nan"), float("nan"), errors[0]
    p50 = latencies[len(latencies) // 2] * 1000
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000
    return len(latencies) / elapsed, p50, p99, errors[0]

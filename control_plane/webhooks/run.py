"""`zapfleet webhooks`: the dispatcher as its own process, for scale.

Any number of these (and the dispatchers inside control-plane workers) share the durable
consumer; stopping one hands its unfinished events back to the others. It needs NATS
only (no Valkey, no HTTP framework), so it starts fast."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

from prometheus_client import start_http_server

from control_plane.settings import ControlPlaneSettings
from control_plane.webhooks.dispatcher import Dispatcher
from zapfleet import natsjs
from zapfleet.natsjs import ensure_jetstream

log = logging.getLogger(__name__)


async def run_dispatcher(settings: ControlPlaneSettings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if settings.webhooks_metrics_port:
        start_http_server(settings.webhooks_metrics_port, addr=settings.http_host)
    nc = await natsjs.connect(settings.nats_servers, "zapfleet-webhooks")
    try:
        js = nc.jetstream()
        await ensure_jetstream(
            js,
            events_max_age_s=settings.events_max_age_s,
            node_ttl_s=settings.node_ttl_s,
            events_max_bytes=settings.events_max_bytes,
            events_dedupe_window_s=settings.events_dedupe_window_s,
            replicas=settings.replicas,
        )
        dispatcher = Dispatcher(nc, js, settings)
        await dispatcher.start()
        await stop.wait()
        log.info("stopping: unfinished deliveries go back to the stream")
        await dispatcher.stop()
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(nc.drain(), 3)
        if not nc.is_closed:
            await nc.close()

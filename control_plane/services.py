"""The connections a control-plane worker holds, created once per process at start."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import nats
import valkey.asyncio as valkey
from litestar.datastructures import State
from nats.aio.client import Client as NATS
from nats.js.client import JetStreamContext

from control_plane.agents import AgentClient
from control_plane.settings import ControlPlaneSettings
from control_plane.store import NodeDirectory, SessionStore
from control_plane.webhooks.config import WebhookStore
from node_agent.protocol import NODES_BUCKET, SESSIONS_BUCKET, WEBHOOKS_BUCKET, ensure_jetstream


@dataclass(slots=True)
class Services:
    settings: ControlPlaneSettings
    nc: NATS
    js: JetStreamContext
    sessions: SessionStore
    nodes: NodeDirectory
    agents: AgentClient
    valkey: valkey.Valkey
    webhooks: WebhookStore


@contextlib.asynccontextmanager
async def open_services(settings: ControlPlaneSettings) -> AsyncIterator[Services]:
    nc = await nats.connect(
        servers=settings.nats_servers,
        name="zapfleet-control-plane",
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
    )
    js = nc.jetstream()
    await ensure_jetstream(
        js,
        events_max_age_s=settings.events_max_age_s,
        node_ttl_s=settings.node_ttl_s,
        events_max_bytes=settings.events_max_bytes,
        events_dedupe_window_s=settings.events_dedupe_window_s,
    )
    cache = valkey.Valkey.from_url(settings.valkey_url)
    try:
        yield Services(
            settings=settings,
            nc=nc,
            js=js,
            sessions=SessionStore(await js.key_value(SESSIONS_BUCKET)),
            nodes=NodeDirectory(await js.key_value(NODES_BUCKET)),
            agents=AgentClient(nc, settings.rpc_timeout_s),
            valkey=cache,
            webhooks=WebhookStore(await js.key_value(WEBHOOKS_BUCKET)),
        )
    finally:
        # bounded: on shutdown NATS or Valkey may already be gone
        with contextlib.suppress(Exception):
            await asyncio.wait_for(cache.aclose(), 2)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(nc.drain(), 3)
        if not nc.is_closed:
            await nc.close()


def get_services(state: State) -> Services:
    services: Services = state.services
    return services

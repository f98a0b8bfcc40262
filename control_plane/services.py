"""The connections a control-plane worker holds, created once per process at start."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import valkey.asyncio as valkey
from litestar.datastructures import State
from nats.aio.client import Client as NATS
from nats.js.client import JetStreamContext
from valkey.asyncio.retry import Retry
from valkey.backoff import NoBackoff
from valkey.exceptions import ConnectionError as ValkeyConnectionError

from contract.protocol import (
    NODES_BUCKET,
    SESSION_NAMES_BUCKET,
    SESSION_STATE_BUCKET,
    SESSIONS_BUCKET,
    TENANTS_BUCKET,
    WEBHOOKS_BUCKET,
)
from control_plane.agents import AgentClient
from control_plane.caches import ApiCache
from control_plane.fleet import Fleet
from control_plane.idempotency import Idempotency
from control_plane.keyring import Authenticator
from control_plane.live_state import LiveStates
from control_plane.ratelimit import RateLimiter
from control_plane.resp import HotClient, hot_client
from control_plane.session_index import SessionIndex
from control_plane.settings import ControlPlaneSettings
from control_plane.store import NodeDirectory, SessionStore
from control_plane.tenants import TenantStore
from control_plane.valkey_guard import ValkeyGuard
from control_plane.webhooks.config import WebhookStore
from zapfleet import natsjs
from zapfleet.natsjs import ensure_jetstream


@dataclass(slots=True)
class Services:
    settings: ControlPlaneSettings
    nc: NATS
    js: JetStreamContext
    sessions: SessionStore
    nodes: NodeDirectory
    agents: AgentClient
    valkey: valkey.Valkey
    hot: HotClient  # pipelined client of the request hot path
    fleet: Fleet
    index: SessionIndex
    live: LiveStates  # last known live state per session (zf_session_state)
    tenants: TenantStore
    auth: Authenticator
    limiter: RateLimiter
    cache: ApiCache
    idempotency: Idempotency
    webhooks: WebhookStore
    valkey_guard: ValkeyGuard


@contextlib.asynccontextmanager
async def open_services(settings: ControlPlaneSettings) -> AsyncIterator[Services]:
    nc = await natsjs.connect(settings.nats_servers, "zapfleet-control-plane")
    js = nc.jetstream()
    await ensure_jetstream(
        js,
        events_max_age_s=settings.events_max_age_s,
        node_ttl_s=settings.node_ttl_s,
        events_max_bytes=settings.events_max_bytes,
        events_dedupe_window_s=settings.events_dedupe_window_s,
        replicas=settings.replicas,
    )
    cache = valkey_client(settings)
    hot = hot_client(settings.valkey_url, cache)
    guard = ValkeyGuard(settings.valkey_probe_interval_s)
    api_cache = ApiCache(cache, settings, hot, guard)
    # invalidations missed during an outage: forget what may be stale once it is over
    guard.on_recovery(api_cache.drop_volatile)
    sessions = SessionStore(
        await js.key_value(SESSIONS_BUCKET), await js.key_value(SESSION_NAMES_BUCKET)
    )
    await sessions.migrate_names()  # records older than uids get their name entry
    agents = AgentClient(nc, settings.rpc_timeout_s)
    fleet = Fleet(settings=settings, nc=nc, js=js, sessions=sessions, agents=agents)
    await fleet.start()
    tenants = TenantStore(await js.key_value(TENANTS_BUCKET))
    index = SessionIndex(sessions)
    auth = Authenticator(tenants, settings.admin_key, settings.auth_cache_ttl_s)
    fleet.on_written = index.note
    fleet.known_records = index.snapshot
    live = LiveStates(await js.key_value(SESSION_STATE_BUCKET))
    seeding: asyncio.Task[int] | None = None
    try:
        await index.start()
        await live.start()
        seeding = asyncio.create_task(live.seed(fleet), name="live-state-seed")
        await auth.start()
        yield Services(
            settings=settings,
            nc=nc,
            js=js,
            sessions=sessions,
            nodes=NodeDirectory(await js.key_value(NODES_BUCKET)),
            agents=agents,
            valkey=cache,
            hot=hot,
            index=index,
            live=live,
            tenants=tenants,
            auth=auth,
            limiter=RateLimiter(hot, settings, guard),
            cache=api_cache,
            idempotency=Idempotency(hot, settings, guard),
            valkey_guard=guard,
            fleet=fleet,
            webhooks=WebhookStore(await js.key_value(WEBHOOKS_BUCKET)),
        )
    finally:
        await guard.close()
        await fleet.stop()
        await auth.stop()
        if seeding is not None:
            seeding.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await seeding
        await index.stop()
        await live.stop()
        # bounded: on shutdown NATS or Valkey may already be gone
        with contextlib.suppress(Exception):
            await asyncio.wait_for(hot.close(), 2)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(cache.aclose(), 2)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(nc.drain(), 3)
        if not nc.is_closed:
            await nc.close()


def valkey_client(settings: ControlPlaneSettings) -> valkey.Valkey:
    """Short timeouts (a request never waits long on Valkey: see valkey_guard), and one
    retry on a connection error, so a pooled connection that a Valkey restart closed is
    replaced transparently."""
    client: valkey.Valkey = valkey.Valkey.from_url(
        settings.valkey_url,
        socket_timeout=settings.valkey_timeout_s,
        socket_connect_timeout=settings.valkey_timeout_s,
        retry=Retry(NoBackoff(), 1),
        retry_on_error=[ValkeyConnectionError],
    )
    return client


def get_services(state: State) -> Services:
    services: Services = state.services
    return services

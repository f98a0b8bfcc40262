"""NATS for every zapfleet process: the URL list, the connection, and the one place where
streams, KV buckets and object stores are created with their replica count.

``ZAPFLEET_NATS_URL`` is a comma-separated list of servers of one cluster; every process
connects to one of them and reconnects to any other (the servers also gossip the rest of
the cluster to clients). ``ZAPFLEET_NATS_REPLICAS`` is the replica count of every stream,
bucket and object store; 0 (the default) means 3 when the URL list names three servers or
more, else 1. Assets that exist with fewer replicas are raised to the setting at start
(JetStream copies the data to the new peers while the asset stays in use); assets with
more replicas are left as they are, so processes with different settings never fight
(docs/provisioning.md, "Replicated state").
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

import nats
from nats.aio.client import Client as NATS
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import (
    KeyValueConfig,
    ObjectStoreConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.client import JetStreamContext
from nats.js.errors import APIError, BadRequestError, NotFoundError, ServiceUnavailableError
from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore

from contract.protocol import (
    DLQ_STREAM,
    DLQ_SUBJECTS,
    EVENTS_STREAM,
    EVENTS_SUBJECTS,
    NODES_BUCKET,
    REDRIVE_STREAM,
    REDRIVE_SUBJECTS,
    SESSION_NAMES_BUCKET,
    SESSION_STATE_BUCKET,
    SESSIONS_BUCKET,
    TENANTS_BUCKET,
    WEBHOOKS_BUCKET,
)
from zapfleet._env import SettingsError

log = logging.getLogger(__name__)
T = TypeVar("T")

SCHEMES = ("nats", "tls", "ws", "wss")
MAX_REPLICAS = 5  # JetStream's limit
# a JetStream that does not answer (leader election after a server died, a cluster
# still forming) is waited for this long at start before the process gives up
STARTUP_WAIT_S = 30.0
# JetStream errors that mean "not enough servers for this many replicas"
NOT_ENOUGH_SERVERS = {10074, 10023}  # non-clustered mode; insufficient resources


def parse_nats_urls(raw: str, variable: str = "ZAPFLEET_NATS_URL") -> list[str]:
    """The servers of a comma-separated URL list, or one SettingsError saying what is wrong
    with which entry."""
    urls = [part.strip() for part in raw.split(",") if part.strip()]
    what = variable if variable.startswith("-") else f"setting {variable}"
    if not urls:
        raise SettingsError(
            f"invalid {what}: empty; expected nats://host:port[,nats://host:port...]"
        )
    seen: set[tuple[str, int]] = set()
    for url in urls:
        parsed = urlsplit(url if "://" in url else f"nats://{url}")
        try:
            port = parsed.port or 4222
        except ValueError:
            port = -1
        if parsed.scheme not in SCHEMES or not parsed.hostname or port < 1:
            raise SettingsError(
                f"invalid {what}: {url!r} is not a NATS URL "
                f"(expected {'|'.join(SCHEMES)}://host:port, comma-separated)"
            )
        where = (parsed.hostname, port)
        if where in seen:
            raise SettingsError(f"invalid {what}: {url!r} is listed twice")
        seen.add(where)
    websocket = {urlsplit(u).scheme in ("ws", "wss") for u in urls if "://" in u}
    if len(websocket) > 1:
        raise SettingsError(f"invalid {what}: websocket and non-websocket URLs cannot be mixed")
    return urls


def replicas_for(urls: list[str], setting: int) -> int:
    """The replica count of every asset: the setting, or 3 for a list of >= 3 servers."""
    if setting:
        return setting
    return 3 if len(urls) >= 3 else 1


def check_replicas(setting: int, variable: str = "ZAPFLEET_NATS_REPLICAS") -> None:
    if not 0 <= setting <= MAX_REPLICAS:
        raise SettingsError(
            f"invalid setting {variable}: {setting} (0 = automatic, or 1 to {MAX_REPLICAS})"
        )


async def connect(servers: list[str], name: str, **options: Any) -> NATS:
    """A connection that reconnects forever, to any server of the list (or of the
    cluster, as the servers announce it), and logs where it went."""

    async def disconnected() -> None:
        if not nc.is_closed and not nc.is_draining:
            log.warning("NATS disconnected; reconnecting to any server of the cluster")

    async def reconnected() -> None:
        log.warning("NATS reconnected to %s", getattr(nc.connected_url, "netloc", "?"))

    async def error(exc: Exception) -> None:
        log.debug("NATS connection error: %r", exc)

    settings: dict[str, Any] = {
        "servers": servers,
        "name": name,
        "max_reconnect_attempts": -1,
        "reconnect_time_wait": 0.5,
        "disconnected_cb": disconnected,
        "reconnected_cb": reconnected,
        "error_cb": error,
        **options,
    }
    nc = await nats.connect(**settings)
    return nc


async def _patiently(what: str, call: Callable[[], Awaitable[T]]) -> T:
    """``call()``, tried again while JetStream cannot answer (an election in progress)."""
    deadline = time.monotonic() + STARTUP_WAIT_S
    while True:
        try:
            return await call()
        except (NatsTimeoutError, NoRespondersError, ServiceUnavailableError) as exc:
            if isinstance(exc, APIError) and exc.err_code in NOT_ENOUGH_SERVERS:
                raise
            if time.monotonic() > deadline:
                raise
            log.warning("JetStream does not answer (%s: %r); trying again", what, exc)
            await asyncio.sleep(0.5)


def _insufficient(exc: APIError, what: str, replicas: int) -> Exception:
    if exc.err_code not in NOT_ENOUGH_SERVERS:
        return exc
    return RuntimeError(
        f"cannot create {what} with {replicas} replicas: {exc.description} "
        f"(the NATS cluster needs {replicas} JetStream servers up; set ZAPFLEET_NATS_REPLICAS "
        "to what the cluster has, 1 for a single server)"
    )


async def raise_replicas(js: JetStreamContext, stream: str, replicas: int) -> bool:
    """Bring an existing stream up to ``replicas``; never lower it. True if changed."""
    info = await _patiently(stream, lambda: js.stream_info(stream))
    current = info.config.num_replicas or 1
    if current >= replicas:
        return False
    config = info.config
    config.num_replicas = replicas
    try:
        await _patiently(stream, lambda: js.update_stream(config))
    except APIError as exc:
        raise _insufficient(exc, stream, replicas) from None
    log.warning("stream %s: replicas %d -> %d", stream, current, replicas)
    return True


async def ensure_stream(js: JetStreamContext, config: StreamConfig, replicas: int) -> None:
    """Create ``config``'s stream or bring its settings up to date (replicas: never down)."""
    name = str(config.name)
    config.num_replicas = replicas
    try:
        await _patiently(name, lambda: js.add_stream(config))
        return
    except BadRequestError:
        pass  # exists with another configuration
    except APIError as exc:
        raise _insufficient(exc, name, replicas) from None
    info = await _patiently(name, lambda: js.stream_info(name))
    current = info.config.num_replicas or 1
    config.num_replicas = max(replicas, current)
    try:
        await _patiently(name, lambda: js.update_stream(config))
    except APIError as exc:
        raise _insufficient(exc, name, config.num_replicas) from None
    if config.num_replicas != current:
        log.warning("stream %s: replicas %d -> %d", name, current, config.num_replicas)


async def key_value(js: JetStreamContext, config: KeyValueConfig, replicas: int) -> KeyValue:
    """The bucket of ``config``: created with ``replicas`` if missing; if it exists (with
    any other configuration, e.g. another TTL), used as it is, with at least ``replicas``."""
    config.replicas = replicas
    try:
        return await _patiently(str(config.bucket), lambda: js.create_key_value(config))
    except BadRequestError:
        pass
    except APIError as exc:
        raise _insufficient(exc, f"KV bucket {config.bucket}", replicas) from None
    await raise_replicas(js, f"KV_{config.bucket}", replicas)
    return await _patiently(str(config.bucket), lambda: js.key_value(str(config.bucket)))


async def object_store(
    js: JetStreamContext, bucket: str, replicas: int, config: ObjectStoreConfig | None = None
) -> ObjectStore:
    """The object store ``bucket``, like :func:`key_value`."""
    try:
        store = await _patiently(bucket, lambda: js.object_store(bucket))
    except NotFoundError:
        wanted = config or ObjectStoreConfig()
        wanted.replicas = replicas
        try:
            return await _patiently(bucket, lambda: js.create_object_store(bucket, config=wanted))
        except BadRequestError:  # created meanwhile by another process
            store = await _patiently(bucket, lambda: js.object_store(bucket))
        except APIError as exc:
            raise _insufficient(exc, f"object store {bucket}", replicas) from None
    await raise_replicas(js, f"OBJ_{bucket}", replicas)
    return store


async def ensure_jetstream(
    js: Any,
    *,
    events_max_age_s: float,
    node_ttl_s: float,
    events_max_bytes: int = -1,
    events_dedupe_window_s: float = 120.0,
    replicas: int = 1,
) -> None:
    """Create the streams and buckets of DESIGN §2 if missing, or bring their settings up
    to date. Idempotent; both processes call it at start so either may come up first.
    ``replicas``: ``ZAPFLEET_NATS_REPLICAS`` (zapfleet/natsjs.py: raised, never lowered).

    ``ZF_EVENTS`` keeps events by age and by size (oldest dropped first) and deduplicates
    on ``Nats-Msg-Id`` within the window; direct gets serve the paged replay of
    ``GET /v1/events`` without creating consumers."""
    streams = (
        StreamConfig(
            name=EVENTS_STREAM,
            subjects=[EVENTS_SUBJECTS],
            max_age=events_max_age_s,
            max_bytes=events_max_bytes,
            duplicate_window=events_dedupe_window_s,
            storage=StorageType.FILE,
            allow_direct=True,
        ),
        StreamConfig(
            name=DLQ_STREAM,
            subjects=[DLQ_SUBJECTS],
            max_age=30 * 86400.0,
            duplicate_window=120.0,
            storage=StorageType.FILE,
            allow_direct=True,
        ),
        StreamConfig(
            name=REDRIVE_STREAM,
            subjects=[REDRIVE_SUBJECTS],
            retention=RetentionPolicy.WORK_QUEUE,
            max_age=30 * 86400.0,
            duplicate_window=120.0,
            storage=StorageType.FILE,
        ),
    )
    for config in streams:
        await ensure_stream(js, config, replicas)
    buckets = (
        KeyValueConfig(bucket=NODES_BUCKET, ttl=node_ttl_s, history=1),
        KeyValueConfig(bucket=SESSIONS_BUCKET, history=5),
        KeyValueConfig(bucket=TENANTS_BUCKET, history=5),
        KeyValueConfig(bucket=WEBHOOKS_BUCKET, history=5),
        KeyValueConfig(bucket=SESSION_NAMES_BUCKET, history=1),
        KeyValueConfig(bucket=SESSION_STATE_BUCKET, history=1),
    )
    for bucket in buckets:
        # one that exists with another config (e.g. agents and control plane configured
        # with different TTLs) is used as it is rather than fail at start
        await key_value(js, bucket, replicas)

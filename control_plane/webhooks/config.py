"""Where each event goes: webhook configuration at three levels, most specific first.

1. **session** — ``webhook_url`` / ``webhook_events`` / ``webhook_secret`` of the session
   record (KV ``zf_sessions``, set through the sessions API);
2. **tenant** — one config per tenant in KV ``zf_webhooks`` key ``tenant.<tenant>``
   (``PUT /v1/webhooks/config``): URL(s), event filter, secret, enabled;
3. **global** — KV ``zf_webhooks`` key ``global`` (``PUT /v1/webhooks/global``, admin),
   else the settings ``ZAPFLEET_WEBHOOK_URL`` / ``_SECRET`` / ``_EVENTS``.

The first level that names a URL decides the destinations and the event filter; a tenant
config with ``enabled: false`` stops tenant and global delivery for that tenant. The
secret comes from the same level, else from the tenant config, else from the global one.

The dispatcher never reads KV per event: :class:`WebhookRegistry` keeps every level in
memory and follows both buckets with :class:`zapfleet._mirror.KVMirror`s, so a change
applies to the next event without a restart (and without touching the session, so no
re-pairing). In a control-plane worker the ``zf_sessions`` mirror is the process's one,
shared with the session index; a standalone dispatcher has its own.

A session webhook may be in **Evolution API format** (``webhook_format: "evolution"``, set
by the Evolution facade's ``webhook/set``: docs/evolution-webhooks.md): its event filter
then names Evolution events (:class:`control_plane.evolution.events.EvolutionFilter`), and
its :class:`Target` carries the format, ``by_events`` (the dispatcher appends the event's
path to the URL), ``base64`` and the extra headers; the dispatcher renders the body.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
from dataclasses import dataclass
from typing import Literal

import msgspec
from nats.js.client import JetStreamContext
from nats.js.errors import InvalidKeyError, KeyNotFoundError
from nats.js.kv import KeyValue

from contract.protocol import (
    SESSION_NAMES_BUCKET,
    SESSIONS_BUCKET,
    WEBHOOKS_BUCKET,
    EventType,
    SessionRecord,
    name_key,
    name_target,
)
from control_plane.evolution.events import EVOLUTION_EVENT, EvolutionFilter, url_suffix
from control_plane.settings import ControlPlaneSettings
from control_plane.webhooks.signing import LEGACY
from zapfleet._mirror import Change, KVMirror

log = logging.getLogger(__name__)

GLOBAL_KEY = "global"
EVENT_TYPES = frozenset(t.value for t in EventType)
MAX_URLS = 10


class WebhookConfig(msgspec.Struct, kw_only=True):
    """A tenant's (or the global) webhook configuration as stored in KV ``zf_webhooks``."""

    urls: list[str]
    events: list[str] | None = None
    secret: str | None = None
    enabled: bool = True
    updated_at: float = 0.0
    # None: stored before signature schemes existed, so the old scheme (docs/webhooks.md)
    scheme: str | None = None
    previous_secret: str | None = None  # still signs (second signature) until ...
    previous_secret_until: float = 0.0

    @property
    def signing_scheme(self) -> str:
        return self.scheme or LEGACY


def tenant_key(tenant: str) -> str:
    return f"tenant.{tenant}"


def validate_event_patterns(patterns: list[str] | None) -> list[str] | None:
    """Event filter entries: an event type (``message.received``), a family
    (``message.*``) or ``*``. Raises ValueError naming the first bad entry."""
    if patterns is None:
        return None
    families = {t.split(".", 1)[0] for t in EVENT_TYPES}
    for pattern in patterns:
        if pattern == "*" or pattern in EVENT_TYPES:
            continue
        family, _, rest = pattern.partition(".")
        if rest == "*" and family in families:
            continue
        known = ", ".join(sorted(EVENT_TYPES))
        raise ValueError(
            f"unknown event type {pattern!r}: use one of {known}, a family like 'message.*', or '*'"
        )
    return patterns


class EventFilter:
    """Matches event types against exact names and ``family.*`` patterns."""

    __slots__ = ("_everything", "_exact", "_families")

    def __init__(self, patterns: list[str] | None) -> None:
        self._everything = not patterns or "*" in patterns
        self._exact = frozenset(p for p in patterns or () if not p.endswith(".*"))
        self._families = frozenset(p[:-2] for p in patterns or () if p.endswith(".*"))

    def __call__(self, event_type: str) -> bool:
        if self._everything or event_type in self._exact:
            return True
        return bool(self._families) and event_type.split(".", 1)[0] in self._families


class Unknown:
    """A session the registry has not seen (yet)."""


UNKNOWN = Unknown()


@dataclass(frozen=True, slots=True)
class Target:
    """The destinations of one event."""

    urls: tuple[str, ...]
    secret: str | None
    level: Literal["session", "tenant", "global"]
    scheme: str = LEGACY
    previous_secret: str | None = None  # set only while it still signs
    # Evolution API format (session level only): the body is rendered per delivery
    format: Literal["zapfleet", "evolution"] = "zapfleet"
    by_events: bool = False  # evolution: urls already end in the event's path
    base64: bool = False  # evolution: inbound media carry message.base64
    headers: tuple[tuple[str, str], ...] = ()  # evolution: extra request headers
    destination: str = ""  # evolution: the configured URL (the body's "destination")

    @property
    def evolution(self) -> bool:
        return self.format == "evolution"

    @property
    def secrets(self) -> tuple[str, ...]:
        """The secrets that sign a delivery: the current one, and the replaced one during
        its grace period."""
        if not self.secret:
            return ()
        if self.previous_secret and not hmac.compare_digest(self.previous_secret, self.secret):
            return (self.secret, self.previous_secret)
        return (self.secret,)


@dataclass(frozen=True, slots=True)
class _Evolution:
    """A session webhook in Evolution API format."""

    by_events: bool
    base64: bool
    headers: tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class _Level:
    urls: tuple[str, ...]
    secret: str | None
    accepts: EventFilter | EvolutionFilter
    enabled: bool = True
    scheme: str = LEGACY
    previous_secret: str | None = None
    previous_secret_until: float = 0.0
    evolution: _Evolution | None = None

    @classmethod
    def of(cls, config: WebhookConfig) -> _Level:
        return cls(
            tuple(config.urls),
            config.secret,
            EventFilter(config.events),
            config.enabled,
            config.signing_scheme,
            config.previous_secret,
            config.previous_secret_until,
        )

    def previous(self, secret: str | None) -> str | None:
        """The replaced secret while it still signs, when ``secret`` is this level's."""
        if (
            secret is None
            or self.secret is None
            or not hmac.compare_digest(secret, self.secret)
            or not self.previous_secret
        ):
            return None
        return self.previous_secret if time.time() < self.previous_secret_until else None


@dataclass(frozen=True, slots=True)
class _SessionHook:
    tenant: str
    level: _Level | None  # None: the session has no webhook of its own


_config_decoder = msgspec.json.Decoder(WebhookConfig)
_record_decoder = msgspec.json.Decoder(SessionRecord)


def _session_hook(record: SessionRecord) -> _SessionHook:
    level = None
    if record.webhook_format == "evolution":
        if record.webhook_url and record.webhook_enabled:
            level = _Level(
                (record.webhook_url,),
                record.webhook_secret,
                EvolutionFilter(record.webhook_events),
                scheme=record.webhook_scheme or LEGACY,
                evolution=_Evolution(
                    record.webhook_by_events,
                    record.webhook_base64,
                    tuple((record.webhook_headers or {}).items()),
                ),
            )
    elif record.webhook_url:
        level = _Level(
            (record.webhook_url,),
            record.webhook_secret,
            EventFilter(record.webhook_events),
            scheme=record.webhook_scheme or LEGACY,
        )
    return _SessionHook(record.spec.tenant, level)


class WebhookStore:
    """Tenant and global webhook configs in KV ``zf_webhooks`` (REST reads and writes)."""

    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv

    async def _get(self, key: str) -> WebhookConfig | None:
        try:
            entry = await self.kv.get(key)
        except KeyNotFoundError:
            return None
        return _config_decoder.decode(entry.value) if entry.value else None

    async def _put(self, key: str, config: WebhookConfig) -> None:
        config.updated_at = time.time()
        await self.kv.put(key, msgspec.json.encode(config))

    async def _delete(self, key: str) -> bool:
        if await self._get(key) is None:
            return False
        await self.kv.delete(key)
        return True

    async def get_tenant(self, tenant: str) -> WebhookConfig | None:
        return await self._get(tenant_key(tenant))

    async def put_tenant(self, tenant: str, config: WebhookConfig) -> None:
        await self._put(tenant_key(tenant), config)

    async def delete_tenant(self, tenant: str) -> bool:
        return await self._delete(tenant_key(tenant))

    async def get_global(self) -> WebhookConfig | None:
        return await self._get(GLOBAL_KEY)

    async def put_global(self, config: WebhookConfig) -> None:
        await self._put(GLOBAL_KEY, config)

    async def delete_global(self) -> bool:
        return await self._delete(GLOBAL_KEY)


class WebhookRegistry:
    """In-memory view of every webhook config, kept current by KV watches."""

    def __init__(
        self,
        js: JetStreamContext,
        settings: ControlPlaneSettings,
        sessions: KVMirror | None = None,
    ) -> None:
        """``sessions``: the process's mirror of ``zf_sessions``, if it has one."""
        self.js = js
        self._settings_level: _Level | None = None
        if settings.webhook_urls:
            self._settings_level = _Level(
                tuple(settings.webhook_urls),
                settings.webhook_secret,
                EventFilter(settings.webhook_events),
                scheme=settings.webhook_scheme,
            )
        self._global: _Level | None = None
        self._tenants: dict[str, _Level] = {}
        # by name_key(tenant, session_id): events name sessions per tenant
        self._sessions: dict[str, _SessionHook | None] = {}
        self._names: dict[str, str] = {}  # internal key (zf_sessions key) -> name key
        self._keys: dict[str, str] = {}  # name key -> internal key (signed media URLs)
        self._reading: dict[str, asyncio.Future[_SessionHook | None]] = {}
        self._sessions_kv: KeyValue | None = None
        self._names_kv: KeyValue | None = None
        self._shared = sessions
        self._mirrors: list[KVMirror] = []  # the ones this registry started

    async def start(self, timeout_s: float = 30.0) -> None:
        """Load both buckets and follow them; returns once the initial state is in."""
        self._sessions_kv = await self.js.key_value(SESSIONS_BUCKET)
        self._names_kv = await self.js.key_value(SESSION_NAMES_BUCKET)
        configs = KVMirror(await self.js.key_value(WEBHOOKS_BUCKET), WEBHOOKS_BUCKET)
        sessions = self._shared or KVMirror(self._sessions_kv, SESSIONS_BUCKET)
        self._mirrors = [configs] if self._shared else [configs, sessions]
        loaded = [
            configs.follow(self._apply_config, on_loaded=self._configs_loaded),
            sessions.follow(self._apply_session, on_loaded=self._sessions_loaded),
        ]
        for mirror in self._mirrors:
            await mirror.start()
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in loaded)), timeout_s)

    async def stop(self) -> None:
        for mirror in self._mirrors:
            await mirror.stop()

    def _apply_config(self, change: Change) -> None:
        value = change.value
        level = _Level.of(_config_decoder.decode(value)) if value else None
        key = change.key
        if key == GLOBAL_KEY:
            self._global = level
        elif key.startswith("tenant."):
            tenant = key.removeprefix("tenant.")
            if level is None:
                self._tenants.pop(tenant, None)
            else:
                self._tenants[tenant] = level

    def _configs_loaded(self, keys: set[str], _revision: int) -> None:
        """After a (re)load: configs it did not deliver were deleted meanwhile."""
        if GLOBAL_KEY not in keys:
            self._global = None
        for tenant in [t for t in self._tenants if tenant_key(t) not in keys]:
            del self._tenants[tenant]

    def _apply_session(self, change: Change) -> None:
        key, value = change.key, change.value
        if not value:
            name = self._names.pop(key, None)
            if name is not None:
                self._sessions[name] = None
                self._keys.pop(name, None)
            return
        record = _record_decoder.decode(value)
        name = name_key(record.spec.tenant, record.spec.session_id)
        self._names[key] = name
        self._keys[name] = key
        self._sessions[name] = _session_hook(record)

    def _sessions_loaded(self, keys: set[str], _revision: int) -> None:
        for key in [k for k in self._names if k not in keys]:
            self._sessions[self._names.pop(key)] = None

    async def _session(self, tenant: str, name: str) -> _SessionHook | None:
        session_id = name_key(tenant, name)
        try:
            return self._sessions[session_id]
        except KeyError:
            pass
        # Not seen by the watch yet (created a moment ago) or never existed: read once
        # (concurrent events of the session share the read), remember the answer; the
        # watch corrects it on the next change.
        pending = self._reading.get(session_id)
        if pending is None:
            pending = asyncio.ensure_future(self._read_session(tenant, name))
            self._reading[session_id] = pending
            pending.add_done_callback(lambda _: self._reading.pop(session_id, None))
        return await asyncio.shield(pending)

    async def _read_session(self, tenant: str, name: str) -> _SessionHook | None:
        hook = None
        assert self._sessions_kv is not None and self._names_kv is not None
        with contextlib.suppress(KeyNotFoundError, InvalidKeyError):
            named = await self._names_kv.get(name_key(tenant, name))
            entry = await self._sessions_kv.get(name_target(named.value)[0])
            if entry.value:
                record = _record_decoder.decode(entry.value)
                if (record.spec.tenant, record.spec.session_id) == (tenant, name):
                    hook = _session_hook(record)
                    self._keys.setdefault(name_key(tenant, name), record.spec.key)
        return self._sessions.setdefault(name_key(tenant, name), hook)

    def session_key(self, tenant: str, session_id: str) -> str | None:
        """The internal key of a session the registry has seen (signed media URLs)."""
        return self._keys.get(name_key(tenant, session_id))

    def lookup(self, tenant: str, session_id: str, event_type: str) -> Target | Unknown | None:
        """:meth:`target` from memory alone; UNKNOWN for a session not seen yet."""
        hook = self._sessions.get(name_key(tenant, session_id), UNKNOWN)
        if isinstance(hook, Unknown):
            return UNKNOWN
        return self._resolve(tenant, hook, event_type)

    async def target(self, tenant: str, session_id: str, event_type: str) -> Target | None:
        """The destinations of an event, or None when nobody wants it."""
        return self._resolve(tenant, await self._session(tenant, session_id), event_type)

    def _resolve(self, tenant: str, hook: _SessionHook | None, event_type: str) -> Target | None:
        tenant_level = self._tenants.get(tenant)
        global_level = self._global or self._settings_level
        fallbacks = [level for level in (tenant_level, global_level) if level and level.secret]

        def target(level: _Level, name: Literal["session", "tenant", "global"]) -> Target:
            # the secret comes from the level, else the tenant's, else the global one; the
            # scheme always from the level that names the URLs
            owner = level if level.secret or name == "global" else next(iter(fallbacks), None)
            secret = owner.secret if owner else None
            previous = owner.previous(secret) if owner else None
            evolution = level.evolution
            if evolution is None:
                return Target(level.urls, secret, name, level.scheme, previous)
            urls = level.urls
            if evolution.by_events:
                suffix = url_suffix(EVOLUTION_EVENT[EventType(event_type)])
                urls = tuple(f"{url.rstrip('/')}/{suffix}" for url in urls)
            return Target(
                urls,
                secret,
                name,
                level.scheme,
                previous,
                format="evolution",
                by_events=evolution.by_events,
                base64=evolution.base64,
                headers=evolution.headers,
                destination=level.urls[0],
            )

        if hook is not None and hook.level is not None:
            if not hook.level.accepts(event_type):
                return None
            return target(hook.level, "session")
        if tenant_level is not None:
            if not tenant_level.enabled or not tenant_level.urls:
                return None
            if not tenant_level.accepts(event_type):
                return None
            return target(tenant_level, "tenant")
        if global_level is not None and global_level.enabled and global_level.urls:
            if not global_level.accepts(event_type):
                return None
            return target(global_level, "global")
        return None

    @property
    def sessions_known(self) -> int:
        return len(self._sessions)

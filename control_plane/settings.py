"""Control plane settings: one typed object from ``ZAPFLEET_*`` environment variables.

| variable | default | meaning |
|---|---|---|
| ZAPFLEET_NATS_URL | nats://127.0.0.1:4222 | comma-separated NATS URLs (servers of one cluster) |
| ZAPFLEET_NATS_REPLICAS | 0 | replicas of all streams, buckets (0: 3 if >= 3 URLs, else 1) |
| ZAPFLEET_VALKEY_URL | valkey://127.0.0.1:6379/0 | Valkey (caches, rate limits, idempotency) |
| ZAPFLEET_VALKEY_TIMEOUT_S | 2 | Valkey connect and command timeout (then degraded mode) |
| ZAPFLEET_VALKEY_PROBE_INTERVAL_S | 1 | in degraded mode, Valkey is tried again after this long |
| ZAPFLEET_ADMIN_KEY | (required) | admin API key: manages tenants and keys |
| ZAPFLEET_HTTP_HOST / ZAPFLEET_HTTP_PORT | 127.0.0.1 / 8080 | listen address |
| ZAPFLEET_HTTP_WORKERS | 1 | granian worker processes |
| ZAPFLEET_DEFAULT_ENGINE | neonize | engine of sessions created without one |
| ZAPFLEET_EVENTS_MAX_AGE_S | 604800 | ZF_EVENTS keeps events 7 days (set alike on all processes) |
| ZAPFLEET_EVENTS_MAX_BYTES | 10 GiB | ... and at most this many bytes, oldest first (-1: none) |
| ZAPFLEET_EVENTS_DEDUPE_WINDOW_S | 120 | a re-published event id within this window is dropped |
| ZAPFLEET_WEBHOOK_URL | (none) | global webhook URL(s), comma-separated (KV config wins) |
| ZAPFLEET_WEBHOOK_SECRET | (none) | HMAC secret of the global webhook |
| ZAPFLEET_WEBHOOK_EVENTS | (all) | event types or `family.*` patterns the global webhook gets |
| ZAPFLEET_ALLOW_PRIVATE_TARGETS | false | webhooks + media may reach loopback/private (dev only) |
| ZAPFLEET_WEBHOOK_ALLOWED_NETWORKS | (none) | CIDRs allowed despite the SSRF guard |
| ZAPFLEET_WEBHOOKS_IN_PROCESS | true | run the webhook dispatcher inside the control plane |
| ZAPFLEET_WEBHOOK_TIMEOUT_S | 10 | timeout of one delivery (connect + response) |
| ZAPFLEET_WEBHOOK_MAX_ATTEMPTS | 10 | attempts before an event goes to ZF_DLQ (~4 min) |
| ZAPFLEET_WEBHOOK_BACKOFF_BASE_S / _MAX_S | 1 / 60 | retry delay: base·2^(attempt-1), capped |
| ZAPFLEET_WEBHOOK_CONCURRENCY | 25 | deliveries in flight per dispatcher process |
| ZAPFLEET_WEBHOOK_CONCURRENCY_PER_DESTINATION | 20 | ... and per destination (scheme, host, port) |
| ZAPFLEET_WEBHOOK_MAX_BUFFERED | 1000 | events one dispatcher holds (in flight + waiting) |
| ZAPFLEET_WEBHOOK_DESTINATION_WAIT_S | 5 | an event waiting longer for its destination goes back |
| ZAPFLEET_WEBHOOK_ACK_WAIT_S | 30 | an event a dead dispatcher held is redelivered after this |
| ZAPFLEET_WEBHOOK_MAX_ACK_PENDING | 100000 | events out, unfinished (all dispatchers, retries) |
| ZAPFLEET_WEBHOOKS_METRICS_PORT | 0 | Prometheus port of `zapfleet webhooks` (0 = off) |
| ZAPFLEET_WEBHOOK_SCHEME | standard | scheme of the settings' global webhook (or zapfleet-v1) |
| ZAPFLEET_WEBHOOK_SECRET_GRACE_S | 86400 | a replaced secret still signs this long (2 signatures) |
| ZAPFLEET_WEBHOOK_MAX_BACKLOG | 100000 | deliveries waiting per failing URL; more: dead letters |
| ZAPFLEET_WEBHOOK_BACKLOG_IN_FLIGHT | 20 | backlog deliveries in flight per URL (1: in order) |
| ZAPFLEET_WEBHOOK_BACKLOG_SCAN_S | 1 | how often a dispatcher looks for URLs with a backlog |
| ZAPFLEET_NATS_COMMANDS | true | serve `zf.api.<tenant>.<op>` request-reply commands |
| ZAPFLEET_RPC_TIMEOUT_S | 5 | NATS request timeout towards agents |
| ZAPFLEET_LEASE_TTL_S | 8 | node lease assumed for agents whose heartbeat does not state one |
| ZAPFLEET_LEASE_MARGIN_S | 2 | a node is down after its lease + this margin of silence |
| ZAPFLEET_RECONCILER | true | run a reconciler candidate (one acts at a time: KV lease) |
| ZAPFLEET_RECONCILE_INTERVAL_S | 0.5 | how often the active reconciler looks at the fleet |
| ZAPFLEET_LEADER_LEASE_S | 3 | reconciler leadership lease (whole seconds, >= 1) |
| ZAPFLEET_AUDIT_INTERVAL_S | 15 | full audit of assignments and slots (orphans, drift) |
| ZAPFLEET_MOVE_CONCURRENCY | 32 | sessions moved in parallel by failover, drain, rebalance |
| ZAPFLEET_UI_ENABLED | true | serve the operator web UI at /ui (docs/ui.md) |
| ZAPFLEET_CORS_ALLOW_ORIGINS | (none) | comma-separated browser origins allowed (none: denied) |
| ZAPFLEET_LOG_LEVEL / ZAPFLEET_LOG_FORMAT | INFO / json | logging |
| ZAPFLEET_MAX_BODY_BYTES | 1048576 | largest request body, except message sends |
| ZAPFLEET_MAX_MEDIA_BYTES | 16777216 | largest inline media (decoded) of a send |
| ZAPFLEET_PUBLIC_URL | http://<host>:<port> | base of links handed out (signed media URLs) |
| ZAPFLEET_MEDIA_URL_SECRET | (from admin key) | HMAC secret of signed media URLs |
| ZAPFLEET_MEDIA_URL_TTL_S | 3600 | signed media URLs in webhooks expire after this |
| ZAPFLEET_AUTH_CACHE_TTL_S | 10 | verified keys cached this long (revocation: KV watch, ≤ TTL) |
| ZAPFLEET_TRUSTED_PROXIES | (none) | comma-separated IPs/CIDRs whose X-Forwarded-For is believed |
| ZAPFLEET_RATE_LIMITS_ENABLED | true | GCRA rate limits in Valkey |
| ZAPFLEET_RATE_MESSAGES | 500/60 | sends per window (count/seconds) per key + IP |
| ZAPFLEET_RATE_SESSIONS | 100/300 | session operations (create, start, stop, ...) per window |
| ZAPFLEET_RATE_QUERIES | 1000/60 | reads (status, QR, history, lists, number checks) per window |
| ZAPFLEET_RATE_GLOBAL | 2000/900 | every /v1 request per window, on top of its class |
| ZAPFLEET_CACHE_PREFIX | zf: | prefix of every Valkey key the control plane writes |
| ZAPFLEET_CACHE_QR_TTL_S | 30 | QR code cache (and never past the code's expiry) |
| ZAPFLEET_CACHE_STATUS_TTL_S | 3600 | status cache: until the next status event, at most this |
| ZAPFLEET_CACHE_NUMBER_VALID_TTL_S / _INVALID_TTL_S | 14400 / 7200 | number check results |
| ZAPFLEET_CACHE_HISTORY_TTL_S | 60 | message history |
| ZAPFLEET_IDEMPOTENCY_TTL_S | 86400 | how long an Idempotency-Key is remembered |
| ZAPFLEET_METRICS_PUBLIC | true | serve /metrics without a key (for Prometheus scrapers) |
| ZAPFLEET_EVOLUTION | false | serve the Evolution API v2 compatibility facade (docs/evolution.md) |
| ZAPFLEET_EVOLUTION_PREFIX | (none) | path prefix of the facade ("": Evolution's own root paths) |
"""

from __future__ import annotations

import ipaddress
from typing import Literal

import msgspec

from zapfleet._env import SettingsError
from zapfleet.natsjs import check_replicas, parse_nats_urls, replicas_for


class ControlPlaneSettings(msgspec.Struct, kw_only=True):
    nats_url: str = "nats://127.0.0.1:4222"
    nats_replicas: int = 0  # 0: automatic (zapfleet/natsjs.py)
    valkey_url: str = "valkey://127.0.0.1:6379/0"
    valkey_timeout_s: float = 2.0
    valkey_probe_interval_s: float = 1.0
    admin_key: str = ""
    http_host: str = "127.0.0.1"
    http_port: int = 8080
    http_workers: int = 1
    default_engine: Literal["neonize", "sim"] = "neonize"
    rpc_timeout_s: float = 5.0
    events_max_age_s: float = 7 * 86400.0
    events_max_bytes: int = 10 * 1024**3
    events_dedupe_window_s: float = 120.0
    node_ttl_s: float = 10.0
    lease_ttl_s: float = 8.0
    lease_margin_s: float = 2.0
    reconciler: bool = True
    reconcile_interval_s: float = 0.5
    leader_lease_s: int = 3
    audit_interval_s: float = 15.0
    move_concurrency: int = 32
    max_body_bytes: int = 1024 * 1024
    max_media_bytes: int = 16 * 1024 * 1024
    public_url: str | None = None
    media_url_secret: str | None = None
    media_url_ttl_s: float = 3600.0
    webhook_url: str | None = None
    webhook_secret: str | None = None
    webhook_events: list[str] | None = None
    allow_private_targets: bool = False  # the agents' media read it too (zapfleet/ssrf.py)
    webhook_allowed_networks: list[str] = msgspec.field(default_factory=list)
    webhooks_in_process: bool = True
    webhook_timeout_s: float = 10.0
    # 1+2+4+...+60 s: ten attempts span about four minutes, so a receiver that is down
    # for two (a deploy, a reboot) gets everything without a redrive
    webhook_max_attempts: int = 10
    webhook_backoff_base_s: float = 1.0
    webhook_backoff_max_s: float = 60.0
    webhook_concurrency: int = 25
    webhook_concurrency_per_destination: int = 20
    webhook_max_buffered: int = 1000
    webhook_destination_wait_s: float = 5.0
    webhook_ack_wait_s: float = 30.0
    # waiting retries count here: a receiver that is down holds about (its events/s) x
    # (the retry budget, ~243 s) of them, and at the limit every tenant's delivery stops
    # (docs/webhooks.md); 100 000 lets one dead receiver take ~400 events/s first
    webhook_max_ack_pending: int = 100_000
    webhooks_metrics_port: int = 0
    # signatures: the scheme of the settings-level global webhook, and how long a replaced
    # secret still signs (a second signature) so receivers can switch without a gap
    webhook_scheme: Literal["standard", "zapfleet-v1"] = "standard"
    webhook_secret_grace_s: float = 86_400.0
    # isolation (docs/webhooks.md): a failed delivery waits in its destination's backlog
    # (stream ZF_WEBHOOK_BACKLOG), never in the shared consumer
    webhook_max_backlog: int = 100_000  # per destination; past it: dead letters
    # per destination; 1 = ordered mode (the backlog in order, nothing overtakes it)
    webhook_backlog_in_flight: int = 20
    webhook_backlog_scan_s: float = 1.0  # how often a dispatcher looks for backlogs
    nats_commands: bool = True
    ui_enabled: bool = True
    cors_allow_origins: list[str] = msgspec.field(default_factory=list)
    log_level: str = "INFO"
    log_format: Literal["json", "text"] = "json"
    # API: auth, rate limits, caches, idempotency (docs/api.md)
    auth_cache_ttl_s: float = 10.0
    trusted_proxies: list[str] = msgspec.field(default_factory=list)
    rate_limits_enabled: bool = True
    rate_messages: str = "500/60"
    rate_sessions: str = "100/300"
    rate_queries: str = "1000/60"
    rate_global: str = "2000/900"
    cache_prefix: str = "zf:"
    cache_qr_ttl_s: float = 30.0
    cache_status_ttl_s: float = 3600.0
    cache_number_valid_ttl_s: float = 4 * 3600.0
    cache_number_invalid_ttl_s: float = 2 * 3600.0
    cache_history_ttl_s: float = 60.0
    idempotency_ttl_s: float = 86400.0
    metrics_public: bool = True
    # Evolution API v2 compatibility facade (control_plane/evolution/, docs/evolution.md)
    evolution: bool = False
    evolution_prefix: str = ""

    def public_base_url(self) -> str:
        """Where clients reach this API (signed media URLs): ZAPFLEET_PUBLIC_URL."""
        if self.public_url:
            return self.public_url.rstrip("/")
        host = self.http_host if self.http_host not in ("0.0.0.0", "::") else "127.0.0.1"
        return f"http://{host}:{self.http_port}"

    def validate(self) -> None:
        parse_nats_urls(self.nats_url)
        check_replicas(self.nats_replicas)
        if len(self.admin_key) < 16:
            raise SettingsError(
                "invalid setting ZAPFLEET_ADMIN_KEY: required, at least 16 characters "
                "(generate one with: python -c 'import secrets; print(secrets.token_urlsafe(32))')"
            )
        if self.http_workers < 1:
            raise SettingsError("invalid setting ZAPFLEET_HTTP_WORKERS: must be >= 1")
        if self.leader_lease_s < 1:
            raise SettingsError("invalid setting ZAPFLEET_LEADER_LEASE_S: must be >= 1")
        if self.lease_margin_s < 0:
            raise SettingsError("invalid setting ZAPFLEET_LEASE_MARGIN_S: must be >= 0")
        for name in ("messages", "sessions", "queries", "global"):
            try:
                self.rate(name)
            except ValueError:
                raise SettingsError(
                    f"invalid setting ZAPFLEET_RATE_{name.upper()}: expected <count>/<seconds>, "
                    "e.g. 500/60"
                ) from None
        for proxy in self.trusted_proxies:
            try:
                ipaddress.ip_network(proxy, strict=False)
            except ValueError:
                raise SettingsError(
                    f"invalid setting ZAPFLEET_TRUSTED_PROXIES: {proxy!r} is not an IP or CIDR"
                ) from None
        for name in (
            "webhook_concurrency",
            "webhook_concurrency_per_destination",
            "webhook_max_buffered",
            "webhook_max_attempts",
            "webhook_max_ack_pending",
            "webhook_max_backlog",
            "webhook_backlog_in_flight",
        ):
            if getattr(self, name) < 1:
                raise SettingsError(f"invalid setting ZAPFLEET_{name.upper()}: must be >= 1")
        for name in (
            "webhook_timeout_s",
            "webhook_backoff_base_s",
            "webhook_ack_wait_s",
            "webhook_destination_wait_s",
            "webhook_backlog_scan_s",
        ):
            if getattr(self, name) <= 0:
                raise SettingsError(f"invalid setting ZAPFLEET_{name.upper()}: must be > 0")
        prefix = self.evolution_prefix
        if prefix and (
            not prefix.startswith("/") or prefix.endswith("/") or prefix in ("/v1", "/ui")
        ):
            raise SettingsError(
                "invalid setting ZAPFLEET_EVOLUTION_PREFIX: '' or a path like '/evolution' "
                "(no trailing '/', not /v1 or /ui)"
            )
        for network in self.webhook_allowed_networks:
            try:
                ipaddress.ip_network(network, strict=False)
            except ValueError as exc:
                raise SettingsError(
                    f"invalid setting ZAPFLEET_WEBHOOK_ALLOWED_NETWORKS: {exc}"
                ) from None

    def rate(self, name: str) -> tuple[int, float]:
        """The (count, period in seconds) of rate class ``name``."""
        raw: str = getattr(self, f"rate_{name}")
        count, _, period = raw.partition("/")
        limit, seconds = int(count), float(period)
        if limit < 1 or seconds <= 0:
            raise ValueError(raw)
        return limit, seconds

    @property
    def webhook_urls(self) -> list[str]:
        """The global webhook destinations from ``ZAPFLEET_WEBHOOK_URL`` (comma-separated)."""
        return [u.strip() for u in (self.webhook_url or "").split(",") if u.strip()]

    @property
    def nats_servers(self) -> list[str]:
        return parse_nats_urls(self.nats_url)

    @property
    def replicas(self) -> int:
        """Replicas of every stream, KV bucket and object store this process creates."""
        return replicas_for(self.nats_servers, self.nats_replicas)

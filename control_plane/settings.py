"""Control plane settings: one typed object from ``ZAPFLEET_*`` environment variables.

| variable | default | meaning |
|---|---|---|
| ZAPFLEET_NATS_URL | nats://127.0.0.1:4222 | comma-separated NATS URLs |
| ZAPFLEET_VALKEY_URL | valkey://127.0.0.1:6379/0 | Valkey (caches, rate limits, idempotency) |
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
| ZAPFLEET_WEBHOOK_ALLOW_PRIVATE | false | allow all loopback/private targets (dev only) |
| ZAPFLEET_WEBHOOK_ALLOWED_NETWORKS | (none) | CIDRs allowed despite the SSRF guard |
| ZAPFLEET_WEBHOOKS_IN_PROCESS | true | run the webhook dispatcher inside the control plane |
| ZAPFLEET_WEBHOOK_TIMEOUT_S | 10 | timeout of one delivery (connect + response) |
| ZAPFLEET_WEBHOOK_MAX_ATTEMPTS | 8 | attempts before an event goes to ZF_DLQ |
| ZAPFLEET_WEBHOOK_BACKOFF_BASE_S / _MAX_S | 1 / 60 | retry delay: base·2^(attempt-1), capped |
| ZAPFLEET_WEBHOOK_CONCURRENCY | 25 | deliveries in flight per dispatcher process |
| ZAPFLEET_WEBHOOK_CONCURRENCY_PER_DESTINATION | 10 | ... and per destination (scheme, host, port) |
| ZAPFLEET_WEBHOOK_MAX_BUFFERED | 1000 | events one dispatcher holds (in flight + waiting) |
| ZAPFLEET_WEBHOOK_DESTINATION_BACKLOG | 250 | of those per destination; more are deferred |
| ZAPFLEET_WEBHOOK_ACK_WAIT_S | 30 | an event a dead dispatcher held is redelivered after this |
| ZAPFLEET_WEBHOOK_MAX_ACK_PENDING | 20000 | events out, unfinished (all dispatchers, retries too) |
| ZAPFLEET_WEBHOOKS_METRICS_PORT | 0 | Prometheus port of `zapfleet webhooks` (0 = off) |
| ZAPFLEET_NATS_COMMANDS | true | serve `zf.api.<tenant>.<op>` request-reply commands |
| ZAPFLEET_RPC_TIMEOUT_S | 5 | NATS request timeout towards agents |
| ZAPFLEET_LOG_LEVEL / ZAPFLEET_LOG_FORMAT | INFO / json | logging |
"""

from __future__ import annotations

import ipaddress
from typing import Literal

import msgspec

from zapfleet._env import SettingsError


class ControlPlaneSettings(msgspec.Struct, kw_only=True):
    nats_url: str = "nats://127.0.0.1:4222"
    valkey_url: str = "valkey://127.0.0.1:6379/0"
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
    max_body_bytes: int = 24 * 1024 * 1024
    webhook_url: str | None = None
    webhook_secret: str | None = None
    webhook_events: list[str] | None = None
    webhook_allow_private: bool = False
    webhook_allowed_networks: list[str] = msgspec.field(default_factory=list)
    webhooks_in_process: bool = True
    webhook_timeout_s: float = 10.0
    webhook_max_attempts: int = 8
    webhook_backoff_base_s: float = 1.0
    webhook_backoff_max_s: float = 60.0
    webhook_concurrency: int = 25
    webhook_concurrency_per_destination: int = 10
    webhook_max_buffered: int = 1000
    webhook_destination_backlog: int = 250
    webhook_ack_wait_s: float = 30.0
    webhook_max_ack_pending: int = 20_000
    webhooks_metrics_port: int = 0
    nats_commands: bool = True
    log_level: str = "INFO"
    log_format: Literal["json", "text"] = "json"

    def validate(self) -> None:
        if len(self.admin_key) < 16:
            raise SettingsError(
                "invalid setting ZAPFLEET_ADMIN_KEY: required, at least 16 characters "
                "(generate one with: python -c 'import secrets; print(secrets.token_urlsafe(32))')"
            )
        if self.http_workers < 1:
            raise SettingsError("invalid setting ZAPFLEET_HTTP_WORKERS: must be >= 1")
        for name in (
            "webhook_concurrency",
            "webhook_concurrency_per_destination",
            "webhook_max_buffered",
            "webhook_destination_backlog",
            "webhook_max_attempts",
            "webhook_max_ack_pending",
        ):
            if getattr(self, name) < 1:
                raise SettingsError(f"invalid setting ZAPFLEET_{name.upper()}: must be >= 1")
        for name in ("webhook_timeout_s", "webhook_backoff_base_s", "webhook_ack_wait_s"):
            if getattr(self, name) <= 0:
                raise SettingsError(f"invalid setting ZAPFLEET_{name.upper()}: must be > 0")
        for network in self.webhook_allowed_networks:
            try:
                ipaddress.ip_network(network, strict=False)
            except ValueError as exc:
                raise SettingsError(
                    f"invalid setting ZAPFLEET_WEBHOOK_ALLOWED_NETWORKS: {exc}"
                ) from None

    @property
    def webhook_urls(self) -> list[str]:
        """The global webhook destinations from ``ZAPFLEET_WEBHOOK_URL`` (comma-separated)."""
        return [u.strip() for u in (self.webhook_url or "").split(",") if u.strip()]

    @property
    def nats_servers(self) -> list[str]:
        return [url.strip() for url in self.nats_url.split(",") if url.strip()]

"""Control plane settings: one typed object from ``ZAPFLEET_*`` environment variables.

| variable | default | meaning |
|---|---|---|
| ZAPFLEET_NATS_URL | nats://127.0.0.1:4222 | comma-separated NATS URLs |
| ZAPFLEET_VALKEY_URL | valkey://127.0.0.1:6379/0 | Valkey (caches, rate limits, idempotency) |
| ZAPFLEET_ADMIN_KEY | (required) | admin API key: manages tenants and keys |
| ZAPFLEET_HTTP_HOST / ZAPFLEET_HTTP_PORT | 127.0.0.1 / 8080 | listen address |
| ZAPFLEET_HTTP_WORKERS | 1 | granian worker processes |
| ZAPFLEET_DEFAULT_ENGINE | neonize | engine of sessions created without one |
| ZAPFLEET_WEBHOOK_URL | (none) | global webhook destination |
| ZAPFLEET_WEBHOOK_ALLOW_PRIVATE | false | allow loopback/private webhook targets (dev, tests) |
| ZAPFLEET_WEBHOOKS_IN_PROCESS | true | run the webhook dispatcher inside the control plane |
| ZAPFLEET_RPC_TIMEOUT_S | 5 | NATS request timeout towards agents |
| ZAPFLEET_LEASE_TTL_S | 8 | node lease assumed for agents whose heartbeat does not state one |
| ZAPFLEET_LEASE_MARGIN_S | 2 | a node is down after its lease + this margin of silence |
| ZAPFLEET_RECONCILER | true | run a reconciler candidate (one acts at a time: KV lease) |
| ZAPFLEET_RECONCILE_INTERVAL_S | 0.5 | how often the active reconciler looks at the fleet |
| ZAPFLEET_LEADER_LEASE_S | 3 | reconciler leadership lease (whole seconds, >= 1) |
| ZAPFLEET_AUDIT_INTERVAL_S | 15 | full audit of assignments and slots (orphans, drift) |
| ZAPFLEET_MOVE_CONCURRENCY | 32 | sessions moved in parallel by failover, drain, rebalance |
| ZAPFLEET_LOG_LEVEL / ZAPFLEET_LOG_FORMAT | INFO / json | logging |
"""

from __future__ import annotations

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
    node_ttl_s: float = 10.0
    lease_ttl_s: float = 8.0
    lease_margin_s: float = 2.0
    reconciler: bool = True
    reconcile_interval_s: float = 0.5
    leader_lease_s: int = 3
    audit_interval_s: float = 15.0
    move_concurrency: int = 32
    max_body_bytes: int = 24 * 1024 * 1024
    webhook_url: str | None = None
    webhook_secret: str | None = None
    webhook_allow_private: bool = False
    webhooks_in_process: bool = True
    webhook_timeout_s: float = 10.0
    webhook_max_attempts: int = 8
    webhook_concurrency: int = 25
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
        if self.leader_lease_s < 1:
            raise SettingsError("invalid setting ZAPFLEET_LEADER_LEASE_S: must be >= 1")
        if self.lease_margin_s < 0:
            raise SettingsError("invalid setting ZAPFLEET_LEASE_MARGIN_S: must be >= 0")

    @property
    def nats_servers(self) -> list[str]:
        return [url.strip() for url in self.nats_url.split(",") if url.strip()]

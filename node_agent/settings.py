"""Node agent settings: one typed object, from ``ZAPFLEET_*`` environment variables.

| variable | default | meaning |
|---|---|---|
| ZAPFLEET_NODE_ID | hostname | unique id of this agent (one per shard) |
| ZAPFLEET_NATS_URL | nats://127.0.0.1:4222 | comma-separated NATS URLs |
| ZAPFLEET_ENGINE | neonize | neonize (production) or sim |
| ZAPFLEET_MAX_SESSIONS | 150 | admission limit |
| ZAPFLEET_MEMORY_THRESHOLD | 0.85 | refuse starts above this share of the memory limit |
| ZAPFLEET_DATA_DIR | ./.zapfleet/agent | per-agent data (device stores) |
| ZAPFLEET_DEVICE_STORE_URL | (none) | PostgreSQL URL for a shared neonize device store |
| ZAPFLEET_METRICS_PORT | 9470 | Prometheus endpoint (0 = off) |
| ZAPFLEET_HEARTBEAT_INTERVAL_S | 2 | heartbeat period |
| ZAPFLEET_LEASE_TTL_S | 8 | node lease: cut off longer, the agent stops its sessions |
| ZAPFLEET_DEVICE_BACKUP_INTERVAL_S | 300 | backup period of SQLite device stores (Object Store) |
| ZAPFLEET_SIM_KEEPALIVE_S | 5 | sim: keepalive period (checks a socket is its account's only one) |
| ZAPFLEET_SIM_PROBE_TIMEOUT_S | 0.25 | sim: how long a probe waits for another live socket |
| ZAPFLEET_LABELS | (none) | k=v,k=v placement labels (e.g. region=eu) |
| ZAPFLEET_LOG_LEVEL / ZAPFLEET_LOG_FORMAT | INFO / json | logging |
"""

from __future__ import annotations

import socket
from typing import Literal

import msgspec

from zapfleet._env import SettingsError


class AgentSettings(msgspec.Struct, kw_only=True):
    node_id: str = msgspec.field(default_factory=socket.gethostname)
    nats_url: str = "nats://127.0.0.1:4222"
    engine: Literal["neonize", "sim"] = "neonize"
    max_sessions: int = 150
    memory_threshold: float = 0.85
    data_dir: str = "./.zapfleet/agent"
    device_store_url: str | None = None
    metrics_port: int = 9470
    metrics_host: str = "127.0.0.1"
    heartbeat_interval_s: float = 2.0
    lease_ttl_s: float = 8.0
    device_backup_interval_s: float = 300.0
    events_max_age_s: float = 7 * 86400.0
    labels: dict[str, str] = msgspec.field(default_factory=dict)
    max_media_bytes: int = 16 * 1024 * 1024
    start_stagger_s: float = 0.05
    # state machine (DESIGN §3)
    backoff_base_s: float = 2.0
    backoff_max_s: float = 300.0
    breaker_threshold: int = 5
    breaker_cooldown_s: float = 600.0
    watchdog_interval_s: float = 30.0
    # sim engine
    sim_qr_first_s: float = 60.0
    sim_qr_next_s: float = 20.0
    sim_read_after_s: float = 0.5
    sim_keepalive_s: float = 5.0
    sim_probe_timeout_s: float = 0.25
    log_level: str = "INFO"
    log_format: Literal["json", "text"] = "json"

    def validate(self) -> None:
        if not self.node_id or any(c in self.node_id for c in " .*>"):
            raise SettingsError(
                f"invalid setting ZAPFLEET_NODE_ID={self.node_id!r}: "
                "must be non-empty without spaces, dots, '*' or '>'"
            )
        if self.max_sessions < 1:
            raise SettingsError("invalid setting ZAPFLEET_MAX_SESSIONS: must be >= 1")
        if not 0 < self.memory_threshold <= 1:
            raise SettingsError("invalid setting ZAPFLEET_MEMORY_THRESHOLD: must be in (0, 1]")
        if self.lease_ttl_s < 2 * self.heartbeat_interval_s:
            raise SettingsError(
                "invalid setting ZAPFLEET_LEASE_TTL_S: must be at least twice "
                "ZAPFLEET_HEARTBEAT_INTERVAL_S"
            )

    @property
    def nats_servers(self) -> list[str]:
        return [url.strip() for url in self.nats_url.split(",") if url.strip()]

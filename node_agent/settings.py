"""Node agent settings: one typed object, from ``ZAPFLEET_*`` environment variables.

| variable | default | meaning |
|---|---|---|
| ZAPFLEET_NODE_ID | hostname | unique id of this agent (one per shard) |
| ZAPFLEET_NATS_URL | nats://127.0.0.1:4222 | comma-separated NATS URLs (servers of one cluster) |
| ZAPFLEET_NATS_REPLICAS | 0 | replicas of all streams, buckets (0: 3 if >= 3 URLs, else 1) |
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
| ZAPFLEET_OUTBOX | true | accepted sends are kept in KV zf_outbox until sent (survive kill -9) |
| ZAPFLEET_MAX_MEDIA_BYTES | 16777216 | largest media (base64 or URL) a message may carry |
| ZAPFLEET_MEDIA_TIMEOUT_S | 30 | media URL download timeout |
| ZAPFLEET_MEDIA_STORE_MAX_BYTES | 1 GiB | Object Store ``zf_media`` (inbound media): total size |
| ZAPFLEET_MEDIA_STORE_TTL_S | 604800 | ... each file kept this long (7 days) |
| ZAPFLEET_MEDIA_INBOUND_MAX_BYTES | 67108864 | larger inbound media is described, not stored |
| ZAPFLEET_MEDIA_DOWNLOADS | 4 | inbound media downloads at once per agent |
| ZAPFLEET_HISTORY_SIZE | 1000 | messages per session in the history (memory; queued kept longest) |
| ZAPFLEET_FFMPEG | (wheel) | ffmpeg binary for voice notes (default: imageio-ffmpeg's) |
| ZAPFLEET_ALLOW_PRIVATE_TARGETS | false | media + webhooks may reach loopback/private (dev only) |
| ZAPFLEET_START_STAGGER_S | 0.05 | pause between two neonize dials (staggered starts) |
| ZAPFLEET_MAX_CHECK_NUMBERS | 500 | largest batch of one contacts check |
| ZAPFLEET_RPC_MAX_INFLIGHT | 512 | sends and reads served at once (lifecycle ops: one at a time) |
| ZAPFLEET_BACKOFF_BASE_S / _MAX_S | 2 / 300 | reconnect backoff (full jitter above base) |
| ZAPFLEET_BREAKER_THRESHOLD | 5 | consecutive failures that open the circuit breaker |
| ZAPFLEET_BREAKER_COOLDOWN_S | 600 | how long the breaker stays open (reset by RPC) |
| ZAPFLEET_WATCHDOG_INTERVAL_S / _TIMEOUT_S | 30 / 10 | liveness probe of CONNECTED sessions |
| ZAPFLEET_SEND_ATTEMPTS | 3 | engine send attempts before a message is acked `failed` |
| ZAPFLEET_SEND_RETRY_DELAY_S | 1 | pause before a retry (times the attempt number) |
| ZAPFLEET_NEONIZE_DIAL_TIMEOUT_S | 30 | a dial silent this long is abandoned (never cancelled) |
| ZAPFLEET_NEONIZE_START_HOLD_S | 0.5 | longest a start holds the neonize lock for the dial |
| ZAPFLEET_NEONIZE_STOP_TIMEOUT_S | 10 | longest a neonize Stop may hold the lock |
| ZAPFLEET_NEONIZE_EXECUTOR_SPARE | 32 | executor threads beyond one per session |
| ZAPFLEET_NEONIZE_GO_LOG_LEVEL | WARNING | level of whatsmeow logs allowed across the FFI |
| ZAPFLEET_SIM_QR_FIRST_S / _NEXT_S | 60 / 20 | sim QR lifetimes (first / next codes) |
| ZAPFLEET_SIM_READ_AFTER_S | 0.5 | sim recipients read a message after this long |
| ZAPFLEET_EVENTS_MAX_AGE_S | 604800 | ZF_EVENTS keeps events 7 days (set alike on all processes) |
| ZAPFLEET_EVENTS_MAX_BYTES | 10 GiB | ... and at most this many bytes, oldest first (-1: none) |
| ZAPFLEET_EVENTS_DEDUPE_WINDOW_S | 120 | a re-published event id within this window is dropped |
| ZAPFLEET_LOG_LEVEL / ZAPFLEET_LOG_FORMAT | INFO / json | logging |
"""

from __future__ import annotations

import socket
from typing import Literal

import msgspec

from zapfleet._env import SettingsError
from zapfleet.natsjs import check_replicas, parse_nats_urls, replicas_for


class AgentSettings(msgspec.Struct, kw_only=True):
    node_id: str = msgspec.field(default_factory=socket.gethostname)
    nats_url: str = "nats://127.0.0.1:4222"
    nats_replicas: int = 0  # 0: automatic (zapfleet/natsjs.py)
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
    events_max_bytes: int = 10 * 1024**3
    events_dedupe_window_s: float = 120.0
    labels: dict[str, str] = msgspec.field(default_factory=dict)
    max_media_bytes: int = 16 * 1024 * 1024
    outbox: bool = True
    media_timeout_s: float = 30.0
    media_store_max_bytes: int = 1024**3
    media_store_ttl_s: float = 7 * 86400.0
    media_inbound_max_bytes: int = 64 * 1024 * 1024
    media_downloads: int = 4
    history_size: int = 1000
    allow_private_targets: bool = False  # the control plane's webhooks read it too
    start_stagger_s: float = 0.05
    max_check_numbers: int = 500
    # sends and reads served at once (node_agent/agent.py: Agent._rpc)
    rpc_max_inflight: int = 512
    # state machine (DESIGN §3)
    backoff_base_s: float = 2.0
    backoff_max_s: float = 300.0
    breaker_threshold: int = 5
    breaker_cooldown_s: float = 600.0
    watchdog_interval_s: float = 30.0
    watchdog_timeout_s: float = 10.0
    send_attempts: int = 3
    send_retry_delay_s: float = 1.0
    # neonize engine (NEONIZE.md)
    neonize_dial_timeout_s: float = 30.0
    neonize_start_hold_s: float = 0.5
    neonize_stop_timeout_s: float = 10.0
    neonize_executor_spare: int = 32
    neonize_go_log_level: str = "WARNING"
    # sim engine
    sim_qr_first_s: float = 60.0
    sim_qr_next_s: float = 20.0
    sim_read_after_s: float = 0.5
    sim_keepalive_s: float = 5.0
    sim_probe_timeout_s: float = 0.25
    log_level: str = "INFO"
    log_format: Literal["json", "text"] = "json"

    def validate(self) -> None:
        parse_nats_urls(self.nats_url)
        check_replicas(self.nats_replicas)
        if not self.node_id or any(c in self.node_id for c in " .*>"):
            raise SettingsError(
                f"invalid setting ZAPFLEET_NODE_ID={self.node_id!r}: "
                "must be non-empty without spaces, dots, '*' or '>'"
            )
        if self.max_sessions < 1:
            raise SettingsError("invalid setting ZAPFLEET_MAX_SESSIONS: must be >= 1")
        if not 0 < self.memory_threshold <= 1:
            raise SettingsError("invalid setting ZAPFLEET_MEMORY_THRESHOLD: must be in (0, 1]")
        if self.backoff_base_s <= 0 or self.backoff_max_s < self.backoff_base_s:
            raise SettingsError(
                "invalid setting ZAPFLEET_BACKOFF_BASE_S/ZAPFLEET_BACKOFF_MAX_S: "
                "need 0 < base <= max"
            )
        if self.breaker_threshold < 1:
            raise SettingsError("invalid setting ZAPFLEET_BREAKER_THRESHOLD: must be >= 1")
        if self.rpc_max_inflight < 1:
            raise SettingsError("invalid setting ZAPFLEET_RPC_MAX_INFLIGHT: must be >= 1")
        if self.send_attempts < 1:
            raise SettingsError("invalid setting ZAPFLEET_SEND_ATTEMPTS: must be >= 1")
        if self.lease_ttl_s < 2 * self.heartbeat_interval_s:
            raise SettingsError(
                "invalid setting ZAPFLEET_LEASE_TTL_S: must be at least twice "
                "ZAPFLEET_HEARTBEAT_INTERVAL_S"
            )

    @property
    def nats_servers(self) -> list[str]:
        return parse_nats_urls(self.nats_url)

    @property
    def replicas(self) -> int:
        """Replicas of every stream, KV bucket and object store this process creates."""
        return replicas_for(self.nats_servers, self.nats_replicas)

"""Prometheus metrics of webhook delivery (per dispatcher process)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

QUEUED = Gauge(
    "zapfleet_webhook_queued",
    "Events not yet finished by the dispatchers: new in the stream plus handed out "
    "(in flight or waiting for a retry), as the durable consumer reports it",
)
ACK_PENDING = Gauge(
    "zapfleet_webhook_ack_pending",
    "Events handed out and not finished (in flight or waiting for a retry), all dispatchers",
)
MAX_ACK_PENDING = Gauge(
    "zapfleet_webhook_max_ack_pending",
    "The consumer's limit of handed-out events: at it, no tenant's webhook moves",
)
IN_FLIGHT = Gauge("zapfleet_webhook_in_flight", "HTTP deliveries in progress in this process")
BUFFERED = Gauge(
    "zapfleet_webhook_buffered", "Events this process holds (in flight or waiting for a slot)"
)
DELIVERED = Counter("zapfleet_webhook_delivered_total", "Deliveries answered with 2xx")
FAILED = Counter(
    "zapfleet_webhook_failed_total",
    "Delivery attempts that failed",
    ["reason"],  # http_4xx, http_5xx, http_other, timeout, connection, refused
)
RETRIED = Counter("zapfleet_webhook_retried_total", "Events scheduled for another attempt")
DEFERRED = Counter(
    "zapfleet_webhook_deferred_total",
    "Events put back after waiting too long for a slot of their destination",
)
DEAD_LETTERED = Counter("zapfleet_webhook_dead_lettered_total", "Deliveries moved to ZF_DLQ")
DLQ_DEPTH = Gauge("zapfleet_webhook_dlq_depth", "Dead letters in ZF_DLQ")
SKIPPED = Counter(
    "zapfleet_webhook_skipped_total", "Events no webhook asked for (no URL or filtered out)"
)
LATENCY = Histogram(
    "zapfleet_webhook_delivery_latency_seconds",
    "From event creation to the 2xx of its delivery (includes retries)",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600),
)
ATTEMPT_SECONDS = Histogram(
    "zapfleet_webhook_attempt_seconds",
    "Duration of one HTTP delivery attempt",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
PARKED = Counter(
    "zapfleet_webhook_parked_total",
    "Deliveries put into their destination's backlog (after a failure, or behind it)",
)
BACKLOG = Gauge(
    "zapfleet_webhook_backlog", "Deliveries waiting in destinations' backlogs (all dispatchers)"
)
BACKLOG_DESTINATIONS = Gauge(
    "zapfleet_webhook_backlog_destinations", "Destinations (URLs) with a non-empty backlog"
)
BACKLOG_FULL = Counter(
    "zapfleet_webhook_backlog_full_total",
    "Deliveries dead-lettered because their destination's backlog was at its bound",
)
PAUSED = Gauge(
    "zapfleet_webhook_paused_destinations",
    "Destinations whose backlog's last attempt failed (paused with backoff; this process)",
)

"""Consume zapfleet events straight from NATS JetStream (docs/nats.md).

    pip install nats-py
    python nats_consumer.py --url nats://127.0.0.1:4222 --tenant acme --durable my-app

A durable pull consumer of its own (``--durable``) on stream ZF_EVENTS, filtered to one
tenant (and optionally one event type): JetStream remembers what this application has
acknowledged, so after a restart it continues exactly where it stopped — nothing missed,
nothing skipped. Each event is printed as one JSON line and acknowledged *after* it was
handled; an event whose handling fails is redelivered (at-least-once: dedupe on "id").
Start it with ``--from-start`` once to also get the events already retained (7 days).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal

import nats
from nats.errors import TimeoutError as NatsTimeout
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy


def handle(event: dict) -> None:
    """Your code: here, print the event."""
    print(json.dumps(event, sort_keys=True), flush=True)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="nats://127.0.0.1:4222")
    parser.add_argument("--tenant", required=True)
    parser.add_argument("--type", default=">", help="e.g. message.received or message.*")
    parser.add_argument("--durable", required=True, help="this application's consumer name")
    parser.add_argument("--from-start", action="store_true", help="begin with retained events")
    parser.add_argument("--max", type=int, default=0, help="stop after N events (0: never)")
    args = parser.parse_args()

    nc = await nats.connect(args.url, max_reconnect_attempts=-1)
    js = nc.jetstream()
    subject = f"zf.events.{args.tenant}.*.{args.type}"
    sub = await js.pull_subscribe(
        subject,
        durable=args.durable,
        stream="ZF_EVENTS",
        config=ConsumerConfig(
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL if args.from_start else DeliverPolicy.NEW,
            ack_wait=30,
            max_ack_pending=1000,
        ),
    )
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    seen = 0
    while not stop.is_set():
        try:
            messages = await sub.fetch(100, timeout=1)
        except NatsTimeout:
            continue
        for msg in messages:
            try:
                handle(json.loads(msg.data))
            except Exception:
                await msg.nak(delay=5)  # try again later
                continue
            await msg.ack()
            seen += 1
            if args.max and seen >= args.max:
                stop.set()
                break
    await nc.drain()


if __name__ == "__main__":
    asyncio.run(main())

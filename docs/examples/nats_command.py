"""Call zapfleet over NATS instead of HTTP: ``zf.api.<tenant>.<op>`` (docs/nats.md).

    pip install nats-py
    python nats_command.py --tenant acme --key "$KEY" status sales-1
    python nats_command.py --tenant acme --key "$KEY" send sales-1 +15550002222 "Hello"

Prints the reply: {"kind": "ok", "value": ...} or {"kind": "err", "code", "status",
"message"} (the same code and status as the REST API's problem document).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

import nats


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="nats://127.0.0.1:4222")
    parser.add_argument("--tenant", required=True)
    parser.add_argument("--key", required=True, help="an API key of the tenant (or the admin's)")
    ops = parser.add_subparsers(dest="op", required=True)
    status = ops.add_parser("status", help="a session's live state")
    status.add_argument("session_id")
    send = ops.add_parser("send", help="queue a text message")
    send.add_argument("session_id")
    send.add_argument("to")
    send.add_argument("text")
    args = parser.parse_args()

    if args.op == "status":
        op, body = "session_status", {"session_id": args.session_id}
    else:
        message = {"type": "text", "to": args.to, "text": args.text}
        op, body = "message_send", {"session_id": args.session_id, "message": message}
    nc = await nats.connect(args.url)
    try:
        reply = await nc.request(
            f"zf.api.{args.tenant}.{op}",
            json.dumps(body).encode(),
            timeout=10,
            headers={"Authorization": f"Bearer {args.key}"},
        )
    finally:
        await nc.close()
    answer = json.loads(reply.data)
    print(json.dumps(answer, indent=2, sort_keys=True))
    return 0 if answer["kind"] == "ok" else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))

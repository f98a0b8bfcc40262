"""The webhook and event docs say what the code does: every event type has a valid
example, the verification snippets accept real signatures and refuse forgeries, and the
example NATS consumer runs."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import msgspec
from nats.aio.client import Client as NATS

from contract.protocol import Event, EventType
from control_plane.webhooks.signing import STANDARD, signed_headers
from tests.webhooks.conftest import publish_events

DOCS = Path(__file__).resolve().parents[2] / "docs"
SECRET = "whsec_" + base64.b64encode(bytes(range(32))).decode()
OTHER_SECRET = "whsec_" + base64.b64encode(bytes(range(1, 33))).decode()
EVENT_ID = "18ea"
BODY = b'{"id":"18ea","type":"message.received","tenant":"acme","session_id":"s1","ts":1.0}'


def code_blocks(document: str, language: str) -> list[str]:
    text = (DOCS / document).read_text()
    return re.findall(rf"```{language}\n(.*?)```", text, re.S)


def test_events_md_has_one_valid_example_per_event_type() -> None:
    examples = [json.loads(block) for block in code_blocks("events.md", "json")]
    by_type = {example["type"]: example for example in examples}
    assert set(by_type) == {t.value for t in EventType}
    assert len(examples) == len(EventType)
    for example in examples:
        event = msgspec.convert(example, Event)
        assert event.id and event.ts > 0
        expected_tenant = "_system" if event.type.startswith("node.") else "acme"
        assert event.tenant == expected_tenant


def cases() -> list[tuple[str, dict[str, str], bytes, bool]]:
    now = int(time.time())

    def signed(secrets: list[str], at: int = now) -> dict[str, str]:
        return signed_headers(STANDARD, secrets, EVENT_ID, BODY, at)

    good = signed([SECRET])
    return [
        ("genuine", good, BODY, True),
        ("tampered body", good, BODY.replace(b"acme", b"evil"), False),
        ("another id", {**good, "webhook-id": "18eb"}, BODY, False),
        ("wrong secret", signed([OTHER_SECRET]), BODY, False),
        ("replayed after 10 min", signed([SECRET], now - 600), BODY, False),
        ("no signature", {k: v for k, v in good.items() if k != "webhook-signature"}, BODY, False),
        ("rotated: second value matches", signed([OTHER_SECRET, SECRET]), BODY, True),
    ]


def test_the_python_verification_snippet_accepts_real_signatures_only() -> None:
    (snippet,) = code_blocks("webhooks.md", "python")
    namespace: dict[str, Any] = {}
    exec(compile(snippet, "docs/webhooks.md", "exec"), namespace)
    verify_webhook = namespace["verify_webhook"]
    for name, headers, body, expected in cases():
        assert verify_webhook(SECRET, headers, body) is expected, name


def test_the_javascript_verification_snippet_accepts_real_signatures_only(
    tmp_path: Path,
) -> None:
    (snippet,) = code_blocks("webhooks.md", "javascript")
    inputs = [
        {
            "name": name,
            "headers": {k.lower(): v for k, v in headers.items()},
            "body": body.decode(),
            "expected": expected,
        }
        for name, headers, body, expected in cases()
    ]
    harness = tmp_path / "verify.js"
    harness.write_text(
        snippet
        + "\nconst cases = JSON.parse(process.argv[2]);\n"
        + "for (const c of cases) {\n"
        + f'  const ok = verifyWebhook("{SECRET}", c.headers, Buffer.from(c.body));\n'
        + "  console.log(JSON.stringify({name: c.name, ok}));\n"
        + "}\n"
    )
    result = subprocess.run(
        ["node", str(harness), json.dumps(inputs)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    answers = {line["name"]: line["ok"] for line in map(json.loads, result.stdout.splitlines())}
    assert answers == {case["name"]: case["expected"] for case in inputs}


async def test_the_example_nats_consumer_gets_the_events_of_its_tenant(
    js_client: NATS, fresh_nats: str
) -> None:
    ids = await publish_events(js_client, 5, tenant="acme")
    await publish_events(js_client, 3, tenant="other")
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(DOCS / "examples" / "nats_consumer.py"),
        "--url", fresh_nats,
        "--tenant", "acme",
        "--durable", "docs-test",
        "--from-start",
        "--max", "5",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    stdout, stderr = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0, stderr.decode()
    printed = [json.loads(line) for line in stdout.decode().splitlines()]
    assert [event["id"] for event in printed] == ids
    info = await js_client.jetstream().consumer_info("ZF_EVENTS", "docs-test")
    assert info.num_ack_pending == 0 and info.num_pending == 0  # all acknowledged

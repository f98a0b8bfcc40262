"""The OpenAPI document is the contract: a client generated from it by openapi-python-client
(no warnings, no hand edits) drives a whole flow — create, pair through the sim, QR image,
send (and an idempotent replay), history (and its cached read), delete — and every answer
of that flow is checked against the document: status, content type, body schema, and
every zapfleet header it carries is declared there with a matching schema."""

from __future__ import annotations

import asyncio
import importlib
import os
import re
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import jsonschema
import pytest
from nats.aio.client import Client as NATS

from node_agent.engines.sim import link
from tests.conftest import Stack
from tests.helpers import new_tenant, unique

VENV_BIN = Path(sys.executable).parent
# headers the server sets beyond HTTP's own: each must be declared where it appears
OWN_HEADERS = {
    "ratelimit-limit",
    "ratelimit-remaining",
    "ratelimit-reset",
    "retry-after",
    "idempotent-replayed",
    "x-cache",
}


@pytest.fixture(scope="module")
def document(stack: Stack) -> dict[str, Any]:
    schema: dict[str, Any] = httpx.get(f"{stack.base_url}/schema/openapi.json").json()
    return schema


@pytest.fixture(scope="module")
def generated(
    document: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ModuleType]:
    root = tmp_path_factory.mktemp("generated")
    spec = root / "openapi.json"
    spec.write_text(httpx.Response(200, json=document).text)
    result = subprocess.run(
        [str(VENV_BIN / "openapi-python-client"), "generate", "--path", str(spec),
         "--meta", "none", "--output-path", str(root / "zapfleet_client")],
        check=False, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}"},
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "warning" not in output.lower(), output  # every operation and body generated
    sys.path.insert(0, str(root))
    try:
        yield importlib.import_module("zapfleet_client")
    finally:
        sys.path.remove(str(root))
        for name in [m for m in sys.modules if m.split(".")[0] == "zapfleet_client"]:
            del sys.modules[name]


def operation_of(document: dict[str, Any], method: str, path: str) -> dict[str, Any]:
    for template, item in document["paths"].items():
        pattern = "^" + re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template)) + "$"
        if re.match(pattern, path) and method.lower() in item:
            operation: dict[str, Any] = item[method.lower()]
            return operation
    raise AssertionError(f"{method} {path} is not in the document")


def declared_response(operation: dict[str, Any], status: int) -> dict[str, Any]:
    responses = operation["responses"]
    for key in (str(status), f"{str(status)[0]}XX", "default"):
        if key in responses:
            response: dict[str, Any] = responses[key]
            return response
    raise AssertionError(f"status {status} is not documented: {sorted(responses)}")


def check_against_document(document: dict[str, Any], response: httpx.Response) -> list[str]:
    """What in ``response`` the document does not say (empty: it conforms)."""
    request = response.request
    operation = operation_of(document, request.method, request.url.path)
    declared = declared_response(operation, response.status_code)
    where = f"{request.method} {request.url.path} -> {response.status_code}"
    problems = []
    content = declared.get("content") or {}
    media_type = response.headers.get("content-type", "").split(";")[0].strip()
    if response.content or content:
        if media_type not in content:
            problems.append(f"{where}: content type {media_type!r} not in {sorted(content)}")
        elif "json" in media_type:
            schema = {"allOf": [content[media_type]["schema"]], **document}
            for error in jsonschema.Draft202012Validator(schema).iter_errors(response.json()):
                problems.append(f"{where}: {error.json_path}: {error.message}")
    headers = {name.lower(): spec for name, spec in (declared.get("headers") or {}).items()}
    for name in OWN_HEADERS & set(response.headers.keys()):
        if name not in headers:
            problems.append(f"{where}: header {name} is not declared")
            continue
        value: Any = response.headers[name]
        schema = headers[name]["schema"]
        if schema.get("type") == "integer":
            value = int(value) if value.isdigit() else value
        for error in jsonschema.Draft202012Validator(schema).iter_errors(value):
            problems.append(f"{where}: header {name}: {error.message}")
    return problems


async def test_a_generated_client_drives_a_whole_flow_and_every_answer_conforms(  # noqa: PLR0915 - one flow, step by step
    stack: Stack, nc: NATS, document: dict[str, Any], generated: ModuleType
) -> None:
    from zapfleet_client import models  # type: ignore[import-not-found]
    from zapfleet_client.api.events import (  # type: ignore[import-not-found]
        v1_events_replay as replay,
    )
    from zapfleet_client.api.messages import (  # type: ignore[import-not-found]
        v1_sessions_session_id_messages_history as history,
    )
    from zapfleet_client.api.messages import (
        v1_sessions_session_id_messages_send as send,
    )
    from zapfleet_client.api.sessions import (  # type: ignore[import-not-found]
        v1_sessions_create as create,
    )
    from zapfleet_client.api.sessions import (
        v1_sessions_session_id_qr_png_qr_png as qr_png,
    )
    from zapfleet_client.api.sessions import (
        v1_sessions_session_id_qr_qr as qr,
    )
    from zapfleet_client.api.sessions import (
        v1_sessions_session_id_remove as remove,
    )
    from zapfleet_client.api.sessions import (
        v1_sessions_session_id_status_status as status,
    )

    async with httpx.AsyncClient(base_url=stack.base_url, headers=stack.headers) as admin:
        _, key = await new_tenant(admin, "oapi")
    answers: list[httpx.Response] = []

    async def keep(response: httpx.Response) -> None:
        await response.aread()
        answers.append(response)

    client = generated.AuthenticatedClient(
        base_url=stack.base_url, token=key, httpx_args={"event_hooks": {"response": [keep]}}
    )
    session_id = unique("oapi")
    created = await create.asyncio_detailed(
        client=client, body=models.CreateSession(session_id=session_id)
    )
    assert created.status_code == 201, created.content
    assert created.parsed.session_id == session_id

    deadline = time.monotonic() + 30
    while (code := await qr.asyncio(session_id, client=client)) is None or not hasattr(code, "qr"):
        assert time.monotonic() < deadline, "no QR code"
        await asyncio.sleep(0.1)
    image = await qr_png.asyncio_detailed(session_id, client=client)
    assert image.status_code == 200 and image.parsed.payload.read().startswith(b"\x89PNG")
    phone = f"1555032{secrets.randbelow(9000) + 1000}"
    assert (await link(nc, code.qr, phone)).ok
    while (state := await status.asyncio(session_id, client=client)).state != "CONNECTED":
        assert time.monotonic() < deadline, f"not connected: {state}"
        await asyncio.sleep(0.1)

    # to its own number: a recipient the sim network knows
    message = models.TextMessage(text="through the contract", to="+" + phone, type_="text")
    first = await send.asyncio_detailed(
        session_id, client=client, body=message, idempotency_key="contract-1"
    )
    assert first.status_code == 202, first.content
    again = await send.asyncio_detailed(
        session_id, client=client, body=message, idempotency_key="contract-1"
    )
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.parsed.message_id == first.parsed.message_id
    while not (
        await replay.asyncio(client=client, since="0", session=session_id, type_="message.sent")
    ).events:
        assert time.monotonic() < deadline, "the message was never sent"
        await asyncio.sleep(0.1)
    listed = await history.asyncio(session_id, client=client)
    assert first.parsed.message_id in [m.message_id for m in listed.messages]
    cached = await history.asyncio_detailed(session_id, client=client)
    assert cached.headers["X-Cache"] == "hit"

    deleted = await remove.asyncio_detailed(session_id, client=client)
    assert deleted.status_code == 204
    gone = await status.asyncio_detailed(session_id, client=client)
    assert gone.status_code == 404

    seen = {(r.request.method, r.status_code) for r in answers}
    assert {("POST", 201), ("POST", 202), ("GET", 200), ("DELETE", 204), ("GET", 404)} <= seen
    assert any("ratelimit-limit" in r.headers for r in answers)
    problems = [p for response in answers for p in check_against_document(document, response)]
    assert problems == []


def test_the_conformance_check_catches_what_it_is_for(document: dict[str, Any]) -> None:
    request = httpx.Request("GET", "http://zf/v1/sessions/s1")
    wrong_body = httpx.Response(200, json={"session_id": 1}, request=request)
    assert any("session_id" in p for p in check_against_document(document, wrong_body))
    wrong_type = httpx.Response(200, text="hi", request=request)
    assert any("content type" in p for p in check_against_document(document, wrong_type))
    undeclared = httpx.Response(
        200, content=b"x", headers={"content-type": "image/png", "x-cache": "hit"},
        request=httpx.Request("GET", "http://zf/v1/sessions/s1/qr.png"),
    )  # fmt: skip
    assert check_against_document(document, undeclared) == [
        "GET /v1/sessions/s1/qr.png -> 200: header x-cache is not declared"
    ]
    bad_header = httpx.Response(
        404, json={"type": "t", "title": "t", "status": 404},
        headers={"content-type": "application/problem+json", "ratelimit-remaining": "-1"},
        request=request,
    )  # fmt: skip
    assert any("ratelimit-remaining" in p for p in check_against_document(document, bad_header))

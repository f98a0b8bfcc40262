"""Every event type's ``data`` is a typed schema published in the OpenAPI document's
``webhooks`` section (issue 13), and the schemas say what the code sends.

The events the agents really publish are held to the schemas by every test that watches
them (``tests/agent_support.EventLog`` fails a test that saw an event outside its schema);
here: the document publishes one entry per type, the examples of docs/events.md conform,
and the check refuses what it is meant to refuse.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from contract.event_data import DATA_OF, check
from contract.protocol import EventType
from tests.conftest import Stack

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = re.compile(r"```json\n(.*?)\n```", re.S)


@pytest.fixture(scope="module")
def document(stack: Stack) -> dict[str, Any]:
    schema: dict[str, Any] = httpx.get(f"{stack.base_url}/schema/openapi.json").json()
    return schema


def _resolve(document: dict[str, Any], ref: str) -> dict[str, Any]:
    assert ref.startswith("#/components/schemas/"), ref
    found: dict[str, Any] = document["components"]["schemas"][ref.rsplit("/", 1)[1]]
    return found


def test_every_event_type_has_a_typed_data_schema() -> None:
    assert set(DATA_OF) == set(EventType)


def test_the_webhooks_section_publishes_every_event_type_with_its_typed_data(
    document: dict[str, Any],
) -> None:
    hooks = document["webhooks"]
    assert set(hooks) == {str(t) for t in EventType}
    for event_type, kind in DATA_OF.items():
        body = hooks[str(event_type)]["post"]["requestBody"]["content"]["application/json"]
        envelope = _resolve(document, body["schema"]["$ref"])
        assert envelope["properties"]["type"]["enum"] == [str(event_type)]
        assert envelope["additionalProperties"] is False
        data = _resolve(document, envelope["properties"]["data"]["$ref"])
        # the data schema lists exactly the struct's fields, by their wire names
        wire = {f.encode_name for f in msgspec.structs.fields(kind)}
        assert set(data["properties"]) == wire, event_type
        assert data["additionalProperties"] is False


def test_every_example_of_docs_events_conforms_to_its_schema() -> None:
    examples = [json.loads(raw) for raw in EXAMPLE.findall((ROOT / "docs/events.md").read_text())]
    events = [e for e in examples if isinstance(e, dict) and "type" in e and "data" in e]
    assert {e["type"] for e in events} == {str(t) for t in EventType}, "one example per type"
    problems = [problem for e in events if (problem := check(e["type"], e["data"]))]
    assert problems == []


@pytest.mark.parametrize(
    ("event_type", "data", "why"),
    [
        ("message.received", {"message_id": "x"}, "missing"),
        (
            "session.paired",
            {"phone": "15550001111", "surprise": 1},
            "unknown field",
        ),
        ("session.qr", {"qr": "2@x", "expires_at": "soon"}, "wrong type"),
        ("message.ack", {"message_id": "m", "status": "lost", "peer": "1"}, "not an ack status"),
        ("node.upp", {"node_id": "a"}, "unknown event type"),
    ],
)
def test_the_check_refuses_data_outside_the_schema(
    event_type: str, data: dict[str, Any], why: str
) -> None:
    assert check(event_type, data) is not None, why

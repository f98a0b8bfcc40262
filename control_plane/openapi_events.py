"""The ``webhooks`` section of the OpenAPI document: one entry per event type, its body the
event envelope with the type's typed ``data`` (:mod:`contract.event_data`).

msgspec writes the JSON Schemas of the data structs; they are turned into Litestar's
OpenAPI objects here so that the document stays one typed object until it is rendered.
"""

from __future__ import annotations

from typing import Any

import msgspec
from litestar.openapi.spec import (
    OpenAPIMediaType,
    OpenAPIResponse,
    OpenAPIType,
    Operation,
    PathItem,
    Reference,
    RequestBody,
    Schema,
)

from contract.event_data import DATA_OF
from contract.protocol import EventType

_REF = "#/components/schemas/{name}"
_SIMPLE = {
    "description": "description",
    "title": "title",
    "format": "format",
    "minimum": "minimum",
    "maximum": "maximum",
    "minLength": "min_length",
    "maxLength": "max_length",
    "pattern": "pattern",
    "enum": "enum",
    "required": "required",
    "default": "default",
}


def _schema(raw: dict[str, Any]) -> Schema | Reference:
    """One msgspec JSON Schema object as Litestar's :class:`Schema`."""
    if "$ref" in raw:
        return Reference(ref=raw["$ref"])
    fields: dict[str, Any] = {key: raw[src] for src, key in _SIMPLE.items() if src in raw}
    if "type" in raw:
        kinds = raw["type"] if isinstance(raw["type"], list) else [raw["type"]]
        types = [OpenAPIType(kind) for kind in kinds]
        fields["type"] = types[0] if len(types) == 1 else types
    if "properties" in raw:
        fields["properties"] = {name: _schema(sub) for name, sub in raw["properties"].items()}
    if "items" in raw:
        fields["items"] = _schema(raw["items"])
    if "anyOf" in raw:
        fields["any_of"] = [_schema(sub) for sub in raw["anyOf"]]
    extra = raw.get("additionalProperties")
    if isinstance(extra, bool):
        fields["additional_properties"] = extra
    elif isinstance(extra, dict):
        fields["additional_properties"] = _schema(extra)
    return Schema(**fields)


def _envelope(event_type: EventType, data_name: str) -> Schema:
    string, number = Schema(type=OpenAPIType.STRING), Schema(type=OpenAPIType.NUMBER)
    return Schema(
        type=OpenAPIType.OBJECT,
        description=f"A `{event_type}` event (docs/events.md)",
        required=["id", "type", "tenant", "session_id", "ts", "data"],
        additional_properties=False,
        properties={
            "id": Schema(type=OpenAPIType.STRING, description="stable and unique: dedupe on it"),
            "type": Schema(type=OpenAPIType.STRING, enum=[str(event_type)]),
            "tenant": string,
            "session_id": string,
            "ts": number,
            "data": Reference(ref=_REF.format(name=data_name)),
            "node_id": Schema(any_of=[string, Schema(type=OpenAPIType.NULL)]),
        },
    )


def event_components() -> dict[str, Schema]:
    """The data structs (and what they refer to) plus one envelope per event type."""
    _, components = msgspec.json.schema_components(list(DATA_OF.values()), ref_template=_REF)
    schemas: dict[str, Schema] = {}
    for name, raw in components.items():
        schema = _schema(raw)
        assert isinstance(schema, Schema), name  # a component is never a bare $ref
        schemas[name] = schema
    for event_type, kind in DATA_OF.items():
        schemas[_envelope_name(event_type)] = _envelope(event_type, kind.__name__)
    return schemas


def _envelope_name(event_type: EventType) -> str:
    return "Event" + "".join(part.title() for part in str(event_type).replace("_", ".").split("."))


def webhooks() -> dict[str, PathItem | Reference]:
    """One POST per event type, as zapfleet delivers it to a webhook URL."""
    section: dict[str, PathItem | Reference] = {}
    for event_type in DATA_OF:
        body = Reference(ref=_REF.format(name=_envelope_name(event_type)))
        section[str(event_type)] = PathItem(
            post=Operation(
                summary=f"`{event_type}` delivered to a webhook URL",
                description=(
                    "Signed with Standard Webhooks headers (`webhook-id`, "
                    "`webhook-timestamp`, `webhook-signature`; docs/webhooks.md). Answer "
                    "2xx within the timeout; anything else is retried with backoff."
                ),
                request_body=RequestBody(
                    required=True,
                    content={"application/json": OpenAPIMediaType(schema=body)},
                ),
                responses={"2XX": OpenAPIResponse(description="received")},
            )
        )
    return section


__all__ = ["event_components", "webhooks"]

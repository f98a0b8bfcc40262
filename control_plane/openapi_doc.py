"""The OpenAPI document tells the whole truth: what Litestar generates, completed with what
it cannot know (tests/reliability/test_schemathesis.py holds the API to it).

- Every error is RFC 9457 ``application/problem+json`` (:mod:`control_plane.problems`):
  each operation documents ``4XX`` as a problem document (and ``400`` too, which Litestar
  describes with its own validation body), plus ``502`` (the WhatsApp engine failed) and
  ``503`` (no node can serve it now; ``Retry-After``) where a node is involved.
- Endpoints that need no key (health, readiness, Prometheus) say so (``security: []``).
- Every header the server reads or writes is declared: ``X-Tenant-Id`` (the admin acts
  for a tenant) on every ``/v1`` operation, ``RateLimit-*`` on every ``/v1`` answer,
  ``Retry-After`` on 429/503, ``Idempotency-Key`` with its bounds and
  ``Idempotent-Replayed`` on sends, ``X-Cache`` on cached reads.
- Constraints the server enforces that Litestar does not render: ``additionalProperties:
  false`` on bodies that refuse unknown fields, media with exactly one of ``url`` (http(s))
  and ``base64``; QR images are binary (``format: binary``, also offered as
  ``application/octet-stream`` so generic generators type them as bytes).
- Every event type's delivery is in the ``webhooks`` section, its ``data`` typed
  (:mod:`control_plane.openapi_events`, :mod:`contract.event_data`).
"""

from __future__ import annotations

from typing import Any

import msgspec
from litestar.openapi.spec import (
    Components,
    OpenAPI,
    OpenAPIHeader,
    OpenAPIMediaType,
    OpenAPIResponse,
    OpenAPIType,
    Operation,
    Parameter,
    Reference,
    Schema,
)

from control_plane.idempotency import MAX_KEY_LENGTH
from control_plane.openapi_events import event_components, webhooks
from control_plane.problems import PROBLEM_JSON
from control_plane.tenants import TENANT_ID_PATTERN

PUBLIC_PATHS = frozenset({"/monitoring/health", "/monitoring/ready"})
PUBLIC_PREFIXES = ("/v1/media/",)  # signed media URLs: the URL is the credential
# paths whose operations call a node agent: they may answer 502 or 503
_NODE_PATH_PREFIXES = ("/v1/sessions", "/monitoring/instances", "/ui/api/sessions")

PROBLEM_SCHEMA = Schema(
    type=OpenAPIType.OBJECT,
    description="RFC 9457 problem details; `type` is stable: urn:zapfleet:problem:<code>",
    required=["type", "title", "status"],
    properties={
        "type": Schema(type=OpenAPIType.STRING, examples=["urn:zapfleet:problem:invalid_body"]),
        "title": Schema(type=OpenAPIType.STRING),
        "status": Schema(type=OpenAPIType.INTEGER, minimum=400, maximum=599),
        "detail": Schema(type=OpenAPIType.STRING),
        "instance": Schema(type=OpenAPIType.STRING),
        "errors": Schema(
            type=OpenAPIType.ARRAY,
            items=Schema(type=OpenAPIType.OBJECT, additional_properties=True),
        ),
    },
)


def _problem(description: str) -> OpenAPIResponse:
    return OpenAPIResponse(
        description=description,
        content={PROBLEM_JSON: OpenAPIMediaType(schema=Reference("#/components/schemas/Problem"))},
    )


CLIENT_ERRORS = _problem(
    "A problem document: 400 invalid body or parameter, 401 missing or invalid key, "
    "403 not allowed for this key, 404 not found (also another tenant's resource), "
    "405 method not allowed, 409 conflict or wrong state, 413 body or media too large, "
    "415 unsupported media type, 422 invalid value (e.g. a phone number), "
    "429 rate limited or send queue full (Retry-After)"
)
BAD_REQUEST = _problem("Malformed JSON, or a body or parameter that breaks the schema")
ENGINE_ERROR = _problem("The WhatsApp engine of the session's node failed the operation")
UNAVAILABLE = _problem(
    "No node can serve this now: the session's node is unreachable, or no node has free "
    "capacity (Retry-After)"
)


def _header(description: str, schema: Schema) -> OpenAPIHeader:
    return OpenAPIHeader(schema=schema, description=description)


_INTEGER = Schema(type=OpenAPIType.INTEGER, minimum=0)
RATE_HEADERS = {
    "RateLimit-Limit": _header("requests allowed in the window of the rate class", _INTEGER),
    "RateLimit-Remaining": _header("requests left in the window", _INTEGER),
    "RateLimit-Reset": _header("seconds until the window is full again", _INTEGER),
}
RETRY_AFTER = {"Retry-After": _header("seconds to wait before retrying", _INTEGER)}
X_CACHE = {
    "X-Cache": _header(
        "hit: served from the cache; miss: read from the node (and cached); bypass: "
        "not placed on a node",
        Schema(type=OpenAPIType.STRING, enum=["hit", "miss", "bypass"]),
    )
}
REPLAYED = {
    "Idempotent-Replayed": _header(
        "true when this is the stored answer to an earlier request with the same "
        "Idempotency-Key and body",
        Schema(type=OpenAPIType.STRING, enum=["true"]),
    )
}
TENANT_HEADER = Parameter(
    name="X-Tenant-Id",
    param_in="header",
    required=False,
    description="with the admin key: the tenant to act for (default: `default`); a tenant "
    "key may only name its own tenant",
    schema=Schema(type=OpenAPIType.STRING, pattern=TENANT_ID_PATTERN),
)
IDEMPOTENCY_KEY = Schema(
    type=OpenAPIType.STRING,
    min_length=1,
    max_length=MAX_KEY_LENGTH,
    pattern=r"^[\x20-\x7e]+$",
    description="printable ASCII: same key + same body = same answer (24 h); same key + "
    "other body = 409",
)
_BINARY = {
    "image/png": "QR code as a PNG image",
    "image/svg+xml": "QR code as an SVG image",
    "application/octet-stream": "the file (served with its own Content-Type)",
}
MEDIA_ONE_OF = [
    Schema(
        required=["url"],
        properties={"url": Schema(type=OpenAPIType.STRING, pattern="^https?://")},
    ),
    Schema(required=["base64"], properties={"base64": Schema(type=OpenAPIType.STRING)}),
]


def _strict_struct_names() -> set[str]:
    """Names of the API's bodies that refuse unknown fields (msgspec
    ``forbid_unknown_fields``): their schemas get ``additionalProperties: false``."""
    found: dict[str, bool] = {}
    pending: list[type[Any]] = [msgspec.Struct]
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        if cls.__module__.startswith(("control_plane.", "contract.protocol")):
            strict = bool(cls.__struct_config__.forbid_unknown_fields)
            found[cls.__name__] = found.get(cls.__name__, True) and strict
    return {name for name, strict in found.items() if strict}


def _add_headers(response: OpenAPIResponse | Reference, headers: dict[str, OpenAPIHeader]) -> None:
    if isinstance(response, OpenAPIResponse):
        response.headers = {**(response.headers or {}), **headers}


def _complete_operation(path: str, method: str, operation: Operation) -> None:
    responses = operation.responses or {}
    if path.startswith("/v1/"):
        parameters = list(operation.parameters or [])
        if not any(getattr(p, "name", "") == "X-Tenant-Id" for p in parameters):
            parameters.append(TENANT_HEADER)
        for parameter in parameters:
            if isinstance(parameter, Parameter) and parameter.name == "Idempotency-Key":
                parameter.schema = IDEMPOTENCY_KEY
        operation.parameters = parameters
        for status, response in responses.items():
            if status.startswith("2") or status == "4XX":
                _add_headers(response, RATE_HEADERS)
    for status in ("4XX", "503"):
        if status in responses:
            _add_headers(responses[status], RETRY_AFTER)
    ok = responses.get("200") or responses.get("202")
    if ok is None or not isinstance(ok, OpenAPIResponse):
        return
    if path.endswith(("/status", "/messages")) and method == "get":
        _add_headers(ok, X_CACHE)
    if path.endswith("/messages") and method == "post":
        _add_headers(ok, REPLAYED)
    for media_type, description in _BINARY.items():
        if ok.content and media_type in ok.content:
            binary = Schema(
                type=OpenAPIType.STRING,
                format="binary",  # type: ignore[arg-type]
                content_media_type=media_type,
                description=description,
            )
            ok.content = {
                media_type: OpenAPIMediaType(schema=binary),
                "application/octet-stream": OpenAPIMediaType(schema=binary),
            }
            break


def complete(openapi: OpenAPI, *, metrics_public: bool) -> OpenAPI:
    """Add the problem responses and public endpoints to Litestar's document, in place."""
    public = PUBLIC_PATHS | ({"/metrics"} if metrics_public else set())
    components = openapi.components
    if isinstance(components, list):  # pragma: no cover - Litestar gives one Components
        components = components[0]
    if components is None:
        components = openapi.components = Components()
    schemas = dict(components.schemas or {})
    schemas["Problem"] = PROBLEM_SCHEMA
    for name in _strict_struct_names() & schemas.keys():
        schemas[name].additional_properties = False
    if "Media" in schemas:
        schemas["Media"].one_of = MEDIA_ONE_OF
        schemas["Media"].description = "exactly one of `url` (http or https) and `base64`"
    for name, schema in event_components().items():
        known = schemas.setdefault(name, schema)
        # a name both use is one type (SessionState, GroupInfo): anything else is a clash
        same = set(known.enum or ()) == set(schema.enum or ()) and set(
            known.properties or {}
        ) == set(schema.properties or {})
        if known is not schema and not same:
            raise RuntimeError(f"event schema {name} clashes with the API's schema of that name")
    components.schemas = schemas
    openapi.webhooks = webhooks()
    for path, item in (openapi.paths or {}).items():
        for method in ("get", "put", "post", "delete", "patch"):
            operation = getattr(item, method, None)
            if operation is None:
                continue
            responses = dict(operation.responses or {})
            responses["400"] = BAD_REQUEST
            responses["4XX"] = CLIENT_ERRORS
            if path.startswith(_NODE_PATH_PREFIXES):
                responses["502"] = ENGINE_ERROR
                responses["503"] = UNAVAILABLE
            if path in public or path.startswith(PUBLIC_PREFIXES):
                operation.security = []
                if path == "/monitoring/ready":
                    responses["503"] = OpenAPIResponse(
                        description="Not ready: NATS or Valkey unreachable (body says which)",
                        content=responses["200"].content if "200" in responses else None,
                    )
            operation.responses = responses
            _complete_operation(path, method, operation)
    return openapi

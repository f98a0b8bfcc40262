"""The OpenAPI document tells the whole truth: what Litestar generates, completed with what
it cannot know (tests/reliability/test_schemathesis.py holds the API to it).

- Every error is RFC 9457 ``application/problem+json`` (:mod:`control_plane.problems`):
  each operation documents ``4XX`` as a problem document (and ``400`` too, which Litestar
  describes with its own validation body), plus ``502`` (the WhatsApp engine failed) and
  ``503`` (no node can serve it now; ``Retry-After``) where a node is involved.
- Endpoints that need no key (health, readiness, Prometheus) say so (``security: []``).
"""

from __future__ import annotations

from litestar.openapi.spec import (
    Components,
    OpenAPI,
    OpenAPIMediaType,
    OpenAPIResponse,
    OpenAPIType,
    Reference,
    Schema,
)

from control_plane.problems import PROBLEM_JSON

PUBLIC_PATHS = frozenset({"/monitoring/health", "/monitoring/ready"})
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
    components.schemas = schemas
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
            if path in public:
                operation.security = []
                if path == "/monitoring/ready":
                    responses["503"] = OpenAPIResponse(
                        description="Not ready: NATS or Valkey unreachable (body says which)",
                        content=responses["200"].content if "200" in responses else None,
                    )
            operation.responses = responses
    return openapi

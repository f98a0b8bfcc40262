"""Evolution API v2 ``webhook/set/{instance}`` and ``webhook/find/{instance}``
(docs/evolution-webhooks.md).

An instance is a session of the caller's tenant; its webhook becomes the session's
webhook in Evolution format (``SessionRecord.webhook_format = "evolution"``), which the
durable dispatcher delivers (control_plane/webhooks/). Authentication is Evolution's
``apikey`` header, as for every route of the facade (``_common.for_instance``): the admin
key acts as Evolution's global key, a tenant key as an instance token of its own
tenant's instances. Errors have Evolution's body (the facade router's handler), not
problem+json: an Evolution client must not notice the difference.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime
from typing import Any

import msgspec
from litestar import Request, Response, get, post
from litestar.handlers import HTTPRouteHandler

from contract.protocol import SessionRecord
from control_plane import sessions
from control_plane.api.webhooks import ensure_safe_url
from control_plane.auth import Principal
from control_plane.evolution._common import EvolutionError, for_instance, read_body
from control_plane.evolution.events import EVOLUTION_EVENTS
from control_plane.services import Services

MAX_HEADERS = 20


class EvolutionWebhook(msgspec.Struct, kw_only=True):
    """A webhook as ``webhook/set`` takes it (either of Evolution's body forms)."""

    enabled: bool
    url: str
    events: list[str]
    by_events: bool = False
    base64: bool = False
    headers: dict[str, str] | None = None


def _flag(body: dict[str, Any], *names: str) -> bool:
    for name in names:
        if name in body:
            value = body[name]
            if not isinstance(value, bool):
                raise EvolutionError(400, [f'"{name}" must be boolean'])
            return value
    return False


_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}$")
_VALUE = re.compile(r"^[\x20-\x7e\x80-\xff]{0,4096}$")  # latin-1, no control characters
# what the HTTP client or zapfleet's own headers decide
_RESERVED = frozenset(
    {"host", "content-length", "content-type", "transfer-encoding", "connection", "upgrade",
     "te", "trailer", "keep-alive", "proxy-connection", "expect", "user-agent"}
)  # fmt: skip


def _bad_header(name: str, value: str) -> str | None:
    if not _TOKEN.match(name):
        return "not a header name"
    lowered = name.lower()
    if lowered in _RESERVED or lowered.startswith(("zapfleet-", "webhook-")):
        return "set by zapfleet"
    if not _VALUE.match(value):
        return "not a header value (control characters, or beyond Latin-1)"
    return None


def parse_webhook(body: Any) -> EvolutionWebhook:
    """Evolution v2's body ``{"webhook": {"enabled", "url", "headers", "byEvents",
    "base64", "events"}}``, or the flat one of v2.0 and the docs (``url``, ``enabled``,
    ``webhook_by_events`` / ``webhookByEvents``, ``webhook_base64`` / ``webhookBase64``,
    ``events``). With ``enabled`` false the events are emptied, with no events every
    event is sent — as Evolution's ``WebhookController.set``."""
    if not isinstance(body, dict):
        raise EvolutionError(400, ["instance is not of a type(s) object"])
    nested = body.get("webhook")
    config: dict[str, Any] = nested if isinstance(nested, dict) else body
    if isinstance(nested, dict):
        by_events = _flag(config, "byEvents", "webhookByEvents", "webhook_by_events")
        base64 = _flag(config, "base64", "webhookBase64", "webhook_base64")
    else:
        by_events = _flag(config, "webhook_by_events", "webhookByEvents", "byEvents")
        base64 = _flag(config, "webhook_base64", "webhookBase64", "base64")
    if "url" not in config:
        raise EvolutionError(400, ['instance requires property "url"'])
    url = config["url"]
    if not isinstance(url, str) or not url.strip():
        raise EvolutionError(400, ['The "url" cannot be empty'])
    if len(url) > 500:  # Evolution's column: VarChar(500)
        raise EvolutionError(400, ['"url" is longer than 500 characters'])
    enabled = config.get("enabled", True if not isinstance(nested, dict) else None)
    if not isinstance(enabled, bool):
        raise EvolutionError(400, ['instance requires property "enabled" (boolean)'])
    events = config.get("events") or []
    if not isinstance(events, list) or not all(isinstance(e, str) for e in events):
        raise EvolutionError(400, ['"events" must be an array of event names'])
    unknown = [e for e in events if e not in EVOLUTION_EVENTS]
    if unknown:
        raise EvolutionError(
            400,
            [
                f'"events" has {e!r}: it is not one of {", ".join(EVOLUTION_EVENTS)}'
                for e in unknown
            ],
        )
    headers = config.get("headers")
    if headers is not None:
        if not isinstance(headers, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
        ):
            raise EvolutionError(400, ['"headers" must be an object of strings'])
        if len(headers) > MAX_HEADERS:
            raise EvolutionError(400, [f'"headers" has more than {MAX_HEADERS} entries'])
        if "jwt_key" in headers:
            raise EvolutionError(
                400, ['"headers.jwt_key" (a JWT per request) is not supported by zapfleet']
            )
        for name, value in headers.items():
            if why := _bad_header(name, value):
                raise EvolutionError(400, [f'"headers.{name}": {why}'])
    if not enabled:
        events = []
    elif not events:
        events = [e for e in EVOLUTION_EVENTS if e != "GROUPS_UPDATE"]
    return EvolutionWebhook(
        enabled=enabled,
        url=url.strip(),
        events=list(dict.fromkeys(events)),
        by_events=by_events,
        base64=base64,
        headers=dict(headers) if headers else None,
    )


def _iso(ts: float) -> str:
    moment = datetime.fromtimestamp(ts or time.time(), UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def webhook_view(record: SessionRecord) -> dict[str, Any] | None:
    """The instance's webhook as Evolution's ``Webhook`` record (None: it has none)."""
    if record.webhook_format != "evolution" or not record.webhook_url:
        return None
    key = record.spec.key
    return {
        "id": f"wh_{key}",
        "url": record.webhook_url,
        "headers": record.webhook_headers,
        "enabled": record.webhook_enabled,
        "events": list(record.webhook_events or []),
        "webhookByEvents": record.webhook_by_events,
        "webhookBase64": record.webhook_base64,
        "createdAt": _iso(record.created_at),
        "updatedAt": _iso(record.updated_at),
        "instanceId": key,
    }


# -- the service ---------------------------------------------------------------------------


async def ensure_deliverable(services: Services, config: EvolutionWebhook) -> None:
    """An enabled webhook's URL must pass the SSRF guard. A disabled one sends nothing, so
    its URL is only stored: Evolution's ``isURL(url, {require_tld: false})`` takes any
    host name, and the n8n node turns a webhook off with its placeholder URL ``vazio``
    (webhook.controller.ts ``set``; docs/evolution.md)."""
    if config.enabled:
        await ensure_safe_url(services, config.url)


async def set_webhook(
    services: Services, principal: Principal, instance: str, config: EvolutionWebhook
) -> dict[str, Any]:
    """Make ``config`` the webhook of the caller's session ``instance``, in Evolution
    format; it applies to the next event (the dispatcher follows the record)."""
    loaded = await sessions.load_record(services, principal, instance)
    await ensure_deliverable(services, config)

    def change(current: SessionRecord) -> None:
        current.webhook_url = config.url
        current.webhook_events = config.events
        current.webhook_format = "evolution"
        current.webhook_by_events = config.by_events
        current.webhook_base64 = config.base64
        current.webhook_headers = config.headers
        current.webhook_enabled = config.enabled

    record = await sessions.update_record(services, loaded, change)
    view = webhook_view(record)
    assert view is not None
    return view


async def find_webhook(
    services: Services, principal: Principal, instance: str
) -> dict[str, Any] | None:
    return webhook_view(await sessions.load_record(services, principal, instance))


# -- the routes ----------------------------------------------------------------------------


@post(
    "/webhook/set/{instance:str}",
    status_code=201,
    include_in_schema=False,
    summary="Evolution API: set an instance's webhook",
)
async def set_webhook_route(
    request: Request[Any, Any, Any], services: Services, instance: str
) -> dict[str, Any]:
    principal = await for_instance(request, services, instance)
    return await set_webhook(services, principal, instance, parse_webhook(await read_body(request)))


@get(
    "/webhook/find/{instance:str}",
    include_in_schema=False,
    summary="Evolution API: an instance's webhook",
)
async def find_webhook_route(
    request: Request[Any, Any, Any], services: Services, instance: str
) -> Response[Any]:
    principal = await for_instance(request, services, instance)
    found = await find_webhook(services, principal, instance)
    if found is None:  # Express' res.json(null)
        return Response(b"null", media_type="application/json")
    return Response(found)


ROUTES: list[HTTPRouteHandler] = [set_webhook_route, find_webhook_route]

__all__ = [
    "ROUTES",
    "EvolutionWebhook",
    "find_webhook",
    "parse_webhook",
    "set_webhook",
    "webhook_view",
]

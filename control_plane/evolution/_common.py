"""What every controller of the Evolution facade shares: Evolution's error bodies, the
``apikey`` header, instance names, JIDs, body decoding (JSON or multipart form) and the
Baileys-like answer of a send. Nothing here reimplements a service: errors the services
raise (``ProblemError``) are only re-shaped as Evolution shapes them.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
import time
from http import HTTPStatus
from typing import Any, TypeVar

import msgspec
from litestar import Request, Response
from litestar.datastructures import UploadFile
from litestar.exceptions import HTTPException, ValidationException

from contract.chat_ids import ChatIdError, normalize_chat
from control_plane.keyring import TENANT_HEADER, Principal
from control_plane.problems import ProblemError
from control_plane.services import Services
from control_plane.tenants import TenantExists, TenantRecord

log = logging.getLogger(__name__)
T = TypeVar("T")

# Evolution's instance names become zapfleet session names: the same characters
INSTANCE_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
# instances created with the admin (global) key each get their own tenant (docs/evolution.md)
INSTANCE_TENANT_PREFIX = "evo-"
INTEGRATION = "WHATSAPP-BAILEYS"

# zapfleet statuses Evolution answers as 400 Bad Request (it has no 409/422)
_AS_BAD_REQUEST = {409, 422}


class EvolutionError(HTTPException):
    """An error answered in Evolution's shape:
    ``{"status": 404, "error": "Not Found", "response": {"message": ["..."]}}``."""

    def __init__(
        self,
        status: int,
        message: str | list[str],
        *,
        headers: dict[str, str] | None = None,
    ) -> None:
        detail = message if isinstance(message, str) else "; ".join(message)
        super().__init__(detail=detail, status_code=status, headers=headers)
        self.message = message


def error_body(status: int, message: str | list[str]) -> dict[str, Any]:
    return {
        "status": status,
        "error": HTTPStatus(status).phrase,
        "response": {"message": message},
    }


def evolution_error_response(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    """The exception handler of the facade's router: every error in Evolution's shape."""
    headers: dict[str, str] | None = None
    if isinstance(exc, EvolutionError):
        status, message, headers = exc.status_code, exc.message, exc.headers
    elif isinstance(exc, ProblemError):
        status = 400 if exc.status_code in _AS_BAD_REQUEST else exc.status_code
        message = [exc.detail]
        headers = exc.headers
        instance = request.path_params.get("instance")
        if exc.code == "session_not_found" and instance is not None:
            message = [f'The "{instance}" instance does not exist']
    elif isinstance(exc, ValidationException):
        extra = exc.extra if isinstance(exc.extra, list) else []
        found = [str(e.get("message", e)) for e in extra if isinstance(e, dict)]
        status, message = 400, found or [exc.detail]
    elif isinstance(exc, HTTPException):
        status, message, headers = exc.status_code, [exc.detail], exc.headers
    else:
        log.error(
            "unhandled error in the Evolution facade",
            exc_info=(type(exc), exc, exc.__traceback__),
            extra={"path": request.url.path},
        )
        status, message = 500, ["internal error"]
    return Response(error_body(status, message), status_code=status, headers=headers)


def unauthorized() -> EvolutionError:
    # Evolution's UnauthorizedException: the message is a plain string
    return EvolutionError(401, "Unauthorized")


def bad_request(*messages: str) -> EvolutionError:
    return EvolutionError(400, list(messages))


def no_instance(instance: str) -> EvolutionError:
    return EvolutionError(404, [f'The "{instance}" instance does not exist'])


# -- who is calling ----------------------------------------------------------------------------


async def caller(request: Request[Any, Any, Any], services: Services) -> Principal:
    """The ``apikey`` header: the admin key is Evolution's global key, a tenant key an
    instance token. 401 in Evolution's shape otherwise; then the caller's rate limit."""
    key = request.headers.get("apikey")
    if not key or not key.strip():
        raise unauthorized()
    try:
        principal = await services.auth.verify(key.strip(), request.headers.get(TENANT_HEADER))
    except ProblemError as exc:
        if exc.status_code in (401, 403):
            raise unauthorized() from None
        raise
    if services.limiter.enabled:
        await services.limiter.check(request, principal.key_id)
    return principal


def instance_tenant(instance: str) -> str:
    """The tenant of an instance the global key creates: one per instance, so its token
    (a key of that tenant) sees that instance only. Derived from the name, so the global
    key finds it without a lookup table."""
    slug = re.sub(r"[^a-z0-9_-]", "-", instance.lower())[:40]
    digest = hashlib.sha256(instance.encode()).hexdigest()[:8]
    return f"{INSTANCE_TENANT_PREFIX}{slug}-{digest}"


def check_name(instance: str) -> str:
    if not INSTANCE_NAME.match(instance):
        raise bad_request(
            f'instanceName "{instance}": use 1-64 letters, digits, "_" or "-" '
            "(it becomes a zapfleet session name)"
        )
    return instance


async def for_instance(
    request: Request[Any, Any, Any], services: Services, instance: str
) -> Principal:
    """The principal that acts on ``instance``: a tenant key acts in its own tenant; the
    global key in the instance's own tenant (or in the tenant ``X-Tenant-Id`` names)."""
    principal = await caller(request, services)
    check_name(instance)
    if principal.is_admin and request.headers.get(TENANT_HEADER) is None:
        return Principal(tenant=instance_tenant(instance), is_admin=True)
    return principal


async def ensure_tenant(services: Services, tenant: str, instance: str) -> None:
    if await services.tenants.get_tenant(tenant) is not None:
        return
    record = TenantRecord(
        tenant_id=tenant, name=f"Evolution instance {instance}", created_at=time.time()
    )
    with contextlib.suppress(TenantExists):  # created meanwhile: as good
        await services.tenants.create_tenant(record)


# -- chats and JIDs ----------------------------------------------------------------------------


def chat_of(raw: str) -> str:
    """zapfleet's chat id of an Evolution ``number``/``remoteJid`` (a phone with or without
    ``@s.whatsapp.net``, a group ``…@g.us``, a LID ``…@lid``); 400 when it is none."""
    try:
        return normalize_chat(raw)
    except ChatIdError as exc:
        raise bad_request(exc.message) from None


def jid(chat: str | None) -> str | None:
    """Baileys' JID of a zapfleet chat id: phones get ``@s.whatsapp.net``."""
    if chat is None:
        return None
    return chat if "@" in chat else f"{chat}@s.whatsapp.net"


# -- bodies ------------------------------------------------------------------------------------


def convert(raw: Any, kind: type[T]) -> T:
    """``raw`` as ``kind`` (msgspec rules), or 400 naming what is wrong."""
    try:
        return msgspec.convert(raw, kind, strict=False)
    except msgspec.ValidationError as exc:
        raise bad_request(str(exc)) from None


async def read_body(request: Request[Any, Any, Any]) -> dict[str, Any]:
    """A JSON object, or the fields of a multipart/urlencoded form (what Evolution's media
    routes take: the file in ``file``, returned as bytes)."""
    content_type = (request.headers.get("content-type") or "").lower()
    if content_type.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
        form = await request.form()
        fields: dict[str, Any] = {}
        for name, value in form.multi_items():
            if isinstance(value, UploadFile):
                fields[name] = (await value.read(), value.filename, value.content_type)
            else:
                fields[name] = value
        return fields
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        decoded = msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        raise bad_request(f"the request body is malformed JSON: {exc}") from None
    if not isinstance(decoded, dict):
        raise bad_request("the request body must be a JSON object")
    return decoded


def now_s() -> str:
    """Baileys' messageTimestamp: Unix seconds as a string."""
    return str(int(time.time()))


def sent_answer(
    chat: str, message_id: str, message: dict[str, Any], *, status: str = "PENDING"
) -> dict[str, Any]:
    """Evolution's answer to a send (Baileys' WAMessage): ``key.id`` is zapfleet's
    message id (docs/evolution.md, "Message ids")."""
    return {
        "key": {"remoteJid": jid(chat), "fromMe": True, "id": message_id},
        "message": message,
        "messageTimestamp": now_s(),
        "status": status,
    }

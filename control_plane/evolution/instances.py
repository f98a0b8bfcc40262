"""Evolution's instance controller (``/instance/...``) and settings (``/settings/...``)
on zapfleet's sessions: an instance is a session of the same name (docs/evolution.md).

Every route calls the session service (control_plane/sessions.py) or the contacts
service for call settings (control_plane/contacts.py); nothing here runs a session.
"""

from __future__ import annotations

import asyncio
import base64
import io
import time
from datetime import UTC, datetime
from typing import Any

import msgspec
import segno
from litestar import Request, delete, get, post, put

from contract.protocol import Op, SessionState
from control_plane import contacts, session_listing, sessions
from control_plane.contacts import CallSettingsBody
from control_plane.evolution import webhook
from control_plane.evolution._common import (
    INSTANCE_TENANT_PREFIX,
    INTEGRATION,
    EvolutionError,
    bad_request,
    caller,
    check_name,
    convert,
    ensure_tenant,
    for_instance,
    instance_tenant,
    jid,
    no_instance,
    read_body,
)
from control_plane.keyring import TENANT_HEADER, Principal
from control_plane.models import CreateSession, SessionView
from control_plane.problems import ProblemError
from control_plane.services import Services
from control_plane.tenants import new_key

# the instance settings zapfleet has (the rest is reported as not applied)
APPLIED_SETTINGS = ("rejectCall", "msgCall")
OTHER_SETTINGS = (
    "groupsIgnore",
    "alwaysOnline",
    "readMessages",
    "readStatus",
    "syncFullHistory",
)
_PAIRING = {SessionState.STARTING, SessionState.PAIRING}
_QR_WAIT_S = 5.0  # Evolution's create waits 5 s for the first QR code


class WebhookBody(msgspec.Struct, kw_only=True, rename="camel"):
    url: str | None = None
    by_events: bool = False
    base64: bool = False
    enabled: bool = True
    events: list[str] | None = None
    headers: dict[str, str] | None = None


class SettingsBody(msgspec.Struct, kw_only=True, rename="camel"):
    reject_call: bool | None = None
    msg_call: str | None = None
    groups_ignore: bool | None = None
    always_online: bool | None = None
    read_messages: bool | None = None
    read_status: bool | None = None
    sync_full_history: bool | None = None


class CreateBody(SettingsBody, kw_only=True, rename="camel"):
    instance_name: str
    token: str | None = None
    number: str | None = None
    qrcode: bool = False
    integration: str | None = None
    # v2: an object; v1 clients: the URL itself, with webhook_by_events and events beside
    webhook: WebhookBody | str | None = None
    events: list[str] | None = None


def state_of(state: SessionState) -> str:
    """Evolution's connection state of a zapfleet session state."""
    if state is SessionState.CONNECTED:
        return "open"
    if state in (SessionState.STARTING, SessionState.PAIRING, SessionState.RECONNECTING):
        return "connecting"
    return "close"


def iso(ts: float | None) -> str | None:
    if not ts:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def qr_png(code: str) -> str:
    buffer = io.BytesIO()
    segno.make(code, error="l").save(buffer, kind="png", scale=6, border=4)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


async def load_view(services: Services, principal: Principal, instance: str) -> SessionView:
    """The instance's session and live state, or Evolution's 404."""
    try:
        return await sessions.read_session(services, principal, instance)
    except ProblemError as exc:
        if exc.status_code == 404:
            raise no_instance(instance) from None
        raise


async def connection_state(services: Services, principal: Principal, instance: str) -> str:
    return state_of((await load_view(services, principal, instance)).state)


def state_answer(instance: str, state: str) -> dict[str, Any]:
    return {"instance": {"instanceName": instance, "state": state}}


def instance_webhook(body: CreateBody) -> webhook.EvolutionWebhook | None:
    """The webhook of an instance create, checked as ``webhook/set`` checks it (Evolution
    format, its event names and rules) before anything is created: a refused webhook
    leaves no instance behind."""
    raw = body.webhook
    if isinstance(raw, str):  # v2.0's flat form: "webhook": "<url>", "events": [...]
        raw = WebhookBody(url=raw, events=body.events)
    if raw is None or not raw.url:
        return None
    fields = {k: v for k, v in msgspec.to_builtins(raw).items() if v is not None}
    return webhook.parse_webhook({"webhook": fields})


async def pairing(
    services: Services, principal: Principal, instance: str, number: str | None, wait_s: float
) -> dict[str, Any]:
    """Evolution's QR answer: ``pairingCode`` (for ``number``), ``code`` and ``base64`` (a
    PNG data URL), ``count``. Waits up to ``wait_s`` for the session to be pairing."""
    deadline = time.monotonic() + wait_s
    answer: dict[str, Any] = {"pairingCode": None, "code": None, "base64": None, "count": 0}
    while True:
        view = await load_view(services, principal, instance)
        if view.state is SessionState.PAIRING or time.monotonic() >= deadline:
            break
        if view.state not in _PAIRING:
            return answer
        await asyncio.sleep(0.1)
    if view.state is not SessionState.PAIRING:
        return answer
    if number:
        answer["pairingCode"] = (
            await sessions.pair_code(services, principal, instance, number)
        ).code
    qr = await sessions.pairing_qr(services, principal, instance)
    if qr is not None:
        answer.update(code=qr.code, base64=qr_png(qr.code), count=1)
    return answer


def settings_answer(call: contacts.CallSettingsView) -> dict[str, Any]:
    answer: dict[str, Any] = {"rejectCall": call.reject, "msgCall": call.reply_text or ""}
    answer.update(dict.fromkeys(OTHER_SETTINGS, False))
    return answer


def not_applied(body: SettingsBody) -> list[str]:
    """The settings asked for that zapfleet does not have (reported, not stored)."""
    asked = msgspec.structs.asdict(body)
    names = dict(
        zip(SettingsBody.__struct_fields__, SettingsBody.__struct_encode_fields__, strict=True)
    )
    return [names[f] for f, v in asked.items() if names.get(f) in OTHER_SETTINGS and v]


async def apply_settings(
    services: Services, principal: Principal, instance: str, body: SettingsBody
) -> dict[str, Any]:
    current = await contacts.get_call_settings(services, principal, instance)
    if body.reject_call is not None or body.msg_call is not None:
        reject = current.reject if body.reject_call is None else body.reject_call
        reply = current.reply_text if body.msg_call is None else (body.msg_call or None)
        current = await contacts.put_call_settings(
            services,
            principal,
            instance,
            convert({"reject": reject, "reply_text": reply}, CallSettingsBody),
        )
    return settings_answer(current)


# -- routes ------------------------------------------------------------------------------------


@post("/instance/create")
async def create_instance(request: Request[Any, Any, Any], services: Services) -> dict[str, Any]:
    """The global key creates the instance in a tenant of its own and answers a new key
    of that tenant as ``hash``; a tenant key creates it in its own tenant (``hash``: that
    key). docs/evolution.md, "Keys and tenants"."""
    principal = await caller(request, services)
    body = convert(await read_body(request), CreateBody)
    name = check_name(body.instance_name)
    if body.integration and body.integration != INTEGRATION:
        raise bad_request(f"integration {body.integration!r} is not supported: {INTEGRATION}")
    own_tenant = principal.is_admin and request.headers.get(TENANT_HEADER) is None
    if own_tenant:
        principal = Principal(tenant=instance_tenant(name), is_admin=True)
        await ensure_tenant(services, principal.tenant, name)
    if services.index.find(principal.tenant, name) is not None:
        raise EvolutionError(403, [f'This name "{name}" is already in use.'])
    hook = instance_webhook(body)
    if hook is not None:
        await webhook.ensure_deliverable(services, hook)
    try:
        await sessions.create_session(
            services, principal, CreateSession(session_id=name, start=True)
        )
    except ProblemError as exc:
        if exc.status_code == 409:
            raise EvolutionError(403, [f'This name "{name}" is already in use.']) from None
        raise
    if hook is not None:
        await webhook.set_webhook(services, principal, name, hook)
    settings = await apply_settings(services, principal, name, body)
    if own_tenant:
        token, key_record = new_key(principal.tenant, f"Evolution instance {name}")
        await services.tenants.put_key(key_record)
    else:
        token = (request.headers.get("apikey") or "").strip()
    record = services.index.find(principal.tenant, name)
    answer: dict[str, Any] = {
        "instance": {
            "instanceName": name,
            "instanceId": record.spec.key if record else None,
            "integration": INTEGRATION,
            "webhookWaBusiness": None,
            "accessTokenWaBusiness": "",
            "status": "created",
        },
        "hash": token,
        "webhook": {
            "webhookUrl": hook.url if hook else None,
            "webhookByEvents": hook.by_events if hook else False,
            "webhookBase64": hook.base64 if hook else False,
        },
        "websocket": {"enabled": False},
        "rabbitmq": {"enabled": False},
        "sqs": {"enabled": False},
        "settings": settings,
    }
    ignored = not_applied(body)
    if ignored:
        answer["settingsNotApplied"] = ignored
    if body.qrcode or body.number:
        answer["qrcode"] = await pairing(services, principal, name, body.number, _QR_WAIT_S)
    return answer


@get("/instance/connect/{instance:str}")
async def connect(
    request: Request[Any, Any, Any], services: Services, instance: str, number: str | None = None
) -> dict[str, Any]:
    principal = await for_instance(request, services, instance)
    view = await load_view(services, principal, instance)
    if view.state is SessionState.CONNECTED:
        return state_answer(instance, "open")
    if view.desired == "stopped" or view.state not in _PAIRING:
        await sessions.start_session(services, principal, instance)
    return await pairing(services, principal, instance, number, 3.0)


@get("/instance/connectionState/{instance:str}")
async def connection(
    request: Request[Any, Any, Any], services: Services, instance: str
) -> dict[str, Any]:
    principal = await for_instance(request, services, instance)
    return state_answer(instance, await connection_state(services, principal, instance))


async def _restart(
    request: Request[Any, Any, Any], services: Services, instance: str
) -> dict[str, Any]:
    principal = await for_instance(request, services, instance)
    if await connection_state(services, principal, instance) == "close":
        raise bad_request(f'The "{instance}" instance is not connected')
    view = await sessions.running_op(services, principal, instance, Op.SESSION_RESTART)
    return state_answer(instance, state_of(view.state))


@post("/instance/restart/{instance:str}")
async def restart_post(
    request: Request[Any, Any, Any], services: Services, instance: str
) -> dict[str, Any]:
    return await _restart(request, services, instance)


@put("/instance/restart/{instance:str}")
async def restart_put(
    request: Request[Any, Any, Any], services: Services, instance: str
) -> dict[str, Any]:
    return await _restart(request, services, instance)


@delete("/instance/logout/{instance:str}", status_code=200)
async def logout(
    request: Request[Any, Any, Any], services: Services, instance: str
) -> dict[str, Any]:
    principal = await for_instance(request, services, instance)
    if await connection_state(services, principal, instance) == "close":
        raise bad_request(f'The "{instance}" instance is not connected')
    await sessions.logout_session(services, principal, instance)
    return {"status": "SUCCESS", "error": False, "response": {"message": "Instance logged out"}}


@delete("/instance/delete/{instance:str}", status_code=200)
async def delete_instance(
    request: Request[Any, Any, Any], services: Services, instance: str
) -> dict[str, Any]:
    """As Evolution: a connected instance is logged out first (DELETE instance/logout);
    a tenant the global key made for the instance goes with its last instance, its keys
    revoked."""
    principal = await for_instance(request, services, instance)
    if await connection_state(services, principal, instance) == "open":
        raise bad_request(f'The "{instance}" instance needs to be disconnected')
    await sessions.delete_session(services, principal, instance)
    tenant = principal.tenant
    if tenant.startswith(INSTANCE_TENANT_PREFIX) and not services.index.names(tenant):
        now = time.time()
        for key in await services.tenants.list_keys(tenant):
            if key.revoked_at is None:
                key.revoked_at = now
                await services.tenants.put_key(key)
        await services.tenants.delete_tenant(tenant)
        services.auth.forget(tenant=tenant)
    return {"status": "SUCCESS", "error": False, "response": {"message": "Instance deleted"}}


def instance_info(services: Services, view: SessionView) -> dict[str, Any]:
    record = services.index.find(view.tenant, view.session_id)
    calls = record.spec.calls if record else None
    return {
        "id": record.spec.key if record else None,
        "name": view.session_id,
        "connectionStatus": state_of(view.state),
        "ownerJid": jid(view.phone),
        "profileName": None,
        "profilePicUrl": None,
        "integration": INTEGRATION,
        "number": view.phone,
        "businessId": None,
        "token": None,  # zapfleet stores keys hashed: the token is shown once, at create
        "clientName": "zapfleet",
        "disconnectionReasonCode": None,
        "disconnectionObject": view.reason if view.state is not SessionState.CONNECTED else None,
        "disconnectionAt": None,
        "createdAt": iso(view.created_at),
        "updatedAt": iso(record.updated_at if record else None),
        "Setting": {
            "rejectCall": calls.reject if calls else False,
            "msgCall": (calls.reply_text or "") if calls else "",
            **dict.fromkeys(OTHER_SETTINGS, False),
        },
        "_count": {"Message": 0, "Contact": 0, "Chat": 0},
    }


@get("/instance/fetchInstances")
async def fetch_instances(
    request: Request[Any, Any, Any],
    services: Services,
    instance_name: str | None = None,
    instance_id: str | None = None,
) -> list[dict[str, Any]]:
    """A tenant key: its tenant's instances. The global key: every instance it created
    (tenants ``evo-…``), or those of the tenant ``X-Tenant-Id`` names."""
    principal = await caller(request, services)
    wanted = request.query_params.get("instanceName", instance_name)
    wanted_id = request.query_params.get("instanceId", instance_id)
    if principal.is_admin and request.headers.get(TENANT_HEADER) is None:
        tenants = [
            t.tenant_id
            for t in await services.tenants.list_tenants()
            if t.tenant_id.startswith(INSTANCE_TENANT_PREFIX)
        ]
    else:
        tenants = [principal.tenant]
    found: list[dict[str, Any]] = []
    for tenant in tenants:
        acting = Principal(tenant=tenant, is_admin=principal.is_admin, key_id=principal.key_id)
        listed = await session_listing.list_sessions(services, acting, 1000, 0, None)
        for view in listed.sessions:
            if wanted is not None and view.session_id != wanted:
                continue
            info = instance_info(services, view)
            if wanted_id is not None and info["id"] != wanted_id:
                continue
            found.append(info)
    if (wanted is not None or wanted_id is not None) and not found:
        raise no_instance(wanted or wanted_id or "")
    return found


@post("/instance/setPresence/{instance:str}")
async def set_presence(
    request: Request[Any, Any, Any], services: Services, instance: str
) -> dict[str, Any]:
    """The account's own presence (available/unavailable): zapfleet has no such
    operation (chat presence is chat/sendPresence)."""
    principal = await for_instance(request, services, instance)
    await load_view(services, principal, instance)
    raise EvolutionError(
        501,
        [
            "POST /instance/setPresence is not supported by zapfleet's Evolution facade: "
            "use POST /chat/sendPresence for a chat (docs/evolution.md)"
        ],
    )


@post("/settings/set/{instance:str}")
async def settings_set(
    request: Request[Any, Any, Any], services: Services, instance: str
) -> dict[str, Any]:
    principal = await for_instance(request, services, instance)
    body = convert(await read_body(request), SettingsBody)
    await load_view(services, principal, instance)
    settings = await apply_settings(services, principal, instance, body)
    answer: dict[str, Any] = {"settings": {"instanceName": instance, "settings": settings}}
    ignored = not_applied(body)
    if ignored:
        answer["settingsNotApplied"] = ignored
    return answer


@get("/settings/find/{instance:str}")
async def settings_find(
    request: Request[Any, Any, Any], services: Services, instance: str
) -> dict[str, Any]:
    principal = await for_instance(request, services, instance)
    await load_view(services, principal, instance)
    return settings_answer(await contacts.get_call_settings(services, principal, instance))


ROUTES = [
    create_instance,
    connect,
    connection,
    restart_post,
    restart_put,
    logout,
    delete_instance,
    fetch_instances,
    set_presence,
    settings_set,
    settings_find,
]

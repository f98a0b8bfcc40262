"""The session service: what REST (control_plane/api/sessions.py), the NATS commands
(control_plane/commands.py) and the web UI (control_plane/ui/routes.py) do with a
session, whoever asks. Controllers map HTTP (routes, parameters, rate classes, headers,
images) to these functions; nothing here imports a controller.

Every function takes the process's ``Services`` and, where a caller names a session, the
authenticated ``Principal``: a session is found by (tenant, name) only (``load_record``),
and everything below this module is keyed by the session's internal key
(``SessionSpec.key``). Errors are ``ProblemError`` (RFC 9457), the same for every caller.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from typing import Any, TypeVar

import msgspec
from nats.js.errors import KeyNotFoundError

from contract.protocol import (
    Assignment,
    ConfigureSession,
    DestroySession,
    Empty,
    ErrorCode,
    Op,
    PacingSettings,
    PairCode,
    PairCodeRequest,
    QrCode,
    SessionInfo,
    SessionRecord,
    SessionRef,
    SessionSpec,
    SessionState,
    new_uid,
)
from control_plane.agents import AgentCallError, AgentUnavailable
from control_plane.auth import Principal
from control_plane.caches import cache_id
from control_plane.fleet import NoCapacity, PlacementConflict
from control_plane.models import (
    CreateSession,
    PairCodeView,
    QrView,
    SessionSettings,
    SessionStatus,
    SessionView,
    SettingsPatch,
)
from control_plane.numbers import normalize_recipient
from control_plane.problems import ProblemError
from control_plane.services import Services
from control_plane.store import ConflictError, SessionExists
from control_plane.webhooks.signing import LEGACY, STANDARD

T = TypeVar("T")
log = logging.getLogger(__name__)

_encode = msgspec.json.encode
_LIVE = frozenset(
    {
        SessionState.STARTING,
        SessionState.PAIRING,
        SessionState.CONNECTED,
        SessionState.DISCONNECTED,
        SessionState.RECONNECTING,
    }
)


def not_found(session_id: str) -> ProblemError:
    return ProblemError(404, "session_not_found", f"no session {session_id!r}")


def not_running(session_id: str) -> ProblemError:
    return ProblemError(
        409, "not_running", f"session {session_id!r} is not running (POST .../start)"
    )


def running(record: SessionRecord) -> Assignment:
    """Where the session runs, or 409 when it is not meant to run anywhere."""
    if record.desired != "running" or record.assignment is None:
        raise not_running(record.spec.session_id)
    return record.assignment


def live_assignment(record: SessionRecord) -> Assignment | None:
    return record.assignment if record.desired == "running" else None


async def load_record(services: Services, principal: Principal, session_id: str) -> SessionRecord:
    """The caller's session of that name, or 404. Names are per tenant: another tenant's
    session of the same name is a different session, never found here."""
    record = await services.index.lookup(principal.tenant, session_id)
    if record is None or record.spec.tenant != principal.tenant:
        raise not_found(session_id)
    return record


def agent_problem(exc: AgentCallError | AgentUnavailable) -> ProblemError:
    """The problem of a failed call to the node a session's record names. That node
    answering "no such session" means the session is between nodes (a move, a drain, a
    restart of its agent), not that it does not exist: the record says it does. So 503
    ``session_moving`` with Retry-After, never a 404 a client would take as final (seen
    in the rolling-upgrade test: a send during a drain got 404)."""
    if isinstance(exc, AgentCallError) and exc.code is ErrorCode.SESSION_NOT_FOUND:
        return ProblemError(
            503,
            "session_moving",
            "the session is moving to another node (or its agent restarts): retry shortly",
            headers={"Retry-After": "1"},
        )
    return exc.to_problem()


async def call_agent(
    services: Services, node_id: str, op: Op, request: msgspec.Struct, reply_type: type[T]
) -> T:
    try:
        return await services.agents.call(node_id, op, request, reply_type)
    except (AgentCallError, AgentUnavailable) as exc:
        raise agent_problem(exc) from None


def stopped_reason(record: SessionRecord) -> str | None:
    """Why a session that runs nowhere was stopped (by stop or logout), if it was."""
    return record.stopped_reason if record.desired == "stopped" else None


def view(record: SessionRecord, info: SessionInfo | None) -> SessionView:
    assignment = record.assignment
    state = info.state if info else SessionState.STOPPED
    return SessionView(
        session_id=record.spec.session_id,
        tenant=record.spec.tenant,
        engine=record.spec.engine,
        state=state,
        desired=record.desired,
        node_id=assignment.node_id if assignment else None,
        epoch=assignment.epoch if assignment else None,
        phone=info.phone if info else None,
        reason=info.reason if info else stopped_reason(record),
        since=info.since if info else None,
        queue_depth=info.queue_depth if info else 0,
        webhook_url=record.webhook_url,
        created_at=record.created_at,
    )


def status_of(record: SessionRecord, info: SessionInfo | None) -> SessionStatus:
    assignment = record.assignment
    return SessionStatus(
        session_id=record.spec.session_id,
        state=info.state if info else SessionState.STOPPED,
        desired=record.desired,
        node_id=assignment.node_id if assignment else None,
        epoch=assignment.epoch if assignment else None,
        phone=info.phone if info else None,
        reason=info.reason if info else stopped_reason(record) or "not placed on any node",
        since=info.since if info else None,
        reconnect_attempts=info.reconnect_attempts if info else 0,
        breaker_open_until=info.breaker_open_until if info else None,
    )


async def live_info(services: Services, record: SessionRecord) -> SessionInfo | None:
    assignment = live_assignment(record)
    if assignment is None:
        return None
    try:
        info = await services.agents.call(
            assignment.node_id,
            Op.SESSION_STATUS,
            SessionRef(session_id=record.spec.key),
            SessionInfo,
        )
    except (AgentCallError, AgentUnavailable):
        return None
    services.live.note(info, record.spec.key)  # lists show what was just seen
    return info


async def update_record(services: Services, current: SessionRecord, change: Any) -> SessionRecord:
    try:
        record, revision = await services.sessions.update_with_revision(current.spec.key, change)
    except KeyNotFoundError:
        raise not_found(current.spec.session_id) from None
    except ConflictError as exc:
        raise ProblemError(409, "conflict", str(exc), headers={"Retry-After": "1"}) from None
    services.index.note(record, revision)
    return record


async def place(services: Services, record: SessionRecord) -> SessionInfo:
    """Assign the session to the best node (slot by KV CAS, epoch + 1) and start it there
    (control_plane/fleet.py)."""
    try:
        info = await services.fleet.place(record.spec.key)
        services.live.note(info, record.spec.key)
    except NoCapacity as exc:
        raise ProblemError(503, "no_capacity", str(exc), headers={"Retry-After": "5"}) from None
    except PlacementConflict as exc:
        raise ProblemError(409, "conflict", str(exc), headers={"Retry-After": "1"}) from None
    except KeyNotFoundError:
        raise not_found(record.spec.session_id) from None
    except (AgentCallError, AgentUnavailable) as exc:
        raise exc.to_problem() from None
    finally:
        await services.cache.invalidate_session(cache_id(record))
    return info


STOPPED_BY = {
    Op.SESSION_STOP: "stopped by request",
    Op.SESSION_LOGOUT: "logged out by request: pair again to use it",
}


async def unplace(services: Services, record: SessionRecord, op: Op) -> SessionInfo | None:
    """Record the session as stopped (so no agent resumes it), then stop or log it out
    on its node. A node that no longer runs it, or is gone, is not an error."""
    session_id = record.spec.key
    assignment = live_assignment(record)

    def stop(current: SessionRecord) -> None:
        # the assignment stays: its epoch keeps growing across stops and starts (fencing)
        current.desired = "stopped"
        current.stopped_reason = STOPPED_BY[op]

    await update_record(services, record, stop)
    info = None
    if assignment is not None:
        try:
            info = await services.agents.call(
                assignment.node_id,
                op,
                SessionRef(session_id=session_id, epoch=assignment.epoch),
                SessionInfo,
            )
        except AgentCallError as exc:
            if exc.code not in (ErrorCode.SESSION_NOT_FOUND, ErrorCode.STALE_EPOCH):
                raise exc.to_problem() from None
        except AgentUnavailable:
            pass
        await services.fleet.slots.release(assignment.node_id, [session_id])  # its slot is free
    await services.cache.invalidate_session(cache_id(record))
    return info


async def running_op(
    services: Services, principal: Principal, session_id: str, op: Op
) -> SessionView:
    record = await load_record(services, principal, session_id)
    assignment = running(record)
    info = await call_agent(
        services, assignment.node_id, op, SessionRef(session_id=record.spec.key), SessionInfo
    )
    services.live.note(info, record.spec.key)
    await services.cache.invalidate_session(cache_id(record), qr=False)
    return view(record, info)


async def current_qr(services: Services, principal: Principal, session_id: str) -> bytes:
    """The QR view as JSON bytes, from the cache or the agent."""
    record = await load_record(services, principal, session_id)
    key = record.spec.key
    cached = await services.cache.get_qr(cache_id(record))
    if cached is not None:
        return cached
    assignment = running(record)
    code = await call_agent(
        services,
        assignment.node_id,
        Op.SESSION_QR,
        SessionRef(session_id=key),
        QrCode,
    )
    body = _encode(QrView(session_id=session_id, qr=code.code, expires_at=code.expires_at))
    await services.cache.put_qr(cache_id(record), body, code.expires_at - time.time())
    return body


def engine_nodes(services: Services, engine: str) -> list[str]:
    """Live nodes that run ``engine`` (draining or cordoned ones too)."""
    fleet = services.fleet
    return sorted(
        node_id
        for node_id, state in fleet.view.nodes.items()
        if state.info is not None and state.info.engine == engine and fleet.view.alive(node_id)
    )


async def destroy_device(services: Services, record: SessionRecord) -> None:
    """Delete the device state of a session being deleted, on every live node of its
    engine (a moved session left files where it ran; shared stores go with the first).
    A session never placed has none. 503 when no node could do it: the record stays,
    so the delete can be retried rather than leave a linked device nobody can reach."""
    if record.assignment is None:
        return
    nodes = engine_nodes(services, record.spec.engine)
    request = DestroySession(spec=record.spec)

    async def one(node_id: str) -> bool:
        try:
            await services.agents.call(node_id, Op.SESSION_DESTROY, request, Empty)
        except (AgentCallError, AgentUnavailable):
            return False
        return True

    if not any(await asyncio.gather(*(one(n) for n in nodes))):
        raise ProblemError(
            503,
            "unavailable",
            f"no node of the {record.spec.engine} engine could unlink the device of "
            f"session {record.spec.session_id!r}; the session is kept, retry the delete",
            headers={"Retry-After": "5"},
        )


async def remove_session(services: Services, record: SessionRecord) -> None:
    """Unlink the device, delete its state everywhere, then the record and its name."""
    key = record.spec.key
    await unplace(services, record, Op.SESSION_LOGOUT)
    await destroy_device(services, record)
    current = await services.sessions.get(key)
    await services.sessions.delete(key)
    services.index.forget(key, (current[1] + 1) if current else 0)
    await services.live.forget(key)
    await services.sessions.release_name(record)
    await services.cache.invalidate_session(cache_id(record))


def settings_of(record: SessionRecord) -> SessionSettings:
    return SessionSettings(
        session_id=record.spec.session_id,
        device_name=record.spec.device_name,
        proxy=record.spec.proxy,
        pacing=record.spec.pacing,
        webhook_url=record.webhook_url,
        webhook_events=record.webhook_events,
        webhook_scheme=record.webhook_scheme or LEGACY,
    )


async def create_session(
    services: Services, principal: Principal, data: CreateSession
) -> SessionView:
    """Create the caller's session (its name unique per tenant) and place it unless
    ``start`` is false. Atomic: a session that could not be placed is not stored either.
    The caller has checked the webhook settings (control_plane/api/webhooks.py)."""
    session_id = data.session_id or "s_" + secrets.token_hex(8)
    spec = SessionSpec(
        session_id=session_id,
        tenant=principal.tenant,
        uid=new_uid(),
        engine=data.engine or services.settings.default_engine,
        device_name=data.device_name,
        proxy=data.proxy,
        pacing=data.pacing or PacingSettings(),
    )
    record = SessionRecord(
        spec=spec,
        desired="running" if data.start else "stopped",
        webhook_url=data.webhook_url,
        webhook_events=data.webhook_events,
        node_labels=data.node_labels,
        webhook_secret=data.webhook_secret,
        webhook_scheme=data.webhook_scheme or STANDARD,
    )
    exists = ProblemError(409, "session_exists", f"a session {session_id!r} already exists")
    try:
        await services.sessions.claim_name(record)  # unique per tenant
    except SessionExists:
        raise exists from None
    except ConflictError as exc:
        raise ProblemError(409, "conflict", str(exc), headers={"Retry-After": "1"}) from None
    try:
        revision = await services.sessions.create(record)
    except BaseException:
        await services.sessions.release_name(record)
        raise
    services.index.note(record, revision)
    if not data.start:
        return view(record, None)
    try:
        info = await place(services, record)
    except BaseException:
        # atomic: a session that could not be placed is not stored either
        await undo_create(services, record)
        raise
    placed = await load_record(services, principal, session_id)
    return view(placed, info)


async def undo_create(services: Services, record: SessionRecord) -> None:
    current = await services.sessions.get(record.spec.key)
    try:
        if current is not None and current[0].assignment is not None:
            # placed, but its start failed: it may run there; unlink it like a delete
            await remove_session(services, current[0])
            return
    except Exception:
        log.exception("undoing a failed create", extra={"session_id": record.spec.key})
    await services.sessions.delete(record.spec.key)
    services.index.forget(record.spec.key, (current[1] + 1) if current else 0)
    await services.sessions.release_name(record)
    await services.cache.invalidate_session(cache_id(record))


async def read_session(services: Services, principal: Principal, session_id: str) -> SessionView:
    """A session and its live state (REST ``GET``, NATS ``session_status``)."""
    record = await load_record(services, principal, session_id)
    return view(record, await live_info(services, record))


async def delete_session(services: Services, principal: Principal, session_id: str) -> None:
    record = await load_record(services, principal, session_id)
    await remove_session(services, record)


async def start_session(services: Services, principal: Principal, session_id: str) -> SessionView:
    record = await load_record(services, principal, session_id)
    info = await live_info(services, record)
    if info is not None and info.state in _LIVE and record.desired == "running":
        return view(record, info)
    info = await place(services, record)
    return view(await load_record(services, principal, session_id), info)


async def stop_session(services: Services, principal: Principal, session_id: str) -> SessionView:
    record = await load_record(services, principal, session_id)
    info = await unplace(services, record, Op.SESSION_STOP)
    return view(await load_record(services, principal, session_id), info)


async def logout_session(services: Services, principal: Principal, session_id: str) -> SessionView:
    record = await load_record(services, principal, session_id)
    running(record)
    info = await unplace(services, record, Op.SESSION_LOGOUT)
    return view(await load_record(services, principal, session_id), info)


async def fresh_status(services: Services, record: SessionRecord, generation: bytes) -> bytes:
    """The status JSON from the session's node, cached (under ``generation``) when the
    node answered."""
    info = await live_info(services, record)
    body = _encode(status_of(record, info))
    if info is not None:
        await services.cache.put_status(cache_id(record), generation, body)
    return body


async def pair_code(
    services: Services, principal: Principal, session_id: str, phone: str
) -> PairCodeView:
    """The code to type on the phone of ``phone`` to pair the session."""
    number = normalize_recipient(phone)
    record = await load_record(services, principal, session_id)
    assignment = running(record)
    code = await call_agent(
        services,
        assignment.node_id,
        Op.SESSION_PAIR_CODE,
        PairCodeRequest(session_id=record.spec.key, phone=number),
        PairCode,
    )
    return PairCodeView(session_id=session_id, code=code.code)


async def pairing_qr(services: Services, principal: Principal, session_id: str) -> QrCode | None:
    """The current QR code, or None when the session is not pairing (never placed, not
    pairing, or no longer on its node): the web UI polls this and must not fail when the
    phone scanned between two polls."""
    record = await load_record(services, principal, session_id)
    if record.assignment is None:
        return None
    try:
        return await services.agents.call(
            record.assignment.node_id,
            Op.SESSION_QR,
            SessionRef(session_id=record.spec.key),
            QrCode,
        )
    except AgentCallError as exc:
        if exc.code in (ErrorCode.NOT_PAIRING, ErrorCode.SESSION_NOT_FOUND):
            return None
        raise exc.to_problem() from None
    except AgentUnavailable as exc:
        raise exc.to_problem() from None


async def read_settings(
    services: Services, principal: Principal, session_id: str
) -> SessionSettings:
    return settings_of(await load_record(services, principal, session_id))


async def change_settings(
    services: Services, loaded: SessionRecord, data: SettingsPatch
) -> SessionSettings:
    """Store the changed settings of ``loaded`` (from ``load_record``; the caller has
    checked the webhook settings); a pacing change applies live on the session's node."""

    def change(current: SessionRecord) -> None:
        if data.device_name is not msgspec.UNSET:
            current.spec.device_name = data.device_name
        if data.proxy is not msgspec.UNSET:
            current.spec.proxy = data.proxy
        if data.pacing is not msgspec.UNSET:
            current.spec.pacing = data.pacing
        if data.webhook_url is not msgspec.UNSET:
            current.webhook_url = data.webhook_url
        if data.webhook_events is not msgspec.UNSET:
            current.webhook_events = data.webhook_events
        if data.webhook_secret is not msgspec.UNSET:
            current.webhook_secret = data.webhook_secret
        if data.webhook_scheme is not msgspec.UNSET:
            current.webhook_scheme = data.webhook_scheme
        if data.webhook_url is not msgspec.UNSET or data.webhook_events is not msgspec.UNSET:
            # set through zapfleet's API: a zapfleet-format webhook again, not an
            # Evolution one (docs/evolution-webhooks.md)
            current.webhook_format = None
            current.webhook_by_events = current.webhook_base64 = False
            current.webhook_headers = None
            current.webhook_enabled = True

    record = await update_record(services, loaded, change)
    if data.pacing is not msgspec.UNSET:
        await configure_running(
            services, record, ConfigureSession(session_id=record.spec.key, pacing=data.pacing)
        )
    return settings_of(record)


async def configure_running(
    services: Services, record: SessionRecord, request: ConfigureSession
) -> None:
    """Apply a setting just stored in ``record`` to the session where it runs now. A
    session not running there, or a node not answering, is no error: the stored setting
    applies when the session starts again."""
    assignment = live_assignment(record)
    if assignment is None:
        return
    try:
        await services.agents.call(assignment.node_id, Op.SESSION_CONFIGURE, request, SessionInfo)
    except AgentCallError as exc:
        if exc.code is not ErrorCode.SESSION_NOT_FOUND:
            raise exc.to_problem() from None
    except AgentUnavailable:
        pass

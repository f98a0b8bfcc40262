"""/v1/sessions: create, read and pair sessions."""

from __future__ import annotations

import secrets
from typing import Any

from litestar import Controller, get, post
from litestar.di import Provide
from nats.js.errors import KeyWrongLastSequenceError

from control_plane.agents import AgentCallError, AgentUnavailable
from control_plane.api.webhooks import ensure_event_patterns, ensure_safe_url
from control_plane.auth import Principal, authenticate
from control_plane.models import CreateSession, QrView, SessionView
from control_plane.placement import choose_node
from control_plane.problems import ProblemError
from control_plane.services import Services
from node_agent.protocol import (
    Assignment,
    Op,
    PacingSettings,
    QrCode,
    SessionInfo,
    SessionRecord,
    SessionRef,
    SessionSpec,
    SessionState,
    StartSession,
)


def not_found(session_id: str) -> ProblemError:
    return ProblemError(404, "session_not_found", f"no session {session_id!r}")


async def load_record(services: Services, principal: Principal, session_id: str) -> SessionRecord:
    """The session record, or 404 — also for another tenant's session, so ids of other
    tenants cannot be probed."""
    found = await services.sessions.get(session_id)
    if found is None or found[0].spec.tenant != principal.tenant:
        raise not_found(session_id)
    return found[0]


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
        reason=info.reason if info else None,
        since=info.since if info else None,
        queue_depth=info.queue_depth if info else 0,
        webhook_url=record.webhook_url,
        created_at=record.created_at,
    )


async def live_info(services: Services, record: SessionRecord) -> SessionInfo | None:
    if record.assignment is None:
        return None
    try:
        return await services.agents.call(
            record.assignment.node_id,
            Op.SESSION_STATUS,
            SessionRef(session_id=record.spec.session_id),
            SessionInfo,
        )
    except (AgentCallError, AgentUnavailable):
        return None


async def place(services: Services, record: SessionRecord) -> SessionInfo:
    """Assign the session to the best node (epoch + 1, KV CAS) and start it there."""
    session_id = record.spec.session_id
    node = choose_node(await services.nodes.list(), record.spec.engine)
    if node is None:
        raise ProblemError(
            503,
            "no_capacity",
            f"no eligible node runs the {record.spec.engine} engine with free capacity",
            headers={"Retry-After": "5"},
        )

    def assign(current: SessionRecord) -> None:
        epoch = current.assignment.epoch + 1 if current.assignment else 1
        current.assignment = Assignment(node_id=node.node_id, epoch=epoch)
        current.desired = "running"

    record = await services.sessions.update(session_id, assign)
    assert record.assignment is not None
    try:
        return await services.agents.call(
            node.node_id,
            Op.SESSION_START,
            StartSession(spec=record.spec, epoch=record.assignment.epoch),
            SessionInfo,
        )
    except AgentCallError as exc:
        raise exc.to_problem() from None
    except AgentUnavailable as exc:
        raise exc.to_problem() from None


class SessionController(Controller):
    path = "/v1/sessions"
    tags = ["sessions"]
    dependencies = {"principal": Provide(authenticate)}

    @post("/", status_code=201, summary="Create a session and place it on a node")
    async def create(
        self, data: CreateSession, services: Services, principal: Principal
    ) -> SessionView:
        session_id = data.session_id or "s_" + secrets.token_hex(8)
        if data.webhook_url:
            await ensure_safe_url(services, data.webhook_url)
        ensure_event_patterns(data.webhook_events)
        spec = SessionSpec(
            session_id=session_id,
            tenant=principal.tenant,
            engine=data.engine or services.settings.default_engine,
            device_name=data.device_name,
            proxy=data.proxy,
            pacing=data.pacing or PacingSettings(),
        )
        record = SessionRecord(
            spec=spec,
            webhook_url=data.webhook_url,
            webhook_events=data.webhook_events,
            webhook_secret=data.webhook_secret,
        )
        try:
            await services.sessions.create(record)
        except KeyWrongLastSequenceError:
            raise ProblemError(
                409, "session_exists", f"a session {session_id!r} already exists"
            ) from None
        info = await place(services, record)
        placed = await load_record(services, principal, session_id)
        return view(placed, info)

    @get("/{session_id:str}", summary="A session and its live state")
    async def read(self, session_id: str, services: Services, principal: Principal) -> SessionView:
        record = await load_record(services, principal, session_id)
        return view(record, await live_info(services, record))

    @get("/{session_id:str}/qr", summary="The current QR code (raw string) while pairing")
    async def qr(self, session_id: str, services: Services, principal: Principal) -> QrView:
        record = await load_record(services, principal, session_id)
        if record.assignment is None:
            raise ProblemError(409, "not_running", f"session {session_id!r} is not running")
        try:
            code = await services.agents.call(
                record.assignment.node_id,
                Op.SESSION_QR,
                SessionRef(session_id=session_id),
                QrCode,
            )
        except (AgentCallError, AgentUnavailable) as exc:
            raise exc.to_problem() from None
        return QrView(session_id=session_id, qr=code.code, expires_at=code.expires_at)


__all__: list[Any] = ["SessionController", "load_record", "place"]

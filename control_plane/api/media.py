"""Inbound media and its settings (issue 15): files received by a session's agent and kept
in Object Store ``zf_media`` (node_agent/inbound_media.py, control_plane/media_links.py).

- ``GET /v1/sessions/{id}/media/{media_id}``: the file, with the tenant's key;
- ``GET /v1/sessions/{id}/media/{media_id}/link``: a short-lived signed URL for it;
- ``GET /v1/media/{token}``: the file behind a signed URL (no key: the URL is the key);
- ``GET|PUT /v1/sessions/{id}/settings/media``: off / metadata / store, inline limit.
"""

from __future__ import annotations

import weakref
from typing import Annotated, Any, Literal

import msgspec
from litestar import Controller, Response, get, put
from litestar.di import Provide
from nats.js import JetStreamContext

from control_plane.agents import AgentCallError, AgentUnavailable
from control_plane.api.sessions import QUERIES, SESSION_OPS, live_assignment, load_record
from control_plane.api.sessions import update_record as _update_record
from control_plane.auth import Principal, authenticate
from control_plane.media_links import MediaReader, StoredFile, media_secret, signed_url, verify
from control_plane.problems import ProblemError
from control_plane.services import Services
from node_agent.protocol import (
    ConfigureSession,
    ErrorCode,
    MediaSettings,
    Op,
    SessionInfo,
    SessionRecord,
)

MediaId = Annotated[str, msgspec.Meta(pattern=r"^md_[0-9a-f]{24}$")]
_readers: weakref.WeakKeyDictionary[JetStreamContext, MediaReader] = weakref.WeakKeyDictionary()


def reader(services: Services) -> MediaReader:
    found = _readers.get(services.js)
    if found is None:
        found = _readers[services.js] = MediaReader(services.js)
    return found


def _not_found(media_id: str) -> ProblemError:
    return ProblemError(
        404,
        "media_not_found",
        f"media {media_id!r} is not stored (unknown, expired, or its session was deleted)",
    )


def _check_id(media_id: str) -> None:
    try:
        msgspec.convert(media_id, MediaId)
    except msgspec.ValidationError:
        raise _not_found(media_id) from None


def _file_response(found: StoredFile) -> Response[bytes]:
    headers = {"Cache-Control": "private, max-age=300", "X-Content-Type-Options": "nosniff"}
    if found.filename:
        safe = found.filename.replace('"', "").replace("\\", "")
        headers["Content-Disposition"] = f'inline; filename="{safe}"'
    return Response(found.data, media_type=found.mimetype, headers=headers)


class MediaLink(msgspec.Struct, kw_only=True):
    media_id: str
    url: str
    expires_at: int


class MediaSettingsBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """What the session does with received media (docs/api.md, "Inbound media")."""

    inbound: Literal["off", "metadata", "store"] = "metadata"
    webhook_inline_max_bytes: Annotated[int, msgspec.Meta(ge=0, le=16 * 1024 * 1024)] = 0


class MediaSettingsView(msgspec.Struct, kw_only=True):
    session_id: str
    inbound: Literal["off", "metadata", "store"]
    webhook_inline_max_bytes: int


async def media_link(
    services: Services, principal: Principal, session_id: str, media_id: str
) -> MediaLink:
    """A signed URL of one stored file (REST and the NATS command ``media_link``)."""
    record = await load_record(services, principal, session_id)  # the session first
    _check_id(media_id)
    store = await reader(services).store()
    if store is None:
        raise _not_found(media_id)
    from nats.js.errors import NotFoundError, ObjectNotFoundError

    from node_agent.protocol import media_object

    try:
        await store.get_info(media_object(record.spec.key, media_id))
    except (ObjectNotFoundError, NotFoundError):
        raise _not_found(media_id) from None
    url, expires = signed_url(services.settings, record.spec.key, media_id)
    return MediaLink(media_id=media_id, url=url, expires_at=expires)


class MediaController(Controller):
    path = "/v1/sessions/{session_id:str}"
    tags = ["media"]
    dependencies = {"principal": Provide(authenticate)}

    @get(
        "/media/{media_id:str}",
        opt=QUERIES,
        media_type="application/octet-stream",
        summary="A received media file (stored when the session's inbound media is 'store')",
    )
    async def media_file(
        self, session_id: str, media_id: str, services: Services, principal: Principal
    ) -> Response[bytes]:
        record = await load_record(services, principal, session_id)  # the session first
        _check_id(media_id)
        found = await reader(services).get(record.spec.key, media_id)
        if found is None:
            raise _not_found(media_id)
        return _file_response(found)

    @get(
        "/media/{media_id:str}/link",
        opt=QUERIES,
        summary="A short-lived signed URL of a received media file (no key needed to fetch)",
    )
    async def media_file_link(
        self, session_id: str, media_id: str, services: Services, principal: Principal
    ) -> MediaLink:
        return await media_link(services, principal, session_id, media_id)

    @get("/settings/media", opt=QUERIES, summary="What the session does with received media")
    async def get_media_settings(
        self, session_id: str, services: Services, principal: Principal
    ) -> MediaSettingsView:
        record = await load_record(services, principal, session_id)
        return _view(record)

    @put(
        "/settings/media",
        opt=SESSION_OPS,
        summary="Set what the session does with received media (applies to the next one)",
    )
    async def put_media_settings(
        self, session_id: str, data: MediaSettingsBody, services: Services, principal: Principal
    ) -> MediaSettingsView:
        loaded = await load_record(services, principal, session_id)
        settings = MediaSettings(
            inbound=data.inbound, webhook_inline_max_bytes=data.webhook_inline_max_bytes
        )

        def change(current: SessionRecord) -> None:
            current.spec.media = settings

        record = await _update_record(services, loaded, change)
        assignment = live_assignment(record)
        if assignment is not None:
            try:
                await services.agents.call(
                    assignment.node_id,
                    Op.SESSION_CONFIGURE,
                    ConfigureSession(session_id=record.spec.key, media=settings),
                    SessionInfo,
                )
            except AgentCallError as exc:
                if exc.code is not ErrorCode.SESSION_NOT_FOUND:
                    raise exc.to_problem() from None
            except AgentUnavailable:
                pass  # the stored setting applies when the session starts again
        return _view(record)


def _view(record: SessionRecord) -> MediaSettingsView:
    return MediaSettingsView(
        session_id=record.spec.session_id,
        inbound=record.spec.media.inbound,
        webhook_inline_max_bytes=record.spec.media.webhook_inline_max_bytes,
    )


class SignedMediaController(Controller):
    """Files behind signed URLs: no key (the URL is one), nothing else reachable."""

    path = "/v1/media"
    tags = ["media"]

    @get(
        "/{token:str}",
        media_type="application/octet-stream",
        summary="A received media file by signed URL (from a webhook or /link); no key",
        security=[],
    )
    async def signed_media(self, token: str, services: Services) -> Response[bytes]:
        ref = verify(media_secret(services.settings), token)
        if ref is None:
            raise ProblemError(403, "invalid_media_url", "the media URL is invalid or has expired")
        found = await reader(services).get(ref.key, ref.media_id)
        if found is None:
            raise _not_found(ref.media_id)
        return _file_response(found)


__all__: list[Any] = ["MediaController", "SignedMediaController", "media_link"]

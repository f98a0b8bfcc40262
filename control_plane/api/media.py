"""Inbound media and its settings (issue 15): files received by a session's agent and kept
in Object Store ``zf_media`` (node_agent/inbound_media.py, control_plane/media_links.py).

- ``GET /v1/sessions/{id}/media/{media_id}``: the file, with the tenant's key;
- ``GET /v1/sessions/{id}/media/{media_id}/link``: a short-lived signed URL for it;
- ``GET /v1/media/{token}``: the file behind a signed URL (no key: the URL is the key);
- ``GET|PUT /v1/sessions/{id}/settings/media``: off / metadata / store, inline limit.

The controllers map HTTP to the media service (control_plane/media.py), which the NATS
command ``media_link`` calls too; ``media_link`` is re-exported here for code written
before the service existed.
"""

from __future__ import annotations

from litestar import Controller, Response, get, put
from litestar.di import Provide

from control_plane import media as media_service
from control_plane.api.sessions import QUERIES, SESSION_OPS
from control_plane.auth import Principal, authenticate
from control_plane.media import MediaLink, MediaSettingsBody, MediaSettingsView, media_link
from control_plane.media_links import StoredFile
from control_plane.services import Services


def _file_response(found: StoredFile) -> Response[bytes]:
    headers = {"Cache-Control": "private, max-age=300", "X-Content-Type-Options": "nosniff"}
    if found.filename:
        safe = found.filename.replace('"', "").replace("\\", "")
        headers["Content-Disposition"] = f'inline; filename="{safe}"'
    return Response(found.data, media_type=found.mimetype, headers=headers)


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
        found = await media_service.stored_media(services, principal, session_id, media_id)
        return _file_response(found)

    @get(
        "/media/{media_id:str}/link",
        opt=QUERIES,
        summary="A short-lived signed URL of a received media file (no key needed to fetch)",
    )
    async def media_file_link(
        self, session_id: str, media_id: str, services: Services, principal: Principal
    ) -> MediaLink:
        return await media_service.media_link(services, principal, session_id, media_id)

    @get("/settings/media", opt=QUERIES, summary="What the session does with received media")
    async def get_media_settings(
        self, session_id: str, services: Services, principal: Principal
    ) -> MediaSettingsView:
        return await media_service.read_media_settings(services, principal, session_id)

    @put(
        "/settings/media",
        opt=SESSION_OPS,
        summary="Set what the session does with received media (applies to the next one)",
    )
    async def put_media_settings(
        self, session_id: str, data: MediaSettingsBody, services: Services, principal: Principal
    ) -> MediaSettingsView:
        return await media_service.change_media_settings(services, principal, session_id, data)


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
        return _file_response(await media_service.signed_media(services, token))


__all__ = [
    "MediaController",
    "MediaLink",
    "MediaSettingsBody",
    "MediaSettingsView",
    "SignedMediaController",
    "media_link",
]

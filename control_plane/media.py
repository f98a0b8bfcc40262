"""The media service: received media files and what a session does with them (issue 15),
whoever asks: REST (control_plane/api/media.py) and the NATS command ``media_link``
(control_plane/commands.py). Files live in Object Store ``zf_media``
(node_agent/inbound_media.py); signing and reading them is control_plane/media_links.py.
Nothing here imports a controller; errors are ``ProblemError`` (RFC 9457).
"""

from __future__ import annotations

import weakref
from typing import Annotated, Literal

import msgspec
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError, ObjectNotFoundError

from contract.protocol import (
    ConfigureSession,
    MediaSettings,
    SessionRecord,
    media_object,
)
from control_plane.auth import Principal
from control_plane.media_links import MediaReader, StoredFile, media_secret, signed_url, verify
from control_plane.problems import ProblemError
from control_plane.services import Services
from control_plane.sessions import configure_running, load_record, update_record

MediaId = Annotated[str, msgspec.Meta(pattern=r"^md_[0-9a-f]{24}$")]
_readers: weakref.WeakKeyDictionary[JetStreamContext, MediaReader] = weakref.WeakKeyDictionary()


def reader(services: Services) -> MediaReader:
    found = _readers.get(services.js)
    if found is None:
        found = _readers[services.js] = MediaReader(services.js)
    return found


def not_found(media_id: str) -> ProblemError:
    return ProblemError(
        404,
        "media_not_found",
        f"media {media_id!r} is not stored (unknown, expired, or its session was deleted)",
    )


def check_id(media_id: str) -> None:
    try:
        msgspec.convert(media_id, MediaId)
    except msgspec.ValidationError:
        raise not_found(media_id) from None


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
    check_id(media_id)
    store = await reader(services).store()
    if store is None:
        raise not_found(media_id)
    try:
        await store.get_info(media_object(record.spec.key, media_id))
    except (ObjectNotFoundError, NotFoundError):
        raise not_found(media_id) from None
    url, expires = signed_url(services.settings, record.spec.key, media_id)
    return MediaLink(media_id=media_id, url=url, expires_at=expires)


async def stored_media(
    services: Services, principal: Principal, session_id: str, media_id: str
) -> StoredFile:
    """One stored file of the caller's session, or 404 (the session is checked first)."""
    record = await load_record(services, principal, session_id)  # the session first
    check_id(media_id)
    found = await reader(services).get(record.spec.key, media_id)
    if found is None:
        raise not_found(media_id)
    return found


async def signed_media(services: Services, token: str) -> StoredFile:
    """The file behind a signed URL (no key: the URL is one), 403 when the token is
    invalid or expired, 404 when the file is gone."""
    ref = verify(media_secret(services.settings), token)
    if ref is None:
        raise ProblemError(403, "invalid_media_url", "the media URL is invalid or has expired")
    found = await reader(services).get(ref.key, ref.media_id)
    if found is None:
        raise not_found(ref.media_id)
    return found


async def read_media_settings(
    services: Services, principal: Principal, session_id: str
) -> MediaSettingsView:
    record = await load_record(services, principal, session_id)
    return settings_view(record)


async def change_media_settings(
    services: Services, principal: Principal, session_id: str, data: MediaSettingsBody
) -> MediaSettingsView:
    """Store what the session does with received media; applies live on its node (to the
    next file), or when it starts again."""
    loaded = await load_record(services, principal, session_id)
    settings = MediaSettings(
        inbound=data.inbound, webhook_inline_max_bytes=data.webhook_inline_max_bytes
    )

    def change(current: SessionRecord) -> None:
        current.spec.media = settings

    record = await update_record(services, loaded, change)
    await configure_running(
        services, record, ConfigureSession(session_id=record.spec.key, media=settings)
    )
    return settings_view(record)


def settings_view(record: SessionRecord) -> MediaSettingsView:
    return MediaSettingsView(
        session_id=record.spec.session_id,
        inbound=record.spec.media.inbound,
        webhook_inline_max_bytes=record.spec.media.webhook_inline_max_bytes,
    )

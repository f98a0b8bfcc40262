"""What a webhook delivery sends (issue 14: the body part of the dispatcher): the event
as stored, with signed links (and inline bytes) of stored inbound media added at
delivery time, or — for a session webhook in Evolution API format — Evolution's envelope
(:func:`control_plane.evolution.events.envelope`) with the session's own number as
``sender``. Rendered at each attempt, so a link is always fresh."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import time
from typing import Any

import msgspec
from nats.js.client import JetStreamContext
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from contract.protocol import (
    SESSION_STATE_BUCKET,
    EventType,
    SessionInfo,
    SessionState,
)
from control_plane.evolution.events import Context, envelope, jid, media_id
from control_plane.media_links import MediaReader, signed_url, with_media_links
from control_plane.settings import ControlPlaneSettings
from control_plane.webhooks.config import Target, WebhookRegistry

log = logging.getLogger(__name__)

_dict_decoder = msgspec.json.Decoder(dict[str, Any])
_info_decoder = msgspec.json.Decoder(SessionInfo)
PHONE_TTL_S = 60.0  # how long a session's own number (Evolution's "sender") is reused
_MEMORY = 100_000  # numbers kept at most


class Head(msgspec.Struct):
    """What routing needs of an event; the payload is not decoded."""

    id: str
    type: str
    tenant: str
    session_id: str
    ts: float


class Bodies:
    def __init__(
        self, js: JetStreamContext, settings: ControlPlaneSettings, registry: WebhookRegistry
    ) -> None:
        self.js = js
        self.settings = settings
        self.registry = registry
        self.media = MediaReader(js)
        self._state_kv: KeyValue | None = None
        self._phones: dict[str, tuple[str | None, float]] = {}  # key -> (phone, monotonic)

    async def _with_media(self, body: bytes, head: Head) -> bytes:
        """Stored inbound media gets a signed URL (and inline bytes) at delivery time
        (control_plane/media_links.py); a failure leaves the event as it is."""
        try:
            key = self.registry.session_key(head.tenant, head.session_id)
            return await with_media_links(body, key, self.settings, self.media)
        except Exception as exc:
            log.warning("media link not added", extra={"event_id": head.id, "error": repr(exc)})
            return body

    async def render(self, body: bytes, head: Head, target: Target) -> bytes | None:
        """The body to send: the event with its media links, or in Evolution format."""
        if target.evolution:
            return await self.evolution(body, head, target)
        if head.type == "message.received":
            return await self._with_media(body, head)
        return body

    async def evolution(self, body: bytes, head: Head, target: Target) -> bytes | None:
        """The event in Evolution API format (None: not sent in that format), with the
        signed URL of stored inbound media and, when the webhook asks, its bytes."""
        event = _dict_decoder.decode(body)
        key = self.registry.session_key(head.tenant, head.session_id)
        media_url = media_base64 = None
        stored = media_id(event)
        if stored is not None and key is not None:
            try:
                media_url, _ = signed_url(self.settings, key, stored)
                if target.base64:
                    found = await self.media.get(key, stored)
                    if found is not None:
                        media_base64 = base64.b64encode(found.data).decode()
            except Exception as exc:
                log.warning("media not added", extra={"event_id": head.id, "error": repr(exc)})
        context = Context(
            instance=head.session_id,
            instance_id=key or head.session_id,
            destination=target.destination,
            server_url=self.settings.public_base_url(),
            sender=jid(await self._own_phone(key, event)),
            media_url=media_url,
            media_base64=media_base64,
        )
        rendered = envelope(event, context)
        return None if rendered is None else msgspec.json.encode(rendered)

    async def _own_phone(self, key: str | None, event: dict[str, Any]) -> str | None:
        """The session's own number (Evolution's ``sender``): from its live state in KV
        ``zf_session_state``, reused for PHONE_TTL_S ("none yet" for a few seconds). A
        ``session.status`` CONNECTED reads it afresh (a new pairing may bring a new
        number), waiting up to a second for the agent's write of that state."""
        if key is None:
            return None
        now = time.monotonic()
        data = event.get("data") or {}
        connected = event.get("type") == EventType.SESSION_STATUS and data.get("state") == (
            SessionState.CONNECTED
        )
        known = self._phones.get(key)
        if (
            not connected
            and known is not None
            and now - known[1] < (PHONE_TTL_S if known[0] else 5.0)
        ):
            return known[0]
        phone = await self._read_phone(key)
        for _ in range(10 if connected else 0):
            if phone is not None:
                break
            await asyncio.sleep(0.1)
            phone = await self._read_phone(key)
        if len(self._phones) > _MEMORY:
            self._phones.clear()
        self._phones[key] = (phone, time.monotonic())
        return phone

    async def _read_phone(self, key: str) -> str | None:
        with contextlib.suppress(Exception):
            if self._state_kv is None:
                self._state_kv = await self.js.key_value(SESSION_STATE_BUCKET)
            with contextlib.suppress(KeyNotFoundError):
                entry = await self._state_kv.get(key)
                if entry.value:
                    return _info_decoder.decode(entry.value).phone
        return None

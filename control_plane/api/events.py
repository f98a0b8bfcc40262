"""/v1/events: replay of the stored events (stream ``ZF_EVENTS``), paged, tenant-scoped
(the caller's tenant; the admin key acts for the tenant in ``X-Tenant-Id``).

Events are kept by age (7 days by default) and size. ``since`` is a stream sequence (the
``seq`` of the last event a client has seen: the page starts after it) or an RFC 3339
time (the page starts at the first event stored at or after it). ``next`` is the cursor
of the following page; the replay is complete when ``remaining`` is 0.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import msgspec
from litestar import Controller, get
from litestar.di import Provide
from litestar.params import Parameter, QueryParameter

from contract.protocol import EVENTS_STREAM, Event
from control_plane.auth import Principal, authenticate
from control_plane.problems import ProblemError
from control_plane.services import Services
from control_plane.stream_reader import StreamReadError, read_page
from control_plane.webhooks.config import EVENT_TYPES


class StoredEvent(Event, kw_only=True):
    seq: int = 0
    """Position in the stream; pass it as ``since`` to continue after this event."""


class EventPage(msgspec.Struct, kw_only=True):
    events: list[StoredEvent]
    remaining: int
    next: int | None


_stored_decoder = msgspec.json.Decoder(StoredEvent)


def parse_since(since: str | None) -> tuple[int, datetime | None]:
    if since is None or since == "":
        return 0, None
    if since.isascii() and since.isdigit():
        if len(since) > 18:
            raise ProblemError(422, "invalid_since", f"since={since!r} is not a stream sequence")
        return int(since), None
    try:
        moment = datetime.fromisoformat(since.replace("Z", "+00:00"))
    except (ValueError, OverflowError):
        raise ProblemError(
            422,
            "invalid_since",
            f"since={since!r} is neither a sequence number nor an RFC 3339 time "
            "(e.g. 2024-05-01T12:00:00Z)",
        ) from None
    if moment.tzinfo is None:
        raise ProblemError(422, "invalid_since", "since needs a time zone (e.g. a final 'Z')")
    return 0, moment


def type_filter(event_type: str | None) -> str:
    if event_type is None:
        return ">"
    if event_type in EVENT_TYPES:
        return event_type
    family, _, rest = event_type.partition(".")
    if rest == "*" and any(t.startswith(family + ".") for t in EVENT_TYPES):
        return f"{family}.*"
    raise ProblemError(
        422, "invalid_event_type", f"unknown event type {event_type!r} (e.g. message.received)"
    )


class EventController(Controller):
    path = "/v1/events"
    tags = ["events"]
    dependencies = {"principal": Provide(authenticate)}

    @get("/", summary="Replay stored events after a sequence or since a time, paged")
    async def replay(
        self,
        services: Services,
        principal: Principal,
        since: Annotated[
            str | None,
            Parameter(description="a sequence (events after it) or an RFC 3339 time"),
        ] = None,
        session: Annotated[
            str | None, Parameter(pattern=r"^[A-Za-z0-9_-]{1,64}$", description="one session")
        ] = None,
        event_type: Annotated[
            str | None,
            QueryParameter(name="type", description="an event type or family ('message.*')"),
        ] = None,
        limit: Annotated[int, Parameter(ge=1, le=1000)] = 100,
    ) -> EventPage:
        scope = principal.tenant
        after_seq, start_time = parse_since(since)
        subject = f"zf.events.{scope}.{session or '*'}.{type_filter(event_type)}"
        try:
            page = await read_page(
                services.nc,
                EVENTS_STREAM,
                subject,
                after_seq=after_seq,
                start_time=start_time,
                limit=limit,
            )
        except StreamReadError as exc:
            raise ProblemError(503, "stream_unavailable", str(exc)) from None
        events = []
        for stored in page.messages:
            event = _stored_decoder.decode(stored.data)
            event.seq = stored.seq
            events.append(event)
        return EventPage(
            events=events,
            remaining=page.more,
            next=events[-1].seq if events else (after_seq or None),
        )

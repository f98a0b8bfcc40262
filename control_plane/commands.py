"""Commands over NATS for clients that live on NATS: ``zf.api.<tenant>.<op>``.

A ``nats.micro`` service ``zapfleet-api`` in every control-plane worker (one queue group,
so each request is served once) answers the same operations as the REST API, with the
same checks, through the same code. Requests carry the API key in a NATS header
(``Authorization: Bearer <key>`` or ``X-API-Key``); a tenant key may only use its own
tenant's subjects, the admin key any. Replies are ``{"kind": "ok", "value": ...}`` or
``{"kind": "err", "code": ..., "status": ..., "message": ...}`` where ``code`` and
``status`` are those of the REST problem document (docs/nats.md). An error reply also
carries the micro protocol's headers (``Nats-Service-Error``: the message,
``Nats-Service-Error-Code``: the status) and counts as an error of its endpoint in
``$SRV.STATS``. An op nobody serves (``zf.api.<tenant>.no_such_op``) is answered
``unknown_operation`` (404) by a catch-all subscription, instead of leaving the caller
with "no responders".

| op | request | reply value |
|---|---|---|
| ``message_send`` | ``{"session_id", "message": {"type", "to", "text", ...}}`` | MessageAccepted |
| ``session_status`` | ``{"session_id"}`` | SessionView |
| ``chat_read`` | ``{"session_id", "chat", "message_ids"?}`` | ChatReadView |
| ``chat_presence`` | ``{"session_id", "chat", "state"}`` | PresenceView |
| ``messages_list`` | ``{"session_id", "chat"?, "limit"?, "before"?}`` | HistoryView |
| ``media_link`` | ``{"session_id", "media_id"}`` | MediaLink (a signed URL of received media) |
| ``contacts_list`` | ``{"session_id"}`` | ContactsView |
| ``contact_info`` | ``{"session_id", "chat"}`` | ContactView |
| ``contact_block`` | ``{"session_id", "chat", "block"?}`` (false: unblock) | BlocklistView |
| ``blocklist_get`` | ``{"session_id"}`` | BlocklistView |
| ``profile_set`` | ``{"session_id", "name"?, "about"?, "picture_base64"?, ...}`` | ProfileView |
| ``privacy_get`` | ``{"session_id"}`` | PrivacyView |
| ``privacy_set`` | ``{"session_id", "read_receipts"?, "last_seen"?, ...}`` | PrivacyView |
| ``call_settings_get`` | ``{"session_id"}`` | CallSettingsView |
| ``call_settings_set`` | ``{"session_id", "reject", "reply_text"?}`` | CallSettingsView |
| ``groups_list`` | ``{"session_id"}`` | GroupListView |
| ``group_info`` | ``{"session_id", "group_id"}`` | GroupInfo |
| ``group_create`` | ``{"session_id", "subject", "participants"?}`` | GroupCreatedView |
| ``group_leave`` | ``{"session_id", "group_id"}`` | GroupLeftView |
| ``group_participants`` | ``{"session_id", "group_id", "action", "participants"}`` | (1) |
| ``group_update`` | ``{"session_id", "group_id", "subject"?, "description"?, ...}`` | GroupInfo |
| ``group_invite`` | ``{"session_id", "group_id", "revoke"?}`` | InviteView |
| ``group_join`` | ``{"session_id", "link"}`` | GroupJoinView |
| ``group_link_info`` | ``{"session_id", "link"}`` | GroupInfo |
| ``group_requests`` | ``{"session_id", "group_id"}`` | RequestsView |
| ``group_picture`` | ``{"session_id", "group_id", "media"}`` (``media`` null removes) | (2) |
| ``group_requests_update`` | ``{"session_id", "group_id", "action", "participants"}`` | (1) |

(1) ParticipantsView: one result per participant. (2) GroupPictureView.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.micro import add_service
from nats.micro.request import ERROR_CODE_HEADER, ERROR_HEADER, Request
from nats.micro.service import Endpoint, Service

from contract.protocol import Media, api_subject
from control_plane import contacts, groups  # issue 16
from control_plane.auth import Principal
from control_plane.contacts import (  # issue 16
    CallSettingsBody,
    PictureBase64,
    PrivacyBody,
    ProfileBody,
)
from control_plane.media import media_link
from control_plane.messages import mark_read, message_history, queue_message, show_presence
from control_plane.models import (
    ChatId,
    CreateGroupBody,
    GroupSettingsBody,
    InviteLinkBody,
    OutboundMessage,
    ParticipantsBody,
    PresenceBody,
    ReadChat,
    RequestsBody,
    SessionId,
)
from control_plane.problems import ProblemError
from control_plane.services import Services
from control_plane.sessions import read_session
from zapfleet import __version__

log = logging.getLogger(__name__)
R = TypeVar("R", bound=msgspec.Struct)

SERVICE = "zapfleet-api"
QUEUE_GROUP = "zf-api"
# its own queue group: it gets every command (NATS cannot subscribe to "all but these")
# and answers only those no endpoint serves
UNKNOWN_QUEUE_GROUP = "zf-api-unknown"


class CommandError(msgspec.Struct, tag="err", tag_field="kind"):
    code: str
    status: int
    message: str


class SendMessageCommand(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    session_id: SessionId
    message: OutboundMessage
    idempotency_key: str | None = None


class SessionStatusCommand(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    session_id: SessionId


class ChatReadCommand(ReadChat, kw_only=True, forbid_unknown_fields=True):
    session_id: SessionId


class ChatPresenceCommand(PresenceBody, kw_only=True, forbid_unknown_fields=True):
    session_id: SessionId


class MessagesListCommand(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    session_id: SessionId
    chat: Annotated[str, msgspec.Meta(max_length=128)] | None = None
    limit: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 50
    before: Annotated[str, msgspec.Meta(max_length=128)] | None = None


class MediaLinkCommand(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    session_id: SessionId
    media_id: str


_encoder = msgspec.json.Encoder()


async def op_message_send(
    services: Services, principal: Principal, body: SendMessageCommand
) -> bytes:
    accepted, _ = await queue_message(
        services, principal, body.session_id, body.message, body.idempotency_key
    )
    return accepted


async def op_session_status(
    services: Services, principal: Principal, body: SessionStatusCommand
) -> bytes:
    return _encoder.encode(await read_session(services, principal, body.session_id))


async def op_chat_read(services: Services, principal: Principal, body: ChatReadCommand) -> bytes:
    data = ReadChat(chat=body.chat, message_ids=body.message_ids)
    return _encoder.encode(await mark_read(services, principal, body.session_id, data))


async def op_chat_presence(
    services: Services, principal: Principal, body: ChatPresenceCommand
) -> bytes:
    data = PresenceBody(chat=body.chat, state=body.state)
    return _encoder.encode(await show_presence(services, principal, body.session_id, data))


async def op_messages_list(
    services: Services, principal: Principal, body: MessagesListCommand
) -> bytes:
    page, _ = await message_history(
        services,
        principal,
        body.session_id,
        limit=body.limit,
        chat=body.chat,
        before=body.before,
    )
    return page


async def op_media_link(services: Services, principal: Principal, body: MediaLinkCommand) -> bytes:
    link = await media_link(services, principal, body.session_id, body.media_id)
    return _encoder.encode(link)


# -- contacts, profile, calls (issue 16) --


class SessionCommand(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    session_id: SessionId


class ContactCommand(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    session_id: SessionId
    chat: ChatId


class ContactBlockCommand(ContactCommand, kw_only=True, forbid_unknown_fields=True):
    block: bool = True


class ProfileCommand(ProfileBody, kw_only=True, forbid_unknown_fields=True):
    session_id: SessionId
    picture_base64: PictureBase64 | None = None
    remove_picture: bool = False


class PrivacyCommand(PrivacyBody, kw_only=True, forbid_unknown_fields=True):
    session_id: SessionId


class CallSettingsCommand(CallSettingsBody, kw_only=True, forbid_unknown_fields=True):
    session_id: SessionId


async def op_contacts_list(services: Services, principal: Principal, body: SessionCommand) -> bytes:
    return _encoder.encode(await contacts.list_contacts(services, principal, body.session_id))


async def op_contact_info(services: Services, principal: Principal, body: ContactCommand) -> bytes:
    found = await contacts.contact_info(services, principal, body.session_id, body.chat)
    return _encoder.encode(found)


async def op_contact_block(
    services: Services, principal: Principal, body: ContactBlockCommand
) -> bytes:
    result = await contacts.block_contact(
        services, principal, body.session_id, body.chat, body.block
    )
    return _encoder.encode(result)


async def op_blocklist_get(services: Services, principal: Principal, body: SessionCommand) -> bytes:
    return _encoder.encode(await contacts.blocklist(services, principal, body.session_id))


async def op_profile_set(services: Services, principal: Principal, body: ProfileCommand) -> bytes:
    updated = await contacts.set_profile(
        services,
        principal,
        body.session_id,
        name=body.name,
        about=body.about,
        picture=body.picture_base64,
        remove_picture=body.remove_picture,
    )
    return _encoder.encode(updated)


async def op_privacy_get(services: Services, principal: Principal, body: SessionCommand) -> bytes:
    return _encoder.encode(await contacts.get_privacy(services, principal, body.session_id))


async def op_privacy_set(services: Services, principal: Principal, body: PrivacyCommand) -> bytes:
    fields = msgspec.structs.asdict(body)
    fields.pop("session_id")
    data = PrivacyBody(**fields)
    return _encoder.encode(await contacts.set_privacy(services, principal, body.session_id, data))


async def op_call_settings_get(
    services: Services, principal: Principal, body: SessionCommand
) -> bytes:
    return _encoder.encode(await contacts.get_call_settings(services, principal, body.session_id))


async def op_call_settings_set(
    services: Services, principal: Principal, body: CallSettingsCommand
) -> bytes:
    data = CallSettingsBody(reject=body.reject, reply_text=body.reply_text)
    settings = await contacts.put_call_settings(services, principal, body.session_id, data)
    return _encoder.encode(settings)


# -- groups (issue 16) --


class GroupsListCommand(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    session_id: SessionId


class GroupCommand(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    session_id: SessionId
    group_id: Annotated[str, msgspec.Meta(max_length=80)]


class GroupCreateCommand(CreateGroupBody, kw_only=True, forbid_unknown_fields=True):
    session_id: SessionId


class GroupParticipantsCommand(ParticipantsBody, kw_only=True, forbid_unknown_fields=True):
    session_id: SessionId
    group_id: Annotated[str, msgspec.Meta(max_length=80)]


class GroupUpdateCommand(GroupSettingsBody, kw_only=True, forbid_unknown_fields=True):
    session_id: SessionId
    group_id: Annotated[str, msgspec.Meta(max_length=80)]


class GroupInviteCommand(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    session_id: SessionId
    group_id: Annotated[str, msgspec.Meta(max_length=80)]
    revoke: bool = False


class GroupLinkCommand(InviteLinkBody, kw_only=True, forbid_unknown_fields=True):
    session_id: SessionId


async def op_groups_list(
    services: Services, principal: Principal, body: GroupsListCommand
) -> bytes:
    return _encoder.encode(await groups.list_groups(services, principal, body.session_id))


async def op_group_info(services: Services, principal: Principal, body: GroupCommand) -> bytes:
    return _encoder.encode(
        await groups.group_info(services, principal, body.session_id, body.group_id)
    )


async def op_group_create(
    services: Services, principal: Principal, body: GroupCreateCommand
) -> bytes:
    data = CreateGroupBody(subject=body.subject, participants=body.participants)
    return _encoder.encode(await groups.create_group(services, principal, body.session_id, data))


async def op_group_leave(services: Services, principal: Principal, body: GroupCommand) -> bytes:
    return _encoder.encode(
        await groups.leave_group(services, principal, body.session_id, body.group_id)
    )


async def op_group_participants(
    services: Services, principal: Principal, body: GroupParticipantsCommand
) -> bytes:
    data = ParticipantsBody(action=body.action, participants=body.participants)
    return _encoder.encode(
        await groups.change_participants(services, principal, body.session_id, body.group_id, data)
    )


async def op_group_update(
    services: Services, principal: Principal, body: GroupUpdateCommand
) -> bytes:
    data = GroupSettingsBody(
        subject=body.subject,
        description=body.description,
        announce=body.announce,
        locked=body.locked,
        ephemeral_s=body.ephemeral_s,
        approval=body.approval,
    )
    return _encoder.encode(
        await groups.update_group(services, principal, body.session_id, body.group_id, data)
    )


async def op_group_invite(
    services: Services, principal: Principal, body: GroupInviteCommand
) -> bytes:
    return _encoder.encode(
        await groups.invite_link(
            services, principal, body.session_id, body.group_id, revoke=body.revoke
        )
    )


async def op_group_join(services: Services, principal: Principal, body: GroupLinkCommand) -> bytes:
    return _encoder.encode(await groups.join_group(services, principal, body.session_id, body.link))


async def op_group_link_info(
    services: Services, principal: Principal, body: GroupLinkCommand
) -> bytes:
    return _encoder.encode(await groups.link_info(services, principal, body.session_id, body.link))


class GroupPictureCommand(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    session_id: SessionId
    group_id: Annotated[str, msgspec.Meta(max_length=80)]
    media: Media | None


async def op_group_picture(
    services: Services, principal: Principal, body: GroupPictureCommand
) -> bytes:
    return _encoder.encode(
        await groups.set_picture(services, principal, body.session_id, body.group_id, body.media)
    )


class GroupRequestsCommand(RequestsBody, kw_only=True, forbid_unknown_fields=True):
    session_id: SessionId
    group_id: Annotated[str, msgspec.Meta(max_length=80)]


async def op_group_requests(services: Services, principal: Principal, body: GroupCommand) -> bytes:
    return _encoder.encode(
        await groups.join_requests(services, principal, body.session_id, body.group_id)
    )


async def op_group_requests_update(
    services: Services, principal: Principal, body: GroupRequestsCommand
) -> bytes:
    data = RequestsBody(action=body.action, participants=body.participants)
    return _encoder.encode(
        await groups.answer_requests(services, principal, body.session_id, body.group_id, data)
    )


def _error(code: str, status: int, message: str) -> bytes:
    return _encoder.encode(CommandError(code=code, status=status, message=message))


def error_headers(status: int, message: str) -> dict[str, str]:
    """The micro protocol's error headers (a header value is one line)."""
    return {ERROR_HEADER: " ".join(message.split()), ERROR_CODE_HEADER: str(status)}


class _Counter:
    """Counts error replies into the endpoint's ``$SRV.STATS`` (nats.micro counts only
    handlers that raise, and a raising handler cannot choose its reply body)."""

    def __init__(self) -> None:
        self.endpoint: Endpoint | None = None

    def error(self, code: str, message: str) -> None:
        if self.endpoint is not None:
            self.endpoint._num_errors += 1
            # typed None by nats-py, set to a string by nats-py itself on errors
            self.endpoint._last_error = f"{code}: {message}"  # type: ignore[assignment]


def _key(headers: dict[str, str] | None) -> str | None:
    for name, value in (headers or {}).items():
        lowered = name.lower()
        if lowered == "authorization":
            scheme, _, token = value.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
        elif lowered == "x-api-key" and value.strip():
            return value.strip()
    return None


def _endpoint(
    services: Services,
    request_type: type[R],
    handler: Callable[[Services, Principal, R], Awaitable[bytes]],
    counter: _Counter,
) -> Callable[[Request], Awaitable[None]]:
    decoder = msgspec.json.Decoder(request_type)

    async def fail(request: Request, code: str, status: int, message: str) -> None:
        counter.error(code, message)
        await request.respond(_error(code, status, message), headers=error_headers(status, message))

    async def endpoint(request: Request) -> None:
        tenant = request.subject.split(".")[2]
        key = _key(request.headers)
        if key is None:
            message = "missing API key: send an Authorization header"
            await fail(request, "unauthenticated", 401, message)
            return
        try:
            # the same verification as REST with X-Tenant-Id = the subject's tenant: a tenant
            # key only for its own tenant, the admin key for any existing tenant
            acting = await services.auth.verify(key, tenant)
        except ProblemError as exc:
            await fail(request, exc.code, exc.status_code, exc.detail)
            return
        try:
            body = decoder.decode(request.data or b"{}")
        except msgspec.ValidationError as exc:
            await fail(request, "invalid_body", 400, f"invalid request: {exc}")
            return
        except msgspec.DecodeError as exc:
            await fail(request, "malformed_json", 400, f"malformed JSON: {exc}")
            return
        try:
            reply = b'{"kind":"ok","value":' + await handler(services, acting, body) + b"}"
        except ProblemError as exc:
            await fail(request, exc.code, exc.status_code, exc.detail)
            return
        except Exception as exc:
            log.exception("command failed", extra={"subject": request.subject})
            await fail(request, "internal", 500, f"internal error: {type(exc).__name__}")
            return
        await request.respond(reply)

    return endpoint


async def _answer_unknown_ops(nc: NATS, known: set[str]) -> Subscription:
    """Answer ``unknown_operation`` on ``zf.api.<tenant>.<op>`` subjects no endpoint
    serves (callers would otherwise wait for "no responders"). Nothing tenant-specific
    is looked at or revealed, so the key is not checked."""
    ops = ", ".join(sorted(known))

    async def answer(msg: Msg) -> None:
        op = msg.subject.split(".", 3)[3]
        if op in known or not msg.reply:
            return  # an endpoint answers it (or nobody waits for an answer)
        message = f"unknown operation {op!r}; the operations are: {ops}"
        await nc.publish(
            msg.reply,
            _error("unknown_operation", 404, message),
            headers=error_headers(404, message),
        )

    return await nc.subscribe(api_subject("*", ">"), queue=UNKNOWN_QUEUE_GROUP, cb=answer)


class Commands:
    """The ``zapfleet-api`` micro service and the catch-all for unknown ops."""

    def __init__(self, service: Service, unknown: Subscription) -> None:
        self.service = service
        self.unknown = unknown

    async def stop(self) -> None:
        await self.unknown.unsubscribe()
        await self.service.stop()


async def serve_commands(services: Services) -> Commands:
    """Register the ``zapfleet-api`` micro service; stop it with ``await commands.stop()``."""
    service = await add_service(
        services.nc,
        name=SERVICE,
        version=__version__,
        description="zapfleet commands for NATS-native clients",
    )
    routes: dict[str, tuple[type[Any], Callable[..., Awaitable[bytes]]]] = {
        "message_send": (SendMessageCommand, op_message_send),
        "session_status": (SessionStatusCommand, op_session_status),
        "chat_read": (ChatReadCommand, op_chat_read),
        "chat_presence": (ChatPresenceCommand, op_chat_presence),
        "messages_list": (MessagesListCommand, op_messages_list),
        "media_link": (MediaLinkCommand, op_media_link),
        # -- contacts, profile, calls (issue 16) --
        "contacts_list": (SessionCommand, op_contacts_list),
        "contact_info": (ContactCommand, op_contact_info),
        "contact_block": (ContactBlockCommand, op_contact_block),
        "blocklist_get": (SessionCommand, op_blocklist_get),
        "profile_set": (ProfileCommand, op_profile_set),
        "privacy_get": (SessionCommand, op_privacy_get),
        "privacy_set": (PrivacyCommand, op_privacy_set),
        "call_settings_get": (SessionCommand, op_call_settings_get),
        "call_settings_set": (CallSettingsCommand, op_call_settings_set),
        # -- groups (issue 16) --
        "groups_list": (GroupsListCommand, op_groups_list),
        "group_info": (GroupCommand, op_group_info),
        "group_create": (GroupCreateCommand, op_group_create),
        "group_leave": (GroupCommand, op_group_leave),
        "group_participants": (GroupParticipantsCommand, op_group_participants),
        "group_update": (GroupUpdateCommand, op_group_update),
        "group_invite": (GroupInviteCommand, op_group_invite),
        "group_join": (GroupLinkCommand, op_group_join),
        "group_link_info": (GroupLinkCommand, op_group_link_info),
        "group_requests": (GroupCommand, op_group_requests),
        "group_picture": (GroupPictureCommand, op_group_picture),
        "group_requests_update": (GroupRequestsCommand, op_group_requests_update),
    }
    for op, (request_type, handler) in routes.items():
        counter = _Counter()
        await service.add_endpoint(
            name=op,
            subject=api_subject("*", op),
            handler=_endpoint(services, request_type, handler, counter),
            queue_group=QUEUE_GROUP,
        )
        counter.endpoint = service._endpoints[-1]
    return Commands(service, await _answer_unknown_ops(services.nc, set(routes)))

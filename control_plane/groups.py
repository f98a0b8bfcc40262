"""Groups of a session (issue 16): the service functions the REST controller
(control_plane/api/groups.py) and the NATS commands (control_plane/commands.py) call,
and the Valkey cache of group metadata.

Every operation goes to the session's node at once (no queue: not messages). Errors are
problem+json: a malformed group id is 422 ``invalid_chat_id``, a participant that is no
phone number 422 ``invalid_number``, a group the session is not in 404
``group_not_found``, a change that needs admin rights 403 ``not_group_admin``, an
unknown or revoked invite link 422 ``invalid_invite_link``.

Cache (docs/api.md, "Groups"): the list and each group's info are kept in Valkey under
``c:grp:<tenant>.<session>:list`` and ``c:grp:<tenant>.<session>:<group id>`` for
``GROUP_CACHE_TTL_S``; any ``group.*`` event of the session (consumer
``zf-api-cache-groups``) and every change made through the API drop them. WhatsApp
rate-limits metadata queries: reading a group twice costs one query.
"""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec

from contract.chat_ids import chat_kind, is_group
from contract.protocol import (
    Empty,
    GroupCreate,
    GroupCreated,
    GroupInfo,
    GroupInvite,
    GroupInviteRequest,
    GroupJoined,
    GroupLinkRequest,
    GroupList,
    GroupParticipantsChange,
    GroupPicture,
    GroupPictureSet,
    GroupRef,
    GroupRequests,
    GroupRequestsChange,
    GroupsListRequest,
    GroupUpdate,
    Media,
    Op,
    ParticipantsChanged,
    SessionRecord,
    name_key,
)
from control_plane.auth import Principal
from control_plane.caches import (
    CACHE_INVALIDATIONS,
    CACHE_REQUESTS,
    ApiCache,
    CacheInvalidator,
    cache_id,
)
from control_plane.models import (
    CreateGroupBody,
    GroupCreatedView,
    GroupJoinView,
    GroupLeftView,
    GroupListView,
    GroupPictureView,
    GroupSettingsBody,
    InviteView,
    ParticipantsBody,
    ParticipantsView,
    RequestsBody,
    RequestsView,
)
from control_plane.numbers import normalize_chat_id
from control_plane.problems import ProblemError
from control_plane.services import Services
from control_plane.sessions import call_agent, load_record, running

T = TypeVar("T")
GROUP_CACHE_TTL_S = 120.0
_encode = msgspec.json.encode
_info_decoder = msgspec.json.Decoder(GroupInfo)
_list_decoder = msgspec.json.Decoder(list[GroupInfo])
for _result in ("hit", "miss"):
    CACHE_REQUESTS.labels("groups", _result)


# -- cache -------------------------------------------------------------------------------


def _cache_key(cache: ApiCache, session: str, what: str) -> str:
    return f"{cache.prefix}grp:{session}:{what}"


async def _cached(cache: ApiCache, session: str, what: str) -> bytes | None:
    key = _cache_key(cache, session, what)
    value: bytes | None = await cache.guard.call("cache", lambda: cache.client.get(key), None)
    CACHE_REQUESTS.labels("groups", "hit" if value is not None else "miss").inc()
    return value


async def _remember(cache: ApiCache, session: str, what: str, value: bytes) -> None:
    key = _cache_key(cache, session, what)
    ttl_ms = round(GROUP_CACHE_TTL_S * 1000)
    await cache.guard.call("cache", lambda: cache.client.set(key, value, px=ttl_ms), None)


async def forget_group(cache: ApiCache, session: str, group_id: str | None) -> None:
    """Drop a session's cached list of groups and (when given) one group's info."""
    keys = [_cache_key(cache, session, "list")]
    if group_id:
        keys.append(_cache_key(cache, session, group_id))
    await cache.guard.call("cache", lambda: cache.client.delete(*keys), 0)


class _GroupEventHead(msgspec.Struct):
    type: str
    tenant: str
    session_id: str
    data: dict[str, Any] = msgspec.field(default_factory=dict)


_head_decoder = msgspec.json.Decoder(_GroupEventHead)


class GroupCacheInvalidator(CacheInvalidator):
    """Drops cached group metadata on every ``group.*`` event (its own durable consumer,
    shared by every control-plane worker: each event is handled once)."""

    durable = "zf-api-cache-groups"
    subject = "zf.events.*.*.group.>"

    async def handle(self, data: bytes) -> None:
        head = _head_decoder.decode(data)
        CACHE_INVALIDATIONS.labels("groups").inc()
        group_id = head.data.get("group_id")
        await forget_group(
            self.cache,
            name_key(head.tenant, head.session_id),
            group_id if isinstance(group_id, str) else None,
        )


# -- input -------------------------------------------------------------------------------


def group_id_of(raw: str) -> str:
    """A group chat id (``<digits>@g.us``) or 422 ``invalid_chat_id``."""
    try:
        chat = normalize_chat_id(raw)
    except ProblemError:
        chat = ""
    if not is_group(chat):
        raise ProblemError(422, "invalid_chat_id", f"{raw!r} is not a group id: use <digits>@g.us")
    return chat


def participants_of(raw: list[str]) -> list[str]:
    """Participants as phones (E.164 digits) or LIDs, or 422 ``invalid_number``."""
    found = []
    for item in raw:
        chat = normalize_chat_id(item)
        if chat_kind(chat) not in ("phone", "lid"):
            raise ProblemError(
                422, "invalid_number", f"{item!r} is not a participant: use a phone number"
            )
        found.append(chat)
    return list(dict.fromkeys(found))


async def _call(
    services: Services, record: SessionRecord, op: Op, request: msgspec.Struct, reply: type[T]
) -> T:
    return await call_agent(services, running(record).node_id, op, request, reply)


# -- operations ---------------------------------------------------------------------------


async def list_groups(services: Services, principal: Principal, session_id: str) -> GroupListView:
    record = await load_record(services, principal, session_id)
    session = cache_id(record)
    cached = await _cached(services.cache, session, "list")
    if cached is not None:
        return GroupListView(session_id=session_id, groups=_list_decoder.decode(cached))
    found = await _call(
        services, record, Op.GROUPS_LIST, GroupsListRequest(session_id=record.spec.key), GroupList
    )
    await _remember(services.cache, session, "list", _encode(found.groups))
    return GroupListView(session_id=session_id, groups=found.groups)


async def group_info(
    services: Services, principal: Principal, session_id: str, group_id: str
) -> GroupInfo:
    record = await load_record(services, principal, session_id)
    group = group_id_of(group_id)
    session = cache_id(record)
    cached = await _cached(services.cache, session, group)
    if cached is not None:
        return _info_decoder.decode(cached)
    info = await _call(
        services,
        record,
        Op.GROUP_INFO,
        GroupRef(session_id=record.spec.key, group_id=group),
        GroupInfo,
    )
    await _remember(services.cache, session, group, _encode(info))
    return info


async def create_group(
    services: Services, principal: Principal, session_id: str, data: CreateGroupBody
) -> GroupCreatedView:
    record = await load_record(services, principal, session_id)
    participants = participants_of(data.participants)
    created = await _call(
        services,
        record,
        Op.GROUP_CREATE,
        GroupCreate(session_id=record.spec.key, subject=data.subject, participants=participants),
        GroupCreated,
    )
    await forget_group(services.cache, cache_id(record), None)
    return GroupCreatedView(session_id=session_id, group=created.group, results=created.results)


async def leave_group(
    services: Services, principal: Principal, session_id: str, group_id: str
) -> GroupLeftView:
    record = await load_record(services, principal, session_id)
    group = group_id_of(group_id)
    await _call(
        services,
        record,
        Op.GROUP_LEAVE,
        GroupRef(session_id=record.spec.key, group_id=group),
        Empty,
    )
    await forget_group(services.cache, cache_id(record), group)
    return GroupLeftView(session_id=session_id, group_id=group)


async def change_participants(
    services: Services,
    principal: Principal,
    session_id: str,
    group_id: str,
    data: ParticipantsBody,
) -> ParticipantsView:
    record = await load_record(services, principal, session_id)
    group = group_id_of(group_id)
    participants = participants_of(data.participants)
    changed = await _call(
        services,
        record,
        Op.GROUP_PARTICIPANTS,
        GroupParticipantsChange(
            session_id=record.spec.key,
            group_id=group,
            action=data.action,
            participants=participants,
        ),
        ParticipantsChanged,
    )
    await forget_group(services.cache, cache_id(record), group)
    return ParticipantsView(
        session_id=session_id, group_id=group, action=data.action, results=changed.results
    )


async def update_group(
    services: Services,
    principal: Principal,
    session_id: str,
    group_id: str,
    data: GroupSettingsBody,
) -> GroupInfo:
    record = await load_record(services, principal, session_id)
    group = group_id_of(group_id)
    changes = msgspec.structs.asdict(data)
    if all(value is None for value in changes.values()):
        raise ProblemError(400, "invalid_body", "nothing to change: name at least one setting")
    info = await _call(
        services,
        record,
        Op.GROUP_UPDATE,
        GroupUpdate(session_id=record.spec.key, group_id=group, **changes),
        GroupInfo,
    )
    session = cache_id(record)
    await forget_group(services.cache, session, group)
    return info


async def invite_link(
    services: Services,
    principal: Principal,
    session_id: str,
    group_id: str,
    *,
    revoke: bool = False,
) -> InviteView:
    record = await load_record(services, principal, session_id)
    group = group_id_of(group_id)
    invite = await _call(
        services,
        record,
        Op.GROUP_INVITE,
        GroupInviteRequest(session_id=record.spec.key, group_id=group, revoke=revoke),
        GroupInvite,
    )
    if revoke:
        await forget_group(services.cache, cache_id(record), group)
    return InviteView(session_id=session_id, group_id=group, link=invite.link)


async def join_group(
    services: Services, principal: Principal, session_id: str, link: str
) -> GroupJoinView:
    record = await load_record(services, principal, session_id)
    joined = await _call(
        services,
        record,
        Op.GROUP_JOIN,
        GroupLinkRequest(session_id=record.spec.key, link=link),
        GroupJoined,
    )
    await forget_group(services.cache, cache_id(record), joined.group_id)
    return GroupJoinView(
        session_id=session_id, group_id=joined.group_id, status=joined.status, group=joined.group
    )


async def set_picture(
    services: Services,
    principal: Principal,
    session_id: str,
    group_id: str,
    media: Media | None,
) -> GroupPictureView:
    """Set (``media``) or remove (None) the group's picture."""
    record = await load_record(services, principal, session_id)
    group = group_id_of(group_id)
    done = await _call(
        services,
        record,
        Op.GROUP_PICTURE,
        GroupPicture(session_id=record.spec.key, group_id=group, media=media),
        GroupPictureSet,
    )
    await forget_group(services.cache, cache_id(record), group)
    return GroupPictureView(session_id=session_id, group_id=group, picture_id=done.picture_id)


async def join_requests(
    services: Services, principal: Principal, session_id: str, group_id: str
) -> RequestsView:
    record = await load_record(services, principal, session_id)
    group = group_id_of(group_id)
    found = await _call(
        services,
        record,
        Op.GROUP_REQUESTS,
        GroupRef(session_id=record.spec.key, group_id=group),
        GroupRequests,
    )
    return RequestsView(session_id=session_id, group_id=group, requests=found.requests)


async def answer_requests(
    services: Services, principal: Principal, session_id: str, group_id: str, data: RequestsBody
) -> ParticipantsView:
    record = await load_record(services, principal, session_id)
    group = group_id_of(group_id)
    participants = participants_of(data.participants)
    changed = await _call(
        services,
        record,
        Op.GROUP_REQUESTS_UPDATE,
        GroupRequestsChange(
            session_id=record.spec.key,
            group_id=group,
            action=data.action,
            participants=participants,
        ),
        ParticipantsChanged,
    )
    await forget_group(services.cache, cache_id(record), group)
    return ParticipantsView(
        session_id=session_id, group_id=group, action=data.action, results=changed.results
    )


async def link_info(
    services: Services, principal: Principal, session_id: str, link: str
) -> GroupInfo:
    record = await load_record(services, principal, session_id)
    return await _call(
        services,
        record,
        Op.GROUP_LINK_INFO,
        GroupLinkRequest(session_id=record.spec.key, link=link),
        GroupInfo,
    )

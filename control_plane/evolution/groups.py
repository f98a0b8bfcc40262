"""Evolution's group controller (``/group/...``; the group in ``?groupJid=``) on
zapfleet's group service (control_plane/groups.py). Groups answer in Baileys'
``GroupMetadata`` shape (``id``, ``subject``, ``owner``, ``desc``, ``announce``,
``restrict``, ``participants[].admin``)."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar import Request, delete, get, post
from litestar.params import QueryParameter

from contract.protocol import INVITE_PREFIX, GroupInfo, Media
from control_plane import groups
from control_plane.evolution._common import (
    bad_request,
    chat_of,
    convert,
    for_instance,
    jid,
    read_body,
)
from control_plane.models import CreateGroupBody, GroupSettingsBody, ParticipantsBody
from control_plane.services import Services

_QUERY = {"rate": "queries"}
# what became of a participant, as the HTTP-like status Baileys reports
_STATUS = {
    "added": "200",
    "removed": "200",
    "promoted": "200",
    "demoted": "200",
    "approved": "200",
    "rejected": "200",
    "invite_sent": "403",
    "privacy_forbids": "403",
    "not_on_whatsapp": "404",
    "not_a_participant": "404",
    "not_requested": "404",
    "already_participant": "409",
    "recently_left": "409",
    "failed": "500",
}
# Evolution's updateSetting actions -> zapfleet's group settings
_SETTING = {
    "announcement": {"announce": True},
    "not_announcement": {"announce": False},
    "locked": {"locked": True},
    "unlocked": {"locked": False},
}


class CreateBody(msgspec.Struct, kw_only=True):
    subject: str
    participants: list[str] = msgspec.field(default_factory=list)
    description: str | None = None


class UpdateParticipantBody(msgspec.Struct, kw_only=True):
    action: str
    participants: list[str]


class SettingBody(msgspec.Struct, kw_only=True):
    action: str


class SubjectBody(msgspec.Struct, kw_only=True):
    subject: str


class DescriptionBody(msgspec.Struct, kw_only=True):
    description: str


class PictureBody(msgspec.Struct, kw_only=True):
    image: str


class EphemeralBody(msgspec.Struct, kw_only=True):
    expiration: int


def participants_of(group: GroupInfo) -> list[dict[str, Any]]:
    return [
        {
            "id": jid(member.id),
            "admin": None if member.role == "member" else member.role,
            **({"phoneNumber": jid(member.phone)} if member.phone else {}),
            **({"lid": member.lid} if member.lid else {}),
        }
        for member in group.participants
    ]


def metadata(group: GroupInfo, *, with_participants: bool = True) -> dict[str, Any]:
    created = int(group.created_at) if group.created_at else None
    answer: dict[str, Any] = {
        "id": group.id,
        "subject": group.subject,
        "subjectOwner": jid(group.owner),
        "subjectTime": created,
        "pictureUrl": None,
        "size": len(group.participants),
        "creation": created,
        "owner": jid(group.owner),
        "desc": group.description,
        "descId": None,
        "restrict": group.settings.locked,
        "announce": group.settings.announce,
        "ephemeralDuration": group.settings.ephemeral_s or None,
    }
    if with_participants:
        answer["participants"] = participants_of(group)
    return answer


def group_of(raw: str) -> str:
    chat = chat_of(raw)
    if not chat.endswith("@g.us"):
        raise bad_request(f"groupJid {raw!r} is not a group (…@g.us)")
    return chat


def invite_code(link: str) -> str:
    return link.removeprefix(INVITE_PREFIX)


@post("/group/create/{instance:str}")
async def create(
    request: Request[Any, Any, Any], services: Services, instance: str
) -> dict[str, Any]:
    principal = await for_instance(request, services, instance)
    body = convert(await read_body(request), CreateBody)
    created = await groups.create_group(
        services,
        principal,
        instance,
        convert(
            {"subject": body.subject, "participants": [chat_of(p) for p in body.participants]},
            CreateGroupBody,
        ),
    )
    group = created.group
    if body.description:
        group = await groups.update_group(
            services,
            principal,
            instance,
            group.id,
            convert({"description": body.description}, GroupSettingsBody),
        )
    return metadata(group)


@get("/group/fetchAllGroups/{instance:str}", opt=_QUERY)
async def fetch_all_groups(
    request: Request[Any, Any, Any],
    services: Services,
    instance: str,
    get_participants: Annotated[str, QueryParameter(name="getParticipants")] = "false",
) -> list[dict[str, Any]]:
    principal = await for_instance(request, services, instance)
    found = await groups.list_groups(services, principal, instance)
    full = get_participants.lower() == "true"
    return [metadata(g, with_participants=full) for g in found.groups]


@get("/group/findGroupInfos/{instance:str}", opt=_QUERY)
async def find_group_infos(
    request: Request[Any, Any, Any],
    services: Services,
    instance: str,
    group_jid: Annotated[str, QueryParameter(name="groupJid")],
) -> dict[str, Any]:
    principal = await for_instance(request, services, instance)
    return metadata(await groups.group_info(services, principal, instance, group_of(group_jid)))


@get("/group/participants/{instance:str}", opt=_QUERY)
async def participants(
    request: Request[Any, Any, Any],
    services: Services,
    instance: str,
    group_jid: Annotated[str, QueryParameter(name="groupJid")],
) -> dict[str, Any]:
    principal = await for_instance(request, services, instance)
    group = await groups.group_info(services, principal, instance, group_of(group_jid))
    return {"participants": participants_of(group)}


@post("/group/updateParticipant/{instance:str}")
async def update_participant(
    request: Request[Any, Any, Any],
    services: Services,
    instance: str,
    group_jid: Annotated[str, QueryParameter(name="groupJid")],
) -> dict[str, Any]:
    principal = await for_instance(request, services, instance)
    body = convert(await read_body(request), UpdateParticipantBody)
    changed = await groups.change_participants(
        services,
        principal,
        instance,
        group_of(group_jid),
        convert(
            {"action": body.action, "participants": [chat_of(p) for p in body.participants]},
            ParticipantsBody,
        ),
    )
    return {
        "updateParticipants": [
            {"status": _STATUS.get(r.status, "500"), "jid": jid(r.participant), "content": r.status}
            for r in changed.results
        ]
    }


@get("/group/inviteCode/{instance:str}", opt=_QUERY)
async def get_invite_code(
    request: Request[Any, Any, Any],
    services: Services,
    instance: str,
    group_jid: Annotated[str, QueryParameter(name="groupJid")],
) -> dict[str, Any]:
    principal = await for_instance(request, services, instance)
    invite = await groups.invite_link(services, principal, instance, group_of(group_jid))
    return {"inviteUrl": invite.link, "inviteCode": invite_code(invite.link)}


@post("/group/revokeInviteCode/{instance:str}")
async def revoke_invite_code(
    request: Request[Any, Any, Any],
    services: Services,
    instance: str,
    group_jid: Annotated[str, QueryParameter(name="groupJid")],
) -> dict[str, Any]:
    principal = await for_instance(request, services, instance)
    invite = await groups.invite_link(
        services, principal, instance, group_of(group_jid), revoke=True
    )
    return {"revoked": True, "inviteCode": invite_code(invite.link)}


@get("/group/inviteInfo/{instance:str}", opt=_QUERY)
async def invite_info(
    request: Request[Any, Any, Any],
    services: Services,
    instance: str,
    code: Annotated[str, QueryParameter(name="inviteCode")],
) -> dict[str, Any]:
    principal = await for_instance(request, services, instance)
    return metadata(await groups.link_info(services, principal, instance, code))


@get("/group/acceptInviteCode/{instance:str}")
async def accept_invite_code(
    request: Request[Any, Any, Any],
    services: Services,
    instance: str,
    code: Annotated[str, QueryParameter(name="inviteCode")],
) -> dict[str, Any]:
    principal = await for_instance(request, services, instance)
    joined = await groups.join_group(services, principal, instance, code)
    return {"accepted": joined.status == "joined", "groupJid": joined.group_id}


async def _update(
    request: Request[Any, Any, Any],
    services: Services,
    instance: str,
    group_jid: str,
    change: dict[str, Any],
) -> None:
    principal = await for_instance(request, services, instance)
    await groups.update_group(
        services, principal, instance, group_of(group_jid), convert(change, GroupSettingsBody)
    )


@post("/group/updateSetting/{instance:str}")
async def update_setting(
    request: Request[Any, Any, Any],
    services: Services,
    instance: str,
    group_jid: Annotated[str, QueryParameter(name="groupJid")],
) -> dict[str, Any]:
    body = convert(await read_body(request), SettingBody)
    change = _SETTING.get(body.action)
    if change is None:
        raise bad_request(f"action must be one of {', '.join(_SETTING)}")
    await _update(request, services, instance, group_jid, change)
    return {"updateSetting": True}


@post("/group/toggleEphemeral/{instance:str}")
async def toggle_ephemeral(
    request: Request[Any, Any, Any],
    services: Services,
    instance: str,
    group_jid: Annotated[str, QueryParameter(name="groupJid")],
) -> dict[str, Any]:
    body = convert(await read_body(request), EphemeralBody)
    await _update(request, services, instance, group_jid, {"ephemeral_s": body.expiration})
    return {"success": True}


@post("/group/updateGroupSubject/{instance:str}")
async def update_group_subject(
    request: Request[Any, Any, Any],
    services: Services,
    instance: str,
    group_jid: Annotated[str, QueryParameter(name="groupJid")],
) -> dict[str, Any]:
    body = convert(await read_body(request), SubjectBody)
    await _update(request, services, instance, group_jid, {"subject": body.subject})
    return {"update": "success"}


@post("/group/updateGroupDescription/{instance:str}")
async def update_group_description(
    request: Request[Any, Any, Any],
    services: Services,
    instance: str,
    group_jid: Annotated[str, QueryParameter(name="groupJid")],
) -> dict[str, Any]:
    body = convert(await read_body(request), DescriptionBody)
    await _update(request, services, instance, group_jid, {"description": body.description})
    return {"update": "success"}


@post("/group/updateGroupPicture/{instance:str}")
async def update_group_picture(
    request: Request[Any, Any, Any],
    services: Services,
    instance: str,
    group_jid: Annotated[str, QueryParameter(name="groupJid")],
) -> dict[str, Any]:
    principal = await for_instance(request, services, instance)
    body = convert(await read_body(request), PictureBody)
    image = body.image
    if image.startswith(("http://", "https://")):
        media = Media(url=image)
    else:
        media = Media(base64=image.partition(",")[2] if image.startswith("data:") else image)
    await groups.set_picture(services, principal, instance, group_of(group_jid), media)
    return {"update": "success"}


@delete("/group/leaveGroup/{instance:str}", status_code=200)
async def leave_group(
    request: Request[Any, Any, Any],
    services: Services,
    instance: str,
    group_jid: Annotated[str, QueryParameter(name="groupJid")],
) -> dict[str, Any]:
    principal = await for_instance(request, services, instance)
    group = group_of(group_jid)
    await groups.leave_group(services, principal, instance, group)
    return {"groupJid": group, "leave": True}


ROUTES = [
    create,
    fetch_all_groups,
    find_group_infos,
    participants,
    update_participant,
    get_invite_code,
    revoke_invite_code,
    invite_info,
    accept_invite_code,
    update_setting,
    toggle_ephemeral,
    update_group_subject,
    update_group_description,
    update_group_picture,
    leave_group,
]

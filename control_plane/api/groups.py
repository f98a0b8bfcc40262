"""/v1/sessions/{id}/groups: the groups of a session (issue 16).

HTTP only: every handler maps its request to a function of :mod:`control_plane.groups`,
which the NATS commands call too.
"""

from __future__ import annotations

from litestar import Controller, delete, get, patch, post, put
from litestar.di import Provide

from contract.protocol import GroupInfo
from control_plane import groups
from control_plane.api.sessions import QUERIES
from control_plane.auth import Principal, authenticate
from control_plane.models import (
    CreateGroupBody,
    GroupCreatedView,
    GroupJoinView,
    GroupLeftView,
    GroupListView,
    GroupPictureBody,
    GroupPictureView,
    GroupSettingsBody,
    InviteLinkBody,
    InviteView,
    ParticipantsBody,
    ParticipantsView,
    RequestsBody,
    RequestsView,
)
from control_plane.services import Services

CHANGES = {"rate": "messages"}  # each one is a request to WhatsApp


class GroupController(Controller):
    path = "/v1/sessions/{session_id:str}/groups"
    tags = ["groups"]
    dependencies = {"principal": Provide(authenticate)}

    @get("/", opt=QUERIES, summary="The groups the session's account is in")
    async def list_groups(
        self, session_id: str, services: Services, principal: Principal
    ) -> GroupListView:
        return await groups.list_groups(services, principal, session_id)

    @post("/", status_code=201, opt=CHANGES, summary="Create a group (per-participant results)")
    async def create(
        self, session_id: str, data: CreateGroupBody, services: Services, principal: Principal
    ) -> GroupCreatedView:
        return await groups.create_group(services, principal, session_id, data)

    @post("/join", status_code=200, opt=CHANGES, summary="Join a group by invite link")
    async def join(
        self, session_id: str, data: InviteLinkBody, services: Services, principal: Principal
    ) -> GroupJoinView:
        return await groups.join_group(services, principal, session_id, data.link)

    @post(
        "/link-info",
        status_code=200,
        opt=QUERIES,
        summary="The group behind an invite link, without joining",
    )
    async def link_info(
        self, session_id: str, data: InviteLinkBody, services: Services, principal: Principal
    ) -> GroupInfo:
        return await groups.link_info(services, principal, session_id, data.link)

    @get("/{group_id:str}", opt=QUERIES, summary="A group: subject, participants, settings")
    async def info(
        self, session_id: str, group_id: str, services: Services, principal: Principal
    ) -> GroupInfo:
        return await groups.group_info(services, principal, session_id, group_id)

    @patch(
        "/{group_id:str}",
        opt=CHANGES,
        summary="Change subject, description, announce, locked, ephemeral timer",
    )
    async def update(
        self,
        session_id: str,
        group_id: str,
        data: GroupSettingsBody,
        services: Services,
        principal: Principal,
    ) -> GroupInfo:
        return await groups.update_group(services, principal, session_id, group_id, data)

    @post("/{group_id:str}/leave", status_code=200, opt=CHANGES, summary="Leave a group")
    async def leave(
        self, session_id: str, group_id: str, services: Services, principal: Principal
    ) -> GroupLeftView:
        return await groups.leave_group(services, principal, session_id, group_id)

    @post(
        "/{group_id:str}/participants",
        status_code=200,
        opt=CHANGES,
        summary="Add, remove, promote or demote participants (one result each)",
    )
    async def participants(
        self,
        session_id: str,
        group_id: str,
        data: ParticipantsBody,
        services: Services,
        principal: Principal,
    ) -> ParticipantsView:
        return await groups.change_participants(services, principal, session_id, group_id, data)

    @get("/{group_id:str}/invite", opt=QUERIES, summary="The group's invite link (admins)")
    async def invite(
        self, session_id: str, group_id: str, services: Services, principal: Principal
    ) -> InviteView:
        return await groups.invite_link(services, principal, session_id, group_id)

    @post(
        "/{group_id:str}/invite/revoke",
        status_code=200,
        opt=CHANGES,
        summary="Revoke the invite link; returns the new one (admins)",
    )
    async def revoke_invite(
        self, session_id: str, group_id: str, services: Services, principal: Principal
    ) -> InviteView:
        return await groups.invite_link(services, principal, session_id, group_id, revoke=True)

    @get("/{group_id:str}/requests", opt=QUERIES, summary="Pending join requests (admins)")
    async def requests(
        self, session_id: str, group_id: str, services: Services, principal: Principal
    ) -> RequestsView:
        return await groups.join_requests(services, principal, session_id, group_id)

    @post(
        "/{group_id:str}/requests",
        status_code=200,
        opt=CHANGES,
        summary="Approve or reject join requests (one result each; admins)",
    )
    async def answer_requests(
        self,
        session_id: str,
        group_id: str,
        data: RequestsBody,
        services: Services,
        principal: Principal,
    ) -> ParticipantsView:
        return await groups.answer_requests(services, principal, session_id, group_id, data)

    @put(
        "/{group_id:str}/picture",
        status_code=200,
        opt=CHANGES,
        summary="Set the group's picture (any image; sent as a square JPEG)",
    )
    async def set_picture(
        self,
        session_id: str,
        group_id: str,
        data: GroupPictureBody,
        services: Services,
        principal: Principal,
    ) -> GroupPictureView:
        return await groups.set_picture(services, principal, session_id, group_id, data.media)

    @delete(
        "/{group_id:str}/picture",
        status_code=200,
        opt=CHANGES,
        summary="Remove the group's picture",
    )
    async def remove_picture(
        self, session_id: str, group_id: str, services: Services, principal: Principal
    ) -> GroupPictureView:
        return await groups.set_picture(services, principal, session_id, group_id, None)

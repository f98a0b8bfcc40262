"""Contacts, own profile, privacy, blocking and call settings (issue 16): HTTP mapped onto
the service functions of control_plane/contacts.py (the NATS commands use them too).

- ``GET /v1/sessions/{id}/contacts``, ``GET .../contacts/{chat}``,
  ``GET .../contacts/{chat}/picture``
- ``POST .../contacts/{chat}/block``, ``POST .../contacts/{chat}/unblock``, ``GET .../blocklist``
- ``PATCH .../profile``, ``PUT|DELETE .../profile/picture``
- ``GET|PATCH .../privacy``
- ``GET|PUT .../settings/calls``
"""

from __future__ import annotations

from typing import Any

from litestar import Controller, delete, get, patch, post, put
from litestar.di import Provide

from control_plane import contacts as svc
from control_plane.api.sessions import QUERIES, SESSION_OPS
from control_plane.auth import Principal, authenticate
from control_plane.contacts import (
    PICTURE_BODY_LIMIT,
    BlocklistView,
    CallSettingsBody,
    CallSettingsView,
    ContactsView,
    ContactView,
    PictureBody,
    PictureView,
    PrivacyBody,
    PrivacyView,
    ProfileBody,
    ProfileView,
)
from control_plane.services import Services


class ContactsController(Controller):
    path = "/v1/sessions/{session_id:str}"
    tags = ["contacts"]
    dependencies = {"principal": Provide(authenticate)}

    @get("/contacts", opt=QUERIES, summary="The contacts in the session's store")
    async def list_contacts(
        self, session_id: str, services: Services, principal: Principal
    ) -> ContactsView:
        return await svc.list_contacts(services, principal, session_id)

    @get(
        "/contacts/{chat:str}",
        opt=QUERIES,
        summary="A contact: names, business flag, about text, profile picture",
    )
    async def contact(
        self, session_id: str, chat: str, services: Services, principal: Principal
    ) -> ContactView:
        return await svc.contact_info(services, principal, session_id, chat)

    @get("/contacts/{chat:str}/picture", opt=QUERIES, summary="A contact's profile picture URL")
    async def contact_picture(
        self, session_id: str, chat: str, services: Services, principal: Principal
    ) -> PictureView:
        return await svc.contact_picture(services, principal, session_id, chat)

    @post("/contacts/{chat:str}/block", status_code=200, opt=SESSION_OPS, summary="Block")
    async def block(
        self, session_id: str, chat: str, services: Services, principal: Principal
    ) -> BlocklistView:
        return await svc.block_contact(services, principal, session_id, chat, True)

    @post("/contacts/{chat:str}/unblock", status_code=200, opt=SESSION_OPS, summary="Unblock")
    async def unblock(
        self, session_id: str, chat: str, services: Services, principal: Principal
    ) -> BlocklistView:
        return await svc.block_contact(services, principal, session_id, chat, False)

    @get("/blocklist", opt=QUERIES, summary="The contacts this account blocked")
    async def blocklist(
        self, session_id: str, services: Services, principal: Principal
    ) -> BlocklistView:
        return await svc.blocklist(services, principal, session_id)

    @patch("/profile", opt=SESSION_OPS, summary="Change the push name and/or the about text")
    async def patch_profile(
        self, session_id: str, data: ProfileBody, services: Services, principal: Principal
    ) -> ProfileView:
        return await svc.set_profile(
            services, principal, session_id, name=data.name, about=data.about
        )

    @put(
        "/profile/picture",
        opt=SESSION_OPS,
        request_max_body_size=PICTURE_BODY_LIMIT,
        summary="Set the profile picture (any image; cropped square, ≤ 640x640 JPEG)",
    )
    async def put_picture(
        self, session_id: str, data: PictureBody, services: Services, principal: Principal
    ) -> ProfileView:
        return await svc.set_profile(services, principal, session_id, picture=data.base64)

    @delete("/profile/picture", status_code=200, opt=SESSION_OPS, summary="Remove the picture")
    async def delete_picture(
        self, session_id: str, services: Services, principal: Principal
    ) -> ProfileView:
        return await svc.set_profile(services, principal, session_id, remove_picture=True)

    @get("/privacy", opt=QUERIES, summary="The account's privacy settings")
    async def get_privacy(
        self, session_id: str, services: Services, principal: Principal
    ) -> PrivacyView:
        return await svc.get_privacy(services, principal, session_id)

    @patch("/privacy", opt=SESSION_OPS, summary="Change privacy settings")
    async def patch_privacy(
        self, session_id: str, data: PrivacyBody, services: Services, principal: Principal
    ) -> PrivacyView:
        return await svc.set_privacy(services, principal, session_id, data)

    @get("/settings/calls", opt=QUERIES, summary="What the session does with incoming calls")
    async def get_call_settings(
        self, session_id: str, services: Services, principal: Principal
    ) -> CallSettingsView:
        return await svc.get_call_settings(services, principal, session_id)

    @put(
        "/settings/calls",
        opt=SESSION_OPS,
        summary="Reject incoming calls automatically, optionally answering with a text",
    )
    async def put_call_settings(
        self, session_id: str, data: CallSettingsBody, services: Services, principal: Principal
    ) -> CallSettingsView:
        return await svc.put_call_settings(services, principal, session_id, data)


__all__: list[Any] = ["ContactsController"]

"""Evolution's profile routes (under ``/chat/...``: the account's own name, status,
picture and privacy) on zapfleet's contacts service (control_plane/contacts.py)."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Request, delete, get, post

from control_plane import contacts
from control_plane.contacts import PrivacyBody
from control_plane.evolution._common import bad_request, convert, for_instance, read_body
from control_plane.services import Services

# Evolution's privacy names -> zapfleet's
PRIVACY = {
    "readreceipts": "read_receipts",
    "profile": "picture",
    "status": "about",
    "online": "online",
    "last": "last_seen",
    "groupadd": "groups_add",
}


class NameBody(msgspec.Struct, kw_only=True):
    name: str


class StatusBody(msgspec.Struct, kw_only=True):
    status: str


class PictureBody(msgspec.Struct, kw_only=True):
    picture: str


def privacy_answer(privacy: contacts.PrivacyView) -> dict[str, Any]:
    return {evo: getattr(privacy, ours) for evo, ours in PRIVACY.items()}


@post("/chat/updateProfileName/{instance:str}")
async def update_profile_name(
    request: Request[Any, Any, Any], services: Services, instance: str
) -> dict[str, Any]:
    principal = await for_instance(request, services, instance)
    body = convert(await read_body(request), NameBody)
    await contacts.set_profile(services, principal, instance, name=body.name)
    return {"update": "success"}


@post("/chat/updateProfileStatus/{instance:str}")
async def update_profile_status(
    request: Request[Any, Any, Any], services: Services, instance: str
) -> dict[str, Any]:
    principal = await for_instance(request, services, instance)
    body = convert(await read_body(request), StatusBody)
    await contacts.set_profile(services, principal, instance, about=body.status)
    return {"update": "success"}


@post("/chat/updateProfilePicture/{instance:str}")
async def update_profile_picture(
    request: Request[Any, Any, Any], services: Services, instance: str
) -> dict[str, Any]:
    """base64 (or a data URL) only: zapfleet does not fetch a picture URL here."""
    principal = await for_instance(request, services, instance)
    body = convert(await read_body(request), PictureBody)
    picture = body.picture
    if picture.startswith(("http://", "https://")):
        raise bad_request("picture: zapfleet takes the image as base64, not a URL")
    if picture.startswith("data:") and "," in picture:
        picture = picture.partition(",")[2]
    await contacts.set_profile(services, principal, instance, picture=picture)
    return {"update": "success"}


@delete("/chat/removeProfilePicture/{instance:str}", status_code=200)
async def remove_profile_picture(
    request: Request[Any, Any, Any], services: Services, instance: str
) -> dict[str, Any]:
    principal = await for_instance(request, services, instance)
    await contacts.set_profile(services, principal, instance, remove_picture=True)
    return {"update": "success"}


@get("/chat/fetchPrivacySettings/{instance:str}", opt={"rate": "queries"})
async def fetch_privacy_settings(
    request: Request[Any, Any, Any], services: Services, instance: str
) -> dict[str, Any]:
    principal = await for_instance(request, services, instance)
    return privacy_answer(await contacts.get_privacy(services, principal, instance))


@post("/chat/updatePrivacySettings/{instance:str}")
async def update_privacy_settings(
    request: Request[Any, Any, Any], services: Services, instance: str
) -> dict[str, Any]:
    principal = await for_instance(request, services, instance)
    raw = await read_body(request)
    wanted = {ours: raw[evo] for evo, ours in PRIVACY.items() if raw.get(evo) is not None}
    changed = await contacts.set_privacy(
        services, principal, instance, convert(wanted, PrivacyBody)
    )
    return {"update": "success", "data": privacy_answer(changed)}


ROUTES = [
    update_profile_name,
    update_profile_status,
    update_profile_picture,
    remove_profile_picture,
    fetch_privacy_settings,
    update_privacy_settings,
]

"""Routes of the web UI.

- ``/ui/...``        the static pages (index.html, CSS, ES modules), cached by revalidation;
- ``/``              redirects to ``/ui/`` so a browser pointed at the server finds the UI;
- ``/ui/api/me``     who the presented key is (tenant, admin or not): the sign-in check;
- ``/ui/api/sessions/{id}/qr``  the current QR code as a string and as SVG, or nulls when
  the session is not pairing. The pairing page polls it; unlike ``/v1/.../qr`` it does
  not answer 409 when the phone scanned between two polls, so a page that follows a
  pairing never logs a failed request.

The key travels only in the ``Authorization`` header; none of these routes reads a key
from a URL or a cookie.
"""

from __future__ import annotations

import io
from pathlib import Path

import msgspec
import segno
from litestar import Controller, Router, get
from litestar.datastructures import CacheControlHeader
from litestar.di import Provide
from litestar.response import Redirect
from litestar.static_files import create_static_files_router

from control_plane import sessions as session_service
from control_plane.auth import Principal, authenticate
from control_plane.services import Services

STATIC_DIR = Path(__file__).resolve().parent / "static"


class Me(msgspec.Struct, kw_only=True):
    tenant: str
    is_admin: bool


class PairingQr(msgspec.Struct, kw_only=True):
    session_id: str
    qr: str | None = None
    svg: str | None = None
    expires_at: float | None = None


def qr_svg(code: str) -> str:
    """A standalone SVG document (black on white, 4-module quiet zone) for ``code``."""
    out = io.BytesIO()
    segno.make(code, error="m").save(
        out, kind="svg", scale=8, border=4, light="#fff", xmldecl=False, svgns=True
    )
    return out.getvalue().decode()


class UiApiController(Controller):
    path = "/ui/api"
    tags = ["ui"]
    dependencies = {"principal": Provide(authenticate)}

    @get("/me", summary="The tenant of the presented key and whether it is the admin key")
    async def me(self, principal: Principal) -> Me:
        return Me(tenant=principal.tenant, is_admin=principal.is_admin)

    @get("/sessions/{session_id:str}/qr", summary="The QR code while pairing, else nulls")
    async def pairing_qr(
        self, session_id: str, services: Services, principal: Principal
    ) -> PairingQr:
        code = await session_service.pairing_qr(services, principal, session_id)
        if code is None:
            return PairingQr(session_id=session_id)
        return PairingQr(
            session_id=session_id, qr=code.code, svg=qr_svg(code.code), expires_at=code.expires_at
        )


@get("/", include_in_schema=False)
async def root_redirect() -> Redirect:
    return Redirect(path="/ui/", status_code=302)


def ui_route_handlers() -> list[Router | type[Controller] | object]:
    static = create_static_files_router(
        path="/ui",
        directories=[STATIC_DIR],
        html_mode=True,
        name="ui",
        cache_control=CacheControlHeader(no_cache=True),
        include_in_schema=False,
    )
    return [static, UiApiController, root_redirect]

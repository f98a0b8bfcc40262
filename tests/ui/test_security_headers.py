"""Security headers on the UI and the API, no inline script anywhere in the UI, and CORS
denied unless an origin is on the allow-list."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import httpx
from litestar import Litestar, get
from litestar.testing import TestClient

from control_plane.security import SecurityHeadersMiddleware, cors_config
from control_plane.ui import STATIC_DIR
from tests.ui.stack import UiStack

COMMON = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
}


def test_the_ui_is_served_with_a_strict_content_security_policy(ui_stack: UiStack) -> None:
    with httpx.Client(base_url=ui_stack.base_url) as client:
        root = client.get("/")
        page = client.get("/ui/")
        script = client.get("/ui/js/app.js")
    assert root.status_code == 302 and root.headers["location"] == "/ui/"
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    for response in (page, script):
        for name, value in COMMON.items():
            assert response.headers[name] == value, (name, response.url)
        csp = response.headers["content-security-policy"]
        directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
        assert directives["script-src"] == "'self'"
        assert directives["frame-ancestors"] == "'none'"
        assert directives["default-src"] == "'none'"
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp


def test_api_responses_carry_the_headers_too(ui_stack: UiStack) -> None:
    with httpx.Client(base_url=ui_stack.base_url) as client:
        unauthenticated = client.get("/v1/sessions/nobody")
        authenticated = client.get("/v1/sessions/nobody", headers=ui_stack.headers)
        health = client.get("/monitoring/health")
    for response in (unauthenticated, authenticated, health):
        for name, value in COMMON.items():
            assert response.headers[name] == value
        assert response.headers["content-security-policy"].startswith("default-src 'none'")


class _Inline(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.problems: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        names = {name for name, _ in attrs}
        if tag == "script" and "src" not in names:
            self.problems.append("inline <script>")
        if tag == "style":
            self.problems.append("inline <style>")
        self.problems += [f"{tag} {n}=" for n in names if n.startswith("on") or n == "style"]


def test_the_ui_has_no_inline_script_or_style_and_never_puts_the_key_in_a_url() -> None:
    parser = _Inline()
    parser.feed((STATIC_DIR / "index.html").read_text())
    assert parser.problems == []
    for module in (STATIC_DIR / "js").rglob("*.js"):
        source = module.read_text()
        code = "\n".join(line for line in source.splitlines() if not line.lstrip().startswith("//"))
        assert not re.search(r"\.(inner|outer)HTML\b|insertAdjacentHTML|\beval\(", code), module
        assert "localStorage" not in code and "document.cookie" not in code, module
        # the key only ever goes into the Authorization header (the browser test also
        # checks every URL the page loaded)
        assert not re.search(r"[?&](api_?)?(key|token)=", code, re.IGNORECASE), module


def test_cross_origin_requests_are_denied_by_default(ui_stack: UiStack) -> None:
    with httpx.Client(base_url=ui_stack.base_url) as client:
        preflight = client.options(
            "/v1/sessions",
            headers={
                "Origin": "https://evil.example",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization,content-type",
            },
        )
        simple = client.get("/monitoring/health", headers={"Origin": "https://evil.example"})
    for response in (preflight, simple):
        assert "access-control-allow-origin" not in response.headers
        assert "access-control-allow-headers" not in response.headers


def _app(origins: list[str]) -> Litestar:
    @get("/v1/ping")
    async def ping() -> dict[str, str]:
        return {"pong": "yes"}

    return Litestar(
        route_handlers=[ping],
        middleware=[SecurityHeadersMiddleware],
        cors_config=cors_config(origins),
    )


def test_an_allow_listed_origin_may_call_the_api_and_no_other() -> None:
    assert cors_config([]) is None and cors_config([" ", ""]) is None
    with TestClient(_app(["https://ops.example.com/"])) as client:
        allowed = client.options(
            "/v1/ping",
            headers={
                "Origin": "https://ops.example.com",
                "Access-Control-Request-Method": "GET",
                "Access-Control-Request-Headers": "authorization",
            },
        )
        other = client.get("/v1/ping", headers={"Origin": "https://evil.example"})
        same = client.get("/v1/ping", headers={"Origin": "https://ops.example.com"})
    assert allowed.status_code in (200, 204)
    assert allowed.headers["access-control-allow-origin"] == "https://ops.example.com"
    assert "authorization" in allowed.headers["access-control-allow-headers"].lower()
    assert "access-control-allow-credentials" not in allowed.headers
    assert same.headers["access-control-allow-origin"] == "https://ops.example.com"
    assert "access-control-allow-origin" not in other.headers
    assert other.headers["x-frame-options"] == "DENY"

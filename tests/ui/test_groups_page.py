"""The console's groups page (issue 16), in headless Chromium against a real stack: a sim
session creates a group from the page (one result per participant: added, not on
WhatsApp), the group appears with this account as its superadmin, its detail lists the
participants with their roles and shows the invite link; the other member's page lists
the group too and leaves it from the page (the API agrees). Any console error fails."""

from __future__ import annotations

import asyncio
import secrets

import httpx

from tests.ui.browser import Browser
from tests.ui.stack import UiStack
from tests.ui.test_console import sign_in
from tests.ui.test_conversation import pair


async def prepare(stack: UiStack, ann: str, ann_phone: str, bob: str, bob_phone: str) -> None:
    async with httpx.AsyncClient(base_url=stack.base_url, headers=stack.headers, timeout=20) as api:
        await pair(api, stack.nats_url, ann, ann_phone)
        await pair(api, stack.nats_url, bob, bob_phone)


async def groups_of(stack: UiStack, session_id: str) -> list[str]:
    async with httpx.AsyncClient(base_url=stack.base_url, headers=stack.headers) as api:
        answer = (await api.get(f"/v1/sessions/{session_id}/groups")).json()
        return [g["subject"] for g in answer["groups"]]


def test_the_groups_page_creates_shows_and_leaves(browser: Browser, ui_stack: UiStack) -> None:
    b = browser
    ann, bob = f"grp-a-{secrets.token_hex(3)}", f"grp-b-{secrets.token_hex(3)}"
    ann_phone = "1555015" + str(secrets.randbelow(9000) + 1000)
    bob_phone = "1555014" + str(secrets.randbelow(9000) + 1000)
    nobody = "1555013" + str(secrets.randbelow(9000) + 1000)  # not on WhatsApp
    asyncio.run(prepare(ui_stack, ann, ann_phone, bob, bob_phone))
    sign_in(b, ui_stack)

    b.open(f"{ui_stack.base_url}/ui/#/sessions/{ann}")
    b.wait_visible("#open-groups").click()
    b.wait_for("the groups page", lambda: b.driver.current_url.endswith(f"#/groups/{ann}"))
    b.wait_for("an empty list", lambda: "No groups yet" in b.find("#group-rows").text)
    b.type_into("#new-group-subject", "Console team")
    b.type_into("#new-group-participants", f"+{bob_phone}, +{nobody}")
    b.find("#create-group-form button").click()
    b.wait_visible("#create-results")
    statuses = {
        li.get_attribute("data-participant"): li.get_attribute("data-status")
        for li in b.find_all("#create-results li")
    }
    assert statuses == {bob_phone: "added", nobody: "not_on_whatsapp"}
    row = b.wait_visible("#group-rows tr[data-group]")
    assert "Console team" in row.text
    assert row.find_element("css selector", "td[data-role]").text == "superadmin"
    b.wait_visible("#group-detail")
    assert b.find("#group-subject").text == "Console team"
    roles = {
        tr.get_attribute("data-member"): tr.find_element("css selector", "td[data-role]").text
        for tr in b.find_all("#member-rows tr")
    }
    assert roles == {ann_phone: "superadmin", bob_phone: "member"}
    b.find("#show-invite").click()
    b.wait_for(
        "the invite link",
        lambda: b.find("#invite-link").text.startswith("https://chat.whatsapp.com/"),
    )
    b.screenshot("group")
    b.check_console()

    b.open(f"{ui_stack.base_url}/ui/#/groups/{bob}")
    bobs = b.wait_visible("#group-rows tr[data-group]")
    assert "Console team" in bobs.text
    assert bobs.find_element("css selector", "td[data-role]").text == "member"
    bobs.find_element("css selector", "button[data-open]").click()
    b.wait_visible("#group-detail")
    assert not b.find("#show-invite").is_displayed()  # no admin, no link
    b.find("#leave-group").click()
    b.wait_visible("#confirm-ok").click()
    b.wait_for("the list to empty", lambda: "No groups yet" in b.find("#group-rows").text)
    assert asyncio.run(groups_of(ui_stack, bob)) == []
    assert asyncio.run(groups_of(ui_stack, ann)) == ["Console team"]
    b.check_console()

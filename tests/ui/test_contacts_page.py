"""The console's contacts page (issue 16), in headless Chromium against a real stack: a
sim session whose phone saved a contact lists it with its name, blocks it from the page
(the block list shows it, the API agrees), unblocks it, and looks up a business account.
Any console error fails the test."""

from __future__ import annotations

import asyncio
import secrets

import httpx
import nats

from node_agent.engines.sim import make_business, save_contact
from tests.ui.browser import Browser
from tests.ui.stack import UiStack
from tests.ui.test_console import sign_in
from tests.ui.test_conversation import pair


async def prepare(stack: UiStack, ann: str, ann_phone: str, bob: str, bob_phone: str) -> None:
    async with httpx.AsyncClient(base_url=stack.base_url, headers=stack.headers, timeout=20) as api:
        await pair(api, stack.nats_url, ann, ann_phone)
        await pair(api, stack.nats_url, bob, bob_phone)
    nc = await nats.connect(stack.nats_url)
    try:
        await save_contact(nc, ann_phone, bob_phone, "Bob from the shop")
        await make_business(nc, bob_phone, "Bob's Bikes")
    finally:
        await nc.close()


async def blocklist(stack: UiStack, session_id: str) -> list[str]:
    async with httpx.AsyncClient(base_url=stack.base_url, headers=stack.headers) as api:
        found: list[str] = (await api.get(f"/v1/sessions/{session_id}/blocklist")).json()["blocked"]
        return found


def test_the_contacts_page_lists_blocks_and_looks_up(browser: Browser, ui_stack: UiStack) -> None:
    b = browser
    ann, bob = f"cont-a-{secrets.token_hex(3)}", f"cont-b-{secrets.token_hex(3)}"
    ann_phone = "1555017" + str(secrets.randbelow(9000) + 1000)
    bob_phone = "1555016" + str(secrets.randbelow(9000) + 1000)
    asyncio.run(prepare(ui_stack, ann, ann_phone, bob, bob_phone))
    sign_in(b, ui_stack)

    b.open(f"{ui_stack.base_url}/ui/#/sessions/{ann}")
    b.wait_visible("#open-contacts").click()
    b.wait_for("the contacts page", lambda: b.driver.current_url.endswith(f"#/contacts/{ann}"))
    row = b.wait_visible(f"#contact-rows tr[data-contact='{bob_phone}']")
    assert "Bob from the shop" in row.text and "Bob's Bikes" in row.text
    assert "Nobody is blocked" in b.find("#blocked-list").text

    b.find(f"#contact-rows button[data-block='{bob_phone}']").click()
    b.wait_visible(f"#blocked-list li[data-blocked='{bob_phone}']")
    assert asyncio.run(blocklist(ui_stack, ann)) == [bob_phone]
    b.wait_for(
        "the row to offer unblocking",
        lambda: b.find(f"#contact-rows button[data-block='{bob_phone}']").text == "Unblock",
    )
    b.screenshot("blocked")
    b.find(f"#blocked-list button[data-block='{bob_phone}']").click()
    b.wait_for(
        "the block list to empty", lambda: "Nobody is blocked" in b.find("#blocked-list").text
    )
    assert asyncio.run(blocklist(ui_stack, ann)) == []

    b.type_into("#lookup-number", "+" + bob_phone)
    b.find("#lookup-form button").click()
    b.wait_visible("#lookup-result")
    assert b.find("#lookup-result dd[data-field='business']").text == "Bob's Bikes"
    assert b.find("#lookup-result dd[data-field='name']").text == "Bob from the shop"
    b.check_console()

"""The console's conversation view (issue 15), in headless Chromium against a real stack:
two sim sessions talk; the receiver's page lists the chat, shows the text and a preview
of the image it stored; the sender's page shows status ticks (read, queued) and sends a
reply from the page. Any console error fails the test."""

from __future__ import annotations

import asyncio
import base64
import io
import secrets
import time
from typing import Any

import httpx
import nats

from node_agent.engines.sim import link
from tests.ui.browser import Browser
from tests.ui.stack import UiStack
from tests.ui.test_console import sign_in


def png() -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (120, 80), (220, 60, 20)).save(out, format="PNG")
    return out.getvalue()


async def pair(api: httpx.AsyncClient, nats_url: str, session_id: str, number: str) -> None:
    fast = {"min_gap_per_recipient_s": 0, "rate_per_s": 10, "burst": 10}
    created = await api.post(
        "/v1/sessions", json={"session_id": session_id, "engine": "sim", "pacing": fast}
    )
    assert created.status_code == 201, created.text
    nc = await nats.connect(nats_url)
    try:
        deadline = time.monotonic() + 20
        while True:
            qr = await api.get(f"/v1/sessions/{session_id}/qr")
            if qr.status_code == 200:
                result = await link(nc, qr.json()["qr"], number)
                if result.ok:
                    break
            assert time.monotonic() < deadline, qr.text
            await asyncio.sleep(0.2)
        while (await api.get(f"/v1/sessions/{session_id}")).json()["state"] != "CONNECTED":
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
    finally:
        await nc.close()


async def converse(stack: UiStack, alice: str, bob: str, bob_phone: str) -> list[str]:
    """alice and bob paired; bob stores media; alice sends a text, an image, then (paced
    to one message per chat per hour) a text that stays queued. Returns the message ids."""
    async with httpx.AsyncClient(base_url=stack.base_url, headers=stack.headers, timeout=20) as api:
        await pair(api, stack.nats_url, alice, "1555018" + str(secrets.randbelow(9000) + 1000))
        await pair(api, stack.nats_url, bob, bob_phone)
        stored = await api.put(f"/v1/sessions/{bob}/settings/media", json={"inbound": "store"})
        assert stored.status_code == 200, stored.text
        ids = []
        image = {"base64": base64.b64encode(png()).decode(), "mimetype": "image/png"}
        for body in (
            {"type": "text", "text": "hello bob"},
            {"type": "image", "caption": "a red square", "media": image},
        ):
            sent = await api.post(
                f"/v1/sessions/{alice}/messages", json={**body, "to": "+" + bob_phone}
            )
            assert sent.status_code == 202, sent.text
            ids.append(sent.json()["message_id"])
        deadline = time.monotonic() + 20
        while True:  # both sent before the pacing holds the next one back
            page = await api.get(f"/v1/sessions/{alice}/messages", params={"chat": bob_phone})
            if all(m["status"] != "queued" for m in page.json()["messages"]):
                break
            assert time.monotonic() < deadline, page.text
            await asyncio.sleep(0.1)
        paced = await api.patch(
            f"/v1/sessions/{alice}/settings", json={"pacing": {"min_gap_per_recipient_s": 3600}}
        )
        assert paced.status_code == 200
        late = await api.post(
            f"/v1/sessions/{alice}/messages",
            json={"type": "text", "to": "+" + bob_phone, "text": "still waiting"},
        )
        ids.append(late.json()["message_id"])
        return ids


def test_the_conversation_view_shows_chats_ticks_and_image_previews(
    browser: Browser, ui_stack: UiStack
) -> None:
    b = browser
    alice, bob = f"conv-a-{secrets.token_hex(3)}", f"conv-b-{secrets.token_hex(3)}"
    bob_phone = "1555019" + str(secrets.randbelow(9000) + 1000)
    ids = asyncio.run(converse(ui_stack, alice, bob, bob_phone))
    sign_in(b, ui_stack)

    # the receiver: one chat, the text and the stored image, previewed
    b.open(f"{ui_stack.base_url}/ui/#/sessions/{bob}")
    b.wait_visible("#open-conversations").click()
    b.wait_for("the conversation page", lambda: b.driver.current_url.endswith(f"#/chats/{bob}"))
    chat = b.wait_visible("#chat-list li[data-chat]")
    chat.click()
    b.wait_for("the text", lambda: "hello bob" in b.find("#messages").text)
    image = b.wait_visible("#messages img.preview")
    b.wait_for(
        "the preview to load",
        lambda: b.driver.execute_script(
            "const i = document.querySelector('#messages img.preview');"
            "return i.complete && i.naturalWidth === 120"
        ),
    )
    assert image.get_attribute("src").startswith("blob:")
    assert "a red square" in b.find("#messages").text
    b.screenshot("receiver")
    b.check_console()

    # the sender: ticks per status, the queued message too
    b.open(f"{ui_stack.base_url}/ui/#/chats/{alice}")
    b.wait_visible(f"#chat-list li[data-chat='{bob_phone}']").click()

    def status(message_id: str) -> str | None:
        found = b.find_all(f"#messages li[data-message-id='{message_id}']")
        return found[0].get_attribute("data-status") if found else None

    b.wait_for("the text to be read", lambda: status(ids[0]) == "read")
    assert b.find(f"li[data-message-id='{ids[0]}'] .tick").text.strip() == "✓✓"
    assert status(ids[2]) == "queued"
    assert b.find(f"li[data-message-id='{ids[2]}'] .tick").text.strip() == "…"
    b.screenshot("sender")

    # a reply from the page is queued behind the paced one
    b.type_into("#reply-text", "typed in the console")
    b.find("#reply-send").click()
    b.wait_for("the reply", lambda: "typed in the console" in b.find("#messages").text)
    b.check_console()


async def events_of(stack: UiStack, session_id: str, event_type: str) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(base_url=stack.base_url, headers=stack.headers) as api:
        page = await api.get("/v1/events", params={"session": session_id, "type": event_type})
        assert page.status_code == 200, page.text
        return list(page.json()["events"])


async def engine_id_of(stack: UiStack, session_id: str, message_id: str) -> str:
    async with httpx.AsyncClient(base_url=stack.base_url, headers=stack.headers) as api:
        page = await api.get(f"/v1/sessions/{session_id}/messages")
        for m in page.json()["messages"]:
            if m["message_id"] == message_id:
                return str(m["engine_message_id"])
    raise AssertionError(f"{message_id} not in the history of {session_id}")


def test_reply_react_edit_and_delete_from_the_conversation_view_reach_the_other_phone(
    browser: Browser, ui_stack: UiStack
) -> None:
    """Bob answers alice from his conversation page: a reply quoting her text, a 👍 on it,
    then he edits his reply and deletes it for everyone (confirmed in a dialog). Alice's
    session sees each as WhatsApp would show it: the quote, the reaction on her message,
    the edit and the revoke of his."""
    b = browser
    alice, bob = f"act-a-{secrets.token_hex(3)}", f"act-b-{secrets.token_hex(3)}"
    bob_phone = "1555017" + str(secrets.randbelow(9000) + 1000)
    ids = asyncio.run(converse(ui_stack, alice, bob, bob_phone))
    hello = asyncio.run(engine_id_of(ui_stack, alice, ids[0]))  # her text, as bob knows it
    sign_in(b, ui_stack)
    b.open(f"{ui_stack.base_url}/ui/#/chats/{bob}")
    b.wait_visible("#chat-list li[data-chat]").click()
    theirs = f"#messages li[data-message-id='{hello}']"
    b.wait_visible(f"{theirs} .act-reply").click()
    assert "Replying to" in b.wait_visible("#reply-context").text
    b.type_into("#reply-text", "got it")
    b.find("#reply-send").click()

    def received_reply() -> dict[str, Any] | None:
        found = asyncio.run(events_of(ui_stack, alice, "message.received"))
        return next((e for e in found if e["data"]["text"] == "got it"), None)

    reply = b.wait_for("alice to get the reply", received_reply)
    assert reply["data"]["content"]["reply_to"] == hello
    mine = reply["data"]["message_id"]  # his reply, as alice knows it

    b.find(f"{theirs} .act-react").click()

    def reacted() -> list[dict[str, Any]]:
        return asyncio.run(events_of(ui_stack, alice, "message.reaction"))

    reaction = b.wait_for("alice to see the reaction", reacted)[0]["data"]
    assert (reaction["message_id"], reaction["from_me"], reaction["emoji"]) == (ids[0], True, "👍")

    # his own reply: edit it, then delete it for everyone
    ours = "#messages li.bubble.out"
    b.wait_for("his reply on his page", lambda: "got it" in b.find(ours).text)
    b.find(f"{ours} .act-edit").click()
    field = b.find("#reply-text")
    assert field.get_attribute("value") == "got it"
    field.clear()
    field.send_keys("got it, thanks")
    b.find("#reply-send").click()

    def edited() -> list[dict[str, Any]]:
        return asyncio.run(events_of(ui_stack, alice, "message.edited"))

    edit = b.wait_for("alice to see the edit", edited)[0]["data"]
    assert (edit["message_id"], edit["text"]) == (mine, "got it, thanks")

    b.find(f"{ours} .act-delete").click()
    b.wait_visible("#confirm-ok").click()

    def revoked() -> list[dict[str, Any]]:
        return asyncio.run(events_of(ui_stack, alice, "message.revoked"))

    assert b.wait_for("alice to see the delete", revoked)[0]["data"]["message_id"] == mine
    b.screenshot("actions")
    b.check_console()

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

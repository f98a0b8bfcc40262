"""The operator web UI, in a real headless Chromium against a real stack: sign in, create a
sim session, watch the QR code rotate, scan it as a phone, see CONNECTED without a reload,
send a message. Any console error on any page fails the test."""

from __future__ import annotations

import subprocess
import sys

import httpx
from selenium.webdriver.support.ui import Select

from tests.conftest import WebhookReceiver
from tests.ui.browser import Browser
from tests.ui.stack import QR_FIRST_S, QR_NEXT_S, UiStack

DASH = "\u2013"  # the console writes ranges with an en dash, as typeset


def sign_in(b: Browser, stack: UiStack) -> None:
    b.open(f"{stack.base_url}/ui/")
    b.type_into("#api-key", stack.admin_key)
    b.find("#signin-submit").click()
    b.wait_visible("#create-session-form")
    b.check_console()


def scan_with_the_sim(stack: UiStack, session_id: str, phone: str) -> str:
    """The phone scans the QR code, through the CLI a person would use."""
    result = subprocess.run(
        [sys.executable, "-m", "zapfleet", "sim", "scan", session_id, "--phone", phone],
        env={"ZAPFLEET_NATS_URL": stack.nats_url, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_an_operator_pairs_a_sim_session_and_sends_a_message(
    browser: Browser, ui_stack: UiStack
) -> None:
    b = browser
    sign_in(b, ui_stack)
    b.screenshot("signed-in")

    b.type_into("#new-session-id", "ui-e2e")
    b.find("#new-session-engine option[value='sim']").click()
    b.find("#create-session").click()
    b.wait_for("the session page", lambda: b.driver.current_url.endswith("#/sessions/ui-e2e"))

    qr = b.wait_visible("#qr-image[data-code]")
    first_code = qr.get_attribute("data-code")
    # the sim QR names the session by its internal id, never by the tenant's name for it
    assert first_code and first_code.startswith("SIM1,u") and ",ui-e2e," not in first_code
    b.wait_for(
        "the QR image to render",
        lambda: b.driver.execute_script(
            "const i = document.getElementById('qr-image');"
            "return i.complete && i.naturalWidth > 100"
        ),
    )
    b.screenshot("qr")
    b.check_console()

    # A marker on the window survives only if the page is never reloaded.
    b.driver.execute_script("window.__noReload = 'still here'")

    # The QR code rotates on the server; the page follows by itself.
    b.wait_for(
        "the QR code to rotate on the page",
        lambda: b.find("#qr-image").get_attribute("data-code") not in (None, first_code),
        timeout_s=QR_FIRST_S + QR_NEXT_S + 5,
    )
    b.screenshot("qr-rotated")

    out = scan_with_the_sim(ui_stack, "ui-e2e", "15550170001")
    assert "scanned" in out

    connected = b.wait_visible("#connected", timeout_s=15)
    assert connected.text == "Connected as +15550170001"
    assert not b.find("#qr-image").is_displayed()
    assert b.find("#session-details [data-state]").text == "CONNECTED"
    assert b.driver.execute_script("return window.__noReload") == "still here"
    b.screenshot("connected")
    b.check_console()

    b.type_into("#message-to", "+1 555 017 0002")
    b.type_into("#message-text", "hello from the console")
    b.find("#send-message").click()
    result = b.wait_visible("#message-result[data-message-id]")
    assert result.text.startswith("Queued as m_")
    b.screenshot("message-sent")
    b.check_console()

    # The key was never put in a URL, a cookie or localStorage.
    urls = b.driver.execute_script(
        "return [location.href, ...performance.getEntriesByType('resource').map(e => e.name)]"
    )
    assert urls and not any(ui_stack.admin_key in url for url in urls), urls
    storage, cookies = b.local_storage_and_cookies()
    assert ui_stack.admin_key not in storage
    assert cookies == []


def test_the_webhooks_page_renders(browser: Browser, ui_stack: UiStack) -> None:
    b = browser
    sign_in(b, ui_stack)
    b.find("#nav a[data-page='webhooks']").click()
    b.wait_visible("#dead-letters")
    b.wait_for("the dead letters to load", lambda: "Loading" not in b.find("#dead-letters").text)
    b.screenshot("webhooks")


def test_a_wrong_key_is_refused_and_nothing_is_stored(browser: Browser, ui_stack: UiStack) -> None:
    b = browser
    b.open(f"{ui_stack.base_url}/ui/")
    b.type_into("#api-key", "not-the-right-key-at-all")
    b.find("#signin-submit").click()
    error = b.wait_visible("#signin-error")
    assert error.text == "This key is not valid."
    # the only console entry allowed here is the refused request itself
    entries = b.driver.get_log("browser")
    assert all("401" in e["message"] for e in entries if e["level"] == "SEVERE"), entries
    assert b.driver.execute_script("return sessionStorage.length") == 0
    assert not b.find("#nav").is_displayed()


def test_signing_out_forgets_the_key(browser: Browser, ui_stack: UiStack) -> None:
    b = browser
    sign_in(b, ui_stack)
    assert b.driver.execute_script("return sessionStorage.length") == 1
    b.find("#sign-out").click()
    b.wait_visible("#signin-form")
    assert b.driver.execute_script("return sessionStorage.length") == 0


def test_the_sessions_page_lists_sessions_with_their_live_state(
    browser: Browser, ui_stack: UiStack
) -> None:
    b = browser
    with httpx.Client(base_url=ui_stack.base_url, headers=ui_stack.headers) as api:
        created = api.post("/v1/sessions", json={"session_id": "ui-list", "engine": "sim"})
        assert created.status_code == 201, created.text
    sign_in(b, ui_stack)
    b.wait_for(
        "ui-list to be listed as PAIRING",
        lambda: any(
            row.get_attribute("data-session") == "ui-list" and "PAIRING" in row.text
            for row in b.find_all("#sessions-rows tr")
        ),
    )
    scan_with_the_sim(ui_stack, "ui-list", "15550170011")
    b.wait_for(
        "ui-list to turn CONNECTED in the list without a reload",
        lambda: "CONNECTED" in b.find("#sessions-rows tr[data-session='ui-list']").text,
    )
    b.screenshot("sessions-list")


def test_the_sessions_page_walks_a_tenants_sessions_a_page_at_a_time(
    browser: Browser, ui_stack: UiStack
) -> None:
    """A fleet has more sessions than a screen: the list pages over the API's cursor and
    filters by state, and says which part of how many it shows."""
    with httpx.Client(base_url=ui_stack.base_url, headers=ui_stack.headers) as api:
        assert api.post("/v1/tenants", json={"tenant_id": "pages"}).status_code == 201
        key = api.post("/v1/tenants/pages/keys", json={"label": "console"}).json()["key"]
    names = [f"page-{n:02d}" for n in range(30)]
    tenant = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=ui_stack.base_url, headers=tenant) as api:
        for name in names:  # stopped: listed without running anywhere
            created = api.post("/v1/sessions", json={"session_id": name, "start": False})
            assert created.status_code == 201, created.text
        created = api.post("/v1/sessions", json={"session_id": "page-zz", "engine": "sim"})
        assert created.status_code == 201, created.text
    b = browser
    b.open(f"{ui_stack.base_url}/ui/")
    b.type_into("#api-key", key)
    b.find("#signin-submit").click()
    b.wait_visible("#create-session-form")

    def listed() -> list[str | None]:
        return [r.get_attribute("data-session") for r in b.find_all("#sessions-rows tr")]

    Select(b.find("#sessions-page-size")).select_by_value("25")
    b.wait_for("the first 25", lambda: listed() == names[:25])
    status = lambda: b.find("#sessions-status").text  # noqa: E731
    b.wait_for("the range", lambda: status().startswith(f"Sessions 1{DASH}25 of 31"))
    assert b.find("#sessions-prev").get_attribute("disabled") is not None
    b.find("#sessions-next").click()
    b.wait_for("the rest", lambda: listed() == [*names[25:], "page-zz"])
    assert status().startswith(f"Sessions 26{DASH}31 of 31")
    assert b.find("#sessions-next").get_attribute("disabled") is not None
    b.find("#sessions-prev").click()
    b.wait_for("the first page again", lambda: listed() == names[:25])
    Select(b.find("#sessions-state")).select_by_value("PAIRING")
    b.wait_for("only the pairing one", lambda: listed() == ["page-zz"])
    assert status().startswith(f"Sessions 1{DASH}1 of 1")
    b.screenshot("sessions-pages")


def test_the_nodes_page_shows_capacity_and_sessions(browser: Browser, ui_stack: UiStack) -> None:
    b = browser
    sign_in(b, ui_stack)
    b.find("#nav a[data-page='nodes']").click()
    row = b.wait_visible(f"#nodes-rows tr[data-node='{ui_stack.node_id}']")
    assert "sim" in row.text
    assert "/ 150" in row.text or "/ " in row.find_element("css selector", ".capacity").text
    b.screenshot("nodes")


def test_a_tenant_key_sees_only_its_sessions_and_no_nodes(
    browser: Browser, ui_stack: UiStack
) -> None:
    with httpx.Client(base_url=ui_stack.base_url, headers=ui_stack.headers) as api:
        assert api.post("/v1/tenants", json={"tenant_id": "acme"}).status_code == 201
        key = api.post("/v1/tenants/acme/keys", json={"label": "console"}).json()["key"]
        admins = api.post("/v1/sessions", json={"session_id": "ui-admins", "engine": "sim"})
        assert admins.status_code == 201, admins.text
    b = browser
    b.open(f"{ui_stack.base_url}/ui/")
    b.type_into("#api-key", key)
    b.find("#signin-submit").click()
    b.wait_visible("#create-session-form")
    assert b.find("#who-label").text == "tenant acme"
    assert not b.find("#nav a[data-page='nodes']").is_displayed()

    b.type_into("#new-session-id", "acme-1")
    b.find("#create-session").click()
    b.wait_visible("#qr-image[data-code]")
    b.find("#nav a[data-page='sessions']").click()
    b.wait_for(
        "acme-1 listed",
        lambda: (
            [r.get_attribute("data-session") for r in b.find_all("#sessions-rows tr")] == ["acme-1"]
        ),
    )
    b.screenshot("tenant-sessions")


def test_an_operator_drains_a_node_and_makes_it_eligible_again(
    browser: Browser, ui_stack: UiStack
) -> None:
    b = browser
    node = ui_stack.node_id
    row_css = f"#nodes-rows tr[data-node='{node}']"
    with httpx.Client(base_url=ui_stack.base_url, headers=ui_stack.headers) as api:
        created = api.post("/v1/sessions", json={"session_id": "ui-drain", "engine": "sim"})
        assert created.status_code == 201, created.text
    try:
        sign_in(b, ui_stack)
        b.find("#nav a[data-page='nodes']").click()
        drain = b.wait_visible(f"{row_css} button[data-action='drain']")
        drain.click()
        assert drain.text == "Confirm drain"  # a second click is needed
        drain.click()
        b.wait_for("the node to show DRAINING", lambda: "DRAINING" in b.find(row_css).text)
        b.screenshot("drained")
        # the only node of this stack: its sessions had nowhere to go and stay where they are
        with httpx.Client(base_url=ui_stack.base_url, headers=ui_stack.headers) as api:
            assert api.get("/v1/sessions/ui-drain").json()["node_id"] == node
        assert "moved 0" in b.wait_visible("#toast").text  # no capacity elsewhere
        b.wait_visible(f"{row_css} button[data-action='undrain']").click()
        b.wait_for(
            "the node to be eligible again",
            lambda: "DRAINING" not in b.find(row_css).text and "UP" in b.find(row_css).text,
        )
        b.screenshot("eligible-again")
    finally:
        with httpx.Client(base_url=ui_stack.base_url, headers=ui_stack.headers) as api:
            api.post(f"/v1/nodes/{node}/uncordon")


def test_dead_letters_are_listed_and_redriven_from_the_console(
    browser: Browser, ui_stack: UiStack, webhook_receiver: WebhookReceiver
) -> None:
    webhook_receiver.status = 503  # the receiver is down: every attempt fails
    with httpx.Client(base_url=ui_stack.base_url, headers=ui_stack.headers) as api:
        created = api.post(
            "/v1/sessions",
            json={
                "session_id": "ui-dlq",
                "engine": "sim",
                "webhook_url": webhook_receiver.url,
                "webhook_events": ["session.status"],
            },
        )
        assert created.status_code == 201, created.text
    b = browser
    sign_in(b, ui_stack)
    b.find("#nav a[data-page='webhooks']").click()
    b.wait_for(
        "the session's webhook in the overview",
        lambda: "session:ui-dlq" in b.find("#webhook-config").text,
    )
    rows = b.wait_for(
        "dead letters of ui-dlq",
        lambda: [r for r in b.find_all("#dead-letters tr[data-letter]") if "ui-dlq" in r.text],
        timeout_s=30,
    )
    assert "session.status" in rows[0].text
    b.screenshot("dead-letters")

    webhook_receiver.status = 200  # the receiver is back
    b.find("#redrive-all").click()
    delivered = webhook_receiver.wait_for(
        lambda e: e["session_id"] == "ui-dlq" and e["type"] == "session.status"
    )
    assert delivered["tenant"]
    b.wait_for(
        "the dead letters of ui-dlq to be gone",
        lambda: not any("ui-dlq" in r.text for r in b.find_all("#dead-letters tr[data-letter]")),
        timeout_s=20,
    )
    b.screenshot("redriven")

"""The web console in headless Chromium, for what an operator acts on: the admin's tenant
picker and tenants page (tenants, their keys created and revoked), lifecycle buttons that
follow the session's state, confirmations that say what Log out and Delete do, an unknown
session id, and the sessions table on a 390 px wide phone screen."""

from __future__ import annotations

import httpx
from selenium.webdriver.support.select import Select

from contract.protocol import SessionState
from tests.ui.browser import Browser
from tests.ui.stack import UiStack
from tests.ui.test_console import scan_with_the_sim, sign_in

STATE = "#session-details [data-state]"


def api(stack: UiStack, tenant: str | None = None) -> httpx.Client:
    headers = dict(stack.headers)
    if tenant:
        headers["X-Tenant-Id"] = tenant
    return httpx.Client(base_url=stack.base_url, headers=headers, timeout=30)


def shown_actions(b: Browser) -> list[str]:
    return [
        str(button.get_attribute("data-action"))
        for button in b.find_all("#session-actions button")
        if button.is_displayed()
    ]


def wait_state(b: Browser, state: str, actions: list[str], timeout_s: float = 20) -> None:
    """The page shows ``state`` and exactly ``actions`` (in order)."""
    b.wait_for(
        f"state {state} with actions {actions}",
        lambda: b.find(STATE).text == state and shown_actions(b) == actions,
        timeout_s=timeout_s,
    )


def click_action(b: Browser, action: str) -> None:
    b.wait_visible(f"#session-actions button[data-action='{action}']").click()


def picker_values(b: Browser) -> list[str]:
    return [str(o.get_attribute("value")) for o in b.find_all("#tenant-picker option")]


def session_ids(b: Browser) -> list[str]:
    return [str(r.get_attribute("data-session")) for r in b.find_all("#sessions-rows tr")]


def log_out_after_a_cancelled_try(b: Browser, stack: UiStack) -> None:
    """Log out asks first and says what it does; Cancel changes nothing; confirmed, the
    device is unlinked (starting again shows a QR code)."""
    click_action(b, "logout")
    dialog = b.wait_visible("#confirm-dialog")
    text = dialog.text
    assert "Log out ui-acts?" in text
    assert "unlinks the WhatsApp device +15550170021" in text
    assert "The session and its settings are kept" in text
    b.screenshot("logout-confirm")
    b.find("#confirm-cancel").click()
    b.wait_for("the dialog to close", lambda: not b.find_all("#confirm-dialog"))
    with api(stack) as client:
        assert client.get("/v1/sessions/ui-acts").json()["state"] == "CONNECTED"

    click_action(b, "logout")
    b.wait_visible("#confirm-ok").click()
    wait_state(b, "STOPPED", ["start", "delete"])
    b.screenshot("logged-out-actions")
    # the device was unlinked: starting again means pairing again
    click_action(b, "start")
    wait_state(b, "PAIRING", ["stop", "restart", "delete"])
    b.wait_visible("#qr-image[data-code]")
    b.check_console()


def test_session_actions_follow_the_state_and_log_out_and_delete_ask_first(
    browser: Browser, ui_stack: UiStack
) -> None:
    b = browser
    with api(ui_stack) as client:
        created = client.post("/v1/sessions", json={"session_id": "ui-acts", "engine": "sim"})
        assert created.status_code == 201, created.text
    sign_in(b, ui_stack)
    b.open(f"{ui_stack.base_url}/ui/#/sessions/ui-acts")

    # pairing: nothing to log out yet, and it runs, so no Start
    wait_state(b, "PAIRING", ["stop", "restart", "delete"])
    help_text = b.find("#actions-help").text
    assert "Stop keeps the device paired" in help_text
    assert "Log out unlinks the device but keeps the session" in help_text
    stop_title = b.find("#session-actions button[data-action='stop']").get_attribute("title")
    assert stop_title and "stays paired" in stop_title
    b.screenshot("pairing-actions")

    scan_with_the_sim(ui_stack, "ui-acts", "15550170021")
    wait_state(b, "CONNECTED", ["stop", "restart", "logout", "delete"])
    b.screenshot("connected-actions")

    # Stop: the session stops, keeps its device; only Start and Delete make sense
    click_action(b, "stop")
    wait_state(b, "STOPPED", ["start", "delete"])
    b.screenshot("stopped-actions")
    click_action(b, "start")
    wait_state(b, "CONNECTED", ["stop", "restart", "logout", "delete"])
    assert b.find("#connected").text == "Connected as +15550170021"  # no new pairing
    b.check_console()

    log_out_after_a_cancelled_try(b, ui_stack)
    # the same phone pairs again (log out released it), then Delete: it asks first and
    # says it unlinks the device and destroys its state
    scan_with_the_sim(ui_stack, "ui-acts", "15550170021")
    wait_state(b, "CONNECTED", ["stop", "restart", "logout", "delete"])
    click_action(b, "delete")
    text = b.wait_visible("#confirm-dialog").text
    assert "Delete ui-acts?" in text
    assert "unlinks the WhatsApp device +15550170021" in text
    assert "destroys its state" in text
    assert "cannot be undone" in text
    assert "use Stop instead" in text
    b.screenshot("delete-confirm")
    b.find("#confirm-ok").click()
    b.wait_for("the sessions list", lambda: b.driver.current_url.endswith("#/sessions"))
    with api(ui_stack) as client:
        assert client.get("/v1/sessions/ui-acts").status_code == 404

    # Deleted from the console, the device is gone: a new session of the same name asks for
    # a QR scan (a linked one would go online at once, never PAIRING) and the same phone can
    # pair it
    b.type_into("#new-session-id", "ui-acts")
    b.find("#new-session-engine option[value='sim']").click()
    b.find("#create-session").click()
    wait_state(b, "PAIRING", ["stop", "restart", "delete"])
    b.wait_visible("#qr-image[data-code]")
    scan_with_the_sim(ui_stack, "ui-acts", "15550170021")
    wait_state(b, "CONNECTED", ["stop", "restart", "logout", "delete"])


# The buttons the page shows for every state of contract/protocol.py, for a session that
# is meant to run (with a paired phone where it can have one) and for a stopped one.
RUNNING_ACTIONS = {
    SessionState.STARTING: ["stop"],
    SessionState.PAIRING: ["stop", "restart"],
    SessionState.CONNECTED: ["stop", "restart", "logout"],
    SessionState.DISCONNECTED: ["stop", "restart", "reconnect", "logout"],
    SessionState.RECONNECTING: ["stop", "restart", "reconnect", "logout"],
    SessionState.FAILED: ["stop", "reconnect", "reset-breaker", "logout"],
    SessionState.LOGGED_OUT: ["start"],
    SessionState.STOPPED: ["start"],
}


def test_every_session_state_has_its_own_valid_actions(browser: Browser, ui_stack: UiStack) -> None:
    """The page's own rule (validActions in session.js), run in the browser, for every state
    the agent reports; the walk above shows the buttons follow it on a live session."""
    assert set(RUNNING_ACTIONS) == set(SessionState)
    b = browser
    sign_in(b, ui_stack)
    script = (
        "const [cases, done] = arguments;"
        "import('/ui/js/pages/session.js').then((m) => done(cases.map((c) => m.validActions(c))));"
    )
    states = list(SessionState)
    phone = "15550170041"
    running = [
        {"session_id": "x", "state": str(s), "desired": "running", "phone": phone} for s in states
    ]
    unpaired = [{**c, "phone": None} for c in running]
    stopped = [{**c, "desired": "stopped"} for c in running]
    got = b.driver.execute_async_script(script, running + unpaired + stopped)
    n = len(states)
    assert dict(zip(states, got[:n], strict=True)) == RUNNING_ACTIONS
    # no Log out without a paired device, whatever the state
    assert dict(zip(states, got[n : 2 * n], strict=True)) == {
        s: [a for a in actions if a != "logout"] for s, actions in RUNNING_ACTIONS.items()
    }
    # a session that is not meant to run can only be started
    assert got[2 * n :] == [["start"]] * n


def test_an_unknown_session_id_shows_one_clear_message(browser: Browser, ui_stack: UiStack) -> None:
    b = browser
    sign_in(b, ui_stack)
    b.driver.get(f"{ui_stack.base_url}/ui/#/sessions/nope")
    message = b.wait_visible("#session-missing")
    assert 'There is no session "nope"' in message.text
    # one message and nothing else of the session page
    assert b.driver.execute_script("return document.getElementById('view').children.length") == 1
    for part in ("#pairing", "#send-form", "#session-actions", "#session-details"):
        assert not b.find_all(part), part
    assert message.find_element("css selector", "a[href='#/sessions']").is_displayed()
    # the page stops asking once it knows (polling would ask every 1.5 s)
    b.driver.execute_script("window.__t = performance.now()")
    b.wait_for(
        "4 s to pass",
        lambda: b.driver.execute_script("return performance.now() - window.__t > 4000"),
        timeout_s=10,
    )
    asked = b.driver.execute_script(
        "return performance.getEntriesByType('resource')"
        ".filter(e => e.name.endsWith('/v1/sessions/nope')).length"
    )
    assert asked == 1
    b.screenshot("unknown-session")
    # the only console entry allowed is that one 404 answer
    severe = [e for e in b.driver.get_log("browser") if e["level"] == "SEVERE"]
    assert len(severe) == 1, severe
    assert "/v1/sessions/nope" in severe[0]["message"] and "404" in severe[0]["message"]


def test_an_admin_creates_a_tenant_and_creates_and_revokes_its_keys(
    browser: Browser, ui_stack: UiStack
) -> None:
    b = browser
    sign_in(b, ui_stack)
    b.wait_visible("#nav a[data-page='tenants']").click()
    b.type_into("#new-tenant-id", "ui-east")
    b.type_into("#new-tenant-name", "East Inc.")
    b.find("#create-tenant").click()
    b.wait_for("the tenant's page", lambda: b.driver.current_url.endswith("#/tenants/ui-east"))
    row = b.wait_visible("#tenants-rows tr[data-tenant='ui-east']")
    assert "East Inc." in row.text
    b.wait_visible("#tenant-keys[data-tenant='ui-east']")
    b.wait_for(
        "ui-east in the tenant picker",
        lambda: "ui-east" in picker_values(b),
    )
    with api(ui_stack) as client:
        assert client.get("/v1/tenants/ui-east").json()["name"] == "East Inc."

    b.type_into("#new-key-label", "billing")
    b.find("#create-key").click()
    key = b.wait_visible("#new-key").text
    assert key.startswith("zf_")
    assert "shown only this once" in b.find("#new-key-box").text
    key_row = b.wait_visible("#keys-rows tr[data-key]")
    key_id = str(key_row.get_attribute("data-key"))
    assert "billing" in key_row.text and "ACTIVE" in key_row.text
    b.screenshot("key-created")
    with httpx.Client(base_url=ui_stack.base_url, timeout=30) as client:
        mine = client.get("/v1/sessions", headers={"Authorization": f"Bearer {key}"})
        assert mine.status_code == 200, mine.text
    # the key was shown, never stored by the page
    storage, cookies = b.local_storage_and_cookies()
    session_storage = b.driver.execute_script("return JSON.stringify(window.sessionStorage)")
    assert key not in storage and key not in str(session_storage) and cookies == []

    b.find(f"#keys-rows tr[data-key='{key_id}'] button[data-action='revoke']").click()
    text = b.wait_visible("#confirm-dialog").text
    assert f"Revoke key {key_id}?" in text and "401" in text
    b.find("#confirm-ok").click()
    b.wait_for(
        "the key shown as revoked",
        lambda: "REVOKED" in b.find(f"#keys-rows tr[data-key='{key_id}']").text,
    )
    assert not b.find_all(f"#keys-rows tr[data-key='{key_id}'] button")
    b.screenshot("key-revoked")
    with httpx.Client(base_url=ui_stack.base_url, timeout=30) as client:
        refused = client.get("/v1/sessions", headers={"Authorization": f"Bearer {key}"})
        assert refused.status_code == 401, refused.text
    with api(ui_stack) as client:
        keys = client.get("/v1/tenants/ui-east/keys").json()["keys"]
        assert [k["revoked_at"] is not None for k in keys if k["key_id"] == key_id] == [True]

    # "Open sessions" picks the tenant and shows its sessions
    b.find("#tenants-rows tr[data-tenant='ui-east'] button[data-action='act-as']").click()
    b.wait_for("ui-east's sessions", lambda: b.driver.current_url.endswith("#/sessions"))
    assert b.wait_visible("#sessions-tenant").text == "· tenant ui-east"
    assert Select(b.find("#tenant-picker")).first_selected_option.text == "ui-east"


def test_the_tenant_picker_switches_the_sessions_and_webhooks_an_admin_acts_on(
    browser: Browser, ui_stack: UiStack
) -> None:
    with api(ui_stack) as client:
        assert client.post("/v1/tenants", json={"tenant_id": "ui-west"}).status_code == 201
    with api(ui_stack, "ui-west") as client:
        created = client.post("/v1/sessions", json={"session_id": "west-1", "engine": "sim"})
        assert created.status_code == 201, created.text
    b = browser
    sign_in(b, ui_stack)
    b.wait_for(
        "ui-west in the picker",
        lambda: "ui-west" in picker_values(b),
    )
    assert Select(b.find("#tenant-picker")).first_selected_option.text == "default"
    b.wait_for("the list", lambda: "Loading" not in b.find("#sessions-status").text)
    assert "west-1" not in session_ids(b)

    Select(b.find("#tenant-picker")).select_by_value("ui-west")
    b.wait_for("west-1 listed alone", lambda: session_ids(b) == ["west-1"])
    assert b.find("#sessions-tenant").text == "· tenant ui-west"
    b.screenshot("picked-ui-west")

    # what the admin creates now belongs to the picked tenant
    b.type_into("#new-session-id", "west-2")
    b.find("#new-session-engine option[value='sim']").click()
    b.find("#create-session").click()
    b.wait_visible("#qr-image[data-code]")
    with api(ui_stack, "ui-west") as client:
        assert client.get("/v1/sessions/west-2").status_code == 200
    with api(ui_stack) as client:
        assert client.get("/v1/sessions/west-2").status_code == 404

    # the webhook page acts on the picked tenant too
    b.find("#nav a[data-page='webhooks']").click()
    assert b.wait_visible("#webhooks-tenant").text == "· tenant ui-west"
    b.type_into("#webhook-urls", "http://127.0.0.1:9/west-hook")
    b.find("#webhook-save").click()
    b.wait_for("the save", lambda: "Saved" in b.find("#webhook-form-result").text)
    b.wait_for("the webhook listed", lambda: "tenant:ui-west" in b.find("#webhook-config").text)
    with api(ui_stack, "ui-west") as client:
        assert client.get("/v1/webhooks/config").json()["urls"] == ["http://127.0.0.1:9/west-hook"]
    with api(ui_stack) as client:
        assert client.get("/v1/webhooks/config").status_code == 404
    b.screenshot("west-webhook")

    # the choice survives a reload of the tab; switching back shows the default tenant
    b.driver.refresh()
    b.wait_for(
        "the picker to keep ui-west",
        lambda: Select(b.find("#tenant-picker")).first_selected_option.text == "ui-west",
    )
    b.find("#nav a[data-page='sessions']").click()
    b.wait_for("both west sessions", lambda: session_ids(b) == ["west-1", "west-2"])
    Select(b.find("#tenant-picker")).select_by_value("default")
    b.wait_for(
        "the default tenant's sessions",
        lambda: (
            b.find("#sessions-tenant").text == "· tenant default"
            and "Loading" not in b.find("#sessions-status").text
        ),
    )
    b.wait_for("no west session", lambda: not {"west-1", "west-2"} & set(session_ids(b)))


def test_the_sessions_table_fits_a_390px_wide_screen(browser: Browser, ui_stack: UiStack) -> None:
    long_id = "a-rather-long-session-name-for-a-phone-screen-0123456789"
    with api(ui_stack) as client:
        for session_id in (long_id, "ui-phone"):
            created = client.post("/v1/sessions", json={"session_id": session_id, "engine": "sim"})
            assert created.status_code == 201, created.text
    scan_with_the_sim(ui_stack, "ui-phone", "15550170031")
    b = browser
    b.driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": 390, "height": 844, "deviceScaleFactor": 3, "mobile": True},
    )
    sign_in(b, ui_stack)
    assert b.driver.execute_script("return window.innerWidth") == 390
    b.wait_for(
        "both sessions listed, ui-phone connected",
        lambda: (
            long_id in session_ids(b)
            and "CONNECTED" in b.find("#sessions-rows tr[data-session='ui-phone']").text
        ),
    )
    b.screenshot("sessions-390px")

    def overflow() -> dict[str, float]:
        result: dict[str, float] = b.driver.execute_script(
            "const t = document.getElementById('sessions-table').getBoundingClientRect();"
            "return {page: document.documentElement.scrollWidth,"
            " body: document.body.scrollWidth, right: t.right, left: t.left}"
        )
        return result

    sizes = overflow()
    assert sizes["page"] <= 390 and sizes["body"] <= 390, sizes
    assert sizes["left"] >= 0 and sizes["right"] <= 390, sizes
    # the essential columns are there: the id (wrapped), its state and phone
    row = b.find("#sessions-rows tr[data-session='ui-phone']")
    assert row.find_element("css selector", "[data-state]").is_displayed()
    assert "+15550170031" in row.text
    assert b.find(f"#sessions-rows tr[data-session='{long_id}'] a").is_displayed()
    # the top bar with the admin's tenant picker fits too
    assert b.find("#tenant-picker").is_displayed()

    # and so does a session's page with its confirmation
    b.find("#sessions-rows tr[data-session='ui-phone'] a").click()
    b.wait_visible("#connected")
    b.wait_visible("#session-actions button[data-action='logout']").click()
    b.wait_visible("#confirm-dialog")
    assert b.driver.execute_script("return document.documentElement.scrollWidth") <= 390
    b.screenshot("session-390px")
    b.find("#confirm-cancel").click()

    # the other pages' wide tables scroll inside their cards, not the page
    for page, ready in (
        ("nodes", f"#nodes-rows tr[data-node='{ui_stack.node_id}']"),
        ("webhooks", "#dead-letters"),
        ("tenants", "#create-tenant-form"),
    ):
        b.find(f"#nav a[data-page='{page}']").click()
        b.wait_visible(ready)
        width = b.driver.execute_script("return document.documentElement.scrollWidth")
        assert width <= 390, (page, width)
        b.screenshot(f"{page}-390px")


def test_a_picked_tenant_deleted_meanwhile_falls_back_to_default(
    browser: Browser, ui_stack: UiStack
) -> None:
    with api(ui_stack) as client:
        assert client.post("/v1/tenants", json={"tenant_id": "ui-gone"}).status_code == 201
    b = browser
    sign_in(b, ui_stack)
    b.wait_for("ui-gone in the picker", lambda: "ui-gone" in picker_values(b))
    Select(b.find("#tenant-picker")).select_by_value("ui-gone")
    b.wait_for("the picked tenant", lambda: b.find("#sessions-tenant").text == "· tenant ui-gone")
    b.check_console()
    with api(ui_stack) as client:
        assert client.delete("/v1/tenants/ui-gone").status_code == 204
    b.wait_for(
        "the default tenant again",
        lambda: (
            b.find("#sessions-tenant").text == "· tenant default"
            and "ui-gone" not in picker_values(b)
            and Select(b.find("#tenant-picker")).first_selected_option.text == "default"
        ),
    )
    assert "ui-gone no longer exists" in b.find("#toast").text
    assert b.driver.execute_script("return sessionStorage.getItem('zapfleet.tenant')") is None
    # the only console errors are the refused calls for the deleted tenant
    severe = [e for e in b.driver.get_log("browser") if e["level"] == "SEVERE"]
    assert severe and all("404" in e["message"] for e in severe), severe
    b.screenshot("tenant-gone")

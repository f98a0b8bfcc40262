"""Headless Chromium (Debian's ``chromium`` + ``chromedriver``) driven by Selenium, for the
tests of the web UI. ``./dev test`` installs both when they are missing.

Every page's console is read after each step: any SEVERE entry (a JavaScript error, a
failed request, a Content-Security-Policy violation) fails the test. Screenshots go to
``test-artifacts/ui/``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement

from tests.conftest import ARTIFACTS

SCREENSHOTS = ARTIFACTS / "ui"
CHROMIUM_FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-default-apps",
    "--metrics-recording-only",
    "--password-store=basic",
    "--window-size=1280,900",
]


def _which(*names: str) -> str:
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    raise RuntimeError(
        f"none of {names} is installed; run ./dev test (it installs Debian's chromium and "
        "chromium-driver) or: sudo apt-get install chromium chromium-driver"
    )


class Browser:
    """A Chrome session with console checks and screenshots."""

    def __init__(self, driver: webdriver.Chrome, name: str) -> None:
        self.driver = driver
        self.name = name
        self.console: list[dict[str, Any]] = []
        self._shots = 0
        for old in SCREENSHOTS.glob(f"{name}-*.png"):
            old.unlink()

    def open(self, url: str) -> None:
        self.driver.get(url)
        self.check_console()

    def find(self, css: str) -> WebElement:
        return self.driver.find_element(By.CSS_SELECTOR, css)

    def find_all(self, css: str) -> list[WebElement]:
        return self.driver.find_elements(By.CSS_SELECTOR, css)

    def wait_for(
        self, what: str, predicate: Callable[[], Any], timeout_s: float = 15, poll_s: float = 0.1
    ) -> Any:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                value = predicate()
            except (WebDriverException, StaleElementReferenceException):
                value = None
            if value:
                return value
            if time.monotonic() > deadline:
                self.screenshot(f"timeout-{what.replace(' ', '-')}")
                raise AssertionError(f"{self.name}: {what} did not happen within {timeout_s} s")
            time.sleep(poll_s)

    def wait_visible(self, css: str, timeout_s: float = 15) -> WebElement:
        def visible() -> WebElement | None:
            for element in self.find_all(css):
                if element.is_displayed():
                    return element
            return None

        element: WebElement = self.wait_for(f"{css} visible", visible, timeout_s)
        return element

    def type_into(self, css: str, text: str) -> None:
        element = self.wait_visible(css)
        element.clear()
        element.send_keys(text)

    def screenshot(self, label: str) -> Path:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        self._shots += 1
        path = SCREENSHOTS / f"{self.name}-{self._shots:02d}-{label}.png"
        self.driver.save_screenshot(str(path))
        return path

    def check_console(self) -> None:
        """Fail on any SEVERE console entry since the last check."""
        entries = self.driver.get_log("browser")
        self.console.extend(entries)
        severe = [e for e in entries if e.get("level") == "SEVERE"]
        assert not severe, f"{self.name}: the page logged errors: {severe}"

    def local_storage_and_cookies(self) -> tuple[str, list[dict[str, Any]]]:
        storage = self.driver.execute_script("return JSON.stringify(window.localStorage)")
        return str(storage), list(self.driver.get_cookies())


def new_driver(user_data_dir: str) -> webdriver.Chrome:
    os.environ.setdefault("SE_OFFLINE", "true")  # never let Selenium Manager download
    options = Options()
    options.binary_location = _which("chromium", "chromium-browser")
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={user_data_dir}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(executable_path=_which("chromedriver"))
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_page_load_timeout(30)
    return driver


@pytest.fixture
def browser(request: pytest.FixtureRequest) -> Iterator[Browser]:
    """A fresh headless Chromium (own profile) per test; the console is checked at the end
    too, and a last screenshot of every test is written."""
    profile = tempfile.mkdtemp(prefix="zapfleet-chromium-")
    driver = new_driver(profile)
    session = Browser(driver, request.node.name.removeprefix("test_")[:60])
    try:
        yield session
        session.check_console()
    finally:
        with contextlib.suppress(WebDriverException):
            session.screenshot("last")
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)

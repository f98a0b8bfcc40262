"""Fixtures of the UI and CLI tests: one stack of their own for the whole directory
(tests/ui/stack.py) and a fresh headless Chromium per test (tests/ui/browser.py)."""

from tests.ui.browser import browser
from tests.ui.stack import ui_stack

__all__ = ["browser", "ui_stack"]

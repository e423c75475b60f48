"""Re-use the browser fixtures (headless Chromium, live server) for the upload browser test."""

from tests.browser.conftest import browser, chromium_path, live_server  # noqa: F401

"""The dashboard in a real browser: Debian's Chromium driven by Playwright (both needed only here)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

# as this machine's own probe starts it: no sandbox as root, nothing that reaches for the network
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def chromium_path() -> str:
    """Where Chromium is; an error that says how to install it when it is not."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        raise RuntimeError("Chromium is not installed: `make test` installs Debian's package "
                           "(apt-get install chromium), or install it yourself")
    return found


@contextmanager
def dashboard(url: str, token: str, view: str = "overview", *, viewport: dict[str, int] | None = None) -> Iterator[Any]:
    """A headless Chromium page (Playwright's, of ``viewport`` size) logged in to the dashboard of
    the server at ``url``, showing ``view``."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport=viewport) if viewport else browser.new_page()
            page.goto(f"{url}/ui#/{view}")
            page.fill("#token", token)
            page.click("#login button[type=submit]")
            page.wait_for_selector(f"#nav a.active[data-view={view}]")
            yield page
        finally:
            browser.close()

"""Test helpers: the repository's example photons (fermion.testing has the processes)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
TEXT_PHOTON = f"{EXAMPLES / 'text' / 'photon.py'}:TextTools"
EMBEDDER_PHOTON = f"{EXAMPLES / 'embedder' / 'photon.py'}:Embedder"
FIXTURE_PHOTONS = ROOT / "tests" / "photon" / "fixture_photons.py"

# (fault, requests sent, requests failed, what the design promises), printed at the end of the run
CHAOS_RESULTS: list[tuple[str, int, int, str]] = []


def report_fault(fault: str, sent: int, failed: int, promise: str = "0 failed") -> None:
    CHAOS_RESULTS.append((fault, sent, failed, promise))


# Chromium as the machine's own probe starts it: no sandbox as root, nothing that reaches for the network
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def chromium_path() -> str:
    import shutil

    import pytest

    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:  # never a silent skip: the dashboard would go untested
        pytest.fail("Chromium is not installed: `make test` installs Debian's package "
                    "(apt-get install chromium), or install it yourself")
    return found


@contextmanager
def dashboard(url: str, token: str, view: str = "overview") -> Iterator[Any]:
    """A headless Chromium page logged in to the dashboard at ``url``, showing ``view``."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.goto(f"{url}/ui#/{view}")
            page.fill("#token", token)
            page.click("#login button[type=submit]")
            page.wait_for_selector(f"#nav a.active[data-view={view}]")
            yield page
        finally:
            browser.close()

"""Take the dashboard screenshots in docs/: a server with a few deployments on three clouds, one
cloud failed, each page in headless Chromium. Usage: python docs/screenshots.py"""

from __future__ import annotations

import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.dashboard import CLOUDS  # noqa: E402  (three priced clouds, as the benchmark's)
from fermion.testing import dashboard, running_server  # noqa: E402
from tests.support import FIXTURE_PHOTONS, TEXT_PHOTON  # noqa: E402


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp, \
            running_server(Path(tmp) / "home", CLOUDS, env={"FERMION_SCRAPE_S": "1"}) as server:
        server.cli("deploy", TEXT_PHOTON, "--name", "text", "--public", "--replicas", "2")
        server.cli("deploy", f"{FIXTURE_PHOTONS}:Versioned", "--name", "versioned", "--public", "--replicas", "3",
                   "--env", "VERSION=1")
        tickets = ROOT / "examples" / "data" / "tickets"
        server.cli("dataset", "create", "tickets", str(tickets), "--cloud", "aws-us-east-1")
        server.cli("dataset", "sync", "tickets", "--to", "gcp-us-central1")
        server.cli("finetune", "--name", "tickets", "--data", "dataset:tickets@1/train.csv", "--eval-data",
                   "dataset:tickets@1/eval.csv", "--epochs", "3", "--batch-size", "16", "--lr", "3e-3", "--timeout", "600")
        server.cli("deploy", "--model", "tickets:1", "--name", "support-router", "--public")
        server.cli("cloud", "fail", "azure-eastus")
        stop = threading.Event()

        def traffic() -> None:  # for the charts, until the last screenshot
            with httpx.Client(base_url=server.url, timeout=10) as http:
                while not stop.is_set():
                    http.post("/d/text/stats", json={"text": "a few words of traffic"})
                    http.post("/d/versioned/version")

        sender = threading.Thread(target=traffic, daemon=True)
        sender.start()
        try:
            time.sleep(12)
            with dashboard(server.url, server.token, viewport={"width": 1280, "height": 860}) as page:
                for view in ("overview", "deployments", "jobs", "models", "datasets", "cost", "events"):
                    page.click(f"#nav a[data-view={view}]")
                    page.wait_for_selector(f"#nav a.active[data-view={view}]")
                    page.wait_for_timeout(500)
                    page.screenshot(path=str(ROOT / "docs" / f"dashboard-{view}.png"), full_page=view != "events")
        finally:
            stop.set()
            sender.join(15)
    print("wrote docs/dashboard-*.png")


if __name__ == "__main__":
    main()

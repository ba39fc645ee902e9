"""Claim: the dashboard's overview renders in < 300 ms with 50 deployments (issue 15). Measured in
headless Chromium against a real server: the page's own render() (the API call for the overview
and the DOM it builds), median of 15, with 50 deployments against the same page with 1 (the
baseline, same run). Needs Chromium (make test installs it). Usage: python benchmarks/dashboard.py"""

from __future__ import annotations

import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fermion.testing import dashboard, running_server  # noqa: E402

TEXT_PHOTON = f"{ROOT / 'examples' / 'text' / 'photon.py'}:TextTools"

CLOUDS = """clouds:
  - name: aws-us-east-1
    pricing: {catalog: aws, instance_type: c3.xlarge}
  - name: gcp-us-central1
    pricing: {catalog: gcp, instance_type: n2-standard-4}
  - name: azure-eastus
    pricing: {catalog: azure, instance_type: Standard_D4s_v5}
"""
TIMED_RENDER = "async () => { const t = performance.now(); await render(); return performance.now() - t; }"


def renders(page, view: str, n: int = 15) -> list[float]:  # noqa: ANN001 - a Playwright page
    page.evaluate(f"() => {{ state.view = '{view}'; }}")
    page.evaluate(TIMED_RENDER)  # warm: the first render compiles the page's code
    return [page.evaluate(TIMED_RENDER) for _ in range(n)]


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp, running_server(Path(tmp) / "home", CLOUDS) as server:
        server.cli("deploy", TEXT_PHOTON, "--name", "d00", "--public", "--replicas", "2")
        photon = server.deployment("d00")["photon"]
        results = {}
        with dashboard(server.url, server.token) as page:
            results[1] = renders(page, "overview")
            with server.api() as api:  # 49 more, through the API (a CLI process each would take a minute)
                for i in range(1, 50):
                    api.put(f"/deployments/d{i:02d}", json={"photon": photon, "replicas": 0, "public": True}) \
                        .raise_for_status()
            results[50] = renders(page, "overview")
            deployments_page = renders(page, "deployments", 5)
    one, fifty = statistics.median(results[1]), statistics.median(results[50])
    print("dashboard overview render (API call + DOM), headless Chromium, median of 15")
    print(f"  1 deployment:    {one:7.1f} ms")
    print(f"  50 deployments:  {fifty:7.1f} ms   (goal < 300 ms)   ratio to 1 deployment: {fifty / one:.2f}x")
    print(f"  the deployments page with 50: {statistics.median(deployments_page):.1f} ms (median of 5)")


if __name__ == "__main__":
    main()

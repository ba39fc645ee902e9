"""Claim: `fermion deploy` to first successful request through the gateway costs little more than
starting the photon by hand. Baseline: `fermion photon run` of the same photon, process start to
first successful request, same run. Usage: python benchmarks/cold_start.py"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fermion.testing import fermion_cmd, running_server, serve_photon, web  # noqa: E402

TEXT_PHOTON = f"{ROOT / 'examples' / 'text' / 'photon.py'}:TextTools"
EMBEDDER_PHOTON = f"{ROOT / 'examples' / 'embedder' / 'photon.py'}:Embedder"

CASES = {
    "text": (TEXT_PHOTON, "upper", {"texts": ["hi"]}),
    "embedder": (EMBEDDER_PHOTON, "embed", {"texts": ["hi"]}),
}


def first_success(url: str, body: dict, deadline_s: float = 300) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        try:
            if web.post(url, json=body, timeout=10).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.02)
    raise RuntimeError(f"{url} never answered")


def direct(ref: str, handler: str, body: dict, work: Path) -> float:
    start = time.perf_counter()
    with serve_photon(ref, work, wait_ready=False, timeout=300) as served:
        first_success(f"{served.url}/{handler}", body)
        return time.perf_counter() - start


def deployed(server, name: str, ref: str, handler: str, body: dict) -> float:  # noqa: ANN001
    start = time.perf_counter()
    subprocess.run(fermion_cmd("deploy", ref, "--name", name, "--public", "--no-wait"), env=server.env,
                   check=True, capture_output=True)
    first_success(f"{server.url}/d/{name}/{handler}", body)
    return time.perf_counter() - start


def main() -> None:
    results = []
    with tempfile.TemporaryDirectory() as tmp, running_server(Path(tmp) / "home") as server:
        for name, (ref, handler, body) in CASES.items():
            base = direct(ref, handler, body, Path(tmp))
            full = deployed(server, name, ref, handler, body)
            results.append((name, base, full))
    print(f"{'photon':>10} {'photon run s':>13} {'deploy s':>9} {'ratio':>6}")
    for name, base, full in results:
        print(f"{name:>10} {base:>13.2f} {full:>9.2f} {full / base:>6.2f}")
    print("deploy = build + upload + schedule + process start + init() + health check + gateway routing")


if __name__ == "__main__":
    main()

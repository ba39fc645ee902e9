"""Test helpers: the repository's example photons (fermion.testing has the processes)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
TEXT_PHOTON = f"{EXAMPLES / 'text' / 'photon.py'}:TextTools"
EMBEDDER_PHOTON = f"{EXAMPLES / 'embedder' / 'photon.py'}:Embedder"
FIXTURE_PHOTONS = ROOT / "tests" / "photon" / "fixture_photons.py"

# (fault, requests sent, requests failed, what the design promises), printed at the end of the run
CHAOS_RESULTS: list[tuple[str, int, int, str]] = []


def report_fault(fault: str, sent: int, failed: int, promise: str = "0 failed") -> None:
    CHAOS_RESULTS.append((fault, sent, failed, promise))


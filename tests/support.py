"""Test helpers: the repository's example photons (fermion.testing has the processes)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
TEXT_PHOTON = f"{EXAMPLES / 'text' / 'photon.py'}:TextTools"
EMBEDDER_PHOTON = f"{EXAMPLES / 'embedder' / 'photon.py'}:Embedder"
FIXTURE_PHOTONS = ROOT / "tests" / "photon" / "fixture_photons.py"

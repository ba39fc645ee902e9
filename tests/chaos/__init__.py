"""Faults injected under load; every answer checked, each fault reported with requests sent and failed."""

from tests.support import FIXTURE_PHOTONS

CLOUDS = """
clouds:
  - name: alpha
    capacity: {cpus: 4, memory_gb: 8}
  - name: beta
    capacity: {cpus: 4, memory_gb: 8}
"""
PHOTON = f"{FIXTURE_PHOTONS}:Versioned"

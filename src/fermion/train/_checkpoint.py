"""Atomic checkpoints: written to a temporary directory, sealed with a digest, then renamed.
A checkpoint without a valid seal (half-written, truncated, altered) is never loaded."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

STATE = "state.pt"
SEAL = "COMPLETE"


def save_checkpoint(directory: Path, step: int, state: dict[str, Any], keep: int = 2) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / f"ckpt-{step:08d}"
    tmp = directory / f".tmp-ckpt-{step:08d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    torch.save(state, tmp / STATE)
    digest = hashlib.sha256((tmp / STATE).read_bytes()).hexdigest()
    (tmp / SEAL).write_text(json.dumps({"step": step, "sha256": digest}))
    with open(tmp / STATE, "rb") as f:  # make the bytes durable before the rename publishes them
        os.fsync(f.fileno())
    shutil.rmtree(final, ignore_errors=True)
    os.rename(tmp, final)
    for old in sorted(directory.glob("ckpt-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _valid(path: Path) -> bool:
    try:
        seal = json.loads((path / SEAL).read_text())
        return hashlib.sha256((path / STATE).read_bytes()).hexdigest() == seal["sha256"]
    except (OSError, ValueError, KeyError):
        return False


def latest_checkpoint(directory: Path) -> tuple[Path | None, list[Path]]:
    """The newest valid checkpoint, and the invalid ones skipped on the way."""
    skipped = []
    for path in sorted(directory.glob("ckpt-*"), reverse=True):
        if _valid(path):
            return path, skipped
        skipped.append(path)
    return None, skipped


def load_checkpoint(path: Path) -> dict[str, Any]:
    return torch.load(path / STATE, map_location="cpu", weights_only=True)

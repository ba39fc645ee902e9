"""Interactions for the recommender example, from a stated generative process (no download).

The world: 400 users and 300 items, each with a latent taste vector of 6 dimensions drawn from a
standard normal, and a popularity bias per item, the log of a Zipf(1.1) weight (a few items are
popular with everyone). A user picks items one after another, without replacement; the chance to
pick item i is softmax_i((u . v_i) / 0.5 + bias_i). Each pick gets the next timestamp.

Version 1: every user makes 24 picks. Version 2 is the same world later on: every user makes 8
more picks, and 80 new users arrive with 24 each. The rows are ``user,item,ts``.

    python generate.py OUT_DIR --version 1     # writes OUT_DIR/interactions.csv
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

USERS, ITEMS, DIM, TEMPERATURE = 400, 300, 6, 0.5
FIRST_PICKS, MORE_PICKS, NEW_USERS = 24, 8, 80


def _world(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    users = rng.standard_normal((USERS + NEW_USERS, DIM))
    items = rng.standard_normal((ITEMS, DIM))
    bias = np.log(1.0 / np.arange(1, ITEMS + 1) ** 1.1)
    rng.shuffle(bias)  # popularity is not the item's number
    return users, items, bias


def _picks(rng: np.random.Generator, taste: np.ndarray, items: np.ndarray, bias: np.ndarray, taken: set[int],
           count: int) -> list[int]:
    logits = items @ taste / TEMPERATURE + bias
    out = []
    for _ in range(count):
        weights = np.exp(logits - logits.max())
        weights[list(taken)] = 0.0
        choice = int(rng.choice(ITEMS, p=weights / weights.sum()))
        taken.add(choice)
        out.append(choice)
    return out


def generate(version: int, seed: int = 7) -> list[tuple[str, str, int]]:
    """The rows of ``version`` (1 or 2), ordered by time."""
    users, items, bias = _world(seed)
    rng = np.random.default_rng(seed + 1)
    history: dict[int, list[int]] = {}
    for u in range(USERS):
        history[u] = _picks(rng, users[u], items, bias, set(), FIRST_PICKS)
    if version >= 2:
        for u in range(USERS):
            history[u] += _picks(rng, users[u], items, bias, set(history[u]), MORE_PICKS)
        for u in range(USERS, USERS + NEW_USERS):
            history[u] = _picks(rng, users[u], items, bias, set(), FIRST_PICKS)
    rows, ts = [], 0
    for u, picks in history.items():
        for item in picks:
            ts += 1
            rows.append((f"u{u}", f"i{item}", ts))
    return rows


def write(folder: Path, version: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "interactions.csv"
    with path.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["user", "item", "ts"])
        out.writerows(generate(version))
    return path


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--version", type=int, default=1, choices=[1, 2])
    args = parser.parse_args()
    print(f"wrote {write(args.out, args.version)}")

"""Serves the recommender the pipeline trained: the model version in $FERMION_MODEL_DIR (the
registry puts it there), top-k items a user has not picked yet; the popular ones for a newcomer."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from fermion import Photon, UserInputError, handler


class Recommender(Photon):
    resources = {"cpus": 0.25, "memory_gb": 0.5}

    def init(self) -> None:
        folder = Path(os.environ["FERMION_MODEL_DIR"])
        self.users = np.load(folder / "users.npy")
        self.items = np.load(folder / "items.npy")
        meta = json.loads((folder / "meta.json").read_text())
        trained = set(meta.get("trained", meta["users"]))
        self.user_index = {u: i for i, u in enumerate(meta["users"]) if u in trained}
        self.item_names = meta["items"]
        self.item_index = {v: i for i, v in enumerate(self.item_names)}
        self.seen = {u: {self.item_index[i] for i in picks} for u, picks in meta["seen"].items()}
        self.popular = meta["popular"]
        self.model = os.environ.get("FERMION_MODEL", "a local folder")
        self.recall = meta["metrics"].get("recall_at_10")

    @handler
    def recommend(self, user: str, k: int = 10) -> dict[str, object]:
        """The ``k`` items ``user`` is likeliest to pick next (the popular ones if it is new here)."""
        if not 1 <= k <= 100:
            raise UserInputError("k must be between 1 and 100")
        if user not in self.user_index:
            return {"user": user, "items": self.popular[:k], "why": "new user: the most popular items",
                    "model": self.model}
        scores = self.items @ self.users[self.user_index[user]]
        scores[list(self.seen.get(user, ()))] = -np.inf
        top = np.argsort(-scores)[:k]
        return {"user": user, "items": [self.item_names[i] for i in top], "why": "matrix factorization",
                "model": self.model}

    @handler(method="GET")
    def info(self) -> dict[str, object]:
        return {"model": self.model, "users": len(self.user_index), "items": len(self.item_names),
                "recall_at_10": self.recall}

"""Matrix factorization for implicit feedback (BPR), trained on the interactions dataset and
measured against a popularity baseline: recall@10 and NDCG@10 on each user's last two picks.

Run as a pipeline step: reads $FERMION_DATA_DIR/interactions/interactions.csv, writes its
learning curve to $FERMION_JOB_OUTPUT/metrics.jsonl, the model to model/, and result.json's
metrics (the registry keeps them with the version).
"""

from __future__ import annotations

import csv
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch

K = 10
HELD_OUT = 2  # each user's last picks, the test set
DIM, EPOCHS, LR, WEIGHT_DECAY, BATCH = 32, 40, 0.05, 1e-4, 2048


def load(path: Path) -> tuple[list[str], list[str], dict[int, list[int]], dict[int, list[int]], dict[int, list[int]]]:
    """Users, items, and per user every pick, the training picks and the held-out ones (the last by time)."""
    with path.open() as f:
        rows = sorted(((r["user"], r["item"], int(r["ts"])) for r in csv.DictReader(f)), key=lambda r: r[2])
    users = sorted({r[0] for r in rows})
    items = sorted({r[1] for r in rows})
    uid, iid = {u: i for i, u in enumerate(users)}, {v: i for i, v in enumerate(items)}
    seq: dict[int, list[int]] = {}
    for user, item, _ in rows:
        seq.setdefault(uid[user], []).append(iid[item])
    train = {u: s[:-HELD_OUT] for u, s in seq.items() if len(s) > HELD_OUT}
    test = {u: s[-HELD_OUT:] for u, s in seq.items() if len(s) > HELD_OUT}
    return users, items, seq, train, test


def rank_metrics(scores: np.ndarray, train: dict[int, list[int]], test: dict[int, list[int]]) -> dict[str, float]:
    """recall@K and NDCG@K of a users × items score matrix, training picks excluded."""
    recall = ndcg = 0.0
    for u, held in test.items():
        s = scores[u].copy()
        s[train[u]] = -np.inf
        top = np.argpartition(-s, K)[:K]
        top = top[np.argsort(-s[top])]
        hits = [1.0 if item in held else 0.0 for item in top]
        recall += sum(hits) / len(held)
        dcg = sum(h / math.log2(i + 2) for i, h in enumerate(hits))
        ndcg += dcg / sum(1 / math.log2(i + 2) for i in range(min(len(held), K)))
    return {f"recall_at_{K}": recall / len(test), f"ndcg_at_{K}": ndcg / len(test)}


def train_bpr(n_users: int, n_items: int, train: dict[int, list[int]], log) -> tuple[np.ndarray, np.ndarray]:  # noqa: ANN001
    torch.manual_seed(0)
    users_emb = torch.nn.Embedding(n_users, DIM)
    items_emb = torch.nn.Embedding(n_items, DIM)
    for e in (users_emb, items_emb):
        torch.nn.init.normal_(e.weight, std=0.1)
    params = [*users_emb.parameters(), *items_emb.parameters()]
    opt = torch.optim.Adam(params, lr=LR)
    pairs = torch.tensor([(u, i) for u, items in train.items() for i in items])
    seen = {u: set(items) for u, items in train.items()}  # by user id: not every user has training picks
    gen = torch.Generator().manual_seed(0)
    for epoch in range(1, EPOCHS + 1):
        order = pairs[torch.randperm(len(pairs), generator=gen)]
        total = 0.0
        for start in range(0, len(order), BATCH):
            batch = order[start:start + BATCH]
            u, pos = batch[:, 0], batch[:, 1]
            neg = torch.randint(0, n_items, (len(batch),), generator=gen)
            clash = torch.tensor([int(n) in seen[int(x)] for x, n in zip(u, neg, strict=True)])
            neg[clash] = torch.randint(0, n_items, (int(clash.sum()),), generator=gen)  # mostly unseen, cheaply
            eu, ep, en = users_emb(u), items_emb(pos), items_emb(neg)
            margin = (eu * ep).sum(1) - (eu * en).sum(1)
            loss = -torch.nn.functional.logsigmoid(margin).mean() + WEIGHT_DECAY * (
                eu.pow(2).sum() + ep.pow(2).sum() + en.pow(2).sum()) / len(batch)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(batch)
        log({"epoch": epoch, "train_loss": total / len(order)})
    return users_emb.weight.detach().numpy(), items_emb.weight.detach().numpy()


def main() -> None:
    started = time.perf_counter()
    data = Path(os.environ.get("FERMION_DATA_DIR", "data")) / "interactions" / "interactions.csv"
    out = Path(os.environ.get("FERMION_JOB_OUTPUT", "output"))
    out.mkdir(parents=True, exist_ok=True)
    users, items, history, train, test = load(data)
    curve = (out / "metrics.jsonl").open("a")

    def log(line: dict) -> None:
        curve.write(json.dumps(line) + "\n")
        curve.flush()

    counts = np.zeros(len(items))
    for picks in train.values():
        np.add.at(counts, picks, 1)
    popularity = rank_metrics(np.tile(counts, (len(users), 1)), train, test)
    u, v = train_bpr(len(users), len(items), train, log)
    model = rank_metrics(u @ v.T, train, test)
    metrics = {**model, **{f"popularity_{k}": val for k, val in popularity.items()},
               "users": len(users), "items": len(items), "interactions": sum(map(len, train.values())),
               "train_seconds": round(time.perf_counter() - started, 2)}
    log(metrics)
    folder = out / "model"
    folder.mkdir(exist_ok=True)
    np.save(folder / "users.npy", u)
    np.save(folder / "items.npy", v)
    # serving skips everything a user picked (its held-out picks too), and treats a user with no
    # training picks (no trained vector) as new
    (folder / "meta.json").write_text(json.dumps({"users": users, "items": items, "seen": {
        users[k]: [items[i] for i in picks] for k, picks in history.items()},
        "trained": [users[k] for k in train],
        "popular": [items[i] for i in np.argsort(-counts)[:50]], "metrics": metrics}))
    (out / "result.json").write_text(json.dumps({"metrics": metrics, "lineage": {
        "model": "matrix factorization (BPR)", "dim": DIM, "epochs": EPOCHS, "lr": LR}}))
    print(f"recall@{K} {model[f'recall_at_{K}']:.3f} (popularity {popularity[f'recall_at_{K}']:.3f}), "
          f"NDCG@{K} {model[f'ndcg_at_{K}']:.3f} (popularity {popularity[f'ndcg_at_{K}']:.3f}); "
          f"{len(users)} users, {len(items)} items, {metrics['interactions']} training picks")


if __name__ == "__main__":
    main()

"""Fine-tuning MiniLM for real: it learns, resumes exactly, and ignores broken checkpoints."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from fermion.train import FinetuneConfig, finetune, latest_checkpoint, load_checkpoint
from tests.support import EXAMPLES

TICKETS = EXAMPLES / "data" / "tickets"


def subset(src: Path, dest: Path, n: int) -> str:
    with src.open() as f:
        rows = list(csv.reader(f))
    with dest.open("w", newline="") as f:
        csv.writer(f).writerows(rows[: n + 1])
    return str(dest)


@pytest.fixture()
def small(tmp_path: Path) -> dict[str, str]:
    return {"train_data": subset(TICKETS / "train.csv", tmp_path / "train.csv", 48),
            "eval_data": subset(TICKETS / "eval.csv", tmp_path / "eval.csv", 24)}


def cfg(tmp: Path, name: str, data: dict[str, str], **kw: object) -> FinetuneConfig:
    settings: dict[str, object] = {"epochs": 2, "batch_size": 16, "checkpoint_every": 2, "lr": 3e-3, **data, **kw}
    return FinetuneConfig(output_dir=str(tmp / name), **settings)  # type: ignore[arg-type]


def final_weights(out: Path) -> dict[str, torch.Tensor]:
    path, _ = latest_checkpoint(out / "checkpoints")
    assert path is not None
    return load_checkpoint(path)["trainable"]


def test_finetune_beats_the_untuned_baseline(tmp_path: Path) -> None:
    data = {"train_data": subset(TICKETS / "train.csv", tmp_path / "train.csv", 160),
            "eval_data": str(TICKETS / "eval.csv")}
    result = finetune(cfg(tmp_path, "run", data, epochs=2, grad_accum=2, batch_size=8))
    assert result.status == "finished"
    assert result.final.accuracy >= result.baseline.accuracy + 0.4, (result.baseline, result.final)
    assert result.final.macro_f1 > 0.6
    assert len(result.history) == 2 and "eval_accuracy" in result.history[0]
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any("train_loss" in r for r in rows) and any("eval_loss" in r for r in rows)
    model = Path(result.artifact or "")
    assert (model / "head.safetensors").exists() and json.loads((model / "labels.json").read_text()) == result.labels
    assert result.lineage["train_sha256"] and result.lineage["base_model"]


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path: Path, small: dict[str, str]) -> None:
    whole = finetune(cfg(tmp_path, "whole", small))
    assert whole.status == "finished" and whole.steps == 6
    stopped = finetune(cfg(tmp_path, "parts", small, max_steps=4))  # dies mid-epoch 2, checkpointed
    assert stopped.status == "stopped" and stopped.steps == 4
    resumed = finetune(cfg(tmp_path, "parts", small))
    assert resumed.resumed_from_step == 4 and resumed.steps == 6
    a, b = final_weights(tmp_path / "whole"), final_weights(tmp_path / "parts")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert resumed.final == whole.final


def test_a_corrupt_or_partial_checkpoint_is_never_loaded(tmp_path: Path, small: dict[str, str]) -> None:
    finetune(cfg(tmp_path, "run", small, max_steps=2))
    ckpts = tmp_path / "run" / "checkpoints"
    good, _ = latest_checkpoint(ckpts)
    assert good is not None and good.name == "ckpt-00000002"
    truncated = ckpts / "ckpt-00000009"  # newer, sealed, but its state was cut short
    truncated.mkdir()
    (truncated / "state.pt").write_bytes((good / "state.pt").read_bytes()[:1000])
    (truncated / "COMPLETE").write_text((good / "COMPLETE").read_text())
    (ckpts / "ckpt-00000010").mkdir()  # never sealed: a crash mid-write
    (ckpts / ".tmp-ckpt-00000011-1").mkdir()
    resumed = finetune(cfg(tmp_path, "run", small, max_steps=3))
    assert resumed.resumed_from_step == 2
    assert resumed.skipped_checkpoints == ["ckpt-00000010", "ckpt-00000009"]


def test_bad_data_is_a_clear_error(tmp_path: Path) -> None:
    from fermion import UserInputError

    bad = tmp_path / "bad.csv"
    bad.write_text("text,label\nhello,\n")
    with pytest.raises(UserInputError, match="row 1 needs non-empty"):
        finetune(FinetuneConfig(train_data=str(bad), output_dir=str(tmp_path / "o")))
    with pytest.raises(UserInputError, match="no data file"):
        finetune(FinetuneConfig(train_data=str(tmp_path / "missing.csv"), output_dir=str(tmp_path / "o")))

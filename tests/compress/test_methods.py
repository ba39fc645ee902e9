"""Each compression step on a real fine-tuned MiniLM classifier: the variant loads in its format,
labels the eval set as its parent does on most inputs, and is what its method says (int8, fewer
neurons, zeroed weights, fewer layers); unfit models and settings are clear errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from fermion.compress import Predictor, StepSettings, parse_chain, run_step
from fermion.errors import UserInputError
from fermion.train import FinetuneConfig, finetune, load_labelled
from tests.support import EXAMPLES

EVAL = EXAMPLES / "data/tickets/eval.csv"


@pytest.fixture(scope="module")
def parent(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("parent")
    rows = list(csv.reader((EXAMPLES / "data/tickets/train.csv").open()))
    train = tmp / "train.csv"
    csv.writer(train.open("w", newline="")).writerows(rows[:121])
    result = finetune(FinetuneConfig(train_data=str(train), eval_data=str(EVAL), output_dir=str(tmp / "ft"), epochs=3,
                                     batch_size=8, lr=3e-3, precision="fp32"))
    evald = load_labelled(EVAL)
    folder = Path(result.artifact)
    return {"folder": folder, "train": load_labelled(train), "eval": evald,
            "labels": [a["label"] for a in Predictor(folder, threads=2).classify(evald.texts)]}


def agreement(parent: dict, folder: Path) -> float:
    mine = [a["label"] for a in Predictor(folder, threads=2).classify(parent["eval"].texts)]
    return sum(a == b for a, b in zip(mine, parent["labels"], strict=True)) / len(mine)


def size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


@pytest.mark.parametrize(("method", "settings", "fmt", "max_size"), [
    ("quantize", {"backend": "onnx"}, "onnx", 0.3),
    ("quantize", {"backend": "torch"}, "torch-int8", 0.7),
    ("onnx", {}, "onnx", 1.05),
])
def test_export_and_quantize_keep_the_parents_labels(parent: dict, tmp_path: Path, method: str, settings: dict,
                                                     fmt: str, max_size: float) -> None:
    dest = tmp_path / "v"
    run_step(method, parent["folder"], dest, StepSettings(**settings), None, [{"method": method, **settings}])
    assert Predictor(dest).format == fmt
    assert json.loads((dest / "variant.json").read_text())["steps"] == [{"method": method, **settings}]
    assert size(dest) < max_size * size(parent["folder"])
    # int8 and ONNX label the eval set as the fp32 parent does on at least 95% of its 80 rows
    assert agreement(parent, dest) >= 0.95


def test_structured_pruning_removes_half_the_neurons_and_recovers(parent: dict, tmp_path: Path) -> None:
    dest = tmp_path / "pruned"
    done = run_step("prune", parent["folder"], dest, StepSettings(sparsity=0.5, epochs=2), parent["train"], [])
    config = json.loads((dest / "encoder/config.json").read_text())
    assert config["intermediate_size"] == 768 and done["ffn_neurons"] == "768 of 1536 per layer"
    assert size(dest) < 0.9 * size(parent["folder"])  # the embeddings (half the bytes) stay
    assert agreement(parent, dest) >= 0.85  # after a two-epoch recovery on 120 rows


def test_magnitude_pruning_zeroes_the_smallest_weights(parent: dict, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    dest = tmp_path / "sparse"
    run_step("prune", parent["folder"], dest, StepSettings(sparsity=0.4, prune_kind="magnitude", epochs=1),
             parent["train"], [])
    weights = load_file(str(dest / "encoder/model.safetensors"))
    dense = weights["encoder.layer.0.intermediate.dense.weight"]
    assert 0.39 < float((dense == 0).float().mean()) < 0.41
    assert agreement(parent, dest) >= 0.85


def test_distillation_keeps_k_layers_and_learns_the_teachers_labels(parent: dict, tmp_path: Path) -> None:
    dest = tmp_path / "student"
    done = run_step("distill", parent["folder"], dest, StepSettings(layers=3, epochs=4), parent["train"], [])
    assert done["student_layers"] == [1, 3, 5] and done["teacher_layers"] == 6
    assert json.loads((dest / "encoder/config.json").read_text())["num_hidden_layers"] == 3
    assert agreement(parent, dest) >= 0.85


def test_unfit_models_and_settings_are_clear_errors(parent: dict, tmp_path: Path) -> None:
    with pytest.raises(UserInputError, match="unknown method 'shrink'"):
        parse_chain("shrink")
    with pytest.raises(UserInputError, match="only quantize takes a backend"):
        parse_chain("onnx:torch")
    with pytest.raises(UserInputError, match="put them before quantize"):
        parse_chain("quantize+prune")
    not_a_model = tmp_path / "folder"
    not_a_model.mkdir()
    with pytest.raises(UserInputError, match="not a classifier model"):
        Predictor(not_a_model)
    with pytest.raises(UserInputError, match="fewer layers than the teacher's 6"):
        run_step("distill", parent["folder"], tmp_path / "x", StepSettings(layers=6), parent["train"], [])
    with pytest.raises(UserInputError, match="needs the model's training data"):
        run_step("prune", parent["folder"], tmp_path / "y", StepSettings(), None, [])
    int8 = tmp_path / "int8"
    run_step("quantize", parent["folder"], int8, StepSettings(backend="torch"), None, [])
    with pytest.raises(UserInputError, match="int8 already"):
        run_step("quantize", int8, tmp_path / "z", StepSettings(), None, [])
    with pytest.raises(UserInputError, match="needs the torch"):
        run_step("distill", int8, tmp_path / "w", StepSettings(), parent["train"], [])

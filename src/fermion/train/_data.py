"""Labelled text for classification: CSV or JSONL with `text` and `label` fields."""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserInputError


@dataclass
class LabelledText:
    texts: list[str]
    labels: list[str]

    def __len__(self) -> int:
        return len(self.texts)


def load_labelled(path: str | Path) -> LabelledText:
    """Rows of (text, label) from a .csv (header: text,label) or .jsonl file."""
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"no data file at {path}", hint="give a .csv with text,label columns or a .jsonl")
    texts, labels = [], []
    try:
        if path.suffix == ".jsonl":
            rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        elif path.suffix == ".csv":
            with path.open(newline="") as f:
                rows = list(csv.DictReader(f))
        else:
            raise UserInputError(f"unsupported data format {path.suffix!r}", hint="use .csv or .jsonl")
    except (json.JSONDecodeError, csv.Error, UnicodeDecodeError) as exc:
        raise UserInputError(f"cannot parse {path}: {exc}") from exc
    for i, row in enumerate(rows, start=1):
        if not isinstance(row, dict) or not row.get("text") or row.get("label") in (None, ""):
            raise UserInputError(f"{path} row {i} needs non-empty 'text' and 'label' fields")
        texts.append(str(row["text"]))
        labels.append(str(row["label"]))
    if len(set(labels)) < 2:
        raise UserInputError(f"{path} has fewer than two labels; nothing to classify")
    return LabelledText(texts, labels)


def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()

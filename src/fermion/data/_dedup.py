"""Removing exact and near-duplicate rows from a dataset folder before anyone trains on it.

Repeated rows make a model memorise them and leak from a training split into an evaluation
split, and they are rarely byte-identical: casing, spacing or one changed word hide them. So rows
are compared dataset-wide (across files, in path order, the first occurrence kept) on normalized
text, then by MinHash: comparing every pair of rows is quadratic, LSH proposes only likely
matches, and the estimated Jaccard of each proposal decides. The cleaned copy is built in a
folder beside the destination and renamed into place, so a bad line found halfway leaves nothing
behind and the same call can simply be made again."""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


from ..errors import UserInputError, shorten
from ._manifest import scan_folder

SEED = 1  # fixed, so the same folder always gives the same cleaned copy
MAX_EXAMPLES = 10
LINES, TABLES = {".txt", ".md", ".jsonl"}, {".csv": csv.excel, ".tsv": csv.excel_tab}
_ENDS = re.compile(r"^[\W_]+|[\W_]+$")
_WORD = re.compile(r"\w+")
# surrogateescape: a file that is not quite UTF-8 still round-trips byte for byte
ENCODING = {"encoding": "utf-8", "errors": "surrogateescape"}

Row = tuple[str | None, str]  # (text compared, None for a line that is no row; the original line(s))


@dataclass
class DedupReport:
    files: int = 0
    rows_before: int = 0
    rows_after: int = 0
    exact_removed: int = 0
    near_removed: int = 0
    per_file: dict[str, dict[str, int]] = field(default_factory=dict)
    examples: list[dict[str, str]] = field(default_factory=list)
    threshold: float = 0.85

    def as_dict(self) -> dict:
        return asdict(self)


def normalize(text: str) -> str:
    collapsed = " ".join(text.casefold().split())
    return _ENDS.sub("", collapsed) or collapsed  # a line of only punctuation ("---") stays itself


def shingles(norm: str) -> list[bytes]:
    """Word 3-grams, which see word order; a text of two words has just one, too few to estimate
    a similarity from, so its words instead, and a single word's character 5-grams."""
    words = _WORD.findall(norm) or [norm]
    if len(words) >= 3:
        grams = [" ".join(words[i:i + 3]) for i in range(len(words) - 2)]
    elif len(words) == 2:
        grams = words
    else:
        grams = [words[0][i:i + 5] for i in range(max(1, len(words[0]) - 4))]
    return [g.encode(**ENCODING) for g in grams]


def _lines(text: str) -> Iterator[str]:
    return iter(io.StringIO(text, newline=""))  # splits on \n, \r\n and \r only, and keeps them


def _json_text(rel: str, n: int, line: str, column: str | None) -> str:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise UserInputError(f"{rel}, line {n}: not valid JSON ({exc.msg})") from None
    if not isinstance(obj, dict):
        raise UserInputError(f"{rel}, line {n}: not a JSON object")
    if column is not None:
        if column not in obj:
            raise UserInputError(f"{rel}, line {n}: no field {column!r}")
        value = obj[column]
        return value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    strings = [v for v in obj.values() if isinstance(v, str)]
    return " ".join(strings) if strings else json.dumps(obj, sort_keys=True)


def _table_rows(rel: str, text: str, dialect: type[csv.Dialect], column: str | None) -> list[Row]:
    raw: list[str] = []

    def feed() -> Iterator[str]:
        # csv.reader pulls lines only until a record is complete, so the lines read since the
        # last record are exactly its original text (quoted newlines included), kept as it was
        for line in _lines(text):
            raw.append(line)
            yield line

    rows: list[Row] = []
    index: int | None = None
    try:
        for n, record in enumerate(csv.reader(feed(), dialect)):
            chunk = "".join(raw)
            raw.clear()
            if n == 0 and column is not None:
                header = [name.lstrip("\ufeff") for name in record]  # a spreadsheet's byte order mark
                if column not in header:
                    raise UserInputError(f"{rel}: no column {column!r}", hint=f"its columns: {', '.join(header)}")
                index = header.index(column)
            if n == 0 or not record:
                rows.append((None, chunk))
            elif index is None:
                rows.append((" ".join(record), chunk))
            else:
                rows.append((record[index] if index < len(record) else "", chunk))
    except csv.Error as exc:
        raise UserInputError(f"{rel}: not a valid {dialect.delimiter!r}-separated file ({exc})") from None
    return rows + [(None, "".join(raw))]


def read_rows(rel: str, text: str, column: str | None) -> list[Row]:
    suffix = Path(rel).suffix.lower()
    if suffix in TABLES:
        return _table_rows(rel, text, TABLES[suffix], column)
    return [(None, line) if not line.strip() else
            (_json_text(rel, n, line, column) if suffix == ".jsonl" else line, line)
            for n, line in enumerate(_lines(text), 1)]


class _Index:
    """Every row kept so far: its normalized text, its MinHash signature in the LSH index."""

    def __init__(self, threshold: float, num_perm: int) -> None:
        from datasketch import MinHash, MinHashLSH  # imported here: it takes 0.4 s, and the server seldom dedups
        self.threshold, self.num_perm = threshold, num_perm
        try:
            self.lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
        except ValueError:  # datasketch finds no band split near 1; two bands still catch equal signatures
            self.lsh = MinHashLSH(num_perm=num_perm, params=(2, num_perm // 2))
        self.template = MinHash(num_perm=num_perm, seed=SEED)  # copies share its permutations
        self.seen: dict[str, int] = {}  # normalized text -> the kept row it is or duplicates
        self.kept: list[str] = []
        self.signatures: list[Any] = []  # numpy arrays of hash values

    def check(self, text: str) -> tuple[str | None, int]:
        """("exact" or "near", the kept row it duplicates), or (None, its new id)."""
        norm = normalize(text)
        if norm in self.seen:
            return "exact", self.seen[norm]
        m = self.template.copy()
        m.update_batch(shingles(norm))
        best, score = -1, 0.0
        for key in sorted(self.lsh.query(m)):  # sorted: of equally close rows, the earliest is named
            similarity = int((self.signatures[key] == m.hashvalues).sum()) / self.num_perm
            if similarity >= self.threshold and similarity > score:
                best, score = key, similarity
        if best >= 0:
            self.seen[norm] = best
            return "near", best
        self.seen[norm] = key = len(self.kept)
        self.kept.append(shorten(text.strip(), 200))
        self.signatures.append(m.hashvalues)
        self.lsh.insert(key, m, check_duplication=False)
        return None, key


def dedup_folder(src: Path, dst: Path, *, threshold: float = 0.85, num_perm: int = 128,
                 column: str | None = None) -> DedupReport:
    """Copy ``src`` to the new folder ``dst`` without its duplicate rows, and say what went."""
    if not 0 < threshold <= 1:
        raise UserInputError(f"threshold must be above 0 and at most 1, not {threshold}")
    if num_perm < 2:
        raise UserInputError(f"num_perm must be at least 2, not {num_perm}")
    src, dst = Path(src), Path(dst)
    files = scan_folder(src)
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
        raise UserInputError(f"{dst} exists and is not an empty folder", hint="give a new folder for the cleaned copy")
    if dst.resolve().is_relative_to(src.resolve()):
        raise UserInputError(f"{dst} is inside {src}", hint="a later run would clean the cleaned copy too")
    report, index = DedupReport(threshold=threshold), _Index(threshold, num_perm)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", dir=dst.parent))
    try:
        for rel, path in files:
            out = tmp / rel
            out.parent.mkdir(parents=True, exist_ok=True)
            if path.suffix.lower() not in LINES | TABLES.keys():
                shutil.copyfile(path, out)
                continue
            counts = {"before": 0, "after": 0, "exact": 0, "near": 0}
            kept: list[str] = []
            for text, original in read_rows(rel, path.read_bytes().decode(**ENCODING), column):
                if text is not None:
                    counts["before"] += 1
                    kind, other = index.check(text)
                    if kind is not None:
                        counts[kind] += 1
                        if len(report.examples) < MAX_EXAMPLES:
                            report.examples.append({"file": rel, "removed": shorten(text.strip(), 200),
                                                    "kept": index.kept[other]})
                        continue
                    counts["after"] += 1
                kept.append(original)
            out.write_text("".join(kept), **ENCODING, newline="")
            report.files += 1
            report.per_file[rel] = counts
            report.rows_before += counts["before"]
            report.rows_after += counts["after"]
            report.exact_removed += counts["exact"]
            report.near_removed += counts["near"]
        tmp.chmod(src.stat().st_mode & 0o777)  # mkdtemp made it private; the copy is as open as its source
        if dst.exists():
            dst.rmdir()
        tmp.rename(dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return report

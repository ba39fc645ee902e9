"""Dataset cleaning on the shipped support tickets: the duplicates planted are removed, nothing else is.

The base rows are the fine-tune example's real tickets, thinned to those whose word 3-gram Jaccard
with every earlier one is at most 0.6: MinHash only estimates Jaccard, and a pair at 0.83 in the
shipped file lands on either side of 0.85 depending on the seed. Planted near duplicates sit far
above the threshold (same words, other punctuation; one word changed in a 160-word paragraph), so
the counts asserted hold for practically any seed, not just the one the module fixes."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import pytest

from fermion.data._dedup import DedupReport, dedup_folder
from fermion.errors import UserInputError
from tests.support import EXAMPLES

TICKETS = EXAMPLES / "data" / "tickets" / "train.csv"


def _grams(text: str) -> set[tuple[str, ...]]:
    words = re.findall(r"\w+", text.lower())
    return {tuple(words[i:i + 3]) for i in range(len(words) - 2)}


def distinct_tickets() -> list[tuple[str, str]]:
    with TICKETS.open(newline="") as f:
        rows = [(text, label) for text, label in list(csv.reader(f))[1:]]
    kept: list[tuple[str, str, set[tuple[str, ...]]]] = []
    for text, label in rows:
        g = _grams(text)
        if all(len(g & k) / len(g | k) <= 0.6 for _, _, k in kept):
            kept.append((text, label, g))
    return [(text, label) for text, label, _ in kept]


def csv_bytes(rows: list[list[str]], dialect: str = "excel") -> bytes:
    buf = io.StringIO(newline="")
    csv.writer(buf, dialect=dialect).writerows(rows)
    return buf.getvalue().encode()


def build(root: Path) -> dict[str, object]:
    """A dataset with known duplicates planted, and what should survive of each file."""
    t = distinct_tickets()
    assert len(t) >= 124
    base, commas = t[:60], [row for row in t[:60] if ", " in row[0]][:2]
    multi = ("Multi-line ticket:\nthe export to Excel stops at row 65536\nand the file is cut off", "technical")
    planted = [(base[3][0].upper(), base[3][1]),                      # exact: case
               ("  " + base[7][0].replace(" ", "   ") + " ", base[7][1]),  # exact: whitespace
               (base[10][0] + "!!", base[10][1]),                     # exact: punctuation at the end
               *[(text.replace(",", ""), label) for text, label in commas]]  # near: same words
    (root / "tickets").mkdir(parents=True)
    (root / "tickets" / "train.csv").write_bytes(csv_bytes([["text", "label"], *base[:30], multi, *planted[:2],
                                                            *base[30:], *planted[2:]]))

    jsonl = [json.dumps({"id": i, "text": text, "label": label}) + "\n" for i, (text, label) in enumerate(t[60:70])]
    cross = [json.dumps({"id": 90, "text": base[0][0].lower(), "label": base[0][1]}) + "\n",  # exact, across files
             json.dumps({"id": 91, "text": base[1][0].replace(" ", "  "), "label": "other"}) + "\n"]
    again = json.dumps({"id": 92, "text": t[62][0].upper(), "label": t[62][1]}) + "\n"        # exact, same file
    (root / "tickets" / "validation.jsonl").write_text("".join(jsonl[:5] + cross + jsonl[5:] + ["\n", again]))

    paragraphs = [" ".join(text for text, _ in t[70 + 18 * i:88 + 18 * i]) for i in range(3)]
    words = paragraphs[1].split()
    assert len(words) >= 150
    words[len(words) // 2] = "zeppelin"
    md = ["# Support digest\n", "\n", paragraphs[0] + "\n", "\n", paragraphs[1] + "\n", "\n",
          " ".join(words) + "\n", "\n", paragraphs[2] + "\n"]
    (root / "notes.md").write_text("".join(md))
    (root / "img").mkdir()
    (root / "img" / "logo.png").write_bytes(bytes(range(256)) * 4 + b"\r\n\x00line\n")
    return {"base": base, "multi": multi, "planted": planted, "jsonl": jsonl, "md": md}


def test_removes_planted_duplicates_across_files_and_keeps_every_distinct_row(tmp_path: Path) -> None:
    data = build(tmp_path / "src")
    report = dedup_folder(tmp_path / "src", tmp_path / "out", column="text")

    assert report.per_file == {"notes.md": {"before": 5, "after": 4, "exact": 0, "near": 1},
                               "tickets/validation.jsonl": {"before": 13, "after": 10, "exact": 3, "near": 0},
                               "tickets/train.csv": {"before": 66, "after": 61, "exact": 3, "near": 2}}
    assert (report.files, report.rows_before, report.rows_after) == (3, 84, 75)
    assert (report.exact_removed, report.near_removed, report.threshold) == (6, 3, 0.85)

    out = tmp_path / "out"
    base, multi = data["base"], data["multi"]
    assert (out / "tickets" / "train.csv").read_bytes() == csv_bytes([["text", "label"], *base[:30], multi, *base[30:]])
    assert (out / "tickets" / "validation.jsonl").read_text() == "".join(data["jsonl"]) + "\n"
    md = data["md"]
    assert (out / "notes.md").read_text() == "".join(md[:6] + md[7:])
    assert (out / "img" / "logo.png").read_bytes() == (tmp_path / "src" / "img" / "logo.png").read_bytes()

    assert len(report.examples) == 9
    assert report.examples[0]["file"] == "notes.md"  # files go in sorted path order
    assert report.examples[1] == {"file": "tickets/train.csv", "removed": base[3][0].upper(), "kept": base[3][0]}
    assert {e["kept"] for e in report.examples if e["file"] == "tickets/validation.jsonl"} >= {base[0][0], base[1][0]}
    assert all(len(e["removed"]) <= 201 and len(e["kept"]) <= 201 for e in report.examples)
    assert json.loads(json.dumps(report.as_dict()))["per_file"] == report.per_file


def test_whole_rows_are_compared_without_a_column_and_a_tsv_keeps_its_tabs(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    rows = [[text, label] for text, label in distinct_tickets()[:20]]
    dup = [rows[4][0].upper(), rows[4][1].upper()]
    (tmp_path / "src" / "t.tsv").write_bytes(csv_bytes([["text", "label"], *rows, dup], "excel-tab"))
    report = dedup_folder(tmp_path / "src", tmp_path / "out")
    assert (report.exact_removed, report.near_removed, report.rows_after) == (1, 0, 20)
    assert (tmp_path / "out" / "t.tsv").read_bytes() == csv_bytes([["text", "label"], *rows], "excel-tab")


def test_one_word_changed_in_a_fifteen_word_ticket_needs_a_lower_threshold(tmp_path: Path) -> None:
    # word 3-grams: changing the 8th of 15 words alters 3 of 13 shingles, a Jaccard of 10/16
    sentences = ["Our nightly export to the shared drive failed again and the finance team cannot close the month",
                 "After the latest update the mobile app logs me out every time I switch to another screen",
                 "Please move my subscription to the annual plan and send the new invoice to our accounts address"]
    words = sentences[0].split()
    words[7] = "backup"
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "t.txt").write_text("\n".join([*sentences, " ".join(words)]) + "\n")
    assert dedup_folder(tmp_path / "src", tmp_path / "a").near_removed == 0
    report = dedup_folder(tmp_path / "src", tmp_path / "b", threshold=0.4)
    assert (report.near_removed, report.rows_after) == (1, 3)
    assert report.examples == [{"file": "t.txt", "removed": " ".join(words), "kept": sentences[0]}]


def test_a_bad_jsonl_line_is_named_and_nothing_is_left_behind(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.txt").write_text("fine\n")
    (tmp_path / "src" / "bad.jsonl").write_text('{"text": "ok"}\n\n{"text": "cut off\n')
    with pytest.raises(UserInputError, match=r"bad\.jsonl, line 3"):
        dedup_folder(tmp_path / "src", tmp_path / "out")
    (tmp_path / "src" / "bad.jsonl").write_text('{"text": "ok"}\n["a list"]\n')
    with pytest.raises(UserInputError, match=r"bad\.jsonl, line 2: not a JSON object"):
        dedup_folder(tmp_path / "src", tmp_path / "out")
    (tmp_path / "src" / "bad.jsonl").write_text('{"body": "ok"}\n')
    with pytest.raises(UserInputError, match=r"bad\.jsonl, line 1: no field 'text'"):
        dedup_folder(tmp_path / "src", tmp_path / "out", column="text")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_a_csv_without_the_column_is_named(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "t.csv").write_bytes(b"\xef\xbb\xbfbody,label\r\nhello,x\r\n")
    with pytest.raises(UserInputError, match=r"t\.csv: no column 'text'") as err:
        dedup_folder(tmp_path / "src", tmp_path / "out", column="text")
    assert err.value.hint == "its columns: body, label"
    dedup_folder(tmp_path / "src", tmp_path / "out", column="body")  # the byte order mark is not part of the name
    assert (tmp_path / "out" / "t.csv").read_bytes() == (tmp_path / "src" / "t.csv").read_bytes()


@pytest.mark.parametrize("threshold", [0, -0.5, 1.01, float("nan")])
def test_threshold_must_be_in_zero_one(tmp_path: Path, threshold: float) -> None:
    (tmp_path / "src").mkdir()
    with pytest.raises(UserInputError, match="threshold"):
        dedup_folder(tmp_path / "src", tmp_path / "out", threshold=threshold)


def test_threshold_one_removes_only_rows_with_the_same_words(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "t.txt").write_text("Hi, the app crashes on start.\nhi the app crashes on start\n"
                                            "HI, THE APP CRASHES ON START!\nHi, the app crashes at start.\n")
    report = dedup_folder(tmp_path / "src", tmp_path / "out", threshold=1.0)
    assert (report.exact_removed, report.near_removed, report.rows_after) == (1, 1, 2)


def test_folders_are_checked(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("a\n")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(UserInputError, match="not an empty folder"):
        dedup_folder(src, tmp_path / "full")
    with pytest.raises(UserInputError, match="not a folder"):
        dedup_folder(src / "a.txt", tmp_path / "out")
    with pytest.raises(UserInputError, match="inside"):
        dedup_folder(src, src / "clean")
    (tmp_path / "empty").mkdir()
    assert isinstance(dedup_folder(src, tmp_path / "empty"), DedupReport)
    assert (tmp_path / "empty" / "a.txt").read_text() == "a\n"


def test_the_same_folder_always_gives_the_same_copy(tmp_path: Path) -> None:
    build(tmp_path / "src")
    one = dedup_folder(tmp_path / "src", tmp_path / "one")
    two = dedup_folder(tmp_path / "src", tmp_path / "two")
    assert one == two
    assert all((tmp_path / "one" / p).read_bytes() == (tmp_path / "two" / p).read_bytes() for p in one.per_file)

"""Competition file readers on the real BirdCLEF+ 2026 files and on broken copies of them."""

from __future__ import annotations

import csv
import shutil
from collections import Counter
from pathlib import Path

import pytest

from featurestore.competition import (
    DataError,
    parse_clock,
    parse_label_list,
    parse_soundscape_name,
    read_soundscape_labels,
    read_taxonomy,
    read_train_csv,
)


@pytest.fixture(scope="module")
def bc(shared_data: Path) -> Path:
    return shared_data / "bc2026"


@pytest.fixture(scope="module")
def known(bc: Path) -> set[str]:
    return set(read_taxonomy(bc / "taxonomy.csv").column("primary_label").to_pylist())


def test_real_taxonomy_has_234_classes_by_group(bc: Path) -> None:
    tax = read_taxonomy(bc / "taxonomy.csv")
    assert tax.num_rows == 234
    assert Counter(tax.column("class_name").to_pylist()) == {
        "Aves": 162, "Amphibia": 35, "Insecta": 28, "Mammalia": 8, "Reptilia": 1}
    with open(bc / "sample_submission.csv") as fh:
        header = next(csv.reader(fh))
    assert header[1:] == tax.column("primary_label").to_pylist()


def test_real_soundscape_labels_dedupe_to_739_segments(bc: Path, known: set[str]) -> None:
    table, report = read_soundscape_labels(bc / "train_soundscapes_labels.csv", known)
    with open(bc / "train_soundscapes_labels.csv") as fh:
        raw = list(csv.DictReader(fh))
    assert report.raw_rows == len(raw) == 1478
    unique = {(r["filename"], r["start"], r["end"]) for r in raw}
    assert table.num_rows == len(unique) == 739
    assert report.duplicate_rows == 1478 - 739
    files = Counter(table.column("filename").to_pylist())
    assert len(files) == 66
    assert sum(1 for n in files.values() if n == 12) == 59
    labels = {lab for labs in table.column("labels").to_pylist() for lab in labs}
    assert len(labels) == 75
    assert labels <= known
    assert len(set(table.column("site").to_pylist())) == 9
    assert Counter(parse_soundscape_name(f).site for f in files)["S22"] == 40
    # the label lists equal the independent parse of the raw rows
    first = {(r["filename"], r["start"]): sorted(r["primary_label"].split(";")) for r in raw}
    for row in table.to_pylist():
        start = f"{int(row['start_s']) // 3600:02d}:{int(row['start_s']) % 3600 // 60:02d}:{int(row['start_s']) % 60:02d}"
        assert row["labels"] == first[(row["filename"], start)]
        assert row["row_id"] == f"{Path(row['filename']).stem}_{int(row['end_s'])}"
    assert report.conflicts == [] and not any(table.column("conflict").to_pylist())


def test_soundscape_name_parses() -> None:
    name = parse_soundscape_name("BC2026_Train_0039_S22_20211231_201500.ogg")
    assert (name.soundscape_id, name.split, name.site, str(name.date), name.time_utc, name.hour) == (
        "BC2026_Train_0039", "train", "S22", "2021-12-31", "20:15:00", 20)
    for bad in ("soundscape_123.ogg", "BC2026_Train_0039_S22_20211331_201500.ogg",
                "BC2026_Train_0039_S22_20211231_256000.ogg"):
        with pytest.raises(DataError, match=bad.split(".")[0]):
            parse_soundscape_name(bad)


def test_small_parsers() -> None:
    assert parse_clock("00:01:05", "x") == 65.0
    assert parse_clock("12.5", "x") == 12.5
    assert parse_label_list("['a', 'b']", "x") == ["a", "b"]
    assert parse_label_list("[]", "x") == []
    with pytest.raises(DataError, match="row 9"):
        parse_label_list("['a', ", "row 9")


def test_missing_column_names_file_and_column(bc: Path, known: set[str], tmp_path: Path) -> None:
    text = (bc / "train.csv").read_text().replace("secondary_labels", "secondary", 1)
    bad = tmp_path / "train.csv"
    bad.write_text(text)
    with pytest.raises(DataError, match=r"train\.csv: missing required column\(s\) \['secondary_labels'\]"):
        read_train_csv(bad, known)


def test_unknown_label_names_row_and_label(bc: Path, known: set[str], tmp_path: Path) -> None:
    lines = (bc / "train_soundscapes_labels.csv").read_text().splitlines()
    lines[5] = lines[5].rsplit(",", 1)[0] + ",22961;notabird1"
    bad = tmp_path / "labels.csv"
    bad.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"labels\.csv line 6: label\(s\) \['notabird1'\] not in the taxonomy"):
        read_soundscape_labels(bad, known)
    train = tmp_path / "train.csv"
    shutil.copy(bc / "train.csv", train)
    rows = train.read_text().splitlines()
    rows[2] = rows[2].replace(",[],", ",['zzz9'],", 1)
    train.write_text("\n".join(rows) + "\n")
    with pytest.raises(DataError, match=r"train\.csv line 3: secondary label\(s\) \['zzz9'\]"):
        read_train_csv(train, known)


def test_conflicting_duplicates_are_reported_not_merged_silently(bc: Path, known: set[str], tmp_path: Path) -> None:
    lines = (bc / "train_soundscapes_labels.csv").read_text().splitlines()
    # find the second copy of the first window and give it a different label set
    key = lines[1].split(",")[:3]
    second = next(i for i in range(2, len(lines)) if lines[i].split(",")[:3] == key)
    lines[second] = ",".join(key) + ",116570"
    bad = tmp_path / "labels.csv"
    bad.write_text("\n".join(lines) + "\n")
    table, report = read_soundscape_labels(bad, known)
    assert len(report.conflicts) == 1 and "116570" in report.conflicts[0]
    row = table.filter(table.column("conflict")).to_pylist()
    assert len(row) == 1 and "116570" in row[0]["labels"]


def test_duplicate_or_empty_keys_name_both_lines(bc: Path, known: set[str], tmp_path: Path) -> None:
    lines = (bc / "taxonomy.csv").read_text().splitlines()
    dup = tmp_path / "taxonomy.csv"
    dup.write_text("\n".join([*lines, lines[1]]) + "\n")
    with pytest.raises(DataError, match=rf"taxonomy\.csv line {len(lines) + 1}: primary_label '1161364' already on line 2"):
        read_taxonomy(dup)
    rows = (bc / "train.csv").read_text().splitlines()
    train = tmp_path / "train.csv"
    train.write_text("\n".join([*rows, rows[1].replace("1161364/iNat1264238.ogg", "")]) + "\n")
    with pytest.raises(DataError, match=r"train\.csv line 6: empty filename"):
        read_train_csv(train, known)

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
    read_submission_columns,
    read_taxonomy,
    read_train_csv,
    snap_to_windows,
)
from featurestore.ingest import read_competition_csvs


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


# ---------------------------------------------------------------------------- malformed rows (issue 10, item 5)
def _damage(src: Path, dst: Path, line: int, edit) -> Path:
    """Copy ``src`` to ``dst`` with 1-based ``line`` replaced by ``edit(fields)`` (a list of CSV fields)."""
    lines = src.read_text().splitlines()
    lines[line - 1] = ",".join(edit(lines[line - 1].split(",")))
    dst.write_text("\n".join(lines) + "\n")
    return dst


def _read(kind: str, path: Path, known: set[str]):
    if kind == "taxonomy":
        return read_taxonomy(path)
    if kind == "train":
        return read_train_csv(path, known)
    return read_soundscape_labels(path, known)


FILES = {"taxonomy": "taxonomy.csv", "train": "train.csv", "labels": "train_soundscapes_labels.csv"}


@pytest.mark.parametrize("kind,line", [("taxonomy", 5), ("train", 3), ("labels", 7)])
def test_a_row_missing_a_field_names_file_and_line(kind: str, line: int, bc: Path, known: set[str],
                                                   tmp_path: Path) -> None:
    src = bc / FILES[kind]
    n_header = len(src.read_text().splitlines()[0].split(","))
    bad = _damage(src, tmp_path / FILES[kind], line, lambda f: f[:2] + f[3:])   # drop the third field
    with pytest.raises(DataError) as err:
        _read(kind, bad, known)
    assert str(err.value) == f"{bad} line {line}: {n_header - 1} field(s), the header has {n_header}"
    # one more field than the header is refused the same way
    extra = _damage(src, tmp_path / f"extra_{FILES[kind]}", line, lambda f: [*f, "x"])
    with pytest.raises(DataError, match=rf"extra_.*\.csv line {line}: {n_header + 1} fields, the header has"):
        _read(kind, extra, known)


@pytest.mark.parametrize("kind,old,new", [
    ("taxonomy", None, None),                                   # its own "Guaraní leaf-litter frog" (line 5)
    ("train", "Gabriel Laufer,cc0,0.0,https://static.inaturalist.org/sounds/1269019",
     "Gabriel Laufér,cc0,0.0,https://static.inaturalist.org/sounds/1269019"),   # line 3
    ("labels", "BC2026_Train_0039_S22_20211231_201500.ogg,00:00:10,",
     "BC2026_Train_0039_S22_20211231_201500é.ogg,00:00:10,"),    # first copy of that window
])
def test_latin1_file_names_file_and_line(kind: str, old: str | None, new: str | None, bc: Path, known: set[str],
                                         tmp_path: Path) -> None:
    text = (bc / FILES[kind]).read_text(encoding="utf-8")
    if old is not None:
        assert text.isascii() and old in text
        text = text.replace(old, new, 1)
    line = next(i + 1 for i, row in enumerate(text.splitlines()) if not row.isascii())
    assert line == {"taxonomy": 5, "train": 3, "labels": 4}[kind]
    bad = tmp_path / FILES[kind]
    bad.write_bytes(text.encode("latin-1"))
    with pytest.raises(DataError) as err:
        _read(kind, bad, known)
    byte = {"taxonomy": "0xed", "train": "0xe9", "labels": "0xe9"}[kind]
    assert str(err.value) == f"{bad} line {line}: not UTF-8 text (byte {byte}); save the file as UTF-8"


@pytest.mark.parametrize("column,value,message", [
    ("end", "inf", "time 'inf' is not a finite number of seconds"),
    ("end", "00:00:inf", "time '00:00:inf' is not a finite number of seconds"),
    ("start", "nan", "time 'nan' is not a finite number of seconds"),
    ("start", "-00:00:05", "time '-00:00:05' is negative"),
    ("end", "24:00:01", "end '24:00:01' is past 24 h, longer than any recording; correct the time in that row "
                        "and re-run"),   # issue 23 item 7: refused before it is expanded into 17281 windows
])
def test_non_finite_or_negative_label_times_name_file_and_line(column: str, value: str, message: str, bc: Path,
                                                               known: set[str], tmp_path: Path) -> None:
    index = {"start": 1, "end": 2}[column]
    bad = _damage(bc / "train_soundscapes_labels.csv", tmp_path / "labels.csv", 9,
                  lambda f: [*f[:index], value, *f[index + 1:]])
    with pytest.raises(DataError) as err:
        read_soundscape_labels(bad, known)
    assert str(err.value) == f"{bad} line 9: {message}"


def test_bad_name_in_label_file_names_file_and_line(bc: Path, known: set[str], tmp_path: Path) -> None:
    bad = _damage(bc / "train_soundscapes_labels.csv", tmp_path / "labels.csv", 4, lambda f: ["", *f[1:]])
    with pytest.raises(DataError, match=r"labels\.csv line 4: : soundscape name does not parse"):
        read_soundscape_labels(bad, known)


def test_csv_error_and_latin1_header_name_the_file(bc: Path, known: set[str], tmp_path: Path) -> None:
    bad = _damage(bc / "taxonomy.csv", tmp_path / "taxonomy.csv", 7, lambda f: [*f[:3], "x" * 200_000, *f[4:]])
    with pytest.raises(DataError, match=r"taxonomy\.csv line 7: not a valid CSV line \(field larger than field limit"):
        read_taxonomy(bad)
    sample = tmp_path / "sample_submission.csv"
    sample.write_bytes("row_id,Jacaré\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"sample_submission\.csv line 1: not UTF-8 text"):
        read_submission_columns(sample)


def test_snap_to_windows() -> None:
    assert snap_to_windows(5, 10) == [5.0]
    assert snap_to_windows(3, 8) == [5.0]       # 3 s of 5-10, 2 s of 0-5
    assert snap_to_windows(0, 10) == [0.0, 5.0]  # two whole windows
    assert snap_to_windows(2.5, 7.5) == [5.0]    # even split: the midpoint's (later) window
    assert snap_to_windows(1, 2) == [0.0]
    assert snap_to_windows(57, 62) == [55.0]
    assert snap_to_windows(58, 63) == [60.0]   # past a 60-s file: the warning shows it


def test_off_grid_label_is_snapped_with_one_warning_naming_file_and_line(bc: Path, known: set[str],
                                                                         tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    for name in ("taxonomy.csv", "train.csv", "sample_submission.csv"):
        shutil.copy(bc / name, data / name)
    src = bc / "train_soundscapes_labels.csv"
    lines = src.read_text().splitlines()
    # a file whose windows are listed twice: move one copy of its 00:00:10 window to 00:00:13-00:00:18
    line = next(i + 1 for i, text in enumerate(lines) if ",00:00:10,00:00:15," in text)
    filename, _, _, labels = lines[line - 1].split(",")
    bad = _damage(src, data / "train_soundscapes_labels.csv", line, lambda f: [f[0], "00:00:13", "00:00:18", f[3]])
    clean, _ = read_soundscape_labels(src, known)
    table, report = read_soundscape_labels(bad, known)
    stem = Path(filename).stem
    assert [(w.file, w.row, w.kind) for w in report.warnings] == [(str(bad), line, "label_off_grid")]
    assert report.warnings[0].message == (
        f"{bad} line {line}: segment 00:00:13-00:00:18 of {filename} is not a 5-s window of the grid; "
        f"snapped to 00:00:15-00:00:20 (row_id {stem}_20)")
    # the snapped row joins the 15-20 s window (a repeat of it, or a conflict if its labels differ), and the
    # other copy of the 10-15 s window keeps that window: the table has the same windows as the clean file
    assert table.num_rows == clean.num_rows == 739
    assert table.select(["filename", "start_s", "row_id"]).equals(clean.select(["filename", "start_s", "row_id"]))
    window_15 = next(r for r in clean.to_pylist() if r["filename"] == filename and r["start_s"] == 15)
    assert (len(report.conflicts) == 1) == (sorted(labels.split(";")) != window_15["labels"])
    # ingest carries it into ingest_problems, with the row
    problems = [p for p in read_competition_csvs(data)["problems"] if p["kind"] == "label_off_grid"]
    assert problems == [{"severity": "warning", "kind": "label_off_grid", "file": "train_soundscapes_labels.csv",
                         "row": line, "message": report.warnings[0].message}]


def test_bad_csv_through_the_ingest_cli_is_one_error_line(bc: Path, tmp_path: Path) -> None:
    import subprocess
    import sys

    data = tmp_path / "data"
    shutil.copytree(bc, data, ignore=shutil.ignore_patterns("train_audio"))
    bad = _damage(bc / "train.csv", data / "train.csv", 4, lambda f: f[:5])
    result = subprocess.run([sys.executable, "-m", "pipelines.ingest", "--data", str(data), "--store",
                             str(tmp_path / "store"), "--quiet"], cwd=Path(__file__).resolve().parents[2],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [f"error: {bad} line 4: 5 field(s), the header has 15"]
    assert not (tmp_path / "store").exists()

"""``pipelines.sql --out``: every shipped query written whole to CSV and to Parquet (issue 28 item 1: five of the
sixteen crashed on list columns and left a 0-byte CSV), atomically, into a folder that must exist."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from featurestore.query import query, read_sql
from featurestore.sqlfiles import list_sql_files
from pipelines import sql as sql_job
from pipelines._cli import run_main


def _run(capsys, *args: str) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exit_info:
        run_main(sql_job.main, list(args))
    return exit_info.value.code, capsys.readouterr().err


def test_every_shipped_query_writes_csv_and_parquet(synthetic_store: Path, tmp_path: Path, capsys) -> None:
    names = list_sql_files()
    assert len(names) == 16 and "leakage/duplicate_audio" in names
    nested_seen = 0
    for name in names:
        expected = query(synthetic_store, read_sql(name)[1], name)
        stem = name.replace("/", "_")
        for suffix in (".parquet", ".csv"):
            out = tmp_path / f"{stem}{suffix}"
            code, err = _run(capsys, "--store", str(synthetic_store), name, "--out", str(out))
            assert code == 0, (name, err)
            assert f"{expected.num_rows} row(s) written to {out}" in err
        assert pq.read_table(tmp_path / f"{stem}.parquet").equals(expected), name
        nested_seen += sum(bool(f.type.num_fields) for f in expected.schema)
        if expected.num_rows == 0:
            continue
        got = pacsv.read_csv(tmp_path / f"{stem}.csv", convert_options=pacsv.ConvertOptions(
            column_types={f.name: "string" for f in expected.schema}, strings_can_be_null=True))
        assert got.column_names == expected.column_names and got.num_rows == expected.num_rows, name
        for field in expected.schema:
            if field.type.num_fields:     # a list/struct column: JSON text that decodes to the same values
                cells = got.column(field.name).to_pylist()
                decoded = [None if c is None else json.loads(c) for c in cells]
                assert decoded == json.loads(json.dumps(expected.column(field.name).to_pylist(), default=str)), \
                    (name, field.name)
    assert nested_seen >= 5                 # the list columns CSV could not hold before
    assert not list(tmp_path.glob(".*.tmp"))


def test_out_into_a_missing_folder_or_a_failing_query_leaves_nothing(demo_store: Path, tmp_path: Path,
                                                                     capsys) -> None:
    missing = tmp_path / "no_such_dir" / "x.csv"
    code, err = _run(capsys, "--store", str(demo_store), "eda/class_counts", "--out", str(missing))
    assert code == 2 and err.strip() == f"error: --out {missing}: the folder {missing.parent} does not exist"
    assert not missing.parent.exists()
    kept = tmp_path / "kept.csv"
    kept.write_text("old\n")
    code, err = _run(capsys, "--store", str(demo_store), "-c", "SELECT no_such_column FROM taxonomy",
                     "--out", str(kept))
    assert code == 2 and err.startswith("error: ") and kept.read_text() == "old\n"
    code, err = _run(capsys, "--store", str(demo_store), "eda/class_counts", "--out", str(tmp_path / "x.txt"))
    assert code == 2 and "--out must end in .csv or .parquet" in err


def test_a_reader_that_stops_early_gets_no_traceback(demo_store: Path) -> None:
    """``pipelines.sql ... | head -1``: the job's writes hit a closed pipe; it ends quietly with the status of a
    writer killed by SIGPIPE (141), not a BrokenPipeError traceback."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "pipelines.sql", "--store", str(demo_store), "-c",
                             "SELECT * FROM windows", "--max-rows", "100000"], cwd=Path(__file__).resolve().parents[2],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout.readline().split()[0] == b"window_id"
    proc.stdout.close()                               # what head does after its line
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141 and "Traceback" not in err and "BrokenPipe" not in err, err

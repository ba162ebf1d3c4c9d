"""A store is a folder: copied, moved or read-only, it reads its own parts; DuckDB 1.x reads it too."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest

from featurestore.store import FeatureStore, write_parquet_atomic
from pipelines import sql as sql_job
from pipelines._cli import run_main

REPO = Path(__file__).resolve().parents[2]
COUNT_SQL = "SELECT count(*) AS n FROM audio_inventory;\n"


def _two_part_store(demo_store: Path, dest: Path) -> int:
    """A copy of the demo store with a second audio_inventory part (5 new keys); returns its row count."""
    shutil.copytree(demo_store, dest)
    with FeatureStore.open(dest) as store:
        extra = store.sql("SELECT * FROM audio_inventory ORDER BY path LIMIT 5")
        extra = extra.set_column(extra.column_names.index("path"), "path",
                                 pa.array([f"extra/{i}.ogg" for i in range(5)]))
        store.append_part("audio_inventory", extra, prefix="extra")
        store.refresh_part_views()
        assert len(store.part_files("audio_inventory")) == 2
        return store.count("audio_inventory")


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


def test_copied_store_reads_its_own_parts(demo_store: Path, tmp_path: Path) -> None:
    a = tmp_path / "a"
    n = _two_part_store(demo_store, a)
    b = tmp_path / "b"
    shutil.copytree(a, b)
    original = next(p for p in (a / "parts" / "audio_inventory").iterdir() if not p.name.startswith("extra"))
    original.unlink()
    with FeatureStore.open(b, read_only=True) as store:
        assert store.count("audio_inventory") == n  # not the original's 5 rows
    with FeatureStore.open(a, read_only=True) as store:
        assert store.count("audio_inventory") == 5
    with FeatureStore.open(b) as store:  # read-write too
        assert store.count("audio_inventory") == n


def test_moved_store_reads_read_only_from_any_working_directory(demo_store: Path, tmp_path: Path) -> None:
    a = tmp_path / "a"
    n = _two_part_store(demo_store, a)
    decoy = tmp_path / "decoy"  # another store's folder as cwd: its parts/ must not be read
    shutil.copytree(demo_store, decoy)
    moved = tmp_path / "elsewhere" / "moved"
    moved.parent.mkdir()
    shutil.move(a, moved)
    with FeatureStore.open(moved, read_only=True) as store:
        assert store.count("audio_inventory") == n
    query = tmp_path / "count.sql"
    query.write_text(COUNT_SQL)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "pipelines.sql", "--store", str(moved), str(query)],
                          cwd=decoy, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[2].strip() == str(n)


def test_read_only_copy_is_read_and_left_untouched(demo_store: Path, tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    n = _two_part_store(demo_store, ro)
    (ro / "writer.lock").unlink()
    before = _tree(ro)
    paths = [ro, *ro.rglob("*")]
    for p in paths:
        p.chmod(p.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    try:
        with FeatureStore.open(ro, read_only=True) as store:
            assert store.count("audio_inventory") == n
            assert store.count("windows") > 0
        assert _tree(ro) == before  # no lock, no WAL, nothing rewritten
    finally:
        for p in paths:
            p.chmod(p.stat().st_mode | stat.S_IWUSR)


def test_part_view_missing_after_a_killed_first_run_is_seen_read_only(tmp_path: Path) -> None:
    root = tmp_path / "s"
    with FeatureStore.open(root) as store:
        store.register_part_table("frames", ["k"])
        assert not store.has_table("frames")
    # a worker wrote a part, then the job died before any read-write open refreshed the views
    write_parquet_atomic(pa.table({"k": ["a", "b"], "written_at": pa.array([1, 2], pa.int64())}),
                         root / "parts" / "frames" / "part-1.parquet")
    catalog = root / "catalog.duckdb"
    before = catalog.stat().st_mtime_ns, catalog.stat().st_size
    with FeatureStore.open(root, read_only=True) as store:
        assert store.count("frames") == 2 and store.table_names() == ["frames"]
    assert (catalog.stat().st_mtime_ns, catalog.stat().st_size) == before
    with FeatureStore.open(root) as store:  # the next writer persists it ...
        assert store.count("frames") == 2
    after = catalog.stat().st_mtime_ns, catalog.stat().st_size
    with FeatureStore.open(root) as store:  # ... and an open with nothing to change writes nothing
        assert store.count("frames") == 2
    assert (catalog.stat().st_mtime_ns, catalog.stat().st_size) == after
    assert not Path(f"{catalog}.wal").exists()


def test_pipelines_sql_job_runs_files_and_names(demo_store: Path, tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        run_main(sql_job.main, ["--store", str(demo_store), "eda/class_counts"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0 and out.splitlines()[0].split()[:2] == ["class_name", "collection"]
    bad = tmp_path / "bad.sql"
    bad.write_text("SELECT no_such_column FROM taxonomy;\n")
    for target in (str(bad), "eda/no_such_file"):
        with pytest.raises(SystemExit) as exit_info:
            run_main(sql_job.main, ["--store", str(demo_store), target])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and err.startswith("error: ") and "Traceback" not in err
        assert len(err.strip().splitlines()) == 1


def _duckdb_cli() -> str | None:
    """The DuckDB command-line shell (pip install duckdb-cli), if it is on PATH."""
    exe = shutil.which("duckdb")
    if exe is None:
        return None
    try:
        version = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=30).stdout
    except OSError:
        return None
    return exe if version.startswith("v") else None


def _cli(exe: str, args: list[str], cwd: Path, stdin: str) -> str:
    done = subprocess.run([exe, "-csv", "-noheader", "-readonly", *args], input=stdin, cwd=cwd,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "Error" not in done.stderr, done.stderr
    return done.stdout


@pytest.mark.skipif(_duckdb_cli() is None, reason="the DuckDB CLI is not installed (pip install duckdb-cli)")
def test_duckdb_1x_cli_reads_the_store_and_its_parts(demo_store: Path, tmp_path: Path) -> None:
    exe = _duckdb_cli()
    store = tmp_path / "moved"
    n = _two_part_store(demo_store, store)
    with FeatureStore.open(store, read_only=True) as fs:
        taxa = fs.count("taxonomy")
    class_counts = (REPO / "sql" / "eda" / "class_counts.sql").read_text()
    # from inside the store: relative part paths resolve; the catalog's storage format is 1.x-readable
    assert _cli(exe, ["catalog.duckdb"], store, COUNT_SQL).strip() == str(n)
    assert sum(int(line.split(",")[4]) > 0 for line in _cli(exe, ["catalog.duckdb"], store, class_counts).split())
    # from anywhere, with the store folder as DuckDB's file_search_path
    args = ["-cmd", f"SET file_search_path='{store}'", str(store / "catalog.duckdb")]
    assert _cli(exe, args, tmp_path, COUNT_SQL + "SELECT count(*) FROM taxonomy;").split() == [str(n), str(taxa)]


def test_catalog_in_duckdb_2_format_is_converted_by_the_next_writer(demo_store: Path, tmp_path: Path,
                                                                     capfd) -> None:
    store = tmp_path / "old"
    shutil.copytree(demo_store, store)
    catalog = store / "catalog.duckdb"
    with duckdb.connect() as con:  # what the previous version wrote: DuckDB 2's newest format
        con.execute(f"ATTACH '{catalog}' AS cur (READ_ONLY)")
        con.execute(f"ATTACH '{tmp_path / 'v2.duckdb'}' AS new (STORAGE_VERSION 'v2.0.0')")
        con.execute("COPY FROM DATABASE cur TO new")
    os.replace(tmp_path / "v2.duckdb", catalog)

    def storage() -> str:
        with duckdb.connect(str(catalog), read_only=True) as con:
            tags = con.execute("SELECT tags FROM duckdb_databases() WHERE database_name = current_database()")
            return tags.fetchone()[0]["storage_version"]

    assert storage().startswith("v2")
    with FeatureStore.open(store, read_only=True) as fs:  # readers never convert
        n = fs.count("windows")
    assert storage().startswith("v2")
    with FeatureStore.open(store) as fs:
        assert fs.count("windows") == n and fs.count("audio_inventory") > 0
    assert storage().startswith("v1") and "converted" in capfd.readouterr().err
    exe = _duckdb_cli()
    if exe is not None:
        assert _cli(exe, ["catalog.duckdb"], store, "SELECT count(*) FROM windows;").strip() == str(n)

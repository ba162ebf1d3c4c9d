"""A damaged part or catalog is named in one line with the command that mends it; embed moves damaged parts of
its tables to quarantine/ and re-creates their windows bit for bit; ``pipelines.repair`` rebuilds a catalog
DuckDB cannot read, keeping the damaged file, and the commands it lists bring back identical reads.

Every fault is real: a part truncated to half its bytes, 64 bytes overwritten inside a catalog block that
DuckDB's block checksum then refuses.
"""

from __future__ import annotations

import importlib
import os
import shlex
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from embed.features import load_window_features
from embed.job import run_embed
from featurestore.repair import repair_store
from featurestore.store import (
    CATALOG_FILE,
    VOLATILE_COLUMNS,
    FeatureStore,
    StoreError,
    parquet_damage,
    quarantine_parts,
)
from pipelines import pseudo as pseudo_job
from pipelines import repair as repair_job
from pipelines import train as train_job
from pipelines._cli import run_main

FILE_HEADERS = 3 * 4096          # DuckDB's file header + two database headers, before block 0


def _error_line(capsys, main, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as exit_:
        run_main(main, argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and len(err) == 1, err
    return err[0]


def _frames(store: Path, table: str = "birdnet_frames") -> pa.Table:
    """Every stored row of a part table but its write time, sorted by key: what a re-embed must give back."""
    rows = pa.concat_tables([pq.read_table(p) for p in sorted((store / "parts" / table).glob("*.parquet"))])
    keys = [k for k in ("window_id", "frame_index") if k in rows.column_names]
    return rows.drop(["written_at"]).sort_by([(k, "ascending") for k in keys])


# ---------------------------------------------------------------------------- damaged parts
def test_parquet_damage_tells_whole_from_truncated_and_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "p.parquet"
    pq.write_table(pa.table({"x": list(range(5000))}), path)
    assert parquet_damage(path) is None
    data = path.read_bytes()
    (tmp_path / "half.parquet").write_bytes(data[: len(data) // 2])
    (tmp_path / "head.parquet").write_bytes(b"XXXX" + data[4:])
    (tmp_path / "tiny.parquet").write_bytes(data[:5])
    assert "no Parquet footer: truncated" in parquet_damage(tmp_path / "half.parquet")
    assert "no Parquet header" in parquet_damage(tmp_path / "head.parquet")
    assert "too small" in parquet_damage(tmp_path / "tiny.parquet")


def test_quarantine_keeps_the_relative_path_and_overwrites_nothing(tmp_path: Path) -> None:
    root = tmp_path / "s"
    with FeatureStore.open(root) as store:
        store.register_part_table("things", ["k"])
        part = store.append_part("things", pa.table({"k": ["a"], "written_at": pa.array([0], pa.timestamp("us"))}))
    damaged = part.read_bytes()[:20]
    moved = []
    for _ in range(2):                                     # the same part name damaged twice
        part.write_bytes(damaged)
        moved += [target for _, target in quarantine_parts(root)]
    rel = part.relative_to(root)
    assert moved == [root / "quarantine" / rel, root / "quarantine" / rel.with_name(rel.name + ".1")]
    assert all(p.read_bytes() == damaged for p in moved) and not part.exists()


def test_truncated_part_is_named_by_readers_then_embed_moves_it_aside_and_reembeds_it_bit_identical(
        demo_trained, store_copy, capsys) -> None:
    store = store_copy(demo_trained.store, "truncated_part")
    before = _frames(store)
    with FeatureStore.open(store, read_only=True) as s:
        ids, X, _, _ = load_window_features(s, "birdnet")
    parts = sorted((store / "parts" / "birdnet_frames").glob("*.parquet"), key=lambda p: p.stat().st_size)
    part = parts[0]                                        # the smallest: fewest windows to re-embed
    os.truncate(part, part.stat().st_size // 2)
    truncated = part.read_bytes()
    rel = part.relative_to(store)

    expected = (f"error: part {rel} of table birdnet_frames in store {store} is damaged "
                f"({len(truncated):,} bytes, no Parquet footer: truncated or overwritten); run python -m "
                f"pipelines.embed --store {store} --extractor birdnet: it moves the part to quarantine/ in the store "
                "and re-creates its rows")
    assert _error_line(capsys, train_job.main, ["--store", str(store), "--head-kind", "prior"]) == expected
    assert _error_line(capsys, pseudo_job.main, ["--store", str(store), "--teacher",
                                                 demo_trained.head("linear")]) == expected
    with FeatureStore.open(store, read_only=True) as s, pytest.raises(StoreError, match="is damaged"):
        s.sql("SELECT count(*) FROM birdnet_frames")
    assert part.read_bytes() == truncated and not (store / "quarantine").exists()   # readers move nothing

    summary = run_embed(store, ("birdnet",), workers=1)
    err = capsys.readouterr().err
    assert f"warning: moved damaged part {rel} ({len(truncated):,} bytes, no Parquet footer" in err
    assert (store / "quarantine" / rel).read_bytes() == truncated                  # kept, never deleted
    assert summary.windows_now["birdnet"] > 0
    assert summary.windows_stored["birdnet"] == summary.windows_in_scope["birdnet"]
    assert _frames(store).equals(before)                                          # every window back, bit for bit
    with FeatureStore.open(store, read_only=True) as s:
        ids2, X2, _, _ = load_window_features(s, "birdnet")
    assert ids2 == ids and (X2 == X).all()


# ---------------------------------------------------------------------------- a damaged catalog
def _damage_block(catalog: Path, block_id: int) -> None:
    with duckdb.connect(str(catalog), read_only=True) as con:
        block_size = con.execute("SELECT block_size FROM pragma_database_size()").fetchone()[0]
    with open(catalog, "r+b") as fh:
        fh.seek(FILE_HEADERS + block_id * block_size + 16)
        fh.write(b"\xab" * 64)


def _table_block(catalog: Path, table: str) -> int:
    with duckdb.connect(str(catalog), read_only=True) as con:
        physical = con.execute("SELECT table_name FROM duckdb_tables() WHERE table_name LIKE ? || '\\_\\_%' "
                               "ESCAPE '\\'", [table]).fetchone()[0]
        return con.execute(f"SELECT min(block_id) FROM pragma_storage_info('{physical}') "
                           "WHERE block_id >= 0").fetchone()[0]


def _metadata_block(catalog: Path) -> int:
    with duckdb.connect(str(catalog), read_only=True) as con:
        return con.execute("SELECT min(block_id) FROM pragma_metadata_info() WHERE free_blocks < total_blocks"
                           ).fetchone()[0]


def _reads(store: Path) -> dict:
    """What downstream jobs read: labels, windows, folds, table versions and the pooled features."""
    out = {}
    with FeatureStore.open(store, read_only=True) as s:
        for name in ("taxonomy", "recordings", "soundscapes", "windows", "soundscape_labels", "window_labels",
                     "folds", "shadow_folds", "replay_windows", "birdnet_class_map", "audio_inventory"):
            table = s.read_table(name)
            table = table.drop([c for c in table.column_names if c in VOLATILE_COLUMNS])
            flat = [f.name for f in table.schema if not pa.types.is_nested(f.type)]
            out[name] = table.sort_by([(c, "ascending") for c in flat])
        out["versions"] = s.rows("SELECT table_name, version, content_hash, n_rows FROM _versions "
                                 "WHERE is_current ORDER BY 1")
        ids, X, names, versions = load_window_features(s, "birdnet,classical")
        out["features"] = (ids, X.tobytes(), names, versions)
    return out


def _finish(output: str, demo_data: Path) -> list[str]:
    """Run every command under "to finish" as written (DATA_DIR: the demo data), in-process."""
    lines = output.splitlines()
    commands = [ln.strip() for ln in lines[lines.index("  to finish, run in this order:") + 1:]]
    for command in commands:
        words = shlex.split(command.replace("DATA_DIR", str(demo_data)))
        assert words[:2] == ["python", "-m"], command
        with pytest.raises(SystemExit) as exit_:
            run_main(importlib.import_module(words[2]).main, words[3:])
        assert exit_.value.code == 0, command
    return commands


def test_damaged_catalog_block_is_named_and_repair_plus_its_commands_give_identical_reads(
        demo_embedded_store, demo_data, store_copy, capsys) -> None:
    store = store_copy(demo_embedded_store, "damaged_block")
    catalog = store / CATALOG_FILE
    want = _reads(demo_embedded_store)
    _damage_block(catalog, _table_block(catalog, "windows"))
    damaged = catalog.read_bytes()

    line = _error_line(capsys, train_job.main, ["--store", str(store), "--head-kind", "prior"])
    assert line.startswith(f"error: catalog {catalog} is damaged (DuckDB: Corrupt database file: ")
    assert line.endswith(f"); run python -m pipelines.repair --store {store} to rebuild it from the parts and what "
                         "is still readable (the damaged file is kept beside it)")

    with pytest.raises(SystemExit) as exit_:
        run_main(repair_job.main, ["--store", str(store)])
    out = capsys.readouterr().out
    assert exit_.value.code == 0
    kept = sorted(store.glob(f"{CATALOG_FILE}.corrupt-*"))
    assert [k.read_bytes() == damaged for k in kept] == [True]                     # kept as it was
    assert f"the damaged file kept as {kept[0].name}" in out
    assert f"table windows: re-made by python -m pipelines.ingest --data {demo_data} --store {store}" in out
    assert "folds__" in out                               # the fold tables were readable: copied, not re-made

    with FeatureStore.open(store, read_only=True) as s:   # the rebuilt catalog opens; windows awaits ingest
        assert s.has_table("folds") and not s.has_table("windows")
    commands = _finish(out, demo_data)
    assert commands == [f"python -m pipelines.ingest --data {demo_data} --store {store}"]
    got = _reads(store)
    assert {k: got[k] == v for k, v in want.items()} == {k: True for k in want}


def test_unreadable_catalog_metadata_is_rebuilt_from_the_parts_and_the_listed_commands(
        demo_embedded_store, demo_data, store_copy, capsys) -> None:
    store = store_copy(demo_embedded_store, "damaged_metadata")
    catalog = store / CATALOG_FILE
    want = _reads(demo_embedded_store)
    _damage_block(catalog, _metadata_block(catalog))
    with pytest.raises(StoreError, match=f"catalog {catalog} is damaged .*; run python -m pipelines.repair "):
        FeatureStore.open(store, read_only=True)

    report = repair_store(store)
    out = report.render()
    assert report.copied == [] and report.kept_as is not None and report.kept_as.exists()
    assert "birdnet_frames" in report.part_views          # keyed from parts/birdnet_frames.json
    with FeatureStore.open(store, read_only=True) as s:   # the part tables read at once
        assert s.count("classical_windows") == 526
    assert _finish(out, demo_data) == [
        f"python -m pipelines.ingest --data DATA_DIR --store {store}",
        f"python -m pipelines.folds --store {store}",
        f"python -m pipelines.embed --store {store} --extractor birdnet,classical"]
    capsys.readouterr()
    got = _reads(store)
    assert {k: got[k] == v for k, v in want.items()} == {k: True for k in want}


def test_repair_of_a_healthy_store_changes_nothing(demo_embedded_store, store_copy) -> None:
    store = store_copy(demo_embedded_store, "healthy")
    before = (store / CATALOG_FILE).read_bytes()
    report = repair_store(store)
    assert report.catalog_problem is None and not report.quarantined and not report.lost
    assert (store / CATALOG_FILE).read_bytes() == before and not list(store.glob("*.corrupt-*"))


def test_repair_refuses_a_missing_store_and_creates_nothing(tmp_path: Path, capsys) -> None:
    line = _error_line(capsys, repair_job.main, ["--store", str(tmp_path / "no" / "store")])
    assert line.startswith(f"error: no feature store at {tmp_path / 'no' / 'store'}")
    assert not (tmp_path / "no").exists()

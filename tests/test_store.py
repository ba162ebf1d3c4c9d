"""Feature store: content-versioned snapshot tables and deduplicating Parquet part tables."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from featurestore.store import FeatureStore, StoreError, content_hash


def _table(values: list[int], stamp: str = "2026-01-01") -> pa.Table:
    return pa.table({"k": [f"id{v}" for v in values], "v": values,
                     "ingested_at": pa.array([stamp] * len(values)).cast(pa.timestamp("us"))})


def test_snapshot_versions_follow_content_not_time(tmp_path: Path) -> None:
    with FeatureStore.open(tmp_path / "s") as store:
        v1 = store.write_table("things", _table([1, 2, 3]))
        again = store.write_table("things", _table([1, 2, 3], stamp="2026-06-01"))
        assert again.version == v1.version and len(store.versions("things")) == 1
        v2 = store.write_table("things", _table([1, 2, 4]))
        assert v2.version != v1.version and [v.version for v in store.versions("things")] == [v1.version, v2.version]
        assert store.read_table("things").column("v").to_pylist() == [1, 2, 4]
        assert store.read_table("things", v1.version).column("v").to_pylist() == [1, 2, 3]
        store.set_current("things", v1.version)
        assert store.sql("SELECT sum(v) AS s FROM things").column("s").to_pylist() == [6]
    # the catalog is a plain DuckDB file: the view works from a fresh DuckDB connection
    con = duckdb.connect(str(tmp_path / "s" / "catalog.duckdb"), read_only=True)
    assert con.execute("SELECT count(*) FROM things").fetchall() == [(3,)]
    con.close()


def test_content_hash_ignores_volatile_columns_only() -> None:
    assert content_hash(_table([1])) == content_hash(_table([1], stamp="2030-01-01"))
    assert content_hash(_table([1])) != content_hash(_table([2]))


def test_part_table_keeps_latest_row_per_key(tmp_path: Path) -> None:
    with FeatureStore.open(tmp_path / "s") as store:
        store.register_part_table("items", ["k"], order_column="ingested_at")
        store.append_part("items", _table([1, 2], stamp="2026-01-01"))
        newer = _table([2, 3], stamp="2026-02-01").set_column(1, "v", pa.array([20, 30]))
        store.append_part("items", newer)
        store.refresh_part_views()
        rows = dict(store.rows("SELECT k, v FROM items"))
        assert rows == {"id1": 1, "id2": 20, "id3": 30}
        assert store.compact_parts("items") == 3
        files = store.part_files("items")
        assert len(files) == 1 and pq.read_table(files[0]).num_rows == 3
        assert pq.read_metadata(files[0]).row_group(0).column(0).compression == "ZSTD"


def test_errors_name_the_table_and_path(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no feature store at"):
        FeatureStore.open(tmp_path / "missing", create=False)
    with FeatureStore.open(tmp_path / "s") as store:
        with pytest.raises(StoreError, match="'nothing' is not in the store"):
            store.read_table("nothing")
        with pytest.raises(StoreError, match="invalid table name"):
            store.write_table("Bad Name", _table([1]))
        store.write_table("things", _table([1]))
        with pytest.raises(StoreError, match="has no version 'abc'"):
            store.read_table("things", "abc")

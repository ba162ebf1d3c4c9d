"""Part views and compaction on crafted parts, against a plain pyarrow reference of "latest row per key".

The reference (:func:`reference_rows`) reads every part with pyarrow and keeps, per key, the row with the
largest (order column, NULL lowest; part file name; row number in the file) - the documented tie rule of
:meth:`FeatureStore.part_view_sql`. The old view body (a ``row_number()`` window over whole rows, ties
arbitrary) must agree on every key without a tie.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from processes import survivors

from featurestore.compact import JOURNAL, compact_parts, compact_store, compact_table
from featurestore.store import FeatureStore, StoreError, write_parquet_atomic

REPO = Path(__file__).resolve().parents[2]
KEYS = ["k", "j"]
T0 = datetime(2026, 1, 1)
DIM = 4


def _part(rows: list[tuple], note: bool = True) -> pa.Table:
    """rows: (k, j, minutes after T0 or None, value); an float16 embedding derived from the value."""
    n = len(rows)
    cols = {
        "k": pa.array([r[0] for r in rows], pa.string()),
        "j": pa.array([r[1] for r in rows], pa.int32()),
        "value": pa.array([float(r[3]) for r in rows], pa.float64()),
        "embedding": pa.FixedSizeListArray.from_arrays(
            pa.array(np.repeat([float(r[3]) for r in rows], DIM).astype(np.float16)), DIM),
        "written_at": pa.array([None if r[2] is None else T0 + timedelta(minutes=r[2]) for r in rows],
                               pa.timestamp("us")),
    }
    if note:   # the newer writer's column; older parts lack it (union_by_name reads NULL)
        cols["note"] = pa.array([f"n{r[3]}" for r in rows])
    assert all(len(c) == n for c in cols.values())
    return pa.table(cols)


def _write(store: FeatureStore, name: str, table: pa.Table) -> Path:
    """A part with a chosen name, so the crafted ties have a known file order."""
    path = store.parts_dir("items") / f"{name}.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_parquet_atomic(table, path)
    return path


def reference_rows(directory: Path) -> dict[tuple, dict]:
    """Latest row per key by (written_at with NULL lowest, file name, row number), read with pyarrow only."""
    best: dict[tuple, tuple] = {}
    for path in sorted(directory.glob("*.parquet"), key=lambda p: p.name):
        for i, row in enumerate(pq.read_table(path).to_pylist()):
            rank = (row["written_at"] is not None, row["written_at"] or datetime.min, path.name, i)
            key = (row["k"], row["j"])
            if key not in best or rank > best[key][0]:
                best[key] = (rank, row)
    return {key: _plain(row) for key, (_, row) in best.items()}


def tied_keys(directory: Path) -> set[tuple]:
    """Keys whose latest order value is shared by two or more rows (the old view picked any of them)."""
    stamps: dict[tuple, list] = {}
    for path in directory.glob("*.parquet"):
        for row in pq.read_table(path).to_pylist():
            stamps.setdefault((row["k"], row["j"]), []).append(row["written_at"])
    tied = set()
    for key, values in stamps.items():
        top = max(values, key=lambda v: (v is not None, v or datetime.min))
        if sum(v == top for v in values) > 1:
            tied.add(key)
    return tied


def _plain(row: dict) -> dict:
    row = dict(row)
    row.setdefault("note", None)
    row["embedding"] = [float(x) for x in row["embedding"]]
    return row


def view_rows(store: FeatureStore, query: str = "SELECT * FROM items") -> dict[tuple, dict]:
    rows = store.sql(query).to_pylist()
    out = {(r["k"], r["j"]): _plain(r) for r in rows}
    assert len(out) == len(rows), "a key shows twice"
    return out


def old_view_sql(store: FeatureStore) -> str:
    """The view body before issue 24: a row_number() window over whole rows."""
    glob = store.part_glob("items")
    return ("SELECT * EXCLUDE (_rank) FROM (SELECT *, row_number() OVER (PARTITION BY \"k\", \"j\" ORDER BY "
            f"\"written_at\" DESC) AS _rank FROM read_parquet('{glob}', union_by_name = true)) WHERE _rank = 1")


def crafted(store: FeatureStore) -> None:
    """Re-written keys, exact ties across files and within one file, a NULL order value, a missing column."""
    store.register_part_table("items", KEYS)
    _write(store, "part-a", _part([("a", 1, 0, 1), ("b", 1, 0, 2), ("c", 1, 0, 3), ("d", 1, 0, 4),
                                   ("e", 1, 0, 5), ("f", 1, 0, 6), ("f", 1, 0, 7),   # tie within the file
                                   ("g", 1, 5, 8), ("a", 2, 0, 9)], note=False))       # no `note` column
    _write(store, "part-b", _part([("b", 1, 10, 20),             # re-written, newer
                                   ("c", 1, 0, 30),              # exact tie with part-a: part-b wins
                                   ("d", 1, -5, 40),             # older than part-a's: part-a wins
                                   ("g", 1, None, 80),           # NULL order loses to any value
                                   ("h", 1, None, 90), ("h", 1, None, 91)]))   # only NULLs: last row wins
    _write(store, "part-c", _part([("c", 1, 0, 300), ("c", 1, 0, 301),   # three-way tie: last file, last row
                                   ("e", 1, 20, 50), ("a", 2, 1, 99), ("i", 7, 3, 100)]))
    store.refresh_part_views()


def random_parts(store: FeatureStore, seed: int = 0, n_parts: int = 12) -> None:
    """Many parts, keys re-written at random, few distinct times (many ties), some parts without `note`."""
    rng = np.random.default_rng(seed)
    store.register_part_table("items", KEYS)
    for p in range(n_parts):
        n = int(rng.integers(5, 60))
        rows = [(f"k{int(rng.integers(0, 40))}", int(rng.integers(0, 2)),
                 None if rng.random() < 0.05 else int(rng.integers(0, 6)), p * 1000 + i) for i in range(n)]
        _write(store, f"part-{p:03d}-{rng.integers(1 << 30):x}", _part(rows, note=bool(p % 3)))
    store.refresh_part_views()


def test_view_keeps_the_latest_row_per_key_with_the_documented_tie_rule(tmp_path: Path) -> None:
    with FeatureStore.open(tmp_path / "s") as store:
        crafted(store)
        got, want = view_rows(store), reference_rows(store.parts_dir("items"))
        assert got == want
        # hand-worked: the rows every rule above picks
        assert {k: r["value"] for k, r in got.items()} == {
            ("a", 1): 1, ("a", 2): 99, ("b", 1): 20, ("c", 1): 301, ("d", 1): 4, ("e", 1): 50, ("f", 1): 7,
            ("g", 1): 8, ("h", 1): 91, ("i", 7): 100}
        assert got[("a", 1)]["note"] is None and got[("b", 1)]["note"] == "n20"
        # the old window body agrees wherever there is no tie
        old = view_rows(store, old_view_sql(store))
        tied = tied_keys(store.parts_dir("items"))
        assert tied == {("c", 1), ("f", 1), ("h", 1)}
        assert {k: v for k, v in old.items() if k not in tied} == {k: v for k, v in got.items() if k not in tied}
        assert store.sql("SELECT * FROM items LIMIT 0").column_names == \
            store.sql(old_view_sql(store) + " LIMIT 0").column_names
    with FeatureStore.open(tmp_path / "s", read_only=True) as store:   # the persisted view, read-only
        assert view_rows(store) == want


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_view_matches_the_reference_on_random_parts(tmp_path: Path, seed: int) -> None:
    with FeatureStore.open(tmp_path / "s") as store:
        random_parts(store, seed)
        got, want = view_rows(store), reference_rows(store.parts_dir("items"))
        assert got == want
        tied = tied_keys(store.parts_dir("items"))
        old = view_rows(store, old_view_sql(store))
        assert len(tied) < len(want)
        assert {k: v for k, v in old.items() if k not in tied} == {k: v for k, v in got.items() if k not in tied}


def test_compact_keeps_the_view_rows_in_fewer_parts(tmp_path: Path) -> None:
    with FeatureStore.open(tmp_path / "s") as store:
        random_parts(store, seed=3, n_parts=15)
        before = view_rows(store)
        n_before = len(store.part_files("items"))
        lines: list[str] = []
        result = compact_table(store, "items", say=lines.append)
        assert view_rows(store) == before
        files = store.part_files("items")
        # one new part: parts without `note` merge with parts that have it (NULL there, as the view reads it)
        assert result.parts_after == len(files) == 1 < n_before and result.rows == len(before)
        assert sum(pq.read_metadata(f).num_rows for f in files) == len(before)   # no duplicate left anywhere
        assert all(f.name.startswith("compact-") for f in files)
        assert pq.read_schema(files[0]).field("embedding").type == pa.list_(pa.float16(), DIM)  # float16 kept
        assert lines and "compacting" in lines[0]
        again = compact_table(store, "items")          # nothing left to do: nothing rewritten
        assert again.rewritten_parts == 0 and store.part_files("items") == files


def test_compact_with_a_small_target_and_a_keep_filter(tmp_path: Path) -> None:
    with FeatureStore.open(tmp_path / "s") as store:
        crafted(store)
        random_parts(store, seed=4, n_parts=10)
        before = view_rows(store)
        n_before = len(store.part_files("items"))
        small = compact_table(store, "items", target_bytes=6000)     # small new parts: several of them
        assert 1 < small.written_parts < n_before and view_rows(store) == before
        keep = {k: v for k, v in before.items() if k[1] == 1}
        n = compact_parts(store, "items", keep=lambda t: t.filter(pa.compute.equal(t.column("j"), 1)))
        assert n == len(keep) and view_rows(store) == keep
        assert sum(pq.read_metadata(f).num_rows for f in store.part_files("items")) == len(keep)
        # a later part re-writing a key wins over the compacted row, before and after compacting it in
        _write(store, "part-zzz", _part([("a", 1, 60, 1234)]))
        store.refresh_part_views()
        keep[("a", 1)] = _plain(_part([("a", 1, 60, 1234)]).to_pylist()[0])
        assert view_rows(store) == keep
        compact_table(store, "items")
        assert view_rows(store) == keep and len(store.part_files("items")) == 1


def test_pipelines_compact_compacts_every_part_table(tmp_path: Path) -> None:
    with FeatureStore.open(tmp_path / "s") as store:
        random_parts(store, seed=5)
        before = view_rows(store)
    out = subprocess.run([sys.executable, "-m", "pipelines.compact", "--store", str(tmp_path / "s")],
                         capture_output=True, text=True, cwd=REPO, check=True).stdout
    assert "items: 12 -> " in out
    with FeatureStore.open(tmp_path / "s", read_only=True) as store:
        assert view_rows(store) == before
    bad = subprocess.run([sys.executable, "-m", "pipelines.compact", "--store", str(tmp_path / "s"),
                          "--table", "nothing"], capture_output=True, text=True, cwd=REPO)
    assert bad.returncode == 2 and "'nothing' is not a part table" in bad.stderr
    with pytest.raises(StoreError, match="not a part table"):
        compact_store(tmp_path / "s", "taxonomy")


KILLED = """
import os, signal, sys
import featurestore.compact as compact
from featurestore.store import FeatureStore
point = sys.argv[2]
if point == "before-journal":     # every new part written, no old part removed
    compact.write_json_atomic = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
else:                              # the journal written, the first old part removed
    def remove_one_then_die(directory, names):
        (directory / sorted(names)[0]).unlink()
        os.kill(os.getpid(), signal.SIGKILL)
    compact._remove_in_order = remove_one_then_die
with FeatureStore.open(sys.argv[1]) as store:
    compact.compact_table(store, "items", target_bytes=4000)
"""


@pytest.mark.parametrize("point", ["before-journal", "mid-removal"])
def test_compact_killed_then_rerun_loses_and_doubles_nothing(tmp_path: Path, point: str) -> None:
    store_dir = tmp_path / "s"
    with FeatureStore.open(store_dir) as store:
        crafted(store)
        random_parts(store, seed=6, n_parts=10)
        before = view_rows(store)
        old = {p.name for p in store.part_files("items")}
    proc = subprocess.Popen([sys.executable, "-c", KILLED, str(store_dir), point], cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.wait(timeout=120) == -signal.SIGKILL and survivors([proc.pid]) == []
    names = {p.name for p in (store_dir / "parts" / "items").glob("*.parquet")}
    assert any(n.startswith("compact-") for n in names)
    assert (old <= names) if point == "before-journal" else (len(old - names) == 1)
    assert (store_dir / "parts" / "items" / JOURNAL).exists() == (point == "mid-removal")
    with FeatureStore.open(store_dir, read_only=True) as store:   # in between: every row once
        assert view_rows(store) == before
    with FeatureStore.open(store_dir) as store:                   # the re-run finishes the job
        compact_table(store, "items")
        assert view_rows(store) == before
        files = store.part_files("items")
        assert sum(pq.read_metadata(f).num_rows for f in files) == len(before)
        assert not (old & {f.name for f in files}) and len(files) < len(old)
    assert not list((store_dir / "parts" / "items").glob(".*"))   # no tmp file or journal left

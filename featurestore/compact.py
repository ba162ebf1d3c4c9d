"""Compaction of part tables: many small Parquet parts rewritten as few large ones, the view's rows unchanged.

The embed job writes one part per task (~120 windows: 8,334 parts for 1M windows), and every read of a
part view opens every part twice (the key scan and the payload scan of
:meth:`~featurestore.store.FeatureStore.part_view_sql`). :func:`compact_table` rewrites a table's parts
as parts of about ``target_bytes`` holding exactly the rows its view shows (the latest row per key,
optionally filtered by ``keep``), under the store's writer lock:

1. list the table's parts (parts written meanwhile, e.g. by embed workers, are left alone) and compute
   with DuckDB which row of which part the view keeps per key (:meth:`FeatureStore.latest_rows_sql`,
   key columns only);
2. stream those rows part by part with pyarrow (Parquet types kept exactly: float16 stays float16) into
   new parts named ``compact-*.parquet``, each written to a hidden tmp file, fsynced and renamed
   into place. Parts with a different schema (a column added by a newer version) go to different new
   parts; a part already large and holding only kept rows is left as it is;
3. record the parts to remove in a journal (``parts/<table>/.compact-journal.json``), remove them in
   name order, then remove the journal.

What a reader sees: between 2 and 3 every kept row is there twice (old part and new part, identical
values), which the view hides. Removing the old parts in name order keeps every key's row the same at
every moment, ties included: the view breaks a tie on the order column by file name, and a tied row
that lost to the kept one lies in a part of lower name, removed before the kept row's own part. A
store whose catalog is released while the rows are copied (``release_catalog``) is re-taken before
the old parts are removed, so no reader is mid-scan when a part goes.

``kill -9`` at any point: before the journal, the old parts are all there and a re-run compacts again
(the new parts included: same rows, never doubled); after it, a re-run first finishes the removals the
journal lists. A tmp file a killed run left is removed by the next run. ``keep`` must be a row filter
(it is applied to batches of rows, never the whole table), e.g. ``lambda t: t.filter(mask_of(t))``.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from featurestore.errors import StoreError
from featurestore.files import fsync_dir
from featurestore.store import (
    PART_FILE_COLUMN,
    DiskFullGuard,
    FeatureStore,
    _check_name,
    dictionary_columns,
    sql_str,
    utc_now,
    write_json_atomic,
)

TARGET_BYTES = 256 * 2**20        # a new part holds about this many bytes of old parts
ROW_GROUP_BYTES = 16 * 2**20      # rows buffered before a row group is written: bounds memory, and DuckDB
                                  # scans one row group per thread (a 40 MB part in one row group read 1.9x
                                  # slower than 167 small parts), so a 256 MB part has ~16
PROGRESS_SECONDS = 30.0
JOURNAL = ".compact-journal.json"
PREFIX = "compact"


@dataclass
class CompactResult:
    """What one :func:`compact_table` did."""

    table: str
    parts_before: int = 0
    parts_after: int = 0
    rows: int = 0               # rows the view shows afterwards
    rewritten_parts: int = 0    # old parts replaced
    written_parts: int = 0      # new parts
    dropped_rows: int = 0       # rows the view showed that ``keep`` dropped
    superseded_rows: int = 0    # older rows of re-written keys, now gone
    seconds: float = 0.0

    def line(self) -> str:
        if not self.rewritten_parts:
            return f"{self.table}: {self.parts_before} part(s), {self.rows:,} rows; nothing to compact"
        return (f"{self.table}: {self.parts_before:,} -> {self.parts_after:,} part(s), {self.rows:,} rows kept "
                f"({self.rewritten_parts:,} parts rewritten as {self.written_parts:,}; {self.superseded_rows:,} "
                f"superseded and {self.dropped_rows:,} dropped rows removed) in {self.seconds:.1f} s")


class _Progress:
    """Prints a line at most every ``every`` seconds (and always when forced)."""

    def __init__(self, say: Callable[[str], None] | None, every: float = PROGRESS_SECONDS):
        self.say, self.every, self.last = say, every, time.monotonic()

    def __call__(self, text: str, force: bool = False) -> None:
        if self.say is not None and (force or time.monotonic() - self.last >= self.every):
            self.say(text)
            self.last = time.monotonic()


def finish_journal(directory: Path, say: Callable[[str], None] | None = None) -> int:
    """Finish the removals a killed compaction recorded in ``directory``'s journal; returns parts removed."""
    journal = directory / JOURNAL
    try:
        spec = json.loads(journal.read_text())
    except FileNotFoundError:
        return 0
    except (OSError, ValueError):  # a journal is written atomically: unreadable means not ours; keep every part
        raise StoreError(f"{journal} is unreadable; move it aside and re-run (no part was removed)") from None
    missing = [n for n in spec.get("wrote", []) if not (directory / n).exists()]
    if missing:
        raise StoreError(f"{journal} names new part(s) that are gone ({', '.join(missing[:3])}); the old parts "
                         f"are kept: move the journal aside and re-run")
    removed = _remove_in_order(directory, spec.get("remove", []))
    journal.unlink(missing_ok=True)
    _fsync_dir(directory)
    if say and removed:
        say(f"{directory.name}: finished an interrupted compaction ({removed} old part(s) removed)")
    return removed


def compact_table(store: FeatureStore, name: str, *, keep: Callable[[pa.Table], pa.Table] | None = None,
                  target_bytes: int = TARGET_BYTES, say: Callable[[str], None] | None = None,
                  progress_seconds: float = PROGRESS_SECONDS, release: bool = False) -> CompactResult:
    """Rewrite part table ``name`` as parts of about ``target_bytes`` holding exactly its view's rows.

    ``keep``: a row filter applied to the view's rows (dropped rows are gone afterwards). ``say``
    receives progress lines (at most every ``progress_seconds``, plus start and end). ``release``:
    close the catalog while rows are copied (readers get in) and take it back before parts are
    removed. Needs a read-write store (the writer lock). See the module docstring for the guarantees.
    """
    t0 = time.monotonic()
    _check_name(name)
    if store.read_only:
        raise StoreError(f"store {store.root} is open read-only; compaction needs the writer lock")
    spec = store.first("SELECT key_columns, order_column FROM _part_tables WHERE table_name = ?", [name])
    if spec is None:
        raise StoreError(f"{name!r} is not a part table of the store {store.root}")
    keys, order = list(spec[0]), spec[1]
    directory = store.parts_dir(name)
    tell = _Progress(say, progress_seconds)
    result = CompactResult(name)
    if directory.exists():
        finish_journal(directory, say)
        for leftover in directory.glob(f".{PREFIX}-*.tmp"):   # a killed run's unfinished new part
            leftover.unlink(missing_ok=True)
    old = store.part_files(name)   # sorted by name: the view's tie order
    result.parts_before = result.parts_after = len(old)
    if not old:
        return result

    winners = _winners(store, old, keys, order)
    result.rows = sum(len(w) for w in winners.values())
    meta = {p: pq.ParquetFile(p).metadata for p in old}
    sizes = {p: p.stat().st_size for p in old}

    checked: dict[Path, bool] = {}

    def as_is(p: Path) -> bool:   # every row of the part is kept: rewriting it alone gains nothing
        if p not in checked:
            checked[p] = len(winners.get(p, ())) == meta[p].num_rows and (keep is None or _keeps_all(p, keep))
        return checked[p]

    # a part already large holding only kept rows stays; so does a part that would be rewritten alone
    todo = [p for p in old if not (sizes[p] >= target_bytes // 2 and as_is(p))]
    groups = [g for g in _groups(todo, meta, sizes, target_bytes) if len(g[0]) > 1 or not as_is(g[0][0])]
    todo = [p for g, _ in groups for p in g]
    if not todo:
        result.seconds = time.monotonic() - t0
        return result

    tell(f"{name}: compacting {len(todo):,} of {len(old):,} parts ({sum(sizes[p] for p in todo) / 1e6:,.0f} MB) "
         f"into about {len(groups)} part(s)", force=True)
    if release and hasattr(store, "release_catalog"):
        store.release_catalog()
    wrote: list[Path] = []
    done_parts = 0
    for group, schema in groups:
        path, kept, dropped = _write_group(directory, group, schema, winners, keep, tell, name, done_parts,
                                           len(todo))
        done_parts += len(group)
        result.dropped_rows += dropped
        if path is not None:
            wrote.append(path)
        tell(f"{name}: {done_parts:,}/{len(todo):,} parts read, {len(wrote)} new part(s) written")
    _fsync_dir(directory)
    result.superseded_rows = sum(meta[p].num_rows - len(winners.get(p, ())) for p in todo)
    result.rows -= result.dropped_rows
    store.con   # noqa: B018 - take the catalog back (waits for readers) before any part goes
    with DiskFullGuard(directory / JOURNAL, store.root):
        write_json_atomic(directory / JOURNAL, {"table": name, "remove": [p.name for p in todo],
                                                "wrote": [p.name for p in wrote]})
    _remove_in_order(directory, [p.name for p in todo])
    (directory / JOURNAL).unlink(missing_ok=True)
    _fsync_dir(directory)
    store.refresh_part_views()
    result.rewritten_parts, result.written_parts = len(todo), len(wrote)
    result.parts_after = len(store.part_files(name))
    result.seconds = time.monotonic() - t0
    return result


# ---------------------------------------------------------------------------- steps
def _winners(store: FeatureStore, parts: list[Path], keys: list[str], order: str) -> dict[Path, np.ndarray]:
    """Per part, the sorted row numbers the view keeps (same rule as the view, over exactly ``parts``)."""
    files_sql = "[" + ", ".join(sql_str(str(p)) for p in parts) + "]"
    query = (f"SELECT {PART_FILE_COLUMN}, list(file_row_number ORDER BY file_row_number) FROM "
             f"({FeatureStore.latest_rows_sql(files_sql, keys, order)}) GROUP BY 1")
    con = duckdb.connect()   # a private connection: the catalog may be released meanwhile; paths are absolute
    try:
        con.execute("SET enable_progress_bar = false")
        with store.reading():
            rows = con.execute(query).fetchall()
    finally:
        con.close()
    by_name = {str(p): p for p in parts}
    return {by_name[f]: np.asarray(r, dtype=np.int64) for f, r in rows}


def _keeps_all(path: Path, keep: Callable[[pa.Table], pa.Table]) -> bool:
    for batch in pq.ParquetFile(path).iter_batches(batch_size=65_536):
        table = pa.Table.from_batches([batch])
        if keep(table).num_rows != table.num_rows:
            return False
    return True


def _groups(todo: list[Path], meta: dict, sizes: dict, target_bytes: int) -> list[tuple[list[Path], pa.Schema]]:
    """Consecutive parts (name order) of about ``target_bytes`` per new part, with the new part's schema:
    the union of theirs (a column a part lacks is NULL in its rows, as the view reads it). A part whose
    column has another type than in the group starts a new group (no value is ever cast)."""
    groups: list[tuple[list[Path], pa.Schema]] = []
    total = 0
    for p in todo:
        s = meta[p].schema.to_arrow_schema().remove_metadata()
        if groups and total + sizes[p] <= target_bytes:
            merged = _union(groups[-1][1], s)
            if merged is not None:
                groups[-1] = (groups[-1][0] + [p], merged)
                total += sizes[p]
                continue
        groups.append(([p], s))
        total = sizes[p]
    return groups


def _union(a: pa.Schema, b: pa.Schema) -> pa.Schema | None:
    """``a`` plus the columns of ``b`` it lacks, or None when a shared column differs in type."""
    fields = list(a)
    for f in b:
        i = a.get_field_index(f.name)
        if i < 0:
            fields.append(f.with_nullable(True))
        elif not a.field(i).type.equals(f.type):
            return None
    return pa.schema(fields)


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """``table``'s columns in ``schema``'s order, the ones it lacks as NULLs."""
    n = table.num_rows
    return pa.Table.from_arrays([table.column(f.name) if f.name in table.column_names else pa.nulls(n, f.type)
                                 for f in schema], schema=schema)


def _write_group(directory: Path, group: list[Path], schema: pa.Schema, winners: dict[Path, np.ndarray],
                 keep: Callable[[pa.Table], pa.Table] | None, tell: _Progress, name: str, done: int,
                 total: int) -> tuple[Path | None, int, int]:
    """Stream the kept rows of ``group`` into one new part; returns (its path or None if empty, rows, dropped)."""
    final = directory / f"{PREFIX}-{utc_now():%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:10]}.parquet"
    tmp = directory / f".{final.name}.tmp"
    writer = None
    buffer: list[pa.Table] = []
    buffered = kept = dropped = 0

    def flush() -> None:
        nonlocal writer, buffer, buffered
        if not buffer:
            return
        table = pa.concat_tables(buffer)
        if writer is None:
            writer = pq.ParquetWriter(tmp, table.schema, compression="zstd",
                                      use_dictionary=dictionary_columns(table))
        writer.write_table(table, row_group_size=max(1, table.num_rows))
        buffer, buffered = [], 0

    try:
        with DiskFullGuard(final, directory):
            for i, part in enumerate(group):
                rows = winners.get(part, np.zeros(0, np.int64))
                mask = np.zeros(pq.ParquetFile(part).metadata.num_rows, dtype=bool)
                mask[rows] = True
                offset = 0
                for batch in pq.ParquetFile(part).iter_batches(batch_size=65_536):
                    n = batch.num_rows
                    table = pa.Table.from_batches([batch]).filter(pa.array(mask[offset: offset + n]))
                    offset += n
                    if keep is not None and table.num_rows:
                        before = table.num_rows
                        table = keep(table)
                        dropped += before - table.num_rows
                    if table.num_rows:
                        buffer.append(_conform(table, schema))
                        buffered += table.nbytes
                        kept += table.num_rows
                    if buffered >= ROW_GROUP_BYTES:
                        flush()
                tell(f"{name}: {done + i + 1:,}/{total:,} parts read")
            flush()
            if writer is None:
                return None, 0, dropped
            writer.close()
            writer = None
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp, final)
    finally:
        if writer is not None:
            writer.close()
        tmp.unlink(missing_ok=True)
    return final, kept, dropped


def _remove_in_order(directory: Path, names: list[str]) -> int:
    """Remove ``names`` from ``directory`` in name order (the view's tie order; see the module docstring)."""
    removed = 0
    for n in sorted(names):
        path = directory / n
        if path.exists():
            path.unlink()
            removed += 1
    return removed


def _fsync_dir(directory: Path) -> None:
    """Best effort: a folder that cannot be synced leaves the renames as they stand."""
    with contextlib.suppress(OSError):
        fsync_dir(directory)


def compact_store(store_dir: str | os.PathLike, table: str | None = None, *, target_bytes: int = TARGET_BYTES,
                  say: Callable[[str], None] | None = None) -> list[CompactResult]:
    """Compact one part table (``table``) or every part table of the store at ``store_dir``
    (``python -m pipelines.compact``). Holds the writer lock throughout; the catalog is released
    while rows are copied so readers are not locked out for long."""
    with FeatureStore.open(store_dir, create=False) as store:
        names = [r[0] for r in store.rows("SELECT table_name FROM _part_tables ORDER BY 1")]
        if table is not None:
            if table not in names:
                raise StoreError(f"{table!r} is not a part table of the store {store.root}; part tables: "
                                 f"{', '.join(names) or 'none'}")
            names = [table]
        results = []
        for name in names:
            results.append(compact_table(store, name, target_bytes=target_bytes, say=say, release=True))
            if say:
                say(results[-1].line())
        return results


def compact_parts(store: FeatureStore, name: str, keep: Callable[[pa.Table], pa.Table] | None = None) -> int:
    """Rewrite a part table's many small parts as few large ones holding exactly its view's rows (optionally
    filtered by ``keep``, a row filter); see :func:`compact_table` (new parts are written before old ones go,
    kill -9 safe). Returns the row count kept."""
    store.refresh_part_views()
    return compact_table(store, name, keep=keep).rows

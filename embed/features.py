"""Window features for training and inference: read them from the store, or embed one file in memory.

Views (comma-join them to concatenate, e.g. ``"birdnet,classical"``), as the registered families
declare them (:attr:`embed.extractors.Extractor.views`, parsed by :func:`embed.registry.parse_view`):

==========================  ===================  ==========================================
view                        part table           columns
==========================  ===================  ==========================================
``birdnet``                 birdnet_frames       ``birdnet:<i>`` (1,024, pooled frames)
``birdnet_logits``          birdnet_frames       ``birdnet_logit:<primary_label>``
``classical``               classical_windows    ``classical:<statistic>`` (815)
``custom:<name>``           custom_frames        ``custom:<name>:<i>``
``custom_logits:<name>``    custom_frames        ``custom_logit:<name>:<label>``
==========================  ===================  ==========================================

Frame views are pooled per window (``mean``, ``max`` or ``meanmax`` = both, the max half named
``<column>@max``). :func:`load_window_features` (store) and :func:`embed_file` (in memory, for the
Kaggle notebook) share :func:`pool_frames` and the float16 rounding of embeddings, so the same
file gives bit-identical features on both paths.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import functools
import itertools
import os
import queue
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import numpy as np

from embed.audio import Audio
from embed.extractors import Extractor, FrameOutput, WindowOutput, compute_all
from embed.registry import ViewSpec, family_of, rebuild, split_views, stored_params, version_meta
from embed.registry import parse_view as parse_view  # re-exported: models.frame checks view names here
from featurestore.errors import StoreError, UserInputError

if TYPE_CHECKING:  # the in-memory path (embed_file, the Kaggle notebook) imports no pyarrow or duckdb
    import pyarrow as pa

    from featurestore.store import FeatureStore

POOLINGS = ("mean", "max", "meanmax")
T = TypeVar("T")


def pooled_names(names: list[str], pooling: str, frame_level: bool) -> list[str]:
    if frame_level and pooling == "meanmax":
        return names + [f"{n}@max" for n in names]
    return names


# Frame rows pooled at a time: the float64 copy for the mean is this many rows (64 MB at 1,024 dims), not the
# whole matrix (8 GB at 1M frame rows x 1,024); see pool_frames.
POOL_CHUNK_ROWS = 8192


def pool_frames(window_index: np.ndarray, values: np.ndarray, pooling: str,
                chunk_rows: int = POOL_CHUNK_ROWS) -> np.ndarray:
    """Pool rows of ``values`` that share a (contiguous, sorted) ``window_index``: one row per window.

    The mean accumulates in float64 and is returned as float32; the same call serves the store
    and the in-memory path, so both give identical numbers. Windows are pooled in chunks of about
    ``chunk_rows`` frame rows cut at window starts (a longer window is a chunk of its own), written into
    the one output array: peak extra memory is one chunk in float64, and every window's sum is the same
    row-by-row float64 accumulation as one ``np.add.reduceat`` over the whole matrix (bit-identical).
    """
    if pooling not in POOLINGS:
        raise UserInputError(f"unknown pooling {pooling!r}; use one of {POOLINGS}")
    values = np.asarray(values, dtype=np.float32)
    dim = values.shape[1]
    if len(values) == 0:
        return np.zeros((0, dim * (2 if pooling == "meanmax" else 1)), np.float32)
    keys = np.asarray(window_index)
    bounds = np.r_[np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]]), len(values)]   # window starts, then n
    n_windows = len(bounds) - 1
    out = np.empty((n_windows, dim * (2 if pooling == "meanmax" else 1)), np.float32)
    mean_cols = slice(0, dim) if pooling in ("mean", "meanmax") else None
    max_cols = slice(dim if pooling == "meanmax" else 0, None) if pooling in ("max", "meanmax") else None
    first = 0
    while first < n_windows:      # windows [first, last): rows bounds[first]..bounds[last]
        last = max(first + 1, int(np.searchsorted(bounds, bounds[first] + max(1, chunk_rows), "right")) - 1)
        last = min(last, n_windows)
        rows = values[bounds[first]:bounds[last]]
        starts = bounds[first:last] - bounds[first]
        if mean_cols is not None:
            counts = np.diff(bounds[first:last + 1])[:, None]
            out[first:last, mean_cols] = np.add.reduceat(rows.astype(np.float64), starts, axis=0) / counts
        if max_cols is not None:
            out[first:last, max_cols] = np.maximum.reduceat(rows, starts, axis=0)
        first = last
    return out


# ---------------------------------------------------------------------------- store path
def _sql_str(value: str) -> str:
    # featurestore.store.sql_str's twin: this module is on the inference path, which must not import duckdb
    return "'" + value.replace("'", "''") + "'"


def _parts_source(store: FeatureStore, table: str) -> str | None:
    if not store.part_files(table):
        return None
    return f"read_parquet({_sql_str(store.part_glob(table))}, union_by_name = true)"


def stored_versions(store: FeatureStore, extractor: str) -> list[tuple[str, object, int]]:
    """(extractor_version, last written_at, rows) of an extractor's stored rows, newest first."""
    source = _parts_source(store, family_of(extractor).table)
    if source is None:
        return []
    return store.rows(f"SELECT extractor_version, max(written_at), count(*) FROM {source} WHERE extractor = ? "
                      "GROUP BY 1 ORDER BY 2 DESC, 1", [extractor])


def resolve_version(store: FeatureStore, extractor: str, versions: dict | None = None) -> str:
    """The pinned version (``versions[extractor]``) or the most recently written one."""
    if versions and versions.get(extractor):
        return versions[extractor]
    found = stored_versions(store, extractor)
    if not found:
        raise StoreError(f"no {extractor} features in the store {store.root}; run python -m pipelines.embed "
                         f"--store {store.root} --extractor {family_of(extractor).family}")
    return found[0][0]


# Winning frame rows of a part read, converted to float32 and pooled at a time (a "unit": rows
# [k * LOAD_UNIT_ROWS, (k + 1) * LOAD_UNIT_ROWS) of one part file): 8,192 x 1,024 float32 = 32 MB, plus
# the float64 sums. A window whose winning rows lie in several units (a key re-written in a later
# part, a part boundary) is pooled at the end from a side buffer holding only its rows.
LOAD_UNIT_ROWS = 8192


class _ListCheck:
    """NULL rows and row lengths of a list column read in pieces, for the errors a whole read would give."""

    def __init__(self, what: str):
        self.what = what
        self.nulls = 0
        self.low: int | None = None
        self.high: int | None = None

    def add(self, arr: pa.Array, nulls_only: int = 0) -> int | None:
        """Record ``arr`` (or ``nulls_only`` rows of a part without the column); its row length when every
        row seen so far is whole and of one length, else None."""
        return self.add_summary(*((nulls_only, None, None) if nulls_only else self.summary(arr)))

    @staticmethod
    def summary(arr: pa.Array) -> tuple[int, int | None, int | None]:
        """``(NULL rows, shortest row, longest row)`` of ``arr`` (lengths None when it has NULL rows): what
        :meth:`add_summary` records, computed where the array was read (a load's reader threads)."""
        import pyarrow as pa
        import pyarrow.compute as pc

        if arr.null_count:
            return arr.null_count, None, None
        if isinstance(arr.type, pa.FixedSizeListType):
            return 0, arr.type.list_size, arr.type.list_size
        lengths = pc.list_value_length(arr)
        return 0, pc.min(lengths).as_py(), pc.max(lengths).as_py()

    def add_summary(self, nulls: int, low: int | None, high: int | None) -> int | None:
        """:meth:`add` of an array with this :meth:`summary`."""
        if nulls:
            self.nulls += nulls
            return None
        self.low = low if self.low is None else min(self.low, low)
        self.high = high if self.high is None else max(self.high, high)
        return self.low if not self.nulls and self.low == self.high else None

    def raise_if_bad(self) -> None:
        if self.nulls:
            raise StoreError(f"{self.what}: {self.nulls} row(s) have no values")
        if self.low != self.high:
            raise StoreError(f"{self.what}: rows of different lengths ({self.low}..{self.high})")

    @staticmethod
    def matrix(arr: pa.Array) -> np.ndarray:
        import pyarrow as pa

        size = arr.type.list_size if isinstance(arr.type, pa.FixedSizeListType) else None
        flat = arr.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
        return flat.reshape(len(arr), size if size is not None else (len(flat) // len(arr) if len(arr) else 0))


def _pool_rows(window_index: np.ndarray, values: np.ndarray, pooling: str) -> np.ndarray:
    """:func:`pool_frames` (same arguments, same numbers) for the store path, several times faster.

    ``np.add.reduceat`` / ``np.maximum.reduceat`` over axis 0 walk each column with a stride of a whole row:
    pooling 4,299 frames x 1,024 into 1,433 windows took 82 ms (mean) and 61 ms (max) against 21 and 7 ms
    here, where the windows of each frame count k are pooled at once, adding (taking the max of) their
    frame 0, 1, ... k-1 rows in turn. That is the reduceat's own order - one row after another, the first
    row copied - for k < 8 (numpy sums 8 or more elements pairwise), so the bits are the same; a NaN stays
    a NaN (its sign bit may differ). Windows of 8 or more frames go to :func:`pool_frames` itself.
    """
    values = np.asarray(values, dtype=np.float32)
    keys = np.asarray(window_index)
    if len(values) == 0:
        return pool_frames(keys, values, pooling)
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    counts = np.diff(np.r_[starts, len(values)])
    dim = values.shape[1]
    out = np.empty((len(starts), dim * (2 if pooling == "meanmax" else 1)), np.float32)
    long = counts >= 8
    if long.any():
        rows = np.repeat(long, counts)
        out[long] = pool_frames(keys[rows], values[rows], pooling)
    for k in np.unique(counts[~long]).tolist():
        sel = np.flatnonzero(counts == k)
        first = starts[sel]
        if pooling in ("mean", "meanmax") and k == 1:   # float32 -> float64 -> / 1 -> float32 gives the bits back:
            out[sel, :dim] = values[first]                # skip the float64 copy (a 5-s-frame view: every window)
        elif pooling in ("mean", "meanmax"):
            total = values[first].astype(np.float64)
            for j in range(1, k):
                total += values[first + j]
            out[sel, :dim] = total / k
        if pooling in ("max", "meanmax"):
            high = values[first]
            for j in range(1, k):
                np.maximum(high, values[first + j], out=high)
            out[sel, dim if pooling == "meanmax" else 0:] = high
    return out


def _winning_rows(store: FeatureStore, spec: ViewSpec, version: str, wanted: str | None) -> pa.Table:
    """(window_id, part, row) of the row kept per key, in key order: keys only, no payload.

    The rule of the part views (:meth:`FeatureStore.latest_rows_sql`): the latest ``written_at`` (NULLs
    lose), ties to the last part file by name, then the last row in it. Sorting the keys alone instead of
    whole rows with their 1,024-value lists is what makes the load fast and small (see _fill_view).
    """
    from featurestore.store import PART_FILE_COLUMN

    keys = ["window_id", "frame_index"] if spec.frame_level else ["window_id"]
    where = "extractor_version = ?" + (f" AND window_id IN (SELECT window_id FROM {wanted})" if wanted else "")
    latest = store.latest_rows_sql(_sql_str(store.part_glob(spec.table)), keys, "written_at", where=where,
                                   columns=keys)
    return store.sql(f"SELECT window_id, {PART_FILE_COLUMN} AS part, file_row_number AS row FROM ({latest}) "
                     f"ORDER BY {', '.join(keys)}", [version])


class _PartColumn:
    """One column of one part file, handed out by row ranges in increasing order (a few batches in memory);
    read errors name the part (:func:`_part_errors`).

    ``needed``: the file rows that will be asked for. Only the row groups holding one of them are read:
    the Parquet pages of a column chunk are decoded whole (the list levels of every row), so a row group
    without a winning row - a compacted part most of whose windows a subset load does not want, or whose
    rows a later part re-wrote - is decoding work for nothing.
    """

    def __init__(self, store: FeatureStore, table: str, path: str, column: str, needed: np.ndarray):
        import pyarrow.parquet as pq

        self.store, self.table, self.path, self.column = store, table, path, column
        with _part_errors(self.store, self.table, self.path):
            self.file = pq.ParquetFile(path)
            self.present = column in self.file.schema_arrow.names
            self.batches = self._batches(needed) if self.present else None
        self.pieces: list[tuple[int, pa.Array]] = []
        self.end = 0

    def _batches(self, needed: np.ndarray) -> Iterator[tuple[int, pa.Array]]:
        """``(first file row, array)`` of the column in LOAD_UNIT_ROWS batches, over the row groups that
        hold a ``needed`` row (a run of consecutive ones read as one stream)."""
        meta = self.file.metadata
        starts = np.cumsum([0] + [meta.row_group(i).num_rows for i in range(meta.num_row_groups)])
        groups = np.unique(np.searchsorted(starts, needed, "right") - 1)
        groups = groups[groups < meta.num_row_groups]     # rows past the end: rows() names the short file
        for run in np.split(groups, np.flatnonzero(np.diff(groups) != 1) + 1) if len(groups) else []:
            at = int(starts[run[0]])
            for batch in self.file.iter_batches(batch_size=LOAD_UNIT_ROWS, row_groups=run.tolist(),
                                                columns=[self.column], use_threads=False):
                yield at, batch.column(0)
                at += batch.num_rows

    def take(self, rows: np.ndarray) -> pa.Array:
        """Rows ``rows`` (file row numbers, increasing from one call to the next) of the column."""
        import pyarrow as pa

        low, high = int(rows.min()), int(rows.max()) + 1
        with _part_errors(self.store, self.table, self.path):
            while self.end < high:
                got = next(self.batches, None)
                if got is None:
                    raise OSError(f"{self.end:,} rows where {high:,} were expected")
                self.pieces.append(got)
                self.end = got[0] + len(got[1])
        while self.pieces and self.pieces[0][0] + len(self.pieces[0][1]) <= low:
            self.pieces.pop(0)
        if len(self.pieces) == 1:
            return self.pieces[0][1].take(pa.array(rows - self.pieces[0][0]))
        # pieces may have gaps (skipped row groups): each row's place in their concatenation, piece by piece
        starts = np.array([first for first, _ in self.pieces], np.int64)
        at = np.cumsum([0] + [len(a) for _, a in self.pieces[:-1]])
        piece = np.searchsorted(starts, rows, "right") - 1
        return pa.concat_arrays([a for _, a in self.pieces]).take(pa.array(rows - starts[piece] + at[piece]))

    def close(self) -> None:
        self.file.close()


@contextlib.contextmanager
def _part_errors(store: FeatureStore, table: str, path: str):
    """pyarrow errors reading a part (damaged or gone since the keys were read) as the store's one-line
    :class:`StoreError` naming the part, the one a DuckDB read of it gives (:meth:`FeatureStore.explain`)."""
    import pyarrow as pa

    from featurestore.store import DamagedPart

    try:
        yield
    except (OSError, pa.ArrowException) as exc:
        where = Path(path)
        if isinstance(exc, FileNotFoundError):
            raise StoreError(f"part {where.relative_to(store.root)} of table {table} in store {store.root} was "
                             "removed while it was read (compacted meanwhile?); run the command again") from exc
        damaged = store.damaged_parts()
        named = [d for d in damaged if d.path == where]
        if not named:         # damage the footer check does not see (inside a data page): name it all the same
            named = [DamagedPart(table, where, f"unreadable: {' '.join(str(exc).split())[:200]}")]
        raise StoreError(store.damaged_part_message(named + [d for d in damaged if d.path != where])) from exc


@dataclass
class _Winners:
    """The row kept per key of one view (:func:`_winning_rows`), in key order, as arrays."""

    window_ids: list[str]       # sorted
    window: np.ndarray          # per winning row: its index in window_ids
    files: list[str]            # the part files holding winning rows
    code: np.ndarray            # per winning row: its file's index in files
    row: np.ndarray             # per winning row: its row number in its file

    def dim(self, store: FeatureStore, spec: ViewSpec) -> int | None:
        """The row length of the view's column when the first part declares it (fixed-size lists, as the
        embed job writes), else None; a part of another length is an error :func:`_fill_view` raises."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not self.files:
            return 0
        with _part_errors(store, spec.table, self.files[0]):
            schema = pq.read_schema(self.files[0])
        kind = schema.field(spec.column).type if spec.column in schema.names else None
        return kind.list_size if isinstance(kind, pa.FixedSizeListType) else None


def _winners(store: FeatureStore, spec: ViewSpec, version: str, wanted: str | None) -> _Winners:
    import pyarrow as pa
    import pyarrow.compute as pc

    if not store.part_files(spec.table):
        raise StoreError(f"no {spec.table} parts in the store {store.root}; run python -m pipelines.embed")
    keys = _winning_rows(store, spec, version, wanted)
    n = keys.num_rows
    if n == 0:
        return _Winners([], np.zeros(0, np.int64), [], np.zeros(0, np.int64), np.zeros(0, np.int64))
    ids = keys.column("window_id").combine_chunks()
    new = np.ones(n, bool)
    if n > 1:
        new[1:] = pc.not_equal(ids.slice(1), ids.slice(0, n - 1)).to_numpy(zero_copy_only=False)
    parts = keys.column("part").combine_chunks().dictionary_encode()
    return _Winners(ids.filter(pa.array(new)).to_pylist(), np.cumsum(new) - 1, parts.dictionary.to_pylist(),
                    parts.indices.to_numpy().astype(np.int64), keys.column("row").to_numpy())


# Threads reading part files for one two-pass load (at most; one per core). Parquet decoding of the list columns
# is most of a load's work and pyarrow does it without the GIL, so the parts are read, taken, made float32 and
# pooled in parallel, as DuckDB's own scans are: a 10%-of-windows load of a 1M-window store in 8,334 parts decodes
# every part (each holds some wanted window), 8,334 x 1.2 ms of pyarrow on one core otherwise.
LOAD_THREADS = min(4, os.cpu_count() or 1)
# Batches a reader thread may have done ahead of the loop placing them into X (each LOAD_BATCH_ROWS rows or
# one unit): bounds the memory the threads add to a load to about LOAD_THREADS x (LOAD_AHEAD + 1) batches.
LOAD_AHEAD = 1
# Winning rows of several small parts converted and pooled together (_read_parts): enough to spread the per-call
# overhead, small enough that the threads' batches stay small (batches of a whole unit, 8,192 rows, added 0.3 GB
# to the peak RSS of a full load of 200k windows x 1,024; with 1,024 rows its peak is 1.37 GB, 1.19 GB before
# the reader threads).
LOAD_BATCH_ROWS = 1024


def _in_threads(jobs: Sequence[Callable[[], Iterator[T]]], threads: int, ahead: int = LOAD_AHEAD) -> Iterator[T]:
    """The items of every job's iterator, in job order, while up to ``threads`` jobs run in threads, each at
    most ``ahead`` items ahead of the caller. A job's error is raised where its items would have been (so in
    the order a loop over the jobs raises it); closing this iterator stops the jobs still running."""
    if threads <= 1 or len(jobs) <= 1:
        for job in jobs:
            yield from job()
        return
    stop = threading.Event()
    end = object()

    def offer(box: queue.Queue, item: object) -> bool:
        while not stop.is_set():
            try:
                box.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def run(job: Callable[[], Iterator[T]], box: queue.Queue) -> None:
        items = job()
        try:
            for item in items:
                if not offer(box, (item, None)):
                    return
            offer(box, (end, None))
        except BaseException as exc:     # handed to the caller, raised in job order
            offer(box, (end, exc))
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()

    pending = iter(jobs)
    boxes: collections.deque[queue.Queue] = collections.deque()
    with concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="load-parts") as pool:
        try:
            for job in itertools.islice(pending, threads):
                boxes.append(queue.Queue(ahead))
                pool.submit(run, job, boxes[-1])
            while boxes:
                item, exc = boxes[0].get()
                if item is not end:
                    yield item
                    continue
                if exc is not None:
                    raise exc
                boxes.popleft()
                job = next(pending, None)
                if job is not None:
                    boxes.append(queue.Queue(ahead))
                    pool.submit(run, job, boxes[-1])
        finally:
            stop.set()


# What a reader thread hands over per batch of winning rows (one unit, or the units of several small parts):
# the rows (indexes into the winning rows), the _ListCheck summary of their values, and when they are whole
# rows of one length: the float32 rows (window views; frame views: only the rows of windows split over
# units, for the side buffer) and the pooled windows of the others.
_Batch = tuple[np.ndarray, tuple[int, int | None, int | None], np.ndarray | None, np.ndarray | None]


def _read_parts(store: FeatureStore, spec: ViewSpec, pooling: str, parts: list[tuple[str, list[np.ndarray]]],
                row: np.ndarray, window: np.ndarray, split: np.ndarray) -> Iterator[_Batch]:
    """The winning rows of ``parts`` (path, its units), read part after part in row order, in batches of
    a unit or of the units of several parts up to LOAD_BATCH_ROWS rows (run in a reader thread by
    :func:`_fill_view`).

    The units of small parts are converted and pooled together: a 10% load of a store of 120-window parts
    takes 12 rows a part, and converting, pooling and placing them part by part cost more (numpy and Python
    overhead of 8,334 calls each) than decoding the parts did. Rows of parts whose column types differ (a
    part of another row length, say) are never put in one batch.
    """
    import pyarrow as pa

    pending: list[tuple[np.ndarray, pa.Array]] = []
    held = 0                                                             # rows in pending

    def batch() -> _Batch:
        rows = np.concatenate([r for r, _ in pending]) if len(pending) > 1 else pending[0][0]
        taken = pa.concat_arrays([a for _, a in pending]) if len(pending) > 1 else pending[0][1]
        pending.clear()
        summary = _ListCheck.summary(taken)
        values = pooled = None
        if summary[0] == 0 and summary[1] == summary[2]:
            values = _ListCheck.matrix(taken)
            if spec.frame_level:
                apart = split[rows]
                if not apart.all():
                    pooled = _pool_rows(window[rows[~apart]], values[~apart], pooling)
                values = values[apart]
        return rows, summary, values, pooled

    try:
        for path, units in parts:
            part = _PartColumn(store, spec.table, path, spec.column, row[np.concatenate(units)])
            try:
                for rows in units:
                    if not part.present:                                 # an older part without the column: NULLs
                        if pending:
                            yield batch()
                            held = 0
                        yield rows, (len(rows), None, None), None, None
                        continue
                    taken = part.take(row[rows])
                    if pending and (taken.type != pending[0][1].type or held + len(rows) > LOAD_BATCH_ROWS):
                        yield batch()
                        held = 0
                    pending.append((rows, taken))
                    held += len(rows)
            finally:
                part.close()
    except StoreError:
        if pending:             # the rows read before a damaged part first, as a loop part by part has them
            yield batch()
        raise
    if pending:
        yield batch()


def _fill_view(store: FeatureStore, spec: ViewSpec, version: str, pooling: str, won: _Winners,
               dest: np.ndarray, out: np.ndarray | None) -> np.ndarray:
    """Pool (frame views) or copy (window views) window ``i`` of ``won`` into ``out[dest[i]]``, skipping
    ``dest[i] < 0``; ``out`` None: allocated here with ``dest.max() + 1`` rows once the row length is read.

    The embedding lists are never sorted nor held whole: each part's column is streamed with pyarrow in
    units of LOAD_UNIT_ROWS rows (only its row groups holding a winning row), the winning rows taken, made
    float32 and pooled - by up to LOAD_THREADS reader threads, each a run of parts holding about a unit of
    winning rows (:func:`_in_threads`, :func:`_read_parts`) - and placed into ``out`` here, part after part in
    file-name order. Every window is pooled over its rows in frame order with the numbers of
    :func:`pool_frames` (:func:`_pool_rows`), so X is bit-identical to one pool_frames call over all the rows.
    """
    keep = dest[won.window] >= 0
    window, code, row = won.window[keep], won.code[keep], won.row[keep]
    n = len(window)
    check = _ListCheck(f"{spec.table}.{spec.column} ({version})")
    side: np.ndarray | None = None
    jobs = []
    if n:
        unit = (code << 40) | (row // LOAD_UNIT_ROWS)
        first = np.r_[True, window[1:] != window[:-1]]
        starts = np.flatnonzero(first)
        split = (np.minimum.reduceat(unit, starts)                        # per row: its window spans several units
                 != np.maximum.reduceat(unit, starts))[np.cumsum(first) - 1]
        side_at = np.cumsum(split) - 1                                   # a split window's row: its side buffer row
        by_unit = np.argsort(unit, kind="stable")                        # within a unit: key order
        unit_sorted = unit[by_unit]
        cuts = np.r_[0, np.flatnonzero(unit_sorted[1:] != unit_sorted[:-1]) + 1, n]
        files = unit_sorted[cuts[:-1]] >> 40                             # per unit: its file (units sorted by file)
        job: list[tuple[str, list[np.ndarray]]] = []
        size = 0
        for f, low, high in zip(*(np.split(x, np.flatnonzero(np.diff(files)) + 1)   # per file: its units' cuts
                                  for x in (files, cuts[:-1], cuts[1:])), strict=True):
            units = [by_unit[a:b] for a, b in zip(low.tolist(), high.tolist(), strict=True)]
            job.append((won.files[int(f[0])], units))
            size += int(high[-1] - low[0])
            if size >= LOAD_UNIT_ROWS:       # a job: whole parts, about a unit of winning rows or more (one part)
                jobs.append(functools.partial(_read_parts, store, spec, pooling, job, row, window, split))
                job, size = [], 0
        if job:
            jobs.append(functools.partial(_read_parts, store, spec, pooling, job, row, window, split))
    with contextlib.closing(_in_threads(jobs, LOAD_THREADS)) as batches:
        for rows, summary, values, pooled in batches:
            dim = check.add_summary(*summary)          # not None: this batch's rows are whole, of one length,
            if dim is None:                            # so its reader converted them (values)
                continue                                                 # raised once every part is seen
            if side is None:
                factor = 2 if spec.frame_level and pooling == "meanmax" else 1
                if out is None:
                    out = np.empty((int(dest.max()) + 1, dim * factor), np.float32)
                elif out.shape[1] != dim * factor:                       # the first part declared another length
                    low, high = sorted((out.shape[1] // factor, dim))
                    raise StoreError(f"{check.what}: rows of different lengths ({low}..{high})")
                side = np.empty((int(split.sum()), dim), np.float32)
            if not spec.frame_level:
                out[dest[window[rows]]] = values
                continue
            apart = split[rows]
            if apart.any():
                side[side_at[rows[apart]]] = values
            if pooled is not None:
                w = window[rows[~apart]]
                out[dest[w[np.r_[True, w[1:] != w[:-1]]]]] = pooled
    check.raise_if_bad()
    if side is not None and len(side) and spec.frame_level:
        w = window[np.flatnonzero(split)]
        out[dest[w[np.r_[True, w[1:] != w[:-1]]]]] = _pool_rows(w, side, pooling)
    return out if out is not None else np.zeros((0, 0), np.float32)


# A subset load (``window_ids``) whose rows are small enough reads each view in ONE DuckDB query: the subset
# filter pushed into the scan of every part (a join filter on window_id), the latest row per key kept by the
# part views' own rule (:meth:`FeatureStore.latest_rows_sql`) with the payload carried along, the rows
# ordered by key and pooled batch by batch. Two passes (the keys of every part, then pyarrow reading the
# payload of the parts that hold a winner) open and parse each part twice, and per-part costs are most of
# a read of many small parts: a 10% load of a 1M-window store in 8,334 parts took 1.6x the time DuckDB needs
# to read the same rows from plain Parquet in two passes (2.3x with one reader thread), 1.2x in one query
# (bench/store_scale.py, a quiet 2-core machine). The query holds the winning rows with their payload
# (float32) in its window and its sort, about twice their size (the load raised peak RSS by 1.07 GB for those
# 100k x 1,024, X's 0.41 GB included; 0.49 GB in two passes), so it is used up to this many bytes of winning
# rows (estimated from the first part's footer); larger subsets and whole tables - where carrying the lists
# through one sort took 518 s and 13.2 GB (see load_window_features) - stream in two passes.
LOAD_ONE_QUERY_BYTES = 512 * 2**20


def _one_query_bytes(store: FeatureStore, spec: ViewSpec, n_windows: int) -> int | None:
    """Estimated float32 bytes of the winning rows of ``n_windows`` windows of ``spec``: its first part's row
    length (a fixed-size list) x frames per window (its largest ``frame_index`` + 1, from the row-group
    statistics); None when that part does not say (the load then takes two passes)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = store.part_files(spec.table)
    if not files:
        return None
    try:
        meta = pq.read_metadata(files[0])
        schema = meta.schema.to_arrow_schema()
    except (OSError, pa.ArrowException):
        return None                                       # damaged: the two-pass load names it
    if spec.column not in schema.names or not isinstance(schema.field(spec.column).type, pa.FixedSizeListType):
        return None
    frames = 1
    if spec.frame_level:
        highest = None
        for g in range(meta.num_row_groups):
            group = meta.row_group(g)
            stats = next((group.column(c).statistics for c in range(group.num_columns)
                          if group.column(c).path_in_schema == "frame_index"), None)
            if stats is None or not stats.has_min_max:
                return None
            highest = stats.max if highest is None else max(highest, stats.max)
        frames = (highest or 0) + 1
    return n_windows * frames * schema.field(spec.column).type.list_size * 4


def _load_view_one_query(store: FeatureStore, spec: ViewSpec, version: str, pooling: str, wanted: str,
                         n_windows: int) -> tuple[list[str], np.ndarray] | None:
    """``(window ids sorted, X [n, width])`` of the windows of table ``wanted`` that view ``spec`` has, in one
    query (see LOAD_ONE_QUERY_BYTES); None when there are none. Pooled with :func:`_pool_rows` over each
    window's rows in frame order, so X is bit-identical to the two-pass load's."""
    import pyarrow as pa
    import pyarrow.compute as pc

    keys = ["window_id", "frame_index"] if spec.frame_level else ["window_id"]
    latest = store.latest_rows_sql(_sql_str(store.part_glob(spec.table)), keys, "written_at",
                                   where=f"extractor_version = ? AND window_id IN (SELECT window_id FROM {wanted})",
                                   columns=[*keys, spec.column])
    query = f'SELECT window_id, "{spec.column}" FROM ({latest}) ORDER BY {", ".join(keys)}'
    check = _ListCheck(f"{spec.table}.{spec.column} ({version})")
    factor = 2 if spec.frame_level and pooling == "meanmax" else 1
    ids: list[str] = []
    out: np.ndarray | None = None

    def place(windows: pa.Array, lists: pa.Array) -> None:
        nonlocal out
        dim = check.add_summary(*_ListCheck.summary(lists))
        if dim is None:
            return                                                       # raised once every row is seen
        values = _ListCheck.matrix(lists)
        new = np.ones(len(windows), bool)
        new[1:] = pc.not_equal(windows.slice(1), windows.slice(0, len(windows) - 1)).to_numpy(zero_copy_only=False)
        rows = _pool_rows(np.cumsum(new), values, pooling) if spec.frame_level else values
        if out is None:
            out = np.empty((n_windows, dim * factor), np.float32)
        elif out.shape[1] != dim * factor:
            low, high = sorted((out.shape[1] // factor, dim))
            raise StoreError(f"{check.what}: rows of different lengths ({low}..{high})")
        out[len(ids):len(ids) + len(rows)] = rows
        ids.extend(windows.filter(pa.array(new)).to_pylist())

    held: tuple[pa.Array, pa.Array] | None = None     # the last window of a batch: its rows may go on in the next
    with store.reading():
        relation = store.con.sql(query, params=[version])
        for batch in (getattr(relation, "to_arrow_reader", None) or relation.fetch_record_batch)(LOAD_UNIT_ROWS):
            windows, lists = batch.column(0), batch.column(1)
            if held is not None:
                windows, lists = pa.concat_arrays([held[0], windows]), pa.concat_arrays([held[1], lists])
            if not len(windows):
                continue
            cut = pc.index(windows, windows[len(windows) - 1]).as_py()   # sorted: the last window's first row
            if cut:
                place(windows.slice(0, cut), lists.slice(0, cut))
            held = windows.slice(cut), lists.slice(cut)
    if held is not None and len(held[0]):
        place(*held)
    check.raise_if_bad()
    return (ids, out[:len(ids)]) if ids else None


def _load_one_query(store: FeatureStore, views: list[tuple[ViewSpec, str]], pooling: str,
                    window_ids: Sequence[str], wanted: str) -> tuple[list[str], np.ndarray, list[str]] | None:
    """:func:`load_window_features` of a subset whose winning rows fit LOAD_ONE_QUERY_BYTES, each view in one
    query; None to load it in two passes (too large, row length unknown, no window found, or a DuckDB error
    the two-pass load explains: a part damaged inside its payload is named there)."""
    import duckdb

    n = len(dict.fromkeys(window_ids))
    sizes = [_one_query_bytes(store, spec, n) for spec, _ in views]
    if None in sizes or sum(sizes) > LOAD_ONE_QUERY_BYTES:
        return None
    got = []
    try:
        for spec, version in views:
            view = _load_view_one_query(store, spec, version, pooling, wanted, n)
            if view is None:
                return None
            got.append(view)
    except duckdb.Error:
        return None
    present = set(got[0][0]).intersection(*(ids for ids, _ in got[1:]))
    order = [w for w in dict.fromkeys(window_ids) if w in present]
    names = []
    for (spec, version), (_, block) in zip(views, got, strict=True):
        dim = block.shape[1] // (2 if spec.frame_level and pooling == "meanmax" else 1)
        names += pooled_names(spec.column_names(dim, version_meta(store, version)), pooling, spec.frame_level)
    if len(got) == 1 and got[0][0] == order:          # the windows asked for, sorted and all there: no copy
        return order, got[0][1], names
    X = np.empty((len(order), sum(block.shape[1] for _, block in got)), np.float32)
    col = 0
    for ids, block in got:
        at = {w: i for i, w in enumerate(ids)}
        X[:, col:col + block.shape[1]] = block[np.array([at[w] for w in order], np.int64)]
        col += block.shape[1]
    return order, X, names


def load_window_features(store: FeatureStore, view: str = "birdnet", pooling: str = "mean",
                         window_ids: Sequence[str] | None = None, versions: dict | None = None,
                         ) -> tuple[list[str], np.ndarray, list[str], dict[str, str]]:
    """Per-window features of ``view`` from the store.

    Returns ``(window_ids, X float32 [n, d], feature_names, versions)``; ``versions`` maps each
    extractor, and nothing else, to the extractor_version read (pin one with
    ``versions={"birdnet": ...}``; default: the most recently written). The pooling is the
    caller's argument (the training frame and the bundle carry it). Windows are sorted by id, or
    follow ``window_ids`` when given; a window missing from any joined view is left out. A key
    re-written in a later part reads its latest row (ties: the last part by name, then its last row).

    The winning rows of every view are found first (key columns only), then each view's payload is
    pooled straight into its columns of X: no other copy of X is made, and a window the join leaves out
    is never read. Loading the birdnet view of a 325k-window store (1M frame rows of 1,024 float16 in
    232 parts) took 518 s and 13.2 GB peak RSS when one DuckDB query ordered whole rows (``row_number()
    OVER`` carrying the lists), then made a float32 copy of every frame, then a copy of X; 23-37 s and
    2.0 GB (the 1.3 GB X included) this way, on a busy 2-core machine. A subset whose winning rows are
    small (LOAD_ONE_QUERY_BYTES) is read in one query per view instead, the subset filter pushed into the
    scan: the same rows and bits (tests/embed/test_load_subset.py), each part scanned once.
    """
    if pooling not in POOLINGS:
        raise UserInputError(f"unknown pooling {pooling!r}; use one of {POOLINGS}")
    specs = split_views(view)
    used: dict[str, str] = {}
    wanted = None
    if window_ids is not None:
        wanted = f"_embed_wanted_{uuid.uuid4().hex[:8]}"
        import pyarrow as pa

        store.con.register(wanted, pa.table({"window_id": pa.array(list(window_ids), pa.string())}))
    try:
        views = [(spec, used.setdefault(spec.extractor, resolve_version(store, spec.extractor, versions)))
                 for spec in specs]
        if wanted:
            loaded = _load_one_query(store, views, pooling, window_ids, wanted)
            if loaded is not None:
                return (*loaded, used)
        found = [(spec, version, _winners(store, spec, version, wanted)) for spec, version in views]
    finally:
        if wanted:
            store.con.unregister(wanted)
    order = list(window_ids) if window_ids is not None else sorted(found[0][2].window_ids)
    present = set(order)
    for _, _, won in found:
        present &= set(won.window_ids)
    order = [w for w in dict.fromkeys(order) if w in present]
    position = {w: i for i, w in enumerate(order)}
    widths, names = [], []
    for spec, version, won in found:
        dim = won.dim(store, spec)
        widths.append(None if dim is None else dim * (2 if spec.frame_level and pooling == "meanmax" else 1))
        names.append(None if dim is None else
                      pooled_names(spec.column_names(dim, version_meta(store, version)), pooling, spec.frame_level))
    if None not in widths:                             # the usual case: every part declares its row length
        X = np.empty((len(order), sum(widths)), np.float32)
        col = 0
        for (spec, version, won), width in zip(found, widths, strict=True):
            dest = np.array([position.get(w, -1) for w in won.window_ids], np.int64)
            _fill_view(store, spec, version, pooling, won, dest, X[:, col:col + width])
            col += width
        return order, X, [c for cols in names for c in cols], used
    blocks = []                                        # parts of variable-length lists: read, then placed
    for i, (spec, version, won) in enumerate(found):
        block = _fill_view(store, spec, version, pooling, won, np.arange(len(won.window_ids)), None)
        dim = block.shape[1] // (2 if spec.frame_level and pooling == "meanmax" else 1)
        names[i] = pooled_names(spec.column_names(dim, version_meta(store, version)), pooling, spec.frame_level)
        at = {w: j for j, w in enumerate(won.window_ids)}
        blocks.append(block[np.array([at[w] for w in order], np.int64)] if order
                      else np.zeros((0, block.shape[1]), np.float32))
    return order, np.hstack(blocks).astype(np.float32, copy=False), [c for cols in names for c in cols], used


def extractors_from_store(store: FeatureStore, versions: Mapping[str, str], **runtime) -> list[Extractor]:
    """Rebuild the extractors of ``versions`` (extractor name -> version, as returned by
    :func:`load_window_features`) from their stored params, in name order, e.g. to embed test audio
    exactly like the training features. ``runtime``: threads, batch_size, cache_dir, model_path (see
    :func:`embed.registry.from_params`). Raises :class:`~featurestore.errors.StoreError` for a
    version not in ``extractor_versions`` and :class:`~featurestore.errors.BundleError` when this
    machine rebuilds a different version (see :func:`embed.registry.rebuild`)."""
    return rebuild(stored_params(store, versions), dict(versions), owner=f"a model on the features of {store.root}",
                   **runtime)


# ---------------------------------------------------------------------------- in-memory path
def default_views(extractor: Extractor) -> list[str]:
    """The views an extractor produces (:meth:`embed.extractors.Extractor.view_names`)."""
    return extractor.view_names()


def _view_matrix(spec: ViewSpec, extractor: Extractor, out: FrameOutput | WindowOutput,
                 pooling: str) -> tuple[np.ndarray, list[str]]:
    meta = extractor.column_labels()
    if isinstance(out, WindowOutput):
        X = out.features
    else:
        values = out.embedding if spec.column == "embedding" else out.logits
        if values is None:
            raise UserInputError(f"{extractor.name} produced no logits, so view {spec.view!r} is empty")
        X = pool_frames(out.grid.window_index, values.astype(np.float32), pooling)
    return X, pooled_names(spec.column_names(X.shape[1] // (2 if spec.frame_level and pooling == "meanmax" else 1),
                                            meta), pooling, spec.frame_level)


def embed_file_views(path: str | os.PathLike, extractors: Sequence[Extractor],
                     requests: Sequence[tuple[str, str]], *, soundscape: bool = True,
                     window_starts: Sequence[float] | None = None,
                     ) -> dict[tuple[str, str], tuple[np.ndarray, np.ndarray, list[str]]]:
    """Decode and embed one file ONCE, then build every requested ``(view, pooling)``:
    ``{(view, pooling): (window_starts, X float32 [windows, d], feature names)}``.

    Several heads (a stack's base heads) can each read their own view and pooling from one pass of
    the extractors. Raises :class:`embed.audio.AudioError` naming the file when it cannot be decoded.
    """
    from featurestore.windows import window_starts as grid

    for _, pooling in requests:
        if pooling not in POOLINGS:
            raise UserInputError(f"unknown pooling {pooling!r}; use one of {POOLINGS}")
    audio = Audio.open(path)   # a long recording is streamed, not decoded whole
    starts = list(window_starts) if window_starts is not None else grid(audio.duration_s, soundscape)
    results = compute_all(audio, [(ex, starts) for ex in extractors])
    for out in results:
        if isinstance(out, BaseException):
            raise out
    return build_views(extractors, {ex.name: out for ex, out in zip(extractors, results, strict=True)}, starts,
                       requests)


def build_views(extractors: Sequence[Extractor], outputs: Mapping[str, FrameOutput | WindowOutput],
                starts: Sequence[float], requests: Sequence[tuple[str, str]],
                ) -> dict[tuple[str, str], tuple[np.ndarray, np.ndarray, list[str]]]:
    """Every requested ``(view, pooling)`` from the extractors' outputs for one file (what
    :func:`embed_file_views` returns; a caller that ran the extractors itself, e.g. to time them,
    builds the views here without running them again)."""
    by_name = {ex.name: ex for ex in extractors}
    result = {}
    for view, pooling in dict.fromkeys(requests):
        blocks, names = [], []
        for spec in split_views(view):
            if spec.extractor not in by_name:
                raise UserInputError(f"view {spec.view!r} needs the {spec.extractor} extractor")
            X, cols = _view_matrix(spec, by_name[spec.extractor], outputs[spec.extractor], pooling)
            blocks.append(X)
            names += cols
        result[(view, pooling)] = (np.asarray(starts, dtype=np.float64),
                                   np.hstack(blocks).astype(np.float32, copy=False), names)
    return result


def embed_file_with_names(path: str | os.PathLike, extractors: Sequence[Extractor], *, soundscape: bool = True,
                          window_starts: Sequence[float] | None = None, views: Sequence[str] | None = None,
                          pooling: str = "mean") -> dict[str, tuple[np.ndarray, np.ndarray, list[str]]]:
    """Like :func:`embed_file`, with the feature names of each view as a third element."""
    views = list(views) if views is not None else [v for ex in extractors for v in default_views(ex)]
    full = embed_file_views(path, extractors, [(v, pooling) for v in views], soundscape=soundscape,
                            window_starts=window_starts)
    return {view: full[(view, pooling)] for view in views}


def embed_file(path: str | os.PathLike, extractors: Sequence[Extractor], *, soundscape: bool = True,
               window_starts: Sequence[float] | None = None, views: Sequence[str] | None = None,
               pooling: str = "mean") -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Embed one audio file without a store: ``{view: (window_starts, X float32 [windows, d])}``.

    Windows follow the store's grid (:func:`featurestore.windows.window_starts`; ``soundscape``
    selects the 12-window soundscape rule or the focal-clip rule) unless ``window_starts`` is
    given. ``views`` defaults to every view the extractors produce; comma-joined views concatenate.
    Raises :class:`embed.audio.AudioError` naming the file when it cannot be decoded.
    """
    full = embed_file_with_names(path, extractors, soundscape=soundscape, window_starts=window_starts,
                                 views=views, pooling=pooling)
    return {view: (starts, X) for view, (starts, X, _) in full.items()}

"""The feature store at full competition scale, each operation beside the same one on plain Parquet.

Synthetic data (seeded numpy) in the store's real tables, written and read through the store's own
code paths:

* ``birdnet_frames``: ``--windows`` windows of ``--dim``-d float16 embeddings, rows built by the embed
  job's :func:`embed.job.frame_rows` (window_id, frame_index, frame_start_s, valid_fraction, is_padded,
  extractor, extractor_version, FixedSizeList float16 ``embedding``, written_at; no logits) for
  soundscape window ids like the real ones (``train_soundscapes/BC2026_Train_00039_S22_..._201500.ogg@55``,
  12 windows per 60-s file), grouped into parts exactly as the embed job groups files
  (:func:`embed.job.plan_tasks`, one part per task) and written with :meth:`FeatureStore.append_part`;
  one ``extractor_versions`` row (:func:`embed.job.version_row`). ``--frames-per-window 1`` (default)
  is one 5-s frame per window (a Perch-like custom model; raw bytes = windows x dim x 2, the size
  target's yardstick); BirdNET's default 1-s hop stores 3 frames per window (3x the rows and bytes).
* ``pseudo_labels``: ``--classes`` float32 probabilities per window in the columns and parts of
  :func:`students.pseudo.run_pseudo` (``CHUNK_WINDOWS`` windows per part; the full labels,
  ``teacher_fold = -1``, only - a 5-fold teacher writes 6 rows per window, ``--teacher-folds 5``).

Measured, store beside plain Parquet (``pyarrow.parquet.write_table`` of the same tables with the
store's compression, zstd, read with DuckDB's ``read_parquet``), alternated chunk by chunk / repeat
by repeat so machine load hits both:

* append time of every part (store: tmp file + fsync + rename, :func:`write_parquet_atomic`);
* bytes on disk, against the raw float16 bytes and against the plain files;
* a full-table aggregate through ``store.sql`` on the part views (the deduplicating views every SQL
  user reads): per-file mean of embedding dimension 1, and count / mean of ``probs[1]`` per teacher fold;
* a 10%-of-windows feature load: :func:`embed.features.load_window_features` with a ``window_ids``
  subset and the version pinned (as :class:`students.pseudo.Teacher` calls it) beside DuckDB reading
  the same rows' embeddings from the plain files into the same float32 matrix;
* peak memory (the process's peak RSS, each query in a fresh interpreter) of every view query above
  and of streaming every row of the embeddings view in record batches, beside the same on plain Parquet.

Printed: seconds, ratios store/plain, and the targets (write <= 2 min, aggregate <= 5 s, on disk <=
1.05x raw float16 bytes, store <= 1.2x plain Parquet; issue 24: aggregate and 10% load <= 1.5x plain,
peak memory of any view query <= 2 GB). Random float16 compresses about as badly as
real embeddings (the mantissa bits are noise either way); nothing is asserted.

With ``--compact`` the store is then compacted (``python -m pipelines.compact``: time, parts before and
after, peak RSS) and every read measured again. ``--keep --out DIR`` keeps both copies; ``--reuse --out DIR``
measures the reads of a kept pair again without writing (e.g. after a change to the views).

Usage: python bench/store_scale.py [--windows 1000000] [--dim 1024] [--classes 234] [--out DIR] [--keep]
       [--compact] [--reuse]
  e.g. python bench/store_scale.py --windows 20000 --compact    (a quick sanity run, about a minute)
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from embed.audio import frame_grid
from embed.extractors import FrameOutput
from embed.features import load_window_features
from embed.job import FileTask, frame_rows, plan_tasks, version_row
from embed.registry import PART_TABLES, VERSIONS_TABLE
from featurestore.store import FeatureStore, utc_now
from featurestore.windows import SOUNDSCAPE, SOUNDSCAPE_SECONDS, WINDOW_SECONDS, window_id
from models.pseudo_labels import FULL_FOLD
from models.pseudo_labels import KEYS as PSEUDO_KEYS
from models.pseudo_labels import TABLE as PSEUDO_TABLE
from students.pseudo import CHUNK_WINDOWS

FRAMES = "birdnet_frames"
SAMPLE_RATE = 48_000
WINDOWS_PER_FILE = SOUNDSCAPE_SECONDS // WINDOW_SECONDS
TARGET_WRITE_S, TARGET_AGG_S, TARGET_RAW, TARGET_PLAIN = 120.0, 5.0, 1.05, 1.2
TARGET_READ_PLAIN, TARGET_PEAK_GB = 1.5, 2.0   # issue 24: view reads <= 1.5x plain Parquet, <= 2 GB peak

# One query in a fresh interpreter, so its peak RSS is the query's (plus the interpreter's ~100 MB of imports).
# argv: store|plain, store folder, mode (sql|stream), query; prints VmHWM in kB (ru_maxrss would report the
# parent's peak too: Linux carries it across fork + exec).
PEAK_SCRIPT = """
import sys
import duckdb
from featurestore.store import FeatureStore
who, where, mode, query = sys.argv[1:5]
store = FeatureStore.open(where, read_only=True) if who == "store" else None
con = store.con if store else duckdb.connect()
con.execute("SET enable_progress_bar = false")
if mode == "stream":
    rel = con.sql(query)
    reader = (getattr(rel, "to_arrow_reader", None) or rel.fetch_record_batch)(65536)
    n = sum(batch.num_rows for batch in reader)
else:
    n = len(con.execute(query).fetchall())
hwm = [line for line in open("/proc/self/status") if line.startswith("VmHWM:")][0].split()[1]
print(hwm, n)
"""


@dataclass
class SyntheticExtractor:
    """What :func:`embed.job.frame_rows` and :func:`embed.job.version_row` read from an extractor."""

    dim: int
    name: str = "birdnet"
    version: str = "birdnet-synthetic0"
    table: str = FRAMES
    frame_s: float = 5.0
    hop_s: float = 5.0
    extra: dict = field(default_factory=dict)

    def params(self) -> dict:
        return {"kind": "birdnet", "frame_s": self.frame_s, "hop_s": self.hop_s, "embedding_dim": self.dim,
                "sample_rate": SAMPLE_RATE, "synthetic": True, **self.extra}

    def logit_labels(self) -> list[str]:
        return []

    def feature_names(self) -> list[str]:
        return []


def soundscape_files(n_windows: int, seed: int) -> list[str]:
    """File names like the competition's (``BC2026_Train_0039_S22_20211231_201500.ogg``), 12 windows each."""
    rng = np.random.default_rng(seed)
    n = -(-n_windows // WINDOWS_PER_FILE)
    sites = rng.integers(1, 40, n)
    days = rng.integers(0, 365 * 4, n)
    minutes = rng.integers(0, 24 * 60, n)
    base = np.datetime64("2021-01-01")
    return [f"BC2026_Train_{i:05d}_S{s:02d}_{str(base + d).replace('-', '')}_{m // 60:02d}{m % 60:02d}00.ogg"
            for i, (s, d, m) in enumerate(zip(sites.tolist(), days.tolist(), minutes.tolist(), strict=True))]


def embed_chunks(files: list[str], n_windows: int) -> list[list[tuple[str, list[int]]]]:
    """The files grouped as the embed job groups them (one part per task), with each file's window starts."""
    starts = [list(range(0, SOUNDSCAPE_SECONDS, WINDOW_SECONDS)) for _ in files]
    starts[-1] = starts[-1][: n_windows - WINDOWS_PER_FILE * (len(files) - 1)]
    tasks = [FileTask(f"{SOUNDSCAPE}/{f}", f, float(SOUNDSCAPE_SECONDS), {}) for f in files]
    by_key = {t.key: s for t, s in zip(tasks, starts, strict=True)}
    return [[(t.path, by_key[t.key]) for t in task] for task in plan_tasks(tasks, os.cpu_count() or 1)]


def frames_part(ex: SyntheticExtractor, chunk: list[tuple[str, list[int]]], rng: np.random.Generator) -> pa.Table:
    """One embed-job part: :func:`embed.job.frame_rows` of every file in ``chunk``, concatenated."""
    pieces = []
    for filename, starts in chunk:
        grid = frame_grid(starts, float(SOUNDSCAPE_SECONDS), SAMPLE_RATE, ex.frame_s, ex.hop_s)
        emb = rng.standard_normal((len(grid.window_index), ex.dim), dtype=np.float32).astype(np.float16)
        ids = [window_id(SOUNDSCAPE, filename, s) for s in starts]
        pieces.append(frame_rows(ex, FrameOutput(grid, emb, None), ids, utc_now()))
    return pa.concat_tables(pieces)


def write_frames(store: FeatureStore, ex: SyntheticExtractor, chunks: list[list[tuple[str, list[int]]]],
                 rng: np.random.Generator) -> None:
    """What the embed job writes for ``chunks`` into an open store: the frames and versions part tables
    registered, ``ex``'s version row, one :func:`frames_part` per chunk, then the part views."""
    for name in (FRAMES, VERSIONS_TABLE):
        store.register_part_table(name, PART_TABLES[name])
    store.append_part(VERSIONS_TABLE, version_row(ex))
    for chunk in chunks:
        store.append_part(FRAMES, frames_part(ex, chunk, rng))
    store.refresh_part_views()


def pseudo_part(ids: list[str], classes: int, folds: int, rng: np.random.Generator) -> pa.Table:
    """One part as :func:`students.pseudo.run_pseudo` writes it (fold rows, then the full labels)."""
    tables = []
    for k in (*range(folds), FULL_FOLD):
        q = (1.0 / (1.0 + np.exp(-rng.normal(-4.0, 2.0, (len(ids), classes))))).astype(np.float32)
        n = len(ids)
        tables.append(pa.table({
            "pseudo_version": pa.array(["pseudo-0123456789ab"] * n),
            "teacher_id": pa.array(["linear-0123456789ab"] * n),
            "teacher_fold": pa.array([k] * n, pa.int32()), "round": pa.array([1] * n, pa.int32()),
            "window_id": pa.array(ids),
            "probs": pa.FixedSizeListArray.from_arrays(pa.array(q.ravel(), pa.float32()), classes),
            "written_at": pa.array([utc_now()] * n, pa.timestamp("us", tz="UTC"))}))
    return pa.concat_tables(tables)


def plain_write(table: pa.Table, folder: Path, i: int) -> None:
    pq.write_table(table, folder / f"part-{i:06d}.parquet", compression="zstd")  # the store's settings


def du(path: Path) -> int:
    """Allocated bytes of every file under ``path``."""
    return sum(p.stat().st_blocks * 512 for p in path.rglob("*") if p.is_file())


def side_by_side(runs: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds of each run, alternated so machine load hits all of them."""
    times: dict[str, list[float]] = {k: [] for k in runs}
    for r in range(repeats):
        for name in (list(runs) if r % 2 == 0 else list(runs)[::-1]):
            t0 = time.perf_counter()
            runs[name]()
            times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def plain_features(con: duckdb.DuckDBPyConnection, glob: str, ids: list[str]) -> tuple[list[str], np.ndarray]:
    """The embeddings of ``ids`` read straight from plain Parquet, as the same float32 matrix in ``ids`` order."""
    con.register("_wanted", pa.table({"window_id": pa.array(ids, pa.string())}))
    try:
        rel = con.sql(f"SELECT window_id, embedding FROM read_parquet('{glob}') "
                      "WHERE window_id IN (SELECT window_id FROM _wanted) ORDER BY window_id")
        table = (getattr(rel, "to_arrow_table", None) or rel.arrow)()
    finally:
        con.unregister("_wanted")
    got = table.column("window_id").to_pylist()
    arr = table.column("embedding").combine_chunks()
    X = arr.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False).reshape(len(got), -1)
    pos = {w: i for i, w in enumerate(got)}
    return ids, X[[pos[w] for w in ids]]


def peak_rss_gb(who: str, store_dir: Path, query: str, mode: str = "sql") -> float:
    """Peak RSS (GB) of a fresh interpreter that runs ``query`` on the store (read-only) or on plain DuckDB."""
    out = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, who, str(store_dir), mode, query], check=True,
                         capture_output=True, text=True).stdout.splitlines()[-1].split()
    return int(out[0]) * 1024 / 1e9


def ratio_line(what: str, store: float, plain: float, unit: str = "s", target: str = "") -> str:
    return (f"{what:<44} store {store:9.3f} {unit}  plain {plain:9.3f} {unit}  store/plain {store / plain:5.2f}x"
            f"{'  ' + target if target else ''}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--windows", type=int, default=1_000_000, help="windows (default 1,000,000 ~ 83,334 files x 12)")
    ap.add_argument("--dim", type=int, default=1024, help="embedding dimension (default 1024)")
    ap.add_argument("--classes", type=int, default=234, help="pseudo-label classes (default 234)")
    ap.add_argument("--frames-per-window", type=int, choices=(1, 3), default=1,
                    help="1: one 5-s frame per window (default); 3: BirdNET's 3-s frames at its 1-s hop")
    ap.add_argument("--teacher-folds", type=int, default=0,
                    help="pseudo rows per window besides the full labels (run_pseudo: the teacher's folds; default 0)")
    ap.add_argument("--repeats", type=int, default=3, help="repeats of each read (median; default 3)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, help="scratch folder (default: a new temp folder)")
    ap.add_argument("--keep", action="store_true", help="keep the store and the plain files")
    ap.add_argument("--compact", action="store_true",
                    help="then compact the store (pipelines.compact) and measure the reads again")
    ap.add_argument("--reuse", action="store_true",
                    help="measure the reads of the store and plain files a --keep run left in --out (same "
                         "--windows, --seed, ...), writing nothing")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="store-scale-")) if args.out is None else args.out
    store_dir, plain_dir = work / "store", work / "plain"
    if args.reuse and (args.out is None or not store_dir.exists() or not plain_dir.exists()):
        raise SystemExit("--reuse needs --out DIR holding the store/ and plain/ of a --keep run")
    if args.reuse:
        args.keep = True
    elif store_dir.exists() or plain_dir.exists():
        raise SystemExit(f"{work} already holds store/ or plain/; pick an empty --out")
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} cores; "
          f"scratch {work}")
    try:
        run(args, store_dir, plain_dir)
    finally:
        if not args.keep:
            for path in (store_dir, plain_dir):
                shutil.rmtree(path, ignore_errors=True)
            if args.out is None:
                shutil.rmtree(work, ignore_errors=True)


def run(args: argparse.Namespace, store_dir: Path, plain_dir: Path) -> None:
    rng = np.random.default_rng(args.seed)
    ex = SyntheticExtractor(args.dim, frame_s=5.0 if args.frames_per_window == 1 else 3.0,
                            hop_s=5.0 if args.frames_per_window == 1 else 1.0)
    files = soundscape_files(args.windows, args.seed)
    chunks = embed_chunks(files, args.windows)
    ids = [window_id(SOUNDSCAPE, f, s) for chunk in chunks for f, starts in chunk for s in starts]
    written = None if args.reuse else write_all(args, ex, files, chunks, ids, rng, store_dir, plain_dir)
    if args.reuse:
        print(f"re-using {store_dir} and {plain_dir} (nothing written)")
    t, peaks = measure_reads(args, ex, ids, files, store_dir, plain_dir)
    met = {}
    if written is not None:
        total_store, total_plain, s_frames, p_frames, raw = written
        met.update({
            "write": total_store <= TARGET_WRITE_S,
            "on disk vs raw": s_frames / raw <= TARGET_RAW,
            "store/plain": max(total_store / total_plain, s_frames / p_frames, t["agg_emb_store"] / t["agg_emb_plain"],
                               t["agg_pseudo_store"] / t["agg_pseudo_plain"], t["load_store"] / t["load_plain"])
            <= TARGET_PLAIN})
    met.update({
        "aggregate": max(t["agg_emb_store"], t["agg_pseudo_store"]) <= TARGET_AGG_S,
        "issue 24 reads <= 1.5x": max(t["agg_emb_store"] / t["agg_emb_plain"], t["load_store"] / t["load_plain"])
        <= TARGET_READ_PLAIN,
        "peak memory": max(peaks.values()) <= TARGET_PEAK_GB,
    })
    if args.compact:
        t0 = time.perf_counter()
        parts_before = sum(1 for _ in (store_dir / "parts").rglob("*.parquet"))
        peak = compact_peak_gb(store_dir)
        parts_after = sum(1 for _ in (store_dir / "parts").rglob("*.parquet"))
        print(f"{'compact (pipelines.compact, every table)':<44} {time.perf_counter() - t0:9.1f} s  "
              f"{parts_before:,} -> {parts_after:,} parts, peak RSS {peak:.2f} GB")
        t, peaks = measure_reads(args, ex, ids, files, store_dir, plain_dir, "after compaction: ")
        met["issue 24 reads <= 1.5x after compaction"] = max(
            t["agg_emb_store"] / t["agg_emb_plain"], t["load_store"] / t["load_plain"]) <= TARGET_READ_PLAIN
        met["peak memory after compaction"] = max(max(peaks.values()), peak) <= TARGET_PEAK_GB
    print("targets: " + ", ".join(f"{k} {'met' if v else 'MISSED'}" for k, v in met.items()))


def compact_peak_gb(store_dir: Path) -> float:
    """Run ``python -m pipelines.compact`` on the store in a fresh interpreter; its peak RSS in GB."""
    code = ("import sys; from pipelines.compact import main; main(['--store', sys.argv[1]]); "
            "print([x for x in open('/proc/self/status') if x.startswith('VmHWM:')][0].split()[1])")
    out = subprocess.run([sys.executable, "-c", code, str(store_dir)], check=True, capture_output=True,
                         text=True).stdout.splitlines()
    return int(out[-1]) * 1024 / 1e9


def write_all(args: argparse.Namespace, ex: SyntheticExtractor, files: list[str], chunks: list, ids: list[str],
              rng: np.random.Generator, store_dir: Path, plain_dir: Path) -> tuple[float, float, int, int, int]:
    """Write both tables through the store and as plain Parquet; print the write and size lines."""
    (plain_dir / FRAMES).mkdir(parents=True)
    (plain_dir / PSEUDO_TABLE).mkdir(parents=True)

    # ------------------------------------------------------------------ writes
    write = {"store": 0.0, "plain": 0.0}
    pwrite = {"store": 0.0, "plain": 0.0}
    n_rows = 0
    t_all = time.perf_counter()
    with FeatureStore.open(store_dir) as store:
        for name, keys in PART_TABLES.items():
            if name in (FRAMES, VERSIONS_TABLE):
                store.register_part_table(name, keys)
        store.register_part_table(PSEUDO_TABLE, PSEUDO_KEYS)
        store.append_part(VERSIONS_TABLE, version_row(ex))
        for i, chunk in enumerate(chunks):
            table = frames_part(ex, chunk, rng)
            n_rows += table.num_rows
            for who in (("store", "plain") if i % 2 == 0 else ("plain", "store")):
                t0 = time.perf_counter()
                store.append_part(FRAMES, table) if who == "store" else plain_write(table, plain_dir / FRAMES, i)
                write[who] += time.perf_counter() - t0
        for i, a in enumerate(range(0, len(ids), CHUNK_WINDOWS)):
            table = pseudo_part(ids[a: a + CHUNK_WINDOWS], args.classes, args.teacher_folds, rng)
            for who in (("store", "plain") if i % 2 == 0 else ("plain", "store")):
                t0 = time.perf_counter()
                store.append_part(PSEUDO_TABLE, table) if who == "store" else \
                    plain_write(table, plain_dir / PSEUDO_TABLE, i)
                pwrite[who] += time.perf_counter() - t0
        t0 = time.perf_counter()
        store.refresh_part_views()
        refresh = time.perf_counter() - t0
        n_parts = len(store.part_files(FRAMES))
    print(f"{args.windows:,} windows in {len(files):,} files, {n_rows:,} frame rows x {args.dim}-d float16 in "
          f"{n_parts:,} parts ({args.windows / n_parts:.0f} windows/part, the embed job's grouping); "
          f"pseudo: {args.classes} float32 x {args.teacher_folds + 1} row(s)/window in "
          f"{-(-len(ids) // CHUNK_WINDOWS)} parts; generating + writing took {time.perf_counter() - t_all:.0f} s")
    total_store, total_plain = write["store"] + pwrite["store"] + refresh, write["plain"] + pwrite["plain"]
    print(ratio_line("append embeddings (append_part)", write["store"], write["plain"]))
    print(ratio_line("append pseudo-labels (append_part)", pwrite["store"], pwrite["plain"]))
    print(ratio_line("all writes + refresh_part_views", total_store, total_plain,
                     target=f"(target <= {TARGET_WRITE_S / 60:.0f} min, <= {TARGET_PLAIN}x)"))

    # ------------------------------------------------------------------ sizes
    raw = n_rows * args.dim * 2
    s_frames, p_frames = du(store_dir / "parts" / FRAMES), du(plain_dir / FRAMES)
    s_pseudo, p_pseudo = du(store_dir / "parts" / PSEUDO_TABLE), du(plain_dir / PSEUDO_TABLE)
    s_all = du(store_dir)
    print(f"{'raw float16 embedding bytes (rows x dim x 2)':<44} {raw / 1e9:9.3f} GB")
    print(ratio_line("embeddings on disk", s_frames / 1e9, p_frames / 1e9, "GB",
                     f"store/raw {s_frames / raw:.3f}x (target <= {TARGET_RAW}x), plain/raw {p_frames / raw:.3f}x"))
    print(ratio_line("pseudo-labels on disk", s_pseudo / 1e9, p_pseudo / 1e9, "GB",
                     f"raw float32 {len(ids) * (args.teacher_folds + 1) * args.classes * 4 / 1e9:.3f} GB"))
    print(f"{'whole store folder (catalog, lock, parts)':<44} {s_all / 1e9:9.3f} GB = {s_all / raw:.3f}x raw "
          f"embedding bytes")

    return total_store, total_plain, s_frames, p_frames, raw


def measure_reads(args: argparse.Namespace, ex: SyntheticExtractor, ids: list[str], files: list[str],
                  store_dir: Path, plain_dir: Path, label: str = "") -> tuple[dict, dict]:
    """Time the reads side by side and measure each view query's peak memory; print their lines."""
    # ------------------------------------------------------------------ reads
    con = duckdb.connect()
    pf, pp = str(plain_dir / FRAMES / "*.parquet"), str(plain_dir / PSEUDO_TABLE / "*.parquet")
    subset = sorted(np.random.default_rng(args.seed + 1).choice(ids, len(ids) // 10, replace=False).tolist())
    emb_agg = ("SELECT split_part(window_id, '@', 1) AS file, avg(embedding[1]) AS m, count(*) AS n "
               "FROM {src} GROUP BY 1")
    pseudo_agg = "SELECT teacher_fold, count(*) AS n, avg(probs[1]) AS m FROM {src} GROUP BY 1"
    with FeatureStore.open(store_dir, read_only=True) as store:
        got: dict[str, object] = {}
        runs = {
            "agg_emb_store": lambda: got.__setitem__("e_s", store.sql(emb_agg.format(src=FRAMES)).num_rows),
            "agg_emb_plain": lambda: got.__setitem__(
                "e_p", len(con.sql(emb_agg.format(src=f"read_parquet('{pf}')")).fetchall())),
            "agg_pseudo_store": lambda: got.__setitem__("p_s", store.sql(pseudo_agg.format(src=PSEUDO_TABLE)).num_rows),
            "agg_pseudo_plain": lambda: got.__setitem__(
                "p_p", len(con.sql(pseudo_agg.format(src=f"read_parquet('{pp}')")).fetchall())),
            "load_store": lambda: got.__setitem__("l_s", load_window_features(
                store, "birdnet", "mean", window_ids=subset, versions={"birdnet": ex.version})[1].shape),
            "load_plain": lambda: got.__setitem__("l_p", plain_features(con, pf, subset)[1].shape),
        }
        t = side_by_side(runs, args.repeats)
    if got["l_s"] != got["l_p"] or got["e_s"] != got["e_p"] != len(files) or got["p_s"] != got["p_p"]:
        raise SystemExit(f"store and plain reads differ: {got}")
    print(ratio_line(label + "aggregate: per-file mean of embedding[1]", t["agg_emb_store"], t["agg_emb_plain"],
                     target=f"(target <= {TARGET_AGG_S:.0f} s)"))
    print(ratio_line(label + "aggregate: count/mean(probs[1]) per fold", t["agg_pseudo_store"], t["agg_pseudo_plain"],
                     target=f"(target <= {TARGET_AGG_S:.0f} s)"))
    print(ratio_line(label + f"load {len(subset):,} windows (10%), float32 matrix", t["load_store"], t["load_plain"]))
    print(f"(reads: median of {args.repeats} alternated repeats, warm page cache)")
    print(f"{label + 'issue 24 goals':<44} aggregate store/plain {t['agg_emb_store'] / t['agg_emb_plain']:.2f}x, "
          f"10% load {t['load_store'] / t['load_plain']:.2f}x (goal <= {TARGET_READ_PLAIN}x)")

    # ------------------------------------------------------------------ peak memory, one query per process
    peaks = {}
    for what, view, plain, mode in (
            ("aggregate embeddings", emb_agg.format(src=FRAMES), emb_agg.format(src=f"read_parquet('{pf}')"), "sql"),
            ("aggregate pseudo-labels", pseudo_agg.format(src=PSEUDO_TABLE),
             pseudo_agg.format(src=f"read_parquet('{pp}')"), "sql"),
            ("stream every embedding row", f"SELECT * FROM {FRAMES}", f"SELECT * FROM read_parquet('{pf}')",
             "stream")):
        peaks[what] = peak_rss_gb("store", store_dir, view, mode)
        print(ratio_line(label + f"peak RSS: {what}", peaks[what], peak_rss_gb("plain", store_dir, plain, mode), "GB",
                         f"(goal <= {TARGET_PEAK_GB:.0f} GB)"))
    return t, peaks


if __name__ == "__main__":
    main()

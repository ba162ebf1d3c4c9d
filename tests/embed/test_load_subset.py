"""A subset load (``load_window_features(..., window_ids=...)``) equals the full load filtered in numpy.

The store is written through the store's own writers (:meth:`FeatureStore.append_part` of the embed job's
:func:`embed.job.frame_rows` / :func:`embed.job.window_rows`, and :func:`featurestore.compact.compact_table`
for the compacted variant), with keys re-written by later parts (whole windows and single frames), an exact
tie, a NULL ``written_at``, a second extractor version and float16 edge values. Both ways a subset is read -
one DuckDB query per view (small subsets) and the two-pass streaming load (large ones, LOAD_ONE_QUERY_BYTES
forced to 0; one reader thread and three) - are checked bit for bit against the full load, and the full load
against the winning rows written by hand: neither path can drop, duplicate or mix up a row.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from embed_helpers import damage_payload

import embed.features as features
import featurestore.compact as compact
from embed.audio import frame_grid
from embed.extractors import FrameOutput, WindowOutput
from embed.features import POOLINGS, load_window_features
from embed.job import frame_rows, version_row, window_rows
from embed.registry import PART_TABLES, VERSIONS_TABLE
from featurestore.store import FeatureStore, StoreError
from featurestore.windows import SOUNDSCAPE, window_id

DIM, LABELS, FEATS, RATE = 16, ("ab", "cd", "ef", "gh"), 5, 48_000
V1, V2, VC = "birdnet-subset1", "birdnet-subset2", "classical-subset1"
PIN = {"birdnet": V1, "classical": VC}
T0 = datetime(2026, 1, 1)


@dataclass
class _Extractor:
    """What frame_rows / window_rows / version_row read from an extractor."""

    name: str
    version: str
    table: str
    labels: tuple[str, ...] = ()
    features: tuple[str, ...] = ()
    extra: dict = field(default_factory=dict)

    def params(self) -> dict:
        return {"kind": self.name, "synthetic": True, **self.extra}

    def logit_labels(self) -> list[str]:
        return list(self.labels)

    def feature_names(self) -> list[str]:
        return list(self.features)


def _files(n: int) -> list[str]:
    return [f"BC2026_Train_{i:05d}_S{i % 7:02d}_20240101_{i % 24:02d}0000.ogg" for i in range(n)]


def _frames(ex: _Extractor, files: list[str], rng: np.random.Generator, written_at, duration: float = 60.0,
            only: dict[str, set[int]] | None = None) -> tuple[pa.Table, dict]:
    """Frame rows (3-s frames at a 1-s hop: 3 per window, fewer in a short file's tail) of ``files``; ``only``:
    keep just these frames of these windows. Returns the table and {(window, frame): (embedding, logits)}."""
    tables, values = [], {}
    for name in files:
        starts = list(range(0, int(np.ceil(duration)), 5))
        grid = frame_grid(starts, duration, RATE, 3.0, 1.0)
        n = len(grid.window_index)
        emb = rng.standard_normal((n, DIM), dtype=np.float32).astype(np.float16)
        emb[rng.random(n) < 0.1, 0] = np.float16(6e-8)              # float16 edge values: a subnormal,
        emb[rng.random(n) < 0.1, 1] = np.float16(65504)             # the largest finite, minus zero
        emb[rng.random(n) < 0.1, 2] = np.float16(-0.0)
        logits = rng.standard_normal((n, len(LABELS))).astype(np.float32)
        ids = [window_id(SOUNDSCAPE, name, s) for s in starts]
        table = frame_rows(ex, FrameOutput(grid, emb, logits), ids, written_at)
        if only is not None:
            keep = np.array([int(f) in only.get(ids[w], ()) for w, f in zip(grid.window_index, grid.frame_index,
                                                                             strict=True)])
            table, emb, logits = table.filter(pa.array(keep)), emb[keep], logits[keep]
        for i, (w, f) in enumerate(zip(table.column("window_id").to_pylist(), table.column("frame_index").to_pylist(),
                                       strict=True)):
            values[(w, f)] = (emb[i].astype(np.float32), logits[i])
        tables.append(table)
    return pa.concat_tables(tables), values


def _build(root: Path) -> dict:
    """The store; returns the winning rows by hand: {(window, frame): (embedding, logits)} of V1 and
    {window: features} of classical."""
    rng = np.random.default_rng(24)
    birdnet = _Extractor("birdnet", V1, "birdnet_frames", labels=LABELS)
    birdnet2 = _Extractor("birdnet", V2, "birdnet_frames", labels=LABELS)
    classical = _Extractor("classical", VC, "classical_windows", features=tuple(f"stat{i}" for i in range(FEATS)))
    files = _files(24)
    truth: dict = {}
    with FeatureStore.open(root) as s:
        for name, keys in PART_TABLES.items():
            s.register_part_table(name, keys)
        for ex in (birdnet, birdnet2, classical):
            s.append_part(VERSIONS_TABLE, version_row(ex))
        for i in range(0, len(files), 3):                          # parts of 3 files, as the embed job groups
            table, values = _frames(birdnet, files[i:i + 3], rng, T0)
            s.append_part("birdnet_frames", table, prefix="b")
            truth.update(values)
        for name, seconds in (("BC2026_Train_short1.ogg", 12.5), ("BC2026_Train_short2.ogg", 13.5)):
            short, values = _frames(birdnet, [name], rng, T0, duration=seconds)   # tail windows of 1 and 2 frames
            s.append_part("birdnet_frames", short, prefix="b")
            truth.update(values)
        # later parts: file 4 re-written whole, frame 1 of two windows of file 7, and version 2 of file 9
        redo, values = _frames(birdnet, [files[4]], rng, T0 + timedelta(hours=1))
        s.append_part("birdnet_frames", redo, prefix="c")
        truth.update(values)
        w7 = [window_id(SOUNDSCAPE, files[7], t) for t in (10, 35)]
        one, values = _frames(birdnet, [files[7]], rng, T0 + timedelta(hours=1), only={w: {1} for w in w7})
        s.append_part("birdnet_frames", one, prefix="c")
        truth.update(values)
        v2, _ = _frames(birdnet2, [files[9]], rng, T0 + timedelta(hours=2))
        s.append_part("birdnet_frames", v2, prefix="c")
        # an exact tie (same written_at, a later part name: it wins) and a NULL written_at (it loses)
        w11 = window_id(SOUNDSCAPE, files[11], 20)
        tie, values = _frames(birdnet, [files[11]], rng, T0, only={w11: {0, 2}})
        s.append_part("birdnet_frames", tie, prefix="d")
        truth.update(values)
        w12 = window_id(SOUNDSCAPE, files[12], 0)
        lost, _ = _frames(birdnet, [files[12]], rng, None, only={w12: {0, 1, 2}})
        s.append_part("birdnet_frames", lost, prefix="e")
        for i, (prefix, chunk) in enumerate((("a", files[:12]), ("a", files[12:20]), ("c", files[2:4]))):
            ids = [window_id(SOUNDSCAPE, f, t) for f in chunk for t in range(0, 60, 5)]
            feats = rng.standard_normal((len(ids), FEATS)).astype(np.float32)
            out = WindowOutput(feats, np.ones(len(ids), np.float32))
            s.append_part("classical_windows", window_rows(classical, out, ids, T0 + timedelta(hours=i)), prefix=prefix)
            truth.update({("classical", w): feats[j] for j, w in enumerate(ids)})
    return truth


def _by_hand(truth: dict, view: str, pooling: str, windows: list[str]) -> np.ndarray:
    """The expected rows: each window's winning frames pooled in float64, frame after frame (pool_frames'
    arithmetic), or its classical features."""
    blocks = []
    for part in view.split(","):
        rows = []
        for w in windows:
            if part == "classical":
                rows.append(truth[("classical", w)])
                continue
            frames = [truth[k][0 if part == "birdnet" else 1] for k in sorted(k for k in truth if k[0] == w)]
            total = np.array(frames[0], np.float64)      # the first frame copied (a -0.0 stays), then the others
            for f in frames[1:]:
                total += f
            mean, high = (total / len(frames)).astype(np.float32), np.max(frames, axis=0).astype(np.float32)
            rows.append({"mean": mean, "max": high, "meanmax": np.r_[mean, high]}[pooling])
        blocks.append(np.array(rows, np.float32))
    return np.hstack(blocks)


def _bits(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x, np.float32).view(np.uint32)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    """(the store, a compacted copy with row groups of a few dozen rows, the winning rows by hand)."""
    root = tmp_path_factory.mktemp("subset")
    truth = _build(root / "store")
    shutil.copytree(root / "store", root / "compacted")
    old = compact.ROW_GROUP_BYTES
    compact.ROW_GROUP_BYTES = 3_000              # row groups of ~40 frame rows: a subset skips most of them
    try:
        with FeatureStore.open(root / "compacted") as s:
            for name in ("birdnet_frames", "classical_windows"):
                compact.compact_table(s, name)
    finally:
        compact.ROW_GROUP_BYTES = old
    assert any(pq.ParquetFile(p).metadata.num_row_groups > 5
               for p in (root / "compacted" / "parts" / "birdnet_frames").glob("*.parquet"))
    return root / "store", root / "compacted", truth


def _subsets(ids: list[str]) -> list[list[str]]:
    rng = np.random.default_rng(3)
    some = rng.choice(ids, len(ids) // 3, replace=False).tolist()
    w = [x for x in ids if "_00004_" in x or "_00007_" in x or "_00011_" in x or "_00012_" in x]   # re-written
    tails = [x for x in ids if "short" in x]
    return [some + some[:5] + tails + ["train_soundscapes/not-there.ogg@0"],   # shuffled, repeated, unknown
            sorted(some),                                              # sorted, all there (no copy)
            w[::-1],
            ids[:7] + ids[-3:]]                                        # a few parts only


@pytest.mark.parametrize("variant", ["store", "compacted"])
@pytest.mark.parametrize("path", ["one query", "two passes", "two passes, 3 threads"])
def test_subset_load_equals_the_full_load_filtered_bit_for_bit(built, variant: str, path: str,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    store, compacted, truth = built
    frames = {}
    for w, _ in (k for k in truth if k[0] != "classical"):
        frames[w] = frames.get(w, 0) + 1
    assert set(frames.values()) == {1, 2, 3}
    with FeatureStore.open(store if variant == "store" else compacted, read_only=True) as s:
        full = {(view, pooling): load_window_features(s, view, pooling, versions=PIN)      # full loads: two passes
                for view in ("birdnet", "birdnet_logits,classical") for pooling in POOLINGS}
        calls = {"one": 0, "two": 0}
        one, two = features._load_view_one_query, features._winners
        monkeypatch.setattr(features, "_load_view_one_query",
                            lambda *a: calls.__setitem__("one", calls["one"] + 1) or one(*a))
        monkeypatch.setattr(features, "_winners", lambda *a: calls.__setitem__("two", calls["two"] + 1) or two(*a))
        if path != "one query":
            monkeypatch.setattr(features, "LOAD_ONE_QUERY_BYTES", 0)
            monkeypatch.setattr(features, "LOAD_UNIT_ROWS", 7)      # windows split over units, batches of parts
            monkeypatch.setattr(features, "LOAD_THREADS", 3 if "threads" in path else 1)
        windows = {k[0] for k in truth if k[0] != "classical"}
        for (view, pooling), (ids, X, names, used) in full.items():
            assert ids == sorted(windows & {k[1] for k in truth if k[0] == "classical"} if "classical" in view
                                 else windows)
            assert np.array_equal(_bits(X), _bits(_by_hand(truth, view, pooling, ids)))   # overwrites, tie, NULL
            for subset in _subsets(ids):
                got_ids, got, got_names, got_used = load_window_features(s, view, pooling, window_ids=subset,
                                                                         versions=PIN)
                expected = [w for w in dict.fromkeys(subset) if w in set(ids)]
                assert got_ids == expected and got_names == names and got_used == used
                assert got.dtype == np.float32 and got.shape == (len(expected), X.shape[1])
                assert np.array_equal(_bits(got), _bits(X[[ids.index(w) for w in expected]])), (view, pooling)
        assert calls["one" if path == "one query" else "two"] > 0            # the path meant, never the other
        assert calls["two" if path == "one query" else "one"] == 0


def test_one_query_load_falls_back_to_two_passes_for_a_part_damaged_inside_its_payload(
        built, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import duckdb

    store, _, _ = built
    failed = []
    one = features._load_view_one_query

    def spy(*args):
        try:
            return one(*args)
        except duckdb.Error as exc:
            failed.append(exc)
            raise

    monkeypatch.setattr(features, "_load_view_one_query", spy)
    copy = tmp_path / "store"
    shutil.copytree(store, copy)
    wanted = [window_id(SOUNDSCAPE, _files(24)[4], 5), window_id(SOUNDSCAPE, _files(24)[0], 0)]
    part = next(p for p in (copy / "parts" / "birdnet_frames").glob("c-*.parquet")      # file 4, re-written
                if wanted[0] in pq.read_table(p, columns=["window_id"]).column(0).to_pylist())
    damage_payload(part)                                     # footer intact: only reading the payload fails
    with FeatureStore.open(copy, read_only=True) as s:
        with pytest.raises(StoreError) as err:
            load_window_features(s, "birdnet", window_ids=wanted, versions=PIN)
        assert str(err.value).startswith(f"part {part.relative_to(copy)} of table birdnet_frames in store {copy} "
                                         "is damaged")
        assert len(failed) == 1                           # DuckDB's error, then the two passes named the part
        assert load_window_features(s, "birdnet_logits", window_ids=wanted, versions=PIN)[0] == wanted


def test_in_threads_keeps_job_order_raises_in_place_and_stops_when_closed() -> None:
    import threading
    import time

    done = []

    def job(k: int, n: int, fail: bool = False):
        def run():
            try:
                for i in range(n):
                    time.sleep(0.001 * ((k * 7 + i) % 3))
                    yield k, i
                if fail:
                    raise ValueError(f"job {k}")
            finally:
                done.append(k)
        return run

    jobs = [job(k, 5) for k in range(6)]
    assert list(features._in_threads(jobs, 3, ahead=1)) == [(k, i) for k in range(6) for i in range(5)]
    got = []
    with pytest.raises(ValueError, match="job 2"):
        for item in features._in_threads([job(k, 3, fail=k == 2) for k in range(6)], 3):
            got.append(item)
    assert got == [(k, i) for k in range(3) for i in range(3)]   # job 2's items, then its error
    before = threading.active_count()
    items = features._in_threads([job(k, 1000) for k in range(4)], 2, ahead=1)
    assert next(items) == (0, 0)
    items.close()                                                 # the running jobs stop, their threads end
    deadline = time.monotonic() + 10
    while threading.active_count() > before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert threading.active_count() <= before
